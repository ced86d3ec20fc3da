//! Queries across case views: filters, case-list lines, the meeting agenda
//! and the monitoring figures.
//!
//! Pure like the rest of the crate: every answer depends only on the views
//! passed in and on `now`, which the caller supplies. Visibility (who may see
//! which case) is the caller's business: these functions see only the views
//! they are given.
//!
//! # Choices
//!
//! - **Filters.** Repeated fields match their values literally, so
//!   `risk_levels: [RISK_LEVEL_UNSPECIFIED]` selects the cases not yet
//!   assessed; an empty list matches everything. `involved_agency` UNSPECIFIED
//!   matches everything; an unknown agency number matches nothing. The
//!   jurisdiction is a plain string prefix, as the API documents it. A view
//!   without an opening time matches no `opened_from`/`opened_before` bound.
//! - **Agenda reasons**, most pressing first, follow the enum order:
//!   escalated, high risk, overdue meeting action, overdue obligation, order
//!   expiring, listed. An overdue meeting action gives `OVERDUE_ACTION` only;
//!   `OVERDUE_OBLIGATION` is given for overdue obligations of any other kind,
//!   so a reason is never said twice. An order is expiring when it is in
//!   force at `now` and expires at most `expiring_within_days` days after
//!   `now`; 0 days means [`DEFAULT_EXPIRING_WITHIN_DAYS`], as in
//!   `GetAgendaRequest`. High risk is the flag or a `RISK_LEVEL_HIGH`
//!   assessment. Closed cases are never on the agenda.
//! - **Agenda order**: escalated or listed first, then high risk, then more
//!   overdue obligations (of every kind), then the soonest expiring order
//!   (cases with none after), then case id; views with the same case id keep
//!   their input order.
//! - **Durations** are in hours, nearest-rank percentiles (the value at rank
//!   `ceil(p/100 * n)` of the sorted values). `opening_to_first_acceptance`
//!   uses the earliest `answered_at` of an accepted referral;
//!   `opening_to_order_decision` uses the earliest `fulfilled_at` of an
//!   `ORDER_DECISION` obligation (a grant or a refusal), or a granted order's
//!   `granted_at` if earlier (an order always comes with its decision, so
//!   this only matters for views built otherwise); `opening_to_closure`
//!   uses `closed_at` of closed cases (the last closure of a reopened case).
//!   A case without an opening time is not measured; an end before the
//!   opening (a backdated event) counts as zero hours.
//! - **Counts** include every case: an unset category, risk level or status
//!   counts under its `*_UNSPECIFIED` name, an unknown enum number under
//!   `<PREFIX>_<number>`, and a case without an opening time under the month
//!   `"unknown"`. `by_agency` counts each case once per involved agency.
//! - **Overdue by agency** counts obligations that are not cancelled, by
//!   owner (any owner number, in number order; agencies with no obligation
//!   are left out). Overdue means met after the due time, or open and due
//!   before `now`; met exactly at the due time is on time. An obligation
//!   without a due time is counted and never overdue.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;

use chrono::DateTime;
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    Agency, AgencyRate, AgendaItem, AgendaReason, CaseFilter, CaseSummary, CaseView, Category,
    CoordinatedStatus, Count, DurationStat, Flags, GetStatsResponse, InvolvementState, Level,
    Obligation, ObligationKind, RiskLevel,
};

use crate::evaluate::evaluate;
use crate::state::is_open;
use crate::time;

/// The expiry window of the agenda when the caller passes 0 days.
pub const DEFAULT_EXPIRING_WITHIN_DAYS: u32 = 14;

/// The names of the durations in [`stats`], in output order.
pub const DURATION_NAMES: [&str; 3] = [
    "opening_to_first_acceptance",
    "opening_to_order_decision",
    "opening_to_closure",
];

const CST_OFFSET_SECONDS: i64 = 8 * 3_600;
const NANOS_PER_HOUR: f64 = 3_600_000_000_000.0;

fn flags(view: &CaseView) -> Flags {
    view.flags.clone().unwrap_or_default()
}

fn involved_i32(view: &CaseView, agency: i32) -> bool {
    view.agencies
        .iter()
        .any(|x| x.agency == agency && x.state != InvolvementState::Returned as i32)
}

fn is_closed(view: &CaseView) -> bool {
    view.closed_at.is_some() || view.status == CoordinatedStatus::Closed as i32
}

/// What the list filters' index keeps of a view: every field
/// [`matches`] filters on that an index can narrow by (status, category,
/// risk level, involved agencies) and the earliest due time among open
/// obligations, before which the case is not overdue. `matches` stays the
/// judge: an index only chooses which views to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facets {
    pub status: i32,
    pub category: i32,
    pub risk_level: i32,
    /// Involved agencies (a returned referral does not count), in order.
    pub agencies: Vec<i32>,
    /// The earliest due time among open obligations: the case is overdue at
    /// `now` exactly when this is before `now`.
    pub next_due: Option<Timestamp>,
}

pub fn facets(view: &CaseView) -> Facets {
    let mut agencies: Vec<i32> = view
        .agencies
        .iter()
        .filter(|x| x.state != InvolvementState::Returned as i32)
        .map(|x| x.agency)
        .collect();
    agencies.sort_unstable();
    agencies.dedup();
    Facets {
        status: view.status,
        category: view.category,
        risk_level: flags(view).risk_level,
        agencies,
        next_due: next_due(view),
    }
}

/// The earliest due time among a view's open obligations.
fn next_due(view: &CaseView) -> Option<Timestamp> {
    view.obligations
        .iter()
        .filter(|o| is_open(o))
        .filter_map(|o| o.due_at)
        .min_by_key(time::key)
}

/// Does the view match every set field of the filter? See the module docs
/// for the details.
pub fn matches(filter: &CaseFilter, view: &CaseView, now: &Timestamp) -> bool {
    let f = flags(view);
    if !view.jurisdiction.starts_with(filter.jurisdiction.as_str()) {
        return false;
    }
    if !filter.statuses.is_empty() && !filter.statuses.contains(&view.status) {
        return false;
    }
    if !filter.categories.is_empty() && !filter.categories.contains(&view.category) {
        return false;
    }
    if !filter.risk_levels.is_empty() && !filter.risk_levels.contains(&f.risk_level) {
        return false;
    }
    if filter.involved_agency != Agency::Unspecified as i32
        && !involved_i32(view, filter.involved_agency)
    {
        return false;
    }
    if filter.escalated_only && !f.escalated {
        return false;
    }
    if filter.repeat_only && !f.repeat_case {
        return false;
    }
    // A view without an opening time meets no bound.
    if let Some(from) = &filter.opened_from {
        match &view.opened_at {
            Some(o) if !time::before(o, from) => {}
            _ => return false,
        }
    }
    if let Some(before) = &filter.opened_before {
        match &view.opened_at {
            Some(o) if time::before(o, before) => {}
            _ => return false,
        }
    }
    if filter.overdue_only && evaluate(view, now).overdue.is_empty() {
        return false;
    }
    true
}

/// Is `agency` involved in the case for need-to-know purposes: present in
/// `view.agencies` and not in state RETURNED?
pub fn is_involved(view: &CaseView, agency: Agency) -> bool {
    agency != Agency::Unspecified && involved_i32(view, agency as i32)
}

/// One line of a case list, judged at `now`.
///
/// `overdue` and `protection_order_active` come from [`evaluate`];
/// `next_due_at` is the earliest due time among open obligations (overdue
/// ones included); `protection_order_expires_at` is the latest expiry among
/// the orders in force, or, when none is, the view's flag (the latest
/// unrevoked order); `agencies` are the involved agencies in the view's
/// order; `events` is the case sequence, saturating at `u32::MAX`.
pub fn summarize(view: &CaseView, now: &Timestamp) -> CaseSummary {
    let f = flags(view);
    let ev = evaluate(view, now);
    let next_due_at = next_due(view);
    let active_expiry = view
        .orders
        .iter()
        .filter(|o| !o.revoked)
        .filter_map(|o| o.expires_at)
        .filter(|exp| time::before(now, exp))
        .max_by_key(time::key);
    let protection_order_expires_at = if ev.protection_order_active {
        active_expiry
    } else {
        f.protection_order_expires_at
    };
    CaseSummary {
        case_id: view.case_id.clone(),
        status: view.status,
        category: view.category,
        jurisdiction: view.jurisdiction.clone(),
        level: view.level,
        risk_level: f.risk_level,
        first_contact: view.first_contact,
        lead: view.lead,
        opened_at: view.opened_at,
        last_event_at: view.last_event_at,
        events: u32::try_from(view.case_sequence).unwrap_or(u32::MAX),
        overdue: u32::try_from(ev.overdue.len()).unwrap_or(u32::MAX),
        next_due_at,
        escalated: f.escalated,
        repeat_case: f.repeat_case,
        protection_order_active: ev.protection_order_active,
        protection_order_expires_at,
        agencies: view
            .agencies
            .iter()
            .filter(|x| x.state != InvolvementState::Returned as i32)
            .map(|x| x.agency)
            .collect(),
    }
}

/// The soonest expiry among orders in force at `now` that expire at most
/// `days` days after it.
fn soonest_expiring(view: &CaseView, now: &Timestamp, days: u32) -> Option<Timestamp> {
    let limit = time::plus_days(now, days);
    view.orders
        .iter()
        .filter(|o| !o.revoked)
        .filter_map(|o| o.expires_at)
        .filter(|exp| time::before(now, exp) && !time::before(&limit, exp))
        .min_by_key(time::key)
}

struct Ranked {
    item: AgendaItem,
    escalated_or_listed: bool,
    high_risk: bool,
    overdue: usize,
    expiring: Option<Timestamp>,
}

fn compare(a: &Ranked, b: &Ranked) -> Ordering {
    let key = |r: &Ranked| {
        (
            !r.escalated_or_listed,
            !r.high_risk,
            Reverse(r.overdue),
            // Cases with an expiring order first, the soonest first.
            r.expiring.as_ref().map_or((1, 0), |t| (0, time::key(t))),
        )
    };
    key(a).cmp(&key(b)).then_with(|| {
        let id = |r: &Ranked| r.item.case.as_ref().map(|c| c.case_id.clone());
        id(a).cmp(&id(b))
    })
}

/// The agenda for the next joint meeting from the given views (already
/// filtered by the caller for visibility and jurisdiction), in discussion
/// order. See the module docs for the reasons and the order.
pub fn agenda(views: &[CaseView], now: &Timestamp, expiring_within_days: u32) -> Vec<AgendaItem> {
    let days = if expiring_within_days == 0 {
        DEFAULT_EXPIRING_WITHIN_DAYS
    } else {
        expiring_within_days
    };
    let mut ranked: Vec<Ranked> = views
        .iter()
        .filter(|v| !is_closed(v))
        .filter_map(|v| {
            let f = flags(v);
            let mut overdue = evaluate(v, now).overdue;
            let high_risk = f.high_risk || f.risk_level == RiskLevel::High as i32;
            let overdue_action = overdue
                .iter()
                .any(|o| o.kind == ObligationKind::MeetingAction as i32);
            let overdue_other = overdue
                .iter()
                .any(|o| o.kind != ObligationKind::MeetingAction as i32);
            let expiring = soonest_expiring(v, now, days);
            let listed = !v.pending_meetings.is_empty() || v.meetings.iter().any(|m| !m.held);
            let reasons: Vec<i32> = [
                (f.escalated, AgendaReason::Escalated),
                (high_risk, AgendaReason::HighRisk),
                (overdue_action, AgendaReason::OverdueAction),
                (overdue_other, AgendaReason::OverdueObligation),
                (expiring.is_some(), AgendaReason::OrderExpiring),
                (listed, AgendaReason::Listed),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, r)| r as i32)
            .collect();
            if reasons.is_empty() {
                return None;
            }
            overdue.sort_by(|a, b| {
                a.owner
                    .cmp(&b.owner)
                    .then_with(|| due_key(a).cmp(&due_key(b)))
                    .then_with(|| a.id.cmp(&b.id))
            });
            Some(Ranked {
                escalated_or_listed: f.escalated || listed,
                high_risk,
                overdue: overdue.len(),
                expiring,
                item: AgendaItem {
                    case: Some(summarize(v, now)),
                    reasons,
                    overdue,
                },
            })
        })
        .collect();
    // Stable: views with the same case id keep their input order.
    ranked.sort_by(compare);
    ranked.into_iter().map(|r| r.item).collect()
}

fn due_key(o: &Obligation) -> (u8, i128) {
    o.due_at.as_ref().map_or((1, 0), |t| (0, time::key(t)))
}

// ------------------------------------------------------------------- stats

fn enum_key(name: Option<&str>, prefix: &str, value: i32) -> String {
    name.map_or_else(|| format!("{prefix}_{value}"), str::to_owned)
}

fn category_key(v: i32) -> String {
    enum_key(
        Category::try_from(v).ok().map(|c| c.as_str_name()),
        "CATEGORY",
        v,
    )
}

fn agency_key(v: i32) -> String {
    enum_key(
        Agency::try_from(v).ok().map(|c| c.as_str_name()),
        "AGENCY",
        v,
    )
}

fn risk_key(v: i32) -> String {
    enum_key(
        RiskLevel::try_from(v).ok().map(|c| c.as_str_name()),
        "RISK_LEVEL",
        v,
    )
}

fn level_key(v: i32) -> String {
    enum_key(Level::try_from(v).ok().map(|c| c.as_str_name()), "LEVEL", v)
}

fn status_key(v: i32) -> String {
    enum_key(
        CoordinatedStatus::try_from(v).ok().map(|c| c.as_str_name()),
        "COORDINATED_STATUS",
        v,
    )
}

/// "2026-03", the month of `t` in China Standard Time; "unknown" out of
/// range.
fn month_key(t: Option<&Timestamp>) -> String {
    t.and_then(|t| {
        let secs = t.seconds.checked_add(CST_OFFSET_SECONDS)?;
        DateTime::from_timestamp(secs, 0)
    })
    .map_or_else(|| "unknown".to_owned(), |d| d.format("%Y-%m").to_string())
}

fn counts(keys: impl IntoIterator<Item = String>) -> Vec<Count> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for k in keys {
        *m.entry(k).or_default() += 1;
    }
    m.into_iter()
        .map(|(key, count)| Count { key, count })
        .collect()
}

/// Nanoseconds from `start` to `end`, zero if `end` is earlier.
fn span(start: &Timestamp, end: &Timestamp) -> i128 {
    (time::key(end) - time::key(start)).max(0)
}

/// The value at rank `ceil(p/100 * n)` of the sorted values; 0 when empty.
fn nearest_rank(sorted: &[i128], p: usize) -> i128 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p.saturating_mul(sorted.len()).div_ceil(100)).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[allow(clippy::cast_precision_loss)]
fn hours(nanos: i128) -> f64 {
    nanos as f64 / NANOS_PER_HOUR
}

fn duration_stat(name: &str, mut values: Vec<i128>) -> DurationStat {
    values.sort_unstable();
    DurationStat {
        name: name.to_owned(),
        cases: values.len() as u64,
        median_hours: hours(nearest_rank(&values, 50)),
        p90_hours: hours(nearest_rank(&values, 90)),
    }
}

fn first_acceptance(v: &CaseView) -> Option<Timestamp> {
    v.referrals
        .iter()
        .filter(|r| r.state == InvolvementState::Accepted as i32)
        .filter_map(|r| r.answered_at)
        .min_by_key(time::key)
}

fn first_order_decision(v: &CaseView) -> Option<Timestamp> {
    let decided = v
        .obligations
        .iter()
        .filter(|o| o.kind == ObligationKind::OrderDecision as i32)
        .filter_map(|o| o.fulfilled_at);
    let granted = v.orders.iter().filter_map(|o| o.granted_at);
    decided.chain(granted).min_by_key(time::key)
}

/// The monitoring figures over the given views (already filtered by the
/// caller). See the module docs for what each figure counts.
pub fn stats(views: &[CaseView], now: &Timestamp) -> GetStatsResponse {
    let by_category = counts(views.iter().map(|v| category_key(v.category)));
    let by_agency = counts(views.iter().flat_map(|v| {
        v.agencies
            .iter()
            .filter(|x| x.state != InvolvementState::Returned as i32)
            .map(|x| x.agency)
            .collect::<std::collections::BTreeSet<i32>>()
            .into_iter()
            .map(agency_key)
    }));
    let by_risk_level = counts(views.iter().map(|v| risk_key(flags(v).risk_level)));
    let by_month = counts(views.iter().map(|v| month_key(v.opened_at.as_ref())));
    let by_status = counts(views.iter().map(|v| status_key(v.status)));
    let by_network_level = counts(views.iter().map(|v| level_key(v.level)));

    let measure = |end: fn(&CaseView) -> Option<Timestamp>| -> Vec<i128> {
        views
            .iter()
            .filter_map(|v| Some(span(v.opened_at.as_ref()?, &end(v)?)))
            .collect()
    };
    let ends: [fn(&CaseView) -> Option<Timestamp>; 3] =
        [first_acceptance, first_order_decision, |v| v.closed_at];
    let durations = DURATION_NAMES
        .iter()
        .zip(ends)
        .map(|(name, end)| duration_stat(name, measure(end)))
        .collect();

    let mut rates: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
    for o in views.iter().flat_map(|v| &v.obligations) {
        if o.cancelled {
            continue;
        }
        let late = match (&o.due_at, &o.fulfilled_at) {
            (Some(due), Some(met)) => time::before(due, met),
            (Some(due), None) => time::before(due, now),
            (None, _) => false,
        };
        let e = rates.entry(o.owner).or_default();
        e.0 += 1;
        e.1 += u64::from(late);
    }
    #[allow(clippy::cast_precision_loss)]
    let overdue_by_agency = rates
        .into_iter()
        .map(|(agency, (obligations, overdue))| AgencyRate {
            agency,
            obligations,
            overdue,
            overdue_rate: if obligations == 0 {
                0.0
            } else {
                overdue as f64 / obligations as f64
            },
        })
        .collect();

    GetStatsResponse {
        cases: views.len() as u64,
        by_category,
        by_agency,
        by_risk_level,
        by_month,
        by_status,
        durations,
        overdue_by_agency,
        evaluated_at: Some(*now),
        by_network_level,
    }
}
