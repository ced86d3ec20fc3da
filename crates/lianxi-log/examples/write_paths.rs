//! How to write a group of events to sled: measured, not guessed.
//!
//! `cargo run --release -p lianxi-log --example write_paths [events]`
//!
//! Compares, for the same ~300-byte records and four logical records per
//! event (entry, case index, dedup entry, view):
//! 1. a sled transaction over four trees per event (the obvious design),
//! 2. one atomic batch into one tree per event,
//! 3. one atomic batch into one tree per group of 100 and 512 events,
//! 4. `Log::append_group` itself on realistic events,
//!
//! each with one flush per commit. Prints events per second and the machine,
//! then a `BENCH-JSON` line of those figures for `scripts/bench`.

use std::time::Instant;

use sled::Transactional;

/// Keys derived from a fixed seed: these runs have no key store.
static TEST_KEYS: std::sync::LazyLock<lianxi_log::GroupKeys> =
    std::sync::LazyLock::new(|| lianxi_log::GroupKeys::derived("lianxi-test"));

fn record(i: u64) -> Vec<u8> {
    let mut v = format!("event-{i:012}-").into_bytes();
    v.resize(300, b'x');
    v
}

fn multi_tree_per_event(n: u64, flush: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let trees: Vec<sled::Tree> = ["log", "index", "dedup", "views"]
        .iter()
        .map(|t| db.open_tree(t).unwrap())
        .collect();
    let (a, b, c, d) = (&trees[0], &trees[1], &trees[2], &trees[3]);
    let start = Instant::now();
    for i in 0..n {
        let r = record(i);
        (a, b, c, d)
            .transaction(|(a, b, c, d)| {
                a.insert(&i.to_be_bytes(), r.as_slice())?;
                b.insert(&i.to_be_bytes(), &i.to_be_bytes())?;
                c.insert(&r[..19], &i.to_be_bytes())?;
                d.insert(&(i % 1000).to_be_bytes(), r.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .unwrap();
        if flush {
            db.flush().unwrap();
        }
    }
    if !flush {
        db.flush().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn one_tree_batches(n: u64, group: u64, flush: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let t = db.open_tree("lianxi").unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let mut batch = sled::Batch::default();
        for j in i..(i + group).min(n) {
            let r = record(j);
            let mut k = vec![b'L'];
            k.extend_from_slice(&j.to_be_bytes());
            batch.insert(k, r.as_slice());
            let mut k = vec![b'C'];
            k.extend_from_slice(&j.to_be_bytes());
            batch.insert(k, &j.to_be_bytes());
            let mut k = vec![b'D'];
            k.extend_from_slice(&r[..19]);
            batch.insert(k, &j.to_be_bytes());
            let mut k = vec![b'V'];
            k.extend_from_slice(&(j % 1000).to_be_bytes());
            batch.insert(k, r.as_slice());
        }
        t.apply_batch(batch).unwrap();
        if flush {
            db.flush().unwrap();
        }
        i += group;
    }
    if !flush {
        db.flush().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn append_group(n: u64, group: usize) -> f64 {
    use lianxi_log::{Incoming, Log};
    use lianxi_proto::v1::{self as pb, Agency, Event, event::Body};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), lianxi_domain::Policy::default()).unwrap();
    let ts = |s: i64| {
        Some(lianxi_proto::Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    let cases = 1000u64;
    let msgs: Vec<Incoming> = (0..n)
        .map(|i| {
            let case = format!("C-{}", i % cases);
            let body = if i < cases {
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
            let e = Event {
                event_id: format!("ev-{i:010}"),
                case_id: case.clone(),
                agency: Agency::WomensFederation as i32,
                occurred_at: ts(1_790_000_000 + i as i64),
                corrects_event_id: None,
                body: Some(body),
            };
            Incoming {
                stream_sequence: i + 1,
                subject: format!("lianxi.v1.events.womens_federation.{case}"),
                recorded_at: lianxi_proto::Timestamp {
                    seconds: 1_790_000_000 + i as i64,
                    nanos: 0,
                },
                payload: e.encode_to_vec(),
            }
        })
        .collect();
    let start = Instant::now();
    for chunk in msgs.chunks(group) {
        log.append_group(chunk, &TEST_KEYS).unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(log.checkpoint().global_sequence, n);
    rate
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    println!("machine: {}", lianxi_sim::machine());
    println!("events: {n}, 4 records per event, ~300-byte values\n");
    let small = (n / 10).max(500);
    let row = |name: &str, rate: f64, base: f64| {
        println!("{name:<58} {rate:>9.0} events/s  {:>5.1}x", rate / base);
    };
    println!("without a flush per commit (the cost of the write path itself):");
    let tx = multi_tree_per_event(n, false);
    row("  4-tree transaction per event", tx, tx);
    row(
        "  1-tree batch per event",
        one_tree_batches(n, 1, false),
        tx,
    );
    row(
        "  1-tree batch per 100 events",
        one_tree_batches(n, 100, false),
        tx,
    );
    println!("with a flush per commit (what the node does: durable before done):");
    let mut json = lianxi_sim::BenchJson::new();
    json.int("write_paths_events", n);
    let txf = multi_tree_per_event(small, true);
    row("  4-tree transaction per event", txf, txf);
    json.num("sled_tx_per_event_flush_per_s", txf);
    row(
        "  1-tree batch per event",
        one_tree_batches(small, 1, true),
        txf,
    );
    for g in [100, 512] {
        let rate = one_tree_batches(n, g, true);
        row(&format!("  1-tree batch per {g} events"), rate, txf);
        json.num(&format!("sled_batch_{g}_flush_per_s"), rate);
    }
    println!("the node's real path (decode, validate, hash, view, batch, flush):");
    let rate = append_group(small, 1);
    row("  Log::append_group, groups of 1", rate, txf);
    json.num("append_group_1_per_s", rate);
    for g in [100, 512] {
        let rate = append_group(n, g);
        row(&format!("  Log::append_group, groups of {g}"), rate, txf);
        let key = if g == 512 {
            "append_group_per_s".to_owned()
        } else {
            format!("append_group_{g}_per_s")
        };
        json.num(&key, rate);
    }
    json.print();
}
