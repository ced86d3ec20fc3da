//! Hostile input against the pure domain: random and truncated bytes, huge
//! and deeply nested fields, invalid UTF-8, ids with dots, wildcards and
//! control characters, extreme timestamps, unknown cases and replays.
//!
//! The entry points are the ones the node calls, in its order:
//! `Event::decode`, `check_envelope`, `decide`, `apply`, and at query time
//! `evaluate`, `summarize`, `matches`, `agenda`, `stats` and `describe`.
//! The fuzz targets in `fuzz/` call the same functions.
//!
//! What must hold for every input: nothing panics; every "no" is a
//! `Rejection` with a non-empty reason; structural limits are exact (an id
//! is 1 to 64 characters of A-Z a-z 0-9 _ . : -, a subject is exactly the
//! event's own, a time lies in 2000..2200); `apply` and the query-time
//! functions stay total on events that never passed the checks.
//!
//! Runs are reproducible: a fixed seed unless `PROPTEST_RNG_SEED` is set,
//! a few hundred cases per property unless `PROPTEST_CASES` is set, and
//! failures persisted beside this file (`hostile.proptest-regressions`,
//! to be committed) so they are replayed first on every machine.
//!
//! Reasons never echo control characters: asserted for every input.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use lianxi_domain::{
    Context, EntryMeta, Policy, Rejection, agenda, apply, check_envelope, decide, describe,
    evaluate, event_subject, kind, matches, stats, summarize,
};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{Agency, CaseFilter, CaseView, Event, RejectionCode, event::Body};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};
use prost::Message;

// ---------------------------------------------------------------- settings

/// The seed every run uses unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0x6c69_616e_7869; // "lianxi"

/// Cases per property by default; `PROPTEST_CASES` overrides.
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

/// The most bytes a rejection reason may have: it is shown to a clerk and
/// sent in a receipt.
const MAX_REASON_BYTES: usize = 1024;

// ---------------------------------------------------------------- corpus

/// A small simulated city, folded through `decide` and `apply` as the log
/// would: every event with the view of its case just before it.
struct City {
    policy: Policy,
    /// (subject, event, view of its case before it) for every event.
    events: Vec<(String, Event, Option<CaseView>)>,
    /// The final views.
    views: Vec<CaseView>,
}

fn city() -> &'static City {
    static CITY: std::sync::LazyLock<City> = std::sync::LazyLock::new(|| {
        let policy = Policy::default();
        let ctx = Context {
            policy: &policy,
            prior_case: None,
        };
        let sim = lianxi_sim::generate(&lianxi_sim::Workload {
            cases: 12,
            seed: 7,
            prefix: "HX".into(),
            ..Default::default()
        });
        let mut views: HashMap<String, CaseView> = HashMap::new();
        let mut seqs: HashMap<String, u64> = HashMap::new();
        let mut events = Vec::new();
        for (n, (e, _)) in sim.into_iter().enumerate() {
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
            let after = apply(&ctx, before.clone(), &e, &meta);
            views.insert(e.case_id.clone(), after);
            let subject = event_subject(&e).expect("a simulated event has a subject");
            events.push((subject, e, before));
        }
        let mut views: Vec<CaseView> = views.into_values().collect();
        views.sort_by(|a, b| a.case_id.cmp(&b.case_id));
        assert!(events.len() > 100, "the simulated city is too small");
        City {
            policy: Policy::default(),
            events,
            views,
        }
    });
    &CITY
}

// ---------------------------------------------------------------- strategies

/// Characters that break ids, subjects and terminals, and ordinary ones.
fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => prop::char::range('0', '9'),
        2 => prop::sample::select(vec!['.', '*', '>', ' ', '/', ':', '-', '_', '%', '"', '\\']),
        2 => prop::char::range('\u{0}', '\u{1f}'),
        1 => prop::sample::select(vec![
            '\u{7f}', '\u{85}', '\u{9b}', '\u{200b}', '\u{202e}', '\u{2066}', '\u{feff}', '\u{fffd}',
        ]),
        1 => any::<char>(),
    ]
}

/// Strings as an attacker would send them: short odd ones, ones just over
/// the limits, and 100,000 characters.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(hostile_char(), 0..90).prop_map(|v| v.into_iter().collect()),
        1 => (hostile_char(), 60usize..70).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        1 => (hostile_char(), 4090usize..4100)
            .prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        1 => hostile_char().prop_map(|c| std::iter::repeat_n(c, 100_000).collect()),
    ]
}

/// Seconds around every boundary the domain knows, and the extremes.
fn hostile_seconds() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => any::<i64>(),
        1 => prop::sample::select(vec![
            i64::MIN, i64::MIN + 1, -1, 0, 1, 946_684_799, 946_684_800, 7_289_654_399,
            7_289_654_400, 253_402_300_799, 253_402_300_800, i64::MAX - 1, i64::MAX,
        ]),
        2 => 946_000_000i64..7_300_000_000,
    ]
}

fn hostile_nanos() -> impl Strategy<Value = i32> {
    prop_oneof![
        2 => 0i32..1_000_000_000,
        1 => prop::sample::select(vec![i32::MIN, -1, 0, 999_999_999, 1_000_000_000, i32::MAX]),
        1 => any::<i32>(),
    ]
}

fn hostile_timestamp() -> impl Strategy<Value = Timestamp> {
    (hostile_seconds(), hostile_nanos()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
}

/// An index into the city's events.
fn good_index() -> impl Strategy<Value = usize> {
    any::<prop::sample::Index>().prop_map(|i| i.index(city().events.len()))
}

/// Bytes that are almost an event: a good encoding cut, flipped, spliced.
fn mutated_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        good_index(),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        0u8..4,
    )
        .prop_map(|(i, cut, flips, how)| {
            let mut b = city().events[i].1.encode_to_vec();
            match how {
                0 => b.truncate(cut.index(b.len() + 1)),
                1 => {
                    for (at, v) in flips {
                        let at = at.index(b.len());
                        b[at] ^= v | 1;
                    }
                }
                2 => {
                    let at = cut.index(b.len() + 1);
                    let tail = b.split_off(at);
                    for (_, v) in flips {
                        b.push(v);
                    }
                    b.extend(tail);
                }
                _ => {
                    // A second copy appended: protobuf merges the two.
                    let again = b.clone();
                    b.extend(again);
                }
            }
            b
        })
}

// ---------------------------------------------------------------- checks

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Every rejection: a non-empty reason of bounded size, without control
/// characters.
fn check_rejection(r: &Rejection) -> Result<(), TestCaseError> {
    prop_assert!(!r.reason.trim().is_empty(), "empty reason for {:?}", r.code);
    prop_assert!(
        r.reason.len() < MAX_REASON_BYTES,
        "a {}-byte reason ({:?}): {}...",
        r.reason.len(),
        r.code,
        r.reason.chars().take(120).collect::<String>()
    );
    prop_assert_ne!(r.code, RejectionCode::Unspecified, "reason: {}", r.reason);
    prop_assert!(
        !has_control(&r.reason),
        "the reason echoes control characters: {:?}",
        r.reason
    );
    Ok(())
}

fn ctx(policy: &Policy) -> Context<'_> {
    Context {
        policy,
        prior_case: None,
    }
}

fn meta(at: Timestamp) -> EntryMeta<'static> {
    EntryMeta {
        global_sequence: 1_000_000,
        case_sequence: 1_000,
        recorded_at: at,
        sealed: &[],
    }
}

/// Runs an event through everything the node would do with it, against
/// no view, its own case's view and an unrelated case's view, plus `apply`
/// and the query-time functions even where the checks said no (they must
/// stay total). Returns what `check_envelope` said.
fn run_everything(
    subject: &str,
    e: &Event,
    own: Option<&CaseView>,
) -> Result<Result<(), Rejection>, TestCaseError> {
    let c = city();
    let ctx = ctx(&c.policy);
    let envelope = check_envelope(subject, e);
    if let Err(r) = &envelope {
        check_rejection(r)?;
    }
    let other = &c.views[0];
    for view in [None, own, Some(other)] {
        if let Err(r) = decide(&ctx, view, e, None) {
            check_rejection(&r)?;
        }
        // A correction of itself: the corrected event as the log would find it.
        if let Err(r) = decide(&ctx, view, e, Some(e)) {
            check_rejection(&r)?;
        }
        let after = apply(
            &ctx,
            view.cloned(),
            e,
            &meta(e.occurred_at.unwrap_or_default()),
        );
        for now in [
            Timestamp::default(),
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
        }
    }
    let line = describe(e);
    prop_assert!(!line.is_empty());
    let _ = kind(e);
    Ok(envelope)
}

/// The id grammar: 1 to 64 characters of A-Z a-z 0-9 _ . : -.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// The case-id grammar: the id grammar without `.` and `:`.
fn is_case_id(s: &str) -> bool {
    is_id(s) && !s.contains(['.', ':'])
}

// ---------------------------------------------------------------- JSON walk

/// Paths to every string in a JSON value.
fn string_paths(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::String(_) => out.push(at.clone()),
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                at.push(k.clone());
                string_paths(x, at, out);
                at.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push(i.to_string());
                string_paths(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn set_at(v: &mut serde_json::Value, path: &[String], s: String) {
    let mut cur = v;
    for p in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get_mut(p).expect("path exists"),
            serde_json::Value::Array(a) => &mut a[p.parse::<usize>().expect("index")],
            _ => unreachable!("paths only go through objects and arrays"),
        };
    }
    *cur = serde_json::Value::String(s);
}

/// Every string in an event (ids, free text, jurisdiction, person fields).
fn strings_of(e: &Event) -> Vec<String> {
    let v = serde_json::to_value(e).expect("an event serialises");
    let mut paths = Vec::new();
    string_paths(&v, &mut Vec::new(), &mut paths);
    paths
        .iter()
        .filter_map(|p| {
            let mut cur = &v;
            for k in p {
                cur = match cur {
                    serde_json::Value::Object(m) => &m[k],
                    serde_json::Value::Array(a) => &a[k.parse::<usize>().ok()?],
                    _ => return None,
                };
            }
            cur.as_str().map(str::to_owned)
        })
        .collect()
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config(512))]

    /// Random bytes and near-miss encodings: decoding ends in an event or an
    /// error, and whatever decodes goes through every entry point without a
    /// panic.
    #[test]
    fn random_and_damaged_bytes_never_panic(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            mutated_bytes(),
        ],
        i in good_index(),
    ) {
        let (subject, _, before) = &city().events[i];
        if let Ok(e) = Event::decode(bytes.as_slice()) {
            let _envelope = run_everything(subject, &e, before.as_ref())?;
        }
    }

    /// Every strict prefix of a good encoding is an error or an event the
    /// envelope rejects: the body is the last field, so a cut loses it.
    #[test]
    fn truncated_events_are_never_accepted(i in good_index(), cut in any::<prop::sample::Index>()) {
        let (subject, e, before) = &city().events[i];
        let bytes = e.encode_to_vec();
        let cut = cut.index(bytes.len());
        if let Ok(d) = Event::decode(&bytes[..cut]) {
            let envelope = run_everything(subject, &d, before.as_ref())?;
            prop_assert!(envelope.is_err(), "a {cut}-byte prefix of {} passed", e.event_id);
        }
    }

    /// The envelope accepts a good event on exactly one subject, its own;
    /// dots, wildcards, control characters or another agency or case in
    /// the subject are a subject rejection.
    #[test]
    fn only_the_events_own_subject_passes(
        i in good_index(),
        subject in prop_oneof![
            hostile_string(),
            (hostile_string(), hostile_string())
                .prop_map(|(a, c)| format!("lianxi.v1.events.{a}.{c}")),
            (prop::sample::select(vec![
                "police", "court", "civil_affairs", "labour", "womens_federation",
                "justice_bureau", "political_legal_committee", "*", ">", "unspecified",
            ]), hostile_string())
                .prop_map(|(a, c)| format!("lianxi.v1.events.{a}.{c}")),
        ],
        tweak in 0u8..6,
    ) {
        let (own, e, before) = &city().events[i];
        let subject = match tweak {
            0 => format!("{own}.{subject}"),
            1 => format!("{own}{subject}"),
            2 => own.replacen("events", &subject, 1),
            _ => subject,
        };
        let envelope = run_everything(&subject, e, before.as_ref())?;
        match envelope {
            Ok(()) => prop_assert_eq!(&subject, own),
            Err(r) => {
                prop_assert_ne!(&subject, own);
                prop_assert!(
                    matches!(
                        r.code,
                        RejectionCode::BadSubject
                            | RejectionCode::UnknownAgency
                            | RejectionCode::AgencyMismatch
                            | RejectionCode::CaseMismatch
                    ),
                    "subject {:?}: code {:?}", subject, r.code
                );
            }
        }
    }

    /// An event id passes exactly when it follows the id grammar; otherwise
    /// it is a missing or invalid field.
    #[test]
    fn event_ids_follow_the_grammar_exactly(i in good_index(), id in hostile_string()) {
        let (subject, e, before) = &city().events[i];
        let mut e = e.clone();
        e.event_id = id.clone();
        let envelope = run_everything(subject, &e, before.as_ref())?;
        match envelope {
            Ok(()) => prop_assert!(is_id(&id), "id {:?} passed", id),
            Err(r) => {
                prop_assert!(!is_id(&id), "id {:?} refused: {}", id, r);
                let want = if id.is_empty() {
                    RejectionCode::MissingField
                } else {
                    RejectionCode::InvalidField
                };
                prop_assert_eq!(r.code, want);
            }
        }
    }

    /// A case id passes exactly when it follows the case-id grammar, on
    /// the subject built from it; a hostile id never becomes a subject.
    #[test]
    fn case_ids_follow_the_grammar_exactly(i in good_index(), id in hostile_string()) {
        let (_, e, _) = &city().events[i];
        let mut e = e.clone();
        e.case_id = id.clone();
        match event_subject(&e) {
            Ok(subject) => {
                prop_assert!(is_case_id(&id), "case id {:?} made subject {:?}", id, subject);
                let envelope = run_everything(&subject, &e, None)?;
                prop_assert!(envelope.is_ok(), "{:?}", envelope);
            }
            Err(r) => {
                check_rejection(&r)?;
                prop_assert!(!is_case_id(&id), "case id {:?} refused: {}", id, r);
                // Published anyway, on a subject made by hand.
                let subject = format!("lianxi.v1.events.womens_federation.{id}");
                let envelope = run_everything(&subject, &e, None)?;
                prop_assert!(envelope.is_err());
            }
        }
    }

    /// Any string anywhere in an event (record ids, free text, the
    /// jurisdiction, the person's fields, enum names, times) replaced by a
    /// hostile one: total everywhere; nothing over 4,096 characters passes,
    /// and no id outside the grammar passes.
    #[test]
    fn hostile_strings_anywhere_are_rejected_or_bounded(
        i in good_index(),
        which in any::<prop::sample::Index>(),
        s in hostile_string(),
    ) {
        let (subject, e, before) = &city().events[i];
        let mut v = serde_json::to_value(e).expect("an event serialises");
        let mut paths = Vec::new();
        string_paths(&v, &mut Vec::new(), &mut paths);
        prop_assume!(!paths.is_empty());
        let path = paths[which.index(paths.len())].clone();
        let field = path.last().cloned().unwrap_or_default();
        set_at(&mut v, &path, s.clone());
        // Canonical JSON decoding of hostile text is itself an entry point
        // (the command line reads JSON lines): it may refuse, not panic.
        let Ok(hostile) = serde_json::from_value::<Event>(v) else { return Ok(()); };
        let envelope = run_everything(subject, &hostile, before.as_ref())?;
        if envelope.is_ok() {
            for text in strings_of(&hostile) {
                prop_assert!(
                    text.chars().count() <= 4096,
                    "a {}-character string in {} passed", text.chars().count(), field
                );
            }
            if field.ends_with("Id") {
                prop_assert!(is_id(&s), "{} = {:?} passed", field, s);
            }
        }
    }

    /// Occurrence times: accepted exactly within 2000..2200 with valid
    /// nanoseconds; any time, also on an event that skipped the checks,
    /// keeps `apply` and the query-time functions total.
    #[test]
    fn extreme_timestamps_are_rejected_or_in_range(i in good_index(), t in hostile_timestamp()) {
        let (subject, e, before) = &city().events[i];
        let mut e = e.clone();
        e.occurred_at = Some(t);
        let envelope = run_everything(subject, &e, before.as_ref())?;
        let sane = (0..1_000_000_000).contains(&t.nanos)
            && (946_684_800..7_289_654_400).contains(&t.seconds);
        if !sane {
            prop_assert!(envelope.is_err(), "time {:?} passed", t);
        }
        if let Err(r) = envelope
            && !sane
        {
            prop_assert_eq!(r.code, RejectionCode::InvalidField, "{}", r.reason);
        }
    }

    /// Every timestamp inside a body (due dates, expiries, meeting times)
    /// set to an extreme: the checks refuse or accept, nothing panics, and
    /// the views it would make can be judged at any `now`.
    #[test]
    fn extreme_times_inside_bodies_stay_total(
        i in good_index(),
        t in hostile_timestamp(),
        now in hostile_timestamp(),
    ) {
        let (subject, e, before) = &city().events[i];
        let mut e = e.clone();
        set_body_times(&mut e, t);
        let _envelope = run_everything(subject, &e, before.as_ref())?;
        let c = city();
        let _ = agenda(&c.views, &now, 0);
        let _ = agenda(&c.views, &now, u32::MAX);
        let _ = stats(&c.views, &now);
        for v in &c.views {
            let _ = evaluate(v, &now);
            let _ = summarize(v, &now);
            let f = CaseFilter { opened_from: Some(t), opened_before: Some(now), ..Default::default() };
            let _ = matches(&f, v, &now);
        }
    }

    /// Unknown cases: anything but an opening on a case with no view is
    /// refused as waiting for its predecessor, the opening (or earlier, structurally); a good event
    /// decided against another case's view is refused.
    #[test]
    fn events_for_unknown_cases_are_refused(i in good_index()) {
        let c = city();
        let ctx = ctx(&c.policy);
        let (_, e, _) = &c.events[i];
        let opening = matches!(e.body, Some(Body::CaseOpened(_))) && e.corrects_event_id.is_none();
        match decide(&ctx, None, e, None) {
            Ok(()) => prop_assert!(opening, "{} accepted without its case", e.event_id),
            Err(r) => {
                check_rejection(&r)?;
                prop_assert!(!opening || e.corrects_event_id.is_some());
                prop_assert!(
                    matches!(r.code, RejectionCode::PredecessorMissing | RejectionCode::BadCorrection),
                    "{:?}: {}", r.code, r.reason
                );
            }
        }
        let other = c.views.iter().find(|v| v.case_id != e.case_id).expect("two cases");
        if let Err(r) = decide(&ctx, Some(other), e, None) {
            check_rejection(&r)?;
        } else {
            prop_assert!(false, "{} accepted against case {}", e.event_id, other.case_id);
        }
    }

    /// No existence oracle on the bus: any event of the city, sent by an
    /// agency not involved in its case (at any point of the case's life,
    /// the final view included), gets exactly the answer it would get for
    /// the same case not opened yet, unless it is an opening or answers a
    /// referral addressed to that agency.
    #[test]
    fn an_agency_not_involved_gets_the_answer_for_a_case_never_opened(
        i in good_index(),
        agency in 1i32..=7,
        final_view in any::<bool>(),
    ) {
        let c = city();
        let ctx = ctx(&c.policy);
        let (_, e, before) = &c.events[i];
        let view = if final_view {
            c.views.iter().find(|v| v.case_id == e.case_id).cloned()
        } else {
            before.clone()
        };
        let Some(view) = view else { return Ok(()) };
        let mut e = e.clone();
        e.agency = agency;
        let opening = matches!(e.body, Some(Body::CaseOpened(_))) && e.corrects_event_id.is_none();
        let answers_referral = matches!(e.body, Some(Body::ReferralAccepted(_) | Body::ReferralReturned(_)));
        let involved = agency == Agency::PoliticalLegalCommittee as i32
            || view.first_contact == agency
            || view.lead == agency
            || view.referrals.iter().any(|r| r.to_agency == agency)
            || view.actions.iter().any(|x| x.owner == agency)
            || view.obligations.iter().any(|o| o.owner == agency);
        if opening || answers_referral || involved {
            return Ok(());
        }
        let existing = decide(&ctx, Some(&view), &e, None);
        let never = decide(&ctx, None, &e, None);
        prop_assert_eq!(&existing, &never, "{} by agency {}", e.event_id, agency);
        prop_assert!(existing.is_err());
    }

    /// Replays: a good event decided again against the view it produced
    /// (and against the final view) never panics, and an opening replayed
    /// on its own case is refused.
    #[test]
    fn replayed_events_are_refused_or_total(i in good_index()) {
        let c = city();
        let ctx = ctx(&c.policy);
        let (subject, e, before) = &c.events[i];
        let after = apply(&ctx, before.clone(), e, &meta(e.occurred_at.unwrap_or_default()));
        let again = decide(&ctx, Some(&after), e, None);
        if let Err(r) = &again {
            check_rejection(r)?;
        }
        if matches!(e.body, Some(Body::CaseOpened(_))) && e.corrects_event_id.is_none() {
            prop_assert!(again.is_err(), "opening {} replayed on its own case", e.event_id);
        }
        let last = c.views.iter().find(|v| v.case_id == e.case_id).expect("its case");
        let _envelope = run_everything(subject, e, Some(last))?;
    }

    /// Repeated fields: up to 64 items pass, more are too large.
    #[test]
    fn huge_repeated_fields_are_too_large(n in prop_oneof![0usize..130, Just(100_000)]) {
        let c = city();
        let (subject, e, before) = c
            .events
            .iter()
            .find(|(_, e, _)| matches!(e.body, Some(Body::RiskAssessed(_))))
            .expect("a risk assessment in the city");
        let mut e = e.clone();
        if let Some(Body::RiskAssessed(r)) = &mut e.body {
            r.factors = vec!["threats".into(); n];
        }
        let envelope = run_everything(subject, &e, before.as_ref())?;
        if n > 64 {
            let r = envelope.expect_err("over 64 items");
            prop_assert_eq!(r.code, RejectionCode::TooLarge);
        } else {
            prop_assert!(envelope.is_ok(), "{:?}", envelope);
        }
    }

    /// Free text: up to 4,096 characters (not bytes) pass, more are too large.
    #[test]
    fn long_text_is_too_large(n in 4000usize..4200, c in hostile_char()) {
        let city = city();
        let (subject, e, before) = city
            .events
            .iter()
            .find(|(_, e, _)| matches!(e.body, Some(Body::ProgressReported(_))))
            .expect("a progress report in the city");
        let mut e = e.clone();
        if let Some(Body::ProgressReported(p)) = &mut e.body {
            p.summary = std::iter::repeat_n(c, n).collect();
        }
        let envelope = run_everything(subject, &e, before.as_ref())?;
        if c.is_whitespace() {
            // A required text of only spaces is missing, whatever its length.
            let r = envelope.expect_err("blank text");
            prop_assert_eq!(r.code, RejectionCode::MissingField);
        } else if n > 4096 {
            let r = envelope.expect_err("over 4096 characters");
            prop_assert_eq!(r.code, RejectionCode::TooLarge);
        } else {
            prop_assert!(envelope.is_ok(), "{:?}", envelope);
        }
    }
}

// ------------------------------------------------------------ wire-level

/// A varint as protobuf writes it.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

proptest! {
    #![proptest_config(config(128))]

    /// Invalid UTF-8 in any string field of the envelope is a decode error.
    #[test]
    fn invalid_utf8_is_a_decode_error(
        field in prop::sample::select(vec![1u64, 2, 5]),
        prefix in prop::collection::vec(0x20u8..0x7f, 0..20),
        bad in prop::sample::select(vec![
            vec![0xff], vec![0xc0, 0x80], vec![0xed, 0xa0, 0x80], vec![0xf4, 0x90, 0x80, 0x80],
            vec![0xe2, 0x82], vec![0x80],
        ]),
        i in good_index(),
    ) {
        let (_, e, _) = &city().events[i];
        let mut bytes = e.encode_to_vec();
        let mut s = prefix.clone();
        s.extend(&bad);
        varint(field << 3 | 2, &mut bytes);
        varint(s.len() as u64, &mut bytes);
        bytes.extend(&s);
        prop_assert!(Event::decode(bytes.as_slice()).is_err());
    }

    /// Nesting far past any real message (unknown groups and nested
    /// messages) and declared lengths far past the input: a decode error
    /// or an event the envelope refuses, no stack overflow and no
    /// allocation of the declared size.
    #[test]
    fn deep_nesting_and_huge_lengths_fail_cleanly(
        depth in prop_oneof![1usize..120, Just(10_000usize), Just(200_000usize)],
        len in prop_oneof![any::<u64>(), Just(u64::MAX), Just(1u64 << 62), Just(u32::MAX as u64)],
        how in 0u8..4,
    ) {
        let mut bytes = Vec::new();
        match how {
            0 => {
                // Unknown field 1000 as nested start-groups, never closed.
                for _ in 0..depth {
                    varint(1000 << 3 | 3, &mut bytes);
                }
            }
            1 => {
                // Properly closed nested groups.
                for _ in 0..depth {
                    varint(1000 << 3 | 3, &mut bytes);
                }
                for _ in 0..depth {
                    varint(1000 << 3 | 4, &mut bytes);
                }
            }
            2 => {
                // A body whose declared length is `len`.
                varint(10 << 3 | 2, &mut bytes);
                varint(len, &mut bytes);
                bytes.extend([0u8; 16]);
            }
            _ => {
                // case_opened.person nested in itself by unknown
                // length-delimited fields, `depth` deep.
                let mut inner: Vec<u8> = Vec::new();
                for _ in 0..depth.min(5_000) {
                    let mut outer = Vec::new();
                    varint(999 << 3 | 2, &mut outer);
                    varint(inner.len() as u64, &mut outer);
                    outer.extend(&inner);
                    inner = outer;
                }
                varint(10 << 3 | 2, &mut bytes);
                varint(inner.len() as u64, &mut bytes);
                bytes.extend(&inner);
            }
        }
        if let Ok(e) = Event::decode(bytes.as_slice()) {
            let envelope = run_everything("lianxi.v1.events.police.X-1", &e, None)?;
            prop_assert!(envelope.is_err(), "an empty or unknown-only event passed");
        }
    }
}

// ------------------------------------------------------------ helpers

/// Sets every timestamp inside the event's body to `t`, through its JSON.
fn set_body_times(e: &mut Event, t: Timestamp) {
    // Timestamps outside what RFC 3339 can write cannot go through JSON:
    // set them on the body's known fields directly.
    use lianxi_proto::v1::event::Body as B;
    match &mut e.body {
        Some(B::ReferralIssued(b)) => b.due_at = Some(t),
        Some(B::ProtectionOrderDecided(b)) => b.expires_at = Some(t),
        Some(B::ProtectionOrderChanged(b)) => b.new_expires_at = Some(t),
        Some(B::HearingScheduled(b)) => b.scheduled_at = Some(t),
        Some(B::ShelterExtended(b)) => b.until = Some(t),
        Some(B::CaseListed(b)) => b.meeting_at = Some(t),
        Some(B::ActionAgreed(b)) => b.due_at = Some(t),
        _ => e.occurred_at = Some(t),
    }
}

/// The corpus is what the properties think it is: good events pass.
#[test]
fn the_corpus_is_good() {
    let c = city();
    for (subject, e, _) in &c.events {
        check_envelope(subject, e).unwrap_or_else(|r| panic!("{}: {r}", e.event_id));
    }
}

// ------------------------------------------------------------ allocation

/// The most a message may make the domain allocate at its peak: a fixed
/// allowance plus a multiple of its size. Decoded messages are larger than
/// their encoding (an empty `Child` is 2 bytes on the wire and a few hundred
/// in memory), so the multiple is generous; what it excludes is allocation
/// driven by a declared length or count rather than by the bytes present.
fn allocation_bound(input: usize) -> u64 {
    (1 << 20) + 256 * input as u64
}

/// An opening whose body holds `n` empty children (field 9 of
/// `case_opened`): the most memory per byte protobuf can be made to cost.
fn many_children(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..n {
        varint(9 << 3 | 2, &mut body);
        varint(0, &mut body);
    }
    let mut bytes = Vec::new();
    varint(10 << 3 | 2, &mut bytes);
    varint(body.len() as u64, &mut bytes);
    bytes.extend(body);
    bytes
}

proptest! {
    #![proptest_config(config(128))]

    /// Decoding, checking, deciding and applying one message (up to the
    /// node's 64 KiB) peaks below [`allocation_bound`] of its size, on this
    /// thread (other tests' threads are not counted).
    #[test]
    fn allocation_is_bounded_by_the_input(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..65_536),
            mutated_bytes(),
            (1usize..32_000).prop_map(many_children),
            (any::<u64>()).prop_map(|len| {
                let mut b = Vec::new();
                varint(10 << 3 | 2, &mut b);
                varint(len, &mut b);
                b.extend([0u8; 64]);
                b
            }),
        ],
        i in good_index(),
    ) {
        let c = city();
        let ctx = ctx(&c.policy);
        let (subject, _, before) = &c.events[i];
        let info = allocation_counter::measure(|| {
            if let Ok(e) = Event::decode(bytes.as_slice()) {
                let _ = check_envelope(subject, &e);
                let _ = decide(&ctx, before.as_ref(), &e, None);
                let _ = apply(&ctx, before.clone(), &e, &meta(e.occurred_at.unwrap_or_default()));
                let _ = describe(&e);
            }
        });
        prop_assert!(
            info.bytes_max <= allocation_bound(bytes.len()),
            "{} bytes of input peaked at {} bytes allocated",
            bytes.len(),
            info.bytes_max
        );
    }
}

/// The counter counts on this thread (so the bound above is not vacuous):
/// 32,000 empty children decode to more memory than their 64 KB.
#[test]
fn the_allocation_counter_counts() {
    let bytes = many_children(32_000);
    let info = allocation_counter::measure(|| {
        let e = Event::decode(bytes.as_slice()).expect("an opening with children decodes");
        assert!(e.body.is_some());
    });
    assert!(
        info.bytes_max > bytes.len() as u64,
        "peak {} for {} bytes",
        info.bytes_max,
        bytes.len()
    );
    println!(
        "{} bytes of empty children peak at {} bytes decoded ({}x, bound {}x + 1 MiB)",
        bytes.len(),
        info.bytes_max,
        info.bytes_max / bytes.len() as u64,
        256
    );
}
