//! Key layout of the single sled tree. One byte of prefix per record kind;
//! numbers are big-endian so that sled's byte order is numeric order.

/// `L` + global sequence -> `LogEntry`.
pub(crate) const ENTRY: u8 = b'L';
/// `C` + case id + 0x00 + case sequence -> global sequence: the case index
/// of layout 2, replaced by `N` (removed by the upgrade).
pub(crate) const CASE_INDEX: u8 = b'C';
/// `D` + agency (one byte, the `Agency` number of the subject) + event id
/// -> global sequence. Permanent: the idempotency key. Event ids are each
/// agency's own namespace, so the key is (agency, event id).
pub(crate) const DEDUP: u8 = b'D';
/// `V` + case id -> `CaseView`.
pub(crate) const VIEW: u8 = b'V';
/// `R` + stream sequence -> `RejectionRecord`.
pub(crate) const REJECTION: u8 = b'R';
/// `U` + stream sequence -> `DuplicateRecord`.
pub(crate) const DUPLICATE: u8 = b'U';
/// `P` + person token (hex of `LogEntry.person_token`, an HMAC of the person
/// reference under the index key; never the reference) -> latest case
/// opened for that person, removed when that case's personal data is erased
/// (derived, rebuilt).
pub(crate) const PERSON: u8 = b'P';
/// `H` + SHA-256(person token)[..16] + global sequence -> the case that
/// opening made the person's latest, or empty where an erasure ended it
/// (derived, rebuilt): the person index's history, so a past view can be
/// rebuilt exactly.
pub(crate) const PERSON_HISTORY: u8 = b'H';

pub(crate) fn person_history_prefix(person: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(person.as_bytes());
    let mut k = Vec::with_capacity(25);
    k.push(PERSON_HISTORY);
    k.extend_from_slice(&digest[..16]);
    k
}

pub(crate) fn person_history(person: &str, global_sequence: u64) -> Vec<u8> {
    let mut k = person_history_prefix(person);
    k.extend_from_slice(&global_sequence.to_be_bytes());
    k
}

/// `T` + level (u8) + index (u64): the Merkle tree of storage layout 2,
/// one record per node. Layout 3 keeps tiles (`G`) instead; `rebuild`
/// removes these.
pub(crate) const TREE: u8 = b'T';

pub(crate) fn tree_node(level: u8, index: u64) -> [u8; 10] {
    level_index(TREE, level, index)
}

/// `prefix` + level (one byte) + index (big-endian).
fn level_index(prefix: u8, level: u8, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = prefix;
    k[1] = level;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

/// `G` + tile level (u8) + tile index (u64) -> a tile of the Merkle tree in
/// the layout of C2SP tlog-tiles: the concatenated 32-byte hashes of the
/// tree nodes at level `8 * tile level` with indices `256 * tile index` up
/// to `256 * tile index + width - 1` (width 1 to 256; a partial tile is
/// rewritten as it grows, a full one never). Derived from the entries,
/// written in the same batch, rebuilt by `rebuild` (see `tiles.rs`).
pub(crate) const TILE: u8 = b'G';

pub(crate) fn tile(level: u8, index: u64) -> [u8; 10] {
    level_index(TILE, level, index)
}

/// The tile level and index of a `G` key, if it is one.
pub(crate) fn parse_tile(key: &[u8]) -> Option<(u8, u64)> {
    match key {
        [TILE, level, rest @ ..] => Some((*level, be_u64(rest)?)),
        _ => None,
    }
}

/// `Q` + issue number (from 1) -> a signed checkpoint the node issued: the
/// tree size (8 bytes, big-endian) then the signed note's text. Kept in the
/// node-local tree `checkpoints.v1`, not in the deterministic log: every
/// node signs with its own key.
pub(crate) const SIGNED_CHECKPOINT: u8 = b'Q';

/// `S` + stream sequence -> global sequence of the entry it became: the
/// stream index of layout 2, replaced by `B` (removed by the upgrade).
pub(crate) const BY_STREAM: u8 = b'S';
/// `B` + (stream sequence / 256) -> the global sequences of the entries the
/// 256 stream sequences of that chunk became (packed, see `packed.rs`; 0
/// for a message that became no entry).
pub(crate) const BY_STREAM_PACKED: u8 = b'B';
/// `N` + case id + 0x00 + ((case sequence - 1) / 256) -> the global
/// sequences of the case's entries of that chunk, in case order (packed,
/// see `packed.rs`). Replaces layout 2's `C`, one record per entry.
pub(crate) const CASE_PACKED: u8 = b'N';

/// The prefix of a case's `N` records. Case ids never contain 0x00 (the
/// domain allows `[A-Za-z0-9_-]`), so the separator keeps one case's
/// prefix from matching another's.
pub(crate) fn case_chunk_prefix(case_id: &str) -> Vec<u8> {
    let mut k = named(CASE_PACKED, case_id);
    k.push(0);
    k
}

pub(crate) fn case_chunk(case_id: &str, chunk: u64) -> Vec<u8> {
    let mut k = case_chunk_prefix(case_id);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}
/// `K` + facet + value + case id -> empty: the list filters' index
/// (derived, rebuilt; see `projection/filters.rs`).
pub(crate) const FILTER_INDEX: u8 = b'K';
/// `X` + agency (one byte, of the subject) + event id -> stream sequence of
/// the latest rejection of that agency's event id. Written only for a
/// subject whose agency token is valid and a well-formed event id.
pub(crate) const REJECTED_ID: u8 = b'X';
/// `E` + case id -> the stream sequence of the case's erasure, written with
/// the erasure and removed once this node has destroyed the key and purged
/// the bus (node-local progress, like the receipts mark; not rebuilt).
pub(crate) const ERASURE_PENDING: u8 = b'E';
/// `M` + name -> metadata: the checkpoint.
pub(crate) const CHECKPOINT: &[u8] = b"Mcheckpoint";
/// `M` + name -> metadata: the last stream sequence whose receipt the bus
/// acknowledged. Written outside the group batches; losing it only means
/// receipts are sent again (and deduplicated by their message id).
pub(crate) const RECEIPTS_SENT: &[u8] = b"Mreceipts";
/// `M` + name -> metadata: the storage layout version (one byte), written
/// with every group. Layout 1 (no marker) keyed `D` and `X` by event id
/// alone; layout 2 keys them by (agency, event id); layout 3 stores the
/// Merkle tree as tiles (`G`) instead of one record per node (`T`);
/// layout 4 adds the list filters' index (`K`); layout 5 writes views and
/// the per-case, duplicate, person and filters' indexes behind the
/// checkpoint (`Mprojected`).
pub(crate) const LAYOUT: &[u8] = b"Mlayout";
/// `M` + name -> metadata: set while `rebuild` is rewriting the derived
/// records (removed by its last batch). A log that has it was cut off
/// mid-rebuild and is rebuilt again before anything else.
pub(crate) const REBUILDING: &[u8] = b"Mrebuilding";
/// `M` + name -> metadata: the global sequence (8 bytes, big-endian) up to
/// which the derived records written behind (views; the per-case,
/// duplicate, person and filters' indexes) are in sled (`pending.rs`).
/// Written with every group (unchanged) and by each write-behind. A log
/// without it (layout 4) has them all.
pub(crate) const PROJECTED: &[u8] = b"Mprojected";
/// The layout this version writes and reads.
pub(crate) const LAYOUT_VERSION: u8 = 5;
/// Layout 4: the same records, every derived one written with its group
/// (no `Mprojected`); read as it is, and marked 5 by the next group.
pub(crate) const LAYOUT_WRITTEN_THROUGH: u8 = 4;
/// Layout 2: the Merkle tree one record per node (the open-time tail check
/// reads its leaves there until the upgrade).
pub(crate) const LAYOUT_NODES: u8 = 2;
/// The layouts `rebuild` upgrades in place: they differ from this one only
/// in derived records.
pub(crate) const LAYOUT_UPGRADABLE: [u8; 2] = [2, 3];

/// Whether a layout marker names a layout `rebuild` upgrades in place.
pub(crate) fn upgradable(marker: &[u8]) -> bool {
    matches!(marker, [v] if LAYOUT_UPGRADABLE.contains(v))
}

/// `prefix` + agency number (one byte) + id: the agency-scoped indexes
/// (`D`, `X`). Agency numbers are 1 to 7; a layout-1 key has an id
/// character there instead.
pub(crate) fn scoped(prefix: u8, agency: lianxi_proto::v1::Agency, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len());
    k.push(prefix);
    k.push(u8::try_from(agency as i32).unwrap_or(0));
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn seq(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

pub(crate) fn named(prefix: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(prefix);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn be_u64(bytes: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}
