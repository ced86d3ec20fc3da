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

use crate::auth::Principal;
use crate::gate::{Gate, Service};
use crate::personal::CaseKeys;
use crate::{
    ChangeStream, check_case_id, not_found, on_log, page_size, timeline_entry, wall_clock,
};

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
    /// for tests without a bus.
    #[doc(hidden)]
    pub fn with_derived_keys(mut self, seed: &str) -> Self {
        self.keys = CaseKeys::Derived(seed.to_owned());
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> CasesServer<CasesApi> {
        CasesServer::new(self)
    }

    async fn view(&self, case_id: &str) -> Result<CaseView, Status> {
        let id = case_id.to_owned();
        on_log(&self.log, move |log| log.case_view(&id))
            .await?
            .ok_or_else(|| not_found(case_id))
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
                let chunk = log.views_after(&after, chunk_size)?;
                let exhausted = chunk.len() < chunk_size;
                for view in chunk {
                    after = view.case_id.clone();
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

/// "12 cases: A, B, C, ..." for the access log (bounded).
fn listed(views: &[CaseView]) -> String {
    let mut s = format!("{} case(s)", views.len());
    for (i, v) in views.iter().enumerate() {
        s.push_str(if i == 0 { ": " } else { ", " });
        s.push_str(&v.case_id);
        if s.len() > 2000 {
            s.push_str(", ...");
            break;
        }
    }
    s
}

#[tonic::async_trait]
impl Cases for CasesApi {
    #[tracing::instrument(skip_all, fields(case_id = %request.get_ref().case_id))]
    async fn get_case(
        &self,
        request: Request<GetCaseRequest>,
    ) -> Result<Response<GetCaseResponse>, Status> {
        const METHOD: &str = "/lianxi.v1.Cases/GetCase";
        let principal = self
            .gate
            .admit(request.metadata(), METHOD, Service::Cases)
            .await?;
        let req = request.get_ref().clone();
        check_case_id(&req.case_id)?;
        let applied = self.log.checkpoint().stream_sequence;
        let view = self.view(&req.case_id).await?;
        self.gate
            .check_case(&principal, request.metadata(), METHOD, &view)
            .await?;
        self.gate
            .record(
                &principal,
                request.metadata(),
                METHOD,
                &req.case_id,
                "case view".into(),
            )
            .await?;
        let now = req.now.unwrap_or_else(wall_clock);
        let evaluation = lianxi_domain::evaluate(&view, &now);
        let mut view = view;
        self.keys.reveal_view(&principal, &mut view).await;
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
        const METHOD: &str = "/lianxi.v1.Cases/GetTimeline";
        let principal = self
            .gate
            .admit(request.metadata(), METHOD, Service::Cases)
            .await?;
        let req = request.get_ref().clone();
        check_case_id(&req.case_id)?;
        let size = page_size(req.page_size)?;
        let applied = self.log.checkpoint().stream_sequence;
        let view = self.view(&req.case_id).await?;
        self.gate
            .check_case(&principal, request.metadata(), METHOD, &view)
            .await?;
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
        self.gate
            .record(
                &principal,
                request.metadata(),
                METHOD,
                &req.case_id,
                format!("timeline entries after {after}: {}", entries.len()),
            )
            .await?;
        // Recorded first, then decrypted: nothing personal is read before
        // the access is on record.
        self.keys
            .reveal_entries(&principal, &view, &mut entries)
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
        const METHOD: &str = "/lianxi.v1.Cases/ListCases";
        let principal = self
            .gate
            .admit(request.metadata(), METHOD, Service::Cases)
            .await?;
        let req = request.get_ref().clone();
        let size = page_size(req.page_size)?;
        let now = req.now.unwrap_or_else(wall_clock);
        let filter = req.filter.unwrap_or_default();
        let (views, more) = self
            .scan(&principal, filter, now, req.page_token.clone(), size)
            .await?;
        self.gate
            .record(&principal, request.metadata(), METHOD, "", listed(&views))
            .await?;
        let next = if more {
            views.last().map(|v| v.case_id.clone()).unwrap_or_default()
        } else {
            String::new()
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
        const METHOD: &str = "/lianxi.v1.Cases/GetAgenda";
        let principal = self
            .gate
            .admit(request.metadata(), METHOD, Service::Cases)
            .await?;
        let req = request.get_ref().clone();
        let now = req.now.unwrap_or_else(wall_clock);
        let filter = CaseFilter {
            jurisdiction: req.jurisdiction.clone(),
            ..CaseFilter::default()
        };
        let (views, _) = self.scan(&principal, filter, now, String::new(), 0).await?;
        let days = match req.expiring_within_days {
            0 => 14,
            d => d,
        };
        let items = lianxi_domain::agenda(&views, &now, days);
        let on_agenda: Vec<CaseView> = items
            .iter()
            .filter_map(|i| i.case.as_ref())
            .filter_map(|c| views.iter().find(|v| v.case_id == c.case_id).cloned())
            .collect();
        self.gate
            .record(
                &principal,
                request.metadata(),
                METHOD,
                "",
                listed(&on_agenda),
            )
            .await?;
        Ok(Response::new(GetAgendaResponse {
            items,
            evaluated_at: Some(now),
        }))
    }

    type WatchCaseStream = ChangeStream;

    #[tracing::instrument(skip_all, fields(case_id = %request.get_ref().case_id))]
    async fn watch_case(
        &self,
        request: Request<WatchCaseRequest>,
    ) -> Result<Response<Self::WatchCaseStream>, Status> {
        const METHOD: &str = "/lianxi.v1.Cases/WatchCase";
        let principal = self
            .gate
            .admit(request.metadata(), METHOD, Service::Cases)
            .await?;
        let req = request.get_ref().clone();
        check_case_id(&req.case_id)?;
        let view = self.view(&req.case_id).await?;
        self.gate
            .check_case(&principal, request.metadata(), METHOD, &view)
            .await?;
        self.gate
            .record(
                &principal,
                request.metadata(),
                METHOD,
                &req.case_id,
                format!("watch after global sequence {}", req.after_global_sequence),
            )
            .await?;
        let p = principal.clone();
        let rx = crate::watch::spawn_case(
            self.log.clone(),
            self.changes.clone(),
            req.case_id,
            req.after_global_sequence,
            Box::new(move |v| crate::auth::may_read_case(&p, v)),
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
        const METHOD: &str = "/lianxi.v1.Cases/WatchCases";
        let principal = self
            .gate
            .admit(request.metadata(), METHOD, Service::Cases)
            .await?;
        let req = request.get_ref().clone();
        self.gate
            .record(
                &principal,
                request.metadata(),
                METHOD,
                "",
                format!(
                    "watch cases after global sequence {} (each case checked for need to know)",
                    req.after_global_sequence
                ),
            )
            .await?;
        let p = principal.clone();
        let rx = crate::watch::spawn_cases(
            self.log.clone(),
            self.changes.clone(),
            req.filter.unwrap_or_default(),
            req.after_global_sequence,
            wall_clock,
            Box::new(move |v| crate::auth::may_read_case(&p, v)),
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
        const METHOD: &str = "/lianxi.v1.Cases/GetStats";
        let principal = self
            .gate
            .admit(request.metadata(), METHOD, Service::Cases)
            .await?;
        let req = request.get_ref().clone();
        let now = req.now.unwrap_or_else(wall_clock);
        let filter = CaseFilter {
            jurisdiction: req.jurisdiction.clone(),
            opened_from: req.opened_from,
            opened_before: req.opened_before,
            ..CaseFilter::default()
        };
        let (views, _) = self.scan(&principal, filter, now, String::new(), 0).await?;
        self.gate
            .record(
                &principal,
                request.metadata(),
                METHOD,
                "",
                format!("statistics over {} case(s)", views.len()),
            )
            .await?;
        Ok(Response::new(lianxi_domain::stats(&views, &now)))
    }
}
