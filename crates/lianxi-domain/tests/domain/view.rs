//! What `apply` builds: agencies, status, obligations with their deadlines,
//! flags, and the bookkeeping; plus `evaluate` at a given instant.

use lianxi_domain::{EntryMeta, apply, evaluate};
use lianxi_proto::Message;
use lianxi_proto::v1::*;

use crate::support::*;

const T1: &str = "2026-03-02T10:00:00Z";
const T2: &str = "2026-03-02T11:00:00Z";
const T3: &str = "2026-03-02T12:00:00Z";

#[test]
fn opening_fills_the_view() {
    let v = given(vec![]).then_ok(opening());
    assert_eq!(v.case_id, CASE);
    assert_eq!(status(&v), CoordinatedStatus::New);
    assert_eq!(v.channel, Channel::Hotline12338 as i32);
    assert_eq!(v.category, Category::DomesticViolence as i32);
    assert_eq!(v.level, Level::County as i32);
    assert_eq!(v.jurisdiction, "city/county-1/township-2");
    // The view never holds personal values; the log gives it sealed ones.
    assert!(v.person_ref.is_empty());
    assert_eq!(v.first_contact, WF as i32);
    assert_eq!(v.lead, WF as i32);
    assert_eq!(v.opened_at, Some(t("2026-03-02T09:00:00Z")));
    assert_eq!(v.case_sequence, 1);
    assert_eq!(v.last_global_sequence, 101);
    assert_eq!(v.last_event_at, Some(t("2026-03-02T09:00:00Z")));
    assert_eq!(
        v.agencies,
        vec![AgencyInvolvement {
            agency: WF as i32,
            role: Role::Lead as i32,
            state: InvolvementState::InProgress as i32,
            is_first_contact: true,
            is_lead: true,
        }]
    );
    assert_eq!(flags(&v).consent, ConsentStatus::Unknown as i32);
    assert!(!flags(&v).repeat_case);
    assert!(
        v.obligations.is_empty(),
        "a hotline case has no petition deadlines"
    );
}

#[test]
fn risk_assessment_triages_and_the_latest_counts() {
    let s = given(vec![
        opening(),
        ev("e-1", WF, T1, risk(RiskLevel::High, 85)),
    ]);
    let v = s.view().clone();
    assert_eq!(status(&v), CoordinatedStatus::Triaged);
    assert!(flags(&v).high_risk);
    assert_eq!(flags(&v).risk_score, 85);
    let v = s.then_ok(ev("e-2", WF, T2, risk(RiskLevel::Standard, 20)));
    assert!(!flags(&v).high_risk);
    assert_eq!(flags(&v).risk_level, RiskLevel::Standard as i32);
}

#[test]
fn a_referral_is_referred_then_accepted_with_the_lead() {
    let s = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", COURT, true)),
    ]);
    let v = s.view().clone();
    assert_eq!(status(&v), CoordinatedStatus::Referred);
    let court = involvement(&v, COURT);
    assert_eq!(court.role, Role::Participant as i32);
    assert_eq!(court.state, InvolvementState::Received as i32);
    let o = obligation(&v, "referral_response/r-1");
    assert_eq!(o.kind, ObligationKind::ReferralResponse as i32);
    assert_eq!(o.owner, COURT as i32);
    assert_eq!(
        o.due_at,
        Some(t("2026-03-05T10:00:00Z")),
        "3 days by default"
    );
    assert_eq!(o.source_event_id, "e-r");
    assert_eq!(v.referrals[0].due_at, o.due_at);
    // Agencies are sorted by number: court (3) before federation (6).
    assert_eq!(
        v.agencies.iter().map(|a| a.agency).collect::<Vec<_>>(),
        vec![COURT as i32, WF as i32]
    );

    let v = s.then_ok(ev("e-a", COURT, T2, accept("r-1")));
    assert_eq!(status(&v), CoordinatedStatus::InProgress);
    assert_eq!(v.lead, COURT as i32);
    assert_eq!(v.first_contact, WF as i32);
    let court = involvement(&v, COURT);
    assert_eq!(
        (court.role, court.state, court.is_lead),
        (Role::Lead as i32, InvolvementState::Accepted as i32, true)
    );
    let wf = involvement(&v, WF);
    assert_eq!(
        (wf.role, wf.is_lead, wf.is_first_contact),
        (Role::FirstContact as i32, false, true)
    );
    let o = obligation(&v, "referral_response/r-1");
    assert_eq!(o.fulfilled_at, Some(t(T2)));
    assert_eq!(o.fulfilled_by_event_id, "e-a");
    assert_eq!(v.referrals[0].state, InvolvementState::Accepted as i32);
}

#[test]
fn an_accepted_agency_that_acts_is_in_progress() {
    let v = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", POLICE, false)),
        ev("e-a", POLICE, T1, accept("r-1")),
    ])
    .then_ok(ev("e-w", POLICE, T2, warning("w-1")));
    assert_eq!(
        involvement(&v, POLICE).state,
        InvolvementState::InProgress as i32
    );
    assert_eq!(v.lead, WF as i32);
}

#[test]
fn a_returned_referral_falls_back() {
    let v = given(vec![
        opening(),
        ev("e-0", WF, T1, risk(RiskLevel::Medium, 40)),
        ev("e-r", WF, T1, refer("r-1", LABOUR, false)),
    ])
    .then_ok(ev("e-x", LABOUR, T2, ret("r-1")));
    assert_eq!(
        involvement(&v, LABOUR).state,
        InvolvementState::Returned as i32
    );
    assert_eq!(status(&v), CoordinatedStatus::Triaged);
    assert_eq!(v.referrals[0].answered_at, Some(t(T2)));
}

#[test]
fn the_status_follows_the_precedence() {
    let s = given(vec![opening(), ev("e-p", WF, T1, progress())]);
    assert_eq!(status(s.view()), CoordinatedStatus::InProgress);
    let s = s.given(vec![ev(
        "e-l",
        PLC,
        T1,
        listed("m-1", "2026-03-10T09:00:00Z"),
    )]);
    assert_eq!(status(s.view()), CoordinatedStatus::ListedForMeeting);
    assert_eq!(s.view().pending_meetings, vec!["m-1".to_string()]);
    assert_eq!(s.view().next_meeting_at, Some(t("2026-03-10T09:00:00Z")));
    let s = s.given(vec![ev(
        "e-a",
        PLC,
        "2026-03-10T10:00:00Z",
        action("x-1", POLICE, "2026-03-20T00:00:00Z"),
    )]);
    assert_eq!(status(s.view()), CoordinatedStatus::ActionPlan);
    let committee = involvement(s.view(), PLC);
    assert_eq!(committee.role, Role::Participant as i32);
    let police = involvement(s.view(), POLICE);
    assert_eq!(
        (police.role, police.state),
        (Role::Participant as i32, InvolvementState::Received as i32)
    );
    let s = s.given(vec![ev("e-h", PLC, "2026-03-10T11:00:00Z", held("m-1"))]);
    assert!(s.view().pending_meetings.is_empty());
    assert_eq!(s.view().next_meeting_at, None);
    assert_eq!(status(s.view()), CoordinatedStatus::ActionPlan);
    let s = s.given(vec![ev(
        "e-rep",
        POLICE,
        "2026-03-15T00:00:00Z",
        reported("x-1", ActionOutcome::Done),
    )]);
    assert_eq!(
        status(s.view()),
        CoordinatedStatus::InProgress,
        "work before the meeting still counts"
    );
    let o = obligation(s.view(), "meeting_action/x-1");
    assert_eq!(o.due_at, Some(t("2026-03-20T00:00:00Z")));
    assert_eq!(o.fulfilled_by_event_id, "e-rep");
    assert_eq!(s.view().actions[0].outcome, ActionOutcome::Done as i32);
    let v = s.then_ok(ev("e-c", WF, "2026-03-16T00:00:00Z", closed()));
    assert_eq!(status(&v), CoordinatedStatus::Closed);
    assert!(
        v.agencies
            .iter()
            .all(|a| a.state == InvolvementState::Done as i32)
    );
    assert_eq!(v.closure_outcome, ClosureOutcome::Resolved as i32);
}

#[test]
fn the_earliest_pending_meeting_is_next() {
    let v = given(vec![
        opening(),
        ev("e-1", PLC, T1, listed("m-2", "2026-04-10T09:00:00Z")),
    ])
    .then_ok(ev("e-2", PLC, T2, listed("m-1", "2026-03-10T09:00:00Z")));
    assert_eq!(v.next_meeting_at, Some(t("2026-03-10T09:00:00Z")));
    assert_eq!(
        v.pending_meetings,
        vec!["m-2".to_string(), "m-1".to_string()]
    );
}

#[test]
fn the_next_meeting_follows_the_pending_meetings() {
    // Given a case listed for m-1 (10 March) and m-2 (10 April) ...
    let s = given(vec![
        opening(),
        ev("e-1", PLC, T1, listed("m-1", "2026-03-10T09:00:00Z")),
        ev("e-2", PLC, T1, listed("m-2", "2026-04-10T09:00:00Z")),
    ]);
    assert_eq!(s.view().next_meeting_at, Some(t("2026-03-10T09:00:00Z")));
    // ... when m-1 is held, then the next meeting is m-2, not the one held.
    let s = s.given(vec![ev("e-h", PLC, "2026-03-10T11:00:00Z", held("m-1"))]);
    let v = s.view();
    assert_eq!(v.pending_meetings, vec!["m-2".to_string()]);
    assert_eq!(v.next_meeting_at, Some(t("2026-04-10T09:00:00Z")));
    assert_eq!(status(v), CoordinatedStatus::ListedForMeeting);
    assert_eq!(
        v.meetings
            .iter()
            .map(|m| (m.meeting_id.as_str(), m.held, m.held_at))
            .collect::<Vec<_>>(),
        [
            ("m-1", true, Some(t("2026-03-10T11:00:00Z"))),
            ("m-2", false, None)
        ]
    );
    // A correction of the listing moves the meeting, and the next meeting
    // with it.
    let v = s.then_ok(corr(
        "e-c",
        PLC,
        "2026-03-11T09:00:00Z",
        "e-2",
        listed("m-2", "2026-04-03T09:00:00Z"),
    ));
    assert_eq!(v.meetings[1].meeting_at, Some(t("2026-04-03T09:00:00Z")));
    assert_eq!(v.next_meeting_at, Some(t("2026-04-03T09:00:00Z")));
    // When the last pending meeting is held, there is no next meeting.
    let v = given(vec![
        opening(),
        ev("e-1", PLC, T1, listed("m-1", "2026-03-10T09:00:00Z")),
    ])
    .then_ok(ev("e-h", PLC, "2026-03-10T11:00:00Z", held("m-1")));
    assert!(v.pending_meetings.is_empty());
    assert_eq!(v.next_meeting_at, None);
    assert_eq!(status(&v), CoordinatedStatus::New);
}

#[test]
fn work_started_survives_a_meeting_and_an_action_plan() {
    // Given the first-contact agency's own progress report: work, but no
    // other trace in the view.
    let s = given(vec![opening(), ev("e-p", WF, T1, progress())]);
    assert!(s.view().work_started);
    assert_eq!(status(s.view()), CoordinatedStatus::InProgress);
    // When the case passes through a meeting and an action plan whose
    // owner is the first contact itself ...
    let s = s.given(vec![
        ev("e-l", PLC, T1, listed("m-1", "2026-03-10T09:00:00Z")),
        ev(
            "e-a",
            PLC,
            "2026-03-10T10:00:00Z",
            action("x-1", WF, "2026-03-20T00:00:00Z"),
        ),
        ev("e-h", PLC, "2026-03-10T11:00:00Z", held("m-1")),
    ]);
    assert_eq!(status(s.view()), CoordinatedStatus::ActionPlan);
    // ... then, the action reported, the case is back in progress.
    let v = s.then_ok(ev(
        "e-rep",
        WF,
        "2026-03-15T00:00:00Z",
        reported("x-1", ActionOutcome::Done),
    ));
    assert_eq!(status(&v), CoordinatedStatus::InProgress);
    // The committee's own acts and the first contact's triage are not work.
    let v = given(vec![
        opening(),
        ev("e-0", WF, T1, risk(RiskLevel::Medium, 40)),
        ev("e-1", WF, T1, consent(ConsentDecision::Given)),
        ev("e-e", PLC, T1, escalated()),
    ])
    .view()
    .clone();
    assert!(!v.work_started);
    assert_eq!(status(&v), CoordinatedStatus::Triaged);
    // An act by a referral target that has not yet accepted is work.
    let v = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", POLICE, false)),
    ])
    .then_ok(ev("e-x", POLICE, T2, risk(RiskLevel::High, 90)));
    assert!(v.work_started);
    assert_eq!(status(&v), CoordinatedStatus::InProgress);
}

#[test]
fn work_started_stays_through_closing_and_reopening() {
    let v = given(vec![
        opening(),
        ev("e-p", WF, T1, progress()),
        ev("e-c", WF, T2, closed()),
    ])
    .then_ok(ev("e-r", WF, T3, reopened()));
    assert!(v.work_started);
    assert_eq!(status(&v), CoordinatedStatus::InProgress);
}

#[test]
fn labour_inspections_are_recorded_with_their_violations() {
    let v = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", LABOUR, false)),
        ev("e-a", LABOUR, T1, accept("r-1")),
        ev("e-i1", LABOUR, T2, inspection("i-1")),
        ev("e-i2", LABOUR, T2, inspection("i-2")),
        ev("e-v1", LABOUR, T3, labour_violation("i-2")),
    ])
    .then_ok(ev("e-v2", LABOUR, T3, labour_violation("i-2")));
    assert_eq!(
        v.inspections
            .iter()
            .map(|i| (i.inspection_id.as_str(), i.opened_at, i.violations.len()))
            .collect::<Vec<_>>(),
        [("i-1", Some(t(T2)), 0), ("i-2", Some(t(T2)), 2)]
    );
    assert_eq!(v.inspections[0].employer, "factory");
    assert!(
        v.obligations
            .iter()
            .all(|o| o.kind == ObligationKind::ReferralResponse as i32),
        "inspections create no obligation"
    );
}

#[test]
fn order_deadlines_and_flags() {
    let base = vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", COURT, false)),
        ev("e-a", COURT, T1, accept("r-1")),
    ];
    let s = given(base.clone()).given(vec![ev(
        "e-app",
        WF,
        "2026-03-02T12:00:00Z",
        applied("app-1", false),
    )]);
    assert_eq!(
        obligation(s.view(), "order_decision/app-1").due_at,
        Some(t("2026-03-05T12:00:00Z")),
        "72 hours"
    );
    let urgent = given(base).then_ok(ev(
        "e-app",
        WF,
        "2026-03-02T12:00:00Z",
        applied("app-1", true),
    ));
    assert_eq!(
        obligation(&urgent, "order_decision/app-1").due_at,
        Some(t("2026-03-03T12:00:00Z")),
        "24 hours when urgent"
    );

    let s = s.given(vec![ev(
        "e-d",
        COURT,
        "2026-03-03T08:00:00Z",
        granted("app-1", "o-1", "2026-09-01T00:00:00Z"),
    )]);
    let v = s.view();
    assert!(obligation(v, "order_decision/app-1").fulfilled_at.is_some());
    let check = obligation(v, "order_check/o-1");
    assert_eq!(
        (check.owner, check.due_at),
        (POLICE as i32, Some(t("2026-03-04T08:00:00Z")))
    );
    assert!(flags(v).protection_order);
    assert_eq!(
        flags(v).protection_order_expires_at,
        Some(t("2026-09-01T00:00:00Z"))
    );
    assert_eq!(
        involvement(v, POLICE).state,
        InvolvementState::Received as i32,
        "police must check the order"
    );
    assert_eq!(v.orders[0].granted_at, Some(t("2026-03-03T08:00:00Z")));
    assert_eq!(v.orders[0].measures, vec!["no contact".to_string()]);

    let checked_v = s.given(vec![ev(
        "e-chk",
        POLICE,
        "2026-03-03T20:00:00Z",
        checked("o-1"),
    )]);
    assert_eq!(
        obligation(checked_v.view(), "order_check/o-1").fulfilled_by_event_id,
        "e-chk"
    );
    let v = checked_v
        .given(vec![ev(
            "e-vio",
            POLICE,
            "2026-03-05T00:00:00Z",
            violated("o-1"),
        )])
        .then_ok(ev(
            "e-rev",
            COURT,
            "2026-03-06T00:00:00Z",
            changed("o-1", OrderChange::Revoked, None),
        ));
    assert_eq!(v.orders[0].violations, 1);
    assert!(v.orders[0].revoked);
    assert!(!flags(&v).protection_order);
    assert_eq!(flags(&v).protection_order_expires_at, None);
}

#[test]
fn revoking_cancels_an_unmet_order_check() {
    let v = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", COURT, false)),
        ev("e-a", COURT, T1, accept("r-1")),
        ev("e-app", WF, T1, applied("app-1", true)),
        ev(
            "e-d",
            COURT,
            T2,
            granted("app-1", "o-1", "2026-06-01T00:00:00Z"),
        ),
    ])
    .then_ok(ev(
        "e-rev",
        COURT,
        "2026-03-02T12:00:00Z",
        changed("o-1", OrderChange::Revoked, None),
    ));
    let o = obligation(&v, "order_check/o-1");
    assert!(o.cancelled);
    assert!(o.fulfilled_at.is_none());
}

#[test]
fn police_deadlines() {
    let s = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", POLICE, false)),
    ]);
    let s = s.given(vec![
        ev(
            "e-a1",
            POLICE,
            "2026-03-02T20:00:00Z",
            alarm("a-1", Area::Urban),
        ),
        ev(
            "e-a2",
            POLICE,
            "2026-03-02T20:00:00Z",
            alarm("a-2", Area::Suburban),
        ),
        ev(
            "e-a3",
            POLICE,
            "2026-03-02T20:00:00Z",
            alarm("a-3", Area::Unspecified),
        ),
        ev("e-w", POLICE, "2026-03-02T21:00:00Z", warning("w-1")),
    ]);
    let v = s.view();
    assert_eq!(
        obligation(v, "alarm_arrival/a-1").due_at,
        Some(t("2026-03-02T20:05:00Z"))
    );
    assert_eq!(
        obligation(v, "alarm_arrival/a-2").due_at,
        Some(t("2026-03-02T20:10:00Z"))
    );
    assert_eq!(
        obligation(v, "alarm_arrival/a-3").due_at,
        Some(t("2026-03-02T20:10:00Z"))
    );
    assert_eq!(
        obligation(v, "warning_follow_up/w-1").due_at,
        Some(t("2026-05-31T21:00:00Z")),
        "90 days"
    );
    assert!(flags(v).warning_follow_up_open);
    assert_eq!(
        flags(v).warning_follow_up_due_at,
        Some(t("2026-05-31T21:00:00Z"))
    );
    assert_eq!(status(v), CoordinatedStatus::InProgress);
    let v = s
        .given(vec![ev(
            "e-arr",
            POLICE,
            "2026-03-02T20:04:00Z",
            arrived("a-1"),
        )])
        .then_ok(ev("e-v", POLICE, "2026-04-01T00:00:00Z", visit("w-1")));
    assert_eq!(
        obligation(&v, "alarm_arrival/a-1").fulfilled_by_event_id,
        "e-arr"
    );
    assert!(!flags(&v).warning_follow_up_open);
    assert_eq!(flags(&v).warning_follow_up_due_at, None);
}

#[test]
fn shelter_deadlines() {
    let s = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", CIVIL, false)),
    ])
    .given(vec![ev(
        "e-adm",
        CIVIL,
        "2026-03-02T22:00:00Z",
        admitted("p-1", true),
    )]);
    let o = obligation(s.view(), "emergency_placement/p-1");
    assert_eq!(
        (o.owner, o.due_at),
        (CIVIL as i32, Some(t("2026-03-03T22:00:00Z")))
    );
    assert!(flags(s.view()).in_shelter);
    let s = s.given(vec![ev(
        "e-ext",
        CIVIL,
        "2026-03-03T20:00:00Z",
        extended("p-1", "2026-03-13T20:00:00Z"),
    )]);
    let v = s.view();
    assert_eq!(
        obligation(v, "emergency_placement/p-1").fulfilled_by_event_id,
        "e-ext"
    );
    assert_eq!(
        obligation(v, "shelter_review/p-1").due_at,
        Some(t("2026-03-13T20:00:00Z"))
    );
    let s = s.given(vec![ev(
        "e-ext2",
        CIVIL,
        "2026-03-13T10:00:00Z",
        extended("p-1", "2026-03-20T10:00:00Z"),
    )]);
    let v = s.view();
    assert!(obligation(v, "shelter_review/p-1").fulfilled_at.is_some());
    let second = obligation(v, "shelter_review/p-1/2");
    assert_eq!(
        (second.kind, second.due_at),
        (
            ObligationKind::ShelterReview as i32,
            Some(t("2026-03-20T10:00:00Z"))
        )
    );
    let v = s.then_ok(ev("e-exit", CIVIL, "2026-03-18T10:00:00Z", exited("p-1")));
    assert_eq!(
        obligation(&v, "shelter_review/p-1/2").fulfilled_by_event_id,
        "e-exit"
    );
    assert!(!flags(&v).in_shelter);
    // Obligations stay in creation order.
    let ids: Vec<&str> = v.obligations.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "referral_response/r-1",
            "emergency_placement/p-1",
            "shelter_review/p-1",
            "shelter_review/p-1/2"
        ]
    );

    let v = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", CIVIL, false)),
    ])
    .then_ok(ev(
        "e-adm",
        CIVIL,
        "2026-03-02T22:00:00Z",
        admitted("p-1", false),
    ));
    assert_eq!(
        obligation(&v, "shelter_review/p-1").due_at,
        Some(t("2026-03-12T22:00:00Z")),
        "10 days"
    );
}

#[test]
fn petition_deadlines() {
    let open_letter = ev(
        "e-open",
        WF,
        "2026-03-02T09:00:00Z",
        opened(Channel::Letter),
    );
    let s = given(vec![open_letter]);
    let v = s.view();
    let acc = obligation(v, &format!("petition_acceptance/{CASE}"));
    assert_eq!(
        (acc.owner, acc.due_at),
        (WF as i32, Some(t("2026-03-17T09:00:00Z")))
    );
    let handling = obligation(v, &format!("petition_handling/{CASE}"));
    assert_eq!(handling.due_at, Some(t("2026-05-01T09:00:00Z")));
    // Another agency's act does not meet it; the opener's next act does.
    let s = s.given(vec![ev("e-c", PLC, T1, escalated())]);
    assert!(
        obligation(s.view(), &format!("petition_acceptance/{CASE}"))
            .fulfilled_at
            .is_none()
    );
    let s = s.given(vec![ev("e-1", WF, T2, risk(RiskLevel::Standard, 10))]);
    assert_eq!(
        obligation(s.view(), &format!("petition_acceptance/{CASE}")).fulfilled_by_event_id,
        "e-1"
    );
    let s = s.given(vec![ev(
        "e-a",
        PLC,
        T2,
        action("x-1", POLICE, "2026-04-01T00:00:00Z"),
    )]);
    let v = s.then_ok(ev("e-close", PLC, "2026-03-20T00:00:00Z", closed()));
    let handling = obligation(&v, &format!("petition_handling/{CASE}"));
    assert_eq!(handling.fulfilled_by_event_id, "e-close");
    assert!(!handling.cancelled);
    let action_ob = obligation(&v, "meeting_action/x-1");
    assert!(action_ob.cancelled, "closure cancels what remains open");
    assert!(action_ob.fulfilled_at.is_none());

    let v = given(vec![]).then_ok(ev(
        "e-open",
        WF,
        "2026-03-02T09:00:00Z",
        opened(Channel::Visit),
    ));
    assert_eq!(v.obligations.len(), 2);
}

#[test]
fn legal_aid_counts_working_days_in_china_standard_time() {
    let s = || {
        given(vec![
            opening(),
            ev("e-r", WF, T1, refer("r-1", JUSTICE, false)),
        ])
    };
    // Friday 2026-03-06 10:00 CST (02:00 UTC): 7 working days is Tuesday 2026-03-17.
    let v = s().then_ok(ev(
        "e-la",
        JUSTICE,
        "2026-03-06T02:00:00Z",
        aid_applied("la-1"),
    ));
    let o = obligation(&v, "legal_aid_decision/la-1");
    assert_eq!(
        (o.owner, o.due_at),
        (JUSTICE as i32, Some(t("2026-03-17T02:00:00Z")))
    );
    // Friday 20:00 UTC is already Saturday 04:00 in Beijing: the weekend is
    // skipped and the 7th working day is Tuesday 2026-03-17 04:00 CST, which
    // is Monday 20:00 UTC (a UTC calendar would have said Tuesday 20:00 UTC).
    let v = s().then_ok(ev(
        "e-la",
        JUSTICE,
        "2026-03-06T20:00:00Z",
        aid_applied("la-1"),
    ));
    assert_eq!(
        obligation(&v, "legal_aid_decision/la-1").due_at,
        Some(t("2026-03-16T20:00:00Z"))
    );
    // Monday: 7 working days is Wednesday of the next week.
    let v = s().then_ok(ev(
        "e-la",
        JUSTICE,
        "2026-03-02T02:00:00Z",
        aid_applied("la-1"),
    ));
    assert_eq!(
        obligation(&v, "legal_aid_decision/la-1").due_at,
        Some(t("2026-03-11T02:00:00Z"))
    );
    let s = s().given(vec![ev("e-la", JUSTICE, T1, aid_applied("la-1"))]);
    let app = &s.view().legal_aid[0];
    assert_eq!(
        (app.application_id.as_str(), app.applied_at, app.decided),
        ("la-1", Some(t(T1)), false)
    );
    let s = s.given(vec![ev("e-d", JUSTICE, T2, aid_decided("la-1", true))]);
    let o = obligation(s.view(), "legal_aid_decision/la-1");
    assert_eq!(o.fulfilled_by_event_id, "e-d");
    assert_eq!(
        o.description, "Justice bureau to decide legal-aid application la-1",
        "the outcome is on the record, not in the description"
    );
    let app = &s.view().legal_aid[0];
    assert!(app.decided && app.granted && !app.lawyer_assigned);
    assert_eq!(app.decided_at, Some(t(T2)));
    let v = s.then_ok(ev("e-l", JUSTICE, T3, lawyer("la-1")));
    let app = &v.legal_aid[0];
    assert!(app.lawyer_assigned);
    assert_eq!(app.lawyer_assigned_at, Some(t(T3)));
}

#[test]
fn repeat_cases_within_the_window() {
    let prior = |id: &str, at: &str| PriorCase {
        case_id: id.into(),
        opened_at: t(at),
    };
    let v = given(vec![])
        .with_prior(prior("C-0", "2025-06-01T00:00:00Z"))
        .then_ok(opening());
    assert!(flags(&v).repeat_case);
    assert_eq!(flags(&v).previous_case_id, "C-0");
    let v = given(vec![])
        .with_prior(prior("C-0", "2025-03-01T00:00:00Z"))
        .then_ok(opening());
    assert!(!flags(&v).repeat_case, "366 days before is outside 365");
    let v = given(vec![])
        .with_prior(prior(CASE, "2025-06-01T00:00:00Z"))
        .then_ok(opening());
    assert!(
        !flags(&v).repeat_case,
        "the same case is not a repeat of itself"
    );
    let wide = Policy::from_toml("repeat_window_days = 730").expect("policy");
    let v = given(vec![])
        .with_policy(wide)
        .with_prior(prior("C-0", "2025-03-01T00:00:00Z"))
        .then_ok(opening());
    assert!(flags(&v).repeat_case);
}

#[test]
fn consent_escalation_and_sharing_flags() {
    let s = given(vec![
        opening(),
        ev("e-1", WF, T1, consent(ConsentDecision::Withheld)),
    ]);
    assert_eq!(flags(s.view()).consent, ConsentStatus::Withheld as i32);
    let s = s.given(vec![
        ev("e-2", WF, T2, consent(ConsentDecision::Given)),
        ev("e-3", WF, T2, escalated()),
    ]);
    assert_eq!(flags(s.view()).consent, ConsentStatus::Given as i32);
    assert!(flags(s.view()).escalated);
    assert_eq!(
        flags(s.view()).escalation_criterion,
        EscalationCriterion::HighRisk as i32
    );
    let v = s.then_ok(ev("e-4", WF, T2, shared("imminent danger")));
    assert!(flags(&v).shared_without_consent);
    assert_eq!(v.case_sequence, 5);
    assert_eq!(v.last_global_sequence, 105);
}

#[test]
fn reopening_restores_work() {
    let v =
        given(vec![opening(), ev("e-c", WF, T1, closed())]).then_ok(ev("e-r", WF, T2, reopened()));
    assert_eq!(v.reopened, 1);
    assert_eq!(status(&v), CoordinatedStatus::New);
    assert_eq!(
        involvement(&v, WF).state,
        InvolvementState::InProgress as i32
    );
}

#[test]
fn last_event_at_is_the_latest_fact() {
    let v = given(vec![
        opening(),
        ev("e-1", WF, "2026-03-05T00:00:00Z", progress()),
    ])
    .then_ok(ev("e-2", WF, "2026-03-04T00:00:00Z", progress()));
    assert_eq!(v.last_event_at, Some(t("2026-03-05T00:00:00Z")));
    assert_eq!(v.case_sequence, 3);
}

// ------------------------------------------------------------ evaluate

#[test]
fn evaluate_finds_what_is_overdue_now() {
    let v = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", COURT, false)),
        ev("e-r2", WF, T1, refer("r-2", POLICE, false)),
        ev("e-a", COURT, T2, accept("r-1")),
        ev("e-app", WF, T2, applied("app-1", true)),
        ev(
            "e-d",
            COURT,
            "2026-03-02T12:00:00Z",
            granted("app-1", "o-1", "2026-04-01T00:00:00Z"),
        ),
    ])
    .view()
    .clone();
    // r-2 due 2026-03-05T10:00; order check due 2026-03-03T12:00.
    let e = evaluate(&v, &t("2026-03-03T12:00:00Z"));
    assert!(e.overdue.is_empty(), "due exactly now is not overdue");
    assert!(e.protection_order_active);
    let e = evaluate(&v, &t("2026-03-04T00:00:00Z"));
    assert_eq!(
        e.overdue.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        ["order_check/o-1"]
    );
    let e = evaluate(&v, &t("2026-03-06T00:00:00Z"));
    assert_eq!(
        e.overdue.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        ["referral_response/r-2", "order_check/o-1"]
    );
    assert_eq!(e.overdue[0].owner, POLICE as i32);
    let e = evaluate(&v, &t("2026-04-01T00:00:00Z"));
    assert!(!e.protection_order_active, "expired at now");
    // Fulfilled and cancelled obligations are never overdue.
    let mut closed_v = v.clone();
    for o in &mut closed_v.obligations {
        o.cancelled = true;
    }
    assert!(
        evaluate(&closed_v, &t("2030-01-01T00:00:00Z"))
            .overdue
            .is_empty()
    );
}

// ------------------------------------------------------------ determinism

fn replay(events: &[Event]) -> CaseView {
    let policy = Policy::default();
    let prior = PriorCase {
        case_id: "C-0".into(),
        opened_at: t("2025-12-01T00:00:00Z"),
    };
    let ctx = lianxi_domain::Context {
        policy: &policy,
        prior_case: Some(&prior),
    };
    let mut view = None;
    for (i, e) in events.iter().enumerate() {
        let meta = EntryMeta {
            global_sequence: i as u64 + 1,
            case_sequence: i as u64 + 1,
            recorded_at: t("2026-03-02T09:00:00Z"),
            sealed: &[],
        };
        view = Some(apply(&ctx, view, e, &meta));
    }
    view.unwrap_or_default()
}

#[test]
fn applying_the_same_events_gives_the_same_bytes() {
    let events: Vec<Event> = every_body()
        .into_iter()
        .enumerate()
        .map(|(i, (a, b))| ev(&format!("e-{i}"), a, "2026-03-02T10:00:00Z", b))
        .collect();
    let a = replay(&events).encode_to_vec();
    let b = replay(&events).encode_to_vec();
    assert!(!a.is_empty());
    assert_eq!(a, b);
    // And a different history gives different bytes.
    let c = replay(&events[..events.len() - 1]).encode_to_vec();
    assert_ne!(a, c);
}

#[test]
fn a_scenario_rebuilt_from_its_log_is_identical() {
    let s = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", COURT, true)),
        ev("e-a", COURT, T2, accept("r-1")),
        ev("e-app", COURT, T2, applied("app-1", false)),
        ev("e-l", PLC, T2, listed("m-1", "2026-03-10T09:00:00Z")),
    ]);
    let rebuilt = given(s.log.clone());
    assert_eq!(s.view().encode_to_vec(), rebuilt.view().encode_to_vec());
}

#[test]
fn an_agency_that_returned_its_referral_stays_returned_when_the_case_closes() {
    let v = given(vec![
        opening(),
        ev("e-r", WF, T1, refer("r-1", POLICE, false)),
        ev("e-x", POLICE, T1, ret("r-1")),
    ])
    .then_ok(ev("e-c", WF, T2, closed()));
    let state = |a: Agency| {
        v.agencies
            .iter()
            .find(|x| x.agency == a as i32)
            .map(|x| x.state)
    };
    assert_eq!(state(POLICE), Some(InvolvementState::Returned as i32));
    assert_eq!(state(WF), Some(InvolvementState::Done as i32));
    assert!(!lianxi_domain::is_involved(&v, POLICE));
}

#[test]
fn an_agency_that_returned_a_referral_is_involved_again_when_it_owes_the_case_something() {
    let v = given(vec![
        opening(),
        ev("e-r1", WF, T1, refer("r-1", COURT, false)),
        ev("e-x", COURT, T1, ret("r-1")),
        ev("e-r2", WF, T1, refer("r-2", POLICE, false)),
        ev("e-a", POLICE, T2, accept("r-2")),
    ])
    .then_ok(ev("e-o", POLICE, T2, applied("pa-1", true)));
    assert!(lianxi_domain::is_involved(&v, COURT), "{:?}", v.agencies);
    let court = v
        .agencies
        .iter()
        .find(|x| x.agency == COURT as i32)
        .unwrap();
    assert_eq!(court.state, InvolvementState::Received as i32);
}
