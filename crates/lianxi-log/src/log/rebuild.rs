//! Recomputing every derived record from the entries: `rebuild`, and the
//! repair after a lost tail.

use super::*;

impl Log {
    /// After a lost tail (the log is below its high-water mark): makes the
    /// store what a log that stopped at its checkpoint would hold. Entries
    /// past the checkpoint are removed; the per-case, dedup and stream
    /// indexes are written again from the entries up to it; rejection and
    /// duplicate records, rejected-id and pending-erasure marks past the
    /// checkpoint's stream sequence are removed (the stream is read again
    /// from there and writes them anew); then views, the person index and
    /// the Merkle tree are rebuilt. Without this, a view or dedup record
    /// that survived from after the checkpoint would make the re-read
    /// events be judged against the future, and the log never catch up.
    ///
    /// Where entries up to the checkpoint were lost too, the log steps back
    /// to its intact prefix (dense and chained from entry 1): the checkpoint
    /// becomes its last entry's, and the stream is read from there. The
    /// high-water mark then decides, once the log has grown past it again,
    /// whether the re-read entries are the ones the node had vouched for.
    pub(crate) fn repair_to_checkpoint(&self) -> Result<RepairReport> {
        let cp = self.checkpoint();
        let tree = &self.log_tree()?;
        let mut batch = sled::Batch::default();
        let mut report = RepairReport::default();
        // The dedup index is written again here; the case and stream
        // indexes, views and tree by `rebuild` at the end.
        clear_prefixes(tree, &mut batch, &[keys::DEDUP])?;
        // The intact prefix: dense and chained from entry 1, at most up to
        // the checkpoint. Everything after its first gap or broken link is
        // removed and read from the stream again.
        let mut kept: Option<LogEntry> = None;
        let mut cut = false;
        for item in tree.scan_prefix([keys::ENTRY]) {
            let (k, v) = item?;
            let entry = match decode_entry(&k, &v) {
                Ok(e) if !cut => e,
                _ => {
                    cut = true;
                    batch.remove(k);
                    report.entries_removed += 1;
                    continue;
                }
            };
            let expected = kept.as_ref().map_or(1, |e| e.global_sequence + 1);
            let links = kept
                .as_ref()
                .map_or(entry.prev_hash.iter().all(|b| *b == 0), |e| {
                    e.hash == entry.prev_hash
                });
            if entry.global_sequence > cp.global_sequence
                || entry.global_sequence != expected
                || !links
            {
                cut = true;
                batch.remove(k);
                report.entries_removed += 1;
                continue;
            }
            let event = entry.event.clone().unwrap_or_default();
            batch.insert(
                keys::scoped(keys::DEDUP, agency_of(&event), &event.event_id),
                &entry.global_sequence.to_be_bytes(),
            );
            kept = Some(entry);
        }
        let kept_size = kept.as_ref().map_or(0, |e| e.global_sequence);
        let cp = if kept_size == cp.global_sequence {
            cp
        } else {
            // Entries the checkpoint covered were lost too: the log steps
            // back to its intact prefix and reads on from the stream
            // sequence of its last entry.
            let back = Checkpoint {
                stream_sequence: kept.as_ref().map_or(0, |e| e.stream_sequence),
                global_sequence: kept_size,
                last_hash: kept
                    .as_ref()
                    .map_or_else(|| vec![0; 32], |e| e.hash.clone()),
            };
            if back.global_sequence == 0 {
                batch.remove(keys::CHECKPOINT);
            } else {
                batch.insert(keys::CHECKPOINT, back.encode_to_vec());
            }
            report.stepped_back_from = Some(cp.global_sequence);
            back
        };
        let past = |v: &[u8]| keys::be_u64(v).is_some_and(|s| s > cp.stream_sequence);
        for prefix in [keys::REJECTION, keys::DUPLICATE] {
            for item in tree.scan_prefix([prefix]) {
                let (k, _) = item?;
                if past(&k[1..]) {
                    batch.remove(k);
                    report.records_removed += 1;
                }
            }
        }
        for prefix in [keys::REJECTED_ID, keys::ERASURE_PENDING] {
            for item in tree.scan_prefix([prefix]) {
                let (k, v) = item?;
                if past(&v) {
                    batch.remove(k);
                    report.records_removed += 1;
                }
            }
        }
        tree.apply_batch(batch)?;
        if report.stepped_back_from.is_some() {
            *self.inner.writer.lock().unwrap_or_else(|p| p.into_inner()) = cp.clone();
            *self
                .inner
                .published
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = cp.clone();
            if let Some(b) = self
                .inner
                .behind
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                b.have = cp.global_sequence;
            }
        }
        let rebuilt = self.rebuild()?;
        report.cases = rebuilt.cases;
        tracing::warn!(
            data_dir = %self.path().display(),
            checkpoint = cp.global_sequence,
            stepped_back_from = ?report.stepped_back_from,
            entries_removed = report.entries_removed,
            records_removed = report.records_removed,
            cases = report.cases,
            "after a lost tail: indexes and views recomputed from the entries up to the checkpoint; reading the stream again from there"
        );
        Ok(report)
    }

    /// Recreates every view (and the person index they depend on), the
    /// packed case and stream indexes and the Merkle tree's tiles from the
    /// log alone, and replaces the stored ones in one atomic batch (so a
    /// log written before it kept a tree gets one, and a layout-2 log its
    /// packed records and tiles).
    pub fn rebuild(&self) -> Result<RebuildReport> {
        let _writer = self.writer();
        let tree = &self.log_tree()?;
        let mut views: BTreeMap<String, CaseView> = BTreeMap::new();
        let mut persons: BTreeMap<String, PriorCase> = BTreeMap::new();
        // The person token of each case's opening, for erasures.
        let mut case_persons: HashMap<String, String> = HashMap::new();
        let mut history: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut entries = 0u64;
        let mut frontier = Frontier::default();
        let mut edge = Edge::default();
        let mut index = packed::Records::default();
        for item in tree.scan_prefix([keys::ENTRY]) {
            let (k, v) = item?;
            let entry = decode_entry(&k, &v)?;
            let hash = Hash::try_from(entry.hash.as_slice()).map_err(|_| Error::Corruption {
                at: Location::Entry(entry.global_sequence),
                detail: format!("the entry's hash is {} bytes, not 32", entry.hash.len()),
            })?;
            if entry.global_sequence != frontier.size() + 1 {
                return Err(Error::Corruption {
                    at: Location::Entry(frontier.size() + 1),
                    detail: format!(
                        "expected global sequence {}, found {}; run `lianxi verify`",
                        frontier.size() + 1,
                        entry.global_sequence
                    ),
                });
            }
            edge.add(&frontier.push(merkle::leaf_hash(&hash))?, |_, _| Ok(None))?;
            let event = entry.event.clone().unwrap_or_default();
            index_entry(&mut index, &event.case_id, &entry, |_| Ok(None))?;
            let person = entry_person(&entry);
            let prior = person.as_ref().and_then(|p| persons.get(p)).cloned();
            let ctx = Context {
                policy: &self.inner.policy,
                prior_case: prior.as_ref(),
            };
            let meta = EntryMeta {
                global_sequence: entry.global_sequence,
                case_sequence: entry.case_sequence,
                recorded_at: entry.recorded_at.unwrap_or_default(),
                sealed: &entry.sealed,
            };
            let view = views.remove(&event.case_id);
            let view = lianxi_domain::apply(&ctx, view, &event, &meta);
            if let Some(p) = person {
                persons.insert(p.clone(), prior_of(&view));
                history.push((
                    keys::person_history(&p, entry.global_sequence),
                    encode_prior(&prior_of(&view)),
                ));
                case_persons.insert(event.case_id.clone(), p);
            }
            if is_erasure(&event)
                && let Some(p) = case_persons.get(&event.case_id)
                && persons.get(p).is_some_and(|x| x.case_id == event.case_id)
            {
                persons.remove(p);
                history.push((keys::person_history(p, entry.global_sequence), Vec::new()));
            }
            views.insert(event.case_id.clone(), view);
            entries += 1;
        }
        let mut batch = sled::Batch::default();
        clear_prefixes(
            tree,
            &mut batch,
            &[
                keys::VIEW,
                keys::PERSON,
                keys::PERSON_HISTORY,
                keys::TREE,
                keys::TILE,
                keys::CASE_INDEX,
                keys::CASE_PACKED,
                keys::BY_STREAM,
                keys::BY_STREAM_PACKED,
            ],
        )?;
        for (case, view) in &views {
            batch.insert(keys::named(keys::VIEW, case), view.encode_to_vec());
        }
        for (person, prior) in &persons {
            batch.insert(keys::named(keys::PERSON, person), encode_prior(prior));
        }
        for (key, value) in &history {
            batch.insert(key.as_slice(), value.as_slice());
        }
        edge.write(&mut batch);
        index.write(&mut batch);
        // The tree is now tiles: a log of layout 2 (one record per node)
        // is upgraded. A layout-1 log keeps its marker (its dedup keys
        // still need the older version).
        if tree
            .get(keys::LAYOUT)?
            .is_some_and(|v| v.as_ref() == [keys::LAYOUT_NODES])
        {
            batch.insert(keys::LAYOUT, &[keys::LAYOUT_VERSION]);
        }
        tree.apply_batch(batch)?;
        self.inner.store.note(self.handles()?.db.flush())?;
        Ok(RebuildReport {
            entries,
            cases: views.len() as u64,
        })
    }
}
