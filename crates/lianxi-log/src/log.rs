use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use lianxi_domain::Policy;
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{Checkpoint, LogEntry, Receipt, RejectionCode};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::access::AccessLog;
use crate::error::{Error, Result};
use crate::merkle::Frontier;
use crate::pending::Pending;
use crate::store::{self, HighWater, Store, StoreOptions};

pub use lianxi_domain::intake::MAX_EVENT_BYTES;

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
    /// Derived records written behind the entries (`pending.rs`).
    pending: Arc<Pending>,
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
        // A rebuild cut off part way left derived records half written: the
        // tail is judged once it has run again (`upgrade_storage_layout`).
        let rebuilding = store::guard(path, || Ok(tree.contains_key(crate::keys::REBUILDING)?))?;
        let mut damage = if below_mark || rebuilding {
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
                damage: Mutex::new(damage.clone()),
                frontier: Mutex::new(None),
                pending: Arc::new(Pending::default()),
            }),
        };
        // After a crash or a close the derived records written behind lag
        // the checkpoint: the entries between are projected again (not
        // when the log is damaged or mid-rebuild: the rebuild derives every
        // record from the entries anyway).
        if !rebuilding && damage.is_none() {
            let cp = log.checkpoint();
            match store::guard(path, || log.project_again(&cp)) {
                Ok(()) => {}
                // Below its mark, `prepare_catch_up` repairs and rebuilds
                // whatever this could not project.
                Err(e) if below_mark => {
                    tracing::warn!(data_dir = %path.display(), error = %e, "could not project the entries after the mark again; the repair before catching up rebuilds them");
                    log.inner.pending.clear();
                }
                Err(e @ (Error::Corruption { .. } | Error::Damaged { .. })) => {
                    let e = damaged(path, e);
                    tracing::error!(data_dir = %path.display(), "{e}; the node does not write to it");
                    damage = Some(e.to_string());
                }
                Err(e) => return Err(e),
            }
            *log.inner.damage.lock().unwrap_or_else(|p| p.into_inner()) = damage;
        }
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
        // A write-behind that was not flushed may be gone with the group.
        self.project_again(&now)?;
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
}

mod append;
mod behind;
mod layout;
mod proofs;
mod read;
mod rebuild;
mod sealing;
mod signed;
#[cfg(any(test, feature = "test-util"))]
mod tamper;
mod tasks;
mod verify;

use layout::{damaged, read_checkpoint, tail_damage};

pub use append::Prepared;
pub use sealing::GroupKeys;
#[cfg(any(test, feature = "test-util"))]
pub use tamper::Tamper;
#[cfg(test)]
mod tests;
