//! Erasable personal data, end to end: personal values are sealed before
//! they reach the log; an erasure destroys the case key, purges the bus and
//! leaves a log that still verifies, on two nodes that agree on the root;
//! and the plaintext is found nowhere in the nodes' data directories or the
//! JetStream store. Real nats-server, real nodes, real files.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    self as pb, Agency, Event, GetCaseRequest, GetTimelineRequest, PersonalDataState, Redaction,
    event::Body,
};
use support::{Nats, Node, case_after, lianxi, publish};

const T0: i64 = 1_793_000_000; // 2026-10-26

/// Values that must never be found on disk once sealed (node) or erased
/// (bus).
const SECRETS: &[&str] = &[
    "P-SECRET-4711",
    "Wang Secretname",
    "13912345678",
    "88 Hidden Lane",
    "Little Plumblossom",
    "Respondent Zhao Hiddenname",
    "Teacher Reportername",
    // In a message on the case's subject that is not an event at all: the
    // rejection record must not keep it in the clear either.
    UNDECODABLE,
];
/// A name inside bytes that do not decode, published on the case's subject
/// before the erasure.
const UNDECODABLE: &str = "Undecodable Nameperson";
/// A name inside bytes that do not decode, published on the case's subject
/// after the erasure: the bus keeps it (it came later), the nodes must not.
const LATE: &str = "Late Undecodablename";

/// Bytes that are not a protobuf event, carrying `name`.
fn garbage(name: &str) -> Vec<u8> {
    [&[0xff, 0xff][..], b"person: ", name.as_bytes(), &[0xff]].concat()
}

async fn publish_raw(js: &async_nats::jetstream::Context, subject: &str, payload: Vec<u8>) -> u64 {
    js.publish(subject.to_owned(), payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored by JetStream")
        .sequence
}
/// The other case's values: sealed in the log, still on the bus.
const KEPT: &str = "Kept Personname";

fn event(id: &str, case: &str, agency: Agency, t: i64, body: Body) -> Event {
    Event {
        event_id: id.into(),
        case_id: case.into(),
        agency: agency as i32,
        occurred_at: Some(Timestamp {
            seconds: T0 + t,
            nanos: 0,
        }),
        corrects_event_id: None,
        body: Some(body),
    }
}

/// An opening by police with every kind of personal value. `secret` picks
/// the erased case's values; otherwise each value is the kept name with a
/// suffix, so nothing of the erased case is shared with the kept one.
fn opening(id: &str, case: &str, secret: bool) -> Event {
    let v = |s: &str, k: &str| {
        if secret {
            s.to_owned()
        } else {
            format!("{KEPT} {k}")
        }
    };
    event(
        id,
        case,
        Agency::Police,
        0,
        Body::CaseOpened(pb::CaseOpened {
            channel: pb::Channel::MandatoryReport as i32,
            category: pb::Category::DomesticViolence as i32,
            jurisdiction: "330100/330106".into(),
            level: pb::Level::County as i32,
            person_ref: v("P-SECRET-4711", "ref"),
            summary: "a school reported injuries".into(),
            mandatory_reporter: v("Teacher Reportername", "reporter"),
            person: Some(pb::Person {
                name: v("Wang Secretname", "name"),
                id_number: String::new(),
                phone: v("13912345678", "phone"),
                address: v("88 Hidden Lane", "address"),
            }),
            children: vec![pb::Child {
                name: v("Little Plumblossom", "child"),
                birth_date: "2017-05-01".into(),
                note: String::new(),
            }],
        }),
    )
}

/// Every file under `dir` that contains `needle`.
/// The files under `dir` holding `needle`, as strings for the assertion's
/// message.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    support::files_containing(dir, needle.as_bytes())
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

async fn root(node: &Node) -> (u64, Vec<u8>) {
    let mut audit = pb::audit_client::AuditClient::connect(format!("http://{}", node.grpc_addr))
        .await
        .unwrap();
    let head = audit
        .get_tree_head(pb::GetTreeHeadRequest { tree_size: 0 })
        .await
        .unwrap()
        .into_inner();
    (head.tree_size, head.root_hash)
}

async fn timeline(node: &Node, case: &str) -> Vec<pb::TimelineEntry> {
    node.client()
        .await
        .get_timeline(GetTimelineRequest {
            case_id: case.into(),
            after_case_sequence: 0,
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries
}

#[tokio::test]
async fn an_erased_case_verifies_agrees_across_nodes_and_leaves_no_plaintext() {
    let nats = Nats::start();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::start(&nats.url(), a_dir.path());
    let b = Node::start(&nats.url(), b_dir.path());
    let js = nats.jetstream().await;
    for _ in 0..500 {
        if js.get_stream("LIANXI_EVENTS").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let first = publish(&js, &opening("e-1", "ERASE-1", true)).await;
    let warning = event(
        "e-2",
        "ERASE-1",
        Agency::Police,
        60,
        Body::WrittenWarningIssued(pb::WrittenWarningIssued {
            warning_id: "w-1".into(),
            respondent_ref: "Respondent Zhao Hiddenname".into(),
            grounds: "threats".into(),
        }),
    );
    let second = publish(&js, &warning).await;
    let third = publish_raw(&js, "lianxi.v1.events.police.ERASE-1", garbage(UNDECODABLE)).await;
    let last = publish(&js, &opening("k-1", "KEEP-1", false)).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    case_after(&mut ca, "KEEP-1", last).await;
    case_after(&mut cb, "KEEP-1", last).await;

    // A development node shows everything, decrypted, to its local caller.
    let view = ca
        .get_case(GetCaseRequest {
            case_id: "ERASE-1".into(),
            now: None,
        })
        .await
        .unwrap()
        .into_inner()
        .view
        .unwrap();
    assert_eq!(view.person_ref, "P-SECRET-4711");
    assert_eq!(view.mandatory_reporter, "Teacher Reportername");
    let lines = timeline(&a, "ERASE-1").await;
    let Some(Body::CaseOpened(o)) = lines[0].event.as_ref().and_then(|e| e.body.clone()) else {
        panic!("the first entry is the opening: {lines:?}");
    };
    assert_eq!(o.person.unwrap().name, "Wang Secretname");
    assert_eq!(o.children[0].name, "Little Plumblossom");
    assert!(lines[0].withheld.is_empty(), "{:?}", lines[0].withheld);

    // The nodes never wrote the values: only the bus has them so far.
    for dir in [a_dir.path(), b_dir.path()] {
        for s in SECRETS.iter().chain([&KEPT]) {
            assert_eq!(files_containing(dir, s), Vec::<String>::new(), "{s}");
        }
    }
    let before = root(&a).await;
    assert_eq!(before, root(&b).await, "same stream, same root");

    let erase = event(
        "x-1",
        "ERASE-1",
        Agency::PoliticalLegalCommittee,
        120,
        Body::PersonalDataErased(pb::PersonalDataErased {
            legal_basis: "request of the person".into(),
            authorised_by: "plc-staff-3".into(),
        }),
    );
    let erased_at = publish(&js, &erase).await;
    let view = case_after(&mut ca, "ERASE-1", erased_at)
        .await
        .view
        .unwrap();
    case_after(&mut cb, "ERASE-1", erased_at).await;
    assert_eq!(view.personal_data, PersonalDataState::Erased as i32);
    assert!(view.person_ref.is_empty());
    assert!(
        view.personal
            .iter()
            .all(|s| s.redaction == Redaction::Erased as i32 && s.ciphertext.is_empty()),
        "{:?}",
        view.personal
    );
    // An undecodable message on the erased case's subject, after the
    // erasure: rejected, and nothing of it kept by the nodes.
    let late = publish_raw(&js, "lianxi.v1.events.police.ERASE-1", garbage(LATE)).await;
    let marker = publish(
        &js,
        &event(
            "k-2",
            "KEEP-1",
            Agency::Police,
            180,
            Body::ProgressReported(pb::ProgressReported {
                summary: "called".into(),
            }),
        ),
    )
    .await;
    assert!(marker > late);
    case_after(&mut ca, "KEEP-1", marker).await;
    case_after(&mut cb, "KEEP-1", marker).await;
    let lines = timeline(&a, "ERASE-1").await;
    assert_eq!(lines.len(), 3, "the events stay; only their values go");
    assert_eq!(lines[2].kind, "personal_data_erased");
    assert!(
        lines[1]
            .withheld
            .iter()
            .any(|s| s.path == "written_warning_issued.respondent_ref"
                && s.redaction == Redaction::Erased as i32)
    );
    // The other case is untouched.
    let kept = timeline(&a, "KEEP-1").await;
    let Some(Body::CaseOpened(k)) = kept[0].event.as_ref().and_then(|e| e.body.clone()) else {
        panic!("KEEP-1 opening: {kept:?}");
    };
    assert_eq!(k.person.unwrap().name, format!("{KEPT} name"));

    // Both nodes agree, and the log still verifies end to end.
    let after = root(&a).await;
    assert_eq!(
        after.0,
        before.0 + 2,
        "the erasure is itself an entry (and so is KEEP-1's progress report)"
    );
    assert_eq!(after, root(&b).await);
    let (ok, out, err) = lianxi(
        &["verify", "--node", &a.grpc_addr, "--compare", &b.grpc_addr],
        &[],
    );
    assert!(ok, "{out}\n{err}");

    // The bus keeps no message of the case before the erasure.
    let stream = js.get_stream("LIANXI_EVENTS").await.unwrap();
    // (The late undecodable message came after the erasure and stays.)
    let started = Instant::now();
    for seq in [first, second, third] {
        while stream.get_raw_message(seq).await.is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the case's message {seq} was not purged from the stream"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        stream
            .get_last_raw_message_by_subject("lianxi.v1.events.political_legal_committee.ERASE-1")
            .await
            .is_ok(),
        "the erasure event itself stays on the bus"
    );

    // Stop everything and read the files.
    assert!(a.stop().success());
    assert!(b.stop().success());
    let stopped = nats.stop();
    let store = &stopped.store;
    for dir in [a_dir.path(), b_dir.path()] {
        assert_eq!(files_containing(dir, LATE), Vec::<String>::new(), "{LATE}");
        let log = lianxi_log::Log::open(dir, lianxi_domain::Policy::default()).unwrap();
        let kept = log.rejections(0, 100).unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        // Before the erasure: sealed under the (now destroyed) case key.
        assert!(kept[0].raw.is_empty() && kept[0].sealed_raw.is_some());
        // After it: nothing kept but the length and the reason.
        assert_eq!(kept[1].stream_sequence, late);
        assert!(kept[1].raw.is_empty() && kept[1].sealed_raw.is_none() && kept[1].raw_withheld);
    }
    // The late message itself is on the bus (it came after the erasure).
    assert!(!files_containing(store.path(), LATE).is_empty());
    for s in SECRETS {
        for dir in [a_dir.path(), b_dir.path(), store.path()] {
            assert_eq!(
                files_containing(dir, s),
                Vec::<String>::new(),
                "{s} in {}",
                dir.display()
            );
        }
    }
    // The scan does find what is still there: the kept case's bus copy.
    assert!(!files_containing(store.path(), KEPT).is_empty());

    // Restart, rebuild and verify offline; then serve again: still erased,
    // same root.
    let data = a_dir.path().to_str().unwrap();
    let (ok, out, err) = lianxi(&["rebuild", "--data-dir", data], &[]);
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = lianxi(&["verify", "--data-dir", data], &[]);
    assert!(ok, "{out}\n{err}");
    let nats = Nats::restart(stopped);
    let a = Node::start(&nats.url(), a_dir.path());
    let view = a
        .client()
        .await
        .get_case(GetCaseRequest {
            case_id: "ERASE-1".into(),
            now: None,
        })
        .await
        .unwrap()
        .into_inner()
        .view
        .unwrap();
    assert_eq!(view.personal_data, PersonalDataState::Erased as i32);
    assert!(view.person_ref.is_empty());
    assert_eq!(root(&a).await, after);
    for s in SECRETS {
        assert_eq!(
            files_containing(a_dir.path(), s),
            Vec::<String>::new(),
            "{s}"
        );
    }
}
