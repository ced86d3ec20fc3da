//! Sequence indexes packed 256 to a record.
//!
//! sled keeps some memory for every page of its tree, cached or not, and
//! its pages hold at most 16 records, so the resident memory of a log
//! grows with the number of records, not their size. The two indexes that
//! had a record per entry (by stream sequence, and by case and case
//! sequence) keep 256 global sequences to a record instead: slot `i` of
//! the record for chunk `c` is the global sequence of position
//! `256 * c + i` (8 bytes, big-endian; 0 where there is none), and a
//! record is only as long as its last slot written. A group rewrites the
//! few records it touches.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::keys;

/// Positions per record.
pub(crate) const SLOTS: u64 = 256;

/// The global sequence in slot `slot` of a record, if one is there.
pub(crate) fn get(record: &[u8], slot: u64) -> Option<u64> {
    let at = usize::try_from(slot).ok()?.checked_mul(8)?;
    let g = keys::be_u64(record.get(at..at.checked_add(8)?)?)?;
    (g != 0).then_some(g)
}

/// Sets slot `slot` of a record, extending it with empty slots.
pub(crate) fn set(record: &mut Vec<u8>, slot: u64, global_sequence: u64) {
    let at = (slot % SLOTS) as usize * 8;
    if record.len() < at + 8 {
        record.resize(at + 8, 0);
    }
    record[at..at + 8].copy_from_slice(&global_sequence.to_be_bytes());
}

/// The key of the record holding stream sequence `s`.
pub(crate) fn by_stream_key(s: u64) -> [u8; 9] {
    keys::seq(keys::BY_STREAM_PACKED, s / SLOTS)
}

/// The key of the record holding case sequence `case_seq` (from 1) of a
/// case.
pub(crate) fn case_key(case_id: &str, case_seq: u64) -> Vec<u8> {
    keys::case_chunk(case_id, case_seq.saturating_sub(1) / SLOTS)
}

/// The slot of case sequence `case_seq` (from 1) in its record.
pub(crate) fn case_slot(case_seq: u64) -> u64 {
    case_seq.saturating_sub(1) % SLOTS
}

/// The records a group or a repair changes, read from the store the first
/// time each is touched, written in one batch.
#[derive(Default)]
pub(crate) struct Records {
    changed: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Records {
    /// Sets one slot of the record at `key`; `stored` reads the record if
    /// this set has not touched it yet (or gives `None` to start empty).
    pub(crate) fn set(
        &mut self,
        key: &[u8],
        slot: u64,
        global_sequence: u64,
        stored: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>>,
    ) -> Result<()> {
        if !self.changed.contains_key(key) {
            let start = stored(key)?.unwrap_or_default();
            self.changed.insert(key.to_vec(), start);
        }
        if let Some(record) = self.changed.get_mut(key) {
            set(record, slot, global_sequence);
        }
        Ok(())
    }

    pub(crate) fn write(self, out: &mut impl crate::pending::Sink) {
        for (k, v) in self.changed {
            out.put(&k, &v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_set_and_read_back_and_absent_ones_are_none() {
        let mut r = Vec::new();
        assert_eq!(get(&r, 0), None);
        set(&mut r, 3, 42);
        assert_eq!(r.len(), 32);
        assert_eq!((get(&r, 0), get(&r, 3), get(&r, 4)), (None, Some(42), None));
        set(&mut r, 255, u64::MAX);
        assert_eq!(get(&r, 255), Some(u64::MAX));
        assert_eq!(get(&r, 256), None);
        assert_eq!(get(&r, u64::MAX), None);
        assert_eq!((case_slot(1), case_slot(256), case_slot(257)), (0, 255, 0));
        assert_eq!(case_key("A", 256), case_key("A", 1));
        assert_ne!(case_key("A", 257), case_key("A", 256));
        assert_eq!(by_stream_key(255), by_stream_key(0));
        assert_ne!(by_stream_key(256), by_stream_key(255));
    }
}
