//! Recomputing every derived record from the entries: `rebuild`, and the
//! repair after a lost tail.

use lianxi_proto::v1::{Checkpoint, LogEntry};
use prost::Message;

use super::read::decode_entry;
use super::{Log, RebuildReport, RepairReport};
use crate::error::Result;
use crate::keys;
use crate::merkle::Frontier;
use crate::projection::Projections;

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
        // Every derived record (views, indexes, tiles) is written again
        // from the entries kept, by `rebuild` at the end.
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

    /// Recreates every derived record from the entries alone, through the
    /// same [`Projections`] the group write uses: views, the person index,
    /// the per-case, stream and duplicate indexes and the Merkle tree's
    /// tiles (so a layout-2 log gets its packed records and tiles).
    ///
    /// The old records are removed and a marker set in one batch; the new
    /// ones are written in batches of [`REBUILD_BATCH`] entries, so memory
    /// stays bounded at any size; the last batch removes the marker. While
    /// the marker is there (a crash mid-way), the log refuses to be read or
    /// grown as it is, and `serve` or `lianxi rebuild` runs the rebuild
    /// again from the start.
    pub fn rebuild(&self) -> Result<RebuildReport> {
        let _writer = self.writer();
        let tree = &self.log_tree()?;
        // Every derived record is written again from the entries: what is
        // pending is dropped, and the reads below see sled alone.
        self.inner.pending.clear();
        let reader = &self.reader()?;
        let mut batch = sled::Batch::default();
        clear_prefixes(tree, &mut batch, &Projections::PREFIXES)?;
        clear_prefixes(tree, &mut batch, &Projections::RETIRED)?;
        batch.insert(keys::REBUILDING, &[1]);
        tree.apply_batch(batch)?;
        let mut proj = Projections::new(Frontier::default());
        let (mut entries, mut cases, mut last_hash) = (0u64, 0u64, vec![0u8; 32]);
        for item in tree.scan_prefix([keys::ENTRY]) {
            let (k, v) = item?;
            let entry = decode_entry(&k, &v)?;
            proj.add(reader, &self.inner.policy, &entry)?;
            entries += 1;
            if entry.case_sequence == 1 {
                cases += 1;
            }
            last_hash = entry.hash;
            if entries % REBUILD_BATCH == 0 {
                let mut batch = sled::Batch::default();
                proj.write(&mut batch);
                tree.apply_batch(batch)?;
            }
        }
        let mut batch = sled::Batch::default();
        proj.write(&mut batch);
        batch.remove(keys::REBUILDING);
        batch.insert(keys::PROJECTED, &entries.to_be_bytes());
        // Every derived record is this layout's now: a log of an older
        // layout with the same entries (2, 3) is upgraded. A layout-1 log
        // keeps its marker (its dedup keys still need the older version).
        if tree
            .get(keys::LAYOUT)?
            .is_some_and(|v| keys::upgradable(&v))
        {
            batch.insert(keys::LAYOUT, &[keys::LAYOUT_VERSION]);
        }
        tree.apply_batch(batch)?;
        self.inner.store.note(self.handles()?.db.flush())?;
        let size = Checkpoint {
            global_sequence: entries,
            last_hash,
            ..Checkpoint::default()
        };
        self.keep_frontier(&size, proj.frontier().cloned().unwrap_or_default());
        Ok(RebuildReport { entries, cases })
    }
}

/// Entries per batch of a rebuild.
pub(super) const REBUILD_BATCH: u64 = 65_536;

/// Removes, in `batch`, every record under each of `prefixes`.
pub(super) fn clear_prefixes(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    prefixes: &[u8],
) -> Result<()> {
    for prefix in prefixes {
        for item in tree.scan_prefix([*prefix]) {
            batch.remove(item?.0);
        }
    }
    Ok(())
}
