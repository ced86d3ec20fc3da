//! Merkle roots and proofs over a large log, and a full `Log::verify` pass:
//! measured, not guessed.
//!
//! `cargo run --release -p lianxi-log --example proofs [entries]`
//!
//! Builds a log of `entries` (default 1,000,000) in a temporary directory
//! with `Log::append_group` in groups of 512 (10,000 cases opened, then
//! progress reports round-robin; each group's messages are made just before
//! it is written, so memory stays small), then measures on random samples
//! (fixed seed):
//! 1. `Log::root` at the full size and at random sizes,
//! 2. `Log::inclusion_proof` for random (leaf, size), and `verify_inclusion`
//!    of those proofs, separately,
//! 3. `Log::consistency_proof` for random (old, new), and
//!    `verify_consistency` of those proofs, separately,
//! 4. one full `Log::verify` pass over every entry,
//! 5. one full `Log::rebuild` (every view, index and tile recreated from
//!    the entries), then `Log::verify` again,
//!
//! next to raw parts in the same run: `Log::entry` (sled get + decode), a
//! raw sled point get of an entry key (the log closed and its directory
//! reopened with sled alone; both gets timed on a second pass over the same
//! random keys, so from sled's cache), and SHA-256 of 33 bytes (one leaf hash).
//! Prints rates, latencies, proof lengths and the machine, then a
//! `BENCH-JSON` line of the main figures for `scripts/bench`.

use std::time::{Duration, Instant};

use lianxi_log::{
    Hash, Incoming, Log, entry_hash, leaf_hash, verify_consistency, verify_inclusion,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Keys derived from a fixed seed: these runs have no key store.
static TEST_KEYS: std::sync::LazyLock<lianxi_log::GroupKeys> =
    std::sync::LazyLock::new(|| lianxi_log::GroupKeys::derived("lianxi-test"));

const GROUP: u64 = 512;
const CASES: u64 = 10_000;
const SAMPLES: usize = 10_000;

/// Message `i` (from 0) of the log: the first `CASES` open a case each, the
/// rest report progress on them in turn.
fn incoming(i: u64) -> Incoming {
    use lianxi_proto::v1::{self as pb, Agency, Event, event::Body};
    use prost::Message;
    let case = format!("C-{:05}", i % CASES);
    let body = if i < CASES {
        Body::CaseOpened(pb::CaseOpened {
            channel: pb::Channel::Hotline12338 as i32,
            category: pb::Category::DomesticViolence as i32,
            jurisdiction: "330100/330106".into(),
            level: pb::Level::County as i32,
            person_ref: format!("P-{i}"),
            summary: "caller reports violence at home; two children".into(),
            mandatory_reporter: String::new(),
            person: None,
            children: Vec::new(),
        })
    } else {
        Body::ProgressReported(pb::ProgressReported {
            summary: "called back; she is safe at her sister's home for now".into(),
        })
    };
    let at = 1_790_000_000 + i as i64;
    let e = Event {
        event_id: format!("ev-{i:010}"),
        case_id: case.clone(),
        agency: Agency::WomensFederation as i32,
        occurred_at: Some(lianxi_proto::Timestamp {
            seconds: at,
            nanos: 0,
        }),
        corrects_event_id: None,
        body: Some(body),
    };
    Incoming {
        stream_sequence: i + 1,
        subject: format!("lianxi.v1.events.womens_federation.{case}"),
        recorded_at: lianxi_proto::Timestamp {
            seconds: at,
            nanos: 0,
        },
        payload: e.encode_to_vec(),
    }
}

/// Calls/s and p50/p99 in µs of timed calls (each timed alone).
struct Stats {
    calls: usize,
    per_s: f64,
    p50: f64,
    p99: f64,
}

fn stats(mut each: Vec<Duration>, total: Duration) -> Stats {
    each.sort();
    let us = |q: f64| each[((each.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Stats {
        calls: each.len(),
        per_s: each.len() as f64 / total.as_secs_f64(),
        p50: us(0.50),
        p99: us(0.99),
    }
}

/// Times `f` once per input, each call alone, the whole loop as well.
fn time_each<T, R>(inputs: &[T], mut f: impl FnMut(&T) -> R) -> (Stats, Vec<R>) {
    let mut each = Vec::with_capacity(inputs.len());
    let mut out = Vec::with_capacity(inputs.len());
    let start = Instant::now();
    for x in inputs {
        let t = Instant::now();
        let r = f(x);
        each.push(t.elapsed());
        out.push(r);
    }
    (stats(each, start.elapsed()), out)
}

fn row(name: &str, s: &Stats, base: f64) {
    println!(
        "{name:<52} {:>7} {:>11.0} {:>9.2} {:>9.2} {:>9.4}x",
        s.calls,
        s.per_s,
        s.p50,
        s.p99,
        s.per_s / base
    );
}

fn lengths(name: &str, proofs: &[Vec<Hash>]) {
    let min = proofs.iter().map(Vec::len).min().unwrap_or(0);
    let max = proofs.iter().map(Vec::len).max().unwrap_or(0);
    let mean = proofs.iter().map(Vec::len).sum::<usize>() as f64 / proofs.len().max(1) as f64;
    println!("  {name:<50} min {min:>2}  mean {mean:>5.1}  max {max:>2} hashes");
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    assert!(n >= 2, "need at least 2 entries");
    println!("machine: {}", lianxi_sim::machine());
    println!(
        "entries: {n} ({} cases opened, then progress reports), appended in groups of {GROUP}, one flush per group\n",
        CASES.min(n)
    );

    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), lianxi_domain::Policy::default()).unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let group: Vec<Incoming> = (i..(i + GROUP).min(n)).map(incoming).collect();
        log.append_group(&group, &TEST_KEYS).unwrap();
        i += GROUP;
    }
    let build = start.elapsed();
    assert_eq!(log.tree_size(), n, "every message must be accepted");
    println!(
        "build: {n} entries in {:.1} s, {:.0} entries/s (append_group: decode, validate, hash, view, tree, flush)\n",
        build.as_secs_f64(),
        n as f64 / build.as_secs_f64()
    );

    let mut rng = StdRng::seed_from_u64(1);
    let sizes: Vec<u64> = (0..SAMPLES).map(|_| rng.random_range(1..=n)).collect();
    let full = vec![n; SAMPLES];
    let small: Vec<u64> = (0..SAMPLES).map(|_| rng.random_range(1..=1024)).collect();
    let leaves: Vec<(u64, u64)> = sizes.iter().map(|&s| (rng.random_range(0..s), s)).collect();
    let small_leaves: Vec<(u64, u64)> =
        small.iter().map(|&s| (rng.random_range(0..s), s)).collect();
    let ranges: Vec<(u64, u64)> = sizes
        .iter()
        .map(|&new| (rng.random_range(1..=new), new))
        .collect();
    let entries: Vec<u64> = (0..SAMPLES).map(|_| rng.random_range(1..=n)).collect();

    // Raw parts first.
    let leaf_inputs: Vec<Hash> = (0..SAMPLES as u64)
        .map(|i| leaf_hash(&i.to_be_bytes()))
        .collect();
    let (sha, _) = time_each(&leaf_inputs, |h| leaf_hash(h));
    // Gets: one untimed pass over the same keys first, so that both get rows
    // read sled's cache, not the disk.
    time_each(&entries, |&g| log.entry(g).unwrap().unwrap());
    let (get, _) = time_each(&entries, |&g| log.entry(g).unwrap().unwrap());

    // Roots.
    let (root_full, _) = time_each(&full, |&s| log.root(s).unwrap());
    let (root_random, _) = time_each(&sizes, |&s| log.root(s).unwrap());
    let roots: std::collections::HashMap<u64, Hash> = sizes
        .iter()
        .chain(&small)
        .chain(ranges.iter().map(|(old, _)| old))
        .map(|&s| (s, log.root(s).unwrap()))
        .collect();

    // Inclusion proofs: generate, then verify what was generated.
    let (incl, proofs) = time_each(&leaves, |&(l, s)| log.inclusion_proof(l, s).unwrap());
    let (incl_small, small_proofs) =
        time_each(&small_leaves, |&(l, s)| log.inclusion_proof(l, s).unwrap());
    let leaf_of = |l: u64| leaf_hash(&entry_hash(&log.entry(l + 1).unwrap().unwrap()));
    let to_check: Vec<(Hash, u64, u64, &Vec<Hash>, Hash)> = leaves
        .iter()
        .zip(&proofs)
        .map(|(&(l, s), p)| (leaf_of(l), l, s, p, roots[&s]))
        .collect();
    let (incl_verify, ok) = time_each(&to_check, |(leaf, l, s, p, r)| {
        verify_inclusion(leaf, *l, *s, p, r)
    });
    assert!(ok.iter().all(|&b| b), "an inclusion proof did not verify");

    // Consistency proofs: generate, then verify.
    let (cons, cproofs) = time_each(&ranges, |&(o, s)| log.consistency_proof(o, s).unwrap());
    let to_check: Vec<(u64, u64, Hash, Hash, &Vec<Hash>)> = ranges
        .iter()
        .zip(&cproofs)
        .map(|(&(o, s), p)| (o, s, roots[&o], roots[&s], p))
        .collect();
    let (cons_verify, ok) = time_each(&to_check, |(o, s, ro, rn, p)| {
        verify_consistency(*o, *s, ro, rn, p)
    });
    assert!(ok.iter().all(|&b| b), "a consistency proof did not verify");

    // The full offline check.
    let start = Instant::now();
    let report = log.verify().unwrap();
    let verify = start.elapsed();
    assert_eq!(report.entries, n);
    assert_eq!(report.root, log.root(n).unwrap());

    // Every derived record recreated from the entries, then checked again.
    let start = Instant::now();
    let rebuilt = log.rebuild().unwrap();
    let rebuild = start.elapsed();
    assert_eq!(rebuilt.entries, n);
    assert_eq!(
        log.verify().unwrap(),
        report,
        "the rebuilt log must verify alike"
    );

    // Raw sled point get of an entry key: the same directory, sled alone.
    drop(log);
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("lianxi.v1").unwrap();
    let keys: Vec<[u8; 9]> = entries
        .iter()
        .map(|g| {
            let mut k = [b'L'; 9];
            k[1..].copy_from_slice(&g.to_be_bytes());
            k
        })
        .collect();
    time_each(&keys, |k| tree.get(k).unwrap().unwrap());
    let (raw_get, _) = time_each(&keys, |k| tree.get(k).unwrap().unwrap());

    let base = raw_get.per_s;
    println!(
        "{:<52} {:>7} {:>11} {:>9} {:>9} {:>10}",
        "operation", "calls", "calls/s", "p50 us", "p99 us", "vs get"
    );
    row("raw: SHA-256 of 33 bytes (leaf_hash)", &sha, base);
    row("raw: sled point get of an entry key", &raw_get, base);
    row("raw: Log::entry (sled get + decode)", &get, base);
    row(&format!("Log::root({n}), the full size"), &root_full, base);
    row("Log::root, random size", &root_random, base);
    row("inclusion_proof, random (leaf, size)", &incl, base);
    row(
        "inclusion_proof, random (leaf, size <= 1024)",
        &incl_small,
        base,
    );
    row(
        "verify_inclusion of those (random size)",
        &incl_verify,
        base,
    );
    row("consistency_proof, random (old, new)", &cons, base);
    row("verify_consistency of those", &cons_verify, base);
    println!("\nproof lengths (log2 {n} = {:.1}):", (n as f64).log2());
    lengths("inclusion, random size", &proofs);
    lengths("inclusion, size <= 1024", &small_proofs);
    lengths("consistency, random (old, new)", &cproofs);
    println!(
        "\nfull Log::verify: {} entries, {} cases in {:.1} s, {:.0} entries/s ({:.1} s per million)",
        report.entries,
        report.cases,
        verify.as_secs_f64(),
        n as f64 / verify.as_secs_f64(),
        verify.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "full Log::rebuild: {} entries, {} cases in {:.1} s, {:.0} entries/s (then verified again)",
        rebuilt.entries,
        rebuilt.cases,
        rebuild.as_secs_f64(),
        n as f64 / rebuild.as_secs_f64()
    );
    let mut json = lianxi_sim::BenchJson::new();
    json.int("proofs_entries", n)
        .num("proofs_build_per_s", n as f64 / build.as_secs_f64())
        .num("proofs_inclusion_p50_us", incl.p50)
        .num("proofs_verify_inclusion_p50_us", incl_verify.p50)
        .num("proofs_consistency_p50_us", cons.p50)
        .num("proofs_sled_get_per_s", raw_get.per_s)
        .num("verify_per_s", n as f64 / verify.as_secs_f64())
        .num("rebuild_per_s", n as f64 / rebuild.as_secs_f64());
    json.print();
}
