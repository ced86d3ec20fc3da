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

// Exported log files: `lianxi export` and `lianxi verify --file`.

impl Setup {
    fn export(&self, out: &Path) {
        let node = self.node.as_ref().expect("a running node");
        let (ok, stdout, err) = lianxi(
            &[
                "export",
                "--node",
                &node.grpc_addr,
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(ok, "export failed: {stdout}\n{err}");
        assert!(stdout.contains("exported"), "{stdout}");
    }

    fn verify_file(&self, file: &Path, state: &Path, event: Option<u64>) -> (bool, String, String) {
        let event = event.map(|e| e.to_string());
        let mut args = vec![
            "verify",
            "--file",
            file.to_str().unwrap(),
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
}

/// The byte ranges of the entries in an export file (format in
/// services/lianxi/src/proof.rs, `export`): after the header line, the
/// length-delimited note, then one length-delimited `LogEntry` each.
fn export_records(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let magic = b"lianxi-log-export v1\n";
    assert!(bytes.starts_with(magic));
    let mut at = magic.len();
    let mut records = Vec::new();
    while at < bytes.len() {
        let mut rest = &bytes[at..];
        let len = prost::encoding::decode_varint(&mut rest).unwrap() as usize;
        let start = bytes.len() - rest.len();
        records.push(start..start + len);
        at = start + len;
    }
    assert_eq!(at, bytes.len());
    // The first record is the checkpoint note.
    records.remove(0);
    records
}

#[tokio::test]
async fn an_exported_log_verifies_with_only_the_key_and_damage_is_named() {
    let mut s = Setup::start(31, 20).await;
    assert!(s.entries > 40, "workload too small: {}", s.entries);
    let file = s.keys.path().join("log.export");
    s.export(&file);
    let state = s.keys.path().join("file-state.json");
    let (ok, out, err) = s.verify_file(&file, &state, Some(5));
    assert!(ok, "a clean export must verify: {out}\n{err}");
    assert!(out.contains("ok: entry 5 "), "{out}");
    assert!(
        out.contains(&format!("{} entries, every hash", s.entries)),
        "{out}"
    );
    assert!(out.contains("verified"), "{out}");
    // The node grows; a new export is consistent with the state saved from
    // the first file (the old root recomputed from the file's entries), and
    // the inclusion of the last entry is proved from the file alone.
    let first = s.entries;
    s.entries = s.publish(32, 10, "EXPORTMORE").await;
    assert!(s.entries > first);
    let grown = s.keys.path().join("grown.export");
    s.export(&grown);
    let last = s.entries.to_string();
    let (ok, out, err) = s.verify_file(&grown, &state, Some(s.entries));
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "consistent with the checkpoint of tree size {first}"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("ok: entry {last} ")), "{out}");
    // The file agrees with the node's own verification.
    let (ok, out, err) = s.verify(Some(3));
    assert!(ok, "{out}\n{err}");

    let bytes = std::fs::read(&grown).unwrap();
    let records = export_records(&bytes);
    assert_eq!(records.len() as u64, s.entries);
    let fresh = |name: &str| s.keys.path().join(name);

    // A flipped byte inside entry 7's case id: it still decodes, and its
    // hash no longer matches.
    let entry7 = &records[6];
    let decoded = lianxi_proto::v1::LogEntry::decode(&bytes[entry7.clone()]).unwrap();
    let case_id = decoded.event.unwrap().case_id;
    let at = entry7.start
        + bytes[entry7.clone()]
            .windows(case_id.len())
            .position(|w| w == case_id.as_bytes())
            .unwrap();
    let mut flipped = bytes.clone();
    flipped[at] ^= 0x01;
    let flipped_file = fresh("flipped.export");
    std::fs::write(&flipped_file, &flipped).unwrap();
    assert_fails(
        s.verify_file(&flipped_file, &fresh("s1.json"), None),
        &["hash check FAILED at entry 7", "altered"],
    );
    // A byte flipped in entry 7's framing: it does not decode, and the
    // failure names the entry and the byte.
    let mut broken = bytes.clone();
    broken[entry7.start] = 0xff;
    std::fs::write(&flipped_file, &broken).unwrap();
    let err = assert_fails(
        s.verify_file(&flipped_file, &fresh("s2.json"), None),
        &["entry 7"],
    );
    assert!(!err.contains("panicked"), "{err}");

    // Cut in the middle of the last entry: the byte offset is named.
    let cut_file = fresh("cut.export");
    std::fs::write(&cut_file, &bytes[..bytes.len() - 5]).unwrap();
    let err = assert_fails(
        s.verify_file(&cut_file, &fresh("s3.json"), None),
        &["cut short", &format!("entry {last}"), "byte"],
    );
    assert!(!err.contains("panicked"), "{err}");
    // Cut exactly after an entry: the entries the checkpoint covers are
    // missing.
    std::fs::write(&cut_file, &bytes[..records[19].end]).unwrap();
    assert_fails(
        s.verify_file(&cut_file, &fresh("s4.json"), None),
        &["sequence check FAILED at entry 21", "missing"],
    );
    // Cut inside the header or the checkpoint: still a clear failure.
    for n in [3, 30] {
        std::fs::write(&cut_file, &bytes[..n]).unwrap();
        let (ok, out, err) = s.verify_file(&cut_file, &fresh("s5.json"), None);
        assert!(!ok, "{out}");
        assert!(
            err.contains("not a lianxi log export") || err.contains("cut short"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // Trailing bytes after the last entry are refused.
    let mut longer = bytes.clone();
    longer.extend(
        lianxi_proto::v1::LogEntry::decode(&bytes[records[0].clone()])
            .unwrap()
            .encode_length_delimited_to_vec(),
    );
    std::fs::write(&cut_file, &longer).unwrap();
    assert_fails(
        s.verify_file(&cut_file, &fresh("s6.json"), None),
        &["sequence check FAILED"],
    );
    // None of the failures touched the saved state.
    let (ok, out, err) = s.verify_file(&grown, &state, None);
    assert!(ok, "{out}\n{err}");
}

#[tokio::test]
async fn an_export_of_a_rewritten_history_fails_against_the_saved_state() {
    // The state comes from an online verification of the node before its
    // log was cut and rewound consistently.
    let mut s = verified_then_stopped(34).await;
    let keep = s.entries - 10;
    s.with_log(|log| assert_eq!(log.tamper().truncate(keep).unwrap(), 10));
    s.restart();
    let file = s.keys.path().join("cut.export");
    s.export(&file);
    // On its own the exported file is self-consistent...
    let (ok, out, err) = s.verify_file(&file, &s.keys.path().join("fresh.json"), Some(3));
    assert!(ok, "the cut log is self-consistent: {out}\n{err}");
    // ...against the saved state it is a rollback...
    assert_fails(
        s.verify_file(&file, &s.state(), None),
        &["rollback", &format!("tree size {keep}")],
    );
    // ...and once the node has grown past the saved size with other
    // entries, an export of it does not extend what was signed before.
    let grown = s.publish(35, 10, "REWRITTEN").await;
    assert!(grown > s.entries, "{grown} <= {}", s.entries);
    s.export(&file);
    assert_fails(
        s.verify_file(&file, &s.state(), None),
        &["consistency check FAILED", "history was rewritten"],
    );
}
