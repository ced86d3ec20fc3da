//! `lianxi case` and `lianxi timeline`: gRPC clients of a node.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::cases_client::CasesClient;
use lianxi_proto::v1::{GetCaseRequest, GetCaseResponse, GetTimelineRequest, TimelineEntry};
use tonic::Code;
use tonic::transport::Channel;

use crate::render;

const WAIT_LIMIT: Duration = Duration::from_secs(30);

async fn connect(addr: &str) -> Result<CasesClient<Channel>> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    CasesClient::connect(url).await.with_context(|| {
        format!("cannot reach a lianxi node at {addr}; is `lianxi serve` running? set --grpc-addr or LIANXI_GRPC_ADDR")
    })
}

fn parse_now(now: Option<&str>) -> Result<Option<Timestamp>> {
    let Some(s) = now else { return Ok(None) };
    let t = chrono::DateTime::parse_from_rfc3339(s).with_context(|| {
        format!("--now {s:?} is not an RFC 3339 time; write it like 2026-03-01T09:00:00+08:00")
    })?;
    Ok(Some(Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }))
}

/// Calls GetCase, waiting while the node has not yet applied `wait_for`.
async fn get_case(
    client: &mut CasesClient<Channel>,
    case_id: &str,
    now: Option<Timestamp>,
    wait_for: u64,
) -> Result<GetCaseResponse> {
    let started = Instant::now();
    loop {
        let reply = client
            .get_case(GetCaseRequest {
                case_id: case_id.to_owned(),
                now,
            })
            .await;
        let waiting = started.elapsed() < WAIT_LIMIT;
        match reply {
            Ok(r) if r.get_ref().applied_stream_sequence >= wait_for || !waiting => {
                return Ok(r.into_inner());
            }
            Err(s) if s.code() != Code::NotFound || !waiting || wait_for == 0 => {
                bail!("{}", s.message())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub(crate) async fn case(
    addr: &str,
    case_id: &str,
    now: Option<&str>,
    json: bool,
    wait_for: u64,
) -> Result<()> {
    let now = parse_now(now)?;
    let mut client = connect(addr).await?;
    let reply = get_case(&mut client, case_id, now, wait_for).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::case(&reply));
    }
    Ok(())
}

pub(crate) async fn timeline(addr: &str, case_id: &str, json: bool, wait_for: u64) -> Result<()> {
    let mut client = connect(addr).await?;
    if wait_for > 0 {
        get_case(&mut client, case_id, None, wait_for).await?;
    }
    let mut entries: Vec<TimelineEntry> = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .get_timeline(GetTimelineRequest {
                case_id: case_id.to_owned(),
                after_case_sequence: after,
                page_size: 0,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        entries.extend(page.entries);
        if page.next_after_case_sequence == 0 {
            break;
        }
        after = page.next_after_case_sequence;
    }
    if json {
        let all = lianxi_proto::v1::GetTimelineResponse {
            case_id: case_id.to_owned(),
            entries,
            next_after_case_sequence: 0,
            applied_stream_sequence: 0,
        };
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!("{}", render::timeline(case_id, &entries));
    }
    Ok(())
}

pub(crate) async fn rejections(
    addr: &str,
    agency: Option<lianxi_proto::v1::Agency>,
    json: bool,
    limit: usize,
) -> Result<()> {
    use lianxi_proto::v1::ListRejectionsRequest;
    use lianxi_proto::v1::intake_client::IntakeClient;
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let mut client = IntakeClient::connect(url).await.with_context(|| {
        format!("cannot reach a lianxi node at {addr}; is `lianxi serve` running? set --grpc-addr or LIANXI_GRPC_ADDR")
    })?;
    let mut all = Vec::new();
    let mut after = 0;
    while all.len() < limit {
        let page = client
            .list_rejections(ListRejectionsRequest {
                agency: agency.map_or(0, |a| a as i32),
                after_stream_sequence: after,
                page_size: 1000,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        all.extend(page.rejections);
        if page.next_after_stream_sequence == 0 {
            break;
        }
        after = page.next_after_stream_sequence;
    }
    all.truncate(limit);
    if json {
        let reply = lianxi_proto::v1::ListRejectionsResponse {
            rejections: all,
            next_after_stream_sequence: 0,
        };
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::rejections(&all));
    }
    Ok(())
}
