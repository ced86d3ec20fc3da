//! The query API under load: real gRPC clients against the real services,
//! with the raw parts of a read measured in the same run for comparison.
//!
//! `cargo run --release -p lianxi-api --example query_bench [SECONDS]`
//! (`scripts/bench` step 3; SECONDS per measurement, 3 by default)
//!
//! 1. A log in a temporary directory holding a simulated city (`lianxi-sim`,
//!    2,000 cases, seed 1) and one long case of 1,000 events (opened, then
//!    999 progress reports by the opening agency).
//! 2. `lianxi.v1.Cases` and `lianxi.v1.Audit` served in-process over TCP on
//!    127.0.0.1 (development principals: no tokens, every read still
//!    recorded in the access log before it is answered).
//! 3. Raw parts on plain threads, no gRPC: `Log::case_view` (sled get +
//!    prost decode), `AccessLog::append` (one batch + flush: what every read
//!    adds) on 1 and on 8 threads, `Log::views_after` (the scan behind one
//!    ListCases page) and `Log::case_as_of` on the long case.
//! 4. GetCase on random cases and ListCases (domestic violence, pages of
//!    100 from random start tokens, each a token the server gave: collected
//!    first by walking the list a case at a time) with 1, 8 and 64
//!    concurrent clients,
//!    each with its own connection, calling back to back for SECONDS;
//!    GetCaseAsOf on the long case at its middle and end, 1 client.
//!
//! Client and server share the process and the machine's cores. The last
//! line is a `BENCH-JSON` line of the figures for `scripts/bench`.

use std::future::Future;
use std::time::{Duration, Instant};

use lianxi_api::{AuditApi, CasesApi, DEVELOPMENT_PRINCIPAL, Gate, Principals};
use lianxi_log::{EventOutcome, Incoming, Log};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::audit_client::AuditClient;
use lianxi_proto::v1::cases_client::CasesClient;
use lianxi_proto::v1::get_case_as_of_request::At;
use lianxi_proto::v1::{
    self as pb, AccessRecord, Agency, CaseFilter, Event, GetCaseAsOfRequest, GetCaseRequest,
    ListCasesRequest, PrincipalRole, event::Body,
};
use prost::Message;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};

/// Keys derived from a fixed seed: these runs have no key store.
static TEST_KEYS: std::sync::LazyLock<lianxi_log::GroupKeys> =
    std::sync::LazyLock::new(|| lianxi_log::GroupKeys::derived("lianxi-test"));

const CASES: usize = 2000;
const LONG_CASE: &str = "LONG-000001";
const LONG_EVENTS: u64 = 1000;
const PAGE: u32 = 100;
const CLIENTS: [usize; 3] = [1, 8, 64];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A small deterministic generator (xorshift64*), so no run depends on
/// another crate's idea of randomness.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        pick(self.next(), n)
    }
}

/// `r` (random) reduced to an index below `n`.
fn pick(r: u64, n: usize) -> usize {
    (r % n as u64) as usize
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// The simulated city plus the long case, as the node would read them from
/// the stream; and the simulated cases' ids.
fn workload() -> (Vec<Incoming>, Vec<String>) {
    let sim = lianxi_sim::generate(&lianxi_sim::Workload {
        cases: CASES,
        seed: 1,
        ..Default::default()
    });
    let end = lianxi_sim::Workload::default().end;
    let mut case_ids = std::collections::BTreeSet::new();
    let mut msgs: Vec<Incoming> = Vec::with_capacity(sim.len() + LONG_EVENTS as usize);
    for (e, _) in sim {
        case_ids.insert(e.case_id.clone());
        msgs.push(Incoming {
            stream_sequence: msgs.len() as u64 + 1,
            subject: lianxi_domain::event_subject(&e).unwrap(),
            recorded_at: e.occurred_at.unwrap_or_default(),
            payload: e.encode_to_vec(),
        });
    }
    for i in 0..LONG_EVENTS {
        let at = end + 3600 + i as i64 * 60;
        let body = if i == 0 {
            Body::CaseOpened(pb::CaseOpened {
                channel: pb::Channel::Hotline12338 as i32,
                category: pb::Category::DomesticViolence as i32,
                jurisdiction: "330100/330106".into(),
                level: pb::Level::County as i32,
                person_ref: "P-LONG-1".into(),
                summary: "caller reports violence at home; two children".into(),
                mandatory_reporter: String::new(),
                person: None,
                children: Vec::new(),
            })
        } else {
            Body::ProgressReported(pb::ProgressReported {
                summary: format!("call-back {i}: she is safe at her sister's home for now"),
            })
        };
        let e = Event {
            event_id: format!("long-{i:06}"),
            case_id: LONG_CASE.into(),
            agency: Agency::WomensFederation as i32,
            occurred_at: Some(ts(at)),
            corrects_event_id: None,
            body: Some(body),
        };
        msgs.push(Incoming {
            stream_sequence: msgs.len() as u64 + 1,
            subject: lianxi_domain::event_subject(&e).unwrap(),
            recorded_at: ts(at),
            payload: e.encode_to_vec(),
        });
    }
    (msgs, case_ids.into_iter().collect())
}

/// Appends everything in groups of 500; returns the global sequences of the
/// long case's entries.
fn fill(log: &Log, msgs: &[Incoming]) -> Vec<u64> {
    let mut long = Vec::new();
    for group in msgs.chunks(500) {
        let report = log.append_group(group, &TEST_KEYS).unwrap();
        for (seq, outcome) in report.outcomes {
            match outcome {
                EventOutcome::Accepted {
                    case_id,
                    global_sequence,
                    ..
                } => {
                    if case_id == LONG_CASE {
                        long.push(global_sequence);
                    }
                }
                other => panic!("stream sequence {seq} was not accepted: {other:?}"),
            }
        }
    }
    assert_eq!(long.len() as u64, LONG_EVENTS);
    long
}

/// Calls per second of `f`, called back to back for `secs` on each of
/// `threads` threads at once (each with its own random numbers).
fn raw(threads: usize, secs: Duration, f: impl Fn(&mut Rng) + Sync) -> (usize, f64) {
    let start = Instant::now();
    let n: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || {
                    let mut rng = Rng::new(100 + t as u64);
                    let mut n = 0;
                    while start.elapsed() < secs {
                        f(&mut rng);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    (n, n as f64 / start.elapsed().as_secs_f64())
}

struct Run {
    calls: usize,
    rate: f64,
    lat: Vec<Duration>,
}

/// `clients.len()` tasks, each calling `call` (with a random number) back
/// to back on its own client until `secs` have passed; every call timed.
async fn drive<C, F, Fut>(clients: &[C], secs: Duration, call: F) -> Run
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, call) = (client.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(i as u64 + 1);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let r = rng.next();
                let t = Instant::now();
                call(client.clone(), r).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("a client task panicked"));
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    Run {
        calls: lat.len(),
        rate,
        lat,
    }
}

const WIDTH: usize = 62;

fn header(first: &str) {
    println!(
        "{first:<WIDTH$} {:>7} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "calls", "calls/s", "p50 ms", "p99 ms", "max ms", "vs append"
    );
}

fn row(name: &str, r: &Run, append: f64) {
    println!(
        "{name:<WIDTH$} {:>7} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2}x",
        r.calls,
        r.rate,
        ms(percentile(&r.lat, 0.5)),
        ms(percentile(&r.lat, 0.99)),
        ms(r.lat.last().copied().unwrap_or_default()),
        r.rate / append,
    );
}

/// A raw part: calls and rate only (its mean time is 1 / rate per thread).
fn raw_row(name: &str, (calls, rate): (usize, f64), append: f64) {
    println!(
        "{name:<WIDTH$} {calls:>7} {rate:>9.0} {:>8} {:>8} {:>8} {:>9.2}x",
        "",
        "",
        "",
        rate / append
    );
}

/// The ListCases filter of the benchmark: domestic violence.
fn dv_filter() -> CaseFilter {
    CaseFilter {
        categories: vec![pb::Category::DomesticViolence as i32],
        ..CaseFilter::default()
    }
}

/// `<name>_per_s`, `<name>_p50_ms` and `<name>_p99_ms` of a row.
fn figures(json: &mut lianxi_sim::BenchJson, name: &str, r: &Run) {
    json.num(&format!("{name}_per_s"), r.rate)
        .num(&format!("{name}_p50_ms"), ms(percentile(&r.lat, 0.5)))
        .num(&format!("{name}_p99_ms"), ms(percentile(&r.lat, 0.99)));
}

fn access_record(case_id: &str) -> AccessRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    AccessRecord {
        at: Some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        principal: DEVELOPMENT_PRINCIPAL.into(),
        role: PrincipalRole::Development as i32,
        method: "/lianxi.v1.Cases/GetCase".into(),
        case_id: case_id.into(),
        allowed: true,
        detail: "case view".into(),
        ..AccessRecord::default()
    }
}

async fn channels(url: &str, n: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            Channel::from_shared(url.to_owned())
                .unwrap()
                .connect()
                .await
                .expect("connect to the in-process server"),
        );
    }
    out
}

#[tokio::main]
async fn main() {
    let secs = Duration::from_secs_f64(
        std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    println!("machine: {}", lianxi_sim::machine());
    println!(
        "every read is recorded in the access log (one sled batch, chained under the access log's lock; flushes shared by concurrent reads) before it is answered"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), lianxi_domain::Policy::default()).unwrap();
    let (msgs, sim_cases) = workload();
    let long = fill(&log, &msgs);
    let views = log.views().unwrap();
    let dv: Vec<String> = views
        .iter()
        .filter(|v| v.category == pb::Category::DomesticViolence as i32)
        .map(|v| v.case_id.clone())
        .collect();
    let view_bytes: usize = views
        .iter()
        .filter(|v| v.case_id != LONG_CASE)
        .map(|v| v.encoded_len())
        .sum();
    let long_bytes = views
        .iter()
        .find(|v| v.case_id == LONG_CASE)
        .map_or(0, |v| v.encoded_len());
    println!(
        "log: {} events, {} cases ({} domestic violence); views {} bytes on average, the long case's {} bytes",
        msgs.len(),
        views.len(),
        dv.len(),
        view_bytes / sim_cases.len(),
        long_bytes
    );
    println!(
        "each measurement: {:.1} s; random cases uniform over the {} simulated cases\n",
        secs.as_secs_f64(),
        sim_cases.len()
    );
    let (mid, end) = (long[long.len() / 2 - 1], long[long.len() - 1]);

    // Raw parts, on plain threads, before the server starts.
    let ids = &sim_cases;
    let view = raw(1, secs, |rng| {
        let id = &ids[rng.below(ids.len())];
        std::hint::black_box(log.case_view(id).unwrap().unwrap());
    });
    let access = log.access_log();
    let append = raw(1, secs, |rng| {
        let id = &ids[rng.below(ids.len())];
        access.append(access_record(id)).unwrap();
    });
    let append8 = raw(8, secs, |rng| {
        let id = &ids[rng.below(ids.len())];
        access.append(access_record(id)).unwrap();
    });
    // ListCases start tokens: a domestic-violence case with at least 100
    // more after it, so every page is full.
    let tokens = &dv[..dv.len() - PAGE as usize];
    let scan = raw(1, secs, |rng| {
        let token = &tokens[rng.below(tokens.len())];
        std::hint::black_box(log.views_after(token, 1000).unwrap());
    });
    let as_of = raw(1, secs, |_| {
        let r = log.case_as_of(LONG_CASE, |e| e.global_sequence <= end);
        std::hint::black_box(r.unwrap().unwrap());
    });
    let append_rate = append.1;
    let mut json = lianxi_sim::BenchJson::new();
    json.num("query_seconds_each", secs.as_secs_f64())
        .num("case_view_per_s", view.1)
        .num("access_log_append_per_s", append.1)
        .num("access_log_append_8_threads_per_s", append8.1)
        .num("views_after_1000_per_s", scan.1)
        .num("case_as_of_1000_per_s", as_of.1);
    header("raw parts, no gRPC");
    raw_row(
        "Log::case_view (sled get + prost decode), 1 thread",
        view,
        append_rate,
    );
    raw_row(
        "AccessLog::append (hash, batch, flush), 1 thread",
        append,
        append_rate,
    );
    raw_row("AccessLog::append, 8 threads at once", append8, append_rate);
    raw_row(
        "Log::views_after(token, 1000) (one ListCases scan), 1 thread",
        scan,
        append_rate,
    );
    raw_row(
        &format!("Log::case_as_of, {LONG_EVENTS}-event case at its end, 1 thread"),
        as_of,
        append_rate,
    );

    // The real services over TCP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_changes_tx, changes_rx) = tokio::sync::watch::channel(None);
    let gate = Gate::new(Principals::development(), log.access_log());
    let server = Server::builder()
        .add_service(CasesApi::new(log.clone(), gate.clone(), changes_rx).into_server())
        .add_service(AuditApi::new(log.clone(), gate).into_server())
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
    let server = tokio::spawn(server);

    let max = CLIENTS.iter().copied().max().unwrap_or(1);
    let chans = channels(&url, max).await;
    let cases: Vec<CasesClient<Channel>> = chans.iter().cloned().map(CasesClient::new).collect();
    // One call per connection before timing anything.
    for c in &cases {
        c.clone()
            .get_case(GetCaseRequest {
                case_id: sim_cases[0].clone(),
                now: None,
            })
            .await
            .expect("warm-up GetCase");
    }

    println!("\nGetCase on random cases (view + evaluate at the server's clock + access record):");
    header("concurrent clients");
    for n in CLIENTS {
        let ids = std::sync::Arc::new(sim_cases.clone());
        let r = drive(&cases[..n], secs, move |mut c, r| {
            let id = ids[pick(r, ids.len())].clone();
            async move {
                let reply = c
                    .get_case(GetCaseRequest {
                        case_id: id,
                        now: None,
                    })
                    .await
                    .expect("GetCase");
                assert!(reply.get_ref().view.is_some());
            }
        })
        .await;
        row(&format!("{n}"), &r, append_rate);
        figures(&mut json, &format!("get_case_{n}"), &r);
    }

    // Page tokens are the server's own (bound to the caller and the
    // filter): walk the list a case at a time, untimed, and keep the token
    // after each case with at least a full page after it.
    let mut page_tokens = Vec::with_capacity(dv.len());
    let mut next = String::new();
    loop {
        let reply = cases[0]
            .clone()
            .list_cases(ListCasesRequest {
                filter: Some(dv_filter()),
                now: None,
                page_token: next,
                page_size: 1,
            })
            .await
            .expect("ListCases, one case a page");
        next = reply.into_inner().next_page_token;
        if next.is_empty() {
            break;
        }
        page_tokens.push(next.clone());
    }
    assert_eq!(page_tokens.len(), dv.len() - 1);
    page_tokens.truncate(dv.len() - PAGE as usize);
    let tokens = std::sync::Arc::new(page_tokens);
    println!(
        "\nListCases, domestic violence, pages of {PAGE} from random start tokens (the server reads about twice the page per step):"
    );
    header("concurrent clients");
    for n in CLIENTS {
        let tokens = tokens.clone();
        let r = drive(&cases[..n], secs, move |mut c, r| {
            let token = tokens[pick(r, tokens.len())].clone();
            async move {
                let reply = c
                    .list_cases(ListCasesRequest {
                        filter: Some(dv_filter()),
                        now: None,
                        page_token: token,
                        page_size: PAGE,
                    })
                    .await
                    .expect("ListCases");
                assert_eq!(reply.get_ref().cases.len(), PAGE as usize);
            }
        })
        .await;
        row(&format!("{n}"), &r, append_rate);
        figures(&mut json, &format!("list_cases_{n}"), &r);
    }

    let audit = vec![AuditClient::new(chans[0].clone())];
    println!("\nGetCaseAsOf on the {LONG_EVENTS}-event case (replayed from the log), 1 client:");
    header("as of");
    for (name, g, want) in [
        ("middle (entry 500)", mid, LONG_EVENTS / 2),
        ("end (entry 1,000)", end, LONG_EVENTS),
    ] {
        let key = format!("get_case_as_of_{want}");
        let r = drive(&audit, secs, move |mut c, _| async move {
            let reply = c
                .get_case_as_of(GetCaseAsOfRequest {
                    case_id: LONG_CASE.into(),
                    at: Some(At::GlobalSequence(g)),
                })
                .await
                .expect("GetCaseAsOf");
            assert_eq!(reply.get_ref().entries_applied, want);
        })
        .await;
        row(name, &r, append_rate);
        figures(&mut json, &key, &r);
    }
    println!(
        "\n(vs append: calls/s over AccessLog::append alone, 1 thread, this run: the rate at which reads can be recorded)"
    );
    println!(
        "access log: {} records at the end",
        log.access_log().verify().unwrap()
    );
    server.abort();
    json.print();
}
