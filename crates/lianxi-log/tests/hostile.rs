//! Hostile messages through a real sled log in a temporary directory,
//! mixed into the stream of a small city's good events, in groups of random
//! sizes, through `Log::append_group` as ingest calls it.
//!
//! What must hold: every hostile message ends as a rejection record with a
//! reason (a replay of an old event id as a duplicate record pointing at
//! the original), nothing panics, the checkpoint passes every message, and
//! the good events still land: each is accepted, the views are byte for
//! byte the views of a log that never saw the hostile messages, and the
//! log verifies.
//!
//! Runs are reproducible: a fixed seed unless `PROPTEST_RNG_SEED` is set,
//! 48 streams by default (each opens a sled database; `PROPTEST_CASES`
//! raises it), failures persisted beside this file
//! (`hostile.proptest-regressions`, to be committed). Reasons never echo
//! control characters.

#![forbid(unsafe_code)]

use std::sync::LazyLock;

use lianxi_domain::{Policy, event_subject};
use lianxi_log::{EventOutcome, GroupKeys, Incoming, Log, MAX_EVENT_BYTES};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{Event, RejectionCode, event::Body};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};
use prost::Message;

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

const MAX_REASON_BYTES: usize = 1024;

static KEYS: LazyLock<GroupKeys> = LazyLock::new(|| GroupKeys::derived("lianxi-hostile"));

// ---------------------------------------------------------------- the city

struct Good {
    subject: String,
    event: Event,
    payload: Vec<u8>,
}

/// A small simulated city: every event valid, in stream order.
static CITY: LazyLock<Vec<Good>> = LazyLock::new(|| {
    lianxi_sim::generate(&lianxi_sim::Workload {
        cases: 4,
        seed: 11,
        prefix: "HL".into(),
        ..Default::default()
    })
    .into_iter()
    .filter(|(_, intent)| *intent == lianxi_sim::Intent::Valid)
    .map(|(event, _)| Good {
        subject: event_subject(&event).expect("a simulated event has a subject"),
        payload: event.encode_to_vec(),
        event,
    })
    .collect()
});

/// The record time of a message: the event's own time, so that a message
/// gets the same record time in every run whatever its stream sequence.
fn recorded(e: &Event) -> Timestamp {
    e.occurred_at.unwrap_or_default()
}

/// The views of a log that saw only the good events.
static REFERENCE: LazyLock<Vec<(String, Vec<u8>)>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), Policy::default()).expect("open log");
    let group: Vec<Incoming> = CITY
        .iter()
        .enumerate()
        .map(|(i, g)| Incoming {
            stream_sequence: i as u64 + 1,
            subject: g.subject.clone(),
            recorded_at: recorded(&g.event),
            payload: g.payload.clone(),
        })
        .collect();
    let report = log.append_group(&group, &KEYS).expect("append the city");
    for (seq, o) in &report.outcomes {
        assert!(
            matches!(o, EventOutcome::Accepted { .. }),
            "good message {seq}: {o:?}"
        );
    }
    log.view_bytes().expect("views")
});

// ---------------------------------------------------------------- hostile

/// A hostile message and what it must end as.
#[derive(Debug, Clone)]
enum Hostile {
    /// Random bytes on a good subject or a random one.
    Bytes {
        subject: Option<String>,
        bytes: Vec<u8>,
    },
    /// A strict prefix of good event `of`.
    Truncated { of: usize, cut: usize },
    /// Good event `of` on a subject that is not its own.
    WrongSubject { of: usize, subject: String },
    /// Good event `of` with an event id outside the grammar.
    BadId { of: usize, id: String },
    /// Good event `of` with invalid UTF-8 spliced in as a second event id.
    BadUtf8 { of: usize },
    /// Bytes over the size limit (padding inside a valid event, or junk).
    Oversized { of: usize, extra: usize, junk: bool },
    /// A valid non-opening event for a case nobody opened.
    UnknownCase { of: usize, case: String },
    /// Nested unknown groups, `depth` deep.
    Nested { depth: usize },
    /// Good event `of`, again, after it (optionally with another body).
    Replay { of: usize, altered: bool },
}

fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        2 => prop::sample::select(vec!['.', '*', '>', ' ', '/', ':', '-', '_']),
        2 => prop::char::range('\u{0}', '\u{1f}'),
        1 => prop::sample::select(vec!['\u{7f}', '\u{85}', '\u{202e}', '\u{feff}']),
        1 => any::<char>(),
    ]
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(hostile_char(), 0..90).prop_map(|v| v.into_iter().collect()),
        1 => (hostile_char(), 60usize..70).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        1 => hostile_char().prop_map(|c| std::iter::repeat_n(c, 20_000).collect()),
    ]
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

fn good() -> impl Strategy<Value = usize> {
    any::<prop::sample::Index>().prop_map(|i| i.index(CITY.len()))
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        (
            prop::option::of(hostile_string()),
            prop::collection::vec(any::<u8>(), 0..1024)
        )
            .prop_map(|(subject, bytes)| Hostile::Bytes { subject, bytes }),
        (good(), any::<usize>()).prop_map(|(of, cut)| Hostile::Truncated { of, cut }),
        (good(), hostile_string()).prop_map(|(of, s)| Hostile::WrongSubject { of, subject: s }),
        (
            good(),
            hostile_string().prop_filter("not an id", |s| !is_id(s))
        )
            .prop_map(|(of, id)| Hostile::BadId { of, id }),
        good().prop_map(|of| Hostile::BadUtf8 { of }),
        (good(), 1usize..4096, any::<bool>()).prop_map(|(of, extra, junk)| Hostile::Oversized {
            of,
            extra,
            junk
        }),
        (
            good(),
            "[A-Za-z0-9_-]{1,40}".prop_filter("not a city case", |c| !c.starts_with("HL"))
        )
            .prop_map(|(of, case)| Hostile::UnknownCase { of, case }),
        prop_oneof![1usize..50, Just(150usize), Just(20_000usize)]
            .prop_map(|depth| Hostile::Nested { depth }),
        (good(), any::<bool>()).prop_map(|(of, altered)| Hostile::Replay { of, altered }),
    ]
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// What a hostile message must end as.
#[derive(Debug, PartialEq)]
enum Expect {
    Rejected(Option<RejectionCode>),
    /// A duplicate of good event `of`.
    Duplicate(usize),
}

/// The subject and payload of a hostile message, and what it must become.
fn render(h: &Hostile) -> (String, Vec<u8>, Expect) {
    match h {
        Hostile::Bytes { subject, bytes } => {
            let subject = subject.clone().unwrap_or_else(|| CITY[0].subject.clone());
            // Random bytes that happen to be a valid event for the city's
            // case on its subject would be accepted; they never are (the
            // body is required), but say so rather than assume it.
            if let Ok(e) = Event::decode(bytes.as_slice()) {
                assert!(
                    lianxi_domain::check_envelope(&subject, &e).is_err(),
                    "random bytes made a valid event: {e:?}"
                );
            }
            (subject, bytes.clone(), Expect::Rejected(None))
        }
        Hostile::Truncated { of, cut } => {
            let g = &CITY[*of];
            let cut = cut % g.payload.len();
            (
                g.subject.clone(),
                g.payload[..cut].to_vec(),
                Expect::Rejected(None),
            )
        }
        Hostile::WrongSubject { of, subject } => {
            let g = &CITY[*of];
            let subject = if *subject == g.subject {
                format!("{subject}.x")
            } else {
                subject.clone()
            };
            (subject, g.payload.clone(), Expect::Rejected(None))
        }
        Hostile::BadId { of, id } => {
            let g = &CITY[*of];
            let mut e = g.event.clone();
            e.event_id = id.clone();
            let want = if id.is_empty() {
                RejectionCode::MissingField
            } else {
                RejectionCode::InvalidField
            };
            let payload = e.encode_to_vec();
            let want = if payload.len() > MAX_EVENT_BYTES {
                RejectionCode::TooLarge
            } else {
                want
            };
            (g.subject.clone(), payload, Expect::Rejected(Some(want)))
        }
        Hostile::BadUtf8 { of } => {
            let g = &CITY[*of];
            let mut payload = g.payload.clone();
            varint(1 << 3 | 2, &mut payload);
            payload.extend([3, b'e', 0xff, 0xfe]);
            (
                g.subject.clone(),
                payload,
                Expect::Rejected(Some(RejectionCode::Malformed)),
            )
        }
        Hostile::Oversized { of, extra, junk } => {
            let g = &CITY[*of];
            let payload = if *junk {
                vec![0xa5; MAX_EVENT_BYTES + extra]
            } else {
                // A valid event padded with an unknown field up to the limit.
                let mut p = g.payload.clone();
                let pad = MAX_EVENT_BYTES + extra - p.len();
                varint(900 << 3 | 2, &mut p);
                varint(pad as u64, &mut p);
                p.extend(std::iter::repeat_n(b'x', pad));
                p
            };
            (
                g.subject.clone(),
                payload,
                Expect::Rejected(Some(RejectionCode::TooLarge)),
            )
        }
        Hostile::UnknownCase { of, case } => {
            let g = &CITY[*of];
            let mut e = g.event.clone();
            e.case_id = case.clone();
            e.event_id = format!("stray-{}", e.event_id);
            let opening = matches!(e.body, Some(Body::CaseOpened(_)));
            if opening {
                // An opening would open the stray case: make it a progress
                // report instead, which needs the case.
                e.body = Some(Body::ProgressReported(lianxi_proto::v1::ProgressReported {
                    summary: "a stray report".into(),
                }));
            }
            let subject = event_subject(&e).expect("a valid case id");
            let want = if e.corrects_event_id.is_some() {
                None
            } else {
                Some(RejectionCode::PredecessorMissing)
            };
            (subject, e.encode_to_vec(), Expect::Rejected(want))
        }
        Hostile::Nested { depth } => {
            let mut payload = Vec::new();
            for _ in 0..*depth {
                varint(1000 << 3 | 3, &mut payload);
            }
            for _ in 0..*depth {
                varint(1000 << 3 | 4, &mut payload);
            }
            let want = if payload.len() > MAX_EVENT_BYTES {
                RejectionCode::TooLarge
            } else if *depth > 100 {
                RejectionCode::Malformed
            } else {
                // Decodes to an empty event: refused by the envelope.
                RejectionCode::CaseMismatch
            };
            let subject = CITY[0].subject.clone();
            let want = if want == RejectionCode::CaseMismatch {
                None
            } else {
                Some(want)
            };
            (subject, payload, Expect::Rejected(want))
        }
        Hostile::Replay { of, altered } => {
            let g = &CITY[*of];
            let payload = if *altered {
                let mut e = g.event.clone();
                e.body = Some(Body::ProgressReported(lianxi_proto::v1::ProgressReported {
                    summary: "the same id, another body".into(),
                }));
                e.encode_to_vec()
            } else {
                g.payload.clone()
            };
            (g.subject.clone(), payload, Expect::Duplicate(*of))
        }
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

// ---------------------------------------------------------------- property

/// One message of the stream under test.
enum Slot {
    Good(usize),
    Hostile(Hostile),
}

/// Builds the stream: the city's events in order, each hostile message at
/// its position; a replay goes after its original.
fn stream(hostile: Vec<(usize, Hostile)>) -> Vec<Slot> {
    let mut slots: Vec<Slot> = (0..CITY.len()).map(Slot::Good).collect();
    for (at, h) in hostile {
        let min = match &h {
            Hostile::Replay { of, .. } => slots
                .iter()
                .position(|s| matches!(s, Slot::Good(g) if g == of))
                .map_or(0, |p| p + 1),
            _ => 0,
        };
        let at = min + at % (slots.len() + 1 - min);
        slots.insert(at, Slot::Hostile(h));
    }
    slots
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn hostile_messages_are_rejected_and_good_events_still_land(
        hostile in prop::collection::vec((any::<usize>(), hostile()), 1..24),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Log::open(dir.path(), Policy::default()).expect("open log");
        let slots = stream(hostile);
        // Every message with its stream sequence (from 1) and what it must become.
        let mut messages = Vec::new();
        let mut expected = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let seq = i as u64 + 1;
            let (subject, payload, at, expect) = match slot {
                Slot::Good(g) => {
                    let g2 = &CITY[*g];
                    (g2.subject.clone(), g2.payload.clone(), recorded(&g2.event), None)
                }
                Slot::Hostile(h) => {
                    let (s, p, e) = render(h);
                    // The time of the good event the message is next to, so
                    // record times stay in stream order.
                    (s, p, Timestamp { seconds: 1_767_196_800, nanos: 0 }, Some(e))
                }
            };
            messages.push(Incoming { stream_sequence: seq, subject, recorded_at: at, payload });
            expected.push(expect);
        }
        // Groups of random sizes, as ingest cuts them.
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(messages.len() + 1)).collect();
        bounds.push(0);
        bounds.push(messages.len());
        bounds.sort_unstable();
        bounds.dedup();
        let mut outcomes = Vec::new();
        // Where each good event landed, to check duplicates point at it.
        let mut landed: Vec<Option<u64>> = vec![None; CITY.len()];
        for w in bounds.windows(2) {
            let report = log
                .append_group(&messages[w[0]..w[1]], &KEYS)
                .map_err(|e| TestCaseError::fail(format!("append_group failed: {e}")))?;
            prop_assert_eq!(report.checkpoint.stream_sequence, w[1] as u64);
            outcomes.extend(report.outcomes);
        }
        prop_assert_eq!(outcomes.len(), messages.len());
        let mut rejected = 0u64;
        let mut duplicates = 0u64;
        for (i, ((seq, outcome), slot)) in outcomes.iter().zip(&slots).enumerate() {
            prop_assert_eq!(*seq, i as u64 + 1);
            match (slot, &expected[i], outcome) {
                (Slot::Good(g), None, EventOutcome::Accepted { global_sequence, .. }) => {
                    landed[*g] = Some(*global_sequence);
                }
                (Slot::Good(g), None, other) => {
                    prop_assert!(false, "good event {} became {:?}", CITY[*g].event.event_id, other);
                }
                (_, Some(Expect::Rejected(code)), EventOutcome::Rejected { code: got, reason, .. }) => {
                    rejected += 1;
                    if let Some(code) = code {
                        prop_assert_eq!(got, code, "{}", reason);
                    }
                    prop_assert!(!reason.trim().is_empty());
                    prop_assert!(reason.len() < MAX_REASON_BYTES, "a {}-byte reason", reason.len());
                    prop_assert!(!has_control(reason), "reason echoes control characters: {:?}", reason);
                    // The record on disk says the same, with the raw bytes.
                    let rec = log.rejections(*seq - 1, 1).expect("read rejections");
                    prop_assert_eq!(rec.len(), 1);
                    let rec = &rec[0];
                    prop_assert_eq!(rec.stream_sequence, *seq);
                    prop_assert_eq!(&rec.reason, reason);
                    prop_assert_eq!(rec.code, *got as i32);
                    prop_assert_eq!(rec.raw_len, messages[i].payload.len() as u64);
                    prop_assert!(rec.raw.len() <= MAX_EVENT_BYTES);
                    prop_assert_eq!(&rec.subject, &messages[i].subject);
                }
                (_, Some(Expect::Duplicate(of)), EventOutcome::Duplicate { original_global_sequence, .. }) => {
                    duplicates += 1;
                    prop_assert_eq!(Some(*original_global_sequence), landed[*of]);
                    let rec = log.duplicates(*seq - 1, 1).expect("read duplicates");
                    prop_assert_eq!(rec.len(), 1);
                    prop_assert_eq!(rec[0].stream_sequence, *seq);
                    prop_assert_eq!(rec[0].original_global_sequence, *original_global_sequence);
                }
                (_, want, got) => {
                    prop_assert!(
                        false,
                        "message {} on {:?} ({} bytes): wanted {:?}, got {:?}",
                        seq,
                        messages[i].subject.chars().take(100).collect::<String>(),
                        messages[i].payload.len(),
                        want,
                        got
                    );
                }
            }
        }
        // The good events landed exactly as without the hostile ones.
        prop_assert_eq!(log.checkpoint().global_sequence, CITY.len() as u64);
        prop_assert!(log.view_bytes().expect("views") == *REFERENCE, "views differ from the reference");
        let report = log.verify().map_err(|e| TestCaseError::fail(format!("verify: {e}")))?;
        prop_assert_eq!(report.entries, CITY.len() as u64);
        // Re-delivered after a restart: already processed, nothing changes.
        drop(log);
        let log = Log::open(dir.path(), Policy::default()).expect("reopen log");
        let again = log.append_group(&messages, &KEYS).expect("re-deliver");
        prop_assert!(again.outcomes.iter().all(|(_, o)| *o == EventOutcome::AlreadyProcessed));
        prop_assert!(log.view_bytes().expect("views") == *REFERENCE);
        let _ = (rejected, duplicates);
    }
}

/// One line for RELIABILITY.md's table, with counts from a fixed stream of
/// every kind of hostile message.
#[test]
fn every_kind_of_hostile_message_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), Policy::default()).expect("open log");
    let n = CITY.len();
    let kinds = vec![
        Hostile::Bytes {
            subject: None,
            bytes: vec![0xff; 40],
        },
        Hostile::Bytes {
            subject: Some("lianxi.v1.events.police.>".into()),
            bytes: CITY[1].payload.clone(),
        },
        Hostile::Truncated { of: 2, cut: 30 },
        Hostile::WrongSubject {
            of: 3,
            subject: "lianxi.v1.events.*.HL-000001".into(),
        },
        Hostile::WrongSubject {
            of: 3,
            subject: "lianxi.v1.events.police.HL\u{0}000001".into(),
        },
        Hostile::BadId {
            of: 4,
            id: "id.with\u{1b}[31mcolour".into(),
        },
        Hostile::BadId {
            of: 4,
            id: "x".repeat(60_000),
        },
        Hostile::BadUtf8 { of: 5 },
        Hostile::Oversized {
            of: 6,
            extra: 1,
            junk: false,
        },
        Hostile::Oversized {
            of: 6,
            extra: 1000,
            junk: true,
        },
        Hostile::UnknownCase {
            of: 7,
            case: "NOBODY-1".into(),
        },
        Hostile::Nested { depth: 20_000 },
        Hostile::Replay {
            of: 0,
            altered: false,
        },
        Hostile::Replay {
            of: 1,
            altered: true,
        },
    ];
    let hostile: Vec<(usize, Hostile)> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, h)| (3 + 4 * i, h))
        .collect();
    let count = hostile.len();
    let slots = stream(hostile);
    let messages: Vec<Incoming> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (subject, payload) = match s {
                Slot::Good(g) => (CITY[*g].subject.clone(), CITY[*g].payload.clone()),
                Slot::Hostile(h) => {
                    let (s, p, _) = render(h);
                    (s, p)
                }
            };
            Incoming {
                stream_sequence: i as u64 + 1,
                subject,
                recorded_at: Timestamp {
                    seconds: 1_767_196_800,
                    nanos: 0,
                },
                payload,
            }
        })
        .collect();
    let mut accepted = 0;
    let mut rejected = 0;
    let mut duplicates = 0;
    for chunk in messages.chunks(7) {
        let report = log.append_group(chunk, &KEYS).expect("append group");
        for (_, o) in report.outcomes {
            match o {
                EventOutcome::Accepted { .. } => accepted += 1,
                EventOutcome::Rejected { reason, .. } => {
                    assert!(!reason.is_empty());
                    rejected += 1;
                }
                EventOutcome::Duplicate { .. } => duplicates += 1,
                EventOutcome::AlreadyProcessed => panic!("nothing was processed before"),
            }
        }
    }
    assert_eq!(accepted, n, "every good event lands");
    assert_eq!(rejected + duplicates, count);
    assert_eq!(duplicates, 2);
    assert_eq!(log.rejections(0, 1000).expect("rejections").len(), rejected);
    let report = log.verify().expect("the log verifies");
    assert_eq!(report.entries, n as u64);
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST every_kind_of_hostile_message_at_once: {} messages ({n} good, {count} hostile of 9 kinds) in groups of 7 through a real sled log: accepted {accepted}, rejected {rejected} (each with a stored record and reason), duplicates {duplicates}, lost: 0, log verifies, {} entries",
        messages.len(),
        report.entries
    ));
}
