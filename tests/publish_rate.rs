//! `publish_all` keeps the wire full while a case waits: an event rejected
//! PREDECESSOR_MISSING, and the events of its case behind it, hold no
//! in-flight slot, so every other case's events get their receipts while it
//! is still being re-sent; and one case's events still land in input order
//! when nats-server is killed during the publish. Real nats-server with the
//! shipped development configuration (`sync_interval: always`), the real
//! node.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lianxi_client::{Client, Options};
use lianxi_proto::v1::{Event, Receipt, ReceiptStatus, RejectionCode};
use support::{Nats, Node, batch_receipts, shipped_conf};
use tokio_stream::StreamExt;

const T0: i64 = 1_793_000_000; // 2026-10-26

use support::{wf_opened as opened, wf_progress as progress};

/// `cases` cases opened and followed up `per_case - 1` times each,
/// interleaved in time as a city's load arrives.
fn caseload(prefix: &str, cases: usize, per_case: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for c in 0..cases {
        let case = format!("{prefix}-{c:04}");
        let t = T0 + c as i64;
        events.push(opened(&format!("{case}-0"), &case, t));
        for k in 1..per_case {
            events.push(progress(&format!("{case}-{k}"), &case, t + 60 * k as i64));
        }
    }
    events.sort_by_key(|e| e.occurred_at.map(|t| t.seconds));
    events
}

fn start_bus() -> Nats {
    Nats::start_with_config(&shipped_conf("lianxi-dev.conf"), &[])
}

fn start_node(nats: &Nats, data: &std::path::Path) -> Node {
    Node::start_with_env(&nats.url(), data, &[("LIANXI_BUS_SYNC", "always")])
}

async fn wait_for_stream(js: &async_nats::jetstream::Context) {
    let started = Instant::now();
    while js.get_stream("LIANXI_EVENTS").await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages on the events stream, or 0 while it cannot be read.
async fn on_stream(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("LIANXI_EVENTS").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The event ids of each case in the stopped node's log, in log order;
/// checks that no event is there twice and the log verifies.
fn log_by_case(data: &std::path::Path) -> (usize, HashMap<String, Vec<String>>) {
    let log = lianxi_log::Log::open(data, lianxi_domain::Policy::default()).unwrap();
    let entries = log.entries(0, usize::MAX).unwrap();
    let mut seen = HashSet::new();
    let mut by_case: HashMap<String, Vec<String>> = HashMap::new();
    for e in &entries {
        let event = e.event.as_ref().unwrap();
        assert!(
            seen.insert(event.event_id.clone()),
            "event {} is in the log twice",
            event.event_id
        );
        by_case
            .entry(event.case_id.clone())
            .or_default()
            .push(event.event_id.clone());
    }
    assert_eq!(log.verify().unwrap().entries, entries.len() as u64);
    (entries.len(), by_case)
}

/// Each case's event ids in input order.
fn input_by_case(events: &[Event]) -> HashMap<String, Vec<String>> {
    let mut by_case: HashMap<String, Vec<String>> = HashMap::new();
    for e in events {
        by_case
            .entry(e.case_id.clone())
            .or_default()
            .push(e.event_id.clone());
    }
    by_case
}

fn is_predecessor_missing(r: &Receipt) -> bool {
    r.status == ReceiptStatus::Rejected as i32 && r.code == RejectionCode::PredecessorMissing as i32
}

/// One case never opened (two follow-ups, the first waiting for an opening
/// that never comes), published first, then `cases` other cases of
/// `per_case` events each. A separate connection watches the receipts as
/// the node sends them. Asserted by order, not by time: every other event's
/// receipt arrives while the waiting event is still pending (it is re-sent
/// at least once more afterwards, and `publish_all` has not returned), and
/// the waiting case's second event goes out only after the first is
/// finished.
async fn others_flow_while_one_case_waits(name: &str, options: Options, cases: usize) {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    wait_for_stream(&nats.jetstream().await).await;
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut receipts = watcher.subscribe("lianxi.v1.receipts.>").await.unwrap();
    watcher.flush().await.unwrap();

    let (w1, w2) = ("NEVER-1", "NEVER-2");
    let mut events = vec![
        progress(w1, "NEVER-OPENED", T0),
        progress(w2, "NEVER-OPENED", T0 + 60),
    ];
    let others = caseload(&format!("FLOW{}", options.max_in_flight), cases, 10);
    let other_ids: HashSet<String> = others.iter().map(|e| e.event_id.clone()).collect();
    events.extend(others);
    let total = events.len();
    let wait = options.predecessor_wait;
    let window = options.max_in_flight;

    let client = Client::connect(&nats.url(), options).await.unwrap();
    let to_publish = events.clone();
    let started = Instant::now();
    let publishing = tokio::spawn(async move { client.publish_all(to_publish).await });

    // Receipts as the node sends them, until every other event has been
    // accepted.
    let mut seen: Vec<Receipt> = Vec::new();
    let mut accepted = HashSet::new();
    while accepted.len() < other_ids.len() {
        let msg = tokio::time::timeout(Duration::from_secs(120), receipts.next())
            .await
            .expect("receipts stopped coming")
            .expect("subscription open");
        for r in batch_receipts(msg.payload.as_ref()) {
            if other_ids.contains(&r.event_id) {
                assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
                accepted.insert(r.event_id.clone());
            }
            seen.push(r);
        }
    }
    let others_done_at = seen.len();
    let others_done_after = started.elapsed();
    let still_pending = !publishing.is_finished();
    let w1_before = seen.iter().filter(|r| r.event_id == w1).count();

    // Then until publish_all returns, and what is still on its way.
    while !publishing.is_finished() {
        if let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(50), receipts.next()).await
        {
            seen.extend(batch_receipts(msg.payload.as_ref()));
        }
    }
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), receipts.next()).await {
        seen.extend(batch_receipts(msg.payload.as_ref()));
    }
    let results = publishing.await.unwrap();
    let finished_after = started.elapsed();

    let w1_after = seen[others_done_at..]
        .iter()
        .filter(|r| r.event_id == w1)
        .count();
    assert!(
        still_pending,
        "publish_all returned before the waiting event's wait ended"
    );
    assert!(
        w1_after >= 1,
        "the waiting event {w1} was re-sent {w1_before} times before the other cases' {} \
         receipts and never after: it held them up",
        other_ids.len()
    );
    for r in seen.iter().filter(|r| r.event_id == w1) {
        assert!(is_predecessor_missing(r), "{r:?}");
    }
    // The waiting case's second event: sent once, after the first was
    // finished, and not re-sent (its case's earlier event failed).
    let w2_at: Vec<usize> = (0..seen.len())
        .filter(|i| seen[*i].event_id == w2)
        .collect();
    let w1_last = (0..seen.len()).rfind(|i| seen[*i].event_id == w1).unwrap();
    assert_eq!(w2_at.len(), 1, "{w2} receipts: {w2_at:?}");
    assert!(w2_at[0] > w1_last, "{w2} went out before {w1} was finished");

    assert_eq!(results.len(), total);
    for (e, r) in events.iter().zip(&results) {
        let r = r
            .as_ref()
            .unwrap_or_else(|err| panic!("{}: {err}", e.event_id));
        assert_eq!(r.event_id, e.event_id);
        if e.case_id == "NEVER-OPENED" {
            assert!(is_predecessor_missing(r), "{r:?}");
        } else {
            assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
        }
    }
    assert!(node.stop().success());
    let (entries, by_case) = log_by_case(data.path());
    assert_eq!(entries, other_ids.len());
    let mut expected = input_by_case(&events);
    expected.remove("NEVER-OPENED");
    assert_eq!(by_case, expected, "a case's events are not in input order");
    drop(nats);
    println!(
        "{name}: max_in_flight {window}, predecessor_wait {wait:?}: events {total}; the other \
         {} accepted after {:.1} s, while {w1} was still pending (re-sent {w1_before} times \
         before, {w1_after} after); publish_all returned after {:.1} s; {w2} sent once, after \
         {w1}; log entries {entries}, each case in input order",
        other_ids.len(),
        others_done_after.as_secs_f64(),
        finished_after.as_secs_f64()
    );
}

/// With one slot, a waiting event that held it would stop everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_waiting_for_its_predecessor_holds_no_slot_even_with_one_in_flight() {
    others_flow_while_one_case_waits(
        "a_case_waiting_for_its_predecessor_holds_no_slot_even_with_one_in_flight",
        Options {
            max_in_flight: 1,
            predecessor_wait: Duration::from_secs(30),
            ..Options::default()
        },
        20,
    )
    .await;
}

/// The defaults (256 in flight) with more other events than slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_defaults_every_other_case_gets_its_receipts_while_one_case_waits() {
    others_flow_while_one_case_waits(
        "with_the_defaults_every_other_case_gets_its_receipts_while_one_case_waits",
        Options {
            predecessor_wait: Duration::from_secs(30),
            ..Options::default()
        },
        100,
    )
    .await;
}

/// `publish_each` hands out each result when it is final: the waiting
/// event's comes last, after all the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_each_hands_out_the_waiting_event_last() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    wait_for_stream(&nats.jetstream().await).await;
    let mut events = vec![progress("EACH-W", "EACH-NEVER-OPENED", T0)];
    events.extend(caseload("EACH", 20, 5));
    let client = Client::connect(
        &nats.url(),
        Options {
            max_in_flight: 4,
            predecessor_wait: Duration::from_secs(10),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let order: Vec<(usize, Result<Receipt, lianxi_client::Error>)> =
        client.publish_each(events.clone()).collect().await;
    assert_eq!(order.len(), events.len());
    let mut indexes: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    let (last, r) = order.last().unwrap();
    assert_eq!(*last, 0, "the waiting event is not the last one finished");
    assert!(is_predecessor_missing(r.as_ref().unwrap()), "{r:?}");
    for (i, r) in &order[..order.len() - 1] {
        let r = r.as_ref().unwrap();
        assert_eq!(r.event_id, events[*i].event_id);
        assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    }
    indexes.sort_unstable();
    assert_eq!(indexes, (0..events.len()).collect::<Vec<_>>());
    drop(node);
}

/// nats-server killed (SIGKILL) twice while `publish_all` sends 150 cases of
/// progress reports (which the node would accept in any order) and one
/// case whose follow-ups come first and whose opening another client
/// publishes a few seconds later: every event ends accepted and each case's
/// events are in the log in input order, the late case's after its opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_case_s_events_stay_in_order_when_nats_server_is_killed_during_publish_all() {
    let mut nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    wait_for_stream(&nats.jetstream().await).await;
    let late: Vec<Event> = (1..=5)
        .map(|k| progress(&format!("LATE-{k}"), "LATE", T0 + 60 * k))
        .collect();
    let mut events = late.clone();
    events.extend(caseload("ORDER", 150, 12));
    let total = events.len();

    let client = Client::connect(&nats.url(), Options::default())
        .await
        .unwrap();
    let to_publish = events.clone();
    let publishing = tokio::spawn(async move { client.publish_all(to_publish).await });
    // The late case's opening, from another client, a few seconds on.
    let opener = Client::connect(&nats.url(), Options::default())
        .await
        .unwrap();
    let opening = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        opener.publish(&opened("LATE-0", "LATE", T0)).await
    });

    let mut kills = Vec::new();
    for k in 1..=2u64 {
        let js = nats.jetstream().await;
        let started = Instant::now();
        loop {
            let n = on_stream(&js).await;
            if n >= total as u64 * k / 3 {
                kills.push(n);
                break;
            }
            assert!(!publishing.is_finished(), "finished before kill {k}");
            assert!(started.elapsed() < Duration::from_secs(300), "stuck at {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(js);
        let stopped = nats.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats = Nats::restart(stopped);
    }
    let results = tokio::time::timeout(Duration::from_secs(900), publishing)
        .await
        .expect("publish_all finished")
        .unwrap();
    let open = opening.await.unwrap().unwrap();
    assert_eq!(open.status, ReceiptStatus::Accepted as i32, "{open:?}");
    for (e, r) in events.iter().zip(&results) {
        let r = r
            .as_ref()
            .unwrap_or_else(|err| panic!("{}: no receipt: {err}", e.event_id));
        assert_eq!(r.event_id, e.event_id);
        assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    }

    assert!(node.stop().success());
    let (entries, by_case) = log_by_case(data.path());
    let mut expected = input_by_case(&events);
    expected.get_mut("LATE").unwrap().insert(0, "LATE-0".into());
    assert_eq!(entries, total + 1, "events lost or added");
    let out_of_order = expected
        .iter()
        .filter(|(case, ids)| by_case.get(*case) != Some(*ids))
        .count();
    assert_eq!(out_of_order, 0, "cases not in input order");
    assert_eq!(by_case.len(), expected.len());
    drop(nats);
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST one_case_s_events_stay_in_order_when_nats_server_is_killed_during_publish_all: \
         killed nats-server (SIGKILL) 2 times during publish_all (at {kills:?} of {total} \
         messages on the stream), restarted after 1.5 s each, lianxi-dev.conf; client defaults; \
         151 cases, one waiting {} follow-ups for an opening published 3 s later by another \
         client: events {total}, accepted {total}, rejected 0, no receipt 0; log entries \
         {entries} = events + opening, lost: 0, duplicated: 0, cases out of input order 0 of {}",
        late.len(),
        expected.len()
    ));
}
