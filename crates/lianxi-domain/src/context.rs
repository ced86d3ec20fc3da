//! What the log hands the domain besides the event itself.

use lianxi_proto::Timestamp;
use lianxi_proto::v1::Sealed;

use crate::policy::Policy;

/// An earlier case of the same person, found by the log in its person index
/// (keyed by `case_opened.person_ref`). The domain cannot look it up itself
/// because it does no IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorCase {
    /// The earlier case.
    pub case_id: String,
    /// When it was opened, by its own `occurred_at`.
    pub opened_at: Timestamp,
}

/// Inputs that are not part of the case: the deadline policy and, for a
/// case opening, the person's previous case.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The deadline policy in force.
    pub policy: &'a Policy,
    /// The person's most recent earlier case, if the opening names a person
    /// the log has seen before. Ignored for events other than `case_opened`.
    pub prior_case: Option<&'a PriorCase>,
}

/// Where an accepted event landed in the log, and what it sealed. The
/// sequences go into the view so that a reader knows how fresh it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryMeta<'a> {
    /// Dense across the whole log, from 1.
    pub global_sequence: u64,
    /// Dense within the case, from 1.
    pub case_sequence: u64,
    /// When the stream stored the event. Not used for deadlines, which run
    /// from `occurred_at`; kept so callers can pass the entry as it is.
    pub recorded_at: Timestamp,
    /// The entry's sealed personal values (`LogEntry.sealed`): the view
    /// keeps the opening's person reference and mandatory reporter from
    /// them, still sealed.
    pub sealed: &'a [Sealed],
}
