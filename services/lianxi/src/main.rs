//! The `lianxi` binary: the node (`serve`) and the command line around it.
//! Wiring, configuration, start-up and shutdown only; the work is in the
//! crates.

#![forbid(unsafe_code)]

mod offline;
mod publish;
mod query;
mod render;
mod serve;
mod simulate;

use std::path::PathBuf;

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
}

#[derive(Debug, clap::Args, Clone)]
struct GrpcArgs {
    /// Address of a lianxi node's gRPC API.
    #[arg(long, env = "LIANXI_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: String,
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
    },
    /// Publish events, one canonical protobuf JSON object per line, each on
    /// its agency's subject.
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
    },
    /// Print a realistic, deterministic workload of a city's cases as JSON
    /// lines, for `lianxi publish`.
    Simulate(simulate::Args),
    /// Show the coordinated status of a case.
    Case {
        case_id: String,
        #[command(flatten)]
        grpc: GrpcArgs,
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
        grpc: GrpcArgs,
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
        grpc: GrpcArgs,
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
    /// Recreate every case view from the log (the node must be stopped).
    Rebuild {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Check the hash chain and indexes of the log (the node must be stopped).
    Verify {
        #[command(flatten)]
        data: DataArgs,
    },
}

fn parse_agency(token: &str) -> Result<Agency, String> {
    lianxi_domain::agency_from_token(token).ok_or_else(|| {
        let all: Vec<&str> = lianxi_domain::ALL_AGENCIES
            .iter()
            .filter_map(|a| lianxi_domain::agency_token(*a))
            .collect();
        format!("{token:?} is not an agency; use one of {}", all.join(", "))
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
            } => {
                serve::run(serve::ServeConfig {
                    nats_url: nats.nats_url,
                    data_dir: data.data_dir,
                    policy: data.policy,
                    grpc_addr,
                    batch_max,
                    batch_delay_ms,
                    stream_replicas,
                    receipts_window_secs,
                })
                .await
            }
            Command::Publish {
                nats,
                file,
                quiet,
                agency,
                no_wait,
            } => publish::run(&nats.nats_url, file, agency, !no_wait, quiet).await,
            Command::Simulate(args) => simulate::run(args),
            Command::Case {
                case_id,
                grpc,
                now,
                json,
                wait_for,
            } => query::case(&grpc.grpc_addr, &case_id, now.as_deref(), json, wait_for).await,
            Command::Timeline {
                case_id,
                grpc,
                json,
                wait_for,
            } => query::timeline(&grpc.grpc_addr, &case_id, json, wait_for).await,
            Command::Rejections {
                grpc,
                agency,
                limit,
                json,
            } => query::rejections(&grpc.grpc_addr, agency, json, limit).await,
            Command::Rebuild { data } => offline::rebuild(&data.data_dir, data.policy.as_deref()),
            Command::Verify { data } => offline::verify(&data.data_dir, data.policy.as_deref()),
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
