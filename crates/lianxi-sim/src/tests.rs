use std::collections::{BTreeMap, BTreeSet, HashSet};

use lianxi_domain::{Context, EntryMeta, Policy, PriorCase};
use lianxi_proto::v1::CaseView;

use super::*;

/// Feeds the workload through the domain the way a node does and returns
/// what happened to each intent.
fn run(w: &Workload) -> (usize, usize, usize, BTreeSet<&'static str>) {
    let policy = Policy::default();
    let mut views: BTreeMap<String, CaseView> = BTreeMap::new();
    let mut ids = HashSet::new();
    let mut persons: BTreeMap<String, PriorCase> = BTreeMap::new();
    let (mut valid, mut invalid, mut dup) = (0, 0, 0);
    let mut kinds = BTreeSet::new();
    for (seq, (event, intent)) in generate(w).into_iter().enumerate() {
        let subject = lianxi_domain::event_subject(&event).unwrap();
        lianxi_domain::check_envelope(&subject, &event)
            .unwrap_or_else(|r| panic!("{intent:?} {event:?} fails its envelope: {r}"));
        if ids.contains(&event.event_id) {
            assert_eq!(intent, Intent::Duplicate, "{event:?}");
            dup += 1;
            continue;
        }
        let person = lianxi_domain::person_ref(&event).map(str::to_owned);
        let prior = person.as_ref().and_then(|p| persons.get(p)).cloned();
        let ctx = Context {
            policy: &policy,
            prior_case: prior.as_ref(),
        };
        let view = views.get(&event.case_id).cloned();
        match lianxi_domain::decide(&ctx, view.as_ref(), &event, None) {
            Ok(()) => {
                assert_eq!(intent, Intent::Valid, "expected a rejection of {event:?}");
                valid += 1;
                kinds.insert(lianxi_domain::kind(&event));
                let meta = EntryMeta {
                    global_sequence: seq as u64 + 1,
                    case_sequence: view.as_ref().map_or(0, |v| v.case_sequence) + 1,
                    recorded_at: event.occurred_at.unwrap(),
                    sealed: &[],
                };
                let new = lianxi_domain::apply(&ctx, view, &event, &meta);
                if let Some(p) = person {
                    persons.insert(
                        p,
                        PriorCase {
                            case_id: new.case_id.clone(),
                            opened_at: new.opened_at.unwrap(),
                        },
                    );
                }
                views.insert(event.case_id.clone(), new);
                ids.insert(event.event_id.clone());
            }
            Err(r) => {
                assert_eq!(intent, Intent::Invalid, "{event:?} was rejected: {r}");
                invalid += 1;
            }
        }
    }
    (valid, invalid, dup, kinds)
}

#[test]
fn every_generated_story_follows_the_rules_and_every_noise_event_is_caught() {
    let w = Workload {
        seed: 42,
        cases: 600,
        invalid_rate: 0.05,
        duplicate_rate: 0.05,
        ..Workload::default()
    };
    let (valid, invalid, dup, kinds) = run(&w);
    assert!(valid > 600 * 8, "only {valid} valid events");
    assert!(
        invalid > 5 && dup > 5,
        "noise: {invalid} invalid, {dup} duplicates"
    );
    for k in [
        "case_opened",
        "risk_assessed",
        "consent_recorded",
        "referral_issued",
        "referral_accepted",
        "referral_returned",
        "alarm_received",
        "officers_arrived",
        "written_warning_issued",
        "follow_up_visit_recorded",
        "protection_order_applied",
        "protection_order_decided",
        "protection_order_checked",
        "shelter_admitted",
        "shelter_exited",
        "legal_aid_decided",
        "lawyer_assigned",
        "hearing_scheduled",
        "judgment_issued",
        "labour_violation_found",
        "marriage_registration_flagged",
        "case_escalated",
        "case_listed",
        "meeting_held",
        "action_agreed",
        "action_reported",
        "case_closed",
    ] {
        assert!(kinds.contains(k), "no {k} in the workload: {kinds:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_events() {
    let w = Workload {
        seed: 7,
        cases: 50,
        invalid_rate: 0.1,
        duplicate_rate: 0.1,
        ..Workload::default()
    };
    assert_eq!(generate(&w), generate(&w));
    let other = Workload {
        seed: 8,
        ..w.clone()
    };
    assert_ne!(generate(&w), generate(&other));
}

#[test]
fn no_event_is_later_than_the_end() {
    let w = Workload {
        cases: 300,
        ..Workload::default()
    };
    let events = generate(&w);
    assert!(
        events
            .iter()
            .all(|(e, _)| e.occurred_at.unwrap().seconds <= w.end)
    );
    let times: Vec<i64> = events
        .iter()
        .map(|(e, _)| e.occurred_at.unwrap().seconds)
        .collect();
    assert!(
        times.windows(2).all(|p| p[0] <= p[1]),
        "events are not in time order"
    );
}
