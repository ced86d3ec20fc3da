//! Hostile requests through the in-process gRPC server (the real
//! `CasesApi`, `AuditApi` and `IntakeApi` over a real log in a temporary
//! directory, served by tonic on 127.0.0.1, called through the generated
//! clients), as `tests/api.rs` sets it up.
//!
//! Inputs: case ids of random characters (control characters, dots, `*`,
//! `>`, 100,000 characters), random page tokens, extreme `now` and filter
//! timestamps, random page sizes and sequences, random and missing bearer
//! tokens and purposes.
//!
//! What must hold for every reply: the code is OK, INVALID_ARGUMENT,
//! NOT_FOUND, PERMISSION_DENIED or UNAUTHENTICATED, never INTERNAL, UNKNOWN
//! or RESOURCE_EXHAUSTED; the message is shorter than 1 KiB and holds no
//! control characters; an OK page is no larger than asked; a page token the
//! node never issued is refused; the node answers a good request after
//! every hostile one. Nothing may hang (each call is guarded).
//!
//! The strict properties (long input never echoed whole, no control
//! characters echoed, garbage page tokens refused) are asserted for every
//! input.
//!
//! Runs are reproducible: a fixed seed unless `PROPTEST_RNG_SEED` is set,
//! 256 cases per property unless `PROPTEST_CASES` is set, failures
//! persisted beside this file (`hostile.proptest-regressions`, committed).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use lianxi_api::{AuditApi, CasesApi, Checkpointer, Gate, IntakeApi, Principals};
use lianxi_log::{EventOutcome, GroupKeys, GroupReport, Incoming, Log};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::audit_client::AuditClient;
use lianxi_proto::v1::cases_client::CasesClient;
use lianxi_proto::v1::get_case_as_of_request::At;
use lianxi_proto::v1::intake_client::IntakeClient;
use lianxi_proto::v1::{
    CaseFilter, GetAgendaRequest, GetCaseAsOfRequest, GetCaseRequest, GetCheckpointRequest,
    GetConsistencyProofRequest, GetInclusionProofRequest, GetStatsRequest, GetTimelineRequest,
    GetTreeHeadRequest, ListAccessRequest, ListCasesRequest, ListCheckpointsRequest,
    ListRejectionsRequest, ReadLogRequest, WatchCaseRequest, WatchCasesRequest,
};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Status};

// ---------------------------------------------------------------- settings

const SEED: u64 = 0x6c69_616e_7869; // "lianxi"

fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    c.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource(
        "proptest-regressions",
    )));
    c
}

/// The longest status message a client may get.
const MAX_MESSAGE_BYTES: usize = 1024;

/// How long one call may take before the test calls it a hang.
const GUARD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- the node

const POLICE: &str = "t-police";
const COURT: &str = "t-court";
const XIHU: &str = "t-xihu";
const CITY: &str = "t-city";
const AUDITOR: &str = "t-audit";
const OPERATOR: &str = "t-ops";
const TOKENS: [&str; 6] = [POLICE, COURT, XIHU, CITY, AUDITOR, OPERATOR];

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn principals() -> Principals {
    let toml = format!(
        r#"
[[principal]]
name = "police-records"
role = "agency"
agency = "police"
token_sha256 = "{}"

[[principal]]
name = "court-clerk"
role = "agency"
agency = "court"
token_sha256 = "{}"

[[principal]]
name = "secretariat-xihu"
role = "secretariat"
jurisdiction = "330100/330106"
token_sha256 = "{}"

[[principal]]
name = "secretariat-city"
role = "secretariat"
jurisdiction = "330100"
token_sha256 = "{}"

[[principal]]
name = "audit-office"
role = "auditor"
token_sha256 = "{}"

[[principal]]
name = "ops"
role = "operator"
token_sha256 = "{}"
"#,
        sha(POLICE),
        sha(COURT),
        sha(XIHU),
        sha(CITY),
        sha(AUDITOR),
        sha(OPERATOR)
    );
    Principals::from_toml(&toml).expect("the test principals file is valid")
}

/// One node for every case of every property: a runtime, the log with a
/// simulated city and some rejections, and the server.
struct Node {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    /// Case ids on the node, in order.
    cases: Vec<String>,
    /// One case the police may read (it opened it).
    police_case: String,
    _dir: tempfile::TempDir,
    _changes: watch::Sender<Option<GroupReport>>,
}

static NODE: LazyLock<Node> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), lianxi_domain::Policy::default()).expect("open log");
    let keys = GroupKeys::derived("lianxi-test");
    let sim = lianxi_sim::generate(&lianxi_sim::Workload {
        cases: 30,
        seed: 5,
        prefix: "HA".into(),
        ..Default::default()
    });
    let mut msgs = Vec::new();
    let mut cases = std::collections::BTreeSet::new();
    let mut police_case = None;
    for (e, _) in sim {
        cases.insert(e.case_id.clone());
        if police_case.is_none()
            && e.agency == lianxi_proto::v1::Agency::Police as i32
            && matches!(e.body, Some(lianxi_proto::v1::event::Body::CaseOpened(_)))
        {
            police_case = Some(e.case_id.clone());
        }
        msgs.push(Incoming {
            stream_sequence: msgs.len() as u64 + 1,
            subject: lianxi_domain::event_subject(&e).expect("subject"),
            recorded_at: e.occurred_at.unwrap_or_default(),
            payload: e.encode_to_vec(),
        });
    }
    // Some rejections for the Intake service to list.
    for bad in [b"\xff\xfe".to_vec(), vec![0x0a, 0x01, b'.'], Vec::new()] {
        msgs.push(Incoming {
            stream_sequence: msgs.len() as u64 + 1,
            subject: "lianxi.v1.events.police.HA-000001".into(),
            recorded_at: Timestamp {
                seconds: 1_795_881_600,
                nanos: 0,
            },
            payload: bad,
        });
    }
    let mut accepted = 0;
    for group in msgs.chunks(200) {
        let report = log.append_group(group, &keys).expect("append");
        accepted += report
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, EventOutcome::Accepted { .. }))
            .count();
    }
    assert!(accepted > 100, "the city landed");
    let (changes, changes_rx) = watch::channel(None);
    let addr: SocketAddr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let gate = Gate::new(principals(), log.access_log());
        let cases = CasesApi::new(log.clone(), gate.clone(), changes_rx)
            .with_derived_keys("lianxi-test")
            .into_server();
        let key = lianxi_log::generate_signing_key("hostile.test/lianxi").expect("a signing key");
        let signer = lianxi_log::CheckpointSigner::new(&key).expect("a signer");
        let audit = AuditApi::new(log.clone(), gate.clone())
            .with_checkpointer(Checkpointer::new(log.clone(), signer))
            .into_server();
        let intake = IntakeApi::new(log.clone(), gate).into_server();
        tokio::spawn(async move {
            Server::builder()
                .add_service(cases)
                .add_service(audit)
                .add_service(intake)
                .serve_with_incoming(incoming)
                .await
                .expect("server runs");
        });
        addr
    });
    Node {
        rt,
        addr,
        cases: cases.into_iter().collect(),
        police_case: police_case.expect("the police opened a case"),
        _dir: dir,
        _changes: changes,
    }
});

/// A connection of its own for every call: a reply that breaks the
/// connection (an oversized status header makes the client's HTTP/2 layer
/// send GOAWAY) must not fail other calls, and is seen as what it is.
fn channel() -> Channel {
    Endpoint::from_shared(format!("http://{}", NODE.addr))
        .expect("endpoint")
        .connect_lazy()
}

// ---------------------------------------------------------------- inputs

fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => prop::char::range('0', '9'),
        2 => prop::sample::select(vec!['.', '*', '>', ' ', '/', ':', '-', '_', '%', '"', '\\']),
        2 => prop::char::range('\u{0}', '\u{1f}'),
        1 => prop::sample::select(vec!['\u{7f}', '\u{85}', '\u{9b}', '\u{202e}', '\u{feff}']),
        1 => any::<char>(),
    ]
}

/// Strings as an attacker would send them, 100,000 characters included.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(hostile_char(), 0..90).prop_map(|v| v.into_iter().collect()),
        1 => (hostile_char(), 60usize..70).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        1 => hostile_char().prop_map(|c| std::iter::repeat_n(c, 100_000).collect()),
    ]
}

/// A case id: one of the node's, or a hostile string.
fn case_id() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<prop::sample::Index>().prop_map(|i| i.get(&NODE.cases).clone()),
        1 => "[A-Za-z0-9_-]{1,64}",
        3 => hostile_string(),
    ]
}

fn timestamp() -> impl Strategy<Value = Option<Timestamp>> {
    let seconds = prop_oneof![
        2 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, -1, 0, 253_402_300_800, i64::MAX]),
        2 => 1_700_000_000i64..1_900_000_000,
    ];
    let nanos = prop_oneof![
        2 => 0i32..1_000_000_000,
        1 => prop::sample::select(vec![i32::MIN, -1, 1_000_000_000, i32::MAX]),
    ];
    prop::option::of((seconds, nanos).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos }))
}

fn page_size() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => 0u32..20,
        1 => prop::sample::select(vec![1000, 1001, u32::MAX]),
        1 => any::<u32>(),
    ]
}

fn sequence() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0u64..400,
        1 => prop::sample::select(vec![u64::MAX, u64::MAX - 1, 1 << 63]),
        1 => any::<u64>(),
    ]
}

/// The bearer token (or none), and a purpose (or none).
#[derive(Debug, Clone)]
struct Caller {
    token: Option<String>,
    purpose: Option<String>,
}

/// Metadata is cut to 4,000 bytes (token and purpose together stay under
/// the limit): HTTP/2 refuses a header list over 16 KiB (hyper's default,
/// HTTP 431) before any service sees the request.
fn metadata_string() -> impl Strategy<Value = String> {
    hostile_string().prop_map(|s| {
        let mut out = String::new();
        for c in s.chars() {
            if out.len() + c.len_utf8() > 4_000 {
                break;
            }
            out.push(c);
        }
        out
    })
}

fn caller() -> impl Strategy<Value = Caller> {
    (
        prop_oneof![
            4 => prop::sample::select(TOKENS.to_vec()).prop_map(|t| Some(t.to_owned())),
            1 => Just(None),
            1 => metadata_string().prop_map(Some),
        ],
        prop::option::of(prop_oneof![
            Just("%E6%A0%B8%E6%9F%A5%20risk".to_owned()),
            metadata_string(),
        ]),
    )
        .prop_map(|(token, purpose)| Caller { token, purpose })
}

/// One request to any of the services.
#[derive(Debug, Clone)]
enum Call {
    GetCase(GetCaseRequest),
    GetTimeline(GetTimelineRequest),
    ListCases(ListCasesRequest),
    GetAgenda(GetAgendaRequest),
    GetStats(GetStatsRequest),
    WatchCase(WatchCaseRequest),
    WatchCases(WatchCasesRequest),
    ReadLog(ReadLogRequest),
    GetCaseAsOf(GetCaseAsOfRequest),
    ListAccess(ListAccessRequest),
    GetTreeHead(GetTreeHeadRequest),
    GetInclusionProof(GetInclusionProofRequest),
    GetConsistencyProof(GetConsistencyProofRequest),
    ListCheckpoints(ListCheckpointsRequest),
    GetCheckpoint(GetCheckpointRequest),
    ListRejections(ListRejectionsRequest),
}

fn filter() -> impl Strategy<Value = Option<CaseFilter>> {
    prop::option::of(
        (
            hostile_string(),
            prop::collection::vec(any::<i32>(), 0..3),
            any::<i32>(),
            timestamp(),
            timestamp(),
        )
            .prop_map(|(jurisdiction, enums, agency, from, before)| CaseFilter {
                jurisdiction,
                statuses: enums.clone(),
                categories: enums.clone(),
                risk_levels: enums,
                involved_agency: agency,
                opened_from: from,
                opened_before: before,
                ..CaseFilter::default()
            }),
    )
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        (case_id(), timestamp())
            .prop_map(|(case_id, now)| Call::GetCase(GetCaseRequest { case_id, now })),
        (case_id(), sequence(), page_size()).prop_map(|(case_id, after, page_size)| {
            Call::GetTimeline(GetTimelineRequest {
                case_id,
                after_case_sequence: after,
                page_size,
            })
        }),
        (
            filter(),
            timestamp(),
            prop_oneof![Just(String::new()), case_id()],
            page_size()
        )
            .prop_map(|(filter, now, page_token, page_size)| {
                Call::ListCases(ListCasesRequest {
                    filter,
                    now,
                    page_token,
                    page_size,
                })
            }),
        (hostile_string(), timestamp(), any::<u32>()).prop_map(|(jurisdiction, now, days)| {
            Call::GetAgenda(GetAgendaRequest {
                jurisdiction,
                now,
                expiring_within_days: days,
            })
        }),
        (hostile_string(), timestamp(), timestamp(), timestamp()).prop_map(
            |(jurisdiction, from, before, now)| Call::GetStats(GetStatsRequest {
                jurisdiction,
                opened_from: from,
                opened_before: before,
                now,
            })
        ),
        (case_id(), sequence()).prop_map(|(case_id, after)| Call::WatchCase(WatchCaseRequest {
            case_id,
            after_global_sequence: after,
        })),
        (filter(), sequence()).prop_map(|(filter, after)| Call::WatchCases(WatchCasesRequest {
            filter,
            after_global_sequence: after,
        })),
        (sequence(), sequence()).prop_map(|(from, to)| Call::ReadLog(ReadLogRequest {
            from_global_sequence: from,
            to_global_sequence: to,
        })),
        (
            case_id(),
            prop_oneof![
                sequence().prop_map(|g| Some(At::GlobalSequence(g))),
                timestamp().prop_map(|t| t.map(At::RecordedAt)),
            ]
        )
            .prop_map(|(case_id, at)| Call::GetCaseAsOf(GetCaseAsOfRequest { case_id, at })),
        (
            case_id(),
            hostile_string(),
            timestamp(),
            timestamp(),
            sequence(),
            page_size()
        )
            .prop_map(|(case_id, principal, from, before, after, page_size)| {
                Call::ListAccess(ListAccessRequest {
                    case_id,
                    principal,
                    from,
                    before,
                    after_sequence: after,
                    page_size,
                })
            }),
        sequence().prop_map(|tree_size| Call::GetTreeHead(GetTreeHeadRequest { tree_size })),
        (sequence(), sequence()).prop_map(|(g, tree_size)| {
            Call::GetInclusionProof(GetInclusionProofRequest {
                global_sequence: g,
                tree_size,
            })
        }),
        (sequence(), sequence()).prop_map(|(old_size, new_size)| {
            Call::GetConsistencyProof(GetConsistencyProofRequest { old_size, new_size })
        }),
        (sequence(), page_size()).prop_map(|(after_number, page_size)| {
            Call::ListCheckpoints(ListCheckpointsRequest {
                after_number,
                page_size,
            })
        }),
        any::<bool>().prop_map(|fresh| Call::GetCheckpoint(GetCheckpointRequest { fresh })),
        (any::<i32>(), sequence(), page_size()).prop_map(|(agency, after, page_size)| {
            Call::ListRejections(ListRejectionsRequest {
                agency,
                after_stream_sequence: after,
                page_size,
            })
        }),
    ]
}

// ---------------------------------------------------------------- checks

/// A request with the caller's metadata. Values that cannot be metadata
/// at all (a newline, say) are left out, as a client library would refuse
/// to send them.
fn request<T>(caller: &Caller, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(token) = &caller.token
        && let Ok(v) = AsciiMetadataValue::try_from(format!("Bearer {token}"))
    {
        r.metadata_mut().insert("authorization", v);
    }
    if let Some(p) = &caller.purpose
        && let Ok(v) = AsciiMetadataValue::try_from(p.as_str())
    {
        r.metadata_mut().insert("lianxi-purpose", v);
    }
    r
}

/// What a reply told, for the checks.
struct Reply {
    status: Result<(), Status>,
    /// Items in an OK page, and the page size asked for (0: default 100).
    page: Option<(usize, u32)>,
}

impl Reply {
    fn of<T>(
        r: Result<tonic::Response<T>, Status>,
        page: impl FnOnce(&T) -> (usize, u32),
    ) -> Reply {
        match r {
            Ok(resp) => Reply {
                page: Some(page(resp.get_ref())),
                status: Ok(()),
            },
            Err(s) => Reply {
                status: Err(s),
                page: None,
            },
        }
    }
}

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, TestCaseError> {
    tokio::time::timeout(GUARD, f).await.map_err(|_| {
        TestCaseError::fail(format!("{what} did not answer within {GUARD:?} (a hang)"))
    })
}

async fn send(caller: &Caller, call: &Call) -> Result<Reply, TestCaseError> {
    let ch = channel();
    let mut cases = CasesClient::new(ch.clone());
    let mut audit = AuditClient::new(ch.clone());
    let mut intake = IntakeClient::new(ch);
    let name = format!("{call:?}").chars().take(40).collect::<String>();
    guard(&name, async {
        match call.clone() {
            Call::GetCase(m) => Reply::of(cases.get_case(request(caller, m)).await, |_| (0, 0)),
            Call::GetTimeline(m) => {
                let size = m.page_size;
                Reply::of(cases.get_timeline(request(caller, m)).await, |r| {
                    (r.entries.len(), size)
                })
            }
            Call::ListCases(m) => {
                let size = m.page_size;
                match cases.list_cases(request(caller, m)).await {
                    Ok(r) => Reply {
                        status: Ok(()),
                        page: Some((r.get_ref().cases.len(), size)),
                    },
                    Err(s) => Reply {
                        status: Err(s),
                        page: None,
                    },
                }
            }
            Call::GetAgenda(m) => Reply::of(cases.get_agenda(request(caller, m)).await, |_| (0, 0)),
            Call::GetStats(m) => Reply::of(cases.get_stats(request(caller, m)).await, |_| (0, 0)),
            // A watch that opens is dropped at once: its first message may
            // wait for a change that never comes.
            Call::WatchCase(m) => Reply::of(cases.watch_case(request(caller, m)).await, |_| (0, 0)),
            Call::WatchCases(m) => {
                Reply::of(cases.watch_cases(request(caller, m)).await, |_| (0, 0))
            }
            Call::ReadLog(m) => match audit.read_log(request(caller, m)).await {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    let mut status = Ok(());
                    while let Some(item) = stream.next().await {
                        if let Err(s) = item {
                            status = Err(s);
                            break;
                        }
                    }
                    Reply { status, page: None }
                }
                Err(s) => Reply {
                    status: Err(s),
                    page: None,
                },
            },
            Call::GetCaseAsOf(m) => {
                Reply::of(audit.get_case_as_of(request(caller, m)).await, |_| (0, 0))
            }
            Call::ListAccess(m) => {
                let size = m.page_size;
                Reply::of(audit.list_access(request(caller, m)).await, |r| {
                    (r.records.len(), size)
                })
            }
            Call::GetTreeHead(m) => {
                Reply::of(audit.get_tree_head(request(caller, m)).await, |_| (0, 0))
            }
            Call::GetInclusionProof(m) => {
                Reply::of(audit.get_inclusion_proof(request(caller, m)).await, |_| {
                    (0, 0)
                })
            }
            Call::GetConsistencyProof(m) => Reply::of(
                audit.get_consistency_proof(request(caller, m)).await,
                |_| (0, 0),
            ),
            Call::ListCheckpoints(m) => {
                let size = m.page_size;
                Reply::of(audit.list_checkpoints(request(caller, m)).await, |r| {
                    (r.checkpoints.len(), size)
                })
            }
            Call::GetCheckpoint(m) => {
                Reply::of(audit.get_checkpoint(request(caller, m)).await, |_| (0, 0))
            }
            Call::ListRejections(m) => {
                let size = m.page_size;
                Reply::of(intake.list_rejections(request(caller, m)).await, |r| {
                    (r.rejections.len(), size)
                })
            }
        }
    })
    .await
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A ListCases page token the node never issued.
fn garbage_token(call: &Call) -> bool {
    matches!(call, Call::ListCases(m) if !m.page_token.is_empty()
        && !NODE.cases.contains(&m.page_token))
}

fn check(call: &Call, reply: &Reply) -> Result<(), TestCaseError> {
    match &reply.status {
        Ok(()) => {
            if let Some((n, asked)) = reply.page {
                let limit = if asked == 0 { 100 } else { asked as usize };
                prop_assert!(n <= limit, "{n} items for a page of {asked}");
                prop_assert!(asked <= 1000, "page size {asked} accepted");
            }
            if garbage_token(call) {
                // A token the node never issued: garbage, not a place to start.
                if let Call::ListCases(m) = call {
                    prop_assert!(
                        false,
                        "ListCases accepted a page token the node never issued: {:?}",
                        m.page_token.chars().take(80).collect::<String>()
                    );
                }
            }
        }
        Err(s) => {
            let allowed = matches!(
                s.code(),
                Code::InvalidArgument
                    | Code::NotFound
                    | Code::PermissionDenied
                    | Code::Unauthenticated
            );
            prop_assert!(
                allowed,
                "{:?}: {} ({} bytes)",
                s.code(),
                s.message().chars().take(200).collect::<String>(),
                s.message().len()
            );
            prop_assert!(
                s.message().len() < MAX_MESSAGE_BYTES,
                "a {}-byte message ({:?}): {}...",
                s.message().len(),
                s.code(),
                s.message().chars().take(120).collect::<String>()
            );
            prop_assert!(
                !s.message().trim().is_empty(),
                "{:?} with no message",
                s.code()
            );
            prop_assert!(
                !has_control(s.message()),
                "the message holds control characters: {:?}",
                s.message().chars().take(200).collect::<String>()
            );
        }
    }
    Ok(())
}

/// The node still answers a good request.
async fn still_serving() -> Result<(), TestCaseError> {
    let mut cases = CasesClient::new(channel());
    let caller = Caller {
        token: Some(POLICE.into()),
        purpose: None,
    };
    let r = guard(
        "a good GetCase",
        cases.get_case(request(
            &caller,
            GetCaseRequest {
                case_id: NODE.police_case.clone(),
                now: None,
            },
        )),
    )
    .await?;
    prop_assert!(
        r.is_ok(),
        "a good request failed after a hostile one: {:?}",
        r.err()
    );
    Ok(())
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config(256))]

    /// Any request from any caller ends in an allowed status with a short,
    /// clean message, and the node keeps serving.
    #[test]
    fn every_reply_is_a_clear_status(caller in caller(), call in call()) {
        NODE.rt.block_on(async {
            let reply = send(&caller, &call).await?;
            check(&call, &reply)?;
            still_serving().await
        })?;
    }

    /// Case ids alone, from a caller who may read every case: a hostile id
    /// is INVALID_ARGUMENT, a well-formed unknown one NOT_FOUND, the node's
    /// own ids OK.
    #[test]
    fn case_ids_are_checked_before_anything(id in case_id(), now in timestamp()) {
        NODE.rt.block_on(async {
            let caller = Caller { token: Some(CITY.into()), purpose: None };
            let call = Call::GetCase(GetCaseRequest { case_id: id.clone(), now });
            let reply = send(&caller, &call).await?;
            check(&call, &reply)?;
            let well_formed = lianxi_domain::is_case_id(&id);
            match &reply.status {
                Ok(()) => prop_assert!(NODE.cases.contains(&id)),
                Err(s) if !well_formed => prop_assert_eq!(s.code(), Code::InvalidArgument),
                Err(s) if NODE.cases.contains(&id) => {
                    // The city secretariat may read only its jurisdiction.
                    prop_assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
                }
                Err(s) => prop_assert_eq!(s.code(), Code::NotFound, "{}", s.message()),
            }
            still_serving().await
        })?;
    }

    /// Paging through ListCases with the tokens the node hands out visits
    /// every case the caller sees once; a token it never issued is refused.
    #[test]
    fn page_tokens_walk_the_list_and_garbage_is_refused(
        size in 1u32..12,
        garbage in hostile_string().prop_filter("garbage", |s| s.contains(['\0', ' ', '*', '>', '\u{202e}', '\n'])),
    ) {
        NODE.rt.block_on(async {
            let caller = Caller { token: Some(CITY.into()), purpose: None };
            let mut seen = Vec::new();
            let mut token = String::new();
            for _ in 0..200 {
                let call = Call::ListCases(ListCasesRequest {
                    filter: None,
                    now: None,
                    page_token: token.clone(),
                    page_size: size,
                });
                let mut cases = CasesClient::new(channel());
                let Call::ListCases(m) = call.clone() else { unreachable!() };
                let r = guard("ListCases", cases.list_cases(request(&caller, m))).await?;
                let r = r.map_err(|s| TestCaseError::fail(format!("a page failed: {s:?}")))?;
                let r = r.into_inner();
                prop_assert!(r.cases.len() <= size as usize);
                seen.extend(r.cases.into_iter().map(|c| c.case_id));
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), seen.len(), "a case was listed twice");
            prop_assert!(!seen.is_empty());
            let call = Call::ListCases(ListCasesRequest {
                filter: None,
                now: None,
                page_token: garbage,
                page_size: size,
            });
            let reply = send(&caller, &call).await?;
            check(&call, &reply)?;
            let code = reply.status.as_ref().err().map(Status::code);
            prop_assert_eq!(code, Some(Code::InvalidArgument), "garbage page token accepted");
            still_serving().await
        })?;
    }
}
