//! The pure domain of lianxi: who may emit what, the state rules, the case
//! view and its deadlines.
//!
//! The crate does no IO, no async and never reads a clock: every answer
//! depends only on the events (and the policy) passed in, so every replica
//! and every replay reaches the same view. "Overdue now" is the one
//! judgement that takes a time, and the caller supplies it to [`evaluate`].
//!
//! The life of an event:
//! 1. [`check_envelope`]: structure, independent of any state.
//! 2. [`decide`]: the state rules, against the case view as it stands.
//! 3. [`apply`]: fold the accepted event into the view (total, deterministic).
//! 4. [`evaluate`]: at query time, what is overdue and whether an order is in force.
//!
//! # Choices the contract leaves open
//!
//! - **Registers live in obligations.** The view has no lists of alarms,
//!   written warnings, order or legal-aid applications or shelter
//!   placements. Each of them creates an obligation with a stable id
//!   (`alarm_arrival/<alarm_id>`, `order_decision/<application_id>`,
//!   `shelter_review/<placement_id>[/<n>]`, ...), and the rules look them up
//!   there. A legal-aid decision's outcome is appended to its obligation's
//!   description (" Decided: granted."), which `lawyer_assigned` reads.
//!   Labour inspections create no obligation and have no record, so a
//!   violation cannot be checked against its inspection.
//! - **Involvement** also covers the owner of any obligation other than a
//!   referral answer: the court once an application is filed with it, the
//!   police once an order is granted. Such owners, and action owners, appear
//!   in `agencies` as participants (received). The committee appears as a
//!   participant once it acts.
//! - **An agency that acts is in progress**, from any state; accepting a
//!   referral makes it accepted, returning one makes a merely received
//!   agency returned. Reopening puts the lead back in progress.
//! - **Status "in progress"** is reached by an accepted referral or
//!   agency-specific work (police, court, civil affairs, labour, legal aid,
//!   progress reports) and is sticky, because some of that work leaves no
//!   other trace in the view. Behind a listing or action plan the view can
//!   lose it when the work left no trace (see the report on proto changes).
//! - **Corrections**: see `apply_correction` in `view.rs`. Openings (not the
//!   person), risk, progress, escalation and consent are overwritten;
//!   records keep their id and overwrite what nothing else hangs off;
//!   everything else is timeline-only. A correction must keep the record id
//!   (and a referral's target, an action's owner, an order decision's
//!   outcome and order id). Corrections are refused on a closed case.
//! - **Deadlines**: hours, minutes and days are exact durations from
//!   `occurred_at` (no daylight saving in China); the order term is calendar
//!   months; legal-aid working days are Monday to Friday in UTC+8, counted
//!   from the next day, ignoring public holidays. The repeat window is 365
//!   days by default, counted back from the new opening.

#![forbid(unsafe_code)]

mod agency;
mod context;
mod describe;
mod error;
mod evaluate;
mod policy;
mod rules;
mod state;
mod time;
mod validate;
mod view;

pub use agency::{
    EVENTS_SUBJECT_PREFIX, MAX_ID_LEN, agency_from_token, agency_name, agency_token, event_subject,
    parse_subject,
};
pub use context::{Context, EntryMeta, PriorCase};
pub use describe::{describe, kind, person_ref};
pub use error::{PolicyError, Rejection};
pub use evaluate::{Evaluation, evaluate};
pub use policy::Policy;
pub use rules::decide;
pub use validate::check_envelope;
pub use view::apply;
