//! Sealing personal values before an event is hashed into the log, and
//! putting them back (or saying why not) when a caller reads.
//!
//! Pure and deterministic: the nonce is derived from the key, the envelope,
//! the path and the value (SIV-style), never drawn at random, so every
//! replica that reads the same event seals it to the same bytes and the log
//! hashes agree. Two different values under one key never share a nonce,
//! because the nonce is a PRF of the value; the same value in the same place
//! seals to the same bytes, which reveals only that it repeated there.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use lianxi_domain::personal::{for_each_personal_mut, kind_of, set_personal};
use lianxi_proto::v1::{CaseView, Event, LogEntry, PersonalKind, Redaction, Sealed};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::keys::{DataKey, IndexKey};

type HmacSha256 = Hmac<Sha256>;

const SEALED_AAD_PREFIX: &[u8] = b"lianxi.v1 sealed\0";
const NONCE_PREFIX: &[u8] = b"lianxi.v1 nonce\0";
const PERSON_PREFIX: &[u8] = b"lianxi.v1 person\0";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// What a caller may read: `None` to reveal a value of this kind, or why it
/// is held back. The verdict is asked before any decryption, so a withheld
/// value is never decrypted.
pub type Verdict<'a> = &'a dyn Fn(PersonalKind) -> Option<Redaction>;

/// The associated data of a sealed value: its envelope and its path, each
/// prefixed with its length so that no two envelopes encode alike.
fn sealed_aad(case_id: &str, event_id: &str, path: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(
        SEALED_AAD_PREFIX.len() + 12 + case_id.len() + event_id.len() + path.len(),
    );
    aad.extend_from_slice(SEALED_AAD_PREFIX);
    for part in [case_id, event_id, path] {
        let len = u32::try_from(part.len()).expect("an envelope field shorter than 4 GiB");
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn cipher(key: &DataKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.as_bytes().into())
}

/// Seals one personal value: the derived 24-byte nonce, then the
/// XChaCha20-Poly1305 ciphertext and tag. The same inputs always give the
/// same bytes.
pub fn seal_value(
    key: &DataKey,
    case_id: &str,
    event_id: &str,
    path: &str,
    plaintext: &str,
) -> Vec<u8> {
    let aad = sealed_aad(case_id, event_id, path);
    let mut tag = hmac(key.as_bytes(), &[NONCE_PREFIX, &aad, plaintext.as_bytes()]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&tag[..NONCE_LEN]);
    tag.zeroize();
    let sealed = cipher(key)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a value sealed by [`seal_value`] with the same key, envelope and
/// path.
pub fn open_value(
    key: &DataKey,
    case_id: &str,
    event_id: &str,
    path: &str,
    sealed: &[u8],
) -> Result<String> {
    let failed = || Error::Open {
        case_id: case_id.to_owned(),
        event_id: event_id.to_owned(),
        path: path.to_owned(),
    };
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(failed());
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at the nonce length");
    let aad = sealed_aad(case_id, event_id, path);
    let plain = cipher(key)
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .map_err(|_| failed())?;
    String::from_utf8(plain).map_err(|e| {
        e.into_bytes().zeroize();
        failed()
    })
}

/// Moves every personal value out of `event`, sealed under the case's data
/// key, in field order. The event keeps its fields, empty.
pub fn seal_entry(event: &mut Event, key: &DataKey) -> Vec<Sealed> {
    let case_id = event.case_id.clone();
    let event_id = event.event_id.clone();
    let mut sealed = Vec::new();
    for_each_personal_mut(event, &mut |path, _kind, value| {
        let plain = Zeroizing::new(std::mem::take(value));
        sealed.push(Sealed {
            path: path.to_owned(),
            ciphertext: seal_value(key, &case_id, &event_id, path, &plain),
            ..Default::default()
        });
    });
    sealed
}

/// Empties every personal value of `event`, for events that keep none
/// (rejected and duplicate events); returns how many there were.
pub fn strip(event: &mut Event) -> usize {
    let mut count = 0;
    for_each_personal_mut(event, &mut |_, _, value| {
        value.zeroize();
        count += 1;
    });
    count
}

/// The person token of a person reference: HMAC-SHA256 under the city's
/// index key, 32 bytes. The same reference gives the same token on every
/// node; the token does not give the reference back.
pub fn person_token(index: &IndexKey, person_ref: &str) -> Vec<u8> {
    hmac(index.as_bytes(), &[PERSON_PREFIX, person_ref.as_bytes()]).to_vec()
}

fn kind_at(path: &str) -> PersonalKind {
    kind_of(path).unwrap_or(PersonalKind::Unspecified)
}

/// Marks `item` as not shown, for `why`.
fn redact(item: &mut Sealed, why: Redaction) {
    item.ciphertext = Vec::new();
    item.redaction = why as i32;
    item.kind = kind_at(&item.path) as i32;
}

/// Decides one sealed item: the plaintext when the caller may read it and
/// it opens; otherwise `None`, with `item` marked with the reason.
fn reveal_one(
    item: &mut Sealed,
    case_id: &str,
    event_id: &str,
    key: Option<&DataKey>,
    verdict: Verdict<'_>,
) -> Option<String> {
    if let Some(why) = verdict(kind_at(&item.path)) {
        redact(item, why);
        return None;
    }
    let Some(key) = key else {
        redact(item, Redaction::KeyUnavailable);
        return None;
    };
    match open_value(key, case_id, event_id, &item.path, &item.ciphertext) {
        Ok(plain) => Some(plain),
        Err(e) => {
            tracing::warn!(case_id, event_id, path = %item.path, error = %e, "a sealed value does not open");
            redact(item, Redaction::KeyUnavailable);
            None
        }
    }
}

/// Puts back into `entry.event` every sealed value the caller may read
/// (`verdict` returns `None` for its kind) and that opens under `key`;
/// what remains in `entry.sealed` says why each other value is not shown,
/// with its ciphertext cleared. With no key (erased, or the key store
/// unreachable) nothing opens: pass a verdict that says `Erased` for an
/// erased case.
pub fn reveal_entry(entry: &mut LogEntry, key: Option<&DataKey>, verdict: Verdict<'_>) {
    let (case_id, event_id) = entry
        .event
        .as_ref()
        .map(|e| (e.case_id.clone(), e.event_id.clone()))
        .unwrap_or_default();
    for mut item in std::mem::take(&mut entry.sealed) {
        let Some(plain) = reveal_one(&mut item, &case_id, &event_id, key, verdict) else {
            entry.sealed.push(item);
            continue;
        };
        let placed = match entry.event.as_mut() {
            Some(event) => set_personal(event, &item.path, plain),
            None => false,
        };
        if !placed {
            tracing::warn!(case_id, event_id, path = %item.path, "a sealed value has no field in its event");
            redact(&mut item, Redaction::KeyUnavailable);
            entry.sealed.push(item);
        }
    }
}

/// The same as [`reveal_entry`] for a case view's `personal` values: a
/// value that may be read and opens goes to `person_ref` or
/// `mandatory_reporter` and its item is dropped.
pub fn reveal_view(view: &mut CaseView, key: Option<&DataKey>, verdict: Verdict<'_>) {
    let case_id = view.case_id.clone();
    for mut item in std::mem::take(&mut view.personal) {
        let event_id = item.event_id.clone();
        let Some(plain) = reveal_one(&mut item, &case_id, &event_id, key, verdict) else {
            view.personal.push(item);
            continue;
        };
        match item.path.as_str() {
            "case_opened.person_ref" => view.person_ref = plain,
            "case_opened.mandatory_reporter" => view.mandatory_reporter = plain,
            _ => {
                tracing::warn!(case_id, event_id, path = %item.path, "a case view holds a sealed value it has no field for");
                redact(&mut item, Redaction::KeyUnavailable);
                view.personal.push(item);
            }
        }
    }
}

/// A sealed value as a response may show it: path, kind and why it is not
/// shown, never its ciphertext. A value no decision was made on is
/// withheld.
pub fn conceal(item: &Sealed) -> Sealed {
    let mut out = item.clone();
    let why = match Redaction::try_from(item.redaction) {
        Ok(Redaction::Unspecified) | Err(_) => Redaction::Withheld,
        Ok(r) => r,
    };
    redact(&mut out, why);
    out
}

#[cfg(test)]
mod tests {
    use lianxi_domain::personal::VIEW_PERSONAL_PATHS;
    use lianxi_proto::Message;
    use lianxi_proto::v1::event::Body;
    use lianxi_proto::v1::{Agency, CaseOpened, Child, Person, ShelterAdmitted};

    use super::*;

    const KEY: [u8; 32] = [0x42; 32];

    /// Every personal value of the opening, for searching encoded bytes.
    const PLAINTEXTS: &[&str] = &[
        "REG-3301-000417",
        "Officer Zhang Wei, badge 88213",
        "Li Xiaohong",
        "330106198801014321",
        "+86 138 0571 2233",
        "12 Wensan Road, Xihu District, Hangzhou",
        "Chen Yutong",
        "2015-04-02",
        "Grade 4, Wensan Road Primary; asthma",
        "Chen Yuhang",
        "2019-11-30",
        "Kindergarten, lives with grandmother",
    ];

    fn opening() -> Event {
        Event {
            event_id: "evt-0001".into(),
            case_id: "HZ-2024-0001".into(),
            agency: Agency::Police as i32,
            body: Some(Body::CaseOpened(CaseOpened {
                jurisdiction: "330100/330106".into(),
                person_ref: PLAINTEXTS[0].into(),
                summary: "alarm call, injuries".into(),
                mandatory_reporter: PLAINTEXTS[1].into(),
                person: Some(Person {
                    name: PLAINTEXTS[2].into(),
                    id_number: PLAINTEXTS[3].into(),
                    phone: PLAINTEXTS[4].into(),
                    address: PLAINTEXTS[5].into(),
                }),
                children: vec![
                    Child {
                        name: PLAINTEXTS[6].into(),
                        birth_date: PLAINTEXTS[7].into(),
                        note: PLAINTEXTS[8].into(),
                    },
                    Child {
                        name: PLAINTEXTS[9].into(),
                        birth_date: PLAINTEXTS[10].into(),
                        note: PLAINTEXTS[11].into(),
                    },
                ],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn seal(key: &DataKey, case: &str, event: &str, path: &str, value: &str) -> Vec<u8> {
        seal_value(key, case, event, path, value)
    }

    fn sealed_entry(key: &DataKey) -> (Event, LogEntry) {
        let original = opening();
        let mut event = original.clone();
        let sealed = seal_entry(&mut event, key);
        let entry = LogEntry {
            event: Some(event),
            sealed,
            ..Default::default()
        };
        (original, entry)
    }

    #[test]
    fn seal_and_open_round_trip() {
        let key = DataKey::from_bytes(KEY);
        for value in ["x", "李晓红", PLAINTEXTS[5], &"long ".repeat(1000)] {
            let sealed = seal(&key, "c-1", "e-1", "case_opened.person.name", value);
            assert_eq!(sealed.len(), NONCE_LEN + value.len() + TAG_LEN);
            let opened = open_value(&key, "c-1", "e-1", "case_opened.person.name", &sealed);
            assert_eq!(opened.unwrap(), value);
        }
    }

    #[test]
    fn sealing_is_deterministic_across_key_instances() {
        let a = DataKey::from_bytes(KEY);
        let b = DataKey::from_bytes(KEY);
        let path = "case_opened.person_ref";
        let first = seal(&a, "c-1", "e-1", path, "REG-1");
        assert_eq!(first, seal(&a, "c-1", "e-1", path, "REG-1"));
        assert_eq!(first, seal(&b, "c-1", "e-1", path, "REG-1"));
    }

    #[test]
    fn any_change_of_input_changes_the_bytes_and_the_nonce() {
        let key = DataKey::from_bytes(KEY);
        let path = "case_opened.person_ref";
        let base = seal(&key, "c-1", "e-1", path, "REG-1");
        let others = [
            seal(&key, "c-1", "e-1", path, "REG-2"),
            seal(&key, "c-1", "e-1", "case_opened.person.name", "REG-1"),
            seal(&key, "c-1", "e-2", path, "REG-1"),
            seal(&key, "c-2", "e-1", path, "REG-1"),
            seal(&DataKey::from_bytes([1; 32]), "c-1", "e-1", path, "REG-1"),
            // Length prefixes: moving a character between fields matters.
            seal(&key, "c-1e", "-1", path, "REG-1"),
        ];
        for other in &others {
            assert_ne!(other, &base);
            assert_ne!(other[..NONCE_LEN], base[..NONCE_LEN]);
        }
    }

    #[test]
    fn opening_with_another_envelope_path_or_key_fails() {
        let key = DataKey::from_bytes(KEY);
        let path = "case_opened.person.phone";
        let sealed = seal(&key, "c-1", "e-1", path, "+86 138");
        let attempts = [
            open_value(&key, "c-1", "e-2", path, &sealed),
            open_value(&key, "c-2", "e-1", path, &sealed),
            open_value(&key, "c-1", "e-1", "case_opened.person.name", &sealed),
            open_value(&DataKey::from_bytes([1; 32]), "c-1", "e-1", path, &sealed),
            open_value(&key, "c-1", "e-1", path, &sealed[..NONCE_LEN + TAG_LEN - 1]),
        ];
        for attempt in attempts {
            let err = attempt.unwrap_err();
            assert!(matches!(err, Error::Open { .. }));
            assert!(!err.to_string().contains("+86"), "{err}");
        }
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_value(&key, "c-1", "e-1", path, &tampered).is_err());
    }

    #[test]
    fn the_plaintext_never_appears_in_the_sealed_bytes() {
        let key = DataKey::from_bytes(KEY);
        for value in PLAINTEXTS {
            let sealed = seal(&key, "c-1", "e-1", "case_opened.person.name", value);
            assert!(!contains(&sealed, value.as_bytes()), "{value}");
        }
    }

    #[test]
    fn seal_entry_empties_every_personal_field() {
        let key = DataKey::from_bytes(KEY);
        let (original, entry) = sealed_entry(&key);
        let event = entry.event.as_ref().unwrap();

        let paths: Vec<&str> = entry.sealed.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "case_opened.person_ref",
                "case_opened.mandatory_reporter",
                "case_opened.person.name",
                "case_opened.person.id_number",
                "case_opened.person.phone",
                "case_opened.person.address",
                "case_opened.children[0].name",
                "case_opened.children[0].birth_date",
                "case_opened.children[0].note",
                "case_opened.children[1].name",
                "case_opened.children[1].birth_date",
                "case_opened.children[1].note",
            ]
        );
        assert!(!lianxi_domain::personal::has_personal(event));
        for item in &entry.sealed {
            assert_eq!(item.redaction, 0);
            assert_eq!(item.kind, 0);
            assert!(item.event_id.is_empty());
        }
        // Everything else stays.
        let Some(Body::CaseOpened(b)) = &event.body else {
            panic!("not an opening")
        };
        assert_eq!(b.summary, "alarm call, injuries");
        assert_eq!(b.children.len(), 2);

        let encoded_event = event.encode_to_vec();
        let encoded_entry = entry.encode_to_vec();
        assert!(contains(
            &original.encode_to_vec(),
            PLAINTEXTS[0].as_bytes()
        ));
        for value in PLAINTEXTS {
            assert!(!contains(&encoded_event, value.as_bytes()), "{value}");
            assert!(!contains(&encoded_entry, value.as_bytes()), "{value}");
        }
    }

    #[test]
    fn seal_entry_is_deterministic() {
        let (_, a) = sealed_entry(&DataKey::from_bytes(KEY));
        let (_, b) = sealed_entry(&DataKey::from_bytes(KEY));
        assert_eq!(a.encode_to_vec(), b.encode_to_vec());
    }

    #[test]
    fn reveal_entry_with_everything_allowed_restores_the_event() {
        let key = DataKey::from_bytes(KEY);
        let (original, mut entry) = sealed_entry(&key);
        reveal_entry(&mut entry, Some(&key), &|_| None);
        assert!(entry.sealed.is_empty());
        assert_eq!(entry.event.as_ref(), Some(&original));
    }

    #[test]
    fn reveal_entry_withholds_whereabouts_only() {
        let key = DataKey::from_bytes(KEY);
        let (original, mut entry) = sealed_entry(&key);
        let withhold = |k| (k == PersonalKind::Whereabouts).then_some(Redaction::Withheld);
        reveal_entry(&mut entry, Some(&key), &withhold);

        assert_eq!(
            entry.sealed,
            [Sealed {
                path: "case_opened.person.address".into(),
                ciphertext: vec![],
                redaction: Redaction::Withheld as i32,
                event_id: String::new(),
                kind: PersonalKind::Whereabouts as i32,
            }]
        );
        let mut expected = original;
        if let Some(Body::CaseOpened(b)) = &mut expected.body {
            b.person.as_mut().unwrap().address.clear();
        }
        assert_eq!(entry.event, Some(expected));
    }

    #[test]
    fn reveal_entry_without_a_key_or_with_the_wrong_one_keeps_everything_sealed() {
        let key = DataKey::from_bytes(KEY);
        let wrong = DataKey::from_bytes([9; 32]);
        for key_given in [None, Some(&wrong)] {
            let (_, mut entry) = sealed_entry(&key);
            let before = entry.event.clone();
            reveal_entry(&mut entry, key_given, &|_| None);
            assert_eq!(entry.event, before);
            assert_eq!(entry.sealed.len(), PLAINTEXTS.len());
            for item in &entry.sealed {
                assert!(item.ciphertext.is_empty());
                assert_eq!(item.redaction, Redaction::KeyUnavailable as i32);
                assert_eq!(item.kind, kind_at(&item.path) as i32);
                assert_ne!(item.kind, PersonalKind::Unspecified as i32);
            }
        }
    }

    #[test]
    fn a_withheld_value_is_never_decrypted() {
        // With every kind withheld, even a wrong key leads to Withheld, not
        // to a failed decryption.
        let (_, mut entry) = sealed_entry(&DataKey::from_bytes(KEY));
        reveal_entry(&mut entry, Some(&DataKey::from_bytes([9; 32])), &|_| {
            Some(Redaction::LegalHold)
        });
        assert!(
            entry
                .sealed
                .iter()
                .all(|s| s.redaction == Redaction::LegalHold as i32)
        );
    }

    #[test]
    fn conceal_never_shows_ciphertext_and_keeps_a_decided_reason() {
        let (_, entry) = sealed_entry(&DataKey::from_bytes(KEY));
        assert_eq!(entry.sealed.len(), PLAINTEXTS.len());
        for item in &entry.sealed {
            let shown = conceal(item);
            assert!(!item.ciphertext.is_empty() && shown.ciphertext.is_empty());
            assert_eq!(shown.redaction, Redaction::Withheld as i32);
            assert_eq!(shown.kind, kind_at(&item.path) as i32);
            assert_eq!(shown.path, item.path);
            let erased = Sealed {
                redaction: Redaction::Erased as i32,
                ..item.clone()
            };
            assert_eq!(conceal(&erased).redaction, Redaction::Erased as i32);
        }
    }

    fn sealed_view(key: &DataKey) -> CaseView {
        let (_, entry) = sealed_entry(key);
        let personal = entry
            .sealed
            .into_iter()
            .filter(|s| VIEW_PERSONAL_PATHS.contains(&s.path.as_str()))
            .map(|s| Sealed {
                event_id: "evt-0001".into(),
                ..s
            })
            .collect();
        CaseView {
            case_id: "HZ-2024-0001".into(),
            personal,
            ..Default::default()
        }
    }

    #[test]
    fn reveal_view_puts_values_in_their_fields() {
        let key = DataKey::from_bytes(KEY);
        let mut view = sealed_view(&key);
        assert_eq!(view.personal.len(), 2);
        reveal_view(&mut view, Some(&key), &|_| None);
        assert!(view.personal.is_empty());
        assert_eq!(view.person_ref, PLAINTEXTS[0]);
        assert_eq!(view.mandatory_reporter, PLAINTEXTS[1]);
    }

    #[test]
    fn reveal_view_withholds_the_reporter_from_non_police() {
        let key = DataKey::from_bytes(KEY);
        let mut view = sealed_view(&key);
        let verdict = |k| (k == PersonalKind::Reporter).then_some(Redaction::Withheld);
        reveal_view(&mut view, Some(&key), &verdict);
        assert_eq!(view.person_ref, PLAINTEXTS[0]);
        assert!(view.mandatory_reporter.is_empty());
        assert_eq!(view.personal.len(), 1);
        let item = &view.personal[0];
        assert_eq!(item.path, "case_opened.mandatory_reporter");
        assert_eq!(item.event_id, "evt-0001");
        assert!(item.ciphertext.is_empty());
        assert_eq!(item.redaction, Redaction::Withheld as i32);
        assert_eq!(item.kind, PersonalKind::Reporter as i32);
    }

    #[test]
    fn reveal_view_checks_the_event_id() {
        let key = DataKey::from_bytes(KEY);
        let mut view = sealed_view(&key);
        view.personal[0].event_id = "evt-0002".into();
        reveal_view(&mut view, Some(&key), &|_| None);
        assert!(view.person_ref.is_empty());
        assert_eq!(view.mandatory_reporter, PLAINTEXTS[1]);
        assert_eq!(view.personal.len(), 1);
        assert_eq!(view.personal[0].redaction, Redaction::KeyUnavailable as i32);
    }

    #[test]
    fn strip_empties_and_counts() {
        let mut event = opening();
        assert_eq!(strip(&mut event), PLAINTEXTS.len());
        assert!(!lianxi_domain::personal::has_personal(&event));
        assert_eq!(strip(&mut event), 0);

        let mut shelter = Event {
            body: Some(Body::ShelterAdmitted(ShelterAdmitted {
                location: "Shelter 3".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(strip(&mut shelter), 1);
    }

    #[test]
    fn person_tokens_are_deterministic_and_keyed() {
        let index = IndexKey::from_bytes(KEY);
        let token = person_token(&index, "REG-1");
        assert_eq!(token.len(), 32);
        assert_eq!(token, person_token(&IndexKey::from_bytes(KEY), "REG-1"));
        assert_ne!(token, person_token(&index, "REG-2"));
        assert_ne!(token, person_token(&IndexKey::from_bytes([1; 32]), "REG-1"));
        // Not the nonce derivation or a bare HMAC of the reference.
        assert_ne!(token, hmac(&KEY, &[b"REG-1"]).to_vec());
    }
}
