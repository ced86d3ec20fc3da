//! Bus outages and re-sends, as they happen: nats-server killed (SIGKILL,
//! as `kill -9`) under load with the configuration lianxi ships
//! (`deploy/nats/lianxi-dev.conf`: `sync_interval: always`), the real node
//! and the real `lianxi` binary or client library with their defaults.
//! Every receipt must reach its sender, nothing with a positive receipt may
//! be lost or stored twice, and no good event may end rejected.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lianxi_proto::v1::{Agency, Event, ReceiptStatus};
use lianxi_testkit::Spawn;
use support::{LIANXI, Nats, Node, free_port, shipped_conf};

const T0: i64 = 1_793_000_000; // 2026-10-26

use support::{wf_opened as opened, wf_progress as progress};

/// A bus with the shipped development configuration.
fn start_bus() -> Nats {
    Nats::start_with_config(&shipped_conf("lianxi-dev.conf"), &[])
}

fn start_node(nats: &Nats, data: &std::path::Path) -> Node {
    Node::start_with_env(&nats.url(), data, &[("LIANXI_BUS_SYNC", "always")])
}

/// Messages on the events stream, or 0 while it cannot be read.
async fn on_stream(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("LIANXI_EVENTS").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn wait_for_stream(js: &async_nats::jetstream::Context) {
    let started = Instant::now();
    while js.get_stream("LIANXI_EVENTS").await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the stream holds at least `n` messages; false when `done`
/// turned true first.
async fn wait_until_on_stream(
    js: &async_nats::jetstream::Context,
    n: u64,
    done: impl Fn() -> bool,
) -> bool {
    let started = Instant::now();
    loop {
        if on_stream(js).await >= n {
            return true;
        }
        if done() {
            return false;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the stream never reached {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks the stopped node's log against the events meant to be stored:
/// every distinct event id exactly once. Returns (entries, distinct ids).
fn check_log(data: &std::path::Path, events: &[Event]) -> (u64, usize) {
    let log = lianxi_log::Log::open(data, lianxi_domain::Policy::default()).unwrap();
    let ids: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let entries = log.entries(0, usize::MAX).unwrap();
    let mut seen = HashSet::new();
    for e in &entries {
        let id = e.event.as_ref().map(|e| e.event_id.clone()).unwrap();
        assert!(
            ids.contains(id.as_str()),
            "unexpected event {id} in the log"
        );
        assert!(seen.insert(id.clone()), "event {id} is in the log twice");
    }
    assert_eq!(seen.len(), ids.len(), "events missing from the log");
    let report = log.verify().unwrap();
    assert_eq!(report.entries, entries.len() as u64);
    (entries.len() as u64, ids.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lianxi_publish_with_its_defaults_rides_out_a_60_s_nats_outage_under_load() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;

    // A simulated city with re-sent events but no bad ones, so every
    // event has to end stored.
    let city_args = [
        "simulate",
        "--cases",
        "500",
        "--seed",
        "60",
        "--invalid-rate",
        "0",
        "--duplicate-rate",
        "0.05",
    ];
    let (ok, city, err) = support::lianxi(&city_args, &[]);
    assert!(ok, "{err}");
    let events: Vec<Event> = city
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let distinct: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let total = events.len();
    let resent = total - distinct.len();
    assert!(
        total > 3000 && resent > 5,
        "{total} events, {resent} re-sent"
    );

    // `lianxi simulate | lianxi publish -`, every setting at its default.
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut publish = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "\"{LIANXI}\" {} | \"{LIANXI}\" publish --quiet -",
            city_args.join(" ")
        ))
        .env("LIANXI_NATS_URL", nats.url())
        .env("LIANXI_LOG", "error")
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Under load: a quarter of the city is on the stream.
    let running = wait_until_on_stream(&js, total as u64 / 4, || false).await;
    assert!(running);
    let before = on_stream(&js).await;
    drop(js);
    let stopped = nats.stop();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        publish.try_wait().unwrap().is_none(),
        "lianxi publish gave up during a 60 s outage"
    );
    let nats = Nats::restart(stopped);
    let down = outage.elapsed();

    let started = Instant::now();
    let status = loop {
        if let Some(s) = publish.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "lianxi publish did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = std::fs::read_to_string(out.path()).unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut publish.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    // "N events: A accepted, D duplicates, 0 rejected, 0 without a receipt"
    let summary = stdout
        .lines()
        .find(|l| l.contains(" events: "))
        .unwrap_or_else(|| panic!("no summary line: {stdout}"));
    let numbers: Vec<usize> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let (n, accepted, duplicates, rejected, no_receipt) =
        (numbers[0], numbers[1], numbers[2], numbers[3], numbers[4]);
    assert_eq!(n, total, "{summary}");
    assert_eq!((rejected, no_receipt), (0, 0), "{summary}");
    assert_eq!(accepted + duplicates, total, "{summary}");
    // Each event published once is reported accepted (a retry of its own
    // copy is not a duplicate); the re-sent ones may be either, as their
    // own publish may have needed a retry too.
    assert!(
        accepted >= distinct.len() && duplicates <= resent,
        "{summary}"
    );

    assert!(node.stop().success());
    let (entries, ids) = check_log(data.path(), &events);
    drop(nats);
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST lianxi_publish_with_its_defaults_rides_out_a_60_s_nats_outage_under_load: \
         killed nats-server (SIGKILL) with {before} of {total} events on the stream, restarted it \
         after {:.0} s; lianxi publish (defaults) exited 0: events {total}, accepted {accepted}, \
         duplicates {duplicates} (re-sent in the city {resent}), rejected 0, no receipt 0; \
         log entries {entries} = distinct ids {ids}, lost: 0, duplicated: 0, verify ok",
        down.as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_loses_nothing_when_nats_server_is_killed_during_ingest() {
    let mut nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    wait_for_stream(&nats.jetstream().await).await;
    let workload = lianxi_sim::generate(&lianxi_sim::Workload {
        seed: 99,
        cases: 400,
        invalid_rate: 0.0,
        duplicate_rate: 0.05,
        prefix: "KILL".into(),
        ..lianxi_sim::Workload::default()
    });
    let events: Vec<Event> = workload.iter().map(|(e, _)| e.clone()).collect();
    let resent = workload
        .iter()
        .filter(|(_, i)| *i == lianxi_sim::Intent::Duplicate)
        .count();
    let total = events.len();

    let client = lianxi_client::Client::connect(&nats.url(), lianxi_client::Options::default())
        .await
        .unwrap();
    let to_publish = events.clone();
    let publishing = tokio::spawn(async move { client.publish_all(to_publish).await });

    // Three kills during ingest, each at a further quarter of the city.
    let mut kills = Vec::new();
    for k in 1..=3u64 {
        let js = nats.jetstream().await;
        let during =
            wait_until_on_stream(&js, total as u64 * k / 4, || publishing.is_finished()).await;
        assert!(during, "the client finished before kill {k}");
        kills.push(on_stream(&js).await);
        drop(js);
        let stopped = nats.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats = Nats::restart(stopped);
    }
    let results = tokio::time::timeout(Duration::from_secs(900), publishing)
        .await
        .expect("publish_all finished")
        .unwrap();

    let mut by_status: HashMap<&str, usize> = HashMap::new();
    let mut accepted_ids = HashSet::new();
    let mut stored_at: HashMap<String, u64> = HashMap::new();
    for (event, result) in events.iter().zip(&results) {
        let r = result
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: no receipt: {e}", event.event_id));
        assert_eq!(r.event_id, event.event_id);
        let at = match ReceiptStatus::try_from(r.status).unwrap() {
            ReceiptStatus::Accepted => {
                *by_status.entry("accepted").or_default() += 1;
                accepted_ids.insert(r.event_id.clone());
                r.global_sequence
            }
            ReceiptStatus::Duplicate => {
                *by_status.entry("duplicate").or_default() += 1;
                r.original_global_sequence
            }
            _ => panic!("a good event ended rejected: {r:?}"),
        };
        assert!(at > 0, "{r:?}");
        // Every positive receipt of one event points at one place.
        let first = *stored_at.entry(r.event_id.clone()).or_insert(at);
        assert_eq!(first, at, "{} reported at two places", r.event_id);
        let d = r.durability.clone().unwrap_or_default();
        assert_eq!(
            (d.stream_replicas, d.stream_sync.as_str(), d.node_flushed),
            (1, "always", true),
            "{r:?}"
        );
    }
    let distinct: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    // Every event published once is reported accepted, never as a
    // duplicate of its own earlier copy.
    assert_eq!(accepted_ids.len(), distinct.len());
    let duplicates = by_status.get("duplicate").copied().unwrap_or(0);
    assert!(duplicates <= resent, "{by_status:?}");

    assert!(node.stop().success());
    let (entries, ids) = check_log(data.path(), &events);
    // Each positive receipt's place holds its event.
    let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
    for (id, at) in &stored_at {
        let entry = log.entry(*at).unwrap().unwrap();
        assert_eq!(&entry.event.unwrap().event_id, id);
    }
    drop(nats);
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST the_client_library_loses_nothing_when_nats_server_is_killed_during_ingest: \
         killed nats-server (SIGKILL) 3 times during ingest (at {kills:?} of {total} messages on \
         the stream), restarted after 1.5 s each, lianxi-dev.conf; client defaults: events {total}, \
         receipts {total}, accepted {} (distinct ids {}), duplicates {duplicates} (re-sent in the \
         city {resent}), rejected 0, no receipt 0; log entries {entries} = ids {ids}, lost: 0, \
         duplicated: 0, every receipt's place holds its event",
        by_status.get("accepted").copied().unwrap_or(0),
        accepted_ids.len(),
    ));
}

#[tokio::test]
async fn a_re_send_after_a_rejection_reaches_the_node_and_gets_its_own_receipt() {
    let nats = start_bus();
    let data = tempfile::tempdir().unwrap();
    let node = start_node(&nats, data.path());
    wait_for_stream(&nats.jetstream().await).await;
    let client = lianxi_client::Client::connect(
        &nats.url(),
        lianxi_client::Options {
            // Answer with the first rejection, so the test sees it.
            predecessor_wait: Duration::ZERO,
            ..lianxi_client::Options::for_agency(Agency::WomensFederation)
        },
    )
    .await
    .unwrap();

    // A follow-up on a case not opened yet is rejected.
    let early = progress("RS-2", "RS-CASE", T0 + 60);
    let first = client.publish(&early).await.unwrap();
    assert_eq!(first.status, ReceiptStatus::Rejected as i32, "{first:?}");
    // Its receipt says what an accepted one would have stood on.
    let d = first.durability.clone().unwrap();
    assert_eq!((d.stream_replicas, d.stream_sync.as_str()), (1, "always"));
    assert!(d.node_flushed);

    // The case is opened; the same event, unchanged, is sent again at once
    // (well within JetStream's two-minute duplicate window).
    let open = client
        .publish(&opened("RS-1", "RS-CASE", T0))
        .await
        .unwrap();
    assert_eq!(open.status, ReceiptStatus::Accepted as i32, "{open:?}");
    let again = client.publish(&early).await.unwrap();
    assert_eq!(again.status, ReceiptStatus::Accepted as i32, "{again:?}");
    assert!(again.stream_sequence > first.stream_sequence);
    assert_eq!(again.case_sequence, 2);

    // A fixed event under the id of a rejected one lands too, and through
    // the command line.
    let exists = client.publish(&opened("RS-3", "RS-CASE", T0 + 120)).await;
    let exists = exists.unwrap();
    assert_eq!(exists.status, ReceiptStatus::Rejected as i32, "{exists:?}");
    let fixed = progress("RS-3", "RS-CASE", T0 + 180);
    let line = serde_json::to_string(&fixed).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{line}\n")).unwrap();
    let (ok, stdout, stderr) = support::lianxi(
        &["publish", file.path().to_str().unwrap()],
        &[("LIANXI_NATS_URL", &nats.url())],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("accepted   RS-3") && stdout.contains("#3"),
        "{stdout}"
    );
    drop(node);
}

/// The agency and node users of deploy/nats/lianxi.conf, with test
/// passwords (in double quotes inside the variable, as the README says).
fn user_env() -> Vec<(String, String)> {
    [
        "political_legal_committee",
        "police",
        "court",
        "civil_affairs",
        "labour",
        "womens_federation",
        "justice_bureau",
        "node",
    ]
    .iter()
    .map(|u| {
        (
            format!("LIANXI_{}_PASSWORD", u.to_uppercase()),
            format!("\"pw-{u}\""),
        )
    })
    .collect()
}

/// A three-server cluster from `deploy/nats/lianxi-cluster.conf` on this
/// machine. Each server picks its own client port; the route ports must be
/// known to all three in advance, so they are probed free, and the whole
/// cluster is started again on new ones when one was taken meanwhile.
fn start_cluster() -> Vec<Nats> {
    let mut last = None;
    for _attempt in 0..5 {
        let routes = [free_port(), free_port(), free_port()];
        let mut servers = Vec::new();
        for i in 0..3 {
            let mut env = user_env();
            env.push(("LIANXI_NATS_SERVER_NAME".into(), format!("lianxi-nats-{i}")));
            for (r, port) in routes.iter().enumerate() {
                env.push((
                    format!("LIANXI_NATS_ROUTE_{}", r + 1),
                    format!("nats-route://127.0.0.1:{port}"),
                ));
            }
            let spawn = Spawn {
                conf: Some(shipped_conf("lianxi-cluster.conf")),
                // The file listens for routes on 0.0.0.0:6222; three
                // servers on one machine need a port each.
                args: vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                ],
                envs: env,
            };
            match spawn.start(tempfile::tempdir().unwrap(), None) {
                Ok(server) => servers.push(server),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        if servers.len() == 3 {
            return servers;
        }
    }
    panic!("the cluster did not start: {}", last.expect("an error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_r3_on_three_servers_one_killed_under_load_loses_nothing() {
    let mut servers = start_cluster();
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let url = |user: &str, i: usize| format!("nats://{user}:pw-{user}@127.0.0.1:{}", ports[i]);
    // Wait for the cluster to elect its JetStream leader.
    let started = Instant::now();
    loop {
        let ready = async {
            let c = lianxi_client::connect_options(&url("node", 0))
                .connect(url("node", 0))
                .await
                .ok()?;
            async_nats::jetstream::new(c).query_account().await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(5), ready)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the cluster elected no JetStream leader"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let data = tempfile::tempdir().unwrap();
    let node = Node::start_with_env(
        &url("node", 0),
        data.path(),
        &[
            ("LIANXI_STREAM_REPLICAS", "3"),
            ("LIANXI_BUS_SYNC", "always"),
        ],
    );
    // The women's federation's own caseload: each case opened, then
    // follow-ups, all by one agency (its user may publish nothing else).
    let mut events = Vec::new();
    for c in 0..150 {
        let case = format!("R3-{c:04}");
        events.push(opened(&format!("{case}-0"), &case, T0 + c));
        for k in 1..=9 {
            events.push(progress(&format!("{case}-{k}"), &case, T0 + c + 60 * k));
        }
    }
    // Interleave cases, as a city's load arrives.
    events.sort_by_key(|e| e.occurred_at.map(|t| t.seconds));
    let total = events.len();
    let client = lianxi_client::Client::connect(
        &url("womens_federation", 1),
        lianxi_client::Options::for_agency(Agency::WomensFederation),
    )
    .await
    .unwrap();
    let to_publish = events.clone();
    let publishing = tokio::spawn(async move { client.publish_all(to_publish).await });

    // Under load, the server the client is connected to is killed and
    // stays down.
    let watch = lianxi_client::connect_options(&url("node", 0))
        .connect(url("node", 0))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(watch);
    let during = wait_until_on_stream(&js, total as u64 / 3, || publishing.is_finished()).await;
    assert!(during, "the client finished before the kill");
    let before = on_stream(&js).await;
    // Dropping a server kills it (SIGKILL).
    drop(servers.remove(1));

    let results = tokio::time::timeout(Duration::from_secs(900), publishing)
        .await
        .expect("publish_all finished")
        .unwrap();
    let mut accepted = 0;
    for (e, r) in events.iter().zip(&results) {
        let r = r
            .as_ref()
            .unwrap_or_else(|err| panic!("{}: no receipt: {err}", e.event_id));
        assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
        let d = r.durability.clone().unwrap_or_default();
        assert_eq!((d.stream_replicas, d.stream_sync.as_str()), (3, "always"));
        accepted += 1;
    }
    let replicas = js
        .get_stream("LIANXI_EVENTS")
        .await
        .unwrap()
        .get_info()
        .await
        .map(|i| i.config.num_replicas)
        .unwrap_or(0);
    assert_eq!(replicas, 3);
    assert!(node.stop().success());
    let (entries, ids) = check_log(data.path(), &events);
    drop(servers);
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST with_r3_on_three_servers_one_killed_under_load_loses_nothing: three servers \
         from lianxi-cluster.conf, streams R3; killed (SIGKILL) the server the client was \
         connected to with {before} of {total} events on the stream, not restarted; client \
         defaults: events {total}, accepted {accepted}, rejected 0, no receipt 0; log entries \
         {entries} = ids {ids}, lost: 0, duplicated: 0"
    ));
}
