//! Readiness: what the node can truthfully promise right now, reported by
//! the gRPC health service and enforced in front of the lianxi services.
//!
//! The node is not ready while its data directory cannot be written (disk
//! full, read-only, an I/O error: no read can be recorded in the access
//! log, so none is served), while its log is below the high-water mark
//! (it would serve a history shorter than what it already receipted or
//! signed), and while damage found at start keeps it from writing. The
//! first two refuse lianxi calls with `UNAVAILABLE` and the reason; a
//! damaged log stays readable, for the investigation, but health says
//! NOT_SERVING. The health service itself always answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use lianxi_api::{AuditApi, CasesApi, IntakeApi};
use lianxi_log::Log;
use lianxi_proto::v1::{
    audit_server::AuditServer, cases_server::CasesServer, intake_server::IntakeServer,
};
use tokio::sync::watch;
use tonic_health::server::HealthReporter;

/// How often the node's state is looked at again.
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    /// Why the node is not ready, if it is not.
    reason: Option<String>,
    /// Whether lianxi calls are refused meanwhile.
    refuse: bool,
}

/// The node's readiness, shared by the watcher and the gate.
#[derive(Clone)]
pub(crate) struct Readiness {
    /// `None` until the first update, so that one always reports.
    state: Arc<RwLock<Option<State>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            state: Arc::new(RwLock::new(None)),
        }
    }
}

fn current(log: &Log) -> State {
    if let Some(reason) = log.storage_failure() {
        return State {
            reason: Some(format!(
                "not ready: {reason}; reads are refused because they cannot be recorded in the access log, and events wait in the stream"
            )),
            refuse: true,
        };
    }
    if let Some(behind) = log.behind() {
        return State {
            reason: Some(format!("not ready: {behind}")),
            refuse: true,
        };
    }
    if let Some(damage) = log.damage() {
        return State {
            reason: Some(format!("not ready: {damage}")),
            refuse: false,
        };
    }
    State {
        reason: None,
        refuse: false,
    }
}

impl Readiness {
    /// Reads the node's state, and on a change tells the health service
    /// and the log.
    pub(crate) async fn update(&self, log: &Log, health: &HealthReporter) {
        let next = current(log);
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            if state.as_ref() == Some(&next) {
                return;
            }
            *state = Some(next.clone());
        }
        match &next.reason {
            Some(reason) => {
                tracing::error!(reason = %reason, "health: NOT_SERVING");
                health.set_not_serving::<CasesServer<CasesApi>>().await;
                health.set_not_serving::<IntakeServer<IntakeApi>>().await;
                health.set_not_serving::<AuditServer<AuditApi>>().await;
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
            None => {
                tracing::info!("health: SERVING");
                health.set_serving::<CasesServer<CasesApi>>().await;
                health.set_serving::<IntakeServer<IntakeApi>>().await;
                health.set_serving::<AuditServer<AuditApi>>().await;
                health
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
            }
        }
    }

    fn refusal(&self) -> Option<String> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .as_ref()
            .filter(|s| s.refuse)
            .and_then(|s| s.reason.clone())
    }
}

/// Keeps readiness current until `shutdown`. While the store has failed it
/// also tries to reopen it, so an idle node (no events arriving to make
/// ingest retry) comes back by itself when space returns.
pub(crate) async fn watch(
    log: Log,
    readiness: Readiness,
    health: HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_try = tokio::time::Instant::now();
    loop {
        if log.storage_failure().is_some() && last_try.elapsed() >= lianxi_ingest::STORAGE_RETRY {
            last_try = tokio::time::Instant::now();
            let l = log.clone();
            match tokio::task::spawn_blocking(move || l.recover()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the data directory cannot be written yet")
                }
                Err(e) => tracing::warn!(error = %e, "reopening the data directory failed"),
            }
        }
        readiness.update(&log, &health).await;
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// The gate: refuses calls to the lianxi services with `UNAVAILABLE` and
/// the reason while readiness says so; health and reflection pass.
#[derive(Clone)]
pub(crate) struct ReadyLayer {
    readiness: Readiness,
}

impl ReadyLayer {
    pub(crate) fn new(readiness: Readiness) -> Self {
        ReadyLayer { readiness }
    }
}

impl<S> tower::Layer<S> for ReadyLayer {
    type Service = ReadyGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadyGate {
            inner,
            readiness: self.readiness.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct ReadyGate<S> {
    inner: S,
    readiness: Readiness,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for ReadyGate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with("/lianxi.v1.")
            && let Some(reason) = self.readiness.refusal()
        {
            let status = tonic::Status::unavailable(format!("{reason}; try again later"));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}
