//! Model-based tests: random streams of good, bad and duplicate events, fed
//! in random groups with restarts and re-deliveries, checked against a plain
//! in-memory model and against a rebuild from the log.

use std::collections::{BTreeMap, HashMap};

use lianxi_proto::v1::{self as pb, Agency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const AGENCIES: [Agency; 7] = lianxi_domain::ALL_AGENCIES;

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn subject_for(e: &Event) -> String {
    lianxi_domain::event_subject(e).unwrap_or_else(|_| "lianxi.v1.events.nobody.x".into())
}

/// Generates a plausible, messy stream: mostly sensible events, some that
/// break rules, some duplicates, some garbage.
struct Gen {
    rng: StdRng,
    clock: i64,
    n: u64,
    sent: Vec<Event>,
    referrals: Vec<(String, String, Agency)>,
    actions: Vec<(String, String, Agency)>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            clock: 1_780_000_000,
            n: 0,
            sent: Vec::new(),
            referrals: Vec::new(),
            actions: Vec::new(),
        }
    }

    fn agency(&mut self) -> Agency {
        AGENCIES[self.rng.random_range(0..AGENCIES.len())]
    }

    fn case(&mut self) -> String {
        format!("C-{}", self.rng.random_range(0..6))
    }

    fn next(&mut self) -> (String, Vec<u8>) {
        self.n += 1;
        self.clock += self.rng.random_range(60..86_400);
        let roll = self.rng.random_range(0..100);
        if roll < 3 {
            return ("lianxi.v1.events.police.C-1".into(), vec![0xff, 0x01, 0x02]);
        }
        if roll < 8 && !self.sent.is_empty() {
            let i = self.rng.random_range(0..self.sent.len());
            let e = self.sent[i].clone();
            return (subject_for(&e), e.encode_to_vec());
        }
        let case_id = self.case();
        let mut agency = self.agency();
        let body = match self.rng.random_range(0..11) {
            0 | 1 => pb::event::Body::CaseOpened(pb::CaseOpened {
                channel: pb::Channel::Hotline12338 as i32,
                category: pb::Category::DomesticViolence as i32,
                jurisdiction: "city/a".into(),
                level: pb::Level::County as i32,
                person_ref: format!("P-{}", self.rng.random_range(0..3)),
                summary: "reported by phone".into(),
                mandatory_reporter: String::new(),
            }),
            2 => pb::event::Body::RiskAssessed(pb::RiskAssessed {
                level: self.rng.random_range(1..4),
                score: self.rng.random_range(0..100),
                factors: vec![],
            }),
            3 => {
                let rid = format!("r-{}", self.n);
                let to = self.agency();
                self.referrals.push((case_id.clone(), rid.clone(), to));
                pb::event::Body::ReferralIssued(pb::ReferralIssued {
                    referral_id: rid,
                    to_agency: to as i32,
                    reason: "needs help".into(),
                    due_at: None,
                    transfer_lead: self.rng.random_bool(0.3),
                })
            }
            4 | 5 if !self.referrals.is_empty() => {
                let i = self.rng.random_range(0..self.referrals.len());
                let (c, rid, to) = self.referrals[i].clone();
                if self.rng.random_bool(0.8) {
                    agency = to;
                }
                let accept = self.rng.random_bool(0.7);
                return self.finish(
                    c,
                    agency,
                    if accept {
                        pb::event::Body::ReferralAccepted(pb::ReferralAccepted {
                            referral_id: rid,
                            note: String::new(),
                        })
                    } else {
                        pb::event::Body::ReferralReturned(pb::ReferralReturned {
                            referral_id: rid,
                            reason: "not ours".into(),
                        })
                    },
                );
            }
            6 => {
                let aid = format!("a-{}", self.n);
                let owner = self.agency();
                agency = Agency::PoliticalLegalCommittee;
                self.actions.push((case_id.clone(), aid.clone(), owner));
                pb::event::Body::ActionAgreed(pb::ActionAgreed {
                    action_id: aid,
                    owner: owner as i32,
                    description: "visit the family".into(),
                    due_at: Some(ts(self.clock + 7 * 86_400)),
                })
            }
            7 if !self.actions.is_empty() => {
                let i = self.rng.random_range(0..self.actions.len());
                let (c, aid, owner) = self.actions[i].clone();
                return self.finish(
                    c,
                    owner,
                    pb::event::Body::ActionReported(pb::ActionReported {
                        action_id: aid,
                        outcome: pb::ActionOutcome::Done as i32,
                        note: String::new(),
                    }),
                );
            }
            8 => pb::event::Body::CaseClosed(pb::CaseClosed {
                outcome: pb::ClosureOutcome::Resolved as i32,
                summary: "done".into(),
            }),
            9 => pb::event::Body::CaseReopened(pb::CaseReopened {
                reason: "new incident".into(),
            }),
            _ => pb::event::Body::ProgressReported(pb::ProgressReported {
                summary: "called her back".into(),
            }),
        };
        self.finish(case_id, agency, body)
    }

    fn finish(
        &mut self,
        case_id: String,
        agency: Agency,
        body: pb::event::Body,
    ) -> (String, Vec<u8>) {
        let e = Event {
            event_id: format!("e-{}", self.n),
            case_id,
            agency: agency as i32,
            occurred_at: Some(ts(self.clock)),
            corrects_event_id: None,
            body: Some(body),
        };
        self.sent.push(e.clone());
        let mut subject = subject_for(&e);
        if self.rng.random_range(0..40) == 0 {
            subject = subject.replace("police", "court");
        }
        (subject, e.encode_to_vec())
    }
}

/// The plain model: a map of views, a set of ids, a person index.
#[derive(Default)]
struct Model {
    views: BTreeMap<String, CaseView>,
    ids: HashMap<String, Event>,
    persons: HashMap<String, PriorCase>,
    global: u64,
    accepted: u64,
    rejected: u64,
    duplicates: u64,
}

impl Model {
    fn apply(&mut self, policy: &Policy, m: &Incoming) {
        let Ok(event) = Event::decode(m.payload.as_slice()) else {
            self.rejected += 1;
            return;
        };
        if m.payload.len() > MAX_EVENT_BYTES
            || lianxi_domain::check_envelope(&m.subject, &event).is_err()
        {
            self.rejected += 1;
            return;
        }
        if self.ids.contains_key(&event.event_id) {
            self.duplicates += 1;
            return;
        }
        let prior = person_key(&event)
            .and_then(|p| self.persons.get(p))
            .cloned();
        let ctx = Context {
            policy,
            prior_case: prior.as_ref(),
        };
        let view = self.views.get(&event.case_id).cloned();
        let corrected = event
            .corrects_event_id
            .as_ref()
            .and_then(|id| self.ids.get(id))
            .cloned();
        if lianxi_domain::decide(&ctx, view.as_ref(), &event, corrected.as_ref()).is_err() {
            self.rejected += 1;
            return;
        }
        self.global += 1;
        let meta = EntryMeta {
            global_sequence: self.global,
            case_sequence: view.as_ref().map_or(0, |v| v.case_sequence) + 1,
            recorded_at: m.recorded_at,
        };
        let new = lianxi_domain::apply(&ctx, view, &event, &meta);
        if let Some(p) = person_key(&event) {
            self.persons.insert(p.to_owned(), prior_of(&new));
        }
        self.views.insert(event.case_id.clone(), new);
        self.ids.insert(event.event_id.clone(), event);
        self.accepted += 1;
    }
}

fn stream(seed: u64, n: usize) -> Vec<Incoming> {
    let mut g = Gen::new(seed);
    (1..=n as u64)
        .map(|seq| {
            let (subject, payload) = g.next();
            Incoming {
                stream_sequence: seq,
                subject,
                recorded_at: ts(1_780_000_000 + seq as i64),
                payload,
            }
        })
        .collect()
}

fn model_bytes(m: &Model) -> Vec<(String, Vec<u8>)> {
    m.views
        .iter()
        .map(|(k, v)| (k.clone(), v.encode_to_vec()))
        .collect()
}

#[test]
fn random_streams_match_the_model_across_restarts_and_redeliveries() {
    for seed in 0..12u64 {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::default();
        let msgs = stream(seed, 400);
        let mut model = Model::default();
        let mut rng = StdRng::seed_from_u64(seed ^ 0xABCD);
        let mut log = Log::open(dir.path(), policy.clone()).unwrap();
        let mut pos = 0usize;
        let (mut acc, mut rej, mut dup) = (0u64, 0u64, 0u64);
        while pos < msgs.len() {
            // Restart: drop the log and open it again from disk.
            if rng.random_bool(0.1) {
                drop(log);
                log = Log::open(dir.path(), policy.clone()).unwrap();
            }
            // Re-delivery after a crash: the stream hands out again what the
            // node had already applied; it must change nothing.
            let back = rng.random_range(0..=pos.min(20));
            let size = rng.random_range(1..=50);
            let end = (pos + size).min(msgs.len());
            let report = log.append_group(&msgs[pos - back..end]).unwrap();
            for (seq, outcome) in &report.outcomes {
                let seq = *seq as usize;
                if seq <= pos {
                    assert_eq!(
                        outcome,
                        &EventOutcome::AlreadyProcessed,
                        "seed {seed} seq {seq}"
                    );
                    continue;
                }
                match outcome {
                    EventOutcome::Accepted { .. } => acc += 1,
                    EventOutcome::Rejected { .. } => rej += 1,
                    EventOutcome::Duplicate { .. } => dup += 1,
                    EventOutcome::AlreadyProcessed => {
                        panic!("seed {seed}: new message {seq} skipped")
                    }
                }
            }
            for m in &msgs[pos..end] {
                model.apply(&policy, m);
            }
            pos = end;
            assert_eq!(report.checkpoint.stream_sequence, pos as u64);
            assert_eq!(
                log.view_bytes().unwrap(),
                model_bytes(&model),
                "seed {seed} at {pos}"
            );
        }
        assert_eq!(
            (acc, rej, dup),
            (model.accepted, model.rejected, model.duplicates)
        );
        assert!(
            model.accepted > 50,
            "seed {seed}: stream too poor, {} accepted",
            model.accepted
        );
        assert!(model.rejected > 0 && model.duplicates > 0, "seed {seed}");

        let report = log.verify().unwrap();
        assert_eq!(report.entries, model.accepted);

        let incremental = log.view_bytes().unwrap();
        let rebuilt = log.rebuild().unwrap();
        assert_eq!(rebuilt.entries, model.accepted);
        assert_eq!(
            log.view_bytes().unwrap(),
            incremental,
            "seed {seed}: rebuild differs"
        );

        // Replaying the whole stream after a restart adds nothing.
        drop(log);
        let log = Log::open(dir.path(), policy.clone()).unwrap();
        let again = log.append_group(&msgs).unwrap();
        assert!(
            again
                .outcomes
                .iter()
                .all(|(_, o)| *o == EventOutcome::AlreadyProcessed)
        );
        assert_eq!(log.view_bytes().unwrap(), incremental);
        assert_eq!(
            log.rejections(0, usize::MAX).unwrap().len() as u64,
            model.rejected
        );
        assert_eq!(
            log.duplicates(0, usize::MAX).unwrap().len() as u64,
            model.duplicates
        );
    }
}

#[test]
fn two_logs_fed_the_same_stream_in_different_groupings_are_identical() {
    let msgs = stream(99, 300);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let la = Log::open(a.path(), Policy::default()).unwrap();
    let lb = Log::open(b.path(), Policy::default()).unwrap();
    la.append_group(&msgs).unwrap();
    for m in &msgs {
        lb.append_group(std::slice::from_ref(m)).unwrap();
    }
    assert_eq!(la.checkpoint(), lb.checkpoint());
    assert_eq!(la.view_bytes().unwrap(), lb.view_bytes().unwrap());
    let n = la.checkpoint().global_sequence;
    for g in 1..=n {
        assert_eq!(la.entry(g).unwrap(), lb.entry(g).unwrap());
    }
}

fn small_log() -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    log.append_group(&stream(7, 200)).unwrap();
    assert!(log.checkpoint().global_sequence > 10);
    (dir, log)
}

#[test]
fn verify_names_a_flipped_byte() {
    let (_d, log) = small_log();
    let key = keys::seq(keys::ENTRY, 5);
    let mut entry = log.entry(5).unwrap().unwrap();
    entry.event.as_mut().unwrap().event_id.push('x');
    log.tree().insert(key, entry.encode_to_vec()).unwrap();
    match log.verify() {
        Err(Error::Corruption {
            at: Location::Entry(5),
            detail,
        }) => {
            assert!(detail.contains("hash"), "{detail}")
        }
        other => panic!("expected corruption at entry 5, got {other:?}"),
    }
}

#[test]
fn verify_names_a_dropped_entry() {
    let (_d, log) = small_log();
    log.tree().remove(keys::seq(keys::ENTRY, 7)).unwrap();
    match log.verify() {
        Err(Error::Corruption {
            at: Location::Entry(7),
            detail,
        }) => {
            assert!(detail.contains("expected global sequence 7"), "{detail}")
        }
        other => panic!("expected corruption at entry 7, got {other:?}"),
    }
}

#[test]
fn verify_names_a_truncated_log() {
    let (_d, log) = small_log();
    let last = log.checkpoint().global_sequence;
    log.tree().remove(keys::seq(keys::ENTRY, last)).unwrap();
    assert!(matches!(
        log.verify(),
        Err(Error::Corruption {
            at: Location::Checkpoint,
            ..
        })
    ));
}

#[test]
fn case_entries_pages_through_one_case_only() {
    let (_d, log) = small_log();
    for (case, bytes) in log.view_bytes().unwrap() {
        let view = CaseView::decode(bytes.as_slice()).unwrap();
        let all = log.case_entries(&case, 0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, view.case_sequence);
        assert!(
            all.iter()
                .all(|e| e.event.as_ref().unwrap().case_id == case)
        );
        let page = log.case_entries(&case, 1, 2).unwrap();
        assert!(page.len() <= 2);
        if let Some(first) = page.first() {
            assert_eq!(first.case_sequence, 2);
        }
    }
}

#[test]
fn oversized_and_garbage_messages_are_kept_as_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let msgs = vec![
        Incoming {
            stream_sequence: 1,
            subject: "lianxi.v1.events.police.C-1".into(),
            recorded_at: ts(1),
            payload: vec![0u8; MAX_EVENT_BYTES + 1],
        },
        Incoming {
            stream_sequence: 2,
            subject: "lianxi.v1.events.police.C-1".into(),
            recorded_at: ts(2),
            payload: b"{\"not\":\"protobuf\"}".to_vec(),
        },
    ];
    let report = log.append_group(&msgs).unwrap();
    assert!(matches!(
        report.outcomes[0].1,
        EventOutcome::Rejected {
            code: RejectionCode::TooLarge,
            ..
        }
    ));
    assert!(matches!(
        report.outcomes[1].1,
        EventOutcome::Rejected { .. }
    ));
    let kept = log.rejections(0, 10).unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].raw_len, (MAX_EVENT_BYTES + 1) as u64);
    assert_eq!(kept[1].raw, msgs[1].payload);
    assert_eq!(log.checkpoint().stream_sequence, 2);
    assert_eq!(log.checkpoint().global_sequence, 0);
}

#[test]
fn every_processed_message_has_exactly_the_receipt_of_its_outcome() {
    use lianxi_proto::v1::ReceiptStatus;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let msgs = stream(5, 300);
    let report = log.append_group(&msgs).unwrap();
    for (seq, outcome) in &report.outcomes {
        let r = log
            .receipt(*seq)
            .unwrap()
            .expect("a receipt for every processed message");
        assert_eq!(r.stream_sequence, *seq);
        match outcome {
            EventOutcome::Accepted {
                event_id,
                global_sequence,
                hash,
                ..
            } => {
                assert_eq!(r.status, ReceiptStatus::Accepted as i32);
                assert_eq!(&r.event_id, event_id);
                assert_eq!(r.global_sequence, *global_sequence);
                assert_eq!(r.entry_hash, hex::encode(hash));
                let by_id = log.receipt_for_event(event_id).unwrap().unwrap();
                assert_eq!(by_id, r);
            }
            EventOutcome::Duplicate {
                original_global_sequence,
                ..
            } => {
                assert_eq!(r.status, ReceiptStatus::Duplicate as i32);
                assert_eq!(r.original_global_sequence, *original_global_sequence);
            }
            EventOutcome::Rejected { code, reason, .. } => {
                assert_eq!(r.status, ReceiptStatus::Rejected as i32);
                assert_eq!(r.code, *code as i32);
                assert_eq!(&r.reason, reason);
            }
            EventOutcome::AlreadyProcessed => panic!("fresh log"),
        }
    }
    assert_eq!(log.receipt(301).unwrap(), None);
    assert_eq!(log.receipt_for_event("never-sent").unwrap(), None);
    assert_eq!(log.receipts_sent().unwrap(), 0);
    log.set_receipts_sent(120).unwrap();
    drop(log);
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    assert_eq!(log.receipts_sent().unwrap(), 120);
}

#[test]
fn a_case_as_of_any_sequence_equals_the_view_it_had_then() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    // The view of each case right after each accepted entry, as stored.
    let mut snapshots: Vec<(String, u64, Vec<u8>)> = Vec::new();
    for m in stream(13, 400) {
        let report = log.append_group(std::slice::from_ref(&m)).unwrap();
        if let Some((
            _,
            EventOutcome::Accepted {
                case_id,
                global_sequence,
                ..
            },
        )) = report.outcomes.first()
        {
            let view = log.case_view(case_id).unwrap().unwrap();
            snapshots.push((case_id.clone(), *global_sequence, view.encode_to_vec()));
        }
    }
    assert!(snapshots.len() > 50);
    for (case, g, bytes) in &snapshots {
        let (view, last, _) = log
            .case_as_of(case, |e| e.global_sequence <= *g)
            .unwrap()
            .unwrap();
        assert_eq!(last, *g);
        assert_eq!(&view.encode_to_vec(), bytes, "case {case} as of {g}");
    }
    // Before its first entry a case has no view.
    let (case, first, _) = &snapshots[0];
    assert!(
        log.case_as_of(case, |e| e.global_sequence < *first)
            .unwrap()
            .is_none()
    );
    // After a rebuild (which recreates the person history) the same holds.
    log.rebuild().unwrap();
    for (case, g, bytes) in snapshots.iter().step_by(7) {
        let (view, _, _) = log
            .case_as_of(case, |e| e.global_sequence <= *g)
            .unwrap()
            .unwrap();
        assert_eq!(&view.encode_to_vec(), bytes);
    }
}

#[test]
fn entries_pages_through_the_whole_log_in_order() {
    let (_d, log) = small_log();
    let n = log.checkpoint().global_sequence;
    let mut seen = 0;
    let mut after = 0;
    loop {
        let page = log.entries(after, 7).unwrap();
        if page.is_empty() {
            break;
        }
        for e in &page {
            seen += 1;
            assert_eq!(e.global_sequence, seen);
        }
        after = page.last().unwrap().global_sequence;
    }
    assert_eq!(seen, n);
}
