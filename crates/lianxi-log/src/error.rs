use thiserror::Error;

/// Errors of the log. Storage corruption is its own variant and is reported,
/// never unwrapped.
#[derive(Debug, Error)]
pub enum Error {
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error(
        "the data directory {path} is in use by another lianxi process (or cannot be locked); stop `lianxi serve` before running this command"
    )]
    Locked { path: String },
    /// The data directory cannot be opened or read as it is: damaged files,
    /// or a storage library that stopped on them.
    #[error(
        "the data directory {path} is damaged ({detail}); stop the node, keep a copy of the directory for investigation, then restore it from a backup, or move it aside and start the node with an empty data directory to re-read the events stream"
    )]
    Damaged { path: String, detail: String },
    /// The store cannot be used right now (a disk failure it is recovering
    /// from, or a reopen in progress). Nothing was written or read; try
    /// again.
    #[error("the node's storage is unavailable: {reason}")]
    Unavailable { reason: String },
    /// The log found damage at open and does not grow (the reason says
    /// which entry and what to do).
    #[error("the log is not written to: {reason}")]
    Unwritable { reason: String },
    /// The high-water mark file could not be read or written.
    #[error("cannot read or write the high-water mark {path}: {source}; check the disk")]
    HighWater {
        path: String,
        source: std::io::Error,
    },
    #[error("log corrupted at {at}: {detail}")]
    Corruption { at: Location, detail: String },
    /// A tree size, leaf index or proof size the log cannot answer for:
    /// `value` of `what` against the bound `size`.
    #[error("{what} {value} is out of range: {bound}", bound = range_bound(what, *size))]
    OutOfRange {
        what: &'static str,
        value: u64,
        size: u64,
    },
    /// A group needs a key the caller did not supply. Nothing was written;
    /// fetch the key from the key store and apply the group again.
    #[error(
        "{what} is not available; nothing was written. Check that the node reaches the key store, then the group is applied again"
    )]
    KeyUnavailable { what: String },
    /// The data directory was written with a storage layout this version
    /// does not read (see ARCHITECTURE.md, "Storage layout").
    #[error("{detail}")]
    Layout { detail: String },
}

impl Error {
    /// An error of the disk under the data directory (full, read-only, I/O
    /// failure) or a store being reopened: it passes once the disk is
    /// usable again, so the caller waits and retries instead of stopping.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            Error::Storage(sled::Error::Io(_))
                | Error::Unavailable { .. }
                | Error::HighWater { .. }
        )
    }
}

fn range_bound(what: &str, size: u64) -> String {
    match what {
        "leaf index" => format!(
            "the tree of size {size} has leaf indexes 0 to {}",
            size.saturating_sub(1)
        ),
        "old size" => format!("it must be from 1 to the new size {size}"),
        _ if size == 0 => {
            "the log is empty, so there is no tree to prove anything about yet".to_owned()
        }
        _ => format!("the log holds {size} entries, so it must be from 1 to {size}"),
    }
}

/// Where corruption was found, so an operator knows which entry to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A log entry, by global sequence.
    Entry(u64),
    /// A case view, by case id.
    View(String),
    /// The per-case index of a case, by case id and case sequence.
    CaseIndex(String, u64),
    /// The dedup index, by event id.
    Dedup(String),
    /// The checkpoint record.
    Checkpoint,
    /// Another record, by its key in hex.
    Key(String),
    /// An access log record, by sequence.
    Access(u64),
    /// The access log's head (its last sequence and hash).
    AccessHead,
    /// A stored tile of the Merkle tree, by tile level and index.
    Tile(u8, u64),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Entry(s) => write!(f, "log entry {s}"),
            Location::View(c) => write!(f, "view of case {c}"),
            Location::CaseIndex(c, s) => write!(f, "case index {c}#{s}"),
            Location::Dedup(e) => write!(f, "dedup entry for event {e}"),
            Location::Checkpoint => write!(f, "checkpoint"),
            Location::Key(k) => write!(f, "key {k}"),
            Location::Access(s) => write!(f, "access record {s}"),
            Location::AccessHead => write!(f, "access log head"),
            Location::Tile(l, i) => write!(f, "Merkle tile {i} at tile level {l}"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
