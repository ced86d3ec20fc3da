//! End-to-end publish-to-receipt throughput and latency through the client
//! library, against a running nats-server and lianxi node, with the raw bus
//! measured in the same run for comparison.
//!
//! `scripts/bench` starts both and runs this; by hand:
//! `cargo run --release -p lianxi-client --example publish_bench -- NATS_URL [EVENTS]`
//!
//! 1. Raw JetStream: publish ~300-byte messages with message ids into a
//!    scratch stream, 1,024 in flight (the bus alone, no node).
//! 2. lianxi: a simulated city workload (realistic events, cases interleaved
//!    in time order) through `Client::submit` / `Pending::receipt`, with 1,
//!    16, 256 and 1,024 events in flight; each event is timed from submit to
//!    receipt (the node has validated it, written it and flushed it).
//! 3. `Client::publish_all` with the default options (what `lianxi publish`
//!    does): a simulated city with no bad events, and the demo's city
//!    (`lianxi simulate --cases 400 --seed 2026`: 2% of cases with one
//!    rule-breaking event, most of them `PREDECESSOR_MISSING` for a
//!    referral or action that never comes, and 2% with one re-sent event),
//!    with the default 60 s predecessor wait and with 2 s. "others done" is
//!    when the last event of the cases without a bad event had its result:
//!    the rest of the time is the bad events' `predecessor_wait` running
//!    out, with the later events of their cases waiting behind them.
//!    `ONLY_PUBLISH_ALL=1` runs step 1 and this step only.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use lianxi_client::{Client, Options, is_stored};
use lianxi_sim::Workload;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The replicas of every stream (`BENCH_REPLICAS`, which scripts/bench
/// sets to 3 for `BUS_SYNC=r3`).
fn replicas() -> usize {
    std::env::var("BENCH_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

async fn raw_jetstream(url: &str, n: usize) -> f64 {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let name = "BENCH_RAW";
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec!["bench.raw.>".into()],
        storage: stream::StorageType::File,
        num_replicas: replicas(),
        ..Default::default()
    })
    .await
    .expect("create the scratch stream");
    let payload = bytes::Bytes::from(vec![b'x'; 300]);
    let start = Instant::now();
    let mut in_flight = VecDeque::new();
    for i in 0..n {
        let ack = js
            .send_publish(
                format!("bench.raw.{}", i % 100),
                PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(format!("raw-{i}")),
            )
            .await
            .expect("publish");
        in_flight.push_back(ack);
        if in_flight.len() >= 1024 {
            in_flight.pop_front().unwrap().await.expect("ack");
        }
    }
    for ack in in_flight {
        ack.await.expect("ack");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream(name).await;
    rate
}

async fn lianxi(
    url: &str,
    events: Vec<lianxi_proto::v1::Event>,
    window: usize,
) -> (f64, Vec<Duration>) {
    let client = Client::connect(
        url,
        Options {
            max_in_flight: window,
            receipt_timeout: Duration::from_secs(120),
            ..Options::default()
        },
    )
    .await
    .expect("connect");
    let n = events.len();
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    let mut in_flight = futures::stream::FuturesOrdered::new();
    use futures::StreamExt;
    for event in events {
        if in_flight.len() >= window
            && let Some((t, r)) = in_flight.next().await
        {
            latencies.push(t);
            assert!(matches!(r, Ok(ref r) if is_stored(r)), "not stored: {r:?}");
        }
        let sent = Instant::now();
        let pending = client.submit(event).await.expect("submit");
        in_flight.push_back(async move {
            let r = pending.receipt().await;
            (sent.elapsed(), r)
        });
    }
    while let Some((t, r)) = in_flight.next().await {
        latencies.push(t);
        assert!(matches!(r, Ok(ref r) if is_stored(r)), "not stored: {r:?}");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

/// `publish_all` over `events` with `options`, through `publish_each` to
/// see when each result is final: (seconds until the last result, seconds
/// until the last result of a case outside `waiting`, [accepted,
/// duplicates, rejected, without a receipt]).
async fn publish_all(
    url: &str,
    events: Vec<lianxi_proto::v1::Event>,
    waiting: &std::collections::HashSet<String>,
    options: Options,
) -> (f64, f64, [usize; 4]) {
    use futures::StreamExt;
    let client = Client::connect(url, options).await.expect("connect");
    let start = Instant::now();
    let others: Vec<bool> = events
        .iter()
        .map(|e| !waiting.contains(&e.case_id))
        .collect();
    let mut results = std::pin::pin!(client.publish_each(events));
    let mut counts = [0usize; 4];
    let mut others_done = 0.0f64;
    while let Some((index, r)) = results.next().await {
        let i = match &r {
            Ok(r) => match lianxi_proto::v1::ReceiptStatus::try_from(r.status) {
                Ok(lianxi_proto::v1::ReceiptStatus::Accepted) => 0,
                Ok(lianxi_proto::v1::ReceiptStatus::Duplicate) => 1,
                _ => 2,
            },
            Err(_) => 3,
        };
        if others[index] {
            others_done = start.elapsed().as_secs_f64();
        }
        counts[i] += 1;
    }
    (start.elapsed().as_secs_f64(), others_done, counts)
}

/// A generated workload: each event with what it is meant to be.
type Generated = Vec<(lianxi_proto::v1::Event, lianxi_sim::Intent)>;

async fn publish_all_rows(url: &str, n: usize, raw: f64) {
    println!(
        "\n{:<58} {:>7} {:>8} {:>9} {:>7} {:>13} {:>22}",
        "publish_all (Options::default() unless said)",
        "events",
        "seconds",
        "events/s",
        "vs raw",
        "others done s",
        "acc/dup/rej/none"
    );
    let clean = lianxi_sim::generate(&Workload {
        seed: 2000,
        cases: (n / 10).max(10),
        prefix: "BENCHALL".into(),
        ..Workload::default()
    });
    let demo = |prefix: &str| {
        lianxi_sim::generate(&Workload {
            seed: 2026,
            cases: 400,
            invalid_rate: 0.02,
            duplicate_rate: 0.02,
            prefix: prefix.into(),
            ..Workload::default()
        })
    };
    let rows: Vec<(String, Generated, Options)> = vec![
        (
            format!("city, no bad events ({} cases)", (n / 10).max(10)),
            clean,
            Options::default(),
        ),
        (
            "demo city (400 cases, seed 2026), predecessor wait 2 s".into(),
            demo("BENCHW2"),
            Options {
                predecessor_wait: Duration::from_secs(2),
                ..Options::default()
            },
        ),
        (
            "demo city (400 cases, seed 2026), default wait 60 s".into(),
            demo("BENCHW60"),
            Options::default(),
        ),
    ];
    for (label, workload, options) in rows {
        let bad = workload
            .iter()
            .filter(|(_, i)| *i == lianxi_sim::Intent::Invalid)
            .count();
        // The cases with a rule-breaking event: their later events wait
        // behind it.
        let waiting: std::collections::HashSet<String> = workload
            .iter()
            .filter(|(_, i)| *i == lianxi_sim::Intent::Invalid)
            .map(|(e, _)| e.case_id.clone())
            .collect();
        let events: Vec<_> = workload.into_iter().map(|(e, _)| e).collect();
        let len = events.len();
        let (secs, stored, [acc, dup, rej, none]) =
            publish_all(url, events, &waiting, options).await;
        let rate = len as f64 / secs;
        println!(
            "{:<58} {:>7} {:>8.2} {:>9.0} {:>6.3}x {:>13.2} {:>22}",
            label,
            len,
            secs,
            rate,
            rate / raw,
            stored,
            format!("{acc}/{dup}/{rej}/{none} (bad {bad})")
        );
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    println!("machine: {}", lianxi_sim::machine());
    // scripts/bench says which server settings it started (BUS_SYNC).
    let sync = match std::env::var("BUS_SYNC").as_deref() {
        Ok("always") => "sync_interval always (fsync before every acknowledgement)",
        Ok("default") => "server default sync (fsync every 2 min)",
        Ok("r3") => "server default sync (fsync every 2 min), three servers",
        _ => "sync setting not stated (set BUS_SYNC=always|default)",
    };
    println!(
        "durability: JetStream file store, {sync}, R{}; node flushes sled per group before receipts",
        replicas()
    );
    let raw = raw_jetstream(&url, n).await;
    println!(
        "\n{:<46} {:>9.0} msgs/s",
        "raw JetStream publish, 1,024 in flight", raw
    );

    if std::env::var_os("ONLY_PUBLISH_ALL").is_some() {
        publish_all_rows(&url, n, raw).await;
        return;
    }

    // One simulated city, split into one slice per run so no run repeats
    // another's events (each slice holds whole cases).
    let windows = [1usize, 16, 256, 1024];
    println!(
        "\n{:<14} {:>8} {:>11} {:>9} {:>9} {:>9} {:>8}",
        "in flight", "events", "events/s", "p50 ms", "p99 ms", "max ms", "vs raw"
    );
    for (i, window) in windows.iter().enumerate() {
        let count = if *window == 1 { n / 20 } else { n };
        let cases = (count / 10).max(10);
        let workload = lianxi_sim::generate(&Workload {
            seed: 1000 + i as u64,
            cases,
            prefix: format!("BENCH{i}"),
            ..Workload::default()
        });
        let events: Vec<_> = workload.into_iter().map(|(e, _)| e).take(count).collect();
        let len = events.len();
        let (rate, lat) = lianxi(&url, events, *window).await;
        println!(
            "{:<14} {:>8} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>7.2}x",
            window,
            len,
            rate,
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            rate / raw
        );
    }
    publish_all_rows(&url, n, raw).await;
}
