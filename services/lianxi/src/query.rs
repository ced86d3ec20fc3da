//! The read commands: gRPC clients of a node, with a bearer token and a
//! stated purpose on every call.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::audit_client::AuditClient;
use lianxi_proto::v1::cases_client::CasesClient;
use lianxi_proto::v1::get_case_as_of_request::At;
use lianxi_proto::v1::intake_client::IntakeClient;
use lianxi_proto::v1::{
    Agency, CaseFilter, GetAgendaRequest, GetCaseAsOfRequest, GetCaseRequest, GetCaseResponse,
    GetStatsRequest, GetTimelineRequest, ListAccessRequest, ListCasesRequest,
    ListRejectionsRequest, TimelineEntry, WatchCaseRequest, WatchCasesRequest,
};
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::render;

const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Where the node is and who is asking.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Conn {
    /// Address of a lianxi node's gRPC API.
    #[arg(long, env = "LIANXI_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub(crate) grpc_addr: String,
    /// Your bearer token (from the node's principals file).
    #[arg(long, env = "LIANXI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Why you are looking: recorded in the node's access log.
    #[arg(long, env = "LIANXI_PURPOSE")]
    purpose: Option<String>,
}

/// Puts the token and purpose on every call.
#[derive(Clone)]
pub(crate) struct Credentials {
    token: Option<AsciiMetadataValue>,
    purpose: Option<AsciiMetadataValue>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md: &mut MetadataMap = req.metadata_mut();
        if let Some(t) = &self.token {
            md.insert("authorization", t.clone());
        }
        if let Some(p) = &self.purpose {
            md.insert("lianxi-purpose", p.clone());
        }
        Ok(req)
    }
}

pub(crate) type Svc = InterceptedService<Channel, Credentials>;

impl Conn {
    /// A connection to `grpc_addr` with an optional token and purpose.
    pub(crate) fn new(grpc_addr: String, token: Option<String>, purpose: Option<String>) -> Conn {
        Conn {
            grpc_addr,
            token,
            purpose,
        }
    }

    /// An Audit client with the token and purpose on every call.
    pub(crate) async fn audit(&self) -> Result<AuditClient<Svc>> {
        Ok(AuditClient::new(self.channel().await?))
    }

    async fn channel(&self) -> Result<Svc> {
        let url = if self.grpc_addr.contains("://") {
            self.grpc_addr.clone()
        } else {
            format!("http://{}", self.grpc_addr)
        };
        let channel = Channel::from_shared(url)
            .with_context(|| format!("{:?} is not an address", self.grpc_addr))?
            .connect()
            .await
            .with_context(|| {
                format!(
                    "cannot reach a lianxi node at {}; is `lianxi serve` running? set --grpc-addr or LIANXI_GRPC_ADDR",
                    self.grpc_addr
                )
            })?;
        let token = match &self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| anyhow!("the token has characters a header cannot carry"))?,
            ),
            None => None,
        };
        // Percent-encoded so any language fits in a header.
        let purpose = match &self.purpose {
            Some(p) => Some(
                percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
                    .parse()
                    .map_err(|_| anyhow!("the purpose cannot be sent"))?,
            ),
            None => None,
        };
        Ok(InterceptedService::new(
            channel,
            Credentials { token, purpose },
        ))
    }

    async fn cases(&self) -> Result<CasesClient<Svc>> {
        Ok(CasesClient::new(self.channel().await?))
    }
}

/// A gRPC refusal as a message for a person.
pub(crate) fn explain(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        Code::Unauthenticated => anyhow!("{} (pass --token or set LIANXI_TOKEN)", s.message()),
        _ => anyhow!("{}", s.message()),
    }
}

/// Follows a paged call's cursor (its zero value starts, `None` ends) until
/// `limit` items are collected or the pages run out.
async fn pages<T, C: Default>(
    limit: usize,
    mut fetch: impl AsyncFnMut(C) -> Result<(Vec<T>, Option<C>)>,
) -> Result<Vec<T>> {
    let mut all = Vec::new();
    let mut cursor = C::default();
    while all.len() < limit {
        let (items, next) = fetch(cursor).await?;
        all.extend(items);
        match next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    all.truncate(limit);
    Ok(all)
}

/// A numeric cursor: 0 means no further page.
fn more(next: u64) -> Option<u64> {
    (next != 0).then_some(next)
}

pub(crate) fn parse_time(flag: &str, s: Option<&str>) -> Result<Option<Timestamp>> {
    let Some(s) = s else { return Ok(None) };
    let t = chrono::DateTime::parse_from_rfc3339(s).with_context(|| {
        format!("--{flag} {s:?} is not an RFC 3339 time; write it like 2026-03-01T09:00:00+08:00")
    })?;
    Ok(Some(Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }))
}

/// Calls GetCase, waiting while the node has not yet applied `wait_for`.
async fn get_case(
    client: &mut CasesClient<Svc>,
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
                return Err(explain(s));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub(crate) async fn case(
    conn: &Conn,
    case_id: &str,
    now: Option<&str>,
    json: bool,
    wait_for: u64,
) -> Result<()> {
    let now = parse_time("now", now)?;
    let mut client = conn.cases().await?;
    let reply = get_case(&mut client, case_id, now, wait_for).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::case(&reply));
    }
    Ok(())
}

pub(crate) async fn timeline(conn: &Conn, case_id: &str, json: bool, wait_for: u64) -> Result<()> {
    let mut client = conn.cases().await?;
    if wait_for > 0 {
        get_case(&mut client, case_id, None, wait_for).await?;
    }
    let entries: Vec<TimelineEntry> = pages(usize::MAX, async |after| {
        let page = client
            .get_timeline(GetTimelineRequest {
                case_id: case_id.to_owned(),
                after_case_sequence: after,
                page_size: 0,
            })
            .await
            .map_err(explain)?
            .into_inner();
        Ok((page.entries, more(page.next_after_case_sequence)))
    })
    .await?;
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
    conn: &Conn,
    agency: Option<Agency>,
    json: bool,
    limit: usize,
) -> Result<()> {
    let mut client = IntakeClient::new(conn.channel().await?);
    let all = pages(limit, async |after| {
        let page = client
            .list_rejections(ListRejectionsRequest {
                agency: agency.map_or(0, |a| a as i32),
                after_stream_sequence: after,
                page_size: 1000,
            })
            .await
            .map_err(explain)?
            .into_inner();
        Ok((page.rejections, more(page.next_after_stream_sequence)))
    })
    .await?;
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

/// Filter flags shared by `cases`, `watch` and friends.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct FilterArgs {
    /// Jurisdiction code prefix, e.g. 330100/330106.
    #[arg(long)]
    jurisdiction: Option<String>,
    /// Coordinated status: new, triaged, referred, in_progress, listed_for_meeting, action_plan, closed (repeatable).
    #[arg(long = "status")]
    statuses: Vec<String>,
    /// Category: domestic_violence, trafficking, custody, child_labour, ... (repeatable).
    #[arg(long = "category")]
    categories: Vec<String>,
    /// Risk level: standard, medium, high (repeatable).
    #[arg(long = "risk")]
    risks: Vec<String>,
    /// Cases this agency is involved in.
    #[arg(long, value_parser = crate::parse_agency)]
    agency: Option<Agency>,
    /// Only cases with an overdue obligation.
    #[arg(long)]
    overdue: bool,
    /// Only cases escalated to the joint meeting.
    #[arg(long)]
    escalated: bool,
    /// Only repeat cases.
    #[arg(long)]
    repeat: bool,
    /// Opened at or after (RFC 3339).
    #[arg(long)]
    opened_from: Option<String>,
    /// Opened before (RFC 3339).
    #[arg(long)]
    opened_before: Option<String>,
}

fn enum_values(
    flag: &str,
    prefix: &str,
    words: &[String],
    parse: fn(&str) -> Option<i32>,
) -> Result<Vec<i32>> {
    words
        .iter()
        .map(|w| {
            let name = format!("{prefix}{}", w.to_uppercase().replace(['-', ' '], "_"));
            parse(&name).ok_or_else(|| anyhow!("--{flag} {w:?} is not a known value"))
        })
        .collect()
}

impl FilterArgs {
    pub(crate) fn filter(&self) -> Result<CaseFilter> {
        use lianxi_proto::v1::{Category, CoordinatedStatus, RiskLevel};
        Ok(CaseFilter {
            jurisdiction: self.jurisdiction.clone().unwrap_or_default(),
            statuses: enum_values("status", "COORDINATED_STATUS_", &self.statuses, |n| {
                CoordinatedStatus::from_str_name(n).map(|e| e as i32)
            })?,
            categories: enum_values("category", "CATEGORY_", &self.categories, |n| {
                Category::from_str_name(n).map(|e| e as i32)
            })?,
            risk_levels: enum_values("risk", "RISK_LEVEL_", &self.risks, |n| {
                RiskLevel::from_str_name(n).map(|e| e as i32)
            })?,
            involved_agency: self.agency.map_or(0, |a| a as i32),
            overdue_only: self.overdue,
            escalated_only: self.escalated,
            repeat_only: self.repeat,
            opened_from: parse_time("opened-from", self.opened_from.as_deref())?,
            opened_before: parse_time("opened-before", self.opened_before.as_deref())?,
        })
    }
}

pub(crate) async fn cases(
    conn: &Conn,
    filter: &FilterArgs,
    now: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<()> {
    let filter = filter.filter()?;
    let now = parse_time("now", now)?;
    let mut client = conn.cases().await?;
    let mut evaluated_at = None;
    let all = pages(limit, async |token: String| {
        let page = client
            .list_cases(ListCasesRequest {
                filter: Some(filter.clone()),
                now,
                page_token: token,
                page_size: 1000.min(limit as u32).max(1),
            })
            .await
            .map_err(explain)?
            .into_inner();
        evaluated_at = page.evaluated_at;
        let next = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
        Ok((page.cases, next))
    })
    .await?;
    if json {
        let reply = lianxi_proto::v1::ListCasesResponse {
            cases: all,
            next_page_token: String::new(),
            evaluated_at,
        };
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::cases(&all, evaluated_at.as_ref()));
    }
    Ok(())
}

pub(crate) async fn agenda(
    conn: &Conn,
    jurisdiction: Option<String>,
    now: Option<&str>,
    days: u32,
    json: bool,
) -> Result<()> {
    let now = parse_time("now", now)?;
    let mut client = conn.cases().await?;
    let reply = client
        .get_agenda(GetAgendaRequest {
            jurisdiction: jurisdiction.unwrap_or_default(),
            now,
            expiring_within_days: days,
        })
        .await
        .map_err(explain)?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::agenda(&reply));
    }
    Ok(())
}

pub(crate) async fn stats(
    conn: &Conn,
    jurisdiction: Option<String>,
    from: Option<&str>,
    before: Option<&str>,
    now: Option<&str>,
    json: bool,
) -> Result<()> {
    let mut client = conn.cases().await?;
    let reply = client
        .get_stats(GetStatsRequest {
            jurisdiction: jurisdiction.unwrap_or_default(),
            opened_from: parse_time("from", from)?,
            opened_before: parse_time("before", before)?,
            now: parse_time("now", now)?,
        })
        .await
        .map_err(explain)?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::stats(&reply));
    }
    Ok(())
}

pub(crate) async fn watch(
    conn: &Conn,
    case_id: Option<String>,
    filter: &FilterArgs,
    after: u64,
    count: Option<usize>,
    json: bool,
) -> Result<()> {
    let mut client = conn.cases().await?;
    let mut stream = match case_id {
        Some(case_id) => client
            .watch_case(WatchCaseRequest {
                case_id,
                after_global_sequence: after,
            })
            .await
            .map_err(explain)?
            .into_inner(),
        None => client
            .watch_cases(WatchCasesRequest {
                filter: Some(filter.filter()?),
                after_global_sequence: after,
            })
            .await
            .map_err(explain)?
            .into_inner(),
    };
    let mut seen = 0;
    while let Some(change) = stream.message().await.map_err(explain)? {
        if json {
            println!("{}", serde_json::to_string(&change)?);
        } else {
            print!("{}", render::change(&change));
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

pub(crate) async fn as_of(
    conn: &Conn,
    case_id: &str,
    sequence: Option<u64>,
    at: Option<&str>,
    json: bool,
) -> Result<()> {
    let at = match (sequence, parse_time("at", at)?) {
        (Some(s), None) => At::GlobalSequence(s),
        (None, Some(t)) => At::RecordedAt(t),
        _ => bail!("say when: give exactly one of --sequence N or --at TIME"),
    };
    let mut client = AuditClient::new(conn.channel().await?);
    let reply = client
        .get_case_as_of(GetCaseAsOfRequest {
            case_id: case_id.to_owned(),
            at: Some(at),
        })
        .await
        .map_err(explain)?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::as_of(&reply));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn access(
    conn: &Conn,
    case_id: Option<String>,
    principal: Option<String>,
    from: Option<&str>,
    before: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<()> {
    let (from, before) = (parse_time("from", from)?, parse_time("before", before)?);
    let mut client = AuditClient::new(conn.channel().await?);
    let all = pages(limit, async |after| {
        let page = client
            .list_access(ListAccessRequest {
                case_id: case_id.clone().unwrap_or_default(),
                principal: principal.clone().unwrap_or_default(),
                from,
                before,
                after_sequence: after,
                page_size: 1000,
            })
            .await
            .map_err(explain)?
            .into_inner();
        Ok((page.records, more(page.next_after_sequence)))
    })
    .await?;
    if json {
        let reply = lianxi_proto::v1::ListAccessResponse {
            records: all,
            next_after_sequence: 0,
        };
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", render::access(&all));
    }
    Ok(())
}
