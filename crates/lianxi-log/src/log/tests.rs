//! Model-based tests: random streams of good, bad and duplicate events, fed
//! in random groups with restarts and re-deliveries, checked against a plain
//! in-memory model and against a rebuild from the log.

use std::collections::{BTreeMap, HashMap};

use lianxi_proto::v1::{self as pb, Agency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use lianxi_domain::intake::{opening_person as person_key, prior_of};
use lianxi_domain::{Context, EntryMeta, Policy, PriorCase};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::{CaseView, Event, LogEntry, RejectionCode, RejectionRecord};
use prost::Message;

use super::*;
use crate::error::{Error, Location};
use crate::keys;

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
                person: None,
                children: Vec::new(),
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
    /// Accepted events by (agency, event id): each agency's own ids.
    ids: HashMap<(i32, String), Event>,
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
        if self
            .ids
            .contains_key(&(event.agency, event.event_id.clone()))
        {
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
            .and_then(|id| self.ids.get(&(event.agency, id.clone())))
            .cloned();
        if lianxi_domain::decide(&ctx, view.as_ref(), &event, corrected.as_ref()).is_err() {
            self.rejected += 1;
            return;
        }
        self.global += 1;
        // The model seals as the log does, with the same derived key.
        let person = person_key(&event).map(str::to_owned);
        let mut event = event;
        let key = super::GroupKeys::derived_case_key("lianxi-test", &event.case_id);
        let sealed = lianxi_crypto::seal_entry(&mut event, &key);
        let meta = EntryMeta {
            global_sequence: self.global,
            case_sequence: view.as_ref().map_or(0, |v| v.case_sequence) + 1,
            recorded_at: m.recorded_at,
            sealed: &sealed,
        };
        let new = lianxi_domain::apply(&ctx, view, &event, &meta);
        if let Some(p) = person {
            self.persons.insert(p, prior_of(&new));
        }
        self.views.insert(event.case_id.clone(), new);
        self.ids
            .insert((event.agency, event.event_id.clone()), event);
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
            let report = log
                .append_group(&msgs[pos - back..end], &TEST_KEYS)
                .unwrap();
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
        let again = log.append_group(&msgs, &TEST_KEYS).unwrap();
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
    la.append_group(&msgs, &TEST_KEYS).unwrap();
    for m in &msgs {
        lb.append_group(std::slice::from_ref(m), &TEST_KEYS)
            .unwrap();
    }
    assert_eq!(la.checkpoint(), lb.checkpoint());
    assert_eq!(la.view_bytes().unwrap(), lb.view_bytes().unwrap());
    let n = la.checkpoint().global_sequence;
    for g in 1..=n {
        assert_eq!(la.entry(g).unwrap(), lb.entry(g).unwrap());
    }
    for size in 0..=n {
        assert_eq!(
            la.root(size).unwrap(),
            lb.root(size).unwrap(),
            "size {size}"
        );
    }
}

fn small_log() -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    log.append_group(&stream(7, 200), &TEST_KEYS).unwrap();
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
    let report = log.append_group(&msgs, &TEST_KEYS).unwrap();
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
    // On a case's subject the bytes are kept sealed under the case key.
    assert!(kept[1].raw.is_empty());
    assert_eq!(open_raw(&kept[1], "C-1"), msgs[1].payload);
    assert_eq!(
        open_raw(&kept[0], "C-1"),
        msgs[0].payload[..MAX_EVENT_BYTES]
    );
    assert_eq!(log.checkpoint().stream_sequence, 2);
    assert_eq!(log.checkpoint().global_sequence, 0);
}

#[test]
fn every_processed_message_has_exactly_the_receipt_of_its_outcome() {
    use lianxi_proto::v1::ReceiptStatus;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let msgs = stream(5, 300);
    // In groups of 37, so a duplicate's original is sometimes in its own
    // group and sometimes in an earlier one: the receipts the report
    // carries (sent from memory) are the ones the log reads back.
    let mut outcomes = Vec::new();
    for chunk in msgs.chunks(37) {
        let report = log.append_group(chunk, &TEST_KEYS).unwrap();
        assert_eq!(report.receipts.len(), chunk.len());
        for r in &report.receipts {
            assert_eq!(Some(r), log.receipt(r.stream_sequence).unwrap().as_ref());
        }
        outcomes.extend(report.outcomes);
    }
    let again = log.append_group(&msgs[..10], &TEST_KEYS).unwrap();
    assert!(again.receipts.is_empty(), "already processed: no receipts");
    for (seq, outcome) in &outcomes {
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
                let agency = Agency::try_from(r.agency).unwrap();
                let by_id = log.receipt_for_event(agency, event_id).unwrap().unwrap();
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
    assert_eq!(
        log.receipt_for_event(Agency::Police, "never-sent").unwrap(),
        None
    );
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
        let report = log
            .append_group(std::slice::from_ref(&m), &TEST_KEYS)
            .unwrap();
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

// --- the Merkle tree over the log ---

use crate::merkle::{self as mk, Hash as MkHash};

/// Keys derived from a fixed seed: these runs have no key store.
static TEST_KEYS: std::sync::LazyLock<super::GroupKeys> =
    std::sync::LazyLock::new(|| super::GroupKeys::derived("lianxi-test"));

/// MTH of RFC 6962 §2.1, straight from the definition, over leaf hashes.
fn naive_mth(leaves: &[MkHash]) -> MkHash {
    if leaves.len() <= 1 {
        return leaves.first().copied().unwrap_or_else(mk::empty_root);
    }
    let k = 1usize << (usize::BITS - 1 - (leaves.len() - 1).leading_zeros());
    mk::node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
}

fn leaves_of(log: &Log) -> Vec<MkHash> {
    log.entries(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| mk::leaf_hash(&e.hash))
        .collect()
}

fn tree_tiles(log: &Log) -> Vec<(Vec<u8>, Vec<u8>)> {
    log.tree()
        .scan_prefix([keys::TILE])
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// A log of more than 1025 entries, written in groups of random sizes (so
/// that later leaves of a group read nodes written earlier in it).
fn big_log(dir: &std::path::Path) -> Log {
    let log = Log::open(dir, Policy::default()).unwrap();
    let msgs = stream(31, 4500);
    let mut rng = StdRng::seed_from_u64(31);
    let mut pos = 0;
    while pos < msgs.len() {
        let end = (pos + rng.random_range(1..=300)).min(msgs.len());
        log.append_group(&msgs[pos..end], &TEST_KEYS).unwrap();
        pos = end;
    }
    assert!(log.tree_size() > 1025, "only {} entries", log.tree_size());
    log
}

#[test]
fn the_log_is_a_merkle_tree_whose_proofs_verify_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let log = big_log(dir.path());
    let n = log.tree_size();
    let leaves = leaves_of(&log);
    assert_eq!(leaves.len() as u64, n);

    let sizes: Vec<u64> = (0..=70).chain([1000, 1024, 1025, n]).collect();
    let roots: Vec<MkHash> = sizes.iter().map(|&s| log.root(s).unwrap()).collect();
    for (&size, root) in sizes.iter().zip(&roots) {
        assert_eq!(*root, naive_mth(&leaves[..size as usize]), "root of {size}");
    }
    assert_eq!(log.verify().unwrap().root, log.root(n).unwrap());

    let mut proofs = Vec::new();
    for size in 1..=70u64 {
        let root = log.root(size).unwrap();
        for index in 0..size {
            let proof = log.inclusion_proof(index, size).unwrap();
            let leaf = &leaves[index as usize];
            assert!(mk::verify_inclusion(leaf, index, size, &proof, &root));
            let mut bad_leaf = *leaf;
            bad_leaf[0] ^= 1;
            assert!(!mk::verify_inclusion(&bad_leaf, index, size, &proof, &root));
            if let Some(first) = proof.first() {
                let mut bad = proof.clone();
                bad[0] = mk::node_hash(first, first);
                assert!(!mk::verify_inclusion(leaf, index, size, &bad, &root));
            }
            proofs.push(proof);
        }
        for old in 1..=size {
            let old_root = log.root(old).unwrap();
            let proof = log.consistency_proof(old, size).unwrap();
            assert!(mk::verify_consistency(old, size, &old_root, &root, &proof));
            let smaller = log.root(size - 1).unwrap();
            assert!(!mk::verify_consistency(
                old, size, &old_root, &smaller, &proof
            ));
            if let Some(last) = proof.last() {
                let mut bad = proof.clone();
                *bad.last_mut().unwrap() = mk::node_hash(last, last);
                assert!(!mk::verify_consistency(old, size, &old_root, &root, &bad));
            }
            proofs.push(proof);
        }
    }
    // The large sizes: a few proofs each way.
    for (index, size) in [(0, n), (n - 1, n), (999, 1000), (1024, 1025), (517, 1025)] {
        let proof = log.inclusion_proof(index, size).unwrap();
        let root = log.root(size).unwrap();
        assert!(mk::verify_inclusion(
            &leaves[index as usize],
            index,
            size,
            &proof,
            &root
        ));
        proofs.push(proof);
    }
    for (old, new) in [(1000, 1025), (1, n), (70, 1024), (1025, n), (n, n)] {
        let proof = log.consistency_proof(old, new).unwrap();
        let (a, b) = (log.root(old).unwrap(), log.root(new).unwrap());
        assert!(mk::verify_consistency(old, new, &a, &b, &proof));
        proofs.push(proof);
    }

    // Reopened, the log gives the same roots and proofs.
    drop(log);
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let again: Vec<MkHash> = sizes.iter().map(|&s| log.root(s).unwrap()).collect();
    assert_eq!(again, roots);
    let mut proofs_again = Vec::new();
    for size in 1..=70u64 {
        for index in 0..size {
            proofs_again.push(log.inclusion_proof(index, size).unwrap());
        }
        for old in 1..=size {
            proofs_again.push(log.consistency_proof(old, size).unwrap());
        }
    }
    for (index, size) in [(0, n), (n - 1, n), (999, 1000), (1024, 1025), (517, 1025)] {
        proofs_again.push(log.inclusion_proof(index, size).unwrap());
    }
    for (old, new) in [(1000, 1025), (1, n), (70, 1024), (1025, n), (n, n)] {
        proofs_again.push(log.consistency_proof(old, new).unwrap());
    }
    assert_eq!(proofs_again, proofs);
    log.verify().unwrap();
}

#[test]
fn logs_fed_in_different_groupings_have_the_same_tree() {
    let msgs = stream(5, 1500);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let la = Log::open(a.path(), Policy::default()).unwrap();
    let lb = Log::open(b.path(), Policy::default()).unwrap();
    la.append_group(&msgs, &TEST_KEYS).unwrap();
    for chunk in msgs.chunks(7) {
        lb.append_group(chunk, &TEST_KEYS).unwrap();
    }
    let n = la.tree_size();
    assert_eq!(n, lb.tree_size());
    for size in 0..=n {
        assert_eq!(
            la.root(size).unwrap(),
            lb.root(size).unwrap(),
            "size {size}"
        );
    }
    assert_eq!(tree_tiles(&la), tree_tiles(&lb));
    // One tile per 256 nodes (or fewer, at the right edge) of levels 0, 8,
    // 16 ...: of the tlog-tiles layout, each as wide as the tree makes it.
    let mut expected = Vec::new();
    for level in 0u8..8 {
        for index in 0.. {
            match crate::tiles::expected_width(n, level, index) {
                0 => break,
                w => expected.push((keys::tile(level, index).to_vec(), w * 32)),
            }
        }
    }
    let stored: Vec<(Vec<u8>, u64)> = tree_tiles(&la)
        .into_iter()
        .map(|(k, v)| (k, v.len() as u64))
        .collect();
    assert_eq!(stored, expected);
    assert!(
        n > 256,
        "{n} leaves: the test needs a full tile and a partial one"
    );
    assert!(stored.len() >= 3, "{n} leaves: {} tiles", stored.len());
}

#[test]
fn verify_names_a_flipped_missing_or_extra_tile() {
    let dir = tempfile::tempdir().unwrap();
    let log = big_log(dir.path());
    let n = log.tree_size();
    assert!(n > 256, "the test needs a second level-0 tile: {n} entries");
    for (level, index) in [(0u8, 0u64), (0, 1), (1, 0)] {
        let key = keys::tile(level, index);
        let good = log.tree().get(key).unwrap().unwrap();
        let mut bad = good.to_vec();
        bad[9] ^= 0x40;
        log.tree().insert(key, bad).unwrap();
        match log.verify() {
            Err(Error::Corruption {
                at: Location::Tile(l, i),
                detail,
            }) if (l, i) == (level, index) => {
                assert!(
                    detail.contains("does not match") && detail.contains("from hash 0"),
                    "{detail}"
                )
            }
            other => panic!("expected corruption at tile {level}/{index}, got {other:?}"),
        }
        log.tree().remove(key).unwrap();
        match log.verify() {
            Err(Error::Corruption {
                at: Location::Tile(l, i),
                detail,
            }) if (l, i) == (level, index) => assert!(detail.contains("missing"), "{detail}"),
            other => panic!("expected a missing tile {level}/{index}, got {other:?}"),
        }
        log.tree().insert(key, good).unwrap();
        log.verify().unwrap();
    }
    // A tile past the end of the log.
    let past = n / 256 + 1;
    log.tree().insert(keys::tile(0, past), &[0u8; 32]).unwrap();
    assert!(matches!(
        log.verify(),
        Err(Error::Corruption { at: Location::Tile(0, i), .. }) if i == past
    ));
    log.tree().remove(keys::tile(0, past)).unwrap();
    // A node record of the older layout left beside the tiles.
    log.tree()
        .insert(keys::tree_node(0, 0), &[0u8; 32])
        .unwrap();
    match log.verify() {
        Err(Error::Corruption { detail, .. }) => {
            assert!(detail.contains("lianxi rebuild"), "{detail}")
        }
        other => panic!("expected a leftover node record, got {other:?}"),
    }
}

#[test]
fn rebuild_gives_a_log_without_a_tree_its_tree() {
    let (_d, log) = small_log();
    let n = log.tree_size();
    let roots: Vec<MkHash> = (0..=n).map(|s| log.root(s).unwrap()).collect();
    let nodes = tree_tiles(&log);
    // As a log written before the tree existed: no `T` keys at all.
    for (k, _) in &nodes {
        log.tree().remove(k).unwrap();
    }
    assert!(matches!(
        log.root(n),
        Err(Error::Corruption {
            at: Location::Tile(..),
            ..
        })
    ));
    assert!(matches!(
        log.inclusion_proof(0, n),
        Err(Error::Corruption {
            at: Location::Tile(..),
            ..
        })
    ));
    // Such a log refuses to grow until rebuilt, and says how.
    let more = stream(7, 260);
    match log.append_group(&more[200..], &TEST_KEYS) {
        Err(
            e @ Error::Corruption {
                at: Location::Tile(..),
                ..
            },
        ) => {
            assert!(e.to_string().contains("lianxi rebuild"), "{e}")
        }
        other => panic!("expected a missing tree, got {other:?}"),
    }
    assert_eq!(log.checkpoint().stream_sequence, 200);
    log.rebuild().unwrap();
    assert_eq!(tree_tiles(&log), nodes);
    let again: Vec<MkHash> = (0..=n).map(|s| log.root(s).unwrap()).collect();
    assert_eq!(again, roots);
    log.verify().unwrap();
    log.append_group(&more[200..], &TEST_KEYS).unwrap();
    assert_eq!(
        log.root(log.tree_size()).unwrap(),
        naive_mth(&leaves_of(&log))
    );
    log.verify().unwrap();
}

/// Rewrites a log's derived records as storage layout 2 kept them: one
/// record per Merkle node (`T`), per case entry (`C`) and per stream
/// sequence (`S`), and the layout marker 2.
fn as_layout_2(log: &Log) {
    let t = log.tree();
    for prefix in [keys::TILE, keys::CASE_PACKED, keys::BY_STREAM_PACKED] {
        for kv in t.scan_prefix([prefix]) {
            t.remove(kv.unwrap().0).unwrap();
        }
    }
    let mut frontier = Frontier::default();
    for e in log.entries(0, usize::MAX).unwrap() {
        let g = e.global_sequence.to_be_bytes();
        for (level, index, hash) in frontier.push(mk::leaf_hash(&e.hash)).unwrap() {
            t.insert(keys::tree_node(level, index), &hash).unwrap();
        }
        let mut k = keys::named(keys::CASE_INDEX, &e.event.as_ref().unwrap().case_id);
        k.push(0);
        k.extend_from_slice(&e.case_sequence.to_be_bytes());
        t.insert(k, &g).unwrap();
        t.insert(keys::seq(keys::BY_STREAM, e.stream_sequence), &g)
            .unwrap();
    }
    t.insert(keys::LAYOUT, &[keys::LAYOUT_NODES]).unwrap();
    t.flush().unwrap();
}

#[test]
fn a_layout_2_directory_is_upgraded_in_place_with_the_same_roots_proofs_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = big_log(dir.path());
    let n = log.tree_size();
    let sizes = [1, 255, 256, 257, 1024, 1025, n];
    let roots: Vec<MkHash> = sizes.iter().map(|&s| log.root(s).unwrap()).collect();
    let proof = log.inclusion_proof(700, n).unwrap();
    let views = log.view_bytes().unwrap();
    let cases: Vec<String> = views.iter().map(|(c, _)| c.clone()).take(40).collect();
    let timelines: Vec<Vec<LogEntry>> = cases
        .iter()
        .map(|c| log.case_entries(c, 0, usize::MAX).unwrap())
        .collect();
    let last_stream = log.checkpoint().stream_sequence;
    let receipts: Vec<_> = (1..=last_stream).map(|s| log.receipt(s).unwrap()).collect();
    as_layout_2(&log);
    drop(log);

    let log = Log::open(dir.path(), Policy::default()).unwrap();
    match log.check_storage_layout() {
        Err(e @ Error::Layout { .. }) => {
            assert!(e.to_string().contains("lianxi rebuild"), "{e}")
        }
        other => panic!("expected a layout error, got {other:?}"),
    }
    let report = log.upgrade_storage_layout().unwrap().expect("upgraded");
    assert_eq!(report.entries, n);
    log.check_storage_layout().unwrap();
    assert!(
        log.upgrade_storage_layout().unwrap().is_none(),
        "once is enough"
    );
    for prefix in [keys::TREE, keys::CASE_INDEX, keys::BY_STREAM] {
        assert!(
            log.tree().scan_prefix([prefix]).next().is_none(),
            "{prefix}"
        );
    }
    log.verify().unwrap();
    let again: Vec<MkHash> = sizes.iter().map(|&s| log.root(s).unwrap()).collect();
    assert_eq!(again, roots);
    assert_eq!(log.inclusion_proof(700, n).unwrap(), proof);
    assert_eq!(log.view_bytes().unwrap(), views);
    for (c, timeline) in cases.iter().zip(&timelines) {
        assert_eq!(&log.case_entries(c, 0, usize::MAX).unwrap(), timeline);
        // Pages of any size give the same timeline.
        let mut paged = Vec::new();
        loop {
            let page = log.case_entries(c, paged.len() as u64, 3).unwrap();
            if page.is_empty() {
                break;
            }
            paged.extend(page);
        }
        assert_eq!(&paged, timeline);
    }
    let receipts_again: Vec<_> = (1..=last_stream).map(|s| log.receipt(s).unwrap()).collect();
    assert_eq!(receipts_again, receipts);
    // And it grows as a layout-3 log.
    let more = stream(31, 4800);
    log.append_group(&more[4500..], &TEST_KEYS).unwrap();
    assert!(log.tree_size() > n);
    log.verify().unwrap();
}

#[test]
fn a_case_with_more_entries_than_one_packed_record_reads_back_whole_and_in_pages() {
    // 600 progress reports on one case, between the events of two others:
    // its timeline spans three packed records.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let mut msgs = vec![
        publish(&opening("o-long", "C-LONG", Agency::Police), 1),
        publish(&opening("o-other", "C-OTHER", Agency::Police), 2),
    ];
    for i in 0..600u64 {
        let mut e = opening(&format!("p-{i}"), "C-LONG", Agency::Police);
        e.body = Some(pb::event::Body::ProgressReported(pb::ProgressReported {
            summary: format!("visit {i}"),
        }));
        msgs.push(publish(&e, msgs.len() as u64 + 1));
        if i % 50 == 0 {
            let mut o = opening(&format!("q-{i}"), "C-OTHER", Agency::Police);
            o.body = e.body.clone();
            msgs.push(publish(&o, msgs.len() as u64 + 1));
        }
    }
    for chunk in msgs.chunks(97) {
        log.append_group(chunk, &TEST_KEYS).unwrap();
    }
    let all = log.case_entries("C-LONG", 0, usize::MAX).unwrap();
    assert_eq!(all.len(), 601);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.case_sequence == i as u64 + 1
                && e.event.as_ref().unwrap().case_id == "C-LONG")
    );
    assert_eq!(
        log.case_entries("C-OTHER", 0, usize::MAX).unwrap().len(),
        13
    );
    for after in [
        0u64,
        1,
        255,
        256,
        257,
        511,
        512,
        599,
        600,
        601,
        700,
        u64::MAX,
    ] {
        for limit in [1usize, 2, 300] {
            let page = log.case_entries("C-LONG", after, limit).unwrap();
            let want: Vec<LogEntry> = all
                .iter()
                .skip(after.min(601) as usize)
                .take(limit)
                .cloned()
                .collect();
            assert_eq!(page, want, "after {after}, limit {limit}");
        }
    }
    // Every message's receipt is found through the packed stream index.
    for m in &msgs {
        let r = log.receipt(m.stream_sequence).unwrap().expect("a receipt");
        assert_eq!(r.status, lianxi_proto::v1::ReceiptStatus::Accepted as i32);
    }
    assert_eq!(log.receipt(msgs.len() as u64 + 1).unwrap(), None);
    log.verify().unwrap();
}

#[test]
fn out_of_range_tree_arguments_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let empty = Log::open(dir.path(), Policy::default()).unwrap();
    assert_eq!(empty.tree_size(), 0);
    assert_eq!(empty.root(0).unwrap(), mk::empty_root());
    let out = |r: Result<Vec<MkHash>>| matches!(r, Err(Error::OutOfRange { .. }));
    assert!(matches!(empty.root(1), Err(Error::OutOfRange { .. })));
    assert!(out(empty.inclusion_proof(0, 0)));
    assert!(out(empty.consistency_proof(0, 0)));
    assert!(out(empty.consistency_proof(1, 1)));
    let e = empty.root(1).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");

    let (_d, log) = small_log();
    let n = log.tree_size();
    assert!(matches!(log.root(n + 1), Err(Error::OutOfRange { .. })));
    assert!(matches!(log.root(u64::MAX), Err(Error::OutOfRange { .. })));
    for (index, size) in [
        (0, 0),
        (n, n),
        (0, n + 1),
        (u64::MAX, n),
        (u64::MAX, u64::MAX),
    ] {
        assert!(out(log.inclusion_proof(index, size)), "{index} of {size}");
    }
    for (old, new) in [(0, n), (0, 0), (n, n - 1), (1, n + 1), (u64::MAX, u64::MAX)] {
        assert!(out(log.consistency_proof(old, new)), "{old} -> {new}");
    }
    let e = log.inclusion_proof(0, n + 1).unwrap_err().to_string();
    assert!(
        e.contains(&format!("tree size {}", n + 1)) && e.contains(&format!("1 to {n}")),
        "{e}"
    );
}

// ------------------------------------------- intake: agencies kept apart

/// Opens the bytes a rejection record sealed under the test key of `case`.
fn open_raw(r: &RejectionRecord, case: &str) -> Vec<u8> {
    use base64::Engine as _;
    let sealed = r.sealed_raw.as_ref().expect("sealed bytes");
    let key = GroupKeys::derived_case_key("lianxi-test", case);
    let text = lianxi_crypto::open_value(
        &key,
        case,
        &format!("stream-{}", r.stream_sequence),
        "raw",
        &sealed.ciphertext,
    )
    .expect("opens with the case key");
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn msg(seq: u64, subject: &str, payload: Vec<u8>) -> Incoming {
    Incoming {
        stream_sequence: seq,
        subject: subject.into(),
        recorded_at: ts(1_780_000_000 + seq as i64),
        payload,
    }
}

fn opening(id: &str, case: &str, agency: Agency) -> Event {
    Event {
        event_id: id.into(),
        case_id: case.into(),
        agency: agency as i32,
        occurred_at: Some(ts(1_780_000_000)),
        corrects_event_id: None,
        body: Some(pb::event::Body::CaseOpened(pb::CaseOpened {
            channel: pb::Channel::WalkIn as i32,
            category: pb::Category::DomesticViolence as i32,
            jurisdiction: "city/a".into(),
            level: pb::Level::County as i32,
            person_ref: "P-1".into(),
            summary: "Wang Xiuying came to the desk".into(),
            mandatory_reporter: String::new(),
            person: None,
            children: Vec::new(),
        })),
    }
}

fn publish(e: &Event, seq: u64) -> Incoming {
    msg(seq, &subject_for(e), e.encode_to_vec())
}

fn rejected_code(o: &EventOutcome) -> RejectionCode {
    match o {
        EventOutcome::Rejected { code, .. } => *code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_same_event_id_from_two_agencies_is_two_events_and_nothing_crosses_between_them() {
    use lianxi_proto::v1::ReceiptStatus;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let police = opening("evt-1", "C-POLICE", Agency::Police);
    let court = opening("evt-1", "C-COURT", Agency::Court);
    let report = log
        .append_group(&[publish(&police, 1), publish(&court, 2)], &TEST_KEYS)
        .unwrap();
    // Before the fix the court got a duplicate of the police's event.
    assert!(
        matches!(&report.outcomes[1].1, EventOutcome::Accepted { case_id, .. } if case_id == "C-COURT"),
        "{:?}",
        report.outcomes[1]
    );
    assert!(log.case_view("C-COURT").unwrap().is_some());
    let r = log.receipt(2).unwrap().unwrap();
    assert_eq!(
        (r.status, r.case_id.as_str(), r.agency, r.case_sequence),
        (
            ReceiptStatus::Accepted as i32,
            "C-COURT",
            Agency::Court as i32,
            1
        )
    );
    // Lookups answer each agency about its own event.
    let by_court = log
        .receipt_for_event(Agency::Court, "evt-1")
        .unwrap()
        .unwrap();
    let by_police = log
        .receipt_for_event(Agency::Police, "evt-1")
        .unwrap()
        .unwrap();
    assert_eq!(by_court.case_id, "C-COURT");
    assert_eq!(by_police.case_id, "C-POLICE");
    assert_eq!(
        log.receipt_for_event(Agency::Labour, "evt-1").unwrap(),
        None
    );

    // A re-send by the court is the court's duplicate, of its own event.
    let report = log.append_group(&[publish(&court, 3)], &TEST_KEYS).unwrap();
    assert!(matches!(
        report.outcomes[0].1,
        EventOutcome::Duplicate {
            original_global_sequence: 2,
            ..
        }
    ));
    let dup = log.receipt(3).unwrap().unwrap();
    assert_eq!(
        (dup.status, dup.case_id.as_str(), dup.agency),
        (
            ReceiptStatus::Duplicate as i32,
            "C-COURT",
            Agency::Court as i32
        )
    );

    // A rejected id of one agency does not hide another's accepted one,
    // and the reverse: each lookup finds its own outcome.
    let mut bad = opening("evt-2", "C-COURT", Agency::Court);
    bad.body = Some(pb::event::Body::ProgressReported(pb::ProgressReported {
        summary: String::new(),
    }));
    let mut good = opening("evt-2", "C-POLICE", Agency::Police);
    good.body = Some(pb::event::Body::ProgressReported(pb::ProgressReported {
        summary: "visited".into(),
    }));
    log.append_group(&[publish(&good, 4), publish(&bad, 5)], &TEST_KEYS)
        .unwrap();
    let court_r = log
        .receipt_for_event(Agency::Court, "evt-2")
        .unwrap()
        .unwrap();
    assert_eq!(court_r.status, ReceiptStatus::Rejected as i32);
    assert_eq!(court_r.case_id, "C-COURT");
    let police_r = log
        .receipt_for_event(Agency::Police, "evt-2")
        .unwrap()
        .unwrap();
    assert_eq!(
        (police_r.status, police_r.case_id.as_str()),
        (ReceiptStatus::Accepted as i32, "C-POLICE")
    );
    // No receipt the court can get names the police's case.
    for seq in [2, 3, 5] {
        let r = log.receipt(seq).unwrap().unwrap();
        assert!(!format!("{r:?}").contains("C-POLICE"), "{r:?}");
    }
    log.verify().unwrap();
}

#[test]
fn a_correction_finds_only_the_correcting_agencys_own_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let police = opening("evt-9", "C-SECRET", Agency::Police);
    let wf = opening("wf-1", "C-WF", Agency::WomensFederation);
    // The women's federation "corrects" evt-9: the police's id.
    let mut correction = opening("wf-2", "C-WF", Agency::WomensFederation);
    correction.corrects_event_id = Some("evt-9".into());
    let report = log
        .append_group(
            &[
                publish(&police, 1),
                publish(&wf, 2),
                publish(&correction, 3),
            ],
            &TEST_KEYS,
        )
        .unwrap();
    let EventOutcome::Rejected { code, reason, .. } = &report.outcomes[2].1 else {
        panic!("{:?}", report.outcomes[2]);
    };
    // Before the fix: BAD_CORRECTION naming the police's case C-SECRET.
    assert_eq!(*code, RejectionCode::PredecessorMissing, "{reason}");
    assert!(!reason.contains("C-SECRET"), "{reason}");
    assert!(!reason.contains("police"), "{reason}");
    // Its own events it can correct.
    let mut own = opening("wf-3", "C-WF", Agency::WomensFederation);
    own.corrects_event_id = Some("wf-1".into());
    let report = log.append_group(&[publish(&own, 4)], &TEST_KEYS).unwrap();
    assert!(
        matches!(report.outcomes[0].1, EventOutcome::Accepted { .. }),
        "{:?}",
        report.outcomes[0]
    );
}

#[test]
fn a_malformed_subject_is_receipted_to_the_agency_its_token_names() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let e = opening("evt-1", "C-1", Agency::Police);
    let msgs = [
        msg(1, "lianxi.v1.events.police.A.B", e.encode_to_vec()),
        msg(2, "lianxi.v1.events.police.*", e.encode_to_vec()),
        msg(3, "lianxi.v1.events.police.C\u{7}1", e.encode_to_vec()),
        msg(4, "lianxi.v1.events.police.C-1.x", vec![0xff, 0x01]),
        msg(5, "lianxi.v1.events.nobody.C-1", e.encode_to_vec()),
    ];
    let report = log.append_group(&msgs, &TEST_KEYS).unwrap();
    for (seq, outcome) in &report.outcomes {
        let code = rejected_code(outcome);
        let r = log.receipt(*seq).unwrap().unwrap();
        let expected = if *seq == 5 {
            assert_eq!(code, RejectionCode::UnknownAgency);
            Agency::Unspecified
        } else {
            let want = if *seq == 4 {
                RejectionCode::Malformed
            } else {
                RejectionCode::BadSubject
            };
            assert_eq!(code, want, "{seq}");
            Agency::Police
        };
        assert_eq!(r.agency, expected as i32, "seq {seq}");
        assert!(
            !r.reason.contains('\u{7}') && !r.subject.contains('\u{7}'),
            "{r:?}"
        );
    }
    // The police can look up its rejected id; no other agency can.
    let r = log
        .receipt_for_event(Agency::Police, "evt-1")
        .unwrap()
        .unwrap();
    assert_eq!(r.stream_sequence, 3);
    assert_eq!(log.receipt_for_event(Agency::Court, "evt-1").unwrap(), None);
    // Bytes on a malformed subject name no case: kept as they came.
    assert_eq!(log.rejections(3, 1).unwrap()[0].raw, vec![0xff, 0x01]);
}

#[test]
fn an_event_of_a_newer_schema_is_schema_newer_and_its_bytes_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let mut e = opening("evt-new", "C-1", Agency::Police);
    e.body = None;
    let mut bytes = e.encode_to_vec();
    // A body kind this node does not know: field 250, a message holding a
    // string with a name in it.
    let inner = [&[0x0a, 12][..], b"Wang Xiuying"].concat();
    prost::encoding::encode_key(250, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
    bytes.extend_from_slice(&inner);
    let report = log
        .append_group(
            &[msg(1, "lianxi.v1.events.police.C-1", bytes.clone())],
            &TEST_KEYS,
        )
        .unwrap();
    let EventOutcome::Rejected {
        code,
        reason,
        event_id,
    } = &report.outcomes[0].1
    else {
        panic!("{:?}", report.outcomes[0]);
    };
    assert_eq!(*code, RejectionCode::SchemaNewer, "{reason}");
    assert!(reason.contains("older than the sender's"), "{reason}");
    assert_eq!(event_id.as_deref(), Some("evt-new"));
    let kept = &log.rejections(0, 1).unwrap()[0];
    assert!(kept.raw.is_empty());
    assert_eq!(open_raw(kept, "C-1"), bytes);
    // The police can look it up and publish again after the upgrade.
    let r = log
        .receipt_for_event(Agency::Police, "evt-new")
        .unwrap()
        .unwrap();
    assert_eq!(r.code, RejectionCode::SchemaNewer as i32);
}

/// Every file under `dir`, read whole.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn undecodable_bytes_naming_a_person_never_reach_the_data_directory_in_the_clear() {
    const NAME: &[u8] = b"Wang Xiuying";
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let mut open = opening("evt-1", "C-1", Agency::WomensFederation);
    if let Some(pb::event::Body::CaseOpened(b)) = &mut open.body {
        b.summary = "came to the desk".into();
    }
    let garbage = [&[0xff, 0xff][..], b"name: Wang Xiuying", &[0xff]].concat();
    let erase = Event {
        event_id: "plc-1".into(),
        case_id: "C-1".into(),
        agency: Agency::PoliticalLegalCommittee as i32,
        occurred_at: Some(ts(1_780_100_000)),
        corrects_event_id: None,
        body: Some(pb::event::Body::PersonalDataErased(
            pb::PersonalDataErased {
                legal_basis: "the person's request".into(),
                authorised_by: "PLC-7".into(),
            },
        )),
    };
    let subject = "lianxi.v1.events.womens_federation.C-1";
    log.append_group(
        &[
            publish(&open, 1),
            msg(2, subject, garbage.clone()),
            // Before the case exists too.
            msg(3, "lianxi.v1.events.police.C-2", garbage.clone()),
        ],
        &TEST_KEYS,
    )
    .unwrap();
    let needed = log
        .keys_needed(&Prepared::new(vec![msg(
            9,
            "lianxi.v1.events.police.C-3",
            garbage.clone(),
        )]))
        .unwrap();
    assert_eq!(needed.cases, vec!["C-3".to_string()]);
    log.append_group(
        &[publish(&erase, 4), msg(5, subject, garbage.clone())],
        &TEST_KEYS,
    )
    .unwrap();
    // After the erasure no key is fetched for the case, and nothing of a
    // later message on its subject is kept.
    let needed = log
        .keys_needed(&Prepared::new(vec![msg(9, subject, garbage.clone())]))
        .unwrap();
    assert!(needed.cases.is_empty(), "{needed:?}");
    let kept = log.rejections(0, 10).unwrap();
    assert_eq!(kept.len(), 3);
    assert!(kept[0].sealed_raw.is_some() && kept[0].raw.is_empty());
    assert!(kept[1].sealed_raw.is_some() && kept[1].raw.is_empty());
    assert!(kept[2].raw_withheld && kept[2].sealed_raw.is_none() && kept[2].raw.is_empty());
    assert_eq!(kept[2].raw_len, garbage.len() as u64);
    drop(log);
    let mut scanned = 0;
    for (path, bytes) in files(dir.path()) {
        scanned += bytes.len();
        assert!(!contains(&bytes, NAME), "{} holds the name", path.display());
    }
    assert!(scanned > 0);
    lianxi_testkit::fault_test(format!(
        "FAULT-TEST undecodable_bytes_naming_a_person_never_reach_the_data_directory_in_the_clear: 3 undecodable messages naming a person (before the case, on the case, after its erasure) rejected; {scanned} bytes of the data directory scanned: plaintext found 0, sealed 2, withheld 1"
    ));
}

#[test]
fn a_data_directory_of_the_old_layout_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let e = opening("evt-1", "C-1", Agency::Police);
    log.check_storage_layout().expect("a new directory is fine");
    log.append_group(&[publish(&e, 1)], &TEST_KEYS).unwrap();
    log.check_storage_layout()
        .expect("so is one this version wrote");
    // What a layout-1 directory looks like: no marker, `D` + event id.
    log.tree().remove(keys::LAYOUT).unwrap();
    log.tree()
        .insert(keys::named(keys::DEDUP, "evt-1"), &1u64.to_be_bytes())
        .unwrap();
    log.tree().flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let again = log.append_group(&[publish(&e, 2)], &TEST_KEYS);
    let err = again.expect_err("an old layout is refused");
    assert!(matches!(err, Error::Layout { .. }), "{err}");
    assert!(err.to_string().contains("empty one"), "{err}");
    assert!(log.receipt_for_event(Agency::Police, "evt-1").is_err());
    assert!(matches!(
        log.check_storage_layout(),
        Err(Error::Layout { .. })
    ));
    assert_eq!(log.checkpoint().stream_sequence, 1);
}

#[test]
fn hostile_ids_never_reach_a_reason_a_receipt_or_the_lookup_index_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let mut e = opening("evt-1", "C-1", Agency::Police);
    e.case_id = format!("C-1\n\u{1b}[31mINFO forged line{}", "x".repeat(5000));
    e.event_id = format!("e\u{1b}[2J{}", "y".repeat(5000));
    let report = log
        .append_group(
            &[msg(1, "lianxi.v1.events.police.C-1", e.encode_to_vec())],
            &TEST_KEYS,
        )
        .unwrap();
    let EventOutcome::Rejected {
        reason, event_id, ..
    } = &report.outcomes[0].1
    else {
        panic!();
    };
    let unsafe_in = |s: &str| s.chars().any(lianxi_domain::is_unsafe_char);
    assert!(!unsafe_in(reason), "{reason:?}");
    let r = log.receipt(1).unwrap().unwrap();
    for field in [&r.reason, &r.case_id, &r.event_id, &r.subject] {
        assert!(!unsafe_in(field), "{field:?}");
        assert!(field.chars().count() <= lianxi_domain::MAX_REASON_CHARS + 3);
    }
    assert!(r.event_id.chars().count() <= lianxi_domain::MAX_ID_LEN + 3);
    assert!(!unsafe_in(event_id.as_deref().unwrap_or_default()));
    // A malformed id is not indexed for lookups.
    assert_eq!(log.tree().scan_prefix([keys::REJECTED_ID]).count(), 0);
}

#[test]
fn a_missing_entry_near_the_end_is_found_at_open_and_the_log_refuses_to_grow() {
    let (dir, log) = small_log();
    let last = log.checkpoint().global_sequence;
    log.tree().remove(keys::seq(keys::ENTRY, last - 3)).unwrap();
    drop(log);
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let damage = log.damage().expect("damage found at open");
    assert!(
        damage.contains(&format!("log entry {}", last - 3)) && damage.contains("restore"),
        "{damage}"
    );
    match log.append_group(&stream(8, 10), &TEST_KEYS) {
        Err(Error::Unwritable { reason }) => assert_eq!(reason, damage),
        other => panic!("a damaged log must not grow: {other:?}"),
    }
}

#[test]
fn a_log_below_its_high_water_mark_is_behind_until_it_has_caught_up() {
    let msgs = stream(9, 120);
    let (first, rest) = msgs.split_at(msgs.len() / 2);
    let full = tempfile::tempdir().unwrap();
    let vouched = {
        let log = Log::open(full.path(), Policy::default()).unwrap();
        log.append_group(&msgs, &TEST_KEYS).unwrap();
        let cp = log.checkpoint();
        log.raise_high_water(&cp).unwrap();
        cp
    };
    // A node that lost the second half: its high-water mark survived.
    let lost = tempfile::tempdir().unwrap();
    {
        let log = Log::open(lost.path(), Policy::default()).unwrap();
        log.append_group(first, &TEST_KEYS).unwrap();
    }
    std::fs::copy(
        full.path().join(crate::HIGH_WATER_FILE),
        lost.path().join(crate::HIGH_WATER_FILE),
    )
    .unwrap();
    let log = Log::open(lost.path(), Policy::default()).unwrap();
    let behind = log.behind().expect("behind its high-water mark");
    assert_eq!(behind.vouched, vouched.global_sequence);
    assert!(behind.have < behind.vouched, "{behind:?}");
    // Reading the lost messages again catches up, to the same entries.
    log.append_group(rest, &TEST_KEYS).unwrap();
    assert_eq!(log.behind(), None);
    assert_eq!(log.checkpoint(), vouched);

    // A mark whose hash the re-read log does not reach is damage, not a
    // catch-up.
    let other = tempfile::tempdir().unwrap();
    {
        let log = Log::open(other.path(), Policy::default()).unwrap();
        log.append_group(first, &TEST_KEYS).unwrap();
    }
    let mut forged = crate::HighWater::read(full.path()).unwrap().unwrap();
    forged.last_hash = [7; 32];
    forged.write(other.path()).unwrap();
    let log = Log::open(other.path(), Policy::default()).unwrap();
    assert!(log.behind().is_some());
    match log.append_group(rest, &TEST_KEYS) {
        Err(Error::Damaged { detail, .. }) => assert!(detail.contains("high-water"), "{detail}"),
        other => panic!("expected damage, got {other:?}"),
    }
}

/// The pure intake step over a state kept in memory: the domain's
/// `parse` and `decide`, with the plan applied to plain maps (the same
/// sealing and person tokens as the log, from the same derived keys).
#[derive(Default)]
struct MemState {
    views: BTreeMap<String, CaseView>,
    accepted: HashMap<(Agency, String), (u64, Event)>,
    persons: HashMap<String, PriorCase>,
    /// The person token of each case's opening.
    case_persons: HashMap<String, String>,
    global: u64,
}

impl lianxi_domain::intake::State for MemState {
    type Error = std::convert::Infallible;
    fn view(&self, case_id: &str) -> std::result::Result<Option<CaseView>, Self::Error> {
        Ok(self.views.get(case_id).cloned())
    }
    fn accepted(&self, agency: Agency, id: &str) -> std::result::Result<Option<u64>, Self::Error> {
        Ok(self.accepted.get(&(agency, id.to_owned())).map(|(g, _)| *g))
    }
    fn accepted_event(
        &self,
        agency: Agency,
        id: &str,
    ) -> std::result::Result<Option<Event>, Self::Error> {
        Ok(self
            .accepted
            .get(&(agency, id.to_owned()))
            .map(|(_, e)| e.clone()))
    }
    fn person_token(&self, person_ref: &str) -> std::result::Result<String, Self::Error> {
        let key = TEST_KEYS.index().expect("derived");
        Ok(hex::encode(lianxi_crypto::person_token(
            key.as_ref(),
            person_ref,
        )))
    }
    fn prior_case(&self, token: &str) -> std::result::Result<Option<PriorCase>, Self::Error> {
        Ok(self.persons.get(token).cloned())
    }
}

impl MemState {
    /// Decides one message and applies the plan; the outcome as the log
    /// reports it, without the entry hash (the model keeps no chain).
    fn take(&mut self, policy: &Policy, m: &Incoming) -> EventOutcome {
        use lianxi_domain::intake::{self, Plan};
        let parsed = intake::parse(&m.subject, &m.payload);
        let Ok(plan) = intake::decide(policy, &*self, &m.subject, parsed);
        match plan {
            Plan::Duplicate {
                event_id,
                original_global_sequence,
                ..
            } => EventOutcome::Duplicate {
                event_id,
                original_global_sequence,
            },
            Plan::Reject(r) => EventOutcome::Rejected {
                event_id: r
                    .event
                    .as_ref()
                    .map(|e| lianxi_domain::printable(&e.event_id, lianxi_domain::MAX_ID_LEN)),
                code: r.rejection.code,
                reason: lianxi_domain::printable(
                    &r.rejection.reason,
                    lianxi_domain::MAX_REASON_CHARS,
                ),
            },
            Plan::Accept(a) => {
                let intake::Accept {
                    mut event,
                    view,
                    person,
                    prior,
                    seal,
                } = *a;
                self.global += 1;
                let key = super::GroupKeys::derived_case_key("lianxi-test", &event.case_id);
                let sealed = if seal {
                    lianxi_crypto::seal_entry(&mut event, &key)
                } else {
                    Vec::new()
                };
                let case_sequence = view.as_ref().map_or(0, |v| v.case_sequence) + 1;
                let ctx = Context {
                    policy,
                    prior_case: prior.as_ref(),
                };
                let meta = EntryMeta {
                    global_sequence: self.global,
                    case_sequence,
                    recorded_at: m.recorded_at,
                    sealed: &sealed,
                };
                let new = lianxi_domain::apply(&ctx, view, &event, &meta);
                if let Some(p) = person {
                    self.persons.insert(p.clone(), prior_of(&new));
                    self.case_persons.insert(event.case_id.clone(), p);
                }
                let erased = lianxi_domain::intake::is_erasure(&event);
                if erased
                    && let Some(p) = self.case_persons.get(&event.case_id)
                    && self
                        .persons
                        .get(p)
                        .is_some_and(|x| x.case_id == event.case_id)
                {
                    self.persons.remove(p);
                }
                self.views.insert(event.case_id.clone(), new);
                let agency = lianxi_domain::intake::agency_of(&event);
                let outcome = EventOutcome::Accepted {
                    event_id: event.event_id.clone(),
                    case_id: event.case_id.clone(),
                    global_sequence: self.global,
                    case_sequence,
                    hash: [0; 32],
                    erased,
                };
                self.accepted
                    .insert((agency, event.event_id.clone()), (self.global, event));
                outcome
            }
        }
    }
}

#[test]
fn the_pure_intake_step_over_memory_decides_every_message_as_the_log_on_sled_does() {
    for seed in 20..26u64 {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::default();
        let msgs = stream(seed, 400);
        let log = Log::open(dir.path(), policy.clone()).unwrap();
        let mut mem = MemState::default();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pos = 0;
        let mut kinds = [0u32; 3];
        while pos < msgs.len() {
            let end = (pos + rng.random_range(1..=40)).min(msgs.len());
            let report = log.append_group(&msgs[pos..end], &TEST_KEYS).unwrap();
            for ((seq, stored), m) in report.outcomes.iter().zip(&msgs[pos..end]) {
                let mut stored = stored.clone();
                if let EventOutcome::Accepted { hash, .. } = &mut stored {
                    *hash = [0; 32];
                    kinds[0] += 1;
                }
                kinds[1] += u32::from(matches!(stored, EventOutcome::Rejected { .. }));
                kinds[2] += u32::from(matches!(stored, EventOutcome::Duplicate { .. }));
                assert_eq!(mem.take(&policy, m), stored, "seed {seed}, message {seq}");
            }
            pos = end;
        }
        assert!(kinds.iter().all(|k| *k > 0), "seed {seed}: {kinds:?}");
        let in_memory: Vec<(String, Vec<u8>)> = mem
            .views
            .iter()
            .map(|(k, v)| (k.clone(), v.encode_to_vec()))
            .collect();
        assert_eq!(log.view_bytes().unwrap(), in_memory, "seed {seed}");
    }
}

/// Every `K` record, as stored.
fn filter_postings(log: &Log) -> Vec<Vec<u8>> {
    log.tree()
        .scan_prefix([keys::FILTER_INDEX])
        .map(|i| i.unwrap().0.to_vec())
        .collect()
}

#[test]
fn the_list_filters_index_names_exactly_the_cases_whose_views_match_and_rebuilds_the_same() {
    use crate::Facet;
    for seed in 30..34u64 {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Policy::default()).unwrap();
        let msgs = stream(seed, 500);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pos = 0;
        while pos < msgs.len() {
            let end = (pos + rng.random_range(1..=60)).min(msgs.len());
            log.append_group(&msgs[pos..end], &TEST_KEYS).unwrap();
            pos = end;
        }
        let views = log.views().unwrap();
        let facets: Vec<(String, lianxi_domain::Facets)> = views
            .iter()
            .map(|v| (v.case_id.clone(), lianxi_domain::facets(v)))
            .collect();
        let want = |f: &dyn Fn(&lianxi_domain::Facets) -> bool, after: &str| -> Vec<String> {
            facets
                .iter()
                .filter(|(id, x)| id.as_str() > after && f(x))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for value in 0..8 {
            for after in ["", "C-2"] {
                assert_eq!(
                    log.case_ids_with(Facet::Status, &[value], after, 100)
                        .unwrap(),
                    want(&|x| x.status == value, after),
                    "seed {seed} status {value}"
                );
                assert_eq!(
                    log.case_ids_with(Facet::RiskLevel, &[value, value + 1], after, 100)
                        .unwrap(),
                    want(
                        &|x| x.risk_level == value || x.risk_level == value + 1,
                        after
                    ),
                    "seed {seed} risk {value}"
                );
                assert_eq!(
                    log.case_ids_with(Facet::Agency, &[value], after, 100)
                        .unwrap(),
                    want(&|x| x.agencies.contains(&value), after),
                    "seed {seed} agency {value}"
                );
                assert_eq!(
                    log.case_ids_with(Facet::Category, &[value], after, 2)
                        .unwrap(),
                    want(&|x| x.category == value, after)
                        .into_iter()
                        .take(2)
                        .collect::<Vec<_>>(),
                    "seed {seed} category {value}, a page of 2"
                );
            }
        }
        let mut overdue_somewhere = false;
        for now in [1_780_000_000, 1_781_000_000, 1_790_000_000, 1_900_000_000] {
            let now = ts(now);
            let expected: Vec<String> = views
                .iter()
                .filter(|v| !lianxi_domain::evaluate(v, &now).overdue.is_empty())
                .map(|v| v.case_id.clone())
                .collect();
            overdue_somewhere |= !expected.is_empty();
            assert_eq!(
                log.case_ids_overdue(&now, "", 100).unwrap(),
                expected,
                "seed {seed} overdue at {now:?}"
            );
        }
        assert!(overdue_somewhere, "seed {seed}: no case is ever overdue");
        let incremental = filter_postings(&log);
        log.rebuild().unwrap();
        assert_eq!(
            filter_postings(&log),
            incremental,
            "seed {seed}: rebuild differs"
        );
    }
}

#[test]
fn a_layout_3_directory_gets_its_filters_index_from_the_upgrade() {
    let (_dir, log) = small_log();
    let want = filter_postings(&log);
    assert!(!want.is_empty());
    // What layout 3 wrote: everything but the `K` postings.
    let t = log.tree();
    for k in &want {
        t.remove(k).unwrap();
    }
    t.insert(keys::LAYOUT, &[3]).unwrap();
    let refused = log.check_storage_layout().unwrap_err().to_string();
    assert!(
        refused.contains("layout 3") && refused.contains("lianxi rebuild"),
        "{refused}"
    );
    assert!(log.upgrade_storage_layout().unwrap().is_some());
    log.check_storage_layout().unwrap();
    assert_eq!(filter_postings(&log), want);
    assert!(
        log.upgrade_storage_layout().unwrap().is_none(),
        "once is enough"
    );
}

#[test]
fn a_layout_4_directory_is_read_as_it_is_and_marked_5_by_its_next_group() {
    let dir = tempfile::tempdir().unwrap();
    let msgs = stream(11, 300);
    let (first, rest) = msgs.split_at(150);
    let views = {
        let log = Log::open(dir.path(), Policy::default()).unwrap();
        log.append_group(first, &TEST_KEYS).unwrap();
        // What layout 4 wrote: every derived record, no mark.
        let t = log.tree();
        t.remove(keys::PROJECTED).unwrap();
        t.insert(keys::LAYOUT, &[4]).unwrap();
        t.flush().unwrap();
        log.view_bytes().unwrap()
    };
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    log.check_storage_layout().unwrap();
    assert_eq!(log.view_bytes().unwrap(), views);
    log.append_group(rest, &TEST_KEYS).unwrap();
    let t = log.tree();
    assert_eq!(t.get(keys::LAYOUT).unwrap().as_deref(), Some(&[5u8][..]));
    let mark = t.get(keys::PROJECTED).unwrap().unwrap();
    assert_eq!(keys::be_u64(&mark), Some(log.checkpoint().global_sequence));
    log.verify().unwrap();
    let grown = log.view_bytes().unwrap();
    log.rebuild().unwrap();
    assert_eq!(log.view_bytes().unwrap(), grown);
}
