//! Structural checks, subjects, policy, plain-language lines, and input
//! that tries to break things.

use lianxi_domain::{
    Context, EVENTS_SUBJECT_PREFIX, EntryMeta, MAX_ID_LEN, PolicyError, agency_from_token,
    agency_name, agency_token, apply, check_envelope, decide, describe, evaluate, event_subject,
    kind, parse_subject, person_ref,
};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{event::Body, *};

use crate::support::*;

use RejectionCode as R;

const SUBJECT: &str = "lianxi.v1.events.womens_federation.C-1";

fn valid() -> Event {
    ev("e-1", WF, "2026-03-02T10:00:00Z", risk(RiskLevel::High, 80))
}

fn envelope_code(subject: &str, e: &Event) -> RejectionCode {
    match check_envelope(subject, e) {
        Ok(()) => panic!("expected a rejection for {subject} / {e:?}"),
        Err(r) => {
            assert!(!r.reason.is_empty());
            r.code
        }
    }
}

#[test]
fn a_valid_event_passes() {
    check_envelope(SUBJECT, &valid()).expect("valid");
    assert_eq!(event_subject(&valid()).expect("subject"), SUBJECT);
}

#[test]
fn subjects() {
    assert_eq!(EVENTS_SUBJECT_PREFIX, "lianxi.v1.events");
    assert_eq!(
        parse_subject(SUBJECT).expect("parse"),
        (WF, "C-1".to_string())
    );
    for bad in [
        "",
        "lianxi.v1.events",
        "lianxi.v1.events.",
        "lianxi.v1.events.police",
        "lianxi.v1.events.police.C-1.extra",
        "lianxi.v2.events.police.C-1",
        "lianxi.v1.eventspolice.C-1",
        "lianxi.v1.events.police.C:1",
        "lianxi.v1.events.police.",
        "lianxi.v1.events.police.*",
    ] {
        assert_eq!(
            parse_subject(bad).map_err(|r| r.code),
            Err(R::BadSubject),
            "{bad}"
        );
    }
    let r = parse_subject("lianxi.v1.events.army.C-1").expect_err("unknown");
    assert_eq!(r.code, R::UnknownAgency);
    assert!(r.reason.contains("army"));
    assert_eq!(
        parse_subject("lianxi.v1.events.unspecified.C-1").map_err(|r| r.code),
        Err(R::UnknownAgency)
    );
    let long = "C".repeat(MAX_ID_LEN);
    assert!(parse_subject(&format!("lianxi.v1.events.court.{long}")).is_ok());
    assert!(parse_subject(&format!("lianxi.v1.events.court.{long}x")).is_err());
}

#[test]
fn agency_tokens_round_trip() {
    let expected = [
        (
            PLC,
            "political_legal_committee",
            "Political-legal committee",
        ),
        (POLICE, "police", "Police"),
        (COURT, "court", "Court"),
        (CIVIL, "civil_affairs", "Civil affairs"),
        (LABOUR, "labour", "Labour"),
        (WF, "womens_federation", "Women's federation"),
        (JUSTICE, "justice_bureau", "Justice bureau"),
    ];
    for (a, token, name) in expected {
        assert_eq!(agency_token(a), Some(token));
        assert_eq!(agency_from_token(token), Some(a));
        assert_eq!(agency_name(a), name);
        let mut e = valid();
        e.agency = a as i32;
        assert_eq!(
            event_subject(&e).expect("subject"),
            format!("lianxi.v1.events.{token}.C-1")
        );
    }
    assert_eq!(agency_token(Agency::Unspecified), None);
    assert_eq!(agency_from_token("unspecified"), None);
    assert_eq!(agency_from_token("Police"), None);
    let mut e = valid();
    e.agency = 0;
    assert_eq!(event_subject(&e).map_err(|r| r.code), Err(R::MissingField));
    e.agency = 999;
    assert_eq!(event_subject(&e).map_err(|r| r.code), Err(R::InvalidField));
    let mut e = valid();
    e.case_id = "a.b".into();
    assert_eq!(event_subject(&e).map_err(|r| r.code), Err(R::InvalidField));
}

#[test]
fn each_structural_failure_has_its_code() {
    let with = |f: &dyn Fn(&mut Event)| {
        let mut e = valid();
        f(&mut e);
        e
    };
    let cases: Vec<(&str, Event, RejectionCode)> = vec![
        ("subject prefix", valid(), R::BadSubject),
        (
            "agency mismatch",
            with(&|e| e.agency = POLICE as i32),
            R::AgencyMismatch,
        ),
        (
            "unknown agency number",
            with(&|e| e.agency = 999),
            R::AgencyMismatch,
        ),
        (
            "case mismatch",
            with(&|e| e.case_id = "C-2".into()),
            R::CaseMismatch,
        ),
        ("no agency", with(&|e| e.agency = 0), R::MissingField),
        ("no case id", with(&|e| e.case_id.clear()), R::MissingField),
        (
            "no event id",
            with(&|e| e.event_id.clear()),
            R::MissingField,
        ),
        (
            "bad event id",
            with(&|e| e.event_id = "e 1".into()),
            R::InvalidField,
        ),
        (
            "slash in event id",
            with(&|e| e.event_id = "e/1".into()),
            R::InvalidField,
        ),
        (
            "long event id",
            with(&|e| e.event_id = "e".repeat(MAX_ID_LEN + 1)),
            R::InvalidField,
        ),
        ("no time", with(&|e| e.occurred_at = None), R::MissingField),
        (
            "1999",
            with(&|e| e.occurred_at = Some(t("1999-12-31T23:59:59Z"))),
            R::InvalidField,
        ),
        (
            "2201",
            with(&|e| e.occurred_at = Some(t("2201-01-01T00:00:00Z"))),
            R::InvalidField,
        ),
        (
            "bad nanos",
            with(&|e| {
                e.occurred_at = Some(Timestamp {
                    seconds: t("2026-03-02T10:00:00Z").seconds,
                    nanos: -1,
                })
            }),
            R::InvalidField,
        ),
        ("no body", with(&|e| e.body = None), R::MissingField),
        (
            "unspecified level",
            with(&|e| e.body = Some(risk(RiskLevel::Unspecified, 1))),
            R::MissingField,
        ),
        (
            "unknown level",
            with(&|e| {
                e.body = Some(Body::RiskAssessed(RiskAssessed {
                    level: 999,
                    score: 1,
                    factors: vec![],
                }))
            }),
            R::InvalidField,
        ),
        (
            "score above 100",
            with(&|e| e.body = Some(risk(RiskLevel::High, 101))),
            R::InvalidField,
        ),
        (
            "too many factors",
            with(&|e| {
                e.body = Some(Body::RiskAssessed(RiskAssessed {
                    level: 1,
                    score: 1,
                    factors: vec!["x".into(); 65],
                }))
            }),
            R::TooLarge,
        ),
        (
            "long text",
            with(&|e| {
                e.body = Some(Body::ProgressReported(ProgressReported {
                    summary: "x".repeat(4097),
                }))
            }),
            R::TooLarge,
        ),
        (
            "blank required text",
            with(&|e| {
                e.body = Some(Body::ProgressReported(ProgressReported {
                    summary: " \n".into(),
                }))
            }),
            R::MissingField,
        ),
        (
            "corrects itself",
            with(&|e| e.corrects_event_id = Some("e-1".into())),
            R::BadCorrection,
        ),
        (
            "bad corrects id",
            with(&|e| e.corrects_event_id = Some(String::new())),
            R::MissingField,
        ),
        (
            "bad body time",
            with(&|e| {
                e.body = Some(Body::CaseListed(CaseListed {
                    meeting_id: "m-1".into(),
                    meeting_at: Some(Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    }),
                }))
            }),
            R::InvalidField,
        ),
        (
            "bad body id",
            with(&|e| e.body = Some(alarm("a/1", Area::Urban))),
            R::InvalidField,
        ),
        (
            "opening without channel",
            with(&|e| e.body = Some(opened(Channel::Unspecified))),
            R::MissingField,
        ),
        (
            "unknown area",
            with(&|e| {
                e.body = Some(Body::AlarmReceived(AlarmReceived {
                    alarm_id: "a-1".into(),
                    area: 7,
                    summary: String::new(),
                }))
            }),
            R::InvalidField,
        ),
    ];
    for (what, e, code) in cases {
        let subject = if what == "subject prefix" {
            "lianxi.events.womens_federation.C-1"
        } else {
            SUBJECT
        };
        assert_eq!(envelope_code(subject, &e), code, "{what}");
    }
    // Exactly 4096 characters and 64 items are fine.
    let e = with(&|e| {
        e.body = Some(Body::ProgressReported(ProgressReported {
            summary: "é".repeat(4096),
        }))
    });
    check_envelope(SUBJECT, &e).expect("4096 characters");
    let e = with(&|e| {
        e.body = Some(Body::RiskAssessed(RiskAssessed {
            level: 1,
            score: 100,
            factors: vec!["x".into(); 64],
        }))
    });
    check_envelope(SUBJECT, &e).expect("64 items");
    let e = with(&|e| e.event_id = "A-z_0.9:x".into());
    check_envelope(SUBJECT, &e).expect("id characters");
}

#[test]
fn decide_repeats_the_structural_checks() {
    let policy = Policy::default();
    let ctx = Context {
        policy: &policy,
        prior_case: None,
    };
    let mut e = opening();
    e.occurred_at = Some(Timestamp {
        seconds: i64::MIN,
        nanos: 0,
    });
    assert_eq!(
        decide(&ctx, None, &e, None).map_err(|r| r.code),
        Err(R::InvalidField)
    );
}

// ------------------------------------------------------------ policy

#[test]
fn policy_defaults_follow_the_domain() {
    let p = Policy::default();
    assert_eq!(p.referral_response_hours, 72);
    assert_eq!(p.order_decision_hours, 72);
    assert_eq!(p.order_decision_urgent_hours, 24);
    assert_eq!(p.order_max_months, 6);
    assert_eq!(p.order_check_hours, 24);
    assert_eq!(p.warning_follow_up_days, 90);
    assert_eq!(p.emergency_placement_hours, 24);
    assert_eq!(p.shelter_stay_days, 10);
    assert_eq!(p.alarm_arrival_urban_minutes, 5);
    assert_eq!(p.alarm_arrival_suburban_minutes, 10);
    assert_eq!(p.petition_acceptance_days, 15);
    assert_eq!(p.petition_handling_days, 60);
    assert_eq!(p.legal_aid_decision_working_days, 7);
    assert_eq!(p.repeat_window_days, 365);
    assert_eq!(Policy::from_toml("").expect("empty"), p);
}

#[test]
fn the_deployed_policy_file_is_the_default() {
    let text = include_str!("../../../../deploy/policy.toml");
    assert_eq!(
        Policy::from_toml(text).expect("deploy/policy.toml"),
        Policy::default()
    );
    // Every key is listed.
    for key in [
        "referral_response_hours",
        "order_decision_hours",
        "order_decision_urgent_hours",
        "order_max_months",
        "order_check_hours",
        "warning_follow_up_days",
        "emergency_placement_hours",
        "shelter_stay_days",
        "alarm_arrival_urban_minutes",
        "alarm_arrival_suburban_minutes",
        "petition_acceptance_days",
        "petition_handling_days",
        "legal_aid_decision_working_days",
        "repeat_window_days",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{key} ="))),
            "{key} missing from deploy/policy.toml"
        );
    }
}

#[test]
fn policy_overrides_change_deadlines() {
    let p = Policy::from_toml("referral_response_hours = 24\norder_decision_urgent_hours = 12\n")
        .expect("policy");
    assert_eq!(p.referral_response_hours, 24);
    assert_eq!(p.order_decision_hours, 72);
    let s = given(vec![]).with_policy(p).given(vec![opening()]);
    let v = s.then_ok(ev(
        "e-r",
        WF,
        "2026-03-02T10:00:00Z",
        refer("r-1", COURT, false),
    ));
    assert_eq!(
        obligation(&v, "referral_response/r-1").due_at,
        Some(t("2026-03-03T10:00:00Z"))
    );
}

#[test]
fn policy_errors_name_the_key_and_the_range() {
    let e = Policy::from_toml("order_max_months = 0").expect_err("zero");
    assert!(matches!(
        e,
        PolicyError::OutOfRange {
            key: "order_max_months",
            value: 0,
            ..
        }
    ));
    let msg = e.to_string();
    assert!(
        msg.contains("order_max_months") && msg.contains("between 1 and 60"),
        "{msg}"
    );
    let e = Policy::from_toml("shelter_stay_days = 100000").expect_err("absurd");
    assert!(e.to_string().contains("shelter_stay_days"));
    let e = Policy::from_toml("referal_response_hours = 3").expect_err("typo");
    assert!(matches!(e, PolicyError::Parse(_)));
    assert!(e.to_string().contains("referal_response_hours"), "{e}");
    let e = Policy::from_toml("order_decision_hours = -1").expect_err("negative");
    assert!(matches!(e, PolicyError::Parse(_)));
    let e = Policy::from_toml("order_decision_hours = \"72\"").expect_err("string");
    assert!(matches!(e, PolicyError::Parse(_)));
    let e =
        Policy::from_toml("order_decision_urgent_hours = 100").expect_err("urgent above normal");
    assert!(matches!(
        e,
        PolicyError::Inconsistent {
            key: "order_decision_urgent_hours",
            ..
        }
    ));
}

// ------------------------------------------------------------ describe

#[test]
fn every_body_has_a_kind_and_a_line_naming_the_agency() {
    let mut kinds = Vec::new();
    for (i, (a, body)) in every_body().into_iter().enumerate() {
        let e = ev(&format!("e-{i}"), a, "2026-03-02T10:00:00Z", body);
        let k = kind(&e);
        assert_ne!(k, "unknown");
        kinds.push(k);
        let line = describe(&e);
        assert!(line.starts_with(agency_name(a)), "{k}: {line}");
        assert!(line.len() > agency_name(a).len() + 5, "{k}: {line}");
        assert!(!line.contains('\n'), "{k}: {line}");
        // Sensitive fields never appear on the timeline.
        for secret in [
            "P-77",
            "shelter 3",
            "R-1",
            "L-9",
            "reported violence at home",
        ] {
            assert!(!line.contains(secret), "{k} leaks {secret}: {line}");
        }
    }
    let mut unique = kinds.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 37, "one kind per body");
    assert_eq!(kind(&Event::default()), "unknown");
    assert!(!describe(&Event::default()).is_empty());
}

#[test]
fn describe_reads_like_the_example() {
    let mut body = refer("r-1", COURT, false);
    if let Body::ReferralIssued(b) = &mut body {
        b.due_at = Some(t("2026-03-04T10:00:00Z"));
    }
    let e = ev("e-1", WF, "2026-03-02T10:00:00Z", body);
    assert_eq!(
        describe(&e),
        "Women's federation referred the case to the court (r-1): needs a protection order; answer due 2026-03-04 10:00 UTC"
    );
    let c = corr("e-2", COURT, "2026-03-02T10:00:00Z", "e-1", accept("r-1"));
    assert_eq!(
        describe(&c),
        "Court corrected event e-1: accepted referral r-1"
    );
    assert_eq!(kind(&e), "referral_issued");
}

#[test]
fn person_ref_only_for_openings() {
    assert_eq!(person_ref(&opening()), Some("P-77"));
    assert_eq!(person_ref(&valid()), None);
    let mut b = open_hotline();
    if let Body::CaseOpened(o) = &mut b {
        o.person_ref.clear();
    }
    assert_eq!(person_ref(&ev("e", WF, "2026-03-02T10:00:00Z", b)), None);
}

#[test]
fn rejections_display_their_code_and_reason() {
    let r = lianxi_domain::Rejection::new(R::UnknownCase, "case C-1 has not been opened");
    assert_eq!(
        r.to_string(),
        "REJECTION_CODE_UNKNOWN_CASE: case C-1 has not been opened"
    );
    let _: &dyn std::error::Error = &r;
}

// ------------------------------------------------------------ adversarial

fn adversarial_events() -> Vec<Event> {
    let times = [
        None,
        Some(Timestamp {
            seconds: i64::MIN,
            nanos: i32::MIN,
        }),
        Some(Timestamp {
            seconds: i64::MAX,
            nanos: i32::MAX,
        }),
        Some(Timestamp {
            seconds: 0,
            nanos: -1,
        }),
        Some(t("2026-03-02T10:00:00Z")),
    ];
    let mut out = Vec::new();
    for (i, (_, body)) in every_body().into_iter().enumerate() {
        for (j, at) in times.iter().enumerate() {
            for agency in [0, 2, 6, 999, -1] {
                out.push(Event {
                    event_id: if j == 0 {
                        String::new()
                    } else {
                        format!("e-{i}-{j}")
                    },
                    case_id: if agency == -1 {
                        String::new()
                    } else {
                        CASE.into()
                    },
                    agency,
                    occurred_at: *at,
                    corrects_event_id: if agency == 6 {
                        Some(String::new())
                    } else {
                        None
                    },
                    body: Some(mangle(body.clone(), at.unwrap_or_default())),
                });
            }
        }
    }
    out.push(Event::default());
    out
}

/// Unknown enum numbers, empty ids and extreme times inside the body.
fn mangle(mut body: Body, at: Timestamp) -> Body {
    match &mut body {
        Body::CaseOpened(b) => {
            b.channel = 999;
            b.level = -5;
        }
        Body::ReferralIssued(b) => {
            b.to_agency = 999;
            b.due_at = Some(at);
            b.referral_id.clear();
        }
        Body::ProtectionOrderDecided(b) => {
            b.expires_at = Some(Timestamp {
                seconds: i64::MAX,
                nanos: 999_999_999,
            });
            b.decision = 999;
        }
        Body::ProtectionOrderChanged(b) => {
            b.new_expires_at = Some(Timestamp {
                seconds: i64::MIN,
                nanos: 0,
            });
        }
        Body::ShelterExtended(b) => b.until = Some(at),
        Body::ActionAgreed(b) => {
            b.owner = 999;
            b.due_at = Some(at);
        }
        Body::CaseListed(b) => b.meeting_at = Some(at),
        Body::ActionReported(b) => b.outcome = -3,
        Body::ConsentRecorded(b) => b.decision = 999,
        _ => {}
    }
    body
}

#[test]
fn nothing_panics_on_adversarial_input() {
    let policy = Policy::from_toml(
        "order_max_months = 60\nlegal_aid_decision_working_days = 365\nrepeat_window_days = 3650",
    )
    .expect("policy");
    let prior = PriorCase {
        case_id: "C-0".into(),
        opened_at: Timestamp {
            seconds: i64::MIN,
            nanos: -7,
        },
    };
    let ctx = Context {
        policy: &policy,
        prior_case: Some(&prior),
    };
    let events = adversarial_events();
    // A view built from the well-formed events, then from everything.
    let mut view = None;
    let meta = EntryMeta {
        global_sequence: u64::MAX,
        case_sequence: u64::MAX,
        recorded_at: Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        },
        sealed: &[],
    };
    for e in &events {
        let _ = check_envelope(SUBJECT, e);
        let _ = check_envelope("lianxi.v1.events.police.C-1", e);
        let _ = event_subject(e);
        let _ = decide(&ctx, None, e, None);
        let _ = decide(&ctx, view.as_ref(), e, Some(e));
        let _ = decide(&ctx, view.as_ref(), e, events.first());
        let _ = describe(e);
        let _ = kind(e);
        let _ = person_ref(e);
        view = Some(apply(&ctx, view, e, &meta));
        let _ = apply(&ctx, None, e, &meta);
    }
    let view = view.expect("view");
    for now in [i64::MIN, 0, i64::MAX] {
        let _ = evaluate(
            &view,
            &Timestamp {
                seconds: now,
                nanos: i32::MAX,
            },
        );
    }
    // And the real rules never accept these events on a fresh case except
    // where they are well-formed.
    let accepted = events
        .iter()
        .filter(|e| decide(&ctx, None, e, None).is_ok())
        .count();
    assert_eq!(accepted, 0, "every adversarial opening is malformed");
    for s in [
        "",
        ".",
        "lianxi.v1.events..",
        "lianxi.v1.events.police..",
        "\u{0}",
        "lianxi.v1.events.police.ü",
    ] {
        assert!(parse_subject(s).is_err(), "{s:?}");
    }
}

#[test]
fn a_mangled_opening_is_rejected_with_a_reason() {
    let mut e = opening();
    e.body = Some(mangle(open_hotline(), Timestamp::default()));
    let r = check_envelope(SUBJECT, &e).expect_err("mangled");
    assert_eq!(r.code, R::InvalidField);
    assert!(r.reason.contains("case_opened.channel"), "{}", r.reason);
}
