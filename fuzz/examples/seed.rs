//! Writes a small seed corpus for every fuzz target from real events: a
//! simulated city's events (one of each body kind, plus some that break a
//! rule), framed the way each target reads its input. The corpus is not
//! committed; this generator is.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed [-- OUT_DIR]
//! ```
//!
//! `OUT_DIR` defaults to `fuzz/corpus`; each target gets `OUT_DIR/<target>/`.
//! Files are named by the SHA-256 of their content, as libFuzzer names them,
//! so running it twice adds nothing.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lianxi_domain::event_subject;
use lianxi_proto::v1::{
    Event, GetAgendaRequest, GetCaseAsOfRequest, GetCaseRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, GetStatsRequest, GetTimelineRequest, GetTreeHeadRequest,
    ListAccessRequest, ListCasesRequest, ListRejectionsRequest, WatchCaseRequest,
};
use lianxi_sim::{Intent, Workload};
use prost::Message;
use sha2::{Digest, Sha256};

/// The most seeds per target (the task keeps corpora to a few dozen).
const MAX_SEEDS: usize = 48;

fn write(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(hex::encode(Sha256::digest(bytes))), bytes)
}

/// One event of each body kind, then a few that break a rule.
fn sample() -> Vec<(String, Event)> {
    let events = lianxi_sim::generate(&Workload {
        cases: 40,
        seed: 11,
        invalid_rate: 0.3,
        duplicate_rate: 0.1,
        prefix: "SD".into(),
        ..Default::default()
    });
    let mut kinds = BTreeSet::new();
    let mut out = Vec::new();
    let mut invalid = 0;
    for (e, intent) in events {
        let kind = lianxi_domain::kind(&e);
        let take = match intent {
            Intent::Valid => kinds.insert(kind),
            Intent::Invalid | Intent::Duplicate => {
                invalid += 1;
                invalid <= 8
            }
        };
        if take && out.len() < MAX_SEEDS {
            let subject = event_subject(&e).unwrap_or_default();
            out.push((subject, e));
        }
    }
    out
}

/// `[subject length][subject][payload]`, as `split_subject` reads it.
fn framed(subject: &str, payload: &[u8]) -> Vec<u8> {
    let s = &subject.as_bytes()[..subject.len().min(255)];
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s);
    v.extend_from_slice(payload);
    v
}

fn main() -> std::io::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let events = sample();

    for (subject, e) in &events {
        let bytes = e.encode_to_vec();
        write(&out.join("decode_event"), &bytes)?;
        // Selector 2: the subject from the input (its own, here).
        let mut env = vec![2u8];
        env.extend(framed(subject, &bytes));
        write(&out.join("envelope_rules"), &env)?;
    }

    // log_append_group: groups of up to four messages, each
    // `[subject length][subject][u16 LE payload length][payload]`.
    for chunk in events.chunks(4) {
        let mut input = Vec::new();
        for (subject, e) in chunk {
            let bytes = e.encode_to_vec();
            let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
            input.push(subject.len().min(255) as u8);
            input.extend_from_slice(&subject.as_bytes()[..subject.len().min(255)]);
            input.extend_from_slice(&len.to_le_bytes());
            input.extend_from_slice(&bytes[..len as usize]);
        }
        write(&out.join("log_append_group"), &input)?;
    }

    // api_requests: `[selector][request]`; the selector's low part picks the
    // call (13 of them, modulo), the high nibble the caller.
    let city = &*lianxi_fuzz::CITY;
    let case = city
        .views
        .first()
        .map(|v| v.case_id.clone())
        .unwrap_or_default();
    let requests: Vec<Vec<u8>> = vec![
        GetCaseRequest {
            case_id: case.clone(),
            now: None,
        }
        .encode_to_vec(),
        GetTimelineRequest {
            case_id: case.clone(),
            after_case_sequence: 0,
            page_size: 5,
        }
        .encode_to_vec(),
        ListCasesRequest {
            page_size: 3,
            ..Default::default()
        }
        .encode_to_vec(),
        GetAgendaRequest {
            jurisdiction: "330100".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        GetStatsRequest::default().encode_to_vec(),
        WatchCaseRequest {
            case_id: case.clone(),
            after_global_sequence: 1,
        }
        .encode_to_vec(),
        GetCaseAsOfRequest {
            case_id: case.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        ListAccessRequest {
            case_id: case.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        GetTreeHeadRequest { tree_size: 0 }.encode_to_vec(),
        GetInclusionProofRequest {
            global_sequence: 1,
            tree_size: 0,
        }
        .encode_to_vec(),
        GetConsistencyProofRequest {
            old_size: 1,
            new_size: 2,
        }
        .encode_to_vec(),
        ListRejectionsRequest::default().encode_to_vec(),
    ];
    for (call, request) in requests.iter().enumerate() {
        // The police (0x00), the city's secretariat (0x10), the auditor
        // (0x20) and an unknown token (0x30).
        for caller in [0x00u8, 0x10, 0x20, 0x30] {
            let mut input = vec![caller | call as u8];
            input.extend_from_slice(request);
            write(&out.join("api_requests"), &input)?;
        }
    }
    eprintln!(
        "wrote seeds for 4 targets under {} ({} events)",
        out.display(),
        events.len()
    );
    Ok(())
}
