//! Reads: views, entries, a case's history and replays, rejection and
//! duplicate records, receipts.

use lianxi_domain::PriorCase;
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{Agency, CaseView, DuplicateRecord, LogEntry, Receipt, RejectionRecord};
use prost::Message;

use super::Log;
use crate::error::{Error, Location, Result};
use crate::keys;
use crate::packed;
use crate::projection::filters::{self, Facet};
use crate::projection::{decode_prior, entry_person, view, view_after};
use crate::receipts;

impl Log {
    /// The ids of cases after `after`, in id order, at most `limit`, whose
    /// current view has one of `values` in `facet` (the list filters'
    /// index: `lianxi_domain::facets`).
    pub fn case_ids_with(
        &self,
        facet: Facet,
        values: &[i32],
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.check_layout(&self.checkpoint())?;
        let tree = self.reader()?;
        let mut ids = Vec::new();
        for value in values {
            let prefix = filters::value_prefix(facet, *value);
            let mut start = prefix.clone();
            start.extend_from_slice(after.as_bytes());
            start.push(0);
            for item in tree.prefix_from(&prefix, start).take(limit) {
                let (k, _) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                ids.push(posting_case(&k, prefix.len())?);
            }
        }
        // Each value's ids come in order; the first `limit` of the merge are
        // among the first `limit` of each.
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);
        Ok(ids)
    }

    /// The ids of cases after `after`, in id order, at most `limit`, with an
    /// open obligation due before `now`: those overdue at `now`. Reads the
    /// postings of every case overdue at `now` (they are ordered by due
    /// time, not id).
    pub fn case_ids_overdue(
        &self,
        now: &Timestamp,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.check_layout(&self.checkpoint())?;
        let tree = self.reader()?;
        let mut ids = Vec::new();
        for item in tree.range(filters::due_start().to_vec()..filters::due_prefix(now)) {
            let (k, _) = item?;
            let id = posting_case(&k, filters::DUE_PREFIX_LEN)?;
            if id.as_str() > after {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);
        Ok(ids)
    }

    /// The current view of a case.
    pub fn case_view(&self, case_id: &str) -> Result<Option<CaseView>> {
        view::read(&self.reader()?, case_id)
    }

    /// One entry by global sequence.
    pub fn entry(&self, global_sequence: u64) -> Result<Option<LogEntry>> {
        read_entry(&self.log_tree()?, global_sequence)
    }

    /// Entries of one case with a case sequence above `after`, at most `limit`.
    pub fn case_entries(&self, case_id: &str, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let tree = &self.reader()?;
        let mut out = Vec::new();
        let mut case_seq = after.saturating_add(1);
        'records: while out.len() < limit {
            let Some(record) = tree.get(packed::case_key(case_id, case_seq))? else {
                break;
            };
            loop {
                if out.len() >= limit {
                    break 'records;
                }
                let Some(g) = packed::get(&record, packed::case_slot(case_seq)) else {
                    break 'records;
                };
                let entry = read_entry(tree.tree(), g)?.ok_or_else(|| Error::Corruption {
                    at: Location::Entry(g),
                    detail: format!("indexed by case {case_id} but missing"),
                })?;
                out.push(entry);
                case_seq = case_seq.saturating_add(1);
                if packed::case_slot(case_seq) == 0 {
                    continue 'records;
                }
            }
        }
        Ok(out)
    }

    /// Log entries with a global sequence above `after`, at most `limit`,
    /// up to the published checkpoint: a group's entries are in sled before
    /// its derived records written behind are readable (they are merged
    /// just before the checkpoint is published), so a reader that goes on
    /// to read their views and per-case index never sees entries without
    /// them.
    pub fn entries(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let start = keys::seq(keys::ENTRY, after.saturating_add(1));
        let end = keys::seq(
            keys::ENTRY,
            self.checkpoint().global_sequence.saturating_add(1),
        );
        let mut out = Vec::new();
        for item in self.log_tree()?.range(start..end) {
            let (k, v) = item?;
            if k.first() != Some(&keys::ENTRY) || out.len() >= limit {
                break;
            }
            out.push(decode_entry(&k, &v)?);
        }
        Ok(out)
    }

    /// The view of a case as it stood after the last of its entries that
    /// passes `upto` (entries are offered in order; replay stops at the first
    /// that does not pass), rebuilt from the log through the per-case index.
    /// Returns the view, the global sequence of the last entry applied and
    /// how many were applied; None if no entry passed.
    pub fn case_as_of(
        &self,
        case_id: &str,
        upto: impl Fn(&LogEntry) -> bool,
    ) -> Result<Option<(CaseView, u64, u64)>> {
        let mut view: Option<CaseView> = None;
        let mut last = 0;
        let mut applied = 0;
        let mut after = 0;
        loop {
            let chunk = self.case_entries(case_id, after, 512)?;
            let done = chunk.len() < 512;
            for entry in chunk {
                if !upto(&entry) {
                    return Ok(view.map(|v| (v, last, applied)));
                }
                after = entry.case_sequence;
                view = Some(self.replay(view, &entry)?);
                last = entry.global_sequence;
                applied += 1;
            }
            if done {
                return Ok(view.map(|v| (v, last, applied)));
            }
        }
    }

    /// The view after one stored entry, applied to the view before it, with
    /// the person index as it stood then: one replay step for
    /// [`Log::case_as_of`] and [`Log::case_views_through`].
    pub(super) fn replay(&self, view: Option<CaseView>, entry: &LogEntry) -> Result<CaseView> {
        let prior = match entry_person(entry) {
            Some(p) => self.prior_before(&p, entry.global_sequence)?,
            None => None,
        };
        Ok(view_after(&self.inner.policy, view, entry, prior.as_ref()))
    }

    /// Replays a case from its first entry through the entry with global
    /// sequence `through`, calling `each` with every entry and the view
    /// right after it (what [`Log::case_as_of`] returns for that entry), in
    /// order. One pass for the views after many entries of one case (a
    /// watch sends each change with the view after it).
    pub fn case_views_through(
        &self,
        case_id: &str,
        through: u64,
        mut each: impl FnMut(&LogEntry, &CaseView),
    ) -> Result<()> {
        let mut view: Option<CaseView> = None;
        let mut after = 0;
        loop {
            let chunk = self.case_entries(case_id, after, 512)?;
            let done = chunk.len() < 512;
            for entry in chunk {
                if entry.global_sequence > through {
                    return Ok(());
                }
                after = entry.case_sequence;
                let next = self.replay(view, &entry)?;
                each(&entry, &next);
                view = Some(next);
            }
            if done {
                return Ok(());
            }
        }
    }

    /// The person's latest case opened before `global_sequence`.
    pub(super) fn prior_before(
        &self,
        person: &str,
        global_sequence: u64,
    ) -> Result<Option<PriorCase>> {
        let start = keys::person_history_prefix(person);
        let end = keys::person_history(person, global_sequence);
        match self.reader()?.range(start..end).next_back() {
            // An erasure ends the person's link to the erased case.
            Some(Ok((_, v))) if v.is_empty() => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                decode_prior(&v).map(Some).ok_or_else(|| Error::Corruption {
                    at: Location::Key(hex::encode(&k)),
                    detail: "person history record is malformed".into(),
                })
            }
            None => Ok(None),
        }
    }

    /// Every stored view, decoded, in case-id order.
    pub fn views(&self) -> Result<Vec<CaseView>> {
        let mut out = Vec::new();
        for item in self.reader()?.scan_prefix([keys::VIEW]) {
            let (k, v) = item?;
            out.push(CaseView::decode(v.as_ref()).map_err(|e| Error::Corruption {
                at: Location::View(String::from_utf8_lossy(&k[1..]).into_owned()),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Views of cases with an id after `after`, in case-id order, at most
    /// `limit` per call; the id order makes a stable cursor.
    pub fn views_after(&self, after: &str, limit: usize) -> Result<Vec<CaseView>> {
        let mut start = keys::named(keys::VIEW, after);
        start.push(0);
        let mut out = Vec::new();
        for item in self.reader()?.prefix_from(&[keys::VIEW], start) {
            let (k, v) = item?;
            if k.first() != Some(&keys::VIEW) || out.len() >= limit {
                break;
            }
            out.push(CaseView::decode(v.as_ref()).map_err(|e| Error::Corruption {
                at: Location::View(String::from_utf8_lossy(&k[1..]).into_owned()),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Every stored view, in case-id order, as stored bytes.
    pub fn view_bytes(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.reader()?.scan_prefix([keys::VIEW]) {
            let (k, v) = item?;
            let case = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((case, v.to_vec()));
        }
        Ok(out)
    }

    /// Rejected messages, in stream order, after `after_stream_sequence`.
    pub fn rejections(
        &self,
        after_stream_sequence: u64,
        limit: usize,
    ) -> Result<Vec<RejectionRecord>> {
        self.records(keys::REJECTION, after_stream_sequence, limit)
    }

    /// Duplicate messages, in stream order, after `after_stream_sequence`.
    pub fn duplicates(
        &self,
        after_stream_sequence: u64,
        limit: usize,
    ) -> Result<Vec<DuplicateRecord>> {
        self.records(keys::DUPLICATE, after_stream_sequence, limit)
    }

    /// Records keyed by stream sequence under `prefix`, in order.
    pub(super) fn records<M: Message + Default>(
        &self,
        prefix: u8,
        after: u64,
        limit: usize,
    ) -> Result<Vec<M>> {
        let start = keys::seq(prefix, after.saturating_add(1));
        let mut out = Vec::new();
        // Rejection and duplicate records are never written behind.
        for item in self.log_tree()?.range(start..) {
            let (k, v) = item?;
            if k.first() != Some(&prefix) || out.len() >= limit {
                break;
            }
            out.push(M::decode(v.as_ref()).map_err(|e| Error::Corruption {
                at: Location::Key(hex::encode(&k)),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// The receipt for the message at `stream_sequence`, if the node has
    /// processed it (None past the checkpoint, or for a sequence the stream
    /// never handed out).
    pub fn receipt(&self, stream_sequence: u64) -> Result<Option<Receipt>> {
        let tree = &self.reader()?;
        if let Some(g) = tree
            .get(packed::by_stream_key(stream_sequence))?
            .and_then(|r| packed::get(&r, stream_sequence % packed::SLOTS))
        {
            let entry = read_entry(tree.tree(), g)?.ok_or_else(|| Error::Corruption {
                at: Location::Entry(g),
                detail: format!("stream sequence {stream_sequence} points at a missing entry"),
            })?;
            return Ok(Some(receipts::accepted(&entry)));
        }
        if let Some(b) = tree.get(keys::seq(keys::DUPLICATE, stream_sequence))? {
            let d = DuplicateRecord::decode(b.as_ref()).map_err(|e| Error::Corruption {
                at: Location::Key(hex::encode(keys::seq(keys::DUPLICATE, stream_sequence))),
                detail: e.to_string(),
            })?;
            let case_id = read_entry(tree.tree(), d.original_global_sequence)?
                .and_then(|e| e.event)
                .map(|e| e.case_id)
                .unwrap_or_default();
            return Ok(Some(receipts::duplicate(&d, case_id)));
        }
        if let Some(b) = tree.get(keys::seq(keys::REJECTION, stream_sequence))? {
            let r = RejectionRecord::decode(b.as_ref()).map_err(|e| Error::Corruption {
                at: Location::Key(hex::encode(keys::seq(keys::REJECTION, stream_sequence))),
                detail: e.to_string(),
            })?;
            return Ok(Some(receipts::rejected(&r)));
        }
        Ok(None)
    }

    /// The outcome for one agency's event id: the accepted entry if there
    /// is one (a re-sent copy is answered with the original), else its
    /// latest rejection. Event ids are each agency's own: another agency's
    /// event with the same id is never found.
    pub fn receipt_for_event(&self, agency: Agency, event_id: &str) -> Result<Option<Receipt>> {
        self.check_layout(&self.checkpoint())?;
        let tree = &self.reader()?;
        if let Some(g) = tree
            .get(keys::scoped(keys::DEDUP, agency, event_id))?
            .as_deref()
            .and_then(keys::be_u64)
        {
            return Ok(read_entry(tree.tree(), g)?.map(|e| receipts::accepted(&e)));
        }
        match tree
            .get(keys::scoped(keys::REJECTED_ID, agency, event_id))?
            .as_deref()
            .and_then(keys::be_u64)
        {
            Some(seq) => self.receipt(seq),
            None => Ok(None),
        }
    }
}

pub(crate) fn read_entry(tree: &sled::Tree, global_sequence: u64) -> Result<Option<LogEntry>> {
    let key = keys::seq(keys::ENTRY, global_sequence);
    match tree.get(key)? {
        Some(b) => decode_entry(&key, &b).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<LogEntry> {
    let at = || {
        key.get(1..)
            .and_then(keys::be_u64)
            .map_or_else(|| Location::Key(hex::encode(key)), Location::Entry)
    };
    LogEntry::decode(bytes).map_err(|e| Error::Corruption {
        at: at(),
        detail: format!("entry does not decode: {e}"),
    })
}

/// The case id at the end of a list filters' posting.
fn posting_case(key: &[u8], prefix: usize) -> Result<String> {
    key.get(prefix..)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
        .ok_or_else(|| Error::Corruption {
            at: Location::Key(hex::encode(key)),
            detail: "a list filters' index posting without a case id".into(),
        })
}
