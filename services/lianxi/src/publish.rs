//! `lianxi publish`: events as canonical protobuf JSON, one per line, each
//! published on its agency's subject with its event id as the JetStream
//! message id.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::message::PublishMessage as Publish;
use lianxi_proto::v1::Event;
use prost::Message;

pub(crate) async fn run(nats_url: &str, file: Option<PathBuf>) -> Result<()> {
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
    let mut last = 0;
    for (line, subject, event) in &events {
        let ack = js
            .send_publish(
                subject.clone(),
                Publish::build()
                    .payload(event.encode_to_vec().into())
                    .message_id(event.event_id.clone()),
            )
            .await
            .with_context(|| format!("line {line}: publishing {} failed", event.event_id))?
            .await
            .with_context(|| {
                format!(
                    "line {line}: JetStream did not store {}; is the LIANXI_EVENTS stream there (start `lianxi serve` once)?",
                    event.event_id
                )
            })?;
        last = ack.sequence;
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
    println!(
        "{} events published; last stream sequence {last}",
        events.len()
    );
    Ok(())
}
