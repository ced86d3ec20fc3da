//! The agency side of lianxi: publish case events, get a receipt for each.
//!
//! An agency system (police records, a court's case management, the 12338
//! hotline desk) publishes [`Event`]s and learns, for each, whether a lianxi
//! node stored it ([`ReceiptStatus::Accepted`], with its place in the log),
//! already had it ([`ReceiptStatus::Duplicate`]) or refused it
//! ([`ReceiptStatus::Rejected`], with a code and a reason to act on). Each
//! receipt says what it stands on ([`Receipt::durability`]: the bus's
//! replicas and sync setting, and that the node flushed it).
//!
//! What the client guarantees:
//!
//! - **Outages are ridden out.** A publish keeps trying to get the bus to
//!   store the event for [`Options::publish_timeout`] (10 minutes by
//!   default), reconnecting as needed, then waits up to
//!   [`Options::receipt_timeout`] (10 minutes) for its receipt, asking the
//!   nodes by event id when it is slow. Retries carry the same message id,
//!   so the bus keeps one copy; the node's log keeps the event once forever.
//! - **A retry is not a duplicate.** When the bus or the log already holds
//!   this publish's own earlier copy (stored, but its acknowledgement lost
//!   in an outage), the answer is [`ReceiptStatus::Accepted`] with the
//!   original's place in the log. [`ReceiptStatus::Duplicate`] means the
//!   event was in the log before this publish began.
//! - **A re-send reaches the node.** Every publish (not every retry) gets a
//!   message id of its own, so publishing an event again after a rejection
//!   is not swallowed by the bus's duplicate window, and its own receipt
//!   (not the old rejection) comes back.
//! - **One case's events stay in order.** The client publishes an event
//!   only after the earlier events of the same case that it was given have
//!   their receipts, so a retry can never land behind a later event.
//! - **A waiting case holds up no other.** In [`Client::publish_all`] (and
//!   [`Client::publish_each`]) only events on the wire count against
//!   [`Options::max_in_flight`]: an event waiting for an earlier event of
//!   its case, or for its next re-send after `PREDECESSOR_MISSING`, takes
//!   no slot, and the other cases' events keep flowing at full rate.
//! - **A missing predecessor is waited for.** A rejection
//!   [`RejectionCode::PredecessorMissing`] (only an earlier event of the
//!   case, e.g. another agency's referral, is not in the log yet) is not
//!   final: the client publishes the event again, with backoff, for up to
//!   [`Options::predecessor_wait`], and answers with the last receipt.
//! - **Missed receipts can be read.** An agency's receipts are also kept on
//!   the bus; [`Client::missed_receipts`] reads them from the agency's own
//!   durable consumer, from the last one it acknowledged.
//! - **Each receipt once.** Nodes send an agency's receipts in batches (one
//!   [`ReceiptBatch`] message per agency per group they write); the client
//!   splits them, and drops a copy of a receipt it has already handled (by
//!   its stream sequence): a node that restarts sends again what the bus had
//!   not acknowledged, in batches of other boundaries, and several nodes
//!   each send their own.
//!
//! ```no_run
//! # async fn example() -> Result<(), lianxi_client::Error> {
//! use lianxi_client::{Client, Options};
//! use lianxi_proto::v1::{Agency, Event, ReceiptStatus};
//!
//! let client = Client::connect(
//!     "nats://police:secret@nats.example:4222",
//!     Options::for_agency(Agency::Police),
//! )
//! .await?;
//! # let event = Event::default();
//! let receipt = client.publish(&event).await?;
//! match ReceiptStatus::try_from(receipt.status) {
//!     Ok(ReceiptStatus::Accepted | ReceiptStatus::Duplicate) => { /* stored */ }
//!     _ => eprintln!("rejected: {}", receipt.reason),
//! }
//!
//! // Many events, at most `max_in_flight` on the wire, receipts in order.
//! # let events: Vec<Event> = vec![];
//! let receipts = client.publish_all(events).await;
//!
//! // After the agency system was down: what became of what it sent.
//! for missed in client.missed_receipts(100, std::time::Duration::from_secs(1)).await? {
//!     println!("{} {:?}", missed.receipt.event_id, missed.receipt.status);
//!     missed.ack().await?; // next time, start after this one
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod error;
mod schedule;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, context::PublishAckFuture, message::PublishMessage};
use futures::StreamExt;
use lianxi_proto::v1::{
    Agency, Event, LookupReply, LookupRequest, Receipt, ReceiptBatch, ReceiptStatus, RejectionCode,
};
use prost::Message;
use tokio::sync::{mpsc, watch};

pub use error::Error;

/// Receipts for an agency arrive on `lianxi.v1.receipts.<agency>`.
pub const RECEIPTS_PREFIX: &str = "lianxi.v1.receipts";
/// Lookups of a receipt by event id go to `lianxi.v1.lookup.<agency>`.
pub const LOOKUP_PREFIX: &str = "lianxi.v1.lookup";
/// The stream receipts are kept in; each agency's durable consumer on it is
/// named by the agency's token (`police`).
pub const RECEIPTS_STREAM: &str = "LIANXI_RECEIPTS";
/// How many receipts (by stream sequence) the client remembers having
/// handled, to drop copies: a re-sent batch follows its first copy within
/// far fewer.
const REMEMBERED_RECEIPTS: usize = 65_536;
/// The receipts consumer's ack wait is 30 s (set by the node): receipts of
/// a batch fetched but not yet handed out are kept for the next call for at
/// most this long since the bus last heard about the batch, after which the
/// bus may deliver it again.
const LEFTOVER_FOR: Duration = Duration::from_secs(20);

/// The receipts in one message on a receipts subject: every such message
/// is a [`ReceiptBatch`] (one agency's receipts from one group, in stream
/// order). An error for bytes that are not one.
pub fn decode_receipts(payload: &[u8]) -> Result<Vec<Receipt>, prost::DecodeError> {
    ReceiptBatch::decode(payload).map(|b| b.receipts)
}

/// The stream sequences of the receipts most recently handled, at most
/// `cap`: a copy of one of them is dropped.
#[derive(Debug)]
struct Seen {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Seen {
    fn new(cap: usize) -> Seen {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn contains(&self, stream_sequence: u64) -> bool {
        self.set.contains(&stream_sequence)
    }

    /// False when it was there already.
    fn insert(&mut self, stream_sequence: u64) -> bool {
        if !self.set.insert(stream_sequence) {
            return false;
        }
        self.order.push_back(stream_sequence);
        if self.order.len() > self.cap
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        true
    }
}

/// How the client behaves. The defaults ride out a bus or node outage of
/// minutes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The agency this client publishes for. With an agency, the client
    /// listens only to that agency's receipts and uses the inbox prefix
    /// `_INBOX_<agency>` that the bus's per-agency permissions expect.
    /// Without one (development, tools), it may publish for any agency.
    pub agency: Option<Agency>,
    /// How long `publish` waits for a receipt after the bus stored the event
    /// (10 minutes).
    pub receipt_timeout: Duration,
    /// How long to wait for the bus to acknowledge one publish attempt.
    pub ack_timeout: Duration,
    /// How long to keep trying to get the bus to store an event, across
    /// reconnections (10 minutes).
    pub publish_timeout: Duration,
    /// At most this many attempts within `publish_timeout`.
    pub publish_attempts: u32,
    /// While waiting for a receipt, ask the nodes this often.
    pub lookup_interval: Duration,
    /// How long to keep re-sending an event rejected only because an
    /// earlier event of its case is missing (`PREDECESSOR_MISSING`), for
    /// that event to arrive (60 s). Zero: never re-send.
    pub predecessor_wait: Duration,
    /// Most events on the wire in `publish_all` / `publish_each`: sent and
    /// awaiting the bus's acknowledgement (retried through an outage) or
    /// their receipt. Events waiting for an earlier event of their case, or
    /// for a re-send after `PREDECESSOR_MISSING`, do not count.
    pub max_in_flight: usize,
    /// The connection's name, as the server's monitoring shows it.
    pub name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            agency: None,
            receipt_timeout: Duration::from_secs(600),
            ack_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(600),
            publish_attempts: 100_000,
            lookup_interval: Duration::from_secs(2),
            predecessor_wait: Duration::from_secs(60),
            max_in_flight: 256,
            name: "lianxi-client".into(),
        }
    }
}

impl Options {
    pub fn for_agency(agency: Agency) -> Self {
        Options {
            agency: Some(agency),
            ..Options::default()
        }
    }
}

/// Is the event in the log (now or before)?
pub fn is_stored(receipt: &Receipt) -> bool {
    matches!(
        ReceiptStatus::try_from(receipt.status),
        Ok(ReceiptStatus::Accepted | ReceiptStatus::Duplicate)
    )
}

type Waiters = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Receipt>>>>>;

/// What became of an event, as a later event of the same case needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Stored,
    NotStored,
}

impl Outcome {
    /// Stored only when both are.
    fn and(self, other: Outcome) -> Outcome {
        if self == Outcome::Stored && other == Outcome::Stored {
            Outcome::Stored
        } else {
            Outcome::NotStored
        }
    }
}

/// The last event of each case this client is working on: a later event of
/// the case waits for it.
type Cases = Arc<Mutex<HashMap<String, (u64, watch::Receiver<Outcome>)>>>;

/// A connection for publishing events. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    js: jetstream::Context,
    options: Options,
    waiters: Waiters,
    cases: Cases,
    /// Makes each publish's message id unique: `<event id>~<nonce>-<n>`.
    nonce: String,
    counter: AtomicU64,
    /// When this client was made, and when (milliseconds after that) it
    /// last warned that the bus is not storing its events: one warning per
    /// `STALL_WARNING_EVERY` for the whole client, not one per event.
    started: tokio::time::Instant,
    last_stall_warning: AtomicU64,
    dispatcher: tokio::task::JoinHandle<()>,
    /// What `missed_receipts` has handed out and been told is handled, and
    /// what it fetched but has not handed out yet.
    missed: tokio::sync::Mutex<VecDeque<Leftover>>,
    handled: Arc<Mutex<Seen>>,
}

/// How long the bus may refuse an event before the client says so.
const STALL_WARNING_AFTER: Duration = Duration::from_secs(5);
/// How often the client repeats that warning while it lasts.
const STALL_WARNING_EVERY: Duration = Duration::from_secs(30);

impl Drop for Inner {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

impl Client {
    /// Connects to NATS (credentials in the URL, e.g.
    /// `nats://police:secret@host:4222`) and starts listening for receipts.
    pub async fn connect(url: &str, options: Options) -> Result<Client, Error> {
        let mut connect = connect_options(url)
            .name(options.name.clone())
            .connection_timeout(Duration::from_secs(5))
            // Back within a second of the bus coming back, however long it
            // was away.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50u64.saturating_mul(1 << attempts.min(5)).min(1000))
            });
        let token = match options.agency {
            Some(a) => Some(lianxi_domain::agency_token(a).ok_or(Error::NoAgency)?),
            None => None,
        };
        if let Some(t) = token {
            connect = connect.custom_inbox_prefix(format!("_INBOX_{t}"));
        }
        let nats = connect.connect(url).await.map_err(|e| Error::Connect {
            url: redact(url),
            detail: e.to_string(),
        })?;
        let subject = match token {
            Some(t) => format!("{RECEIPTS_PREFIX}.{t}"),
            None => format!("{RECEIPTS_PREFIX}.>"),
        };
        let mut receipts = nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::Subscribe {
                subject: subject.clone(),
                detail: e.to_string(),
            })?;
        // The subscription is in place before any publish, so no receipt
        // for this client's events can pass unseen while connected (what
        // passes during a disconnection is asked for by lookup).
        nats.flush().await.map_err(|e| Error::Subscribe {
            subject,
            detail: e.to_string(),
        })?;
        let waiters: Waiters = Arc::default();
        let dispatch_to = waiters.clone();
        let dispatcher = tokio::spawn(async move {
            let mut seen = Seen::new(REMEMBERED_RECEIPTS);
            while let Some(msg) = receipts.next().await {
                let batch = match decode_receipts(msg.payload.as_ref()) {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(subject = %lianxi_domain::printable(&msg.subject, 200), bytes = msg.payload.len(), error = %e, "unreadable message on a receipts subject; skipped");
                        continue;
                    }
                };
                let map = dispatch_to.lock().unwrap_or_else(|p| p.into_inner());
                for receipt in batch {
                    // A copy (a node re-sent it after a restart, or
                    // another node sent it too): already dispatched.
                    if !seen.insert(receipt.stream_sequence) {
                        continue;
                    }
                    if let Some(senders) = map.get(&receipt.event_id) {
                        for s in senders {
                            let _ = s.send(receipt.clone());
                        }
                    }
                }
            }
        });
        let js = jetstream::new(nats.clone());
        Ok(Client {
            inner: Arc::new(Inner {
                nats,
                js,
                options,
                waiters,
                cases: Arc::default(),
                nonce: nonce(),
                counter: AtomicU64::new(0),
                started: tokio::time::Instant::now(),
                last_stall_warning: AtomicU64::new(0),
                dispatcher,
                missed: tokio::sync::Mutex::new(VecDeque::new()),
                handled: Arc::new(Mutex::new(Seen::new(REMEMBERED_RECEIPTS))),
            }),
        })
    }

    /// Publishes one event and waits for its receipt.
    ///
    /// Returns the receipt whatever it says; use [`is_stored`] to tell
    /// success. Errors mean the outcome is unknown (the bus never
    /// acknowledged the event, or no node answered in time): publishing the
    /// same event again is always safe.
    pub async fn publish(&self, event: &Event) -> Result<Receipt, Error> {
        self.submit(event.clone()).await?.receipt().await
    }

    /// Publishes many events and returns their results in input order.
    ///
    /// At most [`Options::max_in_flight`] events are on the wire at a time.
    /// An event goes out only after the earlier events of its case (in this
    /// call, and any in flight in other calls on this client) have their
    /// receipts, so one case's events land in input order whatever has to
    /// be retried; meanwhile the other cases' events keep the wire full. An
    /// event rejected `PREDECESSOR_MISSING` is published again on a timer,
    /// holding no slot while it waits. The input is read only as far as it
    /// takes to fill the wire.
    pub async fn publish_all(
        &self,
        events: impl IntoIterator<Item = Event>,
    ) -> Vec<Result<Receipt, Error>> {
        let mut scheduler = schedule::Scheduler::new(self.clone(), events.into_iter());
        let mut results: Vec<Option<Result<Receipt, Error>>> = Vec::new();
        while let Some((index, result)) = scheduler.next().await {
            if results.len() <= index {
                results.resize_with(index + 1, || None);
            }
            results[index] = Some(result);
        }
        // Every event read is finished before the scheduler ends.
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Closed)))
            .collect()
    }

    /// Like [`Client::publish_all`], but hands out each event's result as
    /// soon as it is final, as `(position in the input, result)`: in the
    /// order the events finish, not the input order. The events make
    /// progress while the stream is polled.
    pub fn publish_each<I>(
        &self,
        events: I,
    ) -> impl futures::Stream<Item = (usize, Result<Receipt, Error>)> + use<I>
    where
        I: IntoIterator<Item = Event>,
    {
        let scheduler = schedule::Scheduler::new(self.clone(), events.into_iter());
        futures::stream::unfold(scheduler, |mut s| async move {
            let next = s.next().await?;
            Some((next, s))
        })
    }

    /// The event's subject and agency, or why this client cannot publish
    /// it.
    fn check(&self, event: &Event) -> Result<(String, Agency), Error> {
        let subject = lianxi_domain::event_subject(event).map_err(|r| Error::InvalidEvent {
            event_id: event.event_id.clone(),
            reason: r.reason,
        })?;
        let agency = Agency::try_from(event.agency).unwrap_or(Agency::Unspecified);
        if let Some(mine) = self.inner.options.agency
            && mine != agency
        {
            return Err(Error::WrongAgency {
                event_id: event.event_id.clone(),
                client: lianxi_domain::agency_name(mine),
                event: lianxi_domain::agency_name(agency),
            });
        }
        Ok((subject, agency))
    }

    /// Checks the event and starts listening for its receipt. When no
    /// earlier event of its case is still in flight in this client, hands it
    /// to the bus at once (events submitted one after another reach the bus
    /// in that order); otherwise it goes out once that event has its
    /// receipt. Await each [`Pending::receipt`] whenever suits (this is how
    /// `publish_all` pipelines); a pending event makes progress only while
    /// its receipt is awaited.
    pub async fn submit(&self, event: Event) -> Result<Pending, Error> {
        let (subject, agency) = self.check(&event)?;
        let guard = self.wait_for(&event.event_id);
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = watch::channel(Outcome::Pending);
        let before = self
            .inner
            .cases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(event.case_id.clone(), (n, done_rx))
            .map(|(_, rx)| rx);
        let done = CaseTurn {
            cases: self.inner.cases.clone(),
            case_id: event.case_id.clone(),
            n,
            tx: done_tx,
        };
        let message_id = self.message_id(&event.event_id, n);
        // Nothing of the case in flight (or it is already done): out now.
        let first = match &before {
            Some(rx) if *rx.borrow() == Outcome::Pending && rx.has_changed().is_ok() => None,
            _ => Some(self.send(&subject, &event, &message_id).await),
        };
        Ok(Pending {
            client: self.clone(),
            event,
            subject,
            agency,
            message_id,
            first,
            before,
            guard,
            done,
        })
    }

    /// Asks the nodes what became of an event id (one node answers).
    /// `found: false` when no node has processed it yet.
    pub async fn lookup(&self, agency: Agency, event_id: &str) -> Result<LookupReply, Error> {
        let token = lianxi_domain::agency_token(agency).ok_or(Error::NoAgency)?;
        let request = LookupRequest {
            event_id: event_id.to_owned(),
        };
        let reply = tokio::time::timeout(
            self.inner.options.ack_timeout,
            self.inner.nats.request(
                format!("{LOOKUP_PREFIX}.{token}"),
                request.encode_to_vec().into(),
            ),
        )
        .await
        .map_err(|_| Error::Lookup {
            event_id: event_id.to_owned(),
            detail: "no node answered in time".into(),
        })?
        .map_err(|e| Error::Lookup {
            event_id: event_id.to_owned(),
            detail: e.to_string(),
        })?;
        LookupReply::decode(reply.payload.as_ref()).map_err(|e| Error::Lookup {
            event_id: event_id.to_owned(),
            detail: format!("unreadable reply: {e}"),
        })
    }

    /// Reads up to `max` of this agency's receipts that it has not yet
    /// acknowledged, oldest first, from its durable consumer on the receipts
    /// stream (waiting at most `wait` for the first). Acknowledge each with
    /// [`MissedReceipt::ack`] once handled: the next call resumes after the
    /// last acknowledged one, in this process or the next. A receipt not
    /// acknowledged within 30 s is delivered again. Needs
    /// [`Options::agency`]; the bus lets an agency read only its own.
    ///
    /// The consumer holds batches (one message per group a node wrote);
    /// this splits them. A batch is acknowledged on the bus once every one
    /// of its receipts is: a process that stops half way through one gets
    /// the whole batch again next time. A receipt this client has already
    /// handed out and seen acknowledged (a node re-sent it in another
    /// batch) is not handed out again. Receipts of a batch beyond `max`
    /// are kept for the next call.
    pub async fn missed_receipts(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<MissedReceipt>, Error> {
        let agency = self.inner.options.agency.ok_or(Error::NoAgency)?;
        let name = lianxi_domain::agency_token(agency).ok_or(Error::NoAgency)?;
        let fail = |detail: String| Error::MissedReceipts {
            consumer: format!("{RECEIPTS_STREAM}/{name}"),
            detail,
        };
        let max = max.max(1);
        // One call at a time: the leftovers are handed out in order.
        let mut leftovers = self.inner.missed.lock().await;
        let mut out = Vec::new();
        let mut this_call = HashSet::new();
        // Receipts fetched by an earlier call that did not fit: first, as
        // long as the bus still holds their batch for us.
        let mut kept: Option<Arc<MissedBatch>> = None;
        while out.len() < max
            && let Some(left) = leftovers.pop_front()
        {
            let known = kept.as_ref().is_some_and(|k| Arc::ptr_eq(k, &left.batch));
            if !known {
                if !left.batch.keep().await {
                    // The bus delivers the whole batch again.
                    leftovers.retain(|l| !Arc::ptr_eq(&l.batch, &left.batch));
                    continue;
                }
                kept = Some(left.batch.clone());
            }
            this_call.insert(left.receipt.stream_sequence);
            out.push(left.into_missed());
        }
        let deadline = tokio::time::Instant::now() + wait.max(Duration::from_millis(10));
        let consumer: Option<jetstream::consumer::PullConsumer> = if out.len() < max {
            Some(
                self.inner
                    .js
                    .get_consumer_from_stream(name, RECEIPTS_STREAM)
                    .await
                    .map_err(|e| fail(e.to_string()))?,
            )
        } else {
            None
        };
        while let Some(consumer) = &consumer
            && out.len() < max
            && leftovers.is_empty()
        {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            // Each message holds up to 512 receipts: a few at a time, so
            // little is fetched beyond `max`.
            let mut fetched = consumer
                .fetch()
                .max_messages((max - out.len()).min(8))
                .expires(left.max(Duration::from_millis(10)))
                .messages()
                .await
                .map_err(|e| fail(e.to_string()))?;
            let mut any = false;
            while let Some(m) = fetched.next().await {
                let m = m.map_err(|e| fail(e.to_string()))?;
                any = true;
                let stream_sequence = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                let receipts = match decode_receipts(m.payload.as_ref()) {
                    Ok(receipts) => receipts,
                    Err(e) => {
                        // Not a batch of receipts: nothing to hand over;
                        // acknowledge it so it does not come back forever.
                        tracing::warn!(stream_sequence, error = %e, "unreadable message on the receipts stream; skipped");
                        let _ = m.ack().await;
                        continue;
                    }
                };
                let new: Vec<Receipt> = {
                    let handled = self.inner.handled.lock().unwrap_or_else(|p| p.into_inner());
                    receipts
                        .into_iter()
                        .filter(|r| {
                            !handled.contains(r.stream_sequence)
                                && this_call.insert(r.stream_sequence)
                        })
                        .collect()
                };
                if new.is_empty() {
                    // Every receipt in it was handled already (a re-sent
                    // copy): done with it.
                    let _ = m.ack().await;
                    continue;
                }
                let batch = Arc::new(MissedBatch {
                    message: m,
                    stream_sequence,
                    left: AtomicUsize::new(new.len()),
                    touched: Mutex::new(tokio::time::Instant::now()),
                    handled: self.inner.handled.clone(),
                });
                for receipt in new {
                    let left = Leftover {
                        receipt,
                        batch: batch.clone(),
                    };
                    if out.len() < max {
                        out.push(left.into_missed());
                    } else {
                        leftovers.push_back(left);
                    }
                }
            }
            if !any {
                break;
            }
        }
        Ok(out)
    }

    fn message_id(&self, event_id: &str, n: u64) -> String {
        format!("{event_id}~{}-{n}", self.inner.nonce)
    }

    async fn send(
        &self,
        subject: &str,
        event: &Event,
        message_id: &str,
    ) -> Result<PublishAckFuture, String> {
        // While the connection is down the client's queue fills and a send
        // waits for the reconnection: bounded, so the deadline still holds.
        let send = self.inner.js.send_publish(
            subject.to_owned(),
            PublishMessage::build()
                .payload(bytes_of(event))
                .message_id(message_id),
        );
        match tokio::time::timeout(self.inner.options.ack_timeout, send).await {
            Ok(sent) => sent.map_err(|e| e.to_string()),
            Err(_) => Err("the connection to the bus is not sending (reconnecting?)".into()),
        }
    }

    /// Gets the event onto the stream: returns its stream sequence and
    /// whether an attempt may have stored a copy without its
    /// acknowledgement reaching us. Retries with backoff until
    /// `publish_timeout`; the message id makes a retry harmless.
    async fn store(
        &self,
        subject: &str,
        event: &Event,
        message_id: &str,
        mut first: Option<Result<PublishAckFuture, String>>,
    ) -> Result<(u64, bool), Error> {
        let opts = &self.inner.options;
        let deadline = tokio::time::Instant::now() + opts.publish_timeout;
        let mut backoff = Duration::from_millis(50);
        let mut unacknowledged = false;
        let mut attempts = 0;
        let began = tokio::time::Instant::now();
        loop {
            attempts += 1;
            let sent = match first.take() {
                Some(sent) => sent,
                None => self.send(subject, event, message_id).await,
            };
            let last_error = match sent {
                Ok(ack) => match tokio::time::timeout(opts.ack_timeout, ack).await {
                    Ok(Ok(ack)) => return Ok((ack.sequence, unacknowledged || ack.duplicate)),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no acknowledgement in time".to_owned(),
                },
                Err(e) => e,
            };
            // The message may have reached the stream all the same.
            unacknowledged = true;
            if attempts >= opts.publish_attempts.max(1)
                || tokio::time::Instant::now() + backoff >= deadline
            {
                return Err(Error::Publish {
                    event_id: event.event_id.clone(),
                    attempts,
                    detail: last_error,
                });
            }
            tracing::debug!(event_id = %event.event_id, attempts, error = %last_error, "publish not acknowledged; retrying");
            if began.elapsed() >= STALL_WARNING_AFTER {
                self.warn_stalled(subject, began.elapsed(), deadline, &last_error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Says, at most once per `STALL_WARNING_EVERY` for the whole client,
    /// that the bus has not stored an event for a while and what to check.
    fn warn_stalled(
        &self,
        subject: &str,
        waited: Duration,
        deadline: tokio::time::Instant,
        error: &str,
    ) {
        let inner = &self.inner;
        let now = inner.started.elapsed().as_millis() as u64 + 1;
        let last = inner.last_stall_warning.load(Ordering::Relaxed);
        if last != 0 && now < last + STALL_WARNING_EVERY.as_millis() as u64 {
            return;
        }
        if inner
            .last_stall_warning
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let hint = if error.contains("no stream") || error.contains("no responders") {
            "no JetStream stream stores this subject on this server: start a lianxi node against it (the node creates the events stream), or check --nats-url"
        } else {
            "the bus is unreachable or not answering: check that nats-server is up and --nats-url points at it"
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tracing::warn!(
            subject = %lianxi_domain::printable(subject, 200),
            waited_s = waited.as_secs(),
            retrying_for_s = left.as_secs(),
            error = %error,
            "the bus has not stored an event yet; {hint}; still retrying"
        );
    }

    /// Waits for the receipt of the message at `stream_sequence`. With
    /// `maybe_earlier_copy` (an attempt of this publish went unacknowledged,
    /// or the bus said it already had the message), a `Duplicate` may be
    /// about this publish's own earlier copy: it is answered as `Accepted`,
    /// with the original's place in the log.
    async fn await_receipt(
        &self,
        event: &Event,
        agency: Agency,
        stream_sequence: u64,
        maybe_earlier_copy: bool,
        guard: &mut WaitGuard,
    ) -> Result<Receipt, Error> {
        let opts = &self.inner.options;
        let deadline = tokio::time::Instant::now() + opts.receipt_timeout;
        // A receipt sent while we were disconnected is never seen: when the
        // bus already had the message, ask at once rather than wait.
        let mut next_lookup = if maybe_earlier_copy {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::now() + opts.lookup_interval
        };
        let receipt = loop {
            tokio::select! {
                r = guard.rx.recv() => match r {
                    Some(r) if r.stream_sequence == stream_sequence => break r,
                    // The event is in the log from another message: ours is
                    // (or will be) a duplicate of it.
                    Some(r) if r.status == ReceiptStatus::Accepted as i32 => break r,
                    Some(_) => {}
                    None => return Err(Error::Closed),
                },
                _ = tokio::time::sleep_until(next_lookup) => {
                    next_lookup = tokio::time::Instant::now() + opts.lookup_interval;
                    match self.lookup(agency, &event.event_id).await {
                        Ok(LookupReply { found: true, receipt: Some(r), .. })
                            if r.stream_sequence == stream_sequence
                                || r.status == ReceiptStatus::Accepted as i32 => break r,
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "lookup failed; still waiting for the receipt"),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::ReceiptTimeout {
                        event_id: event.event_id.clone(),
                        stream_sequence,
                        waited: opts.receipt_timeout,
                    });
                }
            }
        };
        let status = ReceiptStatus::try_from(receipt.status).unwrap_or_default();
        Ok(match status {
            // Our own message was stored and applied.
            ReceiptStatus::Accepted if receipt.stream_sequence == stream_sequence => receipt,
            // Another message holds the event: ours added nothing, unless
            // that message may be our own earlier copy.
            ReceiptStatus::Accepted => {
                if maybe_earlier_copy {
                    receipt
                } else {
                    Receipt {
                        status: ReceiptStatus::Duplicate as i32,
                        original_global_sequence: receipt.global_sequence,
                        stream_sequence,
                        ..receipt
                    }
                }
            }
            ReceiptStatus::Duplicate if maybe_earlier_copy => {
                // Show the original's place in the log, as a receipt of it.
                match self.lookup(agency, &event.event_id).await {
                    Ok(LookupReply {
                        found: true,
                        receipt: Some(original),
                        ..
                    }) if original.status == ReceiptStatus::Accepted as i32 => original,
                    _ => receipt,
                }
            }
            _ => receipt,
        })
    }

    fn wait_for(&self, event_id: &str) -> WaitGuard {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(event_id.to_owned())
            .or_default()
            .push(tx);
        WaitGuard {
            waiters: self.inner.waiters.clone(),
            event_id: event_id.to_owned(),
            rx,
        }
    }
}

/// A receipt read back from the agency's durable consumer.
pub struct MissedReceipt {
    pub receipt: Receipt,
    /// The place in the receipts stream of the batch message holding this
    /// receipt (the receipts of one batch share it).
    pub stream_sequence: u64,
    batch: Arc<MissedBatch>,
    acked: AtomicBool,
}

impl MissedReceipt {
    /// Marks this receipt as handled: it is not delivered again. Once every
    /// receipt of its batch is, the batch is acknowledged on the bus (until
    /// then, each acknowledgement tells the bus that the batch is being
    /// worked on, so it is not delivered again meanwhile).
    pub async fn ack(&self) -> Result<(), Error> {
        if self.acked.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let batch = &self.batch;
        let result = if batch.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let acked = batch.message.double_ack().await;
            if acked.is_err() {
                batch.left.fetch_add(1, Ordering::SeqCst);
            }
            acked
        } else {
            batch.touch();
            batch.message.ack_with(AckKind::Progress).await
        };
        match result {
            Ok(()) => {
                batch
                    .handled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(self.receipt.stream_sequence);
                Ok(())
            }
            Err(e) => {
                self.acked.store(false, Ordering::SeqCst);
                Err(Error::MissedReceipts {
                    consumer: RECEIPTS_STREAM.into(),
                    detail: format!(
                        "acknowledging the receipt of stream sequence {} (batch {}): {e}",
                        self.receipt.stream_sequence, self.batch.stream_sequence
                    ),
                })
            }
        }
    }
}

/// One batch message fetched from the agency's consumer, shared by its
/// receipts.
struct MissedBatch {
    message: jetstream::Message,
    stream_sequence: u64,
    /// Its receipts handed out (or to be) and not yet acknowledged: the
    /// message is acknowledged when this reaches zero.
    left: AtomicUsize,
    /// When the bus last heard from us about it (fetch, progress).
    touched: Mutex<tokio::time::Instant>,
    handled: Arc<Mutex<Seen>>,
}

impl MissedBatch {
    fn touch(&self) {
        *self.touched.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }

    /// Before handing out a receipt kept from an earlier call: true when
    /// the bus still holds the batch for us (and has been told we are on
    /// it), false when it may deliver it again by now.
    async fn keep(&self) -> bool {
        let touched = *self.touched.lock().unwrap_or_else(|p| p.into_inner());
        if touched.elapsed() >= LEFTOVER_FOR {
            return false;
        }
        if self.message.ack_with(AckKind::Progress).await.is_err() {
            return false;
        }
        self.touch();
        true
    }
}

/// A receipt fetched but not yet handed out.
struct Leftover {
    receipt: Receipt,
    batch: Arc<MissedBatch>,
}

impl Leftover {
    fn into_missed(self) -> MissedReceipt {
        MissedReceipt {
            stream_sequence: self.batch.stream_sequence,
            receipt: self.receipt,
            batch: self.batch,
            acked: AtomicBool::new(false),
        }
    }
}

/// An event submitted to the client, whose publish, acknowledgement and
/// receipt are still to come.
pub struct Pending {
    client: Client,
    event: Event,
    subject: String,
    agency: Agency,
    message_id: String,
    first: Option<Result<PublishAckFuture, String>>,
    /// The case's previous event in this client, if it was in flight.
    before: Option<watch::Receiver<Outcome>>,
    guard: WaitGuard,
    done: CaseTurn,
}

impl Pending {
    /// Waits for the case's earlier events, the bus to store the event
    /// (retrying if need be) and then for its receipt; re-sends it while it
    /// is rejected only for a missing predecessor.
    pub fn receipt(self) -> futures::future::BoxFuture<'static, Result<Receipt, Error>> {
        Box::pin(async move {
            let Pending {
                client,
                event,
                subject,
                agency,
                mut message_id,
                mut first,
                before,
                mut guard,
                done,
            } = self;
            // The outcome of the case's previous event in this client.
            let before = match before {
                Some(mut rx) => {
                    while *rx.borrow_and_update() == Outcome::Pending {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                    *rx.borrow()
                }
                None => Outcome::Stored,
            };
            let opts = &client.inner.options;
            let resend_until = tokio::time::Instant::now() + opts.predecessor_wait;
            let mut backoff = schedule::RESEND_FIRST;
            let result = loop {
                let (seq, maybe_copy) = match client
                    .store(&subject, &event, &message_id, first.take())
                    .await
                {
                    Ok(stored) => stored,
                    Err(e) => break Err(e),
                };
                let receipt = match client
                    .await_receipt(&event, agency, seq, maybe_copy, &mut guard)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                };
                let predecessor_missing = receipt.status == ReceiptStatus::Rejected as i32
                    && receipt.code == RejectionCode::PredecessorMissing as i32;
                // Re-send only when the missing event may still come: not
                // when this client's own earlier event of the case failed.
                if !predecessor_missing
                    || before != Outcome::Stored
                    || tokio::time::Instant::now() + backoff >= resend_until
                {
                    break Ok(receipt);
                }
                tracing::debug!(event_id = %event.event_id, reason = %receipt.reason, retry_in_ms = backoff.as_millis() as u64, "an earlier event of the case is missing; publishing again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(schedule::RESEND_MAX);
                // A new message id: the bus must not take it for a retry.
                let n = client.inner.counter.fetch_add(1, Ordering::Relaxed);
                message_id = client.message_id(&event.event_id, n);
            };
            let stored = matches!(&result, Ok(r) if is_stored(r));
            done.finish(if stored {
                Outcome::Stored
            } else {
                Outcome::NotStored
            });
            result
        })
    }
}

/// This event's place in its case's line: a later event of the case waits
/// until it is finished (or dropped).
struct CaseTurn {
    cases: Cases,
    case_id: String,
    n: u64,
    tx: watch::Sender<Outcome>,
}

impl CaseTurn {
    fn finish(self, outcome: Outcome) {
        self.tx.send_replace(outcome);
    }
}

impl Drop for CaseTurn {
    fn drop(&mut self) {
        if *self.tx.borrow() == Outcome::Pending {
            self.tx.send_replace(Outcome::NotStored);
        }
        let mut map = self.cases.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.case_id).is_some_and(|(n, _)| *n == self.n) {
            map.remove(&self.case_id);
        }
    }
}

/// Removes a waiter when `publish` returns (or is dropped).
struct WaitGuard {
    waiters: Waiters,
    event_id: String,
    rx: mpsc::UnboundedReceiver<Receipt>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        // Closing our end first makes our sender report closed, so only it
        // is removed; other publishes of the same id keep waiting.
        self.rx.close();
        let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(&self.event_id) {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                map.remove(&self.event_id);
            }
        }
    }
}

/// A message id (`Nats-Msg-Id`) for one publish of an event, unique to this
/// process and call: `<event id>~<nonce>-<n>`. Retries of that publish must
/// reuse it (the bus keeps one copy); a new publish of the same event, e.g.
/// after a rejection, must not (the bus would drop it as a duplicate for two
/// minutes). The event id stays the log's idempotency key.
pub fn message_id(event_id: &str) -> String {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{event_id}~{}-{n}", NONCE.get_or_init(nonce))
}

/// A value no other client process is likely to pick: the process id, the
/// time and std's per-process random hash keys.
fn nonce() -> String {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now));
    format!("{h:016x}")
}

fn bytes_of(event: &Event) -> bytes::Bytes {
    event.encode_to_vec().into()
}

/// Connect options carrying the user and password of a
/// `nats://user:password@host:port` URL (async-nats 0.51 does not take them
/// from the URL by itself). Percent-escapes in either are decoded.
pub fn connect_options(url: &str) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new();
    let Ok(addr) = url.parse::<async_nats::ServerAddr>() else {
        return options;
    };
    match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            options.user_and_password(decode(user), decode(password))
        }
        _ => options,
    }
}

/// A URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_drops_copies_and_forgets_the_oldest() {
        let mut seen = Seen::new(3);
        assert!(seen.insert(10));
        assert!(!seen.insert(10));
        assert!(seen.insert(11) && seen.insert(12));
        assert!(seen.contains(10));
        assert!(seen.insert(13));
        assert!(!seen.contains(10), "the oldest is forgotten beyond the cap");
        assert!(seen.contains(11) && seen.contains(13));
        assert_eq!(seen.set.len(), 3);
    }

    #[test]
    fn a_batch_splits_and_other_bytes_are_an_error() {
        let receipts: Vec<Receipt> = (1..=3)
            .map(|s| Receipt {
                status: ReceiptStatus::Accepted as i32,
                stream_sequence: s,
                event_id: format!("e{s}"),
                ..Receipt::default()
            })
            .collect();
        let bytes = ReceiptBatch {
            receipts: receipts.clone(),
        }
        .encode_to_vec();
        assert_eq!(decode_receipts(&bytes).unwrap(), receipts);
        assert_eq!(decode_receipts(&[]).unwrap(), Vec::new());
        assert!(decode_receipts(b"\xff\xff not protobuf").is_err());
        // A bare receipt (what nodes sent before batches; its status is
        // field 1, a number where a batch has a message) is not a batch.
        assert!(decode_receipts(&receipts[0].encode_to_vec()).is_err());
    }
}
