//! Server reflection of the real node, in both protocol versions: a client
//! of `grpc.reflection.v1` and one of `grpc.reflection.v1alpha` (the version
//! grpcio's reflection client and older grpcurl speak) each list the node's
//! services and fetch the descriptor of `lianxi.v1.Cases`.

mod support;

use std::time::Duration;

use support::{Nats, Node};
use tonic::transport::Channel;

const EXPECTED: [&str; 4] = [
    "grpc.health.v1.Health",
    "lianxi.v1.Audit",
    "lianxi.v1.Cases",
    "lianxi.v1.Intake",
];

async fn channel(node: &Node) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the node")
}

/// Whether a FileDescriptorResponse holds the file that defines
/// `lianxi.v1.Cases`: its encoded descriptor names the package and the
/// service's methods.
fn described(files: &[Vec<u8>]) -> bool {
    let has = |file: &[u8], s: &str| file.windows(s.len()).any(|w| w == s.as_bytes());
    files
        .iter()
        .any(|f| has(f, "lianxi.v1") && has(f, "Cases") && has(f, "WatchCases"))
}

/// One reflection client per protocol version: the two generated APIs are
/// the same but for their module, so one body serves both.
macro_rules! reflect {
    ($name:ident, $pb:ident) => {
        async fn $name(channel: Channel) -> (Vec<String>, bool) {
            use tonic_reflection::pb::$pb::ServerReflectionRequest;
            use tonic_reflection::pb::$pb::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$pb::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$pb::server_reflection_response::MessageResponse;
            let version = stringify!($pb);
            let mut client = ServerReflectionClient::new(channel);
            let requests = vec![
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                },
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::FileContainingSymbol(
                        "lianxi.v1.Cases".into(),
                    )),
                },
            ];
            let mut replies = client
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .unwrap_or_else(|e| panic!("{version} reflection answers (not UNIMPLEMENTED): {e}"))
                .into_inner();
            let mut listed = Vec::new();
            let mut files = Vec::new();
            for _ in 0..2 {
                let reply = replies
                    .message()
                    .await
                    .unwrap_or_else(|e| panic!("a {version} reply: {e}"))
                    .expect("the stream goes on");
                match reply.message_response.expect("a message") {
                    MessageResponse::ListServicesResponse(l) => {
                        listed = l.service.into_iter().map(|s| s.name).collect()
                    }
                    MessageResponse::FileDescriptorResponse(f) => files = f.file_descriptor_proto,
                    other => panic!("unexpected {version} reply {other:?}"),
                }
            }
            (listed, described(&files))
        }
    };
}

reflect!(v1, v1);
reflect!(v1alpha, v1alpha);

#[tokio::test]
async fn reflection_answers_in_v1_and_v1alpha() {
    let nats = Nats::start();
    let data = tempfile::tempdir().expect("temp dir");
    let node = Node::start(&nats.url(), data.path());
    for (version, (listed, described)) in [
        (
            "v1",
            tokio::time::timeout(Duration::from_secs(20), v1(channel(&node).await)).await,
        ),
        (
            "v1alpha",
            tokio::time::timeout(Duration::from_secs(20), v1alpha(channel(&node).await)).await,
        ),
    ]
    .map(|(v, r)| (v, r.unwrap_or_else(|_| panic!("{v} reflection timed out"))))
    {
        for service in EXPECTED {
            assert!(
                listed.iter().any(|s| s == service),
                "{version} lists {listed:?}, without {service}"
            );
        }
        assert!(described, "{version} gave no descriptor of lianxi.v1.Cases");
    }
}
