//! Fuzz input cut into messages (subject length, subject, payload length,
//! payload) and mixed with a fresh case's good events through
//! `Log::append_group` on a real sled log: every hostile message ends as
//! a rejection record with a reason (or a duplicate, or an entry that
//! passed the envelope), and the good events still land.
#![no_main]

use std::sync::{LazyLock, Mutex};

use lianxi_domain::event_subject;
use lianxi_log::{EventOutcome, GroupKeys, Incoming, Log};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{Event, event::Body};
use libfuzzer_sys::fuzz_target;
use prost::Message;

struct State {
    _dir: tempfile::TempDir,
    log: Log,
    stream: u64,
    case: u64,
}

/// A new log every this many inputs, so the database stays small.
const INPUTS_PER_LOG: u64 = 2_000;

fn fresh() -> State {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), lianxi_domain::Policy::default()).expect("open log");
    State {
        _dir: dir,
        log,
        stream: 0,
        case: 0,
    }
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(|| Mutex::new(fresh()));
static KEYS: LazyLock<GroupKeys> = LazyLock::new(|| GroupKeys::derived("lianxi-fuzz"));

/// The n-th good event of a case: its opening (a city event's body), then
/// progress reports. The case id carries a per-process nonce, so the
/// fuzzer cannot aim at it.
fn good(case: &str, n: usize) -> Event {
    let city = &*lianxi_fuzz::CITY;
    let (_, opening) = city
        .events
        .iter()
        .find(|(_, e)| matches!(e.body, Some(Body::CaseOpened(_))))
        .expect("an opening");
    let at = opening.occurred_at.unwrap_or_default();
    let body = if n == 0 {
        opening.body.clone()
    } else {
        Some(Body::ProgressReported(lianxi_proto::v1::ProgressReported {
            summary: format!("report {n}"),
        }))
    };
    Event {
        event_id: format!("{case}-e{n}"),
        case_id: case.to_owned(),
        agency: opening.agency,
        occurred_at: Some(Timestamp {
            seconds: at.seconds + n as i64 * 60,
            nanos: 0,
        }),
        corrects_event_id: None,
        body,
    }
}

static NONCE: LazyLock<u32> = LazyLock::new(|| std::process::id() ^ 0x5a5a_1234);

fn messages(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < 64 {
        let (subject, rest) = lianxi_fuzz::split_subject(data);
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
            _ => (rest.len(), &rest[rest.len()..]),
        };
        let len = len.min(rest.len());
        let selector = subject.len() as u8;
        let payload = rest[..len].to_vec();
        let subject = match Event::decode(payload.as_slice()) {
            Ok(e) => lianxi_fuzz::subject_or_good(selector, subject, &e),
            Err(_) => subject,
        };
        out.push((subject, payload));
        data = &rest[len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    st.case += 1;
    if st.case > INPUTS_PER_LOG {
        *st = fresh();
        st.case = 1;
    }
    let case = format!("FZL{}-{}", *NONCE, st.case);
    let mut group = Vec::new();
    let mut good_at = Vec::new();
    let mut n = 0;
    let push = |st: &mut State, group: &mut Vec<Incoming>, subject: String, payload: Vec<u8>| {
        st.stream += 1;
        group.push(Incoming {
            stream_sequence: st.stream,
            subject,
            recorded_at: Timestamp {
                seconds: 1_767_196_800,
                nanos: 0,
            },
            payload,
        });
    };
    let e = good(&case, n);
    push(
        &mut st,
        &mut group,
        event_subject(&e).expect("subject"),
        e.encode_to_vec(),
    );
    good_at.push(0);
    for (subject, payload) in messages(data) {
        push(&mut st, &mut group, subject, payload);
        n += 1;
        let e = good(&case, n);
        good_at.push(group.len());
        push(
            &mut st,
            &mut group,
            event_subject(&e).expect("subject"),
            e.encode_to_vec(),
        );
    }
    let report = st.log.append_group(&group, &KEYS).expect("append_group");
    assert_eq!(report.outcomes.len(), group.len());
    let mut hostile_landed_in_case = false;
    for (i, (seq, outcome)) in report.outcomes.iter().enumerate() {
        let is_good = good_at.contains(&i);
        match outcome {
            EventOutcome::Accepted { case_id, .. } if !is_good => {
                // Only an event that passed the envelope on its own subject.
                let e = Event::decode(group[i].payload.as_slice()).expect("accepted bytes decode");
                lianxi_domain::check_envelope(&group[i].subject, &e)
                    .expect("accepted event passes");
                hostile_landed_in_case |= *case_id == case;
            }
            EventOutcome::Accepted { .. } => {}
            other if is_good => {
                assert!(
                    hostile_landed_in_case,
                    "good event {seq} of {case} became {other:?}"
                );
            }
            EventOutcome::Rejected { reason, code, .. } => {
                lianxi_fuzz::check_message(&format!("rejection {code:?}"), reason);
                let rec = st.log.rejections(seq - 1, 1).expect("read rejections");
                assert_eq!(
                    rec.first().map(|r| r.stream_sequence),
                    Some(*seq),
                    "no record"
                );
                assert_eq!(&rec[0].reason, reason);
            }
            EventOutcome::Duplicate { .. } => {
                let rec = st.log.duplicates(seq - 1, 1).expect("read duplicates");
                assert_eq!(
                    rec.first().map(|r| r.stream_sequence),
                    Some(*seq),
                    "no record"
                );
            }
            EventOutcome::AlreadyProcessed => panic!("message {seq} was new"),
        }
    }
});
