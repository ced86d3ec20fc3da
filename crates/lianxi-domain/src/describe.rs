//! Names and plain-language lines for events, for timelines and logs.
//!
//! A line says who did what in words a secretariat clerk uses. It never
//! includes the fields that are sensitive personal information (the person
//! reference, a shelter location, the mandatory reporter, the respondent or
//! the case summary), because the timeline is shown to every involved agency.

use lianxi_proto::v1::{
    ActionOutcome, Agency, Area, ClosureOutcome, ConsentDecision, EscalationCriterion, Event,
    MarriageConcern, Matter, OrderChange, OrderDecision, RiskLevel, Violation, event::Body,
};

use crate::agency::{agency_name, agency_object_i32, shorten};
use crate::time;

/// The snake-case name of the event's body, as in the proto oneof;
/// `"unknown"` when there is none.
pub fn kind(event: &Event) -> &'static str {
    event.body.as_ref().map_or("unknown", body_kind)
}

pub(crate) fn body_kind(body: &Body) -> &'static str {
    match body {
        Body::CaseOpened(_) => "case_opened",
        Body::RiskAssessed(_) => "risk_assessed",
        Body::ReferralIssued(_) => "referral_issued",
        Body::ReferralAccepted(_) => "referral_accepted",
        Body::ReferralReturned(_) => "referral_returned",
        Body::ProgressReported(_) => "progress_reported",
        Body::AlarmReceived(_) => "alarm_received",
        Body::OfficersDispatched(_) => "officers_dispatched",
        Body::OfficersArrived(_) => "officers_arrived",
        Body::AlarmDisposed(_) => "alarm_disposed",
        Body::WrittenWarningIssued(_) => "written_warning_issued",
        Body::FollowUpVisitRecorded(_) => "follow_up_visit_recorded",
        Body::ProtectionOrderChecked(_) => "protection_order_checked",
        Body::ProtectionOrderViolated(_) => "protection_order_violated",
        Body::ProtectionOrderApplied(_) => "protection_order_applied",
        Body::ProtectionOrderDecided(_) => "protection_order_decided",
        Body::ProtectionOrderChanged(_) => "protection_order_changed",
        Body::HearingScheduled(_) => "hearing_scheduled",
        Body::JudgmentIssued(_) => "judgment_issued",
        Body::ShelterAdmitted(_) => "shelter_admitted",
        Body::ShelterExtended(_) => "shelter_extended",
        Body::ShelterExited(_) => "shelter_exited",
        Body::MarriageRegistrationFlagged(_) => "marriage_registration_flagged",
        Body::LabourInspectionOpened(_) => "labour_inspection_opened",
        Body::LabourViolationFound(_) => "labour_violation_found",
        Body::LegalAidApplied(_) => "legal_aid_applied",
        Body::LegalAidDecided(_) => "legal_aid_decided",
        Body::LawyerAssigned(_) => "lawyer_assigned",
        Body::CaseEscalated(_) => "case_escalated",
        Body::CaseListed(_) => "case_listed",
        Body::MeetingHeld(_) => "meeting_held",
        Body::ActionAgreed(_) => "action_agreed",
        Body::ActionReported(_) => "action_reported",
        Body::ConsentRecorded(_) => "consent_recorded",
        Body::SharedWithoutConsent(_) => "shared_without_consent",
        Body::CaseClosed(_) => "case_closed",
        Body::CaseReopened(_) => "case_reopened",
        Body::PersonalDataRestricted(_) => "personal_data_restricted",
        Body::PersonalDataErased(_) => "personal_data_erased",
    }
}

/// The person reference of a case opening, for the log's person index (which
/// recognises repeat cases). `None` for a correction: a correction never
/// changes whose case it is.
pub fn person_ref(event: &Event) -> Option<&str> {
    if event.corrects_event_id.is_some() {
        return None;
    }
    match &event.body {
        Some(Body::CaseOpened(b)) if !b.person_ref.is_empty() => Some(b.person_ref.as_str()),
        _ => None,
    }
}

/// Lowercase words for an enum's proto name: `CATEGORY_DOMESTIC_VIOLENCE`
/// with prefix `CATEGORY_` becomes "domestic violence".
fn words(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', " ")
}

macro_rules! enum_words {
    ($ty:ty, $value:expr, $prefix:literal) => {
        <$ty>::try_from($value).map_or_else(
            |_| String::from("unknown"),
            |v| words(v.as_str_name(), $prefix),
        )
    };
}

fn opt_time(t: Option<&lianxi_proto::Timestamp>) -> String {
    t.map_or_else(|| String::from("an unstated time"), time::format)
}

/// Appends ": text" when the free text is non-empty, shortened for one line.
fn with_text(mut line: String, text: &str) -> String {
    let text = text.trim();
    if !text.is_empty() {
        line.push_str(": ");
        line.push_str(&shorten(text));
    }
    line
}

/// One plain-language English line for the timeline, e.g. "Women's
/// federation referred the case to the court (r-1): needs a protection order;
/// answer due 2026-03-04 10:00 UTC".
pub fn describe(event: &Event) -> String {
    let who = Agency::try_from(event.agency).map_or("An unknown agency", agency_name);
    let what = match &event.body {
        None => String::from("sent an event with no body"),
        Some(body) => describe_body(body),
    };
    match &event.corrects_event_id {
        Some(id) => format!("{who} corrected event {}: {what}", shorten(id)),
        None => format!("{who} {what}"),
    }
}

fn describe_body(body: &Body) -> String {
    match body {
        Body::CaseOpened(b) => format!(
            "opened the case ({}, via {}, {} level)",
            enum_words!(lianxi_proto::v1::Category, b.category, "CATEGORY_"),
            enum_words!(lianxi_proto::v1::Channel, b.channel, "CHANNEL_"),
            enum_words!(lianxi_proto::v1::Level, b.level, "LEVEL_"),
        ),
        Body::RiskAssessed(b) => format!(
            "assessed the risk as {} (score {})",
            enum_words!(RiskLevel, b.level, "RISK_LEVEL_"),
            b.score
        ),
        Body::ReferralIssued(b) => {
            let mut line = with_text(
                format!(
                    "referred the case to {} ({})",
                    agency_object_i32(b.to_agency),
                    shorten(&b.referral_id)
                ),
                &b.reason,
            );
            if let Some(due) = &b.due_at {
                line.push_str(&format!("; answer due {}", time::format(due)));
            }
            if b.transfer_lead {
                line.push_str("; the lead passes on acceptance");
            }
            line
        }
        Body::ReferralAccepted(b) => with_text(
            format!("accepted referral {}", shorten(&b.referral_id)),
            &b.note,
        ),
        Body::ReferralReturned(b) => with_text(
            format!("returned referral {}", shorten(&b.referral_id)),
            &b.reason,
        ),
        Body::ProgressReported(b) => with_text(String::from("reported progress"), &b.summary),
        Body::AlarmReceived(b) => {
            let area = match Area::try_from(b.area) {
                Ok(Area::Urban) => "urban",
                Ok(Area::Suburban) => "suburban",
                _ => "unstated",
            };
            format!("received 110 alarm {} ({area} area)", shorten(&b.alarm_id))
        }
        Body::OfficersDispatched(b) => format!(
            "dispatched {} officer(s) to alarm {}",
            b.officers,
            shorten(&b.alarm_id)
        ),
        Body::OfficersArrived(b) => {
            format!("arrived at the scene of alarm {}", shorten(&b.alarm_id))
        }
        Body::AlarmDisposed(b) => with_text(
            format!("disposed of alarm {}", shorten(&b.alarm_id)),
            &b.disposition,
        ),
        Body::WrittenWarningIssued(b) => format!(
            "issued written warning {} to the respondent",
            shorten(&b.warning_id)
        ),
        Body::FollowUpVisitRecorded(b) => format!(
            "made a follow-up visit on written warning {}",
            shorten(&b.warning_id)
        ),
        Body::ProtectionOrderChecked(b) => format!(
            "checked protection order {} with the respondent",
            shorten(&b.order_id)
        ),
        Body::ProtectionOrderViolated(b) => with_text(
            format!(
                "reported a violation of protection order {}",
                shorten(&b.order_id)
            ),
            &b.description,
        ),
        Body::ProtectionOrderApplied(b) => format!(
            "recorded {}application {} for a protection order",
            if b.urgent { "urgent " } else { "" },
            shorten(&b.application_id)
        ),
        Body::ProtectionOrderDecided(b) => match OrderDecision::try_from(b.decision) {
            Ok(OrderDecision::Granted) => format!(
                "granted protection order {} on application {}, in force until {}",
                shorten(&b.order_id),
                shorten(&b.application_id),
                opt_time(b.expires_at.as_ref())
            ),
            Ok(OrderDecision::Rejected) => with_text(
                format!(
                    "rejected protection-order application {}",
                    shorten(&b.application_id)
                ),
                &b.reason,
            ),
            _ => format!(
                "decided protection-order application {}",
                shorten(&b.application_id)
            ),
        },
        Body::ProtectionOrderChanged(b) => match OrderChange::try_from(b.change) {
            Ok(OrderChange::Extended) => format!(
                "extended protection order {} until {}",
                shorten(&b.order_id),
                opt_time(b.new_expires_at.as_ref())
            ),
            Ok(OrderChange::Revoked) => with_text(
                format!("revoked protection order {}", shorten(&b.order_id)),
                &b.reason,
            ),
            Ok(OrderChange::Reviewed) => with_text(
                format!("reviewed protection order {}", shorten(&b.order_id)),
                &b.reason,
            ),
            _ => format!("changed protection order {}", shorten(&b.order_id)),
        },
        Body::HearingScheduled(b) => format!(
            "scheduled hearing {} ({}) for {}",
            shorten(&b.hearing_id),
            enum_words!(Matter, b.matter, "MATTER_"),
            opt_time(b.scheduled_at.as_ref())
        ),
        Body::JudgmentIssued(b) => format!(
            "issued a judgment on {}",
            enum_words!(Matter, b.matter, "MATTER_")
        ),
        Body::ShelterAdmitted(b) => format!(
            "admitted the person to {} ({})",
            if b.emergency {
                "emergency placement"
            } else {
                "a shelter"
            },
            shorten(&b.placement_id)
        ),
        Body::ShelterExtended(b) => format!(
            "extended shelter stay {} until {}",
            shorten(&b.placement_id),
            opt_time(b.until.as_ref())
        ),
        Body::ShelterExited(b) => format!(
            "recorded the exit from shelter stay {}",
            shorten(&b.placement_id)
        ),
        Body::MarriageRegistrationFlagged(b) => format!(
            "flagged a marriage registration ({})",
            enum_words!(MarriageConcern, b.concern, "MARRIAGE_CONCERN_")
        ),
        Body::LabourInspectionOpened(b) => {
            format!("opened labour inspection {}", shorten(&b.inspection_id))
        }
        Body::LabourViolationFound(b) => format!(
            "found a labour violation ({}) in inspection {}",
            enum_words!(Violation, b.violation, "VIOLATION_"),
            shorten(&b.inspection_id)
        ),
        Body::LegalAidApplied(b) => format!(
            "recorded legal-aid application {}",
            shorten(&b.application_id)
        ),
        Body::LegalAidDecided(b) => with_text(
            format!(
                "{} legal-aid application {}",
                if b.granted { "granted" } else { "refused" },
                shorten(&b.application_id)
            ),
            &b.reason,
        ),
        Body::LawyerAssigned(b) => format!(
            "assigned a lawyer on legal-aid application {}",
            shorten(&b.application_id)
        ),
        Body::CaseEscalated(b) => with_text(
            format!(
                "escalated the case to the joint meeting ({})",
                enum_words!(EscalationCriterion, b.criterion, "ESCALATION_CRITERION_")
            ),
            &b.reason,
        ),
        Body::CaseListed(b) => format!(
            "listed the case for meeting {} on {}",
            shorten(&b.meeting_id),
            opt_time(b.meeting_at.as_ref())
        ),
        Body::MeetingHeld(b) => format!("discussed the case at meeting {}", shorten(&b.meeting_id)),
        Body::ActionAgreed(b) => with_text(
            format!(
                "agreed action {} for {}, due {}",
                shorten(&b.action_id),
                agency_object_i32(b.owner),
                opt_time(b.due_at.as_ref())
            ),
            &b.description,
        ),
        Body::ActionReported(b) => with_text(
            format!(
                "reported action {} as {}",
                shorten(&b.action_id),
                enum_words!(ActionOutcome, b.outcome, "ACTION_OUTCOME_")
            ),
            &b.note,
        ),
        Body::ConsentRecorded(b) => with_text(
            format!(
                "recorded consent as {}",
                enum_words!(ConsentDecision, b.decision, "CONSENT_DECISION_")
            ),
            &b.scope,
        ),
        Body::SharedWithoutConsent(b) => with_text(
            format!(
                "shared the case with {} without consent",
                agency_object_i32(b.with_agency)
            ),
            &b.rationale,
        ),
        Body::CaseClosed(b) => format!(
            "closed the case ({})",
            enum_words!(ClosureOutcome, b.outcome, "CLOSURE_OUTCOME_")
        ),
        Body::CaseReopened(b) => with_text(String::from("reopened the case"), &b.reason),
        Body::PersonalDataRestricted(b) => with_text(
            format!(
                "put the case's personal data under legal hold until {}",
                b.retain_until
                    .as_ref()
                    .map_or_else(|| "an unknown time".to_owned(), time::format)
            ),
            &b.legal_basis,
        ),
        Body::PersonalDataErased(b) => with_text(
            String::from("erased the case's personal data"),
            &b.legal_basis,
        ),
    }
}
