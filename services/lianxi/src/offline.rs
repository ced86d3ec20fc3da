//! Commands that open the data directory directly: the node must be stopped
//! (sled locks the directory).

use std::path::Path;

use anyhow::{Context, Result, bail};
use lianxi_domain::Policy;
use lianxi_log::{HighWater, Log, StoreOptions};

use crate::DataArgs;

pub(crate) fn load_policy(path: Option<&Path>) -> Result<Policy> {
    match path {
        None => Ok(Policy::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the policy file {}", p.display()))?;
            Policy::from_toml(&text).with_context(|| {
                format!(
                    "the policy file {} is invalid; compare it with deploy/policy.toml",
                    p.display()
                )
            })
        }
    }
}

fn open(data: &DataArgs) -> Result<Log> {
    let log = open_unchecked(data)?;
    log.check_storage_layout()
        .with_context(|| format!("cannot use the log in {}", data.data_dir.display()))?;
    Ok(log)
}

/// Opens the log without refusing another storage layout (for `rebuild`,
/// which upgrades layout 2).
fn open_unchecked(data: &DataArgs) -> Result<Log> {
    let data_dir = &data.data_dir;
    if !data_dir.exists() {
        bail!(
            "there is no data directory at {}; pass --data-dir (or LIANXI_DATA_DIR) of a node",
            data_dir.display()
        );
    }
    let policy = load_policy(data.policy.as_deref())?;
    let options = StoreOptions {
        cache_bytes: data.cache_mb.max(1) * 1024 * 1024,
    };
    Log::open_with(data_dir, policy, options)
        .with_context(|| format!("cannot open the log in {}", data_dir.display()))
}

/// Runs `f` on the log, turning a panic of the storage library on a damaged
/// file into an error that names the directory.
fn guarded<T>(data_dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        bail!(
            "the data directory {} is damaged (the storage library stopped on it: {what}); keep a copy of the directory for investigation, then restore it from a backup, or move it aside and start the node with an empty data directory to re-read the events stream",
            data_dir.display()
        )
    })
}

pub(crate) fn rebuild(data: &DataArgs) -> Result<()> {
    let data_dir = &data.data_dir;
    guarded(data_dir, || {
        let log = open_unchecked(data)?;
        // Layout 2 (the tree one record per node) is what rebuild upgrades;
        // any other layout is refused as everywhere.
        let report = match log
            .upgrade_storage_layout()
            .context("upgrading the storage layout failed")?
        {
            Some(report) => report,
            None => {
                log.check_storage_layout()
                    .with_context(|| format!("cannot use the log in {}", data_dir.display()))?;
                log.rebuild().context("rebuilding the views failed")?
            }
        };
        println!(
            "rebuilt {} case views from {} log entries in {}",
            report.cases,
            report.entries,
            data_dir.display()
        );
        Ok(())
    })
}

pub(crate) fn verify(data: &DataArgs) -> Result<()> {
    let data_dir = &data.data_dir;
    guarded(data_dir, || verify_open(data_dir, &open(data)?))
}

fn verify_open(data_dir: &Path, log: &Log) -> Result<()> {
    if let Some(damage) = log.damage() {
        bail!("verification FAILED: {damage}");
    }
    match log.verify() {
        Ok(report) => {
            println!(
                "ok: {} entries in {} cases, hash chain intact, indexes consistent; head {}",
                report.entries,
                report.cases,
                hex::encode(report.last_hash)
            );
            if let Some(behind) = log.behind() {
                bail!(
                    "verification FAILED: {behind}\nstart the node (`lianxi serve`) to read the lost entries from the events stream again, or restore {} from a backup",
                    data_dir.display()
                );
            }
            if let Some(hw) = HighWater::read(data_dir)? {
                println!(
                    "ok: the log reaches its high-water mark ({} entries receipted or signed)",
                    hw.global_sequence
                );
            }
            match log.access_log().verify() {
                Ok(n) => {
                    println!("ok: access log of {n} records, chain intact");
                    Ok(())
                }
                Err(e) => bail!(
                    "access log verification FAILED: {e}\nthe record of who read what in {} has been altered or damaged; keep a copy of the directory for investigation",
                    data_dir.display()
                ),
            }
        }
        Err(e) => bail!(
            "verification FAILED: {e}\nthe log in {} has been altered or damaged; keep a copy of the directory for investigation and re-read the events stream into a fresh data directory",
            data_dir.display()
        ),
    }
}
