use std::collections::HashSet;
use std::path::Path;

use lianxi_domain::Policy;
use lianxi_proto::v1::PrincipalRole;

use super::*;
use crate::Log;

fn open(path: &Path) -> Log {
    Log::open(path, Policy::default()).unwrap()
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn read(at: i64, principal: &str, case_id: &str) -> AccessRecord {
    AccessRecord {
        at: Some(ts(at)),
        principal: principal.into(),
        role: PrincipalRole::Agency as i32,
        scope: "police".into(),
        method: "/lianxi.v1.Cases/GetCase".into(),
        case_id: case_id.into(),
        purpose: "follow-up visit".into(),
        allowed: true,
        detail: String::new(),
        ..Default::default()
    }
}

fn filter(case_id: &str, principal: &str) -> ListAccessRequest {
    ListAccessRequest {
        case_id: case_id.into(),
        principal: principal.into(),
        ..Default::default()
    }
}

fn seqs(records: &[AccessRecord]) -> Vec<u64> {
    records.iter().map(|r| r.sequence).collect()
}

/// Ten records: times 100, 110, ..; principals alternate a/b; cases X, Y, Z,
/// and every fourth a list call with no case.
fn ten(access: &AccessLog) {
    for i in 0..10u64 {
        let principal = if i % 2 == 0 { "a" } else { "b" };
        let case = match i % 4 {
            0 => "X",
            1 => "Y",
            2 => "Z",
            _ => "",
        };
        access
            .append(read(100 + 10 * i as i64, principal, case))
            .unwrap();
    }
}

#[test]
fn append_sets_sequence_and_chains_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let access = open(dir.path()).access_log();
    let mut forged = read(1, "a", "X");
    forged.sequence = 77;
    forged.prev_hash = vec![9; 32];
    forged.hash = vec![9; 32];
    let first = access.append(forged).unwrap();
    let second = access.append(read(2, "a", "X")).unwrap();
    assert_eq!(first.sequence, 1);
    assert_eq!(first.prev_hash, vec![0; 32]);
    assert_eq!(first.hash, access_hash(&first).to_vec());
    assert_eq!(second.sequence, 2);
    assert_eq!(second.prev_hash, first.hash);
    assert_eq!(access.record(2).unwrap(), Some(second));
    assert_eq!(access.verify().unwrap(), 2);
}

#[test]
fn the_hash_covers_the_domain_tag_and_the_record_without_its_hash() {
    let mut r = read(1, "a", "X");
    r.sequence = 1;
    r.prev_hash = vec![0; 32];
    let mut h = Sha256::new();
    h.update(b"lianxi.v1.AccessRecord\0");
    h.update(r.encode_to_vec());
    let expected: [u8; 32] = h.finalize().into();
    assert_eq!(access_hash(&r), expected);
    r.hash = vec![1; 32];
    assert_eq!(access_hash(&r), expected);
}

#[test]
fn list_filters_by_case_principal_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let access = open(dir.path()).access_log();
    ten(&access);

    let (all, more) = access.list(&filter("", ""), 100).unwrap();
    assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
    assert!(!more);

    let (x, _) = access.list(&filter("X", ""), 100).unwrap();
    assert_eq!(seqs(&x), vec![1, 5, 9]);
    let (b, _) = access.list(&filter("", "b"), 100).unwrap();
    assert_eq!(seqs(&b), vec![2, 4, 6, 8, 10]);
    // Y is read only by b; Z only by a.
    let (ya, _) = access.list(&filter("Y", "a"), 100).unwrap();
    assert!(ya.is_empty());
    let (za, _) = access.list(&filter("Z", "a"), 100).unwrap();
    assert_eq!(seqs(&za), vec![3, 7]);
    // A case id that starts like another is not that case.
    access.append(read(500, "a", "XY")).unwrap();
    let (x, _) = access.list(&filter("X", ""), 100).unwrap();
    assert_eq!(seqs(&x), vec![1, 5, 9]);
    let (nobody, more) = access.list(&filter("", "ab"), 100).unwrap();
    assert!(nobody.is_empty() && !more);

    // from inclusive, before exclusive: 120 (seq 3) .. 150 (seq 6) excluded.
    let window = ListAccessRequest {
        from: Some(ts(120)),
        before: Some(ts(150)),
        ..Default::default()
    };
    let (w, _) = access.list(&window, 100).unwrap();
    assert_eq!(seqs(&w), vec![3, 4, 5]);
    let window_a = ListAccessRequest {
        principal: "a".into(),
        ..window.clone()
    };
    let (wa, _) = access.list(&window_a, 100).unwrap();
    assert_eq!(seqs(&wa), vec![3, 5]);
    let sub_second = ListAccessRequest {
        before: Some(Timestamp {
            seconds: 100,
            nanos: 1,
        }),
        ..Default::default()
    };
    assert_eq!(seqs(&access.list(&sub_second, 100).unwrap().0), vec![1]);
}

#[test]
fn list_pages_with_after_sequence_and_says_whether_more_follow() {
    let dir = tempfile::tempdir().unwrap();
    let access = open(dir.path()).access_log();
    ten(&access);
    for f in [filter("", ""), filter("", "a"), filter("X", "")] {
        let (everything, _) = access.list(&f, 1000).unwrap();
        let mut paged = Vec::new();
        let mut page = f.clone();
        loop {
            let (records, more) = access.list(&page, 2).unwrap();
            assert!(records.len() <= 2);
            paged.extend(seqs(&records));
            if !more {
                break;
            }
            assert_eq!(records.len(), 2, "a page short of the limit says no more");
            page.after_sequence = records.last().unwrap().sequence;
        }
        assert_eq!(paged, seqs(&everything), "filter {f:?}");
    }
    // An exactly full last page does not claim more.
    let (x, more) = access.list(&filter("X", ""), 3).unwrap();
    assert_eq!(x.len(), 3);
    assert!(!more);
    // Past the end.
    let past = ListAccessRequest {
        after_sequence: 10,
        ..Default::default()
    };
    assert_eq!(access.list(&past, 10).unwrap(), (vec![], false));
}

#[test]
fn the_chain_continues_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let log = open(dir.path());
        ten(&log.access_log());
        log.access_log().record(10).unwrap().unwrap()
    };
    let log = open(dir.path());
    let access = log.access_log();
    assert_eq!(access.verify().unwrap(), 10);
    let next = access.append(read(1000, "c", "X")).unwrap();
    assert_eq!(next.sequence, 11);
    assert_eq!(next.prev_hash, last.hash);
    assert_eq!(access.verify().unwrap(), 11);
    assert_eq!(
        seqs(&access.list(&filter("X", ""), 100).unwrap().0),
        vec![1, 5, 9, 11]
    );
    // The event log is untouched by all this.
    assert_eq!(log.verify().unwrap().entries, 0);
}

#[test]
fn verify_names_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let access = open(dir.path()).access_log();
    ten(&access);
    let key = record_key(4);
    let mut bytes = access.tree().get(key).unwrap().unwrap().to_vec();
    let at = bytes
        .windows(b"follow-up".len())
        .position(|w| w == b"follow-up")
        .unwrap();
    bytes[at] ^= 0x01; // "follow-up" -> "gollow-up"
    access.tree().insert(key, bytes).unwrap();
    match access.verify() {
        Err(Error::Corruption { at, detail }) => {
            assert_eq!(at, Location::Access(4));
            assert!(detail.contains("hash"), "{detail}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn verify_names_a_deleted_record_in_the_middle_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let access = open(dir.path()).access_log();
    ten(&access);
    access.tree().remove(record_key(6)).unwrap();
    match access.verify() {
        Err(Error::Corruption { at, .. }) => assert_eq!(at, Location::Access(6)),
        other => panic!("expected corruption, got {other:?}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let access = open(dir.path()).access_log();
    ten(&access);
    access.tree().remove(record_key(10)).unwrap();
    match access.verify() {
        Err(Error::Corruption { at, detail }) => {
            assert_eq!(at, Location::Access(10));
            assert!(detail.contains("head"), "{detail}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // The chain is not continued over the gap: the next record is 11, and
    // the missing 10 is still reported.
    assert_eq!(access.append(read(1, "a", "X")).unwrap().sequence, 11);
    assert!(matches!(
        access.verify(),
        Err(Error::Corruption {
            at: Location::Access(10),
            ..
        })
    ));
}

#[test]
fn verify_names_a_dropped_index_entry_and_a_stray_one() {
    let dir = tempfile::tempdir().unwrap();
    let access = open(dir.path()).access_log();
    ten(&access);
    access.tree().remove(index_key(BY_CASE, "X", 5)).unwrap();
    assert!(matches!(
        access.verify(),
        Err(Error::Corruption {
            at: Location::Access(5),
            ..
        })
    ));
    access
        .tree()
        .insert(index_key(BY_CASE, "X", 5), &[])
        .unwrap();
    assert_eq!(access.verify().unwrap(), 10);
    access
        .tree()
        .insert(index_key(BY_PRINCIPAL, "mallory", 5), &[])
        .unwrap();
    assert!(matches!(
        access.verify(),
        Err(Error::Corruption {
            at: Location::Access(5),
            ..
        })
    ));
}

#[test]
fn a_missing_head_with_records_present_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        ten(&log.access_log());
        log.access_log().tree().remove(HEAD).unwrap();
        log.access_log()
            .inner
            .store
            .handles()
            .unwrap()
            .db
            .flush()
            .unwrap();
    }
    match Log::open(dir.path(), Policy::default()) {
        Err(Error::Corruption { at, detail }) => {
            assert_eq!(at, Location::AccessHead);
            assert!(detail.contains("10"), "{detail}");
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, the log opened"),
    }
}

#[test]
fn concurrent_appends_from_threads_form_one_dense_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let threads = 8;
    let each = 25;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let access = log.access_log();
            std::thread::spawn(move || {
                (0..each)
                    .map(|i| {
                        access
                            .append(read(i, &format!("p{t}"), &format!("C{i}")))
                            .unwrap()
                            .sequence
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for h in handles {
        let mine = h.join().unwrap();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        seen.extend(mine);
    }
    let total = (threads * each) as u64;
    assert_eq!(seen, (1..=total).collect());
    assert_eq!(log.access_log().verify().unwrap(), total);
    let (p3, _) = log.access_log().list(&filter("", "p3"), 1000).unwrap();
    assert_eq!(p3.len(), each as usize);
}

/// A list call that showed several cases.
fn shown(at: i64, principal: &str, cases: &[&str]) -> AccessRecord {
    AccessRecord {
        method: "/lianxi.v1.Cases/ListCases".into(),
        case_ids: cases.iter().map(|c| c.to_string()).collect(),
        ..read(at, principal, "")
    }
}

#[test]
fn cases_shown_by_a_list_are_found_by_case() {
    let dir = tempfile::tempdir().unwrap();
    let access = open(dir.path()).access_log();
    access.append(read(1, "a", "X")).unwrap();
    access.append(shown(2, "b", &["W", "X", "Y"])).unwrap();
    access.append(shown(3, "b", &["Y", "Y"])).unwrap();
    // A read of one case that also names it among those shown is indexed
    // once.
    access
        .append(AccessRecord {
            case_ids: vec!["X".into()],
            ..read(4, "a", "X")
        })
        .unwrap();
    let (x, more) = access.list(&filter("X", ""), 10).unwrap();
    assert_eq!(seqs(&x), [1, 2, 4]);
    assert!(!more);
    let (y, _) = access.list(&filter("Y", ""), 10).unwrap();
    assert_eq!(seqs(&y), [2, 3]);
    let (y_by_b, _) = access.list(&filter("Y", "b"), 10).unwrap();
    assert_eq!(seqs(&y_by_b), [2, 3]);
    // Paging over the case index.
    let (first, more) = access.list(&filter("X", ""), 2).unwrap();
    assert_eq!(seqs(&first), [1, 2]);
    assert!(more);
    assert_eq!(access.verify().unwrap(), 4);
    // Every case shown needs its index entry.
    access.tree().remove(index_key(BY_CASE, "W", 2)).unwrap();
    assert!(matches!(
        access.verify(),
        Err(Error::Corruption {
            at: Location::Access(2),
            ..
        })
    ));
    access
        .tree()
        .insert(index_key(BY_CASE, "W", 2), &[])
        .unwrap();
    assert_eq!(access.verify().unwrap(), 4);
    // An index entry for a case the record did not show is caught.
    access
        .tree()
        .insert(index_key(BY_CASE, "Z", 2), &[])
        .unwrap();
    assert!(matches!(
        access.verify(),
        Err(Error::Corruption {
            at: Location::Access(2),
            ..
        })
    ));
}

/// Copies a closed data directory (sled's files and the marks beside them).
fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn access_records_lost_with_sleds_tail_are_found_at_open_and_recorded_as_a_gap() {
    // What a lost tail of sled's files does: the directory reopens as it
    // was five records earlier, while the high-water mark beside it (its
    // own fsynced file) kept the later state.
    let full = tempfile::tempdir().unwrap();
    let older = tempfile::tempdir().unwrap();
    {
        let log = open(full.path());
        let access = log.access_log();
        for i in 0..5 {
            access.append(read(100 + i, "a", "X")).unwrap();
        }
    }
    copy_dir(full.path(), older.path());
    {
        let access = open(full.path()).access_log();
        for i in 5..10 {
            access.append(read(100 + i, "b", "Y")).unwrap();
        }
    }
    std::fs::copy(
        full.path().join(ACCESS_HIGH_WATER_FILE),
        older.path().join(ACCESS_HIGH_WATER_FILE),
    )
    .unwrap();

    let access = open(older.path()).access_log();
    assert_eq!(access.lost(), Some(Lost { have: 5, had: 10 }));
    match access.verify() {
        Err(Error::Corruption { at, detail }) => {
            assert_eq!(at, Location::Access(6));
            assert!(detail.contains("6..=10 are missing"), "{detail}");
        }
        other => panic!("expected the loss to be named, got {other:?}"),
    }
    // The node records the gap: one record by the node, not allowed,
    // naming the lost sequences; then the chain verifies and the gap stays.
    let gap = access.record_gap(ts(999)).unwrap().expect("a gap record");
    assert_eq!(gap.sequence, 6);
    assert_eq!(gap.method, GAP_METHOD);
    assert!(!gap.allowed);
    assert!(gap.detail.contains("6..=10 were lost"), "{}", gap.detail);
    assert_eq!(access.lost(), None);
    assert_eq!(access.verify().unwrap(), 6);
    assert_eq!(access.record_gap(ts(1000)).unwrap(), None);
    drop(access);
    // Reopened: the gap record is there and nothing is reported lost (the
    // mark was raised past it).
    let access = open(older.path()).access_log();
    assert_eq!(access.lost(), None);
    let (all, _) = access.list(&ListAccessRequest::default(), 100).unwrap();
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6]);
    assert_eq!(all[5].method, GAP_METHOD);
}

#[test]
fn a_torn_mark_slot_falls_back_to_the_other_and_two_damaged_slots_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let access = open(dir.path()).access_log();
        ten(&access);
    }
    let path = dir.path().join(ACCESS_HIGH_WATER_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 128);
    // The slot written last (record 10) torn: the other (record 9) holds.
    let newest = (0..2)
        .max_by_key(|i| Mark::decode(&bytes[i * 64..i * 64 + 64]).unwrap().0)
        .unwrap();
    bytes[newest * 64 + 20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let access = open(dir.path()).access_log();
    assert_eq!(access.lost(), None);
    assert_eq!(access.verify().unwrap(), 10);
    drop(access);
    // Both slots damaged: the node cannot know what it had written.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x55;
    bytes[64 + 20] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    match Log::open(dir.path(), Policy::default()) {
        Err(Error::Damaged { detail, .. }) => {
            assert!(detail.contains("both of its slots"), "{detail}")
        }
        Err(other) => panic!("expected damage, got {other:?}"),
        Ok(_) => panic!("expected damage, the log opened"),
    }
}
