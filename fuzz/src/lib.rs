//! What the fuzz targets share: a small simulated city (views to decide
//! against, good events to mix in) and the checks every target makes. The
//! targets call the same entry points as the proptest suites
//! (`crates/*/tests/hostile.rs`): `Event::decode`, `check_envelope`,
//! `decide`, `apply`, the query-time functions, `Log::append_group`, and
//! the gRPC services through their generated clients.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::LazyLock;

use lianxi_domain::{
    Context, EntryMeta, Policy, Rejection, agenda, apply, check_envelope, decide, describe,
    evaluate, event_subject, matches, stats, summarize,
};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{CaseFilter, CaseView, Event};

/// The most bytes a rejection reason or status message may have.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A small simulated city folded through `decide` and `apply`.
pub struct City {
    pub policy: Policy,
    /// Every good event with its subject.
    pub events: Vec<(String, Event)>,
    /// The final view of every case.
    pub views: Vec<CaseView>,
}

pub static CITY: LazyLock<City> = LazyLock::new(|| {
    let policy = Policy::default();
    let ctx = Context {
        policy: &policy,
        prior_case: None,
    };
    let mut views: HashMap<String, CaseView> = HashMap::new();
    let mut events = Vec::new();
    let mut seqs: HashMap<String, u64> = HashMap::new();
    for (n, (e, _)) in lianxi_sim::generate(&lianxi_sim::Workload {
        cases: 8,
        seed: 3,
        prefix: "FZ".into(),
        ..Default::default()
    })
    .into_iter()
    .enumerate()
    {
        let before = views.get(&e.case_id).cloned();
        if decide(&ctx, before.as_ref(), &e, None).is_err() {
            continue;
        }
        let seq = seqs.entry(e.case_id.clone()).or_default();
        *seq += 1;
        let meta = EntryMeta {
            global_sequence: n as u64 + 1,
            case_sequence: *seq,
            recorded_at: e.occurred_at.unwrap_or_default(),
            sealed: &[],
        };
        views.insert(e.case_id.clone(), apply(&ctx, before, &e, &meta));
        events.push((event_subject(&e).expect("a subject"), e));
    }
    let mut views: Vec<CaseView> = views.into_values().collect();
    views.sort_by(|a, b| a.case_id.cmp(&b.case_id));
    City {
        policy: Policy::default(),
        events,
        views,
    }
});

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A reason or status message a person will read: present; short and
/// free of control characters.
pub fn check_message(what: &str, message: &str) {
    assert!(!message.trim().is_empty(), "{what}: empty message");
    assert!(
        message.len() < MAX_MESSAGE_BYTES,
        "{what}: a {}-byte message",
        message.len()
    );
    assert!(
        !has_control(message),
        "{what}: the message holds control characters: {message:?}"
    );
}

pub fn check_rejection(r: &Rejection) {
    check_message(&format!("rejection {:?}", r.code), &r.reason);
}

/// Everything the node does with an event: the envelope on `subject`, the
/// rules against no view and every case of the city, `apply` (even where
/// the rules said no: it must stay total), and the query-time functions
/// at the event's own time and the extremes. Returns the envelope's answer.
pub fn run_domain(subject: &str, e: &Event) -> Result<(), Rejection> {
    let city = &*CITY;
    let ctx = Context {
        policy: &city.policy,
        prior_case: None,
    };
    let envelope = check_envelope(subject, e);
    if let Err(r) = &envelope {
        check_rejection(r);
    }
    let views = std::iter::once(None).chain(city.views.iter().map(Some));
    for view in views {
        for corrected in [None, Some(e)] {
            if let Err(r) = decide(&ctx, view, e, corrected) {
                check_rejection(&r);
            }
        }
        let meta = EntryMeta {
            global_sequence: 1_000_000,
            case_sequence: 1_000,
            recorded_at: e.occurred_at.unwrap_or_default(),
            sealed: &[],
        };
        let after = apply(&ctx, view.cloned(), e, &meta);
        for now in [
            e.occurred_at.unwrap_or_default(),
            Timestamp {
                seconds: i64::MAX,
                nanos: i32::MAX,
            },
            Timestamp {
                seconds: i64::MIN,
                nanos: i32::MIN,
            },
        ] {
            let _ = evaluate(&after, &now);
            let _ = summarize(&after, &now);
            let _ = matches(&CaseFilter::default(), &after, &now);
            let _ = agenda(std::slice::from_ref(&after), &now, 0);
            let _ = stats(std::slice::from_ref(&after), &now);
        }
    }
    assert!(!describe(e).is_empty());
    envelope
}

/// Splits fuzz input into a subject (its length is the first byte) and
/// the rest.
pub fn split_subject(data: &[u8]) -> (String, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (String::new(), data);
    };
    let n = (n as usize).min(rest.len());
    (String::from_utf8_lossy(&rest[..n]).into_owned(), &rest[n..])
}

/// A subject: the city's good one for selector 0, otherwise `raw`.
pub fn subject_or_good(selector: u8, raw: String, e: &Event) -> String {
    match selector % 4 {
        0 => event_subject(e).unwrap_or(raw),
        1 => CITY.events[selector as usize % CITY.events.len()].0.clone(),
        _ => raw,
    }
}
