//! Projections: every record family derived from the entries.
//!
//! Each family is one module with one function from an entry to the
//! records it writes (`add`), reading what it has not touched yet from the
//! store and keeping what it changed in memory until `write` puts it into
//! a batch. The group write and `rebuild` both drive the same
//! [`Projections`], so a rebuild is correct by construction, and a new
//! index is one more module here.
//!
//! | family | module | keys |
//! |---|---|---|
//! | case views | [`view`] | `V` |
//! | person index and its history | [`person`] | `P`, `H` |
//! | per-case index | [`case_index`] | `N` |
//! | stream index | [`stream_index`] | `B` |
//! | duplicate (idempotency) index | [`dedup`] | `D` |
//! | Merkle tree as tiles | [`tree`] | `G` |
//! | the list filters' index | [`filters`] | `K` |
//!
//! The Merkle tiles and the stream index are written with the group's
//! entries; the other families are written behind (`pending.rs`), and
//! [`Projections::replaying`] derives them again for the entries a crash
//! left them behind by.

mod case_index;
mod dedup;
pub(crate) mod filters;
mod person;
mod stream_index;
mod tree;
pub(crate) mod view;

use lianxi_domain::{Context, EntryMeta, Policy, PriorCase};
use lianxi_proto::v1::{CaseView, Event, LogEntry};

use crate::error::{Error, Location, Result};
use crate::keys;
use crate::merkle::{Frontier, Hash};
use crate::pending::{Reader, Sink};

pub(crate) use dedup::Dedup;
pub(crate) use person::{Persons, decode_prior};
pub(crate) use view::Views;

/// One entry as every projection sees it.
pub(crate) struct Step<'a> {
    pub(crate) entry: &'a LogEntry,
    pub(crate) event: &'a Event,
    pub(crate) hash: &'a Hash,
    /// The case's view after the entry.
    pub(crate) view: &'a CaseView,
    /// The entry's person token (hex), for an opening that names a person.
    pub(crate) person: Option<&'a str>,
}

/// Every derived record family, as changed since the last `write`.
pub(crate) struct Projections {
    pub(crate) views: Views,
    pub(crate) persons: Persons,
    pub(crate) dedup: Dedup,
    filters: filters::Filters,
    cases: case_index::CaseIndex,
    /// The families written with the entries; `None` when replaying.
    streams: Option<stream_index::StreamIndex>,
    tree: Option<tree::Tiles>,
    /// The global sequence of the next entry.
    next: u64,
}

impl Projections {
    /// The key prefixes of every family: what `rebuild` clears before it
    /// derives them again.
    pub(crate) const PREFIXES: [u8; 8] = [
        keys::FILTER_INDEX,
        keys::VIEW,
        keys::PERSON,
        keys::PERSON_HISTORY,
        keys::CASE_PACKED,
        keys::BY_STREAM_PACKED,
        keys::DEDUP,
        keys::TILE,
    ];
    /// Derived families of storage layout 2 that layout 3 replaced:
    /// `rebuild` removes them.
    pub(crate) const RETIRED: [u8; 3] = [keys::TREE, keys::CASE_INDEX, keys::BY_STREAM];

    /// Projections continuing a log whose Merkle tree has `frontier`.
    pub(crate) fn new(frontier: Frontier) -> Self {
        Projections {
            next: frontier.size() + 1,
            views: Views::default(),
            persons: Persons::default(),
            dedup: Dedup::default(),
            filters: filters::Filters::default(),
            cases: case_index::CaseIndex::default(),
            streams: Some(stream_index::StreamIndex::default()),
            tree: Some(tree::Tiles::new(frontier)),
        }
    }

    /// Projections of the families written behind only, continuing from
    /// entry `next`: for the entries after the `Mprojected` mark, whose
    /// tiles and stream index are stored already.
    pub(crate) fn replaying(next: u64) -> Self {
        Projections {
            next,
            views: Views::default(),
            persons: Persons::default(),
            dedup: Dedup::default(),
            filters: filters::Filters::default(),
            cases: case_index::CaseIndex::default(),
            streams: None,
            tree: None,
        }
    }

    /// Projects one entry, the next of the log: the case's view after it
    /// (with the person index as it stood before it), then every family.
    /// `base` holds what earlier writes left.
    pub(crate) fn add(&mut self, base: &Reader, policy: &Policy, entry: &LogEntry) -> Result<()> {
        let prior = match entry_person(entry) {
            Some(p) => self.persons.prior(base, &p)?,
            None => None,
        };
        let case_id = entry
            .event
            .as_ref()
            .map(|e| e.case_id.as_str())
            .unwrap_or_default();
        let before = self.views.get(base, case_id)?;
        self.add_decided(base, policy, entry, before, prior)
    }

    /// [`Projections::add`] of an entry the intake step has just decided,
    /// with the case's view before it and the person's prior case that the
    /// decision read (the same [`Projections::add`] would read).
    pub(crate) fn add_decided(
        &mut self,
        base: &Reader,
        policy: &Policy,
        entry: &LogEntry,
        before: Option<CaseView>,
        prior: Option<PriorCase>,
    ) -> Result<()> {
        let hash = Hash::try_from(entry.hash.as_slice()).map_err(|_| Error::Corruption {
            at: Location::Entry(entry.global_sequence),
            detail: format!("the entry's hash is {} bytes, not 32", entry.hash.len()),
        })?;
        let expected = self.next;
        if entry.global_sequence != expected {
            return Err(Error::Corruption {
                at: Location::Entry(expected),
                detail: format!(
                    "expected global sequence {expected}, found {}; run `lianxi verify`",
                    entry.global_sequence
                ),
            });
        }
        let event = entry_event(entry);
        let person = entry_person(entry);
        let postings_before = before.as_ref().map(filters::postings);
        let view = view_after(policy, before, entry, prior.as_ref());
        self.filters.add(postings_before, &view);
        let step = Step {
            entry,
            event,
            hash: &hash,
            view: &view,
            person: person.as_deref(),
        };
        self.persons.add(base, &step)?;
        self.cases.add(base, &step)?;
        if let Some(streams) = &mut self.streams {
            streams.add(base, &step)?;
        }
        self.dedup.add(&step);
        if let Some(tree) = &mut self.tree {
            tree.add(base, &step)?;
        }
        self.views.add(view);
        self.next += 1;
        Ok(())
    }

    /// Puts every changed record into `out`, and forgets them (the next
    /// `add` reads them from the store, where `out` will have put them).
    pub(crate) fn write(&mut self, out: &mut impl Sink) {
        self.write_durable(out);
        self.write_behind(out);
    }

    /// The families written with the entries: the Merkle tiles and the
    /// stream index.
    pub(crate) fn write_durable(&mut self, out: &mut impl Sink) {
        if let Some(streams) = &mut self.streams {
            streams.write(out);
        }
        if let Some(tree) = &mut self.tree {
            tree.write(out);
        }
    }

    /// The families written behind: views and the per-case, duplicate,
    /// person and filters' indexes.
    pub(crate) fn write_behind(&mut self, out: &mut impl Sink) {
        self.views.write(out);
        self.filters.write(out);
        self.persons.write(out);
        self.cases.write(out);
        self.dedup.write(out);
    }

    /// The Merkle tree's right frontier after the last entry added (none
    /// when replaying).
    pub(crate) fn frontier(&self) -> Option<&Frontier> {
        self.tree.as_ref().map(|t| t.frontier())
    }
}

/// A case's view after one stored entry: the domain's `apply` of the
/// entry's event to the view before it, with the person's prior case as
/// the person index held it then.
pub(crate) fn view_after(
    policy: &Policy,
    before: Option<CaseView>,
    entry: &LogEntry,
    prior: Option<&PriorCase>,
) -> CaseView {
    let event = entry_event(entry);
    let ctx = Context {
        policy,
        prior_case: prior,
    };
    let meta = EntryMeta {
        global_sequence: entry.global_sequence,
        case_sequence: entry.case_sequence,
        recorded_at: entry.recorded_at.unwrap_or_default(),
        sealed: &entry.sealed,
    };
    lianxi_domain::apply(&ctx, before, event, &meta)
}

/// A stored entry's event (an empty one if it has none, which `verify`
/// names as damage).
fn entry_event(entry: &LogEntry) -> &Event {
    static NONE: std::sync::LazyLock<Event> = std::sync::LazyLock::new(Event::default);
    entry.event.as_ref().unwrap_or(&NONE)
}

/// The person token of a stored entry, as the index's key (hex).
pub(crate) fn entry_person(entry: &LogEntry) -> Option<String> {
    (!entry.person_token.is_empty()).then(|| hex::encode(&entry.person_token))
}
