//! The keys: a case's data key, the city's index key, and the node's
//! key-encryption key (KEK) that wraps both for the key store.
//!
//! Every key is 32 bytes, zeroized when dropped, and prints as `..` in
//! `Debug`, so a key can sit in a struct that is logged without leaking.

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// The version byte that starts a wrapped key.
const WRAP_VERSION: u8 = 1;
/// Associated data of a wrapped key, before the key's name.
const WRAP_AAD_PREFIX: &[u8] = b"lianxi.v1 key\0";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Version byte, nonce, 32-byte key, tag.
const WRAPPED_LEN: usize = 1 + NONCE_LEN + 32 + TAG_LEN;

/// Fills `N` bytes from the operating system's random number generator.
///
/// A node that cannot get randomness cannot make keys at all, so a failure
/// here is fatal rather than an error to pass along.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name([u8; 32]);

        impl $name {
            /// A new random key.
            pub fn generate() -> Self {
                Self(random())
            }

            /// The key with these bytes (as unwrapped from the key store).
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The key's bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.zeroize();
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }
    };
}

secret_key! {
    /// A case's data key: seals the case's personal values. Destroying it
    /// (in the key store) makes every sealed value of the case unreadable
    /// on every node and in every copy of the log.
    DataKey
}

secret_key! {
    /// The city-wide index key: turns a person reference into a person
    /// token, so that nodes recognise a repeat case without keeping the
    /// reference.
    IndexKey
}

secret_key! {
    /// The key-encryption key: wraps the data keys and the index key for
    /// the key store. It is the same on every node of a cluster, lives in a
    /// file outside the node's data directory, and never enters NATS.
    Kek
}

impl Kek {
    /// The key as 64 lower-case hex characters, for `lianxi kek` to write.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key from 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Kek> {
        let mut bytes = [0u8; 32];
        match hex::decode_to_slice(text.trim(), &mut bytes) {
            Ok(()) => Ok(Kek(bytes)),
            Err(_) => {
                bytes.zeroize();
                Err(Error::KekMalformed)
            }
        }
    }

    /// Reads the key from a file holding 64 hex characters.
    ///
    /// On Unix, a file that others than its owner may read is accepted with
    /// a warning: refusing it would stop a node at the worst moment, but the
    /// operator should know.
    pub fn load(path: &Path) -> Result<Kek> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::KekMissing {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(Error::KekUnreadable {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        warn_if_shared(path);
        Kek::from_hex(&text).map_err(|_| Error::KekFileMalformed {
            path: path.to_owned(),
        })
    }

    /// The first 8 bytes of SHA-256 of the key, in hex: tells keys apart in
    /// logs and errors without revealing them.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }

    /// Wraps `key` under the KEK, bound to `name` (the key's name in the
    /// store), with a random nonce: version byte 1, the 24-byte nonce, then
    /// the ciphertext and its tag.
    pub fn wrap(&self, name: &str, key: &[u8; 32]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random();
        let aad = wrap_aad(name);
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: key,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any 32-byte message");
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(WRAP_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Unwraps a key wrapped by [`Kek::wrap`] under the same `name`.
    pub fn unwrap(&self, name: &str, wrapped: &[u8]) -> Result<[u8; 32]> {
        let version = wrapped.first().copied().unwrap_or(0);
        if version != WRAP_VERSION || wrapped.len() != WRAPPED_LEN {
            return Err(Error::WrapFormat {
                name: name.to_owned(),
                version,
                len: wrapped.len(),
            });
        }
        let (nonce, sealed) = wrapped[1..].split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at the nonce length");
        let aad = wrap_aad(name);
        let opened = self
            .cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::Unwrap {
                name: name.to_owned(),
                kek_fingerprint: self.fingerprint(),
            })?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&opened);
        Ok(key)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

fn wrap_aad(name: &str) -> Vec<u8> {
    [WRAP_AAD_PREFIX, name.as_bytes()].concat()
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the key-encryption key file may be read by other users; `chmod 600` it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip() {
        let kek = Kek::generate();
        let key = DataKey::generate();
        let wrapped = kek.wrap("case.c-1", key.as_bytes());
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert_eq!(wrapped[0], WRAP_VERSION);
        assert_eq!(&kek.unwrap("case.c-1", &wrapped).unwrap(), key.as_bytes());
    }

    #[test]
    fn wrap_uses_a_fresh_nonce() {
        let kek = Kek::generate();
        let key = [7u8; 32];
        assert_ne!(kek.wrap("index", &key), kek.wrap("index", &key));
    }

    #[test]
    fn unwrap_with_another_name_fails() {
        let kek = Kek::generate();
        let wrapped = kek.wrap("case.c-1", &[1u8; 32]);
        let err = kek.unwrap("case.c-2", &wrapped).unwrap_err();
        assert!(matches!(err, Error::Unwrap { ref name, .. } if name == "case.c-2"));
    }

    #[test]
    fn unwrap_with_another_kek_fails_and_names_the_fingerprint() {
        let wrapped = Kek::generate().wrap("index", &[1u8; 32]);
        let other = Kek::generate();
        let err = other.unwrap("index", &wrapped).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&other.fingerprint()), "{text}");
        assert!(text.contains("different key-encryption key"), "{text}");
    }

    #[test]
    fn unwrap_of_a_tampered_byte_fails() {
        let kek = Kek::generate();
        let wrapped = kek.wrap("index", &[1u8; 32]);
        for i in 1..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(kek.unwrap("index", &bad), Err(Error::Unwrap { .. })),
                "byte {i}"
            );
        }
        let mut bad = wrapped.clone();
        bad[0] = 2;
        assert!(matches!(
            kek.unwrap("index", &bad),
            Err(Error::WrapFormat { version: 2, .. })
        ));
        assert!(matches!(
            kek.unwrap("index", &wrapped[..wrapped.len() - 1]),
            Err(Error::WrapFormat { .. })
        ));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let kek = Kek::generate();
        let hex = kek.to_hex();
        assert_eq!(hex.len(), 64);
        let back = Kek::from_hex(&format!("  {hex}\n")).unwrap();
        assert_eq!(back.as_bytes(), kek.as_bytes());
        assert_eq!(back.fingerprint(), kek.fingerprint());
        assert_eq!(kek.fingerprint().len(), 16);
        assert!(matches!(
            Kek::from_hex(&hex[..62]),
            Err(Error::KekMalformed)
        ));
        assert!(matches!(Kek::from_hex("zz"), Err(Error::KekMalformed)));
    }

    #[test]
    fn load_reads_a_file_and_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");

        let err = Kek::load(&path).unwrap_err();
        assert!(matches!(err, Error::KekMissing { .. }));
        assert!(err.to_string().contains("lianxi kek --out"), "{err}");

        let kek = Kek::generate();
        std::fs::write(&path, format!("{}\n", kek.to_hex())).unwrap();
        assert_eq!(Kek::load(&path).unwrap().as_bytes(), kek.as_bytes());

        std::fs::write(&path, "not a key, and not to be echoed").unwrap();
        let err = Kek::load(&path).unwrap_err();
        assert!(matches!(err, Error::KekFileMalformed { .. }));
        assert!(!err.to_string().contains("echoed"), "{err}");
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = DataKey::from_bytes([0xab; 32]);
        let text = format!("{key:?} {:?} {:?}", IndexKey::from_bytes([0xab; 32]), {
            Kek::from_hex(&"ab".repeat(32)).unwrap()
        });
        assert_eq!(text, "DataKey(..) IndexKey(..) Kek(..)");
    }
}
