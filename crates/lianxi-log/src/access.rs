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
//!
//! sled can lose a tail of its file and reopen an older state silently,
//! head included. So after each flush the last flushed sequence and hash
//! also go to `access-high-water` beside sled's files (two checksummed
//! slots written in turn, each write fsynced: a torn write leaves the other
//! slot). An access log found below that mark at open has lost records of
//! who read what: `verify` fails naming them, and the node, at start,
//! records the gap in the chain itself ([`AccessLog::record_gap`]), so the
//! loss stays visible to every later reader of the access log.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{AccessRecord, ListAccessRequest};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::{Error, Location, Result};
use crate::store::Store;

/// The method of the record a node writes for access records it lost.
pub const GAP_METHOD: &str = "lianxi.v1.AccessLog/Gap";

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
    /// The high-water mark beside sled's files.
    mark: Mutex<Mark>,
    /// Records the mark names that the log no longer holds, found at open
    /// and not yet recorded as a gap.
    lost: Mutex<Option<Lost>>,
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

/// The name of the access log's high-water mark file in the data directory.
pub const ACCESS_HIGH_WATER_FILE: &str = "access-high-water";

/// Access records the high-water mark names that the access log no longer
/// holds: records `have + 1 ..= had` are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The last record the access log holds.
    pub have: u64,
    /// The last record the mark says was flushed.
    pub had: u64,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "access records {}..={} are missing: the access log ends at {}, but its high-water mark ({ACCESS_HIGH_WATER_FILE}) says record {} had been written; the record of who read what is incomplete (restore the data directory from a backup to recover them; a node started on it records the gap in the access log)",
            self.have + 1,
            self.had,
            self.have,
            self.had
        )
    }
}

/// The access log's high-water mark: two 64-byte slots of magic, sequence,
/// hash and a checksum, written in turn with `pwrite` and `fdatasync`.
struct Mark {
    path: PathBuf,
    file: Option<File>,
    /// The slot the next write goes to.
    next_slot: u64,
    /// The generation of the slot last written; the newer slot is the one
    /// of the higher generation.
    generation: u64,
    /// The sequence last written.
    written: u64,
}

impl Mark {
    const MAGIC: &'static [u8; 8] = b"lxaccv1\0";
    const SLOT: u64 = 64;

    fn encode(generation: u64, head: &Head) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..8].copy_from_slice(Self::MAGIC);
        b[8..16].copy_from_slice(&generation.to_be_bytes());
        b[16..24].copy_from_slice(&head.sequence.to_be_bytes());
        b[24..56].copy_from_slice(&head.hash);
        let check = Sha256::digest(&b[..56]);
        b[56..64].copy_from_slice(&check[..8]);
        b
    }

    /// A slot's generation (one more at each write) and head; `(0, EMPTY)`
    /// for a slot never written (all zero); `None` for a torn or damaged
    /// one.
    fn decode(b: &[u8]) -> Option<(u64, Head)> {
        if b.len() != 64 {
            return None;
        }
        if b.iter().all(|x| *x == 0) {
            return Some((0, Head::EMPTY));
        }
        if &b[..8] != Self::MAGIC || Sha256::digest(&b[..56])[..8] != b[56..64] {
            return None;
        }
        Some((
            u64::from_be_bytes(b[8..16].try_into().ok()?),
            Head {
                sequence: u64::from_be_bytes(b[16..24].try_into().ok()?),
                hash: b[24..56].try_into().ok()?,
            },
        ))
    }

    /// Opens (or creates) the mark in `dir` and reads the newest valid slot.
    fn open(dir: &Path) -> Result<(Mark, Head)> {
        let path = dir.join(ACCESS_HIGH_WATER_FILE);
        let err = |e| Error::HighWater {
            path: path.display().to_string(),
            source: e,
        };
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        if !existed {
            // Written, not just sized: later overwrites need no new blocks,
            // so a full disk cannot refuse them.
            file.write_all_at(&[0u8; 2 * Self::SLOT as usize], 0)
                .map_err(err)?;
            file.sync_all().map_err(err)?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(err)?;
        let slots: Vec<Option<(u64, Head)>> = (0..2)
            .map(|i| {
                bytes
                    .get((i * 64) as usize..(i * 64 + 64) as usize)
                    .and_then(Mark::decode)
            })
            .collect();
        let (slot, (generation, head)) = match (&slots[0], &slots[1]) {
            (Some(a), Some(b)) if b.0 > a.0 => (1, b.clone()),
            (Some(a), _) => (0, a.clone()),
            (None, Some(b)) => (1, b.clone()),
            (None, None) => {
                return Err(Error::Damaged {
                    path: dir.display().to_string(),
                    detail: format!(
                        "the access log's high-water mark {} is damaged in both of its slots",
                        path.display()
                    ),
                });
            }
        };
        let mark = Mark {
            path,
            file: Some(file),
            next_slot: 1 - slot,
            generation,
            written: head.sequence,
        };
        Ok((mark, head))
    }

    /// Raises the mark to `head` durably (a no-op if it is not higher).
    fn raise(&mut self, head: &Head) -> Result<()> {
        if head.sequence <= self.written {
            return Ok(());
        }
        self.write(head)
    }

    /// Writes `head` as the mark durably, lower or not (after a gap is
    /// recorded, the mark comes down to the log's new head).
    fn write(&mut self, head: &Head) -> Result<()> {
        let err = |e| Error::HighWater {
            path: self.path.display().to_string(),
            source: e,
        };
        let file = match &self.file {
            Some(f) => f,
            None => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .map_err(err)?;
                self.file.insert(f)
            }
        };
        let written = file
            .write_all_at(
                &Mark::encode(self.generation + 1, head),
                self.next_slot * Self::SLOT,
            )
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Open the file again next time (the disk may come back).
            self.file = None;
            return Err(err(e));
        }
        self.next_slot = 1 - self.next_slot;
        self.generation += 1;
        self.written = head.sequence;
        Ok(())
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
        let (mark, marked) = Mark::open(store.path())?;
        let lost = if marked.sequence > head.sequence {
            Some(Lost {
                have: head.sequence,
                had: marked.sequence,
            })
        } else if marked.sequence == head.sequence && marked.hash != head.hash {
            return Err(Error::Damaged {
                path: store.path().display().to_string(),
                detail: format!(
                    "access record {} is not the one its high-water mark ({ACCESS_HIGH_WATER_FILE}) names: the access log was replaced or rewritten",
                    head.sequence
                ),
            });
        } else {
            None
        };
        if let Some(lost) = &lost {
            tracing::error!(data_dir = %store.path().display(), "{lost}");
        }
        Ok(AccessLog {
            inner: Arc::new(Inner {
                mark: Mutex::new(mark),
                lost: Mutex::new(lost),
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

    /// Access records found missing at open (below the high-water mark) and
    /// not yet recorded as a gap.
    pub fn lost(&self) -> Option<Lost> {
        self.inner
            .lost
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records a loss found at open in the chain itself: one record by the
    /// node (principal `lianxi-node`, method `lianxi.v1.AccessLog/Gap`, not
    /// allowed) saying which sequences were lost, at `at` (the node's
    /// clock, like every access record). Afterwards the log is whole again
    /// as a chain and `verify` passes; the gap stays in it for every reader.
    /// Returns the gap record, or `None` when nothing was lost.
    pub fn record_gap(&self, at: Timestamp) -> Result<Option<AccessRecord>> {
        let Some(lost) = self.lost() else {
            return Ok(None);
        };
        let record = self.append(AccessRecord {
            at: Some(at),
            principal: "lianxi-node".into(),
            method: GAP_METHOD.into(),
            allowed: false,
            detail: format!(
                "access records {}..={} were lost from this node's access log (found when the data directory was opened: sled's files held {} records, the access log's high-water mark {}); who read what in them is unknown",
                lost.have + 1,
                lost.had,
                lost.have,
                lost.had
            ),
            ..AccessRecord::default()
        })?;
        // The mark still names the lost records; it comes down to the gap
        // record, so the next open does not report them again.
        let head = self
            .inner
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        self.inner
            .mark
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .write(&head)?;
        *self
            .inner
            .lost
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        Ok(Some(record))
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
        let upto_head = self
            .inner
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let upto = upto_head.sequence;
        let store = &self.inner.store;
        store.note(store.handles()?.db.flush())?;
        // Not done until the mark says so: a record the mark does not cover
        // could be lost with sled's tail unnoticed.
        self.inner
            .mark
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .raise(&upto_head)?;
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
        if let Some(lost) = self.lost() {
            return Err(Error::Corruption {
                at: Location::Access(lost.have + 1),
                detail: lost.to_string(),
            });
        }
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
