//! Given / when / then for the domain: given a list of accepted events, when
//! one more event arrives, then either a view or a rejection with a code.

use chrono::DateTime;
use lianxi_domain::{Context, EntryMeta, Rejection, apply, decide};
pub(crate) use lianxi_domain::{Policy, PriorCase};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{Agency, CaseView, Event, RejectionCode, event::Body, *};

pub(crate) const CASE: &str = "C-1";

pub(crate) use Agency::{
    CivilAffairs as CIVIL, Court as COURT, JusticeBureau as JUSTICE, Labour as LABOUR,
    Police as POLICE, PoliticalLegalCommittee as PLC, WomensFederation as WF,
};

/// "2026-03-02T09:00:00Z" as a protobuf timestamp.
pub(crate) fn t(s: &str) -> Timestamp {
    let d = DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("bad test time {s}: {e}"));
    Timestamp {
        seconds: d.timestamp(),
        nanos: 0,
    }
}

pub(crate) fn ev(id: &str, agency: Agency, at: &str, body: Body) -> Event {
    Event {
        event_id: id.into(),
        case_id: CASE.into(),
        agency: agency as i32,
        occurred_at: Some(t(at)),
        corrects_event_id: None,
        body: Some(body),
    }
}

pub(crate) fn corr(id: &str, agency: Agency, at: &str, corrects: &str, body: Body) -> Event {
    Event {
        corrects_event_id: Some(corrects.into()),
        ..ev(id, agency, at, body)
    }
}

// ------------------------------------------------------------ body builders

pub(crate) fn opened(channel: Channel) -> Body {
    Body::CaseOpened(CaseOpened {
        channel: channel as i32,
        category: Category::DomesticViolence as i32,
        jurisdiction: "city/county-1/township-2".into(),
        level: Level::County as i32,
        person_ref: "P-77".into(),
        summary: "reported violence at home".into(),
        mandatory_reporter: String::new(),
        person: None,
        children: Vec::new(),
    })
}
pub(crate) fn open_hotline() -> Body {
    opened(Channel::Hotline12338)
}
pub(crate) fn risk(level: RiskLevel, score: u32) -> Body {
    Body::RiskAssessed(RiskAssessed {
        level: level as i32,
        score,
        factors: vec!["threats".into()],
    })
}
pub(crate) fn refer(id: &str, to: Agency, transfer_lead: bool) -> Body {
    Body::ReferralIssued(ReferralIssued {
        referral_id: id.into(),
        to_agency: to as i32,
        reason: "needs a protection order".into(),
        due_at: None,
        transfer_lead,
    })
}
pub(crate) fn accept(id: &str) -> Body {
    Body::ReferralAccepted(ReferralAccepted {
        referral_id: id.into(),
        note: String::new(),
    })
}
pub(crate) fn ret(id: &str) -> Body {
    Body::ReferralReturned(ReferralReturned {
        referral_id: id.into(),
        reason: "not our matter".into(),
    })
}
pub(crate) fn progress() -> Body {
    Body::ProgressReported(ProgressReported {
        summary: "visited the family".into(),
    })
}
pub(crate) fn alarm(id: &str, area: Area) -> Body {
    Body::AlarmReceived(AlarmReceived {
        alarm_id: id.into(),
        area: area as i32,
        summary: "call".into(),
    })
}
pub(crate) fn dispatched(id: &str) -> Body {
    Body::OfficersDispatched(OfficersDispatched {
        alarm_id: id.into(),
        officers: 2,
    })
}
pub(crate) fn arrived(id: &str) -> Body {
    Body::OfficersArrived(OfficersArrived {
        alarm_id: id.into(),
    })
}
pub(crate) fn disposed(id: &str) -> Body {
    Body::AlarmDisposed(AlarmDisposed {
        alarm_id: id.into(),
        disposition: "mediated".into(),
    })
}
pub(crate) fn warning(id: &str) -> Body {
    Body::WrittenWarningIssued(WrittenWarningIssued {
        warning_id: id.into(),
        respondent_ref: "R-1".into(),
        grounds: "threats".into(),
    })
}
pub(crate) fn visit(id: &str) -> Body {
    Body::FollowUpVisitRecorded(FollowUpVisitRecorded {
        warning_id: id.into(),
        note: String::new(),
    })
}
pub(crate) fn checked(order: &str) -> Body {
    Body::ProtectionOrderChecked(ProtectionOrderChecked {
        order_id: order.into(),
        note: String::new(),
    })
}
pub(crate) fn violated(order: &str) -> Body {
    Body::ProtectionOrderViolated(ProtectionOrderViolated {
        order_id: order.into(),
        description: "came to the house".into(),
    })
}
pub(crate) fn applied(id: &str, urgent: bool) -> Body {
    Body::ProtectionOrderApplied(ProtectionOrderApplied {
        application_id: id.into(),
        applicant: Applicant::Victim as i32,
        urgent,
    })
}
pub(crate) fn granted(app: &str, order: &str, expires: &str) -> Body {
    Body::ProtectionOrderDecided(ProtectionOrderDecided {
        application_id: app.into(),
        decision: OrderDecision::Granted as i32,
        order_id: order.into(),
        measures: vec!["no contact".into()],
        expires_at: Some(t(expires)),
        reason: String::new(),
    })
}
pub(crate) fn rejected(app: &str) -> Body {
    Body::ProtectionOrderDecided(ProtectionOrderDecided {
        application_id: app.into(),
        decision: OrderDecision::Rejected as i32,
        order_id: String::new(),
        measures: vec![],
        expires_at: None,
        reason: "no evidence".into(),
    })
}
pub(crate) fn changed(order: &str, change: OrderChange, new_expires: Option<&str>) -> Body {
    Body::ProtectionOrderChanged(ProtectionOrderChanged {
        order_id: order.into(),
        change: change as i32,
        new_expires_at: new_expires.map(t),
        reason: "review".into(),
    })
}
pub(crate) fn hearing(id: &str) -> Body {
    Body::HearingScheduled(HearingScheduled {
        hearing_id: id.into(),
        matter: Matter::Custody as i32,
        scheduled_at: Some(t("2026-04-01T09:00:00Z")),
    })
}
pub(crate) fn judgment() -> Body {
    Body::JudgmentIssued(JudgmentIssued {
        matter: Matter::PropertyDivision as i32,
        summary: "house to the applicant".into(),
    })
}
pub(crate) fn admitted(id: &str, emergency: bool) -> Body {
    Body::ShelterAdmitted(ShelterAdmitted {
        placement_id: id.into(),
        emergency,
        location: "shelter 3".into(),
    })
}
pub(crate) fn extended(id: &str, until: &str) -> Body {
    Body::ShelterExtended(ShelterExtended {
        placement_id: id.into(),
        until: Some(t(until)),
    })
}
pub(crate) fn exited(id: &str) -> Body {
    Body::ShelterExited(ShelterExited {
        placement_id: id.into(),
        destination: "relatives".into(),
    })
}
pub(crate) fn marriage() -> Body {
    Body::MarriageRegistrationFlagged(MarriageRegistrationFlagged {
        concern: MarriageConcern::Bigamy as i32,
        note: String::new(),
    })
}
pub(crate) fn inspection(id: &str) -> Body {
    Body::LabourInspectionOpened(LabourInspectionOpened {
        inspection_id: id.into(),
        employer: "factory".into(),
    })
}
pub(crate) fn labour_violation(id: &str) -> Body {
    Body::LabourViolationFound(LabourViolationFound {
        inspection_id: id.into(),
        violation: Violation::ChildLabour as i32,
        description: "a girl of 15 employed".into(),
    })
}
pub(crate) fn aid_applied(id: &str) -> Body {
    Body::LegalAidApplied(LegalAidApplied {
        application_id: id.into(),
    })
}
pub(crate) fn aid_decided(id: &str, granted: bool) -> Body {
    Body::LegalAidDecided(LegalAidDecided {
        application_id: id.into(),
        granted,
        reason: String::new(),
    })
}
pub(crate) fn lawyer(id: &str) -> Body {
    Body::LawyerAssigned(LawyerAssigned {
        application_id: id.into(),
        lawyer_ref: "L-9".into(),
    })
}
pub(crate) fn escalated() -> Body {
    Body::CaseEscalated(CaseEscalated {
        criterion: EscalationCriterion::HighRisk as i32,
        reason: "high risk score".into(),
    })
}
pub(crate) fn listed(meeting: &str, at: &str) -> Body {
    Body::CaseListed(CaseListed {
        meeting_id: meeting.into(),
        meeting_at: Some(t(at)),
    })
}
pub(crate) fn held(meeting: &str) -> Body {
    Body::MeetingHeld(MeetingHeld {
        meeting_id: meeting.into(),
        minutes: String::new(),
    })
}
pub(crate) fn action(id: &str, owner: Agency, due: &str) -> Body {
    Body::ActionAgreed(ActionAgreed {
        action_id: id.into(),
        owner: owner as i32,
        description: "visit the family".into(),
        due_at: Some(t(due)),
    })
}
pub(crate) fn reported(id: &str, outcome: ActionOutcome) -> Body {
    Body::ActionReported(ActionReported {
        action_id: id.into(),
        outcome: outcome as i32,
        note: String::new(),
    })
}
pub(crate) fn consent(decision: ConsentDecision) -> Body {
    Body::ConsentRecorded(ConsentRecorded {
        decision: decision as i32,
        scope: "share with court".into(),
    })
}
pub(crate) fn shared(rationale: &str) -> Body {
    Body::SharedWithoutConsent(SharedWithoutConsent {
        with_agency: Agency::Police as i32,
        rationale: rationale.into(),
    })
}
pub(crate) fn closed() -> Body {
    Body::CaseClosed(CaseClosed {
        outcome: ClosureOutcome::Resolved as i32,
        summary: String::new(),
    })
}
pub(crate) fn reopened() -> Body {
    Body::CaseReopened(CaseReopened {
        reason: "new incident".into(),
    })
}

/// One valid body of every kind, each with an agency allowed to emit it.
pub(crate) fn every_body() -> Vec<(Agency, Body)> {
    vec![
        (WF, open_hotline()),
        (WF, risk(RiskLevel::High, 80)),
        (WF, refer("r-1", COURT, false)),
        (COURT, accept("r-1")),
        (COURT, ret("r-1")),
        (WF, progress()),
        (POLICE, alarm("a-1", Area::Urban)),
        (POLICE, dispatched("a-1")),
        (POLICE, arrived("a-1")),
        (POLICE, disposed("a-1")),
        (POLICE, warning("w-1")),
        (POLICE, visit("w-1")),
        (POLICE, checked("o-1")),
        (POLICE, violated("o-1")),
        (WF, applied("app-1", true)),
        (COURT, granted("app-1", "o-1", "2026-06-01T00:00:00Z")),
        (
            COURT,
            changed("o-1", OrderChange::Extended, Some("2026-08-01T00:00:00Z")),
        ),
        (COURT, hearing("h-1")),
        (COURT, judgment()),
        (CIVIL, admitted("p-1", true)),
        (CIVIL, extended("p-1", "2026-03-20T00:00:00Z")),
        (CIVIL, exited("p-1")),
        (CIVIL, marriage()),
        (LABOUR, inspection("i-1")),
        (LABOUR, labour_violation("i-1")),
        (JUSTICE, aid_applied("la-1")),
        (JUSTICE, aid_decided("la-1", true)),
        (JUSTICE, lawyer("la-1")),
        (WF, escalated()),
        (PLC, listed("m-1", "2026-03-10T09:00:00Z")),
        (PLC, held("m-1")),
        (PLC, action("act-1", POLICE, "2026-03-20T00:00:00Z")),
        (POLICE, reported("act-1", ActionOutcome::Done)),
        (WF, consent(ConsentDecision::Given)),
        (WF, shared("imminent danger")),
        (WF, closed()),
        (WF, reopened()),
    ]
}

// ------------------------------------------------------------ the scenario

#[derive(Default)]
pub(crate) struct Scenario {
    pub(crate) policy: Policy,
    pub(crate) prior: Option<PriorCase>,
    pub(crate) view: Option<CaseView>,
    pub(crate) log: Vec<Event>,
}

/// The standard opening: the women's federation opens C-1 on Monday
/// 2026-03-02 09:00 UTC by the 12338 hotline.
pub(crate) fn opening() -> Event {
    ev("e-open", WF, "2026-03-02T09:00:00Z", open_hotline())
}

pub(crate) fn given(events: Vec<Event>) -> Scenario {
    Scenario::default().given(events)
}

impl Scenario {
    pub(crate) fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    pub(crate) fn with_prior(mut self, prior: PriorCase) -> Self {
        self.prior = Some(prior);
        self
    }

    /// Appends events that must all be accepted.
    pub(crate) fn given(mut self, events: Vec<Event>) -> Self {
        for e in events {
            match self.decide(&e) {
                Ok(()) => self.append(e),
                Err(r) => panic!("given event {} was rejected: {r}", e.event_id),
            }
        }
        self
    }

    fn decide(&self, e: &Event) -> Result<(), Rejection> {
        let ctx = Context {
            policy: &self.policy,
            prior_case: self.prior.as_ref(),
        };
        let corrected = e
            .corrects_event_id
            .as_ref()
            .and_then(|id| self.log.iter().find(|x| x.event_id == *id));
        decide(&ctx, self.view.as_ref(), e, corrected)
    }

    fn append(&mut self, e: Event) {
        let ctx = Context {
            policy: &self.policy,
            prior_case: self.prior.as_ref(),
        };
        let n = self.log.len() as u64 + 1;
        let meta = EntryMeta {
            global_sequence: 100 + n,
            case_sequence: n,
            recorded_at: t("2026-03-02T09:00:00Z"),
            sealed: &[],
        };
        self.view = Some(apply(&ctx, self.view.take(), &e, &meta));
        self.log.push(e);
    }

    /// When `e` arrives: the view after it, or the rejection.
    pub(crate) fn when(mut self, e: Event) -> Result<CaseView, Rejection> {
        self.decide(&e)?;
        self.append(e);
        Ok(self.view.unwrap_or_default())
    }

    pub(crate) fn then_ok(self, e: Event) -> CaseView {
        let id = e.event_id.clone();
        self.when(e)
            .unwrap_or_else(|r| panic!("event {id} should be accepted but was rejected: {r}"))
    }

    pub(crate) fn then_reject(self, e: Event, code: RejectionCode) -> Rejection {
        let id = e.event_id.clone();
        match self.when(e) {
            Ok(_) => panic!("event {id} should be rejected with {code:?} but was accepted"),
            Err(r) => {
                assert_eq!(r.code, code, "event {id}: wrong code, reason: {}", r.reason);
                assert!(!r.reason.is_empty());
                r
            }
        }
    }

    pub(crate) fn view(&self) -> &CaseView {
        self.view.as_ref().expect("a view")
    }
}

pub(crate) fn flags(v: &CaseView) -> Flags {
    v.flags.clone().unwrap_or_default()
}

pub(crate) fn obligation<'a>(v: &'a CaseView, id: &str) -> &'a Obligation {
    v.obligations
        .iter()
        .find(|o| o.id == id)
        .unwrap_or_else(|| {
            panic!(
                "no obligation {id} in {:?}",
                v.obligations.iter().map(|o| &o.id).collect::<Vec<_>>()
            )
        })
}

pub(crate) fn involvement(v: &CaseView, a: Agency) -> AgencyInvolvement {
    v.agencies
        .iter()
        .find(|x| x.agency == a as i32)
        .cloned()
        .unwrap_or_else(|| panic!("{a:?} not in agencies"))
}

pub(crate) fn status(v: &CaseView) -> CoordinatedStatus {
    CoordinatedStatus::try_from(v.status).expect("known status")
}
