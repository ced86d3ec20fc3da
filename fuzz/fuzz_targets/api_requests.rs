//! Fuzz input decoded as a request of one of the gRPC calls (the first
//! byte picks the call and the caller, the rest is the protobuf request)
//! and sent through the generated client to the real services over a real
//! log, as `crates/lianxi-api/tests/hostile.rs` does. Every reply is OK,
//! INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED or UNAUTHENTICATED, with
//! a short message free of control characters; the node keeps answering.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use lianxi_api::{AuditApi, CasesApi, Gate, IntakeApi, Principals};
use lianxi_log::{GroupKeys, Incoming, Log};
use lianxi_proto::v1::audit_client::AuditClient;
use lianxi_proto::v1::cases_client::CasesClient;
use lianxi_proto::v1::intake_client::IntakeClient;
use lianxi_proto::v1::{
    GetAgendaRequest, GetCaseAsOfRequest, GetCaseRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, GetStatsRequest, GetTimelineRequest, GetTreeHeadRequest,
    ListAccessRequest, ListCasesRequest, ListRejectionsRequest, WatchCaseRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Status};

const TOKENS: [&str; 4] = ["f-police", "f-city", "f-audit", "f-nobody"];

struct Node {
    rt: tokio::runtime::Runtime,
    /// One HTTP/2 connection for every input: a connection per input left
    /// tens of thousands of sockets in TIME_WAIT within a minute.
    channel: Channel,
    _dir: tempfile::TempDir,
    _changes: tokio::sync::watch::Sender<Option<lianxi_log::GroupReport>>,
}

fn principals() -> Principals {
    let sha = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    Principals::from_toml(&format!(
        r#"
[[principal]]
name = "police-records"
role = "agency"
agency = "police"
token_sha256 = "{}"

[[principal]]
name = "secretariat-city"
role = "secretariat"
jurisdiction = "330100"
token_sha256 = "{}"

[[principal]]
name = "audit-office"
role = "auditor"
token_sha256 = "{}"
"#,
        sha(TOKENS[0]),
        sha(TOKENS[1]),
        sha(TOKENS[2])
    ))
    .expect("principals")
}

static NODE: LazyLock<Node> = LazyLock::new(|| {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), lianxi_domain::Policy::default()).expect("open log");
    let group: Vec<Incoming> = lianxi_fuzz::CITY
        .events
        .iter()
        .enumerate()
        .map(|(i, (subject, e))| Incoming {
            stream_sequence: i as u64 + 1,
            subject: subject.clone(),
            recorded_at: e.occurred_at.unwrap_or_default(),
            payload: e.encode_to_vec(),
        })
        .collect();
    log.append_group(&group, &GroupKeys::derived("lianxi-fuzz"))
        .expect("append the city");
    let (changes, rx) = tokio::sync::watch::channel(None);
    let channel = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = Gate::new(principals(), log.access_log());
        let cases = CasesApi::new(log.clone(), gate.clone(), rx)
            .with_derived_keys("lianxi-fuzz")
            .into_server();
        let audit = AuditApi::new(log.clone(), gate.clone()).into_server();
        let intake = IntakeApi::new(log.clone(), gate).into_server();
        tokio::spawn(
            Server::builder()
                .add_service(cases)
                .add_service(audit)
                .add_service(intake)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy()
    });
    Node {
        rt,
        channel,
        _dir: dir,
        _changes: changes,
    }
});

fn req<T>(token: &str, m: T) -> Request<T> {
    let mut r = Request::new(m);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

/// Decodes `bytes` as `M`, or skips the input.
macro_rules! decoded {
    ($t:ty, $b:expr) => {
        match <$t>::decode($b) {
            Ok(m) => m,
            Err(_) => return Ok(()),
        }
    };
}

async fn call(selector: u8, bytes: &[u8]) -> Result<(), Status> {
    let ch = NODE.channel.clone();
    let token = TOKENS[(selector >> 4) as usize % TOKENS.len()];
    let mut cases = CasesClient::new(ch.clone());
    let mut audit = AuditClient::new(ch.clone());
    let mut intake = IntakeClient::new(ch);
    match selector % 13 {
        0 => cases
            .get_case(req(token, decoded!(GetCaseRequest, bytes)))
            .await
            .map(drop),
        1 => cases
            .get_timeline(req(token, decoded!(GetTimelineRequest, bytes)))
            .await
            .map(drop),
        2 => cases
            .list_cases(req(token, decoded!(ListCasesRequest, bytes)))
            .await
            .map(drop),
        3 => cases
            .get_agenda(req(token, decoded!(GetAgendaRequest, bytes)))
            .await
            .map(drop),
        4 => cases
            .get_stats(req(token, decoded!(GetStatsRequest, bytes)))
            .await
            .map(drop),
        5 => cases
            .watch_case(req(token, decoded!(WatchCaseRequest, bytes)))
            .await
            .map(drop),
        6 => audit
            .get_case_as_of(req(token, decoded!(GetCaseAsOfRequest, bytes)))
            .await
            .map(drop),
        7 => audit
            .list_access(req(token, decoded!(ListAccessRequest, bytes)))
            .await
            .map(drop),
        8 => audit
            .get_tree_head(req(token, decoded!(GetTreeHeadRequest, bytes)))
            .await
            .map(drop),
        9 => audit
            .get_inclusion_proof(req(token, decoded!(GetInclusionProofRequest, bytes)))
            .await
            .map(drop),
        10 => audit
            .get_consistency_proof(req(token, decoded!(GetConsistencyProofRequest, bytes)))
            .await
            .map(drop),
        _ => intake
            .list_rejections(req(token, decoded!(ListRejectionsRequest, bytes)))
            .await
            .map(drop),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    NODE.rt.block_on(async {
        let r = tokio::time::timeout(Duration::from_secs(30), call(selector, bytes))
            .await
            .expect("a call did not answer within 30 s (a hang)");
        if let Err(s) = r {
            assert!(
                matches!(
                    s.code(),
                    Code::InvalidArgument
                        | Code::NotFound
                        | Code::PermissionDenied
                        | Code::Unauthenticated
                ),
                "{:?}: {}",
                s.code(),
                s.message()
            );
            lianxi_fuzz::check_message(&format!("{:?}", s.code()), s.message());
        }
    });
});
