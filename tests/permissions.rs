//! Per-agency permissions on the bus: a real nats-server started with
//! `deploy/nats/lianxi.conf`, the real `lianxi` node logged in as the `node`
//! user, and agency clients logged in as their agency (with the inbox prefix
//! `_INBOX_<agency>` the configuration expects). Nothing is mocked.
//!
//! What is shown: an agency publishes its own events through JetStream and
//! nothing else, reads only its own receipts and replies, cannot read the
//! stream; a node cannot publish an agency's event nor change the record; only
//! known users get in; and a body that claims another agency than the
//! subject it was allowed to publish on is still rejected by the node.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::context::{ContextBuilder, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerError};
use lianxi_proto::v1::{self as pb, Agency, GetCaseRequest, event::Body};
use prost::Message;
use support::{Nats, Node, batch_receipts, case_after, event_at as event};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;
use tokio_stream::StreamExt;

/// The agency tokens, as they appear in subjects and as user names.
const AGENCIES: [&str; 7] = [
    "political_legal_committee",
    "police",
    "court",
    "civil_affairs",
    "labour",
    "womens_federation",
    "justice_bureau",
];

const T0: i64 = 1_793_000_000; // 2026-10-26

/// How long a client waits for a JetStream acknowledgement or API answer
/// that should come.
const JS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a probe waits for one that should not: a refused publish is
/// never answered, so this is what each refusal costs.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn password(user: &str) -> String {
    format!("test-password-of-{user}")
}

fn password_variable(user: &str) -> String {
    format!("LIANXI_{}_PASSWORD", user.to_uppercase())
}

/// The environment the server needs: every password, in double quotes as
/// deploy/nats/README.md says (nats-server parses a variable's value).
fn server_env() -> Vec<(String, String)> {
    AGENCIES
        .iter()
        .chain(&["node"])
        .map(|user| (password_variable(user), format!("\"{}\"", password(user))))
        .collect()
}

fn conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/lianxi.conf")
}

fn cluster_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/lianxi-cluster.conf")
}

/// What one server of the three-server cluster is told besides passwords.
fn cluster_env() -> Vec<(String, String)> {
    let mut env = vec![(
        "LIANXI_NATS_SERVER_NAME".to_owned(),
        "lianxi-nats-1".to_owned(),
    )];
    for i in 1..=3 {
        env.push((
            format!("LIANXI_NATS_ROUTE_{i}"),
            format!("nats-route://127.0.0.1:{}", 16220 + i),
        ));
    }
    env
}

/// A nats-server with the deployment configuration and a password for
/// every user it names.
fn start_bus() -> Nats {
    let vars = server_env();
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Nats::start_with_config(&conf(), &envs)
}

/// The real node, logged in as `node` with the credentials in its URL.
fn start_node(nats: &Nats, data_dir: &Path) -> Node {
    start_node_with(nats, data_dir, &[])
}

/// [`start_node`] with more `LIANXI_*` settings.
fn start_node_with(nats: &Nats, data_dir: &Path, envs: &[(&str, &str)]) -> Node {
    let url = format!("nats://node:{}@127.0.0.1:{}", password("node"), nats.port);
    Node::start_within_env(&url, data_dir, Duration::from_secs(20), envs).unwrap_or_else(|e| {
        let log = nats.log();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        panic!(
            "the node could not log in to NATS as `node` with --nats-url nats://node:<password>@…: {e}; \
             last server log lines (newest first): {tail:#?}\n\
             (\"authentication error\" there: the node must pass the URL's user and password \
             with ConnectOptions::user_and_password)"
        )
    })
}

/// One logged-in NATS connection, with the events (server errors among
/// them) the client reports.
struct Bus {
    client: Client,
    js: async_nats::jetstream::Context,
    /// The same connection, for requests that should go unanswered.
    probe: async_nats::jetstream::Context,
    events: UnboundedReceiver<Event>,
}

async fn login(nats: &Nats, user: &str, inbox_prefix: Option<&str>) -> Bus {
    let (tx, events) = unbounded_channel();
    let mut options = ConnectOptions::with_user_and_password(user.into(), password(user))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        });
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    let client = options
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
    let js = ContextBuilder::new()
        .timeout(JS_TIMEOUT)
        .build(client.clone());
    let probe = ContextBuilder::new()
        .timeout(PROBE_TIMEOUT)
        .build(client.clone());
    Bus {
        client,
        js,
        probe,
        events,
    }
}

/// An agency system, connected the way the configuration expects.
async fn agency(nats: &Nats, agency: &str) -> Bus {
    login(nats, agency, Some(&format!("_INBOX_{agency}"))).await
}

/// A client with the node's credentials, used by the test to look at the
/// stream (agencies may not), to watch lookups, and to try what a node
/// must not do.
async fn as_node(nats: &Nats) -> Bus {
    login(nats, "node", None).await
}

/// Waits for the server's `-ERR` naming exactly `expected`, skipping other
/// client events.
async fn server_error(bus: &mut Bus, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, bus.events.recv()).await {
            Ok(Some(Event::ServerError(ServerError::Other(e)))) if e == expected => return,
            Ok(Some(other)) => seen.push(other.to_string()),
            Ok(None) => panic!("the client's event channel closed; saw {seen:?}"),
            Err(_) => panic!("the server did not say `{expected}` within 10 s; saw {seen:?}"),
        }
    }
}

async fn server_error_starting(bus: &mut Bus, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, bus.events.recv()).await {
            Ok(Some(Event::ServerError(ServerError::Other(e)))) if e.starts_with(prefix) => {
                return e;
            }
            Ok(Some(other)) => seen.push(other.to_string()),
            Ok(None) => panic!("the client's event channel closed; saw {seen:?}"),
            Err(_) => panic!("the server did not say `{prefix}…` within 10 s; saw {seen:?}"),
        }
    }
}

fn publish_refused(subject: &str) -> String {
    format!("Permissions Violation for Publish to \"{subject}\"")
}

fn subscribe_refused(subject: &str) -> String {
    format!("Permissions Violation for Subscription to \"{subject}\"")
}

fn opened(id: &str, case: &str, agency: Agency) -> pb::Event {
    support::opened_by(id, case, agency, T0)
}

fn progress(id: &str, case: &str, agency: Agency, t: i64) -> pb::Event {
    event(
        id,
        case,
        agency,
        t,
        Body::ProgressReported(pb::ProgressReported {
            summary: "visited the family".into(),
        }),
    )
}

/// Publishes through JetStream and returns the stream sequence of the
/// acknowledgement.
async fn publish(bus: &Bus, subject: &str, e: &pb::Event) -> u64 {
    bus.js
        .send_publish(
            subject.to_owned(),
            Publish::build()
                .payload(e.encode_to_vec().into())
                .message_id(e.event_id.clone()),
        )
        .await
        .expect("publish sent")
        .await
        .unwrap_or_else(|err| panic!("no acknowledgement for {subject}: {err}"))
        .sequence
}

/// Publishes through JetStream and returns the kind of error the
/// acknowledgement ended with; panics when it was acknowledged.
async fn publish_unacknowledged(bus: &Bus, subject: &str, e: &pb::Event) -> PublishErrorKind {
    let ack = bus
        .probe
        .publish(subject.to_owned(), e.encode_to_vec().into())
        .await
        .expect("publish sent")
        .await;
    match ack {
        Ok(ack) => panic!("{subject} was stored at stream sequence {}", ack.sequence),
        Err(err) => err.kind(),
    }
}

/// The events stream's last sequence and message count, as the node user
/// sees them.
async fn stream_state(node: &Bus) -> (u64, u64) {
    let info = node
        .js
        .get_stream("LIANXI_EVENTS")
        .await
        .expect("the node user reads the stream")
        .get_info()
        .await
        .expect("stream info");
    (info.state.last_sequence, info.state.messages)
}

/// The subjects under `filter` the stream holds messages on.
async fn stream_subjects(node: &Bus, filter: &str) -> Vec<(String, usize)> {
    let stream = node
        .js
        .get_stream("LIANXI_EVENTS")
        .await
        .expect("the node user reads the stream");
    let mut subjects: Vec<(String, usize)> = stream
        .info_with_subjects(filter)
        .await
        .expect("stream info with subjects")
        .collect::<Result<_, _>>()
        .await
        .expect("the subjects");
    subjects.sort();
    subjects
}

/// Waits until the node has created the events stream.
async fn wait_for_stream(node: &Bus) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.js.get_stream("LIANXI_EVENTS").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the node did not create the LIANXI_EVENTS stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks the nodes what became of an event id, as `bus`'s agency.
async fn lookup(bus: &Bus, agency: &str, event_id: &str) -> pb::LookupReply {
    let request = pb::LookupRequest {
        event_id: event_id.into(),
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        bus.client.request(
            format!("lianxi.v1.lookup.{agency}"),
            request.encode_to_vec().into(),
        ),
    )
    .await
    .expect("an answer within 10 s")
    .expect("the lookup answered");
    pb::LookupReply::decode(answer.payload.as_ref()).expect("a lookup reply")
}

async fn case_is_unknown(node: &Node, case: &str) {
    let mut client = node.client().await;
    let status = client
        .get_case(GetCaseRequest {
            case_id: case.into(),
            now: None,
        })
        .await
        .expect_err("the case should be unknown to the node");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn an_agency_publishes_its_own_events_through_jetstream_and_nothing_else() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    let observer = as_node(&nats).await;
    wait_for_stream(&observer).await;
    let mut police = agency(&nats, "police").await;

    // Its own subject: stored (a PubAck on its own inbox) and applied.
    let case = "DV-PERM-1";
    let first = publish(
        &police,
        &format!("lianxi.v1.events.police.{case}"),
        &opened("p1", case, Agency::Police),
    )
    .await;
    let mut client = node.client().await;
    let reply = case_after(&mut client, case, first).await;
    let view = reply.view.expect("a view");
    assert_eq!(view.case_sequence, 1);
    assert_eq!(view.first_contact, Agency::Police as i32);

    // The court's subject: the server refuses the publish, so no
    // acknowledgement ever comes and nothing is stored.
    let court_case = "DV-PERM-COURT";
    let court_subject = format!("lianxi.v1.events.court.{court_case}");
    let forged = opened("c1", court_case, Agency::Court);
    let kind = publish_unacknowledged(&police, &court_subject, &forged).await;
    assert_eq!(kind, PublishErrorKind::TimedOut);
    server_error(&mut police, &publish_refused(&court_subject)).await;
    assert_eq!(stream_state(&observer).await, (first, 1));
    assert_eq!(
        stream_subjects(&observer, "lianxi.v1.events.court.>").await,
        []
    );

    // Nor any other agency's subject, nor outside the events.
    for other in AGENCIES.iter().filter(|a| **a != "police") {
        let subject = format!("lianxi.v1.events.{other}.{court_case}");
        police
            .client
            .publish(subject.clone(), forged.encode_to_vec().into())
            .await
            .unwrap();
        server_error(&mut police, &publish_refused(&subject)).await;
    }
    for subject in ["lianxi.v1.receipts.police", "lianxi.v1.events"] {
        police.client.publish(subject, "x".into()).await.unwrap();
        server_error(&mut police, &publish_refused(subject)).await;
    }

    // The next police event directly follows the first in the stream: nothing
    // was stored in between, and the node never saw the court case.
    let second = publish(
        &police,
        &format!("lianxi.v1.events.police.{case}"),
        &progress("p2", case, Agency::Police, T0 + 60),
    )
    .await;
    assert_eq!(second, first + 1);
    let reply = case_after(&mut client, case, second).await;
    assert_eq!(reply.view.unwrap().case_sequence, 2);
    case_is_unknown(&node, court_case).await;
    assert_eq!(
        stream_subjects(&observer, "lianxi.v1.events.>").await,
        [(format!("lianxi.v1.events.police.{case}"), 2)]
    );

    // An agency client that forgets its inbox prefix may publish, but may
    // not subscribe to the shared `_INBOX`, so it never hears the PubAck:
    // the event is stored and applied all the same (and a retry with the
    // same message id is dropped by JetStream, or by the node's dedup).
    let mut careless = login(&nats, "police", None).await;
    let third_event = progress("p3", case, Agency::Police, T0 + 120);
    let kind = publish_unacknowledged(
        &careless,
        &format!("lianxi.v1.events.police.{case}"),
        &third_event,
    )
    .await;
    assert_eq!(kind, PublishErrorKind::TimedOut);
    let refused = server_error_starting(
        &mut careless,
        "Permissions Violation for Subscription to \"_INBOX.",
    )
    .await;
    assert!(refused.ends_with(".*\""), "{refused}");
    let reply = case_after(&mut client, case, second + 1).await;
    assert_eq!(reply.view.unwrap().case_sequence, 3);
    assert_eq!(stream_state(&observer).await, (second + 1, 3));
}

#[tokio::test]
async fn an_agency_reads_only_its_own_receipts_and_replies() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let _node = start_node(&nats, data.path());
    let observer = as_node(&nats).await;
    wait_for_stream(&observer).await;
    let mut police = agency(&nats, "police").await;
    let court = agency(&nats, "court").await;
    let mut court_own_receipts = court
        .client
        .subscribe("lianxi.v1.receipts.court")
        .await
        .unwrap();

    // Another agency's receipts and inbox, or everything: refused.
    let mut court_receipts = police
        .client
        .subscribe("lianxi.v1.receipts.court")
        .await
        .unwrap();
    server_error(&mut police, &subscribe_refused("lianxi.v1.receipts.court")).await;
    let mut court_inbox = police.client.subscribe("_INBOX_court.>").await.unwrap();
    server_error(&mut police, &subscribe_refused("_INBOX_court.>")).await;
    let _everything = police.client.subscribe(">").await.unwrap();
    server_error(&mut police, &subscribe_refused(">")).await;
    // Its own receipts: allowed. (The server handles one connection's
    // operations in order, so this subscription is in place before the
    // police event below is stored, let alone receipted.)
    let mut own_receipts = police
        .client
        .subscribe("lianxi.v1.receipts.police")
        .await
        .unwrap();

    // The court publishes, then the police: the node sends their receipts in
    // stream order over one connection, so when the police receipt is here
    // the court receipt (which the court gets) would have reached the police
    // connection before it.
    let court_seq = publish(
        &court,
        "lianxi.v1.events.court.DV-PERM-2C",
        &opened("r-court", "DV-PERM-2C", Agency::Court),
    )
    .await;
    let police_seq = publish(
        &police,
        "lianxi.v1.events.police.DV-PERM-2P",
        &opened("r-police", "DV-PERM-2P", Agency::Police),
    )
    .await;
    assert_eq!(police_seq, court_seq + 1);
    let court_receipt = tokio::time::timeout(Duration::from_secs(30), court_own_receipts.next())
        .await
        .expect("the court receipt within 30 s")
        .expect("a message");
    let court_batch = batch_receipts(court_receipt.payload.as_ref());
    assert_eq!(court_batch.len(), 1, "{court_batch:?}");
    let court_receipt = &court_batch[0];
    assert_eq!(court_receipt.stream_sequence, court_seq);
    let own = tokio::time::timeout(Duration::from_secs(30), own_receipts.next())
        .await
        .expect("the police receipt within 30 s")
        .expect("a message");
    let own_batch = batch_receipts(own.payload.as_ref());
    assert_eq!(own_batch.len(), 1, "{own_batch:?}");
    let receipt = &own_batch[0];
    assert_eq!(receipt.event_id, "r-police");
    assert_eq!(receipt.stream_sequence, police_seq);
    assert_eq!(
        receipt.status,
        pb::ReceiptStatus::Accepted as i32,
        "{receipt:?}"
    );
    // `timeout(ZERO, …)` polls once: a court receipt would be ready now.
    if let Ok(Some(leaked)) = tokio::time::timeout(Duration::ZERO, court_receipts.next()).await {
        panic!("the police read a court receipt: {leaked:?}");
    }

    // A lookup on its own subject is answered by the node on the asker's
    // inbox. A spy with the node's credentials sees the requests (it may
    // subscribe, it does not answer).
    let mut spy = observer
        .client
        .subscribe("lianxi.v1.lookup.*")
        .await
        .unwrap();
    // A round trip on the spy's connection (`flush` is not one): once the
    // server answers, it has the subscription.
    observer.js.query_account().await.expect("$JS.API.INFO");
    // The court asks first and has its answer before the police asks: the
    // node's reply on `_INBOX_court.…` would reach the police connection
    // before the police's own answer.
    let court_reply = lookup(&court, "court", "r-court").await;
    assert!(court_reply.found, "{court_reply:?}");
    assert_eq!(court_reply.receipt.unwrap().stream_sequence, court_seq);
    let reply = lookup(&police, "police", "r-police").await;
    assert!(reply.found, "{reply:?}");
    assert_eq!(reply.receipt.unwrap().stream_sequence, police_seq);
    for (agency, inbox) in [("court", "_INBOX_court."), ("police", "_INBOX_police.")] {
        let seen = tokio::time::timeout(Duration::from_secs(10), spy.next())
            .await
            .expect("the spy sees the request")
            .unwrap();
        assert_eq!(seen.subject.as_str(), format!("lianxi.v1.lookup.{agency}"));
        let reply_to = seen.reply.expect("a reply subject");
        assert!(reply_to.starts_with(inbox), "{reply_to}");
    }
    // The court's inbox subscription, refused above, saw none of this.
    if let Ok(Some(leaked)) = tokio::time::timeout(Duration::ZERO, court_inbox.next()).await {
        panic!("the police read the court's inbox: {leaked:?}");
    }
    // Not as the court.
    police
        .client
        .publish("lianxi.v1.lookup.court", "".into())
        .await
        .unwrap();
    server_error(&mut police, &publish_refused("lianxi.v1.lookup.court")).await;

    // No JetStream API at all: an agency cannot look into the stream, where
    // every agency's events are.
    let Err(err) = police.probe.get_stream("LIANXI_EVENTS").await else {
        panic!("an agency read the events stream's information");
    };
    server_error(
        &mut police,
        &publish_refused("$JS.API.STREAM.INFO.LIANXI_EVENTS"),
    )
    .await;
    assert!(err.to_string().contains("timed out"), "{err}");
    police
        .client
        .publish(
            "$JS.API.DIRECT.GET.LIANXI_EVENTS.lianxi.v1.events.court.DV-PERM-2C",
            "".into(),
        )
        .await
        .unwrap();
    server_error(
        &mut police,
        &publish_refused("$JS.API.DIRECT.GET.LIANXI_EVENTS.lianxi.v1.events.court.DV-PERM-2C"),
    )
    .await;
}

#[tokio::test]
async fn a_node_cannot_speak_for_an_agency_nor_change_the_record() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    let mut node_user = as_node(&nats).await;
    wait_for_stream(&node_user).await;
    let police = agency(&nats, "police").await;
    let case = "DV-PERM-3";
    let subject = format!("lianxi.v1.events.police.{case}");
    let first = publish(&police, &subject, &opened("n1", case, Agency::Police)).await;

    // The node's credentials cannot speak for the police.
    let x = opened("x", "x", Agency::Police);
    let kind = publish_unacknowledged(&node_user, "lianxi.v1.events.police.x", &x).await;
    assert_eq!(kind, PublishErrorKind::TimedOut);
    server_error(
        &mut node_user,
        &publish_refused("lianxi.v1.events.police.x"),
    )
    .await;
    let forged = progress("n-forged", case, Agency::Police, T0 + 30);
    let kind = publish_unacknowledged(&node_user, &subject, &forged).await;
    assert_eq!(kind, PublishErrorKind::TimedOut);
    server_error(&mut node_user, &publish_refused(&subject)).await;
    // Nor ask a lookup as an agency.
    node_user
        .client
        .publish("lianxi.v1.lookup.police", "DV-PERM-3".into())
        .await
        .unwrap();
    server_error(&mut node_user, &publish_refused("lianxi.v1.lookup.police")).await;
    // Nor delete the agencies' record. (It may erase and purge single
    // cases' messages: an erasure must remove the bus's copies.)
    let deleted = node_user.probe.delete_stream("LIANXI_EVENTS").await;
    assert!(deleted.is_err(), "the node user deleted the events stream");
    server_error(
        &mut node_user,
        &publish_refused("$JS.API.STREAM.DELETE.LIANXI_EVENTS"),
    )
    .await;
    // Nor make the server publish for it: a stream whose republish
    // destination is an agency's subject (this put a police event into
    // LIANXI_EVENTS when the node could create any stream), or a changed
    // events stream.
    let evil = node_user
        .probe
        .create_stream(async_nats::jetstream::stream::Config {
            name: "EVIL".into(),
            subjects: vec!["evil.*".into()],
            republish: Some(async_nats::jetstream::stream::Republish {
                source: "evil.*".into(),
                destination: "lianxi.v1.events.police.{{wildcard(1)}}".into(),
                headers_only: false,
            }),
            ..Default::default()
        })
        .await;
    assert!(evil.is_err(), "the node user created a stream");
    server_error(
        &mut node_user,
        &publish_refused("$JS.API.STREAM.CREATE.EVIL"),
    )
    .await;
    let stream = node_user.probe.get_stream("LIANXI_EVENTS").await.unwrap();
    let mut config = stream.get_info().await.unwrap().config;
    config.subjects.push("evil.>".into());
    let updated = node_user.probe.update_stream(config).await;
    assert!(updated.is_err(), "the node user changed the events stream");
    server_error(
        &mut node_user,
        &publish_refused("$JS.API.STREAM.UPDATE.LIANXI_EVENTS"),
    )
    .await;
    assert_eq!(stream_state(&node_user).await, (first, 1));

    // The stream still holds only the police event, and the next one
    // follows it directly; the node never saw the forged events.
    let second = publish(
        &police,
        &subject,
        &progress("n2", case, Agency::Police, T0 + 60),
    )
    .await;
    assert_eq!(second, first + 1);
    let mut client = node.client().await;
    let reply = case_after(&mut client, case, second).await;
    assert_eq!(reply.view.unwrap().case_sequence, 2);
    case_is_unknown(&node, "x").await;
    let timeline = client
        .get_timeline(pb::GetTimelineRequest {
            case_id: case.into(),
            after_case_sequence: 0,
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = timeline
        .entries
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(ids, ["n1", "n2"]);
}

#[tokio::test]
async fn a_body_claiming_another_agency_on_an_agencys_own_subject_is_rejected() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    let observer = as_node(&nats).await;
    wait_for_stream(&observer).await;
    let police = agency(&nats, "police").await;
    let case = "DV-PERM-4";
    let subject = format!("lianxi.v1.events.police.{case}");

    let first = publish(&police, &subject, &opened("m1", case, Agency::Police)).await;
    // The bus lets the police publish on its own subject whatever the body
    // says; the node checks the body against the subject.
    let claims_court = progress("m-court", case, Agency::Court, T0 + 30);
    let mismatch = publish(&police, &subject, &claims_court).await;
    let last = publish(
        &police,
        &subject,
        &progress("m2", case, Agency::Police, T0 + 60),
    )
    .await;
    assert_eq!((mismatch, last), (first + 1, first + 2));
    let mut client = node.client().await;
    let reply = case_after(&mut client, case, last).await;
    assert_eq!(reply.view.unwrap().case_sequence, 2);
    drop(client);

    assert!(
        node.stop().success(),
        "the node should exit cleanly on SIGTERM"
    );
    let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
    let rejected = log.rejections(0, 100).unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let r = &rejected[0];
    assert_eq!(
        pb::RejectionCode::try_from(r.code).unwrap(),
        pb::RejectionCode::AgencyMismatch
    );
    assert_eq!(r.stream_sequence, mismatch);
    assert_eq!(r.subject, subject);
    assert_eq!(r.event_id, "m-court");
    assert_eq!(r.raw, claims_court.encode_to_vec());
    assert_eq!(log.checkpoint().stream_sequence, last);
    assert_eq!(log.checkpoint().global_sequence, 2);
}

#[tokio::test]
async fn only_known_users_with_their_password_get_in() {
    let nats = start_bus();

    let anonymous = ConnectOptions::new()
        .connect(nats.url())
        .await
        .expect_err("an anonymous connection should be refused");
    assert_eq!(anonymous.kind(), ConnectErrorKind::AuthorizationViolation);
    let wrong = ConnectOptions::with_user_and_password("police".into(), password("court"))
        .connect(nats.url())
        .await
        .expect_err("a wrong password should be refused");
    assert_eq!(wrong.kind(), ConnectErrorKind::AuthorizationViolation);
    // No user for the secretariat or auditors: they use gRPC.
    for user in ["secretariat", "auditor"] {
        let err = ConnectOptions::with_user_and_password(user.into(), password(user))
            .connect(nats.url())
            .await
            .expect_err("no such user");
        assert_eq!(err.kind(), ConnectErrorKind::AuthorizationViolation);
    }
    // Every user named in the file gets in with its password (`login`
    // panics otherwise: connecting waits for the server's verdict).
    for user in AGENCIES.iter().chain(&["node"]) {
        login(&nats, user, Some(&format!("_INBOX_{user}"))).await;
    }

    // A server missing one password refuses to start; the cluster variant
    // includes the same users.
    for file in [conf(), cluster_conf()] {
        let check = |missing: Option<&str>| {
            let mut check = std::process::Command::new(support::nats_server_bin());
            check.arg("-c").arg(&file).arg("-t");
            check.envs(server_env());
            check.envs(cluster_env());
            if let Some(user) = missing {
                check.env_remove(password_variable(user));
            }
            check.output().expect("run nats-server -t")
        };
        let complete = check(None);
        assert!(
            complete.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&complete.stderr)
        );
        let incomplete = check(Some("labour"));
        assert!(!incomplete.status.success(), "{}", file.display());
        let stderr = String::from_utf8_lossy(&incomplete.stderr);
        assert!(stderr.contains("LIANXI_LABOUR_PASSWORD"), "{stderr}");
    }
}

#[tokio::test]
async fn the_agency_client_library_works_within_an_agencys_permissions() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    let url = format!(
        "nats://police:{}@127.0.0.1:{}",
        password("police"),
        nats.port
    );
    let client = lianxi_client::Client::connect(
        &url,
        lianxi_client::Options {
            receipt_timeout: JS_TIMEOUT,
            ..lianxi_client::Options::for_agency(Agency::Police)
        },
    )
    .await
    .expect("the police user connects with the client library");
    // Stored, with a receipt on the police's own receipts subject.
    let receipt = client
        .publish(&opened("lib-1", "LIB-1", Agency::Police))
        .await
        .unwrap();
    assert_eq!(
        receipt.status,
        pb::ReceiptStatus::Accepted as i32,
        "{receipt:?}"
    );
    assert_eq!(receipt.case_id, "LIB-1");
    // A lookup through the agency's own lookup subject and inbox.
    let reply = client.lookup(Agency::Police, "lib-1").await.unwrap();
    assert!(reply.found);
    assert_eq!(
        reply.receipt.unwrap().global_sequence,
        receipt.global_sequence
    );
    // Re-sending is answered as a duplicate, through the same permissions.
    let again = client
        .publish(&opened("lib-1", "LIB-1", Agency::Police))
        .await
        .unwrap();
    assert_eq!(
        again.status,
        pb::ReceiptStatus::Duplicate as i32,
        "{again:?}"
    );
    // A wrong password is refused with a message that names the fix.
    let bad = format!("nats://police:wrong@127.0.0.1:{}", nats.port);
    match lianxi_client::Client::connect(&bad, lianxi_client::Options::for_agency(Agency::Police))
        .await
    {
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("credentials") && !text.contains("wrong"),
                "{text}"
            );
        }
        Ok(_) => panic!("a wrong password was accepted"),
    }
    drop(node);
}

#[tokio::test]
async fn an_agency_reads_the_receipts_it_missed_from_its_own_consumer_and_no_other() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    let watcher = as_node(&nats).await;
    wait_for_stream(&watcher).await;
    let police_bus = agency(&nats, "police").await;
    let mut court_bus = agency(&nats, "court").await;
    let url = |user: &str| format!("nats://{user}:{}@127.0.0.1:{}", password(user), nats.port);
    let subject = |a: &str, case: &str| format!("lianxi.v1.events.{a}.{case}");

    // While no police client listens, three police events and one court
    // event are stored and receipted.
    publish(
        &police_bus,
        &subject("police", "MISS-1"),
        &opened("miss-1", "MISS-1", Agency::Police),
    )
    .await;
    for (i, id) in ["miss-2", "miss-3"].iter().enumerate() {
        let e = progress(id, "MISS-1", Agency::Police, T0 + 60 * (i as i64 + 1));
        publish(&police_bus, &subject("police", "MISS-1"), &e).await;
    }
    publish(
        &court_bus,
        &subject("court", "MISS-C"),
        &opened("miss-c", "MISS-C", Agency::Court),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(lookup(&police_bus, "police", "miss-3").await.found
        && lookup(&court_bus, "court", "miss-c").await.found)
    {
        assert!(
            Instant::now() < deadline,
            "the node did not apply the events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The police system comes up and reads what it missed from its own
    // durable consumer, oldest first, each with what it stands on.
    let options = || lianxi_client::Options::for_agency(Agency::Police);
    let police = lianxi_client::Client::connect(&url("police"), options())
        .await
        .unwrap();
    let missed = police
        .missed_receipts(10, Duration::from_secs(2))
        .await
        .expect("the police reads its own consumer");
    let ids: Vec<&str> = missed.iter().map(|m| m.receipt.event_id.as_str()).collect();
    assert_eq!(ids, ["miss-1", "miss-2", "miss-3"]);
    for m in &missed {
        assert_eq!(m.receipt.status, pb::ReceiptStatus::Accepted as i32);
        assert_eq!(m.receipt.agency, Agency::Police as i32);
        assert!(
            m.receipt
                .durability
                .as_ref()
                .is_some_and(|d| d.node_flushed)
        );
        m.ack()
            .await
            .expect("the police acknowledges on its own consumer");
    }
    drop(police);

    // Away again; one more event. The next process resumes after the last
    // receipt the first acknowledged: only the new one.
    let e = progress("miss-4", "MISS-1", Agency::Police, T0 + 600);
    publish(&police_bus, &subject("police", "MISS-1"), &e).await;
    let police = lianxi_client::Client::connect(&url("police"), options())
        .await
        .unwrap();
    let missed = police
        .missed_receipts(10, Duration::from_secs(5))
        .await
        .unwrap();
    let ids: Vec<&str> = missed.iter().map(|m| m.receipt.event_id.as_str()).collect();
    assert_eq!(ids, ["miss-4"]);
    missed[0].ack().await.unwrap();

    // The court's consumer holds the court's receipt and nothing of the
    // police's.
    let court = lianxi_client::Client::connect(
        &url("court"),
        lianxi_client::Options::for_agency(Agency::Court),
    )
    .await
    .unwrap();
    let missed = court
        .missed_receipts(10, Duration::from_secs(2))
        .await
        .unwrap();
    let ids: Vec<&str> = missed.iter().map(|m| m.receipt.event_id.as_str()).collect();
    assert_eq!(ids, ["miss-c"]);

    // The court may not read, inspect, acknowledge on, change or delete the
    // police's consumer, nor make a consumer of its own that would see the
    // police's receipts; nor may the police widen its own filter.
    for subject in [
        "$JS.API.CONSUMER.MSG.NEXT.LIANXI_RECEIPTS.police",
        "$JS.API.CONSUMER.INFO.LIANXI_RECEIPTS.police",
        "$JS.ACK.LIANXI_RECEIPTS.police.1.1.1.1.0",
        "$JS.API.CONSUMER.DELETE.LIANXI_RECEIPTS.police",
        "$JS.API.CONSUMER.CREATE.LIANXI_RECEIPTS.police.lianxi.v1.receipts.>",
        "$JS.API.CONSUMER.CREATE.LIANXI_RECEIPTS.spy.lianxi.v1.receipts.police",
        "$JS.API.CONSUMER.CREATE.LIANXI_RECEIPTS",
        "$JS.API.STREAM.MSG.GET.LIANXI_RECEIPTS",
        "$JS.API.DIRECT.GET.LIANXI_RECEIPTS",
    ] {
        court_bus
            .client
            .publish(subject, "{}".into())
            .await
            .expect("sent");
        court_bus.client.flush().await.unwrap();
        server_error(&mut court_bus, &publish_refused(subject)).await;
    }
    let mut police_probe = agency(&nats, "police").await;
    let widen = "$JS.API.CONSUMER.CREATE.LIANXI_RECEIPTS.police.lianxi.v1.receipts.>";
    police_probe
        .client
        .publish(widen, "{}".into())
        .await
        .unwrap();
    police_probe.client.flush().await.unwrap();
    server_error(&mut police_probe, &publish_refused(widen)).await;
    // Through the library, a court client reads the court's consumer only:
    // the police's receipts stay with the police.
    let info = watcher
        .js
        .get_stream("LIANXI_RECEIPTS")
        .await
        .unwrap()
        .consumer_info("police")
        .await
        .unwrap();
    assert_eq!(info.config.filter_subject, "lianxi.v1.receipts.police");
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    drop(node);
}

/// The next batch on `sub`, within 30 s.
async fn next_batch(sub: &mut async_nats::Subscriber) -> Vec<pb::Receipt> {
    let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a batch within 30 s")
        .expect("a message");
    batch_receipts(m.payload.as_ref())
}

/// A message on `sub` within half a second, if any.
async fn stray(sub: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    tokio::time::timeout(Duration::from_millis(500), sub.next())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn in_a_group_of_several_agencies_each_agency_gets_only_its_own_batch() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    // A long wait for more events: what is published together is one group.
    let _node = start_node_with(&nats, data.path(), &[("LIANXI_BATCH_DELAY_MS", "1500")]);
    let observer = as_node(&nats).await;
    wait_for_stream(&observer).await;
    let mut police = agency(&nats, "police").await;
    let court = agency(&nats, "court").await;
    let mut police_own = police
        .client
        .subscribe("lianxi.v1.receipts.police")
        .await
        .unwrap();
    let mut court_own = court
        .client
        .subscribe("lianxi.v1.receipts.court")
        .await
        .unwrap();
    let mut police_at_court = police
        .client
        .subscribe("lianxi.v1.receipts.court")
        .await
        .unwrap();
    server_error(&mut police, &subscribe_refused("lianxi.v1.receipts.court")).await;
    let mut police_everywhere = police
        .client
        .subscribe("lianxi.v1.receipts.>")
        .await
        .unwrap();
    server_error(&mut police, &subscribe_refused("lianxi.v1.receipts.>")).await;
    // Round trips on both connections: the server has the subscriptions.
    police.client.flush().await.unwrap();
    court.client.flush().await.unwrap();
    lookup(&police, "police", "none").await;
    lookup(&court, "court", "none").await;

    // Interleaved, all within the node's wait: one group.
    let sends = [
        (&police, "police", "g-p1", "DV-G-P1", Agency::Police),
        (&court, "court", "g-c1", "DV-G-C1", Agency::Court),
        (&police, "police", "g-p2", "DV-G-P2", Agency::Police),
        (&court, "court", "g-c2", "DV-G-C2", Agency::Court),
    ];
    let mut acks = Vec::new();
    for (bus, token, id, case, a) in sends {
        let e = opened(id, case, a);
        acks.push(
            bus.js
                .send_publish(
                    format!("lianxi.v1.events.{token}.{case}"),
                    Publish::build()
                        .payload(e.encode_to_vec().into())
                        .message_id(id),
                )
                .await
                .expect("sent"),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }

    // One message each, holding that agency's two receipts and nothing of
    // the other's.
    let p = next_batch(&mut police_own).await;
    let c = next_batch(&mut court_own).await;
    let ids = |b: &[pb::Receipt]| b.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&p), ["g-p1", "g-p2"]);
    assert_eq!(ids(&c), ["g-c1", "g-c2"]);
    assert!(p.iter().all(|r| r.agency == Agency::Police as i32));
    assert!(c.iter().all(|r| r.agency == Agency::Court as i32));
    assert!(p[0].stream_sequence < p[1].stream_sequence);
    assert!(
        stray(&mut police_own).await.is_none(),
        "a second police batch"
    );
    assert!(
        stray(&mut court_own).await.is_none(),
        "a second court batch"
    );
    if let Some(leaked) = stray(&mut police_at_court).await {
        panic!("the police read the court's batch: {leaked:?}");
    }
    if let Some(leaked) = stray(&mut police_everywhere).await {
        panic!("the police read a batch through a wildcard: {leaked:?}");
    }
    let receipts = observer
        .js
        .get_stream("LIANXI_RECEIPTS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(receipts.state.messages, 2, "one batch per agency");

    // From the durable consumers, through the library: the same split.
    let url = |user: &str| format!("nats://{user}:{}@127.0.0.1:{}", password(user), nats.port);
    for (user, a, want) in [
        ("police", Agency::Police, ["g-p1", "g-p2"]),
        ("court", Agency::Court, ["g-c1", "g-c2"]),
    ] {
        let client =
            lianxi_client::Client::connect(&url(user), lianxi_client::Options::for_agency(a))
                .await
                .unwrap();
        let missed = client
            .missed_receipts(10, Duration::from_secs(1))
            .await
            .unwrap();
        let got: Vec<&str> = missed.iter().map(|m| m.receipt.event_id.as_str()).collect();
        assert_eq!(got, want, "{user}");
        assert!(missed.iter().all(|m| m.receipt.agency == a as i32));
        // Both receipts are in one message of the stream.
        assert_eq!(missed[0].stream_sequence, missed[1].stream_sequence);
        // Acknowledged one by one: the first tells the bus the batch is in
        // hand, the last acknowledges it; both within the agency's rights.
        for m in &missed {
            m.ack().await.expect("acknowledged on its own consumer");
        }
        let info = observer
            .js
            .get_stream("LIANXI_RECEIPTS")
            .await
            .unwrap()
            .consumer_info(user)
            .await
            .unwrap()
            .clone();
        assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{user}");
    }
}
