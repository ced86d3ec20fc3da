//! The derived records written behind the entries (`pending.rs`): the
//! write-behind itself, and the projection of the entries after the
//! `Mprojected` mark again, at open and after a reopen.

use lianxi_proto::v1::Checkpoint;

use super::Log;
use super::read::read_entry;
use crate::error::{Error, Location, Result};
use crate::keys;
use crate::pending::{Changes, Reader, WRITE_BEHIND_ENTRIES};
use crate::projection::Projections;

/// The `Mprojected` mark: how far the derived records written behind are
/// in sled (`None`: a layout-4 log, which has them all).
pub(super) fn projected_mark(tree: &sled::Tree) -> Result<Option<u64>> {
    match tree.get(keys::PROJECTED)? {
        None => Ok(None),
        Some(v) => keys::be_u64(&v).map(Some).ok_or_else(|| Error::Corruption {
            at: Location::Key(hex::encode(keys::PROJECTED)),
            detail: "the mark of the derived records written behind is malformed; stop the node and run `lianxi rebuild`".into(),
        }),
    }
}

impl Log {
    /// The records as readers see them: sled with the pending derived
    /// records over it.
    pub(super) fn reader(&self) -> Result<Reader> {
        Ok(Reader::new(self.log_tree()?, self.inner.pending.clone()))
    }

    /// Writes the pending derived records into sled once enough entries
    /// have gathered. `cp` is the checkpoint they reach (the writer's).
    pub(super) fn maybe_write_behind(&self, cp: &Checkpoint) -> Result<()> {
        // A write-behind that fails (a full disk) leaves the records
        // pending, readable, for the next group to try again; the group
        // itself is written already, and the store reports the failure.
        if self.inner.pending.entries() >= WRITE_BEHIND_ENTRIES
            && let Err(e) = self.write_behind(cp)
        {
            tracing::warn!(error = %e, "could not write the derived records behind the log; they stay in memory and are tried again after the next group");
        }
        Ok(())
    }

    /// Writes the pending derived records into sled in one batch with the
    /// mark `cp` (not flushed: the next flush makes it durable, and until
    /// then a crash only means they are projected again at open).
    pub(super) fn write_behind(&self, cp: &Checkpoint) -> Result<()> {
        let pending = &self.inner.pending;
        if pending.is_empty() {
            return Ok(());
        }
        let batch = pending.batch(cp.global_sequence);
        self.inner.store.note(self.log_tree()?.apply_batch(batch))?;
        pending.clear();
        Ok(())
    }

    /// Writes what is pending and flushes: before a test reads or damages
    /// sled's records directly.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn write_behind_now(&self) -> Result<()> {
        let cp = self.writer();
        if self.inner.pending.is_empty() {
            return Ok(());
        }
        self.write_behind(&cp)?;
        self.inner.store.note(self.handles()?.db.flush())?;
        Ok(())
    }

    /// Projects the entries after the `Mprojected` mark up to the
    /// checkpoint `cp` again, into the pending records (after a crash, or a
    /// reopen that lost a write-behind). Nothing is written to sled.
    pub(super) fn project_again(&self, cp: &Checkpoint) -> Result<()> {
        let tree = self.log_tree()?;
        let pending = &self.inner.pending;
        pending.clear();
        let Some(mark) = projected_mark(&tree)? else {
            return Ok(());
        };
        if mark > cp.global_sequence {
            return Err(Error::Corruption {
                at: Location::Checkpoint,
                detail: format!(
                    "the derived records are marked as reaching entry {mark}, past the checkpoint's {}; stop the node and run `lianxi rebuild`",
                    cp.global_sequence
                ),
            });
        }
        if mark == cp.global_sequence {
            return Ok(());
        }
        let reader = self.reader()?;
        let mut proj = Projections::replaying(mark + 1);
        for g in mark + 1..=cp.global_sequence {
            let entry = read_entry(&tree, g)?.ok_or_else(|| Error::Corruption {
                at: Location::Entry(g),
                detail: format!(
                    "missing, though the checkpoint covers {}",
                    cp.global_sequence
                ),
            })?;
            proj.add(&reader, &self.inner.policy, &entry)?;
        }
        let mut changes = Changes::new();
        proj.write_behind(&mut changes);
        pending.merge(changes, cp.global_sequence - mark);
        tracing::info!(
            data_dir = %self.path().display(),
            from = mark + 1,
            to = cp.global_sequence,
            "derived records written behind were behind the checkpoint (a crash); projected those entries again"
        );
        Ok(())
    }
}
