//! The Merkle tree stored as tiles, in the layout of C2SP tlog-tiles.
//!
//! A tile of tile level `L` and index `N` holds the hashes of the tree
//! nodes at level `8 * L` with indices `256 * N` to `256 * N + width - 1`:
//! level-0 tiles hold the leaf hashes, level-1 tiles the roots of each
//! perfect subtree of 256 leaves, and so on. A node at a level between two
//! tile levels is the root of the 2^r hashes below it in one tile, hashed
//! on demand. So the log writes about one record per 256 entries instead of
//! two per entry: a partial tile is rewritten by each group as it grows,
//! and a full one is final.
//!
//! Appending reads nothing from the store: the group starts from the
//! right frontier of the tree (the perfect subtrees still waiting for a
//! right sibling, at most one per level), which the log keeps in memory
//! between groups and otherwise computes from the rightmost tiles.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::error::{Error, Location, Result};
use crate::keys;
use crate::merkle::{Frontier, Hash, Nodes, node_hash};

/// Tree levels per tile level.
pub(crate) const HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub(crate) const WIDTH: u64 = 1 << HEIGHT;

/// The tile holding node `(level, index)`'s hashes at its tile level, the
/// first of them and how many (2^r for a node r levels above it).
fn place(level: u8, index: u64) -> Option<((u8, u64), usize, usize)> {
    let (tile_level, r) = (level / HEIGHT, level % HEIGHT);
    let first = index.checked_mul(1 << r)?;
    let offset = usize::try_from(first % WIDTH).ok()?;
    Some(((tile_level, first / WIDTH), offset, 1 << r))
}

/// The root of `count` hashes of one tile from `offset` (count a power of
/// two): their perfect subtree.
fn fold(tile: &[u8], offset: usize, count: usize) -> Option<Hash> {
    let bytes = tile.get(offset * 32..(offset + count) * 32)?;
    let mut level: Vec<Hash> = bytes
        .chunks_exact(32)
        .map(|c| Hash::try_from(c).unwrap_or([0; 32]))
        .collect();
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level.first().copied()
}

pub(crate) fn missing(level: u8, index: u64) -> Error {
    Error::Corruption {
        at: Location::Tile(level, index),
        detail: "missing: the Merkle tree is behind the log (written before the log kept one, or damaged); stop the node and run `lianxi rebuild`".into(),
    }
}

fn too_short(level: u8, index: u64, width: usize, needed: usize) -> Error {
    Error::Corruption {
        at: Location::Tile(level, index),
        detail: format!(
            "holds {width} hashes, the log needs at least {needed}: the Merkle tree is behind the log (damaged); stop the node and run `lianxi rebuild`"
        ),
    }
}

/// Reads one stored tile, checked to be whole hashes, at most a full tile.
pub(crate) fn read(tree: &sled::Tree, level: u8, index: u64) -> Result<Option<Vec<u8>>> {
    match tree.get(keys::tile(level, index))? {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.len() % 32 == 0 && v.len() as u64 <= WIDTH * 32 => {
            Ok(Some(v.to_vec()))
        }
        Some(v) => Err(Error::Corruption {
            at: Location::Tile(level, index),
            detail: format!(
                "the stored tile is {} bytes, not 1 to 256 hashes of 32",
                v.len()
            ),
        }),
    }
}

/// Whether the stored tiles hold leaf `index` (its level-0 tile is at
/// least that wide).
pub(crate) fn has_leaf(tree: &sled::Tree, index: u64) -> Result<bool> {
    let width = read(tree, 0, index / WIDTH)?.map_or(0, |t| t.len() as u64 / 32);
    Ok(width > index % WIDTH)
}

/// The nodes of the stored tree, read through the tiles (each tile read
/// once per proof or root).
pub(crate) struct Stored<'a> {
    tree: &'a sled::Tree,
    cache: RefCell<HashMap<TileId, Rc<Vec<u8>>>>,
}

/// A tile's level and index.
type TileId = (u8, u64);

impl<'a> Stored<'a> {
    pub(crate) fn new(tree: &'a sled::Tree) -> Self {
        Stored {
            tree,
            cache: RefCell::new(HashMap::new()),
        }
    }
}

impl Nodes for Stored<'_> {
    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        let Some((at, offset, count)) = place(level, index) else {
            return Err(missing(level / HEIGHT, u64::MAX));
        };
        let cached = self.cache.borrow().get(&at).cloned();
        let tile = match cached {
            Some(t) => t,
            None => {
                let t = Rc::new(read(self.tree, at.0, at.1)?.ok_or_else(|| missing(at.0, at.1))?);
                self.cache.borrow_mut().insert(at, Rc::clone(&t));
                t
            }
        };
        fold(&tile, offset, count)
            .ok_or_else(|| too_short(at.0, at.1, tile.len() / 32, offset + count))
    }
}

/// The right frontier of the tree of `size` leaves, from stored nodes: for
/// each set bit of `size`, the perfect subtree it names.
pub(crate) fn frontier(nodes: &impl Nodes, size: u64) -> Result<Frontier> {
    let mut pending = Vec::new();
    for level in 0..(64 - size.leading_zeros()) {
        // `level` is below 64, so it fits a u8.
        let level8 = level as u8;
        pending.push(if size >> level & 1 == 1 {
            nodes.node(level8, (size >> level) - 1)?
        } else {
            [0; 32]
        });
    }
    Ok(Frontier::from_parts(size, pending))
}

/// The tiles that appended leaves change, to be written in one batch:
/// each created node at a tile level goes at the end of its tile.
#[derive(Default)]
pub(crate) struct Edge {
    tiles: BTreeMap<(u8, u64), Vec<u8>>,
}

impl Edge {
    /// Adds the nodes one appended leaf created (as `Frontier::push`
    /// returns them). `stored` reads a tile that is not in this edge yet.
    pub(crate) fn add(
        &mut self,
        created: &[(u8, u64, Hash)],
        mut stored: impl FnMut(u8, u64) -> Result<Option<Vec<u8>>>,
    ) -> Result<()> {
        for &(level, index, hash) in created {
            if level % HEIGHT != 0 {
                continue;
            }
            let at = (level / HEIGHT, index / WIDTH);
            let offset = (index % WIDTH) as usize;
            let tile = match self.tiles.entry(at) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(if offset == 0 {
                    Vec::with_capacity(32)
                } else {
                    stored(at.0, at.1)?.unwrap_or_default()
                }),
            };
            if tile.len() != offset * 32 {
                return Err(if tile.is_empty() {
                    missing(at.0, at.1)
                } else {
                    too_short(at.0, at.1, tile.len() / 32, offset)
                });
            }
            tile.extend_from_slice(&hash);
        }
        Ok(())
    }

    /// Takes the tiles that are full (for a long pass that writes as it
    /// goes, such as `rebuild`'s).
    pub(crate) fn take_full(&mut self) -> Vec<((u8, u64), Vec<u8>)> {
        let full: Vec<(u8, u64)> = self
            .tiles
            .iter()
            .filter(|(_, t)| t.len() as u64 == WIDTH * 32)
            .map(|(k, _)| *k)
            .collect();
        full.into_iter()
            .filter_map(|k| self.tiles.remove(&k).map(|t| (k, t)))
            .collect()
    }

    /// Every tile changed, full or partial.
    pub(crate) fn into_tiles(self) -> BTreeMap<(u8, u64), Vec<u8>> {
        self.tiles
    }

    pub(crate) fn write(self, out: &mut impl crate::pending::Sink) {
        for ((level, index), tile) in self.tiles {
            out.put(&keys::tile(level, index), &tile);
        }
    }
}

/// The width a tree of `size` leaves gives tile `(level, index)`: 0 where
/// it has no such tile.
pub(crate) fn expected_width(size: u64, level: u8, index: u64) -> u64 {
    let nodes = match u32::from(level).checked_mul(u32::from(HEIGHT)) {
        Some(shift) if shift < 64 => size >> shift,
        _ => 0,
    };
    match index.checked_mul(WIDTH) {
        Some(start) if start < nodes => (nodes - start).min(WIDTH),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{self, leaf_hash};

    struct Mem(HashMap<(u8, u64), Vec<u8>>);
    impl Nodes for Mem {
        fn node(&self, level: u8, index: u64) -> Result<Hash> {
            let (at, offset, count) = place(level, index).unwrap();
            let tile = self.0.get(&at).ok_or_else(|| missing(at.0, at.1))?;
            fold(tile, offset, count)
                .ok_or_else(|| too_short(at.0, at.1, tile.len() / 32, offset + count))
        }
    }

    #[test]
    fn tiles_give_every_node_the_frontier_and_the_widths_of_a_tree_built_leaf_by_leaf() {
        // Past two full tile levels' worth of leaves at level 0 and 1.
        let n: u64 = 256 * 256 + 3 * 256 + 17;
        let mut frontier = Frontier::default();
        let mut edge = Edge::default();
        let mut all_nodes = Vec::new();
        let mut stored: HashMap<(u8, u64), Vec<u8>> = HashMap::new();
        for i in 0..n {
            let created = frontier.push(leaf_hash(&i.to_be_bytes())).unwrap();
            edge.add(&created, |l, x| Ok(stored.get(&(l, x)).cloned()))
                .unwrap();
            // Write in groups of 500, as the log does.
            if i % 500 == 499 || i == n - 1 {
                for (k, t) in std::mem::take(&mut edge).into_tiles() {
                    stored.insert(k, t);
                }
            }
            all_nodes.extend(created);
        }
        let mem = Mem(stored.clone());
        for (level, index, hash) in &all_nodes {
            assert_eq!(
                mem.node(*level, *index).unwrap(),
                *hash,
                "node {level}/{index}"
            );
        }
        let rebuilt = super::frontier(&mem, n).unwrap();
        assert_eq!(rebuilt.root(), frontier.root());
        assert_eq!(merkle::root(&mem, n, n).unwrap(), frontier.root());
        for ((level, index), tile) in &stored {
            assert_eq!(tile.len() as u64, 32 * expected_width(n, *level, *index));
        }
        assert_eq!(expected_width(n, 0, n / 256 + 1), 0);
        assert_eq!(expected_width(n, 2, 0), 1);
        assert_eq!(expected_width(n, 3, 0), 0);
        // Continuing from the rebuilt frontier gives the same tree.
        let (mut a, mut b) = (frontier, rebuilt);
        for i in n..n + 600 {
            assert_eq!(
                a.push(leaf_hash(&i.to_be_bytes())).unwrap(),
                b.push(leaf_hash(&i.to_be_bytes())).unwrap()
            );
        }
    }

    #[test]
    fn a_tile_shorter_than_the_tree_or_absent_is_named() {
        let mut mem = Mem(HashMap::new());
        mem.0.insert((0, 0), vec![7u8; 32 * 10]);
        assert!(mem.node(0, 9).is_ok());
        assert!(matches!(
            mem.node(0, 10),
            Err(Error::Corruption { at: Location::Tile(0, 0), ref detail }) if detail.contains("holds 10")
        ));
        assert!(matches!(
            mem.node(3, 1),
            Err(Error::Corruption {
                at: Location::Tile(0, 0),
                ..
            })
        ));
        assert!(matches!(
            mem.node(0, 256),
            Err(Error::Corruption { at: Location::Tile(0, 1), ref detail }) if detail.contains("missing")
        ));
        let mut edge = Edge::default();
        // Appending hash 12 of tile 0/0 when it holds 10 is a gap.
        assert!(
            edge.add(&[(0, 12, [1; 32])], |l, i| Ok(mem.0.get(&(l, i)).cloned()))
                .is_err()
        );
    }
}
