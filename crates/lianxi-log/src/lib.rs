//! The append-only, hash-chained case log, kept in sled. The only crate that
//! knows sled.
//!
//! Everything lives in one sled tree under one-byte key prefixes, so that a
//! whole group of events (entries, per-case index, dedup entries, views,
//! rejections and the stream checkpoint) is written by one atomic
//! `apply_batch` and one flush. A multi-tree transaction per event measured
//! about 10x slower on this stack (see ARCHITECTURE.md).
//!
//! The log is also an RFC 6962 Merkle tree over its entries (`merkle`):
//! `Log::root`, `Log::inclusion_proof` and `Log::consistency_proof` answer
//! from stored subtrees, and `verify_inclusion` / `verify_consistency` check
//! the proofs without the log.

#![forbid(unsafe_code)]

mod access;
mod checkpoint;
mod error;
mod keys;
mod log;
mod merkle;
mod packed;
mod pending;
mod projection;
mod receipts;
mod store;
mod tiles;

pub use access::{ACCESS_HIGH_WATER_FILE, AccessLog, GAP_METHOD, Lost, access_hash};
pub use checkpoint::{
    CheckpointError, CheckpointSigner, SignedCheckpoint, checkpoint_body, generate_signing_key,
    open_checkpoint, parse_checkpoint,
};
pub use error::{Error, Location, Result};
/// Test-only hooks (feature `test-util`): damaging the stored log on purpose.
#[cfg(any(test, feature = "test-util"))]
pub use log::Tamper;
pub use log::{
    EventOutcome, GroupKeys, GroupReport, Incoming, KeysNeeded, Log, MAX_EVENT_BYTES, Prepared,
    RebuildReport, StoredCheckpoint, VerifyReport, entry_hash,
};
pub use merkle::{Hash, empty_root, leaf_hash, node_hash, verify_consistency, verify_inclusion};
pub use projection::filters::Facet;
pub use receipts::rejected as rejection_receipt;
pub use store::{DEFAULT_CACHE_BYTES, HIGH_WATER_FILE, HighWater, StoreOptions};
