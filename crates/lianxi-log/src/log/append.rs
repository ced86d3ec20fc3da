//! Appending a group: each message decided against the state the group
//! has built so far, then one atomic batch and one flush.

use super::*;

impl Log {
    /// Applies a group of messages in stream order: validates each against
    /// the current views, then writes every accepted entry, index, dedup
    /// entry, view, rejection and duplicate record and the new checkpoint in
    /// one atomic batch, and flushes it before returning. Messages at or below
    /// the checkpoint are reported as already processed and change nothing.
    ///
    /// Personal values are sealed with the keys in `keys` before the entry
    /// is hashed; a missing key is an error (`Error::KeyUnavailable`) and
    /// nothing is written, so the caller can fetch it and try again.
    pub fn append_group(&self, group: &[Incoming], keys: &GroupKeys) -> Result<GroupReport> {
        if let Some(damage) = self.damage() {
            return Err(Error::Unwritable { reason: damage });
        }
        let mut cp = self.writer();
        self.check_layout(&cp)?;
        // A log written before it kept a Merkle tree (or one whose tree was
        // damaged) must be rebuilt before it grows: the frontier says so
        // before anything.
        let frontier = self.frontier(&cp)?;
        let mut work = Group::new(self, self.log_tree()?, cp.clone(), keys, frontier);
        let mut outcomes = Vec::with_capacity(group.len());
        for msg in group {
            let outcome = work.process(msg)?;
            outcomes.push((msg.stream_sequence, outcome));
        }
        let receipts = std::mem::take(&mut work.receipts);
        let (batch, next, frontier) = work.finish();
        if next != *cp {
            let (store, h) = (&self.inner.store, self.handles()?);
            store.note(h.log.apply_batch(batch))?;
            store.note(h.db.flush())?;
            *self
                .inner
                .frontier
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                Some((next.global_sequence, next.last_hash.clone(), frontier));
            *cp = next;
            *self
                .inner
                .published
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = cp.clone();
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
    /// kept after the last group when it belongs to `cp`, else computed
    /// from the rightmost stored tiles (after a start, a rebuild, a repair).
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

    /// The keys `append_group` will need for this group: cases with
    /// personal values in a well-formed event whose case's personal data is
    /// not restricted or erased (those are refused, and must not get a new
    /// key), and whether any opening names a person.
    pub fn keys_needed(&self, group: &[Incoming]) -> Result<KeysNeeded> {
        let mut needed = KeysNeeded::default();
        let cp = self.checkpoint();
        for msg in group {
            if msg.stream_sequence <= cp.stream_sequence {
                continue;
            }
            let event = match envelope(msg) {
                Ok(event) => event,
                Err(refused) => {
                    // Bytes kept from a rejection on a case's subject are
                    // sealed under that case's key, unless its personal
                    // data is already erased (then nothing is kept).
                    if let Some(case) = raw_case(msg, &refused)
                        && !needed.cases.contains(&case)
                        && self.case_view(&case)?.is_none_or(|v| !is_erased(&v))
                    {
                        needed.cases.push(case);
                    }
                    continue;
                }
            };
            if person_key(&event).is_some() {
                needed.index = true;
            }
            if needed.cases.contains(&event.case_id)
                || !lianxi_domain::personal::has_personal(&event)
            {
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
                needed.cases.push(event.case_id.clone());
            }
        }
        Ok(needed)
    }
}

/// The in-memory state of one group being built: an overlay over the tree,
/// so that later events in the group see earlier ones.
pub(super) struct Group<'a> {
    log: &'a Log,
    tree: sled::Tree,
    cp: Checkpoint,
    batch: sled::Batch,
    views: HashMap<String, CaseView>,
    /// Accepted in this group: (agency, event id) -> global sequence.
    dedup: HashMap<(Agency, String), u64>,
    /// Person index changes: the person's latest case, or `None` when an
    /// erasure removed it.
    persons: HashMap<String, Option<PriorCase>>,
    /// The person token of openings applied in this group, by case.
    case_persons: HashMap<String, String>,
    /// Accepted in this group, by (agency, event id), for corrections.
    events: HashMap<(Agency, String), Event>,
    keys: &'a GroupKeys,
    /// The Merkle tree's right frontier, as of the group's last entry.
    frontier: Frontier,
    /// The tiles the group's entries change.
    edge: Edge,
    /// The packed index records (by case, by stream) the group changes.
    index: packed::Records,
    /// The receipt of each message processed, in order.
    receipts: Vec<Receipt>,
}

impl<'a> Group<'a> {
    pub(super) fn new(
        log: &'a Log,
        tree: sled::Tree,
        cp: Checkpoint,
        keys: &'a GroupKeys,
        frontier: Frontier,
    ) -> Self {
        Group {
            log,
            tree,
            cp,
            batch: sled::Batch::default(),
            views: HashMap::new(),
            dedup: HashMap::new(),
            persons: HashMap::new(),
            case_persons: HashMap::new(),
            events: HashMap::new(),
            keys,
            frontier,
            edge: Edge::default(),
            index: packed::Records::default(),
            receipts: Vec::new(),
        }
    }

    pub(super) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(super) fn finish(mut self) -> (sled::Batch, Checkpoint, Frontier) {
        // Views are written once per group, not once per event.
        for (case, view) in &self.views {
            self.batch
                .insert(keys::named(keys::VIEW, case), view.encode_to_vec());
        }
        for (person, prior) in &self.persons {
            let key = keys::named(keys::PERSON, person);
            match prior {
                Some(p) => self.batch.insert(key, encode_prior(p)),
                None => self.batch.remove(key),
            }
        }
        self.batch.insert(keys::CHECKPOINT, self.cp.encode_to_vec());
        self.batch.insert(keys::LAYOUT, &[keys::LAYOUT_VERSION]);
        std::mem::take(&mut self.edge).write(&mut self.batch);
        std::mem::take(&mut self.index).write(&mut self.batch);
        (self.batch, self.cp, self.frontier)
    }

    pub(super) fn process(&mut self, msg: &Incoming) -> Result<EventOutcome> {
        if msg.stream_sequence <= self.cp.stream_sequence {
            return Ok(EventOutcome::AlreadyProcessed);
        }
        self.cp.stream_sequence = msg.stream_sequence;
        // Order matters: an event that decodes and is well-formed is first
        // looked up by id, so a re-sent event is a duplicate (pointing at the
        // original) rather than a rule violation against the later state.
        let checked = match envelope(msg) {
            Ok(event) => match self.dedup_lookup(agency_of(&event), &event.event_id)? {
                Some(original) => return self.duplicate(msg, event, original),
                None => self.decide(event)?,
            },
            Err(rejected) => Err(rejected),
        };
        match checked {
            Ok(event) => self.accept(msg, event),
            Err(refused) => {
                let (event, rejection) = *refused;
                self.reject(msg, event, rejection)
            }
        }
    }

    pub(super) fn duplicate(
        &mut self,
        msg: &Incoming,
        event: Event,
        original: u64,
    ) -> Result<EventOutcome> {
        // The receipt names the original's case, as `Log::receipt` does.
        let case_id = match self
            .events
            .get(&(agency_of(&event), event.event_id.clone()))
        {
            Some(e) => e.case_id.clone(),
            None => read_entry(self.tree(), original)?
                .and_then(|e| e.event)
                .map(|e| e.case_id)
                .unwrap_or_default(),
        };
        let record = DuplicateRecord {
            stream_sequence: msg.stream_sequence,
            subject: msg.subject.clone(),
            recorded_at: Some(msg.recorded_at),
            event_id: event.event_id.clone(),
            original_global_sequence: original,
        };
        self.batch.insert(
            &keys::seq(keys::DUPLICATE, msg.stream_sequence),
            record.encode_to_vec(),
        );
        self.receipts.push(receipts::duplicate(&record, case_id));
        Ok(EventOutcome::Duplicate {
            event_id: event.event_id,
            original_global_sequence: original,
        })
    }

    pub(super) fn reject(
        &mut self,
        msg: &Incoming,
        event: Option<Event>,
        rejection: Rejection,
    ) -> Result<EventOutcome> {
        // A rejection keeps no personal values in the clear: an event that
        // decoded (in this node's schema) is kept re-encoded with them
        // emptied; other bytes are kept sealed under the key of the case
        // their subject names (so an erasure erases them too), as nothing
        // if that case is already erased, and as they came only when the
        // subject names no case.
        let original = event.is_none() || rejection.code == RejectionCode::SchemaNewer;
        let cut = &msg.payload[..msg.payload.len().min(MAX_EVENT_BYTES)];
        let (mut raw, mut sealed_raw, mut raw_withheld) = (Vec::new(), None, false);
        match (&event, original, subject_case(&msg.subject)) {
            (Some(e), false, _) => {
                let mut e = e.clone();
                lianxi_crypto::strip(&mut e);
                raw = e.encode_to_vec();
            }
            (_, _, Some(case)) => {
                if self.view(&case)?.is_some_and(|v| is_erased(&v)) {
                    raw_withheld = true;
                } else {
                    let key = self.keys.case(&case)?;
                    sealed_raw = Some(seal_raw(&key, &case, msg.stream_sequence, cut));
                }
            }
            (_, _, None) => raw = cut.to_vec(),
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

    /// The state rules. The outer `Result` is a storage failure.
    pub(super) fn decide(&mut self, event: Event) -> Result<Checked> {
        let view = self.view(&event.case_id)?;
        // Only the agency's own events can be corrected (DOMAIN.md: a
        // correction names an earlier event of the same agency), and event
        // ids are each agency's own: look up (own agency, id), so another
        // agency's event is never found, named or compared.
        let corrected = match &event.corrects_event_id {
            Some(id) => self.find_event(agency_of(&event), id)?,
            None => None,
        };
        let person = self.person_of(&event)?;
        let prior = self.prior(person.as_deref())?;
        let ctx = Context {
            policy: &self.log.inner.policy,
            prior_case: prior.as_ref(),
        };
        Ok(
            match lianxi_domain::decide(&ctx, view.as_ref(), &event, corrected.as_ref()) {
                Ok(()) => Ok(event),
                Err(r) => Err(Box::new((Some(event), r))),
            },
        )
    }

    pub(super) fn accept(&mut self, msg: &Incoming, mut event: Event) -> Result<EventOutcome> {
        let view = self.view(&event.case_id)?;
        let person = self.person_of(&event)?;
        let prior = self.prior(person.as_deref())?;
        let global_sequence = self.cp.global_sequence + 1;
        let case_sequence = view.as_ref().map_or(0, |v| v.case_sequence) + 1;
        // Seal before hashing: from here on the event holds no personal
        // value, and the entry holds them encrypted under the case key.
        let sealed: Vec<Sealed> = if lianxi_domain::personal::has_personal(&event) {
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
            event: Some(event.clone()),
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

        let ctx = Context {
            policy: &self.log.inner.policy,
            prior_case: prior.as_ref(),
        };
        let meta = EntryMeta {
            global_sequence,
            case_sequence,
            recorded_at: msg.recorded_at,
            sealed: &entry.sealed,
        };
        let view = lianxi_domain::apply(&ctx, view, &event, &meta);
        if let Some(p) = &person {
            self.persons.insert(p.clone(), Some(prior_of(&view)));
            self.case_persons.insert(event.case_id.clone(), p.clone());
            self.batch.insert(
                keys::person_history(p, global_sequence),
                encode_prior(&prior_of(&view)),
            );
        }
        let erased = is_erasure(&event);
        if erased {
            self.forget_person(&event.case_id, global_sequence)?;
            self.batch.insert(
                keys::named(keys::ERASURE_PENDING, &event.case_id),
                &msg.stream_sequence.to_be_bytes(),
            );
        }
        self.batch.insert(
            &keys::seq(keys::ENTRY, global_sequence),
            entry.encode_to_vec(),
        );
        self.receipts.push(receipts::accepted(&entry));
        let agency = agency_of(&event);
        self.batch.insert(
            keys::scoped(keys::DEDUP, agency, &event.event_id),
            &global_sequence.to_be_bytes(),
        );
        let tree = &self.tree;
        index_entry(&mut self.index, &event.case_id, &entry, |k| {
            Ok(tree.get(k)?.map(|v| v.to_vec()))
        })?;
        self.add_leaf(&hash)?;
        self.views.insert(event.case_id.clone(), view);
        self.dedup
            .insert((agency, event.event_id.clone()), global_sequence);
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
        self.events.insert((agency, event.event_id.clone()), event);
        Ok(outcome)
    }

    /// Adds the entry's leaf to the Merkle tree: the frontier moves on,
    /// and the nodes it completes at a tile level go into their tiles (a
    /// partial tile at the right edge is read once per group).
    pub(super) fn add_leaf(&mut self, entry_hash: &Hash) -> Result<()> {
        let created = self.frontier.push(merkle::leaf_hash(entry_hash))?;
        let tree = &self.tree;
        self.edge
            .add(&created, |level, index| tiles::read(tree, level, index))
    }

    pub(super) fn view(&self, case_id: &str) -> Result<Option<CaseView>> {
        match self.views.get(case_id) {
            Some(v) => Ok(Some(v.clone())),
            None => read_view(self.tree(), case_id),
        }
    }

    pub(super) fn dedup_lookup(&self, agency: Agency, event_id: &str) -> Result<Option<u64>> {
        if let Some(g) = self.dedup.get(&(agency, event_id.to_owned())) {
            return Ok(Some(*g));
        }
        Ok(self
            .tree()
            .get(keys::scoped(keys::DEDUP, agency, event_id))?
            .as_deref()
            .and_then(keys::be_u64))
    }

    pub(super) fn find_event(&self, agency: Agency, event_id: &str) -> Result<Option<Event>> {
        if let Some(e) = self.events.get(&(agency, event_id.to_owned())) {
            return Ok(Some(e.clone()));
        }
        match self.dedup_lookup(agency, event_id)? {
            Some(g) => Ok(read_entry(self.tree(), g)?.and_then(|e| e.event)),
            None => Ok(None),
        }
    }

    /// The person token (hex) of a case opening that names a person.
    pub(super) fn person_of(&self, event: &Event) -> Result<Option<String>> {
        match person_key(event) {
            Some(p) => Ok(Some(hex::encode(lianxi_crypto::person_token(
                self.keys.index()?.as_ref(),
                p,
            )))),
            None => Ok(None),
        }
    }

    /// After an erasure, the person index stops pointing at the case (if it
    /// still does), and its history says so from this entry on.
    pub(super) fn forget_person(&mut self, case_id: &str, global_sequence: u64) -> Result<()> {
        let person = match self.case_persons.get(case_id) {
            Some(p) => Some(p.clone()),
            None => self
                .log
                .case_entries(case_id, 0, 1)?
                .first()
                .and_then(entry_person),
        };
        let Some(p) = person else {
            return Ok(());
        };
        if self.prior(Some(&p))?.is_some_and(|x| x.case_id == case_id) {
            self.persons.insert(p.clone(), None);
            self.batch
                .insert(keys::person_history(&p, global_sequence), Vec::<u8>::new());
        }
        Ok(())
    }

    pub(super) fn prior(&self, person: Option<&str>) -> Result<Option<PriorCase>> {
        let Some(p) = person else {
            return Ok(None);
        };
        if let Some(prior) = self.persons.get(p) {
            return Ok(prior.clone());
        }
        match self.tree().get(keys::named(keys::PERSON, p))? {
            Some(b) => decode_prior(&b).map(Some).ok_or_else(|| Error::Corruption {
                at: Location::Key(hex::encode(keys::named(keys::PERSON, p))),
                detail: "person index record is malformed".into(),
            }),
            None => Ok(None),
        }
    }
}

/// An event that passed, or the reason it did not (with the event when it
/// decoded).
pub(super) type Checked = std::result::Result<Event, Box<(Option<Event>, Rejection)>>;

/// Size, decoding and the structural checks that need no state.
pub(super) fn envelope(msg: &Incoming) -> Checked {
    if msg.payload.len() > MAX_EVENT_BYTES {
        return Err(Box::new((
            None,
            Rejection {
                code: RejectionCode::TooLarge,
                reason: format!(
                    "the event is {} bytes, more than the {} bytes a node accepts; move attachments out of the event and publish it again under a new event id",
                    msg.payload.len(),
                    MAX_EVENT_BYTES
                ),
            },
        )));
    }
    let event = lianxi_domain::decode_event(&msg.payload)?;
    match lianxi_domain::check_envelope(&msg.subject, &event) {
        Ok(()) => Ok(event),
        Err(r) => Err(Box::new((Some(event), r))),
    }
}

/// The case a well-formed events subject names.
pub(super) fn subject_case(subject: &str) -> Option<String> {
    lianxi_domain::parse_subject(subject).ok().map(|(_, c)| c)
}

/// The case whose key seals the bytes a rejection keeps: set for bytes
/// that are kept as received (not an event, too large, a newer schema) on
/// a case's subject.
pub(super) fn raw_case(msg: &Incoming, refused: &(Option<Event>, Rejection)) -> Option<String> {
    let (event, rejection) = refused;
    (event.is_none() || rejection.code == RejectionCode::SchemaNewer)
        .then(|| subject_case(&msg.subject))
        .flatten()
}

/// The longest subject quoted in a log line.
pub(super) const ECHO_SUBJECT_CHARS: usize = 200;

/// An id as a rejection record and its receipt keep it: as sent when it
/// is a short token without unsafe characters, otherwise escaped and cut.
pub(super) fn echo_id(id: &str) -> String {
    lianxi_domain::printable(id, lianxi_domain::MAX_ID_LEN)
}

/// Puts an entry into the packed indexes: its case's, by case sequence,
/// and the stream's, by stream sequence. `stored` reads a record the set
/// has not touched yet.
pub(super) fn index_entry(
    index: &mut packed::Records,
    case_id: &str,
    entry: &LogEntry,
    mut stored: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
) -> Result<()> {
    let g = entry.global_sequence;
    index.set(
        &packed::case_key(case_id, entry.case_sequence),
        packed::case_slot(entry.case_sequence),
        g,
        &mut stored,
    )?;
    index.set(
        &packed::by_stream_key(entry.stream_sequence),
        entry.stream_sequence % packed::SLOTS,
        g,
        &mut stored,
    )
}
