//! Hooks that damage the stored log on purpose, for tests only.

use prost::Message;

use super::Log;
use super::read::{decode_entry, read_entry};
use super::signed::decode_stored_checkpoint;
use crate::error::Result;
use crate::keys;
use crate::store::HighWater;
use crate::tiles;

impl Log {
    /// Hooks that damage the stored log on purpose, for the tamper tests
    /// (tests/tamper.rs) only: the node never calls them. They stand for an
    /// operator or intruder editing the sled files of a stopped node.
    /// Only in builds with the feature `test-util`.
    pub fn tamper(&self) -> Tamper<'_> {
        // What is damaged is what is on disk: the records still pending
        // are written first.
        if let Err(e) = self.write_behind_now() {
            tracing::warn!(error = %e, "could not write the pending records before tampering");
        }
        Tamper { log: self }
    }
}

/// Deliberate damage to a stopped node's storage, for the tamper tests only
/// (see [`Log::tamper`]). Not part of the node's API.
#[doc(hidden)]
pub struct Tamper<'a> {
    log: &'a Log,
}

impl Tamper<'_> {
    pub(super) fn tree(&self) -> Result<sled::Tree> {
        self.log.log_tree()
    }

    /// Flips the lowest bit of the last byte of the stored entry's subject,
    /// so the entry still decodes but no longer matches its hash. False if
    /// there is no such entry.
    pub fn flip_byte(&self, global_sequence: u64) -> Result<bool> {
        let key = keys::seq(keys::ENTRY, global_sequence);
        let Some(value) = self.tree()?.get(key)? else {
            return Ok(false);
        };
        let entry = decode_entry(&key, &value)?;
        let mut bytes = value.to_vec();
        let subject = entry.subject.as_bytes();
        let Some(at) = bytes
            .windows(subject.len().max(1))
            .position(|w| w == subject)
            .map(|p| p + subject.len().saturating_sub(1))
        else {
            return Ok(false);
        };
        if let Some(b) = bytes.get_mut(at) {
            *b ^= 1;
        }
        self.tree()?.insert(key, bytes)?;
        self.tree()?.flush()?;
        Ok(true)
    }

    /// Removes one stored entry.
    pub fn drop_entry(&self, global_sequence: u64) -> Result<bool> {
        let removed = self
            .tree()?
            .remove(keys::seq(keys::ENTRY, global_sequence))?;
        self.tree()?.flush()?;
        Ok(removed.is_some())
    }

    /// Swaps the stored values of two entries.
    pub fn swap_entries(&self, a: u64, b: u64) -> Result<bool> {
        let (ka, kb) = (keys::seq(keys::ENTRY, a), keys::seq(keys::ENTRY, b));
        let (Some(va), Some(vb)) = (self.tree()?.get(ka)?, self.tree()?.get(kb)?) else {
            return Ok(false);
        };
        self.tree()?.insert(ka, vb)?;
        self.tree()?.insert(kb, va)?;
        self.tree()?.flush()?;
        Ok(true)
    }

    /// Cuts the log back to its first `keep` entries and rewinds everything
    /// that would give it away: the stored Merkle nodes covering later
    /// leaves, the checkpoint's global sequence and last hash (the stream
    /// position is kept, so the node does not read the cut events again),
    /// and every signed checkpoint of a larger tree. The hash chain of what
    /// is left is intact.
    pub fn truncate(&self, keep: u64) -> Result<u64> {
        let tree = &self.tree()?;
        let mut batch = sled::Batch::default();
        let mut removed = 0u64;
        for item in tree.range(keys::seq(keys::ENTRY, keep.saturating_add(1))..) {
            let (k, _) = item?;
            if k.first() != Some(&keys::ENTRY) {
                break;
            }
            batch.remove(k);
            removed += 1;
        }
        for item in tree.scan_prefix([keys::TILE]) {
            let (k, v) = item?;
            if let Some((level, index)) = keys::parse_tile(&k) {
                let width = tiles::expected_width(keep, level, index);
                if width == 0 {
                    batch.remove(k);
                } else if (v.len() as u64) > width * 32 {
                    batch.insert(k, &v[..(width * 32) as usize]);
                }
            }
        }
        let mut cp = self.log.checkpoint();
        cp.global_sequence = keep;
        cp.last_hash = match read_entry(tree, keep)? {
            Some(e) => e.hash,
            None => vec![0; 32],
        };
        batch.insert(keys::CHECKPOINT, cp.encode_to_vec());
        // A consistent rewind moves the mark of the records written behind
        // back with the checkpoint.
        if tree.contains_key(keys::PROJECTED)? {
            batch.insert(keys::PROJECTED, &keep.to_be_bytes());
        }
        tree.apply_batch(batch)?;
        tree.flush()?;
        *self.log.writer() = cp.clone();
        // A consistent rewind rewinds the high-water mark too.
        let mut hw = self
            .log
            .inner
            .high_water
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if hw.is_some() {
            let rewound = HighWater::of(&cp);
            rewound.write(self.log.path())?;
            *hw = Some(rewound);
        }
        drop(hw);
        *self
            .log
            .inner
            .published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = cp;
        let checkpoints = &self.log.handles()?.checkpoints;
        for item in checkpoints.scan_prefix([keys::SIGNED_CHECKPOINT]) {
            let (k, v) = item?;
            if decode_stored_checkpoint(&k, &v)?.size > keep {
                checkpoints.remove(k)?;
            }
        }
        checkpoints.flush()?;
        Ok(removed)
    }
}
