//! The agency side of lianxi: publish case events, get a receipt for each.
//!
//! An agency system (police records, a court's case management, the 12338
//! hotline desk) publishes [`Event`]s and learns, for each, whether a lianxi
//! node stored it ([`ReceiptStatus::Accepted`], with its place in the log),
//! already had it ([`ReceiptStatus::Duplicate`]) or refused it
//! ([`ReceiptStatus::Rejected`], with a code and a reason to act on).
//!
//! Publishing is safe to retry: the event id is the idempotency key, on the
//! bus (JetStream's duplicate window) and in the node's log (forever). The
//! client retries a publish the bus did not acknowledge, and when a receipt
//! is slow it asks the nodes for it by event id.
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
//! // Many events, at most `max_in_flight` at a time, receipts in order.
//! # let events: Vec<Event> = vec![];
//! let receipts = client.publish_all(events).await;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod error;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use futures::StreamExt;
use lianxi_proto::v1::{Agency, Event, LookupReply, LookupRequest, Receipt, ReceiptStatus};
use prost::Message;
use tokio::sync::mpsc;

pub use error::Error;

/// Receipts for an agency arrive on `lianxi.v1.receipts.<agency>`.
pub const RECEIPTS_PREFIX: &str = "lianxi.v1.receipts";
/// Lookups of a receipt by event id go to `lianxi.v1.lookup.<agency>`.
pub const LOOKUP_PREFIX: &str = "lianxi.v1.lookup";

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The agency this client publishes for. With an agency, the client
    /// listens only to that agency's receipts and uses the inbox prefix
    /// `_INBOX_<agency>` that the bus's per-agency permissions expect.
    /// Without one (development, tools), it may publish for any agency.
    pub agency: Option<Agency>,
    /// How long `publish` waits for a receipt after the bus stored the event.
    pub receipt_timeout: Duration,
    /// How long to wait for the bus to acknowledge one publish attempt.
    pub ack_timeout: Duration,
    /// Attempts at getting the bus to store an event before giving up.
    pub publish_attempts: u32,
    /// While waiting for a receipt, ask the nodes this often.
    pub lookup_interval: Duration,
    /// Most events in flight in `publish_all`.
    pub max_in_flight: usize,
    /// The connection's name, as the server's monitoring shows it.
    pub name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            agency: None,
            receipt_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(5),
            publish_attempts: 6,
            lookup_interval: Duration::from_secs(2),
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
    dispatcher: tokio::task::JoinHandle<()>,
}

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
            .connection_timeout(Duration::from_secs(5));
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
        // for this client's events can pass unseen.
        nats.flush().await.map_err(|e| Error::Subscribe {
            subject,
            detail: e.to_string(),
        })?;
        let waiters: Waiters = Arc::default();
        let dispatch_to = waiters.clone();
        let dispatcher = tokio::spawn(async move {
            while let Some(msg) = receipts.next().await {
                let Ok(receipt) = Receipt::decode(msg.payload.as_ref()) else {
                    continue;
                };
                let map = dispatch_to.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(senders) = map.get(&receipt.event_id) {
                    for s in senders {
                        let _ = s.send(receipt.clone());
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
                dispatcher,
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

    /// Publishes many events and returns their results in input order. The
    /// events reach the bus in input order (so one case's events stay in
    /// order); their receipts are awaited concurrently, at most
    /// `max_in_flight` at a time. Only an event whose publish has to be
    /// retried can land behind a later one; the node then rejects whichever
    /// breaks a rule, with a reason, and the agency can publish it again.
    pub async fn publish_all(
        &self,
        events: impl IntoIterator<Item = Event>,
    ) -> Vec<Result<Receipt, Error>> {
        let limit = self.inner.options.max_in_flight.max(1);
        let mut results = Vec::new();
        let mut in_flight = futures::stream::FuturesOrdered::new();
        for event in events {
            if in_flight.len() >= limit
                && let Some(r) = in_flight.next().await
            {
                results.push(r);
            }
            match self.submit(event).await {
                Ok(pending) => in_flight.push_back(pending.receipt()),
                Err(e) => in_flight.push_back(Box::pin(async move { Err(e) })),
            }
        }
        while let Some(r) = in_flight.next().await {
            results.push(r);
        }
        results
    }

    /// Checks the event, starts listening for its receipt and hands it to
    /// the bus, without waiting for the bus's acknowledgement. Events
    /// submitted one after another reach the bus in that order; await each
    /// [`Pending::receipt`] whenever suits (this is how `publish_all`
    /// pipelines).
    pub async fn submit(&self, event: Event) -> Result<Pending, Error> {
        let subject = lianxi_domain::event_subject(&event).map_err(|r| Error::InvalidEvent {
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
        let guard = self.wait_for(&event.event_id);
        let first = self
            .inner
            .js
            .send_publish(
                subject.clone(),
                PublishMessage::build()
                    .payload(bytes_of(&event))
                    .message_id(event.event_id.clone()),
            )
            .await
            .ok();
        Ok(Pending {
            client: self.clone(),
            event,
            subject,
            agency,
            first,
            guard,
        })
    }

    /// Asks the nodes what became of an event id (one node answers).
    /// `Ok(None)` when no node has processed it yet.
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

    /// Gets the event onto the stream: returns (stream sequence, whether the
    /// bus already had it). Retries with backoff; the message id makes a
    /// retry harmless.
    async fn store(
        &self,
        subject: &str,
        event: &Event,
        mut first: Option<PublishAckFuture>,
    ) -> Result<(u64, bool), Error> {
        let opts = &self.inner.options;
        let payload = bytes_of(event);
        let mut backoff = Duration::from_millis(50);
        let mut last_error = String::new();
        for attempt in 1..=opts.publish_attempts.max(1) {
            let sent = match first.take() {
                Some(ack) => Ok(ack),
                None => {
                    self.inner
                        .js
                        .send_publish(
                            subject.to_owned(),
                            PublishMessage::build()
                                .payload(payload.clone())
                                .message_id(event.event_id.clone()),
                        )
                        .await
                }
            };
            match sent {
                Ok(ack) => match tokio::time::timeout(opts.ack_timeout, ack).await {
                    Ok(Ok(ack)) => return Ok((ack.sequence, ack.duplicate)),
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(_) => last_error = "no acknowledgement in time".into(),
                },
                Err(e) => last_error = e.to_string(),
            }
            tracing::debug!(event_id = %event.event_id, attempt, error = %last_error, "publish not acknowledged; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Err(Error::Publish {
            event_id: event.event_id.clone(),
            attempts: opts.publish_attempts.max(1),
            detail: last_error,
        })
    }

    async fn await_receipt(
        &self,
        event: &Event,
        agency: Agency,
        stream_sequence: u64,
        already_on_stream: bool,
        mut guard: WaitGuard,
    ) -> Result<Receipt, Error> {
        let opts = &self.inner.options;
        // The receipt for this message, or the accepted original it duplicates.
        let ours = |r: &Receipt| {
            r.stream_sequence == stream_sequence
                || (r.status == ReceiptStatus::Accepted as i32 && r.event_id == event.event_id)
        };
        // This publish added nothing when the bus already had the message or
        // the log already had the id: say so, pointing at the original.
        let answer = |r: Receipt| {
            if r.status == ReceiptStatus::Accepted as i32
                && (already_on_stream || r.stream_sequence != stream_sequence)
            {
                Receipt {
                    status: ReceiptStatus::Duplicate as i32,
                    original_global_sequence: r.global_sequence,
                    ..r
                }
            } else {
                r
            }
        };
        let deadline = tokio::time::Instant::now() + opts.receipt_timeout;
        // When the bus already had the message, its receipt may have gone
        // out long ago: ask at once rather than wait.
        let mut next_lookup = if already_on_stream {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::now() + opts.lookup_interval
        };
        loop {
            tokio::select! {
                r = guard.rx.recv() => match r {
                    Some(r) if ours(&r) => return Ok(answer(r)),
                    Some(_) => {}
                    None => return Err(Error::Closed),
                },
                _ = tokio::time::sleep_until(next_lookup) => {
                    next_lookup = tokio::time::Instant::now() + opts.lookup_interval;
                    match self.lookup(agency, &event.event_id).await {
                        Ok(LookupReply { found: true, receipt: Some(r), .. }) if ours(&r) => return Ok(answer(r)),
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
        }
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

/// An event handed to the bus, whose acknowledgement and receipt are still
/// to come.
pub struct Pending {
    client: Client,
    event: Event,
    subject: String,
    agency: Agency,
    first: Option<PublishAckFuture>,
    guard: WaitGuard,
}

impl Pending {
    /// Waits for the bus to store the event (retrying if need be) and then
    /// for its receipt.
    pub fn receipt(self) -> futures::future::BoxFuture<'static, Result<Receipt, Error>> {
        Box::pin(async move {
            let (seq, duplicate) = self
                .client
                .store(&self.subject, &self.event, self.first)
                .await?;
            self.client
                .await_receipt(&self.event, self.agency, seq, duplicate, self.guard)
                .await
        })
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
