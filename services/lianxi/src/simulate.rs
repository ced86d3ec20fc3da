//! `lianxi simulate`: a city's workload as canonical protobuf JSON lines.

use std::io::Write;

use anyhow::{Context, Result, bail};
use lianxi_sim::Workload;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many cases.
    #[arg(long, default_value_t = 200)]
    cases: usize,
    /// The same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cases open from this time (RFC 3339).
    #[arg(long, default_value = "2026-01-01T00:00:00+08:00")]
    start: String,
    /// No event later than this time (RFC 3339).
    #[arg(long, default_value = "2026-11-29T00:00:00+08:00")]
    end: String,
    /// Share of cases that get one event breaking a rule.
    #[arg(long, default_value_t = 0.02)]
    invalid_rate: f64,
    /// Share of cases that get one re-sent event.
    #[arg(long, default_value_t = 0.02)]
    duplicate_rate: f64,
    /// Prefix of the case ids.
    #[arg(long, default_value = "SIM")]
    prefix: String,
}

fn seconds(flag: &str, s: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .with_context(|| {
            format!(
                "--{flag} {s:?} is not an RFC 3339 time; write it like 2026-01-01T00:00:00+08:00"
            )
        })
}

pub(crate) fn run(a: Args) -> Result<()> {
    let (start, end) = (seconds("start", &a.start)?, seconds("end", &a.end)?);
    if end <= start {
        bail!("--end must be after --start");
    }
    for (flag, rate) in [
        ("invalid-rate", a.invalid_rate),
        ("duplicate-rate", a.duplicate_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            bail!("--{flag} {rate} is not a share between 0 and 1");
        }
    }
    let ok_prefix = !a.prefix.is_empty()
        && a.prefix.len() <= 40
        && a.prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok_prefix {
        bail!("--prefix must be 1 to 40 characters of A-Z a-z 0-9 _ -");
    }
    let events = lianxi_sim::generate(&Workload {
        seed: a.seed,
        cases: a.cases,
        start,
        end,
        invalid_rate: a.invalid_rate,
        duplicate_rate: a.duplicate_rate,
        prefix: a.prefix,
    });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (event, _) in &events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
