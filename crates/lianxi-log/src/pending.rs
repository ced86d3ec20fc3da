//! Derived records written behind the log.
//!
//! A group makes its entries durable (entries, rejection and duplicate
//! records, the Merkle tiles, the stream index and the checkpoint, one
//! batch and one flush), and leaves what it changed of the other derived
//! families (case views, the per-case, duplicate, person and list-filter
//! indexes) in [`Pending`], in memory: a case touched by many groups has
//! its view written to sled once per write-behind, not once per group.
//! Every read goes through a [`Reader`], which sees sled with the pending
//! records over it, so what is read is the same as if they had been
//! written at once.
//!
//! Every [`WRITE_BEHIND_ENTRIES`] entries the pending records go into sled
//! in one batch with the mark `Mprojected` (the global sequence they
//! reach), without a flush of their own: the next group's flush makes them
//! durable, and sled keeps batches in order. After a crash the mark is
//! behind the checkpoint, and `open` projects the entries between the two
//! again, through the same [`crate::projection::Projections`] (a bounded
//! amount of work: at most that many entries).

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use sled::IVec;

use crate::keys;

/// After how many entries the pending records are written into sled.
#[cfg(not(test))]
pub(crate) const WRITE_BEHIND_ENTRIES: u64 = 4_096;
/// Small in this crate's own tests, so that they write behind often.
#[cfg(test)]
pub(crate) const WRITE_BEHIND_ENTRIES: u64 = 200;

/// Changes to records: a value, or `None` for a removal. The last change
/// of a key wins.
pub(crate) type Changes = BTreeMap<Vec<u8>, Option<IVec>>;

/// Where derived records are put: a sled batch (written at once) or
/// [`Changes`] (written behind).
pub(crate) trait Sink {
    fn put(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
}

impl Sink for sled::Batch {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.insert(key, value);
    }
    fn delete(&mut self, key: &[u8]) {
        self.remove(key);
    }
}

impl Sink for Changes {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.insert(key.to_vec(), Some(IVec::from(value)));
    }
    fn delete(&mut self, key: &[u8]) {
        self.insert(key.to_vec(), None);
    }
}

/// The records written behind, and how far they reach.
#[derive(Default)]
pub(crate) struct Pending {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    changes: Changes,
    /// Entries projected into `changes` since they were last written.
    entries: u64,
}

impl Pending {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a group's changes, projected from `entries` entries.
    pub(crate) fn merge(&self, changes: Changes, entries: u64) {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        if s.changes.is_empty() {
            s.changes = changes;
        } else {
            s.changes.extend(changes);
        }
        s.entries += entries;
    }

    /// Entries projected and not yet written.
    pub(crate) fn entries(&self) -> u64 {
        self.read().entries
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.read().changes.is_empty()
    }

    /// The pending records as one batch, with the mark that they reach
    /// global sequence `through`.
    pub(crate) fn batch(&self, through: u64) -> sled::Batch {
        let s = self.read();
        let mut batch = sled::Batch::default();
        for (k, v) in &s.changes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.clone()),
                None => batch.remove(k.as_slice()),
            }
        }
        batch.insert(keys::PROJECTED, &through.to_be_bytes());
        batch
    }

    /// Forgets every pending record: after they were written, or when the
    /// derived records are rebuilt from the entries.
    pub(crate) fn clear(&self) {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.changes = Changes::new();
        s.entries = 0;
    }

    fn get(&self, key: &[u8]) -> Option<Option<IVec>> {
        self.read().changes.get(key).cloned()
    }

    fn range(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> VecDeque<(IVec, Option<IVec>)> {
        let s = self.read();
        if s.changes.is_empty() {
            return VecDeque::new();
        }
        s.changes
            .range(range)
            .map(|(k, v)| (IVec::from(k.as_slice()), v.clone()))
            .collect()
    }
}

/// The log's records as a reader sees them: sled, with the pending
/// records over it.
#[derive(Clone)]
pub(crate) struct Reader {
    tree: sled::Tree,
    pending: Arc<Pending>,
}

impl Reader {
    pub(crate) fn new(tree: sled::Tree, pending: Arc<Pending>) -> Self {
        Reader { tree, pending }
    }

    /// sled alone: for records that are never written behind (entries,
    /// tiles, the stream index, rejection and duplicate records).
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        let key = key.as_ref();
        match self.pending.get(key) {
            Some(v) => Ok(v),
            None => self.tree.get(key),
        }
    }

    pub(crate) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Merged {
        let owned = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let bounds = (owned(range.start_bound()), owned(range.end_bound()));
        // Pending first: a record written behind between the two reads is
        // then in sled too, never in neither.
        let over = self.pending.range(bounds.clone());
        Merged {
            sled: self.tree.range(bounds),
            over,
            front: None,
            back: None,
        }
    }

    /// The records under `prefix` from `start` on (`start` itself starts
    /// with `prefix`): a range bounded above, so that only pending records
    /// of that prefix are read.
    pub(crate) fn prefix_from(&self, prefix: &[u8], start: Vec<u8>) -> Merged {
        let end = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.range((Bound::Included(start), end))
    }

    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Merged {
        let prefix = prefix.as_ref();
        let over = match prefix_end(prefix) {
            Some(end) => self
                .pending
                .range((Bound::Included(prefix.to_vec()), Bound::Excluded(end))),
            None => self
                .pending
                .range((Bound::Included(prefix.to_vec()), Bound::Unbounded)),
        };
        Merged {
            sled: self.tree.scan_prefix(prefix),
            over,
            front: None,
            back: None,
        }
    }
}

/// The first key after every key that starts with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

type Item = sled::Result<(IVec, IVec)>;

/// sled's records of a range with the pending ones over them, in key
/// order from either end.
pub(crate) struct Merged {
    sled: sled::Iter,
    over: VecDeque<(IVec, Option<IVec>)>,
    /// The next record of sled from the front (or the back), read ahead.
    front: Option<Item>,
    back: Option<Item>,
}

impl Merged {
    fn fill_front(&mut self) {
        if self.front.is_none() {
            self.front = self.sled.next().or_else(|| self.back.take());
        }
    }

    fn fill_back(&mut self) {
        if self.back.is_none() {
            self.back = self.sled.next_back().or_else(|| self.front.take());
        }
    }
}

impl Iterator for Merged {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            self.fill_front();
            let order = match (&self.front, self.over.front()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return self.front.take(),
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((s, _))), Some((o, _))) => s.cmp(o),
            };
            if order == std::cmp::Ordering::Less {
                return self.front.take();
            }
            if order == std::cmp::Ordering::Equal {
                self.front = None;
            }
            if let Some((k, Some(v))) = self.over.pop_front() {
                return Some(Ok((k, v)));
            }
        }
    }
}

impl DoubleEndedIterator for Merged {
    fn next_back(&mut self) -> Option<Item> {
        loop {
            self.fill_back();
            let order = match (&self.back, self.over.back()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return self.back.take(),
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(Ok((s, _))), Some((o, _))) => s.cmp(o),
            };
            if order == std::cmp::Ordering::Greater {
                return self.back.take();
            }
            if order == std::cmp::Ordering::Equal {
                self.back = None;
            }
            if let Some((k, Some(v))) = self.over.pop_back() {
                return Some(Ok((k, v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(stored: &[(&str, &str)], pending: &[(&str, Option<&str>)]) -> Reader {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for (k, v) in stored {
            tree.insert(k.as_bytes(), v.as_bytes()).unwrap();
        }
        let p = Arc::new(Pending::default());
        let mut c = Changes::new();
        for (k, v) in pending {
            match v {
                Some(v) => c.put(k.as_bytes(), v.as_bytes()),
                None => c.delete(k.as_bytes()),
            }
        }
        p.merge(c, 1);
        Reader::new(tree, p)
    }

    fn strings(it: impl Iterator<Item = Item>) -> Vec<(String, String)> {
        it.map(|r| {
            let (k, v) = r.unwrap();
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect()
    }

    #[test]
    fn reads_see_pending_records_over_stored_ones_from_either_end() {
        let r = reader(
            &[("a1", "s"), ("a2", "s"), ("a4", "s"), ("b1", "s")],
            &[
                ("a0", Some("p")),
                ("a2", Some("p")),
                ("a3", Some("p")),
                ("a4", None),
            ],
        );
        let want = [("a0", "p"), ("a1", "s"), ("a2", "p"), ("a3", "p")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec();
        assert_eq!(strings(r.scan_prefix("a")), want);
        let mut back = strings(r.scan_prefix("a").rev());
        back.reverse();
        assert_eq!(back, want);
        // Both ends at once meet without losing or repeating a record.
        let mut it = r.scan_prefix("a");
        let (first, last) = (
            it.next().unwrap().unwrap(),
            it.next_back().unwrap().unwrap(),
        );
        assert_eq!((&first.0[..], &last.0[..]), (&b"a0"[..], &b"a3"[..]));
        assert_eq!(strings(it).len(), 2);
        assert_eq!(
            strings(r.range("a2".as_bytes().to_vec().."b".as_bytes().to_vec())),
            want[2..].to_vec()
        );
        assert_eq!(r.get("a4").unwrap(), None);
        assert_eq!(r.get("a2").unwrap().as_deref(), Some(&b"p"[..]));
        assert_eq!(r.get("b1").unwrap().as_deref(), Some(&b"s"[..]));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255]), None);
    }
}
