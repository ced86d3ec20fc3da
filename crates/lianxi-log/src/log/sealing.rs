//! The keys a group seals personal values with.

use std::collections::HashMap;
use std::sync::Arc;

use lianxi_crypto::{DataKey, IndexKey};
use lianxi_proto::v1::Sealed;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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
    /// and benchmarks that run without a key store (feature `test-util`;
    /// a node is never built with it).
    #[cfg(any(test, feature = "test-util"))]
    pub fn derived(seed: &str) -> Self {
        GroupKeys {
            derive: Some(Sha256::digest(seed.as_bytes()).into()),
            ..GroupKeys::default()
        }
    }

    /// The key `derived(seed)` uses for a case (feature `test-util`).
    #[cfg(any(test, feature = "test-util"))]
    pub fn derived_case_key(seed: &str, case_id: &str) -> Arc<DataKey> {
        let seed: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
        Arc::new(derive_key(&seed, "case", case_id))
    }

    pub(super) fn case(&self, case_id: &str) -> Result<Arc<DataKey>> {
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

    pub(super) fn index(&self) -> Result<Arc<IndexKey>> {
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

pub(super) fn derive_key(seed: &[u8; 32], what: &str, name: &str) -> DataKey {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(what.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    DataKey::from_bytes(h.finalize().into())
}

/// Seals the bytes of a rejected message under the case's key, as a
/// personal value at path "raw" of the envelope (case, "stream-<seq>"):
/// deterministic, so every node stores the same record.
pub(super) fn seal_raw(key: &DataKey, case_id: &str, stream_sequence: u64, bytes: &[u8]) -> Sealed {
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
