//! Test harness: a real nats-server per test (from `lianxi-testkit`: on a
//! port it picked itself, with a temporary store), and the real `lianxi`
//! binary as the node. Both are killed on drop.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage as Publish;
use lianxi_proto::v1::cases_client::CasesClient;
use lianxi_proto::v1::{Agency, Event, GetCaseRequest, GetCaseResponse};
use prost::Message;
use tonic::transport::Channel;

pub const LIANXI: &str = env!("CARGO_BIN_EXE_lianxi");

/// A configuration file lianxi ships, under `deploy/nats/`.
pub fn shipped_conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/nats")
        .join(name)
}

/// One key-encryption key for every node of this test binary: nodes that
/// share a bus must share the KEK, as in production.
pub fn test_kek_file() -> &'static Path {
    static FILE: std::sync::OnceLock<tempfile::TempPath> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let f = tempfile::NamedTempFile::new().expect("temp file for the KEK");
        std::fs::write(f.path(), format!("{}\n", "4b".repeat(32))).expect("write the test KEK");
        f.into_temp_path()
    })
}

pub use lianxi_testkit::{Nats, Stopped, files_containing, free_port, nats_server_bin};

pub struct Node {
    child: Child,
    pub grpc_addr: String,
    // Held open so the node never writes to a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Node {
    pub fn start(nats_url: &str, data_dir: &Path) -> Node {
        Self::start_with_env(nats_url, data_dir, &[])
    }

    /// Starts a node with more `LIANXI_*` settings (e.g. a principals file).
    pub fn start_with_env(nats_url: &str, data_dir: &Path, envs: &[(&str, &str)]) -> Node {
        let mut child = Command::new(LIANXI)
            .arg("serve")
            .env("LIANXI_NATS_URL", nats_url)
            .env("LIANXI_DATA_DIR", data_dir)
            .env("LIANXI_GRPC_ADDR", "127.0.0.1:0")
            .env("LIANXI_KEK_FILE", test_kek_file())
            .env("LIANXI_LOG", "warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lianxi serve");
        let stdout = child.stdout.take().expect("node stdout");
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        stdout
            .read_line(&mut line)
            .expect("read the node's first line");
        let grpc_addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("node did not report its address: {line:?}"))
            .trim_end_matches(',')
            .to_owned();
        Node {
            child,
            grpc_addr,
            _stdout: stdout,
        }
    }

    /// Like [`Node::start`], but gives up after `within` when the node has not
    /// reported its gRPC address (for example because it cannot log in to
    /// NATS and keeps retrying), instead of waiting forever. The node is
    /// killed then; what it printed went to the test's stderr.
    pub fn start_within(nats_url: &str, data_dir: &Path, within: Duration) -> Result<Node, String> {
        Self::start_within_env(nats_url, data_dir, within, &[])
    }

    /// [`Node::start_within`] with more `LIANXI_*` settings.
    pub fn start_within_env(
        nats_url: &str,
        data_dir: &Path,
        within: Duration,
        envs: &[(&str, &str)],
    ) -> Result<Node, String> {
        let mut child = Command::new(LIANXI)
            .arg("serve")
            .env("LIANXI_NATS_URL", nats_url)
            .env("LIANXI_DATA_DIR", data_dir)
            .env("LIANXI_GRPC_ADDR", "127.0.0.1:0")
            .env("LIANXI_KEK_FILE", test_kek_file())
            .env("LIANXI_LOG", "warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lianxi serve");
        let stdout = child.stdout.take().expect("node stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let read = stdout.read_line(&mut line);
            let _ = tx.send((read.map(|_| line), stdout));
        });
        let (line, stdout) = match rx.recv_timeout(within) {
            Ok((Ok(line), stdout)) => (line, stdout),
            Ok((Err(e), _)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot read the node's first line: {e}"));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the node did not report its gRPC address within {within:?} (its stderr is above)"
                ));
            }
        };
        let Some(grpc_addr) = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .map(|w| w.trim_end_matches(',').to_owned())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("node did not report its address: {line:?}"));
        };
        Ok(Node {
            child,
            grpc_addr,
            _stdout: stdout,
        })
    }

    pub async fn client(&self) -> CasesClient<Channel> {
        CasesClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect to the node")
    }

    /// Stops the node the way an operator does (SIGTERM) and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait for the node");
        std::mem::forget(self);
        status
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls GetCase until the node has applied `stream_sequence`.
pub async fn case_after(
    client: &mut CasesClient<Channel>,
    case_id: &str,
    stream_sequence: u64,
) -> GetCaseResponse {
    let started = Instant::now();
    loop {
        let r = client
            .get_case(GetCaseRequest {
                case_id: case_id.into(),
                now: None,
            })
            .await;
        if let Ok(r) = &r
            && r.get_ref().applied_stream_sequence >= stream_sequence
        {
            return r.get_ref().clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node did not apply stream sequence {stream_sequence} for {case_id}: last answer {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the `lianxi` binary and returns (success, stdout, stderr).
pub fn lianxi(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(LIANXI)
        .args(args)
        .envs(envs.iter().copied())
        .env("LIANXI_LOG", "warn")
        .output()
        .expect("run lianxi");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subject an agency publishes on, written out here (not taken from the
/// domain crate) so the test also checks the documented contract.
pub fn subject(e: &Event) -> String {
    let agency = match Agency::try_from(e.agency).unwrap() {
        Agency::PoliticalLegalCommittee => "political_legal_committee",
        Agency::Police => "police",
        Agency::Court => "court",
        Agency::CivilAffairs => "civil_affairs",
        Agency::Labour => "labour",
        Agency::WomensFederation => "womens_federation",
        Agency::JusticeBureau => "justice_bureau",
        Agency::Unspecified => "unspecified",
    };
    format!("lianxi.v1.events.{agency}.{}", e.case_id)
}

/// Publishes an event on its agency's subject with its id as the message
/// id; returns the stream sequence.
pub async fn publish(js: &async_nats::jetstream::Context, e: &Event) -> u64 {
    js.send_publish(
        subject(e),
        Publish::build()
            .payload(e.encode_to_vec().into())
            .message_id(e.event_id.clone()),
    )
    .await
    .expect("publish")
    .await
    .expect("stored by JetStream")
    .sequence
}

impl Node {
    /// The node's process id (for its memory, or a kill -9).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the node is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A small tmpfs mounted for one test (a disk that can fill up), unmounted
/// on drop. Tests run as root here and in CI; `None` (with the reason)
/// where mounting is impossible.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size_mb: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until the disk is full; returns
    /// the bytes written.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).expect("create the filler file");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(_) => break,
            }
        }
        // Small writes take whatever is left.
        while f.write(&chunk[..512]).is_ok_and(|n| n > 0) {
            written += 512;
        }
        let _ = f.flush();
        written
    }

    /// Frees what `fill` took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The resident memory of a process in KiB (`VmRSS` in /proc), 0 if gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The gRPC health status of `service` on the node at `addr`.
pub async fn health(addr: &str, service: &str) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
    c.check(tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    })
    .await
    .ok()
    .map(|r| r.into_inner().status)
}

/// Polls until `f` holds or `within` passes; whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// An event of `agency` at `t` (Unix seconds) with `body`.
pub fn event_at(
    id: &str,
    case: &str,
    agency: Agency,
    t: i64,
    body: lianxi_proto::v1::event::Body,
) -> Event {
    Event {
        event_id: id.into(),
        case_id: case.into(),
        agency: agency as i32,
        occurred_at: Some(lianxi_proto::Timestamp {
            seconds: t,
            nanos: 0,
        }),
        corrects_event_id: None,
        body: Some(body),
    }
}

/// The women's federation opens a domestic-violence case from the 12338
/// hotline: the opening of the outage and publish-rate caseloads.
pub fn wf_opened(id: &str, case: &str, t: i64) -> Event {
    opened_by(id, case, Agency::WomensFederation, t)
}

/// `agency` opens a domestic-violence case from the 12338 hotline at `t`.
pub fn opened_by(id: &str, case: &str, agency: Agency, t: i64) -> Event {
    use lianxi_proto::v1 as pb;
    event_at(
        id,
        case,
        agency,
        t,
        pb::event::Body::CaseOpened(pb::CaseOpened {
            channel: pb::Channel::Hotline12338 as i32,
            category: pb::Category::DomesticViolence as i32,
            jurisdiction: "330100/330106".into(),
            level: pb::Level::County as i32,
            person_ref: format!("P-{case}"),
            summary: "caller reports violence at home".into(),
            mandatory_reporter: String::new(),
            person: None,
            children: Vec::new(),
        }),
    )
}

/// A progress report by the women's federation: valid in any order once
/// the case is open, so only the client keeps a case's reports in order.
pub fn wf_progress(id: &str, case: &str, t: i64) -> Event {
    use lianxi_proto::v1 as pb;
    event_at(
        id,
        case,
        Agency::WomensFederation,
        t,
        pb::event::Body::ProgressReported(pb::ProgressReported {
            summary: format!("follow-up {id}"),
        }),
    )
}

/// The receipts in one message on a receipts subject (a `ReceiptBatch`).
pub fn batch_receipts(payload: &[u8]) -> Vec<lianxi_proto::v1::Receipt> {
    lianxi_proto::v1::ReceiptBatch::decode(payload)
        .expect("a ReceiptBatch on the receipts subject")
        .receipts
}

/// A core NATS subscription to receipts subjects, split into receipts and
/// kept by stream sequence, so a receipt that came in the same batch as an
/// earlier one is still there when asked for.
pub struct ReceiptSub {
    pub sub: async_nats::Subscriber,
    pub by_seq: std::collections::HashMap<u64, lianxi_proto::v1::Receipt>,
    /// Every receipt received, copies included, in arrival order.
    pub all: Vec<lianxi_proto::v1::Receipt>,
    /// How many batch messages arrived.
    pub messages: usize,
}

impl ReceiptSub {
    pub async fn new(client: &async_nats::Client, subject: &str) -> ReceiptSub {
        let sub = client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe to receipts");
        client.flush().await.expect("flush");
        ReceiptSub {
            sub,
            by_seq: Default::default(),
            all: Vec::new(),
            messages: 0,
        }
    }

    /// Takes in the next batch message, if one comes before `deadline`.
    pub async fn next_batch(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Option<Vec<lianxi_proto::v1::Receipt>> {
        use tokio_stream::StreamExt;
        let msg = tokio::time::timeout_at(deadline, self.sub.next())
            .await
            .ok()??;
        let receipts = batch_receipts(msg.payload.as_ref());
        self.messages += 1;
        for r in &receipts {
            self.all.push(r.clone());
            self.by_seq.entry(r.stream_sequence).or_insert(r.clone());
        }
        Some(receipts)
    }

    /// The receipt for the message at `stream_sequence` (waiting up to 20 s).
    pub async fn receipt(&mut self, stream_sequence: u64) -> lianxi_proto::v1::Receipt {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.by_seq.contains_key(&stream_sequence) {
            self.next_batch(deadline)
                .await
                .unwrap_or_else(|| panic!("no receipt for stream sequence {stream_sequence}"));
        }
        self.by_seq[&stream_sequence].clone()
    }
}

/// One message of the stream LIANXI_RECEIPTS.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub subject: String,
    /// Its `Nats-Msg-Id`.
    pub message_id: String,
    pub receipts: Vec<lianxi_proto::v1::Receipt>,
}

/// Every message of the stream LIANXI_RECEIPTS, in order.
pub async fn receipt_batches_in_stream(js: &async_nats::jetstream::Context) -> Vec<StoredBatch> {
    let mut stream = js.get_stream("LIANXI_RECEIPTS").await.expect("stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue; // deleted
        };
        out.push(StoredBatch {
            subject: m.subject.to_string(),
            message_id: m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
            receipts: batch_receipts(m.payload.as_ref()),
        });
    }
    out
}

/// Every receipt held in the stream LIANXI_RECEIPTS, copies included, in
/// the stream's order, with the number of batch messages.
pub async fn receipts_in_stream(
    js: &async_nats::jetstream::Context,
) -> (Vec<lianxi_proto::v1::Receipt>, u64) {
    let batches = receipt_batches_in_stream(js).await;
    let n = batches.len() as u64;
    (batches.into_iter().flat_map(|b| b.receipts).collect(), n)
}

/// How many distinct messages (by stream sequence) the receipts stream
/// holds a receipt for.
pub async fn receipted_messages(js: &async_nats::jetstream::Context) -> u64 {
    let (receipts, _) = receipts_in_stream(js).await;
    receipts
        .iter()
        .map(|r| r.stream_sequence)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64
}
