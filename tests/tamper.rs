//! Tamper cases: a stopped node's sled files are altered directly (through
//! `lianxi_log`'s test-only `Log::tamper` hooks), the node is restarted, and
//! the standalone verifier `lianxi verify --node ... --key ...`, trusting
//! only the node's verifier key, must fail and say which entry or which check
//! failed. Real nats-server, real binary, real sled, real gRPC.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use support::{Nats, Node, case_after, lianxi};

const ORIGIN: &str = "tamper.test/log";

/// A node with a known key that has read a simulated workload.
struct Setup {
    nats: Nats,
    data: tempfile::TempDir,
    keys: tempfile::TempDir,
    vkey: String,
    node: Option<Node>,
    entries: u64,
}

impl Setup {
    async fn start(seed: u64, cases: usize) -> Setup {
        let nats = Nats::start();
        let data = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let key_file = keys.path().join("node.key");
        let (ok, vkey, err) = lianxi(
            &[
                "keygen",
                "--origin",
                ORIGIN,
                "--out",
                key_file.to_str().unwrap(),
            ],
            &[],
        );
        assert!(ok, "keygen failed: {err}");
        let mut s = Setup {
            nats,
            data,
            keys,
            vkey: vkey.trim().to_owned(),
            node: None,
            entries: 0,
        };
        s.restart();
        s.entries = s.publish(seed, cases, "TAMPER").await;
        s
    }

    fn key_file(&self) -> PathBuf {
        self.keys.path().join("node.key")
    }

    fn state(&self) -> PathBuf {
        self.keys.path().join("state.json")
    }

    fn restart(&mut self) {
        self.restart_on(&self.nats.url());
    }

    fn restart_on(&mut self, url: &str) {
        assert!(self.node.is_none());
        let key = self.key_file();
        self.node = Some(Node::start_with_env(
            url,
            self.data.path(),
            &[
                ("LIANXI_SIGNING_KEY", key.to_str().unwrap()),
                ("LIANXI_LOG_ORIGIN", ORIGIN),
            ],
        ));
    }

    fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            assert!(node.stop().success());
        }
    }

    /// Publishes a simulated workload and waits until the node has applied
    /// it; returns the node's number of entries.
    async fn publish(&mut self, seed: u64, cases: usize, prefix: &str) -> u64 {
        let js = self.nats.jetstream().await;
        let workload = lianxi_sim::generate(&lianxi_sim::Workload {
            seed,
            cases,
            prefix: prefix.into(),
            ..lianxi_sim::Workload::default()
        });
        let mut acks = Vec::new();
        for (event, _) in &workload {
            let subject = format!(
                "lianxi.v1.events.{}.{}",
                lianxi_domain::agency_token(event.agency()).unwrap_or("unspecified"),
                event.case_id
            );
            acks.push(
                js.publish(subject, event.encode_to_vec().into())
                    .await
                    .expect("publish"),
            );
        }
        let mut last = 0;
        for ack in acks {
            last = ack.await.expect("stored").sequence;
        }
        let node = self.node.as_ref().expect("a running node");
        let mut client = node.client().await;
        case_after(&mut client, &workload[0].0.case_id, last).await;
        tree_size(&node.grpc_addr).await
    }

    fn verify(&self, event: Option<u64>) -> (bool, String, String) {
        let node = self.node.as_ref().expect("a running node");
        let state = self.state();
        let event = event.map(|e| e.to_string());
        let mut args = vec![
            "verify",
            "--node",
            &node.grpc_addr,
            "--key",
            &self.vkey,
            "--state",
            state.to_str().unwrap(),
        ];
        if let Some(e) = &event {
            args.extend(["--event", e]);
        }
        lianxi(&args, &[])
    }

    /// Opens the stopped node's log for tampering.
    fn with_log(&self, f: impl FnOnce(&lianxi_log::Log)) {
        let log =
            lianxi_log::Log::open(self.data.path(), lianxi_domain::Policy::default()).unwrap();
        f(&log);
    }
}

async fn tree_size(addr: &str) -> u64 {
    let mut c = lianxi_proto::v1::audit_client::AuditClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    c.get_tree_head(lianxi_proto::v1::GetTreeHeadRequest { tree_size: 0 })
        .await
        .unwrap()
        .into_inner()
        .tree_size
}

/// Verifies once (saving the state), then stops the node.
async fn verified_then_stopped(seed: u64) -> Setup {
    let mut s = Setup::start(seed, 20).await;
    assert!(s.entries > 40, "workload too small: {}", s.entries);
    let (ok, out, err) = s.verify(Some(3));
    assert!(ok, "a clean node must verify: {out}\n{err}");
    assert!(out.contains("verified"), "{out}");
    s.stop();
    s
}

fn assert_fails(result: (bool, String, String), needles: &[&str]) -> String {
    let (ok, out, err) = result;
    assert!(!ok, "tampering went unnoticed:\n{out}\n{err}");
    for n in needles {
        assert!(err.contains(n), "the failure does not say {n:?}:\n{err}");
    }
    err
}

#[tokio::test]
async fn a_flipped_byte_in_a_stored_entry_is_caught_and_named() {
    let mut s = verified_then_stopped(21).await;
    s.with_log(|log| assert!(log.tamper().flip_byte(7).unwrap()));
    s.restart();
    assert_fails(s.verify(None), &["hash check FAILED at entry 7", "altered"]);
}

#[tokio::test]
async fn a_dropped_entry_is_caught_and_named() {
    let mut s = verified_then_stopped(22).await;
    s.with_log(|log| assert!(log.tamper().drop_entry(12).unwrap()));
    s.restart();
    assert_fails(s.verify(None), &["entry 12", "missing"]);
}

#[tokio::test]
async fn two_reordered_entries_are_caught_and_named() {
    let mut s = verified_then_stopped(23).await;
    s.with_log(|log| assert!(log.tamper().swap_entries(5, 9).unwrap()));
    s.restart();
    assert_fails(s.verify(None), &["entry 5", "reordered"]);
}

#[tokio::test]
async fn a_truncated_log_with_a_consistent_rewind_is_caught_by_the_saved_checkpoint() {
    let mut s = verified_then_stopped(24).await;
    let keep = s.entries - 10;
    s.with_log(|log| {
        assert_eq!(log.tamper().truncate(keep).unwrap(), 10);
        // The rewind is consistent: what is left verifies on its own.
        let report = log.verify().unwrap();
        assert_eq!(report.entries, keep);
        assert_eq!(
            log.latest_checkpoint().unwrap().map(|c| c.size <= keep),
            Some(true)
        );
    });
    s.restart();
    // Without the saved state the cut log would pass: chain, root and
    // signature are all consistent.
    let node = s.node.as_ref().unwrap();
    let fresh_state = s.keys.path().join("fresh-state.json");
    let (ok, out, err) = lianxi(
        &[
            "verify",
            "--node",
            &node.grpc_addr,
            "--key",
            &s.vkey,
            "--state",
            fresh_state.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "the cut log is self-consistent: {out}\n{err}");
    // With it, the smaller tree is a rollback...
    assert_fails(s.verify(None), &["rollback", &format!("tree size {keep}")]);
    // ...and once the node has grown past the saved size with other
    // entries, the consistency proof from the saved checkpoint fails.
    let grown = s.publish(25, 10, "AFTERCUT").await;
    assert!(grown > s.entries, "{grown} <= {}", s.entries);
    assert_fails(
        s.verify(None),
        &["consistency check FAILED", "history was rewritten"],
    );
}

#[tokio::test]
async fn an_old_checkpoint_served_as_new_is_a_rollback() {
    let mut s = Setup::start(26, 15).await;
    let (ok, out, err) = s.verify(None);
    assert!(ok, "{out}\n{err}");
    s.stop();
    // The operator keeps a copy of the data directory as it is now...
    let backup = tempfile::tempdir().unwrap();
    copy_dir(s.data.path(), backup.path());
    // ...the node goes on, and an auditor sees a later checkpoint...
    s.restart();
    let later = s.publish(27, 10, "LATER").await;
    assert!(later > s.entries);
    let (ok, out, err) = s.verify(None);
    assert!(ok, "{out}\n{err}");
    s.stop();
    // ...then the node is put back to the copy and serves from it, on a bus
    // that does not let it catch up again.
    std::fs::remove_dir_all(s.data.path()).unwrap();
    copy_dir(backup.path(), s.data.path());
    let other_bus = Nats::start();
    s.restart_on(&other_bus.url());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = assert_fails(s.verify(None), &["rollback"]);
    assert!(err.contains(&format!("tree size {later}")), "{err}");
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
