//! The key store: per-case data keys and the city's index key, wrapped
//! under the key-encryption key, in a JetStream key-value bucket shared by
//! every node.
//!
//! Unwrapped keys are cached in memory only. The node's data directory never
//! holds a key, so a copy of it (a backup, a disk sent for repair) holds
//! only sealed values.
//!
//! Keys are created with an atomic `create`, so when two nodes race to make
//! a case's key, one wins and both use its key. Destroying a key securely
//! erases its stored message(s) (the server overwrites them in its files)
//! and then purges the key, leaving a purge marker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use async_nats::jetstream::stream::{
    self, DiscardPolicy, RawMessageErrorKind, StorageType, Stream,
};

use crate::error::{Error, Result, Source};
use crate::keys::{DataKey, IndexKey, Kek};

/// The header that marks a key-value message as a put, delete or purge.
const KV_OPERATION: &str = "KV-Operation";
/// The name of the index key in the bucket.
const INDEX_NAME: &str = "index";
/// The most case keys kept unwrapped in memory; past it the cache starts
/// over (a key is one bucket read away).
const MAX_CACHED_KEYS: usize = 65_536;
/// How often to look for a key another node has just created before giving
/// up (a replica answering a direct get may lag the create by a moment).
const READ_AFTER_CREATE_ATTEMPTS: u32 = 5;

/// Refuses a case id that cannot name a key and a subject token.
fn check_case_id(case_id: &str) -> Result<()> {
    if lianxi_domain::is_case_id(case_id) {
        Ok(())
    } else {
        Err(Error::InvalidCaseId {
            case_id: case_id.chars().take(80).collect(),
        })
    }
}

fn case_name(case_id: &str) -> String {
    format!("case.{case_id}")
}

/// Per-case data keys and the index key, wrapped in a JetStream key-value
/// bucket, unwrapped in memory.
pub struct KeyStore {
    js: Context,
    kv: kv::Store,
    kek: Kek,
    /// Whether the bucket lets a destroyed key be overwritten in the
    /// server's files (see [`KeyStore::open`]).
    erasable: bool,
    cases: Mutex<HashMap<String, Arc<DataKey>>>,
    index: Mutex<Option<Arc<IndexKey>>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("bucket", &self.kv.name)
            .field("kek", &self.kek.fingerprint())
            .field("erasable", &self.erasable)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Opens the bucket, creating it (history 1, file storage, `replicas`)
    /// if it does not exist yet. Another node creating it at the same time
    /// is fine.
    ///
    /// The bucket is created as its stream, with the layout async-nats
    /// gives a key-value bucket except that it allows deleting single
    /// messages: a key-value bucket normally denies that, and the secure
    /// erase of a destroyed key is such a delete. For an existing bucket
    /// that denies deletes (made by `nats kv add`, say) the node asks to
    /// lift that; nats-server refuses, so destroying a key there still
    /// purges it but cannot overwrite it in the server's files, and the
    /// node warns.
    pub async fn open(js: Context, bucket: &str, replicas: usize, kek: Kek) -> Result<KeyStore> {
        let bucket_error = |source: Source| Error::Bucket {
            bucket: bucket.to_owned(),
            source,
        };
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(get_err) => {
                tracing::debug!(bucket, error = %get_err, "key bucket not found; creating it");
                let created = js.create_stream(bucket_config(bucket, replicas)).await;
                // Created here or, meanwhile, by another node: open it.
                match js.get_key_value(bucket).await {
                    Ok(kv) => kv,
                    Err(e) => {
                        return Err(bucket_error(match created {
                            Err(create_err) => Box::new(create_err),
                            Ok(_) => Box::new(e),
                        }));
                    }
                }
            }
        };
        let mut store = KeyStore {
            js,
            kv,
            kek,
            erasable: true,
            cases: Mutex::new(HashMap::new()),
            index: Mutex::new(None),
        };
        store.allow_erase().await;
        tracing::info!(bucket, kek = %store.kek.fingerprint(), "key store open");
        Ok(store)
    }

    /// Makes sure the bucket's stream allows the secure erase of a message,
    /// or notes that it cannot (nats-server refuses to lift a stream's
    /// "deny delete" once set).
    async fn allow_erase(&mut self) {
        let mut config = self.kv.stream.cached_info().config.clone();
        if !config.deny_delete {
            return;
        }
        config.deny_delete = false;
        match self.js.update_stream(&config).await {
            Ok(_) => {
                tracing::info!(bucket = %self.kv.name, "the key bucket now allows erasing a destroyed key");
                if let Ok(kv) = self.js.get_key_value(&self.kv.name).await {
                    self.kv = kv;
                }
            }
            Err(e) => {
                self.erasable = false;
                tracing::warn!(
                    bucket = %self.kv.name,
                    error = %e,
                    "the key bucket was not created by lianxi and denies deleting single \
                     messages: a destroyed key is purged, but its wrapped bytes stay in the \
                     server's files (sealed under the key-encryption key) until the server \
                     reclaims the space; to erase keys for good, start the cluster with a new \
                     key bucket name, which lianxi creates erasable"
                );
            }
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.kv.name
    }

    /// The case's data key, created (and stored for every node) if the
    /// case has none yet. After an erasure this makes a new key: call it
    /// only to seal new values.
    pub async fn ensure_case_key(&self, case_id: &str) -> Result<Arc<DataKey>> {
        check_case_id(case_id)?;
        if let Some(key) = self.cached(case_id) {
            return Ok(key);
        }
        let name = case_name(case_id);
        let key = match self.read(&name).await? {
            Some(bytes) => DataKey::from_bytes(bytes),
            None => {
                let fresh = DataKey::generate();
                if self.create(&name, fresh.as_bytes()).await? {
                    tracing::info!(case_id, "created the case's data key");
                    fresh
                } else {
                    DataKey::from_bytes(self.read_after_lost_race(&name).await?)
                }
            }
        };
        Ok(self.cache(case_id, key))
    }

    /// The case's data key, or `None` when it has none (never created, or
    /// destroyed by an erasure).
    pub async fn case_key(&self, case_id: &str) -> Result<Option<Arc<DataKey>>> {
        check_case_id(case_id)?;
        if let Some(key) = self.cached(case_id) {
            return Ok(Some(key));
        }
        let bytes = self.read(&case_name(case_id)).await?;
        Ok(bytes.map(|bytes| self.cache(case_id, DataKey::from_bytes(bytes))))
    }

    /// The city's index key, created if the bucket has none yet.
    pub async fn index_key(&self) -> Result<Arc<IndexKey>> {
        if let Some(key) = lock(&self.index).clone() {
            return Ok(key);
        }
        let key = match self.read(INDEX_NAME).await? {
            Some(bytes) => IndexKey::from_bytes(bytes),
            None => {
                let fresh = IndexKey::generate();
                if self.create(INDEX_NAME, fresh.as_bytes()).await? {
                    tracing::info!("created the index key");
                    fresh
                } else {
                    IndexKey::from_bytes(self.read_after_lost_race(INDEX_NAME).await?)
                }
            }
        };
        let key = Arc::new(key);
        *lock(&self.index) = Some(key.clone());
        Ok(key)
    }

    /// Destroys the case's data key on every node: drops it from this
    /// node's cache, securely erases every stored message of the key (the
    /// server overwrites it in its files), then purges the key from the
    /// bucket. Other nodes must [`forget`](Self::forget) it too (they do when
    /// they apply the erasure event). Destroying an absent key is fine.
    ///
    /// What stays: a purge marker with the key's name and no value. In a
    /// clustered (replicated) bucket, the replicas' Raft logs may keep the
    /// original append until they are compacted; the wrapped key there is
    /// still sealed under the key-encryption key.
    pub async fn destroy_case_key(&self, case_id: &str) -> Result<()> {
        check_case_id(case_id)?;
        self.forget(case_id);
        let name = case_name(case_id);
        let erased = if self.erasable {
            self.erase_stored(&name).await?
        } else {
            tracing::warn!(
                case_id,
                bucket = %self.kv.name,
                "purging the case's key without erasing it: the bucket denies deletes"
            );
            0
        };
        self.kv
            .purge(&name)
            .await
            .map_err(|e| self.store_error("purge", &name, e))?;
        // A node that read the key between the erase and the purge may have
        // cached it; that is its own `forget` to do. This node's cache:
        self.forget(case_id);
        tracing::info!(case_id, erased, "destroyed the case's data key");
        Ok(())
    }

    /// Drops the case's key from this node's memory only.
    pub fn forget(&self, case_id: &str) {
        lock(&self.cases).remove(case_id);
    }

    fn cached(&self, case_id: &str) -> Option<Arc<DataKey>> {
        lock(&self.cases).get(case_id).cloned()
    }

    fn cache(&self, case_id: &str, key: DataKey) -> Arc<DataKey> {
        let key = Arc::new(key);
        let mut cases = lock(&self.cases);
        if cases.len() >= MAX_CACHED_KEYS {
            cases.clear();
        }
        cases.insert(case_id.to_owned(), key.clone());
        key
    }

    /// Reads and unwraps the key `name`; `None` when absent or purged.
    async fn read(&self, name: &str) -> Result<Option<[u8; 32]>> {
        let wrapped = self
            .kv
            .get(name)
            .await
            .map_err(|e| self.store_error("read", name, e))?;
        match wrapped {
            Some(wrapped) => Ok(Some(self.kek.unwrap(name, &wrapped)?)),
            None => Ok(None),
        }
    }

    /// Stores `key` wrapped as `name` if no key of that name exists; false
    /// when another node's key is already there.
    async fn create(&self, name: &str, key: &[u8; 32]) -> Result<bool> {
        let wrapped = self.kek.wrap(name, key);
        match self.kv.create(name, wrapped.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.store_error("create", name, e)),
        }
    }

    async fn read_after_lost_race(&self, name: &str) -> Result<[u8; 32]> {
        for attempt in 1..=READ_AFTER_CREATE_ATTEMPTS {
            if let Some(bytes) = self.read(name).await? {
                return Ok(bytes);
            }
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
        }
        Err(Error::KeyVanished {
            bucket: self.kv.name.clone(),
            name: name.to_owned(),
        })
    }

    /// Securely erases every message stored under the key `name` (each
    /// revision still in the stream, whatever the bucket's history);
    /// returns how many.
    async fn erase_stored(&self, name: &str) -> Result<u64> {
        let subject = format!("{}{}", self.kv.prefix, name);
        let mut from = 1;
        let mut erased = 0;
        loop {
            let next = self
                .kv
                .stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let message = match next {
                Ok(message) => message,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(erased),
                Err(e) => return Err(self.store_error("find the stored messages of", name, e)),
            };
            let is_value = matches!(
                message
                    .headers
                    .get(KV_OPERATION)
                    .map(|v| v.as_str().parse::<Operation>()),
                None | Some(Ok(Operation::Put))
            );
            if is_value
                && erase_message(&self.kv.stream, message.sequence)
                    .await
                    .map_err(|e| self.store_error("erase", name, e))?
            {
                erased += 1;
            }
            from = message.sequence + 1;
        }
    }

    fn store_error(&self, op: &'static str, name: &str, source: impl Into<Source>) -> Error {
        Error::Store {
            op,
            bucket: self.kv.name.clone(),
            name: name.to_owned(),
            source: source.into(),
        }
    }
}

/// Deletes the message at `sequence` and has the server overwrite it in its
/// files: `STREAM.MSG.DELETE` without `no_erase`, which the server reads as
/// `no_erase: false` (async-nats 0.51's `delete_message` sends just the
/// sequence; the integration tests check that the bytes leave the files).
/// True when erased here, false when it was already gone (another node
/// erased it first).
async fn erase_message(stream: &Stream, sequence: u64) -> Result<bool, Source> {
    let refused: Source = match stream.delete_message(sequence).await {
        Ok(true) => return Ok(true),
        Ok(false) => format!("the server did not erase message {sequence}").into(),
        Err(e) => Box::new(e),
    };
    match stream.get_raw_message(sequence).await {
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(false),
        _ => Err(refused),
    }
}

/// The stream of a key bucket, as async-nats lays one out, but allowing
/// the delete (erase) of a single message.
fn bucket_config(bucket: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("lianxi: wrapped per-case data keys and the index key".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        num_replicas: replicas.max(1),
        allow_rollup: true,
        deny_delete: false,
        deny_purge: false,
        allow_direct: true,
        discard: DiscardPolicy::New,
        ..Default::default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the case's messages from the events stream: every message on
/// `<subject_prefix>.*.<case_id>` (any agency) with a sequence below
/// `below_sequence`, so the erasure event itself and everything after it
/// stay. Returns how many messages were removed.
///
/// The messages carry the agencies' personal values in plain text, and a
/// purge alone leaves their bytes in the server's files until it reclaims
/// the space. So each message is first securely erased (the server
/// overwrites it), then the range is purged to catch any that arrived
/// meanwhile. A stream that denies deletes gets the purge only, with a
/// warning. Idempotent.
pub async fn purge_case_messages(
    stream: &Stream,
    subject_prefix: &str,
    case_id: &str,
    below_sequence: u64,
) -> Result<u64> {
    check_case_id(case_id)?;
    // Sequence 0 would mean "no bound" to the server: remove nothing.
    if below_sequence <= 1 {
        return Ok(0);
    }
    let stream_name = &stream.cached_info().config.name;
    let purge_error = |source: Source| Error::Purge {
        stream: stream_name.clone(),
        case_id: case_id.to_owned(),
        source,
    };
    let filter = format!("{subject_prefix}.*.{case_id}");

    let mut erased = 0;
    let mut from = 1;
    loop {
        let next = stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(filter.clone())
            .send()
            .await;
        let sequence = match next {
            Ok(message) if message.sequence < below_sequence => message.sequence,
            Ok(_) => break,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(purge_error(Box::new(e))),
        };
        match erase_message(stream, sequence).await {
            Ok(true) => erased += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(
                    stream = %stream_name,
                    case_id,
                    sequence,
                    error = %e,
                    "cannot erase the case's messages, only purge them: their bytes stay in \
                     the server's files until it reclaims the space; allow deletes on the \
                     events stream (`nats stream edit {stream_name} --no-deny-delete`)"
                );
                break;
            }
        }
        from = sequence + 1;
    }

    let purged = stream
        .purge()
        .filter(filter)
        .sequence(below_sequence)
        .await
        .map_err(|e| purge_error(Box::new(e)))?
        .purged;
    tracing::info!(
        case_id,
        below_sequence,
        erased,
        purged,
        "removed the case's messages from the events stream"
    );
    Ok(erased + purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids() {
        assert!(check_case_id("HZ-2024_0001").is_ok());
        assert!(check_case_id(&"a".repeat(64)).is_ok());
        for bad in ["", &"a".repeat(65), "a.b", "a*", "a>", "a b", "案件"] {
            assert!(check_case_id(bad).is_err(), "{bad:?}");
        }
    }
}
