//! `lianxi keygen` and the standalone verifier `lianxi verify --node`: it
//! trusts nothing but the node's verifier key. It checks the node's signed
//! checkpoint, every entry's hash and the chain, the Merkle root over the
//! signed size, consistency with the last checkpoint it saw (kept in a local
//! state file), and optionally one event's inclusion proof.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use lianxi_log::{
    SignedCheckpoint, entry_hash, leaf_hash, node_hash, open_checkpoint, verify_consistency,
    verify_inclusion,
};
use lianxi_proto::v1::{
    GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest, GetTreeHeadRequest,
    ReadLogRequest,
};
use tokio_stream::StreamExt;

use crate::query::{Conn, explain};

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

/// `lianxi verify --node`: the whole check. Fails with what failed and what
/// it means.
pub(crate) async fn verify_node(
    conn: &Conn,
    key: &str,
    state: Option<&Path>,
    event: Option<u64>,
) -> Result<()> {
    let origin = key_origin(key)?;
    let state = match state {
        Some(p) => p.to_owned(),
        None => default_state(origin)?,
    };
    let mut client = conn.audit().await?;

    // 1. The checkpoint, signed by the trusted key.
    let reply = client
        .get_checkpoint(GetCheckpointRequest { fresh: true })
        .await
        .map_err(explain)
        .context("cannot get the node's checkpoint")?
        .into_inner();
    let cp = open_checkpoint(&reply.note, key).map_err(|e| {
        anyhow!("checkpoint check FAILED: {e}\nthe node's checkpoint cannot be trusted; nothing else was checked")
    })?;
    println!(
        "ok: checkpoint of {} signed by the trusted key: tree size {}, root {}",
        cp.origin,
        cp.size,
        hex::encode(cp.root)
    );

    // 2. Every entry up to the checkpoint's size: hash, chain, sequence, and
    // the Merkle root over them.
    let mut tree = Compact::default();
    let mut prev = [0u8; 32];
    let mut count = 0u64;
    if cp.size > 0 {
        let mut stream = client
            .read_log(ReadLogRequest {
                from_global_sequence: 1,
                to_global_sequence: cp.size,
            })
            .await
            .map_err(explain)
            .context("cannot read the node's log")?
            .into_inner();
        while let Some(item) = stream.next().await {
            let e = item.map_err(|s| {
                anyhow!(
                    "reading the log FAILED after entry {count}: {}\nthe node could not send entry {} (it may be damaged in storage)",
                    s.message(),
                    count + 1
                )
            })?;
            let expected = count + 1;
            let g = e.global_sequence;
            if g > expected {
                bail!(
                    "sequence check FAILED at entry {expected}: after entry {count} the node sent entry {g}\nentry {expected} is missing from its place: an entry was removed, or entries were reordered"
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
            tree.push(leaf_hash(&prev));
            count = g;
            if count == cp.size {
                break;
            }
        }
    }
    if count < cp.size {
        bail!(
            "sequence check FAILED at entry {}: the node sent {count} entries but its checkpoint covers {}\nentries {} to {} are missing from the log",
            count + 1,
            cp.size,
            count + 1,
            cp.size
        );
    }
    let root = tree.root();
    if root != cp.root {
        bail!(
            "root check FAILED: the Merkle root of the {} entries the node sent is {}, but its signed checkpoint commits to {}\nthe log served is not the log that was signed",
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
    match load_state(&state, key)? {
        None => println!(
            "no earlier checkpoint in {}: consistency will be checked from this one next time",
            state.display()
        ),
        Some(saved) if saved.size > cp.size => bail!(
            "rollback detected: the node's current checkpoint (tree size {}) is older than one it signed before (tree size {}, saved in {})\nthe node is serving an old checkpoint as new, or its log was truncated",
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
            if !verify_consistency(saved.size, cp.size, &saved.root, &cp.root, &hashes) {
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
        let entry = proof.entry.ok_or_else(|| {
            anyhow!("inclusion check FAILED at entry {g}: the proof has no entry")
        })?;
        if entry.global_sequence != g || entry_hash(&entry).as_slice() != entry.hash.as_slice() {
            bail!(
                "inclusion check FAILED at entry {g}: the entry sent with the proof is not entry {g} as it was written"
            );
        }
        let hashes = proof
            .hashes
            .iter()
            .map(|h| hash32(h, "an inclusion proof hash"))
            .collect::<Result<Vec<_>>>()?;
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

    save_state(&state, &cp)?;
    println!(
        "verified: the log of {} at tree size {} (state saved in {})",
        cp.origin,
        cp.size,
        state.display()
    );
    Ok(())
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
}
