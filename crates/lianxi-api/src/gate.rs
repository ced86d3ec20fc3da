//! The one door every call goes through: who is calling, may they call this
//! service, and a record in the access log of every answer, allowed or not,
//! before it leaves the node.
//!
//! Two parts:
//!
//! - [`Gate::open`] is the core: it authenticates a bearer token from HTTP
//!   headers, checks the role may use the service, records a refusal, and
//!   hands back a [`Call`]: the principal and the handle through which the
//!   handler notes the case asked for and records what it shows. A plain
//!   HTTP handler (the web console) uses it as it is.
//! - [`Door`] wraps a tonic service (a tower service): every request passes
//!   [`Gate::open`], the [`Call`] goes to the handler in the request's
//!   extensions, and when the handler has answered, an answer nobody
//!   recorded is recorded (a refusal with its status, the case id the
//!   handler noted) before it is sent. A handler reached without the door
//!   finds no [`Call`] and answers `Internal`, so no handler can serve
//!   unrecorded.
//!
//! Every status message that leaves through the door is bounded and has
//! its control characters escaped, and so is every value in an access
//! record.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt as _;

use lianxi_log::AccessLog;
use lianxi_proto::v1::{AccessRecord, PrincipalRole};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;

pub(crate) use crate::auth::Service;
use crate::auth::{Principal, Principals, may_call, purpose};
use crate::wall_clock;

/// At most this many characters of a value the caller sent (a case id) are
/// echoed in a status message or kept in an access record.
pub const MAX_ECHO_CHARS: usize = 100;

/// At most this many characters of a status message leave the node, and of
/// an access record's detail are kept.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// `s` with hidden characters escaped (`\n`, `\u{202e}`), cut to `max`
/// characters; a cut value says how long it was.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str(&format!("... ({} characters in all)", s.chars().count()));
            break;
        }
        // Controls and invisible or bidirectional marks: the domain's one
        // rule for text that would change how a message reads.
        if lianxi_domain::is_unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A value the caller sent, fit to echo: escaped and bounded.
pub fn echo(s: &str) -> String {
    bounded(s, MAX_ECHO_CHARS)
}

/// Authentication, authorisation and the access log, shared by the services.
#[derive(Clone)]
pub struct Gate {
    principals: Arc<Principals>,
    access: AccessLog,
}

impl Gate {
    pub fn new(principals: Principals, access: AccessLog) -> Gate {
        Gate {
            principals: Arc::new(principals),
            access,
        }
    }

    pub fn access_log(&self) -> AccessLog {
        self.access.clone()
    }

    /// The door's core, for gRPC and plain HTTP alike: authenticates the
    /// caller from `authorization: Bearer <token>` in `headers` and checks
    /// the role may use `service`. A refusal is recorded before it is
    /// returned. `method` names what is called (a gRPC path, or an HTTP
    /// method and path); it is recorded bounded and escaped.
    pub async fn open(
        &self,
        headers: &http::HeaderMap,
        method: &str,
        service: Service,
    ) -> Result<Call, Status> {
        let metadata = MetadataMap::from_headers(headers.clone());
        let purpose = purpose(&metadata);
        let method = bounded(method, MAX_ECHO_CHARS);
        let principal = match self.principals.authenticate(&metadata) {
            Ok(p) => p,
            Err(s) => {
                self.append(AccessRecord {
                    principal: "(unauthenticated)".into(),
                    role: PrincipalRole::Unspecified as i32,
                    method,
                    purpose,
                    allowed: false,
                    detail: bounded(s.message(), MAX_MESSAGE_CHARS),
                    ..AccessRecord::default()
                })
                .await?;
                return Err(s);
            }
        };
        let call = Call {
            inner: Arc::new(CallInner {
                gate: self.clone(),
                principal,
                method,
                purpose,
                state: Mutex::new(CallState::default()),
            }),
        };
        if let Err(s) = may_call(&call.inner.principal, service) {
            return Err(call.refuse(s).await);
        }
        Ok(call)
    }

    async fn append(&self, mut record: AccessRecord) -> Result<(), Status> {
        record.at = Some(wall_clock());
        let access = self.access.clone();
        crate::blocking(move || access.append(record).map(|_| ()), |e| {
                tracing::error!(error = %e, "cannot write the access log; refusing to serve");
                Status::unavailable(
                    "the node cannot record this access, so it serves nothing; the operator should check the node's disk",
                )
            })
            .await
    }
}

/// One call that passed the door: the principal, and what the handler
/// records of it. Cheap to clone; a watch keeps one to record each batch.
#[derive(Clone)]
pub struct Call {
    inner: Arc<CallInner>,
}

struct CallInner {
    gate: Gate,
    principal: Principal,
    method: String,
    purpose: String,
    state: Mutex<CallState>,
}

#[derive(Default)]
struct CallState {
    /// The case the caller asked for, escaped and bounded.
    case_id: String,
    /// Records written for this call.
    records: u64,
}

impl Call {
    /// The call as the door handed it to a gRPC handler; `Internal` if the
    /// service is served without the door (a wiring mistake: nothing is
    /// served unrecorded).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Call, Status> {
        request.extensions().get::<Call>().cloned().ok_or_else(|| {
            tracing::error!("a lianxi service is served without its door; refusing the call");
            Status::internal(
                "this service is wired without its access control; the operator should serve it through lianxi_api (into_server)",
            )
        })
    }

    pub fn principal(&self) -> &Principal {
        &self.inner.principal
    }

    /// Notes the case the caller asked for, so that whatever the answer
    /// (even a refusal of the id itself) is recorded under it.
    pub fn ask(&self, case_id: &str) {
        self.state().case_id = echo(case_id);
    }

    /// The case asked for, as recorded (escaped and bounded).
    pub fn asked(&self) -> String {
        self.state().case_id.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether anything was recorded for this call yet.
    pub fn recorded(&self) -> bool {
        self.state().records > 0
    }

    /// Records an allowed read of the case asked for (if any) and of
    /// `shown`, the cases a call over many cases shows; the data may be
    /// sent once this returns.
    pub async fn record(&self, detail: &str, shown: Vec<String>) -> Result<(), Status> {
        self.append(true, detail, shown).await
    }

    /// Records a refusal and gives back the status to return (bounded and
    /// escaped), or `Unavailable` if the access log cannot be written.
    pub async fn refuse(&self, refusal: Status) -> Status {
        let refusal = clean(refusal);
        match self.append(false, refusal.message(), Vec::new()).await {
            Ok(()) => refusal,
            Err(s) => s,
        }
    }

    async fn append(&self, allowed: bool, detail: &str, shown: Vec<String>) -> Result<(), Status> {
        let p = &self.inner.principal;
        let record = AccessRecord {
            principal: p.name.clone(),
            role: p.proto_role() as i32,
            scope: p.scope(),
            method: self.inner.method.clone(),
            case_id: self.asked(),
            purpose: self.inner.purpose.clone(),
            allowed,
            detail: bounded(detail, MAX_MESSAGE_CHARS),
            case_ids: shown.iter().map(|c| echo(c)).collect(),
            ..AccessRecord::default()
        };
        self.inner.gate.append(record).await?;
        self.state().records += 1;
        Ok(())
    }
}

/// The status with its message escaped and bounded.
fn clean(s: Status) -> Status {
    let message = bounded(s.message(), MAX_MESSAGE_CHARS);
    if message == s.message() {
        s
    } else {
        Status::new(s.code(), message)
    }
}

/// A tonic service behind the door. Build one with the services'
/// `into_server`.
#[derive(Clone)]
pub struct Door<S> {
    inner: S,
    gate: Gate,
    service: Service,
}

impl<S> Door<S> {
    pub(crate) fn new(inner: S, gate: Gate, service: Service) -> Self {
        Door {
            inner,
            gate,
            service,
        }
    }
}

impl<S: NamedService> NamedService for Door<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<http::Request<Body>> for Door<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        let service = self.service;
        Box::pin(async move {
            let method = request.uri().path().to_owned();
            let call = match gate.open(request.headers(), &method, service).await {
                Ok(call) => call,
                Err(s) => return Ok(clean(s).into_http()),
            };
            request.extensions_mut().insert(call.clone());
            // A handler that panics (sled does on some damaged files) ends
            // as a recorded INTERNAL answer, not a reset stream.
            let answered = std::panic::AssertUnwindSafe(async { inner.call(request).await })
                .catch_unwind()
                .await;
            let response = match answered {
                Ok(response) => response?,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(method, panic = %lianxi_domain::printable(&what, 500), "a handler panicked; answered INTERNAL");
                    let s = Status::internal(format!(
                        "the node failed while answering {}; the failure is in its log; try again, and if it persists tell the node's operator",
                        bounded(&method, 100)
                    ));
                    return Ok(call.refuse(s).await.into_http());
                }
            };
            // A refusal comes back as a trailers-only response, its status
            // in the headers; an answer with data has none there.
            match Status::from_header_map(response.headers()) {
                Some(s) if s.code() != tonic::Code::Ok => {
                    let s = clean(s);
                    if call.recorded() {
                        Ok(s.into_http())
                    } else {
                        Ok(call.refuse(s).await.into_http())
                    }
                }
                _ => {
                    if !call.recorded() {
                        // A handler that answered without recording: the
                        // answer is recorded here before it leaves.
                        tracing::error!(method, "an answer was not recorded by its handler");
                        if let Err(s) = call.record("answer recorded by the door", Vec::new()).await
                        {
                            return Ok(s.into_http());
                        }
                    }
                    Ok(response)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tonic service whose handler panics, as one reading a damaged sled
    /// file does.
    #[derive(Clone)]
    struct Panics;

    impl tonic::codegen::Service<http::Request<Body>> for Panics {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            panic!("tried to serialize Uninitialized")
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_recorded_internal_answer() {
        use tonic::codegen::Service as _;
        let dir = tempfile::tempdir().unwrap();
        let log = lianxi_log::Log::open(dir.path(), lianxi_domain::Policy::default()).unwrap();
        let gate = Gate::new(Principals::development(), log.access_log());
        let mut door = Door::new(Panics, gate, Service::Cases);
        let request = http::Request::builder()
            .uri("/lianxi.v1.Cases/GetCase")
            .body(Body::empty())
            .unwrap();
        let response = door.call(request).await.unwrap();
        let status = Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status.message().contains("tell the node's operator"),
            "{status:?}"
        );
        let (records, _) = log.access_log().list(&Default::default(), 10).unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(!records[0].allowed);
        assert_eq!(records[0].method, "/lianxi.v1.Cases/GetCase");
    }

    #[test]
    fn bounded_escapes_hidden_characters_and_says_how_long_a_cut_value_was() {
        assert_eq!(bounded("DV-2026-0117", 100), "DV-2026-0117");
        assert_eq!(bounded("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(bounded("evil\u{202e}txt", 100), "evil\\u{202e}txt");
        assert_eq!(bounded("\u{200b}", 100), "\\u{200b}");
        // Unicode that reads as itself stays.
        assert_eq!(bounded("核查 risk", 100), "核查 risk");
        let long = "x".repeat(100_000);
        let cut = bounded(&long, 100);
        assert!(cut.starts_with(&"x".repeat(100)), "{cut}");
        assert!(cut.ends_with("... (100000 characters in all)"), "{cut}");
        assert!(cut.len() < 200);
        assert_eq!(echo(&long), cut);
    }

    #[test]
    fn clean_keeps_the_code_and_bounds_the_message() {
        let s = clean(Status::not_found(format!("no case {}\n", "y".repeat(5000))));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().chars().count() < MAX_MESSAGE_CHARS + 40);
        assert!(!s.message().contains('\n'));
    }
}
