//! The gRPC services in-process: the real `CasesApi`, `AuditApi` and
//! `IntakeApi` over a real log in a temporary directory, served by tonic on
//! 127.0.0.1 and called through the generated clients with bearer tokens.
//!
//! What is shown: need to know for every Cases call (agencies, secretariat
//! jurisdictions by whole path segments), which role may call which
//! service, the access log written before each answer (allowed and denied,
//! purpose decoded, kept across a restart, chain verified), pagination with
//! stable cursors, watch snapshots and gap-free resumption, past views from
//! the Audit service, and the agenda and statistics limited to what the
//! caller may see.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lianxi_api::{AuditApi, CasesApi, Gate, IntakeApi, Principals};
use lianxi_log::{EventOutcome, GroupReport, Incoming, Log};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::audit_client::AuditClient;
use lianxi_proto::v1::cases_client::CasesClient;
use lianxi_proto::v1::event::Body;
use lianxi_proto::v1::get_case_as_of_request::At;
use lianxi_proto::v1::intake_client::IntakeClient;
use lianxi_proto::v1::{
    self as pb, AccessRecord, Agency, CaseChange, CaseFilter, CaseView, Category, Event,
    GetAgendaRequest, GetCaseAsOfRequest, GetCaseRequest, GetStatsRequest, GetTimelineRequest,
    InvolvementState, ListAccessRequest, ListCasesRequest, ListRejectionsRequest, PrincipalRole,
    ReadLogRequest, WatchCaseRequest, WatchCasesRequest,
};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Status, Streaming};

/// Keys derived from a fixed seed: these runs have no key store.
static TEST_KEYS: std::sync::LazyLock<lianxi_log::GroupKeys> =
    std::sync::LazyLock::new(|| lianxi_log::GroupKeys::derived("lianxi-test"));

// ---------------------------------------------------------------------------
// Principals

const POLICE: &str = "t-police";
const COURT: &str = "t-court";
const XIHU: &str = "t-xihu";
const CITY: &str = "t-city";
const AUDITOR: &str = "t-audit";
const OPERATOR: &str = "t-ops";

const POLICE_NAME: &str = "police-records";
const AUDITOR_NAME: &str = "audit-office";

/// "核查 risk", percent-encoded as gRPC metadata must carry it.
const PURPOSE_ENCODED: &str = "%E6%A0%B8%E6%9F%A5%20risk";
const PURPOSE: &str = "核查 risk";

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

/// A request with `authorization: Bearer <token>`.
fn req<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii metadata"),
    );
    r
}

/// A request with a token and a stated (percent-encoded) purpose.
fn req_for<T>(token: &str, purpose: &str, msg: T) -> Request<T> {
    let mut r = req(token, msg);
    r.metadata_mut()
        .insert("lianxi-purpose", purpose.parse().expect("ascii metadata"));
    r
}

// ---------------------------------------------------------------------------
// Events

const T0: i64 = 1_793_000_000; // 2026-10-26

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn event(case: &str, agency: Agency, body: Body) -> Event {
    Event {
        case_id: case.into(),
        agency: agency as i32,
        body: Some(body),
        ..Event::default()
    }
}

fn opened(case: &str, agency: Agency, jurisdiction: &str, category: Category) -> Event {
    event(
        case,
        agency,
        Body::CaseOpened(pb::CaseOpened {
            channel: pb::Channel::Hotline12338 as i32,
            category: category as i32,
            jurisdiction: jurisdiction.into(),
            level: pb::Level::County as i32,
            person_ref: format!("person-of-{case}"),
            summary: "caller reports violence at home".into(),
            mandatory_reporter: String::new(),
            person: None,
            children: Vec::new(),
        }),
    )
}

fn referral(case: &str, from: Agency, referral_id: &str, to: Agency) -> Event {
    event(
        case,
        from,
        Body::ReferralIssued(pb::ReferralIssued {
            referral_id: referral_id.into(),
            to_agency: to as i32,
            reason: "needs your part".into(),
            due_at: None,
            transfer_lead: false,
        }),
    )
}

fn returned(case: &str, by: Agency, referral_id: &str) -> Event {
    event(
        case,
        by,
        Body::ReferralReturned(pb::ReferralReturned {
            referral_id: referral_id.into(),
            reason: "not ours".into(),
        }),
    )
}

fn accepted(case: &str, by: Agency, referral_id: &str) -> Event {
    event(
        case,
        by,
        Body::ReferralAccepted(pb::ReferralAccepted {
            referral_id: referral_id.into(),
            note: "on it".into(),
        }),
    )
}

fn action(case: &str, action_id: &str, owner: Agency, due: i64) -> Event {
    event(
        case,
        Agency::PoliticalLegalCommittee,
        Body::ActionAgreed(pb::ActionAgreed {
            action_id: action_id.into(),
            owner: owner as i32,
            description: "visit the family".into(),
            due_at: Some(ts(due)),
        }),
    )
}

fn progress(case: &str, agency: Agency, text: &str) -> Event {
    event(
        case,
        agency,
        Body::ProgressReported(pb::ProgressReported {
            summary: text.into(),
        }),
    )
}

fn high_risk(case: &str, agency: Agency) -> Event {
    event(
        case,
        agency,
        Body::RiskAssessed(pb::RiskAssessed {
            level: pb::RiskLevel::High as i32,
            score: 90,
            factors: vec!["threats to kill".into()],
        }),
    )
}

// ---------------------------------------------------------------------------
// The node under test

/// How long any single await may take before the test calls it a hang.
const GUARD: Duration = Duration::from_secs(20);

async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A log in a temporary directory and the three services over it.
struct Node {
    dir: tempfile::TempDir,
    log: Log,
    changes: watch::Sender<Option<GroupReport>>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// The next stream sequence, event number and record time to use.
    stream: u64,
    n: u64,
    clock: i64,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        Node::start_in(dir, 1, T0).await
    }

    async fn start_in(dir: tempfile::TempDir, stream: u64, clock: i64) -> Node {
        let log = Log::open(dir.path(), lianxi_domain::Policy::default()).expect("open log");
        let (changes, changes_rx) = watch::channel(None);
        let (addr, stop, server) = serve(&log, changes_rx).await;
        Node {
            dir,
            log,
            changes,
            addr,
            stop: Some(stop),
            server: Some(server),
            stream,
            n: 0,
            clock,
        }
    }

    /// Stops the server, waits for it, drops the log and gives back the
    /// directory (with the stream position and clock) for a restart.
    async fn shutdown(mut self) -> (tempfile::TempDir, u64, i64) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            guard("the server to stop", server)
                .await
                .expect("server task");
        }
        let Node {
            dir, stream, clock, ..
        } = self;
        (dir, stream, clock)
    }

    /// Appends one group: each event gets an id, an occurrence time and a
    /// record time from the node's clock (a minute apart). Every event must
    /// be accepted. Watchers are woken with the report.
    fn append(&mut self, events: Vec<Event>) -> GroupReport {
        let mut group = Vec::new();
        for mut e in events {
            self.n += 1;
            self.clock += 60;
            if e.event_id.is_empty() {
                e.event_id = format!("ev-{:05}", self.n);
            }
            e.occurred_at.get_or_insert(ts(self.clock));
            group.push(Incoming {
                stream_sequence: self.stream,
                subject: lianxi_domain::event_subject(&e).expect("event has a subject"),
                recorded_at: ts(self.clock),
                payload: e.encode_to_vec(),
            });
            self.stream += 1;
        }
        let report = self
            .log
            .append_group(&group, &TEST_KEYS)
            .expect("append group");
        for (seq, outcome) in &report.outcomes {
            assert!(
                matches!(outcome, EventOutcome::Accepted { .. }),
                "stream message {seq} was not accepted: {outcome:?}"
            );
        }
        self.changes.send_replace(Some(report.clone()));
        report
    }

    /// Appends one message as it came, whatever becomes of it.
    fn append_raw(&mut self, subject: &str, payload: Vec<u8>) -> GroupReport {
        self.clock += 60;
        let m = Incoming {
            stream_sequence: self.stream,
            subject: subject.into(),
            recorded_at: ts(self.clock),
            payload,
        };
        self.stream += 1;
        let report = self
            .log
            .append_group(&[m], &TEST_KEYS)
            .expect("append group");
        self.changes.send_replace(Some(report.clone()));
        report
    }

    /// Appends the simulated city, in groups of 100.
    fn append_sim(&mut self, cases: usize, prefix: &str, seed: u64) -> Vec<String> {
        let sim = lianxi_sim::generate(&lianxi_sim::Workload {
            cases,
            seed,
            prefix: prefix.into(),
            ..Default::default()
        });
        let mut ids = BTreeSet::new();
        let mut msgs = Vec::new();
        for (e, intent) in sim {
            assert_eq!(intent, lianxi_sim::Intent::Valid);
            ids.insert(e.case_id.clone());
            msgs.push(Incoming {
                stream_sequence: self.stream,
                subject: lianxi_domain::event_subject(&e).expect("subject"),
                recorded_at: e.occurred_at.unwrap_or_default(),
                payload: e.encode_to_vec(),
            });
            self.stream += 1;
        }
        for group in msgs.chunks(100) {
            let report = self
                .log
                .append_group(group, &TEST_KEYS)
                .expect("append group");
            for (seq, outcome) in &report.outcomes {
                assert!(
                    matches!(outcome, EventOutcome::Accepted { .. }),
                    "simulated message {seq} was not accepted: {outcome:?}"
                );
            }
            self.changes.send_replace(Some(report));
        }
        ids.into_iter().collect()
    }

    fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_lazy()
    }

    fn cases(&self) -> CasesClient<Channel> {
        CasesClient::new(self.channel())
    }

    fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel())
    }

    fn intake(&self) -> IntakeClient<Channel> {
        IntakeClient::new(self.channel())
    }

    fn view(&self, case_id: &str) -> CaseView {
        self.log
            .case_view(case_id)
            .expect("read view")
            .unwrap_or_else(|| panic!("no case {case_id}"))
    }

    /// How many access records there are (and the chain checks out).
    fn access_count(&self) -> u64 {
        self.log.access_log().verify().expect("access log verifies")
    }

    fn access_record(&self, sequence: u64) -> AccessRecord {
        self.log
            .access_log()
            .record(sequence)
            .expect("read access record")
            .unwrap_or_else(|| panic!("no access record {sequence}"))
    }
}

async fn serve(
    log: &Log,
    changes: watch::Receiver<Option<GroupReport>>,
) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let gate = Gate::new(principals(), log.access_log());
    let cases = CasesApi::new(log.clone(), gate.clone(), changes)
        .with_derived_keys("lianxi-test")
        .into_server();
    let audit = AuditApi::new(log.clone(), gate.clone()).into_server();
    let intake = IntakeApi::new(log.clone(), gate).into_server();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(cases)
            .add_service(audit)
            .add_service(intake)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
    });
    (addr, stop, server)
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

// ---------------------------------------------------------------------------
// A small city for need to know
//
// | case | opened by | police is ...            | jurisdiction              |
// |------|-----------|--------------------------|---------------------------|
// | A    | police    | the opener               | 330100/330106/330106001   |
// | B    | women's   | referred, returned       | 330100/3301061/330106100  |
// | C    | court     | referred (pending)       | 330100/330106             |
// | D    | civil     | owner of an action       | 330100/330105/330105001   |
// | E    | labour    | not involved             | 330100/330102/330102001   |
// | F    | court     | referred, accepted       | 330100/330106/330106002   |

const A: &str = "A-own";
const B: &str = "B-returned";
const C: &str = "C-referred";
const D: &str = "D-action";
const E: &str = "E-other";
const F: &str = "F-accepted";

fn police_sees() -> BTreeSet<String> {
    [A, C, D, F].iter().map(|s| s.to_string()).collect()
}

fn xihu_sees() -> BTreeSet<String> {
    [A, C, F].iter().map(|s| s.to_string()).collect()
}

fn city(node: &mut Node) {
    use Agency::*;
    node.append(vec![
        opened(
            A,
            Police,
            "330100/330106/330106001",
            Category::DomesticViolence,
        ),
        opened(
            B,
            WomensFederation,
            "330100/3301061/330106100",
            Category::DomesticViolence,
        ),
        opened(C, Court, "330100/330106", Category::Custody),
        opened(
            D,
            CivilAffairs,
            "330100/330105/330105001",
            Category::Marriage,
        ),
        opened(E, Labour, "330100/330102/330102001", Category::ChildLabour),
        opened(
            F,
            Court,
            "330100/330106/330106002",
            Category::DomesticViolence,
        ),
    ]);
    let due = node.clock + 7 * 86_400;
    node.append(vec![
        referral(B, WomensFederation, "R-B", Police),
        referral(C, Court, "R-C", Police),
        action(D, "ACT-D", Police, due),
        referral(F, Court, "R-F", Police),
        high_risk(A, Police),
        high_risk(B, WomensFederation),
    ]);
    node.append(vec![returned(B, Police, "R-B"), accepted(F, Police, "R-F")]);
    // The fixture is what the table says.
    let b = node.view(B);
    assert!(
        b.agencies
            .iter()
            .any(|x| x.agency == Police as i32 && x.state == InvolvementState::Returned as i32),
        "police returned the referral of B: {:?}",
        b.agencies
    );
}

async fn list_all(
    client: &mut CasesClient<Channel>,
    token: &str,
    filter: Option<CaseFilter>,
) -> Result<Vec<String>, Status> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = guard(
            "ListCases",
            client.list_cases(req(
                token,
                ListCasesRequest {
                    filter: filter.clone(),
                    page_token: page_token.clone(),
                    page_size: 1000,
                    ..Default::default()
                },
            )),
        )
        .await?
        .into_inner();
        out.extend(page.cases.into_iter().map(|c| c.case_id));
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

async fn visible_by_get_case(client: &mut CasesClient<Channel>, token: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for case in [A, B, C, D, E, F] {
        let r = guard(
            "GetCase",
            client.get_case(req(
                token,
                GetCaseRequest {
                    case_id: case.into(),
                    now: None,
                },
            )),
        )
        .await;
        match r {
            Ok(resp) => {
                let view = resp.into_inner().view.expect("view");
                assert_eq!(view.case_id, case);
                seen.insert(case.to_owned());
            }
            // Not the caller's: the same answer as a case that does not
            // exist.
            Err(s) => assert_eq!(s.code(), Code::NotFound, "{case}: {}", s.message()),
        }
    }
    seen
}

// ---------------------------------------------------------------------------
// Need to know

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agency_sees_only_cases_it_is_involved_in() {
    let mut node = Node::start().await;
    city(&mut node);
    let mut cases = node.cases();

    assert_eq!(visible_by_get_case(&mut cases, POLICE).await, police_sees());
    let listed = list_all(&mut cases, POLICE, None).await.expect("list");
    assert_eq!(
        listed,
        police_sees().into_iter().collect::<Vec<_>>(),
        "ListCases for police, in case-id order"
    );

    for case in [A, B, C, D, E, F] {
        let timeline = guard(
            "GetTimeline",
            cases.get_timeline(req(
                POLICE,
                GetTimelineRequest {
                    case_id: case.into(),
                    ..Default::default()
                },
            )),
        )
        .await;
        let watch = guard(
            "WatchCase",
            cases.watch_case(req(
                POLICE,
                WatchCaseRequest {
                    case_id: case.into(),
                    after_global_sequence: 0,
                },
            )),
        )
        .await;
        if police_sees().contains(case) {
            let t = timeline.expect("timeline").into_inner();
            assert_eq!(t.entries.len() as u64, node.view(case).case_sequence);
            let mut stream = watch.expect("watch").into_inner();
            let first = next_change(&mut stream).await;
            assert!(first.snapshot);
            assert_eq!(first.case_id, case);
        } else {
            // Not the caller's: answered as if it did not exist.
            assert_eq!(code(timeline), Code::NotFound, "timeline of {case}");
            assert_eq!(
                watch.err().map(|s| s.code()),
                Some(Code::NotFound),
                "watch of {case}"
            );
        }
    }

    // The court sees the two cases it opened and no other.
    let court: BTreeSet<String> = [C, F].iter().map(|s| s.to_string()).collect();
    assert_eq!(visible_by_get_case(&mut cases, COURT).await, court);

    // WatchCases from the start: one snapshot per visible case.
    let mut stream = guard(
        "WatchCases",
        cases.watch_cases(req(POLICE, WatchCasesRequest::default())),
    )
    .await
    .expect("watch cases")
    .into_inner();
    let mut snapshots = BTreeSet::new();
    for _ in 0..police_sees().len() {
        let c = next_change(&mut stream).await;
        assert!(c.snapshot, "{c:?}");
        snapshots.insert(c.case_id);
    }
    assert_eq!(snapshots, police_sees());
    // Changes follow only for visible cases: a change to E (invisible) and
    // then to A; the next message must be A's.
    node.append(vec![progress(E, Agency::Labour, "inspection visit")]);
    node.append(vec![progress(A, Agency::Police, "called the victim")]);
    let c = next_change(&mut stream).await;
    assert_eq!((c.case_id.as_str(), c.snapshot), (A, false), "{c:?}");

    // Agenda and statistics count only what police may see.
    let stats = guard(
        "GetStats",
        cases.get_stats(req(POLICE, GetStatsRequest::default())),
    )
    .await
    .expect("stats")
    .into_inner();
    assert_eq!(stats.cases, police_sees().len() as u64);
    let agenda = guard(
        "GetAgenda",
        cases.get_agenda(req(POLICE, GetAgendaRequest::default())),
    )
    .await
    .expect("agenda")
    .into_inner();
    let on_agenda: BTreeSet<String> = agenda
        .items
        .iter()
        .filter_map(|i| i.case.as_ref().map(|c| c.case_id.clone()))
        .collect();
    assert!(on_agenda.contains(A), "A is high risk: {on_agenda:?}");
    assert!(
        !on_agenda.contains(B),
        "B is high risk but police returned it: {on_agenda:?}"
    );
    assert!(on_agenda.is_subset(&police_sees()), "{on_agenda:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secretariat_sees_its_jurisdiction_by_whole_segments() {
    let mut node = Node::start().await;
    city(&mut node);
    let mut cases = node.cases();

    assert_eq!(visible_by_get_case(&mut cases, XIHU).await, xihu_sees());
    assert_eq!(
        list_all(&mut cases, XIHU, None).await.expect("list"),
        xihu_sees().into_iter().collect::<Vec<_>>()
    );
    // The city sees all six.
    assert_eq!(
        list_all(&mut cases, CITY, None).await.expect("list").len(),
        6
    );
    // A filter cannot widen the jurisdiction.
    let wide = CaseFilter {
        jurisdiction: "330100".into(),
        ..Default::default()
    };
    assert_eq!(
        list_all(&mut cases, XIHU, Some(wide)).await.expect("list"),
        xihu_sees().into_iter().collect::<Vec<_>>()
    );

    // B lies in "330100/3301061", which "330100/330106" does not cover.
    let r = guard(
        "GetTimeline",
        cases.get_timeline(req(
            XIHU,
            GetTimelineRequest {
                case_id: B.into(),
                ..Default::default()
            },
        )),
    )
    .await;
    assert_eq!(code(r), Code::NotFound, "as if B did not exist");

    let stats = guard(
        "GetStats",
        cases.get_stats(req(XIHU, GetStatsRequest::default())),
    )
    .await
    .expect("stats")
    .into_inner();
    assert_eq!(stats.cases, xihu_sees().len() as u64);
    let city_stats = guard(
        "GetStats",
        cases.get_stats(req(CITY, GetStatsRequest::default())),
    )
    .await
    .expect("stats")
    .into_inner();
    assert_eq!(city_stats.cases, 6);

    let agenda = guard(
        "GetAgenda",
        cases.get_agenda(req(XIHU, GetAgendaRequest::default())),
    )
    .await
    .expect("agenda")
    .into_inner();
    let on_agenda: BTreeSet<String> = agenda
        .items
        .iter()
        .filter_map(|i| i.case.as_ref().map(|c| c.case_id.clone()))
        .collect();
    assert!(on_agenda.contains(A), "{on_agenda:?}");
    assert!(!on_agenda.contains(B), "{on_agenda:?}");
    assert!(on_agenda.is_subset(&xihu_sees()), "{on_agenda:?}");
    // The city's agenda has both high-risk cases.
    let city_agenda = guard(
        "GetAgenda",
        cases.get_agenda(req(CITY, GetAgendaRequest::default())),
    )
    .await
    .expect("agenda")
    .into_inner();
    let city_on: BTreeSet<String> = city_agenda
        .items
        .iter()
        .filter_map(|i| i.case.as_ref().map(|c| c.case_id.clone()))
        .collect();
    assert!(city_on.contains(A) && city_on.contains(B), "{city_on:?}");

    // Watching B is refused before any data.
    let r = guard(
        "WatchCase",
        cases.watch_case(req(
            XIHU,
            WatchCaseRequest {
                case_id: B.into(),
                after_global_sequence: 0,
            },
        )),
    )
    .await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_held_to_their_services() {
    let mut node = Node::start().await;
    city(&mut node);
    // Two rejections on police's subjects, one on the court's.
    node.append_raw(&format!("lianxi.v1.events.police.{E}"), {
        let mut e = progress(E, Agency::Police, "not involved");
        e.event_id = "bad-police-1".into();
        e.occurred_at = Some(ts(T0));
        e.encode_to_vec()
    });
    node.append_raw("lianxi.v1.events.police.X-1", vec![0xff, 0x01, 0x02]);
    node.append_raw("lianxi.v1.events.court.NOPE", {
        let mut e = progress("NOPE", Agency::Court, "unknown case");
        e.event_id = "bad-court-1".into();
        e.occurred_at = Some(ts(T0));
        e.encode_to_vec()
    });
    let mut cases = node.cases();
    let mut audit = node.audit();
    let mut intake = node.intake();
    let get_a = || GetCaseRequest {
        case_id: A.into(),
        now: None,
    };

    // Auditors: no case through Cases, but the Audit service.
    assert_eq!(
        code(guard("GetCase", cases.get_case(req(AUDITOR, get_a()))).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            guard(
                "ListCases",
                cases.list_cases(req(AUDITOR, ListCasesRequest::default()))
            )
            .await
        ),
        Code::PermissionDenied
    );
    let mut log = guard(
        "ReadLog",
        audit.read_log(req(AUDITOR, ReadLogRequest::default())),
    )
    .await
    .expect("read log")
    .into_inner();
    let mut entries = Vec::new();
    while let Some(e) = guard("log entry", log.next()).await {
        entries.push(e.expect("entry"));
    }
    assert_eq!(
        entries
            .iter()
            .map(|e| e.global_sequence)
            .collect::<Vec<_>>(),
        (1..=node.log.checkpoint().global_sequence).collect::<Vec<_>>()
    );
    guard(
        "GetCaseAsOf",
        audit.get_case_as_of(req(
            AUDITOR,
            GetCaseAsOfRequest {
                case_id: A.into(),
                at: Some(At::GlobalSequence(1)),
            },
        )),
    )
    .await
    .expect("auditor reads a past state");
    guard(
        "ListAccess",
        audit.list_access(req(AUDITOR, ListAccessRequest::default())),
    )
    .await
    .expect("auditor lists access");
    assert_eq!(
        code(
            guard(
                "ListRejections",
                intake.list_rejections(req(AUDITOR, ListRejectionsRequest::default()))
            )
            .await
        ),
        Code::PermissionDenied
    );

    // Operators: no cases, no audit, but every rejection.
    assert_eq!(
        code(guard("GetCase", cases.get_case(req(OPERATOR, get_a()))).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            guard(
                "WatchCases",
                cases.watch_cases(req(OPERATOR, WatchCasesRequest::default()))
            )
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            guard(
                "ListAccess",
                audit.list_access(req(OPERATOR, ListAccessRequest::default()))
            )
            .await
        ),
        Code::PermissionDenied
    );
    let all = guard(
        "ListRejections",
        intake.list_rejections(req(OPERATOR, ListRejectionsRequest::default())),
    )
    .await
    .expect("operator lists rejections")
    .into_inner();
    assert_eq!(all.rejections.len(), 3);

    // Agencies and secretariats: no audit.
    for token in [POLICE, XIHU] {
        assert_eq!(
            code(
                guard(
                    "GetCaseAsOf",
                    audit.get_case_as_of(req(
                        token,
                        GetCaseAsOfRequest {
                            case_id: A.into(),
                            at: Some(At::GlobalSequence(1)),
                        },
                    ))
                )
                .await
            ),
            Code::PermissionDenied
        );
    }
    // An agency lists only its own rejections.
    let own = guard(
        "ListRejections",
        intake.list_rejections(req(POLICE, ListRejectionsRequest::default())),
    )
    .await
    .expect("police lists its rejections")
    .into_inner();
    assert_eq!(own.rejections.len(), 2, "{:?}", own.rejections);
    assert!(
        own.rejections
            .iter()
            .all(|r| r.agency == Agency::Police as i32
                && r.subject.starts_with("lianxi.v1.events.police.")),
        "{:?}",
        own.rejections
    );
    let court = guard(
        "ListRejections",
        intake.list_rejections(req(COURT, ListRejectionsRequest::default())),
    )
    .await
    .expect("court lists its rejections")
    .into_inner();
    assert_eq!(court.rejections.len(), 1);
    assert_eq!(court.rejections[0].event_id, "bad-court-1");
    assert_eq!(
        code(
            guard(
                "ListRejections",
                intake.list_rejections(req(
                    POLICE,
                    ListRejectionsRequest {
                        agency: Agency::Court as i32,
                        ..Default::default()
                    },
                ))
            )
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            guard(
                "ListRejections",
                intake.list_rejections(req(XIHU, ListRejectionsRequest::default()))
            )
            .await
        ),
        Code::PermissionDenied
    );

    // No token, an unknown token, a token in the wrong scheme.
    assert_eq!(
        code(guard("GetCase", cases.get_case(Request::new(get_a()))).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(guard("GetCase", cases.get_case(req("not-a-token", get_a()))).await),
        Code::Unauthenticated
    );
    let mut basic = Request::new(get_a());
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {POLICE}").parse().unwrap());
    assert_eq!(
        code(guard("GetCase", cases.get_case(basic)).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            guard(
                "ListAccess",
                audit.list_access(Request::new(ListAccessRequest::default()))
            )
            .await
        ),
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            guard(
                "ListRejections",
                intake.list_rejections(req("wrong", ListRejectionsRequest::default()))
            )
            .await
        ),
        Code::Unauthenticated
    );
}

// ---------------------------------------------------------------------------
// The access log

/// Calls `f`, then checks that exactly one access record was added and
/// returns it (it is on disk when the answer has arrived).
async fn one_record<T>(node: &Node, f: impl Future<Output = T>) -> (T, AccessRecord) {
    let before = node.access_count();
    let out = guard("the call", f).await;
    let after = node.access_count();
    assert_eq!(after, before + 1, "one access record per call");
    (out, node.access_record(after))
}

/// Calls `f`, then checks that at least one access record was added and
/// returns the first (for calls whose later records may follow at once).
async fn first_record<T>(node: &Node, f: impl Future<Output = T>) -> (T, AccessRecord) {
    let before = node.access_count();
    let out = guard("the call", f).await;
    let after = node.access_count();
    assert!(after > before, "no access record for the call");
    (out, node.access_record(before + 1))
}

fn assert_allowed(
    r: &AccessRecord,
    principal: &str,
    role: PrincipalRole,
    method: &str,
    case: &str,
) {
    assert_eq!(r.principal, principal, "{r:?}");
    assert_eq!(r.role, role as i32, "{r:?}");
    assert_eq!(r.method, method, "{r:?}");
    assert_eq!(r.case_id, case, "{r:?}");
    assert!(r.allowed, "{r:?}");
    assert!(r.at.is_some(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_is_recorded_before_the_answer() {
    let mut node = Node::start().await;
    city(&mut node);
    let mut cases = node.cases();
    let mut audit = node.audit();

    let (r, rec) = one_record(
        &node,
        cases.get_case(req_for(
            POLICE,
            PURPOSE_ENCODED,
            GetCaseRequest {
                case_id: A.into(),
                now: None,
            },
        )),
    )
    .await;
    r.expect("get case");
    assert_allowed(
        &rec,
        POLICE_NAME,
        PrincipalRole::Agency,
        "/lianxi.v1.Cases/GetCase",
        A,
    );
    assert_eq!(rec.purpose, PURPOSE);
    assert_eq!(rec.scope, "police");

    let (r, rec) = one_record(
        &node,
        cases.get_timeline(req_for(
            POLICE,
            PURPOSE_ENCODED,
            GetTimelineRequest {
                case_id: C.into(),
                ..Default::default()
            },
        )),
    )
    .await;
    r.expect("timeline");
    assert_allowed(
        &rec,
        POLICE_NAME,
        PrincipalRole::Agency,
        "/lianxi.v1.Cases/GetTimeline",
        C,
    );
    assert_eq!(rec.purpose, PURPOSE);

    let (r, rec) = one_record(
        &node,
        cases.list_cases(req(POLICE, ListCasesRequest::default())),
    )
    .await;
    r.expect("list");
    assert_allowed(
        &rec,
        POLICE_NAME,
        PrincipalRole::Agency,
        "/lianxi.v1.Cases/ListCases",
        "",
    );
    assert_eq!(rec.purpose, "");
    // The cases shown are in the record's case_ids (indexed by case).
    assert_eq!(
        rec.case_ids.iter().cloned().collect::<BTreeSet<_>>(),
        police_sees(),
        "{rec:?}"
    );

    let (r, rec) = one_record(
        &node,
        cases.get_agenda(req(XIHU, GetAgendaRequest::default())),
    )
    .await;
    assert_allowed(
        &rec,
        "secretariat-xihu",
        PrincipalRole::Secretariat,
        "/lianxi.v1.Cases/GetAgenda",
        "",
    );
    assert_eq!(rec.scope, "330100/330106");
    let on_agenda: BTreeSet<String> = r
        .expect("agenda")
        .into_inner()
        .items
        .iter()
        .filter_map(|i| i.case.as_ref().map(|c| c.case_id.clone()))
        .collect();
    assert_eq!(
        rec.case_ids.iter().cloned().collect::<BTreeSet<_>>(),
        on_agenda,
        "{rec:?}"
    );

    let (r, rec) = one_record(
        &node,
        cases.get_stats(req(XIHU, GetStatsRequest::default())),
    )
    .await;
    r.expect("stats");
    assert_allowed(
        &rec,
        "secretariat-xihu",
        PrincipalRole::Secretariat,
        "/lianxi.v1.Cases/GetStats",
        "",
    );
    assert_eq!(
        rec.case_ids.iter().cloned().collect::<BTreeSet<_>>(),
        xihu_sees(),
        "statistics name the cases they count: {rec:?}"
    );

    let (r, rec) = one_record(
        &node,
        cases.watch_case(req(
            POLICE,
            WatchCaseRequest {
                case_id: F.into(),
                after_global_sequence: 0,
            },
        )),
    )
    .await;
    let mut stream = r.expect("watch").into_inner();
    assert_allowed(
        &rec,
        POLICE_NAME,
        PrincipalRole::Agency,
        "/lianxi.v1.Cases/WatchCase",
        F,
    );
    assert!(next_change(&mut stream).await.snapshot);
    drop(stream);

    // The call's own record comes first; the watch's first batch may be
    // recorded before this test reads the count (it is sent right away).
    let (r, rec) = first_record(
        &node,
        cases.watch_cases(req(POLICE, WatchCasesRequest::default())),
    )
    .await;
    let mut stream = r.expect("watch cases").into_inner();
    assert_allowed(
        &rec,
        POLICE_NAME,
        PrincipalRole::Agency,
        "/lianxi.v1.Cases/WatchCases",
        "",
    );
    // The snapshots are a batch, recorded with their cases before they are
    // sent.
    assert!(next_change(&mut stream).await.snapshot);
    let batch = node.access_record(node.access_count());
    assert_eq!(batch.method, "/lianxi.v1.Cases/WatchCases", "{batch:?}");
    assert_eq!(
        batch.case_ids.iter().cloned().collect::<BTreeSet<_>>(),
        police_sees(),
        "{batch:?}"
    );
    drop(stream);

    let (r, rec) = one_record(
        &node,
        audit.get_case_as_of(req_for(
            AUDITOR,
            "annual%20review",
            GetCaseAsOfRequest {
                case_id: B.into(),
                at: Some(At::GlobalSequence(3)),
            },
        )),
    )
    .await;
    r.expect("as of");
    assert_allowed(
        &rec,
        AUDITOR_NAME,
        PrincipalRole::Auditor,
        "/lianxi.v1.Audit/GetCaseAsOf",
        B,
    );
    assert_eq!(rec.purpose, "annual review");

    // Refusals are recorded too.
    let (r, rec) = one_record(
        &node,
        cases.get_case(req_for(
            POLICE,
            PURPOSE_ENCODED,
            GetCaseRequest {
                case_id: B.into(),
                now: None,
            },
        )),
    )
    .await;
    assert_eq!(code(r), Code::NotFound, "as if B did not exist");
    assert_eq!(
        (rec.principal.as_str(), rec.case_id.as_str(), rec.allowed),
        (POLICE_NAME, B, false),
        "{rec:?}"
    );
    assert_eq!(rec.purpose, PURPOSE);
    let (r, rec) = one_record(
        &node,
        cases.list_cases(req(AUDITOR, ListCasesRequest::default())),
    )
    .await;
    assert_eq!(code(r), Code::PermissionDenied);
    assert_eq!(
        (rec.principal.as_str(), rec.role, rec.allowed),
        (AUDITOR_NAME, PrincipalRole::Auditor as i32, false)
    );
    let (r, rec) = one_record(
        &node,
        cases.get_case(Request::new(GetCaseRequest {
            case_id: A.into(),
            now: None,
        })),
    )
    .await;
    assert_eq!(code(r), Code::Unauthenticated);
    assert!(!rec.allowed);
    assert_eq!(rec.method, "/lianxi.v1.Cases/GetCase");
    assert_eq!(rec.role, PrincipalRole::Unspecified as i32);

    // The auditor sees each of police's calls as they happen: the count of
    // police's records grows by one per call.
    let police_records = |audit: &mut AuditClient<Channel>| {
        let mut audit = audit.clone();
        async move {
            guard(
                "ListAccess",
                audit.list_access(req(
                    AUDITOR,
                    ListAccessRequest {
                        principal: POLICE_NAME.into(),
                        ..Default::default()
                    },
                )),
            )
            .await
            .expect("list access")
            .into_inner()
            .records
        }
    };
    let mut count = police_records(&mut audit).await.len();
    for case in [A, C, D, F] {
        guard(
            "GetCase",
            cases.get_case(req(
                POLICE,
                GetCaseRequest {
                    case_id: case.into(),
                    now: None,
                },
            )),
        )
        .await
        .expect("get case");
        let records = police_records(&mut audit).await;
        assert_eq!(records.len(), count + 1);
        let last = records.last().expect("a record");
        assert_eq!((last.case_id.as_str(), last.allowed), (case, true));
        count += 1;
    }
    // By case: every record on B, allowed or not.
    let on_b = guard(
        "ListAccess",
        audit.list_access(req(
            AUDITOR,
            ListAccessRequest {
                case_id: B.into(),
                ..Default::default()
            },
        )),
    )
    .await
    .expect("list access")
    .into_inner()
    .records;
    assert_eq!(
        on_b.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        vec![true, false, true],
        "as-of by the auditor, police refused, and the listing itself: {on_b:?}"
    );
    node.log.access_log().verify().expect("access log verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_survives_a_restart() {
    let mut node = Node::start().await;
    city(&mut node);
    {
        let mut cases = node.cases();
        for case in [A, B, C] {
            let _ = guard(
                "GetCase",
                cases.get_case(req(
                    POLICE,
                    GetCaseRequest {
                        case_id: case.into(),
                        now: None,
                    },
                )),
            )
            .await;
        }
    }
    let before: Vec<AccessRecord> = node
        .log
        .access_log()
        .list(&ListAccessRequest::default(), 1000)
        .expect("list")
        .0;
    assert_eq!(before.len(), 3);
    let (dir, stream, clock) = node.shutdown().await;

    let node = Node::start_in(dir, stream, clock).await;
    assert_eq!(node.access_count(), 3);
    let mut audit = node.audit();
    let after = guard(
        "ListAccess",
        audit.list_access(req(AUDITOR, ListAccessRequest::default())),
    )
    .await
    .expect("list access")
    .into_inner()
    .records;
    assert_eq!(after.len(), 4, "the three reads and this listing");
    assert_eq!(after[..3], before[..]);
    assert_eq!(
        after.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        vec![true, false, true, true]
    );
    assert_eq!(after[3].prev_hash, after[2].hash, "the chain continues");
    assert_eq!(node.access_count(), 4);
}

// ---------------------------------------------------------------------------
// Pagination

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_cases_pages_are_stable() {
    let mut node = Node::start().await;
    let ids = node.append_sim(50, "PG", 7);
    assert_eq!(ids.len(), 50);
    let mut cases = node.cases();

    // Police: what the views say police is involved in.
    let police_expected: Vec<String> = node
        .log
        .views()
        .expect("views")
        .into_iter()
        .filter(|v| {
            v.agencies.iter().any(|x| {
                x.agency == Agency::Police as i32 && x.state != InvolvementState::Returned as i32
            })
        })
        .map(|v| v.case_id)
        .collect();
    assert!(
        !police_expected.is_empty() && police_expected.len() < 50,
        "the workload involves police in some cases: {}",
        police_expected.len()
    );

    for (token, expected) in [(CITY, ids.clone()), (POLICE, police_expected)] {
        let mut got = Vec::new();
        let mut page_token = String::new();
        let mut pages = 0;
        loop {
            let page = guard(
                "ListCases",
                cases.list_cases(req(
                    token,
                    ListCasesRequest {
                        page_token: page_token.clone(),
                        page_size: 7,
                        ..Default::default()
                    },
                )),
            )
            .await
            .expect("list")
            .into_inner();
            pages += 1;
            assert!(page.cases.len() <= 7);
            got.extend(page.cases.into_iter().map(|c| c.case_id));
            if page.next_page_token.is_empty() {
                break;
            }
            let last = got.last().expect("a page before a token");
            assert!(
                !page.next_page_token.contains(last.as_str()),
                "the cursor is opaque, not the last case id: {}",
                page.next_page_token
            );
            page_token = page.next_page_token;
        }
        assert_eq!(got, expected, "{token}: every case once, in case-id order");
        assert_eq!(pages, expected.len().div_ceil(7).max(1));
    }

    // New cases between pages: the cases there at the start come exactly
    // once; nothing repeats.
    let mut got = Vec::new();
    let mut page_token = String::new();
    let mut round = 0;
    loop {
        let page = guard(
            "ListCases",
            cases.list_cases(req(
                CITY,
                ListCasesRequest {
                    page_token: page_token.clone(),
                    page_size: 7,
                    ..Default::default()
                },
            )),
        )
        .await
        .expect("list")
        .into_inner();
        got.extend(page.cases.into_iter().map(|c| c.case_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        // Cases sorting before, inside and after the pages read so far.
        round += 1;
        node.append(vec![
            opened(
                &format!("PG-000000-{round}"),
                Agency::Police,
                "330100/330101",
                Category::Other,
            ),
            opened(
                &format!("{}-{round}", got.last().expect("a page")),
                Agency::Police,
                "330100/330101",
                Category::Other,
            ),
            opened(
                &format!("PG-999999-{round}"),
                Agency::Police,
                "330100/330101",
                Category::Other,
            ),
        ]);
    }
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no case twice: {got:?}");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, got, "case-id order");
    for id in &ids {
        assert!(got.contains(id), "{id} was skipped");
    }

    // page_size above the maximum.
    let r = guard(
        "ListCases",
        cases.list_cases(req(
            CITY,
            ListCasesRequest {
                page_size: 1001,
                ..Default::default()
            },
        )),
    )
    .await;
    assert_eq!(code(r), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_access_and_rejection_pages() {
    let mut node = Node::start().await;
    city(&mut node);
    for i in 0..10 {
        node.append(vec![progress(A, Agency::Police, &format!("call {i}"))]);
    }
    let total = node.view(A).case_sequence;
    assert_eq!(total, 12);
    let mut cases = node.cases();
    let mut audit = node.audit();
    let mut intake = node.intake();

    let mut after = 0;
    let mut seqs = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = guard(
            "GetTimeline",
            cases.get_timeline(req(
                POLICE,
                GetTimelineRequest {
                    case_id: A.into(),
                    after_case_sequence: after,
                    page_size: 5,
                },
            )),
        )
        .await
        .expect("timeline")
        .into_inner();
        sizes.push(page.entries.len());
        seqs.extend(page.entries.iter().map(|e| e.case_sequence));
        if page.next_after_case_sequence == 0 {
            break;
        }
        assert_eq!(Some(&page.next_after_case_sequence), seqs.last());
        after = page.next_after_case_sequence;
    }
    assert_eq!(sizes, vec![5, 5, 2]);
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let r = guard(
        "GetTimeline",
        cases.get_timeline(req(
            POLICE,
            GetTimelineRequest {
                case_id: A.into(),
                after_case_sequence: 0,
                page_size: 1001,
            },
        )),
    )
    .await;
    assert_eq!(code(r), Code::InvalidArgument);

    // ListAccess: police's records (allowed and refused), paged by 3,
    // equal the whole list read from the store.
    for case in [A, C, D, F, A, C, D, F, A, E] {
        let _ = guard(
            "GetCase",
            cases.get_case(req(
                POLICE,
                GetCaseRequest {
                    case_id: case.into(),
                    now: None,
                },
            )),
        )
        .await;
    }
    let filter = ListAccessRequest {
        principal: POLICE_NAME.into(),
        ..Default::default()
    };
    let all = node.log.access_log().list(&filter, 1000).expect("list").0;
    assert!(all.len() >= 10);
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = guard(
            "ListAccess",
            audit.list_access(req(
                AUDITOR,
                ListAccessRequest {
                    after_sequence: after,
                    page_size: 3,
                    ..filter.clone()
                },
            )),
        )
        .await
        .expect("list access")
        .into_inner();
        assert!(page.records.len() <= 3);
        got.extend(page.records);
        if page.next_after_sequence == 0 {
            break;
        }
        assert_eq!(
            Some(page.next_after_sequence),
            got.last().map(|r| r.sequence)
        );
        after = page.next_after_sequence;
    }
    assert_eq!(got, all);
    let r = guard(
        "ListAccess",
        audit.list_access(req(
            AUDITOR,
            ListAccessRequest {
                page_size: 1001,
                ..Default::default()
            },
        )),
    )
    .await;
    assert_eq!(code(r), Code::InvalidArgument);

    let r = guard(
        "ListRejections",
        intake.list_rejections(req(
            OPERATOR,
            ListRejectionsRequest {
                page_size: 1001,
                ..Default::default()
            },
        )),
    )
    .await;
    assert_eq!(code(r), Code::InvalidArgument);
}

// ---------------------------------------------------------------------------
// Watches

async fn next_change(stream: &mut Streaming<CaseChange>) -> CaseChange {
    guard("a watch message", stream.next())
        .await
        .expect("the watch ended")
        .expect("a change, not an error")
}

/// The next `n` changes, skipping snapshots (after checking they are
/// snapshots of `case`).
async fn changes(stream: &mut Streaming<CaseChange>, n: usize) -> Vec<CaseChange> {
    let mut out = Vec::new();
    while out.len() < n {
        let c = next_change(stream).await;
        if c.snapshot {
            assert!(c.entry.is_none() && c.view.is_some(), "{c:?}");
            continue;
        }
        out.push(c);
    }
    out
}

fn global_of(report: &GroupReport) -> u64 {
    report.checkpoint.global_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_case_resumes_without_gaps_or_repeats() {
    let mut node = Node::start().await;
    city(&mut node);
    let cases = node.cases();
    let watch = |after: u64| {
        let mut cases = cases.clone();
        async move {
            guard(
                "WatchCase",
                cases.watch_case(req(
                    POLICE,
                    WatchCaseRequest {
                        case_id: A.into(),
                        after_global_sequence: after,
                    },
                )),
            )
            .await
            .expect("watch")
            .into_inner()
        }
    };

    let mut stream = watch(0).await;
    let first = next_change(&mut stream).await;
    assert!(first.snapshot, "{first:?}");
    assert!(first.entry.is_none());
    let view = first.view.expect("a snapshot has the view");
    assert!(
        !view.personal.is_empty() && view.personal.iter().all(|s| s.ciphertext.is_empty()),
        "a watch carries no personal values, sealed or not: {:?}",
        view.personal
    );
    assert_eq!(unsealed(view.clone()), unsealed(node.view(A)));
    assert_eq!(first.global_sequence, view.last_global_sequence);

    // Five changes to A, with changes to other cases in between.
    let mut expected = Vec::new();
    for i in 0..5 {
        node.append(vec![progress(C, Agency::Court, &format!("court note {i}"))]);
        let r = node.append(vec![progress(A, Agency::Police, &format!("visit {i}"))]);
        expected.push(global_of(&r));
    }
    let got = changes(&mut stream, 3).await;
    assert_eq!(
        got.iter().map(|c| c.global_sequence).collect::<Vec<_>>(),
        expected[..3]
    );
    for c in &got {
        let entry = c.entry.as_ref().expect("a change has its entry");
        assert_eq!(entry.global_sequence, c.global_sequence);
        assert_eq!(c.case_id, A);
    }
    let last_seen = got[2].global_sequence;
    drop(stream);

    // Two more while disconnected.
    for i in 5..7 {
        let r = node.append(vec![
            progress(A, Agency::Police, &format!("visit {i}")),
            progress(F, Agency::Court, "hearing soon"),
        ]);
        expected.push(global_of(&r) - 1);
    }

    let mut stream = watch(last_seen).await;
    let caught_up = changes(&mut stream, 4).await;
    assert_eq!(
        caught_up
            .iter()
            .map(|c| c.global_sequence)
            .collect::<Vec<_>>(),
        expected[3..7],
        "exactly the changes after {last_seen}"
    );
    // After the catch-up comes the current view. Waiting for it keeps the
    // next appends out of the catch-up (see
    // `watch_case_resume_keeps_changes_written_during_catch_up` for what
    // happens when they land in it).
    let snapshot = next_change(&mut stream).await;
    assert!(snapshot.snapshot, "{snapshot:?}");
    assert_eq!(snapshot.view.map(unsealed), Some(unsealed(node.view(A))));
    assert_eq!(snapshot.global_sequence, expected[6]);

    // Live again: two more, then a sentinel, and nothing in between.
    for i in 7..10 {
        let r = node.append(vec![progress(A, Agency::Police, &format!("visit {i}"))]);
        expected.push(global_of(&r));
    }
    let live = changes(&mut stream, 3).await;
    assert_eq!(
        live.iter().map(|c| c.global_sequence).collect::<Vec<_>>(),
        expected[7..10]
    );
    let last = live.last().expect("live change");
    assert_eq!(
        last.view.as_ref().map(|v| v.case_sequence),
        Some(node.view(A).case_sequence),
        "the last change carries the view after it"
    );
}

/// A change written while a resumed watch is still sending its catch-up
/// must reach the watcher as a change. The client's small HTTP/2 window
/// holds the server in the middle of a long catch-up (one read of the case's
/// entries) while the test appends; the server reads the case's view only
/// after that, so the appended event is in the view but was not among the
/// changes read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_case_resume_keeps_changes_written_during_catch_up() {
    let mut node = Node::start().await;
    city(&mut node);
    // A has 2 entries; 500 more (one read of at most 512 entries holds them
    // all), with long event ids so the catch-up is far larger than what the
    // window, the encoder and the watch channel can hold.
    for g in 0..5 {
        let group = (0..100)
            .map(|i| {
                let mut e = progress(
                    A,
                    Agency::Police,
                    &format!("call {g}-{i}: she is safe for now"),
                );
                e.event_id = format!("{:0>60}", g * 100 + i);
                e
            })
            .collect();
        node.append(group);
    }
    let first_a = node.log.case_entries(A, 0, 1).expect("entries")[0].global_sequence;
    let mut expected: Vec<u64> = node
        .log
        .case_entries(A, 1, 1000)
        .expect("entries")
        .iter()
        .map(|e| e.global_sequence)
        .collect();
    assert_eq!(expected.len(), 501);

    let channel = Endpoint::from_shared(format!("http://{}", node.addr))
        .expect("endpoint")
        .initial_stream_window_size(1024)
        .connect_lazy();
    let mut cases = CasesClient::new(channel);
    let mut stream = guard(
        "WatchCase",
        cases.watch_case(req(
            POLICE,
            WatchCaseRequest {
                case_id: A.into(),
                after_global_sequence: first_a,
            },
        )),
    )
    .await
    .expect("watch")
    .into_inner();
    let mut got = changes(&mut stream, 1).await;
    // The server has read the catch-up and is waiting for the watcher.
    let r = node.append(vec![progress(
        A,
        Agency::Police,
        "written during the catch-up",
    )]);
    expected.push(global_of(&r));
    // The catch-up ends with the current view (which holds the new event).
    loop {
        let c = next_change(&mut stream).await;
        if c.snapshot {
            assert_eq!(c.view.map(unsealed), Some(unsealed(node.view(A))));
            break;
        }
        got.push(c);
    }
    // A sentinel after everything: the watch must deliver all of the above
    // before it.
    let r = node.append(vec![progress(A, Agency::Police, "sentinel")]);
    let sentinel = global_of(&r);
    expected.push(sentinel);
    loop {
        let c = changes(&mut stream, 1).await.remove(0);
        let g = c.global_sequence;
        got.push(c);
        if g == sentinel {
            break;
        }
    }
    let got: Vec<u64> = got.iter().map(|c| c.global_sequence).collect();
    let missing: Vec<&u64> = expected.iter().filter(|g| !got.contains(g)).collect();
    assert!(
        missing.is_empty(),
        "changes never sent to the resumed watcher: {missing:?} (the catch-up read the entries, then the view; last_case_seq jumped to the view's)"
    );
    assert_eq!(got, expected, "every change once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_case_is_cut_when_the_case_leaves_sight() {
    let mut node = Node::start().await;
    city(&mut node);
    let mut cases = node.cases();
    let mut stream = guard(
        "WatchCase",
        cases.watch_case(req(
            POLICE,
            WatchCaseRequest {
                case_id: C.into(),
                after_global_sequence: 0,
            },
        )),
    )
    .await
    .expect("police may watch C while referred")
    .into_inner();
    assert!(next_change(&mut stream).await.snapshot);
    node.append(vec![returned(C, Agency::Police, "R-C")]);
    let end = guard("the watch to end", stream.next())
        .await
        .expect("an error before the end");
    assert_eq!(end.err().map(|s| s.code()), Some(Code::PermissionDenied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cases_filters_and_resumes() {
    let mut node = Node::start().await;
    city(&mut node);
    let cases = node.cases();
    let dv = CaseFilter {
        categories: vec![Category::DomesticViolence as i32],
        ..Default::default()
    };
    let watch = |after: u64| {
        let mut cases = cases.clone();
        let filter = dv.clone();
        async move {
            guard(
                "WatchCases",
                cases.watch_cases(req(
                    XIHU,
                    WatchCasesRequest {
                        filter: Some(filter),
                        after_global_sequence: after,
                    },
                )),
            )
            .await
            .expect("watch cases")
            .into_inner()
        }
    };

    let mut stream = watch(0).await;
    // Snapshots: the domestic-violence cases of Xihu (A and F; C is a
    // custody case, B is outside).
    let mut snaps = BTreeSet::new();
    for _ in 0..2 {
        let c = next_change(&mut stream).await;
        assert!(c.snapshot, "{c:?}");
        snaps.insert(c.case_id);
    }
    assert_eq!(snaps, [A, F].iter().map(|s| s.to_string()).collect());

    // Changes: custody in Xihu (C), DV outside Xihu (B), DV in Xihu (A, F).
    let mut expected = Vec::new();
    node.append(vec![progress(C, Agency::Court, "custody hearing")]);
    node.append(vec![progress(B, Agency::WomensFederation, "call back")]);
    let r = node.append(vec![progress(A, Agency::Police, "visit")]);
    expected.push((A.to_owned(), global_of(&r)));
    node.append(vec![progress(C, Agency::Court, "custody hearing 2")]);
    let r = node.append(vec![progress(F, Agency::Court, "order hearing")]);
    expected.push((F.to_owned(), global_of(&r)));
    let got = changes(&mut stream, 2).await;
    let got: Vec<(String, u64)> = got
        .into_iter()
        .map(|c| (c.case_id, c.global_sequence))
        .collect();
    assert_eq!(got, expected);
    let resume_after = expected[0].1;
    drop(stream);

    // Resume after the first: the second, then live (B and C skipped).
    node.append(vec![progress(B, Agency::WomensFederation, "call back 2")]);
    let r = node.append(vec![progress(A, Agency::Police, "visit 2")]);
    expected.push((A.to_owned(), global_of(&r)));
    let mut stream = watch(resume_after).await;
    let got = changes(&mut stream, 2).await;
    assert_eq!(
        got.into_iter()
            .map(|c| (c.case_id, c.global_sequence))
            .collect::<Vec<_>>(),
        expected[1..3]
    );
    node.append(vec![progress(C, Agency::Court, "custody hearing 3")]);
    let r = node.append(vec![progress(F, Agency::Court, "order granted soon")]);
    let c = changes(&mut stream, 1).await.remove(0);
    assert_eq!((c.case_id.as_str(), c.global_sequence), (F, global_of(&r)));
}

// ---------------------------------------------------------------------------
// Past states

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_as_of_equals_the_view_at_the_time() {
    let mut node = Node::start().await;
    city(&mut node);
    let mut cases = node.cases();
    let mut audit = node.audit();

    // (global sequence, record time, view) after each change to A.
    let mut points: Vec<(u64, i64, CaseView)> = Vec::new();
    let snap = |cases: &mut CasesClient<Channel>| {
        let mut cases = cases.clone();
        async move {
            guard(
                "GetCase",
                cases.get_case(req(
                    XIHU,
                    GetCaseRequest {
                        case_id: A.into(),
                        now: None,
                    },
                )),
            )
            .await
            .expect("get case")
            .into_inner()
            .view
            .expect("view")
        }
    };
    let v = snap(&mut cases).await;
    points.push((v.last_global_sequence, node.clock, v));
    let due = node.clock + 3 * 86_400;
    let steps: Vec<Vec<Event>> = vec![
        vec![referral(A, Agency::Police, "R-A1", Agency::CivilAffairs)],
        vec![progress(E, Agency::Labour, "elsewhere")],
        vec![accepted(A, Agency::CivilAffairs, "R-A1")],
        vec![action(A, "ACT-A1", Agency::Court, due)],
        vec![progress(A, Agency::Court, "hearing set")],
    ];
    for step in steps {
        let touches_a = step.iter().any(|e| e.case_id == A);
        let r = node.append(step);
        if touches_a {
            let v = snap(&mut cases).await;
            assert_eq!(v.last_global_sequence, global_of(&r));
            points.push((global_of(&r), node.clock, v));
        }
    }

    for (g, at, view) in &points {
        let by_seq = guard(
            "GetCaseAsOf",
            audit.get_case_as_of(req(
                AUDITOR,
                GetCaseAsOfRequest {
                    case_id: A.into(),
                    at: Some(At::GlobalSequence(*g)),
                },
            )),
        )
        .await
        .expect("as of sequence")
        .into_inner();
        assert_eq!(
            by_seq.view.map(unsealed),
            Some(unsealed(view.clone())),
            "as of global sequence {g}"
        );
        assert_eq!(by_seq.as_of_global_sequence, *g);
        assert_eq!(by_seq.entries_applied, view.case_sequence);
        // By record time: at the change, and 30 s later (before the next).
        for t in [*at, *at + 30] {
            let by_time = guard(
                "GetCaseAsOf",
                audit.get_case_as_of(req(
                    AUDITOR,
                    GetCaseAsOfRequest {
                        case_id: A.into(),
                        at: Some(At::RecordedAt(ts(t))),
                    },
                )),
            )
            .await
            .expect("as of time")
            .into_inner();
            assert_eq!(
                by_time.view.map(unsealed),
                Some(unsealed(view.clone())),
                "as of {t}"
            );
        }
    }
    // Before the case was opened there is nothing.
    let r = guard(
        "GetCaseAsOf",
        audit.get_case_as_of(req(
            AUDITOR,
            GetCaseAsOfRequest {
                case_id: A.into(),
                at: Some(At::RecordedAt(ts(T0))),
            },
        )),
    )
    .await;
    assert_eq!(code(r), Code::NotFound);
}

// ---------------------------------------------------------------------------
// Agenda and statistics over a simulated city

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agenda_and_stats_cover_only_visible_cases() {
    let mut node = Node::start().await;
    node.append_sim(120, "ST", 3);
    let views = node.log.views().expect("views");
    let in_xihu = |j: &str| j == "330100/330106" || j.starts_with("330100/330106/");
    let xihu: BTreeSet<String> = views
        .iter()
        .filter(|v| in_xihu(&v.jurisdiction))
        .map(|v| v.case_id.clone())
        .collect();
    assert!(!xihu.is_empty() && xihu.len() < views.len());
    let now = Some(ts(lianxi_sim::Workload::default().end));
    let mut cases = node.cases();

    for (token, expected) in [
        (XIHU, xihu.clone()),
        (
            CITY,
            views
                .iter()
                .map(|v| v.case_id.clone())
                .collect::<BTreeSet<_>>(),
        ),
    ] {
        let stats = guard(
            "GetStats",
            cases.get_stats(req(
                token,
                GetStatsRequest {
                    now,
                    ..Default::default()
                },
            )),
        )
        .await
        .expect("stats")
        .into_inner();
        assert_eq!(stats.cases, expected.len() as u64, "{token}");
        let by_category: u64 = stats.by_category.iter().map(|c| c.count).sum();
        assert_eq!(by_category, expected.len() as u64);

        let agenda = guard(
            "GetAgenda",
            cases.get_agenda(req(
                token,
                GetAgendaRequest {
                    now,
                    ..Default::default()
                },
            )),
        )
        .await
        .expect("agenda")
        .into_inner();
        assert!(!agenda.items.is_empty(), "{token}: something to discuss");
        for item in &agenda.items {
            let id = &item.case.as_ref().expect("case").case_id;
            assert!(expected.contains(id), "{token}: {id} is not visible");
        }
        let listed = list_all(&mut cases, token, None).await.expect("list");
        assert_eq!(
            listed.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "{token}"
        );
    }

    // Police: stats count the cases police is involved in.
    let police: u64 = views
        .iter()
        .filter(|v| {
            v.agencies.iter().any(|x| {
                x.agency == Agency::Police as i32 && x.state != InvolvementState::Returned as i32
            })
        })
        .count() as u64;
    let stats = guard(
        "GetStats",
        cases.get_stats(req(
            POLICE,
            GetStatsRequest {
                now,
                ..Default::default()
            },
        )),
    )
    .await
    .expect("stats")
    .into_inner();
    assert_eq!(stats.cases, police);
}

/// A view without its personal values, sealed or shown: what differs
/// between the stored view and what a caller gets.
fn unsealed(mut v: CaseView) -> CaseView {
    v.personal.clear();
    v.person_ref.clear();
    v.mandatory_reporter.clear();
    v
}

#[tokio::test]
async fn personal_values_go_only_to_the_roles_that_need_them() {
    let mut node = Node::start().await;
    let case = "PII-1";
    let mut open = opened(
        case,
        Agency::Police,
        "330100/330106",
        Category::DomesticViolence,
    );
    if let Some(Body::CaseOpened(o)) = &mut open.body {
        o.mandatory_reporter = "Teacher Li".into();
        o.person = Some(pb::Person {
            name: "Chen Mei".into(),
            address: "7 Lotus Street".into(),
            ..Default::default()
        });
    }
    node.append(vec![open]);
    let cases = node.cases();
    let get = |token: &'static str| {
        let mut c = cases.clone();
        async move {
            c.get_case(req(
                token,
                GetCaseRequest {
                    case_id: case.into(),
                    now: None,
                },
            ))
            .await
            .expect("get case")
            .into_inner()
            .view
            .expect("view")
        }
    };
    let opening = |token: &'static str| {
        let mut c = cases.clone();
        async move {
            c.get_timeline(req(
                token,
                GetTimelineRequest {
                    case_id: case.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("timeline")
            .into_inner()
            .entries
            .remove(0)
        }
    };
    let withheld = |v: &[pb::Sealed]| -> Vec<(String, i32)> {
        v.iter().map(|s| (s.path.clone(), s.redaction)).collect()
    };

    // Police read everything, the reporter included.
    let v = get(POLICE).await;
    assert_eq!(
        (v.person_ref.as_str(), v.mandatory_reporter.as_str()),
        ("person-of-PII-1", "Teacher Li")
    );
    assert!(v.personal.is_empty(), "{:?}", v.personal);
    let t = opening(POLICE).await;
    let Some(Body::CaseOpened(o)) = t.event.and_then(|e| e.body) else {
        panic!("opening")
    };
    assert_eq!(o.person.clone().unwrap().address, "7 Lotus Street");

    // The secretariat reads who, not where, and never the reporter.
    let v = get(XIHU).await;
    assert_eq!(v.person_ref, "person-of-PII-1");
    assert!(v.mandatory_reporter.is_empty());
    assert_eq!(
        withheld(&v.personal),
        vec![(
            "case_opened.mandatory_reporter".into(),
            pb::Redaction::Withheld as i32
        )]
    );
    let t = opening(XIHU).await;
    let Some(Body::CaseOpened(o)) = t.event.clone().and_then(|e| e.body) else {
        panic!("opening")
    };
    let person = o.person.unwrap();
    assert_eq!(
        (person.name.as_str(), person.address.as_str()),
        ("Chen Mei", "")
    );
    assert_eq!(
        withheld(&t.withheld),
        vec![
            (
                "case_opened.mandatory_reporter".into(),
                pb::Redaction::Withheld as i32
            ),
            (
                "case_opened.person.address".into(),
                pb::Redaction::Withheld as i32
            ),
        ]
    );
    assert!(t.withheld.iter().all(|s| s.ciphertext.is_empty()));

    // After erasure no one reads anything, and says why.
    node.append(vec![event(
        case,
        Agency::PoliticalLegalCommittee,
        Body::PersonalDataErased(pb::PersonalDataErased {
            legal_basis: "request of the person".into(),
            authorised_by: "plc-3".into(),
        }),
    )]);
    let v = get(POLICE).await;
    assert!(v.person_ref.is_empty() && v.mandatory_reporter.is_empty());
    assert_eq!(v.personal.len(), 2);
    assert!(
        v.personal
            .iter()
            .all(|s| s.redaction == pb::Redaction::Erased as i32)
    );
    let t = opening(POLICE).await;
    assert_eq!(t.withheld.len(), 4, "{:?}", t.withheld);
    assert!(
        t.withheld
            .iter()
            .all(|s| s.redaction == pb::Redaction::Erased as i32)
    );
}

// ---------------------------------------------------------------------------
// The door: one mechanism for every method, no existence oracle, every
// refusal recorded

/// Any request with only `case_id` (field 1) set: what every case-scoped
/// request starts with.
#[derive(Clone, PartialEq, prost::Message)]
struct CaseIdOnly {
    #[prost(string, tag = "1")]
    case_id: String,
}

/// Every method of every lianxi service, from the descriptor set the node
/// serves: (service, method, whether it streams, whether its request has a
/// `case_id`).
fn every_method() -> Vec<(String, String, bool, bool)> {
    let set = prost_types::FileDescriptorSet::decode(lianxi_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut out = Vec::new();
    let messages: Vec<(String, &prost_types::DescriptorProto)> = set
        .file
        .iter()
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(move |m| (format!(".{}.{}", f.package(), m.name()), m))
        })
        .collect();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let input = messages
                    .iter()
                    .find(|(name, _)| name == method.input_type())
                    .map(|(_, m)| *m)
                    .unwrap_or_else(|| panic!("no message {}", method.input_type()));
                let case_scoped = input
                    .field
                    .iter()
                    .any(|f| f.name() == "case_id" && f.number() == 1);
                out.push((
                    format!("{}.{}", file.package(), service.name()),
                    method.name().to_owned(),
                    method.server_streaming(),
                    case_scoped,
                ));
            }
        }
    }
    out
}

/// Calls `path` with `msg` as `token`; for a streaming method, the first
/// message (or the error). Ok(()) when the call was answered with data.
async fn raw_call(
    node: &Node,
    path: &str,
    streaming: bool,
    token: &str,
    msg: CaseIdOnly,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(node.channel());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("a method path");
    let codec = tonic_prost::ProstCodec::<CaseIdOnly, ()>::default();
    if streaming {
        let mut stream = grpc
            .server_streaming(req(token, msg), path, codec)
            .await?
            .into_inner();
        stream.message().await.map(|_| ())
    } else {
        grpc.unary(req(token, msg), path, codec).await.map(|_| ())
    }
}

/// The access records written by `f`, after checking the chain.
async fn records_of<T>(node: &Node, f: impl Future<Output = T>) -> (T, Vec<AccessRecord>) {
    let before = node.access_count();
    let out = guard("the call", f).await;
    let after = node.access_count();
    let records = (before + 1..=after)
        .map(|s| node.access_record(s))
        .collect();
    (out, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_of_every_service_records_every_refusal() {
    let mut node = Node::start().await;
    city(&mut node);
    let methods = every_method();
    let services: BTreeSet<&str> = methods.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        services,
        ["lianxi.v1.Audit", "lianxi.v1.Cases", "lianxi.v1.Intake"]
            .into_iter()
            .collect(),
        "the services the node serves"
    );
    let mut calls = 0;
    for (service, method, streaming, case_scoped) in &methods {
        let path = format!("/{service}/{method}");
        // A token the node does not know: refused and recorded, whatever
        // the method.
        let (r, recs) = records_of(
            &node,
            raw_call(
                &node,
                &path,
                *streaming,
                "not-a-token",
                CaseIdOnly::default(),
            ),
        )
        .await;
        calls += 1;
        assert_eq!(
            r.as_ref().map_err(|s| s.code()),
            Err(Code::Unauthenticated),
            "{path}"
        );
        let rec = recs.last().unwrap_or_else(|| panic!("{path}: no record"));
        assert_eq!(
            (rec.method.as_str(), rec.allowed, rec.principal.as_str()),
            (path.as_str(), false, "(unauthenticated)"),
            "{path}: {rec:?}"
        );
        if !case_scoped {
            continue;
        }
        // The principal each service is for.
        let token = match service.as_str() {
            "lianxi.v1.Cases" => POLICE,
            "lianxi.v1.Audit" => AUDITOR,
            other => panic!("a case-scoped method in {other}"),
        };
        let bad = "no such\ncase\u{1b}[2J";
        let mut answers = Vec::new();
        for asked in [bad, "NO-SUCH-CASE", E] {
            let (r, recs) = records_of(
                &node,
                raw_call(
                    &node,
                    &path,
                    *streaming,
                    token,
                    CaseIdOnly {
                        case_id: asked.into(),
                    },
                ),
            )
            .await;
            calls += 1;
            let rec = recs
                .last()
                .unwrap_or_else(|| panic!("{path} {asked:?}: no record"));
            assert_eq!(rec.method, path, "{rec:?}");
            assert_eq!(
                rec.case_id,
                lianxi_api::echo(asked),
                "{path}: the record names the case asked for"
            );
            assert!(
                !rec.case_id.chars().any(char::is_control),
                "{path}: escaped in the record: {rec:?}"
            );
            if let Err(s) = &r {
                assert!(!rec.allowed, "{path} {asked:?}: a refusal recorded as one");
                assert!(
                    !s.message().chars().any(char::is_control),
                    "{path}: {:?}",
                    s.message()
                );
            }
            answers.push(r);
        }
        assert_eq!(
            answers[0].as_ref().map_err(|s| s.code()),
            Err(Code::InvalidArgument),
            "{path}: a malformed id"
        );
        if service == "lianxi.v1.Cases" {
            // Police is not involved in E: the same answer as for a case
            // that does not exist, word for word but the id.
            let shape = |r: &Result<(), Status>, id: &str| {
                let s = r.as_ref().expect_err("refused");
                (s.code(), s.message().replace(id, "<case>"))
            };
            assert_eq!(
                shape(&answers[1], "NO-SUCH-CASE"),
                shape(&answers[2], E),
                "{path}: no existence oracle"
            );
            assert_eq!(shape(&answers[2], E).0, Code::NotFound, "{path}");
        }
    }
    println!(
        "checked {} methods of {} services, {calls} calls, each recorded",
        methods.len(),
        services.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_its_door_serves_nothing() {
    let node = Node::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (changes_tx, changes) = watch::channel(None);
    let gate = Gate::new(principals(), node.log.access_log());
    // The handlers' own server, without the door into_server puts around it.
    let bare = pb::cases_server::CasesServer::new(CasesApi::new(node.log.clone(), gate, changes));
    let server = tokio::spawn(
        Server::builder()
            .add_service(bare)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let mut client = CasesClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy(),
    );
    let r = guard(
        "ListCases",
        client.list_cases(req(CITY, ListCasesRequest::default())),
    )
    .await;
    assert_eq!(code(r), Code::Internal);
    server.abort();
    drop(changes_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_case_ids_get_a_bounded_escaped_answer() {
    let mut node = Node::start().await;
    city(&mut node);
    let mut cases = node.cases();
    let long = "x".repeat(100_000);
    let (r, rec) = one_record(
        &node,
        cases.get_case(req(
            POLICE,
            GetCaseRequest {
                case_id: long.clone(),
                now: None,
            },
        )),
    )
    .await;
    let s = r.expect_err("refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message().len());
    assert!(s.message().len() < 1000, "{} bytes", s.message().len());
    assert!(s.message().contains("100000 characters"), "{}", s.message());
    assert!(!rec.allowed);
    assert!(rec.case_id.len() < 200, "{} bytes", rec.case_id.len());
    assert!(rec.case_id.starts_with("xxxx"));

    let nasty = "A-own\n\u{1b}[31mforged line\u{202e}";
    let (r, rec) = one_record(
        &node,
        cases.get_timeline(req(
            POLICE,
            GetTimelineRequest {
                case_id: nasty.into(),
                ..Default::default()
            },
        )),
    )
    .await;
    let s = r.expect_err("refused");
    assert_eq!(s.code(), Code::InvalidArgument);
    for text in [s.message(), rec.case_id.as_str(), rec.detail.as_str()] {
        assert!(
            !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains("\\n"), "escaped, not dropped: {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_are_opaque_and_bound_to_their_query() {
    let mut node = Node::start().await;
    node.append_sim(30, "PT", 11);
    let cases = node.cases();
    let list = |token: &'static str, filter: CaseFilter, page_token: String| {
        let mut cases = cases.clone();
        async move {
            guard(
                "ListCases",
                cases.list_cases(req(
                    token,
                    ListCasesRequest {
                        filter: Some(filter),
                        page_token,
                        page_size: 5,
                        ..Default::default()
                    },
                )),
            )
            .await
            .map(|r| r.into_inner())
        }
    };
    let all = CaseFilter::default();
    let first = list(CITY, all.clone(), String::new())
        .await
        .expect("page 1");
    assert!(!first.next_page_token.is_empty());
    let second = list(CITY, all.clone(), first.next_page_token.clone())
        .await
        .expect("page 2 with its token");
    assert_ne!(first.cases[0].case_id, second.cases[0].case_id);

    let last_id = first.cases.last().expect("a case").case_id.clone();
    let other = CaseFilter {
        jurisdiction: "330100".into(),
        ..Default::default()
    };
    for (what, token, filter, page_token) in [
        ("garbage", CITY, all.clone(), "garbage!".to_owned()),
        ("the raw last case id", CITY, all.clone(), last_id),
        ("another filter", CITY, other, first.next_page_token.clone()),
        (
            "another caller",
            XIHU,
            all.clone(),
            first.next_page_token.clone(),
        ),
    ] {
        let (r, rec) = one_record(&node, list(token, filter, page_token)).await;
        assert_eq!(code(r), Code::InvalidArgument, "{what}");
        assert!(!rec.allowed, "{what}: recorded as refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_saw_a_case_covers_lists_agenda_stats_and_watches() {
    let mut node = Node::start().await;
    city(&mut node);
    let mut cases = node.cases();
    let mut audit = node.audit();
    guard(
        "ListCases",
        cases.list_cases(req(POLICE, ListCasesRequest::default())),
    )
    .await
    .expect("list");
    guard(
        "GetStats",
        cases.get_stats(req(XIHU, GetStatsRequest::default())),
    )
    .await
    .expect("stats");
    let mut stream = guard(
        "WatchCases",
        cases.watch_cases(req(
            XIHU,
            WatchCasesRequest {
                filter: None,
                after_global_sequence: 0,
            },
        )),
    )
    .await
    .expect("watch")
    .into_inner();
    let before = node.access_count();
    let r = node.append(vec![progress(A, Agency::Police, "visit")]);
    let mut change = next_change(&mut stream).await;
    while change.snapshot {
        change = next_change(&mut stream).await;
    }
    assert_eq!(
        (change.case_id.as_str(), change.global_sequence),
        (A, global_of(&r))
    );
    // The batch was recorded before it was sent.
    let batch = (before + 1..=node.access_count())
        .map(|s| node.access_record(s))
        .rfind(|r| r.method == "/lianxi.v1.Cases/WatchCases")
        .expect("the batch is recorded");
    assert_eq!(batch.case_ids, [A]);
    drop(stream);
    // An auditor reading the log reads every case's entries.
    let entries: Vec<_> = guard(
        "ReadLog",
        audit
            .read_log(req(AUDITOR, ReadLogRequest::default()))
            .await
            .expect("read log")
            .into_inner()
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(entries.len() as u64, node.log.checkpoint().global_sequence);

    let who = guard(
        "ListAccess",
        audit.list_access(req(
            AUDITOR,
            ListAccessRequest {
                case_id: A.into(),
                ..Default::default()
            },
        )),
    )
    .await
    .expect("list access")
    .into_inner()
    .records;
    let methods: BTreeSet<(String, String)> = who
        .iter()
        .map(|r| (r.principal.clone(), r.method.clone()))
        .collect();
    for (principal, method) in [
        (POLICE_NAME, "/lianxi.v1.Cases/ListCases"),
        ("secretariat-xihu", "/lianxi.v1.Cases/GetStats"),
        ("secretariat-xihu", "/lianxi.v1.Cases/WatchCases"),
        (AUDITOR_NAME, "/lianxi.v1.Audit/ReadLog"),
    ] {
        assert!(
            methods.contains(&(principal.to_owned(), method.to_owned())),
            "{principal} {method} missing from who saw {A}: {methods:?}"
        );
    }
    // E is not police's: police's list did not show it.
    let who_e = node
        .log
        .access_log()
        .list(
            &ListAccessRequest {
                case_id: E.into(),
                principal: POLICE_NAME.into(),
                ..Default::default()
            },
            100,
        )
        .expect("list")
        .0;
    assert!(who_e.is_empty(), "{who_e:?}");
}

/// A watch's changes as (case, global sequence, entry hash, view).
fn seen(changes: &[CaseChange]) -> Vec<(String, u64, String, Option<CaseView>)> {
    changes
        .iter()
        .map(|c| {
            (
                c.case_id.clone(),
                c.global_sequence,
                c.entry.as_ref().map(|e| e.hash.clone()).unwrap_or_default(),
                c.view.clone().map(unsealed),
            )
        })
        .collect()
}

/// Changes until (and with) the one at global sequence `last`.
async fn changes_through(stream: &mut Streaming<CaseChange>, last: u64) -> Vec<CaseChange> {
    let mut out = Vec::new();
    loop {
        let c = next_change(stream).await;
        if c.snapshot {
            continue;
        }
        let g = c.global_sequence;
        out.push(c);
        if g >= last {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_watch_sends_exactly_what_a_live_one_sent() {
    let mut node = Node::start().await;
    city(&mut node);
    let point = node.log.checkpoint().global_sequence;
    let new_only = CaseFilter {
        statuses: vec![pb::CoordinatedStatus::New as i32],
        ..Default::default()
    };
    let cases = node.cases();
    let watch_cases = |after: u64| {
        let mut cases = cases.clone();
        let filter = new_only.clone();
        async move {
            guard(
                "WatchCases",
                cases.watch_cases(req(
                    CITY,
                    WatchCasesRequest {
                        filter: Some(filter),
                        after_global_sequence: after,
                    },
                )),
            )
            .await
            .expect("watch cases")
            .into_inner()
        }
    };
    let mut live = watch_cases(point).await;
    let mut live_case = guard(
        "WatchCase",
        node.cases().watch_case(req(
            CITY,
            WatchCaseRequest {
                case_id: A.into(),
                after_global_sequence: 0,
            },
        )),
    )
    .await
    .expect("watch case")
    .into_inner();
    assert!(next_change(&mut live_case).await.snapshot);
    // A new case, then in one group its referral and acceptance (it leaves
    // NEW) with another change of A; a second new case; a sentinel.
    node.append(vec![opened(
        "N1",
        Agency::Police,
        "330100/330106",
        Category::DomesticViolence,
    )]);
    node.append(vec![
        progress(A, Agency::Police, "first"),
        referral("N1", Agency::Police, "R-N1", Agency::Court),
        progress(A, Agency::Police, "second"),
        accepted("N1", Agency::Court, "R-N1"),
    ]);
    node.append(vec![
        opened("N2", Agency::Court, "330100/330106", Category::Custody),
        progress("N2", Agency::Court, "hearing set"),
    ]);
    let r = node.append(vec![
        progress(A, Agency::Police, "third"),
        opened("N3", Agency::Police, "330100/330101", Category::Other),
    ]);
    let last = global_of(&r);
    let last_a = node.view(A).last_global_sequence;
    assert!(last_a < last);
    let live_seen = changes_through(&mut live, last).await;
    let live_case_seen = changes_through(&mut live_case, last_a).await;

    let mut resumed = watch_cases(point).await;
    let resumed_seen = changes_through(&mut resumed, last).await;
    assert!(
        live_seen.iter().any(|c| c.case_id == "N1"),
        "the live watcher saw N1 open: {:?}",
        seen(&live_seen)
    );
    assert_eq!(
        seen(&resumed_seen),
        seen(&live_seen),
        "a resumed watch sends what the live one sent"
    );
    for c in &live_seen {
        let view = c.view.as_ref().expect("a change carries its view");
        assert_eq!(view.last_global_sequence, c.global_sequence, "{c:?}");
        assert_eq!(view.status, pb::CoordinatedStatus::New as i32, "{c:?}");
    }

    let mut resumed_case = guard(
        "WatchCase",
        node.cases().watch_case(req(
            CITY,
            WatchCaseRequest {
                case_id: A.into(),
                after_global_sequence: point,
            },
        )),
    )
    .await
    .expect("watch case")
    .into_inner();
    let resumed_case_seen = changes_through(&mut resumed_case, last_a).await;
    assert_eq!(seen(&resumed_case_seen), seen(&live_case_seen));
    assert_eq!(live_case_seen.len(), 3);
    for c in &live_case_seen {
        let view = c.view.as_ref().expect("each change carries its view");
        assert_eq!(view.last_global_sequence, c.global_sequence, "{c:?}");
    }
    println!(
        "live and resumed: {} WatchCases changes, {} WatchCase changes, identical",
        live_seen.len(),
        live_case_seen.len()
    );
}

/// Every case id a filtered list returns, paged 7 at a time.
async fn list_paged(
    client: &mut CasesClient<Channel>,
    token: &str,
    filter: &CaseFilter,
    now: Timestamp,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = guard(
            "ListCases",
            client.list_cases(req(
                token,
                ListCasesRequest {
                    filter: Some(filter.clone()),
                    page_token: page_token.clone(),
                    page_size: 7,
                    now: Some(now),
                },
            )),
        )
        .await
        .expect("ListCases")
        .into_inner();
        out.extend(page.cases.into_iter().map(|c| c.case_id));
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// The lists the filters' index narrows (risk, status, category, agency,
/// overdue, and an agency's own cases) return, page by page, exactly the
/// cases a scan of every view with the same filter and need to know finds.
#[tokio::test]
async fn filtered_lists_read_through_the_index_equal_a_scan_of_every_view() {
    use lianxi_proto::v1::{CoordinatedStatus, RiskLevel};
    let mut node = Node::start().await;
    node.append_sim(300, "FL", 11);
    let mut cases = node.cases();
    let views = node.log.views().expect("views");
    let police = |v: &CaseView| {
        v.agencies.iter().any(|x| {
            x.agency == Agency::Police as i32 && x.state != InvolvementState::Returned as i32
        })
    };
    let filters = [
        CaseFilter {
            risk_levels: vec![RiskLevel::High as i32],
            ..Default::default()
        },
        CaseFilter {
            risk_levels: vec![RiskLevel::Medium as i32, RiskLevel::Standard as i32],
            categories: vec![Category::DomesticViolence as i32],
            ..Default::default()
        },
        CaseFilter {
            statuses: vec![
                CoordinatedStatus::Referred as i32,
                CoordinatedStatus::InProgress as i32,
            ],
            ..Default::default()
        },
        CaseFilter {
            categories: vec![Category::DomesticViolence as i32],
            ..Default::default()
        },
        CaseFilter {
            involved_agency: Agency::Court as i32,
            ..Default::default()
        },
        CaseFilter {
            overdue_only: true,
            ..Default::default()
        },
        CaseFilter {
            overdue_only: true,
            involved_agency: Agency::Police as i32,
            ..Default::default()
        },
        CaseFilter::default(),
    ];
    let mut nonempty = 0;
    for now in [ts(1_775_000_000), ts(1_790_000_000)] {
        for filter in &filters {
            for (token, sees) in [
                (CITY, &(|_: &CaseView| true) as &dyn Fn(&CaseView) -> bool),
                (POLICE, &police),
            ] {
                let expected: Vec<String> = views
                    .iter()
                    .filter(|v| sees(v) && lianxi_domain::matches(filter, v, &now))
                    .map(|v| v.case_id.clone())
                    .collect();
                nonempty += usize::from(!expected.is_empty() && expected.len() < views.len());
                assert_eq!(
                    list_paged(&mut cases, token, filter, now).await,
                    expected,
                    "{token} {filter:?} at {now:?}"
                );
            }
        }
    }
    assert!(nonempty >= 16, "the workload is too plain: {nonempty}");
}
