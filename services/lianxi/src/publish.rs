//! `lianxi publish`: events as canonical protobuf JSON, one per line, each
//! published on its agency's subject with its event id as the JetStream
//! message id.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::message::PublishMessage as Publish;
use lianxi_proto::v1::Event;
use prost::Message;

pub(crate) async fn run(nats_url: &str, file: Option<PathBuf>, quiet: bool) -> Result<()> {
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

    let client = async_nats::ConnectOptions::new()
        .name("lianxi-publish")
        .connection_timeout(Duration::from_secs(5))
        .connect(nats_url)
        .await
        .with_context(|| {
            format!("cannot reach NATS at {nats_url}; is nats-server running? set --nats-url or LIANXI_NATS_URL")
        })?;
    let js = async_nats::jetstream::new(client);
    // Acknowledgements are awaited in order with a bounded number in flight,
    // so a large file goes out at bus speed without unbounded memory.
    let started = std::time::Instant::now();
    let mut in_flight = VecDeque::new();
    let mut last = 0;
    let mut duplicates = 0usize;
    for (line, subject, event) in &events {
        let ack = js
            .send_publish(
                subject.clone(),
                Publish::build()
                    .payload(event.encode_to_vec().into())
                    .message_id(event.event_id.clone()),
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
