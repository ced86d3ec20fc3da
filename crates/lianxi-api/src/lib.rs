//! gRPC handlers for `lianxi.v1.Cases`, reading views and the log.
//!
//! Errors become `tonic::Status` in one place, [`status`]: caller mistakes
//! map to `InvalidArgument` / `NotFound`, storage failures to `Internal` with
//! the detail in the node's log, not in the reply.

#![forbid(unsafe_code)]

use lianxi_log::Log;
use lianxi_proto::Timestamp;
use lianxi_proto::v1::cases_server::{Cases, CasesServer};
use lianxi_proto::v1::intake_server::{Intake, IntakeServer};
use lianxi_proto::v1::{
    Agency, GetCaseRequest, GetCaseResponse, GetTimelineRequest, GetTimelineResponse,
    ListRejectionsRequest, ListRejectionsResponse, LogEntry, TimelineEntry,
};
use tonic::{Request, Response, Status};

/// Default and maximum timeline page sizes: bounded, so one call cannot ask
/// the node for an unbounded answer.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The `Cases` service over one node's log.
#[derive(Clone)]
pub struct CasesApi {
    log: Log,
}

impl CasesApi {
    pub fn new(log: Log) -> Self {
        CasesApi { log }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> CasesServer<CasesApi> {
        CasesServer::new(self)
    }
}

/// The `Intake` service: what the node did with what agencies sent.
#[derive(Clone)]
pub struct IntakeApi {
    log: Log,
}

impl IntakeApi {
    pub fn new(log: Log) -> Self {
        IntakeApi { log }
    }

    pub fn into_server(self) -> IntakeServer<IntakeApi> {
        IntakeServer::new(self)
    }
}

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if n > MAX_PAGE_SIZE => Err(Status::invalid_argument(format!(
            "page_size {n} is above the maximum of {MAX_PAGE_SIZE}; ask for a smaller page and follow the cursor"
        ))),
        n => Ok(n as usize),
    }
}

#[tonic::async_trait]
impl Intake for IntakeApi {
    #[tracing::instrument(skip_all, fields(agency = request.get_ref().agency))]
    async fn list_rejections(
        &self,
        request: Request<ListRejectionsRequest>,
    ) -> Result<Response<ListRejectionsResponse>, Status> {
        let req = request.into_inner();
        let agency = Agency::try_from(req.agency).map_err(|_| {
            Status::invalid_argument(format!("agency {} is not a known agency", req.agency))
        })?;
        let size = page_size(req.page_size)?;
        let log = self.log.clone();
        let mut after = req.after_stream_sequence;
        // Filtering by agency may skip records; scan in bounded chunks until
        // a page is full or the records run out.
        let (rejections, more) = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            loop {
                let chunk = log.rejections(after, 1000)?;
                let exhausted = chunk.len() < 1000;
                for r in chunk {
                    after = r.stream_sequence;
                    let receipt = lianxi_log::rejection_receipt(&r);
                    if agency == Agency::Unspecified || receipt.agency == agency as i32 {
                        if out.len() == size {
                            return Ok::<_, lianxi_log::Error>((out, true));
                        }
                        out.push(receipt);
                    }
                }
                if exhausted {
                    return Ok((out, false));
                }
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        let next = if more {
            rejections.last().map_or(0, |r| r.stream_sequence)
        } else {
            0
        };
        Ok(Response::new(ListRejectionsResponse {
            rejections,
            next_after_stream_sequence: next,
        }))
    }
}

fn status(e: lianxi_log::Error) -> Status {
    tracing::error!(error = %e, "storage error while serving a request");
    Status::internal(
        "the node could not read its log; the operator should check the node's log output",
    )
}

fn check_case_id(case_id: &str) -> Result<(), Status> {
    let ok = !case_id.is_empty()
        && case_id.len() <= lianxi_domain::MAX_ID_LEN
        && case_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{case_id:?} is not a case id: use 1 to {} characters of A-Z a-z 0-9 _ -",
            lianxi_domain::MAX_ID_LEN
        )))
    }
}

fn not_found(case_id: &str) -> Status {
    Status::not_found(format!(
        "no case {case_id} on this node; check the id, or wait until the node has applied the event that opens it"
    ))
}

fn wall_clock() -> Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}

/// One timeline line from a log entry.
pub fn timeline_entry(entry: &LogEntry) -> TimelineEntry {
    let event = entry.event.clone().unwrap_or_default();
    TimelineEntry {
        global_sequence: entry.global_sequence,
        case_sequence: entry.case_sequence,
        agency: event.agency,
        occurred_at: event.occurred_at,
        recorded_at: entry.recorded_at,
        line: lianxi_domain::describe(&event),
        kind: lianxi_domain::kind(&event).to_owned(),
        hash: hex::encode(&entry.hash),
        corrects_event_id: event.corrects_event_id.clone().unwrap_or_default(),
        event_id: event.event_id,
    }
}

#[tonic::async_trait]
impl Cases for CasesApi {
    #[tracing::instrument(skip_all, fields(case_id = %request.get_ref().case_id))]
    async fn get_case(
        &self,
        request: Request<GetCaseRequest>,
    ) -> Result<Response<GetCaseResponse>, Status> {
        let req = request.into_inner();
        check_case_id(&req.case_id)?;
        let applied = self.log.checkpoint().stream_sequence;
        let log = self.log.clone();
        let case_id = req.case_id.clone();
        let view = tokio::task::spawn_blocking(move || log.case_view(&case_id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?
            .ok_or_else(|| not_found(&req.case_id))?;
        let now = req.now.unwrap_or_else(wall_clock);
        let evaluation = lianxi_domain::evaluate(&view, &now);
        Ok(Response::new(GetCaseResponse {
            view: Some(view),
            evaluated_at: Some(now),
            overdue: evaluation.overdue,
            protection_order_active: evaluation.protection_order_active,
            applied_stream_sequence: applied,
        }))
    }

    #[tracing::instrument(skip_all, fields(case_id = %request.get_ref().case_id))]
    async fn get_timeline(
        &self,
        request: Request<GetTimelineRequest>,
    ) -> Result<Response<GetTimelineResponse>, Status> {
        let req = request.into_inner();
        check_case_id(&req.case_id)?;
        let size = page_size(req.page_size)?;
        let applied = self.log.checkpoint().stream_sequence;
        let log = self.log.clone();
        let case_id = req.case_id.clone();
        let after = req.after_case_sequence;
        let (exists, entries) = tokio::task::spawn_blocking(move || {
            let exists = log.case_view(&case_id)?.is_some();
            // One more than asked tells whether another page follows.
            let entries = log.case_entries(&case_id, after, size + 1)?;
            Ok::<_, lianxi_log::Error>((exists, entries))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)?;
        if !exists {
            return Err(not_found(&req.case_id));
        }
        let more = entries.len() > size;
        let entries: Vec<TimelineEntry> = entries.iter().take(size).map(timeline_entry).collect();
        let next = if more {
            entries.last().map_or(0, |e| e.case_sequence)
        } else {
            0
        };
        Ok(Response::new(GetTimelineResponse {
            case_id: req.case_id,
            entries,
            next_after_case_sequence: next,
            applied_stream_sequence: applied,
        }))
    }
}
