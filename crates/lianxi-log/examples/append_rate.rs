//! The node's write path as the log grows: measured, not guessed.
//!
//! `cargo run --release -p lianxi-log --example append_rate [entries] [group]`
//!
//! Appends `entries` (default 1,000,000) realistic events with
//! `Log::append` in groups of `group` (default 512), one flush per group:
//! simulated cities (`lianxi-sim`, 2,000 cases a year each, every category
//! and agency, personal values sealed, person tokens, re-sent and
//! rule-breaking events), one after another under their own case-id
//! prefixes, so the log grows the way a city's does (more cases, each of
//! bounded length) rather than a few cases growing without end. Each city
//! is generated just before it is appended, so memory stays small.
//!
//! Prints the rate of every window of 100,000 messages, the rate over the
//! first 100,000 and over the last window, then, at the full size, the time
//! to generate an inclusion proof of a random entry (10,000 calls, each
//! alone), the bytes on disk per entry, the process's peak resident memory
//! (`VmHWM`: the build, the proofs, sled's default 16 MiB cache) and the
//! machine; last, a `BENCH-JSON` line of those figures for `scripts/bench`,
//! the size-dependent keys named by `entries` (`append_at_10m_per_s` for
//! 10,000,000).

use std::time::{Duration, Instant};

use lianxi_log::{GroupKeys, Incoming, Log, Prepared};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WINDOW: u64 = 100_000;
const CITY_CASES: usize = 2_000;
const PROOFS: usize = 10_000;

fn city(n: u64, stream_sequence: &mut u64) -> Vec<Incoming> {
    let w = lianxi_sim::Workload {
        seed: n + 1,
        cases: CITY_CASES,
        invalid_rate: 0.02,
        duplicate_rate: 0.02,
        prefix: format!("C{n:04}"),
        ..lianxi_sim::Workload::default()
    };
    lianxi_sim::generate(&w)
        .into_iter()
        .map(|(event, _)| {
            *stream_sequence += 1;
            let at = event.occurred_at.unwrap_or_default();
            Incoming {
                stream_sequence: *stream_sequence,
                subject: lianxi_domain::event_subject(&event).unwrap_or_default(),
                recorded_at: lianxi_proto::Timestamp {
                    seconds: at.seconds + 5,
                    nanos: 0,
                },
                payload: event.encode_to_vec(),
            }
        })
        .collect()
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// This process's peak resident memory in MiB (`VmHWM` in
/// /proc/self/status; Linux only, NaN elsewhere).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut nums = args.iter().filter_map(|a| a.parse::<u64>().ok());
    let n = nums.next().unwrap_or(1_000_000);
    let group = nums.next().unwrap_or(512) as usize;
    println!("machine: {}", lianxi_sim::machine());
    println!(
        "messages: {n}, simulated cities of {CITY_CASES} cases one after another, Log::append in groups of {group}, one flush per group\n"
    );
    let keys = GroupKeys::derived("lianxi-bench");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = Log::open(dir.path(), lianxi_domain::Policy::default()).expect("a new log");
    let (mut seq, mut sent, mut cities) = (0u64, 0u64, 0u64);
    let mut pending: Vec<Incoming> = Vec::new();
    let (mut busy, mut window_busy) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let (mut first, mut last) = (0.0, 0.0);
    println!("{:>12} {:>12} {:>10}", "messages", "entries", "msgs/s");
    while sent < n {
        if pending.len() < group {
            pending.extend(city(cities, &mut seq));
            cities += 1;
            continue;
        }
        let take = group.min((n - sent) as usize);
        let batch: Vec<Incoming> = pending.drain(..take).collect();
        let start = Instant::now();
        let prepared = Prepared::new(batch);
        log.append(&prepared, &keys).expect("append");
        let took = start.elapsed();
        busy += took;
        window_busy += took;
        let before = sent;
        sent += take as u64;
        if sent / WINDOW > before / WINDOW || sent == n {
            let in_window = sent - (before / WINDOW) * WINDOW;
            let rate = in_window as f64 / window_busy.as_secs_f64();
            if before < WINDOW {
                first = rate;
            }
            last = rate;
            println!(
                "{sent:>12} {:>12} {rate:>10.0}",
                log.checkpoint().global_sequence
            );
            window_busy = std::time::Duration::ZERO;
        }
    }
    let entries = log.checkpoint().global_sequence;
    let size = log.tree_size();
    assert!(size > 0, "no entry was appended");
    let mut rng = StdRng::seed_from_u64(1);
    let leaves: Vec<u64> = (0..PROOFS).map(|_| rng.random_range(0..size)).collect();
    let mut each: Vec<Duration> = leaves
        .iter()
        .map(|&leaf| {
            let t = Instant::now();
            std::hint::black_box(log.inclusion_proof(leaf, size).expect("a proof"));
            t.elapsed()
        })
        .collect();
    each.sort();
    let us = |q: f64| each[((each.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    let (proof_p50, proof_p99) = (us(0.50), us(0.99));
    let rss = peak_rss_mib();
    drop(log);
    let bytes = dir_bytes(dir.path());
    let per_event = bytes as f64 / entries.max(1) as f64;
    println!(
        "\nall: {n} messages ({entries} entries) in {:.1} s of appending, {:.0} messages/s; first {WINDOW}: {first:.0}/s, last window: {last:.0}/s ({:.2}x of the first)",
        busy.as_secs_f64(),
        n as f64 / busy.as_secs_f64(),
        last / first
    );
    println!(
        "inclusion_proof of a random entry at the full size ({size}), {PROOFS} calls: p50 {proof_p50:.1} us, p99 {proof_p99:.1} us"
    );
    println!("disk: {bytes} bytes, {per_event:.0} bytes per entry");
    println!("peak resident memory of this process: {rss:.1} MiB");
    let tag = lianxi_sim::size_tag(n);
    let mut json = lianxi_sim::BenchJson::new();
    json.int("append_messages", n)
        .int("append_log_entries", entries)
        .num("append_all_per_s", n as f64 / busy.as_secs_f64());
    if n >= WINDOW {
        json.num("append_at_100k_per_s", first);
    }
    json.num(&format!("append_at_{tag}_per_s"), last)
        .num(&format!("inclusion_proof_{tag}_us"), proof_p50)
        .num(&format!("inclusion_proof_{tag}_p99_us"), proof_p99)
        .num("disk_bytes_per_event", per_event)
        .num(&format!("node_rss_mb_{tag}"), rss);
    json.print();
}
