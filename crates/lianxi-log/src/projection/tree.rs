//! The Merkle tree, stored as C2SP tlog-tiles (`G`, see `tiles.rs`): the
//! right frontier in memory, and the tiles each entry's leaf changes.

use crate::error::Result;
use crate::merkle::{self, Frontier};
use crate::pending::{Reader, Sink};
use crate::tiles::{self, Edge};

use super::Step;

pub(crate) struct Tiles {
    frontier: Frontier,
    edge: Edge,
}

impl Tiles {
    pub(crate) fn new(frontier: Frontier) -> Self {
        Tiles {
            frontier,
            edge: Edge::default(),
        }
    }

    pub(crate) fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// The frontier moves on, and the nodes the leaf completes at a tile
    /// level go into their tiles (a partial tile at the right edge is read
    /// once per write).
    pub(crate) fn add(&mut self, base: &Reader, step: &Step<'_>) -> Result<()> {
        let created = self.frontier.push(merkle::leaf_hash(step.hash))?;
        self.edge.add(&created, |level, index| {
            tiles::read(base.tree(), level, index)
        })
    }

    pub(crate) fn write(&mut self, out: &mut impl Sink) {
        std::mem::take(&mut self.edge).write(out);
    }
}
