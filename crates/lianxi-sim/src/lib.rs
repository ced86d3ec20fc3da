//! A deterministic generator of a city's case events: domestic violence
//! (most cases), custody, trafficking, child labour and employment
//! discrimination, each worked by the agencies that DOMAIN.md describes,
//! with referrals, orders, shelter, legal aid, escalation to the joint
//! meeting, agreed actions and closure; some cases are repeats of an earlier
//! person, some obligations are met late, some never.
//!
//! The same seed gives the same events, byte for byte. A small share of
//! "noise" can be mixed in: events that break a rule (so a node rejects them)
//! and re-sent events (so a node records duplicates).

#![forbid(unsafe_code)]

use std::cell::RefCell;

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{self as pb, Agency, Event, event::Body};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod bench;
pub use bench::{BenchJson, size_tag};

/// The machine a benchmark ran on, for its printout: CPU model, cores, OS
/// and architecture.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    pub cases: usize,
    /// Cases open between `start` and `end`; no event is later than `end`.
    pub start: i64,
    pub end: i64,
    /// Share of cases that get one rule-breaking event (0.0 to 1.0).
    pub invalid_rate: f64,
    /// Share of cases that get one re-sent event (0.0 to 1.0).
    pub duplicate_rate: f64,
    /// Prefix of case ids, e.g. "HZ" gives "HZ-000001".
    pub prefix: String,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            seed: 1,
            cases: 200,
            start: 1_767_196_800, // 2026-01-01T00:00:00+08:00
            end: 1_795_881_600,   // 2026-11-29T00:00:00+08:00
            invalid_rate: 0.0,
            duplicate_rate: 0.0,
            prefix: "SIM".into(),
        }
    }
}

/// What a generated event is meant to be, so tests can check a node's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Valid,
    /// Breaks a rule; a node must reject it.
    Invalid,
    /// Re-sends an earlier event with the same id; a node must skip it.
    Duplicate,
}

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// Generates the workload: every case's events, merged in order of event time
/// (each case's own order kept).
pub fn generate(w: &Workload) -> Vec<(Event, Intent)> {
    let mut rng = StdRng::seed_from_u64(w.seed);
    let mut people: Vec<String> = Vec::new();
    let mut all: Vec<(i64, usize, Event, Intent)> = Vec::new();
    let span = (w.end - w.start).max(DAY);
    let mut order = 0usize;
    for i in 0..w.cases {
        let opened_at = w.start + rng.random_range(0..span);
        let person = if !people.is_empty() && rng.random_bool(0.06) {
            people[rng.random_range(0..people.len())].clone()
        } else {
            let p = format!("P-{:07}", rng.random_range(0..10_000_000u32));
            people.push(p.clone());
            p
        };
        let mut c = CaseGen {
            case_id: format!("{}-{:06}", w.prefix, i + 1),
            clock: opened_at,
            end: w.end,
            n: 0,
            events: Vec::new(),
            rng: RefCell::new(StdRng::seed_from_u64(
                w.seed ^ ((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            )),
            meeting_epoch: w.start,
        };
        c.case(&person);
        let invalid = rng.random_bool(w.invalid_rate.clamp(0.0, 1.0));
        let duplicate = rng.random_bool(w.duplicate_rate.clamp(0.0, 1.0));
        let mut events: Vec<(Event, Intent)> = c
            .events
            .iter()
            .cloned()
            .map(|e| (e, Intent::Valid))
            .collect();
        if invalid && !events.is_empty() {
            let at = rng.random_range(1..=events.len());
            let t = time_of(&events[at - 1].0) + MINUTE;
            if t <= w.end {
                let bad = c.invalid_event(t);
                events.insert(at, (bad, Intent::Invalid));
            }
        }
        if duplicate && events.len() > 1 {
            let from = rng.random_range(0..events.len() - 1);
            if events[from].1 == Intent::Valid {
                let copy = events[from].0.clone();
                let at = rng.random_range(from + 1..=events.len());
                events.insert(at, (copy, Intent::Duplicate));
            }
        }
        // A re-sent event goes out when it is re-sent, not when it happened.
        let mut last = 0;
        for (e, intent) in events {
            let t = time_of(&e).max(last);
            last = t;
            all.push((t, order, e, intent));
            order += 1;
        }
    }
    all.sort_by_key(|(t, order, _, _)| (*t, *order));
    all.into_iter().map(|(_, _, e, i)| (e, i)).collect()
}

fn time_of(e: &Event) -> i64 {
    e.occurred_at.map_or(0, |t| t.seconds)
}

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

struct CaseGen {
    case_id: String,
    clock: i64,
    end: i64,
    n: u32,
    events: Vec<Event>,
    /// In a cell so that `self.emit(.., self.between(..), ..)` reads well.
    rng: RefCell<StdRng>,
    meeting_epoch: i64,
}

impl CaseGen {
    fn chance(&self, p: f64) -> bool {
        self.rng.borrow_mut().random_bool(p)
    }

    fn between(&self, lo: i64, hi: i64) -> i64 {
        self.rng.borrow_mut().random_range(lo..=hi)
    }

    fn pick<T: Copy>(&self, items: &[T]) -> T {
        items[self.rng.borrow_mut().random_range(0..items.len())]
    }

    /// Appends an event `after` seconds after the previous one. Returns false
    /// (and appends nothing) once past the workload's end: the case is still
    /// open when the data stops.
    fn emit(&mut self, agency: Agency, after: i64, body: Body) -> bool {
        let t = self.clock + after.max(0);
        if t > self.end {
            return false;
        }
        self.clock = t;
        self.n += 1;
        self.events.push(Event {
            event_id: format!("{}-e{:03}", self.case_id, self.n),
            case_id: self.case_id.clone(),
            agency: agency as i32,
            occurred_at: ts(t),
            corrects_event_id: None,
            body: Some(body),
        });
        true
    }

    fn id(&self, kind: &str) -> String {
        format!("{kind}-{}", self.n + 1)
    }

    fn case(&mut self, person: &str) {
        let roll = self.between(0, 99);
        let (category, opener, channel) = match roll {
            0..=64 => {
                let police = self.chance(0.4);
                if police {
                    (
                        pb::Category::DomesticViolence,
                        Agency::Police,
                        pb::Channel::Alarm110,
                    )
                } else {
                    let ch = [
                        pb::Channel::Hotline12338,
                        pb::Channel::Hotline12338,
                        pb::Channel::Hotline12345,
                        pb::Channel::WalkIn,
                        pb::Channel::Visit,
                        pb::Channel::Letter,
                        pb::Channel::Online,
                    ]
                    .as_slice();
                    let ch = self.pick(ch);
                    (pb::Category::DomesticViolence, Agency::WomensFederation, ch)
                }
            }
            65..=76 => (
                pb::Category::Custody,
                Agency::WomensFederation,
                pb::Channel::WalkIn,
            ),
            77..=82 => (
                pb::Category::Trafficking,
                Agency::Police,
                pb::Channel::Alarm110,
            ),
            83..=88 => (
                pb::Category::ChildLabour,
                Agency::Labour,
                pb::Channel::MandatoryReport,
            ),
            _ => (
                pb::Category::EmploymentDiscrimination,
                Agency::WomensFederation,
                pb::Channel::Hotline12338,
            ),
        };
        let county = self.between(1, 9);
        let township = self.between(1, 12);
        let level = self.pick(&[pb::Level::City, pb::Level::County, pb::Level::Township]);
        let reporter = if channel == pb::Channel::MandatoryReport {
            "school: class teacher".to_owned()
        } else {
            String::new()
        };
        if !self.emit(
            opener,
            0,
            Body::CaseOpened(pb::CaseOpened {
                channel: channel as i32,
                category: category as i32,
                jurisdiction: format!("330100/33010{county}/33010{county}{township:03}"),
                level: level as i32,
                person_ref: person.to_owned(),
                summary: summary(category).into(),
                mandatory_reporter: reporter,
                person: None,
                children: Vec::new(),
            }),
        ) {
            return;
        }
        let mut state = Flow {
            opener,
            referrals: 0,
            involved: vec![opener],
            high: false,
            open_referrals: false,
        };
        if opener == Agency::Police {
            self.alarm(&mut state);
        }
        let level = match self.between(0, 9) {
            0..=4 => pb::RiskLevel::Standard,
            5..=7 => pb::RiskLevel::Medium,
            _ => pb::RiskLevel::High,
        };
        state.high = level == pb::RiskLevel::High;
        let score = match level {
            pb::RiskLevel::High => self.between(70, 98),
            pb::RiskLevel::Medium => self.between(40, 69),
            _ => self.between(5, 39),
        } as u32;
        if self.chance(0.9)
            && !self.emit(
                opener,
                self.between(10 * MINUTE, 6 * HOUR),
                Body::RiskAssessed(pb::RiskAssessed {
                    level: level as i32,
                    score,
                    factors: vec!["history of violence".into()],
                }),
            )
        {
            return;
        }
        if self.chance(0.8) {
            let given = self.chance(0.85);
            let decision = if given {
                pb::ConsentDecision::Given
            } else {
                pb::ConsentDecision::Withheld
            };
            if !self.emit(
                opener,
                self.between(MINUTE, HOUR),
                Body::ConsentRecorded(pb::ConsentRecorded {
                    decision: decision as i32,
                    scope: "share with the agencies working the case".into(),
                }),
            ) {
                return;
            }
        }
        let ok = match category {
            pb::Category::DomesticViolence => self.domestic_violence(&mut state),
            pb::Category::Custody => self.custody(&mut state),
            pb::Category::Trafficking => self.trafficking(&mut state),
            pb::Category::ChildLabour => self.child_labour(&mut state),
            _ => self.discrimination(&mut state),
        };
        if !ok {
            return;
        }
        if ((state.high && self.chance(0.7)) || self.chance(0.05))
            && !self.joint_meeting(&mut state)
        {
            return;
        }
        if !state.open_referrals && self.chance(0.6) {
            self.emit(
                opener,
                self.between(2 * DAY, 40 * DAY),
                Body::CaseClosed(pb::CaseClosed {
                    outcome: pb::ClosureOutcome::Resolved as i32,
                    summary: "safety plan in place; no further incidents reported".into(),
                }),
            );
        }
    }

    /// Referral from the opener to `to`; the target accepts (usually) within
    /// the 3-day default, sometimes late. Returns whether it was accepted.
    fn refer(&mut self, s: &mut Flow, to: Agency, reason: &str) -> Option<bool> {
        if s.involved.contains(&to) {
            return Some(true);
        }
        s.referrals += 1;
        let rid = format!("R-{}", s.referrals);
        if !self.emit(
            s.opener,
            self.between(10 * MINUTE, 2 * DAY),
            Body::ReferralIssued(pb::ReferralIssued {
                referral_id: rid.clone(),
                to_agency: to as i32,
                reason: reason.into(),
                due_at: None,
                transfer_lead: false,
            }),
        ) {
            return None;
        }
        let answer_in = if self.chance(0.85) {
            self.between(30 * MINUTE, 2 * DAY)
        } else {
            self.between(3 * DAY, 9 * DAY)
        };
        if self.chance(0.03) {
            // Never answered: an overdue referral the secretariat should see.
            s.open_referrals = true;
            return Some(false);
        }
        let accepted = self.chance(0.92);
        let body = if accepted {
            Body::ReferralAccepted(pb::ReferralAccepted {
                referral_id: rid,
                note: String::new(),
            })
        } else {
            Body::ReferralReturned(pb::ReferralReturned {
                referral_id: rid,
                reason: "outside our remit; please refer to the residents' committee".into(),
            })
        };
        if !self.emit(to, answer_in, body) {
            s.open_referrals = true;
            return None;
        }
        if accepted {
            s.involved.push(to);
        }
        Some(accepted)
    }

    fn alarm(&mut self, s: &mut Flow) -> bool {
        let alarm = self.id("110");
        let urban = self.chance(0.7);
        let area = if urban {
            pb::Area::Urban
        } else {
            pb::Area::Suburban
        };
        let steps = [
            Body::AlarmReceived(pb::AlarmReceived {
                alarm_id: alarm.clone(),
                area: area as i32,
                summary: "caller reports violence in progress".into(),
            }),
            Body::OfficersDispatched(pb::OfficersDispatched {
                alarm_id: alarm.clone(),
                officers: 2,
            }),
        ];
        for b in steps {
            if !self.emit(Agency::Police, self.between(0, 2 * MINUTE), b) {
                return false;
            }
        }
        let limit = if urban { 5 * MINUTE } else { 10 * MINUTE };
        let arrive = if self.chance(0.9) {
            self.between(2 * MINUTE, limit - MINUTE)
        } else {
            self.between(limit + MINUTE, 3 * limit)
        };
        if !self.emit(
            Agency::Police,
            arrive,
            Body::OfficersArrived(pb::OfficersArrived {
                alarm_id: alarm.clone(),
            }),
        ) {
            return false;
        }
        let ok = self.emit(
            Agency::Police,
            self.between(20 * MINUTE, 3 * HOUR),
            Body::AlarmDisposed(pb::AlarmDisposed {
                alarm_id: alarm,
                disposition: "parties separated; victim advised of protection orders".into(),
            }),
        );
        let _ = s;
        ok
    }

    fn police_warning(&mut self, s: &mut Flow) -> bool {
        match self.refer(s, Agency::Police, "violence at home; respondent known") {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        if !self.chance(0.6) {
            return true;
        }
        let warning = self.id("W");
        if !self.emit(
            Agency::Police,
            self.between(HOUR, 2 * DAY),
            Body::WrittenWarningIssued(pb::WrittenWarningIssued {
                warning_id: warning.clone(),
                respondent_ref: format!("R-{}", self.between(1000, 99_999)),
                grounds: "assault on a family member".into(),
            }),
        ) {
            return false;
        }
        if self.chance(0.75) {
            let visit = if self.chance(0.85) {
                self.between(20 * DAY, 85 * DAY)
            } else {
                self.between(95 * DAY, 130 * DAY)
            };
            return self.emit(
                Agency::Police,
                visit,
                Body::FollowUpVisitRecorded(pb::FollowUpVisitRecorded {
                    warning_id: warning,
                    note: "no further violence reported".into(),
                }),
            );
        }
        true
    }

    fn protection_order(&mut self, s: &mut Flow) -> bool {
        match self.refer(
            s,
            Agency::Court,
            "apply for a personal-safety protection order",
        ) {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        let application = self.id("PA");
        let urgent = s.high;
        if !self.emit(
            Agency::Court,
            self.between(HOUR, DAY),
            Body::ProtectionOrderApplied(pb::ProtectionOrderApplied {
                application_id: application.clone(),
                applicant: pb::Applicant::Victim as i32,
                urgent,
            }),
        ) {
            return false;
        }
        let limit = if urgent { 24 * HOUR } else { 72 * HOUR };
        let decide = if self.chance(0.9) {
            self.between(2 * HOUR, limit - HOUR)
        } else {
            self.between(limit + HOUR, 2 * limit)
        };
        let granted = self.chance(0.8);
        let order = self.id("PO");
        let months = self.between(3, 6);
        let body = if granted {
            Body::ProtectionOrderDecided(pb::ProtectionOrderDecided {
                application_id: application,
                decision: pb::OrderDecision::Granted as i32,
                order_id: order.clone(),
                measures: vec!["no contact with the applicant".into()],
                expires_at: ts(self.clock + decide + months * 30 * DAY - DAY),
                reason: String::new(),
            })
        } else {
            Body::ProtectionOrderDecided(pb::ProtectionOrderDecided {
                application_id: application,
                decision: pb::OrderDecision::Rejected as i32,
                order_id: String::new(),
                measures: vec![],
                expires_at: None,
                reason: "insufficient evidence of a present danger".into(),
            })
        };
        if !self.emit(Agency::Court, decide, body) {
            return false;
        }
        if granted && self.chance(0.9) {
            let check = if self.chance(0.85) {
                self.between(2 * HOUR, 22 * HOUR)
            } else {
                self.between(26 * HOUR, 72 * HOUR)
            };
            if !self.emit(
                Agency::Police,
                check,
                Body::ProtectionOrderChecked(pb::ProtectionOrderChecked {
                    order_id: order.clone(),
                    note: "order served on the respondent".into(),
                }),
            ) {
                return false;
            }
            if self.chance(0.08) {
                return self.emit(
                    Agency::Police,
                    self.between(5 * DAY, 60 * DAY),
                    Body::ProtectionOrderViolated(pb::ProtectionOrderViolated {
                        order_id: order,
                        description: "respondent came to the applicant's workplace".into(),
                    }),
                );
            }
        }
        true
    }

    fn shelter(&mut self, s: &mut Flow) -> bool {
        match self.refer(s, Agency::CivilAffairs, "emergency placement") {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        let placement = self.id("S");
        if !self.emit(
            Agency::CivilAffairs,
            self.between(HOUR, 6 * HOUR),
            Body::ShelterAdmitted(pb::ShelterAdmitted {
                placement_id: placement.clone(),
                emergency: true,
                location: "city shelter".into(),
            }),
        ) {
            return false;
        }
        if self.chance(0.5) {
            let until = self.clock + self.between(8 * DAY, 12 * DAY);
            if !self.emit(
                Agency::CivilAffairs,
                self.between(6 * HOUR, 22 * HOUR),
                Body::ShelterExtended(pb::ShelterExtended {
                    placement_id: placement.clone(),
                    until: ts(until),
                }),
            ) {
                return false;
            }
        }
        self.emit(
            Agency::CivilAffairs,
            self.between(12 * HOUR, 10 * DAY),
            Body::ShelterExited(pb::ShelterExited {
                placement_id: placement,
                destination: "relatives".into(),
            }),
        )
    }

    fn legal_aid(&mut self, s: &mut Flow) -> bool {
        match self.refer(s, Agency::JusticeBureau, "legal aid") {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        let application = self.id("LA");
        if !self.emit(
            Agency::JusticeBureau,
            self.between(HOUR, DAY),
            Body::LegalAidApplied(pb::LegalAidApplied {
                application_id: application.clone(),
            }),
        ) {
            return false;
        }
        let granted = self.chance(0.9);
        if !self.emit(
            Agency::JusticeBureau,
            self.between(DAY, 12 * DAY),
            Body::LegalAidDecided(pb::LegalAidDecided {
                application_id: application.clone(),
                granted,
                reason: if granted {
                    "priority: domestic-violence victim".into()
                } else {
                    "income above the threshold".into()
                },
            }),
        ) {
            return false;
        }
        if granted {
            return self.emit(
                Agency::JusticeBureau,
                self.between(HOUR, 3 * DAY),
                Body::LawyerAssigned(pb::LawyerAssigned {
                    application_id: application,
                    lawyer_ref: format!("LAW-{}", self.between(100, 999)),
                }),
            );
        }
        true
    }

    fn domestic_violence(&mut self, s: &mut Flow) -> bool {
        if s.opener != Agency::Police && (s.high || self.chance(0.5)) && !self.police_warning(s) {
            return false;
        }
        if s.opener == Agency::Police && self.chance(0.5) {
            let warning = self.id("W");
            if !self.emit(
                Agency::Police,
                self.between(HOUR, DAY),
                Body::WrittenWarningIssued(pb::WrittenWarningIssued {
                    warning_id: warning,
                    respondent_ref: format!("R-{}", self.between(1000, 99_999)),
                    grounds: "assault on a family member".into(),
                }),
            ) {
                return false;
            }
        }
        if ((s.high && self.chance(0.6)) || self.chance(0.2)) && !self.protection_order(s) {
            return false;
        }
        if self.chance(if s.high { 0.35 } else { 0.08 }) && !self.shelter(s) {
            return false;
        }
        if self.chance(0.25) && !self.legal_aid(s) {
            return false;
        }
        self.emit(
            s.opener,
            self.between(DAY, 14 * DAY),
            Body::ProgressReported(pb::ProgressReported {
                summary: "follow-up call: she is safe".into(),
            }),
        )
    }

    fn custody(&mut self, s: &mut Flow) -> bool {
        if !self.legal_aid(s) {
            return false;
        }
        match self.refer(s, Agency::Court, "custody dispute") {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        let at = self.clock + self.between(10 * DAY, 40 * DAY);
        if !self.emit(
            Agency::Court,
            self.between(HOUR, 3 * DAY),
            Body::HearingScheduled(pb::HearingScheduled {
                hearing_id: self.id("H"),
                matter: pb::Matter::Custody as i32,
                scheduled_at: ts(at),
            }),
        ) {
            return false;
        }
        let wait = at - self.clock + self.between(DAY, 20 * DAY);
        self.emit(
            Agency::Court,
            wait,
            Body::JudgmentIssued(pb::JudgmentIssued {
                matter: pb::Matter::Custody as i32,
                summary: "custody of the children to the mother".into(),
            }),
        )
    }

    fn trafficking(&mut self, s: &mut Flow) -> bool {
        if !self.alarm(s) {
            return false;
        }
        if !self.shelter(s) {
            return false;
        }
        if s.involved.contains(&Agency::CivilAffairs)
            && self.chance(0.5)
            && !self.emit(
                Agency::CivilAffairs,
                self.between(DAY, 5 * DAY),
                Body::MarriageRegistrationFlagged(pb::MarriageRegistrationFlagged {
                    concern: pb::MarriageConcern::Bought as i32,
                    note: "registration made with a broker present".into(),
                }),
            )
        {
            return false;
        }
        self.refer(s, Agency::WomensFederation, "support and follow-up")
            .is_some()
    }

    fn child_labour(&mut self, s: &mut Flow) -> bool {
        let inspection = self.id("I");
        if !self.emit(
            Agency::Labour,
            self.between(HOUR, 2 * DAY),
            Body::LabourInspectionOpened(pb::LabourInspectionOpened {
                inspection_id: inspection.clone(),
                employer: "textile workshop".into(),
            }),
        ) {
            return false;
        }
        if self.chance(0.8)
            && !self.emit(
                Agency::Labour,
                self.between(DAY, 7 * DAY),
                Body::LabourViolationFound(pb::LabourViolationFound {
                    inspection_id: inspection,
                    violation: pb::Violation::ChildLabour as i32,
                    description: "a 14-year-old girl employed on night shifts".into(),
                }),
            )
        {
            return false;
        }
        self.refer(
            s,
            Agency::WomensFederation,
            "support for the girl and her family",
        )
        .is_some()
    }

    fn discrimination(&mut self, s: &mut Flow) -> bool {
        match self.refer(
            s,
            Agency::Labour,
            "dismissed after announcing her pregnancy",
        ) {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        let inspection = self.id("I");
        if !self.emit(
            Agency::Labour,
            self.between(DAY, 5 * DAY),
            Body::LabourInspectionOpened(pb::LabourInspectionOpened {
                inspection_id: inspection.clone(),
                employer: "logistics company".into(),
            }),
        ) {
            return false;
        }
        self.emit(
            Agency::Labour,
            self.between(DAY, 10 * DAY),
            Body::LabourViolationFound(pb::LabourViolationFound {
                inspection_id: inspection,
                violation: pb::Violation::Discrimination as i32,
                description: "dismissal because of pregnancy".into(),
            }),
        )
    }

    /// Escalation, listing for the next fortnightly meeting, the meeting,
    /// agreed actions and their reports.
    fn joint_meeting(&mut self, s: &mut Flow) -> bool {
        let criterion = if s.high {
            pb::EscalationCriterion::HighRisk
        } else {
            pb::EscalationCriterion::ProfessionalJudgement
        };
        if !self.emit(
            s.opener,
            self.between(HOUR, 3 * DAY),
            Body::CaseEscalated(pb::CaseEscalated {
                criterion: criterion as i32,
                reason: "several agencies involved; risk remains".into(),
            }),
        ) {
            return false;
        }
        let fortnight = 14 * DAY;
        let k = (self.clock - self.meeting_epoch) / fortnight + 1;
        let meeting_at = self.meeting_epoch + k * fortnight + 2 * HOUR;
        let meeting = format!("JM-{k:03}");
        if !self.emit(
            Agency::PoliticalLegalCommittee,
            self.between(HOUR, DAY)
                .min((meeting_at - self.clock - HOUR).max(0)),
            Body::CaseListed(pb::CaseListed {
                meeting_id: meeting.clone(),
                meeting_at: ts(meeting_at),
            }),
        ) {
            return false;
        }
        if !self.emit(
            Agency::PoliticalLegalCommittee,
            (meeting_at + HOUR - self.clock).max(0),
            Body::MeetingHeld(pb::MeetingHeld {
                meeting_id: meeting,
                minutes: "safety plan agreed".into(),
            }),
        ) {
            return false;
        }
        let owners: Vec<Agency> = s.involved.clone();
        let count = self.between(1, 2) as usize;
        let mut actions = Vec::new();
        for j in 0..count.min(owners.len()) {
            let owner = self.pick(&owners);
            let action = format!("A-{}", j + 1);
            let due = self.clock + self.between(7 * DAY, 14 * DAY);
            if !self.emit(
                Agency::PoliticalLegalCommittee,
                MINUTE,
                Body::ActionAgreed(pb::ActionAgreed {
                    action_id: action.clone(),
                    owner: owner as i32,
                    description: "visit the family and report back".into(),
                    due_at: ts(due),
                }),
            ) {
                return false;
            }
            actions.push((action, owner, due));
        }
        let mut all_reported = true;
        for (action, owner, due) in actions {
            if self.chance(0.15) {
                all_reported = false;
                continue;
            }
            let late = self.chance(0.2);
            let when = if late {
                (due - self.clock) + self.between(DAY, 7 * DAY)
            } else {
                self.between(DAY, (due - self.clock - HOUR).max(DAY))
            };
            let outcome = if self.chance(0.9) {
                pb::ActionOutcome::Done
            } else {
                pb::ActionOutcome::NotPossible
            };
            if !self.emit(
                owner,
                when,
                Body::ActionReported(pb::ActionReported {
                    action_id: action,
                    outcome: outcome as i32,
                    note: "visited; family cooperating".into(),
                }),
            ) {
                return false;
            }
        }
        if !all_reported {
            s.open_referrals = true;
        }
        true
    }

    /// An event that breaks a rule, at time `t`.
    fn invalid_event(&mut self, t: i64) -> Event {
        let body = match self.between(0, 2) {
            0 => (
                Agency::Court,
                Body::WrittenWarningIssued(pb::WrittenWarningIssued {
                    warning_id: "W-X".into(),
                    respondent_ref: "R-X".into(),
                    grounds: "a court may not issue police warnings".into(),
                }),
            ),
            1 => (
                Agency::PoliticalLegalCommittee,
                Body::ReferralAccepted(pb::ReferralAccepted {
                    referral_id: "R-404".into(),
                    note: String::new(),
                }),
            ),
            _ => (
                Agency::PoliticalLegalCommittee,
                Body::ActionReported(pb::ActionReported {
                    action_id: "A-404".into(),
                    outcome: pb::ActionOutcome::Done as i32,
                    note: String::new(),
                }),
            ),
        };
        Event {
            event_id: format!("{}-bad", self.case_id),
            case_id: self.case_id.clone(),
            agency: body.0 as i32,
            occurred_at: ts(t),
            corrects_event_id: None,
            body: Some(body.1),
        }
    }
}

/// What the generator tracks of one case while writing its story.
struct Flow {
    opener: Agency,
    referrals: u32,
    involved: Vec<Agency>,
    high: bool,
    /// Something the opener may not close over (an unanswered referral or an
    /// unreported action).
    open_referrals: bool,
}

fn summary(c: pb::Category) -> &'static str {
    match c {
        pb::Category::DomesticViolence => "reports repeated violence by her husband",
        pb::Category::Custody => "seeks custody of two children after leaving a violent marriage",
        pb::Category::Trafficking => "woman found held by a marriage broker",
        pb::Category::ChildLabour => "school reports a pupil working night shifts",
        _ => "dismissed after announcing her pregnancy",
    }
}

#[cfg(test)]
mod tests;
