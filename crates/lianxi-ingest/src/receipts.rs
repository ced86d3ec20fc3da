//! Receipts to agencies, and lookups of a receipt by event id.
//!
//! After a group is flushed, its receipts go out from memory: the log's
//! [`GroupReport`] carries the receipt of every message the group processed,
//! exactly as [`Log::receipt`] reads it back. They are used when they
//! continue from the last stream sequence the bus acknowledged (kept in
//! sled, [`Log::receipts_sent`]); any stretch before them that was not sent
//! (after a start, a crash, a failed publish, or a group whose report the
//! watch channel skipped: it keeps only the latest) is read back from the
//! log. So a receipt goes out only after its group is flushed, a crash never
//! loses one, and a restart only re-sends.
//!
//! Each agency gets one message per group, a [`ReceiptBatch`] of its own
//! receipts in stream order on `lianxi.v1.receipts.<agency>` (at most
//! [`BATCH_MAX_RECEIPTS`] receipts and [`BATCH_MAX_BYTES`]; more are split).
//! Its message id, `receipts-<agency>-<first>-<last stream sequence>`,
//! names its content (every receipt of that agency between the two), so
//! JetStream drops a re-sent batch with the same boundaries within its
//! duplicate window. A re-send with other boundaries (what a restart reads
//! back from the log is cut by stretches of the stream, not by the groups
//! that first sent it) is stored again: clients drop the copy of a receipt
//! they have seen, by its stream sequence.
//!
//! Each agency has a durable pull consumer on the receipts stream, named by
//! its token (`police`, `court`, ...) and filtered on its own subject, so an
//! agency that was away reads the receipts it missed, from where it last
//! acknowledged ([`agency_consumer`]). The node creates them; the bus
//! lets an agency only fetch from and acknowledge on its own.
//!
//! Every receipt says what it stands on ([`Durability`]): the replicas of
//! the events stream, the bus's sync setting as the operator stated it, and
//! that the node flushed the event before answering.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures::StreamExt;
use lianxi_log::{GroupReport, Log};
use lianxi_proto::v1::{
    Agency, Checkpoint, Durability, LookupReply, LookupRequest, Receipt, ReceiptBatch,
};
use prost::Message;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The stream receipts are kept in, so an agency can read what it missed.
pub const RECEIPTS_STREAM: &str = "LIANXI_RECEIPTS";
/// Receipts for an agency: `lianxi.v1.receipts.<agency>`.
pub const RECEIPTS_PREFIX: &str = "lianxi.v1.receipts";
/// Lookups by an agency: `lianxi.v1.lookup.<agency>`.
pub const LOOKUP_PREFIX: &str = "lianxi.v1.lookup";
/// Nodes answer lookups as one queue group: one answer per request.
const LOOKUP_QUEUE: &str = "lianxi-nodes";
/// Batches awaiting the bus's acknowledgement at once.
const MAX_IN_FLIGHT: usize = 256;
/// The most receipts in one [`ReceiptBatch`] message.
pub const BATCH_MAX_RECEIPTS: usize = 512;
/// The most encoded bytes of one [`ReceiptBatch`] message, well under the
/// NATS default `max_payload` of 1 MiB (a receipt is a few hundred bytes;
/// a rejection's reason at most 2,000 characters).
pub const BATCH_MAX_BYTES: usize = 256 * 1024;
/// Receipts read back from the log are sent in stretches of the stream
/// aligned to this many sequences (bounded memory; after a crash in the
/// middle of a long catch-up, the stretch is cut the same way again, so
/// JetStream drops what it already has).
const CATCH_UP_STRETCH: u64 = 4096;
/// How often the receipts task looks for a checkpoint no report announced.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// The subject a receipt goes out on: the agency of the subject the message
/// arrived on (its agency token, even when the rest of the subject is
/// malformed), or `unknown` when that subject named no agency.
pub fn receipt_subject(agency: Agency) -> String {
    let token = lianxi_domain::agency_token(agency).unwrap_or("unknown");
    format!("{RECEIPTS_PREFIX}.{token}")
}

/// The name of an agency's durable consumer on the receipts stream.
pub fn agency_consumer(agency: Agency) -> Option<&'static str> {
    lianxi_domain::agency_token(agency)
}

/// The configuration of an agency's receipts consumer: its own subject
/// only, every receipt the stream still holds on the first start, then
/// each acknowledged one by one. An agency never creates or changes it (the
/// bus does not let it), so it cannot widen the filter.
pub fn agency_consumer_config(agency: Agency) -> Option<consumer::pull::Config> {
    let token = lianxi_domain::agency_token(agency)?;
    Some(consumer::pull::Config {
        durable_name: Some(token.to_owned()),
        description: Some(format!("the receipts of {token}, for lianxi-client")),
        filter_subject: format!("{RECEIPTS_PREFIX}.{token}"),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
        ..Default::default()
    })
}

/// What receipts stand on, from the events stream's configuration and the
/// operator's statement of the bus's sync setting (`--bus-sync`).
pub async fn durability(js: &jetstream::Context, bus_sync: &str) -> Result<Durability> {
    let mut stream = js
        .get_stream(crate::STREAM_NAME)
        .await
        .map_err(|e| Error::Stream(e.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|e| Error::Stream(e.to_string()))?;
    Ok(Durability {
        stream_replicas: info.config.num_replicas.max(1) as u32,
        stream_sync: bus_sync.to_owned(),
        node_flushed: true,
    })
}

/// Creates the receipts stream when it is missing, and each agency's
/// durable consumer on it when missing.
pub async fn ensure_receipts_stream(
    js: &jetstream::Context,
    replicas: usize,
    duplicate_window: Duration,
) -> Result<stream::Stream> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: RECEIPTS_STREAM.to_owned(),
            subjects: vec![format!("{RECEIPTS_PREFIX}.>")],
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            duplicate_window,
            // Receipts are a convenience copy: the log is the record. A month
            // covers any agency system's outage.
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Stream(e.to_string()))?;
    for agency in lianxi_domain::ALL_AGENCIES {
        let (Some(name), Some(config)) = (agency_consumer(agency), agency_consumer_config(agency))
        else {
            continue;
        };
        stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| Error::Consumer(format!("the receipts consumer {name}: {e}")))?;
    }
    Ok(stream)
}

/// Sends receipts as the checkpoint advances, until `shutdown`: each
/// group's from memory when they continue what was sent, the rest from the
/// log.
pub async fn run_receipts(
    js: jetstream::Context,
    log: Log,
    durability: Durability,
    mut applied: watch::Receiver<Option<GroupReport>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let sender = Sender {
        js,
        log: log.clone(),
        durability,
    };
    let mut backoff = Duration::from_millis(100);
    // What to send next: `Some(None)` from the log (at start nothing is in
    // memory: whatever was not acknowledged before is read back),
    // `Some(Some(report))` a group's receipts, `None` nothing.
    let mut next: Option<Option<Fresh>> = Some(None);
    let mut idle = tokio::time::interval(IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut still: Option<u64> = None;
    loop {
        if let Some(fresh) = next.take() {
            match sender.send(fresh).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(Error::Log(e)) if !e.is_storage_failure() => return Err(Error::Log(e)),
                Err(e) => {
                    // The next try reads from the log, from the last
                    // acknowledged receipt.
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "sending receipts failed; will resend from the last acknowledged one");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    next = Some(None);
                    continue;
                }
            }
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        tokio::select! {
            r = applied.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                next = Some(latest(&mut applied));
            }
            _ = idle.tick() => {
                // Every group's report follows its flush, so the log is
                // ahead of the reports only for a moment. A checkpoint that
                // stood still since the last look with receipts unsent had
                // no report (a store reopened after a failure read it from
                // disk): from the log.
                let cp = log.checkpoint().stream_sequence;
                if still == Some(cp) && log.receipts_sent().is_ok_and(|sent| sent < cp) {
                    next = Some(None);
                }
                still = Some(cp);
            }
            _ = shutdown.changed() => {
                // Send what the last groups produced before stopping.
                let _ = sender.send(latest(&mut applied)).await;
                let _ = sender.send(None).await;
                return Ok(());
            }
        }
    }
}

/// The receipts of the latest group written, and the checkpoint after it.
struct Fresh {
    checkpoint: Checkpoint,
    receipts: Vec<Receipt>,
}

/// The latest report, marked seen (copied out: the watch's lock is not
/// held across an await, and ingest's next report does not wait for it).
fn latest(applied: &mut watch::Receiver<Option<GroupReport>>) -> Option<Fresh> {
    applied.borrow_and_update().as_ref().map(|r| Fresh {
        checkpoint: r.checkpoint.clone(),
        receipts: r.receipts.clone(),
    })
}

struct Sender {
    js: jetstream::Context,
    log: Log,
    durability: Durability,
}

impl Sender {
    /// Sends every receipt after the last one the bus acknowledged: with
    /// `fresh`, up to its end (its receipts from memory, anything before
    /// them from the log; nothing when it ends before the mark); without,
    /// up to the log's checkpoint, from the log. Records the new mark only
    /// once the bus has acknowledged every batch up to it.
    async fn send(&self, fresh: Option<Fresh>) -> Result<()> {
        let sent = self.log.receipts_sent()?;
        let (cp, memory) = match fresh {
            // Sent already: the log may be further on, but its reports are
            // on their way, and their receipts are in memory.
            Some(f) if f.checkpoint.stream_sequence <= sent => return Ok(()),
            Some(f) => (f.checkpoint, f.receipts),
            None => (self.log.checkpoint(), Vec::new()),
        };
        let upto = cp.stream_sequence;
        if upto <= sent {
            return Ok(());
        }
        // What a receipt vouches for is kept where a loss inside sled cannot
        // take it, before the receipt goes out.
        let hw = self.log.clone();
        tokio::task::spawn_blocking(move || hw.raise_high_water(&cp))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        // The group's receipts cover every message from its first receipt
        // to its checkpoint: below the mark they were sent already (a log
        // that stepped back reads them again), and what lies between the
        // mark and the first of them comes from the log.
        let memory: Vec<Receipt> = memory
            .into_iter()
            .filter(|r| r.stream_sequence > sent && r.stream_sequence <= upto)
            .collect();
        let from_log_until = memory.first().map_or(upto, |r| r.stream_sequence - 1);
        let (from_memory, mut from_log) = (memory.len(), 0);
        let mut pending = Vec::new();
        let mut next = sent + 1;
        while next <= from_log_until {
            let end = stretch_end(next).min(from_log_until);
            let log = self.log.clone();
            let read = tokio::task::spawn_blocking(move || read_receipts(&log, next, end))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            from_log += read.len();
            if end < from_log_until {
                // A whole stretch of a long catch-up: sent, and marked, on
                // its own.
                self.publish(read).await?;
                self.log.set_receipts_sent(end)?;
            } else {
                // The last stretch goes out with the group's receipts.
                pending = read;
            }
            next = end + 1;
        }
        pending.extend(memory);
        self.publish(pending).await?;
        // Every sequence up to `upto` was either acknowledged or has no message.
        self.log.set_receipts_sent(upto)?;
        tracing::debug!(
            from = sent + 1,
            to = upto,
            from_memory,
            from_log,
            "receipts sent"
        );
        Ok(())
    }

    /// Publishes the receipts as batches, one per agency (split at the
    /// caps), and waits until the bus has acknowledged every one.
    async fn publish(&self, mut receipts: Vec<Receipt>) -> Result<()> {
        for r in &mut receipts {
            r.durability = Some(self.durability.clone());
        }
        let mut in_flight = VecDeque::new();
        for batch in batches(receipts) {
            let ack = self
                .js
                .send_publish(
                    batch.subject,
                    PublishMessage::build()
                        .payload(batch.payload.into())
                        .message_id(batch.message_id),
                )
                .await
                .map_err(|e| Error::Receipts(e.to_string()))?;
            in_flight.push_back(ack);
            if in_flight.len() >= MAX_IN_FLIGHT {
                let ack = in_flight.pop_front().expect("not empty");
                ack.await.map_err(|e| Error::Receipts(e.to_string()))?;
            }
        }
        while let Some(ack) = in_flight.pop_front() {
            ack.await.map_err(|e| Error::Receipts(e.to_string()))?;
        }
        Ok(())
    }
}

/// The last stream sequence of the aligned stretch holding `seq`.
fn stretch_end(seq: u64) -> u64 {
    (seq.saturating_sub(1) / CATCH_UP_STRETCH + 1).saturating_mul(CATCH_UP_STRETCH)
}

/// The receipts of stream sequences `from..=to`, read back from the log.
fn read_receipts(log: &Log, from: u64, to: u64) -> Result<Vec<Receipt>> {
    let mut out = Vec::new();
    for seq in from..=to {
        // None: a sequence the stream never handed out (deleted or purged).
        if let Some(receipt) = log.receipt(seq)? {
            out.push(receipt);
        }
    }
    Ok(out)
}

/// One message for the receipts stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub(crate) subject: String,
    pub(crate) message_id: String,
    pub(crate) payload: Vec<u8>,
}

/// The JetStream message id of the batch of `agency`'s receipts from
/// stream sequence `first` to `last`: `receipts-<agency>-<first>-<last>`.
/// Such a batch holds every receipt of that agency between the two, so
/// the id names its content.
pub fn batch_message_id(agency: Agency, first: u64, last: u64) -> String {
    let token = lianxi_domain::agency_token(agency).unwrap_or("unknown");
    format!("receipts-{token}-{first}-{last}")
}

/// Cuts receipts (in stream order) into batches: per agency of the
/// subject, in stream order, each at most [`BATCH_MAX_RECEIPTS`] receipts
/// and [`BATCH_MAX_BYTES`] encoded (a single larger receipt, which the
/// log's bounds rule out, would go alone).
pub(crate) fn batches(receipts: Vec<Receipt>) -> Vec<Batch> {
    // Per agency, in the order agencies first appear: receipts and bytes.
    let mut open: Vec<(Agency, Vec<Receipt>, usize)> = Vec::new();
    let mut out = Vec::new();
    for r in receipts {
        let agency = Agency::try_from(r.agency).unwrap_or(Agency::Unspecified);
        let len = r.encoded_len();
        let bytes = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        let i = match open.iter().position(|(a, _, _)| *a == agency) {
            Some(i) => i,
            None => {
                open.push((agency, Vec::new(), 0));
                open.len() - 1
            }
        };
        let (_, list, size) = &mut open[i];
        if !list.is_empty() && (list.len() >= BATCH_MAX_RECEIPTS || *size + bytes > BATCH_MAX_BYTES)
        {
            out.push(batch(agency, std::mem::take(list)));
            *size = 0;
        }
        list.push(r);
        *size += bytes;
    }
    for (agency, list, _) in open {
        if !list.is_empty() {
            out.push(batch(agency, list));
        }
    }
    out
}

fn batch(agency: Agency, receipts: Vec<Receipt>) -> Batch {
    let first = receipts.first().map_or(0, |r| r.stream_sequence);
    let last = receipts.last().map_or(0, |r| r.stream_sequence);
    Batch {
        subject: receipt_subject(agency),
        message_id: batch_message_id(agency, first, last),
        payload: ReceiptBatch { receipts }.encode_to_vec(),
    }
}

/// Answers `lianxi.v1.lookup.<agency>` requests from the log, until
/// `shutdown`. An agency only ever learns about its own messages.
pub async fn run_lookups(
    client: async_nats::Client,
    log: Log,
    durability: Durability,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut requests = client
        .queue_subscribe(format!("{LOOKUP_PREFIX}.*"), LOOKUP_QUEUE.to_owned())
        .await
        .map_err(|e| Error::Receipts(e.to_string()))?;
    loop {
        let msg = tokio::select! {
            m = requests.next() => match m {
                Some(m) => m,
                None => return Ok(()),
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let agency = msg
            .subject
            .strip_prefix(LOOKUP_PREFIX)
            .and_then(|t| t.strip_prefix('.'))
            .and_then(lianxi_domain::agency_from_token);
        let mut reply = match (agency, LookupRequest::decode(msg.payload.as_ref())) {
            (Some(agency), Ok(req)) => lookup(&log, agency, &req.event_id)?,
            _ => LookupReply::default(),
        };
        if let Some(r) = reply.receipt.as_mut() {
            r.durability = Some(durability.clone());
        }
        if let Err(e) = client.publish(reply_to, reply.encode_to_vec().into()).await {
            tracing::warn!(error = %e, "could not answer a lookup");
        }
    }
}

/// The receipt of one agency's event id. Event ids are each agency's own
/// namespace: the log is asked for (agency, event id), so another agency's
/// event with the same id is never found; the agency check on the receipt
/// stays as a second guard.
fn lookup(log: &Log, agency: Agency, event_id: &str) -> Result<LookupReply> {
    let applied = log.checkpoint().stream_sequence;
    let receipt: Option<Receipt> = log
        .receipt_for_event(agency, event_id)?
        .filter(|r| r.agency == agency as i32);
    Ok(LookupReply {
        found: receipt.is_some(),
        receipt,
        applied_stream_sequence: applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(seq: u64, agency: Agency) -> Receipt {
        Receipt {
            event_id: format!("e-{seq}"),
            agency: agency as i32,
            stream_sequence: seq,
            ..Receipt::default()
        }
    }

    fn decode(b: &Batch) -> Vec<Receipt> {
        ReceiptBatch::decode(b.payload.as_slice())
            .expect("a batch")
            .receipts
    }

    #[test]
    fn one_batch_per_agency_in_stream_order() {
        let agencies = [
            Agency::Police,
            Agency::Court,
            Agency::Police,
            Agency::Unspecified,
            Agency::Court,
            Agency::Police,
        ];
        let receipts: Vec<Receipt> = agencies
            .iter()
            .enumerate()
            .map(|(i, a)| receipt(10 + i as u64, *a))
            .collect();
        let out = batches(receipts);
        let shape: Vec<(&str, &str, Vec<u64>)> = out
            .iter()
            .map(|b| {
                (
                    b.subject.as_str(),
                    b.message_id.as_str(),
                    decode(b).iter().map(|r| r.stream_sequence).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (
                    "lianxi.v1.receipts.police",
                    "receipts-police-10-15",
                    vec![10, 12, 15]
                ),
                (
                    "lianxi.v1.receipts.court",
                    "receipts-court-11-14",
                    vec![11, 14]
                ),
                (
                    "lianxi.v1.receipts.unknown",
                    "receipts-unknown-13-13",
                    vec![13]
                ),
            ]
        );
        assert!(batches(Vec::new()).is_empty());
    }

    #[test]
    fn batches_are_capped_by_count_and_bytes() {
        let n = 2 * BATCH_MAX_RECEIPTS + 3;
        let out = batches((1..=n as u64).map(|s| receipt(s, Agency::Court)).collect());
        let sizes: Vec<usize> = out.iter().map(|b| decode(b).len()).collect();
        assert_eq!(sizes, [BATCH_MAX_RECEIPTS, BATCH_MAX_RECEIPTS, 3]);
        assert_eq!(out[1].message_id, "receipts-court-513-1024");
        let all: Vec<u64> = out
            .iter()
            .flat_map(|b| decode(b).into_iter().map(|r| r.stream_sequence))
            .collect();
        assert_eq!(all, (1..=n as u64).collect::<Vec<_>>());

        // Long rejection reasons: cut by bytes, never above the cap.
        let big: Vec<Receipt> = (1..=200u64)
            .map(|s| Receipt {
                reason: "x".repeat(8000),
                ..receipt(s, Agency::Police)
            })
            .collect();
        let out = batches(big);
        assert!(out.len() > 1);
        for b in &out {
            assert!(b.payload.len() <= BATCH_MAX_BYTES, "{}", b.payload.len());
        }
        let count: usize = out.iter().map(|b| decode(b).len()).sum();
        assert_eq!(count, 200);
    }

    #[test]
    fn catch_up_stretches_are_aligned() {
        assert_eq!(stretch_end(1), CATCH_UP_STRETCH);
        assert_eq!(stretch_end(CATCH_UP_STRETCH), CATCH_UP_STRETCH);
        assert_eq!(stretch_end(CATCH_UP_STRETCH + 1), 2 * CATCH_UP_STRETCH);
        assert_eq!(stretch_end(0), CATCH_UP_STRETCH);
    }
}
