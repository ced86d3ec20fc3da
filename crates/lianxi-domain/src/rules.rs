//! The state rules: whether an event may be appended to a case as it stands.

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    Agency, CaseView, Event, InvolvementState, OrderChange, OrderDecision, PersonalDataState,
    RejectionCode, event::Body,
};

use crate::agency::{agency_name, agency_object, agency_object_i32, shorten};
use crate::context::Context;
use crate::describe::body_kind;
use crate::error::Rejection;
use crate::state::{
    ALARM_ARRIVAL, ORDER_DECISION, WARNING_FOLLOW_UP, find_inspection, find_legal_aid,
    find_meeting, find_obligation, involved, obligation_id, placement_exists, placement_open,
};
use crate::time;
use crate::validate::check_event;

fn reject(code: RejectionCode, reason: String) -> Rejection {
    Rejection::new(code, reason)
}

/// Which agencies may emit a body at all, whatever the state of the case.
/// `None`: any agency (subject to involvement). Closing and reopening depend
/// on who leads the case and are checked with the state.
fn permitted_emitters(body: &Body) -> Option<&'static [Agency]> {
    const POLICE: &[Agency] = &[Agency::Police];
    const COURT: &[Agency] = &[Agency::Court];
    const CIVIL: &[Agency] = &[Agency::CivilAffairs];
    const LABOUR: &[Agency] = &[Agency::Labour];
    const JUSTICE: &[Agency] = &[Agency::JusticeBureau];
    const COMMITTEE: &[Agency] = &[Agency::PoliticalLegalCommittee];
    const APPLICANTS: &[Agency] = &[Agency::Court, Agency::Police, Agency::WomensFederation];
    match body {
        Body::AlarmReceived(_)
        | Body::OfficersDispatched(_)
        | Body::OfficersArrived(_)
        | Body::AlarmDisposed(_)
        | Body::WrittenWarningIssued(_)
        | Body::FollowUpVisitRecorded(_)
        | Body::ProtectionOrderChecked(_)
        | Body::ProtectionOrderViolated(_) => Some(POLICE),
        Body::ProtectionOrderDecided(_)
        | Body::ProtectionOrderChanged(_)
        | Body::HearingScheduled(_)
        | Body::JudgmentIssued(_) => Some(COURT),
        Body::ProtectionOrderApplied(_) => Some(APPLICANTS),
        Body::ShelterAdmitted(_)
        | Body::ShelterExtended(_)
        | Body::ShelterExited(_)
        | Body::MarriageRegistrationFlagged(_) => Some(CIVIL),
        Body::LabourInspectionOpened(_) | Body::LabourViolationFound(_) => Some(LABOUR),
        Body::LegalAidApplied(_) | Body::LegalAidDecided(_) | Body::LawyerAssigned(_) => {
            Some(JUSTICE)
        }
        Body::CaseListed(_)
        | Body::MeetingHeld(_)
        | Body::ActionAgreed(_)
        | Body::PersonalDataRestricted(_)
        | Body::PersonalDataErased(_) => Some(COMMITTEE),
        _ => None,
    }
}

fn list_names(agencies: &[Agency]) -> String {
    let names: Vec<&str> = agencies.iter().map(|a| agency_object(*a)).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Decides whether `event` may be appended to the case `view` (`None` when
/// the case does not exist yet). `corrected` is the event named by
/// `corrects_event_id`, if the caller found it in the log.
///
/// Checks run from the general to the specific: structure, who may emit the
/// body, existence of the case and involvement (one answer for both, see
/// [`not_open_to`]), closure, then the body's own rules, so that the first
/// reason a clerk reads is the one to fix first.
pub fn decide(
    ctx: &Context<'_>,
    view: Option<&CaseView>,
    event: &Event,
    corrected: Option<&Event>,
) -> Result<(), Rejection> {
    check_event(event)?;
    let (Some(body), Some(at), Ok(agency)) = (
        event.body.as_ref(),
        event.occurred_at.as_ref(),
        Agency::try_from(event.agency),
    ) else {
        // check_event guarantees all three; stay total regardless.
        return Err(reject(
            RejectionCode::Malformed,
            "the event could not be read".into(),
        ));
    };
    let correction = event.corrects_event_id.is_some();
    let case = &event.case_id;

    // Who may send a body at all depends on nothing in the case, so it is
    // said first, whether the case exists or not.
    if let Some(allowed) = permitted_emitters(body)
        && !allowed.contains(&agency)
    {
        return Err(reject(
            RejectionCode::NotPermitted,
            format!(
                "{} may not send {}; only {} may",
                agency_name(agency),
                body_kind(body),
                list_names(allowed)
            ),
        ));
    }
    let committee = agency == Agency::PoliticalLegalCommittee;
    let Some(view) = view else {
        return match body {
            Body::CaseOpened(_) if !correction => Ok(()),
            _ => Err(not_open_to(case, agency)),
        };
    };
    if view.case_id != *case {
        return Err(reject(
            RejectionCode::CaseMismatch,
            format!(
                "the event is for case {case} but was checked against case {}; this is a fault of the receiving system",
                view.case_id
            ),
        ));
    }
    if matches!(body, Body::CaseOpened(_)) && !correction {
        return Err(reject(
            RejectionCode::CaseExists,
            format!(
                "case {case} is already open; choose a new case id, or send a correction of the opening"
            ),
        ));
    }
    // No existence oracle: to an agency not involved, a case that exists
    // and one that does not give the same answer, before anything about the
    // case (closed, its lead, its records) is looked at.
    if !committee && !involved(view, agency) && !answers_own_referral(view, body, agency) {
        return Err(not_open_to(case, agency));
    }
    let reopening = matches!(body, Body::CaseReopened(_)) && !correction;
    let personal_data = matches!(
        body,
        Body::PersonalDataRestricted(_) | Body::PersonalDataErased(_)
    );
    if view.closed_at.is_some() && !reopening && !personal_data {
        return Err(reject(
            RejectionCode::CaseClosed,
            format!(
                "case {case} is closed; the lead agency or the political-legal committee must reopen it first"
            ),
        ));
    }
    predecessor(view, event, body, corrected)?;
    if matches!(body, Body::CaseClosed(_) | Body::CaseReopened(_))
        && !committee
        && view.lead != agency as i32
    {
        return Err(reject(
            RejectionCode::NotPermitted,
            format!(
                "{} may not {} case {case}; only the lead agency ({}) or the political-legal committee may",
                agency_name(agency),
                if matches!(body, Body::CaseClosed(_)) {
                    "close"
                } else {
                    "reopen"
                },
                agency_object_i32(view.lead)
            ),
        ));
    }
    if !committee && !matches!(body, Body::CaseOpened(_)) && !involved(view, agency) {
        return Err(reject(
            RejectionCode::NotInvolved,
            format!(
                "{} is not involved in case {case}; ask the lead agency to refer it",
                agency_name(agency)
            ),
        ));
    }
    personal_data_rules(view, event)?;
    if correction {
        if personal_data {
            return Err(reject(
                RejectionCode::BadCorrection,
                format!(
                    "{} cannot be corrected; send a new one (a later restriction extends a legal hold)",
                    body_kind(body)
                ),
            ));
        }
        check_correction(view, event, body, corrected)?;
        return correction_rules(ctx, view, body, corrected);
    }
    body_rules(ctx, view, body, agency, at, case)
}

/// The one answer to an agency for a case that is not open to it: not
/// opened yet, or opened and the agency not involved. The same code and the
/// same words either way, so that nothing sent on the bus tells an agency
/// whether another agency's case exists. The code is the retryable one: an
/// opening or a referral on its way makes the same event land later.
fn not_open_to(case: &str, agency: Agency) -> Rejection {
    let who = agency_object(agency);
    reject(
        RejectionCode::PredecessorMissing,
        format!(
            "case {case} is not open to {who}: it has not been opened yet, or {who} is not involved in it; if its opening or a referral to {who} is on its way, publish this event again once that is stored (the client library does so by itself), otherwise ask the lead agency to refer the case"
        ),
    )
}

/// Whether `body` answers a referral of the case addressed to `agency` (an
/// agency that returned a referral is no longer involved, yet its answer
/// is about its own referral and may be judged on it).
fn answers_own_referral(view: &CaseView, body: &Body, agency: Agency) -> bool {
    let referral = match body {
        Body::ReferralAccepted(b) => &b.referral_id,
        Body::ReferralReturned(b) => &b.referral_id,
        _ => return false,
    };
    view.referrals
        .iter()
        .any(|r| r.referral_id == *referral && r.to_agency == agency as i32)
}

/// The corrected event must be this agency's own event of the same kind in
/// the same case, and must keep the id of the record it is about (a
/// correction that changed the id would really be a new record).
fn check_correction(
    view: &CaseView,
    event: &Event,
    body: &Body,
    corrected: Option<&Event>,
) -> Result<(), Rejection> {
    let bad = |reason: String| Err(reject(RejectionCode::BadCorrection, reason));
    let target = event.corrects_event_id.as_deref().unwrap_or_default();
    let Some(c) = corrected else {
        return bad(format!(
            "event {} was not found in case {}; check the id of the event you mean to correct",
            shorten(target),
            view.case_id
        ));
    };
    if c.event_id != target {
        return bad(format!(
            "the event supplied as corrected is {}, not {}; this is a fault of the receiving system",
            shorten(&c.event_id),
            shorten(target)
        ));
    }
    if c.case_id != event.case_id {
        return bad(format!(
            "event {} belongs to case {}, not {}; correct it in its own case",
            shorten(target),
            shorten(&c.case_id),
            event.case_id
        ));
    }
    if c.agency != event.agency {
        return bad(format!(
            "event {} was sent by {}; only the agency that sent an event may correct it",
            shorten(target),
            agency_object_i32(c.agency)
        ));
    }
    let Some(cbody) = c.body.as_ref() else {
        return bad(format!(
            "event {} has no body and cannot be corrected",
            shorten(target)
        ));
    };
    if body_kind(cbody) != body_kind(body) {
        return bad(format!(
            "event {} is a {} and this correction is a {}; a correction must be the same kind of event",
            shorten(target),
            body_kind(cbody),
            body_kind(body)
        ));
    }
    if let (Some((field, old)), Some((_, new))) = (record_key(cbody), record_key(body))
        && old != new
    {
        return bad(format!(
            "event {} is about {field} {}, so its correction must keep that id; to record a different one, send a new event",
            shorten(target),
            shorten(&old)
        ));
    }
    Ok(())
}

/// The identity of the record an event is about, including the parts a
/// correction may not change because other records hang off them (who a
/// referral went to, who owns an action, what a court decided).
fn record_key(body: &Body) -> Option<(&'static str, String)> {
    let k = |field: &'static str, v: &str| Some((field, v.to_owned()));
    match body {
        Body::ReferralIssued(b) => Some((
            "referral",
            format!("{} to {}", b.referral_id, agency_object_i32(b.to_agency)),
        )),
        Body::ReferralAccepted(b) => k("referral", &b.referral_id),
        Body::ReferralReturned(b) => k("referral", &b.referral_id),
        Body::AlarmReceived(b) => k("alarm", &b.alarm_id),
        Body::OfficersDispatched(b) => k("alarm", &b.alarm_id),
        Body::OfficersArrived(b) => k("alarm", &b.alarm_id),
        Body::AlarmDisposed(b) => k("alarm", &b.alarm_id),
        Body::WrittenWarningIssued(b) => k("warning", &b.warning_id),
        Body::FollowUpVisitRecorded(b) => k("warning", &b.warning_id),
        Body::ProtectionOrderChecked(b) => k("order", &b.order_id),
        Body::ProtectionOrderViolated(b) => k("order", &b.order_id),
        Body::ProtectionOrderApplied(b) => k("application", &b.application_id),
        Body::ProtectionOrderDecided(b) => Some((
            "application",
            format!(
                "{} ({} {})",
                b.application_id,
                decision_word(b.decision),
                b.order_id
            ),
        )),
        Body::ProtectionOrderChanged(b) => Some((
            "order",
            format!("{} ({})", b.order_id, change_word(b.change)),
        )),
        Body::HearingScheduled(b) => k("hearing", &b.hearing_id),
        Body::ShelterAdmitted(b) => k("placement", &b.placement_id),
        Body::ShelterExtended(b) => k("placement", &b.placement_id),
        Body::ShelterExited(b) => k("placement", &b.placement_id),
        Body::LabourInspectionOpened(b) => k("inspection", &b.inspection_id),
        Body::LabourViolationFound(b) => k("inspection", &b.inspection_id),
        Body::LegalAidApplied(b) => k("application", &b.application_id),
        Body::LegalAidDecided(b) => k("application", &b.application_id),
        Body::LawyerAssigned(b) => k("application", &b.application_id),
        Body::CaseListed(b) => k("meeting", &b.meeting_id),
        Body::MeetingHeld(b) => k("meeting", &b.meeting_id),
        Body::ActionAgreed(b) => Some((
            "action",
            format!("{} owned by {}", b.action_id, agency_object_i32(b.owner)),
        )),
        Body::ActionReported(b) => k("action", &b.action_id),
        _ => None,
    }
}

fn decision_word(v: i32) -> &'static str {
    match OrderDecision::try_from(v) {
        Ok(OrderDecision::Granted) => "granted",
        Ok(OrderDecision::Rejected) => "rejected",
        _ => "undecided",
    }
}

fn change_word(v: i32) -> &'static str {
    match OrderChange::try_from(v) {
        Ok(OrderChange::Reviewed) => "reviewed",
        Ok(OrderChange::Extended) => "extended",
        Ok(OrderChange::Revoked) => "revoked",
        _ => "changed",
    }
}

/// Rules for a correction. The once-only and uniqueness rules are skipped
/// (the record exists because the corrected event made it); what remains
/// are the rules on the new values of the fields a correction overwrites.
fn correction_rules(
    ctx: &Context<'_>,
    view: &CaseView,
    body: &Body,
    corrected: Option<&Event>,
) -> Result<(), Rejection> {
    let base = corrected.and_then(|c| c.occurred_at).unwrap_or_default();
    match body {
        Body::ReferralIssued(b) => {
            if !view
                .referrals
                .iter()
                .any(|r| r.referral_id == b.referral_id)
            {
                return Err(unknown(view, "referral", &b.referral_id));
            }
            if let Some(due) = &b.due_at {
                after(due, &base, "referral_issued.due_at", "the referral")?;
            }
            Ok(())
        }
        Body::ProtectionOrderDecided(b) if b.decision == OrderDecision::Granted as i32 => {
            let Some(order) = view.orders.iter().find(|o| o.order_id == b.order_id) else {
                return Err(unknown(view, "protection order", &b.order_id));
            };
            let granted_at = order.granted_at.unwrap_or(base);
            order_term(
                ctx,
                b.expires_at.as_ref(),
                &granted_at,
                "protection_order_decided.expires_at",
            )
        }
        Body::ProtectionOrderChanged(b) if b.change == OrderChange::Extended as i32 => order_term(
            ctx,
            b.new_expires_at.as_ref(),
            &base,
            "protection_order_changed.new_expires_at",
        ),
        Body::ShelterExtended(b) => match &b.until {
            Some(until) => after(until, &base, "shelter_extended.until", "the extension"),
            None => Ok(()),
        },
        Body::ActionAgreed(b) => match &b.due_at {
            Some(due) => after(due, &base, "action_agreed.due_at", "the meeting"),
            None => Ok(()),
        },
        Body::LegalAidDecided(b)
            if !b.granted
                && find_legal_aid(view, &b.application_id).is_some_and(|a| a.lawyer_assigned) =>
        {
            Err(reject(
                RejectionCode::Conflict,
                format!(
                    "a lawyer has been assigned on legal-aid application {} in case {}, so its decision cannot be corrected to a refusal",
                    shorten(&b.application_id),
                    view.case_id
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// A record of the case that no stored event has created (yet): the event
/// may only have arrived before the one that creates it.
fn unknown(view: &CaseView, what: &str, id: &str) -> Rejection {
    missing_record(view, what, id, "the event that creates it")
}

fn missing_record(view: &CaseView, what: &str, id: &str, creator: &str) -> Rejection {
    reject(
        RejectionCode::PredecessorMissing,
        format!(
            "{what} {} does not exist in case {} yet; once {creator} is stored, publish this event again (the client library does so by itself); if no such event was sent, check the {what} id",
            shorten(id),
            view.case_id
        ),
    )
}

/// Whether the event only waits for an earlier event of the case: the
/// event it corrects, or the record it refers to (a referral, alarm,
/// warning, order, application, placement, inspection, meeting listing or
/// action), is not in the case yet. Checked before involvement: an agency
/// answering a referral that has not arrived is not involved yet either,
/// and the missing referral is what to report. A correction is looked up
/// among the correcting agency's own events only (event ids are each
/// agency's own), so another agency's event is never named here.
///
/// An agency not involved in the case never reaches this check (see
/// [`not_open_to`]), unless it answers a referral addressed to it.
fn predecessor(
    view: &CaseView,
    event: &Event,
    body: &Body,
    corrected: Option<&Event>,
) -> Result<(), Rejection> {
    if let Some(target) = &event.corrects_event_id {
        if corrected.is_none() {
            return Err(reject(
                RejectionCode::PredecessorMissing,
                format!(
                    "event {} of {} is not in the log yet, so it cannot be corrected; once it is stored, publish this correction again (the client library does so by itself); if it was never sent, check the id of the event you mean to correct",
                    shorten(target),
                    agency_object_i32(event.agency)
                ),
            ));
        }
        return Ok(());
    }
    let exists =
        |prefix: &str, id: &str| find_obligation(view, &obligation_id(prefix, id)).is_some();
    let order = |id: &str| view.orders.iter().any(|o| o.order_id == id);
    let missing =
        |what: &str, id: &str, creator: &str| Err(missing_record(view, what, id, creator));
    match body {
        Body::ReferralAccepted(b)
            if !view
                .referrals
                .iter()
                .any(|r| r.referral_id == b.referral_id) =>
        {
            missing("referral", &b.referral_id, "its referral_issued")
        }
        Body::ReferralReturned(b)
            if !view
                .referrals
                .iter()
                .any(|r| r.referral_id == b.referral_id) =>
        {
            missing("referral", &b.referral_id, "its referral_issued")
        }
        Body::OfficersDispatched(b) if !exists(ALARM_ARRIVAL, &b.alarm_id) => {
            missing("alarm", &b.alarm_id, "its alarm_received")
        }
        Body::OfficersArrived(b) if !exists(ALARM_ARRIVAL, &b.alarm_id) => {
            missing("alarm", &b.alarm_id, "its alarm_received")
        }
        Body::AlarmDisposed(b) if !exists(ALARM_ARRIVAL, &b.alarm_id) => {
            missing("alarm", &b.alarm_id, "its alarm_received")
        }
        Body::FollowUpVisitRecorded(b) if !exists(WARNING_FOLLOW_UP, &b.warning_id) => missing(
            "written warning",
            &b.warning_id,
            "its written_warning_issued",
        ),
        Body::ProtectionOrderChecked(b) if !order(&b.order_id) => missing(
            "protection order",
            &b.order_id,
            "the protection_order_decided granting it",
        ),
        Body::ProtectionOrderViolated(b) if !order(&b.order_id) => missing(
            "protection order",
            &b.order_id,
            "the protection_order_decided granting it",
        ),
        Body::ProtectionOrderChanged(b) if !order(&b.order_id) => missing(
            "protection order",
            &b.order_id,
            "the protection_order_decided granting it",
        ),
        Body::ProtectionOrderDecided(b)
            if find_obligation(view, &obligation_id(ORDER_DECISION, &b.application_id))
                .is_none() =>
        {
            missing(
                "protection-order application",
                &b.application_id,
                "its protection_order_applied",
            )
        }
        Body::ShelterExtended(b) if !placement_exists(view, &b.placement_id) => {
            missing("placement", &b.placement_id, "its shelter_admitted")
        }
        Body::ShelterExited(b) if !placement_exists(view, &b.placement_id) => {
            missing("placement", &b.placement_id, "its shelter_admitted")
        }
        Body::LabourViolationFound(b) if find_inspection(view, &b.inspection_id).is_none() => {
            missing(
                "labour inspection",
                &b.inspection_id,
                "its labour_inspection_opened",
            )
        }
        Body::LegalAidDecided(b) if find_legal_aid(view, &b.application_id).is_none() => missing(
            "legal-aid application",
            &b.application_id,
            "its legal_aid_applied",
        ),
        Body::LawyerAssigned(b) => match find_legal_aid(view, &b.application_id) {
            None => missing(
                "legal-aid application",
                &b.application_id,
                "its legal_aid_applied",
            ),
            Some(app) if !app.decided => Err(reject(
                RejectionCode::PredecessorMissing,
                format!(
                    "legal-aid application {} in case {} has not been decided yet; once its legal_aid_decided is stored, publish this event again (the client library does so by itself)",
                    shorten(&b.application_id),
                    view.case_id
                ),
            )),
            Some(_) => Ok(()),
        },
        Body::MeetingHeld(b) if find_meeting(view, &b.meeting_id).is_none() => Err(reject(
            RejectionCode::PredecessorMissing,
            format!(
                "case {} is not listed for meeting {} yet; once its case_listed is stored, publish this event again (the client library does so by itself); if the case was never listed, list it first",
                view.case_id,
                shorten(&b.meeting_id)
            ),
        )),
        Body::ActionReported(b) if !view.actions.iter().any(|a| a.action_id == b.action_id) => {
            missing("action", &b.action_id, "its action_agreed")
        }
        _ => Ok(()),
    }
}

fn after(t: &Timestamp, base: &Timestamp, field: &str, what: &str) -> Result<(), Rejection> {
    if time::before(base, t) {
        Ok(())
    } else {
        Err(reject(
            RejectionCode::InvalidField,
            format!(
                "{field} is {}, not after {what} ({}); give a later time",
                time::format(t),
                time::format(base)
            ),
        ))
    }
}

/// An order (or an extension) runs for at most the policy's term in
/// calendar months from `from`, and must end after `from`.
fn order_term(
    ctx: &Context<'_>,
    expires: Option<&Timestamp>,
    from: &Timestamp,
    field: &str,
) -> Result<(), Rejection> {
    let Some(expires) = expires else {
        return Ok(());
    };
    after(expires, from, field, "the decision")?;
    let limit = time::plus_months(from, ctx.policy.order_max_months);
    if time::before(&limit, expires) {
        return Err(reject(
            RejectionCode::InvalidField,
            format!(
                "{field} is {}, more than {} months after {}; an order may run until {} at the latest",
                time::format(expires),
                ctx.policy.order_max_months,
                time::format(from),
                time::format(&limit)
            ),
        ));
    }
    Ok(())
}

fn body_rules(
    ctx: &Context<'_>,
    view: &CaseView,
    body: &Body,
    agency: Agency,
    at: &Timestamp,
    case: &str,
) -> Result<(), Rejection> {
    let exists =
        |prefix: &str, id: &str| find_obligation(view, &obligation_id(prefix, id)).is_some();
    let conflict = |what: &str, id: &str| {
        Err(reject(
            RejectionCode::Conflict,
            format!(
                "{what} {} already exists in case {case}; choose a new id, or send a correction",
                shorten(id)
            ),
        ))
    };
    match body {
        Body::ReferralIssued(b) => {
            if view
                .referrals
                .iter()
                .any(|r| r.referral_id == b.referral_id)
            {
                return conflict("referral", &b.referral_id);
            }
            match &b.due_at {
                Some(due) => after(due, at, "referral_issued.due_at", "the referral"),
                None => Ok(()),
            }
        }
        Body::ReferralAccepted(b) => answer_referral(view, &b.referral_id, agency, "accept"),
        Body::ReferralReturned(b) => answer_referral(view, &b.referral_id, agency, "return"),
        Body::AlarmReceived(b) if exists(ALARM_ARRIVAL, &b.alarm_id) => {
            conflict("alarm", &b.alarm_id)
        }
        Body::OfficersDispatched(b) if !exists(ALARM_ARRIVAL, &b.alarm_id) => {
            Err(unknown(view, "alarm", &b.alarm_id))
        }
        Body::OfficersArrived(b) if !exists(ALARM_ARRIVAL, &b.alarm_id) => {
            Err(unknown(view, "alarm", &b.alarm_id))
        }
        Body::AlarmDisposed(b) if !exists(ALARM_ARRIVAL, &b.alarm_id) => {
            Err(unknown(view, "alarm", &b.alarm_id))
        }
        Body::WrittenWarningIssued(b) if exists(WARNING_FOLLOW_UP, &b.warning_id) => {
            conflict("written warning", &b.warning_id)
        }
        Body::FollowUpVisitRecorded(b) if !exists(WARNING_FOLLOW_UP, &b.warning_id) => {
            Err(unknown(view, "written warning", &b.warning_id))
        }
        Body::ProtectionOrderChecked(b)
            if !view.orders.iter().any(|o| o.order_id == b.order_id) =>
        {
            Err(unknown(view, "protection order", &b.order_id))
        }
        Body::ProtectionOrderViolated(b)
            if !view.orders.iter().any(|o| o.order_id == b.order_id) =>
        {
            Err(unknown(view, "protection order", &b.order_id))
        }
        Body::ProtectionOrderApplied(b) if exists(ORDER_DECISION, &b.application_id) => {
            conflict("protection-order application", &b.application_id)
        }
        Body::ProtectionOrderDecided(b) => {
            let Some(o) = find_obligation(view, &obligation_id(ORDER_DECISION, &b.application_id))
            else {
                return Err(unknown(
                    view,
                    "protection-order application",
                    &b.application_id,
                ));
            };
            if o.fulfilled_at.is_some() {
                return Err(reject(
                    RejectionCode::AlreadyDone,
                    format!(
                        "protection-order application {} in case {case} has already been decided; to change the order, send protection_order_changed",
                        shorten(&b.application_id)
                    ),
                ));
            }
            if b.decision == OrderDecision::Granted as i32 {
                if view.orders.iter().any(|o| o.order_id == b.order_id) {
                    return conflict("protection order", &b.order_id);
                }
                order_term(
                    ctx,
                    b.expires_at.as_ref(),
                    at,
                    "protection_order_decided.expires_at",
                )?;
            }
            Ok(())
        }
        Body::ProtectionOrderChanged(b) => {
            let Some(order) = view.orders.iter().find(|o| o.order_id == b.order_id) else {
                return Err(unknown(view, "protection order", &b.order_id));
            };
            if order.revoked {
                return Err(reject(
                    RejectionCode::Conflict,
                    format!(
                        "protection order {} in case {case} has been revoked and can no longer be changed; a new order needs a new application",
                        shorten(&b.order_id)
                    ),
                ));
            }
            if b.change == OrderChange::Extended as i32 {
                if let (Some(new), Some(current)) = (&b.new_expires_at, &order.expires_at)
                    && !time::before(current, new)
                {
                    return Err(reject(
                        RejectionCode::InvalidField,
                        format!(
                            "protection_order_changed.new_expires_at is {}, not after the current expiry {}; an extension must end later",
                            time::format(new),
                            time::format(current)
                        ),
                    ));
                }
                order_term(
                    ctx,
                    b.new_expires_at.as_ref(),
                    at,
                    "protection_order_changed.new_expires_at",
                )?;
            }
            Ok(())
        }
        Body::ShelterAdmitted(b) if placement_exists(view, &b.placement_id) => {
            conflict("placement", &b.placement_id)
        }
        Body::ShelterExtended(b) => {
            open_placement(view, &b.placement_id, case)?;
            match &b.until {
                Some(until) => after(until, at, "shelter_extended.until", "the extension"),
                None => Ok(()),
            }
        }
        Body::ShelterExited(b) => open_placement(view, &b.placement_id, case),
        Body::LabourInspectionOpened(b) if find_inspection(view, &b.inspection_id).is_some() => {
            conflict("labour inspection", &b.inspection_id)
        }
        Body::LabourViolationFound(b) if find_inspection(view, &b.inspection_id).is_none() => {
            Err(reject(
                RejectionCode::PredecessorMissing,
                format!(
                    "labour inspection {} does not exist in case {case}; open the inspection first with labour_inspection_opened",
                    shorten(&b.inspection_id)
                ),
            ))
        }
        Body::LegalAidApplied(b) if find_legal_aid(view, &b.application_id).is_some() => {
            conflict("legal-aid application", &b.application_id)
        }
        Body::LegalAidDecided(b) => {
            let Some(app) = find_legal_aid(view, &b.application_id) else {
                return Err(unknown(view, "legal-aid application", &b.application_id));
            };
            if app.decided {
                return Err(reject(
                    RejectionCode::AlreadyDone,
                    format!(
                        "legal-aid application {} in case {case} has already been decided; send a correction to change the decision",
                        shorten(&b.application_id)
                    ),
                ));
            }
            Ok(())
        }
        Body::LawyerAssigned(b) => {
            let Some(app) = find_legal_aid(view, &b.application_id) else {
                return Err(unknown(view, "legal-aid application", &b.application_id));
            };
            match (app.decided, app.granted) {
                (true, true) => Ok(()),
                (true, false) => Err(reject(
                    RejectionCode::Conflict,
                    format!(
                        "legal-aid application {} in case {case} was refused; a lawyer can only be assigned on a granted application",
                        shorten(&b.application_id)
                    ),
                )),
                (false, _) => Err(reject(
                    RejectionCode::Conflict,
                    format!(
                        "legal-aid application {} in case {case} has not been decided; record the decision first",
                        shorten(&b.application_id)
                    ),
                )),
            }
        }
        Body::CaseListed(b) => match find_meeting(view, &b.meeting_id) {
            Some(m) if m.held => Err(reject(
                RejectionCode::AlreadyDone,
                format!(
                    "meeting {} has already been held{}; list case {case} for a later meeting under its own id",
                    shorten(&b.meeting_id),
                    held_on(m.held_at.as_ref())
                ),
            )),
            Some(_) => Err(reject(
                RejectionCode::AlreadyDone,
                format!(
                    "case {case} is already listed for meeting {}; to change its time, send a correction of the listing",
                    shorten(&b.meeting_id)
                ),
            )),
            None => Ok(()),
        },
        Body::MeetingHeld(b) => match find_meeting(view, &b.meeting_id) {
            Some(m) if m.held => Err(reject(
                RejectionCode::AlreadyDone,
                format!(
                    "meeting {} has already been recorded as held{} for case {case}",
                    shorten(&b.meeting_id),
                    held_on(m.held_at.as_ref())
                ),
            )),
            Some(_) => Ok(()),
            None => Err(reject(
                RejectionCode::PredecessorMissing,
                format!(
                    "case {case} is not listed for meeting {}; list it for that meeting first",
                    shorten(&b.meeting_id)
                ),
            )),
        },
        Body::ActionAgreed(b) => {
            if view.actions.iter().any(|a| a.action_id == b.action_id) {
                return conflict("action", &b.action_id);
            }
            match &b.due_at {
                Some(due) => after(due, at, "action_agreed.due_at", "the meeting"),
                None => Ok(()),
            }
        }
        Body::ActionReported(b) => {
            let Some(action) = view.actions.iter().find(|a| a.action_id == b.action_id) else {
                return Err(unknown(view, "action", &b.action_id));
            };
            if action.owner != agency as i32 {
                return Err(reject(
                    RejectionCode::NotPermitted,
                    format!(
                        "action {} in case {case} is owned by {}; only its owner may report on it",
                        shorten(&b.action_id),
                        agency_object_i32(action.owner)
                    ),
                ));
            }
            if action.outcome != 0 {
                return Err(reject(
                    RejectionCode::AlreadyDone,
                    format!(
                        "action {} in case {case} has already been reported; send a correction to change the report",
                        shorten(&b.action_id)
                    ),
                ));
            }
            Ok(())
        }
        Body::CaseClosed(_) if agency != Agency::PoliticalLegalCommittee => {
            let mut open: Vec<String> = view
                .referrals
                .iter()
                .filter(|r| r.state == InvolvementState::Received as i32)
                .map(|r| {
                    format!(
                        "referral {} awaits an answer from {}",
                        r.referral_id,
                        agency_object_i32(r.to_agency)
                    )
                })
                .collect();
            open.extend(view.actions.iter().filter(|a| a.outcome == 0).map(|a| {
                format!(
                    "action {} ({}) is unreported",
                    a.action_id,
                    agency_object_i32(a.owner)
                )
            }));
            if open.is_empty() {
                Ok(())
            } else {
                Err(reject(
                    RejectionCode::Conflict,
                    format!(
                        "case {case} cannot be closed by the lead agency while {}; wait for them, or ask the political-legal committee to close it",
                        open.join(" and ")
                    ),
                ))
            }
        }
        Body::CaseReopened(_) if view.closed_at.is_none() => Err(reject(
            RejectionCode::Conflict,
            format!("case {case} is not closed, so it cannot be reopened"),
        )),
        _ => Ok(()),
    }
}

/// Once a case's personal data is restricted or erased, no new personal
/// values may arrive for it; a restriction cannot follow an erasure; an
/// erasure must wait for the legal hold to end.
fn personal_data_rules(view: &CaseView, event: &Event) -> Result<(), Rejection> {
    let case = &view.case_id;
    let state = crate::personal::state_of(view.personal_data);
    let since = view
        .personal_data_changed_at
        .as_ref()
        .map(time::format)
        .unwrap_or_default();
    let until = view
        .retain_until
        .as_ref()
        .map(time::format)
        .unwrap_or_default();
    let paths = match state {
        PersonalDataState::Active => Vec::new(),
        _ => crate::personal::personal_paths(event),
    };
    if !paths.is_empty() {
        let why = if state == PersonalDataState::Erased {
            format!("was erased on {since}")
        } else {
            format!("is under legal hold until {until}, blocked from every use but storage")
        };
        return Err(reject(
            RejectionCode::NotPermitted,
            format!(
                "case {case}'s personal data {why}, so no new personal data may be added; send the event again under a new event id without {}",
                paths.join(", ")
            ),
        ));
    }
    let at = event.occurred_at.unwrap_or_default();
    match &event.body {
        Some(Body::PersonalDataRestricted(_) | Body::PersonalDataErased(_))
            if state == PersonalDataState::Erased =>
        {
            Err(reject(
                RejectionCode::Conflict,
                format!("case {case}'s personal data was already erased on {since}"),
            ))
        }
        Some(Body::PersonalDataRestricted(b)) => match &b.retain_until {
            Some(t) => after(
                t,
                &at,
                "personal_data_restricted.retain_until",
                "the restriction",
            ),
            None => Ok(()),
        },
        Some(Body::PersonalDataErased(_))
            if state == PersonalDataState::LegalHold
                && view
                    .retain_until
                    .as_ref()
                    .is_some_and(|t| time::before(&at, t)) =>
        {
            Err(reject(
                RejectionCode::NotPermitted,
                format!(
                    "case {case}'s personal data is under legal hold until {until} ({}); erase it after then",
                    shorten(&view.personal_data_basis)
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn held_on(at: Option<&Timestamp>) -> String {
    at.map(|t| format!(" on {}", time::format(t)))
        .unwrap_or_default()
}

fn answer_referral(view: &CaseView, id: &str, agency: Agency, verb: &str) -> Result<(), Rejection> {
    let Some(r) = view.referrals.iter().find(|r| r.referral_id == id) else {
        return Err(unknown(view, "referral", id));
    };
    if r.to_agency != agency as i32 {
        return Err(reject(
            RejectionCode::NotPermitted,
            format!(
                "referral {} was sent to {}; only {} may {verb} it",
                shorten(id),
                agency_object_i32(r.to_agency),
                agency_object_i32(r.to_agency)
            ),
        ));
    }
    if r.state != InvolvementState::Received as i32 {
        let done = if r.state == InvolvementState::Accepted as i32 {
            "accepted"
        } else {
            "returned"
        };
        return Err(reject(
            RejectionCode::AlreadyDone,
            format!(
                "referral {} in case {} was already {done}; send a correction if the answer was wrong",
                shorten(id),
                view.case_id
            ),
        ));
    }
    Ok(())
}

fn open_placement(view: &CaseView, id: &str, case: &str) -> Result<(), Rejection> {
    if !placement_exists(view, id) {
        return Err(unknown(view, "placement", id));
    }
    if !placement_open(view, id) {
        return Err(reject(
            RejectionCode::AlreadyDone,
            format!(
                "placement {} in case {case} has ended; admit the person again under a new placement id",
                shorten(id)
            ),
        ));
    }
    Ok(())
}
