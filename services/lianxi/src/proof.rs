//! `lianxi keygen` and the standalone verifier `lianxi verify --node`: it
//! trusts nothing but the node's verifier key. It checks the node's signed
//! checkpoint, every entry's hash and the chain, the Merkle root over the
//! signed size, consistency with the last checkpoint it saw (kept in a local
//! state file), and optionally one event's inclusion proof.
//!
//! `lianxi export` writes a node's fresh signed checkpoint and every entry
//! up to its size to one file, and `lianxi verify --file` runs the same
//! checks on it (one shared function, `check_log`, over a stream of entries
//! from the node or from the file). The file format, version 1:
//!
//! ```text
//! "lianxi-log-export v1\n"                       21 bytes
//! varint(len(note)) note                         the signed checkpoint note, UTF-8
//! varint(len(entry 1)) LogEntry 1                 protobuf, length-delimited
//! ...                                            (prost's encode_length_delimited)
//! varint(len(entry N)) LogEntry N                 N = the checkpoint's tree size; then EOF
//! ```
//!
//! With the file holding every entry, consistency with a saved checkpoint is
//! the root of the file's first saved-size entries equal to the saved root,
//! and an inclusion proof is computed from the file's leaves, then checked
//! with `lianxi_log::verify_inclusion` like a node's.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use lianxi_log::{
    Hash, SignedCheckpoint, entry_hash, leaf_hash, node_hash, open_checkpoint, verify_consistency,
    verify_inclusion,
};
use lianxi_proto::v1::{
    GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest, GetTreeHeadRequest,
    LogEntry, ReadLogRequest, audit_client::AuditClient,
};
use tokio_stream::{Stream, StreamExt};

use crate::query::{Conn, Svc, explain};

/// Writes a file only its owner may read, refusing to replace one.
pub(crate) fn write_secret(path: &Path, contents: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).with_context(|| {
        format!(
            "cannot create {} (an existing key is never overwritten)",
            path.display()
        )
    })?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// `lianxi keygen`: a new signing key in `out`, the verifier key printed.
pub(crate) fn keygen(origin: &str, out: &Path) -> Result<()> {
    let skey = lianxi_log::generate_signing_key(origin)?;
    let signer = lianxi_log::CheckpointSigner::new(&skey)?;
    write_secret(out, &format!("{skey}\n"))?;
    eprintln!(
        "wrote the signing key for {origin} to {} (keep it secret; start the node with --signing-key {0})",
        out.display()
    );
    eprintln!("give this verifier key to auditors (`lianxi verify --node ADDR --key KEY`):");
    println!("{}", signer.verifier_key());
    Ok(())
}

/// The key name of a verifier key: the log's origin.
fn key_origin(key: &str) -> Result<&str> {
    key.trim()
        .split_once('+')
        .map(|(name, _)| name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "--key {key:?} is not a verifier key (name+keyid+base64, as `lianxi keygen` prints)"
            )
        })
}

/// Where the state of `origin` is kept by default:
/// `~/.lianxi/verify-state-<origin>.json`, the origin made file-safe.
fn default_state(origin: &str) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| {
        anyhow!("HOME is not set; pass --state FILE to say where to keep the last checkpoint seen")
    })?;
    let safe: String = origin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(PathBuf::from(home)
        .join(".lianxi")
        .join(format!("verify-state-{safe}.json")))
}

/// The checkpoint saved by an earlier run, checked with the key again (a
/// state file cannot smuggle in a checkpoint the key did not sign).
fn load_state(path: &Path, key: &str) -> Result<Option<SignedCheckpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("the state file {} is not JSON", path.display()))?;
    let note = value
        .get("note")
        .and_then(|n| n.as_str())
        .ok_or_else(|| anyhow!("the state file {} has no \"note\"", path.display()))?;
    let saved = open_checkpoint(note, key).with_context(|| {
        format!(
            "the checkpoint saved in {} does not verify with this key",
            path.display()
        )
    })?;
    Ok(Some(saved))
}

fn save_state(path: &Path, cp: &SignedCheckpoint) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let value = serde_json::json!({
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": hex::encode(cp.root),
        "note": cp.note,
    });
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&value)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The RFC 6962 root of leaves added one at a time, in O(log n) memory: a
/// stack of perfect subtrees of strictly decreasing size.
#[derive(Default)]
struct Compact {
    stack: Vec<(u32, [u8; 32])>,
}

impl Compact {
    fn push(&mut self, leaf: [u8; 32]) {
        let mut node = (0u32, leaf);
        while let Some(&(level, left)) = self.stack.last() {
            if level != node.0 {
                break;
            }
            self.stack.pop();
            node = (level + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
    }

    fn root(&self) -> [u8; 32] {
        let mut nodes = self.stack.iter().rev();
        match nodes.next() {
            None => lianxi_log::empty_root(),
            Some(&(_, first)) => nodes.fold(first, |right, (_, left)| node_hash(left, &right)),
        }
    }
}

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| anyhow!("{what} is {} bytes, not 32", bytes.len()))
}

/// Opens the checkpoint note with the trusted key: its signature verifies and
/// its origin is the key's name. Nothing else is checked when this fails.
fn open_trusted(note: &str, key: &str, whose: &str) -> Result<SignedCheckpoint> {
    let cp = open_checkpoint(note, key).map_err(|e| {
        anyhow!("checkpoint check FAILED: {e}\n{whose} checkpoint cannot be trusted; nothing else was checked")
    })?;
    println!(
        "ok: checkpoint of {} signed by the trusted key: tree size {}, root {}",
        cp.origin,
        cp.size,
        hex::encode(cp.root)
    );
    Ok(cp)
}

/// Where the entries being checked come from: what the messages call it,
/// and how the consistency and inclusion proofs are obtained.
enum Source<'a> {
    /// A running node: it is asked for the proofs.
    Node(&'a mut AuditClient<Svc>),
    /// An exported file: it holds every entry up to the checkpoint's size,
    /// so the old root and the inclusion proof are computed here.
    File,
}

impl Source<'_> {
    fn is_file(&self) -> bool {
        matches!(self, Source::File)
    }

    /// "the node sent" / "the file holds".
    fn sent(&self) -> &'static str {
        match self {
            Source::Node(_) => "the node sent",
            Source::File => "the file holds",
        }
    }
}

/// `lianxi verify --node`: the whole check. Fails with what failed and what
/// it means.
pub(crate) async fn verify_node(
    conn: &Conn,
    key: &str,
    state: Option<&Path>,
    event: Option<u64>,
) -> Result<()> {
    let state = state_path(key, state)?;
    let mut client = conn.audit().await?;

    // 1. The checkpoint, signed by the trusted key.
    let reply = client
        .get_checkpoint(GetCheckpointRequest { fresh: true })
        .await
        .map_err(explain)
        .context("cannot get the node's checkpoint")?
        .into_inner();
    let cp = open_trusted(&reply.note, key, "the node's")?;

    // 2.-4. Every entry up to the checkpoint's size, then consistency and
    // inclusion, with the proofs asked of the node.
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<LogEntry>> + Send>> = if cp.size > 0 {
        let stream = client
            .read_log(ReadLogRequest {
                from_global_sequence: 1,
                to_global_sequence: cp.size,
            })
            .await
            .map_err(explain)
            .context("cannot read the node's log")?
            .into_inner();
        Box::pin(stream.map(|item| {
            item.map_err(|s| {
                anyhow!(
                    "{}\nthe node could not send the next entry (it may be damaged in storage)",
                    s.message()
                )
            })
        }))
    } else {
        Box::pin(tokio_stream::empty())
    };
    check_log(&cp, key, &state, event, stream, Source::Node(&mut client)).await
}

/// `lianxi verify --file`: the same checks on an exported file (see
/// [`export`] for its format), trusting nothing but the key.
pub(crate) async fn verify_file(
    file: &Path,
    key: &str,
    state: Option<&Path>,
    event: Option<u64>,
) -> Result<()> {
    let state = state_path(key, state)?;
    let (note, entries) = ExportReader::open(file)?;
    let cp = open_trusted(&note, key, "the file's")?;
    check_log(
        &cp,
        key,
        &state,
        event,
        tokio_stream::iter(entries),
        Source::File,
    )
    .await
}

fn state_path(key: &str, state: Option<&Path>) -> Result<PathBuf> {
    let origin = key_origin(key)?;
    match state {
        Some(p) => Ok(p.to_owned()),
        None => default_state(origin),
    }
}

/// The checks after the checkpoint's signature, shared by `verify --node`
/// and `verify --file`: every entry's sequence, hash and chain link, the
/// Merkle root against the checkpoint, rollback and consistency against the
/// saved state, and entry `event`'s inclusion. Saves `cp` in the state file
/// when everything holds.
async fn check_log(
    cp: &SignedCheckpoint,
    key: &str,
    state: &Path,
    event: Option<u64>,
    mut entries: impl Stream<Item = Result<LogEntry>> + Unpin,
    mut source: Source<'_>,
) -> Result<()> {
    let sent = source.sent();
    let saved = load_state(state, key)?;
    // A file holds every entry: the old root and the inclusion proof come
    // from what is read here.
    let root_at = saved
        .as_ref()
        .map(|s| s.size)
        .filter(|&n| source.is_file() && n > 0 && n <= cp.size);
    let keep_leaves = source.is_file() && event.is_some();

    // 2. Every entry up to the checkpoint's size: hash, chain, sequence, and
    // the Merkle root over them.
    let mut tree = Compact::default();
    let mut prev = [0u8; 32];
    let mut count = 0u64;
    let mut old_root = None;
    let mut leaves = Vec::new();
    let mut kept = None;
    while let Some(item) = entries.next().await {
        let e = item.map_err(|e| anyhow!("reading the log FAILED after entry {count}: {e:#}"))?;
        let expected = count + 1;
        let g = e.global_sequence;
        if count == cp.size {
            bail!(
                "sequence check FAILED after entry {count}: {sent} entry {g} beyond the checkpoint's tree size {}\nthe log is not the one the checkpoint covers",
                cp.size
            );
        }
        if g > expected {
            bail!(
                "sequence check FAILED at entry {expected}: after entry {count} {sent} entry {g}\nentry {expected} is missing from its place: an entry was removed, or entries were reordered"
            );
        }
        if g != expected {
            bail!(
                "sequence check FAILED at entry {expected}: the entry in position {expected} says it is entry {g}\nentries were reordered or repeated"
            );
        }
        if entry_hash(&e).as_slice() != e.hash.as_slice() {
            bail!(
                "hash check FAILED at entry {g}: its content does not match its hash {}\nentry {g} was altered after it was written",
                hex::encode(&e.hash)
            );
        }
        if e.prev_hash.as_slice() != prev.as_slice() {
            bail!(
                "chain check FAILED at entry {g}: its previous hash is not the hash of entry {count}\nthe chain is broken before entry {g}: an entry was removed, inserted or replaced"
            );
        }
        prev = hash32(&e.hash, &format!("the hash of entry {g}"))?;
        let leaf = leaf_hash(&prev);
        tree.push(leaf);
        if keep_leaves {
            leaves.push(leaf);
        }
        if source.is_file() && event == Some(g) {
            kept = Some(e);
        }
        count = g;
        if root_at == Some(count) {
            old_root = Some(tree.root());
        }
        if count == cp.size && !source.is_file() {
            break;
        }
    }
    if count < cp.size {
        bail!(
            "sequence check FAILED at entry {}: {sent} {count} entries but its checkpoint covers {}\nentries {} to {} are missing from the log",
            count + 1,
            cp.size,
            count + 1,
            cp.size
        );
    }
    let root = tree.root();
    if root != cp.root {
        bail!(
            "root check FAILED: the Merkle root of the {} entries {sent} is {}, but the signed checkpoint commits to {}\nthe log served is not the log that was signed",
            cp.size,
            hex::encode(root),
            hex::encode(cp.root)
        );
    }
    println!(
        "ok: {} entries, every hash, the chain and the sequences intact; the Merkle root matches the checkpoint",
        cp.size
    );

    // 3. Consistency with the last checkpoint seen.
    match saved {
        None => println!(
            "no earlier checkpoint in {}: consistency will be checked from this one next time",
            state.display()
        ),
        Some(saved) if saved.size > cp.size => bail!(
            "rollback detected: the current checkpoint (tree size {}) is older than one the node signed before (tree size {}, saved in {})\nthe node is serving an old checkpoint as new, or its log was truncated",
            cp.size,
            saved.size,
            state.display()
        ),
        Some(saved) if saved.size == 0 => {
            println!(
                "ok: the checkpoint saved in {} was of the empty log",
                state.display()
            );
        }
        Some(saved) => {
            let consistent = match &mut source {
                Source::Node(client) => {
                    let proof = client
                        .get_consistency_proof(GetConsistencyProofRequest {
                            old_size: saved.size,
                            new_size: cp.size,
                        })
                        .await
                        .map_err(|s| {
                            anyhow!(
                                "consistency check FAILED: the node gave no consistency proof from tree size {} to {}: {}",
                                saved.size,
                                cp.size,
                                s.message()
                            )
                        })?
                        .into_inner();
                    let hashes = proof
                        .hashes
                        .iter()
                        .map(|h| hash32(h, "a consistency proof hash"))
                        .collect::<Result<Vec<_>>>()?;
                    verify_consistency(saved.size, cp.size, &saved.root, &cp.root, &hashes)
                }
                // The file's first saved.size entries must have the root the
                // node signed then.
                Source::File => old_root == Some(saved.root),
            };
            if !consistent {
                bail!(
                    "consistency check FAILED: the tree of size {} (root {}) does not extend the tree of size {} (root {}) the node signed before (saved in {})\nhistory was rewritten: entries up to {} are not the ones the node committed to",
                    cp.size,
                    hex::encode(cp.root),
                    saved.size,
                    hex::encode(saved.root),
                    state.display(),
                    saved.size
                );
            }
            println!(
                "ok: consistent with the checkpoint of tree size {} saved in {}: history was only appended to",
                saved.size,
                state.display()
            );
        }
    }

    // 4. One event's inclusion.
    if let Some(g) = event {
        if g == 0 || g > cp.size {
            bail!(
                "--event {g} is not in the checkpoint's tree: it must be from 1 to {}",
                cp.size
            );
        }
        let (entry, hashes) = match &mut source {
            Source::Node(client) => {
                let proof = client
                    .get_inclusion_proof(GetInclusionProofRequest {
                        global_sequence: g,
                        tree_size: cp.size,
                    })
                    .await
                    .map_err(|s| {
                        anyhow!(
                            "inclusion check FAILED at entry {g}: the node gave no inclusion proof: {}",
                            s.message()
                        )
                    })?
                    .into_inner();
                let hashes = proof
                    .hashes
                    .iter()
                    .map(|h| hash32(h, "an inclusion proof hash"))
                    .collect::<Result<Vec<_>>>()?;
                (proof.entry, hashes)
            }
            Source::File => (kept.take(), inclusion_path(g - 1, &leaves)),
        };
        let entry = entry.ok_or_else(|| {
            anyhow!("inclusion check FAILED at entry {g}: the proof has no entry")
        })?;
        if entry.global_sequence != g || entry_hash(&entry).as_slice() != entry.hash.as_slice() {
            bail!(
                "inclusion check FAILED at entry {g}: the entry sent with the proof is not entry {g} as it was written"
            );
        }
        let leaf = leaf_hash(&hash32(&entry.hash, "the entry's hash")?);
        if !verify_inclusion(&leaf, g - 1, cp.size, &hashes, &cp.root) {
            bail!(
                "inclusion check FAILED at entry {g}: the proof does not lead to the signed root\nentry {g} as served is not in the log the node signed"
            );
        }
        let case = entry.event.map(|e| e.case_id).unwrap_or_default();
        println!(
            "ok: entry {g} (case {case}, hash {}) is in the signed tree of size {}",
            hex::encode(&entry.hash),
            cp.size
        );
    }

    save_state(state, cp)?;
    println!(
        "verified: the log of {} at tree size {} (state saved in {})",
        cp.origin,
        cp.size,
        state.display()
    );
    Ok(())
}

/// The RFC 6962 root of `leaves` (leaf hashes).
fn mth(leaves: &[Hash]) -> Hash {
    let mut tree = Compact::default();
    for l in leaves {
        tree.push(*l);
    }
    tree.root()
}

/// The RFC 6962 audit path PATH(m, D\[n\]) of leaf `m` (from 0) in the tree
/// of `leaves`, computed from the leaves themselves (`verify --file`); it is
/// checked with `lianxi_log::verify_inclusion` like a node's proof.
fn inclusion_path(m: u64, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len() as u64;
    if n <= 1 || m >= n {
        return Vec::new();
    }
    // The largest power of two smaller than n.
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    let (left, right) = leaves.split_at(k as usize);
    let mut path;
    if m < k {
        path = inclusion_path(m, left);
        path.push(mth(right));
    } else {
        path = inclusion_path(m - k, right);
        path.push(mth(left));
    }
    path
}

/// The first line of an export file.
const EXPORT_MAGIC: &[u8] = b"lianxi-log-export v1\n";

/// `lianxi export --node ADDR --out FILE`: the node's fresh signed checkpoint
/// and every entry up to its size, in one file.
///
/// The format (version 1), self-delimiting, read back by `verify --file`:
///
/// 1. the line `lianxi-log-export v1\n` (21 bytes);
/// 2. the checkpoint: its length in bytes as a protobuf varint, then the
///    signed note exactly as `GetCheckpoint{fresh: true}` returned it (UTF-8);
/// 3. entries 1 to the checkpoint's tree size, in order, each a length-
///    delimited protobuf `lianxi.v1.LogEntry` (varint length, then the
///    message: prost's `encode_length_delimited`, the hash and previous
///    hash included as the node stored them);
/// 4. nothing else: the file ends after the last entry.
///
/// Nothing in the file is trusted by the verifier: the note's signature is
/// checked with the key, every entry against it.
pub(crate) async fn export(conn: &Conn, out: &Path) -> Result<()> {
    use prost::Message;

    let mut client = conn.audit().await?;
    let reply = client
        .get_checkpoint(GetCheckpointRequest { fresh: true })
        .await
        .map_err(explain)
        .context("cannot get the node's checkpoint")?
        .into_inner();
    let size = reply.tree_size;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut buf = Vec::new();
    buf.extend_from_slice(EXPORT_MAGIC);
    prost::encoding::encode_varint(reply.note.len() as u64, &mut buf);
    buf.extend_from_slice(reply.note.as_bytes());
    w.write_all(&buf)?;
    let mut count = 0u64;
    if size > 0 {
        let mut stream = client
            .read_log(ReadLogRequest {
                from_global_sequence: 1,
                to_global_sequence: size,
            })
            .await
            .map_err(explain)
            .context("cannot read the node's log")?
            .into_inner();
        while let Some(item) = stream.next().await {
            let e = item.map_err(|s| {
                anyhow!(
                    "export FAILED after entry {count}: {}\nthe node could not send entry {} (the incomplete file is left in {})",
                    s.message(),
                    count + 1,
                    partial.display()
                )
            })?;
            buf.clear();
            e.encode_length_delimited(&mut buf)?;
            w.write_all(&buf)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            count += 1;
            if count == size {
                break;
            }
        }
    }
    let file = w
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {}", partial.display(), e.error()))?;
    file.sync_all()?;
    drop(file);
    if count < size {
        bail!(
            "export FAILED: the node sent {count} entries but its checkpoint covers {size} (the incomplete file is left in {})",
            partial.display()
        );
    }
    std::fs::rename(&partial, out).with_context(|| format!("cannot write {}", out.display()))?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!(
        "exported the signed checkpoint and {size} entries ({bytes} bytes) to {}; check it with `lianxi verify --file {} --key VKEY`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Reads an export file (format under [`export`]) one record at a time,
/// never trusting a length: a cut or damaged file is an error naming the
/// byte offset and the entry, never a panic or a huge allocation.
struct ExportReader {
    r: std::io::BufReader<std::fs::File>,
    name: String,
    offset: u64,
    len: u64,
    entries: u64,
    done: bool,
}

impl ExportReader {
    /// Opens `path`, reads its header and checkpoint note; the entries
    /// follow as an iterator.
    fn open(path: &Path) -> Result<(String, ExportReader)> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        let mut reader = ExportReader {
            r: std::io::BufReader::new(file),
            name: path.display().to_string(),
            offset: 0,
            len,
            entries: 0,
            done: false,
        };
        let mut magic = vec![0u8; EXPORT_MAGIC.len()];
        if len < magic.len() as u64
            || reader.r.read_exact(&mut magic).is_err()
            || magic != EXPORT_MAGIC
        {
            bail!(
                "{} is not a lianxi log export: it does not start with {:?} (make one with `lianxi export`)",
                reader.name,
                String::from_utf8_lossy(&EXPORT_MAGIC[..EXPORT_MAGIC.len() - 1])
            );
        }
        reader.offset = magic.len() as u64;
        let note = reader.record("the checkpoint")?.ok_or_else(|| {
            anyhow!(
                "{} is cut short at byte {}: it has no checkpoint",
                reader.name,
                reader.offset
            )
        })?;
        let note = String::from_utf8(note).map_err(|_| {
            anyhow!(
                "{}: the checkpoint at byte {} is not UTF-8 text: the file is damaged",
                reader.name,
                EXPORT_MAGIC.len()
            )
        })?;
        Ok((note, reader))
    }

    /// One length-delimited record; `None` at the end of the file exactly
    /// where a record would start.
    fn record(&mut self, what: &str) -> Result<Option<Vec<u8>>> {
        use std::io::Read;

        let start = self.offset;
        let mut length = 0u64;
        for i in 0..10 {
            let mut byte = [0u8; 1];
            if self.r.read(&mut byte)? == 0 {
                if i == 0 {
                    return Ok(None);
                }
                bail!(
                    "{} is cut short at byte {}: the length of {what} (from byte {start}) is incomplete\nthe file was truncated; export it again",
                    self.name,
                    self.offset
                );
            }
            self.offset += 1;
            length |= u64::from(byte[0] & 0x7f) << (7 * i);
            if byte[0] & 0x80 == 0 {
                let left = self.len.saturating_sub(self.offset);
                if length > left {
                    bail!(
                        "{} is cut short: {what} at byte {start} says it is {length} bytes long, but only {left} bytes follow\nthe file was truncated or its length prefix damaged",
                        self.name
                    );
                }
                let mut bytes = Vec::with_capacity(length as usize);
                (&mut self.r).take(length).read_to_end(&mut bytes)?;
                if (bytes.len() as u64) < length {
                    bail!(
                        "{} is cut short at byte {}: {what} (from byte {start}) is incomplete",
                        self.name,
                        self.offset + bytes.len() as u64
                    );
                }
                self.offset += length;
                return Ok(Some(bytes));
            }
        }
        bail!(
            "{}: the length of {what} at byte {start} is not a valid varint: the file is damaged",
            self.name
        )
    }
}

impl Iterator for ExportReader {
    type Item = Result<LogEntry>;

    fn next(&mut self) -> Option<Result<LogEntry>> {
        use prost::Message;

        if self.done {
            return None;
        }
        let n = self.entries + 1;
        let start = self.offset;
        let result = match self.record(&format!("entry {n}")) {
            Ok(None) => None,
            Ok(Some(bytes)) => Some(LogEntry::decode(bytes.as_slice()).map_err(|e| {
                anyhow!(
                    "{}: entry {n} at byte {start} does not decode as a LogEntry ({e})\nthe file is damaged at entry {n}",
                    self.name
                )
            })),
            Err(e) => Some(Err(e)),
        };
        match &result {
            Some(Ok(_)) => self.entries = n,
            _ => self.done = true,
        }
        result
    }
}

/// `lianxi verify --node A --compare B`: both nodes hold the same root at
/// the same size (the smaller of their two sizes).
pub(crate) async fn compare(a: &Conn, b: &Conn, a_name: &str, b_name: &str) -> Result<()> {
    let mut ca = a.audit().await?;
    let mut cb = b.audit().await?;
    let head = |size| GetTreeHeadRequest { tree_size: size };
    let sa = ca
        .get_tree_head(head(0))
        .await
        .map_err(explain)?
        .into_inner();
    let sb = cb
        .get_tree_head(head(0))
        .await
        .map_err(explain)?
        .into_inner();
    let size = sa.tree_size.min(sb.tree_size);
    if size == 0 {
        println!(
            "nothing to compare: {a_name} holds {} entries, {b_name} {}",
            sa.tree_size, sb.tree_size
        );
        return Ok(());
    }
    let ra = ca
        .get_tree_head(head(size))
        .await
        .map_err(explain)?
        .into_inner();
    let rb = cb
        .get_tree_head(head(size))
        .await
        .map_err(explain)?
        .into_inner();
    if ra.root_hash != rb.root_hash || ra.tree_size != size || rb.tree_size != size {
        bail!(
            "compare FAILED at tree size {size}: {a_name} has root {}, {b_name} has root {}\nthe two nodes do not hold the same log: at least one of them diverged from the stream",
            hex::encode(&ra.root_hash),
            hex::encode(&rb.root_hash)
        );
    }
    println!(
        "ok: {a_name} ({} entries) and {b_name} ({} entries) hold the same root {} at tree size {size}",
        sa.tree_size,
        sb.tree_size,
        hex::encode(&ra.root_hash)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compact_root_is_the_rfc_6962_root() {
        // Against the definition: MTH of n leaves splits at the largest power
        // of two below n.
        fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
            match leaves.len() {
                0 => lianxi_log::empty_root(),
                1 => leaves[0],
                n => {
                    let k = 1usize << (usize::BITS - (n - 1).leading_zeros() - 1);
                    node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
                }
            }
        }
        let mut c = Compact::default();
        let mut leaves = Vec::new();
        assert_eq!(c.root(), lianxi_log::empty_root());
        for i in 0..70u8 {
            let l = leaf_hash(&[i; 32]);
            c.push(l);
            leaves.push(l);
            assert_eq!(c.root(), mth(&leaves), "size {}", leaves.len());
        }
    }

    #[test]
    fn a_locally_computed_inclusion_path_verifies() {
        for n in 1..40u8 {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&[i; 32])).collect();
            let root = mth(&leaves);
            for m in 0..u64::from(n) {
                let path = inclusion_path(m, &leaves);
                assert!(
                    verify_inclusion(&leaves[m as usize], m, u64::from(n), &path, &root),
                    "leaf {m} of {n}"
                );
            }
        }
    }
}
