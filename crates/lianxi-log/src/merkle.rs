//! The log as an RFC 6962 Merkle tree (RFC 9162 §2.1): SHA-256, leaf hashes
//! `SHA-256(0x00 || leaf)`, interior nodes `SHA-256(0x01 || left || right)`,
//! the empty tree's root `SHA-256("")`.
//!
//! Leaf `g - 1` is the entry with global sequence `g`, and its leaf input is
//! the entry's 32-byte hash (`entry_hash`). That hash is SHA-256 over a
//! domain tag and the entry's whole encoding (event, sequences, stream
//! record time, subject and the previous entry's hash), so committing to it
//! commits to the whole entry; hashing the full entry again would only cost
//! time. A client holding an entry recomputes `entry_hash`, then
//! `leaf_hash(&entry_hash)`, and checks it with `verify_inclusion`.
//!
//! Storage is `tiles.rs`: the tree is kept as tlog-tiles, and any perfect
//! subtree (so the root at any size, and any inclusion or consistency
//! proof) is read from O(log n) of them. This module is the arithmetic.
//!
//! The verification functions are pure and need no log: they are what an
//! auditor runs on a proof the node sent.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A SHA-256 hash: a leaf, a node or a root.
pub type Hash = [u8; 32];

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The hash of a leaf: SHA-256(0x00 || input). In the log the input is the
/// entry's hash.
pub fn leaf_hash(input: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(input);
    h.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Checks an inclusion proof (audit path) as RFC 9162 §2.1.3.2 says: that
/// the leaf with hash `leaf` is leaf number `index` (from 0) of the tree of
/// `size` leaves whose root is `root`. Never panics; any malformed input is
/// simply `false`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Checks a consistency proof as RFC 9162 §2.1.4.2 says: that the tree of
/// `new_size` leaves with root `new_root` extends the tree of `old_size`
/// leaves with root `old_root`. `old_size` must be at least 1 (every tree
/// extends the empty one; there is nothing to prove). Never panics; any
/// malformed input is simply `false`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size == 0 || old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    // When the old tree is a perfect subtree its root is the first node of
    // the path, and the proof leaves it out.
    let path: Vec<&Hash> = if old_size.is_power_of_two() {
        std::iter::once(old_root).chain(proof).collect()
    } else {
        proof.iter().collect()
    };
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (**first, **first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && fr == *old_root && sr == *new_root
}

/// A source of stored perfect subtrees: the hash of the subtree of
/// 2^level leaves starting at leaf `index * 2^level`.
pub(crate) trait Nodes {
    fn node(&self, level: u8, index: u64) -> Result<Hash>;
}

/// The nodes that appending leaf number `index` with hash `leaf` creates:
/// the leaf itself and every perfect subtree it completes, lowest first.
/// `left(level, index)` gives an already stored node (the left sibling of
/// each completed subtree).
pub(crate) fn append_leaf(
    index: u64,
    leaf: Hash,
    mut left: impl FnMut(u8, u64) -> Result<Hash>,
) -> Result<Vec<(u8, u64, Hash)>> {
    let mut out = vec![(0, index, leaf)];
    let (mut level, mut i, mut cur) = (0u8, index, leaf);
    while i & 1 == 1 {
        let sibling = left(level, i - 1)?;
        cur = node_hash(&sibling, &cur);
        level += 1;
        i >>= 1;
        out.push((level, i, cur));
    }
    Ok(out)
}

/// The tree built leaf by leaf in memory, keeping only the perfect subtrees
/// still waiting for a right sibling (at most one per level): what an
/// append needs, so that it reads nothing back, and what checking and
/// rebuilding the stored tiles needs in one pass over the entries.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frontier {
    size: u64,
    /// `pending[level]` is the left perfect subtree at that level when bit
    /// `level` of `size` is set.
    pending: Vec<Hash>,
}

impl Frontier {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The frontier of a tree of `size` leaves: `pending[level]` is the
    /// perfect subtree named by bit `level` of `size` (any value where the
    /// bit is clear).
    pub(crate) fn from_parts(size: u64, pending: Vec<Hash>) -> Self {
        Frontier { size, pending }
    }

    /// Appends a leaf and returns the nodes it creates, as `append_leaf`.
    pub(crate) fn push(&mut self, leaf: Hash) -> Result<Vec<(u8, u64, Hash)>> {
        let index = self.size;
        let pending = &self.pending;
        let nodes = append_leaf(index, leaf, |level, i| {
            pending
                .get(usize::from(level))
                .copied()
                .ok_or_else(|| Error::Corruption {
                    at: crate::error::Location::Tile(level / crate::tiles::HEIGHT, i),
                    detail: "the in-memory frontier has no node at this level".into(),
                })
        })?;
        if let Some(&(level, _, top)) = nodes.last() {
            let level = usize::from(level);
            if self.pending.len() <= level {
                self.pending.resize(level + 1, [0; 32]);
            }
            self.pending[level] = top;
        }
        self.size += 1;
        Ok(nodes)
    }

    /// The root of the leaves pushed so far.
    pub(crate) fn root(&self) -> Hash {
        let mut root: Option<Hash> = None;
        for (level, hash) in self.pending.iter().enumerate() {
            if self.size >> level & 1 == 1 {
                root = Some(match root {
                    None => *hash,
                    Some(right) => node_hash(hash, &right),
                });
            }
        }
        root.unwrap_or_else(empty_root)
    }
}

/// The largest power of two below `n` (n >= 2): where RFC 6962 splits a tree
/// of `n` leaves.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[a:b]) for a range the RFC 6962 recursion produces (a < b, `a` a
/// multiple of the smallest power of two >= b - a): the perfect subtrees
/// named by the binary digits of b - a, folded from the right.
fn range_hash(nodes: &impl Nodes, a: u64, b: u64) -> Result<Hash> {
    let mut pieces = Vec::with_capacity(8);
    let mut start = a;
    while start < b {
        let level = 63 - (b - start).leading_zeros();
        // `level` is at most 63, so it fits a u8.
        pieces.push(nodes.node(level as u8, start >> level)?);
        start += 1 << level;
    }
    let mut pieces = pieces.into_iter().rev();
    let mut root = pieces.next().unwrap_or_else(empty_root);
    for left in pieces {
        root = node_hash(&left, &root);
    }
    Ok(root)
}

/// MTH of the first `size` leaves, with `limit` leaves in the log.
pub(crate) fn root(nodes: &impl Nodes, size: u64, limit: u64) -> Result<Hash> {
    if size > limit {
        return Err(Error::OutOfRange {
            what: "tree size",
            value: size,
            size: limit,
        });
    }
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(nodes, 0, size)
}

/// PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, with `limit` leaves in the
/// log: the sibling hashes from the leaf up to the root.
pub(crate) fn inclusion_proof(
    nodes: &impl Nodes,
    index: u64,
    size: u64,
    limit: u64,
) -> Result<Vec<Hash>> {
    if size == 0 || size > limit {
        return Err(Error::OutOfRange {
            what: "tree size",
            value: size,
            size: limit,
        });
    }
    if index >= size {
        return Err(Error::OutOfRange {
            what: "leaf index",
            value: index,
            size,
        });
    }
    let mut out = Vec::with_capacity(64);
    path(nodes, index, 0, size, &mut out)?;
    Ok(out)
}

fn path(nodes: &impl Nodes, m: u64, a: u64, b: u64, out: &mut Vec<Hash>) -> Result<()> {
    if b - a <= 1 {
        return Ok(());
    }
    let k = split(b - a);
    if m < a + k {
        path(nodes, m, a, a + k, out)?;
        out.push(range_hash(nodes, a + k, b)?);
    } else {
        path(nodes, m, a + k, b, out)?;
        out.push(range_hash(nodes, a, a + k)?);
    }
    Ok(())
}

/// PROOF(old, D[0:new]) of RFC 9162 §2.1.4.1, with `limit` leaves in the
/// log. `old` must be at least 1; `old == new` gives the empty proof.
pub(crate) fn consistency_proof(
    nodes: &impl Nodes,
    old: u64,
    new: u64,
    limit: u64,
) -> Result<Vec<Hash>> {
    if new == 0 || new > limit {
        return Err(Error::OutOfRange {
            what: "new size",
            value: new,
            size: limit,
        });
    }
    if old == 0 || old > new {
        return Err(Error::OutOfRange {
            what: "old size",
            value: old,
            size: new,
        });
    }
    let mut out = Vec::with_capacity(64);
    subproof(nodes, old, 0, new, true, &mut out)?;
    Ok(out)
}

fn subproof(
    nodes: &impl Nodes,
    m: u64,
    a: u64,
    b: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<()> {
    if m == b {
        if !whole {
            out.push(range_hash(nodes, a, b)?);
        }
        return Ok(());
    }
    // Here a < m < b, so the range has at least two leaves.
    let k = split(b - a);
    if m <= a + k {
        subproof(nodes, m, a, a + k, whole, out)?;
        out.push(range_hash(nodes, a + k, b)?);
    } else {
        subproof(nodes, m, a + k, b, false, out)?;
        out.push(range_hash(nodes, a, a + k)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
