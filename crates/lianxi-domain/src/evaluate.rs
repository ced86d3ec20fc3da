//! The one judgement made at query time: what is overdue now.

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{CaseView, Obligation};

use crate::state::is_open;
use crate::time;

/// What a case looks like at a given instant. Everything else in the view
/// depends only on events; this depends on `now` as well, so it is computed
/// when someone asks and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evaluation {
    /// Open obligations (neither met nor cancelled) whose due time has
    /// passed, in the view's order.
    pub overdue: Vec<Obligation>,
    /// Whether a granted, unrevoked order has not yet expired.
    pub protection_order_active: bool,
}

/// Evaluates a case view at `now`. An obligation due exactly at `now` is not
/// yet overdue; an order expiring exactly at `now` is no longer active.
pub fn evaluate(view: &CaseView, now: &Timestamp) -> Evaluation {
    let overdue = view
        .obligations
        .iter()
        .filter(|o| is_open(o) && o.due_at.as_ref().is_some_and(|due| time::before(due, now)))
        .cloned()
        .collect();
    let protection_order_active = view.orders.iter().any(|o| {
        !o.revoked
            && o.expires_at
                .as_ref()
                .is_some_and(|exp| time::before(now, exp))
    });
    Evaluation {
        overdue,
        protection_order_active,
    }
}
