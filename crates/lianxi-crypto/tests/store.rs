//! The key store and the events purge against a real nats-server, one per
//! test (`lianxi-testkit`: on a port it picked, with a temporary store),
//! killed on drop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use lianxi_crypto::{Error, Kek, KeyStore, purge_case_messages};
use lianxi_testkit::Nats;

const BUCKET: &str = "LIANXI_KEYS";

/// What these tests ask of a server beyond `lianxi-testkit`'s.
trait NatsExt {
    /// A key store over a new client connection: each is a node.
    async fn key_store(&self, kek: &Kek) -> KeyStore;
    /// Waits (up to 5 s) until `needle` is found in the store's files (or
    /// no longer found, with `present = false`): the server writes its
    /// blocks asynchronously. Returns the files holding it at the end.
    fn wait_on_disk(&self, needle: &[u8], present: bool) -> Vec<PathBuf>;
}

impl NatsExt for Nats {
    async fn key_store(&self, kek: &Kek) -> KeyStore {
        KeyStore::open(self.jetstream().await, BUCKET, 1, copy(kek))
            .await
            .expect("open the key store")
    }

    fn wait_on_disk(&self, needle: &[u8], present: bool) -> Vec<PathBuf> {
        let started = Instant::now();
        loop {
            let found = self.files_containing(needle);
            if found.is_empty() != present || started.elapsed() > Duration::from_secs(5) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn copy(kek: &Kek) -> Kek {
    Kek::from_hex(&kek.to_hex()).unwrap()
}

#[tokio::test]
async fn racing_nodes_use_one_key() {
    let nats = Nats::start();
    let kek = Kek::generate();
    // Both nodes open (and may both try to create) the bucket at once.
    let (a, b) = tokio::join!(nats.key_store(&kek), nats.key_store(&kek));

    for i in 0..20 {
        let case = format!("HZ-2024-{i:04}");
        let (ka, kb) = tokio::join!(a.ensure_case_key(&case), b.ensure_case_key(&case));
        let (ka, kb) = (ka.unwrap(), kb.unwrap());
        assert_eq!(ka.as_bytes(), kb.as_bytes(), "{case}");
        // A third node that never raced reads the same key.
        let c = nats.key_store(&kek).await;
        let kc = c.case_key(&case).await.unwrap().unwrap();
        assert_eq!(kc.as_bytes(), ka.as_bytes());
    }

    let (ia, ib) = tokio::join!(a.index_key(), b.index_key());
    assert_eq!(ia.unwrap().as_bytes(), ib.unwrap().as_bytes());

    // Different cases, different keys.
    let one = a.ensure_case_key("one").await.unwrap();
    let two = a.ensure_case_key("two").await.unwrap();
    assert_ne!(one.as_bytes(), two.as_bytes());
}

#[tokio::test]
async fn a_destroyed_key_is_gone_for_every_node() {
    let nats = Nats::start();
    let kek = Kek::generate();
    let a = nats.key_store(&kek).await;
    let b = nats.key_store(&kek).await;

    assert!(a.case_key("c-1").await.unwrap().is_none());
    let key = a.ensure_case_key("c-1").await.unwrap();
    let keep = a.ensure_case_key("c-2").await.unwrap();
    let index = a.index_key().await.unwrap();
    assert_eq!(
        b.case_key("c-1").await.unwrap().unwrap().as_bytes(),
        key.as_bytes()
    );

    a.destroy_case_key("c-1").await.unwrap();
    assert!(a.case_key("c-1").await.unwrap().is_none());
    // B still holds it in memory until it forgets it.
    assert!(b.case_key("c-1").await.unwrap().is_some());
    b.forget("c-1");
    assert!(b.case_key("c-1").await.unwrap().is_none());
    let fresh = nats.key_store(&kek).await;
    assert!(fresh.case_key("c-1").await.unwrap().is_none());

    // Other keys stay.
    assert_eq!(
        fresh.case_key("c-2").await.unwrap().unwrap().as_bytes(),
        keep.as_bytes()
    );
    assert_eq!(
        fresh.index_key().await.unwrap().as_bytes(),
        index.as_bytes()
    );

    // Idempotent, and fine for a key that never existed.
    a.destroy_case_key("c-1").await.unwrap();
    b.destroy_case_key("c-1").await.unwrap();
    a.destroy_case_key("never-created").await.unwrap();

    // A case id that cannot name a key is refused before any request.
    assert!(matches!(
        a.destroy_case_key("c.1").await,
        Err(Error::InvalidCaseId { .. })
    ));
}

#[tokio::test]
async fn a_wrong_kek_fails_with_a_clear_error() {
    let nats = Nats::start();
    let right = Kek::generate();
    let a = nats.key_store(&right).await;
    a.ensure_case_key("c-1").await.unwrap();
    a.index_key().await.unwrap();

    let wrong = Kek::generate();
    let b = nats.key_store(&wrong).await;
    for result in [
        b.case_key("c-1").await.map(|_| ()),
        b.ensure_case_key("c-1").await.map(|_| ()),
        b.index_key().await.map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Unwrap { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&wrong.fingerprint()), "{text}");
        assert!(text.contains("different key-encryption key"), "{text}");
        assert!(!text.contains(&wrong.to_hex()), "{text}");
    }
    // The wrong KEK did not replace the key.
    assert!(a.case_key("c-1").await.unwrap().is_some());
    let fresh = nats.key_store(&right).await;
    assert!(fresh.case_key("c-1").await.unwrap().is_some());
}

#[tokio::test]
async fn destroy_leaves_no_copy_of_the_key_in_the_server_store() {
    let nats = Nats::start();
    let kek = Kek::generate();
    let store = nats.key_store(&kek).await;
    let key = store.ensure_case_key("c-erase").await.unwrap();
    let kept = store.ensure_case_key("c-kept").await.unwrap();

    // The wrapped bytes as stored, read past the key store.
    let kv = nats.jetstream().await.get_key_value(BUCKET).await.unwrap();
    let wrapped = kv.get("case.c-erase").await.unwrap().unwrap();
    let wrapped_kept = kv.get("case.c-kept").await.unwrap().unwrap();

    // The scan works: the wrapped key is on disk, the bare key is not.
    let before = nats.wait_on_disk(&wrapped, true);
    assert!(!before.is_empty(), "the wrapped key never reached disk");
    eprintln!("wrapped key before destroy, in: {before:?}");
    assert!(nats.files_containing(key.as_bytes()).is_empty());

    store.destroy_case_key("c-erase").await.unwrap();

    let after = nats.wait_on_disk(&wrapped, false);
    eprintln!("wrapped key after destroy, in: {after:?}");
    assert!(
        after.is_empty(),
        "the destroyed key's wrapped bytes are still on disk in {after:?}"
    );
    // Nor any part of it long enough to matter (the 24-byte nonce, the
    // 48-byte ciphertext and tag).
    assert!(nats.files_containing(&wrapped[1..25]).is_empty());
    assert!(nats.files_containing(&wrapped[25..]).is_empty());
    assert!(nats.files_containing(key.as_bytes()).is_empty());

    // The other key is untouched, on disk and in the bucket.
    assert!(!nats.files_containing(&wrapped_kept).is_empty());
    assert_eq!(
        store.case_key("c-kept").await.unwrap().unwrap().as_bytes(),
        kept.as_bytes()
    );

    // The same after the server stops and starts again on its files.
    drop(store);
    let nats = Nats::restart(nats.stop());
    assert!(nats.files_containing(&wrapped).is_empty());
    let store = nats.key_store(&kek).await;
    assert!(store.case_key("c-erase").await.unwrap().is_none());
    assert_eq!(
        store.case_key("c-kept").await.unwrap().unwrap().as_bytes(),
        kept.as_bytes()
    );
    assert!(nats.files_containing(&wrapped).is_empty());
}

#[tokio::test]
async fn a_key_made_after_an_erasure_is_new_and_is_erased_too() {
    // A second key for the same case after an erasure is a new key, and
    // destroying it erases it too.
    let nats = Nats::start();
    let kek = Kek::generate();
    let store = nats.key_store(&kek).await;
    let first = store.ensure_case_key("c-1").await.unwrap();
    store.destroy_case_key("c-1").await.unwrap();
    let second = store.ensure_case_key("c-1").await.unwrap();
    assert_ne!(first.as_bytes(), second.as_bytes());
    let kv = nats.jetstream().await.get_key_value(BUCKET).await.unwrap();
    let wrapped = kv.get("case.c-1").await.unwrap().unwrap();
    assert!(!nats.wait_on_disk(&wrapped, true).is_empty());
    store.destroy_case_key("c-1").await.unwrap();
    assert!(nats.wait_on_disk(&wrapped, false).is_empty());
}

const EVENTS: &str = "lianxi.v1.events";

/// Every message left in the stream, as (sequence, subject, payload).
async fn remaining(stream: &stream::Stream, last: u64) -> Vec<(u64, String, String)> {
    let mut left = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            left.push((
                seq,
                m.subject.to_string(),
                String::from_utf8(m.payload.to_vec()).unwrap(),
            ));
        }
    }
    left
}

#[tokio::test]
async fn purge_case_messages_drops_only_the_case_below_the_sequence() {
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let stream = js
        .create_stream(stream::Config {
            name: "LIANXI_EVENTS".into(),
            subjects: vec![format!("{EVENTS}.>")],
            ..Default::default()
        })
        .await
        .unwrap();

    let publish = |subject: &str, payload: &str| {
        let js = js.clone();
        let (subject, payload) = (subject.to_owned(), payload.to_owned());
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        }
    };
    publish(&format!("{EVENTS}.police.case-a"), "a1 Li Xiaohong").await; // 1
    publish(&format!("{EVENTS}.police.case-b"), "b1").await; // 2
    publish(&format!("{EVENTS}.court.case-a"), "a2 12 Wensan Road").await; // 3
    publish(&format!("{EVENTS}.police.case-ab"), "ab1").await; // 4
    let erasure = publish(&format!("{EVENTS}.committee.case-a"), "a3 erasure").await; // 5
    publish(&format!("{EVENTS}.police.case-a"), "a4 after").await; // 6
    publish(&format!("{EVENTS}.police.case-b"), "b2").await; // 7
    assert_eq!(erasure, 5);

    // Nothing below sequence 1; sequence 0 is not "everything".
    assert_eq!(
        purge_case_messages(&stream, EVENTS, "case-a", 0)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        purge_case_messages(&stream, EVENTS, "case-a", 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(remaining(&stream, 7).await.len(), 7);

    let purged = purge_case_messages(&stream, EVENTS, "case-a", erasure)
        .await
        .unwrap();
    assert_eq!(purged, 2);
    let left = remaining(&stream, 7).await;
    let left: Vec<(u64, &str, &str)> = left
        .iter()
        .map(|(s, subj, p)| (*s, subj.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        left,
        [
            (2, "lianxi.v1.events.police.case-b", "b1"),
            (4, "lianxi.v1.events.police.case-ab", "ab1"),
            (5, "lianxi.v1.events.committee.case-a", "a3 erasure"),
            (6, "lianxi.v1.events.police.case-a", "a4 after"),
            (7, "lianxi.v1.events.police.case-b", "b2"),
        ]
    );

    // Idempotent.
    assert_eq!(
        purge_case_messages(&stream, EVENTS, "case-a", erasure)
            .await
            .unwrap(),
        0
    );
    assert!(matches!(
        purge_case_messages(&stream, EVENTS, "case-*", erasure).await,
        Err(Error::InvalidCaseId { .. })
    ));

    // The removed messages' plain text is overwritten in the server's
    // files; the kept ones are still there.
    for needle in ["a1 Li Xiaohong", "a2 12 Wensan Road"] {
        let found = nats.wait_on_disk(needle.as_bytes(), false);
        eprintln!("after purge_case_messages, {needle:?} is in: {found:?}");
        assert!(found.is_empty(), "{needle:?} is still in {found:?}");
    }
    assert!(!nats.files_containing(b"a3 erasure").is_empty());
    assert!(!nats.files_containing(b"b1").is_empty());
}

#[tokio::test]
async fn a_stream_purge_alone_leaves_the_plain_text_in_the_server_files() {
    // The control for the test above: what a bare purge (no erase) leaves.
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let stream = js
        .create_stream(stream::Config {
            name: "LIANXI_EVENTS".into(),
            subjects: vec![format!("{EVENTS}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let subject = format!("{EVENTS}.police.case-a");
    js.publish(subject.clone(), "a1 Li Xiaohong".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(subject.clone(), "a2 after".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!nats.wait_on_disk(b"a1 Li Xiaohong", true).is_empty());
    let purged = stream.purge().filter(subject).sequence(2).await.unwrap();
    assert_eq!(purged.purged, 1);
    let found = nats.files_containing(b"a1 Li Xiaohong");
    eprintln!("after a bare purge, \"a1 Li Xiaohong\" is in: {found:?}");
}

#[tokio::test]
async fn a_bare_kv_purge_leaves_the_wrapped_key_in_the_server_files() {
    // The control for `destroy_leaves_no_copy_of_the_key_in_the_server_store`:
    // what `kv.purge` alone (no erase) leaves.
    let nats = Nats::start();
    let store = nats.key_store(&Kek::generate()).await;
    store.ensure_case_key("c-1").await.unwrap();
    let kv = nats.jetstream().await.get_key_value(BUCKET).await.unwrap();
    let wrapped = kv.get("case.c-1").await.unwrap().unwrap();
    assert!(!nats.wait_on_disk(&wrapped, true).is_empty());
    kv.purge("case.c-1").await.unwrap();
    assert!(kv.get("case.c-1").await.unwrap().is_none());
    let found = nats.files_containing(&wrapped);
    eprintln!("after a bare kv.purge, the wrapped key is in: {found:?}");
}

#[tokio::test]
async fn a_plain_key_value_bucket_still_destroys_keys_without_erasing_them() {
    // `nats kv add` and `create_key_value` make a bucket that denies
    // deleting single messages, and nats-server refuses to lift that
    // ("stream configuration update can not cancel deny message deletes").
    // The key is still destroyed for every reader; its wrapped bytes stay
    // in the server's files.
    let nats = Nats::start();
    let js = nats.jetstream().await;
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: BUCKET.into(),
        history: 1,
        ..Default::default()
    })
    .await
    .unwrap();

    let kek = Kek::generate();
    let store = nats.key_store(&kek).await;
    let after = js.get_stream(format!("KV_{BUCKET}")).await.unwrap();
    assert!(after.cached_info().config.deny_delete);

    store.ensure_case_key("c-1").await.unwrap();
    let kv = js.get_key_value(BUCKET).await.unwrap();
    let wrapped = kv.get("case.c-1").await.unwrap().unwrap();
    assert!(!nats.wait_on_disk(&wrapped, true).is_empty());
    store.destroy_case_key("c-1").await.unwrap();
    assert!(store.case_key("c-1").await.unwrap().is_none());
    let fresh = nats.key_store(&kek).await;
    assert!(fresh.case_key("c-1").await.unwrap().is_none());
    let found = nats.files_containing(&wrapped);
    eprintln!("deny-delete bucket: after destroy, the wrapped key is in: {found:?}");
}

#[tokio::test]
async fn nodes_destroying_the_same_key_at_once_both_succeed() {
    let nats = Nats::start();
    let kek = Kek::generate();
    let a = nats.key_store(&kek).await;
    let b = nats.key_store(&kek).await;
    for i in 0..10 {
        let case = format!("c-{i}");
        a.ensure_case_key(&case).await.unwrap();
        let (ra, rb) = tokio::join!(a.destroy_case_key(&case), b.destroy_case_key(&case));
        ra.unwrap();
        rb.unwrap();
        assert!(a.case_key(&case).await.unwrap().is_none());
    }
}
