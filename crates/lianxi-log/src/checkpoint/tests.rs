use super::*;
use crate::Log;
use lianxi_domain::Policy;

const ORIGIN: &str = "lianxi.test/log";

fn signer(origin: &str) -> CheckpointSigner {
    CheckpointSigner::new(&generate_signing_key(origin).unwrap()).unwrap()
}

fn root(b: u8) -> Hash {
    [b; 32]
}

#[test]
fn a_signed_checkpoint_opens_with_its_key_and_says_what_it_signed() {
    let s = signer(ORIGIN);
    let note = s.sign(42, &root(7)).unwrap();
    // The C2SP body: origin, size, base64 root; then a blank line and one
    // signature line "— <name> <base64>".
    let (body, sigs) = note.split_once("\n\n").unwrap();
    assert_eq!(
        format!("{body}\n"),
        checkpoint_body(ORIGIN, 42, &root(7)),
        "{note}"
    );
    assert!(sigs.starts_with(&format!("\u{2014} {ORIGIN} ")), "{note}");
    let cp = open_checkpoint(&note, s.verifier_key()).unwrap();
    assert_eq!(cp.origin, ORIGIN);
    assert_eq!(cp.size, 42);
    assert_eq!(cp.root, root(7));
    assert_eq!(cp.note, note);
    assert_eq!(parse_checkpoint(&note).unwrap(), cp);
    // The verifier key is name+keyid+base64 and the signing key round-trips.
    assert!(s.verifier_key().starts_with(&format!("{ORIGIN}+")));
    assert!(
        s.verifier_key()
            .splitn(3, '+')
            .nth(2)
            .is_some_and(|k| k.len() == 44)
    );
}

#[test]
fn another_key_for_the_same_origin_is_rejected() {
    let s = signer(ORIGIN);
    let other = signer(ORIGIN);
    let note = s.sign(3, &root(1)).unwrap();
    let err = open_checkpoint(&note, other.verifier_key()).unwrap_err();
    assert!(
        matches!(err, CheckpointError::BadSignature { .. }),
        "{err:?}"
    );
}

#[test]
fn a_checkpoint_of_another_origin_is_rejected() {
    // Same key material, another name: the key id differs, so the note is
    // not signed by the trusted key at all.
    let s = signer("other.example/log");
    let note = s.sign(3, &root(1)).unwrap();
    let trusted = signer(ORIGIN);
    assert!(open_checkpoint(&note, trusted.verifier_key()).is_err());

    // A note whose body names another origin but is validly signed by the
    // trusted key: refused for its origin.
    let key = generate_signing_key(ORIGIN).unwrap();
    let s = CheckpointSigner::new(&key).unwrap();
    let body = checkpoint_body("impostor.example/log", 3, &root(1));
    let mut n = signed_note::Note::new(body.as_bytes(), &[]).unwrap();
    n.add_sigs(&[&s.signer]).unwrap();
    let note = String::from_utf8(n.to_bytes()).unwrap();
    let err = open_checkpoint(&note, s.verifier_key()).unwrap_err();
    assert_eq!(
        err,
        CheckpointError::WrongOrigin {
            found: "impostor.example/log".into(),
            expected: ORIGIN.into()
        }
    );
}

#[test]
fn an_edited_size_or_root_breaks_the_signature() {
    let s = signer(ORIGIN);
    let note = s.sign(100, &root(9)).unwrap();
    let edited_size = note.replacen("\n100\n", "\n101\n", 1);
    assert_ne!(edited_size, note);
    assert!(matches!(
        open_checkpoint(&edited_size, s.verifier_key()),
        Err(CheckpointError::BadSignature { .. })
    ));
    let edited_root = note.replacen(&BASE64.encode(root(9)), &BASE64.encode(root(8)), 1);
    assert_ne!(edited_root, note);
    assert!(matches!(
        open_checkpoint(&edited_root, s.verifier_key()),
        Err(CheckpointError::BadSignature { .. })
    ));
    // A signature with one bit flipped.
    let (body, sig) = note.split_once("\n\n").unwrap();
    let mut sig = sig.to_owned();
    let last = sig.trim_end().chars().last().unwrap();
    let swapped = if last == 'A' { 'B' } else { 'A' };
    let at = sig.trim_end().len() - 1;
    sig.replace_range(at..at + 1, &swapped.to_string());
    let bad = format!("{body}\n\n{sig}");
    assert!(open_checkpoint(&bad, s.verifier_key()).is_err());
}

#[test]
fn malformed_keys_and_notes_are_errors_not_panics() {
    for k in ["", "PRIVATE+KEY", "PRIVATE+KEY+a+00000000+AAAA", "garbage"] {
        assert!(CheckpointSigner::new(k).is_err(), "{k:?}");
    }
    assert!(generate_signing_key("has space").is_err());
    assert!(generate_signing_key("a+b").is_err());
    let s = signer(ORIGIN);
    for n in ["", "\n", "x\n\n", "a\nb\nc\n\n— x y\n", "\u{0}"] {
        assert!(open_checkpoint(n, s.verifier_key()).is_err(), "{n:?}");
        let _ = parse_checkpoint(n);
    }
    assert!(matches!(
        open_checkpoint(&s.sign(1, &root(0)).unwrap(), "not a key"),
        Err(CheckpointError::BadVerifierKey(_))
    ));
}

#[test]
fn every_issued_checkpoint_is_kept_in_order_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let s = signer(ORIGIN);
    let notes: Vec<(u64, String)> = (1..=5u64)
        .map(|n| (n * 10, s.sign(n * 10, &root(n as u8)).unwrap()))
        .collect();
    {
        let log = Log::open(dir.path(), Policy::default()).unwrap();
        assert_eq!(log.latest_checkpoint().unwrap(), None);
        for (size, note) in &notes {
            log.store_checkpoint(note, *size).unwrap();
        }
        // The same note again is the same checkpoint: not stored twice.
        let again = log.store_checkpoint(&notes[4].1, 50).unwrap();
        assert_eq!(again.number, 5);
        // The deterministic log is untouched.
        assert_eq!(log.tree_size(), 0);
        assert!(log.entries(0, 10).unwrap().is_empty());
    }
    let log = Log::open(dir.path(), Policy::default()).unwrap();
    let all = log.checkpoints(0, 100).unwrap();
    assert_eq!(all.len(), 5);
    for (i, (c, (size, note))) in all.iter().zip(&notes).enumerate() {
        assert_eq!(c.number, i as u64 + 1);
        assert_eq!(c.size, *size);
        assert_eq!(&c.note, note);
        assert_eq!(
            open_checkpoint(&c.note, s.verifier_key()).unwrap().size,
            *size
        );
    }
    let latest = log.latest_checkpoint().unwrap().unwrap();
    assert_eq!((latest.number, latest.size), (5, 50));
    let page = log.checkpoints(2, 2).unwrap();
    assert_eq!(
        page.iter().map(|c| c.number).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let next = log
        .store_checkpoint(&s.sign(60, &root(6)).unwrap(), 60)
        .unwrap();
    assert_eq!(next.number, 6);
}
