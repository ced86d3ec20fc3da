//! `lianxi publish`: events as canonical protobuf JSON, one per line, each
//! published on its agency's subject through the agency client library,
//! with a receipt per event (or, with `--no-wait`, only the bus's
//! acknowledgement). With the client library's defaults it rides out a bus
//! or node outage of minutes: each event is retried for up to 10 minutes
//! and its receipt awaited for up to 10 more, and a retry whose first copy
//! was stored is reported accepted, not as a duplicate of itself.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::message::PublishMessage as Publish;
use lianxi_client::{Client, Options};
use lianxi_proto::v1::{Agency, Event, ReceiptStatus, RejectionCode};
use prost::Message;

pub(crate) async fn run(
    nats_url: &str,
    file: Option<PathBuf>,
    agency: Option<Agency>,
    // `None`: do not wait for receipts; otherwise how long to re-send an
    // event whose predecessor is missing.
    wait: Option<std::time::Duration>,
    quiet: bool,
) -> Result<()> {
    let (name, reader): (String, Box<dyn BufRead>) = match file {
        Some(p) if p.as_os_str() != "-" => {
            let f = std::fs::File::open(&p)
                .with_context(|| format!("cannot open the events file {}", p.display()))?;
            (p.display().to_string(), Box::new(BufReader::new(f)))
        }
        _ => (
            "standard input".to_owned(),
            Box::new(BufReader::new(std::io::stdin())),
        ),
    };
    // Parse everything first: a typo on line 9 should not leave lines 1-8
    // published and the rest not.
    let mut events = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {name}"))?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<Event>(trimmed) {
            Ok(event) => match lianxi_domain::event_subject(&event) {
                Ok(subject) => events.push((i + 1, subject, event)),
                Err(r) => problems.push(format!("line {}: {}", i + 1, r.reason)),
            },
            Err(e) => problems.push(format!(
                "line {}: not a lianxi.v1.Event in canonical protobuf JSON: {e}",
                i + 1
            )),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} of the lines in {name} cannot be published, nothing was sent:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }

    let Some(predecessor_wait) = wait else {
        return publish_only(nats_url, &events, quiet).await;
    };
    let options = Options {
        agency,
        predecessor_wait,
        name: "lianxi-publish".into(),
        ..Options::default()
    };
    let client = Client::connect(nats_url, options).await?;
    let started = std::time::Instant::now();
    let results = client
        .publish_all(events.iter().map(|(_, _, e)| e.clone()))
        .await;
    let secs = started.elapsed().as_secs_f64();
    let (mut accepted, mut duplicates) = (0usize, 0usize);
    let mut rejected = Vec::new();
    let mut failed = Vec::new();
    for ((line, _, event), result) in events.iter().zip(results) {
        match result {
            Ok(r) => match ReceiptStatus::try_from(r.status) {
                Ok(ReceiptStatus::Accepted) => {
                    accepted += 1;
                    if !quiet {
                        println!(
                            "accepted   {:<24} case {} #{} (log #{}, hash {})",
                            r.event_id,
                            r.case_id,
                            r.case_sequence,
                            r.global_sequence,
                            r.entry_hash.get(..16).unwrap_or(&r.entry_hash)
                        );
                    }
                }
                Ok(ReceiptStatus::Duplicate) => {
                    duplicates += 1;
                    if !quiet {
                        println!(
                            "duplicate  {:<24} already in the log as #{}",
                            r.event_id, r.original_global_sequence
                        );
                    }
                }
                _ => {
                    let code = RejectionCode::try_from(r.code)
                        .map(|c| c.as_str_name())
                        .unwrap_or("UNKNOWN");
                    if !quiet {
                        println!("REJECTED   {:<24} {code}: {}", r.event_id, r.reason);
                    }
                    rejected.push(format!("line {line}: {} {code}: {}", r.event_id, r.reason));
                }
            },
            Err(e) => {
                if !quiet {
                    println!("NO RECEIPT {:<24} {e}", event.event_id);
                }
                failed.push(format!("line {line}: {e}"));
            }
        }
    }
    println!(
        "{} events: {accepted} accepted, {duplicates} duplicates, {} rejected, {} without a receipt, in {secs:.2} s ({:.0} events/s)",
        events.len(),
        rejected.len(),
        failed.len(),
        events.len() as f64 / secs.max(1e-9)
    );
    if !rejected.is_empty() || !failed.is_empty() {
        let mut lines = rejected;
        lines.extend(failed);
        bail!(
            "{} event(s) not stored:\n  {}\nfix the rejected events and publish them under new event ids; events without a receipt can be published again as they are",
            lines.len(),
            lines.join("\n  ")
        );
    }
    Ok(())
}

/// Publishes to the bus only, waiting for the bus's acknowledgements but not
/// for receipts (for when no node is running).
async fn publish_only(
    nats_url: &str,
    events: &[(usize, String, Event)],
    quiet: bool,
) -> Result<()> {
    let client = lianxi_client::connect_options(nats_url)
        .name("lianxi-publish")
        .connection_timeout(Duration::from_secs(5))
        .connect(nats_url)
        .await
        .with_context(|| {
            format!(
                "cannot reach NATS at {}; is nats-server running? set --nats-url or LIANXI_NATS_URL",
                lianxi_client::redact(nats_url)
            )
        })?;
    let js = async_nats::jetstream::new(client);
    // Acknowledgements are awaited in order with a bounded number in flight,
    // so a large file goes out at bus speed without unbounded memory.
    let started = std::time::Instant::now();
    let mut in_flight = VecDeque::new();
    let mut last = 0;
    let mut duplicates = 0usize;
    for (line, subject, event) in events {
        let ack = js
            .send_publish(
                subject.clone(),
                Publish::build()
                    .payload(event.encode_to_vec().into())
                    .message_id(lianxi_client::message_id(&event.event_id)),
            )
            .await
            .with_context(|| format!("line {line}: publishing {} failed", event.event_id))?;
        in_flight.push_back((*line, subject, event, ack));
        if in_flight.len() >= MAX_IN_FLIGHT {
            let (line, subject, event, ack) = in_flight.pop_front().expect("not empty");
            let (seq, dup) = confirm(line, subject, event, ack, quiet).await?;
            last = last.max(seq);
            duplicates += usize::from(dup);
        }
    }
    while let Some((line, subject, event, ack)) = in_flight.pop_front() {
        let (seq, dup) = confirm(line, subject, event, ack, quiet).await?;
        last = last.max(seq);
        duplicates += usize::from(dup);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} events published ({duplicates} already on the stream) in {secs:.2} s ({:.0} events/s); last stream sequence {last}",
        events.len(),
        events.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Most publishes awaiting their acknowledgement at once.
const MAX_IN_FLIGHT: usize = 512;

async fn confirm(
    line: usize,
    subject: &str,
    event: &Event,
    ack: async_nats::jetstream::context::PublishAckFuture,
    quiet: bool,
) -> Result<(u64, bool)> {
    let ack = ack.await.with_context(|| {
        format!(
            "line {line}: JetStream did not store {}; is the LIANXI_EVENTS stream there (start `lianxi serve` once)?",
            event.event_id
        )
    })?;
    if !quiet {
        let note = if ack.duplicate {
            "  (duplicate: already on the stream)"
        } else {
            ""
        };
        println!(
            "published {:<24} {:<52} stream seq {}{note}",
            event.event_id, subject, ack.sequence
        );
    }
    Ok((ack.sequence, ack.duplicate))
}
