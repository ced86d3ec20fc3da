//! The log as an RFC 6962 Merkle tree: roots and proofs from the tiles.

use super::Log;
use crate::error::Result;
use crate::merkle;
use crate::tiles;

impl Log {
    /// The number of leaves in the Merkle tree: the global sequence of the
    /// checkpoint (leaf `g - 1` is the entry with global sequence `g`).
    pub fn tree_size(&self) -> u64 {
        self.checkpoint().global_sequence
    }

    /// The RFC 6962 Merkle tree hash of the first `size` entries (the empty
    /// tree's root, SHA-256 of the empty string, for 0), from O(log n)
    /// stored subtrees. `OutOfRange` past `tree_size`.
    pub fn root(&self, size: u64) -> Result<[u8; 32]> {
        merkle::root(
            &tiles::Stored::new(&self.log_tree()?),
            size,
            self.tree_size(),
        )
    }

    /// The inclusion proof (RFC 9162 §2.1.3.1 audit path) of leaf
    /// `leaf_index` (the entry with global sequence `leaf_index + 1`) in the
    /// tree of the first `size` entries. `OutOfRange` unless
    /// `leaf_index < size <= tree_size`.
    pub fn inclusion_proof(&self, leaf_index: u64, size: u64) -> Result<Vec<[u8; 32]>> {
        merkle::inclusion_proof(
            &tiles::Stored::new(&self.log_tree()?),
            leaf_index,
            size,
            self.tree_size(),
        )
    }

    /// The consistency proof (RFC 9162 §2.1.4.1) that the tree of the first
    /// `new` entries extends the tree of the first `old`. `OutOfRange`
    /// unless `1 <= old <= new <= tree_size`; `old == new` gives an empty
    /// proof.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<[u8; 32]>> {
        merkle::consistency_proof(
            &tiles::Stored::new(&self.log_tree()?),
            old,
            new,
            self.tree_size(),
        )
    }

    /// The raw tree, for tests in this crate that tamper with storage or
    /// read records as stored (the pending ones written first).
    #[cfg(test)]
    pub(crate) fn tree(&self) -> sled::Tree {
        self.write_behind_now()
            .expect("the pending records are written");
        self.log_tree().expect("the store is open")
    }
}
