//! Folding accepted events into the case view.
//!
//! `apply` is total: it never fails and never panics, whatever it is given,
//! because an event that reached it is already in the log and the view must
//! follow the log. It is deterministic: the view holds no maps and every
//! repeated field has a defined order, so identical inputs give identical
//! prost bytes on every replica.

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    Action, Agency, AgencyInvolvement, Area, CaseView, Channel, ConsentStatus, CoordinatedStatus,
    Event, Flags, InvolvementState, LabourInspection, LegalAidApplication, Meeting, Obligation,
    ObligationKind, OrderChange, OrderDecision, PersonalDataState, ProtectionOrder, Referral,
    RiskLevel, Role, Sealed, event::Body,
};

use crate::agency::agency_name;
use crate::context::{Context, EntryMeta};
use crate::state::{
    ALARM_ARRIVAL, EMERGENCY_PLACEMENT, LEGAL_AID_DECISION, MEETING_ACTION, ORDER_CHECK,
    ORDER_DECISION, PETITION_ACCEPTANCE, PETITION_HANDLING, REFERRAL_RESPONSE, SHELTER_REVIEW,
    WARNING_FOLLOW_UP, find_inspection, find_legal_aid, find_meeting, find_obligation, is_open,
    is_placement_obligation, later, obligation_id,
};
use crate::time;

/// What one event did, for the bookkeeping after the body is applied.
struct Applied<'e> {
    event: &'e Event,
    agency: Agency,
    at: Timestamp,
    sealed: &'e [Sealed],
}

/// Applies an accepted event to the case view (`None` before the opening).
pub fn apply(
    ctx: &Context<'_>,
    view: Option<CaseView>,
    event: &Event,
    meta: &EntryMeta<'_>,
) -> CaseView {
    let mut v = view.unwrap_or_else(|| CaseView {
        case_id: event.case_id.clone(),
        ..CaseView::default()
    });
    let e = Applied {
        event,
        agency: Agency::try_from(event.agency).unwrap_or(Agency::Unspecified),
        at: event.occurred_at.unwrap_or_default(),
        sealed: meta.sealed,
    };
    v.case_sequence = meta.case_sequence;
    v.last_global_sequence = meta.global_sequence;
    v.last_event_at = Some(later(v.last_event_at, e.at));

    if let Some(body) = &event.body {
        if event.corrects_event_id.is_some() {
            apply_correction(ctx, &mut v, &e, body);
        } else {
            apply_body(ctx, &mut v, &e, body);
        }
        if !matches!(body, Body::CaseOpened(_)) && v.first_contact == e.agency as i32 {
            // Petition acceptance is met by the first-contact agency's first
            // act on the case after opening it, whatever that act is.
            fulfil(
                &mut v,
                &obligation_id(PETITION_ACCEPTANCE, &event.case_id),
                &e,
            );
        }
    }
    refresh(&mut v);
    v
}

fn flags(v: &mut CaseView) -> &mut Flags {
    v.flags.get_or_insert_with(Flags::default)
}

/// Adds an obligation unless one with the same id exists (ids are unique in
/// a case; a duplicate can only come from input that skipped `decide`).
fn oblige(
    v: &mut CaseView,
    id: String,
    kind: ObligationKind,
    owner: Agency,
    due_at: Timestamp,
    e: &Applied<'_>,
    description: String,
) {
    if find_obligation(v, &id).is_some() {
        return;
    }
    v.obligations.push(Obligation {
        id,
        kind: kind as i32,
        owner: owner as i32,
        due_at: Some(due_at),
        source_event_id: e.event.event_id.clone(),
        description,
        fulfilled_at: None,
        fulfilled_by_event_id: String::new(),
        cancelled: false,
    });
    // Owing the case something makes an agency involved again, even after
    // it returned a referral: need to know follows the work.
    ask(v, owner);
}

/// Marks an obligation met. A cancelled one (the case was closed and then
/// reopened) counts as met too: the work was done after all.
fn fulfil(v: &mut CaseView, id: &str, e: &Applied<'_>) {
    if let Some(o) = v.obligations.iter_mut().find(|o| o.id == id)
        && o.fulfilled_at.is_none()
    {
        o.fulfilled_at = Some(e.at);
        o.fulfilled_by_event_id = e.event.event_id.clone();
        o.cancelled = false;
    }
}

fn cancel(v: &mut CaseView, id: &str) {
    if let Some(o) = v.obligations.iter_mut().find(|o| o.id == id)
        && is_open(o)
    {
        o.cancelled = true;
    }
}

/// The involvement of an agency, added as a participant if absent.
fn involvement(
    v: &mut CaseView,
    agency: Agency,
    state_if_new: InvolvementState,
) -> Option<&mut AgencyInvolvement> {
    if agency == Agency::Unspecified {
        return None;
    }
    let a = agency as i32;
    let pos = match v.agencies.iter().position(|x| x.agency == a) {
        Some(pos) => pos,
        None => {
            let pos = v
                .agencies
                .iter()
                .position(|x| x.agency > a)
                .unwrap_or(v.agencies.len());
            v.agencies.insert(
                pos,
                AgencyInvolvement {
                    agency: a,
                    role: Role::Participant as i32,
                    state: state_if_new as i32,
                    is_first_contact: false,
                    is_lead: false,
                },
            );
            pos
        }
    };
    v.agencies.get_mut(pos)
}

/// An agency is asked to do something (a referral, an action): it is
/// received again unless it is already working on the case.
fn ask(v: &mut CaseView, agency: Agency) {
    if let Some(x) = involvement(v, agency, InvolvementState::Received)
        && (x.state == InvolvementState::Returned as i32
            || x.state == InvolvementState::Done as i32)
    {
        x.state = InvolvementState::Received as i32;
    }
}

fn set_state(v: &mut CaseView, agency: Agency, state: InvolvementState) {
    if let Some(x) = involvement(v, agency, state) {
        x.state = state as i32;
    }
}

/// Applies a new fact. Agency-specific work (the arms that yield `true`)
/// sets `work_started`, which moves the coordinated status to in progress.
fn apply_body(ctx: &Context<'_>, v: &mut CaseView, e: &Applied<'_>, body: &Body) {
    let policy = ctx.policy;
    let at = e.at;
    let mut acted = true;
    let work = match body {
        Body::CaseOpened(b) => {
            acted = false;
            if v.opened_at.is_none() {
                open_case(ctx, v, e, b);
            }
            false
        }
        Body::RiskAssessed(b) => {
            let f = flags(v);
            f.risk_level = b.level;
            f.risk_score = b.score;
            f.high_risk = b.level == RiskLevel::High as i32;
            false
        }
        Body::ReferralIssued(b) => {
            let due = b
                .due_at
                .unwrap_or_else(|| time::plus_hours(&at, policy.referral_response_hours));
            let to = Agency::try_from(b.to_agency).unwrap_or(Agency::Unspecified);
            v.referrals.push(Referral {
                referral_id: b.referral_id.clone(),
                from_agency: e.agency as i32,
                to_agency: b.to_agency,
                issued_at: Some(at),
                due_at: Some(due),
                state: InvolvementState::Received as i32,
                answered_at: None,
                reason: b.reason.clone(),
                transfer_lead: b.transfer_lead,
            });
            oblige(
                v,
                obligation_id(REFERRAL_RESPONSE, &b.referral_id),
                ObligationKind::ReferralResponse,
                to,
                due,
                e,
                format!(
                    "{} to accept or return referral {}",
                    agency_name(to),
                    b.referral_id
                ),
            );
            ask(v, to);
            false
        }
        Body::ReferralAccepted(b) => {
            acted = false;
            answer_referral(v, e, &b.referral_id, true);
            true
        }
        Body::ReferralReturned(b) => {
            acted = false;
            answer_referral(v, e, &b.referral_id, false);
            false
        }
        Body::ProgressReported(_) => true,
        Body::AlarmReceived(b) => {
            let due = if b.area == Area::Urban as i32 {
                time::plus_minutes(&at, policy.alarm_arrival_urban_minutes)
            } else {
                time::plus_minutes(&at, policy.alarm_arrival_suburban_minutes)
            };
            oblige(
                v,
                obligation_id(ALARM_ARRIVAL, &b.alarm_id),
                ObligationKind::AlarmArrival,
                Agency::Police,
                due,
                e,
                format!("Police to arrive at the scene of alarm {}", b.alarm_id),
            );
            true
        }
        Body::OfficersArrived(b) => {
            fulfil(v, &obligation_id(ALARM_ARRIVAL, &b.alarm_id), e);
            true
        }
        Body::OfficersDispatched(_) | Body::AlarmDisposed(_) => true,
        Body::WrittenWarningIssued(b) => {
            oblige(
                v,
                obligation_id(WARNING_FOLLOW_UP, &b.warning_id),
                ObligationKind::WarningFollowUp,
                Agency::Police,
                time::plus_days(&at, policy.warning_follow_up_days),
                e,
                format!(
                    "Police to make a follow-up visit on written warning {}",
                    b.warning_id
                ),
            );
            true
        }
        Body::FollowUpVisitRecorded(b) => {
            fulfil(v, &obligation_id(WARNING_FOLLOW_UP, &b.warning_id), e);
            true
        }
        Body::ProtectionOrderChecked(b) => {
            fulfil(v, &obligation_id(ORDER_CHECK, &b.order_id), e);
            true
        }
        Body::ProtectionOrderViolated(b) => {
            if let Some(o) = v.orders.iter_mut().find(|o| o.order_id == b.order_id) {
                o.violations = o.violations.saturating_add(1);
            }
            true
        }
        Body::ProtectionOrderApplied(b) => {
            let (hours, urgent) = if b.urgent {
                (policy.order_decision_urgent_hours, " (urgent)")
            } else {
                (policy.order_decision_hours, "")
            };
            oblige(
                v,
                obligation_id(ORDER_DECISION, &b.application_id),
                ObligationKind::OrderDecision,
                Agency::Court,
                time::plus_hours(&at, hours),
                e,
                format!(
                    "Court to decide protection-order application {}{urgent}",
                    b.application_id
                ),
            );
            true
        }
        Body::ProtectionOrderDecided(b) => {
            fulfil(v, &obligation_id(ORDER_DECISION, &b.application_id), e);
            if b.decision == OrderDecision::Granted as i32
                && !v.orders.iter().any(|o| o.order_id == b.order_id)
            {
                v.orders.push(ProtectionOrder {
                    order_id: b.order_id.clone(),
                    application_id: b.application_id.clone(),
                    granted_at: Some(at),
                    expires_at: b.expires_at,
                    revoked: false,
                    measures: b.measures.clone(),
                    violations: 0,
                });
                oblige(
                    v,
                    obligation_id(ORDER_CHECK, &b.order_id),
                    ObligationKind::OrderCheck,
                    Agency::Police,
                    time::plus_hours(&at, policy.order_check_hours),
                    e,
                    format!(
                        "Police to check protection order {} with the respondent",
                        b.order_id
                    ),
                );
            }
            true
        }
        Body::ProtectionOrderChanged(b) => {
            if let Some(o) = v.orders.iter_mut().find(|o| o.order_id == b.order_id) {
                if b.change == OrderChange::Extended as i32 && b.new_expires_at.is_some() {
                    o.expires_at = b.new_expires_at;
                } else if b.change == OrderChange::Revoked as i32 {
                    o.revoked = true;
                }
            }
            if b.change == OrderChange::Revoked as i32 {
                cancel(v, &obligation_id(ORDER_CHECK, &b.order_id));
            }
            true
        }
        Body::HearingScheduled(_) | Body::JudgmentIssued(_) => true,
        Body::ShelterAdmitted(b) => {
            if b.emergency {
                oblige(
                    v,
                    obligation_id(EMERGENCY_PLACEMENT, &b.placement_id),
                    ObligationKind::EmergencyPlacement,
                    Agency::CivilAffairs,
                    time::plus_hours(&at, policy.emergency_placement_hours),
                    e,
                    format!(
                        "Civil affairs to end or extend emergency placement {}",
                        b.placement_id
                    ),
                );
            } else {
                oblige(
                    v,
                    obligation_id(SHELTER_REVIEW, &b.placement_id),
                    ObligationKind::ShelterReview,
                    Agency::CivilAffairs,
                    time::plus_days(&at, policy.shelter_stay_days),
                    e,
                    format!(
                        "Civil affairs to end or extend shelter stay {}",
                        b.placement_id
                    ),
                );
            }
            true
        }
        Body::ShelterExtended(b) => {
            fulfil_placement(v, &b.placement_id, e);
            let base = obligation_id(SHELTER_REVIEW, &b.placement_id);
            let mut id = base.clone();
            let mut n: u32 = 2;
            while find_obligation(v, &id).is_some() && n < u32::MAX {
                id = format!("{base}/{n}");
                n += 1;
            }
            let due = b
                .until
                .unwrap_or_else(|| time::plus_days(&at, policy.shelter_stay_days));
            oblige(
                v,
                id,
                ObligationKind::ShelterReview,
                Agency::CivilAffairs,
                due,
                e,
                format!(
                    "Civil affairs to end or extend shelter stay {}",
                    b.placement_id
                ),
            );
            true
        }
        Body::ShelterExited(b) => {
            fulfil_placement(v, &b.placement_id, e);
            true
        }
        Body::MarriageRegistrationFlagged(_) => true,
        Body::LabourInspectionOpened(b) => {
            if find_inspection(v, &b.inspection_id).is_none() {
                v.inspections.push(LabourInspection {
                    inspection_id: b.inspection_id.clone(),
                    employer: b.employer.clone(),
                    opened_at: Some(at),
                    violations: Vec::new(),
                });
            }
            true
        }
        Body::LabourViolationFound(b) => {
            if let Some(i) = v
                .inspections
                .iter_mut()
                .find(|i| i.inspection_id == b.inspection_id)
            {
                i.violations.push(b.violation);
            }
            true
        }
        Body::LegalAidApplied(b) => {
            if find_legal_aid(v, &b.application_id).is_none() {
                v.legal_aid.push(LegalAidApplication {
                    application_id: b.application_id.clone(),
                    applied_at: Some(at),
                    decided: false,
                    granted: false,
                    decided_at: None,
                    lawyer_assigned: false,
                    lawyer_assigned_at: None,
                });
            }
            oblige(
                v,
                obligation_id(LEGAL_AID_DECISION, &b.application_id),
                ObligationKind::LegalAidDecision,
                Agency::JusticeBureau,
                time::plus_working_days_cst(&at, policy.legal_aid_decision_working_days),
                e,
                format!(
                    "Justice bureau to decide legal-aid application {}",
                    b.application_id
                ),
            );
            true
        }
        Body::LegalAidDecided(b) => {
            fulfil(v, &obligation_id(LEGAL_AID_DECISION, &b.application_id), e);
            if let Some(a) = legal_aid_mut(v, &b.application_id)
                && !a.decided
            {
                a.decided = true;
                a.granted = b.granted;
                a.decided_at = Some(at);
            }
            true
        }
        Body::LawyerAssigned(b) => {
            if let Some(a) = legal_aid_mut(v, &b.application_id)
                && !a.lawyer_assigned
            {
                a.lawyer_assigned = true;
                a.lawyer_assigned_at = Some(at);
            }
            true
        }
        Body::CaseEscalated(b) => {
            let f = flags(v);
            f.escalated = true;
            f.escalation_criterion = b.criterion;
            false
        }
        Body::CaseListed(b) => {
            if find_meeting(v, &b.meeting_id).is_none() {
                v.meetings.push(Meeting {
                    meeting_id: b.meeting_id.clone(),
                    meeting_at: b.meeting_at,
                    held: false,
                    held_at: None,
                });
            }
            false
        }
        Body::MeetingHeld(b) => {
            if let Some(m) = meeting_mut(v, &b.meeting_id)
                && !m.held
            {
                m.held = true;
                m.held_at = Some(at);
            }
            false
        }
        Body::ActionAgreed(b) => {
            let owner = Agency::try_from(b.owner).unwrap_or(Agency::Unspecified);
            let due = b.due_at.unwrap_or(at);
            v.actions.push(Action {
                action_id: b.action_id.clone(),
                owner: b.owner,
                description: b.description.clone(),
                due_at: Some(due),
                outcome: 0,
                reported_at: None,
            });
            oblige(
                v,
                obligation_id(MEETING_ACTION, &b.action_id),
                ObligationKind::MeetingAction,
                owner,
                due,
                e,
                format!(
                    "{} to carry out and report action {}",
                    agency_name(owner),
                    b.action_id
                ),
            );
            ask(v, owner);
            false
        }
        Body::ActionReported(b) => {
            if let Some(a) = v.actions.iter_mut().find(|a| a.action_id == b.action_id) {
                a.outcome = b.outcome;
                a.reported_at = Some(at);
            }
            fulfil(v, &obligation_id(MEETING_ACTION, &b.action_id), e);
            false
        }
        Body::ConsentRecorded(b) => {
            flags(v).consent = consent_status(b.decision);
            false
        }
        Body::SharedWithoutConsent(_) => {
            flags(v).shared_without_consent = true;
            false
        }
        Body::CaseClosed(b) => {
            acted = false;
            fulfil(v, &obligation_id(PETITION_HANDLING, &e.event.case_id), e);
            for o in &mut v.obligations {
                if is_open(o) {
                    o.cancelled = true;
                }
            }
            v.closed_at = Some(at);
            v.closure_outcome = b.outcome;
            // An agency that returned its referral stays returned: need to
            // know must not give it the case back at closure.
            for x in &mut v.agencies {
                if x.state != InvolvementState::Returned as i32 {
                    x.state = InvolvementState::Done as i32;
                }
            }
            false
        }
        Body::PersonalDataRestricted(b) => {
            acted = false;
            v.personal_data = PersonalDataState::LegalHold as i32;
            v.personal_data_basis = b.legal_basis.clone();
            v.personal_data_changed_at = Some(at);
            v.retain_until = b.retain_until;
            false
        }
        Body::PersonalDataErased(b) => {
            acted = false;
            v.personal_data = PersonalDataState::Erased as i32;
            v.personal_data_basis = b.legal_basis.clone();
            v.personal_data_changed_at = Some(at);
            v.retain_until = None;
            // The ciphertexts are unreadable now; the view stops carrying
            // them and keeps only which fields there were.
            for s in &mut v.personal {
                s.ciphertext.clear();
            }
            false
        }
        Body::CaseReopened(_) => {
            v.closed_at = None;
            v.closure_outcome = 0;
            v.reopened = v.reopened.saturating_add(1);
            let lead = Agency::try_from(v.lead).unwrap_or(Agency::Unspecified);
            set_state(v, lead, InvolvementState::InProgress);
            false
        }
    };
    if acted {
        // Acting on the case is being at work on it, whatever the agency's
        // earlier state (received, accepted, done after a reopening).
        set_state(v, e.agency, InvolvementState::InProgress);
    }
    // Work by an agency other than the first contact and the committee
    // (a referral target assessing risk, say) is work on the case too.
    let other = e.agency as i32 != v.first_contact && e.agency != Agency::PoliticalLegalCommittee;
    if work || (acted && other) {
        v.work_started = true;
    }
}

fn open_case(
    ctx: &Context<'_>,
    v: &mut CaseView,
    e: &Applied<'_>,
    b: &lianxi_proto::v1::CaseOpened,
) {
    let at = e.at;
    let policy = ctx.policy;
    v.case_id = e.event.case_id.clone();
    v.channel = b.channel;
    v.category = b.category;
    v.jurisdiction = b.jurisdiction.clone();
    v.level = b.level;
    v.summary = b.summary.clone();
    // The person reference and the mandatory reporter stay sealed: the view
    // keeps the entry's ciphertexts, never the values.
    v.personal = e
        .sealed
        .iter()
        .filter(|s| crate::personal::VIEW_PERSONAL_PATHS.contains(&s.path.as_str()))
        .map(|s| Sealed {
            path: s.path.clone(),
            ciphertext: s.ciphertext.clone(),
            event_id: e.event.event_id.clone(),
            ..Sealed::default()
        })
        .collect();
    v.first_contact = e.agency as i32;
    v.lead = e.agency as i32;
    v.opened_at = Some(at);
    if let Some(x) = involvement(v, e.agency, InvolvementState::InProgress) {
        x.state = InvolvementState::InProgress as i32;
        x.is_first_contact = true;
        x.is_lead = true;
    }
    let f = flags(v);
    f.consent = ConsentStatus::Unknown as i32;
    if let Some(prior) = ctx.prior_case
        && prior.case_id != e.event.case_id
        && !time::before(&at, &prior.opened_at)
        && !time::before(
            &time::plus_days(&prior.opened_at, policy.repeat_window_days),
            &at,
        )
    {
        f.repeat_case = true;
        f.previous_case_id = prior.case_id.clone();
    }
    if b.channel == Channel::Letter as i32 || b.channel == Channel::Visit as i32 {
        let who = agency_name(e.agency);
        oblige(
            v,
            obligation_id(PETITION_ACCEPTANCE, &e.event.case_id),
            ObligationKind::PetitionAcceptance,
            e.agency,
            time::plus_days(&at, policy.petition_acceptance_days),
            e,
            format!("{who} to send an acceptance notice for the petition"),
        );
        oblige(
            v,
            obligation_id(PETITION_HANDLING, &e.event.case_id),
            ObligationKind::PetitionHandling,
            e.agency,
            time::plus_days(&at, policy.petition_handling_days),
            e,
            format!("{who} to handle the petition to closure"),
        );
    }
}

fn consent_status(decision: i32) -> i32 {
    match lianxi_proto::v1::ConsentDecision::try_from(decision) {
        Ok(lianxi_proto::v1::ConsentDecision::Given) => ConsentStatus::Given as i32,
        Ok(lianxi_proto::v1::ConsentDecision::Withheld) => ConsentStatus::Withheld as i32,
        _ => ConsentStatus::Unknown as i32,
    }
}

fn answer_referral(v: &mut CaseView, e: &Applied<'_>, referral_id: &str, accepted: bool) {
    let Some(r) = v
        .referrals
        .iter_mut()
        .find(|r| r.referral_id == referral_id)
    else {
        return;
    };
    if r.state != InvolvementState::Received as i32 {
        return;
    }
    r.state = if accepted {
        InvolvementState::Accepted
    } else {
        InvolvementState::Returned
    } as i32;
    r.answered_at = Some(e.at);
    let to = Agency::try_from(r.to_agency).unwrap_or(Agency::Unspecified);
    let transfer = accepted && r.transfer_lead;
    fulfil(v, &obligation_id(REFERRAL_RESPONSE, referral_id), e);
    if let Some(x) = involvement(v, to, InvolvementState::Received) {
        if accepted && x.state != InvolvementState::InProgress as i32 {
            x.state = InvolvementState::Accepted as i32;
        } else if !accepted && x.state == InvolvementState::Received as i32 {
            x.state = InvolvementState::Returned as i32;
        }
    }
    if transfer && to != Agency::Unspecified {
        v.lead = to as i32;
        for x in &mut v.agencies {
            x.is_lead = x.agency == to as i32;
        }
    }
}

fn fulfil_placement(v: &mut CaseView, placement_id: &str, e: &Applied<'_>) {
    let ids: Vec<String> = v
        .obligations
        .iter()
        .filter(|o| is_open(o) && is_placement_obligation(&o.id, placement_id))
        .map(|o| o.id.clone())
        .collect();
    for id in ids {
        fulfil(v, &id, e);
    }
}

fn legal_aid_mut<'a>(v: &'a mut CaseView, id: &str) -> Option<&'a mut LegalAidApplication> {
    v.legal_aid.iter_mut().find(|a| a.application_id == id)
}

fn meeting_mut<'a>(v: &'a mut CaseView, id: &str) -> Option<&'a mut Meeting> {
    v.meetings.iter_mut().find(|m| m.meeting_id == id)
}

/// Applies a correction. Opening, risk, progress, escalation and consent
/// corrections restate the facts and overwrite them. Corrections of records
/// with an id overwrite the fields that other records do not hang off
/// (a referral's reason and due time, an order's expiry and measures, an
/// extension's end, an action's description and due date, a report's
/// outcome, a legal-aid decision, a listing's meeting time, an inspection's
/// employer). Everything else is kept on the timeline
/// only: re-running its effects would double-count (a second violation) or
/// contradict later events (an arrival that was already followed up).
fn apply_correction(ctx: &Context<'_>, v: &mut CaseView, e: &Applied<'_>, body: &Body) {
    let corrected_id = e.event.corrects_event_id.as_deref().unwrap_or_default();
    match body {
        Body::CaseOpened(b) => {
            v.category = b.category;
            v.jurisdiction = b.jurisdiction.clone();
            v.level = b.level;
            v.summary = b.summary.clone();
        }
        Body::RiskAssessed(_) | Body::CaseEscalated(_) | Body::ConsentRecorded(_) => {
            apply_body(ctx, v, e, body);
        }
        Body::ProgressReported(_) => {
            set_state(v, e.agency, InvolvementState::InProgress);
        }
        Body::ReferralIssued(b) => {
            if let Some(r) = v
                .referrals
                .iter_mut()
                .find(|r| r.referral_id == b.referral_id)
            {
                r.reason = b.reason.clone();
                if let Some(due) = b.due_at {
                    r.due_at = Some(due);
                }
                if r.state == InvolvementState::Received as i32 {
                    r.transfer_lead = b.transfer_lead;
                }
            }
            if let Some(due) = b.due_at {
                set_due(v, &obligation_id(REFERRAL_RESPONSE, &b.referral_id), due);
            }
        }
        Body::ProtectionOrderDecided(b) if b.decision == OrderDecision::Granted as i32 => {
            if let Some(o) = v.orders.iter_mut().find(|o| o.order_id == b.order_id) {
                o.measures = b.measures.clone();
                if b.expires_at.is_some() {
                    o.expires_at = b.expires_at;
                }
            }
        }
        Body::ProtectionOrderChanged(b) if b.change == OrderChange::Extended as i32 => {
            if let Some(o) = v.orders.iter_mut().find(|o| o.order_id == b.order_id)
                && !o.revoked
                && b.new_expires_at.is_some()
            {
                o.expires_at = b.new_expires_at;
            }
        }
        Body::ShelterExtended(b) => {
            if let Some(until) = b.until {
                for o in &mut v.obligations {
                    if o.source_event_id == corrected_id && is_open(o) {
                        o.due_at = Some(until);
                    }
                }
            }
        }
        Body::ActionAgreed(b) => {
            if let Some(a) = v.actions.iter_mut().find(|a| a.action_id == b.action_id) {
                a.description = b.description.clone();
                if b.due_at.is_some() {
                    a.due_at = b.due_at;
                }
            }
            if let Some(due) = b.due_at {
                set_due(v, &obligation_id(MEETING_ACTION, &b.action_id), due);
            }
        }
        Body::ActionReported(b) => {
            if let Some(a) = v.actions.iter_mut().find(|a| a.action_id == b.action_id) {
                a.outcome = b.outcome;
            }
        }
        Body::LegalAidDecided(b) => {
            if let Some(a) = legal_aid_mut(v, &b.application_id)
                && a.decided
            {
                a.granted = b.granted;
            }
        }
        Body::CaseListed(b) => {
            if let Some(m) = meeting_mut(v, &b.meeting_id)
                && b.meeting_at.is_some()
            {
                m.meeting_at = b.meeting_at;
            }
        }
        Body::LabourInspectionOpened(b) => {
            if let Some(i) = v
                .inspections
                .iter_mut()
                .find(|i| i.inspection_id == b.inspection_id)
            {
                i.employer = b.employer.clone();
            }
        }
        _ => {}
    }
}

fn set_due(v: &mut CaseView, id: &str, due: Timestamp) {
    if let Some(o) = v.obligations.iter_mut().find(|o| o.id == id)
        && is_open(o)
    {
        o.due_at = Some(due);
    }
}

/// Recomputes everything derived from the records: roles, participants,
/// order, warning and shelter flags, pending meetings, and the coordinated
/// status.
fn refresh(v: &mut CaseView) {
    // Owners of actions and of obligations other than referral answers take
    // part in the case (a referral's target is added when it is issued).
    let mut owners: Vec<Agency> = v
        .actions
        .iter()
        .map(|a| a.owner)
        .chain(
            v.obligations
                .iter()
                .filter(|o| o.kind != ObligationKind::ReferralResponse as i32)
                .map(|o| o.owner),
        )
        .filter_map(|a| Agency::try_from(a).ok())
        .collect();
    owners.sort_by_key(|a| *a as i32);
    owners.dedup();
    for a in owners {
        let _ = involvement(v, a, InvolvementState::Received);
    }
    for x in &mut v.agencies {
        x.role = if x.is_lead {
            Role::Lead
        } else if x.is_first_contact {
            Role::FirstContact
        } else {
            Role::Participant
        } as i32;
    }
    v.agencies.sort_by_key(|x| x.agency);

    let order = v
        .orders
        .iter()
        .rev()
        .find(|o| !o.revoked)
        .map(|o| o.expires_at);
    let warning_due = v
        .obligations
        .iter()
        .filter(|o| o.kind == ObligationKind::WarningFollowUp as i32 && is_open(o))
        .filter_map(|o| o.due_at)
        .min_by_key(time::key);
    let in_shelter = v.obligations.iter().any(|o| {
        is_open(o)
            && (o.kind == ObligationKind::EmergencyPlacement as i32
                || o.kind == ObligationKind::ShelterReview as i32)
    });
    let f = flags(v);
    f.protection_order = order.is_some();
    f.protection_order_expires_at = order.flatten();
    f.warning_follow_up_open = warning_due.is_some();
    f.warning_follow_up_due_at = warning_due;
    f.in_shelter = in_shelter;

    let pending = v.meetings.iter().filter(|m| !m.held);
    v.pending_meetings = pending.clone().map(|m| m.meeting_id.clone()).collect();
    v.next_meeting_at = pending.filter_map(|m| m.meeting_at).min_by_key(time::key);

    v.status = status(v) as i32;
}

/// The one word for the case, by the precedence in DOMAIN.md.
fn status(v: &CaseView) -> CoordinatedStatus {
    if v.closed_at.is_some() {
        return CoordinatedStatus::Closed;
    }
    if v.actions.iter().any(|a| a.outcome == 0) {
        return CoordinatedStatus::ActionPlan;
    }
    if !v.pending_meetings.is_empty() {
        return CoordinatedStatus::ListedForMeeting;
    }
    if v.work_started {
        return CoordinatedStatus::InProgress;
    }
    if v.referrals
        .iter()
        .any(|r| r.state == InvolvementState::Received as i32)
    {
        return CoordinatedStatus::Referred;
    }
    if v.flags
        .as_ref()
        .is_some_and(|f| f.risk_level != RiskLevel::Unspecified as i32)
    {
        return CoordinatedStatus::Triaged;
    }
    CoordinatedStatus::New
}
