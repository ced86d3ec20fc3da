//! `lianxi.v1.Cases`: case status, timelines, lists, the agenda, watches and
//! statistics, with need to know and the access log on every call.

use lianxi_log::{GroupReport, Log};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::cases_server::{Cases, CasesServer};
use lianxi_proto::v1::{
    CaseFilter, CaseView, GetAgendaRequest, GetAgendaResponse, GetCaseRequest, GetCaseResponse,
    GetStatsRequest, GetStatsResponse, GetTimelineRequest, GetTimelineResponse, ListCasesRequest,
    ListCasesResponse, TimelineEntry, WatchCaseRequest, WatchCasesRequest,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use lianxi_crypto::KeyStore;

use base64::Engine;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::gate::{Call, Door, Gate, Service};
use crate::personal::CaseKeys;
use crate::{ChangeStream, check_case_id, on_log, page_size, timeline_entry, unseen, wall_clock};

/// The `Cases` service over one node's log.
#[derive(Clone)]
pub struct CasesApi {
    log: Log,
    gate: Gate,
    changes: watch::Receiver<Option<GroupReport>>,
    keys: CaseKeys,
}

impl CasesApi {
    /// `changes` wakes watchers when a group has been written.
    pub fn new(log: Log, gate: Gate, changes: watch::Receiver<Option<GroupReport>>) -> Self {
        CasesApi {
            log,
            gate,
            changes,
            keys: CaseKeys::None,
        }
    }

    /// Reads case keys from the node's key store, to show personal values
    /// to the roles that need them. Without it they show as unavailable.
    pub fn with_keys(mut self, keys: Arc<KeyStore>) -> Self {
        self.keys = CaseKeys::Store(keys);
        self
    }

    /// Case keys derived from `seed` (`lianxi_log::GroupKeys::derived`),
    /// for tests without a bus (feature `test-util`).
    #[cfg(feature = "test-util")]
    pub fn with_derived_keys(mut self, seed: &str) -> Self {
        self.keys = CaseKeys::Derived(seed.to_owned());
        self
    }

    /// The tonic server for this service, behind the door.
    pub fn into_server(self) -> Door<CasesServer<CasesApi>> {
        let gate = self.gate.clone();
        Door::new(CasesServer::new(self), gate, Service::Cases)
    }

    /// The case the call asked for, if the caller may see it. A case that
    /// does not exist and one the caller may not see get the same answer.
    async fn visible(&self, call: &Call, case_id: &str) -> Result<CaseView, Status> {
        let id = case_id.to_owned();
        match on_log(&self.log, move |log| log.case_view(&id)).await? {
            Some(view) if crate::auth::may_read_case(call.principal(), &view) => Ok(view),
            _ => Err(unseen(case_id)),
        }
    }

    /// Every view the principal may see that matches `filter` at `now`, in
    /// case-id order, starting after `after`, at most `limit` (0: no limit).
    /// Also says whether more would follow.
    async fn scan(
        &self,
        principal: &Principal,
        filter: CaseFilter,
        now: Timestamp,
        after: String,
        limit: usize,
    ) -> Result<(Vec<CaseView>, bool), Status> {
        let narrow = Narrow::of(&filter, principal);
        let principal = principal.clone();
        let keep = move |v: &CaseView| {
            crate::auth::may_read_case(&principal, v) && lianxi_domain::matches(&filter, v, &now)
        };
        // Read about what a page needs (twice the page, as filters skip
        // some), not a fixed thousand: a page of 100 then decodes a few
        // hundred views, not a thousand.
        let chunk_size = if limit == 0 {
            1000
        } else {
            limit.saturating_mul(2).clamp(64, 1000)
        };
        on_log(&self.log, move |log| {
            let mut out = Vec::new();
            let mut after = after;
            loop {
                // With a filter the index can narrow by, only the views of
                // the cases it names are read; `keep` judges each.
                let (chunk, exhausted) = match &narrow {
                    Narrow::All => {
                        let chunk = log.views_after(&after, chunk_size)?;
                        let exhausted = chunk.len() < chunk_size;
                        (chunk, exhausted)
                    }
                    narrow => {
                        let ids = match narrow {
                            Narrow::Facet(facet, values) => {
                                log.case_ids_with(*facet, values, &after, chunk_size)?
                            }
                            _ => log.case_ids_overdue(&now, &after, chunk_size)?,
                        };
                        let exhausted = ids.len() < chunk_size;
                        if let Some(last) = ids.last() {
                            after = last.clone();
                        }
                        let mut views = Vec::with_capacity(ids.len());
                        for id in &ids {
                            views.extend(log.case_view(id)?);
                        }
                        (views, exhausted)
                    }
                };
                for view in chunk {
                    if view.case_id > after {
                        after = view.case_id.clone();
                    }
                    if keep(&view) {
                        if limit > 0 && out.len() == limit {
                            return Ok((out, true));
                        }
                        out.push(view);
                    }
                }
                if exhausted {
                    return Ok((out, false));
                }
            }
        })
        .await
    }
}

/// Which cases a list reads: every view, or only those the list filters'
/// index names for one facet of the filter (or of the caller's need to
/// know), or those overdue at `now`.
enum Narrow {
    All,
    Facet(lianxi_log::Facet, Vec<i32>),
    Overdue,
}

impl Narrow {
    fn of(filter: &CaseFilter, principal: &Principal) -> Narrow {
        use lianxi_log::Facet;
        if filter.overdue_only {
            Narrow::Overdue
        } else if !filter.risk_levels.is_empty() {
            Narrow::Facet(Facet::RiskLevel, filter.risk_levels.clone())
        } else if !filter.statuses.is_empty() {
            Narrow::Facet(Facet::Status, filter.statuses.clone())
        } else if !filter.categories.is_empty() {
            Narrow::Facet(Facet::Category, filter.categories.clone())
        } else if filter.involved_agency != lianxi_proto::v1::Agency::Unspecified as i32 {
            Narrow::Facet(Facet::Agency, vec![filter.involved_agency])
        } else if let crate::auth::Role::Agency(a) = principal.role {
            // An agency sees only the cases it is involved in.
            Narrow::Facet(Facet::Agency, vec![a as i32])
        } else {
            Narrow::All
        }
    }
}

/// "12 case(s)" for the access log; the ids go in the record's `case_ids`.
fn listed(views: &[CaseView]) -> (String, Vec<String>) {
    (
        format!("{} case(s)", views.len()),
        views.iter().map(|v| v.case_id.clone()).collect(),
    )
}

/// Page tokens of `ListCases`: opaque to the caller, bound to the principal
/// and the filter of the call that returned them. Base64url of a version
/// byte, a 16-byte tag (SHA-256 over the principal, the encoded filter and
/// the last case id of the page) and that case id. The tag is a check, not
/// a secret: a token made up by hand shows nothing the caller could not
/// list anyway.
const TOKEN_VERSION: u8 = 1;
const TOKEN_TAG: usize = 16;

fn token_tag(principal: &Principal, filter: &CaseFilter, last: &str) -> [u8; TOKEN_TAG] {
    let mut h = Sha256::new();
    h.update(b"lianxi.v1.ListCases page token\0");
    h.update(principal.name.as_bytes());
    h.update([0]);
    h.update(filter.encode_to_vec());
    h.update([0]);
    h.update(last.as_bytes());
    let digest = h.finalize();
    let mut tag = [0u8; TOKEN_TAG];
    tag.copy_from_slice(&digest[..TOKEN_TAG]);
    tag
}

fn page_token(principal: &Principal, filter: &CaseFilter, last: &str) -> String {
    let mut bytes = Vec::with_capacity(1 + TOKEN_TAG + last.len());
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&token_tag(principal, filter, last));
    bytes.extend_from_slice(last.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The case id a page token continues after; empty for the first page.
fn page_after(principal: &Principal, filter: &CaseFilter, token: &str) -> Result<String, Status> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let invalid = || {
        Status::invalid_argument(
            "page_token is not one this node gave for this query: a token works only with the filter of the call that returned it, for the same caller; leave page_token empty to start from the first page",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    if bytes.len() <= 1 + TOKEN_TAG || bytes[0] != TOKEN_VERSION {
        return Err(invalid());
    }
    let last = std::str::from_utf8(&bytes[1 + TOKEN_TAG..]).map_err(|_| invalid())?;
    if !lianxi_domain::is_case_id(last) {
        return Err(invalid());
    }
    let tag = token_tag(principal, filter, last);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        &tag[..],
        &bytes[1..1 + TOKEN_TAG],
    )) {
        return Err(invalid());
    }
    Ok(last.to_owned())
}

#[tonic::async_trait]
impl Cases for CasesApi {
    #[tracing::instrument(skip_all)]
    async fn get_case(
        &self,
        request: Request<GetCaseRequest>,
    ) -> Result<Response<GetCaseResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        call.ask(&req.case_id);
        check_case_id(&req.case_id)?;
        let applied = self.log.checkpoint().stream_sequence;
        let view = self.visible(&call, &req.case_id).await?;
        call.record("case view", Vec::new()).await?;
        let now = req.now.unwrap_or_else(wall_clock);
        let evaluation = lianxi_domain::evaluate(&view, &now);
        let mut view = view;
        self.keys.reveal_view(call.principal(), &mut view).await;
        Ok(Response::new(GetCaseResponse {
            view: Some(view),
            evaluated_at: Some(now),
            overdue: evaluation.overdue,
            protection_order_active: evaluation.protection_order_active,
            applied_stream_sequence: applied,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_timeline(
        &self,
        request: Request<GetTimelineRequest>,
    ) -> Result<Response<GetTimelineResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        call.ask(&req.case_id);
        check_case_id(&req.case_id)?;
        let size = page_size(req.page_size)?;
        let applied = self.log.checkpoint().stream_sequence;
        let view = self.visible(&call, &req.case_id).await?;
        let log = self.log.clone();
        let case_id = req.case_id.clone();
        let after = req.after_case_sequence;
        // One more than asked tells whether another page follows.
        let mut entries = on_log(&log, move |l| l.case_entries(&case_id, after, size + 1)).await?;
        let more = entries.len() > size;
        entries.truncate(size);
        let next = if more {
            entries.last().map_or(0, |e| e.case_sequence)
        } else {
            0
        };
        call.record(
            &format!("timeline entries after {after}: {}", entries.len()),
            Vec::new(),
        )
        .await?;
        // Recorded first, then decrypted: nothing personal is read before
        // the access is on record.
        self.keys
            .reveal_entries(call.principal(), &view, &mut entries)
            .await;
        let entries: Vec<TimelineEntry> = entries.iter().map(timeline_entry).collect();
        Ok(Response::new(GetTimelineResponse {
            case_id: req.case_id,
            entries,
            next_after_case_sequence: next,
            applied_stream_sequence: applied,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_cases(
        &self,
        request: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        let now = req.now.unwrap_or_else(wall_clock);
        let filter = req.filter.unwrap_or_default();
        let after = page_after(call.principal(), &filter, &req.page_token)?;
        let (views, more) = self
            .scan(call.principal(), filter.clone(), now, after, size)
            .await?;
        let (detail, shown) = listed(&views);
        call.record(&detail, shown).await?;
        let next = match views.last() {
            Some(last) if more => page_token(call.principal(), &filter, &last.case_id),
            _ => String::new(),
        };
        Ok(Response::new(ListCasesResponse {
            cases: views
                .iter()
                .map(|v| lianxi_domain::summarize(v, &now))
                .collect(),
            next_page_token: next,
            evaluated_at: Some(now),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_agenda(
        &self,
        request: Request<GetAgendaRequest>,
    ) -> Result<Response<GetAgendaResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let now = req.now.unwrap_or_else(wall_clock);
        let filter = CaseFilter {
            jurisdiction: req.jurisdiction.clone(),
            ..CaseFilter::default()
        };
        let (views, _) = self
            .scan(call.principal(), filter, now, String::new(), 0)
            .await?;
        let days = match req.expiring_within_days {
            0 => 14,
            d => d,
        };
        let items = lianxi_domain::agenda(&views, &now, days);
        let shown: Vec<String> = items
            .iter()
            .filter_map(|i| i.case.as_ref())
            .map(|c| c.case_id.clone())
            .collect();
        call.record(&format!("agenda of {} case(s)", shown.len()), shown)
            .await?;
        Ok(Response::new(GetAgendaResponse {
            items,
            evaluated_at: Some(now),
        }))
    }

    type WatchCaseStream = ChangeStream;

    #[tracing::instrument(skip_all)]
    async fn watch_case(
        &self,
        request: Request<WatchCaseRequest>,
    ) -> Result<Response<Self::WatchCaseStream>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        call.ask(&req.case_id);
        check_case_id(&req.case_id)?;
        self.visible(&call, &req.case_id).await?;
        call.record(
            &format!("watch after global sequence {}", req.after_global_sequence),
            Vec::new(),
        )
        .await?;
        let rx = crate::watch::spawn_case(
            self.log.clone(),
            self.changes.clone(),
            req.case_id,
            req.after_global_sequence,
            call,
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type WatchCasesStream = ChangeStream;

    #[tracing::instrument(skip_all)]
    async fn watch_cases(
        &self,
        request: Request<WatchCasesRequest>,
    ) -> Result<Response<Self::WatchCasesStream>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        call.record(
            &format!(
                "watch cases after global sequence {} (each batch sent is recorded with its cases)",
                req.after_global_sequence
            ),
            Vec::new(),
        )
        .await?;
        let rx = crate::watch::spawn_cases(
            self.log.clone(),
            self.changes.clone(),
            req.filter.unwrap_or_default(),
            req.after_global_sequence,
            wall_clock,
            call,
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn get_stats(
        &self,
        request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let now = req.now.unwrap_or_else(wall_clock);
        let filter = CaseFilter {
            jurisdiction: req.jurisdiction.clone(),
            opened_from: req.opened_from,
            opened_before: req.opened_before,
            ..CaseFilter::default()
        };
        let (views, _) = self
            .scan(call.principal(), filter, now, String::new(), 0)
            .await?;
        let (detail, shown) = listed(&views);
        call.record(&format!("statistics over {detail}"), shown)
            .await?;
        Ok(Response::new(lianxi_domain::stats(&views, &now)))
    }
}
