//! Faults of the node's own disk, made for real: a small tmpfs that fills
//! up (during ingest, and under a start), bytes flipped inside sled's files,
//! sled's file cut short after receipts went out, and a real backlog
//! drained while the node's memory is measured. Real nats-server, real
//! binary, real sled, real gRPC.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lianxi_proto::v1::audit_client::AuditClient;
use lianxi_proto::v1::{Event, GetCaseRequest, GetTreeHeadRequest};
use prost::Message;
use rand::{Rng, SeedableRng};
use support::{
    LIANXI, Nats, Node, Tmpfs, case_after, eventually, health, lianxi, receipted_messages, rss_kib,
};
use tonic_health::pb::health_check_response::ServingStatus;

const CASES: &str = "lianxi.v1.Cases";

fn workload(seed: u64, cases: usize, prefix: &str) -> Vec<Event> {
    lianxi_sim::generate(&lianxi_sim::Workload {
        seed,
        cases,
        prefix: prefix.into(),
        ..lianxi_sim::Workload::default()
    })
    .into_iter()
    .map(|(e, _)| e)
    .collect()
}

/// Publishes the events, waiting for JetStream's acks; the last stream
/// sequence.
async fn publish_all(js: &async_nats::jetstream::Context, events: &[Event]) -> u64 {
    let mut last = 0;
    for chunk in events.chunks(256) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            acks.push(
                js.publish(support::subject(e), e.encode_to_vec().into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            last = ack.await.expect("stored by JetStream").sequence;
        }
    }
    last
}

/// The node's tree head: (size, root).
async fn tree_head(addr: &str) -> Option<(u64, Vec<u8>)> {
    let mut c = AuditClient::connect(format!("http://{addr}")).await.ok()?;
    let h = c
        .get_tree_head(GetTreeHeadRequest { tree_size: 0 })
        .await
        .ok()?
        .into_inner();
    Some((h.tree_size, h.root_hash))
}

/// A second node on an ordinary disk reads the same stream: the reference
/// for "nothing lost, nothing applied twice".
async fn reference_head(nats: &Nats, last: u64, case_id: &str) -> (u64, Vec<u8>) {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let mut client = node.client().await;
    case_after(&mut client, case_id, last).await;
    tree_head(&node.grpc_addr)
        .await
        .expect("reference tree head")
}

fn mount_or_skip(test: &str, size_mb: u64) -> Option<Tmpfs> {
    match Tmpfs::mount(size_mb) {
        Ok(fs) => Some(fs),
        Err(e) => {
            lianxi_testkit::fault_test(format!(
                "FAULT-TEST {test}: SKIPPED, a tmpfs cannot be mounted here ({e}); run the tests as root to fill a real disk"
            ));
            // The skip itself is the assertion: it says why.
            assert!(!e.is_empty());
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_ingest_loses_nothing_and_the_node_resumes_when_space_returns() {
    let name = "a_full_disk_during_ingest_loses_nothing_and_the_node_resumes_when_space_returns";
    let Some(fs) = mount_or_skip(name, 48) else {
        return;
    };
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let data = fs.path().join("data");
    let mut node = Node::start(&nats.url(), &data);
    let events = workload(41, 120, "FULL");
    let (before, after) = events.split_at(events.len() / 3);
    let first = publish_all(&js, before).await;
    let mut client = node.client().await;
    case_after(&mut client, &before[before.len() - 1].case_id, first).await;
    assert_eq!(
        health(&node.grpc_addr, CASES).await,
        Some(ServingStatus::Serving as i32)
    );

    let filled = fs.fill();
    let last = publish_all(&js, after).await;
    let not_serving = eventually(Duration::from_secs(30), || async {
        health(&node.grpc_addr, CASES).await == Some(ServingStatus::NotServing as i32)
    })
    .await;
    assert!(
        not_serving,
        "health must say NOT_SERVING while the disk is full"
    );
    // Reads are refused with a status that says why; the node stays up.
    let refused = client
        .get_case(GetCaseRequest {
            case_id: before[0].case_id.clone(),
            now: None,
        })
        .await
        .expect_err("a read that cannot be recorded must be refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("full"),
        "the refusal must say the disk is full: {}",
        refused.message()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(node.is_running(), "the node must stay up on a full disk");

    fs.free();
    let resumed = eventually(Duration::from_secs(60), || async {
        health(&node.grpc_addr, CASES).await == Some(ServingStatus::Serving as i32)
    })
    .await;
    assert!(resumed, "the node must resume by itself when space returns");
    let mut client = node.client().await;
    case_after(&mut client, &after[after.len() - 1].case_id, last).await;
    let head = tree_head(&node.grpc_addr).await.expect("tree head");
    let receipted = eventually(Duration::from_secs(30), || async {
        receipted_messages(&js).await == last
    })
    .await;
    let receipts = receipted_messages(&js).await;
    let reference = reference_head(&nats, last, &after[after.len() - 1].case_id).await;
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST {name}: filled a {}-byte tmpfs during ingest; health NOT_SERVING, reads UNAVAILABLE \"disk is full\"; freed it; {} events published, {} entries, {} receipts, lost: {}, duplicated: {}, roots equal: {}",
        filled,
        last,
        head.0,
        receipts,
        reference.0.saturating_sub(head.0),
        head.0.saturating_sub(reference.0),
        head == reference
    ));
    assert!(
        receipted,
        "every message gets one receipt: {receipts} of {last}"
    );
    assert_eq!(
        head, reference,
        "the node must hold what a node on a good disk holds"
    );
    node.stop();
    let (ok, out, err) = lianxi(&["verify", "--data-dir", data.to_str().unwrap()], &[]);
    assert!(ok, "the data directory must verify:\n{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_node_on_a_full_disk_refuses_reads_and_serves_again_when_space_returns() {
    let name = "an_idle_node_on_a_full_disk_refuses_reads_and_serves_again_when_space_returns";
    let Some(fs) = mount_or_skip(name, 32) else {
        return;
    };
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let data = fs.path().join("data");
    let mut node = Node::start(&nats.url(), &data);
    let events = workload(51, 30, "IDLE");
    let (before, after) = events.split_at(events.len() / 2);
    let first = publish_all(&js, before).await;
    let mut client = node.client().await;
    case_after(&mut client, &before[0].case_id, first).await;

    // No events arrive: the first thing that needs the disk is a read, which
    // must be recorded in the access log before it is answered.
    fs.fill();
    let request = || GetCaseRequest {
        case_id: before[0].case_id.clone(),
        now: None,
    };
    let started = Instant::now();
    let (mut reads, refusal) = (
        0,
        loop {
            match client.get_case(request()).await {
                Err(s) if s.code() == tonic::Code::Unavailable => break s,
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "reads on a full disk must be refused as UNAVAILABLE"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
    );
    reads += 1;
    // The first refusal may come from the access log itself ("check the
    // node's disk"), later ones from readiness ("the disk ... is full").
    assert!(refusal.message().contains("disk"), "{}", refusal.message());
    let not_serving = eventually(Duration::from_secs(10), || async {
        health(&node.grpc_addr, CASES).await == Some(ServingStatus::NotServing as i32)
    })
    .await;
    assert!(
        not_serving,
        "health must say NOT_SERVING while the access log cannot be written"
    );

    fs.free();
    let serving = eventually(Duration::from_secs(30), || async {
        health(&node.grpc_addr, CASES).await == Some(ServingStatus::Serving as i32)
    })
    .await;
    assert!(
        serving,
        "an idle node must come back by itself when space returns"
    );
    client
        .get_case(request())
        .await
        .expect("reads are served again once space returns");
    reads += 1;
    let last = publish_all(&js, after).await;
    case_after(&mut client, &after[after.len() - 1].case_id, last).await;
    assert!(node.is_running(), "the next event must not stop the node");
    let head = tree_head(&node.grpc_addr).await.expect("tree head");
    let reference = reference_head(&nats, last, &after[after.len() - 1].case_id).await;
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST {name}: filled the tmpfs under an idle node; a read was refused UNAVAILABLE naming the disk, health NOT_SERVING; freed it: health SERVING, {reads} reads answered or refused as expected, then {} more events landed ({} entries, lost: {}, duplicated: {}, roots equal: {})",
        after.len(),
        head.0,
        reference.0.saturating_sub(head.0),
        head.0.saturating_sub(reference.0),
        head == reference
    ));
    assert_eq!(head, reference);
    node.stop();
    let (ok, out, err) = lianxi(&["verify", "--data-dir", data.to_str().unwrap()], &[]);
    assert!(ok, "{out}\n{err}");
}

/// Runs `lianxi serve` on `data` for at most `within`; the exit status
/// (None when it kept running and was killed) and what it wrote to stderr.
fn serve_briefly(
    nats_url: &str,
    data: &Path,
    within: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    // Not next to the data directory: that disk may be full.
    let err_dir = tempfile::tempdir().expect("temp dir");
    let err_path = err_dir.path().join("stderr");
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = Command::new(LIANXI)
        .arg("serve")
        .env("LIANXI_NATS_URL", nats_url)
        .env("LIANXI_DATA_DIR", data)
        .env("LIANXI_GRPC_ADDR", "127.0.0.1:0")
        .env("LIANXI_KEK_FILE", support::test_kek_file())
        .env(
            "LIANXI_LOG",
            std::env::var("DISK_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .expect("start lianxi serve");
    let started = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_on_a_full_disk_never_damages_the_data_directory() {
    let name = "a_start_on_a_full_disk_never_damages_the_data_directory";
    let Some(fs) = mount_or_skip(name, 32) else {
        return;
    };
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let data = fs.path().join("data");
    let node = Node::start(&nats.url(), &data);
    let events = workload(43, 40, "START");
    let last = publish_all(&js, &events).await;
    let mut client = node.client().await;
    case_after(&mut client, &events[events.len() - 1].case_id, last).await;
    let head = tree_head(&node.grpc_addr).await.expect("tree head");
    node.stop();

    fs.fill();
    let trials = 8;
    let mut exited = 0;
    for _ in 0..trials {
        // A supervisor restarting the node while the disk is still full.
        let (status, stderr) = serve_briefly(&nats.url(), &data, Duration::from_secs(4));
        assert!(
            !stderr.contains("panicked"),
            "a start on a full disk must not panic:\n{stderr}"
        );
        if let Some(status) = status {
            exited += 1;
            assert_ne!(status.code(), Some(101), "{stderr}");
        }
        let (_, _, verr) = lianxi(&["verify", "--data-dir", data.to_str().unwrap()], &[]);
        assert!(!verr.contains("panicked"), "{verr}");
    }
    fs.free();
    let (ok, out, err) = lianxi(&["verify", "--data-dir", data.to_str().unwrap()], &[]);
    assert!(
        ok,
        "after starts on a full disk and space freed, the data directory must open and verify:\n{out}\n{err}"
    );
    let node = Node::start(&nats.url(), &data);
    let again = tree_head(&node.grpc_addr).await.expect("tree head");
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST {name}: {trials} starts of `lianxi serve` on a full tmpfs ({exited} exited with an error, the others killed after 4 s), `lianxi verify` after each; space freed: verify ok, the node serves {} entries (before: {}), roots equal: {}",
        again.0,
        head.0,
        again == head
    ));
    assert_eq!(again, head);
}

/// A data directory of a stopped node that read `cases` simulated cases.
async fn filled_data_dir(nats: &Nats, seed: u64, cases: usize) -> (tempfile::TempDir, u64) {
    let js = nats.jetstream().await;
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let events = workload(seed, cases, "DISK");
    let last = publish_all(&js, &events).await;
    let mut client = node.client().await;
    case_after(&mut client, &events[events.len() - 1].case_id, last).await;
    let _ = eventually(Duration::from_secs(30), || async {
        receipted_messages(&js).await == last
    })
    .await;
    node.stop();
    (data, last)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_bytes_in_sled_files_end_in_a_clear_error_never_a_panic() {
    let name = "flipped_bytes_in_sled_files_end_in_a_clear_error_never_a_panic";
    let nats = Nats::start();
    let (pristine, _) = filled_data_dir(&nats, 45, 80).await;
    let scratch = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(45);
    let trials = 12;
    let (mut verify_failed, mut serve_refused) = (0, 0);
    let (mut serve_behind, mut serve_damaged, mut serve_silent) = (0, 0, 0);
    for trial in 0..trials {
        let work = scratch.path().join(format!("trial-{trial}"));
        copy_dir(pristine.path(), &work);
        let db = work.join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        for _ in 0..6 {
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= 0xff;
        }
        std::fs::write(&db, &bytes).unwrap();
        let shown = work.display().to_string();

        let (ok, out, err) = lianxi(&["verify", "--data-dir", &shown], &[]);
        assert!(
            !err.contains("panicked"),
            "trial {trial}: verify must not panic:\n{err}"
        );
        if !ok {
            verify_failed += 1;
            assert!(
                err.contains(&shown),
                "trial {trial}: the error must name the data directory:\n{err}"
            );
        } else {
            assert!(out.contains("ok:"), "{out}");
        }

        let (status, stderr) = serve_briefly(&nats.url(), &work, Duration::from_secs(5));
        assert!(
            !stderr.contains("panicked"),
            "trial {trial}: serve must not panic:\n{stderr}"
        );
        if let Some(status) = status {
            assert_ne!(status.code(), Some(101), "trial {trial}: {stderr}");
            assert!(!status.success(), "{stderr}");
            serve_refused += 1;
            assert!(
                stderr.contains(&shown),
                "trial {trial}: the error must name the data directory:\n{stderr}"
            );
        } else if stderr.contains("receipted or signed") {
            // sled reopened an older state; the high-water mark noticed.
            serve_behind += 1;
        } else if stderr.contains("damaged") {
            serve_damaged += 1;
        } else {
            serve_silent += 1;
        }
    }
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST {name}: {trials} copies of a data directory with 6 bytes flipped in sled's db file each; verify failed on {verify_failed} naming the directory; serve refused {serve_refused} naming it, stayed up not ready behind its high-water mark (sled reopened an older state) on {serve_behind}, up not ready with damage named on {serve_damaged}, up without noticing at start on {serve_silent}; panics: 0, exit code 101: 0"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_tail_is_noticed_at_start_and_read_again_before_the_node_serves() {
    let name = "a_lost_tail_is_noticed_at_start_and_read_again_before_the_node_serves";
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let events = workload(47, 200, "TAIL");
    let last = publish_all(&js, &events).await;
    let mut client = node.client().await;
    case_after(&mut client, &events[events.len() - 1].case_id, last).await;
    let receipted = eventually(Duration::from_secs(30), || async {
        receipted_messages(&js).await == last
    })
    .await;
    assert!(receipted);
    // Reads, each recorded in the access log before it is answered.
    for e in events.iter().step_by(10) {
        case_after(&mut client, &e.case_id, 0).await;
    }
    let head = tree_head(&node.grpc_addr).await.expect("tree head");
    node.stop();
    // Counted on a copy: opening sled rewrites parts of its files.
    let access_before = {
        let probe = tempfile::tempdir().unwrap();
        copy_dir(data.path(), probe.path());
        let log = lianxi_log::Log::open(probe.path(), lianxi_domain::Policy::default()).unwrap();
        log.access_log().verify().expect("the access log verifies")
    };

    // Cut the end of sled's file, as a lost write-back cache would. Where
    // the cut lands decides what sled makes of it: an older state (the case
    // this test is about) or damage it stops on (a clear error, tested by
    // the flipped-bytes test). Cuts are tried on copies until one reopens.
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(data.path(), pristine.path());
    let db = data.path().join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    let mut damaged = Vec::new();
    let mut intact = 0;
    let mut reopened = None;
    // Cuts from 1/64 of the file to half of it, the likeliest first.
    let cuts: Vec<u64> = [8, 16, 4, 32, 3, 64, 2]
        .iter()
        .map(|d| len - (len / d).max(64 * 1024).min(len / 2))
        .chain((1..16).map(|k| len - len * k / 32))
        .collect();
    for cut in cuts {
        let _ = std::fs::remove_dir_all(data.path());
        std::fs::create_dir_all(data.path()).unwrap();
        copy_dir(pristine.path(), data.path());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .unwrap()
            .set_len(cut)
            .unwrap();
        // sled rewrites parts of its files when it opens them, and may
        // find damage only on a later open of a cut file (its snapshot
        // behind its log). So the cut is first taken through what the test
        // does next (open, offline verify, serve's repair) on a copy; a
        // cut that turns into damage on the way counts as damage.
        let probe = tempfile::tempdir().unwrap();
        copy_dir(data.path(), probe.path());
        let policy = lianxi_domain::Policy::default;
        let later = (|| {
            drop(lianxi_log::Log::open(probe.path(), policy())?);
            drop(lianxi_log::Log::open(probe.path(), policy())?);
            let log = lianxi_log::Log::open(probe.path(), policy())?;
            log.prepare_catch_up()?;
            match log.damage() {
                Some(d) => Err(lianxi_log::Error::Damaged {
                    path: String::new(),
                    detail: d,
                }),
                None => Ok(()),
            }
        })();
        match later {
            Ok(()) => {}
            Err(lianxi_log::Error::Damaged { detail, .. }) => {
                damaged.push((cut, detail));
                continue;
            }
            Err(e) => panic!("a cut file opens or is damage, never {e}"),
        }
        match lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()) {
            // A cut sled recovers from whole (what it cut was rewritten
            // elsewhere) is not the case this test is about; but it must
            // then hold every entry, never fewer without saying so.
            Ok(log) if log.behind().is_none() => {
                assert_eq!(
                    log.tree_size(),
                    head.0,
                    "a log that lost entries must be behind its high-water mark"
                );
                intact += 1;
            }
            Ok(log) => {
                reopened = Some((cut, log.behind(), log.access_log().lost()));
                break;
            }
            Err(lianxi_log::Error::Damaged { detail, .. }) => damaged.push((cut, detail)),
            Err(e) => panic!("a cut file opens or is damage, never {e}"),
        }
    }
    let Some((cut, behind, access_lost)) = reopened else {
        panic!("no cut reopened as an older state ({intact} lost nothing): {damaged:?}")
    };
    // Access records the cut took are noticed too (by their own mark).
    if let Some(lost) = &access_lost {
        assert_eq!(lost.had, access_before, "{lost:?}");
    }
    let behind = behind.expect("the cut log must be noticed as behind its high-water mark");
    assert!(behind.have < head.0, "{behind:?}");
    let (ok, out, err) = lianxi(
        &["verify", "--data-dir", data.path().to_str().unwrap()],
        &[],
    );
    assert!(!ok, "offline verify must report the lost tail:\n{out}");
    assert!(err.contains("receipted or signed"), "{err}");

    let node = Node::start(&nats.url(), data.path());
    let caught_up = eventually(Duration::from_secs(60), || async {
        health(&node.grpc_addr, CASES).await == Some(ServingStatus::Serving as i32)
    })
    .await;
    assert!(
        caught_up,
        "the node must catch up from the stream and serve"
    );
    let again = tree_head(&node.grpc_addr).await.expect("tree head");
    node.stop();
    // Offline: the access log verifies, and a loss is recorded in it.
    let gaps = {
        let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
        let access = log.access_log();
        access
            .verify()
            .expect("the access log verifies after the gap is recorded");
        let (all, _) = access
            .list(&Default::default(), 100_000)
            .expect("list the access log");
        all.iter()
            .filter(|r| r.method == lianxi_log::GAP_METHOD)
            .map(|r| r.detail.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(gaps.len(), usize::from(access_lost.is_some()), "{gaps:?}");
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST {name}: cut sled's db file from {len} to {cut} bytes after {} entries were receipted and {access_before} reads recorded (cuts tried before on copies that sled stopped on as damage, a clear error: {}); the log reopened with {} entries (noticed: behind its high-water mark; offline verify FAILED) and {} (gap records written at start: {}); the node read the stream again and serves {} entries, roots equal: {}",
        head.0,
        damaged.len(),
        behind.have,
        access_lost.as_ref().map_or_else(
            || "every access record".to_owned(),
            |l| format!("access records up to {} of {}", l.have, l.had)
        ),
        gaps.len(),
        again.0,
        again == head
    ));
    assert_eq!(
        again, head,
        "after catching up, the node holds what it receipted"
    );
    let (ok, out, err) = lianxi(
        &["verify", "--data-dir", data.path().to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_drains_with_bounded_memory() {
    let name = "a_backlog_drains_with_bounded_memory";
    let nats = Nats::start();
    let js = nats.jetstream().await;
    // The backlog builds up while no node runs: the stream as a node makes it.
    lianxi_ingest::ensure_stream(&js, 1)
        .await
        .expect("events stream");
    // About 43,000 events by default; DISK_TEST_BACKLOG_CASES=74000 gives
    // the 800,000-event backlog of RELIABILITY.md.
    let cases: usize = std::env::var("DISK_TEST_BACKLOG_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let deadline = Duration::from_secs(600.max(cases as u64 / 20));
    let events = workload(49, cases, "MEM");
    let last = publish_all(&js, &events).await;
    let data = tempfile::tempdir().unwrap();
    // The node's default unless DISK_TEST_CACHE_MB says otherwise (to
    // compare).
    let cache_mb = std::env::var("DISK_TEST_CACHE_MB")
        .unwrap_or_else(|_| (lianxi_log::DEFAULT_CACHE_BYTES >> 20).to_string());
    let node = Node::start_with_env(
        &nats.url(),
        data.path(),
        &[("LIANXI_CACHE_MB", cache_mb.as_str())],
    );
    let start_rss = rss_kib(node.pid());
    let pid = node.pid();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        let mut samples = Vec::new();
        let started = Instant::now();
        while started.elapsed() < deadline {
            let rss = rss_kib(pid);
            if rss == 0 {
                break;
            }
            peak = peak.max(rss);
            samples.push(rss);
            std::thread::sleep(Duration::from_millis(100));
        }
        (peak, samples)
    });
    let started = Instant::now();
    let mut client = node.client().await;
    case_after_long(
        &mut client,
        &events[events.len() - 1].case_id,
        last,
        deadline,
    )
    .await;
    let drained = started.elapsed();
    let end_rss = rss_kib(node.pid());
    node.stop();
    let (peak, samples) = sampler.join().unwrap();
    // Resident memory at each quarter of the drain: flat once the cache is
    // full, not growing with the backlog.
    let quarters: Vec<String> = (1..=4)
        .map(|q| {
            let i = (samples.len() * q / 4).saturating_sub(1);
            format!("{}", samples.get(i).copied().unwrap_or(0) / 1024)
        })
        .collect();
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST {name}: drained a backlog of {last} events in {:.1} s with --cache-mb {cache_mb}; resident memory {} MiB at start, {} MiB at each quarter of the drain, peak {} MiB ({} samples), {} MiB at the end",
        drained.as_secs_f64(),
        start_rss / 1024,
        quarters.join(" / "),
        peak / 1024,
        samples.len(),
        end_rss / 1024
    ));
    assert!(
        peak < 300 * 1024,
        "resident memory peaked at {} MiB",
        peak / 1024
    );
}

/// Like `case_after`, for a backlog that takes longer than its 30 s.
async fn case_after_long(
    client: &mut lianxi_proto::v1::cases_client::CasesClient<tonic::transport::Channel>,
    case_id: &str,
    stream_sequence: u64,
    deadline: Duration,
) {
    let started = Instant::now();
    loop {
        if let Ok(r) = client
            .get_case(GetCaseRequest {
                case_id: case_id.into(),
                now: None,
            })
            .await
            && r.get_ref().applied_stream_sequence >= stream_sequence
        {
            return;
        }
        assert!(started.elapsed() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The views of a data directory, as stored bytes, and its Merkle root.
fn derived_state(dir: &Path) -> (Vec<(String, Vec<u8>)>, [u8; 32]) {
    let log = lianxi_log::Log::open(dir, lianxi_domain::Policy::default()).unwrap();
    let views = log.view_bytes().unwrap();
    let root = log.root(log.tree_size()).unwrap();
    (views, root)
}

/// `lianxi rebuild` killed with SIGKILL part way through: the directory is
/// then either as it was or marked as cut off, `lianxi verify` and the log
/// itself refuse it and say to run the rebuild again (a node's `serve`
/// runs it before it reads or serves anything), and the rebuild run again
/// gives the same views and root.
#[test]
fn a_rebuild_killed_part_way_is_refused_until_it_is_run_again_and_then_gives_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    {
        // A simulated city, appended directly (no bus: this is about the
        // rebuild of what is on disk).
        let log = lianxi_log::Log::open(dir.path(), lianxi_domain::Policy::default()).unwrap();
        let msgs: Vec<lianxi_log::Incoming> = workload(17, 2_000, "RB")
            .iter()
            .enumerate()
            .map(|(i, e)| lianxi_log::Incoming {
                stream_sequence: i as u64 + 1,
                subject: support::subject(e),
                recorded_at: e.occurred_at.unwrap_or_default(),
                payload: e.encode_to_vec(),
            })
            .collect();
        for chunk in msgs.chunks(512) {
            log.append_group(chunk, &lianxi_log::GroupKeys::derived("rebuild-test"))
                .unwrap();
        }
    }
    let before = derived_state(dir.path());
    assert!(before.0.len() >= 1_900, "{} views", before.0.len());
    // How long a whole rebuild takes here, to kill the next ones part way.
    let start = Instant::now();
    let (ok, _, err) = lianxi(&["rebuild", "--data-dir", data], &[]);
    assert!(ok, "{err}");
    let whole = start.elapsed();
    assert_eq!(
        derived_state(dir.path()),
        before,
        "a rebuild changed the log"
    );
    let (mut cut_off, mut kills) = (0, 0);
    for share in [0.3, 0.5, 0.7, 0.85] {
        let mut child = Command::new(LIANXI)
            .args(["rebuild", "--data-dir", data])
            .env("LIANXI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole.mul_f64(share));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let (ok, out, err) = lianxi(&["verify", "--data-dir", data], &[]);
        if !ok {
            assert!(
                err.contains("cut off before it finished") && err.contains("lianxi rebuild"),
                "a killed rebuild should leave the log as it was or marked as cut off: {out} {err}"
            );
            cut_off += 1;
            // The log itself refuses to grow or answer lookups from it.
            let log = lianxi_log::Log::open(dir.path(), lianxi_domain::Policy::default()).unwrap();
            let refused = log.check_storage_layout().unwrap_err().to_string();
            assert!(refused.contains("cut off"), "{refused}");
            let appended = log.append_group(&[], &lianxi_log::GroupKeys::new());
            assert!(
                matches!(appended, Err(lianxi_log::Error::Layout { .. })),
                "{appended:?}"
            );
        }
        let (ok, _, err) = lianxi(&["rebuild", "--data-dir", data], &[]);
        assert!(ok, "{err}");
        let (ok, out, err) = lianxi(&["verify", "--data-dir", data], &[]);
        assert!(ok, "{out} {err}");
        assert_eq!(
            derived_state(dir.path()),
            before,
            "after the rebuild ran again"
        );
    }
    assert!(
        cut_off > 0,
        "no kill landed inside the rebuild ({kills} kills of a {whole:?} rebuild)"
    );
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST a_rebuild_killed_part_way: killed `lianxi rebuild` (SIGKILL) {kills} times at 30-85% of a {:.1} s rebuild of {} cases; {cut_off} left it marked as cut off and refused by verify and by the log (no append, no lookup), the rest as it was; each rebuild run again gave the same views and root",
        whole.as_secs_f64(),
        before.0.len()
    ));
}

/// A node killed with SIGKILL while derived records (views, the per-case,
/// duplicate, person and filters' indexes) are still pending in memory,
/// written behind its entries: the next open projects the entries after
/// the `Mprojected` mark again, and the views and root are byte for byte
/// those a full `lianxi rebuild` of the same entries gives; `lianxi verify`
/// passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_with_derived_records_pending_reopens_with_the_views_a_rebuild_gives() {
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    // More than one write-behind's worth of entries, and not a multiple:
    // some are written behind, the rest pending at the kill.
    let events = workload(23, 1_000, "WB");
    let last = publish_all(&js, &events).await;
    let mut client = node.client().await;
    case_after_long(
        &mut client,
        &events[events.len() - 1].case_id,
        last,
        Duration::from_secs(180),
    )
    .await;
    drop(client);
    drop(node); // SIGKILL
    let rebuilt = tempfile::tempdir().unwrap();
    copy_dir(data.path(), rebuilt.path());
    let d = rebuilt.path().to_str().unwrap();
    let (ok, _, err) = lianxi(&["rebuild", "--data-dir", d], &[]);
    assert!(ok, "{err}");
    let reopened = derived_state(data.path());
    assert!(reopened.0.len() >= 900, "{} views", reopened.0.len());
    assert_eq!(
        reopened,
        derived_state(rebuilt.path()),
        "the views projected again at open differ from a rebuild's"
    );
    let (ok, out, err) = lianxi(
        &["verify", "--data-dir", data.path().to_str().unwrap()],
        &[],
    );
    assert!(ok, "verify after the kill: {out} {err}");
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST a_node_killed_with_derived_records_pending: {} events, SIGKILL after the last was applied; reopened with {} views equal to a rebuild's",
        events.len(),
        reopened.0.len()
    ));
}
