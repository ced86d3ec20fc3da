//! The `lianxi` binary: the node (`serve`) and the command line around it.
//! Wiring, configuration, start-up and shutdown only; the work is in the
//! crates.

#![forbid(unsafe_code)]

mod offline;
mod proof;
mod publish;
mod query;
mod ready;
mod render;
mod serve;
mod simulate;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lianxi_proto::v1::Agency;

/// lianxi (联席): the joint seat for a city's women's-rights cases.
#[derive(Debug, Parser)]
#[command(name = "lianxi", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args, Clone)]
struct NatsArgs {
    /// NATS server URL.
    #[arg(long, env = "LIANXI_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

#[derive(Debug, clap::Args, Clone)]
struct DataArgs {
    /// The node's data directory (its sled log).
    #[arg(long, env = "LIANXI_DATA_DIR", default_value = "lianxi-data")]
    data_dir: PathBuf,
    /// A deadline policy file (TOML, see deploy/policy.toml). Every node
    /// reading one stream must use the same policy.
    #[arg(long, env = "LIANXI_POLICY")]
    policy: Option<PathBuf>,
    /// sled's page cache in MiB: the largest part of the node's memory
    /// (sled's own default is 1024).
    #[arg(long, env = "LIANXI_CACHE_MB", default_value_t = lianxi_log::DEFAULT_CACHE_BYTES >> 20)]
    cache_mb: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: read the events stream into the log and serve the gRPC API.
    Serve {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        data: DataArgs,
        /// Address to serve gRPC on.
        #[arg(long, env = "LIANXI_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        grpc_addr: String,
        /// Most events per atomic write and flush.
        #[arg(long, env = "LIANXI_BATCH_MAX", default_value_t = 512)]
        batch_max: usize,
        /// Milliseconds to wait for more events after the first of a group.
        #[arg(long, env = "LIANXI_BATCH_DELAY_MS", default_value_t = 2)]
        batch_delay_ms: u64,
        /// Replicas of the events stream when this node creates it.
        #[arg(long, env = "LIANXI_STREAM_REPLICAS", default_value_t = 1)]
        stream_replicas: usize,
        /// JetStream's duplicate window for receipts, in seconds: copies of a
        /// receipt sent within it (by a restarted node, or a second node)
        /// are dropped by the bus.
        #[arg(long, env = "LIANXI_RECEIPTS_WINDOW_SECS", default_value_t = 600)]
        receipts_window_secs: u64,
        /// The bus's JetStream `sync_interval`, as configured on nats-server
        /// ("always" in the configurations lianxi ships, "2m" by default),
        /// stated in every receipt so an agency knows what "accepted"
        /// promises. The node cannot read it from the bus; empty: not stated.
        #[arg(long, env = "LIANXI_BUS_SYNC", default_value = "")]
        bus_sync: String,
        /// Who may call the API, with their roles and token hashes (TOML, see
        /// deploy/principals.example.toml). Without it the node runs in
        /// development mode and must listen on a loopback address.
        #[arg(long, env = "LIANXI_PRINCIPALS")]
        principals: Option<PathBuf>,
        #[command(flatten)]
        signing: SigningArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Make a key-encryption key (KEK) for the key store. Every node of a
    /// city must start with the same one (`lianxi serve --kek-file FILE`):
    /// it wraps the per-case data keys kept in JetStream.
    Kek {
        /// Where to write the key (never overwritten; mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a checkpoint signing key for a node and print its verifier key
    /// (give that to auditors for `lianxi verify --node ... --key ...`).
    Keygen {
        /// The log's origin: the checkpoints' first line and the key's name.
        #[arg(long, default_value = DEFAULT_ORIGIN)]
        origin: String,
        /// Where to write the signing key (never overwritten; mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a running node's fresh signed checkpoint and every log entry up
    /// to its size to one file, for `lianxi verify --file FILE --key VKEY`
    /// (format: `lianxi export --help` and ARCHITECTURE.md, "Proofs and
    /// checkpoints").
    Export {
        /// Address of the node to export from.
        #[arg(long)]
        node: String,
        /// The file to write (replaced if it exists; written to
        /// FILE.partial first).
        #[arg(long)]
        out: PathBuf,
        /// Your bearer token (an auditor's).
        #[arg(long, env = "LIANXI_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Why you are looking: recorded in the node's access log.
        #[arg(long, env = "LIANXI_PURPOSE")]
        purpose: Option<String>,
    },
    /// Publish events, one canonical protobuf JSON object per line, each on
    /// its agency's subject, and wait for each receipt. Rides out a bus or
    /// node outage of up to 10 minutes; exits 1 when any event was rejected
    /// or has no receipt.
    Publish {
        #[command(flatten)]
        nats: NatsArgs,
        /// File of events (JSON lines); `-` or absent reads standard input.
        file: Option<PathBuf>,
        /// Print only the summary, not a line per event.
        #[arg(long, short)]
        quiet: bool,
        /// Publish as this agency only (its NATS user may publish nothing
        /// else): political_legal_committee, police, court, civil_affairs,
        /// labour, womens_federation or justice_bureau.
        #[arg(long, env = "LIANXI_AGENCY", value_parser = parse_agency)]
        agency: Option<Agency>,
        /// Do not wait for receipts, only for the bus to store each event
        /// (for when no node is running).
        #[arg(long)]
        no_wait: bool,
        /// How long to keep re-sending an event rejected PREDECESSOR_MISSING
        /// (an earlier event of its case, perhaps another agency's, is not
        /// stored yet) before reporting the rejection. Later events of the
        /// same case wait meanwhile.
        #[arg(long, env = "LIANXI_PREDECESSOR_WAIT_SECS", default_value_t = 60)]
        predecessor_wait_secs: u64,
    },
    /// Print a realistic, deterministic workload of a city's cases as JSON
    /// lines, for `lianxi publish`.
    Simulate(simulate::Args),
    /// Show the coordinated status of a case.
    Case {
        case_id: String,
        #[command(flatten)]
        conn: query::Conn,
        /// Judge "overdue" at this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
        /// Print canonical protobuf JSON.
        #[arg(long)]
        json: bool,
        /// Wait (up to 30 s) until the node has applied this stream sequence.
        #[arg(long, default_value_t = 0)]
        wait_for: u64,
    },
    /// Show every event of a case in order.
    Timeline {
        case_id: String,
        #[command(flatten)]
        conn: query::Conn,
        /// Print canonical protobuf JSON.
        #[arg(long)]
        json: bool,
        /// Wait (up to 30 s) until the node has applied this stream sequence.
        #[arg(long, default_value_t = 0)]
        wait_for: u64,
    },
    /// List the messages a node rejected, with the reason for each.
    Rejections {
        #[command(flatten)]
        conn: query::Conn,
        /// Only messages on this agency's subjects.
        #[arg(long, value_parser = parse_agency)]
        agency: Option<Agency>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print canonical protobuf JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the cases you may see that match a filter.
    Cases {
        #[command(flatten)]
        conn: query::Conn,
        #[command(flatten)]
        filter: query::FilterArgs,
        /// Judge "overdue" at this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// Print canonical protobuf JSON.
        #[arg(long)]
        json: bool,
    },
    /// The case list for the next joint meeting, in discussion order.
    Agenda {
        #[command(flatten)]
        conn: query::Conn,
        /// Jurisdiction code prefix.
        #[arg(long)]
        jurisdiction: Option<String>,
        /// Judge at this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
        /// Orders expiring within this many days count as expiring soon.
        #[arg(long, default_value_t = 14)]
        days: u32,
        /// Print canonical protobuf JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow changes: of one case, or of every case matching a filter.
    Watch {
        /// One case; without it, every case you may see that matches the filter.
        case_id: Option<String>,
        #[command(flatten)]
        conn: query::Conn,
        #[command(flatten)]
        filter: query::FilterArgs,
        /// Resume after this global sequence (the last one you saw).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// One canonical protobuf JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Monitoring figures: counts, durations, overdue rates by agency.
    Stats {
        #[command(flatten)]
        conn: query::Conn,
        /// Jurisdiction code prefix.
        #[arg(long)]
        jurisdiction: Option<String>,
        /// Cases opened at or after (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Cases opened before (RFC 3339).
        #[arg(long)]
        before: Option<String>,
        /// Judge "overdue" at this instant (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
        /// Print canonical protobuf JSON.
        #[arg(long)]
        json: bool,
    },
    /// A case as it stood at a log position or an instant (auditors).
    AsOf {
        case_id: String,
        #[command(flatten)]
        conn: query::Conn,
        /// After this global sequence.
        #[arg(long)]
        sequence: Option<u64>,
        /// At this instant (RFC 3339), by record time.
        #[arg(long)]
        at: Option<String>,
        /// Print canonical protobuf JSON.
        #[arg(long)]
        json: bool,
    },
    /// Who read what, from the node's access log (auditors).
    Access {
        #[command(flatten)]
        conn: query::Conn,
        /// Only accesses to this case: reads and refusals of it, and every
        /// list, agenda, statistics or watch that showed it.
        #[arg(long = "case")]
        case_id: Option<String>,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// At or after (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Before (RFC 3339).
        #[arg(long)]
        before: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print canonical protobuf JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recreate every case view from the log (the node must be stopped).
    Rebuild {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Check a log. With --node: a running node, trusting nothing but its
    /// verifier key (signed checkpoint, every hash and the chain, the Merkle
    /// root, consistency with the last checkpoint seen, one event's
    /// inclusion). With --file: the same checks on a file made by `lianxi
    /// export`. Without either: a stopped node's data directory (hash chain,
    /// indexes, Merkle tree, access log).
    Verify {
        #[command(flatten)]
        data: DataArgs,
        /// Address of a running node to verify over gRPC.
        #[arg(long)]
        node: Option<String>,
        /// A log exported by `lianxi export` to verify instead of a node.
        #[arg(long, conflicts_with_all = ["node", "compare"])]
        file: Option<PathBuf>,
        /// The node's verifier key (as `lianxi keygen` or `lianxi serve`
        /// prints it): the only thing trusted.
        #[arg(long)]
        key: Option<String>,
        /// Where the last checkpoint seen is kept (default
        /// ~/.lianxi/verify-state-<origin>.json).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Also prove that the entry with this global sequence is in the log.
        #[arg(long)]
        event: Option<u64>,
        /// Instead, check that this second node holds the same root as
        /// --node at the same size.
        #[arg(long, requires = "node")]
        compare: Option<String>,
        /// Your bearer token (an auditor's).
        #[arg(long, env = "LIANXI_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Why you are looking: recorded in the node's access log.
        #[arg(long, env = "LIANXI_PURPOSE")]
        purpose: Option<String>,
    },
}

#[derive(Debug, clap::Args, Clone)]
struct KeyArgs {
    /// The key-encryption key that wraps the per-case data keys (64 hex
    /// characters, from `lianxi kek --out FILE`); the same file on every
    /// node. Without it the node creates `kek.key` in its data directory on
    /// first start, which only suits a single development node.
    #[arg(long, env = "LIANXI_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// The JetStream key-value bucket that holds the wrapped data keys.
    #[arg(long, env = "LIANXI_KEY_BUCKET", default_value = "lianxi_keys")]
    key_bucket: String,
}

/// The default log origin (the checkpoints' first line and the key name).
const DEFAULT_ORIGIN: &str = "lianxi.local/log";

#[derive(Debug, clap::Args, Clone)]
struct SigningArgs {
    /// The checkpoint signing key (from `lianxi keygen`). Without it the node
    /// creates `signing.key` in its data directory on first start and reuses
    /// it.
    #[arg(long, env = "LIANXI_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// The log's origin: the first line of every checkpoint and the signing
    /// key's name.
    #[arg(long, env = "LIANXI_LOG_ORIGIN", default_value = DEFAULT_ORIGIN)]
    log_origin: String,
    /// Seconds between signed checkpoints (one is signed only when the log
    /// has grown).
    #[arg(long, env = "LIANXI_CHECKPOINT_INTERVAL_SECS", default_value_t = 60)]
    checkpoint_interval_secs: u64,
}

pub(crate) fn parse_agency(token: &str) -> Result<Agency, String> {
    lianxi_domain::agency_from_token(token).ok_or_else(|| {
        let all: Vec<&str> = lianxi_domain::ALL_AGENCIES
            .iter()
            .filter_map(|a| lianxi_domain::agency_token(*a))
            .collect();
        format!("{token:?} is not an agency; use one of {}", all.join(", "))
    })
}

/// sled panics on some damaged files; the panic is caught where the data
/// directory is opened or verified and turned into an error that names the
/// directory and what to do. Its own message (a line of sled internals)
/// goes to the debug log, not to the user; every other panic prints as
/// usual.
fn quiet_storage_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_sled = info
            .location()
            .is_some_and(|l| l.file().contains("/sled-") || l.file().contains("\\sled-"));
        if in_sled {
            tracing::debug!(panic = %info, "the storage library panicked");
        } else {
            default(info);
        }
    }));
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. }) {
        limit_malloc_arenas();
    }
    quiet_storage_panics();
    // A node logs what it does; a command-line client only what went wrong.
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIANXI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                nats,
                data,
                grpc_addr,
                batch_max,
                batch_delay_ms,
                stream_replicas,
                receipts_window_secs,
                bus_sync,
                principals,
                signing,
                keys,
            } => {
                serve::run(serve::ServeConfig {
                    kek_file: keys.kek_file,
                    key_bucket: keys.key_bucket,
                    signing_key: signing.signing_key,
                    log_origin: signing.log_origin,
                    checkpoint_interval: std::time::Duration::from_secs(
                        signing.checkpoint_interval_secs.max(1),
                    ),
                    nats_url: nats.nats_url,
                    cache_bytes: data.cache_mb.max(1) * 1024 * 1024,
                    data_dir: data.data_dir,
                    policy: data.policy,
                    grpc_addr,
                    batch_max,
                    batch_delay_ms,
                    stream_replicas,
                    receipts_window_secs,
                    bus_sync,
                    principals,
                })
                .await
            }
            Command::Publish {
                nats,
                file,
                quiet,
                agency,
                no_wait,
                predecessor_wait_secs,
            } => {
                let wait = (!no_wait).then(|| Duration::from_secs(predecessor_wait_secs));
                publish::run(&nats.nats_url, file, agency, wait, quiet).await
            }
            Command::Simulate(args) => simulate::run(args),
            Command::Case {
                case_id,
                conn,
                now,
                json,
                wait_for,
            } => query::case(&conn, &case_id, now.as_deref(), json, wait_for).await,
            Command::Timeline {
                case_id,
                conn,
                json,
                wait_for,
            } => query::timeline(&conn, &case_id, json, wait_for).await,
            Command::Rejections {
                conn,
                agency,
                limit,
                json,
            } => query::rejections(&conn, agency, json, limit).await,
            Command::Cases {
                conn,
                filter,
                now,
                limit,
                json,
            } => query::cases(&conn, &filter, now.as_deref(), limit, json).await,
            Command::Agenda {
                conn,
                jurisdiction,
                now,
                days,
                json,
            } => query::agenda(&conn, jurisdiction, now.as_deref(), days, json).await,
            Command::Watch {
                case_id,
                conn,
                filter,
                after,
                count,
                json,
            } => query::watch(&conn, case_id, &filter, after, count, json).await,
            Command::Stats {
                conn,
                jurisdiction,
                from,
                before,
                now,
                json,
            } => {
                query::stats(
                    &conn,
                    jurisdiction,
                    from.as_deref(),
                    before.as_deref(),
                    now.as_deref(),
                    json,
                )
                .await
            }
            Command::AsOf {
                case_id,
                conn,
                sequence,
                at,
                json,
            } => query::as_of(&conn, &case_id, sequence, at.as_deref(), json).await,
            Command::Access {
                conn,
                case_id,
                principal,
                from,
                before,
                limit,
                json,
            } => {
                query::access(
                    &conn,
                    case_id,
                    principal,
                    from.as_deref(),
                    before.as_deref(),
                    limit,
                    json,
                )
                .await
            }
            Command::Rebuild { data } => offline::rebuild(&data),
            Command::Keygen { origin, out } => proof::keygen(&origin, &out),
            Command::Kek { out } => serve::kek(&out),
            Command::Export {
                node,
                out,
                token,
                purpose,
            } => proof::export(&query::Conn::new(node, token, purpose), &out).await,
            Command::Verify {
                file: Some(file),
                key,
                state,
                event,
                ..
            } => match key {
                Some(key) => proof::verify_file(&file, &key, state.as_deref(), event).await,
                None => Err(anyhow::anyhow!(
                    "pass --key with the node's verifier key: it is the only thing a file is checked against"
                )),
            },
            Command::Verify {
                node: None,
                key,
                state,
                event,
                ..
            } if key.is_some() || state.is_some() || event.is_some() => Err(anyhow::anyhow!(
                "--key, --state and --event need --node ADDR or --file FILE (without them `lianxi verify` checks a stopped node's data directory)"
            )),
            Command::Verify {
                node: Some(node),
                key,
                state,
                event,
                compare,
                token,
                purpose,
                ..
            } => {
                let conn = query::Conn::new(node.clone(), token.clone(), purpose.clone());
                match (compare, key) {
                    (Some(other), _) => {
                        let second = query::Conn::new(other.clone(), token, purpose);
                        proof::compare(&conn, &second, &node, &other).await
                    }
                    (None, Some(key)) => {
                        proof::verify_node(&conn, &key, state.as_deref(), event).await
                    }
                    (None, None) => Err(anyhow::anyhow!(
                        "pass --key with the node's verifier key (or --compare ADDR)"
                    )),
                }
            }
            Command::Verify { data, .. } => offline::verify(&data),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc's malloc gives each thread that allocates its own arena (up to
/// eight per core), and the node's threads (tokio's, sled's) leave memory
/// behind in each: draining an 800,000-event backlog with the default
/// cache, the node peaked at 245 MiB with glibc's default and at 167 MiB
/// with two arenas (RELIABILITY.md). The limit is an environment variable
/// glibc reads at start, so `serve` starts itself again once with
/// `MALLOC_ARENA_MAX=2` unless it is already set (to any value: an
/// operator's choice stands). Same process id, same arguments.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("MALLOC_ARENA_MAX", "2")
            .exec();
        // Only reached if exec failed: run on with glibc's default.
        eprintln!(
            "lianxi: could not restart with MALLOC_ARENA_MAX=2 ({err}); running with glibc's default arenas"
        );
    }
}
