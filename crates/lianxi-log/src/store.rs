//! Opening and wrapping sled: the one place that decides how the data
//! directory is opened, what happens when the disk fails under it, and the
//! high-water mark kept beside it.
//!
//! Faults of the node's own disk, and what this module does about each:
//!
//! - **Disk full / I/O error.** sled keeps its first I/O error for good:
//!   every later write (and flush) fails with it, even after space is freed.
//!   The store records the failure (`Store::failure`), and `Store::reopen`
//!   drops every handle and opens the directory again, which is how sled
//!   recovers (it replays its own log; a group that was not flushed is not
//!   there, and the node reads it from the stream again).
//! - **A start on a full disk.** sled writes its snapshot to
//!   `snap.<lsn>.generating` and renames it when complete; when the write
//!   fails the empty file stays, and sled then picks it as the newest
//!   snapshot at every later open and fails ("corruption") for good. The
//!   file is sled's scratch space, never the only copy of anything (the
//!   previous snapshot is removed only after the rename), so `open_db`
//!   removes it before sled looks.
//! - **Damaged files.** sled panics on some damaged files ("tried to
//!   serialize Uninitialized"). `open_db` catches the panic at this
//!   boundary and returns `Error::Damaged`, naming the directory and what
//!   to do.
//! - **A lost tail.** sled may reopen a damaged or cut file silently as an
//!   older state. The high-water mark (`HighWater`), a small file written
//!   and fsynced before receipts go out and checkpoints are signed, keeps
//!   what the node had already vouched for where that loss cannot take it;
//!   a log found below it is behind and must catch up from the stream.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use crate::error::{Error, Result};

/// The default size of sled's page cache: 16 MiB (sled's own default is
/// 1 GiB, which a long backlog fills). sled counts the cache in encoded
/// bytes, and its nodes take several times that in memory: draining an
/// 800,000-event backlog, the node peaked at 245 MiB with 16 MiB of cache
/// and at 325 MiB with 64 (RELIABILITY.md).
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The name of the high-water mark file in the data directory.
pub const HIGH_WATER_FILE: &str = "high-water";

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// How long `open_db` waits for a just-closed handle to release the
/// directory lock: sled's background flusher holds the database briefly
/// after the last handle is dropped.
const LOCK_WAIT: Duration = Duration::from_secs(3);

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"))
}

/// Removes `snap.*.generating` files: snapshots sled began and did not
/// finish (the rename to `snap.*` is its commit). Returns their names.
fn remove_unfinished_snapshots(path: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(dir) = std::fs::read_dir(path) else {
        return removed;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.")
            && name.ends_with(".generating")
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(name);
        }
    }
    removed
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the storage library panicked".to_owned())
}

/// Runs `f`, turning a panic inside the storage library into
/// `Error::Damaged` for `path`.
pub(crate) fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::Damaged {
            path: path.display().to_string(),
            detail: format!("the storage library stopped on it: {}", panic_message(&*p)),
        }),
    }
}

/// Opens sled in `path` with `options`: removes unfinished snapshots first,
/// waits a moment for a lock a closing handle still holds, and turns a
/// panic or a corruption report into `Error::Damaged`.
pub(crate) fn open_db(path: &Path, options: &StoreOptions) -> Result<sled::Db> {
    for name in remove_unfinished_snapshots(path) {
        tracing::warn!(data_dir = %path.display(), file = %name, "removed an unfinished snapshot sled left behind (a start or a snapshot on a full disk); sled replays its log instead");
    }
    let started = std::time::Instant::now();
    loop {
        let opened = guard(path, || {
            sled::Config::new()
                .path(path)
                .cache_capacity(options.cache_bytes)
                .open()
                .map_err(Error::Storage)
        });
        match opened {
            Ok(db) => return Ok(db),
            Err(Error::Storage(e)) if is_lock_error(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Error::Storage(e)) if is_lock_error(&e) => {
                return Err(Error::Locked {
                    path: path.display().to_string(),
                });
            }
            Err(Error::Storage(sled::Error::Corruption { at, .. })) => {
                return Err(Error::Damaged {
                    path: path.display().to_string(),
                    detail: match at {
                        Some(at) => format!("sled reports corruption at {at:?}"),
                        None => "sled reports corruption".to_owned(),
                    },
                });
            }
            Err(Error::Storage(sled::Error::Io(io))) => {
                return Err(Error::Unavailable {
                    reason: describe_io(path, &io),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// The open handles of one sled database: the log, the access log and the
/// signed checkpoints. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Handles {
    pub(crate) db: sled::Db,
    pub(crate) log: sled::Tree,
    pub(crate) access: sled::Tree,
    pub(crate) checkpoints: sled::Tree,
}

impl Handles {
    fn open(db: sled::Db) -> Result<Handles> {
        Ok(Handles {
            log: db.open_tree("lianxi.v1")?,
            access: db.open_tree(crate::access::TREE)?,
            checkpoints: db.open_tree("checkpoints.v1")?,
            db,
        })
    }
}

/// The sled database of one data directory, which can be reopened in place
/// after an I/O error.
pub(crate) struct Store {
    path: PathBuf,
    options: StoreOptions,
    handles: RwLock<Option<Handles>>,
    /// The first I/O failure since the store was (re)opened: sled keeps
    /// failing with it until it is reopened.
    failure: Mutex<Option<String>>,
}

impl Store {
    pub(crate) fn open(path: &Path, options: StoreOptions) -> Result<Store> {
        let db = open_db(path, &options)?;
        let handles = guard(path, || Handles::open(db))?;
        Ok(Store {
            path: path.to_owned(),
            options,
            handles: RwLock::new(Some(handles)),
            failure: Mutex::new(None),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The current handles; `Error::Unavailable` while the store is being
    /// reopened.
    pub(crate) fn handles(&self) -> Result<Handles> {
        self.handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::Unavailable {
                reason: self
                    .failure()
                    .unwrap_or_else(|| "the data directory is being reopened".to_owned()),
            })
    }

    /// Passes `r` through, remembering an I/O error (disk full, read-only,
    /// device gone): the reason health reports until `reopen` succeeds.
    pub(crate) fn note<T>(&self, r: std::result::Result<T, sled::Error>) -> Result<T> {
        r.map_err(|e| {
            if let sled::Error::Io(io) = &e {
                let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                if failure.is_none() {
                    let reason = describe_io(&self.path, io);
                    tracing::error!(data_dir = %self.path.display(), reason = %reason, "the data directory failed; the node stops writing and tries to reopen it");
                    *failure = Some(reason);
                }
            }
            Error::Storage(e)
        })
    }

    /// Why the store cannot write, while it cannot.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drops every handle and opens the directory again; clears the failure
    /// when it worked. Callers hold the log's writer and the access log's
    /// head, so nothing is written meanwhile. Readers get
    /// `Error::Unavailable` while it runs.
    pub(crate) fn reopen(&self) -> Result<()> {
        let mut handles = self.handles.write().unwrap_or_else(|p| p.into_inner());
        // sled releases the directory when the last handle goes; a reader
        // still holding a clone makes the open below wait (LOCK_WAIT) or
        // fail as Locked, and the caller tries again later.
        *handles = None;
        let opened = open_db(&self.path, &self.options).and_then(|db| {
            let h = guard(&self.path, || Handles::open(db))?;
            // sled can open on a full disk and fail at the first write: a
            // flush shows whether it can write now.
            h.db.flush()?;
            Ok(h)
        });
        match opened {
            Ok(h) => {
                *handles = Some(h);
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(data_dir = %self.path.display(), "the data directory is open again");
                Ok(())
            }
            Err(e) => {
                let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                if failure.is_none() {
                    *failure = Some(e.to_string());
                }
                Err(e)
            }
        }
    }
}

/// Plain words for an I/O error under the data directory.
pub(crate) fn describe_io(path: &Path, io: &std::io::Error) -> String {
    use std::io::ErrorKind;
    // sled wraps the OS error in one of its own, so the kind is what is
    // left of it.
    let code = match (io.raw_os_error(), io.kind()) {
        (Some(c), _) => Some(c),
        (None, ErrorKind::StorageFull) => Some(28),
        (None, ErrorKind::ReadOnlyFilesystem) => Some(30),
        _ => None,
    };
    match code {
        Some(28) => format!(
            "the disk holding {} is full (No space left on device); free space there (a running node then resumes by itself, a stopped one can be started again)",
            path.display()
        ),
        Some(30) => format!(
            "the file system holding {} is read-only; remount it read-write (a running node then resumes by itself)",
            path.display()
        ),
        _ => format!(
            "writing to {} failed: {io}; check the disk, the node retries by itself",
            path.display()
        ),
    }
}

/// What the node had vouched for (receipted or signed) as of one moment:
/// the log had `global_sequence` entries, the last with hash `last_hash`,
/// covering the stream up to `stream_sequence`. Kept in its own small file,
/// written to a temporary file, fsynced, renamed and the directory fsynced,
/// so a loss inside sled's files cannot take it with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HighWater {
    pub global_sequence: u64,
    pub stream_sequence: u64,
    pub last_hash: [u8; 32],
}

impl HighWater {
    const HEADER: &'static str = "lianxi high-water v1";

    /// The mark of a checkpoint.
    pub(crate) fn of(cp: &lianxi_proto::v1::Checkpoint) -> HighWater {
        HighWater {
            global_sequence: cp.global_sequence,
            stream_sequence: cp.stream_sequence,
            last_hash: cp.last_hash.as_slice().try_into().unwrap_or([0; 32]),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{}\nglobal_sequence {}\nstream_sequence {}\nlast_hash {}\n",
            Self::HEADER,
            self.global_sequence,
            self.stream_sequence,
            hex::encode(self.last_hash)
        )
    }

    fn decode(text: &str) -> Option<HighWater> {
        let mut lines = text.lines();
        if lines.next()? != Self::HEADER {
            return None;
        }
        let mut field = |name: &str| {
            lines
                .next()?
                .strip_prefix(name)?
                .strip_prefix(' ')
                .map(str::to_owned)
        };
        let global_sequence = field("global_sequence")?.parse().ok()?;
        let stream_sequence = field("stream_sequence")?.parse().ok()?;
        let last_hash = hex::decode(field("last_hash")?).ok()?.try_into().ok()?;
        Some(HighWater {
            global_sequence,
            stream_sequence,
            last_hash,
        })
    }

    /// Reads the mark in `dir`; `None` when there is none yet.
    pub fn read(dir: &Path) -> Result<Option<HighWater>> {
        let path = dir.join(HIGH_WATER_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => HighWater::decode(&text)
                .map(Some)
                .ok_or_else(|| Error::Damaged {
                    path: dir.display().to_string(),
                    detail: format!("the high-water mark {} does not parse", path.display()),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::HighWater {
                path: path.display().to_string(),
                source: e,
            }),
        }
    }

    /// Writes the mark into `dir` durably (temporary file, fsync, rename,
    /// fsync of the directory).
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(HIGH_WATER_FILE);
        let tmp = dir.join(format!("{HIGH_WATER_FILE}.tmp"));
        let err = |e| Error::HighWater {
            path: path.display().to_string(),
            source: e,
        };
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(self.encode().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_high_water_mark_round_trips_and_garbage_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HighWater::read(dir.path()).unwrap(), None);
        let hw = HighWater {
            global_sequence: 7,
            stream_sequence: 9,
            last_hash: [3; 32],
        };
        hw.write(dir.path()).unwrap();
        assert_eq!(HighWater::read(dir.path()).unwrap(), Some(hw));
        std::fs::write(dir.path().join(HIGH_WATER_FILE), "garbage").unwrap();
        let e = HighWater::read(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Damaged { .. }), "{e}");
    }

    #[test]
    fn an_unfinished_snapshot_is_removed_before_sled_opens() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_db(dir.path(), &StoreOptions::default()).unwrap());
        // What a start on a full disk leaves: an empty snapshot in progress
        // with the highest name.
        let stale = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&stale, b"").unwrap();
        let db = open_db(dir.path(), &StoreOptions::default()).unwrap();
        assert!(!stale.exists());
        drop(db);
    }
}
