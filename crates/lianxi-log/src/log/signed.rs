//! Signed checkpoints the node issued, kept in their own tree.

use super::{Log, StoredCheckpoint};
use crate::error::{Error, Location, Result};
use crate::keys;

impl Log {
    /// Keeps a signed checkpoint the node issued, of the tree of `size`
    /// entries, as the next issue number, and flushes. Every checkpoint is
    /// kept; a note identical to the latest one is not stored twice (ed25519
    /// signatures are deterministic, so re-signing the same tree gives the
    /// same note). Returns what is stored.
    pub fn store_checkpoint(&self, note: &str, size: u64) -> Result<StoredCheckpoint> {
        let _issuing = self
            .inner
            .issuing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let latest = self.latest_checkpoint()?;
        if let Some(latest) = latest.as_ref().filter(|l| l.size == size && l.note == note) {
            return Ok(latest.clone());
        }
        let number = latest.map_or(1, |l| l.number.saturating_add(1));
        let mut value = Vec::with_capacity(8 + note.len());
        value.extend_from_slice(&size.to_be_bytes());
        value.extend_from_slice(note.as_bytes());
        let (store, h) = (&self.inner.store, self.handles()?);
        store.note(
            h.checkpoints
                .insert(keys::seq(keys::SIGNED_CHECKPOINT, number), value),
        )?;
        store.note(h.checkpoints.flush())?;
        Ok(StoredCheckpoint {
            number,
            size,
            note: note.to_owned(),
        })
    }

    /// Stored checkpoints with an issue number above `after`, at most
    /// `limit`, oldest first.
    pub fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<StoredCheckpoint>> {
        let start = keys::seq(keys::SIGNED_CHECKPOINT, after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.handles()?.checkpoints.range(start..) {
            let (k, v) = item?;
            if k.first() != Some(&keys::SIGNED_CHECKPOINT) || out.len() >= limit {
                break;
            }
            out.push(decode_stored_checkpoint(&k, &v)?);
        }
        Ok(out)
    }

    /// The last checkpoint the node issued, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        match self
            .handles()?
            .checkpoints
            .scan_prefix([keys::SIGNED_CHECKPOINT])
            .next_back()
        {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some(decode_stored_checkpoint(&k, &v)?))
            }
            None => Ok(None),
        }
    }
}

pub(super) fn decode_stored_checkpoint(k: &[u8], v: &[u8]) -> Result<StoredCheckpoint> {
    let number = keys::be_u64(k.get(1..).unwrap_or_default()).unwrap_or_default();
    let corrupt = |detail: &str| Error::Corruption {
        at: Location::Key(hex::encode(k)),
        detail: format!("stored signed checkpoint {number}: {detail}"),
    };
    let size = keys::be_u64(v.get(..8).unwrap_or_default())
        .ok_or_else(|| corrupt("shorter than its size"))?;
    let note = std::str::from_utf8(v.get(8..).unwrap_or_default())
        .map_err(|_| corrupt("the note is not UTF-8"))?
        .to_owned();
    Ok(StoredCheckpoint { number, size, note })
}
