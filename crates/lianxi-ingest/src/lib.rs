//! Reads agency events from NATS JetStream, in stream order, into the log.
//! The only crate that knows NATS.
//!
//! The node keeps no consumer state on the server: it starts an ordered
//! consumer at the stream sequence after its own checkpoint (stored in sled in
//! the same atomic batch as the events it covers), so a crash at any point
//! neither loses nor repeats an event.

#![forbid(unsafe_code)]

mod error;
mod receipts;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig, stream};
use futures::StreamExt;
use lianxi_crypto::KeyStore;
use lianxi_log::{EventOutcome, GroupKeys, GroupReport, Incoming, Log, Prepared};
use lianxi_proto::Timestamp;
use tokio::sync::watch;

pub use error::{Error, Result};
pub use receipts::{
    BATCH_MAX_BYTES, BATCH_MAX_RECEIPTS, LOOKUP_PREFIX, RECEIPTS_PREFIX, RECEIPTS_STREAM,
    agency_consumer, agency_consumer_config, batch_message_id, durability, ensure_receipts_stream,
    receipt_subject, run_lookups, run_receipts,
};

/// The stream every node reads.
pub const STREAM_NAME: &str = "LIANXI_EVENTS";
/// The subjects the stream captures: `lianxi.v1.events.<agency>.<case_id>`.
pub const STREAM_SUBJECTS: &str = "lianxi.v1.events.>";
/// The subject prefix of the events, before `.<agency>.<case_id>`.
pub const EVENTS_PREFIX: &str = "lianxi.v1.events";

/// How the node reads and groups events.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The most events in one atomic write and flush.
    pub batch_max: usize,
    /// How long to wait for more events after the first of a group before
    /// writing it. A lone event lands after at most this delay plus a flush.
    pub batch_delay: Duration,
    /// Replicas of the stream when the node creates it (1 for a single
    /// server, 3 for a cluster).
    pub stream_replicas: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max: 512,
            batch_delay: Duration::from_millis(2),
            stream_replicas: 1,
        }
    }
}

/// Creates the events stream when it is missing, and returns it.
pub async fn ensure_stream(js: &jetstream::Context, replicas: usize) -> Result<stream::Stream> {
    let config = stream::Config {
        name: STREAM_NAME.to_owned(),
        subjects: vec![STREAM_SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        // The bus-level window only saves bandwidth on quick retries; the
        // node's own dedup index is permanent.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| Error::Stream(e.to_string()))
}

/// Reads the stream into the log until `shutdown` turns true. Each group is
/// flushed before its report is published on `applied`.
pub async fn run(
    js: jetstream::Context,
    log: Log,
    keys: Arc<KeyStore>,
    config: IngestConfig,
    applied: watch::Sender<Option<GroupReport>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let stream = ensure_stream(&js, config.stream_replicas).await?;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match read_from_checkpoint(&stream, &log, &keys, &config, &applied, &mut shutdown).await {
            Ok(()) => return Ok(()),
            Err(Error::Log(lianxi_log::Error::KeyUnavailable { what })) => {
                tracing::warn!(%what, "a key was missing when the group was written; fetching it again");
            }
            Err(Error::Log(e)) if e.is_storage_failure() => {
                // Disk full, read-only, an I/O error: nothing of the group
                // counts as written. Wait until the store can write again
                // (reopening it: sled keeps its first I/O error for good),
                // then read from the checkpoint on disk.
                tracing::error!(error = %e, "the log cannot be written; ingest waits for the disk and resumes by itself");
                if !recover(&log, &mut shutdown).await {
                    return Ok(());
                }
                tracing::info!(
                    stream_sequence = log.checkpoint().stream_sequence,
                    "the log can be written again; ingest resumes from its checkpoint"
                );
                backoff = Duration::from_millis(100);
            }
            Err(Error::Log(lianxi_log::Error::Unwritable { reason })) => {
                // Damage found at open: the node keeps serving what it holds
                // (health says why it is not ready) and writes nothing.
                tracing::error!(%reason, "ingest stopped: the log is damaged");
                let _ = shutdown.wait_for(|stop| *stop).await;
                return Ok(());
            }
            Err(Error::Log(e)) => return Err(Error::Log(e)),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "reading the stream failed; resuming from the checkpoint");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often a failed store is tried again.
pub const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// Reopens the log until it can write again, one try every
/// `STORAGE_RETRY`; false when `shutdown` came first.
pub async fn recover(log: &Log, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STORAGE_RETRY) => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return false;
                }
            }
        }
        let attempt = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || log.reopen()).await
        };
        match attempt {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, retry_in_ms = STORAGE_RETRY.as_millis() as u64, "the data directory cannot be written yet")
            }
            Err(e) => tracing::warn!(error = %e, "reopening the data directory failed"),
        }
    }
}

async fn read_from_checkpoint(
    stream: &stream::Stream,
    log: &Log,
    keys: &KeyStore,
    config: &IngestConfig,
    applied: &watch::Sender<Option<GroupReport>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()> {
    let start = log.checkpoint().stream_sequence + 1;
    let deliver_policy = if start <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: start,
        }
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Consumer(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::Consumer(e.to_string()))?;
    tracing::info!(start_stream_sequence = start, "reading the events stream");
    let batch_max = config.batch_max.max(1);
    loop {
        let first = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.changed() => return Ok(()),
        };
        let first = match first {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(Error::Consumer(e.to_string())),
            None => return Err(Error::Consumer("the message stream ended".into())),
        };
        let mut group = vec![incoming(&first)?];
        let deadline = tokio::time::Instant::now() + config.batch_delay;
        while group.len() < batch_max {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => group.push(incoming(&m)?),
                Ok(Some(Err(e))) => {
                    // Apply what we have; the next consumer resumes after it.
                    apply(log, keys, group, applied).await?;
                    return Err(Error::Consumer(e.to_string()));
                }
                Ok(None) | Err(_) => break,
            }
        }
        apply(log, keys, group, applied).await?;
    }
}

async fn apply(
    log: &Log,
    keys: &KeyStore,
    group: Vec<Incoming>,
    applied: &watch::Sender<Option<GroupReport>>,
) -> Result<()> {
    let n = group.len();
    // Fetch (or create) the keys the group will seal with before the
    // blocking write: the log never waits on the network. Each message is
    // decoded once, for both.
    let group = Arc::new(Prepared::new(group));
    let needed = {
        let (log, group) = (log.clone(), group.clone());
        tokio::task::spawn_blocking(move || log.keys_needed(&group))
            .await
            .map_err(|e| Error::Task(e.to_string()))??
    };
    // A new case costs a read and a create in the key store: fetch all of
    // the group's keys at once, not one round trip after another.
    let cases = futures::future::try_join_all(
        needed
            .cases
            .iter()
            .map(|case| async move { keys.ensure_case_key(case).await.map(|key| (case, key)) }),
    );
    let index = async {
        match needed.index {
            true => keys.index_key().await.map(Some),
            false => Ok(None),
        }
    };
    let (cases, index) =
        futures::try_join!(cases, index).map_err(|e| Error::Keys(e.to_string()))?;
    let mut group_keys = GroupKeys::new();
    if let Some(index) = index {
        group_keys.set_index(index);
    }
    for (case, key) in cases {
        group_keys.insert_case(case, key);
    }
    let log = log.clone();
    let report = tokio::task::spawn_blocking(move || log.append(&group, &group_keys))
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    // Every node drops an erased case's key as it applies the erasure; the
    // key store and the bus are cleaned by `run_erasures`.
    for (_, outcome) in &report.outcomes {
        if let EventOutcome::Accepted {
            case_id,
            erased: true,
            ..
        } = outcome
        {
            keys.forget(case_id);
        }
    }
    tracing::debug!(
        events = n,
        stream_sequence = report.checkpoint.stream_sequence,
        global_sequence = report.checkpoint.global_sequence,
        "group written"
    );
    applied.send_replace(Some(report));
    Ok(())
}

/// Finishes every erasure the log has recorded and this node has not yet
/// carried out: destroys the case's key in the key store and purges the
/// case's messages before the erasure from the events stream. Runs at
/// start, after every group that erased a case, and every `retry` while one
/// is left (a key store that was unreachable is tried again). Both steps
/// are idempotent, so every node may run them.
pub async fn run_erasures(
    js: jetstream::Context,
    log: Log,
    keys: Arc<KeyStore>,
    mut applied: watch::Receiver<Option<GroupReport>>,
    retry: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        let pending = {
            let log = log.clone();
            tokio::task::spawn_blocking(move || log.pending_erasures())
                .await
                .map_err(|e| Error::Task(e.to_string()))??
        };
        let mut left = false;
        for (case_id, erasure_sequence) in pending {
            match erase(&js, &keys, &case_id, erasure_sequence).await {
                Ok(purged) => {
                    let log2 = log.clone();
                    let case2 = case_id.clone();
                    tokio::task::spawn_blocking(move || log2.erasure_done(&case2))
                        .await
                        .map_err(|e| Error::Task(e.to_string()))??;
                    tracing::info!(case_id = %case_id, purged_messages = purged, "personal data erased: key destroyed, bus purged");
                }
                Err(e) => {
                    left = true;
                    tracing::warn!(case_id = %case_id, error = %e, retry_in_s = retry.as_secs(), "erasure not finished; trying again");
                }
            }
        }
        // Look again after every group (the watch keeps only the latest
        // report, so an erasure could be missed by inspecting reports; the
        // pending list is one empty prefix scan when there is nothing to
        // do), or after `retry` while one is unfinished.
        let wait = if left {
            retry
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

async fn erase(
    js: &jetstream::Context,
    keys: &KeyStore,
    case_id: &str,
    erasure_sequence: u64,
) -> Result<u64> {
    keys.destroy_case_key(case_id)
        .await
        .map_err(|e| Error::Keys(e.to_string()))?;
    let stream = js
        .get_stream(STREAM_NAME)
        .await
        .map_err(|e| Error::Stream(e.to_string()))?;
    lianxi_crypto::purge_case_messages(&stream, EVENTS_PREFIX, case_id, erasure_sequence)
        .await
        .map_err(|e| Error::Keys(e.to_string()))
}

fn incoming(m: &jetstream::Message) -> Result<Incoming> {
    let info = m.info().map_err(|e| Error::Consumer(e.to_string()))?;
    let published = info.published;
    Ok(Incoming {
        stream_sequence: info.stream_sequence,
        subject: m.subject.to_string(),
        recorded_at: Timestamp {
            seconds: published.unix_timestamp(),
            nanos: published.nanosecond() as i32,
        },
        payload: m.payload.to_vec(),
    })
}
