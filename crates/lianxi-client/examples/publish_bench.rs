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
//!    Then half load: EVENTS / 2 events published at a fixed pace of half
//!    the rate just measured with 1,024 in flight (open loop: each event
//!    goes out at its scheduled instant whether or not earlier receipts are
//!    back), each timed from that instant to its receipt.
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
//!
//! The last line is a `BENCH-JSON` line of the figures for `scripts/bench`.

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

/// `events` published at `rate` per second, open loop: each submitted at
/// its scheduled instant (`start + i / rate`) and its receipt awaited in a
/// task of its own, so a slow receipt never delays a later publish. Each is
/// timed from its scheduled instant to its receipt, so time spent waiting to
/// go out (behind an earlier event of its case) counts. Returns the rate
/// achieved until every receipt was back and the sorted latencies.
async fn paced(url: &str, events: Vec<lianxi_proto::v1::Event>, rate: f64) -> (f64, Vec<Duration>) {
    let client = Client::connect(
        url,
        Options {
            receipt_timeout: Duration::from_secs(120),
            ..Options::default()
        },
    )
    .await
    .expect("connect");
    let n = events.len();
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, event) in events.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let pending = client.submit(event).await.expect("submit");
        tasks.push(tokio::spawn(async move {
            let r = pending.receipt().await;
            (due.elapsed(), r)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        let (t, r) = task.await.expect("a receipt task panicked");
        assert!(matches!(r, Ok(ref r) if is_stored(r)), "not stored: {r:?}");
        latencies.push(t);
    }
    let achieved = n as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    (achieved, latencies)
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

async fn publish_all_rows(url: &str, n: usize, raw: f64, json: &mut lianxi_sim::BenchJson) {
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
    let rows: Vec<(String, &str, Generated, Options)> = vec![
        (
            format!("city, no bad events ({} cases)", (n / 10).max(10)),
            "publish_all_clean",
            clean,
            Options::default(),
        ),
        (
            "demo city (400 cases, seed 2026), predecessor wait 2 s".into(),
            "publish_all_demo_wait_2s",
            demo("BENCHW2"),
            Options {
                predecessor_wait: Duration::from_secs(2),
                ..Options::default()
            },
        ),
        (
            "demo city (400 cases, seed 2026), default wait 60 s".into(),
            "publish_all_demo_wait_60s",
            demo("BENCHW60"),
            Options::default(),
        ),
    ];
    for (label, key, workload, options) in rows {
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
        json.num(&format!("{key}_per_s"), rate)
            .num(&format!("{key}_seconds"), secs)
            .num(&format!("{key}_others_done_seconds"), stored);
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
    let mut json = lianxi_sim::BenchJson::new();
    json.int("bus_events", n as u64)
        .int("bus_stream_replicas", replicas() as u64)
        .num("raw_jetstream_publish_per_s", raw);

    if std::env::var_os("ONLY_PUBLISH_ALL").is_some() {
        publish_all_rows(&url, n, raw, &mut json).await;
        json.print();
        return;
    }

    // One simulated city, split into one slice per run so no run repeats
    // another's events (each slice holds whole cases).
    let windows = [1usize, 16, 256, 1024];
    let mut full = 0.0;
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
        latency_row(&window.to_string(), len, rate, &lat, raw);
        let name = format!("ingest_{window}");
        json.num(&format!("{name}_per_s"), rate)
            .num(&format!("{name}_p50_ms"), ms(percentile(&lat, 0.5)))
            .num(&format!("{name}_p99_ms"), ms(percentile(&lat, 0.99)));
        if *window == 1 {
            json.num("lone_event_p50_ms", ms(percentile(&lat, 0.5)));
        }
        if *window == 1024 {
            full = rate;
            json.num("ingest_e2e_per_s", rate);
        }
    }
    // Half load: half the rate with 1,024 in flight, paced.
    let target = (full / 2.0).max(1.0);
    let count = (n / 2).max(1);
    let workload = lianxi_sim::generate(&Workload {
        seed: 1000 + windows.len() as u64,
        cases: (count / 10).max(10),
        prefix: "BENCHHALF".into(),
        ..Workload::default()
    });
    let events: Vec<_> = workload.into_iter().map(|(e, _)| e).take(count).collect();
    let len = events.len();
    let (rate, lat) = paced(&url, events, target).await;
    latency_row("1/2 paced", len, rate, &lat, raw);
    println!(
        "(1/2 paced: submitted at {target:.0} events/s, half the rate with 1,024 in flight, open loop; each timed from its scheduled instant)"
    );
    json.num("ingest_half_load_target_per_s", target)
        .num("ingest_half_load_per_s", rate)
        .num("ingest_e2e_p50_ms_half_load", ms(percentile(&lat, 0.5)))
        .num("ingest_e2e_p99_ms_half_load", ms(percentile(&lat, 0.99)));
    publish_all_rows(&url, n, raw, &mut json).await;
    json.print();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One row of the in-flight table.
fn latency_row(label: &str, events: usize, rate: f64, lat: &[Duration], raw: f64) {
    println!(
        "{:<14} {:>8} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>7.2}x",
        label,
        events,
        rate,
        ms(percentile(lat, 0.5)),
        ms(percentile(lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
        rate / raw
    );
}
