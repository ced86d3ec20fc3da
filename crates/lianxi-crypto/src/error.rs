//! The crate's one error type.
//!
//! No message carries key material or a personal value: a variant names the
//! key (`case.<case_id>`, `index`), the case, the event and the field path,
//! never the bytes.

use std::path::PathBuf;

/// The source of a failed NATS request, kept for the log.
pub(crate) type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while sealing, opening or keeping keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key-encryption key file does not exist.
    #[error(
        "no key-encryption key at {}: for a new cluster, create one with \
         `lianxi kek --out {}` and start every node with `--kek-file` naming a copy of it \
         (kept outside the data directory); for an existing cluster, copy the file the \
         other nodes use",
        path.display(),
        path.display()
    )]
    KekMissing { path: PathBuf },

    /// The key-encryption key file exists but cannot be read.
    #[error(
        "cannot read the key-encryption key at {}: {source}; check the file's \
         permissions (only the node's user should read it)",
        path.display()
    )]
    KekUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The key-encryption key file does not hold 64 hex characters.
    #[error(
        "the key-encryption key at {} is not 64 hex characters (32 bytes); \
         restore the file from your copy, or, for a new cluster, create one \
         with `lianxi kek --out <file>`",
        path.display()
    )]
    KekFileMalformed { path: PathBuf },

    /// A key-encryption key given as text is not 64 hex characters.
    #[error(
        "a key-encryption key must be 64 hex characters (32 bytes); \
         create one with `lianxi kek --out <file>`"
    )]
    KekMalformed,

    /// A stored key does not open under this node's key-encryption key.
    #[error(
        "cannot unwrap the stored key `{name}` with the key-encryption key {kek_fingerprint}: \
         it was wrapped under a different key-encryption key, or the stored bytes are damaged; \
         start the node with the key-encryption key the rest of the cluster uses"
    )]
    Unwrap {
        name: String,
        kek_fingerprint: String,
    },

    /// A stored key is not in a format this version writes.
    #[error(
        "the stored key `{name}` has an unknown format (version {version}, {len} bytes); \
         it was not written by this version of lianxi: upgrade the node"
    )]
    WrapFormat {
        name: String,
        version: u8,
        len: usize,
    },

    /// A sealed value does not open: wrong key, or the value or its
    /// envelope was changed.
    #[error(
        "cannot open the sealed value at {path} of event {event_id} in case {case_id}: \
         the data key is not the one it was sealed with, or the value, its event id, \
         case id or path was changed"
    )]
    Open {
        case_id: String,
        event_id: String,
        path: String,
    },

    /// A case id that cannot name a key.
    #[error("case id {case_id:?} is not 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidCaseId { case_id: String },

    /// The key bucket could neither be opened nor created.
    #[error(
        "cannot open or create the key bucket `{bucket}`: {source}; check that NATS is \
         reachable, that JetStream is enabled, and that the node's account may use it"
    )]
    Bucket {
        bucket: String,
        #[source]
        source: Source,
    },

    /// Reading, writing or erasing a key in the bucket failed.
    #[error(
        "key store: cannot {op} `{name}` in bucket `{bucket}`: {source}; \
         check that NATS is reachable and retry"
    )]
    Store {
        op: &'static str,
        bucket: String,
        name: String,
        #[source]
        source: Source,
    },

    /// Another node created the key, and it was gone again before this node
    /// could read it (an erasure raced the creation).
    #[error(
        "the key `{name}` in bucket `{bucket}` was created by another node and removed \
         before this node could read it; the case's personal data was probably erased \
         meanwhile: retry, and check the case's state"
    )]
    KeyVanished { bucket: String, name: String },

    /// Removing a case's messages from the events stream failed.
    #[error(
        "cannot remove the messages of case {case_id} from stream `{stream}`: {source}; \
         check that NATS is reachable and retry (it is idempotent)"
    )]
    Purge {
        stream: String,
        case_id: String,
        #[source]
        source: Source,
    },
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
