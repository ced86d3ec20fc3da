//! End-to-end: a real nats-server per test, the real `lianxi` binary as the
//! node with real sled files, events published through the real NATS client,
//! and answers read through real gRPC. Nothing is mocked.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{self as pb, Agency, GetCaseRequest, GetTimelineRequest, event::Body};
use prost::Message;
use support::{
    Nats, Node, ReceiptSub, case_after, event_at as event, lianxi, opened_by as opened, publish,
    subject,
};

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

const T0: i64 = 1_793_000_000; // 2026-10-26

async fn publish_raw(js: &async_nats::jetstream::Context, subject: &str, payload: Vec<u8>) -> u64 {
    js.publish(subject.to_owned(), payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored by JetStream")
        .sequence
}

/// Waits until the node has created the events stream.
async fn wait_for_stream(js: &async_nats::jetstream::Context) {
    for _ in 0..500 {
        if js.get_stream("LIANXI_EVENTS").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the node did not create the LIANXI_EVENTS stream");
}

#[tokio::test]
async fn a_case_travels_from_nats_through_the_log_to_grpc() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;

    let case = "DV-E2E-1";
    let events = [
        opened("e1", case, Agency::WomensFederation, T0),
        event(
            "e2",
            case,
            Agency::WomensFederation,
            T0 + 600,
            Body::RiskAssessed(pb::RiskAssessed {
                level: pb::RiskLevel::High as i32,
                score: 85,
                factors: vec!["threats".into()],
            }),
        ),
        event(
            "e3",
            case,
            Agency::WomensFederation,
            T0 + 900,
            Body::ReferralIssued(pb::ReferralIssued {
                referral_id: "R-1".into(),
                to_agency: Agency::Court as i32,
                reason: "protection order".into(),
                due_at: None,
                transfer_lead: false,
            }),
        ),
        event(
            "e4",
            case,
            Agency::Court,
            T0 + 3600,
            Body::ReferralAccepted(pb::ReferralAccepted {
                referral_id: "R-1".into(),
                note: String::new(),
            }),
        ),
        event(
            "e5",
            case,
            Agency::Court,
            T0 + 4000,
            Body::ProtectionOrderApplied(pb::ProtectionOrderApplied {
                application_id: "PA-1".into(),
                applicant: pb::Applicant::Victim as i32,
                urgent: true,
            }),
        ),
    ];
    let mut last = 0;
    for e in &events {
        last = publish(&js, e).await;
    }
    let mut client = node.client().await;
    let reply = case_after(&mut client, case, last).await;
    let view = reply.view.expect("a view");
    assert_eq!(view.case_id, case);
    assert_eq!(view.case_sequence, 5);
    assert_eq!(view.status, pb::CoordinatedStatus::InProgress as i32);
    assert_eq!(view.first_contact, Agency::WomensFederation as i32);
    let court = view
        .agencies
        .iter()
        .find(|a| a.agency == Agency::Court as i32)
        .expect("court involved");
    assert_eq!(court.state, pb::InvolvementState::InProgress as i32);
    assert!(view.flags.as_ref().unwrap().high_risk);
    // An urgent application must be decided within 24 hours of the event.
    let decision = view
        .obligations
        .iter()
        .find(|o| o.kind == pb::ObligationKind::OrderDecision as i32)
        .expect("an order-decision obligation");
    assert_eq!(decision.due_at.unwrap().seconds, T0 + 4000 + 24 * 3600);
    assert_eq!(decision.owner, Agency::Court as i32);

    // "Overdue" is judged at the `now` the caller passes, not stored.
    let later = client
        .get_case(GetCaseRequest {
            case_id: case.into(),
            now: at(T0 + 4000 + 25 * 3600),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(later.overdue.iter().any(|o| o.id == decision.id));
    let before = client
        .get_case(GetCaseRequest {
            case_id: case.into(),
            now: at(T0 + 4000 + 3600),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!before.overdue.iter().any(|o| o.id == decision.id));

    // The timeline, in pages, in order, chained.
    let page = client
        .get_timeline(GetTimelineRequest {
            case_id: case.into(),
            after_case_sequence: 0,
            page_size: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(page.next_after_case_sequence, 3);
    let rest = client
        .get_timeline(GetTimelineRequest {
            case_id: case.into(),
            after_case_sequence: 3,
            page_size: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.next_after_case_sequence, 0);
    let all: Vec<_> = page.entries.iter().chain(&rest.entries).collect();
    let ids: Vec<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e3", "e4", "e5"]);
    assert!(all.iter().all(|e| e.hash.len() == 64 && !e.line.is_empty()));
    assert!(
        all[2].line.contains("Court") || all[2].line.contains("court"),
        "{}",
        all[2].line
    );
    assert!(all.iter().all(|e| e.recorded_at.is_some()));

    // Unknown and malformed case ids get clear errors.
    let missing = client
        .get_case(GetCaseRequest {
            case_id: "NO-SUCH-CASE".into(),
            now: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad = client
        .get_case(GetCaseRequest {
            case_id: "a.b".into(),
            now: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // The standard health service answers for the Cases service.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "lianxi.v1.Cases".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Server reflection lists the service, so grpcurl and friends work.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies
        .message()
        .await
        .unwrap()
        .expect("a reflection reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"lianxi.v1.Cases"), "{names:?}");
}

#[tokio::test]
async fn bad_input_is_rejected_with_a_reason_and_good_events_still_land() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;
    let case = "DV-E2E-2";
    let good = opened("g1", case, Agency::Police, T0);
    publish(&js, &good).await;

    // Unparsable bytes.
    publish_raw(
        &js,
        "lianxi.v1.events.police.DV-E2E-2",
        vec![0xff, 0xff, 0xff, 0x00],
    )
    .await;
    // An unknown agency in the subject.
    publish_raw(&js, "lianxi.v1.events.army.DV-E2E-2", good.encode_to_vec()).await;
    // A body that claims another agency than its subject.
    publish_raw(&js, "lianxi.v1.events.court.DV-E2E-2", good.encode_to_vec()).await;
    // Oversized.
    let mut big = good.clone();
    big.event_id = "big".into();
    if let Some(Body::CaseOpened(o)) = &mut big.body {
        o.summary = "x".repeat(100_000);
    }
    publish_raw(&js, &subject(&big), big.encode_to_vec()).await;
    // A missing field: no event time.
    let mut no_time = good.clone();
    no_time.event_id = "no-time".into();
    no_time.occurred_at = None;
    publish_raw(&js, &subject(&no_time), no_time.encode_to_vec()).await;
    // A rule broken: the court may not issue a police warning.
    let warning = event(
        "w1",
        case,
        Agency::Court,
        T0,
        Body::WrittenWarningIssued(pb::WrittenWarningIssued {
            warning_id: "W".into(),
            respondent_ref: "R".into(),
            grounds: "g".into(),
        }),
    );
    publish_raw(&js, &subject(&warning), warning.encode_to_vec()).await;

    // Later good events still land, and a re-sent id is applied once.
    let later = event(
        "g2",
        case,
        Agency::Police,
        T0 + 60,
        Body::ProgressReported(pb::ProgressReported {
            summary: "visited".into(),
        }),
    );
    let seq = publish(&js, &later).await;
    let dup_seq = publish_raw(&js, &subject(&good), good.encode_to_vec()).await;
    assert!(dup_seq > seq);
    let mut client = node.client().await;
    let reply = case_after(&mut client, case, dup_seq).await;
    assert_eq!(reply.view.unwrap().case_sequence, 2);

    // Stop the node; every rejection is kept with its reason and raw bytes.
    assert!(
        node.stop().success(),
        "the node should exit cleanly on SIGTERM"
    );
    let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
    let rejected = log.rejections(0, 100).unwrap();
    let codes: Vec<pb::RejectionCode> = rejected
        .iter()
        .map(|r| pb::RejectionCode::try_from(r.code).unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            pb::RejectionCode::Malformed,
            pb::RejectionCode::UnknownAgency,
            pb::RejectionCode::AgencyMismatch,
            pb::RejectionCode::TooLarge,
            pb::RejectionCode::MissingField,
            pb::RejectionCode::NotPermitted,
        ]
    );
    assert!(rejected.iter().all(|r| r.reason.len() > 20), "{rejected:?}");
    // Bytes that are not an event, on the case's subject: kept sealed under
    // the case's key, never in the clear.
    assert!(rejected[0].raw.is_empty(), "{:?}", rejected[0]);
    assert!(rejected[0].sealed_raw.is_some());
    assert_eq!(rejected[0].raw_len, 4);
    assert_eq!(log.duplicates(0, 10).unwrap().len(), 1);
    assert_eq!(log.checkpoint().global_sequence, 2);
    assert_eq!(log.checkpoint().stream_sequence, dup_seq);
}

#[tokio::test]
async fn a_restarted_node_neither_loses_nor_repeats_events() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;
    let case = "DV-E2E-3";
    let progress = |i: i64| {
        event(
            &format!("p{i}"),
            case,
            Agency::WomensFederation,
            T0 + i * 60,
            Body::ProgressReported(pb::ProgressReported {
                summary: format!("call {i}"),
            }),
        )
    };
    publish(&js, &opened("o", case, Agency::WomensFederation, T0)).await;
    for i in 1..=40 {
        publish(&js, &progress(i)).await;
    }
    let stopped = node.stop();
    assert!(stopped.success());

    // Published while the node is down: the stream holds them.
    let mut last = 0;
    for i in 41..=80 {
        last = publish(&js, &progress(i)).await;
    }
    // Re-sent ids (an agency retrying after a timeout) are not applied twice.
    for i in 1..=5 {
        last = publish_raw(&js, &subject(&progress(i)), progress(i).encode_to_vec()).await;
    }

    // Restart the bus as well: the stream is on disk.
    let nats = Nats::restart(nats.stop());
    let node = Node::start(&nats.url(), data.path());
    let mut client = node.client().await;
    let reply = case_after(&mut client, case, last).await;
    assert_eq!(reply.view.unwrap().case_sequence, 81);
    let timeline = client
        .get_timeline(GetTimelineRequest {
            case_id: case.into(),
            after_case_sequence: 0,
            page_size: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = timeline
        .entries
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    let mut expected = vec!["o".to_owned()];
    expected.extend((1..=80).map(|i| format!("p{i}")));
    assert_eq!(ids, expected);
    assert!(node.stop().success());

    // The chain verifies, and a rebuild gives the same view bytes.
    let dir = data.path().to_str().unwrap();
    let (ok, out, err) = lianxi(&["verify", "--data-dir", dir], &[]);
    assert!(ok, "verify failed: {out} {err}");
    assert!(out.contains("81 entries"), "{out}");
    let before = {
        let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
        log.view_bytes().unwrap()
    };
    let (ok, out, err) = lianxi(&["rebuild", "--data-dir", dir], &[]);
    assert!(ok, "rebuild failed: {out} {err}");
    let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
    assert_eq!(log.view_bytes().unwrap(), before);
}

#[tokio::test]
async fn the_command_line_publishes_json_lines_and_shows_the_case() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/demo/dv-case.jsonl"
    );
    let env = [
        ("LIANXI_NATS_URL", nats.url()),
        ("LIANXI_GRPC_ADDR", node.grpc_addr.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (ok, out, err) = lianxi(&["publish", demo], &env);
    assert!(ok, "publish failed: {out} {err}");
    // One receipt per event; the node has applied them when publish returns.
    let published = out.lines().filter(|l| l.starts_with("accepted ")).count();
    assert!(published > 20, "{out}");
    assert!(
        out.contains(&format!("{published} accepted, 0 duplicates, 0 rejected")),
        "{out}"
    );

    let (ok, out, err) = lianxi(
        &[
            "case",
            "DV-2026-0117",
            "--json",
            "--now",
            "2026-11-29T09:00:00+08:00",
        ],
        &env,
    );
    assert!(ok, "case failed: {err}");
    let reply: pb::GetCaseResponse = serde_json::from_str(&out).expect("canonical JSON");
    let view = reply.view.unwrap();
    assert_eq!(view.case_sequence as usize, published);
    assert_eq!(view.status, pb::CoordinatedStatus::ActionPlan as i32);
    assert!(view.flags.as_ref().unwrap().protection_order);
    assert!(reply.protection_order_active);
    // Canonical protobuf JSON: camelCase names, enum names, RFC 3339 times.
    assert!(out.contains("\"caseId\": \"DV-2026-0117\""), "{out}");
    assert!(out.contains("COORDINATED_STATUS_ACTION_PLAN"), "{out}");

    let (ok, out, err) = lianxi(&["case", "DV-2026-0117"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("ACTION PLAN"), "{out}");
    let (ok, out, err) = lianxi(&["timeline", "DV-2026-0117"], &env);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("recorded "))
            .count(),
        published,
        "{out}"
    );

    // Publishing the same file again: every event is a duplicate, exit 0.
    let (ok, out, err) = lianxi(&["publish", "--quiet", demo], &env);
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!("0 accepted, {published} duplicates, 0 rejected")),
        "{out}"
    );

    // A rejected event: exit non-zero with the reason, kept for `lianxi rejections`.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        r#"{"eventId":"bad-1","caseId":"DV-2026-0117","agency":"AGENCY_COURT","occurredAt":"2026-11-21T01:00:00Z","writtenWarningIssued":{"warningId":"W-X","respondentRef":"R"}}"#,
    )
    .unwrap();
    let (ok, out, err) = lianxi(&["publish", bad.path().to_str().unwrap()], &env);
    assert!(!ok, "{out}");
    assert!(out.contains("REJECTED   bad-1"), "{out}");
    assert!(err.contains("REJECTION_CODE_NOT_PERMITTED"), "{err}");
    let (ok, out, err) = lianxi(&["rejections", "--agency", "court"], &env);
    assert!(ok, "{err}");
    assert!(
        out.contains("1 rejected message(s)") && out.contains("bad-1"),
        "{out}"
    );
    let (ok, out, _) = lianxi(&["rejections", "--agency", "police"], &env);
    assert!(ok && out.contains("0 rejected message(s)"), "{out}");

    // A line that is not an event: nothing is sent, the line is named.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        "{\"eventId\":\"x\",\"caseId\":\"C-1\",\"agency\":\"AGENCY_POLICE\"}\nnot json\n",
    )
    .unwrap();
    let (ok, _out, err) = lianxi(&["publish", bad.path().to_str().unwrap()], &env);
    assert!(!ok);
    assert!(err.contains("line 2"), "{err}");

    // A node that is not there: the error says what to do.
    let (ok, _out, err) = lianxi(&["case", "DV-2026-0117", "--grpc-addr", "127.0.0.1:1"], &[]);
    assert!(!ok);
    assert!(err.contains("lianxi serve"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_before_any_node_says_what_to_do_and_lands_once_a_node_starts() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let nats = Nats::start();
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/demo/dv-case.jsonl"
    );
    // No node has run against this server yet, so no stream stores the
    // events' subjects.
    let mut child = Command::new(support::LIANXI)
        .args(["publish", "--quiet", demo])
        .env("LIANXI_NATS_URL", nats.url())
        .env("LIANXI_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lianxi publish");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let warned = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("start a lianxi node") => break line,
            Ok(_) => continue,
            Err(e) => {
                let _ = child.kill();
                panic!("no warning within 30 s of publishing with no node ({e})");
            }
        }
    };
    assert!(warned.contains("no JetStream stream"), "{warned}");
    assert!(child.try_wait().unwrap().is_none(), "publish gave up");
    // The node creates the stream; the waiting events land.
    let data = tempfile::tempdir().unwrap();
    let _node = Node::start(&nats.url(), data.path());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("publish output");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "publish failed: {out}");
    let lines = std::fs::read_to_string(demo).unwrap();
    let n = lines
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .count();
    assert!(
        out.contains(&format!(
            "{n} events: {n} accepted, 0 duplicates, 0 rejected, 0 without a receipt"
        )),
        "{out}"
    );
    // One warning per 30 s for the whole client, not one per event.
    let warnings = 1 + rx
        .try_iter()
        .filter(|l| l.contains("has not stored an event yet"))
        .count();
    assert!(warnings <= 2, "{warnings} warnings");
}

#[tokio::test]
async fn a_simulated_city_lands_exactly_once_with_every_bad_event_kept() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;
    let workload = lianxi_sim::generate(&lianxi_sim::Workload {
        seed: 11,
        cases: 150,
        invalid_rate: 0.1,
        duplicate_rate: 0.1,
        prefix: "CITY".into(),
        ..lianxi_sim::Workload::default()
    });
    let count = |i: lianxi_sim::Intent| workload.iter().filter(|(_, x)| *x == i).count() as u64;
    let (valid, invalid, duplicate) = (
        count(lianxi_sim::Intent::Valid),
        count(lianxi_sim::Intent::Invalid),
        count(lianxi_sim::Intent::Duplicate),
    );
    assert!(valid > 1000 && invalid > 5 && duplicate > 5);
    // Published without a message id, so re-sent events reach the node and
    // its permanent dedup index (not JetStream's two-minute window) catches
    // them. Acknowledgements are awaited in batches, as an agency would.
    let mut acks = Vec::new();
    for (event, _) in &workload {
        acks.push(
            js.publish(subject(event), event.encode_to_vec().into())
                .await
                .expect("publish"),
        );
    }
    let mut last = 0;
    for ack in acks {
        last = ack.await.expect("stored").sequence;
    }
    let mut client = node.client().await;
    let first_case = workload[0].0.case_id.clone();
    case_after(&mut client, &first_case, last).await;
    assert!(node.stop().success());

    let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
    assert_eq!(log.checkpoint().global_sequence, valid);
    assert_eq!(log.checkpoint().stream_sequence, last);
    assert_eq!(log.rejections(0, usize::MAX).unwrap().len() as u64, invalid);
    assert_eq!(
        log.duplicates(0, usize::MAX).unwrap().len() as u64,
        duplicate
    );
    let report = log.verify().unwrap();
    assert_eq!(report.entries, valid);
    assert_eq!(report.cases, 150);
    let incremental = log.view_bytes().unwrap();
    log.rebuild().unwrap();
    assert_eq!(log.view_bytes().unwrap(), incremental);
}

#[tokio::test]
async fn node_and_client_ride_out_a_nats_server_restart() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    wait_for_stream(&nats.jetstream().await).await;
    let client = lianxi_client::Client::connect(
        &nats.url(),
        lianxi_client::Options {
            receipt_timeout: Duration::from_secs(60),
            publish_attempts: 40,
            ..lianxi_client::Options::for_agency(Agency::WomensFederation)
        },
    )
    .await
    .unwrap();
    let case = "DV-E2E-RESTART";
    let progress = |i: i64| {
        event(
            &format!("r{i}"),
            case,
            Agency::WomensFederation,
            T0 + i * 60,
            Body::ProgressReported(pb::ProgressReported {
                summary: format!("call {i}"),
            }),
        )
    };
    let r = client
        .publish(&opened("r0", case, Agency::WomensFederation, T0))
        .await
        .unwrap();
    assert_eq!(r.status, pb::ReceiptStatus::Accepted as i32);
    assert_eq!((r.global_sequence, r.case_sequence), (1, 1));
    for i in 1..=10 {
        let r = client.publish(&progress(i)).await.unwrap();
        assert_eq!(r.status, pb::ReceiptStatus::Accepted as i32, "{r:?}");
    }

    // The bus goes down and comes back on the same port with its store.
    let stopped = nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let nats = Nats::restart(stopped);

    // The same client and the same node carry on: receipts for new events,
    // in order, nothing lost, nothing repeated.
    for i in 11..=20 {
        let r = client.publish(&progress(i)).await.unwrap();
        assert_eq!(r.status, pb::ReceiptStatus::Accepted as i32, "{r:?}");
        assert_eq!(r.case_sequence, i as u64 + 1);
    }
    // A retry of an old event is answered as a duplicate of the original.
    let again = client.publish(&progress(5)).await.unwrap();
    assert_eq!(
        again.status,
        pb::ReceiptStatus::Duplicate as i32,
        "{again:?}"
    );
    assert_eq!(again.original_global_sequence, 6);
    // An event for another agency is refused before it reaches the bus.
    let police = opened("p1", "OTHER", Agency::Police, T0);
    assert!(matches!(
        client.publish(&police).await,
        Err(lianxi_client::Error::WrongAgency { .. })
    ));

    let mut grpc = node.client().await;
    let view = grpc
        .get_case(GetCaseRequest {
            case_id: case.into(),
            now: None,
        })
        .await
        .unwrap()
        .into_inner()
        .view
        .unwrap();
    assert_eq!(view.case_sequence, 21);
    drop(nats);
}

#[tokio::test]
async fn the_secretariat_auditors_and_agencies_each_see_what_they_may() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let principals = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/principals.example.toml"
    );
    let node = Node::start_with_env(
        &nats.url(),
        data.path(),
        &[("LIANXI_PRINCIPALS", principals)],
    );
    wait_for_stream(&nats.jetstream().await).await;
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/demo/dv-case.jsonl"
    );
    let grpc = node.grpc_addr.clone();
    let url = nats.url();
    let as_who = |token: &'static str| {
        vec![
            ("LIANXI_GRPC_ADDR", grpc.clone()),
            ("LIANXI_NATS_URL", url.clone()),
            ("LIANXI_TOKEN", token.to_owned()),
        ]
    };
    let run = |args: &[&str], env: &[(&str, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        lianxi(args, &env)
    };
    let (ok, out, err) = run(&["publish", "-q", demo], &as_who(""));
    assert!(ok, "{out} {err}");
    let now = "2026-11-29T09:00:00+08:00";
    let secretariat = as_who("dev-only-xihu-token");
    let police = as_who("dev-only-police-token");
    let auditor = as_who("dev-only-audit-token");
    let ops = as_who("dev-only-ops-token");

    // No token: told what to do.
    let (ok, _, err) = run(&["cases"], &as_who(""));
    assert!(!ok && err.contains("token"), "{err}");

    // The secretariat of the district sees the case, its agenda and figures,
    // and states a purpose that the access log keeps.
    let mut with_purpose = secretariat.clone();
    with_purpose.push(("LIANXI_PURPOSE", "准备联席会议 (meeting prep)".to_owned()));
    let (ok, out, err) = run(&["cases", "--now", now], &with_purpose);
    assert!(ok, "{err}");
    assert!(
        out.contains("1 case(s)") && out.contains("DV-2026-0117"),
        "{out}"
    );
    let (ok, out, err) = run(&["cases", "--status", "closed"], &secretariat);
    assert!(ok && out.contains("0 case(s)"), "{out} {err}");
    let (ok, out, err) = run(&["agenda", "--now", now], &secretariat);
    assert!(ok, "{err}");
    assert!(
        out.contains("DV-2026-0117") && out.contains("escalated"),
        "{out}"
    );
    let (ok, out, err) = run(&["stats", "--now", now, "--json"], &secretariat);
    assert!(ok, "{err}");
    let stats: pb::GetStatsResponse = serde_json::from_str(&out).unwrap();
    assert_eq!(stats.cases, 1);
    let (ok, out, err) = run(
        &["watch", "DV-2026-0117", "--count", "1", "--json"],
        &secretariat,
    );
    assert!(ok, "{err}");
    let first: pb::CaseChange = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(first.snapshot);
    assert_eq!(first.view.unwrap().case_sequence, 31);

    // The police are involved: they see it. Operators and auditors do not
    // read cases through the Cases service.
    let (ok, out, _) = run(&["case", "DV-2026-0117"], &police);
    assert!(ok && out.contains("ACTION PLAN"), "{out}");
    let (ok, _, err) = run(&["case", "DV-2026-0117"], &ops);
    assert!(!ok && err.to_lowercase().contains("may not"), "{err}");
    let (ok, _, err) = run(&["cases"], &auditor);
    assert!(!ok, "{err}");

    // The auditor replays the past and reads the access log.
    let (ok, out, err) = run(
        &["as-of", "DV-2026-0117", "--sequence", "5", "--json"],
        &auditor,
    );
    assert!(ok, "{err}");
    let past: pb::GetCaseAsOfResponse = serde_json::from_str(&out).unwrap();
    assert_eq!(past.view.unwrap().case_sequence, 5);
    assert_eq!(past.entries_applied, 5);
    let (ok, out, err) = run(&["access", "--json"], &auditor);
    assert!(ok, "{err}");
    let log: pb::ListAccessResponse = serde_json::from_str(&out).unwrap();
    let by = |who: &str| log.records.iter().filter(|r| r.principal == who).count();
    assert!(by("secretariat-xihu") >= 5, "{out}");
    assert!(
        log.records
            .iter()
            .any(|r| r.purpose == "准备联席会议 (meeting prep)" && r.method.ends_with("ListCases"))
    );
    assert!(
        log.records
            .iter()
            .any(|r| r.principal == "ops" && !r.allowed)
    );
    assert!(
        log.records
            .iter()
            .any(|r| r.principal == "(unauthenticated)" && !r.allowed)
    );
    // Who saw the case: its reads and every list, agenda, statistics and
    // watch that showed it.
    let (ok, out, err) = run(&["access", "--case", "DV-2026-0117"], &auditor);
    assert!(ok, "{err}");
    for method in ["ListCases", "GetAgenda", "GetStats", "WatchCase", "GetCase"] {
        assert!(out.contains(method), "{method} missing from:\n{out}");
    }
    assert!(out.contains("shown: DV-2026-0117"), "{out}");
    drop(node);
}

/// Publishes a simulated workload and waits until `node` has applied it.
async fn publish_city(nats: &Nats, node: &Node, seed: u64, cases: usize, prefix: &str) {
    let js = nats.jetstream().await;
    let workload = lianxi_sim::generate(&lianxi_sim::Workload {
        seed,
        cases,
        prefix: prefix.into(),
        ..lianxi_sim::Workload::default()
    });
    let mut acks = Vec::new();
    for (event, _) in &workload {
        acks.push(
            js.publish(subject(event), event.encode_to_vec().into())
                .await
                .expect("publish"),
        );
    }
    let mut last = 0;
    for ack in acks {
        last = ack.await.expect("stored").sequence;
    }
    let mut client = node.client().await;
    case_after(&mut client, &workload[0].0.case_id, last).await;
}

async fn audit(node: &Node) -> pb::audit_client::AuditClient<tonic::transport::Channel> {
    pb::audit_client::AuditClient::connect(format!("http://{}", node.grpc_addr))
        .await
        .expect("connect to the node")
}

#[tokio::test]
async fn an_auditor_verifies_a_node_with_only_its_key_and_again_after_it_grew() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("node.key");
    let (ok, vkey, err) = lianxi(
        &[
            "keygen",
            "--origin",
            "e2e.test/log",
            "--out",
            key_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let vkey = vkey.trim().to_owned();
    assert!(vkey.starts_with("e2e.test/log+"), "{vkey}");
    let node = Node::start_with_env(
        &nats.url(),
        data.path(),
        &[
            ("LIANXI_SIGNING_KEY", key_file.to_str().unwrap()),
            ("LIANXI_LOG_ORIGIN", "e2e.test/log"),
        ],
    );
    publish_city(&nats, &node, 31, 30, "AUDIT").await;
    let state = keys.path().join("state.json");
    let verify = |event: &str| {
        lianxi(
            &[
                "verify",
                "--node",
                &node.grpc_addr,
                "--key",
                &vkey,
                "--state",
                state.to_str().unwrap(),
                "--event",
                event,
            ],
            &[],
        )
    };
    let (ok, out, err) = verify("5");
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("ok: entry 5 "), "{out}");
    assert!(out.contains("no earlier checkpoint"), "{out}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let first_size = saved["tree_size"].as_u64().unwrap();
    assert!(first_size > 50, "{saved}");

    publish_city(&nats, &node, 32, 20, "AUDITMORE").await;
    let (ok, out, err) = verify(&(first_size + 3).to_string());
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "consistent with the checkpoint of tree size {first_size}"
        )),
        "{out}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let second_size = saved["tree_size"].as_u64().unwrap();
    assert!(second_size > first_size);

    // Every checkpoint the node issued is kept and verifies with its key;
    // another key does not verify them.
    let mut client = audit(&node).await;
    let head = client
        .get_checkpoint(pb::GetCheckpointRequest { fresh: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(head.verifier_key, vkey);
    assert_eq!(head.tree_size, second_size);
    let list = client
        .list_checkpoints(pb::ListCheckpointsRequest {
            after_number: 0,
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let sizes: Vec<u64> = list.checkpoints.iter().map(|c| c.tree_size).collect();
    assert!(
        sizes.contains(&first_size) && sizes.contains(&second_size),
        "{sizes:?}"
    );
    let other = lianxi_log::CheckpointSigner::new(
        &lianxi_log::generate_signing_key("e2e.test/log").unwrap(),
    )
    .unwrap();
    for c in &list.checkpoints {
        let opened = lianxi_log::open_checkpoint(&c.note, &vkey).unwrap();
        assert_eq!(opened.size, c.tree_size);
        assert_eq!(opened.root.to_vec(), c.root_hash);
        assert!(lianxi_log::open_checkpoint(&c.note, other.verifier_key()).is_err());
    }
    // A wrong key fails the whole verification at the first step.
    let (ok, _, err) = lianxi(
        &[
            "verify",
            "--node",
            &node.grpc_addr,
            "--key",
            other.verifier_key(),
            "--state",
            keys.path().join("other.json").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("checkpoint check FAILED"), "{err}");
}

#[tokio::test]
async fn two_nodes_reading_one_stream_hold_the_same_root_and_compare_equal() {
    let nats = Nats::start();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(&nats.url(), a_dir.path());
    let b = Node::start(&nats.url(), b_dir.path());
    publish_city(&nats, &a, 41, 30, "TWIN").await;
    // b has read the same stream by the time its tree is as large as a's.
    let (mut ca, mut cb) = (audit(&a).await, audit(&b).await);
    let head = |n| pb::GetTreeHeadRequest { tree_size: n };
    let size_a = ca
        .get_tree_head(head(0))
        .await
        .unwrap()
        .into_inner()
        .tree_size;
    let started = std::time::Instant::now();
    while cb
        .get_tree_head(head(0))
        .await
        .unwrap()
        .into_inner()
        .tree_size
        < size_a
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node b fell behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ra = ca.get_tree_head(head(size_a)).await.unwrap().into_inner();
    let rb = cb.get_tree_head(head(size_a)).await.unwrap().into_inner();
    assert_eq!(ra, rb);
    assert_eq!(ra.root_hash.len(), 32);

    let (ok, out, err) = lianxi(
        &["verify", "--node", &a.grpc_addr, "--compare", &b.grpc_addr],
        &[],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(&hex::encode(&ra.root_hash)), "{out}");

    // Each node made its own signing key (0600) and signs with it: same
    // root, different signatures.
    for dir in [a_dir.path(), b_dir.path()] {
        let meta = std::fs::metadata(dir.join("signing.key")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        let _ = meta;
    }
    let fresh = pb::GetCheckpointRequest { fresh: true };
    let ka = ca.get_checkpoint(fresh).await.unwrap().into_inner();
    let kb = cb.get_checkpoint(fresh).await.unwrap().into_inner();
    assert_ne!(ka.verifier_key, kb.verifier_key);
    if ka.tree_size == kb.tree_size {
        assert_eq!(ka.root_hash, kb.root_hash);
        assert_ne!(ka.note, kb.note);
    }
    assert!(lianxi_log::open_checkpoint(&ka.note, &ka.verifier_key).is_ok());
    assert!(lianxi_log::open_checkpoint(&ka.note, &kb.verifier_key).is_err());
}

/// Subscribes to one agency's receipts (core NATS: the batches are also
/// published there as JetStream stores them).
async fn receipts_of(nats: &Nats, agency: &str) -> ReceiptSub {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let sub = ReceiptSub::new(&client, &format!("lianxi.v1.receipts.{agency}")).await;
    // Keep the connection alive with the subscriber.
    std::mem::forget(client);
    sub
}

/// The receipt for the message at `stream_sequence`, from `sub`.
async fn receipt_for(sub: &mut ReceiptSub, stream_sequence: u64) -> pb::Receipt {
    sub.receipt(stream_sequence).await
}

async fn lookup(nats: &Nats, agency: &str, event_id: &str) -> pb::LookupReply {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let req = pb::LookupRequest {
        event_id: event_id.into(),
    };
    let reply = client
        .request(
            format!("lianxi.v1.lookup.{agency}"),
            req.encode_to_vec().into(),
        )
        .await
        .expect("a lookup answer");
    pb::LookupReply::decode(reply.payload.as_ref()).expect("a lookup reply")
}

#[tokio::test]
async fn police_and_court_using_one_event_id_each_get_their_own_case_and_receipt() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;
    let mut police_receipts = receipts_of(&nats, "police").await;
    let mut court_receipts = receipts_of(&nats, "court").await;

    let police = opened("shared-1", "DV-POLICE-1", Agency::Police, T0);
    let court = opened("shared-1", "DV-COURT-1", Agency::Court, T0 + 60);
    // Each agency's own message id on the bus: the event id alone would let
    // JetStream drop the court's message as the police's duplicate.
    let p = publish_raw(&js, &subject(&police), police.encode_to_vec()).await;
    let c = publish_raw(&js, &subject(&court), court.encode_to_vec()).await;
    let pr = receipt_for(&mut police_receipts, p).await;
    let cr = receipt_for(&mut court_receipts, c).await;
    assert_eq!(
        (pr.status, pr.case_id.as_str()),
        (pb::ReceiptStatus::Accepted as i32, "DV-POLICE-1")
    );
    // Before the fix: DUPLICATE, carrying the police's case id and sequence.
    assert_eq!(
        (cr.status, cr.case_id.as_str(), cr.case_sequence),
        (pb::ReceiptStatus::Accepted as i32, "DV-COURT-1", 1),
        "{cr:?}"
    );
    let mut client = node.client().await;
    let reply = case_after(&mut client, "DV-COURT-1", c).await;
    assert_eq!(reply.view.unwrap().case_id, "DV-COURT-1");

    // Each agency's lookup of the id finds its own event only.
    let court_lookup = lookup(&nats, "court", "shared-1").await;
    let police_lookup = lookup(&nats, "police", "shared-1").await;
    assert!(court_lookup.found && police_lookup.found);
    assert_eq!(court_lookup.receipt.unwrap().case_id, "DV-COURT-1");
    assert_eq!(police_lookup.receipt.unwrap().case_id, "DV-POLICE-1");
    assert!(!lookup(&nats, "labour", "shared-1").await.found);

    // The court's re-send is the court's duplicate, of its own event.
    let again = publish_raw(&js, &subject(&court), court.encode_to_vec()).await;
    let dr = receipt_for(&mut court_receipts, again).await;
    assert_eq!(
        (dr.status, dr.case_id.as_str(), dr.original_global_sequence),
        (
            pb::ReceiptStatus::Duplicate as i32,
            "DV-COURT-1",
            cr.global_sequence
        )
    );
    let receipts = [
        (&pr, "DV-POLICE-1"),
        (&cr, "DV-COURT-1"),
        (&dr, "DV-COURT-1"),
    ];
    let count = |status: pb::ReceiptStatus| {
        receipts
            .iter()
            .filter(|(r, _)| r.status == status as i32)
            .count()
    };
    let crossed = receipts.iter().filter(|(r, own)| r.case_id != *own).count();
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST police_and_court_using_one_event_id_each_get_their_own_case_and_receipt: 2 agencies published event id shared-1 (+1 re-send): accepted {}, duplicates {} (of the court's own), receipts naming the other agency's case: {crossed}, lookups answered with the other agency's event: 0",
        count(pb::ReceiptStatus::Accepted),
        count(pb::ReceiptStatus::Duplicate),
    ));
}

#[tokio::test]
async fn messages_on_malformed_subjects_are_receipted_to_the_agency_of_their_token() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let principals = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/principals.example.toml"
    );
    let node = Node::start_with_env(
        &nats.url(),
        data.path(),
        &[("LIANXI_PRINCIPALS", principals)],
    );
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;
    let mut police_receipts = receipts_of(&nats, "police").await;
    let mut unknown = receipts_of(&nats, "unknown").await;
    let good = opened("m-1", "DV-E2E-M", Agency::Police, T0);

    let mut published = Vec::new();
    for subject in [
        "lianxi.v1.events.police.A.B",
        "lianxi.v1.events.police.DV-E2E-M.\u{7}",
        "lianxi.v1.events.police.C\u{7}1",
    ] {
        // The bus may refuse a subject outright; every one it stored must
        // be receipted to the police.
        let stored = async {
            js.publish(subject.to_owned(), good.encode_to_vec().into())
                .await
                .ok()?
                .await
                .ok()
        }
        .await;
        if let Some(ack) = stored {
            published.push((subject, ack.sequence));
        }
    }
    assert!(
        published.len() >= 2,
        "the bus stored too few malformed subjects: {published:?}"
    );
    for (subject, seq) in &published {
        let r = receipt_for(&mut police_receipts, *seq).await;
        assert_eq!(r.status, pb::ReceiptStatus::Rejected as i32, "{subject:?}");
        assert_eq!(r.agency, Agency::Police as i32, "{subject:?}");
        assert_eq!(r.code, pb::RejectionCode::BadSubject as i32, "{subject:?}");
        assert!(
            !r.reason.contains('\u{7}') && !r.subject.contains('\u{7}'),
            "{r:?}"
        );
    }
    // ListRejections by agency includes them: the police's own listing, at
    // the terminal, escaped.
    let env = [
        ("LIANXI_GRPC_ADDR", node.grpc_addr.as_str()),
        ("LIANXI_TOKEN", "dev-only-police-token"),
    ];
    let (ok, out, err) = lianxi(&["rejections"], &env);
    assert!(ok, "{out} {err}");
    for (_, seq) in &published {
        assert!(out.contains(&format!("#{seq} ")), "{seq} not listed: {out}");
    }
    assert!(!out.contains('\u{7}'), "{out:?}");
    // Nothing went to `unknown`.
    use tokio_stream::StreamExt;
    let stray = tokio::time::timeout(Duration::from_millis(300), unknown.sub.next()).await;
    assert!(
        stray.is_err(),
        "a receipt went to lianxi.v1.receipts.unknown"
    );
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST messages_on_malformed_subjects_are_receipted_to_the_agency_of_their_token: {} messages on malformed police subjects: receipted to police {}, to unknown 0, listed for police {}",
        published.len(),
        published.len(),
        published.len()
    ));
}

fn token_of(r: &pb::Receipt) -> &'static str {
    match Agency::try_from(r.agency).unwrap_or(Agency::Unspecified) {
        Agency::Police => "police",
        Agency::Court => "court",
        Agency::Labour => "labour",
        Agency::WomensFederation => "womens_federation",
        Agency::CivilAffairs => "civil_affairs",
        Agency::JusticeBureau => "justice_bureau",
        Agency::PoliticalLegalCommittee => "political_legal_committee",
        Agency::Unspecified => "unknown",
    }
}

/// Each stored batch holds one agency's receipts, on its subject, in
/// stream order, under `receipts-<agency>-<first>-<last>`.
fn assert_batches_well_formed(batches: &[support::StoredBatch]) {
    for b in batches {
        assert!(!b.receipts.is_empty(), "an empty batch: {b:?}");
        let agency = token_of(&b.receipts[0]);
        assert_eq!(b.subject, format!("lianxi.v1.receipts.{agency}"));
        assert!(
            b.receipts.iter().all(|r| token_of(r) == agency),
            "another agency's receipt in {b:?}"
        );
        assert!(
            b.receipts
                .windows(2)
                .all(|w| w[0].stream_sequence < w[1].stream_sequence),
            "not in stream order: {b:?}"
        );
        let (first, last) = (
            b.receipts[0].stream_sequence,
            b.receipts[b.receipts.len() - 1].stream_sequence,
        );
        assert_eq!(b.message_id, format!("receipts-{agency}-{first}-{last}"));
    }
}

#[tokio::test]
async fn a_group_from_several_agencies_is_one_receipt_batch_per_agency() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    // A long wait for more events: what is published together is one group.
    let _node = Node::start_with_env(
        &nats.url(),
        data.path(),
        &[("LIANXI_BATCH_DELAY_MS", "1500")],
    );
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;

    let mut messages: Vec<(String, Vec<u8>)> = [
        opened("b-p1", "DV-B-P1", Agency::Police, T0),
        opened("b-c1", "DV-B-C1", Agency::Court, T0),
        opened("b-l1", "DV-B-L1", Agency::Labour, T0),
        opened("b-p2", "DV-B-P2", Agency::Police, T0),
        opened("b-c1", "DV-B-C1", Agency::Court, T0), // the court's duplicate
        opened("b-p3", "DV-B-P3", Agency::Police, T0),
    ]
    .iter()
    .map(|e| (subject(e), e.encode_to_vec()))
    .collect();
    // A subject that names no agency: receipted to `unknown`.
    messages.insert(4, ("lianxi.v1.events.nobody.DV-B-X".into(), b"x".to_vec()));
    let mut acks = Vec::new();
    for (i, (subject, payload)) in messages.iter().enumerate() {
        acks.push(
            js.send_publish(
                subject.clone(),
                async_nats::jetstream::message::PublishMessage::build()
                    .payload(payload.clone().into())
                    .message_id(format!("batch-test-{i}")),
            )
            .await
            .expect("publish"),
        );
    }
    let mut seqs = Vec::new();
    for ack in acks {
        seqs.push(ack.await.expect("stored").sequence);
    }
    assert_eq!(seqs, (1..=7).collect::<Vec<u64>>());
    let all = support::eventually(Duration::from_secs(30), || async {
        support::receipted_messages(&js).await == 7
    })
    .await;
    assert!(all, "not every message was receipted");

    let batches = support::receipt_batches_in_stream(&js).await;
    assert_batches_well_formed(&batches);
    let shape: Vec<(&str, Vec<u64>)> = batches
        .iter()
        .map(|b| {
            (
                b.subject.as_str(),
                b.receipts.iter().map(|r| r.stream_sequence).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("lianxi.v1.receipts.police", vec![1, 4, 7]),
            ("lianxi.v1.receipts.court", vec![2, 6]),
            ("lianxi.v1.receipts.labour", vec![3]),
            ("lianxi.v1.receipts.unknown", vec![5]),
        ],
        "one message per agency of the group"
    );
    let court = &batches[1].receipts;
    assert_eq!(court[0].status, pb::ReceiptStatus::Accepted as i32);
    assert_eq!(court[1].status, pb::ReceiptStatus::Duplicate as i32);
    assert_eq!(
        batches[3].receipts[0].status,
        pb::ReceiptStatus::Rejected as i32
    );
    for r in batches.iter().flat_map(|b| &b.receipts) {
        assert!(
            r.durability.as_ref().is_some_and(|d| d.node_flushed),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn after_a_restart_with_receipts_unacknowledged_each_receipt_reaches_the_agency_once() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(&nats.url(), data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;
    let url = nats.url();
    let client = |agency| {
        let url = url.clone();
        async move {
            lianxi_client::Client::connect(&url, lianxi_client::Options::for_agency(agency))
                .await
                .expect("connect")
        }
    };
    let police = client(Agency::Police).await;
    let court = client(Agency::Court).await;

    // Two rounds, so each agency's receipts went out in several batches.
    let mut published: HashMap<&str, Vec<String>> = HashMap::new();
    for round in 0..2 {
        let p: Vec<pb::Event> = (0..3)
            .map(|i| {
                opened(
                    &format!("u-p{round}{i}"),
                    &format!("DV-U-P{round}{i}"),
                    Agency::Police,
                    T0,
                )
            })
            .collect();
        let c: Vec<pb::Event> = (0..2)
            .map(|i| {
                opened(
                    &format!("u-c{round}{i}"),
                    &format!("DV-U-C{round}{i}"),
                    Agency::Court,
                    T0,
                )
            })
            .collect();
        let (pr, cr) = tokio::join!(police.publish_all(p.clone()), court.publish_all(c.clone()));
        for r in pr.iter().chain(&cr) {
            let r = r.as_ref().expect("a receipt");
            assert_eq!(r.status, pb::ReceiptStatus::Accepted as i32, "{r:?}");
        }
        published
            .entry("police")
            .or_default()
            .extend(p.into_iter().map(|e| e.event_id));
        published
            .entry("court")
            .or_default()
            .extend(c.into_iter().map(|e| e.event_id));
    }
    let all = support::eventually(Duration::from_secs(30), || async {
        support::receipted_messages(&js).await == 10
    })
    .await;
    assert!(all);
    let before = support::receipt_batches_in_stream(&js).await;
    assert!(
        before.iter().all(|b| b.receipts.len() < 6),
        "each agency's receipts should have gone out in several batches: {before:?}"
    );

    // The node stops; its record of what the bus acknowledged is lost (as
    // when it crashes between the bus's acknowledgement and its own write).
    // On restart it sends everything again from the log, in one batch per
    // agency: new boundaries, so the bus keeps the copies.
    assert!(node.stop().success());
    {
        let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
        assert_eq!(log.receipts_sent().unwrap(), 10);
        log.set_receipts_sent(0).unwrap();
    }
    let _node = Node::start(&nats.url(), data.path());
    let resent = support::eventually(Duration::from_secs(30), || async {
        support::receipt_batches_in_stream(&js).await.len() == before.len() + 2
    })
    .await;
    let after = support::receipt_batches_in_stream(&js).await;
    assert!(
        resent,
        "{} batches before, {} after",
        before.len(),
        after.len()
    );
    assert_batches_well_formed(&after);
    let (receipts, _) = support::receipts_in_stream(&js).await;
    assert_eq!(receipts.len(), 20, "every receipt twice on the bus");

    // Each agency reads what it missed: every receipt of its own once, the
    // copies dropped; the police in one call, the court one at a time.
    let mut seen: HashMap<&str, Vec<String>> = HashMap::new();
    for (name, c, max) in [("police", &police, 100), ("court", &court, 1)] {
        loop {
            let missed = c
                .missed_receipts(max, Duration::from_secs(2))
                .await
                .expect("missed receipts");
            if missed.is_empty() {
                break;
            }
            assert!(missed.len() <= max);
            for m in &missed {
                assert_eq!(token_of(&m.receipt), name);
                seen.entry(name)
                    .or_default()
                    .push(m.receipt.event_id.clone());
                m.ack().await.expect("ack");
            }
        }
        assert_eq!(
            seen[name], published[name],
            "{name}: each receipt once, in order"
        );
        let info = js
            .get_stream("LIANXI_RECEIPTS")
            .await
            .unwrap()
            .consumer_info(name)
            .await
            .unwrap()
            .clone();
        assert_eq!(
            (info.num_pending, info.num_ack_pending),
            (0, 0),
            "{name}: every batch acknowledged, the copies too"
        );
    }
}

#[tokio::test]
async fn bytes_on_a_receipts_subject_that_are_no_batch_are_skipped_by_the_client() {
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let _node = Node::start(&nats.url(), data.path());
    let js = nats.jetstream().await;
    wait_for_stream(&js).await;
    let police = lianxi_client::Client::connect(
        &nats.url(),
        lianxi_client::Options::for_agency(Agency::Police),
    )
    .await
    .unwrap();
    // On the development server anyone may publish there: garbage, and a
    // bare receipt (the format before batches), live and into the stream.
    let bare = pb::Receipt {
        status: pb::ReceiptStatus::Accepted as i32,
        event_id: "forged".into(),
        stream_sequence: 1,
        agency: Agency::Police as i32,
        ..Default::default()
    };
    for payload in [b"\xff\xff not protobuf".to_vec(), bare.encode_to_vec()] {
        js.publish("lianxi.v1.receipts.police", payload.into())
            .await
            .unwrap()
            .await
            .expect("stored in LIANXI_RECEIPTS");
    }
    // The client still gets its receipts, live and from its consumer.
    let e = opened("skip-1", "DV-SKIP-1", Agency::Police, T0);
    let r = police.publish(&e).await.expect("a receipt");
    assert_eq!(r.status, pb::ReceiptStatus::Accepted as i32);
    assert_eq!(r.stream_sequence, 1);
    let missed = police
        .missed_receipts(10, Duration::from_secs(1))
        .await
        .expect("missed receipts");
    let ids: Vec<&str> = missed.iter().map(|m| m.receipt.event_id.as_str()).collect();
    assert_eq!(ids, ["skip-1"]);
    missed[0].ack().await.unwrap();
    let info = js
        .get_stream("LIANXI_RECEIPTS")
        .await
        .unwrap()
        .consumer_info("police")
        .await
        .unwrap()
        .clone();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}
