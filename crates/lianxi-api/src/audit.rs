//! `lianxi.v1.Audit`: the log itself, past states of a case, and the access
//! log. For auditors (and a development node).

use lianxi_log::Log;
use lianxi_proto::v1::audit_server::{Audit, AuditServer};
use lianxi_proto::v1::get_case_as_of_request::At;
use lianxi_proto::v1::{
    ConsistencyProof, GetCaseAsOfRequest, GetCaseAsOfResponse, GetCheckpointRequest,
    GetConsistencyProofRequest, GetInclusionProofRequest, GetTreeHeadRequest, InclusionProof,
    ListAccessRequest, ListAccessResponse, ListCheckpointsRequest, ListCheckpointsResponse,
    LogEntry, ReadLogRequest, SignedCheckpoint, TreeHead,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::checkpoints::{Checkpointer, IssueError};
use crate::gate::{Call, Door, Gate, Service};
use crate::{blocking, check_case_id, not_found, on_log, page_size, status};

/// The `Audit` service.
#[derive(Clone)]
pub struct AuditApi {
    log: Log,
    gate: Gate,
    /// The node's checkpoint signer; without one, `GetCheckpoint` says the
    /// node signs no checkpoints.
    checkpoints: Option<Checkpointer>,
}

impl AuditApi {
    pub fn new(log: Log, gate: Gate) -> Self {
        AuditApi {
            log,
            gate,
            checkpoints: None,
        }
    }

    /// Serves signed checkpoints issued by `checkpoints`.
    pub fn with_checkpointer(mut self, checkpoints: Checkpointer) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// The tonic server for this service, behind the door.
    pub fn into_server(self) -> Door<AuditServer<AuditApi>> {
        let gate = self.gate.clone();
        Door::new(AuditServer::new(self), gate, Service::Audit)
    }
}

/// Entries per read while streaming the log.
const CHUNK: usize = 1000;

/// A stream of log entries.
pub type LogStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<LogEntry, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditApi {
    type ReadLogStream = LogStream;

    #[tracing::instrument(skip_all)]
    async fn read_log(
        &self,
        request: Request<ReadLogRequest>,
    ) -> Result<Response<Self::ReadLogStream>, Status> {
        let call = Call::of(&request)?;
        let req = *request.get_ref();
        let from = req.from_global_sequence.max(1);
        let end = self.log.checkpoint().global_sequence;
        let to = match req.to_global_sequence {
            0 => end,
            n => n.min(end),
        };
        call.record(&format!("log entries {from} to {to}"), Vec::new())
            .await?;
        let (tx, rx) = mpsc::channel(64);
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut after = from - 1;
            while after < to {
                let chunk = on_log(&log, move |l| l.entries(after, CHUNK)).await;
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                let chunk: Vec<LogEntry> = chunk
                    .into_iter()
                    .filter(|e| e.global_sequence <= to)
                    .collect();
                let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                    return;
                };
                // Each chunk is recorded with the cases its entries belong
                // to before it is sent, so the access log says who read
                // which case's entries.
                let mut shown: Vec<String> = Vec::new();
                for e in &chunk {
                    let case = e.event.as_ref().map(|ev| ev.case_id.as_str()).unwrap_or("");
                    if !case.is_empty() && !shown.iter().any(|c| c == case) {
                        shown.push(case.to_owned());
                    }
                }
                let detail = format!(
                    "log entries {} to {}",
                    first.global_sequence, last.global_sequence
                );
                if let Err(s) = call.record(&detail, shown).await {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
                for e in chunk {
                    after = e.global_sequence;
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(skip_all, fields(case_id = %request.get_ref().case_id))]
    async fn get_case_as_of(
        &self,
        request: Request<GetCaseAsOfRequest>,
    ) -> Result<Response<GetCaseAsOfResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.get_ref().clone();
        call.ask(&req.case_id);
        check_case_id(&req.case_id)?;
        let at = req.at.ok_or_else(|| {
            Status::invalid_argument(
                "say when: set global_sequence or recorded_at (e.g. `lianxi as-of CASE --sequence 120` or `--at 2026-03-01T00:00:00+08:00`)",
            )
        })?;
        let what = match &at {
            At::GlobalSequence(g) => format!("view as of global sequence {g}"),
            At::RecordedAt(t) => format!("view as of {}s", t.seconds),
        };
        call.record(&what, Vec::new()).await?;
        let case_id = req.case_id.clone();
        let found = on_log(&self.log, move |log| match at {
            At::GlobalSequence(g) => log.case_as_of(&case_id, |e| e.global_sequence <= g),
            At::RecordedAt(t) => log.case_as_of(&case_id, |e| {
                let r = e.recorded_at.unwrap_or_default();
                (r.seconds, r.nanos) <= (t.seconds, t.nanos)
            }),
        })
        .await?;
        let (view, last, applied) = found.ok_or_else(|| not_found(&req.case_id))?;
        // Auditors prove history; they read no personal values, not even
        // sealed ones, through a view (the log's entries carry them sealed).
        Ok(Response::new(GetCaseAsOfResponse {
            view: Some(crate::conceal_view(view)),
            as_of_global_sequence: last,
            entries_applied: applied,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_access(
        &self,
        request: Request<ListAccessRequest>,
    ) -> Result<Response<ListAccessResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.get_ref().clone();
        call.ask(&req.case_id);
        if !req.case_id.is_empty() {
            check_case_id(&req.case_id)?;
        }
        let size = page_size(req.page_size)?;
        // Reading the access log is itself an access.
        call.record("access log", Vec::new()).await?;
        let access = self.gate.access_log();
        let (records, more) = blocking(move || access.list(&req, size), status).await?;
        let next = if more {
            records.last().map_or(0, |r| r.sequence)
        } else {
            0
        };
        Ok(Response::new(ListAccessResponse {
            records,
            next_after_sequence: next,
        }))
    }

    #[tracing::instrument(skip_all, fields(tree_size = request.get_ref().tree_size))]
    async fn get_tree_head(
        &self,
        request: Request<GetTreeHeadRequest>,
    ) -> Result<Response<TreeHead>, Status> {
        let call = Call::of(&request)?;
        let req = *request.get_ref();
        let current = self.log.tree_size();
        let size = tree_size("tree_size", req.tree_size, current)?;
        call.record(&format!("tree head at size {size}"), Vec::new())
            .await?;
        let log = self.log.clone();
        let root = blocking(move || log.root(size), tree_status).await?;
        Ok(Response::new(TreeHead {
            tree_size: size,
            root_hash: root.to_vec(),
        }))
    }

    #[tracing::instrument(skip_all, fields(
        global_sequence = request.get_ref().global_sequence,
        tree_size = request.get_ref().tree_size,
    ))]
    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        let call = Call::of(&request)?;
        let req = *request.get_ref();
        let current = self.log.tree_size();
        let size = tree_size("tree_size", req.tree_size, current)?;
        let g = req.global_sequence;
        if g == 0 || g > size {
            return Err(Status::invalid_argument(format!(
                "global_sequence {g} is not in the tree of size {size}: it must be from 1 to {size} (the log holds {current} entries; a tree_size of 0 means all of them)"
            )));
        }
        // Read first (nothing leaves before the record below), so that the
        // record names the case the entry belongs to.
        let log = self.log.clone();
        let (entry, proof) = blocking(
            move || {
                let entry = log.entry(g)?;
                let proof = log.inclusion_proof(g - 1, size)?;
                Ok::<_, lianxi_log::Error>((entry, proof))
            },
            tree_status,
        )
        .await?;
        let Some(entry) = entry else {
            tracing::error!(global_sequence = g, "entry below the checkpoint is missing");
            return Err(status(lianxi_log::Error::Corruption {
                at: lianxi_log::Location::Entry(g),
                detail: "missing below the checkpoint".into(),
            }));
        };
        let case_id = entry
            .event
            .as_ref()
            .map(|e| e.case_id.clone())
            .unwrap_or_default();
        call.ask(&case_id);
        call.record(
            &format!("inclusion proof of log entry {g} in tree size {size}"),
            Vec::new(),
        )
        .await?;
        Ok(Response::new(InclusionProof {
            leaf_index: g - 1,
            tree_size: size,
            leaf_hash: lianxi_log::leaf_hash(&entry.hash).to_vec(),
            hashes: proof.iter().map(|h| h.to_vec()).collect(),
            entry: Some(entry),
        }))
    }

    #[tracing::instrument(skip_all, fields(
        old_size = request.get_ref().old_size,
        new_size = request.get_ref().new_size,
    ))]
    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        let call = Call::of(&request)?;
        let req = *request.get_ref();
        let current = self.log.tree_size();
        let new = tree_size("new_size", req.new_size, current)?;
        let old = req.old_size;
        if old == 0 || old > new {
            return Err(Status::invalid_argument(format!(
                "old_size {old} is out of range: it must be from 1 to new_size {new} (every tree extends the empty one, so there is nothing to prove from size 0)"
            )));
        }
        call.record(
            &format!("consistency proof from tree size {old} to {new}"),
            Vec::new(),
        )
        .await?;
        let log = self.log.clone();
        let proof = blocking(move || log.consistency_proof(old, new), tree_status).await?;
        Ok(Response::new(ConsistencyProof {
            old_size: old,
            new_size: new,
            hashes: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(fresh = request.get_ref().fresh))]
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<SignedCheckpoint>, Status> {
        let call = Call::of(&request)?;
        let fresh = request.get_ref().fresh;
        let checkpoints = self.checkpointer()?;
        call.record(
            &if fresh {
                "a checkpoint signed now".to_owned()
            } else {
                "the latest checkpoint".to_owned()
            },
            Vec::new(),
        )
        .await?;
        let c = checkpoints.current(fresh).await.map_err(issue_status)?;
        Ok(Response::new(signed(checkpoints, c)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_checkpoints(
        &self,
        request: Request<ListCheckpointsRequest>,
    ) -> Result<Response<ListCheckpointsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = *request.get_ref();
        let size = page_size(req.page_size)?;
        let checkpoints = self.checkpointer()?;
        call.record(
            &format!("signed checkpoints after number {}", req.after_number),
            Vec::new(),
        )
        .await?;
        let after = req.after_number;
        // One more than the page, to know whether there is a next one.
        let mut page = on_log(&self.log, move |log| log.checkpoints(after, size + 1)).await?;
        let more = page.len() > size;
        page.truncate(size);
        let next = if more {
            page.last().map_or(0, |c| c.number)
        } else {
            0
        };
        Ok(Response::new(ListCheckpointsResponse {
            checkpoints: page.into_iter().map(|c| signed(checkpoints, c)).collect(),
            next_after_number: next,
        }))
    }
}

impl AuditApi {
    fn checkpointer(&self) -> Result<&Checkpointer, Status> {
        self.checkpoints.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this node signs no checkpoints (it was started without a signing key)",
            )
        })
    }
}

/// A stored checkpoint as the API sends it. The size and root are read back
/// from the note the node signed itself.
fn signed(checkpoints: &Checkpointer, c: lianxi_log::StoredCheckpoint) -> SignedCheckpoint {
    let root = lianxi_log::parse_checkpoint(&c.note)
        .map(|p| p.root.to_vec())
        .unwrap_or_default();
    SignedCheckpoint {
        note: c.note,
        tree_size: c.size,
        root_hash: root,
        verifier_key: checkpoints.verifier_key().to_owned(),
        number: c.number,
    }
}

fn issue_status(e: IssueError) -> Status {
    match e {
        IssueError::Log(e) => status(e),
        e => {
            tracing::error!(error = %e, "cannot sign a checkpoint");
            Status::internal(
                "the node could not sign a checkpoint; the operator should check the node's log output",
            )
        }
    }
}

/// A requested tree size must be within the log as it is now (the tree only
/// grows, so a size that passes here stays valid).
/// The tree size a request names: 0 means the current tree; larger than
/// the log is the caller's mistake.
fn tree_size(field: &str, requested: u64, current: u64) -> Result<u64, Status> {
    match requested {
        0 => Ok(current),
        size if size > current => Err(Status::invalid_argument(format!(
            "{field} {size} is larger than the log, which holds {current} entries; ask for at most {current}, or 0 for the current tree"
        ))),
        size => Ok(size),
    }
}

/// Log errors of the tree calls: a range the log cannot answer for is the
/// caller's mistake, anything else the node's.
fn tree_status(e: lianxi_log::Error) -> Status {
    match e {
        lianxi_log::Error::OutOfRange { .. } => Status::invalid_argument(e.to_string()),
        e => status(e),
    }
}
