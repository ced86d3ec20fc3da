//! `lianxi serve`: start-up and shutdown of a node.
//!
//! Shutdown order: stop taking work (ingest finishes and flushes the group in
//! hand), stop the gRPC server, drop the log (sled flushes on drop).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use lianxi_api::{AuditApi, CasesApi, Checkpointer, Gate, IntakeApi, Principals};
use lianxi_ingest::IngestConfig;
use lianxi_log::{CheckpointSigner, Log, StoreOptions};
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::offline::load_policy;
use crate::ready::{Readiness, ReadyLayer};

/// How long in-flight gRPC calls may take to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

pub(crate) struct ServeConfig {
    pub(crate) nats_url: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) policy: Option<PathBuf>,
    pub(crate) grpc_addr: String,
    pub(crate) batch_max: usize,
    pub(crate) batch_delay_ms: u64,
    pub(crate) stream_replicas: usize,
    pub(crate) receipts_window_secs: u64,
    pub(crate) bus_sync: String,
    pub(crate) principals: Option<PathBuf>,
    pub(crate) signing_key: Option<PathBuf>,
    pub(crate) log_origin: String,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) kek_file: Option<PathBuf>,
    pub(crate) key_bucket: String,
    /// sled's page cache, in bytes.
    pub(crate) cache_bytes: u64,
}

/// How often an unfinished erasure (key store or bus unreachable) is tried
/// again.
const ERASURE_RETRY: Duration = Duration::from_secs(10);

/// `lianxi kek --out FILE`.
pub(crate) fn kek(out: &std::path::Path) -> Result<()> {
    let kek = lianxi_crypto::Kek::generate();
    crate::proof::write_secret(out, &format!("{}\n", kek.to_hex()))?;
    eprintln!(
        "wrote a key-encryption key (fingerprint {}) to {}; keep it secret, give every node the same file with --kek-file {1}",
        kek.fingerprint(),
        out.display()
    );
    Ok(())
}

/// The key-encryption key: the given file, or `kek.key` in the data
/// directory (created on first start, mode 0600).
fn load_kek(
    path: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> Result<lianxi_crypto::Kek> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => {
            let p = data_dir.join("kek.key");
            if !p.exists() {
                kek(&p)?;
                tracing::warn!(path = %p.display(), "created a key-encryption key in the data directory: fine for one development node; for several nodes, or real data, give every node the same --kek-file kept outside the data directory");
            }
            p
        }
    };
    Ok(lianxi_crypto::Kek::load(&path)?)
}

/// The checkpoint signer: the given key file, or `signing.key` in the data
/// directory (created on first start, mode 0600). Its name must be the
/// log's origin.
fn load_signer(
    path: Option<&std::path::Path>,
    data_dir: &std::path::Path,
    origin: &str,
) -> Result<CheckpointSigner> {
    let (path, text) = match path {
        Some(p) => (
            p.to_owned(),
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the signing key {}", p.display()))?,
        ),
        None => {
            let p = data_dir.join("signing.key");
            if !p.exists() {
                let skey = lianxi_log::generate_signing_key(origin)
                    .context("cannot make a signing key; check --log-origin")?;
                crate::proof::write_secret(&p, &format!("{skey}\n"))?;
                tracing::info!(path = %p.display(), "created a checkpoint signing key");
            }
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read the signing key {}", p.display()))?;
            (p, text)
        }
    };
    let signer = CheckpointSigner::new(&text)
        .with_context(|| format!("the signing key {} is invalid", path.display()))?;
    if signer.origin() != origin {
        anyhow::bail!(
            "the signing key {} is for the log {:?}, but --log-origin is {origin:?}; pass the matching --log-origin or another --signing-key",
            path.display(),
            signer.origin()
        );
    }
    Ok(signer)
}

/// The principals file, or development mode (every caller sees everything,
/// every read still recorded) for a node that listens on loopback only.
fn load_principals(
    path: Option<&std::path::Path>,
    local: std::net::SocketAddr,
) -> Result<Principals> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the principals file {}", p.display()))?;
            Principals::from_toml(&text).with_context(|| {
                format!(
                    "the principals file {} is invalid; compare it with deploy/principals.example.toml",
                    p.display()
                )
            })
        }
        None if local.ip().is_loopback() => {
            tracing::warn!(
                "no principals file: development mode, every caller on this machine may read everything (each read is still recorded); pass --principals for real use"
            );
            Ok(Principals::development())
        }
        None => anyhow::bail!(
            "serving on {local} without --principals would let anyone on the network read every case; pass --principals FILE (see deploy/principals.example.toml) or listen on 127.0.0.1"
        ),
    }
}

pub(crate) async fn run(config: ServeConfig) -> Result<()> {
    let policy = load_policy(config.policy.as_deref())?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let log = Log::open_with(
        &config.data_dir,
        policy,
        StoreOptions {
            cache_bytes: config.cache_bytes,
        },
    )
    .with_context(|| format!("cannot open the log in {}", config.data_dir.display()))?;
    // A data directory of layout 2 is upgraded (its Merkle tree rewritten
    // as tiles); one of another storage layout is refused before the node
    // reads or serves anything from it.
    log.upgrade_storage_layout().with_context(|| {
        format!(
            "cannot upgrade the storage layout of the log in {}",
            config.data_dir.display()
        )
    })?;
    log.check_storage_layout()
        .with_context(|| format!("cannot use the log in {}", config.data_dir.display()))?;
    // A log below its high-water mark (sled lost a tail) is made what it
    // was at its checkpoint before it reads the stream again.
    log.prepare_catch_up().with_context(|| {
        format!(
            "cannot prepare the log in {} to read the stream again",
            config.data_dir.display()
        )
    })?;
    // Access records lost with a tail of sled's files (below the access
    // log's high-water mark) are recorded as a gap before anything is
    // served, so the loss stays in the record of who read what.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if let Some(gap) = log
        .access_log()
        .record_gap(lianxi_proto::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        })
        .with_context(|| {
            format!(
                "cannot record the access records lost from {}",
                config.data_dir.display()
            )
        })?
    {
        tracing::error!(
            access_record = gap.sequence,
            "{}; recorded as access record {}",
            gap.detail,
            gap.sequence
        );
    }
    let signer = load_signer(
        config.signing_key.as_deref(),
        &config.data_dir,
        &config.log_origin,
    )?;
    tracing::info!(
        origin = signer.origin(),
        verifier_key = signer.verifier_key(),
        "signing checkpoints; give auditors this verifier key"
    );
    let checkpointer = Checkpointer::new(log.clone(), signer);
    let cp = log.checkpoint();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        stream_sequence = cp.stream_sequence,
        global_sequence = cp.global_sequence,
        "log opened"
    );

    let shown_url = lianxi_client::redact(&config.nats_url);
    let client = lianxi_client::connect_options(&config.nats_url)
        .name("lianxi-node")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(&config.nats_url)
        .await
        .with_context(|| {
            format!(
                "cannot reach NATS at {shown_url}; is nats-server running (with -js)? set --nats-url or LIANXI_NATS_URL"
            )
        })?;
    let js = async_nats::jetstream::new(client.clone());
    // Create the stream before serving, so a misconfigured server is a
    // start-up error rather than a retry loop.
    tokio::time::timeout(
        Duration::from_secs(30),
        lianxi_ingest::ensure_stream(&js, config.stream_replicas),
    )
    .await
    .with_context(|| {
        format!(
            "NATS at {shown_url} did not answer within 30 s; check that the user may use JetStream (see deploy/nats/README.md)"
        )
    })??;
    lianxi_ingest::ensure_receipts_stream(
        &js,
        config.stream_replicas,
        Duration::from_secs(config.receipts_window_secs),
    )
    .await?;
    let kek = load_kek(config.kek_file.as_deref(), &config.data_dir)?;
    tracing::info!(fingerprint = %kek.fingerprint(), bucket = %config.key_bucket, "key store");
    let keys = std::sync::Arc::new(
        lianxi_crypto::KeyStore::open(js.clone(), &config.key_bucket, config.stream_replicas, kek)
            .await
            .with_context(|| {
                format!(
                    "cannot open the key store (JetStream key-value bucket {}); check that the NATS user may use JetStream key-value",
                    config.key_bucket
                )
            })?,
    );

    let listener = tokio::net::TcpListener::bind(&config.grpc_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for gRPC; is another node running there? set --grpc-addr or LIANXI_GRPC_ADDR",
                config.grpc_addr
            )
        })?;
    let local = listener.local_addr()?;
    let principals = load_principals(config.principals.as_deref(), local)?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (applied_tx, applied_rx) = watch::channel(None);
    let durability = lianxi_ingest::durability(&js, &config.bus_sync).await?;
    let receipts = tokio::spawn(lianxi_ingest::run_receipts(
        js.clone(),
        log.clone(),
        durability.clone(),
        applied_rx.clone(),
        shutdown_rx.clone(),
    ));
    let lookups = tokio::spawn(lianxi_ingest::run_lookups(
        client,
        log.clone(),
        durability,
        shutdown_rx.clone(),
    ));
    let erasures = tokio::spawn(lianxi_ingest::run_erasures(
        js.clone(),
        log.clone(),
        keys.clone(),
        applied_rx.clone(),
        ERASURE_RETRY,
        shutdown_rx.clone(),
    ));
    let ingest = tokio::spawn(lianxi_ingest::run(
        js,
        log.clone(),
        keys.clone(),
        IngestConfig {
            batch_max: config.batch_max,
            batch_delay: Duration::from_millis(config.batch_delay_ms),
            stream_replicas: config.stream_replicas,
        },
        applied_tx,
        shutdown_rx.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    // Health and the readiness gate follow the node's state (disk failed,
    // behind its high-water mark, damaged), not a value set once at start.
    let readiness = Readiness::default();
    readiness.update(&log, &health).await;
    let watching = tokio::spawn(crate::ready::watch(
        log.clone(),
        readiness.clone(),
        health,
        shutdown_rx.clone(),
    ));
    // Reflection in both protocol versions: `grpc.reflection.v1` and the
    // older `v1alpha` that grpcio's reflection client and older grpcurl
    // speak. tonic-reflection builds each separately.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lianxi_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("building the reflection service (v1)")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;

    let gate = Gate::new(principals, log.access_log());
    let mut grpc_shutdown = shutdown_rx.clone();
    let server = Server::builder()
        .layer(ReadyLayer::new(readiness))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            CasesApi::new(log.clone(), gate.clone(), applied_rx)
                .with_keys(keys.clone())
                .into_server(),
        )
        .add_service(
            AuditApi::new(log.clone(), gate.clone())
                .with_checkpointer(checkpointer.clone())
                .into_server(),
        )
        .add_service(IntakeApi::new(log.clone(), gate).into_server())
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = grpc_shutdown.wait_for(|stop| *stop).await;
            },
        );
    let server = tokio::spawn(server);
    let signing = tokio::spawn(checkpointer.run(config.checkpoint_interval, shutdown_rx.clone()));
    tracing::info!(grpc = %local, nats = %shown_url, "lianxi node serving");
    println!("lianxi node serving gRPC on {local}, reading NATS at {shown_url}");

    let mut ingest = ingest;
    let ingest_result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down: finishing the group in hand");
            let _ = shutdown_tx.send(true);
            ingest.await
        }
        r = &mut ingest => {
            let _ = shutdown_tx.send(true);
            r
        }
    };
    // Receipts for the last groups go out before the node stops.
    for (name, task) in [
        ("receipts", receipts),
        ("lookups", lookups),
        ("erasures", erasures),
    ] {
        match tokio::time::timeout(SHUTDOWN_GRACE, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(task = name, error = %e, "task ended with an error"),
            Ok(Err(e)) => tracing::warn!(task = name, error = %e, "task panicked"),
            Err(_) => tracing::warn!(task = name, "task did not stop within the grace period"),
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, signing).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, watching).await;
    // Graceful shutdown waits for open client connections to go away; a
    // watching client may never leave, so in-flight calls get a grace period.
    let mut server = server;
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "clients still connected after the grace period; closing their connections"
        );
        server.abort();
    }
    let cp = log.checkpoint();
    drop(log);
    tracing::info!(
        stream_sequence = cp.stream_sequence,
        global_sequence = cp.global_sequence,
        "node stopped"
    );
    ingest_result
        .context("the ingest task panicked")?
        .context("ingest stopped")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
