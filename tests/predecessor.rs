//! An event that arrives before the earlier event of its case it depends on
//! (another agency's, still on its way) is rejected PREDECESSOR_MISSING; the
//! client library publishes it again until the earlier event is in the log,
//! and the sender ends with an accepted receipt. Real nats-server with the
//! shipped development configuration, the real node.
//!
//! Needs a node that emits REJECTION_CODE_PREDECESSOR_MISSING (branch h2);
//! register it in services/lianxi/Cargo.toml once that is merged.

mod support;

use std::time::{Duration, Instant};

use lianxi_proto::v1::{self as pb, Agency, ReceiptStatus, RejectionCode, event::Body};
use support::{Node, event_at as event, shipped_conf};

const T0: i64 = 1_793_000_000; // 2026-10-26

#[tokio::test]
async fn an_event_ahead_of_another_agencys_earlier_event_is_re_sent_until_it_lands() {
    let nats = support::Nats::start_with_config(&shipped_conf("lianxi-dev.conf"), &[]);
    let data = tempfile::tempdir().unwrap();
    let node = Node::start_with_env(&nats.url(), data.path(), &[("LIANXI_BUS_SYNC", "always")]);
    let js = nats.jetstream().await;
    let started = Instant::now();
    while js.get_stream("LIANXI_EVENTS").await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wf = lianxi_client::Client::connect(
        &nats.url(),
        lianxi_client::Options::for_agency(Agency::WomensFederation),
    )
    .await
    .unwrap();
    let police = lianxi_client::Client::connect(
        &nats.url(),
        lianxi_client::Options::for_agency(Agency::Police),
    )
    .await
    .unwrap();
    let case = "PRED-1";
    let open = support::wf_opened("pred-1", case, T0);
    let r = wf.publish(&open).await.unwrap();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    // The police is involved in the case through a first referral.
    let first = event(
        "pred-r0",
        case,
        Agency::WomensFederation,
        T0 + 30,
        Body::ReferralIssued(pb::ReferralIssued {
            referral_id: "R0".into(),
            to_agency: Agency::Police as i32,
            reason: "threats".into(),
            due_at: None,
            transfer_lead: false,
        }),
    );
    let r = wf.publish(&first).await.unwrap();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    let refer = event(
        "pred-2",
        case,
        Agency::WomensFederation,
        T0 + 60,
        Body::ReferralIssued(pb::ReferralIssued {
            referral_id: "R1".into(),
            to_agency: Agency::Police as i32,
            reason: "violence at home".into(),
            due_at: None,
            transfer_lead: false,
        }),
    );
    let accept = event(
        "pred-3",
        case,
        Agency::Police,
        T0 + 120,
        Body::ReferralAccepted(pb::ReferralAccepted {
            referral_id: "R1".into(),
            note: String::new(),
        }),
    );

    // Without re-sending, the police's acceptance is rejected: the referral
    // is not in the log yet.
    let once = lianxi_client::Client::connect(
        &nats.url(),
        lianxi_client::Options {
            predecessor_wait: Duration::ZERO,
            ..lianxi_client::Options::for_agency(Agency::Police)
        },
    )
    .await
    .unwrap();
    let early = event(
        "pred-0",
        case,
        Agency::Police,
        T0 + 90,
        accept.body.clone().unwrap(),
    );
    let r = once.publish(&early).await.unwrap();
    assert_eq!(
        (r.status, r.code),
        (
            ReceiptStatus::Rejected as i32,
            RejectionCode::PredecessorMissing as i32
        ),
        "{r:?}"
    );

    // With the defaults, the police's acceptance goes out first and the
    // women's federation's referral two seconds later: the library keeps
    // re-sending the acceptance until it lands.
    let sent = Instant::now();
    let accepting = tokio::spawn(async move { police.publish(&accept).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = wf.publish(&refer).await.unwrap();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    let r = accepting.await.unwrap().unwrap();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    assert_eq!(r.case_sequence, 4);
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_secs(2));

    // The log holds the acceptance once, after the referral.
    assert!(node.stop().success());
    let log = lianxi_log::Log::open(data.path(), lianxi_domain::Policy::default()).unwrap();
    let ids: Vec<String> = log
        .case_entries(case, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.event.unwrap().event_id)
        .collect();
    assert_eq!(ids, ["pred-1", "pred-r0", "pred-2", "pred-3"]);
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST an_event_ahead_of_another_agencys_earlier_event_is_re_sent_until_it_lands: \
         police acceptance published 2 s before the referral it accepts; re-sent by the client \
         until accepted after {:.1} s; case entries 4 in order, rejected in the end 0",
        waited.as_secs_f64()
    ));
    drop(nats);
}
