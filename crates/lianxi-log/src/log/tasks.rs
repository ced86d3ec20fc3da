//! What the node's side tasks have done: receipts acknowledged by the bus,
//! erasures whose side effects are pending.

use super::Log;
use crate::error::{Error, Location, Result};
use crate::keys;

impl Log {
    /// The last stream sequence whose receipt the bus acknowledged.
    pub fn receipts_sent(&self) -> Result<u64> {
        Ok(self
            .log_tree()?
            .get(keys::RECEIPTS_SENT)?
            .as_deref()
            .and_then(keys::be_u64)
            .unwrap_or(0))
    }

    /// Erasures whose side effects this node has not finished: each case
    /// with the stream sequence of its `personal_data_erased` event.
    pub fn pending_erasures(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for item in self.log_tree()?.scan_prefix([keys::ERASURE_PENDING]) {
            let (k, v) = item?;
            let case = String::from_utf8_lossy(&k[1..]).into_owned();
            let seq = keys::be_u64(&v).ok_or_else(|| Error::Corruption {
                at: Location::Key(hex::encode(&k)),
                detail: "pending erasure record is malformed".into(),
            })?;
            out.push((case, seq));
        }
        Ok(out)
    }

    /// Records that the case's key is destroyed and its messages purged.
    pub fn erasure_done(&self, case_id: &str) -> Result<()> {
        let (store, h) = (&self.inner.store, self.handles()?);
        store.note(h.log.remove(keys::named(keys::ERASURE_PENDING, case_id)))?;
        store.note(h.db.flush())?;
        Ok(())
    }

    /// Records that receipts up to `stream_sequence` were acknowledged.
    pub fn set_receipts_sent(&self, stream_sequence: u64) -> Result<()> {
        let store = &self.inner.store;
        store.note(
            self.log_tree()?
                .insert(keys::RECEIPTS_SENT, &stream_sequence.to_be_bytes()),
        )?;
        Ok(())
    }
}
