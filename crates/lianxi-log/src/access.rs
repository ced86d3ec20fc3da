//! The access log: who read which case, in what role, why and when.
//!
//! A node-local, hash-chained log in its own sled tree, `access.v1`, of the
//! same database as the event log. It is not part of the replicated event
//! log: two nodes serve different callers, so their access logs differ.
//!
//! Key layout (numbers big-endian, so byte order is numeric order):
//!
//! | key | value |
//! |---|---|
//! | `A` + sequence | `AccessRecord` |
//! | `C` + case id + 0x00 + sequence | empty (index: accesses to a case: its `case_id` and each of its `case_ids`) |
//! | `P` + principal + 0x00 + sequence | empty (index: accesses by a principal) |
//! | `Mhead` | last sequence (8 bytes) + its hash (32 bytes) |
//!
//! A record and its index entries and the new head are one atomic batch,
//! flushed before `append` returns. The head lets `verify` notice a record
//! deleted from the end, which the chain alone cannot show.

use std::sync::{Arc, Mutex};

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{AccessRecord, ListAccessRequest};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::{Error, Location, Result};
use crate::store::Store;

/// The sled tree of the access log.
pub(crate) const TREE: &str = "access.v1";

/// Domain separation for access record hashes.
const ACCESS_HASH_DOMAIN: &[u8] = b"lianxi.v1.AccessRecord\0";

const RECORD: u8 = b'A';
const BY_CASE: u8 = b'C';
const BY_PRINCIPAL: u8 = b'P';
const HEAD: &[u8] = b"Mhead";

/// Computes an access record's hash: SHA-256 over the domain tag and the
/// record encoded with an empty `hash` field.
pub fn access_hash(record: &AccessRecord) -> [u8; 32] {
    let mut unhashed = record.clone();
    unhashed.hash.clear();
    let mut h = Sha256::new();
    h.update(ACCESS_HASH_DOMAIN);
    h.update(unhashed.encode_to_vec());
    h.finalize().into()
}

/// The access log of one node. Cheap to clone; every clone appends to the
/// same chain, one record at a time.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    /// The last sequence and hash. Held while a record is chained and its
    /// batch applied, so concurrent callers form one chain in order.
    head: Mutex<Head>,
    /// Group commit: the highest sequence known to be flushed, and one
    /// flusher at a time. A caller whose record a finished flush already
    /// covered returns without flushing again.
    flushed: Mutex<u64>,
    flushing: Mutex<()>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    sequence: u64,
    hash: [u8; 32],
}

impl Head {
    const EMPTY: Head = Head {
        sequence: 0,
        hash: [0; 32],
    };

    fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&self.sequence.to_be_bytes());
        b[8..].copy_from_slice(&self.hash);
        b
    }

    fn decode(b: &[u8]) -> Option<Head> {
        if b.len() != 40 {
            return None;
        }
        Some(Head {
            sequence: u64::from_be_bytes(b[..8].try_into().ok()?),
            hash: b[8..].try_into().ok()?,
        })
    }
}

fn record_key(sequence: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD;
    k[1..].copy_from_slice(&sequence.to_be_bytes());
    k
}

fn index_prefix(prefix: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + name.len() + 8);
    k.push(prefix);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

fn index_key(prefix: u8, name: &str, sequence: u64) -> Vec<u8> {
    let mut k = index_prefix(prefix, name);
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

/// The sequence at the end of an index key, if the key is exactly
/// `prefix` + 8 bytes (a longer name that merely starts with the same bytes
/// does not count).
fn index_sequence(key: &[u8], prefix: &[u8]) -> Option<u64> {
    if key.len() != prefix.len() + 8 || !key.starts_with(prefix) {
        return None;
    }
    Some(u64::from_be_bytes(key[prefix.len()..].try_into().ok()?))
}

fn ts_key(t: Option<&Timestamp>) -> (i64, i32) {
    t.map_or((0, 0), |t| (t.seconds, t.nanos))
}

/// The case ids a record is indexed under: its `case_id` and its
/// `case_ids`, each once, none empty.
fn indexed_cases(r: &AccessRecord) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(1 + r.case_ids.len());
    for id in std::iter::once(&r.case_id).chain(&r.case_ids) {
        if !id.is_empty() && !out.contains(&id.as_str()) {
            out.push(id);
        }
    }
    out
}

/// Whether the record concerns `case_id`: read or asked for, or shown
/// among others.
fn concerns(r: &AccessRecord, case_id: &str) -> bool {
    r.case_id == case_id || r.case_ids.iter().any(|c| c == case_id)
}

fn matches(r: &AccessRecord, f: &ListAccessRequest) -> bool {
    (f.case_id.is_empty() || concerns(r, &f.case_id))
        && (f.principal.is_empty() || r.principal == f.principal)
        && f.from
            .as_ref()
            .is_none_or(|from| ts_key(r.at.as_ref()) >= ts_key(Some(from)))
        && f.before
            .as_ref()
            .is_none_or(|before| ts_key(r.at.as_ref()) < ts_key(Some(before)))
}

impl AccessLog {
    /// Opens the access log in `db`. Fails if records exist but the head is
    /// missing: appending then could silently continue a damaged chain.
    pub(crate) fn open(store: Arc<Store>) -> Result<AccessLog> {
        let tree = store.handles()?.access;
        let head = read_head(&tree)?;
        Ok(AccessLog {
            inner: Arc::new(Inner {
                store,
                flushed: Mutex::new(head.sequence),
                head: Mutex::new(head),
                flushing: Mutex::new(()),
            }),
        })
    }

    fn access_tree(&self) -> Result<sled::Tree> {
        Ok(self.inner.store.handles()?.access)
    }

    /// Runs `reopen` with appends held off, then reads the head again: a
    /// record whose flush failed may not have survived the reopen, and the
    /// chain continues from what is on disk.
    pub(crate) fn while_reopening(&self, reopen: impl FnOnce() -> Result<()>) -> Result<()> {
        // The order `flush_through` takes them in: flusher, then head.
        let _flusher = self
            .inner
            .flushing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut head = self
            .inner
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reopen()?;
        let now = read_head(&self.access_tree()?)?;
        *self
            .inner
            .flushed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = now.sequence;
        *head = now;
        Ok(())
    }

    /// Appends a record: sets its sequence (the last one + 1), previous hash
    /// and hash, writes it with its index entries, flushes, and returns it.
    /// The record is on disk when this returns, so the caller may send the
    /// data it describes. Concurrent callers are serialised into one chain.
    pub fn append(&self, mut record: AccessRecord) -> Result<AccessRecord> {
        let mut head = self
            .inner
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        record.sequence = head.sequence + 1;
        record.prev_hash = head.hash.to_vec();
        record.hash.clear();
        let hash = access_hash(&record);
        record.hash = hash.to_vec();
        let next = Head {
            sequence: record.sequence,
            hash,
        };

        let mut batch = sled::Batch::default();
        batch.insert(&record_key(record.sequence), record.encode_to_vec());
        for case_id in indexed_cases(&record) {
            batch.insert(index_key(BY_CASE, case_id, record.sequence), &[]);
        }
        if !record.principal.is_empty() {
            batch.insert(
                index_key(BY_PRINCIPAL, &record.principal, record.sequence),
                &[],
            );
        }
        batch.insert(HEAD, &next.encode()[..]);
        let store = &self.inner.store;
        store.note(self.access_tree()?.apply_batch(batch))?;
        // The batch is in sled now: the head moves even if the flush fails,
        // so a later append never writes over this sequence.
        *head = next;
        drop(head);
        self.flush_through(record.sequence)?;
        Ok(record)
    }

    /// Returns once `sequence` is on disk. Group commit: while one caller
    /// flushes, the others apply their batches and wait; the next flush
    /// (sled writes its log in order) covers all of them, and a caller whose
    /// record a finished flush covered returns without flushing again.
    fn flush_through(&self, sequence: u64) -> Result<()> {
        let flushed = |inner: &Inner| *inner.flushed.lock().unwrap_or_else(|p| p.into_inner());
        if flushed(&self.inner) >= sequence {
            return Ok(());
        }
        let _flusher = self
            .inner
            .flushing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if flushed(&self.inner) >= sequence {
            return Ok(());
        }
        // Everything applied so far is covered by this flush.
        let upto = self
            .inner
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .sequence;
        let store = &self.inner.store;
        store.note(store.handles()?.db.flush())?;
        let mut done = self
            .inner
            .flushed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *done = (*done).max(upto);
        Ok(())
    }

    /// Records matching the filter (`case_id` and `principal` exact when
    /// set; `from` inclusive and `before` exclusive on `at`) with a sequence
    /// above `after_sequence`, at most `limit`, in sequence order; and
    /// whether more matching records follow. `page_size` is the caller's to
    /// turn into `limit`. A case or principal filter reads only that index;
    /// a filter on time alone scans the records after `after_sequence`.
    pub fn list(
        &self,
        filter: &ListAccessRequest,
        limit: usize,
    ) -> Result<(Vec<AccessRecord>, bool)> {
        let start = filter.after_sequence.saturating_add(1);
        let mut out = Vec::new();
        let mut take = |r: AccessRecord| -> bool {
            if !matches(&r, filter) {
                return true;
            }
            if out.len() >= limit {
                return false;
            }
            out.push(r);
            true
        };
        let tree = &self.access_tree()?;
        let index = if !filter.case_id.is_empty() {
            Some(index_prefix(BY_CASE, &filter.case_id))
        } else if !filter.principal.is_empty() {
            Some(index_prefix(BY_PRINCIPAL, &filter.principal))
        } else {
            None
        };
        let more = match index {
            Some(prefix) => {
                let mut from = prefix.clone();
                from.extend_from_slice(&start.to_be_bytes());
                let mut more = false;
                for item in tree.range(from..) {
                    let (k, _) = item?;
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    let Some(seq) = index_sequence(&k, &prefix) else {
                        continue;
                    };
                    let record = self.record(seq)?.ok_or_else(|| Error::Corruption {
                        at: Location::Access(seq),
                        detail: "indexed but missing".into(),
                    })?;
                    if !take(record) {
                        more = true;
                        break;
                    }
                }
                more
            }
            None => {
                let mut more = false;
                for item in tree.range(record_key(start)..) {
                    let (k, v) = item?;
                    if k.first() != Some(&RECORD) {
                        break;
                    }
                    if !take(decode(&k, &v)?) {
                        more = true;
                        break;
                    }
                }
                more
            }
        };
        Ok((out, more))
    }

    /// One record by sequence.
    pub fn record(&self, sequence: u64) -> Result<Option<AccessRecord>> {
        let key = record_key(sequence);
        match self.access_tree()?.get(key)? {
            Some(v) => decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Checks the whole access log: sequences dense from 1, each record's
    /// sequence, previous hash and hash, its index entries, no index entry
    /// without its record, and the head at the last record. Returns the
    /// number of records; the first problem found is an
    /// [`Error::Corruption`] naming the record.
    pub fn verify(&self) -> Result<u64> {
        // Appends are held off while the chain is read, so the head and the
        // records agree.
        let head = self
            .inner
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tree = &self.access_tree()?;
        let mut prev = [0u8; 32];
        let mut expected = 1u64;
        for item in tree.scan_prefix([RECORD]) {
            let (k, v) = item?;
            let seq = k
                .get(1..)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| Error::Corruption {
                    at: Location::Key(hex::encode(&k)),
                    detail: "access record key is not a sequence".into(),
                })?;
            let corrupt = |detail: String| Error::Corruption {
                at: Location::Access(seq),
                detail,
            };
            if seq != expected {
                return Err(Error::Corruption {
                    at: Location::Access(expected),
                    detail: format!("missing (the next record is {seq})"),
                });
            }
            let record = decode(&k, &v)?;
            if record.sequence != seq {
                return Err(corrupt(format!(
                    "stored under sequence {seq} but says {}",
                    record.sequence
                )));
            }
            if record.prev_hash != prev {
                return Err(corrupt(format!(
                    "previous hash {} does not match record {}'s hash {}",
                    hex::encode(&record.prev_hash),
                    seq - 1,
                    hex::encode(prev)
                )));
            }
            let hash = access_hash(&record);
            if record.hash != hash {
                return Err(corrupt(format!(
                    "hash {} does not match its contents ({})",
                    hex::encode(&record.hash),
                    hex::encode(hash)
                )));
            }
            let principal = [record.principal.as_str()];
            let principal = principal.iter().filter(|p| !p.is_empty());
            let names = indexed_cases(&record)
                .into_iter()
                .map(|c| (BY_CASE, c))
                .chain(principal.map(|p| (BY_PRINCIPAL, *p)));
            for (prefix, name) in names {
                if !tree.contains_key(index_key(prefix, name, seq))? {
                    return Err(corrupt(format!(
                        "its {} index entry for {name:?} is missing",
                        if prefix == BY_CASE {
                            "case"
                        } else {
                            "principal"
                        }
                    )));
                }
            }
            prev = hash;
            expected += 1;
        }
        let records = expected - 1;
        if head.sequence != records || head.hash != prev {
            return Err(Error::Corruption {
                at: Location::Access(head.sequence.max(records)),
                detail: format!(
                    "the head says the last record is {} with hash {}, the log ends at {} with hash {}",
                    head.sequence,
                    hex::encode(head.hash),
                    records,
                    hex::encode(prev)
                ),
            });
        }
        for prefix in [BY_CASE, BY_PRINCIPAL] {
            for item in tree.scan_prefix([prefix]) {
                let (k, _) = item?;
                // prefix + name + 0x00 + sequence
                let split = k.len().checked_sub(9).filter(|&at| at >= 1 && k[at] == 0);
                let seq = split
                    .and_then(|at| k[at + 1..].try_into().ok())
                    .map(u64::from_be_bytes);
                let name = split.map_or(&[][..], |at| &k[1..at]);
                let record = match seq {
                    Some(seq) => self.record(seq)?,
                    None => None,
                };
                let ok = record.is_some_and(|r| match std::str::from_utf8(name) {
                    Ok(name) if prefix == BY_CASE => concerns(&r, name),
                    Ok(name) => r.principal == name,
                    Err(_) => false,
                });
                if !ok {
                    return Err(Error::Corruption {
                        at: seq.map_or_else(|| Location::Key(hex::encode(&k)), Location::Access),
                        detail: format!(
                            "index entry {} does not point at a matching record",
                            hex::encode(&k)
                        ),
                    });
                }
            }
        }
        Ok(records)
    }

    /// The raw tree, for tests that tamper with storage.
    #[cfg(test)]
    pub(crate) fn tree(&self) -> sled::Tree {
        self.access_tree().expect("the store is open")
    }
}

/// The head as stored. Fails if records exist but the head is missing:
/// appending then could silently continue a damaged chain.
fn read_head(tree: &sled::Tree) -> Result<Head> {
    Ok(match tree.get(HEAD)? {
        Some(b) => Head::decode(&b).ok_or_else(|| Error::Corruption {
            at: Location::AccessHead,
            detail: format!("{} bytes, expected 40", b.len()),
        })?,
        None => match tree.scan_prefix([RECORD]).next_back() {
            None => Head::EMPTY,
            Some(item) => {
                let (k, _) = item?;
                let last = k.get(1..).and_then(|s| s.try_into().ok());
                return Err(Error::Corruption {
                    at: Location::AccessHead,
                    detail: format!(
                        "missing, though the access log holds records up to {}; run `lianxi verify` and restore the data directory from a backup",
                        last.map_or(0, u64::from_be_bytes)
                    ),
                });
            }
        },
    })
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<AccessRecord> {
    AccessRecord::decode(bytes).map_err(|e| Error::Corruption {
        at: key
            .get(1..)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
            .map_or_else(|| Location::Key(hex::encode(key)), Location::Access),
        detail: format!("access record does not decode: {e}"),
    })
}

#[cfg(test)]
mod tests;
