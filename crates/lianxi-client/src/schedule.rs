//! The scheduler behind [`Client::publish_all`] and [`Client::publish_each`]:
//! many events, at most `max_in_flight` of them on the wire, one case's
//! events in input order, and `PREDECESSOR_MISSING` re-sends on a timer.
//!
//! Each event is in one of these places:
//!
//! - **blocked**: an earlier event of its case (in this call) is not
//!   finished. It waits in its case's queue, in input order.
//! - **gated**: its case has an event in flight in another call on this
//!   client (a concurrent [`Client::publish`] or [`Client::submit`]); it
//!   waits for that one's outcome.
//! - **ready**: its turn has come; it goes out when a slot is free.
//! - **on the wire**: a publish attempt (getting the bus to store it,
//!   retrying through an outage, then waiting for its receipt). Only these
//!   count against `max_in_flight`.
//! - **timed**: it was rejected `PREDECESSOR_MISSING` and is due to be
//!   published again at a set time (backoff 250 ms doubling to 5 s, within
//!   `predecessor_wait`). It holds no slot; at its time it becomes ready.
//!
//! A case waiting for its predecessor thus costs a timer entry, not a slot,
//! and the events behind it cost a queue entry each: the other cases keep
//! the wire full. Memory is the input read so far (the blocked events are
//! part of it; the input is read only as far as needed to fill the wire)
//! plus what is on the wire.
//!
//! **Why one event of a case at a time, not a pipeline.** JetStream keeps
//! the order of the publishes it gets on one connection, so a second event
//! of a case sent right behind the first would land behind it the first
//! time. But the order must hold whatever has to be retried, and two kinds
//! of retry break a pipeline:
//!
//! - a `PREDECESSOR_MISSING` rejection is known only once the node has
//!   processed the event, and its re-send is a new message: by then a
//!   later event of the case already on the stream has been applied ahead
//!   of it (a progress report needs nothing earlier, so it is accepted);
//! - an attempt whose acknowledgement is lost in an outage is re-sent by
//!   its own task on its own backoff; the attempts of two events of a case,
//!   both lost, race after the reconnection and may land in either order.
//!
//! Keeping a pipeline in order would mean holding back, re-sending in order
//! and, for the first kind, undoing what the node already applied; instead
//! a case has one event in flight and the scheduler keeps the wire full
//! with other cases. A city's load interleaves thousands of cases, so this
//! costs little (see BENCHMARKS.md).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use lianxi_proto::v1::{Agency, Event, Receipt, ReceiptStatus, RejectionCode};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{CaseTurn, Client, Error, Outcome, WaitGuard, is_stored};

/// First wait before re-sending an event rejected `PREDECESSOR_MISSING`.
pub(crate) const RESEND_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between two such re-sends.
pub(crate) const RESEND_MAX: Duration = Duration::from_secs(5);

/// An event read from the input whose case has an earlier event in this
/// call still to finish.
struct Queued {
    index: usize,
    event: Event,
    subject: String,
    agency: Agency,
}

/// An event whose turn in its case has come: it is gated, ready, on the
/// wire or timed.
struct Job {
    index: usize,
    event: Event,
    subject: String,
    agency: Agency,
    /// This publish's message id; a re-send after a rejection gets a new one.
    message_id: String,
    /// What became of the case's previous event in this client: re-send on
    /// `PREDECESSOR_MISSING` only when it was stored.
    before: Outcome,
    /// Until when to re-send on `PREDECESSOR_MISSING`; set when the event
    /// first goes out.
    resend_until: Option<Instant>,
    backoff: Duration,
    /// Listens for the event's receipts from just before its first publish
    /// until it is finished.
    guard: Option<WaitGuard>,
    /// Its place in the client-wide line of its case.
    turn: CaseTurn,
}

type Attempt = BoxFuture<'static, (Job, Result<Receipt, Error>)>;
type Gate = BoxFuture<'static, (Job, Outcome)>;

pub(crate) struct Scheduler<I> {
    client: Client,
    input: I,
    input_done: bool,
    next_index: usize,
    limit: usize,
    /// Cases with an event of this call gated, ready, on the wire or timed,
    /// and the events of each waiting behind it, in input order.
    blocked: HashMap<String, VecDeque<Queued>>,
    gates: FuturesUnordered<Gate>,
    ready: VecDeque<Job>,
    wire: FuturesUnordered<Attempt>,
    /// Re-sends by due time (the counter keeps equal times apart).
    timers: BTreeMap<(Instant, u64), Job>,
    timer_seq: u64,
    /// Results not yet handed out.
    finished: VecDeque<(usize, Result<Receipt, Error>)>,
}

impl<I: Iterator<Item = Event>> Scheduler<I> {
    pub(crate) fn new(client: Client, input: I) -> Self {
        let limit = client.inner.options.max_in_flight.max(1);
        Scheduler {
            client,
            input,
            input_done: false,
            next_index: 0,
            limit,
            blocked: HashMap::new(),
            gates: FuturesUnordered::new(),
            ready: VecDeque::new(),
            wire: FuturesUnordered::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            finished: VecDeque::new(),
        }
    }

    /// The next finished event: its input position and its result. `None`
    /// once every event of the input is finished.
    pub(crate) async fn next(&mut self) -> Option<(usize, Result<Receipt, Error>)> {
        loop {
            if let Some(done) = self.finished.pop_front() {
                return Some(done);
            }
            self.fill();
            if !self.finished.is_empty() {
                continue;
            }
            if self.wire.is_empty()
                && self.timers.is_empty()
                && self.gates.is_empty()
                && self.ready.is_empty()
            {
                // Nothing is waiting anywhere, so nothing can be blocked
                // either: every case's queue drains through its job.
                debug_assert!(self.input_done && self.blocked.is_empty());
                return None;
            }
            let due = self.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                Some((job, result)) = self.wire.next(), if !self.wire.is_empty() => {
                    self.attempted(job, result);
                }
                Some((mut job, outcome)) = self.gates.next(), if !self.gates.is_empty() => {
                    job.before = job.before.and(outcome);
                    self.ready.push_back(job);
                }
                () = sleep_until_due(due), if due.is_some() => {
                    let now = Instant::now();
                    while let Some(entry) = self.timers.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        self.ready.push_back(entry.remove());
                    }
                }
            }
        }
    }

    /// Puts ready events on the wire, then reads the input, until the wire
    /// is full, the input is read or an event is finished without a publish
    /// (invalid for this client).
    fn fill(&mut self) {
        while self.wire.len() < self.limit {
            if let Some(job) = self.ready.pop_front() {
                self.wire.push(attempt(self.client.clone(), job));
                continue;
            }
            if self.input_done || !self.finished.is_empty() {
                return;
            }
            let Some(event) = self.input.next() else {
                self.input_done = true;
                return;
            };
            let index = self.next_index;
            self.next_index += 1;
            let (subject, agency) = match self.client.check(&event) {
                Ok(checked) => checked,
                Err(e) => {
                    self.finished.push_back((index, Err(e)));
                    return;
                }
            };
            let queued = Queued {
                index,
                event,
                subject,
                agency,
            };
            match self.blocked.get_mut(&queued.event.case_id) {
                Some(line) => line.push_back(queued),
                None => {
                    self.blocked
                        .insert(queued.event.case_id.clone(), VecDeque::new());
                    self.start(queued, Outcome::Stored);
                }
            }
        }
    }

    /// The event's turn in this call has come: it takes its place in the
    /// client-wide line of its case, behind any event of the case in flight
    /// in another call, and is ready once that one is finished.
    fn start(&mut self, q: Queued, before: Outcome) {
        let inner = &self.client.inner;
        let n = inner.counter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Outcome::Pending);
        let previous = inner
            .cases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(q.event.case_id.clone(), (n, rx))
            .map(|(_, rx)| rx);
        let turn = CaseTurn {
            cases: inner.cases.clone(),
            case_id: q.event.case_id.clone(),
            n,
            tx,
        };
        let mut job = Job {
            message_id: self.client.message_id(&q.event.event_id, n),
            index: q.index,
            event: q.event,
            subject: q.subject,
            agency: q.agency,
            before,
            resend_until: None,
            backoff: RESEND_FIRST,
            guard: None,
            turn,
        };
        match previous {
            Some(mut rx) if *rx.borrow() == Outcome::Pending && rx.has_changed().is_ok() => {
                self.gates.push(Box::pin(async move {
                    while *rx.borrow_and_update() == Outcome::Pending {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                    let outcome = *rx.borrow();
                    (job, outcome)
                }));
            }
            Some(rx) => {
                job.before = job.before.and(*rx.borrow());
                self.ready.push_back(job);
            }
            None => self.ready.push_back(job),
        }
    }

    /// A publish attempt is over: the event is finished, or (rejected only
    /// for a missing predecessor, with time left) timed for a re-send.
    fn attempted(&mut self, mut job: Job, result: Result<Receipt, Error>) {
        let predecessor_missing = matches!(&result, Ok(r)
            if r.status == ReceiptStatus::Rejected as i32
                && r.code == RejectionCode::PredecessorMissing as i32);
        let now = Instant::now();
        // Re-send only when the missing event may still come: not when this
        // client's own earlier event of the case failed.
        if predecessor_missing
            && job.before == Outcome::Stored
            && job
                .resend_until
                .is_some_and(|until| now + job.backoff < until)
        {
            if let Ok(r) = &result {
                tracing::debug!(event_id = %job.event.event_id, reason = %r.reason, retry_in_ms = job.backoff.as_millis() as u64, "an earlier event of the case is missing; publishing again");
            }
            let at = now + job.backoff;
            job.backoff = (job.backoff * 2).min(RESEND_MAX);
            // A new message id: the bus must not take it for a retry.
            let n = self.client.inner.counter.fetch_add(1, Ordering::Relaxed);
            job.message_id = self.client.message_id(&job.event.event_id, n);
            self.timer_seq += 1;
            self.timers.insert((at, self.timer_seq), job);
            return;
        }
        let outcome = if matches!(&result, Ok(r) if is_stored(r)) {
            Outcome::Stored
        } else {
            Outcome::NotStored
        };
        let Job {
            index,
            event,
            guard,
            turn,
            ..
        } = job;
        drop(guard);
        turn.finish(outcome);
        self.finished.push_back((index, result));
        // The case's next event in this call takes its turn.
        let next = match self.blocked.get_mut(&event.case_id) {
            Some(line) => line.pop_front(),
            None => None,
        };
        match next {
            Some(q) => self.start(q, outcome),
            None => {
                self.blocked.remove(&event.case_id);
            }
        }
    }
}

async fn sleep_until_due(due: Option<Instant>) {
    if let Some(at) = due {
        tokio::time::sleep_until(at).await;
    }
}

/// One publish of the event: the bus to store it (retrying through an
/// outage, up to `publish_timeout`), then its receipt (up to
/// `receipt_timeout`).
fn attempt(client: Client, mut job: Job) -> Attempt {
    Box::pin(async move {
        // Listening before the first publish: no receipt can pass unseen.
        let guard = job
            .guard
            .get_or_insert_with(|| client.wait_for(&job.event.event_id));
        job.resend_until
            .get_or_insert_with(|| Instant::now() + client.inner.options.predecessor_wait);
        let result = match client
            .store(&job.subject, &job.event, &job.message_id, None)
            .await
        {
            Ok((seq, maybe_copy)) => {
                client
                    .await_receipt(&job.event, job.agency, seq, maybe_copy, guard)
                    .await
            }
            Err(e) => Err(e),
        };
        (job, result)
    })
}
