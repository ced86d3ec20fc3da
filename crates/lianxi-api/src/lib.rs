//! gRPC handlers: `lianxi.v1.Cases` (secretariat and agencies),
//! `lianxi.v1.Audit` (auditors) and `lianxi.v1.Intake` (rejections).
//!
//! Every call passes one door ([`Door`], over the core [`Gate::open`]): the
//! caller is authenticated, its role checked against the service, and the
//! handler gets a [`Call`]; need to know is checked per case, and every
//! answer, allowed or refused, is written to the chained access log before
//! it is sent. A case the caller may not see and a case that does not exist
//! get the same answer, so the API tells nobody which case ids exist.
//!
//! Errors become `tonic::Status` in one place, [`status`]: caller mistakes
//! map to `InvalidArgument` / `NotFound` / `PermissionDenied`, storage
//! failures to `Internal` with the detail in the node's log, not in the
//! reply.

#![forbid(unsafe_code)]

mod audit;
mod auth;
mod cases;
mod checkpoints;
mod gate;
mod intake;
mod personal;
mod watch;

pub use audit::{AuditApi, LogStream};
pub use auth::{
    AuthConfigError, DEVELOPMENT_PRINCIPAL, MAX_PURPOSE_CHARS, PURPOSE_METADATA, Principal,
    Principals, Role, Service, may_call, may_read_case, purpose,
};
pub use cases::CasesApi;
pub use checkpoints::{Checkpointer, IssueError};
pub use gate::{Call, Door, Gate, MAX_ECHO_CHARS, MAX_MESSAGE_CHARS, bounded, echo};
pub use intake::IntakeApi;

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{CaseChange, CaseView, LogEntry, TimelineEntry};
use tonic::Status;

/// Default and maximum page sizes: bounded, so one call cannot ask the node
/// for an unbounded answer.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A stream of case changes for the watch calls.
pub type ChangeStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<CaseChange, Status>> + Send>>;

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if n > MAX_PAGE_SIZE => Err(Status::invalid_argument(format!(
            "page_size {n} is above the maximum of {MAX_PAGE_SIZE}; ask for a smaller page and follow the cursor"
        ))),
        n => Ok(n as usize),
    }
}

/// Runs blocking log work off the async threads; a storage error becomes a
/// `Status` through `map`.
async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
    map: impl FnOnce(E) -> Status,
) -> Result<T, Status>
where
    T: Send + 'static,
    E: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(map)
}

/// [`blocking`] with a read of the log and the usual storage error.
async fn on_log<T: Send + 'static>(
    log: &lianxi_log::Log,
    f: impl FnOnce(&lianxi_log::Log) -> lianxi_log::Result<T> + Send + 'static,
) -> Result<T, Status> {
    let log = log.clone();
    blocking(move || f(&log), status).await
}

fn status(e: lianxi_log::Error) -> Status {
    tracing::error!(error = %e, "storage error while serving a request");
    Status::internal(
        "the node could not read its log; the operator should check the node's log output",
    )
}

/// A view with every personal value still sealed in it concealed.
fn conceal_view(mut view: CaseView) -> CaseView {
    view.personal = view.personal.iter().map(lianxi_crypto::conceal).collect();
    view
}

fn check_case_id(case_id: &str) -> Result<(), Status> {
    if lianxi_domain::is_case_id(case_id) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "\"{}\" is not a case id: use 1 to {} characters of A-Z a-z 0-9 _ -",
            echo(case_id),
            lianxi_domain::MAX_ID_LEN
        )))
    }
}

/// A case the caller may not see, or that does not exist: one answer for
/// both, so that no caller learns which case ids exist.
fn unseen(case_id: &str) -> Status {
    Status::not_found(format!(
        "no case {} within your sight on this node: either it does not exist here (yet), or it is not among the cases your agency is involved in or your jurisdiction holds; check the id, wait until the node has applied the event that opens it, or ask the lead agency to refer it",
        echo(case_id)
    ))
}

/// A case that does not exist, for callers who may see every case
/// (auditors).
fn not_found(case_id: &str) -> Status {
    Status::not_found(format!(
        "no case {} on this node; check the id, or wait until the node has applied the event that opens it",
        echo(case_id)
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

/// One timeline line from a log entry. Personal values still sealed in the
/// entry (not revealed to this caller) go out as withheld, never as
/// ciphertext.
pub fn timeline_entry(entry: &LogEntry) -> TimelineEntry {
    let event = entry.event.clone().unwrap_or_default();
    let withheld = entry.sealed.iter().map(lianxi_crypto::conceal).collect();
    TimelineEntry {
        event: Some(event.clone()),
        withheld,
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
