use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use lianxi_crypto::{DataKey, IndexKey};
use lianxi_domain::{Context, EntryMeta, Policy, PriorCase, Rejection};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    Agency, CaseView, Checkpoint, DuplicateRecord, Event, LogEntry, PersonalDataState, Receipt,
    RejectionCode, RejectionRecord, Sealed, event::Body,
};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::access::AccessLog;
use crate::error::{Error, Location, Result};
use crate::keys;
use crate::merkle::{self, Frontier, Hash};
use crate::packed;
use crate::receipts;
use crate::store::{self, HighWater, Store, StoreOptions};
use crate::tiles::{self, Edge};

/// The largest event the node accepts, in bytes. Larger messages are
/// rejected (and kept, cut to this size) rather than stored.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Domain separation for entry hashes, so a log entry's hash can never be
/// confused with a hash of anything else.
const ENTRY_HASH_DOMAIN: &[u8] = b"lianxi.v1.LogEntry\0";

/// One message as read from the stream.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub stream_sequence: u64,
    pub subject: String,
    /// The stream's record time of the message: identical on every node.
    pub recorded_at: Timestamp,
    pub payload: Vec<u8>,
}

/// The keys a group needs to seal personal values: each case's data key
/// and the city's index key (for person tokens). Kept in memory only; the
/// caller fetches them from the key store (see `Log::keys_needed`).
#[derive(Default, Clone)]
pub struct GroupKeys {
    cases: HashMap<String, Arc<DataKey>>,
    index: Option<Arc<IndexKey>>,
    /// Tests and benchmarks without a key store: every key derived from
    /// this seed.
    derive: Option<[u8; 32]>,
}

impl GroupKeys {
    pub fn new() -> Self {
        GroupKeys::default()
    }

    pub fn insert_case(&mut self, case_id: &str, key: Arc<DataKey>) {
        self.cases.insert(case_id.to_owned(), key);
    }

    pub fn set_index(&mut self, key: Arc<IndexKey>) {
        self.index = Some(key);
    }

    /// Keys derived from `seed` for every case and the index, for tests
    /// and benchmarks that run without a key store. Never used by a node.
    #[doc(hidden)]
    pub fn derived(seed: &str) -> Self {
        GroupKeys {
            derive: Some(Sha256::digest(seed.as_bytes()).into()),
            ..GroupKeys::default()
        }
    }

    /// The key `derived(seed)` uses for a case.
    #[doc(hidden)]
    pub fn derived_case_key(seed: &str, case_id: &str) -> Arc<DataKey> {
        let seed: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
        Arc::new(derive_key(&seed, "case", case_id))
    }

    fn case(&self, case_id: &str) -> Result<Arc<DataKey>> {
        if let Some(k) = self.cases.get(case_id) {
            return Ok(k.clone());
        }
        match &self.derive {
            Some(seed) => Ok(Arc::new(derive_key(seed, "case", case_id))),
            None => Err(Error::KeyUnavailable {
                what: format!("the data key of case {case_id}"),
            }),
        }
    }

    fn index(&self) -> Result<Arc<IndexKey>> {
        if let Some(k) = &self.index {
            return Ok(k.clone());
        }
        match &self.derive {
            Some(seed) => Ok(Arc::new(IndexKey::from_bytes(
                *derive_key(seed, "index", "").as_bytes(),
            ))),
            None => Err(Error::KeyUnavailable {
                what: "the index key".into(),
            }),
        }
    }
}

fn derive_key(seed: &[u8; 32], what: &str, name: &str) -> DataKey {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(what.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    DataKey::from_bytes(h.finalize().into())
}

/// Which keys a group will need: the cases whose events carry personal
/// values (and whose personal data is still active), and whether any
/// opening names a person.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeysNeeded {
    pub cases: Vec<String>,
    pub index: bool,
}

/// What became of one incoming message.
#[derive(Debug, Clone, PartialEq)]
pub enum EventOutcome {
    Accepted {
        event_id: String,
        case_id: String,
        global_sequence: u64,
        case_sequence: u64,
        hash: [u8; 32],
        /// Set for an accepted `personal_data_erased`: the case's key must
        /// now be destroyed and its messages purged from the bus.
        erased: bool,
    },
    Duplicate {
        event_id: String,
        original_global_sequence: u64,
    },
    Rejected {
        event_id: Option<String>,
        code: RejectionCode,
        reason: String,
    },
    /// At or below the checkpoint: already processed before a restart.
    AlreadyProcessed,
}

/// The outcomes of one group, in input order, and the checkpoint after it.
#[derive(Debug, Clone)]
pub struct GroupReport {
    pub outcomes: Vec<(u64, EventOutcome)>,
    pub checkpoint: Checkpoint,
    /// The receipt of every message the group processed (none for those
    /// already processed), in stream order, exactly as [`Log::receipt`]
    /// reads them back from the log: so they can be sent from memory once
    /// the group is flushed (without `durability`, which the sender adds).
    pub receipts: Vec<Receipt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub entries: u64,
    pub cases: u64,
}

/// What [`Log::repair_to_checkpoint`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RepairReport {
    /// Entries past the checkpoint, removed (read again from the stream).
    pub(crate) entries_removed: u64,
    /// Rejection and duplicate records and marks past it, removed.
    pub(crate) records_removed: u64,
    /// Set when entries up to the checkpoint were lost too: the checkpoint
    /// it stepped back from (to the intact prefix).
    pub(crate) stepped_back_from: Option<u64>,
    /// Cases whose views were rebuilt.
    pub(crate) cases: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub cases: u64,
    pub last_hash: [u8; 32],
    /// The Merkle tree root over all entries, recomputed from the entries.
    pub root: [u8; 32],
}

/// The log of one node. Cheap to clone; reads run concurrently, appends are
/// serialised through one writer.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

struct Inner {
    /// The sled database, reopened in place after a disk failure.
    store: Arc<Store>,
    policy: Policy,
    /// The single writer's state: the checkpoint as of the last flushed
    /// group. Held for a whole group, flush included.
    writer: Mutex<Checkpoint>,
    /// A copy of the checkpoint for readers, replaced after each flush, so
    /// that a query never waits for a group to be written.
    published: Mutex<Checkpoint>,
    /// The node-local access log, in its own tree of the same database.
    access: AccessLog,
    /// Serialises the numbering of stored checkpoints.
    issuing: Mutex<()>,
    /// The high-water mark as last written (or read at open).
    high_water: Mutex<Option<HighWater>>,
    /// Set while the log holds fewer entries than the high-water mark: the
    /// node lost a tail it had vouched for and must read it again.
    behind: Mutex<Option<Behind>>,
    /// Damage found at open among the newest entries (one missing, a broken
    /// link, a checkpoint its entries do not match): the log is not written
    /// to, and the node reports it, while what is there stays readable for
    /// an investigation.
    damage: Mutex<Option<String>>,
    /// The Merkle tree's right frontier after the last group, with the
    /// size and last entry hash it belongs to (which fix the whole tree,
    /// through the hash chain), so that an append reads no tile back.
    frontier: Mutex<Option<(u64, Vec<u8>, Frontier)>>,
}

/// A log found below its high-water mark: it holds `have` entries, but
/// the node had already receipted or signed `vouched`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    pub have: u64,
    pub vouched: u64,
    pub vouched_stream_sequence: u64,
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the log holds {} entries but this node had already receipted or signed {} (stream sequence {}): its storage lost a tail; it reads the events stream again and serves once it has caught up",
            self.have, self.vouched, self.vouched_stream_sequence
        )
    }
}

/// A signed checkpoint as the node stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The issue number, from 1, in the order the node issued them.
    pub number: u64,
    /// The tree size the checkpoint commits to.
    pub size: u64,
    /// The signed note's text.
    pub note: String,
}

/// Computes an entry's hash: SHA-256 over the domain tag and the entry
/// encoded with an empty `hash` field.
pub fn entry_hash(entry: &LogEntry) -> [u8; 32] {
    let mut unhashed = entry.clone();
    unhashed.hash.clear();
    let mut h = Sha256::new();
    h.update(ENTRY_HASH_DOMAIN);
    h.update(unhashed.encode_to_vec());
    h.finalize().into()
}

impl Log {
    /// Opens (or creates) the log in `path` with the deadline `policy`. Views
    /// depend on the policy: every node reading one stream must use the same.
    pub fn open(path: &Path, policy: Policy) -> Result<Log> {
        Log::open_with(path, policy, StoreOptions::default())
    }

    /// `open` with storage settings (sled's cache size).
    ///
    /// Damaged files are an `Error::Damaged` naming the directory, never a
    /// panic. The newest entries are checked against the checkpoint (a log
    /// that claims entries it no longer holds is damaged), and the log is
    /// compared with its high-water mark: a log below it is `behind` until
    /// it has read the lost tail from the stream again.
    pub fn open_with(path: &Path, policy: Policy, options: StoreOptions) -> Result<Log> {
        Log::open_checked(path, policy, options).map_err(|e| match e {
            // sled finds some damage only when a record is first read.
            Error::Storage(sled::Error::Corruption { at, .. }) => Error::Damaged {
                path: path.display().to_string(),
                detail: match at {
                    Some(at) => format!("sled reports corruption at {at:?} while reading it"),
                    None => "sled reports corruption while reading it".into(),
                },
            },
            e => e,
        })
    }

    fn open_checked(path: &Path, policy: Policy, options: StoreOptions) -> Result<Log> {
        let store = Arc::new(Store::open(path, options)?);
        let tree = store.handles()?.log;
        let checkpoint = store::guard(path, || read_checkpoint(&tree))?;
        let high_water = HighWater::read(path)?;
        let below_mark = high_water.as_ref().is_some_and(|hw| {
            hw.global_sequence > checkpoint.global_sequence
                || hw.stream_sequence > checkpoint.stream_sequence
        });
        // Below its high-water mark, derived records may be from any moment
        // (see `repair_to_checkpoint`); the tail is judged after the repair.
        let damage = if below_mark {
            None
        } else {
            tail_damage(path, &tree, &checkpoint)?
        };
        drop(tree);
        let behind = high_water
            .as_ref()
            .filter(|hw| {
                hw.global_sequence > checkpoint.global_sequence
                    || hw.stream_sequence > checkpoint.stream_sequence
            })
            .map(|hw| Behind {
                have: checkpoint.global_sequence,
                vouched: hw.global_sequence,
                vouched_stream_sequence: hw.stream_sequence,
            });
        if let Some(b) = &behind {
            tracing::error!(data_dir = %path.display(), "{b}");
        }
        let access = store::guard(path, || AccessLog::open(store.clone()))?;
        let log = Log {
            inner: Arc::new(Inner {
                access,
                store,
                issuing: Mutex::new(()),
                policy,
                writer: Mutex::new(checkpoint.clone()),
                published: Mutex::new(checkpoint),
                high_water: Mutex::new(high_water),
                behind: Mutex::new(behind),
                damage: Mutex::new(damage),
                frontier: Mutex::new(None),
            }),
        };
        if log.behind().is_none() {
            log.check_high_water()?;
        }
        Ok(log)
    }

    /// Before a log below its high-water mark reads the stream again: makes
    /// the store what a log that stopped at its checkpoint would hold
    /// ([`Log::repair_to_checkpoint`]), then checks the newest entries as
    /// `open` does. sled's older state is not a prefix of the log (pages of
    /// one tree survive from different moments), so only the checkpoint and
    /// the entries up to it are taken as they are. What cannot be repaired
    /// is damage: the log then refuses to grow ([`Log::damage`]). Does
    /// nothing for a log that is not behind. `serve` calls it; offline
    /// commands leave the directory as it is.
    pub fn prepare_catch_up(&self) -> Result<()> {
        if self.behind().is_none() || self.damage().is_some() {
            return Ok(());
        }
        let path = self.path().to_owned();
        let found = match store::guard(&path, || self.repair_to_checkpoint()) {
            Ok(_) => tail_damage(&path, &self.log_tree()?, &self.checkpoint())?,
            Err(e @ (Error::Corruption { .. } | Error::Damaged { .. })) => {
                let e = damaged(&path, e);
                tracing::error!(data_dir = %path.display(), "{e}; the node does not write to it");
                Some(e.to_string())
            }
            Err(e) => return Err(e),
        };
        *self.inner.damage.lock().unwrap_or_else(|p| p.into_inner()) = found;
        Ok(())
    }

    fn handles(&self) -> Result<store::Handles> {
        self.inner.store.handles()
    }

    fn log_tree(&self) -> Result<sled::Tree> {
        Ok(self.handles()?.log)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        self.inner.store.path()
    }

    /// Why the store cannot write, while it cannot (disk full, I/O error):
    /// the node reports not-ready with this reason until `reopen` worked.
    pub fn storage_failure(&self) -> Option<String> {
        self.inner.store.failure()
    }

    /// Damage found among the newest entries at open: the log refuses to
    /// grow; restore the directory or re-seed it from the stream.
    pub fn damage(&self) -> Option<String> {
        self.inner
            .damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set while the log is below what the node had already receipted or
    /// signed.
    pub fn behind(&self) -> Option<Behind> {
        self.inner
            .behind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drops sled's handles and opens the data directory again, the way to
    /// recover from an I/O error (sled keeps its first one for good). Waits
    /// for the group being written and holds off access records meanwhile;
    /// the checkpoint is read again from disk (a group whose flush failed
    /// may be gone, and is read from the stream again).
    pub fn reopen(&self) -> Result<()> {
        let mut cp = self.writer();
        let store = self.inner.store.clone();
        self.inner.access.while_reopening(|| store.reopen())?;
        let now = read_checkpoint(&self.log_tree()?)?;
        *cp = now.clone();
        *self
            .inner
            .published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = now;
        Ok(())
    }

    /// Makes the store writable again after a disk failure: reopens it
    /// and checks it can flush. Ok at once when nothing failed.
    pub fn recover(&self) -> Result<()> {
        if self.storage_failure().is_none() {
            return Ok(());
        }
        self.reopen()
    }

    /// Raises the high-water mark to `checkpoint` (written and fsynced in its
    /// own file) unless it is there already. Call it before sending
    /// receipts up to the checkpoint or signing a checkpoint of the tree.
    pub fn raise_high_water(&self, checkpoint: &Checkpoint) -> Result<()> {
        let mut hw = self
            .inner
            .high_water
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if hw.as_ref().is_some_and(|h| {
            h.global_sequence >= checkpoint.global_sequence
                && h.stream_sequence >= checkpoint.stream_sequence
        }) {
            return Ok(());
        }
        let next = HighWater::of(checkpoint);
        next.write(self.path())?;
        *hw = Some(next);
        Ok(())
    }

    /// Once the log has reached its high-water mark, checks that the entry
    /// there is the one the node vouched for, and clears `behind`.
    fn check_high_water(&self) -> Result<()> {
        let Some(hw) = self
            .inner
            .high_water
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let cp = self.checkpoint();
        if cp.global_sequence < hw.global_sequence || cp.stream_sequence < hw.stream_sequence {
            return Ok(());
        }
        if hw.global_sequence > 0 {
            let entry = self.entry(hw.global_sequence)?;
            if entry.as_ref().map(|e| e.hash.as_slice()) != Some(&hw.last_hash[..]) {
                return Err(Error::Damaged {
                    path: self.path().display().to_string(),
                    detail: format!(
                        "entry {} is not the one this node receipted or signed (high-water mark hash {})",
                        hw.global_sequence,
                        hex::encode(hw.last_hash)
                    ),
                });
            }
        }
        let mut behind = self.inner.behind.lock().unwrap_or_else(|p| p.into_inner());
        if behind.take().is_some() {
            tracing::info!(
                global_sequence = hw.global_sequence,
                "the log has caught up with its high-water mark again"
            );
        }
        Ok(())
    }

    /// The access log: who read what. Every clone appends to one chain.
    pub fn access_log(&self) -> AccessLog {
        self.inner.access.clone()
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The checkpoint as of the last flushed group. Never waits for a group
    /// being written.
    pub fn checkpoint(&self) -> Checkpoint {
        self.inner
            .published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn writer(&self) -> MutexGuard<'_, Checkpoint> {
        // A panic while holding the lock cannot leave a half-written group:
        // the checkpoint is only replaced after the batch is flushed.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a group of messages in stream order: validates each against
    /// the current views, then writes every accepted entry, index, dedup
    /// entry, view, rejection and duplicate record and the new checkpoint in
    /// one atomic batch, and flushes it before returning. Messages at or below
    /// the checkpoint are reported as already processed and change nothing.
    ///
    /// Personal values are sealed with the keys in `keys` before the entry
    /// is hashed; a missing key is an error (`Error::KeyUnavailable`) and
    /// nothing is written, so the caller can fetch it and try again.
    pub fn append_group(&self, group: &[Incoming], keys: &GroupKeys) -> Result<GroupReport> {
        if let Some(damage) = self.damage() {
            return Err(Error::Unwritable { reason: damage });
        }
        let mut cp = self.writer();
        self.check_layout(&cp)?;
        // A log written before it kept a Merkle tree (or one whose tree was
        // damaged) must be rebuilt before it grows: the frontier says so
        // before anything.
        let frontier = self.frontier(&cp)?;
        let mut work = Group::new(self, self.log_tree()?, cp.clone(), keys, frontier);
        let mut outcomes = Vec::with_capacity(group.len());
        for msg in group {
            let outcome = work.process(msg)?;
            outcomes.push((msg.stream_sequence, outcome));
        }
        let receipts = std::mem::take(&mut work.receipts);
        let (batch, next, frontier) = work.finish();
        if next != *cp {
            let (store, h) = (&self.inner.store, self.handles()?);
            store.note(h.log.apply_batch(batch))?;
            store.note(h.db.flush())?;
            *self
                .inner
                .frontier
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                Some((next.global_sequence, next.last_hash.clone(), frontier));
            *cp = next;
            *self
                .inner
                .published
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = cp.clone();
        }
        let checkpoint = cp.clone();
        drop(cp);
        if self.behind().is_some() {
            self.check_high_water()?;
        }
        Ok(GroupReport {
            outcomes,
            checkpoint,
            receipts,
        })
    }

    /// The Merkle tree's right frontier at the checkpoint `cp`: the one
    /// kept after the last group when it belongs to `cp`, else computed
    /// from the rightmost stored tiles (after a start, a rebuild, a repair).
    fn frontier(&self, cp: &Checkpoint) -> Result<Frontier> {
        if let Some((size, last, f)) = &*self
            .inner
            .frontier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            && *size == cp.global_sequence
            && *last == cp.last_hash
        {
            return Ok(f.clone());
        }
        tiles::frontier(&tiles::Stored::new(&self.log_tree()?), cp.global_sequence)
    }

    /// The keys `append_group` will need for this group: cases with
    /// personal values in a well-formed event whose case's personal data is
    /// not restricted or erased (those are refused, and must not get a new
    /// key), and whether any opening names a person.
    pub fn keys_needed(&self, group: &[Incoming]) -> Result<KeysNeeded> {
        let mut needed = KeysNeeded::default();
        let cp = self.checkpoint();
        for msg in group {
            if msg.stream_sequence <= cp.stream_sequence {
                continue;
            }
            let event = match envelope(msg) {
                Ok(event) => event,
                Err(refused) => {
                    // Bytes kept from a rejection on a case's subject are
                    // sealed under that case's key, unless its personal
                    // data is already erased (then nothing is kept).
                    if let Some(case) = raw_case(msg, &refused)
                        && !needed.cases.contains(&case)
                        && self.case_view(&case)?.is_none_or(|v| !is_erased(&v))
                    {
                        needed.cases.push(case);
                    }
                    continue;
                }
            };
            if person_key(&event).is_some() {
                needed.index = true;
            }
            if needed.cases.contains(&event.case_id)
                || !lianxi_domain::personal::has_personal(&event)
            {
                continue;
            }
            let active = match self.case_view(&event.case_id)? {
                Some(v) => {
                    lianxi_domain::personal::state_of(v.personal_data)
                        == lianxi_proto::v1::PersonalDataState::Active
                }
                None => true,
            };
            if active {
                needed.cases.push(event.case_id.clone());
            }
        }
        Ok(needed)
    }

    /// The current view of a case.
    pub fn case_view(&self, case_id: &str) -> Result<Option<CaseView>> {
        read_view(&self.log_tree()?, case_id)
    }

    /// One entry by global sequence.
    pub fn entry(&self, global_sequence: u64) -> Result<Option<LogEntry>> {
        read_entry(&self.log_tree()?, global_sequence)
    }

    /// Entries of one case with a case sequence above `after`, at most `limit`.
    pub fn case_entries(&self, case_id: &str, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let tree = &self.log_tree()?;
        let mut out = Vec::new();
        let mut case_seq = after.saturating_add(1);
        'records: while out.len() < limit {
            let Some(record) = tree.get(packed::case_key(case_id, case_seq))? else {
                break;
            };
            loop {
                if out.len() >= limit {
                    break 'records;
                }
                let Some(g) = packed::get(&record, packed::case_slot(case_seq)) else {
                    break 'records;
                };
                let entry = read_entry(tree, g)?.ok_or_else(|| Error::Corruption {
                    at: Location::Entry(g),
                    detail: format!("indexed by case {case_id} but missing"),
                })?;
                out.push(entry);
                case_seq = case_seq.saturating_add(1);
                if packed::case_slot(case_seq) == 0 {
                    continue 'records;
                }
            }
        }
        Ok(out)
    }

    /// Log entries with a global sequence above `after`, at most `limit`.
    pub fn entries(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let start = keys::seq(keys::ENTRY, after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.log_tree()?.range(start..) {
            let (k, v) = item?;
            if k.first() != Some(&keys::ENTRY) || out.len() >= limit {
                break;
            }
            out.push(decode_entry(&k, &v)?);
        }
        Ok(out)
    }

    /// The view of a case as it stood after the last of its entries that
    /// passes `upto` (entries are offered in order; replay stops at the first
    /// that does not pass), rebuilt from the log through the per-case index.
    /// Returns the view, the global sequence of the last entry applied and
    /// how many were applied; None if no entry passed.
    pub fn case_as_of(
        &self,
        case_id: &str,
        upto: impl Fn(&LogEntry) -> bool,
    ) -> Result<Option<(CaseView, u64, u64)>> {
        let mut view: Option<CaseView> = None;
        let mut last = 0;
        let mut applied = 0;
        let mut after = 0;
        loop {
            let chunk = self.case_entries(case_id, after, 512)?;
            let done = chunk.len() < 512;
            for entry in chunk {
                if !upto(&entry) {
                    return Ok(view.map(|v| (v, last, applied)));
                }
                after = entry.case_sequence;
                view = Some(self.replay(view, &entry)?);
                last = entry.global_sequence;
                applied += 1;
            }
            if done {
                return Ok(view.map(|v| (v, last, applied)));
            }
        }
    }

    /// The view after one stored entry, applied to the view before it, with
    /// the person index as it stood then: one replay step for
    /// [`Log::case_as_of`] and [`Log::case_views_through`].
    fn replay(&self, view: Option<CaseView>, entry: &LogEntry) -> Result<CaseView> {
        let event = entry.event.clone().unwrap_or_default();
        let prior = match entry_person(entry) {
            Some(p) => self.prior_before(&p, entry.global_sequence)?,
            None => None,
        };
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
        Ok(lianxi_domain::apply(&ctx, view, &event, &meta))
    }

    /// Replays a case from its first entry through the entry with global
    /// sequence `through`, calling `each` with every entry and the view
    /// right after it (what [`Log::case_as_of`] returns for that entry), in
    /// order. One pass for the views after many entries of one case (a
    /// watch sends each change with the view after it).
    pub fn case_views_through(
        &self,
        case_id: &str,
        through: u64,
        mut each: impl FnMut(&LogEntry, &CaseView),
    ) -> Result<()> {
        let mut view: Option<CaseView> = None;
        let mut after = 0;
        loop {
            let chunk = self.case_entries(case_id, after, 512)?;
            let done = chunk.len() < 512;
            for entry in chunk {
                if entry.global_sequence > through {
                    return Ok(());
                }
                after = entry.case_sequence;
                let next = self.replay(view, &entry)?;
                each(&entry, &next);
                view = Some(next);
            }
            if done {
                return Ok(());
            }
        }
    }

    /// The person's latest case opened before `global_sequence`.
    fn prior_before(&self, person: &str, global_sequence: u64) -> Result<Option<PriorCase>> {
        let start = keys::person_history_prefix(person);
        let end = keys::person_history(person, global_sequence);
        match self.log_tree()?.range(start..end).next_back() {
            // An erasure ends the person's link to the erased case.
            Some(Ok((_, v))) if v.is_empty() => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                decode_prior(&v).map(Some).ok_or_else(|| Error::Corruption {
                    at: Location::Key(hex::encode(&k)),
                    detail: "person history record is malformed".into(),
                })
            }
            None => Ok(None),
        }
    }

    /// Every stored view, decoded, in case-id order.
    pub fn views(&self) -> Result<Vec<CaseView>> {
        let mut out = Vec::new();
        for item in self.log_tree()?.scan_prefix([keys::VIEW]) {
            let (k, v) = item?;
            out.push(CaseView::decode(v.as_ref()).map_err(|e| Error::Corruption {
                at: Location::View(String::from_utf8_lossy(&k[1..]).into_owned()),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Views of cases with an id after `after`, in case-id order, at most
    /// `limit` per call; the id order makes a stable cursor.
    pub fn views_after(&self, after: &str, limit: usize) -> Result<Vec<CaseView>> {
        let mut start = keys::named(keys::VIEW, after);
        start.push(0);
        let mut out = Vec::new();
        for item in self.log_tree()?.range(start..) {
            let (k, v) = item?;
            if k.first() != Some(&keys::VIEW) || out.len() >= limit {
                break;
            }
            out.push(CaseView::decode(v.as_ref()).map_err(|e| Error::Corruption {
                at: Location::View(String::from_utf8_lossy(&k[1..]).into_owned()),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Every stored view, in case-id order, as stored bytes.
    pub fn view_bytes(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.log_tree()?.scan_prefix([keys::VIEW]) {
            let (k, v) = item?;
            let case = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((case, v.to_vec()));
        }
        Ok(out)
    }

    /// Rejected messages, in stream order, after `after_stream_sequence`.
    pub fn rejections(
        &self,
        after_stream_sequence: u64,
        limit: usize,
    ) -> Result<Vec<RejectionRecord>> {
        self.records(keys::REJECTION, after_stream_sequence, limit)
    }

    /// Duplicate messages, in stream order, after `after_stream_sequence`.
    pub fn duplicates(
        &self,
        after_stream_sequence: u64,
        limit: usize,
    ) -> Result<Vec<DuplicateRecord>> {
        self.records(keys::DUPLICATE, after_stream_sequence, limit)
    }

    /// Records keyed by stream sequence under `prefix`, in order.
    fn records<M: Message + Default>(
        &self,
        prefix: u8,
        after: u64,
        limit: usize,
    ) -> Result<Vec<M>> {
        let start = keys::seq(prefix, after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.log_tree()?.range(start..) {
            let (k, v) = item?;
            if k.first() != Some(&prefix) || out.len() >= limit {
                break;
            }
            out.push(M::decode(v.as_ref()).map_err(|e| Error::Corruption {
                at: Location::Key(hex::encode(&k)),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// The receipt for the message at `stream_sequence`, if the node has
    /// processed it (None past the checkpoint, or for a sequence the stream
    /// never handed out).
    pub fn receipt(&self, stream_sequence: u64) -> Result<Option<Receipt>> {
        let tree = &self.log_tree()?;
        if let Some(g) = tree
            .get(packed::by_stream_key(stream_sequence))?
            .and_then(|r| packed::get(&r, stream_sequence % packed::SLOTS))
        {
            let entry = read_entry(tree, g)?.ok_or_else(|| Error::Corruption {
                at: Location::Entry(g),
                detail: format!("stream sequence {stream_sequence} points at a missing entry"),
            })?;
            return Ok(Some(receipts::accepted(&entry)));
        }
        if let Some(b) = tree.get(keys::seq(keys::DUPLICATE, stream_sequence))? {
            let d = DuplicateRecord::decode(b.as_ref()).map_err(|e| Error::Corruption {
                at: Location::Key(hex::encode(keys::seq(keys::DUPLICATE, stream_sequence))),
                detail: e.to_string(),
            })?;
            let case_id = read_entry(tree, d.original_global_sequence)?
                .and_then(|e| e.event)
                .map(|e| e.case_id)
                .unwrap_or_default();
            return Ok(Some(receipts::duplicate(&d, case_id)));
        }
        if let Some(b) = tree.get(keys::seq(keys::REJECTION, stream_sequence))? {
            let r = RejectionRecord::decode(b.as_ref()).map_err(|e| Error::Corruption {
                at: Location::Key(hex::encode(keys::seq(keys::REJECTION, stream_sequence))),
                detail: e.to_string(),
            })?;
            return Ok(Some(receipts::rejected(&r)));
        }
        Ok(None)
    }

    /// The outcome for one agency's event id: the accepted entry if there
    /// is one (a re-sent copy is answered with the original), else its
    /// latest rejection. Event ids are each agency's own: another agency's
    /// event with the same id is never found.
    pub fn receipt_for_event(&self, agency: Agency, event_id: &str) -> Result<Option<Receipt>> {
        self.check_layout(&self.checkpoint())?;
        let tree = &self.log_tree()?;
        if let Some(g) = tree
            .get(keys::scoped(keys::DEDUP, agency, event_id))?
            .as_deref()
            .and_then(keys::be_u64)
        {
            return Ok(read_entry(tree, g)?.map(|e| receipts::accepted(&e)));
        }
        match tree
            .get(keys::scoped(keys::REJECTED_ID, agency, event_id))?
            .as_deref()
            .and_then(keys::be_u64)
        {
            Some(seq) => self.receipt(seq),
            None => Ok(None),
        }
    }

    /// Refuses a data directory written with another storage layout: its
    /// duplicate and lookup indexes would be misread (an old `D` key is
    /// never found under the agency-scoped key, so a re-sent event would be
    /// applied twice and a lookup would say "not found, safe to publish").
    ///
    /// `append_group` and `receipt_for_event` check it on every call; a
    /// node may call [`Log::check_storage_layout`] right after opening to
    /// refuse at start.
    fn check_layout(&self, cp: &Checkpoint) -> Result<()> {
        let tree = &self.log_tree()?;
        match tree.get(keys::LAYOUT)? {
            Some(v) if v.as_ref() == [keys::LAYOUT_VERSION] => Ok(()),
            Some(v) if v.as_ref() == [keys::LAYOUT_NODES] => Err(Error::Layout {
                detail: format!(
                    "the data directory has storage layout {} (the Merkle tree one record per node), and this lianxi keeps the tree as tiles (layout {}); start `lianxi serve` on it, or run `lianxi rebuild` once, and the tree is rewritten from the entries (everything else is kept)",
                    keys::LAYOUT_NODES,
                    keys::LAYOUT_VERSION
                ),
            }),
            Some(v) => Err(Error::Layout {
                detail: format!(
                    "the data directory has storage layout {}, and this lianxi reads layout {}; run the lianxi version that wrote it, or start this one on an empty data directory (it reads the events stream again from the start)",
                    v.first().copied().unwrap_or(0),
                    keys::LAYOUT_VERSION
                ),
            }),
            None if cp.stream_sequence == 0
                && cp.global_sequence == 0
                && tree.scan_prefix([keys::DEDUP]).next().is_none() =>
            {
                Ok(())
            }
            None => Err(Error::Layout {
                detail: format!(
                    "the data directory was written by a lianxi from before event ids were scoped by agency (storage layout 1); this version reads layout {} and would misread its duplicate and lookup indexes, so it refuses to use it. Move the directory aside and start the node on an empty one: it reads the events stream again from the start and rebuilds the log (or keep running the older lianxi on it)",
                    keys::LAYOUT_VERSION
                ),
            }),
        }
    }

    /// Upgrades a data directory of storage layout 2 (the Merkle tree one
    /// record per node) in place: `rebuild` rewrites the tree as tiles from
    /// the entries. The rebuild's report when it did; nothing for any other
    /// layout.
    pub fn upgrade_storage_layout(&self) -> Result<Option<RebuildReport>> {
        let nodes = self
            .log_tree()?
            .get(keys::LAYOUT)?
            .is_some_and(|v| v.as_ref() == [keys::LAYOUT_NODES]);
        if !nodes {
            return Ok(None);
        }
        // `rebuild` derives the packed indexes and the tiles from the
        // entries, removes layout 2's records and moves the marker on; it
        // can be run again after a crash.
        let report = self.rebuild()?;
        tracing::info!(
            data_dir = %self.path().display(),
            entries = report.entries,
            "storage layout {} upgraded to {}: the Merkle tree is kept as tiles",
            keys::LAYOUT_NODES,
            keys::LAYOUT_VERSION
        );
        Ok(Some(report))
    }

    /// `Err(Error::Layout)`, saying what to do, when the data directory was
    /// written with another storage layout than this version's (see
    /// ARCHITECTURE.md, "Storage layout").
    pub fn check_storage_layout(&self) -> Result<()> {
        self.check_layout(&self.checkpoint())
    }

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

    /// Checks the whole log: dense global and case sequences, each entry's
    /// hash and its link to the previous one, the per-case index and dedup
    /// index pointing at the right entries, every stored Merkle tree node
    /// against the entries (and none past them), and the checkpoint at the
    /// end.
    pub fn verify(&self) -> Result<VerifyReport> {
        let tree = &self.log_tree()?;
        let mut prev = [0u8; 32];
        let mut expected = 1u64;
        let mut case_seqs: HashMap<String, u64> = HashMap::new();
        let mut frontier = Frontier::default();
        let mut edge = Edge::default();
        for item in tree.scan_prefix([keys::ENTRY]) {
            let (k, v) = item?;
            let entry = decode_entry(&k, &v)?;
            let at = Location::Entry(expected);
            let corrupt = |detail: String| Error::Corruption {
                at: at.clone(),
                detail,
            };
            if entry.global_sequence != expected {
                return Err(corrupt(format!(
                    "expected global sequence {expected}, found {}",
                    entry.global_sequence
                )));
            }
            if entry.prev_hash != prev {
                return Err(corrupt(format!(
                    "previous-hash link broken: entry says {}, previous entry hashes to {}",
                    hex::encode(&entry.prev_hash),
                    hex::encode(prev)
                )));
            }
            let hash = entry_hash(&entry);
            if entry.hash != hash {
                return Err(corrupt(format!(
                    "content does not match its hash: stored {}, computed {}",
                    hex::encode(&entry.hash),
                    hex::encode(hash)
                )));
            }
            let event = entry
                .event
                .as_ref()
                .ok_or_else(|| corrupt("no event".into()))?;
            let case_seq = case_seqs.entry(event.case_id.clone()).or_insert(0);
            *case_seq += 1;
            if entry.case_sequence != *case_seq {
                return Err(corrupt(format!(
                    "expected case sequence {} of case {}, found {}",
                    case_seq, event.case_id, entry.case_sequence
                )));
            }
            let indexed = tree
                .get(packed::case_key(&event.case_id, *case_seq))?
                .and_then(|r| packed::get(&r, packed::case_slot(*case_seq)));
            if indexed != Some(expected) {
                return Err(Error::Corruption {
                    at: Location::CaseIndex(event.case_id.clone(), *case_seq),
                    detail: format!("does not point at entry {expected}"),
                });
            }
            let dedup = tree.get(keys::scoped(keys::DEDUP, agency_of(event), &event.event_id))?;
            if dedup.as_deref().and_then(keys::be_u64) != Some(expected) {
                return Err(Error::Corruption {
                    at: Location::Dedup(event.event_id.clone()),
                    detail: format!("does not point at entry {expected}"),
                });
            }
            edge.add(&frontier.push(merkle::leaf_hash(&hash))?, |_, _| Ok(None))?;
            for ((level, index), computed) in edge.take_full() {
                check_tile(tree, level, index, &computed)?;
            }
            prev = hash;
            expected += 1;
        }
        let entries = expected - 1;
        let cp = self.checkpoint();
        if cp.global_sequence != entries || cp.last_hash != prev {
            return Err(Error::Corruption {
                at: Location::Checkpoint,
                detail: format!(
                    "checkpoint says {} entries ending in {}, the log has {} ending in {}",
                    cp.global_sequence,
                    hex::encode(&cp.last_hash),
                    entries,
                    hex::encode(prev)
                ),
            });
        }
        for ((level, index), computed) in edge.into_tiles() {
            check_tile(tree, level, index, &computed)?;
        }
        // No tile may hold nodes past the last entry, and no record of the
        // older one-record-per-node tree may be left.
        for item in tree.scan_prefix([keys::TILE]) {
            let (k, _) = item?;
            let Some((level, index)) = keys::parse_tile(&k) else {
                return Err(Error::Corruption {
                    at: Location::Key(hex::encode(&k)),
                    detail: "not a Merkle tile key".into(),
                });
            };
            if tiles::expected_width(entries, level, index) == 0 {
                return Err(Error::Corruption {
                    at: Location::Tile(level, index),
                    detail: format!("covers leaves past the log's {entries} entries"),
                });
            }
        }
        if let Some(item) = tree.scan_prefix([keys::TREE]).next() {
            let (k, _) = item?;
            return Err(Error::Corruption {
                at: Location::Key(hex::encode(&k)),
                detail: "a Merkle node record of storage layout 2 is left beside the tiles; run `lianxi rebuild`".into(),
            });
        }
        Ok(VerifyReport {
            entries,
            cases: case_seqs.len() as u64,
            last_hash: prev,
            root: frontier.root(),
        })
    }

    /// The number of leaves in the Merkle tree: the global sequence of the
    /// checkpoint (leaf `g - 1` is the entry with global sequence `g`).
    pub fn tree_size(&self) -> u64 {
        self.checkpoint().global_sequence
    }

    /// The RFC 6962 Merkle tree hash of the first `size` entries (the empty
    /// tree's root, SHA-256 of the empty string, for 0), from O(log n)
    /// stored subtrees. `OutOfRange` past `tree_size`.
    pub fn root(&self, size: u64) -> Result<[u8; 32]> {
        merkle::root(
            &tiles::Stored::new(&self.log_tree()?),
            size,
            self.tree_size(),
        )
    }

    /// The inclusion proof (RFC 9162 §2.1.3.1 audit path) of leaf
    /// `leaf_index` (the entry with global sequence `leaf_index + 1`) in the
    /// tree of the first `size` entries. `OutOfRange` unless
    /// `leaf_index < size <= tree_size`.
    pub fn inclusion_proof(&self, leaf_index: u64, size: u64) -> Result<Vec<[u8; 32]>> {
        merkle::inclusion_proof(
            &tiles::Stored::new(&self.log_tree()?),
            leaf_index,
            size,
            self.tree_size(),
        )
    }

    /// The consistency proof (RFC 9162 §2.1.4.1) that the tree of the first
    /// `new` entries extends the tree of the first `old`. `OutOfRange`
    /// unless `1 <= old <= new <= tree_size`; `old == new` gives an empty
    /// proof.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        merkle::consistency_proof(
            &tiles::Stored::new(&self.log_tree()?),
            old,
            new,
            self.tree_size(),
        )
    }

    /// The raw tree, for tests in this crate that tamper with storage.
    #[cfg(test)]
    pub(crate) fn tree(&self) -> sled::Tree {
        self.log_tree().expect("the store is open")
    }

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

    /// Hooks that damage the stored log on purpose, for the tamper tests
    /// (tests/tamper.rs) only: the node never calls them. They stand for an
    /// operator or intruder editing the sled files of a stopped node.
    #[doc(hidden)]
    pub fn tamper(&self) -> Tamper<'_> {
        Tamper { log: self }
    }
}

fn decode_stored_checkpoint(k: &[u8], v: &[u8]) -> Result<StoredCheckpoint> {
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

/// Deliberate damage to a stopped node's storage, for the tamper tests only
/// (see [`Log::tamper`]). Not part of the node's API.
#[doc(hidden)]
pub struct Tamper<'a> {
    log: &'a Log,
}

impl Tamper<'_> {
    fn tree(&self) -> Result<sled::Tree> {
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

/// The in-memory state of one group being built: an overlay over the tree,
/// so that later events in the group see earlier ones.
struct Group<'a> {
    log: &'a Log,
    tree: sled::Tree,
    cp: Checkpoint,
    batch: sled::Batch,
    views: HashMap<String, CaseView>,
    /// Accepted in this group: (agency, event id) -> global sequence.
    dedup: HashMap<(Agency, String), u64>,
    /// Person index changes: the person's latest case, or `None` when an
    /// erasure removed it.
    persons: HashMap<String, Option<PriorCase>>,
    /// The person token of openings applied in this group, by case.
    case_persons: HashMap<String, String>,
    /// Accepted in this group, by (agency, event id), for corrections.
    events: HashMap<(Agency, String), Event>,
    keys: &'a GroupKeys,
    /// The Merkle tree's right frontier, as of the group's last entry.
    frontier: Frontier,
    /// The tiles the group's entries change.
    edge: Edge,
    /// The packed index records (by case, by stream) the group changes.
    index: packed::Records,
    /// The receipt of each message processed, in order.
    receipts: Vec<Receipt>,
}

impl<'a> Group<'a> {
    fn new(
        log: &'a Log,
        tree: sled::Tree,
        cp: Checkpoint,
        keys: &'a GroupKeys,
        frontier: Frontier,
    ) -> Self {
        Group {
            log,
            tree,
            cp,
            batch: sled::Batch::default(),
            views: HashMap::new(),
            dedup: HashMap::new(),
            persons: HashMap::new(),
            case_persons: HashMap::new(),
            events: HashMap::new(),
            keys,
            frontier,
            edge: Edge::default(),
            index: packed::Records::default(),
            receipts: Vec::new(),
        }
    }

    fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    fn finish(mut self) -> (sled::Batch, Checkpoint, Frontier) {
        // Views are written once per group, not once per event.
        for (case, view) in &self.views {
            self.batch
                .insert(keys::named(keys::VIEW, case), view.encode_to_vec());
        }
        for (person, prior) in &self.persons {
            let key = keys::named(keys::PERSON, person);
            match prior {
                Some(p) => self.batch.insert(key, encode_prior(p)),
                None => self.batch.remove(key),
            }
        }
        self.batch.insert(keys::CHECKPOINT, self.cp.encode_to_vec());
        self.batch.insert(keys::LAYOUT, &[keys::LAYOUT_VERSION]);
        std::mem::take(&mut self.edge).write(&mut self.batch);
        std::mem::take(&mut self.index).write(&mut self.batch);
        (self.batch, self.cp, self.frontier)
    }

    fn process(&mut self, msg: &Incoming) -> Result<EventOutcome> {
        if msg.stream_sequence <= self.cp.stream_sequence {
            return Ok(EventOutcome::AlreadyProcessed);
        }
        self.cp.stream_sequence = msg.stream_sequence;
        // Order matters: an event that decodes and is well-formed is first
        // looked up by id, so a re-sent event is a duplicate (pointing at the
        // original) rather than a rule violation against the later state.
        let checked = match envelope(msg) {
            Ok(event) => match self.dedup_lookup(agency_of(&event), &event.event_id)? {
                Some(original) => return self.duplicate(msg, event, original),
                None => self.decide(event)?,
            },
            Err(rejected) => Err(rejected),
        };
        match checked {
            Ok(event) => self.accept(msg, event),
            Err(refused) => {
                let (event, rejection) = *refused;
                self.reject(msg, event, rejection)
            }
        }
    }

    fn duplicate(&mut self, msg: &Incoming, event: Event, original: u64) -> Result<EventOutcome> {
        // The receipt names the original's case, as `Log::receipt` does.
        let case_id = match self
            .events
            .get(&(agency_of(&event), event.event_id.clone()))
        {
            Some(e) => e.case_id.clone(),
            None => read_entry(self.tree(), original)?
                .and_then(|e| e.event)
                .map(|e| e.case_id)
                .unwrap_or_default(),
        };
        let record = DuplicateRecord {
            stream_sequence: msg.stream_sequence,
            subject: msg.subject.clone(),
            recorded_at: Some(msg.recorded_at),
            event_id: event.event_id.clone(),
            original_global_sequence: original,
        };
        self.batch.insert(
            &keys::seq(keys::DUPLICATE, msg.stream_sequence),
            record.encode_to_vec(),
        );
        self.receipts.push(receipts::duplicate(&record, case_id));
        Ok(EventOutcome::Duplicate {
            event_id: event.event_id,
            original_global_sequence: original,
        })
    }

    fn reject(
        &mut self,
        msg: &Incoming,
        event: Option<Event>,
        rejection: Rejection,
    ) -> Result<EventOutcome> {
        // A rejection keeps no personal values in the clear: an event that
        // decoded (in this node's schema) is kept re-encoded with them
        // emptied; other bytes are kept sealed under the key of the case
        // their subject names (so an erasure erases them too), as nothing
        // if that case is already erased, and as they came only when the
        // subject names no case.
        let original = event.is_none() || rejection.code == RejectionCode::SchemaNewer;
        let cut = &msg.payload[..msg.payload.len().min(MAX_EVENT_BYTES)];
        let (mut raw, mut sealed_raw, mut raw_withheld) = (Vec::new(), None, false);
        match (&event, original, subject_case(&msg.subject)) {
            (Some(e), false, _) => {
                let mut e = e.clone();
                lianxi_crypto::strip(&mut e);
                raw = e.encode_to_vec();
            }
            (_, _, Some(case)) => {
                if self.view(&case)?.is_some_and(|v| is_erased(&v)) {
                    raw_withheld = true;
                } else {
                    let key = self.keys.case(&case)?;
                    sealed_raw = Some(seal_raw(&key, &case, msg.stream_sequence, cut));
                }
            }
            (_, _, None) => raw = cut.to_vec(),
        }
        let reason = lianxi_domain::printable(&rejection.reason, lianxi_domain::MAX_REASON_CHARS);
        let record = RejectionRecord {
            stream_sequence: msg.stream_sequence,
            subject: msg.subject.clone(),
            recorded_at: Some(msg.recorded_at),
            code: rejection.code as i32,
            reason: reason.clone(),
            raw,
            event_id: event
                .as_ref()
                .map(|e| echo_id(&e.event_id))
                .unwrap_or_default(),
            case_id: event
                .as_ref()
                .map(|e| echo_id(&e.case_id))
                .unwrap_or_default(),
            raw_len: msg.payload.len() as u64,
            sealed_raw,
            raw_withheld,
        };
        tracing::info!(
            stream_sequence = msg.stream_sequence,
            subject = %lianxi_domain::printable(&msg.subject, ECHO_SUBJECT_CHARS),
            code = ?rejection.code,
            reason = %reason,
            "event rejected"
        );
        self.batch.insert(
            &keys::seq(keys::REJECTION, msg.stream_sequence),
            record.encode_to_vec(),
        );
        self.receipts.push(receipts::rejected(&record));
        // The lookup index: only the subject's agency may ask, and only
        // about a well-formed id.
        if let Some(agency) = lianxi_domain::subject_agency(&msg.subject)
            && lianxi_domain::is_event_id(&record.event_id)
        {
            self.batch.insert(
                keys::scoped(keys::REJECTED_ID, agency, &record.event_id),
                &msg.stream_sequence.to_be_bytes(),
            );
        }
        Ok(EventOutcome::Rejected {
            event_id: event.map(|_| record.event_id),
            code: rejection.code,
            reason,
        })
    }

    /// The state rules. The outer `Result` is a storage failure.
    fn decide(&mut self, event: Event) -> Result<Checked> {
        let view = self.view(&event.case_id)?;
        // Only the agency's own events can be corrected (DOMAIN.md: a
        // correction names an earlier event of the same agency), and event
        // ids are each agency's own: look up (own agency, id), so another
        // agency's event is never found, named or compared.
        let corrected = match &event.corrects_event_id {
            Some(id) => self.find_event(agency_of(&event), id)?,
            None => None,
        };
        let person = self.person_of(&event)?;
        let prior = self.prior(person.as_deref())?;
        let ctx = Context {
            policy: &self.log.inner.policy,
            prior_case: prior.as_ref(),
        };
        Ok(
            match lianxi_domain::decide(&ctx, view.as_ref(), &event, corrected.as_ref()) {
                Ok(()) => Ok(event),
                Err(r) => Err(Box::new((Some(event), r))),
            },
        )
    }

    fn accept(&mut self, msg: &Incoming, mut event: Event) -> Result<EventOutcome> {
        let view = self.view(&event.case_id)?;
        let person = self.person_of(&event)?;
        let prior = self.prior(person.as_deref())?;
        let global_sequence = self.cp.global_sequence + 1;
        let case_sequence = view.as_ref().map_or(0, |v| v.case_sequence) + 1;
        // Seal before hashing: from here on the event holds no personal
        // value, and the entry holds them encrypted under the case key.
        let sealed: Vec<Sealed> = if lianxi_domain::personal::has_personal(&event) {
            let key = self.keys.case(&event.case_id)?;
            lianxi_crypto::seal_entry(&mut event, &key)
        } else {
            Vec::new()
        };
        let mut entry = LogEntry {
            global_sequence,
            case_sequence,
            stream_sequence: msg.stream_sequence,
            recorded_at: Some(msg.recorded_at),
            prev_hash: self.cp.last_hash.clone(),
            event: Some(event.clone()),
            hash: Vec::new(),
            subject: msg.subject.clone(),
            sealed,
            person_token: person
                .as_deref()
                .map(|p| hex::decode(p).unwrap_or_default())
                .unwrap_or_default(),
        };
        let hash = entry_hash(&entry);
        entry.hash = hash.to_vec();

        let ctx = Context {
            policy: &self.log.inner.policy,
            prior_case: prior.as_ref(),
        };
        let meta = EntryMeta {
            global_sequence,
            case_sequence,
            recorded_at: msg.recorded_at,
            sealed: &entry.sealed,
        };
        let view = lianxi_domain::apply(&ctx, view, &event, &meta);
        if let Some(p) = &person {
            self.persons.insert(p.clone(), Some(prior_of(&view)));
            self.case_persons.insert(event.case_id.clone(), p.clone());
            self.batch.insert(
                keys::person_history(p, global_sequence),
                encode_prior(&prior_of(&view)),
            );
        }
        let erased = is_erasure(&event);
        if erased {
            self.forget_person(&event.case_id, global_sequence)?;
            self.batch.insert(
                keys::named(keys::ERASURE_PENDING, &event.case_id),
                &msg.stream_sequence.to_be_bytes(),
            );
        }
        self.batch.insert(
            &keys::seq(keys::ENTRY, global_sequence),
            entry.encode_to_vec(),
        );
        self.receipts.push(receipts::accepted(&entry));
        let agency = agency_of(&event);
        self.batch.insert(
            keys::scoped(keys::DEDUP, agency, &event.event_id),
            &global_sequence.to_be_bytes(),
        );
        let tree = &self.tree;
        index_entry(&mut self.index, &event.case_id, &entry, |k| {
            Ok(tree.get(k)?.map(|v| v.to_vec()))
        })?;
        self.add_leaf(&hash)?;
        self.views.insert(event.case_id.clone(), view);
        self.dedup
            .insert((agency, event.event_id.clone()), global_sequence);
        self.cp.global_sequence = global_sequence;
        self.cp.last_hash = hash.to_vec();
        tracing::debug!(
            case_id = %event.case_id,
            global_sequence,
            case_sequence,
            event_id = %event.event_id,
            "event accepted"
        );
        let outcome = EventOutcome::Accepted {
            event_id: event.event_id.clone(),
            case_id: event.case_id.clone(),
            global_sequence,
            case_sequence,
            hash,
            erased,
        };
        self.events.insert((agency, event.event_id.clone()), event);
        Ok(outcome)
    }

    /// Adds the entry's leaf to the Merkle tree: the frontier moves on,
    /// and the nodes it completes at a tile level go into their tiles (a
    /// partial tile at the right edge is read once per group).
    fn add_leaf(&mut self, entry_hash: &Hash) -> Result<()> {
        let created = self.frontier.push(merkle::leaf_hash(entry_hash))?;
        let tree = &self.tree;
        self.edge
            .add(&created, |level, index| tiles::read(tree, level, index))
    }

    fn view(&self, case_id: &str) -> Result<Option<CaseView>> {
        match self.views.get(case_id) {
            Some(v) => Ok(Some(v.clone())),
            None => read_view(self.tree(), case_id),
        }
    }

    fn dedup_lookup(&self, agency: Agency, event_id: &str) -> Result<Option<u64>> {
        if let Some(g) = self.dedup.get(&(agency, event_id.to_owned())) {
            return Ok(Some(*g));
        }
        Ok(self
            .tree()
            .get(keys::scoped(keys::DEDUP, agency, event_id))?
            .as_deref()
            .and_then(keys::be_u64))
    }

    fn find_event(&self, agency: Agency, event_id: &str) -> Result<Option<Event>> {
        if let Some(e) = self.events.get(&(agency, event_id.to_owned())) {
            return Ok(Some(e.clone()));
        }
        match self.dedup_lookup(agency, event_id)? {
            Some(g) => Ok(read_entry(self.tree(), g)?.and_then(|e| e.event)),
            None => Ok(None),
        }
    }

    /// The person token (hex) of a case opening that names a person.
    fn person_of(&self, event: &Event) -> Result<Option<String>> {
        match person_key(event) {
            Some(p) => Ok(Some(hex::encode(lianxi_crypto::person_token(
                self.keys.index()?.as_ref(),
                p,
            )))),
            None => Ok(None),
        }
    }

    /// After an erasure, the person index stops pointing at the case (if it
    /// still does), and its history says so from this entry on.
    fn forget_person(&mut self, case_id: &str, global_sequence: u64) -> Result<()> {
        let person = match self.case_persons.get(case_id) {
            Some(p) => Some(p.clone()),
            None => self
                .log
                .case_entries(case_id, 0, 1)?
                .first()
                .and_then(entry_person),
        };
        let Some(p) = person else {
            return Ok(());
        };
        if self.prior(Some(&p))?.is_some_and(|x| x.case_id == case_id) {
            self.persons.insert(p.clone(), None);
            self.batch
                .insert(keys::person_history(&p, global_sequence), Vec::<u8>::new());
        }
        Ok(())
    }

    fn prior(&self, person: Option<&str>) -> Result<Option<PriorCase>> {
        let Some(p) = person else {
            return Ok(None);
        };
        if let Some(prior) = self.persons.get(p) {
            return Ok(prior.clone());
        }
        match self.tree().get(keys::named(keys::PERSON, p))? {
            Some(b) => decode_prior(&b).map(Some).ok_or_else(|| Error::Corruption {
                at: Location::Key(hex::encode(keys::named(keys::PERSON, p))),
                detail: "person index record is malformed".into(),
            }),
            None => Ok(None),
        }
    }
}

/// An event that passed, or the reason it did not (with the event when it
/// decoded).
type Checked = std::result::Result<Event, Box<(Option<Event>, Rejection)>>;

/// Size, decoding and the structural checks that need no state.
fn envelope(msg: &Incoming) -> Checked {
    if msg.payload.len() > MAX_EVENT_BYTES {
        return Err(Box::new((
            None,
            Rejection {
                code: RejectionCode::TooLarge,
                reason: format!(
                    "the event is {} bytes, more than the {} bytes a node accepts; move attachments out of the event and publish it again under a new event id",
                    msg.payload.len(),
                    MAX_EVENT_BYTES
                ),
            },
        )));
    }
    let event = lianxi_domain::decode_event(&msg.payload)?;
    match lianxi_domain::check_envelope(&msg.subject, &event) {
        Ok(()) => Ok(event),
        Err(r) => Err(Box::new((Some(event), r))),
    }
}

/// The person a case-opening event is about, if any; only openings (not
/// corrections of them) move the person index.
fn person_key(event: &Event) -> Option<&str> {
    if event.corrects_event_id.is_some() {
        return None;
    }
    match event.body {
        Some(Body::CaseOpened(_)) => lianxi_domain::person_ref(event),
        _ => None,
    }
}

/// The person token of a stored case opening, as the index's key (hex).
fn entry_person(entry: &LogEntry) -> Option<String> {
    (!entry.person_token.is_empty()).then(|| hex::encode(&entry.person_token))
}

/// The agency an event is keyed under: its own, which `check_envelope`
/// made equal to its subject's (the bus guarantees the subject).
fn agency_of(event: &Event) -> Agency {
    Agency::try_from(event.agency).unwrap_or(Agency::Unspecified)
}

/// The case a well-formed events subject names.
fn subject_case(subject: &str) -> Option<String> {
    lianxi_domain::parse_subject(subject).ok().map(|(_, c)| c)
}

/// The case whose key seals the bytes a rejection keeps: set for bytes
/// that are kept as received (not an event, too large, a newer schema) on
/// a case's subject.
fn raw_case(msg: &Incoming, refused: &(Option<Event>, Rejection)) -> Option<String> {
    let (event, rejection) = refused;
    (event.is_none() || rejection.code == RejectionCode::SchemaNewer)
        .then(|| subject_case(&msg.subject))
        .flatten()
}

fn is_erased(view: &CaseView) -> bool {
    lianxi_domain::personal::state_of(view.personal_data) == PersonalDataState::Erased
}

/// The longest subject quoted in a log line.
const ECHO_SUBJECT_CHARS: usize = 200;

/// An id as a rejection record and its receipt keep it: as sent when it
/// is a short token without unsafe characters, otherwise escaped and cut.
fn echo_id(id: &str) -> String {
    lianxi_domain::printable(id, lianxi_domain::MAX_ID_LEN)
}

/// Seals the bytes of a rejected message under the case's key, as a
/// personal value at path "raw" of the envelope (case, "stream-<seq>"):
/// deterministic, so every node stores the same record.
fn seal_raw(key: &DataKey, case_id: &str, stream_sequence: u64, bytes: &[u8]) -> Sealed {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    Sealed {
        path: "raw".into(),
        ciphertext: lianxi_crypto::seal_value(
            key,
            case_id,
            &format!("stream-{stream_sequence}"),
            "raw",
            &text,
        ),
        ..Sealed::default()
    }
}

fn is_erasure(event: &Event) -> bool {
    event.corrects_event_id.is_none() && matches!(event.body, Some(Body::PersonalDataErased(_)))
}

fn prior_of(view: &CaseView) -> PriorCase {
    PriorCase {
        case_id: view.case_id.clone(),
        opened_at: view.opened_at.unwrap_or_default(),
    }
}

fn encode_prior(p: &PriorCase) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + p.case_id.len());
    v.extend_from_slice(&p.opened_at.seconds.to_be_bytes());
    v.extend_from_slice(&p.opened_at.nanos.to_be_bytes());
    v.extend_from_slice(p.case_id.as_bytes());
    v
}

fn decode_prior(b: &[u8]) -> Option<PriorCase> {
    let seconds = i64::from_be_bytes(b.get(0..8)?.try_into().ok()?);
    let nanos = i32::from_be_bytes(b.get(8..12)?.try_into().ok()?);
    let case_id = String::from_utf8(b.get(12..)?.to_vec()).ok()?;
    Some(PriorCase {
        case_id,
        opened_at: Timestamp { seconds, nanos },
    })
}

/// How many of the newest entries `open` checks against the checkpoint.
const TAIL_CHECK: u64 = 1024;

fn read_checkpoint(tree: &sled::Tree) -> Result<Checkpoint> {
    Ok(match tree.get(keys::CHECKPOINT)? {
        Some(b) => Checkpoint::decode(b.as_ref()).map_err(|e| Error::Corruption {
            at: Location::Checkpoint,
            detail: e.to_string(),
        })?,
        None => Checkpoint {
            stream_sequence: 0,
            global_sequence: 0,
            last_hash: vec![0; 32],
        },
    })
}

/// Checks the newest entries (up to `TAIL_CHECK`) against the checkpoint:
/// each is there, decodes, links to the one before, has its Merkle leaf,
/// and the last one's hash is the checkpoint's. A damaged file that sled
/// reopens as a mix of old and new state (a checkpoint ahead of its
/// entries, an entry missing near the end) is caught here, at start, not
/// by a client later.
/// The damage `check_tail` finds, as the reason the log refuses to grow.
fn tail_damage(path: &Path, tree: &sled::Tree, cp: &Checkpoint) -> Result<Option<String>> {
    match store::guard(path, || check_tail(tree, cp)) {
        Ok(()) => Ok(None),
        Err(e @ (Error::Corruption { .. } | Error::Damaged { .. })) => {
            let e = damaged(path, e);
            tracing::error!(data_dir = %path.display(), "{e}; the node does not write to it");
            Ok(Some(e.to_string()))
        }
        Err(e) => Err(e),
    }
}

fn check_tail(tree: &sled::Tree, cp: &Checkpoint) -> Result<()> {
    let last = cp.global_sequence;
    if last == 0 {
        return Ok(());
    }
    let first = last.saturating_sub(TAIL_CHECK - 1).max(1);
    let mut prev: Option<Vec<u8>> = None;
    // A layout-2 log (upgraded by `serve` or `rebuild`) has a record per
    // node instead of tiles.
    let nodes_layout = tree
        .get(keys::LAYOUT)?
        .is_some_and(|v| v.as_ref() == [keys::LAYOUT_NODES]);
    for seq in first..=last {
        let entry = read_entry(tree, seq)?.ok_or_else(|| Error::Corruption {
            at: Location::Entry(seq),
            detail: format!("missing, though the checkpoint covers {last} entries"),
        })?;
        if let Some(prev) = &prev
            && &entry.prev_hash != prev
        {
            return Err(Error::Corruption {
                at: Location::Entry(seq),
                detail: "does not link to the entry before it".to_owned(),
            });
        }
        let leaf = if nodes_layout {
            tree.contains_key(keys::tree_node(0, seq - 1))?
        } else {
            tiles::has_leaf(tree, seq - 1)?
        };
        if !leaf {
            return Err(Error::Corruption {
                at: Location::Tile(0, (seq - 1) / tiles::WIDTH),
                detail: format!("missing, though the checkpoint covers {last} entries"),
            });
        }
        prev = Some(entry.hash);
    }
    if prev.as_deref() != Some(cp.last_hash.as_slice()) {
        return Err(Error::Corruption {
            at: Location::Checkpoint,
            detail: format!("its hash is not the hash of entry {last}"),
        });
    }
    if read_entry(tree, last + 1)?.is_some() {
        return Err(Error::Corruption {
            at: Location::Entry(last + 1),
            detail: format!("present, though the checkpoint covers only {last} entries"),
        });
    }
    Ok(())
}

/// Corruption found at open is a damaged data directory: the node must not
/// start on it.
fn damaged(path: &Path, e: Error) -> Error {
    match e {
        Error::Corruption { at, detail } => Error::Damaged {
            path: path.display().to_string(),
            detail: format!("{at}: {detail}"),
        },
        e => e,
    }
}

fn read_view(tree: &sled::Tree, case_id: &str) -> Result<Option<CaseView>> {
    match tree.get(keys::named(keys::VIEW, case_id))? {
        Some(b) => CaseView::decode(b.as_ref())
            .map(Some)
            .map_err(|e| Error::Corruption {
                at: Location::View(case_id.to_owned()),
                detail: e.to_string(),
            }),
        None => Ok(None),
    }
}

/// Removes, in `batch`, every record under each of `prefixes`.
fn clear_prefixes(tree: &sled::Tree, batch: &mut sled::Batch, prefixes: &[u8]) -> Result<()> {
    for prefix in prefixes {
        for item in tree.scan_prefix([*prefix]) {
            batch.remove(item?.0);
        }
    }
    Ok(())
}

/// Puts an entry into the packed indexes: its case's, by case sequence,
/// and the stream's, by stream sequence. `stored` reads a record the set
/// has not touched yet.
fn index_entry(
    index: &mut packed::Records,
    case_id: &str,
    entry: &LogEntry,
    mut stored: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
) -> Result<()> {
    let g = entry.global_sequence;
    index.set(
        &packed::case_key(case_id, entry.case_sequence),
        packed::case_slot(entry.case_sequence),
        g,
        &mut stored,
    )?;
    index.set(
        &packed::by_stream_key(entry.stream_sequence),
        entry.stream_sequence % packed::SLOTS,
        g,
        &mut stored,
    )
}

/// Compares a stored tile with the one computed from the entries.
fn check_tile(tree: &sled::Tree, level: u8, index: u64, computed: &[u8]) -> Result<()> {
    match tiles::read(tree, level, index)? {
        Some(stored) if stored == computed => Ok(()),
        Some(stored) => {
            let differs = stored
                .chunks(32)
                .zip(computed.chunks(32))
                .position(|(a, b)| a != b)
                .unwrap_or(stored.len().min(computed.len()) / 32);
            Err(Error::Corruption {
                at: Location::Tile(level, index),
                detail: format!(
                    "the stored tile ({} hashes) does not match the one computed from the entries ({} hashes) from hash {differs} on",
                    stored.len() / 32,
                    computed.len() / 32
                ),
            })
        }
        None => Err(tiles::missing(level, index)),
    }
}

fn read_entry(tree: &sled::Tree, global_sequence: u64) -> Result<Option<LogEntry>> {
    let key = keys::seq(keys::ENTRY, global_sequence);
    match tree.get(key)? {
        Some(b) => decode_entry(&key, &b).map(Some),
        None => Ok(None),
    }
}

fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<LogEntry> {
    let at = || {
        key.get(1..)
            .and_then(keys::be_u64)
            .map_or_else(|| Location::Key(hex::encode(key)), Location::Entry)
    };
    LogEntry::decode(bytes).map_err(|e| Error::Corruption {
        at: at(),
        detail: format!("entry does not decode: {e}"),
    })
}

#[cfg(test)]
mod tests;
