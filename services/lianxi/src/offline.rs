//! Commands that open the data directory directly: the node must be stopped
//! (sled locks the directory).

use std::path::Path;

use anyhow::{Context, Result, bail};
use lianxi_domain::Policy;
use lianxi_log::Log;

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

fn open(data_dir: &Path, policy: Option<&Path>) -> Result<Log> {
    if !data_dir.exists() {
        bail!(
            "there is no data directory at {}; pass --data-dir (or LIANXI_DATA_DIR) of a node",
            data_dir.display()
        );
    }
    let policy = load_policy(policy)?;
    Log::open(data_dir, policy)
        .with_context(|| format!("cannot open the log in {}", data_dir.display()))
}

pub(crate) fn rebuild(data_dir: &Path, policy: Option<&Path>) -> Result<()> {
    let log = open(data_dir, policy)?;
    let report = log.rebuild().context("rebuilding the views failed")?;
    println!(
        "rebuilt {} case views from {} log entries in {}",
        report.cases,
        report.entries,
        data_dir.display()
    );
    Ok(())
}

pub(crate) fn verify(data_dir: &Path, policy: Option<&Path>) -> Result<()> {
    let log = open(data_dir, policy)?;
    match log.verify() {
        Ok(report) => {
            println!(
                "ok: {} entries in {} cases, hash chain intact, indexes consistent; head {}",
                report.entries,
                report.cases,
                hex::encode(report.last_hash)
            );
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
