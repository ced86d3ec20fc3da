//! What intake tells a sender: predecessor-missing rejections, newer
//! schemas, the agency of a malformed subject, and hostile text that must
//! not reach a reason, a log line or a terminal as it is.

use lianxi_domain::{
    MAX_QUOTED_CHARS, MAX_REASON_CHARS, Rejection, check_envelope, decode_event, is_unsafe_char,
    parse_subject, printable, subject_agency, unknown_event_fields,
};
use lianxi_proto::v1::*;
use prost::Message;

use crate::support::*;

use RejectionCode as R;

const T1: &str = "2026-03-02T10:00:00Z";
const T2: &str = "2026-03-02T11:00:00Z";

// ------------------------------------------------------ predecessor missing

/// What an agency is told for an event on a case that has not been opened.
fn not_opened(agency: Agency, body: event::Body) -> Rejection {
    given(vec![]).then_reject(ev("e-x", agency, T2, body), R::PredecessorMissing)
}

#[test]
fn an_answer_to_a_referral_not_yet_stored_waits_for_it_rather_than_being_not_involved() {
    // The court is not involved in C-1 at all: only the referral it answers
    // would make it so, and that referral has not arrived. It is told what
    // it would be told for a case not opened yet, and may wait.
    let r = given(vec![opening()])
        .then_reject(ev("e-x", COURT, T1, accept("r-1")), R::PredecessorMissing);
    assert_eq!(r.reason, not_opened(COURT, accept("r-1")).reason);
    assert!(r.reason.contains("not open to the court"), "{}", r.reason);
    assert!(r.reason.contains("a referral to the court"), "{}", r.reason);
    // Once the referral is stored, the same event is accepted.
    given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", COURT, false)),
    ])
    .then_ok(ev("e-2", COURT, T2, accept("r-1")));
}

#[test]
fn an_agency_not_involved_cannot_tell_a_case_that_exists_from_one_that_does_not() {
    // A referral r-1 exists, but to the police: for the court, r-1 is as
    // missing as r-9, and the case as missing as one never opened (same
    // code, same words), so it can probe neither ids nor cases.
    let s = || {
        given(vec![
            opening(),
            ev("e-r", WF, T1, refer("r-1", POLICE, false)),
        ])
    };
    let existing = s().then_reject(ev("e-x", COURT, T2, accept("r-1")), R::PredecessorMissing);
    let absent = s().then_reject(ev("e-x", COURT, T2, accept("r-9")), R::PredecessorMissing);
    assert_eq!(existing.reason, absent.reason);
    assert_eq!(existing.reason, not_opened(COURT, accept("r-1")).reason);
    // Every other event of an agency not involved: the answer for a case
    // not opened, whatever the case holds, closed or not.
    let p = |closed_too: bool| {
        let mut events = vec![
            opening(),
            ev("e-r", WF, T1, refer("r-1", POLICE, false)),
            ev("e-a", POLICE, T1, accept("r-1")),
            ev("e-al", POLICE, T1, alarm("a-1", Area::Urban)),
        ];
        if closed_too {
            events.push(ev("e-c", WF, T1, closed()));
        }
        given(events)
    };
    for closed_too in [false, true] {
        for (agency, body) in [
            (LABOUR, labour_violation("i-1")),
            (JUSTICE, lawyer("la-1")),
            (COURT, progress()),
            (CIVIL, reported("act-1", ActionOutcome::Done)),
            (COURT, closed()),
            (WF, progress()),
        ] {
            if agency == WF {
                // The opener is involved: it hears the case's own answer.
                let r = p(closed_too).when(ev("e-x", agency, T2, body.clone()));
                assert_eq!(r.is_err(), closed_too, "{r:?}");
                continue;
            }
            let r = p(closed_too)
                .then_reject(ev("e-x", agency, T2, body.clone()), R::PredecessorMissing);
            assert_eq!(r.reason, not_opened(agency, body).reason);
        }
    }
    // Who may send a body does not depend on the case: the same refusal
    // for a case that exists and for one that does not.
    let court_dispatch =
        p(false).then_reject(ev("e-x", COURT, T2, dispatched("a-1")), R::NotPermitted);
    let never = given(vec![]).then_reject(ev("e-x", COURT, T2, dispatched("a-1")), R::NotPermitted);
    assert_eq!(court_dispatch.reason, never.reason);
}

#[test]
fn every_reference_to_a_record_not_yet_created_is_predecessor_missing() {
    // Each agency involved through an accepted referral.
    let with = |a: Agency| {
        given(vec![
            opening(),
            ev("e-r", WF, T1, refer("r-1", a, false)),
            ev("e-a", a, T1, accept("r-1")),
        ])
    };
    for body in [
        dispatched("a-1"),
        arrived("a-1"),
        disposed("a-1"),
        visit("w-1"),
        checked("o-1"),
        violated("o-1"),
        reported("act-1", ActionOutcome::Done),
    ] {
        with(POLICE).then_reject(ev("e-x", POLICE, T2, body), R::PredecessorMissing);
    }
    with(COURT).then_reject(
        ev(
            "e-x",
            COURT,
            T2,
            granted("pa-1", "o-1", "2026-09-01T00:00:00Z"),
        ),
        R::PredecessorMissing,
    );
    with(COURT).then_reject(
        ev("e-x", COURT, T2, changed("o-1", OrderChange::Revoked, None)),
        R::PredecessorMissing,
    );
    with(CIVIL).then_reject(ev("e-x", CIVIL, T2, exited("p-1")), R::PredecessorMissing);
    with(LABOUR).then_reject(
        ev("e-x", LABOUR, T2, labour_violation("i-1")),
        R::PredecessorMissing,
    );
    with(JUSTICE).then_reject(
        ev("e-x", JUSTICE, T2, aid_decided("la-1", true)),
        R::PredecessorMissing,
    );
    with(JUSTICE).then_reject(
        ev("e-x", JUSTICE, T2, lawyer("la-1")),
        R::PredecessorMissing,
    );
    given(vec![opening()]).then_reject(ev("e-x", PLC, T2, held("m-1")), R::PredecessorMissing);
    // A correction of an event not yet stored waits for it too.
    given(vec![opening()]).then_reject(
        corr("e-x", WF, T2, "e-later", risk(RiskLevel::High, 90)),
        R::PredecessorMissing,
    );
}

#[test]
fn rejections_that_waiting_cannot_fix_keep_their_own_codes() {
    // The police may not decide an order, whether or not the application exists.
    given(vec![opening()]).then_reject(
        ev(
            "e-x",
            POLICE,
            T2,
            granted("pa-1", "o-1", "2026-09-01T00:00:00Z"),
        ),
        R::NotPermitted,
    );
    // A closed case.
    given(vec![opening(), ev("e-c", WF, T1, closed())])
        .then_reject(ev("e-x", WF, T2, ret("r-9")), R::CaseClosed);
}

// ------------------------------------------------------------ newer schema

/// An event encoded by a sender whose schema has one more body kind (field
/// 250 of the oneof) than this node knows.
fn with_unknown_body() -> Vec<u8> {
    let mut e = ev("e-new", WF, T1, progress());
    e.body = None;
    let mut bytes = e.encode_to_vec();
    // field 250, wire type 2 (a message), 3 bytes: a nested string field 1.
    prost::encoding::encode_key(250, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(3, &mut bytes);
    bytes.extend_from_slice(&[0x0a, 0x01, b'x']);
    bytes
}

#[test]
fn an_event_with_a_body_kind_this_node_does_not_know_is_schema_newer_not_missing_body() {
    let bytes = with_unknown_body();
    // Plain decoding silently drops the unknown body: that is the defect.
    assert_eq!(Event::decode(bytes.as_slice()).unwrap().body, None);
    assert_eq!(unknown_event_fields(&bytes), vec!["#250".to_string()]);
    let (event, r) = *decode_event(&bytes).expect_err("newer schema");
    assert_eq!(r.code, R::SchemaNewer);
    assert!(r.reason.contains("older than the sender's"), "{}", r.reason);
    assert!(r.reason.contains("upgrade"), "{}", r.reason);
    assert_eq!(event.expect("the known part decodes").event_id, "e-new");
}

#[test]
fn an_unknown_field_inside_a_known_body_is_found_and_known_events_pass() {
    let mut bytes = ev("e-1", WF, T1, progress()).encode_to_vec();
    assert!(unknown_event_fields(&bytes).is_empty());
    assert!(decode_event(&bytes).is_ok());
    // Every body kind this build knows passes the walk.
    for (agency, body) in every_body() {
        let b = ev("e-1", agency, T1, body).encode_to_vec();
        assert_eq!(unknown_event_fields(&b), Vec::<String>::new());
    }
    // progress_reported (field 23) with an extra field 9 inside.
    let inner = ProgressReported {
        summary: "called".into(),
    }
    .encode_to_vec();
    let mut extra = inner.clone();
    prost::encoding::encode_key(9, prost::encoding::WireType::Varint, &mut extra);
    prost::encoding::encode_varint(1, &mut extra);
    let mut e = ev("e-1", WF, T1, progress());
    e.body = None;
    bytes = e.encode_to_vec();
    prost::encoding::encode_key(23, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(extra.len() as u64, &mut bytes);
    bytes.extend_from_slice(&extra);
    assert_eq!(
        unknown_event_fields(&bytes),
        vec!["progress_reported.#9".to_string()]
    );
    let (_, r) = *decode_event(&bytes).expect_err("newer schema");
    assert_eq!(r.code, R::SchemaNewer);
}

#[test]
fn bytes_that_are_not_an_event_are_malformed_and_never_panic() {
    for bytes in [
        vec![0xff, 0x01, 0x02],
        vec![0x0a, 0xff],
        b"{\"json\":1}".to_vec(),
        vec![0x0a; 1000],
    ] {
        if let Err(refused) = decode_event(&bytes) {
            let (_, r) = *refused;
            assert!(matches!(r.code, R::Malformed | R::SchemaNewer), "{r}");
        }
        let _ = unknown_event_fields(&bytes);
    }
    let (_, r) = *decode_event(&[0xff, 0x01, 0x02]).expect_err("garbage");
    assert_eq!(r.code, R::Malformed);
}

// ------------------------------------------------ the agency of a subject

#[test]
fn a_malformed_subject_still_names_its_agency_when_the_token_is_valid() {
    for (subject, agency) in [
        ("lianxi.v1.events.police.A.B", Some(POLICE)),
        ("lianxi.v1.events.police.*", Some(POLICE)),
        ("lianxi.v1.events.police.>", Some(POLICE)),
        ("lianxi.v1.events.court.C\u{7}1", Some(COURT)),
        ("lianxi.v1.events.police", Some(POLICE)),
        ("lianxi.v1.events.womens_federation.C-1", Some(WF)),
        ("lianxi.v1.events.nobody.C-1", None),
        ("lianxi.v1.events.Police.C-1", None),
        ("lianxi.v1.eventspolice.C-1", None),
        ("lianxi.v2.events.police.C-1", None),
        ("", None),
    ] {
        assert_eq!(subject_agency(subject), agency, "{subject:?}");
    }
}

// ------------------------------------------------------------ hostile text

const HOSTILE: &str = "C-1\n\u{1b}[31mFORGED line\u{7}\u{202e}gnp.exe";

fn assert_safe(s: &str) {
    assert!(!s.chars().any(is_unsafe_char), "unsafe character in {s:?}");
}

#[test]
fn printable_escapes_control_and_format_characters_and_bounds_the_text() {
    let p = printable(HOSTILE, 200);
    assert_safe(&p);
    assert_eq!(p, "C-1\\n\\u{1b}[31mFORGED line\\u{7}\\u{202e}gnp.exe");
    assert_eq!(
        printable("plain C-1 text, 中文", 200),
        "plain C-1 text, 中文"
    );
    let long = "x".repeat(1000);
    assert_eq!(printable(&long, 10), format!("{}...", "x".repeat(10)));
    for c in [
        '\u{0}', '\u{7f}', '\u{85}', '\u{9b}', '\u{200b}', '\u{2028}', '\u{2066}', '\u{feff}',
    ] {
        assert!(is_unsafe_char(c), "{c:?}");
        assert_safe(&printable(&c.to_string(), 10));
    }
}

#[test]
fn a_hostile_case_id_or_subject_never_reaches_a_reason_as_it_is() {
    // The case id in the body differs from the subject's: the mismatch
    // reason quotes it.
    let mut e = ev("e-1", WF, T1, progress());
    e.case_id = format!("{HOSTILE}{}", "y".repeat(5000));
    let r = check_envelope("lianxi.v1.events.womens_federation.C-1", &e).expect_err("mismatch");
    assert_safe(&r.reason);
    assert!(!r.reason.contains('\n'));
    assert!(
        r.reason.chars().count() < MAX_QUOTED_CHARS + 300,
        "{}",
        r.reason
    );
    // A BEL and an escape in the subject.
    for subject in [
        "lianxi.v1.events.police.C\u{7}1",
        "lianxi.v1.events.\u{1b}[2J.C-1",
        "lianxi.v1.events.police.C-1.\n2026-01-01 INFO forged",
    ] {
        let r = parse_subject(subject).expect_err("bad subject");
        assert_safe(&r.reason);
    }
    // An event id with a line break.
    let mut e = ev("e-1", WF, T1, progress());
    e.event_id = "e\n1".into();
    let r = check_envelope("lianxi.v1.events.womens_federation.C-1", &e).expect_err("bad id");
    assert_safe(&r.reason);
    // Whatever a reason is built from, it is bounded and safe.
    let r = Rejection::new(R::InvalidField, format!("{HOSTILE}{}", "z".repeat(10_000)));
    assert_safe(&r.reason);
    assert!(r.reason.chars().count() <= MAX_REASON_CHARS + 3);
}
