//! Appending a group. Each message is parsed once ([`Prepared`]), decided
//! by the domain's pure intake step against the state the group has built
//! so far ([`lianxi_domain::intake`]), and its plan applied here: the entry
//! sealed, hashed and projected, or a rejection or duplicate record kept.
//! Then one atomic batch and one flush.

use std::collections::HashMap;

use lianxi_domain::intake::{self, Keep, Parsed, Plan, State, agency_of, is_erased, is_erasure};
use lianxi_proto::v1::{
    Agency, CaseView, Checkpoint, DuplicateRecord, Event, LogEntry, Receipt, RejectionRecord,
    Sealed,
};
use prost::Message;

use super::read::read_entry;
use super::sealing::{GroupKeys, seal_raw};
use super::{EventOutcome, GroupReport, Incoming, KeysNeeded, Log, entry_hash};
use crate::error::{Error, Result};
use crate::keys;
use crate::merkle::Frontier;
use crate::pending::{Changes, Reader};
use crate::projection::Projections;
use crate::receipts;
use crate::tiles;

/// A group of messages from the stream, each decoded and checked for its
/// envelope once, for both [`Log::keys_needed`] and [`Log::append`].
#[derive(Debug, Clone)]
pub struct Prepared {
    messages: Vec<Incoming>,
    parsed: Vec<Parsed>,
}

impl Prepared {
    pub fn new(messages: Vec<Incoming>) -> Self {
        let parsed = messages
            .iter()
            .map(|m| intake::parse(&m.subject, &m.payload))
            .collect();
        Prepared { messages, parsed }
    }

    pub fn messages(&self) -> &[Incoming] {
        &self.messages
    }

    fn iter(&self) -> impl Iterator<Item = (&Incoming, &Parsed)> {
        self.messages.iter().zip(&self.parsed)
    }
}

impl Log {
    /// [`Log::append`] of messages not yet prepared.
    pub fn append_group(&self, group: &[Incoming], keys: &GroupKeys) -> Result<GroupReport> {
        self.append(&Prepared::new(group.to_vec()), keys)
    }

    /// Applies a group of messages in stream order: decides each against
    /// the current state, then writes every accepted entry with its derived
    /// records (views, indexes, tiles), every rejection and duplicate record
    /// and the new checkpoint in one atomic batch, and flushes it before
    /// returning. Messages at or below the checkpoint are reported as
    /// already processed and change nothing.
    ///
    /// Personal values are sealed with the keys in `keys` before the entry
    /// is hashed; a missing key is an error (`Error::KeyUnavailable`) and
    /// nothing is written, so the caller can fetch it and try again.
    pub fn append(&self, group: &Prepared, keys: &GroupKeys) -> Result<GroupReport> {
        if let Some(damage) = self.damage() {
            return Err(Error::Unwritable { reason: damage });
        }
        let mut cp = self.writer();
        self.check_layout(&cp)?;
        // A log written before it kept a Merkle tree (or one whose tree was
        // damaged) must be rebuilt before it grows: the frontier says so
        // before anything.
        let frontier = self.frontier(&cp)?;
        let mut work = Group::new(self, self.reader()?, cp.clone(), keys, frontier);
        let mut outcomes = Vec::with_capacity(group.messages.len());
        for (msg, parsed) in group.iter() {
            let outcome = work.process(msg, parsed)?;
            outcomes.push((msg.stream_sequence, outcome));
        }
        let receipts = std::mem::take(&mut work.receipts);
        let (mut batch, behind, next, frontier) = work.finish();
        if next != *cp {
            let (store, h) = (&self.inner.store, self.handles()?);
            // A log that has no mark yet (new, or layout 4 with every
            // derived record written) has them all up to here.
            if h.log.get(keys::PROJECTED)?.is_none() {
                batch.insert(keys::PROJECTED, &cp.global_sequence.to_be_bytes());
            }
            store.note(h.log.apply_batch(batch))?;
            store.note(h.db.flush())?;
            self.keep_frontier(&next, frontier);
            // Readers see the group's derived records from here on, before
            // its checkpoint is published.
            self.inner
                .pending
                .merge(behind, next.global_sequence - cp.global_sequence);
            *cp = next;
            *self
                .inner
                .published
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = cp.clone();
            self.maybe_write_behind(&cp)?;
        }
        let checkpoint = cp.clone();
        drop(cp);
        if self.behind().is_some() {
            self.check_high_water()?;
        }
        Ok(GroupReport {
            outcomes,
            checkpoint,
            receipts,
        })
    }

    /// The Merkle tree's right frontier at the checkpoint `cp`: the one
    /// kept after the last write when it belongs to `cp`, else computed
    /// from the rightmost stored tiles (after a start or a repair).
    pub(super) fn frontier(&self, cp: &Checkpoint) -> Result<Frontier> {
        if let Some((size, last, f)) = &*self
            .inner
            .frontier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            && *size == cp.global_sequence
            && *last == cp.last_hash
        {
            return Ok(f.clone());
        }
        tiles::frontier(&tiles::Stored::new(&self.log_tree()?), cp.global_sequence)
    }

    /// Keeps the frontier of the tree as of `cp`, for the next append.
    pub(super) fn keep_frontier(&self, cp: &Checkpoint, frontier: Frontier) {
        *self
            .inner
            .frontier
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some((cp.global_sequence, cp.last_hash.clone(), frontier));
    }

    /// The keys [`Log::append`] will need for this group: cases with
    /// personal values in a well-formed event whose case's personal data is
    /// not restricted or erased (those are refused, and must not get a new
    /// key), and whether any opening names a person.
    pub fn keys_needed(&self, group: &Prepared) -> Result<KeysNeeded> {
        let mut needed = KeysNeeded::default();
        let mut cases = std::collections::HashSet::new();
        let cp = self.checkpoint();
        for (msg, parsed) in group.iter() {
            if msg.stream_sequence <= cp.stream_sequence {
                continue;
            }
            let event = match parsed {
                Ok(event) => event,
                Err(refused) => {
                    // Bytes kept from a rejection on a case's subject are
                    // sealed under that case's key, unless its personal
                    // data is already erased (then nothing is kept).
                    if let Some(case) = intake::raw_case(&msg.subject, refused)
                        && !cases.contains(&case)
                        && self.case_view(&case)?.is_none_or(|v| !is_erased(&v))
                    {
                        cases.insert(case.clone());
                        needed.cases.push(case);
                    }
                    continue;
                }
            };
            if intake::opening_person(event).is_some() {
                needed.index = true;
            }
            if cases.contains(&event.case_id) || !lianxi_domain::personal::has_personal(event) {
                continue;
            }
            let active = match self.case_view(&event.case_id)? {
                Some(v) => {
                    lianxi_domain::personal::state_of(v.personal_data)
                        == lianxi_proto::v1::PersonalDataState::Active
                }
                None => true,
            };
            if active {
                cases.insert(event.case_id.clone());
                needed.cases.push(event.case_id.clone());
            }
        }
        Ok(needed)
    }
}

/// One group being built: the projections as an overlay over the tree, so
/// that later messages of the group see earlier ones, and the batch.
struct Group<'a> {
    log: &'a Log,
    tree: Reader,
    cp: Checkpoint,
    batch: sled::Batch,
    proj: Projections,
    /// Accepted in this group, by (agency, event id), for corrections.
    events: HashMap<(Agency, String), Event>,
    keys: &'a GroupKeys,
    /// The receipt of each message processed, in order.
    receipts: Vec<Receipt>,
}

/// The state the pure intake step reads: the group's projections over the
/// tree, and the keys for person tokens.
impl State for Group<'_> {
    type Error = Error;

    fn view(&self, case_id: &str) -> Result<Option<CaseView>> {
        self.proj.views.get(&self.tree, case_id)
    }

    fn accepted(&self, agency: Agency, event_id: &str) -> Result<Option<u64>> {
        self.proj.dedup.get(&self.tree, agency, event_id)
    }

    fn accepted_event(&self, agency: Agency, event_id: &str) -> Result<Option<Event>> {
        if let Some(e) = self.events.get(&(agency, event_id.to_owned())) {
            return Ok(Some(e.clone()));
        }
        match self.accepted(agency, event_id)? {
            Some(g) => Ok(read_entry(self.tree.tree(), g)?.and_then(|e| e.event)),
            None => Ok(None),
        }
    }

    fn person_token(&self, person_ref: &str) -> Result<String> {
        Ok(hex::encode(lianxi_crypto::person_token(
            self.keys.index()?.as_ref(),
            person_ref,
        )))
    }

    fn prior_case(&self, person_token: &str) -> Result<Option<lianxi_domain::PriorCase>> {
        self.proj.persons.prior(&self.tree, person_token)
    }
}

impl<'a> Group<'a> {
    fn new(
        log: &'a Log,
        tree: Reader,
        cp: Checkpoint,
        keys: &'a GroupKeys,
        frontier: Frontier,
    ) -> Self {
        Group {
            log,
            tree,
            cp,
            batch: sled::Batch::default(),
            proj: Projections::new(frontier),
            events: HashMap::new(),
            keys,
            receipts: Vec::new(),
        }
    }

    /// The batch to write now (entries, records, tiles, stream index,
    /// checkpoint), the derived records written behind, the checkpoint
    /// after the group and the tree's frontier.
    fn finish(mut self) -> (sled::Batch, Changes, Checkpoint, Frontier) {
        self.proj.write_durable(&mut self.batch);
        let mut behind = Changes::new();
        self.proj.write_behind(&mut behind);
        self.batch.insert(keys::CHECKPOINT, self.cp.encode_to_vec());
        self.batch.insert(keys::LAYOUT, &[keys::LAYOUT_VERSION]);
        let frontier = self.proj.frontier().cloned().unwrap_or_default();
        (self.batch, behind, self.cp, frontier)
    }

    fn process(&mut self, msg: &Incoming, parsed: &Parsed) -> Result<EventOutcome> {
        if msg.stream_sequence <= self.cp.stream_sequence {
            return Ok(EventOutcome::AlreadyProcessed);
        }
        self.cp.stream_sequence = msg.stream_sequence;
        match intake::decide(&self.log.inner.policy, &*self, &msg.subject, parsed.clone())? {
            Plan::Accept(accept) => self.accept(msg, *accept),
            Plan::Duplicate {
                agency,
                event_id,
                original_global_sequence,
            } => self.duplicate(msg, agency, event_id, original_global_sequence),
            Plan::Reject(reject) => self.reject(msg, *reject),
        }
    }

    fn duplicate(
        &mut self,
        msg: &Incoming,
        agency: Agency,
        event_id: String,
        original: u64,
    ) -> Result<EventOutcome> {
        // The receipt names the original's case, as `Log::receipt` does.
        let case_id = match self.events.get(&(agency, event_id.clone())) {
            Some(e) => e.case_id.clone(),
            None => read_entry(self.tree.tree(), original)?
                .and_then(|e| e.event)
                .map(|e| e.case_id)
                .unwrap_or_default(),
        };
        let record = DuplicateRecord {
            stream_sequence: msg.stream_sequence,
            subject: msg.subject.clone(),
            recorded_at: Some(msg.recorded_at),
            event_id: event_id.clone(),
            original_global_sequence: original,
        };
        self.batch.insert(
            &keys::seq(keys::DUPLICATE, msg.stream_sequence),
            record.encode_to_vec(),
        );
        self.receipts.push(receipts::duplicate(&record, case_id));
        Ok(EventOutcome::Duplicate {
            event_id,
            original_global_sequence: original,
        })
    }

    fn reject(&mut self, msg: &Incoming, plan: intake::Reject) -> Result<EventOutcome> {
        let intake::Reject {
            event,
            rejection,
            keep,
        } = plan;
        // A rejection keeps no personal value in the clear (see `Keep`).
        let cut = &msg.payload[..msg.payload.len().min(intake::MAX_EVENT_BYTES)];
        let (mut raw, mut sealed_raw, mut raw_withheld) = (Vec::new(), None, false);
        match keep {
            Keep::Stripped => {
                if let Some(e) = &event {
                    let mut e = e.clone();
                    lianxi_crypto::strip(&mut e);
                    raw = e.encode_to_vec();
                }
            }
            Keep::Sealed { case_id } => {
                let key = self.keys.case(&case_id)?;
                sealed_raw = Some(seal_raw(&key, &case_id, msg.stream_sequence, cut));
            }
            Keep::Withheld => raw_withheld = true,
            Keep::AsReceived => raw = cut.to_vec(),
        }
        let reason = lianxi_domain::printable(&rejection.reason, lianxi_domain::MAX_REASON_CHARS);
        let record = RejectionRecord {
            stream_sequence: msg.stream_sequence,
            subject: msg.subject.clone(),
            recorded_at: Some(msg.recorded_at),
            code: rejection.code as i32,
            reason: reason.clone(),
            raw,
            event_id: event
                .as_ref()
                .map(|e| echo_id(&e.event_id))
                .unwrap_or_default(),
            case_id: event
                .as_ref()
                .map(|e| echo_id(&e.case_id))
                .unwrap_or_default(),
            raw_len: msg.payload.len() as u64,
            sealed_raw,
            raw_withheld,
        };
        tracing::info!(
            stream_sequence = msg.stream_sequence,
            subject = %lianxi_domain::printable(&msg.subject, ECHO_SUBJECT_CHARS),
            code = ?rejection.code,
            reason = %reason,
            "event rejected"
        );
        self.batch.insert(
            &keys::seq(keys::REJECTION, msg.stream_sequence),
            record.encode_to_vec(),
        );
        self.receipts.push(receipts::rejected(&record));
        // The lookup index: only the subject's agency may ask, and only
        // about a well-formed id.
        if let Some(agency) = lianxi_domain::subject_agency(&msg.subject)
            && lianxi_domain::is_event_id(&record.event_id)
        {
            self.batch.insert(
                keys::scoped(keys::REJECTED_ID, agency, &record.event_id),
                &msg.stream_sequence.to_be_bytes(),
            );
        }
        Ok(EventOutcome::Rejected {
            event_id: event.map(|_| record.event_id),
            code: rejection.code,
            reason,
        })
    }

    fn accept(&mut self, msg: &Incoming, plan: intake::Accept) -> Result<EventOutcome> {
        let intake::Accept {
            mut event,
            view,
            person,
            prior,
            seal,
        } = plan;
        let global_sequence = self.cp.global_sequence + 1;
        let case_sequence = view.as_ref().map_or(0, |v| v.case_sequence) + 1;
        // Seal before hashing: from here on the event holds no personal
        // value, and the entry holds them encrypted under the case key.
        let sealed: Vec<Sealed> = if seal {
            let key = self.keys.case(&event.case_id)?;
            lianxi_crypto::seal_entry(&mut event, &key)
        } else {
            Vec::new()
        };
        let mut entry = LogEntry {
            global_sequence,
            case_sequence,
            stream_sequence: msg.stream_sequence,
            recorded_at: Some(msg.recorded_at),
            prev_hash: self.cp.last_hash.clone(),
            event: Some(event),
            hash: Vec::new(),
            subject: msg.subject.clone(),
            sealed,
            person_token: person
                .as_deref()
                .map(|p| hex::decode(p).unwrap_or_default())
                .unwrap_or_default(),
        };
        let hash = entry_hash(&entry);
        entry.hash = hash.to_vec();
        self.proj
            .add_decided(&self.tree, &self.log.inner.policy, &entry, view, prior)?;
        let erased = entry.event.as_ref().is_some_and(is_erasure);
        let case_id = entry
            .event
            .as_ref()
            .map(|e| e.case_id.as_str())
            .unwrap_or_default();
        if erased {
            self.batch.insert(
                keys::named(keys::ERASURE_PENDING, case_id),
                &msg.stream_sequence.to_be_bytes(),
            );
        }
        self.batch.insert(
            &keys::seq(keys::ENTRY, global_sequence),
            entry.encode_to_vec(),
        );
        self.receipts.push(receipts::accepted(&entry));
        let event = entry.event.take().unwrap_or_default();
        self.cp.global_sequence = global_sequence;
        self.cp.last_hash = hash.to_vec();
        tracing::debug!(
            case_id = %event.case_id,
            global_sequence,
            case_sequence,
            event_id = %event.event_id,
            "event accepted"
        );
        let outcome = EventOutcome::Accepted {
            event_id: event.event_id.clone(),
            case_id: event.case_id.clone(),
            global_sequence,
            case_sequence,
            hash,
            erased,
        };
        self.events
            .insert((agency_of(&event), event.event_id.clone()), event);
        Ok(outcome)
    }
}

/// The longest subject quoted in a log line.
const ECHO_SUBJECT_CHARS: usize = 200;

/// An id as a rejection record and its receipt keep it: as sent when it
/// is a short token without unsafe characters, otherwise escaped and cut.
fn echo_id(id: &str) -> String {
    lianxi_domain::printable(id, lianxi_domain::MAX_ID_LEN)
}
