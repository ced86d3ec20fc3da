//! Structural checks: what can be said about an event without the case.
//!
//! These run before anything is stored, so that the log never holds an event
//! the domain could not interpret, and so that `decide` and `apply` can rely
//! on ids being short tokens and times being within sane years.

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    ActionOutcome, Agency, Applicant, Area, Category, Channel, ClosureOutcome, ConsentDecision,
    EscalationCriterion, Event, Level, MarriageConcern, Matter, OrderChange, OrderDecision,
    RejectionCode, RiskLevel, Violation, event::Body,
};

use crate::agency::{
    MAX_ID_LEN, agency_name, agency_object_i32, agency_token, parse_subject, shorten,
};
use crate::error::Rejection;
use crate::time;

/// The longest free-text field, in characters.
pub const MAX_TEXT_CHARS: usize = 4_096;
/// The most items in a repeated field of text (risk factors, order
/// measures).
pub const MAX_ITEMS: usize = 64;

fn missing(field: &str, hint: &str) -> Rejection {
    Rejection::new(
        RejectionCode::MissingField,
        format!("{field} is missing; {hint}"),
    )
}

fn invalid(field: &str, what: &str) -> Rejection {
    Rejection::new(RejectionCode::InvalidField, format!("{field} {what}"))
}

fn id_ok(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

/// An id chosen by an agency: event ids, referral ids, order ids and so on.
/// `/` is excluded because obligation ids join a kind and an id with it.
pub(crate) fn check_id(value: &str, field: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(missing(field, "give the id your system uses for it"));
    }
    if !id_ok(value, &['.', ':']) {
        return Err(invalid(
            field,
            &format!(
                "\"{}\" is not a valid id; use 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 _ . : -",
                shorten(value)
            ),
        ));
    }
    Ok(())
}

/// Whether `value` is a well-formed event id (or other record id): 1 to
/// `MAX_ID_LEN` characters of A-Z a-z 0-9 _ . : -.
pub fn is_event_id(value: &str) -> bool {
    id_ok(value, &['.', ':'])
}

/// Whether `value` is a well-formed case id: 1 to `MAX_ID_LEN` characters
/// of A-Z a-z 0-9 _ - (a NATS subject token, a key-value key).
pub fn is_case_id(value: &str) -> bool {
    id_ok(value, &[])
}

/// A case id is also a NATS subject token, so it has no `.` or `:`.
pub(crate) fn check_case_id(value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(missing(
            "case_id",
            "every event names the case it belongs to",
        ));
    }
    if !id_ok(value, &[]) {
        return Err(invalid(
            "case_id",
            &format!(
                "\"{}\" is not a valid case id; use 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 _ -",
                shorten(value)
            ),
        ));
    }
    Ok(())
}

/// A required agency field: set, and one of the seven agencies.
pub(crate) fn label_agency(value: i32, field: &str) -> Result<Agency, Rejection> {
    match Agency::try_from(value) {
        Ok(Agency::Unspecified) => Err(missing(field, "name one of the seven agencies")),
        Ok(a) => Ok(a),
        Err(_) => Err(invalid(
            field,
            &format!("has unknown agency number {value}; use one of the seven agencies"),
        )),
    }
}

/// A required enum: set (not the zero value) and known to this version.
fn required_enum<E: TryFrom<i32>>(value: i32, field: &str, choices: &str) -> Result<(), Rejection> {
    if value == 0 {
        return Err(missing(field, &format!("choose {choices}")));
    }
    optional_enum::<E>(value, field, choices)
}

/// An optional enum: the zero value is fine, an unknown number is not.
fn optional_enum<E: TryFrom<i32>>(value: i32, field: &str, choices: &str) -> Result<(), Rejection> {
    if E::try_from(value).is_err() {
        return Err(invalid(
            field,
            &format!("has unknown value {value}; choose {choices}"),
        ));
    }
    Ok(())
}

fn text(value: &str, field: &str, required: Option<&str>) -> Result<(), Rejection> {
    if let Some(hint) = required
        && value.trim().is_empty()
    {
        return Err(missing(field, hint));
    }
    let chars = value.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(Rejection::new(
            RejectionCode::TooLarge,
            format!(
                "{field} is {chars} characters long; the limit is {MAX_TEXT_CHARS}, so shorten it"
            ),
        ));
    }
    Ok(())
}

fn list(values: &[String], field: &str) -> Result<(), Rejection> {
    if values.len() > MAX_ITEMS {
        return Err(Rejection::new(
            RejectionCode::TooLarge,
            format!(
                "{field} has {} items; the limit is {MAX_ITEMS}, so merge some",
                values.len()
            ),
        ));
    }
    values.iter().try_for_each(|v| text(v, field, None))
}

fn timestamp(
    value: Option<&Timestamp>,
    field: &str,
    required: Option<&str>,
) -> Result<(), Rejection> {
    match value {
        None => match required {
            Some(hint) => Err(missing(field, hint)),
            None => Ok(()),
        },
        Some(t) if time::is_sane(t) => Ok(()),
        Some(t) => Err(invalid(
            field,
            &format!(
                "is {}, outside the years 2000 to 2200 (or has invalid nanoseconds); check the clock of the sending system",
                time::format(t)
            ),
        )),
    }
}

/// Structural checks independent of any state, run before anything is
/// stored: the subject names the event's own agency and case; `event_id`,
/// `case_id` and every record id are short tokens; `occurred_at` (and any
/// other time) lies in the years 2000 to 2200; a body is present with its
/// required fields and known enum values; free text is at most 4096
/// characters and repeated fields at most 64 items. `decide` repeats all of
/// it except the subject.
pub fn check_envelope(subject: &str, event: &Event) -> Result<(), Rejection> {
    let (agency, case_id) = parse_subject(subject)?;
    if event.agency != 0 && event.agency != agency as i32 {
        return Err(Rejection::new(
            RejectionCode::AgencyMismatch,
            format!(
                "the event says it comes from {} but was published under {}; publish each agency's events under its own subject",
                agency_object_i32(event.agency),
                agency_token(agency).unwrap_or("an unknown agency"),
            ),
        ));
    }
    if !event.case_id.is_empty() && event.case_id != case_id {
        return Err(Rejection::new(
            RejectionCode::CaseMismatch,
            format!(
                "the event is for case {} but was published under case {case_id}; publish on the subject of the event's own case",
                shorten(&event.case_id)
            ),
        ));
    }
    check_event(event)
}

/// The structural checks that need neither the subject nor the case: ids,
/// time, a known body with its required fields, and size limits.
pub(crate) fn check_event(event: &Event) -> Result<(), Rejection> {
    check_id(&event.event_id, "event_id")?;
    check_case_id(&event.case_id)?;
    let agency = label_agency(event.agency, "agency")?;
    timestamp(
        event.occurred_at.as_ref(),
        "occurred_at",
        Some("say when the fact happened"),
    )?;
    if let Some(corrects) = &event.corrects_event_id {
        check_id(corrects, "corrects_event_id")?;
        if *corrects == event.event_id {
            return Err(Rejection::new(
                RejectionCode::BadCorrection,
                format!(
                    "event {} names itself in corrects_event_id; name the earlier event it corrects",
                    event.event_id
                ),
            ));
        }
    }
    let Some(body) = &event.body else {
        return Err(missing(
            "the event body",
            "set exactly one of case_opened, referral_issued, ... to say what happened",
        ));
    };
    check_body(agency, body)
}

/// The most children one opening may record.
pub const MAX_CHILDREN: usize = 20;

fn check_body(agency: Agency, body: &Body) -> Result<(), Rejection> {
    const CHANNELS: &str = "a channel such as hotline_12338, walk_in or letter";
    const OUTCOMES: &str = "done, not_possible or not_undertaken";
    match body {
        Body::CaseOpened(b) => {
            required_enum::<Channel>(b.channel, "case_opened.channel", CHANNELS)?;
            required_enum::<Category>(
                b.category,
                "case_opened.category",
                "a category such as domestic_violence",
            )?;
            required_enum::<Level>(b.level, "case_opened.level", "city, county or township")?;
            text(
                &b.jurisdiction,
                "case_opened.jurisdiction",
                Some("give the administrative area that holds the case"),
            )?;
            text(&b.person_ref, "case_opened.person_ref", None)?;
            text(&b.summary, "case_opened.summary", None)?;
            text(
                &b.mandatory_reporter,
                "case_opened.mandatory_reporter",
                None,
            )?;
            if let Some(p) = &b.person {
                text(&p.name, "case_opened.person.name", None)?;
                text(&p.id_number, "case_opened.person.id_number", None)?;
                text(&p.phone, "case_opened.person.phone", None)?;
                text(&p.address, "case_opened.person.address", None)?;
            }
            if b.children.len() > MAX_CHILDREN {
                return Err(invalid(
                    "case_opened.children",
                    &format!(
                        "has {} entries; at most {MAX_CHILDREN} children can be recorded in one event",
                        b.children.len()
                    ),
                ));
            }
            for c in &b.children {
                text(&c.name, "case_opened.children.name", None)?;
                text(&c.birth_date, "case_opened.children.birth_date", None)?;
                text(&c.note, "case_opened.children.note", None)?;
            }
            Ok(())
        }
        Body::RiskAssessed(b) => {
            required_enum::<RiskLevel>(b.level, "risk_assessed.level", "standard, medium or high")?;
            if b.score > 100 {
                return Err(invalid(
                    "risk_assessed.score",
                    &format!("is {}; scores run from 0 to 100", b.score),
                ));
            }
            list(&b.factors, "risk_assessed.factors")
        }
        Body::ReferralIssued(b) => {
            check_id(&b.referral_id, "referral_issued.referral_id")?;
            let to = label_agency(b.to_agency, "referral_issued.to_agency")?;
            if to == agency {
                return Err(invalid(
                    "referral_issued.to_agency",
                    &format!(
                        "is {} itself; refer the case to another agency",
                        agency_name(agency)
                    ),
                ));
            }
            text(
                &b.reason,
                "referral_issued.reason",
                Some("say in writing why the case is referred"),
            )?;
            timestamp(b.due_at.as_ref(), "referral_issued.due_at", None)
        }
        Body::ReferralAccepted(b) => {
            check_id(&b.referral_id, "referral_accepted.referral_id")?;
            text(&b.note, "referral_accepted.note", None)
        }
        Body::ReferralReturned(b) => {
            check_id(&b.referral_id, "referral_returned.referral_id")?;
            text(
                &b.reason,
                "referral_returned.reason",
                Some("say why the referral is returned"),
            )
        }
        Body::ProgressReported(b) => text(
            &b.summary,
            "progress_reported.summary",
            Some("say what progress was made"),
        ),
        Body::AlarmReceived(b) => {
            check_id(&b.alarm_id, "alarm_received.alarm_id")?;
            optional_enum::<Area>(b.area, "alarm_received.area", "urban or suburban")?;
            text(&b.summary, "alarm_received.summary", None)
        }
        Body::OfficersDispatched(b) => check_id(&b.alarm_id, "officers_dispatched.alarm_id"),
        Body::OfficersArrived(b) => check_id(&b.alarm_id, "officers_arrived.alarm_id"),
        Body::AlarmDisposed(b) => {
            check_id(&b.alarm_id, "alarm_disposed.alarm_id")?;
            text(&b.disposition, "alarm_disposed.disposition", None)
        }
        Body::WrittenWarningIssued(b) => {
            check_id(&b.warning_id, "written_warning_issued.warning_id")?;
            text(
                &b.respondent_ref,
                "written_warning_issued.respondent_ref",
                None,
            )?;
            text(&b.grounds, "written_warning_issued.grounds", None)
        }
        Body::FollowUpVisitRecorded(b) => {
            check_id(&b.warning_id, "follow_up_visit_recorded.warning_id")?;
            text(&b.note, "follow_up_visit_recorded.note", None)
        }
        Body::ProtectionOrderChecked(b) => {
            check_id(&b.order_id, "protection_order_checked.order_id")?;
            text(&b.note, "protection_order_checked.note", None)
        }
        Body::ProtectionOrderViolated(b) => {
            check_id(&b.order_id, "protection_order_violated.order_id")?;
            text(
                &b.description,
                "protection_order_violated.description",
                None,
            )
        }
        Body::ProtectionOrderApplied(b) => {
            check_id(&b.application_id, "protection_order_applied.application_id")?;
            optional_enum::<Applicant>(
                b.applicant,
                "protection_order_applied.applicant",
                "victim, police, womens_federation, residents_committee or other",
            )
        }
        Body::ProtectionOrderDecided(b) => {
            check_id(&b.application_id, "protection_order_decided.application_id")?;
            required_enum::<OrderDecision>(
                b.decision,
                "protection_order_decided.decision",
                "granted or rejected",
            )?;
            if b.decision == OrderDecision::Granted as i32 {
                check_id(&b.order_id, "protection_order_decided.order_id")?;
                timestamp(
                    b.expires_at.as_ref(),
                    "protection_order_decided.expires_at",
                    Some("a granted order must say when it expires"),
                )?;
            } else {
                timestamp(
                    b.expires_at.as_ref(),
                    "protection_order_decided.expires_at",
                    None,
                )?;
            }
            list(&b.measures, "protection_order_decided.measures")?;
            text(&b.reason, "protection_order_decided.reason", None)
        }
        Body::ProtectionOrderChanged(b) => {
            check_id(&b.order_id, "protection_order_changed.order_id")?;
            required_enum::<OrderChange>(
                b.change,
                "protection_order_changed.change",
                "reviewed, extended or revoked",
            )?;
            let required = (b.change == OrderChange::Extended as i32)
                .then_some("an extension must give the new expiry");
            timestamp(
                b.new_expires_at.as_ref(),
                "protection_order_changed.new_expires_at",
                required,
            )?;
            text(&b.reason, "protection_order_changed.reason", None)
        }
        Body::HearingScheduled(b) => {
            check_id(&b.hearing_id, "hearing_scheduled.hearing_id")?;
            optional_enum::<Matter>(
                b.matter,
                "hearing_scheduled.matter",
                "a matter such as divorce or custody",
            )?;
            timestamp(
                b.scheduled_at.as_ref(),
                "hearing_scheduled.scheduled_at",
                Some("say when the hearing is"),
            )
        }
        Body::JudgmentIssued(b) => {
            optional_enum::<Matter>(
                b.matter,
                "judgment_issued.matter",
                "a matter such as divorce or custody",
            )?;
            text(&b.summary, "judgment_issued.summary", None)
        }
        Body::ShelterAdmitted(b) => {
            check_id(&b.placement_id, "shelter_admitted.placement_id")?;
            text(&b.location, "shelter_admitted.location", None)
        }
        Body::ShelterExtended(b) => {
            check_id(&b.placement_id, "shelter_extended.placement_id")?;
            timestamp(
                b.until.as_ref(),
                "shelter_extended.until",
                Some("say until when the stay is extended"),
            )
        }
        Body::ShelterExited(b) => {
            check_id(&b.placement_id, "shelter_exited.placement_id")?;
            text(&b.destination, "shelter_exited.destination", None)
        }
        Body::MarriageRegistrationFlagged(b) => {
            required_enum::<MarriageConcern>(
                b.concern,
                "marriage_registration_flagged.concern",
                "bigamy, bought, arranged or underage",
            )?;
            text(&b.note, "marriage_registration_flagged.note", None)
        }
        Body::LabourInspectionOpened(b) => {
            check_id(&b.inspection_id, "labour_inspection_opened.inspection_id")?;
            text(&b.employer, "labour_inspection_opened.employer", None)
        }
        Body::LabourViolationFound(b) => {
            check_id(&b.inspection_id, "labour_violation_found.inspection_id")?;
            required_enum::<Violation>(
                b.violation,
                "labour_violation_found.violation",
                "child_labour, wages, discrimination or other",
            )?;
            text(&b.description, "labour_violation_found.description", None)
        }
        Body::LegalAidApplied(b) => check_id(&b.application_id, "legal_aid_applied.application_id"),
        Body::LegalAidDecided(b) => {
            check_id(&b.application_id, "legal_aid_decided.application_id")?;
            text(&b.reason, "legal_aid_decided.reason", None)
        }
        Body::LawyerAssigned(b) => {
            check_id(&b.application_id, "lawyer_assigned.application_id")?;
            text(
                &b.lawyer_ref,
                "lawyer_assigned.lawyer_ref",
                Some("name the assigned lawyer's reference"),
            )
        }
        Body::CaseEscalated(b) => {
            required_enum::<EscalationCriterion>(
                b.criterion,
                "case_escalated.criterion",
                "high_risk, professional_judgement, escalation or repeat",
            )?;
            text(&b.reason, "case_escalated.reason", None)
        }
        Body::CaseListed(b) => {
            check_id(&b.meeting_id, "case_listed.meeting_id")?;
            timestamp(
                b.meeting_at.as_ref(),
                "case_listed.meeting_at",
                Some("say when the meeting is"),
            )
        }
        Body::MeetingHeld(b) => {
            check_id(&b.meeting_id, "meeting_held.meeting_id")?;
            text(&b.minutes, "meeting_held.minutes", None)
        }
        Body::ActionAgreed(b) => {
            check_id(&b.action_id, "action_agreed.action_id")?;
            label_agency(b.owner, "action_agreed.owner")?;
            text(&b.description, "action_agreed.description", None)?;
            timestamp(
                b.due_at.as_ref(),
                "action_agreed.due_at",
                Some("every agreed action has a due date"),
            )
        }
        Body::ActionReported(b) => {
            check_id(&b.action_id, "action_reported.action_id")?;
            required_enum::<ActionOutcome>(b.outcome, "action_reported.outcome", OUTCOMES)?;
            text(&b.note, "action_reported.note", None)
        }
        Body::ConsentRecorded(b) => {
            required_enum::<ConsentDecision>(
                b.decision,
                "consent_recorded.decision",
                "given or withheld",
            )?;
            text(&b.scope, "consent_recorded.scope", None)
        }
        Body::SharedWithoutConsent(b) => {
            label_agency(b.with_agency, "shared_without_consent.with_agency")?;
            text(
                &b.rationale,
                "shared_without_consent.rationale",
                Some("record why sharing without consent was necessary"),
            )
        }
        Body::CaseClosed(b) => {
            required_enum::<ClosureOutcome>(
                b.outcome,
                "case_closed.outcome",
                "resolved, referred_out, withdrawn, no_contact or other",
            )?;
            text(&b.summary, "case_closed.summary", None)
        }
        Body::CaseReopened(b) => text(
            &b.reason,
            "case_reopened.reason",
            Some("say why the case is reopened"),
        ),
        Body::PersonalDataRestricted(b) => {
            text(
                &b.legal_basis,
                "personal_data_restricted.legal_basis",
                Some("name the law or decision that requires keeping the data"),
            )?;
            timestamp(
                b.retain_until.as_ref(),
                "personal_data_restricted.retain_until",
                Some("say when the retention period ends"),
            )?;
            text(
                &b.authorised_by,
                "personal_data_restricted.authorised_by",
                Some("give the staff reference of the official who authorised it"),
            )
        }
        Body::PersonalDataErased(b) => {
            text(
                &b.legal_basis,
                "personal_data_erased.legal_basis",
                Some("say why erasure is lawful, e.g. the person's request or PIPL art. 47"),
            )?;
            text(
                &b.authorised_by,
                "personal_data_erased.authorised_by",
                Some("give the staff reference of the official who authorised it"),
            )
        }
    }
}
