//! Queries across cases: given views built by applying events, when the
//! secretariat filters, lists, draws up the agenda or asks for figures at a
//! given `now`, then these are the answers.

use lianxi_domain::{agenda, is_involved, matches, stats, summarize};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::event::Body;
use lianxi_proto::v1::*;

use crate::support::*;

/// Opening of the standard case: Monday 2026-03-02 09:00 UTC.
const OPEN: &str = "2026-03-02T09:00:00Z";
const T1: &str = "2026-03-02T10:00:00Z";
const NOW: &str = "2026-03-20T00:00:00Z";

/// The view of the standard case after `events` (the opening first), under
/// the case id `id`.
fn case(id: &str, events: Vec<Event>) -> CaseView {
    let mut all = vec![opening()];
    all.extend(events);
    let mut v = given(all).view().clone();
    v.case_id = id.into();
    v
}

fn open_as(category: Category, at: &str) -> Event {
    ev(
        "e-open",
        WF,
        at,
        Body::CaseOpened(CaseOpened {
            channel: Channel::WalkIn as i32,
            category: category as i32,
            jurisdiction: "city/county-1".into(),
            level: Level::County as i32,
            person_ref: "P-1".into(),
            summary: "walk-in".into(),
            mandatory_reporter: String::new(),
            person: None,
            children: Vec::new(),
        }),
    )
}

fn now() -> Timestamp {
    t(NOW)
}

fn filter() -> CaseFilter {
    CaseFilter::default()
}

fn ids(items: &[AgendaItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i.case
                .as_ref()
                .map(|c| c.case_id.clone())
                .unwrap_or_default()
        })
        .collect()
}

fn reasons(items: &[AgendaItem], id: &str) -> Vec<AgendaReason> {
    items
        .iter()
        .find(|i| i.case.as_ref().is_some_and(|c| c.case_id == id))
        .unwrap_or_else(|| panic!("{id} not on the agenda: {:?}", ids(items)))
        .reasons
        .iter()
        .map(|r| AgendaReason::try_from(*r).expect("known reason"))
        .collect()
}

fn count(cs: &[Count]) -> Vec<(&str, u64)> {
    cs.iter().map(|c| (c.key.as_str(), c.count)).collect()
}

// ------------------------------------------------------------------ filters

#[test]
fn an_empty_filter_matches_everything_even_an_empty_view() {
    assert!(matches(&filter(), &case("C-1", vec![]), &now()));
    assert!(matches(&filter(), &CaseView::default(), &now()));
}

#[test]
fn jurisdiction_is_a_prefix() {
    let v = case("C-1", vec![]); // city/county-1/township-2
    for (prefix, expected) in [
        ("city", true),
        ("city/county-1", true),
        ("city/county-1/township-2", true),
        ("city/county-2", false),
        ("city/county-1/township-2/x", false),
        ("county-1", false),
    ] {
        let f = CaseFilter {
            jurisdiction: prefix.into(),
            ..filter()
        };
        assert_eq!(matches(&f, &v, &now()), expected, "prefix {prefix}");
    }
}

#[test]
fn statuses_categories_and_risk_levels_match_any_of_their_values() {
    let new = case("C-1", vec![]);
    let triaged = case("C-2", vec![ev("e-1", WF, T1, risk(RiskLevel::High, 80))]);

    let f = CaseFilter {
        statuses: vec![
            CoordinatedStatus::Closed as i32,
            CoordinatedStatus::New as i32,
        ],
        ..filter()
    };
    assert!(matches(&f, &new, &now()));
    assert!(!matches(&f, &triaged, &now()));

    let f = CaseFilter {
        categories: vec![Category::DomesticViolence as i32],
        ..filter()
    };
    assert!(matches(&f, &new, &now()));
    let f = CaseFilter {
        categories: vec![Category::Custody as i32, Category::Marriage as i32],
        ..filter()
    };
    assert!(!matches(&f, &new, &now()));

    let f = CaseFilter {
        risk_levels: vec![RiskLevel::High as i32],
        ..filter()
    };
    assert!(matches(&f, &triaged, &now()));
    assert!(!matches(&f, &new, &now()));
    // Literal values: UNSPECIFIED selects the cases not yet assessed.
    let f = CaseFilter {
        risk_levels: vec![RiskLevel::Unspecified as i32],
        ..filter()
    };
    assert!(matches(&f, &new, &now()));
    assert!(!matches(&f, &triaged, &now()));
}

#[test]
fn involved_agency_leaves_out_an_agency_that_returned_the_referral() {
    let v = case(
        "C-1",
        vec![
            ev("e-r1", WF, T1, refer("r-1", POLICE, false)),
            ev("e-a1", POLICE, T1, accept("r-1")),
            ev("e-r2", WF, T1, refer("r-2", COURT, false)),
            ev("e-x2", COURT, T1, ret("r-2")),
            ev("e-r3", WF, T1, refer("r-3", CIVIL, false)),
        ],
    );
    assert!(is_involved(&v, WF));
    assert!(is_involved(&v, POLICE));
    assert!(is_involved(&v, CIVIL), "received and not yet answered");
    assert!(!is_involved(&v, COURT), "returned");
    assert!(!is_involved(&v, LABOUR), "never asked");
    assert!(!is_involved(&v, Agency::Unspecified));

    let by = |a: i32| CaseFilter {
        involved_agency: a,
        ..filter()
    };
    assert!(matches(&by(POLICE as i32), &v, &now()));
    assert!(matches(&by(CIVIL as i32), &v, &now()));
    assert!(!matches(&by(COURT as i32), &v, &now()));
    assert!(!matches(&by(LABOUR as i32), &v, &now()));
    assert!(!matches(&by(99), &v, &now()), "an unknown agency");
    assert!(matches(&by(Agency::Unspecified as i32), &v, &now()));
}

#[test]
fn overdue_only_is_judged_at_now() {
    // Referred at 10:00 on 2 March: due 72 hours later, 5 March 10:00.
    let open = case("C-1", vec![ev("e-r", WF, T1, refer("r-1", POLICE, false))]);
    let answered = case(
        "C-2",
        vec![
            ev("e-r", WF, T1, refer("r-1", POLICE, false)),
            ev("e-a", POLICE, "2026-03-06T00:00:00Z", accept("r-1")),
        ],
    );
    let f = CaseFilter {
        overdue_only: true,
        ..filter()
    };
    assert!(
        !matches(&f, &open, &t("2026-03-05T10:00:00Z")),
        "due exactly now"
    );
    assert!(matches(&f, &open, &t("2026-03-05T10:00:01Z")));
    assert!(!matches(&f, &answered, &now()), "met, even if late");
}

#[test]
fn escalated_only_and_repeat_only() {
    let plain = case("C-1", vec![]);
    let escalated = case("C-2", vec![ev("e-x", WF, T1, escalated())]);
    let repeat = given(vec![])
        .with_prior(PriorCase {
            case_id: "C-0".into(),
            opened_at: t("2025-12-01T00:00:00Z"),
        })
        .then_ok(opening());

    let f = CaseFilter {
        escalated_only: true,
        ..filter()
    };
    assert!(matches(&f, &escalated, &now()));
    assert!(!matches(&f, &plain, &now()));
    let f = CaseFilter {
        repeat_only: true,
        ..filter()
    };
    assert!(matches(&f, &repeat, &now()));
    assert!(!matches(&f, &plain, &now()));
}

#[test]
fn opened_from_is_inclusive_and_opened_before_exclusive() {
    let v = case("C-1", vec![]); // opened at OPEN
    let from = |at: &str| CaseFilter {
        opened_from: Some(t(at)),
        ..filter()
    };
    let before = |at: &str| CaseFilter {
        opened_before: Some(t(at)),
        ..filter()
    };
    assert!(matches(&from(OPEN), &v, &now()));
    assert!(matches(&from("2026-03-01T00:00:00Z"), &v, &now()));
    assert!(!matches(&from("2026-03-02T09:00:01Z"), &v, &now()));
    assert!(!matches(&before(OPEN), &v, &now()));
    assert!(matches(&before("2026-03-02T09:00:01Z"), &v, &now()));
    assert!(!matches(&before("2026-03-01T00:00:00Z"), &v, &now()));
    // A view without an opening time meets no bound.
    assert!(!matches(&from(OPEN), &CaseView::default(), &now()));
    assert!(!matches(&before(OPEN), &CaseView::default(), &now()));
}

#[test]
fn every_set_field_must_match() {
    let v = case("C-1", vec![ev("e-x", WF, T1, escalated())]);
    let f = CaseFilter {
        jurisdiction: "city/county-1".into(),
        categories: vec![Category::DomesticViolence as i32],
        involved_agency: WF as i32,
        escalated_only: true,
        ..filter()
    };
    assert!(matches(&f, &v, &now()));
    let f = CaseFilter {
        repeat_only: true,
        ..f
    };
    assert!(!matches(&f, &v, &now()), "not a repeat case");
}

// ------------------------------------------------------------------ summary

#[test]
fn a_summary_is_one_line_judged_at_now() {
    let v = case(
        "C-1",
        vec![
            ev("e-r1", WF, T1, refer("r-1", POLICE, false)), // due 03-05 10:00
            ev("e-r2", WF, T1, refer("r-2", COURT, false)),
            ev("e-x2", COURT, "2026-03-02T11:00:00Z", ret("r-2")),
            ev("e-risk", WF, T1, risk(RiskLevel::Medium, 50)),
            ev("e-app", WF, "2026-03-03T09:00:00Z", applied("app-1", false)), // due 03-06 09:00
            ev(
                "e-g",
                COURT,
                "2026-03-04T09:00:00Z",
                granted("app-1", "o-1", "2026-06-01T00:00:00Z"),
            ), // police check due 03-05 09:00
            ev("e-esc", WF, "2026-03-04T10:00:00Z", escalated()),
        ],
    );
    let s = summarize(&v, &t("2026-03-05T09:30:00Z"));
    assert_eq!(s.case_id, "C-1");
    assert_eq!(s.status, v.status);
    assert_eq!(s.category, Category::DomesticViolence as i32);
    assert_eq!(s.jurisdiction, "city/county-1/township-2");
    assert_eq!(s.level, Level::County as i32);
    assert_eq!(s.risk_level, RiskLevel::Medium as i32);
    assert_eq!(s.first_contact, WF as i32);
    assert_eq!(s.lead, WF as i32);
    assert_eq!(s.opened_at, Some(t(OPEN)));
    assert_eq!(s.last_event_at, Some(t("2026-03-04T10:00:00Z")));
    assert_eq!(s.events, 8);
    assert!(s.escalated);
    assert!(!s.repeat_case);
    assert_eq!(s.overdue, 1, "the order check, due 09:00");
    assert_eq!(
        s.next_due_at,
        Some(t("2026-03-05T09:00:00Z")),
        "the earliest open obligation, overdue or not; the decided application is met"
    );
    assert!(s.protection_order_active);
    assert_eq!(
        s.protection_order_expires_at,
        Some(t("2026-06-01T00:00:00Z"))
    );
    // The court returned its referral but then decided the application, so
    // it is back at work on the case.
    assert_eq!(s.agencies, vec![POLICE as i32, COURT as i32, WF as i32]);

    let later = summarize(&v, &t("2026-03-05T10:00:01Z"));
    assert_eq!(later.overdue, 2, "and now the police referral too");

    let after_expiry = summarize(&v, &t("2026-06-01T00:00:00Z"));
    assert!(!after_expiry.protection_order_active);
    assert_eq!(
        after_expiry.protection_order_expires_at,
        Some(t("2026-06-01T00:00:00Z")),
        "the expiry is still shown"
    );
}

#[test]
fn a_summary_leaves_out_returned_agencies() {
    let v = case(
        "C-1",
        vec![
            ev("e-r", WF, T1, refer("r-1", COURT, false)),
            ev("e-x", COURT, T1, ret("r-1")),
        ],
    );
    let s = summarize(&v, &now());
    assert_eq!(s.agencies, vec![WF as i32]);
    assert_eq!(s.next_due_at, None, "nothing open");
    assert_eq!(s.overdue, 0);
    assert!(!s.protection_order_active);
    assert_eq!(s.protection_order_expires_at, None);
}

// ------------------------------------------------------------------- agenda

/// A granted order expiring at `expires`, checked by the police so that
/// nothing is overdue.
fn order_expiring(expires: &str) -> Vec<Event> {
    vec![
        ev("e-app", WF, "2026-03-03T09:00:00Z", applied("app-1", false)),
        ev(
            "e-g",
            COURT,
            "2026-03-04T09:00:00Z",
            granted("app-1", "o-1", expires),
        ),
        ev("e-c", POLICE, "2026-03-04T12:00:00Z", checked("o-1")),
    ]
}

#[test]
fn each_reason_puts_a_case_on_the_agenda() {
    let v_quiet = case("C-quiet", vec![ev("e-1", WF, T1, progress())]);
    let v_escalated = case("C-esc", vec![ev("e-x", WF, T1, escalated())]);
    let v_high = case("C-high", vec![ev("e-1", WF, T1, risk(RiskLevel::High, 90))]);
    let v_medium = case(
        "C-medium",
        vec![ev("e-1", WF, T1, risk(RiskLevel::Medium, 50))],
    );
    let v_action = case(
        "C-action",
        vec![ev(
            "e-act",
            PLC,
            T1,
            action("act-1", POLICE, "2026-03-10T00:00:00Z"),
        )],
    );
    let v_action_done = case(
        "C-action-done",
        vec![
            ev(
                "e-act",
                PLC,
                T1,
                action("act-1", POLICE, "2026-03-10T00:00:00Z"),
            ),
            ev(
                "e-rep",
                POLICE,
                "2026-03-09T00:00:00Z",
                reported("act-1", ActionOutcome::Done),
            ),
        ],
    );
    let v_obligation = case(
        "C-obl",
        vec![ev("e-r", WF, T1, refer("r-1", POLICE, false))],
    );
    let v_expiring = case("C-exp", order_expiring("2026-03-25T00:00:00Z"));
    let v_far = case("C-far", order_expiring("2026-06-01T00:00:00Z"));
    let v_listed = case(
        "C-listed",
        vec![ev("e-l", PLC, T1, listed("m-1", "2026-03-25T09:00:00Z"))],
    );
    let v_held = case(
        "C-held",
        vec![
            ev("e-l", PLC, T1, listed("m-1", "2026-03-10T09:00:00Z")),
            ev("e-h", PLC, "2026-03-10T12:00:00Z", held("m-1")),
        ],
    );
    let v_closed = case(
        "C-closed",
        vec![
            ev("e-x", WF, T1, escalated()),
            ev("e-r", WF, T1, refer("r-1", POLICE, false)),
            ev("e-c", PLC, "2026-03-03T00:00:00Z", closed()),
        ],
    );
    let views = vec![
        v_quiet,
        v_escalated,
        v_high,
        v_medium,
        v_action,
        v_action_done,
        v_obligation,
        v_expiring,
        v_far,
        v_listed,
        v_held,
        v_closed,
    ];
    let items = agenda(&views, &now(), 14);
    let mut on: Vec<String> = ids(&items);
    on.sort();
    assert_eq!(
        on,
        ["C-action", "C-esc", "C-exp", "C-high", "C-listed", "C-obl"],
        "quiet, medium-risk, met, far-expiring, held and closed cases stay off"
    );
    assert_eq!(reasons(&items, "C-esc"), [AgendaReason::Escalated]);
    assert_eq!(reasons(&items, "C-high"), [AgendaReason::HighRisk]);
    assert_eq!(
        reasons(&items, "C-action"),
        [AgendaReason::OverdueAction],
        "an overdue action is not said twice as an overdue obligation"
    );
    assert_eq!(reasons(&items, "C-obl"), [AgendaReason::OverdueObligation]);
    assert_eq!(reasons(&items, "C-exp"), [AgendaReason::OrderExpiring]);
    assert_eq!(reasons(&items, "C-listed"), [AgendaReason::Listed]);

    // The window: 3 days from 20 March does not reach 25 March; 0 means 14.
    assert!(!ids(&agenda(&views, &now(), 3)).contains(&"C-exp".to_string()));
    assert!(ids(&agenda(&views, &now(), 0)).contains(&"C-exp".to_string()));
    assert!(ids(&agenda(&views, &now(), 90)).contains(&"C-far".to_string()));
    // An expired order is no longer in force, so not expiring either.
    assert!(!ids(&agenda(&views, &t("2026-03-25T00:00:00Z"), 14)).contains(&"C-exp".to_string()));
}

#[test]
fn reasons_come_most_pressing_first() {
    let v = case(
        "C-1",
        vec![
            ev("e-l", PLC, T1, listed("m-1", "2026-03-25T09:00:00Z")),
            ev(
                "e-act",
                PLC,
                T1,
                action("act-1", POLICE, "2026-03-10T00:00:00Z"),
            ),
            ev("e-r", WF, T1, refer("r-1", COURT, false)),
            ev("e-risk", WF, T1, risk(RiskLevel::High, 90)),
            ev("e-x", WF, T1, escalated()),
        ],
    );
    let items = agenda(&[v], &now(), 14);
    assert_eq!(
        reasons(&items, "C-1"),
        [
            AgendaReason::Escalated,
            AgendaReason::HighRisk,
            AgendaReason::OverdueAction,
            AgendaReason::OverdueObligation,
            AgendaReason::Listed,
        ]
    );
    assert_eq!(items[0].overdue.len(), 2);
    assert_eq!(items[0].case.as_ref().map(|c| c.overdue), Some(2));
}

#[test]
fn overdue_obligations_are_listed_by_owner_then_due_time() {
    let v = case(
        "C-1",
        vec![
            ev("e-r1", WF, T1, refer("r-1", COURT, false)), // due 03-05 10:00
            ev(
                "e-r2",
                WF,
                "2026-03-02T12:00:00Z",
                refer("r-2", POLICE, false),
            ), // 12:00
            ev(
                "e-r3",
                WF,
                "2026-03-02T11:00:00Z",
                refer("r-3", POLICE, false),
            ), // 11:00
            ev(
                "e-act",
                PLC,
                T1,
                action("act-1", PLC, "2026-03-19T00:00:00Z"),
            ),
        ],
    );
    let items = agenda(&[v], &now(), 14);
    let got: Vec<&str> = items[0].overdue.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(
        got,
        [
            "meeting_action/act-1",  // committee (1)
            "referral_response/r-3", // police (2), 11:00
            "referral_response/r-2", // police (2), 12:00
            "referral_response/r-1", // court (3)
        ]
    );
}

#[test]
fn the_agenda_is_in_discussion_order() {
    let two_overdue = vec![
        ev("e-r1", WF, T1, refer("r-1", POLICE, false)),
        ev("e-r2", WF, T1, refer("r-2", COURT, false)),
    ];
    let one_overdue = || vec![ev("e-r1", WF, T1, refer("r-1", POLICE, false))];
    let views = vec![
        case("C-e", order_expiring("2026-03-25T00:00:00Z")),
        case("C-h", one_overdue()),
        case("C-c", two_overdue),
        case("C-a", vec![ev("e-1", WF, T1, risk(RiskLevel::High, 90))]),
        case("C-f", order_expiring("2026-03-22T00:00:00Z")),
        case("C-g", vec![ev("e-x", WF, T1, escalated())]),
        case("C-d", one_overdue()),
        case(
            "C-b",
            vec![ev("e-l", PLC, T1, listed("m-1", "2026-03-25T09:00:00Z"))],
        ),
        case(
            "C-i",
            vec![
                ev("e-1", WF, T1, risk(RiskLevel::High, 90)),
                ev("e-r1", WF, T1, refer("r-1", POLICE, false)),
            ],
        ),
    ];
    let expected = [
        "C-b", "C-g", // listed or escalated, then by id
        "C-i", "C-a", // high risk: more overdue first
        "C-c", // two overdue
        "C-d", "C-h", // one overdue each: by id
        "C-f", "C-e", // the sooner expiry first
    ];
    assert_eq!(ids(&agenda(&views, &now(), 14)), expected);
    let mut reversed = views.clone();
    reversed.reverse();
    assert_eq!(
        ids(&agenda(&reversed, &now(), 14)),
        expected,
        "the input order does not matter"
    );
}

#[test]
fn an_empty_agenda() {
    assert!(agenda(&[], &now(), 14).is_empty());
    assert!(agenda(&[case("C-1", vec![])], &now(), 14).is_empty());
}

// -------------------------------------------------------------------- stats

#[test]
fn counts_by_category_agency_risk_month_and_status() {
    let opened_as = |id: &str, events: Vec<Event>| {
        let mut v = given(events).view().clone();
        v.case_id = id.into();
        v
    };
    let views = vec![
        case("C-1", vec![ev("e-1", WF, T1, risk(RiskLevel::High, 90))]),
        // 20:00 UTC on 31 March is 04:00 on 1 April in China.
        opened_as(
            "C-2",
            vec![
                open_as(Category::DomesticViolence, "2026-03-31T20:00:00Z"),
                ev(
                    "e-r",
                    WF,
                    "2026-03-31T21:00:00Z",
                    refer("r-1", POLICE, false),
                ),
            ],
        ),
        // 15:59:59 UTC is still 31 March in China.
        opened_as(
            "C-3",
            vec![
                open_as(Category::Custody, "2026-03-31T15:59:59Z"),
                ev(
                    "e-r",
                    WF,
                    "2026-03-31T16:00:00Z",
                    refer("r-1", COURT, false),
                ),
                ev("e-x", COURT, "2026-03-31T17:00:00Z", ret("r-1")),
            ],
        ),
        case("C-4", vec![ev("e-c", WF, T1, closed())]),
    ];
    let s = stats(&views, &now());
    assert_eq!(s.cases, 4);
    assert_eq!(
        count(&s.by_category),
        [("CATEGORY_CUSTODY", 1), ("CATEGORY_DOMESTIC_VIOLENCE", 3)]
    );
    assert_eq!(
        count(&s.by_agency),
        [("AGENCY_POLICE", 1), ("AGENCY_WOMENS_FEDERATION", 4)],
        "the court returned its referral"
    );
    assert_eq!(
        count(&s.by_risk_level),
        [("RISK_LEVEL_HIGH", 1), ("RISK_LEVEL_UNSPECIFIED", 3)]
    );
    assert_eq!(count(&s.by_month), [("2026-03", 3), ("2026-04", 1)]);
    assert_eq!(count(&s.by_network_level), [("LEVEL_COUNTY", 4)]);
    assert_eq!(
        count(&s.by_status),
        [
            ("COORDINATED_STATUS_CLOSED", 1),
            ("COORDINATED_STATUS_NEW", 1),
            ("COORDINATED_STATUS_REFERRED", 1),
            ("COORDINATED_STATUS_TRIAGED", 1),
        ]
    );
    assert_eq!(s.evaluated_at, Some(now()));
}

fn duration(s: &GetStatsResponse, name: &str) -> (u64, f64, f64) {
    let d = s
        .durations
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no duration {name}"));
    (d.cases, d.median_hours, d.p90_hours)
}

#[test]
fn durations_use_the_nearest_rank() {
    // Closed 1, 2, ..., 10 hours after opening: the nearest-rank median is
    // the 5th value (an interpolated one would be 5.5), the 90th percentile
    // the 9th.
    let mut views: Vec<CaseView> = (1..=10)
        .map(|h| {
            case(
                &format!("C-{h:02}"),
                vec![ev(
                    "e-c",
                    WF,
                    &format!("2026-03-02T{:02}:00:00Z", 9 + h),
                    closed(),
                )],
            )
        })
        .collect();
    views.push(case("C-open", vec![]));
    let s = stats(&views, &now());
    assert_eq!(
        s.durations
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        [
            "opening_to_first_acceptance",
            "opening_to_order_decision",
            "opening_to_closure"
        ]
    );
    assert_eq!(duration(&s, "opening_to_closure"), (10, 5.0, 9.0));
    assert_eq!(duration(&s, "opening_to_first_acceptance"), (0, 0.0, 0.0));
}

#[test]
fn time_to_first_acceptance_and_to_order_decision() {
    let accepted_after = |id: &str, hours: u32| {
        case(
            id,
            vec![
                ev("e-r", WF, OPEN, refer("r-1", POLICE, false)),
                ev(
                    "e-a",
                    POLICE,
                    &format!("2026-03-02T{:02}:00:00Z", 9 + hours),
                    accept("r-1"),
                ),
            ],
        )
    };
    let views = vec![
        accepted_after("C-1", 1),
        accepted_after("C-2", 2),
        accepted_after("C-3", 3),
        accepted_after("C-4", 4),
        // Two acceptances, the first counts; an earlier return does not.
        case(
            "C-5",
            vec![
                ev("e-r1", WF, OPEN, refer("r-1", POLICE, false)),
                ev("e-r2", WF, OPEN, refer("r-2", COURT, false)),
                ev("e-r3", WF, OPEN, refer("r-3", CIVIL, false)),
                ev("e-x3", CIVIL, "2026-03-02T09:30:00Z", ret("r-3")),
                ev("e-a1", POLICE, "2026-03-02T21:00:00Z", accept("r-1")),
                ev("e-a2", COURT, "2026-03-02T19:00:00Z", accept("r-2")),
            ],
        ),
        // Not accepted: not measured.
        case(
            "C-6",
            vec![ev("e-r", WF, OPEN, refer("r-1", POLICE, false))],
        ),
        // Order decisions: a refusal after 6 hours, a grant after 30.
        case(
            "C-7",
            vec![
                ev("e-app", WF, OPEN, applied("app-1", false)),
                ev("e-d", COURT, "2026-03-02T15:00:00Z", rejected("app-1")),
            ],
        ),
        case(
            "C-8",
            vec![
                ev("e-app", WF, OPEN, applied("app-1", false)),
                ev(
                    "e-d",
                    COURT,
                    "2026-03-03T15:00:00Z",
                    granted("app-1", "o-1", "2026-06-01T00:00:00Z"),
                ),
            ],
        ),
        // Applied, undecided: not measured.
        case("C-9", vec![ev("e-app", WF, OPEN, applied("app-1", false))]),
    ];
    let s = stats(&views, &now());
    // 1, 2, 3, 4, 10 hours: median the 3rd, p90 the 5th.
    assert_eq!(duration(&s, "opening_to_first_acceptance"), (5, 3.0, 10.0));
    // 6, 30 hours: median the 1st, p90 the 2nd.
    assert_eq!(duration(&s, "opening_to_order_decision"), (2, 6.0, 30.0));
    assert_eq!(duration(&s, "opening_to_closure"), (0, 0.0, 0.0));
}

#[test]
fn overdue_rate_counts_late_and_open_past_due_but_not_on_time_or_cancelled() {
    // Referred at 10:00 on 2 March: due 5 March 10:00.
    let referred = || ev("e-r", WF, T1, refer("r-1", POLICE, false));
    let views = vec![
        case(
            "C-on-time",
            vec![
                referred(),
                ev("e-a", POLICE, "2026-03-05T10:00:00Z", accept("r-1")),
            ],
        ),
        case(
            "C-late",
            vec![
                referred(),
                ev("e-a", POLICE, "2026-03-05T10:00:01Z", accept("r-1")),
            ],
        ),
        case("C-open-past-due", vec![referred()]),
        case(
            "C-open-not-due",
            vec![ev(
                "e-r",
                WF,
                "2026-03-19T00:00:00Z",
                refer("r-1", POLICE, false),
            )],
        ),
        case(
            "C-cancelled",
            vec![
                ev("e-r", WF, T1, refer("r-1", COURT, false)),
                ev("e-c", PLC, "2026-03-03T00:00:00Z", closed()),
            ],
        ),
    ];
    let s = stats(&views, &now());
    assert_eq!(
        s.overdue_by_agency,
        vec![AgencyRate {
            agency: POLICE as i32,
            obligations: 4,
            overdue: 2,
            overdue_rate: 0.5,
        }],
        "the court's obligation was cancelled by the closure"
    );
    // Earlier, the open referral was not yet past due.
    let early = stats(&views, &t("2026-03-05T10:00:00Z"));
    assert_eq!(early.overdue_by_agency[0].overdue, 1);
    assert_eq!(early.overdue_by_agency[0].overdue_rate, 0.25);
}

#[test]
fn stats_of_nothing() {
    let s = stats(&[], &now());
    assert_eq!(s.cases, 0);
    assert!(s.by_category.is_empty() && s.by_agency.is_empty() && s.by_month.is_empty());
    assert!(s.overdue_by_agency.is_empty());
    assert_eq!(s.durations.len(), 3);
    assert!(
        s.durations
            .iter()
            .all(|d| d.cases == 0 && d.median_hours == 0.0)
    );
    assert_eq!(s.evaluated_at, Some(now()));
}

// ----------------------------------------------------------- odd input

#[test]
fn nothing_panics_on_odd_views() {
    let odd = CaseView {
        case_id: "C-odd".into(),
        status: 42,
        category: 99,
        level: -1,
        opened_at: Some(Timestamp {
            seconds: i64::MAX,
            nanos: -5,
        }),
        closed_at: None,
        agencies: vec![AgencyInvolvement {
            agency: 77,
            state: 9,
            ..Default::default()
        }],
        obligations: vec![
            Obligation {
                id: "x".into(),
                owner: 77,
                due_at: None,
                ..Default::default()
            },
            Obligation {
                id: "y".into(),
                owner: -3,
                due_at: Some(Timestamp {
                    seconds: i64::MIN,
                    nanos: 0,
                }),
                fulfilled_at: Some(Timestamp {
                    seconds: i64::MAX,
                    nanos: 999_999_999,
                }),
                ..Default::default()
            },
        ],
        orders: vec![ProtectionOrder {
            expires_at: Some(Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..Default::default()
        }],
        referrals: vec![Referral {
            state: InvolvementState::Accepted as i32,
            answered_at: Some(Timestamp {
                seconds: i64::MIN,
                nanos: 0,
            }),
            ..Default::default()
        }],
        flags: Some(Flags {
            risk_level: 12,
            ..Default::default()
        }),
        case_sequence: u64::MAX,
        ..Default::default()
    };
    let extreme = Timestamp {
        seconds: i64::MAX,
        nanos: i32::MAX,
    };
    let views = vec![odd.clone(), CaseView::default()];
    for now in [now(), extreme, Timestamp::default()] {
        let f = CaseFilter {
            involved_agency: 77,
            overdue_only: true,
            opened_from: Some(Timestamp {
                seconds: i64::MIN,
                nanos: i32::MIN,
            }),
            ..filter()
        };
        let _ = matches(&f, &odd, &now);
        let s = summarize(&odd, &now);
        assert_eq!(s.events, u32::MAX);
        let _ = agenda(&views, &now, u32::MAX);
        let st = stats(&views, &now);
        assert_eq!(st.cases, 2);
        assert!(count(&st.by_category).contains(&("CATEGORY_99", 1)));
        assert!(count(&st.by_status).contains(&("COORDINATED_STATUS_42", 1)));
        assert!(count(&st.by_risk_level).contains(&("RISK_LEVEL_12", 1)));
        assert!(count(&st.by_month).contains(&("unknown", 2)));
        assert_eq!(count(&st.by_agency), [("AGENCY_77", 1)]);
        assert_eq!(duration(&st, "opening_to_first_acceptance").0, 1);
    }
}
