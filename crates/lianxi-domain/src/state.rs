//! Queries on a case view shared by `decide` and `apply`.
//!
//! Alarms, written warnings, protection-order applications and shelter
//! placements have no records of their own: each creates an obligation with
//! a stable id (`alarm_arrival/<alarm_id>` and so on), so the obligation
//! list doubles as their register. Registers whose facts an obligation
//! cannot carry have records: labour inspections (no obligation at all),
//! legal-aid applications (the outcome and the lawyer outlive the decision
//! obligation) and meetings (their times). Either way there is one source of
//! truth, so `decide` can never disagree with what `apply` recorded.

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    Agency, CaseView, InvolvementState, LabourInspection, LegalAidApplication, Meeting, Obligation,
    ObligationKind,
};

pub(crate) const REFERRAL_RESPONSE: &str = "referral_response";
pub(crate) const ORDER_DECISION: &str = "order_decision";
pub(crate) const ORDER_CHECK: &str = "order_check";
pub(crate) const WARNING_FOLLOW_UP: &str = "warning_follow_up";
pub(crate) const EMERGENCY_PLACEMENT: &str = "emergency_placement";
pub(crate) const SHELTER_REVIEW: &str = "shelter_review";
pub(crate) const ALARM_ARRIVAL: &str = "alarm_arrival";
pub(crate) const PETITION_ACCEPTANCE: &str = "petition_acceptance";
pub(crate) const PETITION_HANDLING: &str = "petition_handling";
pub(crate) const LEGAL_AID_DECISION: &str = "legal_aid_decision";
pub(crate) const MEETING_ACTION: &str = "meeting_action";

pub(crate) fn obligation_id(prefix: &str, id: &str) -> String {
    format!("{prefix}/{id}")
}

pub(crate) fn find_obligation<'a>(view: &'a CaseView, id: &str) -> Option<&'a Obligation> {
    view.obligations.iter().find(|o| o.id == id)
}

pub(crate) fn is_open(o: &Obligation) -> bool {
    o.fulfilled_at.is_none() && !o.cancelled
}

/// Whether an obligation id belongs to a shelter placement: the emergency
/// term, the first review, and the reviews opened by extensions
/// (`shelter_review/<placement_id>/<n>`).
pub(crate) fn is_placement_obligation(id: &str, placement_id: &str) -> bool {
    if let Some(rest) = id
        .strip_prefix(EMERGENCY_PLACEMENT)
        .and_then(|r| r.strip_prefix('/'))
    {
        return rest == placement_id;
    }
    if let Some(rest) = id
        .strip_prefix(SHELTER_REVIEW)
        .and_then(|r| r.strip_prefix('/'))
    {
        return rest == placement_id
            || rest
                .strip_prefix(placement_id)
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
    }
    false
}

pub(crate) fn placement_exists(view: &CaseView, placement_id: &str) -> bool {
    view.obligations
        .iter()
        .any(|o| is_placement_obligation(&o.id, placement_id))
}

/// A placement is open while one of its obligations is: admission opens one,
/// an extension replaces it, the exit fulfils it.
pub(crate) fn placement_open(view: &CaseView, placement_id: &str) -> bool {
    view.obligations
        .iter()
        .any(|o| is_open(o) && is_placement_obligation(&o.id, placement_id))
}

pub(crate) fn find_inspection<'a>(view: &'a CaseView, id: &str) -> Option<&'a LabourInspection> {
    view.inspections.iter().find(|i| i.inspection_id == id)
}

pub(crate) fn find_legal_aid<'a>(view: &'a CaseView, id: &str) -> Option<&'a LegalAidApplication> {
    view.legal_aid.iter().find(|a| a.application_id == id)
}

pub(crate) fn find_meeting<'a>(view: &'a CaseView, id: &str) -> Option<&'a Meeting> {
    view.meetings.iter().find(|m| m.meeting_id == id)
}

/// Whether an agency takes part in the case and may therefore emit events
/// for it (need to know works the same way for reading). Involved are: the
/// first-contact agency, the lead, the target of a referral it has not
/// returned, the owner of an agreed action, and the owner of any other
/// obligation the case puts on it (the court for an application filed by
/// police or the federation, the police for checking a granted order).
pub(crate) fn involved(view: &CaseView, agency: Agency) -> bool {
    let a = agency as i32;
    view.first_contact == a
        || view.lead == a
        || view
            .referrals
            .iter()
            .any(|r| r.to_agency == a && r.state != InvolvementState::Returned as i32)
        || view.actions.iter().any(|x| x.owner == a)
        || view
            .obligations
            .iter()
            .any(|o| o.owner == a && o.kind != ObligationKind::ReferralResponse as i32)
}

/// The latest of two times, for `last_event_at`.
pub(crate) fn later(a: Option<Timestamp>, b: Timestamp) -> Timestamp {
    match a {
        Some(a) if crate::time::before(&b, &a) => a,
        _ => b,
    }
}
