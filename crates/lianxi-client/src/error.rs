use std::time::Duration;

use thiserror::Error;

/// Why a publish has no receipt. Every case is safe to retry with the same
/// event: the event id is the idempotency key.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "cannot reach NATS at {url}: {detail}; check the URL and credentials, and that nats-server is running"
    )]
    Connect { url: String, detail: String },
    #[error(
        "cannot listen for receipts on {subject}: {detail}; does this user have permission to subscribe to it?"
    )]
    Subscribe { subject: String, detail: String },
    #[error("event {event_id} cannot be published: {reason}")]
    InvalidEvent { event_id: String, reason: String },
    #[error("event {event_id} is from {event}, but this client publishes for {client}")]
    WrongAgency {
        event_id: String,
        client: &'static str,
        event: &'static str,
    },
    #[error("the agency is unspecified; choose one of the seven agencies")]
    NoAgency,
    #[error(
        "the bus did not store event {event_id} after {attempts} attempts ({detail}); is nats-server running? nothing is lost by publishing it again later"
    )]
    Publish {
        event_id: String,
        attempts: u32,
        detail: String,
    },
    #[error(
        "event {event_id} is safe on the stream (sequence {stream_sequence}) but no lianxi node sent its receipt within {waited:?}; is a node running? ask again later with a lookup"
    )]
    ReceiptTimeout {
        event_id: String,
        stream_sequence: u64,
        waited: Duration,
    },
    #[error(
        "cannot read missed receipts from {consumer}: {detail}; is a lianxi node running (it creates the consumer), and may this user read it (deploy/nats/lianxi.conf)?"
    )]
    MissedReceipts { consumer: String, detail: String },
    #[error("looking up event {event_id}: {detail}")]
    Lookup { event_id: String, detail: String },
    #[error("the client's receipt listener stopped; reconnect")]
    Closed,
}
