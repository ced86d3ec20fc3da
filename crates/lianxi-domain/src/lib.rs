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
//! Across cases, the `query` module answers the secretariat's questions at a
//! given `now`: [`matches`](fn@matches) (a `CaseFilter`), [`is_involved`] (need to know),
//! [`summarize`] (a case-list line), [`agenda`] (the next meeting's cases in
//! discussion order) and [`stats`] (counts, durations, overdue rates).
//!
//! # Choices the contract leaves open
//!
//! - **Registers.** Alarms, written warnings, protection-order applications
//!   and shelter placements live in obligations: each creates one with a
//!   stable id (`alarm_arrival/<alarm_id>`, `order_decision/<application_id>`,
//!   `shelter_review/<placement_id>[/<n>]`, ...), and the rules look them up
//!   there. Three registers have records of their own, in creation order:
//!   `inspections` (a labour violation must name an inspection opened in the
//!   case), `legal_aid` (decided once; a lawyer only on a granted application;
//!   a grant with a lawyer cannot be corrected to a refusal; a replacement
//!   lawyer may be assigned) and `meetings` (a meeting is listed for once and
//!   held once; a held meeting cannot be listed for again).
//!   `pending_meetings` and `next_meeting_at` are derived from `meetings`
//!   after every event: the ids not yet held in listing order, and the
//!   earliest of their times. Obligation descriptions are plain text and
//!   never carry state.
//! - **Involvement** also covers the owner of any obligation other than a
//!   referral answer: the court once an application is filed with it, the
//!   police once an order is granted. Such owners, and action owners, appear
//!   in `agencies` as participants (received). The committee appears as a
//!   participant once it acts.
//! - **An agency that acts is in progress**, from any state; accepting a
//!   referral makes it accepted, returning one makes a merely received
//!   agency returned. Reopening puts the lead back in progress.
//! - **Status "in progress"** follows the stored flag `work_started`, set
//!   by the first agency-specific work: an accepted referral, police, court,
//!   civil-affairs, labour or legal-aid work, a progress report, or any act
//!   of an agency other than the first contact and the committee. The flag
//!   never goes back, so the status returns to in progress when a listing or
//!   an action plan ends, and after a reopening of a case that had work.
//! - **Corrections**: see `apply_correction` in `view.rs`. Openings (not the
//!   person), risk, progress, escalation and consent are overwritten;
//!   records keep their id and overwrite what nothing else hangs off (a
//!   listing's meeting time, an inspection's employer, a legal-aid
//!   decision's outcome, ...); everything else, a labour violation included,
//!   is timeline-only. A correction must keep the record id (and a
//!   referral's target, an action's owner, an order decision's outcome and
//!   order id). Corrections are refused on a closed case.
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
pub mod intake;
pub mod personal;
mod policy;
mod query;
mod rules;
mod schema;
mod state;
mod time;
mod validate;
mod view;

pub use agency::{
    ALL_AGENCIES, EVENTS_SUBJECT_PREFIX, MAX_ID_LEN, MAX_QUOTED_CHARS, agency_from_token,
    agency_name, agency_token, event_subject, is_unsafe_char, parse_subject, printable,
    subject_agency,
};
pub use context::{Context, EntryMeta, PriorCase};
pub use describe::{describe, kind, person_ref};
pub use error::{MAX_REASON_CHARS, PolicyError, Rejection};
pub use evaluate::{Evaluation, evaluate};
pub use policy::Policy;
pub use query::{
    DEFAULT_EXPIRING_WITHIN_DAYS, DURATION_NAMES, Facets, agenda, facets, is_involved, matches,
    stats, summarize,
};
pub use rules::decide;
pub use schema::{decode_event, unknown_event_fields};
pub use validate::{
    MAX_CHILDREN, MAX_ITEMS, MAX_TEXT_CHARS, check_envelope, is_case_id, is_event_id,
};
pub use view::apply;
