//! Signed checkpoints: a C2SP tlog-checkpoint body (origin, tree size, base64
//! root hash, one per line) in a C2SP signed note, signed with ed25519
//! (c2sp.org/tlog-checkpoint, c2sp.org/signed-note, through the `signed_note`
//! crate).
//!
//! Checkpoints are node-local: each node signs with its own key, so two nodes
//! that read one stream hold the same root at the same size but issue
//! different signatures. Nothing here touches the deterministic log.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use signed_note::{Note, Signer, StandardSigner, StandardVerifier, Verifier, VerifierList};
use thiserror::Error;

use crate::merkle::Hash;

/// The signed-note algorithm byte of ed25519 keys.
const ALG_ED25519: u8 = 1;

/// What can be wrong with a key or a checkpoint. Each says what it means for
/// the person reading it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error(
        "{0:?} cannot be a log origin and key name: it must be non-empty and have no spaces or '+'"
    )]
    BadOrigin(String),
    #[error(
        "the signing key is not a signed-note ed25519 private key (PRIVATE+KEY+name+id+base64); make one with `lianxi keygen`"
    )]
    BadSigningKey,
    #[error(
        "the verifier key is not a signed-note ed25519 verifier key (name+keyid+base64, as `lianxi keygen` prints): {0}"
    )]
    BadVerifierKey(String),
    #[error("the checkpoint is not a well-formed signed note: {0}")]
    Malformed(String),
    #[error(
        "the checkpoint's signature does not verify with the trusted key {key}: {detail}; the checkpoint was not issued by that key, or was altered after signing"
    )]
    BadSignature { key: String, detail: String },
    #[error(
        "the checkpoint's origin is {found:?} but the trusted key is for {expected:?}: it is another log's checkpoint"
    )]
    WrongOrigin { found: String, expected: String },
    #[error("signing the checkpoint failed: {0}")]
    Signing(String),
}

/// A checkpoint: the log's origin, a tree size and the root hash of the tree
/// of that size, with the signed note it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The whole signed note, as issued.
    pub note: String,
}

/// The checkpoint body: origin, size and base64 root hash, each on its own
/// line (c2sp.org/tlog-checkpoint).
pub fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", BASE64.encode(root))
}

fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if signed_note::is_key_name_valid(origin) {
        Ok(())
    } else {
        Err(CheckpointError::BadOrigin(origin.to_owned()))
    }
}

/// A new random ed25519 signing key for the log `origin`, in the signed-note
/// private key format (`PRIVATE+KEY+<origin>+<keyid>+<base64>`).
pub fn generate_signing_key(origin: &str) -> Result<String, CheckpointError> {
    use rand::RngCore;
    check_origin(origin)?;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public: Vec<u8> = std::iter::once(ALG_ED25519)
        .chain(key.verifying_key().to_bytes())
        .collect();
    let private: Vec<u8> = std::iter::once(ALG_ED25519).chain(seed).collect();
    Ok(format!(
        "PRIVATE+KEY+{origin}+{:08x}+{}",
        signed_note::key_id(origin, &public),
        BASE64.encode(private)
    ))
}

/// Signs checkpoints with one key. The key's name is the log's origin.
#[derive(Clone)]
pub struct CheckpointSigner {
    signer: StandardSigner,
    origin: String,
    verifier_key: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("verifier_key", &self.verifier_key)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// A signer from a signed-note private key (surrounding whitespace is
    /// ignored, so a key file may end in a newline).
    pub fn new(signing_key: &str) -> Result<Self, CheckpointError> {
        let skey = signing_key.trim();
        let signer = StandardSigner::new(skey).map_err(|_| CheckpointError::BadSigningKey)?;
        // StandardSigner checked the format and the key id; derive the public
        // key to print the verifier key.
        // The base64 key is the fifth field (base64 itself may contain '+').
        let encoded = skey.splitn(5, '+').nth(4).unwrap_or_default();
        let raw = BASE64
            .decode(encoded)
            .map_err(|_| CheckpointError::BadSigningKey)?;
        let key = match raw.split_first() {
            Some((&ALG_ED25519, rest)) => ed25519_dalek::SigningKey::try_from(rest)
                .map_err(|_| CheckpointError::BadSigningKey)?,
            _ => return Err(CheckpointError::BadSigningKey),
        };
        let origin = signer.name().to_owned();
        let verifier_key = signed_note::new_ed25519_verifier_key(&origin, &key.verifying_key());
        Ok(CheckpointSigner {
            signer,
            origin,
            verifier_key,
        })
    }

    /// The log origin (the key's name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verifier key (`<origin>+<keyid>+<base64>`) to give to auditors.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The signed note of the checkpoint of the tree of `size` entries whose
    /// root is `root`.
    pub fn sign(&self, size: u64, root: &Hash) -> Result<String, CheckpointError> {
        let body = checkpoint_body(&self.origin, size, root);
        let mut note =
            Note::new(body.as_bytes(), &[]).map_err(|e| CheckpointError::Signing(e.to_string()))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| CheckpointError::Signing(e.to_string()))?;
        String::from_utf8(note.to_bytes()).map_err(|e| CheckpointError::Signing(e.to_string()))
    }
}

/// Reads a checkpoint note without checking any signature (for notes the
/// node itself stored). Use [`open_checkpoint`] for anything received.
pub fn parse_checkpoint(note: &str) -> Result<SignedCheckpoint, CheckpointError> {
    let parsed =
        Note::from_bytes(note.as_bytes()).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    parse_body(parsed.text(), note)
}

/// Checks a checkpoint received from a node against the trusted verifier key
/// and reads it: the note must carry a valid signature by that key, and its
/// origin must be the key's name.
pub fn open_checkpoint(
    note: &str,
    verifier_key: &str,
) -> Result<SignedCheckpoint, CheckpointError> {
    let verifier = StandardVerifier::new(verifier_key.trim())
        .map_err(|e| CheckpointError::BadVerifierKey(e.to_string()))?;
    let name = verifier.name().to_owned();
    let parsed =
        Note::from_bytes(note.as_bytes()).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| CheckpointError::BadSignature {
            key: verifier_key.trim().to_owned(),
            detail: e.to_string(),
        })?;
    let checkpoint = parse_body(parsed.text(), note)?;
    if checkpoint.origin != name {
        return Err(CheckpointError::WrongOrigin {
            found: checkpoint.origin,
            expected: name,
        });
    }
    Ok(checkpoint)
}

fn parse_body(text: &[u8], note: &str) -> Result<SignedCheckpoint, CheckpointError> {
    let malformed = |what: &str| CheckpointError::Malformed(what.to_owned());
    let text = std::str::from_utf8(text).map_err(|_| malformed("the body is not UTF-8"))?;
    // Extension lines after the third are allowed by the spec (and signed);
    // lianxi issues none and reads none.
    let mut lines = text.split('\n');
    let origin = lines.next().unwrap_or_default();
    let size = lines.next().unwrap_or_default();
    let root = lines.next().unwrap_or_default();
    if origin.is_empty() {
        return Err(malformed("the origin line is empty"));
    }
    if size.is_empty()
        || !size.bytes().all(|b| b.is_ascii_digit())
        || (size.len() > 1 && size.starts_with('0'))
    {
        return Err(malformed(
            "the second line is not a tree size (decimal, no leading zeros)",
        ));
    }
    let size: u64 = size
        .parse()
        .map_err(|_| malformed("the tree size is too large"))?;
    let root: Hash = BASE64
        .decode(root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| malformed("the third line is not a base64 32-byte root hash"))?;
    Ok(SignedCheckpoint {
        origin: origin.to_owned(),
        size,
        root,
        note: note.to_owned(),
    })
}

#[cfg(test)]
mod tests;
