//! The receipts task against a real nats-server and a real sled log: what
//! it publishes on the receipts stream, batch by batch.
//!
//! The groups are written with `Log::append_group` by the test itself, and
//! the test decides which reports reach the task (the watch channel the
//! node uses), so it can skip one, crash the task between the flush and the
//! send, or set the acknowledged mark back. A report's receipts are marked
//! before they are handed over, so what went out from memory is told apart
//! from what was read back from the log.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use lianxi_ingest::{BATCH_MAX_RECEIPTS, RECEIPTS_STREAM, batch_message_id, run_receipts};
use lianxi_log::{GroupKeys, GroupReport, Incoming, Log};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{self as pb, Agency, Durability, Receipt, ReceiptBatch};
use lianxi_testkit::Nats;
use prost::Message;
use tokio::sync::watch;

const T0: i64 = 1_793_000_000; // 2026-10-26
/// What the test adds to the subject of a receipt it hands over in a
/// report: the log never holds it.
const MARK: &str = " [from the report]";

fn opened(id: &str, case: &str, agency: Agency) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        case_id: case.into(),
        agency: agency as i32,
        occurred_at: Some(Timestamp {
            seconds: T0,
            nanos: 0,
        }),
        corrects_event_id: None,
        body: Some(pb::event::Body::CaseOpened(pb::CaseOpened {
            channel: pb::Channel::Hotline12338 as i32,
            category: pb::Category::DomesticViolence as i32,
            jurisdiction: "330100/330106".into(),
            level: pb::Level::County as i32,
            person_ref: String::new(),
            summary: "caller reports violence at home".into(),
            mandatory_reporter: String::new(),
            person: None,
            children: Vec::new(),
        })),
    }
}

fn subject(agency: &str, case: &str) -> String {
    format!("lianxi.v1.events.{agency}.{case}")
}

/// One message of a group: its subject and bytes.
type Msg = (String, Vec<u8>);

/// An accepted opening (or, sent again, a duplicate).
fn opening(id: &str, case: &str, agency: Agency) -> Msg {
    let token = lianxi_domain::agency_token(agency).unwrap();
    (
        subject(token, case),
        opened(id, case, agency).encode_to_vec(),
    )
}

/// Bytes that are no event: rejected MALFORMED, receipted to the agency of
/// the subject (or to `unknown` when it names none).
fn garbage(agency: &str, case: &str) -> Msg {
    (subject(agency, case), b"\xff\xff not protobuf".to_vec())
}

/// A message stored in the receipts stream.
#[derive(Debug, Clone)]
struct Stored {
    subject: String,
    message_id: String,
    receipts: Vec<Receipt>,
}

struct Bench {
    _nats: Nats,
    js: jetstream::Context,
    log: Log,
    _dir: tempfile::TempDir,
    applied: watch::Sender<Option<GroupReport>>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<lianxi_ingest::Result<()>>>,
    next_seq: u64,
    clock: i64,
}

impl Bench {
    async fn new() -> Bench {
        let nats = Nats::start();
        let js = nats.jetstream().await;
        lianxi_ingest::ensure_receipts_stream(&js, 1, Duration::from_secs(600))
            .await
            .expect("the receipts stream");
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), lianxi_domain::Policy::default()).expect("open the log");
        Bench {
            _nats: nats,
            js,
            log,
            _dir: dir,
            applied: watch::channel(None).0,
            shutdown: watch::channel(false).0,
            task: None,
            next_seq: 1,
            clock: T0,
        }
    }

    fn durability() -> Durability {
        Durability {
            stream_replicas: 1,
            stream_sync: "always".into(),
            node_flushed: true,
        }
    }

    /// Starts the receipts task, as a node does at start.
    fn start(&mut self) {
        assert!(self.task.is_none());
        self.shutdown.send_replace(false);
        self.task = Some(tokio::spawn(run_receipts(
            self.js.clone(),
            self.log.clone(),
            Self::durability(),
            self.applied.subscribe(),
            self.shutdown.subscribe(),
        )));
    }

    /// Starts the task and waits until it is past its first look at the
    /// log: a warm-up message (stream sequence 1, the justice bureau's) is
    /// written and receipted, so the groups that follow are the task's to
    /// send from memory. [`Bench::stored`] leaves its batch out.
    async fn start_settled(&mut self) {
        self.start();
        let warm = self.append(vec![garbage("justice_bureau", "RB-WARM")]);
        assert_eq!(warm.checkpoint.stream_sequence, 1);
        self.report(&warm);
        self.sent_up_to(1).await;
    }

    /// Ends the task without letting it send anything more: a crash.
    async fn crash(&mut self) {
        let task = self.task.take().expect("running");
        task.abort();
        let _ = task.await;
    }

    /// Writes one group to the log (and flushes it), as ingest does, without
    /// telling anyone.
    fn append(&mut self, msgs: Vec<Msg>) -> GroupReport {
        let group: Vec<Incoming> = msgs
            .into_iter()
            .map(|(subject, payload)| {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.clock += 1;
                Incoming {
                    stream_sequence: seq,
                    subject,
                    recorded_at: Timestamp {
                        seconds: self.clock,
                        nanos: 0,
                    },
                    payload,
                }
            })
            .collect();
        let report = self
            .log
            .append_group(&group, &GroupKeys::derived("receipts-test"))
            .expect("append the group");
        // What the report carries is what the log reads back.
        assert_eq!(report.receipts.len(), group.len());
        for r in &report.receipts {
            assert_eq!(
                Some(r),
                self.log.receipt(r.stream_sequence).unwrap().as_ref()
            );
        }
        report
    }

    /// Hands the report to the task, its receipts marked.
    fn report(&self, report: &GroupReport) {
        let mut marked = report.clone();
        for r in &mut marked.receipts {
            r.subject.push_str(MARK);
        }
        self.applied.send_replace(Some(marked));
    }

    /// Waits until the bus has acknowledged every receipt up to `seq`.
    async fn sent_up_to(&self, seq: u64) {
        for _ in 0..1000 {
            if self.log.receipts_sent().unwrap() >= seq {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "receipts acknowledged up to {}, not {seq}",
            self.log.receipts_sent().unwrap()
        );
    }

    /// Every message in the receipts stream, in order.
    async fn stored(&self) -> Vec<Stored> {
        let mut stream = self.js.get_stream(RECEIPTS_STREAM).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let m = stream.get_raw_message(seq).await.expect("a stored batch");
            let message_id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let receipts = ReceiptBatch::decode(m.payload.as_ref())
                .expect("a ReceiptBatch")
                .receipts;
            if receipts.iter().all(|r| r.stream_sequence == 1) {
                // The warm-up's.
                continue;
            }
            out.push(Stored {
                subject: m.subject.to_string(),
                message_id,
                receipts,
            });
        }
        out
    }
}

fn token(r: &Receipt) -> &'static str {
    lianxi_domain::agency_token(Agency::try_from(r.agency).unwrap_or(Agency::Unspecified))
        .unwrap_or("unknown")
}

/// Every stored batch is one agency's, on its subject, in stream order,
/// within the caps, under the id that names its first and last receipt.
fn check_batches(stored: &[Stored]) {
    for s in stored {
        assert!(!s.receipts.is_empty(), "an empty batch: {s:?}");
        assert!(s.receipts.len() <= BATCH_MAX_RECEIPTS);
        let agency = token(&s.receipts[0]);
        assert_eq!(s.subject, format!("lianxi.v1.receipts.{agency}"));
        for r in &s.receipts {
            assert_eq!(token(r), agency, "another agency's receipt in {s:?}");
            assert_eq!(r.durability, Some(Bench::durability()));
        }
        for w in s.receipts.windows(2) {
            assert!(w[0].stream_sequence < w[1].stream_sequence, "{s:?}");
        }
        let first = s.receipts[0].stream_sequence;
        let last = s.receipts[s.receipts.len() - 1].stream_sequence;
        let a = Agency::try_from(s.receipts[0].agency).unwrap();
        assert_eq!(s.message_id, batch_message_id(a, first, last));
    }
}

/// How often each stream sequence was receipted.
fn counts(stored: &[Stored]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for r in stored.iter().flat_map(|s| &s.receipts) {
        *out.entry(r.stream_sequence).or_default() += 1;
    }
    out
}

/// The receipt of each stream sequence (the first copy).
fn by_seq(stored: &[Stored]) -> HashMap<u64, Receipt> {
    let mut out = HashMap::new();
    for r in stored.iter().flat_map(|s| &s.receipts) {
        out.entry(r.stream_sequence).or_insert_with(|| r.clone());
    }
    out
}

fn from_memory(r: &Receipt) -> bool {
    r.subject.ends_with(MARK)
}

#[tokio::test]
async fn a_group_goes_out_from_memory_as_one_batch_per_agency() {
    let mut b = Bench::new().await;
    b.start_settled().await;
    let group = b.append(vec![
        opening("p-1", "RB-P1", Agency::Police),
        opening("c-1", "RB-C1", Agency::Court),
        garbage("labour", "RB-L1"),
        opening("p-2", "RB-P2", Agency::Police),
        garbage("nobody", "RB-X"),
        opening("c-1", "RB-C1", Agency::Court),
        garbage("police", "RB-P3"),
        opening("wf-1", "RB-W1", Agency::WomensFederation),
    ]);
    b.report(&group);
    b.sent_up_to(group.checkpoint.stream_sequence).await;

    let stored = b.stored().await;
    check_batches(&stored);
    let shape: Vec<(&str, Vec<u64>)> = stored
        .iter()
        .map(|s| {
            (
                s.subject.as_str(),
                s.receipts.iter().map(|r| r.stream_sequence).collect(),
            )
        })
        .collect();
    // One message per agency of the group, each with all of that agency's
    // receipts in stream order; the subject naming no agency on `unknown`.
    assert_eq!(
        shape,
        [
            ("lianxi.v1.receipts.police", vec![2, 5, 8]),
            ("lianxi.v1.receipts.court", vec![3, 7]),
            ("lianxi.v1.receipts.labour", vec![4]),
            ("lianxi.v1.receipts.unknown", vec![6]),
            ("lianxi.v1.receipts.womens_federation", vec![9]),
        ]
    );
    let status = |seq: u64| by_seq(&stored)[&seq].status;
    assert_eq!(status(2), pb::ReceiptStatus::Accepted as i32);
    assert_eq!(status(7), pb::ReceiptStatus::Duplicate as i32);
    assert_eq!(status(8), pb::ReceiptStatus::Rejected as i32);
    // Sent from the report, not read back: each is the report's, marked,
    // with the durability added.
    for s in &stored {
        for r in &s.receipts {
            assert!(from_memory(r), "read back from the log: {r:?}");
            let mut plain = r.clone();
            plain.subject.truncate(plain.subject.len() - MARK.len());
            plain.durability = None;
            assert_eq!(Some(plain), b.log.receipt(r.stream_sequence).unwrap());
        }
    }
    assert_eq!(b.log.receipts_sent().unwrap(), 9);
    b.crash().await;
}

#[tokio::test]
async fn what_memory_does_not_cover_is_read_from_the_log_and_nothing_is_lost_or_sent_twice() {
    let mut b = Bench::new().await;
    b.start_settled().await;
    // The watch channel keeps only the latest report: the first group's is
    // never seen by the task, only the second's.
    let g1 = b.append(vec![
        opening("p-1", "RB-P1", Agency::Police),
        opening("c-1", "RB-C1", Agency::Court),
        garbage("police", "RB-P2"),
    ]);
    let g2 = b.append(vec![
        opening("c-2", "RB-C2", Agency::Court),
        opening("p-3", "RB-P3", Agency::Police),
    ]);
    b.report(&g2);
    b.sent_up_to(g2.checkpoint.stream_sequence).await;
    let stored = b.stored().await;
    check_batches(&stored);
    // One batch per agency for both groups: the first group's receipts read
    // back from the log, the second's from its report.
    let shape: Vec<(&str, Vec<(u64, bool)>)> = stored
        .iter()
        .map(|s| {
            (
                s.subject.as_str(),
                s.receipts
                    .iter()
                    .map(|r| (r.stream_sequence, from_memory(r)))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (
                "lianxi.v1.receipts.police",
                vec![(2, false), (4, false), (6, true)]
            ),
            ("lianxi.v1.receipts.court", vec![(3, false), (5, true)]),
        ]
    );
    assert!(g1.receipts.iter().all(|r| !from_memory(r)));

    // A crash between the flush and the send: the group is in the log, its
    // report reached no one. The next start reads it from the log.
    b.crash().await;
    let g3 = b.append(vec![
        opening("p-4", "RB-P4", Agency::Police),
        garbage("nobody", "RB-X"),
    ]);
    b.report(&g3);
    b.start();
    b.sent_up_to(g3.checkpoint.stream_sequence).await;
    let stored = b.stored().await;
    check_batches(&stored);
    assert!(
        counts(&stored).values().all(|n| *n == 1),
        "{:?}",
        counts(&stored)
    );
    assert_eq!(counts(&stored).len(), 7);
    for seq in [7, 8] {
        assert!(!from_memory(&by_seq(&stored)[&seq]));
    }

    // Then a group sent from memory again, continuing the log's.
    let g4 = b.append(vec![opening("c-5", "RB-C5", Agency::Court)]);
    b.report(&g4);
    b.sent_up_to(9).await;
    let stored = b.stored().await;
    assert!(from_memory(&by_seq(&stored)[&9]));
    assert_eq!(stored.len(), 5);

    // Receipts the bus stored but whose acknowledgement the node never
    // recorded (a crash just before): the mark is back after the warm-up. Everything is
    // sent again from the log, cut differently from the first time, so the
    // bus keeps the copies: each receipt at most twice, the copies equal to
    // the log's.
    b.crash().await;
    b.log.set_receipts_sent(1).unwrap();
    b.start();
    b.sent_up_to(9).await;
    let again = b.stored().await;
    check_batches(&again);
    assert!(again.len() > stored.len());
    let n = counts(&again);
    assert_eq!(
        n.keys().copied().collect::<Vec<_>>(),
        (2..=9).collect::<Vec<_>>()
    );
    assert!(n.values().all(|c| (1..=2).contains(c)), "{n:?}");
    for r in again[stored.len()..].iter().flat_map(|s| &s.receipts) {
        let mut plain = r.clone();
        plain.durability = None;
        assert_eq!(Some(plain), b.log.receipt(r.stream_sequence).unwrap());
    }

    // Once more: the same stretch of the log cut the same way, under the
    // same message ids, so JetStream drops every batch.
    b.crash().await;
    b.log.set_receipts_sent(1).unwrap();
    b.start();
    b.sent_up_to(9).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.stored().await.len(), again.len(), "a re-send was stored");
    b.crash().await;
}

#[tokio::test]
async fn after_a_failed_publish_the_receipts_are_read_from_the_log() {
    let mut b = Bench::new().await;
    b.start_settled().await;
    let g1 = b.append(vec![opening("p-1", "RB-P1", Agency::Police)]);
    b.report(&g1);
    b.sent_up_to(2).await;
    // The receipts stream is gone (no stream: the bus refuses at once, and
    // stores nothing), while a group is written and reported.
    b.js.delete_stream(RECEIPTS_STREAM).await.unwrap();
    let g2 = b.append(vec![
        opening("p-2", "RB-P2", Agency::Police),
        opening("c-1", "RB-C1", Agency::Court),
    ]);
    b.report(&g2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.log.receipts_sent().unwrap(), 2);
    // Back: the retry reads the group from the log.
    lianxi_ingest::ensure_receipts_stream(&b.js, 1, Duration::from_secs(600))
        .await
        .unwrap();
    b.sent_up_to(g2.checkpoint.stream_sequence).await;
    let stored = b.stored().await;
    check_batches(&stored);
    let n = counts(&stored);
    assert_eq!(n.keys().copied().collect::<Vec<_>>(), [3, 4]);
    assert!(n.values().all(|c| *c == 1), "{n:?}");
    assert!(
        stored
            .iter()
            .flat_map(|s| &s.receipts)
            .all(|r| !from_memory(r))
    );
    b.crash().await;
}

#[tokio::test]
async fn a_long_catch_up_goes_in_capped_batches_and_aligned_stretches() {
    let mut b = Bench::new().await;
    // Written while no receipts task runs: 5,000 messages, most of them the
    // police's, in groups of 500.
    let mut last = 0;
    for g in 0..10 {
        let msgs = (0..500)
            .map(|i| {
                if i % 50 == 0 {
                    garbage("court", &format!("RB-C{g}-{i}"))
                } else {
                    garbage("police", &format!("RB-P{g}-{i}"))
                }
            })
            .collect();
        last = b.append(msgs).checkpoint.stream_sequence;
    }
    assert_eq!(last, 5000);
    b.start();
    b.sent_up_to(last).await;
    let stored = b.stored().await;
    check_batches(&stored);
    let n = counts(&stored);
    assert_eq!(n.len(), 5000);
    assert!(n.values().all(|c| *c == 1));
    // A stretch of 4,096 stream sequences at most per batch, none across
    // the boundary; full batches where the police had more than 512.
    for s in &stored {
        let first = s.receipts[0].stream_sequence;
        let last = s.receipts[s.receipts.len() - 1].stream_sequence;
        assert_eq!((first - 1) / 4096, (last - 1) / 4096, "{}", s.message_id);
    }
    let police: Vec<usize> = stored
        .iter()
        .filter(|s| s.subject.ends_with(".police"))
        .map(|s| s.receipts.len())
        .collect();
    assert_eq!(police.iter().sum::<usize>(), 4900);
    assert!(police.iter().filter(|n| **n == BATCH_MAX_RECEIPTS).count() >= 8);
    b.crash().await;
}
