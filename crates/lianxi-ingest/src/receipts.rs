//! Receipts to agencies, and lookups of a receipt by event id.
//!
//! Receipts are read back from the log, never from memory: the task sends
//! the receipt of every stream sequence between the last one the bus
//! acknowledged (kept in sled) and the checkpoint. So a receipt goes out only
//! after its group is flushed, a crash never loses one, and a restart only
//! re-sends (the message id `receipt-<stream sequence>` lets JetStream drop
//! the copy within its duplicate window).
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
use lianxi_proto::v1::{Agency, Durability, LookupReply, LookupRequest, Receipt};
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
/// Receipts awaiting the bus's acknowledgement at once.
const MAX_IN_FLIGHT: usize = 1024;

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

/// Sends receipts as the checkpoint advances, until `shutdown`.
pub async fn run_receipts(
    js: jetstream::Context,
    log: Log,
    durability: Durability,
    mut applied: watch::Receiver<Option<GroupReport>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match send_pending(&js, &log, &durability).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(Error::Log(e)) if !e.is_storage_failure() => return Err(Error::Log(e)),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "sending receipts failed; will resend from the last acknowledged one");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        tokio::select! {
            r = applied.changed() => if r.is_err() { return Ok(()) },
            _ = shutdown.changed() => {
                // Send what the last groups produced before stopping.
                let _ = send_pending(&js, &log, &durability).await;
                return Ok(());
            }
        }
    }
}

async fn send_pending(js: &jetstream::Context, log: &Log, durability: &Durability) -> Result<()> {
    let sent = log.receipts_sent()?;
    let cp = log.checkpoint();
    let upto = cp.stream_sequence;
    if upto <= sent {
        return Ok(());
    }
    // What a receipt vouches for is kept where a loss inside sled cannot
    // take it, before the receipt goes out.
    let hw = log.clone();
    tokio::task::spawn_blocking(move || hw.raise_high_water(&cp))
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    let mut in_flight = VecDeque::new();
    for seq in sent + 1..=upto {
        let Some(mut receipt) = log.receipt(seq)? else {
            // A sequence the stream never handed out (deleted or purged).
            continue;
        };
        receipt.durability = Some(durability.clone());
        let subject =
            receipt_subject(Agency::try_from(receipt.agency).unwrap_or(Agency::Unspecified));
        let ack = js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(receipt.encode_to_vec().into())
                    .message_id(format!("receipt-{seq}")),
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
    // Every sequence up to `upto` was either acknowledged or has no message.
    log.set_receipts_sent(upto)?;
    tracing::debug!(from = sent + 1, to = upto, "receipts sent");
    Ok(())
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
