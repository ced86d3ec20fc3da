//! Every rejection rule of `decide`, and the acceptance next to it.

use lianxi_proto::v1::{event::Body, *};

use crate::support::*;

use RejectionCode as R;

const T1: &str = "2026-03-02T10:00:00Z";
const T2: &str = "2026-03-02T11:00:00Z";
const T3: &str = "2026-03-02T12:00:00Z";

/// The opening plus a referral from the federation to `a`, accepted.
fn involving(agencies: &[Agency]) -> Vec<Event> {
    let mut events = vec![opening()];
    for (i, a) in agencies.iter().enumerate() {
        let rid = format!("r-inv-{i}");
        events.push(ev(&format!("e-ref-{i}"), WF, T1, refer(&rid, *a, false)));
        events.push(ev(&format!("e-acc-{i}"), *a, T1, accept(&rid)));
    }
    events
}

// ------------------------------------------------------------ case existence

#[test]
fn an_event_for_a_case_never_opened_is_rejected() {
    let r = given(vec![]).then_reject(
        ev("e-1", WF, T1, risk(RiskLevel::High, 80)),
        R::PredecessorMissing,
    );
    assert!(r.reason.contains("has not been opened yet"), "{}", r.reason);
    assert!(r.reason.contains(CASE));
}

#[test]
fn a_case_cannot_be_opened_twice() {
    given(vec![opening()]).then_reject(ev("e-2", POLICE, T1, open_hotline()), R::CaseExists);
}

#[test]
fn a_correction_of_an_opening_needs_the_case() {
    given(vec![]).then_reject(
        corr("e-2", WF, T1, "e-open", open_hotline()),
        R::PredecessorMissing,
    );
}

#[test]
fn a_closed_case_rejects_everything_but_reopening() {
    let s = || given(vec![opening(), ev("e-c", WF, T1, closed())]);
    let r = s().then_reject(ev("e-2", WF, T2, risk(RiskLevel::High, 80)), R::CaseClosed);
    assert!(r.reason.contains("reopen"));
    s().then_reject(
        ev("e-2", PLC, T2, listed("m-1", "2026-03-10T09:00:00Z")),
        R::CaseClosed,
    );
    // A correction does not reopen either.
    s().then_reject(corr("e-2", WF, T2, "e-open", open_hotline()), R::CaseClosed);
    s().then_ok(ev("e-2", WF, T2, reopened()));
}

// ------------------------------------------------------------ who may emit

#[test]
fn agency_specific_bodies_are_not_permitted_to_other_agencies() {
    let all = [POLICE, COURT, CIVIL, LABOUR, JUSTICE];
    let cases: Vec<(Agency, Body, &str)> = vec![
        (COURT, alarm("a-1", Area::Urban), "the police"),
        (COURT, dispatched("a-1"), "the police"),
        (COURT, arrived("a-1"), "the police"),
        (COURT, disposed("a-1"), "the police"),
        (WF, warning("w-1"), "the police"),
        (WF, visit("w-1"), "the police"),
        (COURT, checked("o-1"), "the police"),
        (COURT, violated("o-1"), "the police"),
        (
            POLICE,
            granted("app-1", "o-1", "2026-06-01T00:00:00Z"),
            "the court",
        ),
        (
            POLICE,
            changed("o-1", OrderChange::Revoked, None),
            "the court",
        ),
        (WF, hearing("h-1"), "the court"),
        (WF, judgment(), "the court"),
        (
            CIVIL,
            applied("app-1", false),
            "the court, the police or the women's federation",
        ),
        (LABOUR, admitted("p-1", false), "civil affairs"),
        (
            LABOUR,
            extended("p-1", "2026-04-01T00:00:00Z"),
            "civil affairs",
        ),
        (LABOUR, exited("p-1"), "civil affairs"),
        (POLICE, marriage(), "civil affairs"),
        (POLICE, inspection("i-1"), "labour"),
        (POLICE, labour_violation("i-1"), "labour"),
        (COURT, aid_applied("la-1"), "the justice bureau"),
        (COURT, aid_decided("la-1", true), "the justice bureau"),
        (COURT, lawyer("la-1"), "the justice bureau"),
        (
            WF,
            listed("m-1", "2026-03-10T09:00:00Z"),
            "the political-legal committee",
        ),
        (WF, held("m-1"), "the political-legal committee"),
        (
            WF,
            action("x-1", POLICE, "2026-03-20T00:00:00Z"),
            "the political-legal committee",
        ),
    ];
    for (i, (agency, body, allowed)) in cases.into_iter().enumerate() {
        let kind = lianxi_domain::kind(&ev("x", agency, T2, body.clone()));
        let r = given(involving(&all))
            .then_reject(ev(&format!("e-x{i}"), agency, T2, body), R::NotPermitted);
        assert!(r.reason.contains(allowed), "{kind}: {}", r.reason);
        assert!(r.reason.contains(kind), "{kind}: {}", r.reason);
    }
}

#[test]
fn the_three_applicant_agencies_may_apply_for_an_order() {
    for a in [COURT, POLICE, WF] {
        let v =
            given(involving(&[COURT, POLICE])).then_ok(ev("e-x", a, T2, applied("app-1", false)));
        assert_eq!(obligation(&v, "order_decision/app-1").owner, COURT as i32);
    }
}

// ------------------------------------------------------------ involvement

#[test]
fn an_agency_not_involved_may_not_emit() {
    // The same answer as for a case not opened yet (no existence oracle).
    let r = given(vec![opening()]).then_reject(
        ev("e-1", POLICE, T1, alarm("a-1", Area::Urban)),
        R::PredecessorMissing,
    );
    assert_eq!(
        r.reason,
        "case C-1 is not open to the police: it has not been opened yet, or the police is not involved in it; if its opening or a referral to the police is on its way, publish this event again once that is stored (the client library does so by itself), otherwise ask the lead agency to refer the case"
    );
}

#[test]
fn the_committee_is_always_involved() {
    given(vec![opening()]).then_ok(ev("e-1", PLC, T1, risk(RiskLevel::High, 90)));
}

#[test]
fn a_referral_target_is_involved_until_it_returns_the_referral() {
    let base = vec![opening(), ev("e-r", WF, T1, refer("r-1", POLICE, false))];
    given(base.clone()).then_ok(ev("e-1", POLICE, T2, alarm("a-1", Area::Urban)));
    let mut returned = base;
    returned.push(ev("e-ret", POLICE, T2, ret("r-1")));
    given(returned).then_reject(
        ev("e-1", POLICE, T3, alarm("a-1", Area::Urban)),
        R::PredecessorMissing,
    );
}

#[test]
fn an_action_owner_is_involved() {
    let v = given(vec![
        opening(),
        ev(
            "e-a",
            PLC,
            T1,
            action("x-1", LABOUR, "2026-03-20T00:00:00Z"),
        ),
    ])
    .then_ok(ev("e-1", LABOUR, T2, inspection("i-1")));
    assert_eq!(
        involvement(&v, LABOUR).state,
        InvolvementState::InProgress as i32
    );
}

#[test]
fn the_court_is_involved_by_an_application_filed_with_it() {
    given(
        involving(&[POLICE])
            .into_iter()
            .chain([ev("e-app", POLICE, T2, applied("app-1", false))])
            .collect(),
    )
    .then_ok(ev("e-d", COURT, T3, rejected("app-1")));
}

// ------------------------------------------------------------ referrals

#[test]
fn referral_rules() {
    let base = || {
        given(vec![
            opening(),
            ev("e-r", WF, T1, refer("r-1", COURT, false)),
        ])
    };
    base().then_reject(ev("e-2", WF, T2, refer("r-1", POLICE, false)), R::Conflict);
    base().then_reject(ev("e-2", WF, T2, refer("r-2", WF, false)), R::InvalidField);
    let mut unknown = refer("r-2", POLICE, false);
    if let Body::ReferralIssued(b) = &mut unknown {
        b.to_agency = 999;
    }
    base().then_reject(ev("e-2", WF, T2, unknown), R::InvalidField);
    let mut unspecified = refer("r-2", POLICE, false);
    if let Body::ReferralIssued(b) = &mut unspecified {
        b.to_agency = 0;
    }
    base().then_reject(ev("e-2", WF, T2, unspecified), R::MissingField);
    let mut early = refer("r-2", POLICE, false);
    if let Body::ReferralIssued(b) = &mut early {
        b.due_at = Some(t("2026-03-01T00:00:00Z"));
    }
    base().then_reject(ev("e-2", WF, T2, early), R::InvalidField);
    // Only the target answers.
    let r = base().then_reject(ev("e-2", WF, T2, accept("r-1")), R::NotPermitted);
    assert!(
        r.reason.contains("only the court may accept it"),
        "{}",
        r.reason
    );
    base().then_reject(ev("e-2", WF, T2, ret("r-1")), R::NotPermitted);
    // Unknown id.
    let r = base().then_reject(ev("e-2", COURT, T2, accept("r-9")), R::PredecessorMissing);
    assert_eq!(
        r.reason,
        "referral r-9 does not exist in case C-1 yet; once its referral_issued is stored, publish this event again (the client library does so by itself); if no such event was sent, check the referral id"
    );
    // Only once.
    let answered = || base().given(vec![ev("e-a", COURT, T2, accept("r-1"))]);
    answered().then_reject(ev("e-3", COURT, T3, accept("r-1")), R::AlreadyDone);
    answered().then_reject(ev("e-3", COURT, T3, ret("r-1")), R::AlreadyDone);
    // A return needs a reason.
    base().then_reject(
        ev(
            "e-2",
            COURT,
            T2,
            Body::ReferralReturned(ReferralReturned {
                referral_id: "r-1".into(),
                reason: " ".into(),
            }),
        ),
        R::MissingField,
    );
}

// ------------------------------------------------------------ protection orders

fn with_application(urgent: bool) -> Scenario {
    given(
        involving(&[COURT, POLICE])
            .into_iter()
            .chain([ev("e-app", WF, T2, applied("app-1", urgent))])
            .collect(),
    )
}

fn with_order() -> Scenario {
    with_application(false).given(vec![ev(
        "e-dec",
        COURT,
        T3,
        granted("app-1", "o-1", "2026-06-01T00:00:00Z"),
    )])
}

#[test]
fn order_application_and_decision_rules() {
    with_application(false).then_reject(ev("e-x", WF, T3, applied("app-1", false)), R::Conflict);
    with_application(false).then_reject(
        ev(
            "e-x",
            COURT,
            T3,
            granted("app-9", "o-1", "2026-06-01T00:00:00Z"),
        ),
        R::PredecessorMissing,
    );
    with_order().then_reject(ev("e-x", COURT, T3, rejected("app-1")), R::AlreadyDone);
    with_order()
        .given(vec![ev("e-app2", WF, T3, applied("app-2", false))])
        .then_reject(
            ev(
                "e-x",
                COURT,
                T3,
                granted("app-2", "o-1", "2026-06-01T00:00:00Z"),
            ),
            R::Conflict,
        );
    let mut no_order_id = granted("app-1", "", "2026-06-01T00:00:00Z");
    with_application(false).then_reject(ev("e-x", COURT, T3, no_order_id.clone()), R::MissingField);
    if let Body::ProtectionOrderDecided(b) = &mut no_order_id {
        b.order_id = "o-1".into();
        b.expires_at = None;
    }
    with_application(false).then_reject(ev("e-x", COURT, T3, no_order_id), R::MissingField);
    with_application(false).then_reject(
        ev(
            "e-x",
            COURT,
            T3,
            granted("app-1", "o-1", "2026-03-01T00:00:00Z"),
        ),
        R::InvalidField,
    );
    let r = with_application(false).then_reject(
        ev(
            "e-x",
            COURT,
            T3,
            granted("app-1", "o-1", "2026-09-02T12:00:01Z"),
        ),
        R::InvalidField,
    );
    assert!(r.reason.contains("6 months"), "{}", r.reason);
    with_application(false).then_ok(ev(
        "e-x",
        COURT,
        T3,
        granted("app-1", "o-1", "2026-09-02T12:00:00Z"),
    ));
}

#[test]
fn the_six_month_limit_counts_calendar_months() {
    // Decided on 31 August: six months later is the last day of February.
    let s = || {
        given(
            involving(&[COURT])
                .into_iter()
                .chain([ev(
                    "e-app",
                    WF,
                    "2026-08-31T08:00:00Z",
                    applied("app-1", false),
                )])
                .collect(),
        )
    };
    s().then_ok(ev(
        "e-x",
        COURT,
        "2026-08-31T10:00:00Z",
        granted("app-1", "o-1", "2027-02-28T10:00:00Z"),
    ));
    s().then_reject(
        ev(
            "e-x",
            COURT,
            "2026-08-31T10:00:00Z",
            granted("app-1", "o-1", "2027-03-01T10:00:00Z"),
        ),
        R::InvalidField,
    );
    let strict = Policy::from_toml("order_max_months = 3").expect("policy");
    s().with_policy(strict).then_reject(
        ev(
            "e-x",
            COURT,
            "2026-08-31T10:00:00Z",
            granted("app-1", "o-1", "2027-01-01T00:00:00Z"),
        ),
        R::InvalidField,
    );
}

#[test]
fn order_change_check_and_violation_rules() {
    for body in [
        changed("o-9", OrderChange::Reviewed, None),
        changed("o-9", OrderChange::Revoked, None),
    ] {
        with_order().then_reject(ev("e-x", COURT, T3, body), R::PredecessorMissing);
    }
    with_order().then_reject(ev("e-x", POLICE, T3, checked("o-9")), R::PredecessorMissing);
    with_order().then_reject(
        ev("e-x", POLICE, T3, violated("o-9")),
        R::PredecessorMissing,
    );
    with_order().then_reject(
        ev(
            "e-x",
            COURT,
            T3,
            changed("o-1", OrderChange::Extended, None),
        ),
        R::MissingField,
    );
    with_order().then_reject(
        ev(
            "e-x",
            COURT,
            T3,
            changed("o-1", OrderChange::Unspecified, None),
        ),
        R::MissingField,
    );
    // Beyond six months of the change.
    with_order().then_reject(
        ev(
            "e-x",
            COURT,
            "2026-05-01T00:00:00Z",
            changed("o-1", OrderChange::Extended, Some("2026-11-01T00:00:01Z")),
        ),
        R::InvalidField,
    );
    // Not later than the current expiry.
    with_order().then_reject(
        ev(
            "e-x",
            COURT,
            "2026-05-01T00:00:00Z",
            changed("o-1", OrderChange::Extended, Some("2026-05-20T00:00:00Z")),
        ),
        R::InvalidField,
    );
    let v = with_order().then_ok(ev(
        "e-x",
        COURT,
        "2026-05-01T00:00:00Z",
        changed("o-1", OrderChange::Extended, Some("2026-11-01T00:00:00Z")),
    ));
    assert_eq!(v.orders[0].expires_at, Some(t("2026-11-01T00:00:00Z")));
    let revoked = || {
        with_order().given(vec![ev(
            "e-rev",
            COURT,
            "2026-04-01T00:00:00Z",
            changed("o-1", OrderChange::Revoked, None),
        )])
    };
    revoked().then_reject(
        ev(
            "e-x",
            COURT,
            "2026-04-02T00:00:00Z",
            changed("o-1", OrderChange::Reviewed, None),
        ),
        R::Conflict,
    );
    revoked().then_reject(
        ev(
            "e-x",
            COURT,
            "2026-04-02T00:00:00Z",
            changed("o-1", OrderChange::Revoked, None),
        ),
        R::Conflict,
    );
    revoked().then_reject(
        ev(
            "e-x",
            COURT,
            "2026-04-02T00:00:00Z",
            changed("o-1", OrderChange::Extended, Some("2026-07-01T00:00:00Z")),
        ),
        R::Conflict,
    );
}

// ------------------------------------------------------------ police

#[test]
fn police_references_must_exist() {
    let s = || {
        given(
            involving(&[POLICE])
                .into_iter()
                .chain([
                    ev("e-al", POLICE, T2, alarm("a-1", Area::Urban)),
                    ev("e-w", POLICE, T2, warning("w-1")),
                ])
                .collect(),
        )
    };
    for body in [
        dispatched("a-9"),
        arrived("a-9"),
        disposed("a-9"),
        visit("w-9"),
    ] {
        s().then_reject(ev("e-x", POLICE, T3, body), R::PredecessorMissing);
    }
    for body in [
        dispatched("a-1"),
        arrived("a-1"),
        disposed("a-1"),
        visit("w-1"),
    ] {
        s().then_ok(ev("e-x", POLICE, T3, body));
    }
    s().then_reject(
        ev("e-x", POLICE, T3, alarm("a-1", Area::Suburban)),
        R::Conflict,
    );
    s().then_reject(ev("e-x", POLICE, T3, warning("w-1")), R::Conflict);
}

// ------------------------------------------------------------ civil affairs

#[test]
fn shelter_rules() {
    let s = || {
        given(
            involving(&[CIVIL])
                .into_iter()
                .chain([ev("e-adm", CIVIL, T2, admitted("p-1", true))])
                .collect(),
        )
    };
    s().then_reject(ev("e-x", CIVIL, T3, admitted("p-1", false)), R::Conflict);
    s().then_reject(
        ev("e-x", CIVIL, T3, extended("p-9", "2026-03-20T00:00:00Z")),
        R::PredecessorMissing,
    );
    s().then_reject(ev("e-x", CIVIL, T3, exited("p-9")), R::PredecessorMissing);
    s().then_reject(
        ev("e-x", CIVIL, T3, extended("p-1", "2026-03-01T00:00:00Z")),
        R::InvalidField,
    );
    let gone = || s().given(vec![ev("e-ex", CIVIL, T3, exited("p-1"))]);
    gone().then_reject(ev("e-x", CIVIL, T3, exited("p-1")), R::AlreadyDone);
    gone().then_reject(
        ev("e-x", CIVIL, T3, extended("p-1", "2026-03-20T00:00:00Z")),
        R::AlreadyDone,
    );
    // Extended twice, then exited: the placement stays open until the exit.
    s().given(vec![
        ev("e-x1", CIVIL, T3, extended("p-1", "2026-03-20T00:00:00Z")),
        ev(
            "e-x2",
            CIVIL,
            "2026-03-19T00:00:00Z",
            extended("p-1", "2026-03-30T00:00:00Z"),
        ),
    ])
    .then_ok(ev("e-x3", CIVIL, "2026-03-29T00:00:00Z", exited("p-1")));
    s().then_reject(
        ev(
            "e-x",
            CIVIL,
            T3,
            Body::MarriageRegistrationFlagged(MarriageRegistrationFlagged {
                concern: 0,
                note: String::new(),
            }),
        ),
        R::MissingField,
    );
}

// ------------------------------------------------------------ labour

#[test]
fn labour_inspection_and_violation() {
    let s = || given(involving(&[LABOUR]));
    let inspected = || s().given(vec![ev("e-i", LABOUR, T2, inspection("i-1"))]);
    let v = inspected().then_ok(ev("e-x", LABOUR, T3, labour_violation("i-1")));
    assert_eq!(status(&v), CoordinatedStatus::InProgress);
    let mut unknown = labour_violation("i-1");
    if let Body::LabourViolationFound(b) = &mut unknown {
        b.violation = 999;
    }
    s().then_reject(ev("e-x", LABOUR, T3, unknown), R::InvalidField);
}

#[test]
fn a_labour_violation_needs_an_existing_inspection() {
    let s = || given(involving(&[LABOUR]));
    // Given no inspection, when a violation is reported, then it is refused.
    let r = s().then_reject(
        ev("e-x", LABOUR, T3, labour_violation("i-1")),
        R::PredecessorMissing,
    );
    assert!(
        r.reason.contains("labour inspection i-1 does not exist"),
        "{}",
        r.reason
    );
    // Given inspection i-1, a violation in another inspection is refused too.
    let inspected = || s().given(vec![ev("e-i", LABOUR, T2, inspection("i-1"))]);
    inspected().then_reject(
        ev("e-x", LABOUR, T3, labour_violation("i-2")),
        R::PredecessorMissing,
    );
    // An inspection id is opened once.
    inspected().then_reject(ev("e-x", LABOUR, T3, inspection("i-1")), R::Conflict);
    inspected().then_ok(ev("e-x", LABOUR, T3, inspection("i-2")));
    // A correction of the opening keeps the inspection and its violations.
    let mut other_employer = inspection("i-1");
    if let Body::LabourInspectionOpened(b) = &mut other_employer {
        b.employer = "farm".into();
    }
    let v = inspected()
        .given(vec![ev("e-v", LABOUR, T3, labour_violation("i-1"))])
        .then_ok(corr("e-c", LABOUR, T3, "e-i", other_employer));
    assert_eq!(v.inspections.len(), 1);
    assert_eq!(v.inspections[0].employer, "farm");
    assert_eq!(v.inspections[0].violations, [Violation::ChildLabour as i32]);
}

// ------------------------------------------------------------ legal aid

#[test]
fn legal_aid_rules() {
    let s = || {
        given(
            involving(&[JUSTICE])
                .into_iter()
                .chain([ev("e-la", JUSTICE, T2, aid_applied("la-1"))])
                .collect(),
        )
    };
    s().then_reject(ev("e-x", JUSTICE, T3, aid_applied("la-1")), R::Conflict);
    s().then_reject(
        ev("e-x", JUSTICE, T3, aid_decided("la-9", true)),
        R::PredecessorMissing,
    );
    s().then_reject(
        ev("e-x", JUSTICE, T3, lawyer("la-9")),
        R::PredecessorMissing,
    );
    // A lawyer before the decision only waits for the decision.
    s().then_reject(
        ev("e-x", JUSTICE, T3, lawyer("la-1")),
        R::PredecessorMissing,
    );
    let decided = |granted| s().given(vec![ev("e-d", JUSTICE, T3, aid_decided("la-1", granted))]);
    decided(true).then_reject(
        ev("e-x", JUSTICE, T3, aid_decided("la-1", false)),
        R::AlreadyDone,
    );
    let r = decided(false).then_reject(ev("e-x", JUSTICE, T3, lawyer("la-1")), R::Conflict);
    assert!(r.reason.contains("refused"));
    decided(true).then_ok(ev("e-x", JUSTICE, T3, lawyer("la-1")));
    // A second lawyer (a replacement) may be assigned on the same grant.
    decided(true)
        .given(vec![ev("e-l", JUSTICE, T3, lawyer("la-1"))])
        .then_ok(ev("e-x", JUSTICE, T3, lawyer("la-1")));
    s().then_reject(
        ev(
            "e-x",
            JUSTICE,
            T3,
            Body::LawyerAssigned(LawyerAssigned {
                application_id: "la-1".into(),
                lawyer_ref: String::new(),
            }),
        ),
        R::MissingField,
    );
}

// ------------------------------------------------------------ joint meeting

#[test]
fn action_rules() {
    let s = || {
        given(
            involving(&[POLICE, COURT])
                .into_iter()
                .chain([ev(
                    "e-a",
                    PLC,
                    T2,
                    action("x-1", POLICE, "2026-03-20T00:00:00Z"),
                )])
                .collect(),
        )
    };
    s().then_reject(
        ev("e-x", PLC, T3, action("x-1", COURT, "2026-03-20T00:00:00Z")),
        R::Conflict,
    );
    s().then_reject(
        ev(
            "e-x",
            PLC,
            T3,
            action("x-2", Agency::Unspecified, "2026-03-20T00:00:00Z"),
        ),
        R::MissingField,
    );
    let mut odd = action("x-2", COURT, "2026-03-20T00:00:00Z");
    if let Body::ActionAgreed(b) = &mut odd {
        b.owner = 999;
    }
    s().then_reject(ev("e-x", PLC, T3, odd.clone()), R::InvalidField);
    if let Body::ActionAgreed(b) = &mut odd {
        b.owner = COURT as i32;
        b.due_at = None;
    }
    s().then_reject(ev("e-x", PLC, T3, odd), R::MissingField);
    s().then_reject(
        ev("e-x", PLC, T3, action("x-2", COURT, "2026-03-02T11:00:00Z")),
        R::InvalidField,
    );
    let r = s().then_reject(
        ev("e-x", COURT, T3, reported("x-1", ActionOutcome::Done)),
        R::NotPermitted,
    );
    assert!(r.reason.contains("owned by the police"), "{}", r.reason);
    s().then_reject(
        ev("e-x", POLICE, T3, reported("x-9", ActionOutcome::Done)),
        R::PredecessorMissing,
    );
    s().then_reject(
        ev(
            "e-x",
            POLICE,
            T3,
            reported("x-1", ActionOutcome::Unspecified),
        ),
        R::MissingField,
    );
    s().given(vec![ev(
        "e-rep",
        POLICE,
        T3,
        reported("x-1", ActionOutcome::NotPossible),
    )])
    .then_reject(
        ev("e-x", POLICE, T3, reported("x-1", ActionOutcome::Done)),
        R::AlreadyDone,
    );
}

#[test]
fn a_legal_aid_decision_is_corrected_on_its_record() {
    let s = || {
        given(
            involving(&[JUSTICE])
                .into_iter()
                .chain([
                    ev("e-la", JUSTICE, T2, aid_applied("la-1")),
                    ev("e-d", JUSTICE, T3, aid_decided("la-1", true)),
                ])
                .collect(),
        )
    };
    // Given a grant, a correction to a refusal is recorded, and then no
    // lawyer can be assigned.
    let refused = s().given(vec![corr(
        "e-c",
        JUSTICE,
        T3,
        "e-d",
        aid_decided("la-1", false),
    )]);
    let app = &refused.view().legal_aid[0];
    assert!(app.decided && !app.granted);
    assert_eq!(app.decided_at, Some(t(T3)));
    refused.then_reject(ev("e-x", JUSTICE, T3, lawyer("la-1")), R::Conflict);
    // Given a lawyer assigned on the grant, the grant can no longer be
    // corrected to a refusal, but it can be restated.
    let assigned = || s().given(vec![ev("e-l", JUSTICE, T3, lawyer("la-1"))]);
    let r = assigned().then_reject(
        corr("e-c", JUSTICE, T3, "e-d", aid_decided("la-1", false)),
        R::Conflict,
    );
    assert!(
        r.reason.contains("a lawyer has been assigned"),
        "{}",
        r.reason
    );
    assigned().then_ok(corr("e-c", JUSTICE, T3, "e-d", aid_decided("la-1", true)));
}

#[test]
fn meeting_rules() {
    let s = || {
        given(vec![
            opening(),
            ev("e-l", PLC, T1, listed("m-1", "2026-03-10T09:00:00Z")),
        ])
    };
    let r = s().then_reject(ev("e-x", PLC, T2, held("m-2")), R::PredecessorMissing);
    assert!(r.reason.contains("not listed for meeting m-2"));
    s().then_reject(
        ev("e-x", PLC, T2, listed("m-1", "2026-03-10T09:00:00Z")),
        R::AlreadyDone,
    );
    let after_meeting = || s().given(vec![ev("e-h", PLC, "2026-03-10T10:00:00Z", held("m-1"))]);
    let r = after_meeting().then_reject(
        ev("e-x", PLC, "2026-03-10T11:00:00Z", held("m-1")),
        R::AlreadyDone,
    );
    assert!(
        r.reason
            .contains("already been recorded as held on 2026-03-10 10:00 UTC"),
        "{}",
        r.reason
    );
    // A meeting that has been held cannot be listed for again.
    let r = after_meeting().then_reject(
        ev(
            "e-x",
            PLC,
            "2026-03-10T11:00:00Z",
            listed("m-1", "2026-03-20T09:00:00Z"),
        ),
        R::AlreadyDone,
    );
    assert!(r.reason.contains("already been held"), "{}", r.reason);
    after_meeting().then_ok(ev(
        "e-x",
        PLC,
        "2026-03-10T11:00:00Z",
        listed("m-2", "2026-03-20T09:00:00Z"),
    ));
    let mut no_time = listed("m-2", "2026-03-10T09:00:00Z");
    if let Body::CaseListed(b) = &mut no_time {
        b.meeting_at = None;
    }
    s().then_reject(ev("e-x", PLC, T2, no_time), R::MissingField);
    s().then_reject(
        ev(
            "e-x",
            WF,
            T2,
            Body::CaseEscalated(CaseEscalated {
                criterion: 0,
                reason: String::new(),
            }),
        ),
        R::MissingField,
    );
}

#[test]
fn sharing_without_consent_needs_a_rationale() {
    let r = given(vec![opening()]).then_reject(ev("e-x", WF, T1, shared("  ")), R::MissingField);
    assert!(r.reason.contains("rationale"));
    given(vec![opening()]).then_reject(
        ev("e-x", WF, T1, consent(ConsentDecision::Unspecified)),
        R::MissingField,
    );
}

// ------------------------------------------------------------ closing

#[test]
fn closing_rules() {
    let s = || {
        given(
            involving(&[COURT])
                .into_iter()
                .chain([
                    ev("e-r", WF, T2, refer("r-1", POLICE, false)),
                    ev(
                        "e-a",
                        PLC,
                        T2,
                        action("x-1", JUSTICE, "2026-03-20T00:00:00Z"),
                    ),
                ])
                .collect(),
        )
    };
    // Court is involved but is not the lead.
    let r = s().then_reject(ev("e-x", COURT, T3, closed()), R::NotPermitted);
    assert!(r.reason.contains("only the lead agency"), "{}", r.reason);
    let r = s().then_reject(ev("e-x", WF, T3, closed()), R::Conflict);
    assert!(
        r.reason
            .contains("referral r-1 awaits an answer from the police"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("action x-1"), "{}", r.reason);
    let v = s().then_ok(ev("e-x", PLC, T3, closed()));
    assert_eq!(status(&v), CoordinatedStatus::Closed);
    // Once the referral is answered and the action reported, the lead may close.
    s().given(vec![
        ev("e-ret", POLICE, T3, ret("r-1")),
        ev("e-rep", JUSTICE, T3, reported("x-1", ActionOutcome::Done)),
    ])
    .then_ok(ev("e-x", WF, T3, closed()));
    s().then_reject(
        ev(
            "e-x",
            WF,
            T3,
            Body::CaseClosed(CaseClosed {
                outcome: 0,
                summary: String::new(),
            }),
        ),
        R::MissingField,
    );
}

#[test]
fn reopening_rules() {
    given(vec![opening()]).then_reject(ev("e-x", WF, T1, reopened()), R::Conflict);
    let s = || {
        given(
            involving(&[COURT])
                .into_iter()
                .chain([ev("e-c", WF, T2, closed())])
                .collect(),
        )
    };
    s().then_reject(ev("e-x", COURT, T3, reopened()), R::NotPermitted);
    s().then_reject(
        ev(
            "e-x",
            WF,
            T3,
            Body::CaseReopened(CaseReopened {
                reason: String::new(),
            }),
        ),
        R::MissingField,
    );
    let v = s().then_ok(ev("e-x", PLC, T3, reopened()));
    assert_eq!(v.reopened, 1);
    assert!(v.closed_at.is_none());
    assert_eq!(v.closure_outcome, 0);
}

#[test]
fn lead_transfer_moves_the_right_to_close() {
    let s = || {
        given(vec![
            opening(),
            ev("e-r", WF, T1, refer("r-1", COURT, true)),
            ev("e-a", COURT, T2, accept("r-1")),
        ])
    };
    s().then_reject(ev("e-x", WF, T3, closed()), R::NotPermitted);
    s().then_ok(ev("e-x", COURT, T3, closed()));
}

// ------------------------------------------------------------ corrections

#[test]
fn correction_rules() {
    let s = || {
        given(
            involving(&[COURT])
                .into_iter()
                .chain([ev("e-risk", WF, T2, risk(RiskLevel::Medium, 50))])
                .collect(),
        )
    };
    let r = s().then_reject(
        corr("e-x", WF, T3, "e-nope", risk(RiskLevel::High, 90)),
        R::PredecessorMissing,
    );
    assert!(r.reason.contains("e-nope"));
    let r = s().then_reject(
        corr("e-x", COURT, T3, "e-risk", risk(RiskLevel::High, 90)),
        R::BadCorrection,
    );
    assert!(
        r.reason
            .contains("only the agency that sent an event may correct it"),
        "{}",
        r.reason
    );
    let r = s().then_reject(corr("e-x", WF, T3, "e-risk", progress()), R::BadCorrection);
    assert!(r.reason.contains("same kind"), "{}", r.reason);
    // The same id in another case.
    let mut other = s();
    if let Some(e) = other.log.iter_mut().find(|e| e.event_id == "e-risk") {
        e.case_id = "C-2".into();
    }
    other.then_reject(
        corr("e-x", WF, T3, "e-risk", risk(RiskLevel::High, 90)),
        R::BadCorrection,
    );
    s().then_reject(
        corr("e-x", WF, T3, "e-x", risk(RiskLevel::High, 90)),
        R::BadCorrection,
    );
    // A correction may not change the record it is about.
    s().then_reject(
        corr("e-x", WF, T3, "e-ref-0", refer("r-other", COURT, false)),
        R::BadCorrection,
    );
    s().then_reject(
        corr("e-x", WF, T3, "e-ref-0", refer("r-inv-0", POLICE, false)),
        R::BadCorrection,
    );
    let v = s().then_ok(corr("e-x", WF, T3, "e-risk", risk(RiskLevel::High, 90)));
    assert!(flags(&v).high_risk);
    assert_eq!(flags(&v).risk_score, 90);
}

#[test]
fn a_correction_skips_the_once_only_rules() {
    let s = given(involving(&[COURT]));
    // Accepting twice is refused, but correcting the acceptance is not.
    let v = s.then_ok(corr("e-x", COURT, T3, "e-acc-0", accept("r-inv-0")));
    assert_eq!(v.referrals[0].state, InvolvementState::Accepted as i32);
    let s = with_order().given(vec![ev(
        "e-v",
        POLICE,
        "2026-03-03T00:00:00Z",
        violated("o-1"),
    )]);
    let v = s.then_ok(corr(
        "e-x",
        POLICE,
        "2026-03-03T01:00:00Z",
        "e-v",
        violated("o-1"),
    ));
    assert_eq!(
        v.orders[0].violations, 1,
        "a corrected violation is not counted twice"
    );
}

#[test]
fn a_correction_of_a_decision_must_keep_the_decision_and_the_term() {
    let s = || with_order();
    s().then_reject(
        corr(
            "e-x",
            COURT,
            "2026-03-03T00:00:00Z",
            "e-dec",
            rejected("app-1"),
        ),
        R::BadCorrection,
    );
    s().then_reject(
        corr(
            "e-x",
            COURT,
            "2026-03-03T00:00:00Z",
            "e-dec",
            granted("app-1", "o-2", "2026-06-01T00:00:00Z"),
        ),
        R::BadCorrection,
    );
    s().then_reject(
        corr(
            "e-x",
            COURT,
            "2026-03-03T00:00:00Z",
            "e-dec",
            granted("app-1", "o-1", "2026-12-01T00:00:00Z"),
        ),
        R::InvalidField,
    );
    let v = s().then_ok(corr(
        "e-x",
        COURT,
        "2026-03-03T00:00:00Z",
        "e-dec",
        granted("app-1", "o-1", "2026-07-01T00:00:00Z"),
    ));
    assert_eq!(v.orders.len(), 1);
    assert_eq!(v.orders[0].expires_at, Some(t("2026-07-01T00:00:00Z")));
    assert_eq!(
        flags(&v).protection_order_expires_at,
        Some(t("2026-07-01T00:00:00Z"))
    );
}

#[test]
fn a_correction_of_the_opening_overwrites_facts_but_not_the_person() {
    let mut b = open_hotline();
    if let Body::CaseOpened(o) = &mut b {
        o.category = Category::Custody as i32;
        o.jurisdiction = "city/county-9".into();
        o.person_ref = "P-OTHER".into();
        o.summary = "custody dispute".into();
    }
    let e = corr("e-x", WF, T1, "e-open", b);
    assert_eq!(lianxi_domain::person_ref(&e), None);
    let v = given(vec![opening()]).then_ok(e);
    assert_eq!(v.category, Category::Custody as i32);
    assert_eq!(v.jurisdiction, "city/county-9");
    assert_eq!(v.summary, "custody dispute");
    assert!(v.person_ref.is_empty());
    assert_eq!(v.opened_at, Some(t("2026-03-02T09:00:00Z")));
}

#[test]
fn corrections_of_actions_and_referrals_overwrite_their_records() {
    let s = given(vec![
        opening(),
        ev(
            "e-a",
            PLC,
            T1,
            action("x-1", POLICE, "2026-03-20T00:00:00Z"),
        ),
        ev("e-r", WF, T1, refer("r-1", COURT, false)),
    ]);
    let v = s
        .given(vec![corr(
            "e-a2",
            PLC,
            T2,
            "e-a",
            action("x-1", POLICE, "2026-03-25T00:00:00Z"),
        )])
        .then_ok(corr(
            "e-r2",
            WF,
            T2,
            "e-r",
            Body::ReferralIssued(ReferralIssued {
                referral_id: "r-1".into(),
                to_agency: COURT as i32,
                reason: "needs custody advice".into(),
                due_at: Some(t("2026-03-10T00:00:00Z")),
                transfer_lead: true,
            }),
        ));
    assert_eq!(v.actions[0].due_at, Some(t("2026-03-25T00:00:00Z")));
    assert_eq!(
        obligation(&v, "meeting_action/x-1").due_at,
        Some(t("2026-03-25T00:00:00Z"))
    );
    assert_eq!(v.referrals[0].reason, "needs custody advice");
    assert!(v.referrals[0].transfer_lead);
    assert_eq!(
        obligation(&v, "referral_response/r-1").due_at,
        Some(t("2026-03-10T00:00:00Z"))
    );
}
