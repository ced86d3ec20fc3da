//! The full check of the log against its entries.

use std::collections::HashMap;

use lianxi_domain::intake::agency_of;

use super::read::decode_entry;
use super::{Log, VerifyReport, entry_hash};
use crate::error::{Error, Location, Result};
use crate::keys;
use crate::merkle::{self, Frontier};
use crate::packed;
use crate::tiles::{self, Edge};

impl Log {
    /// Checks the whole log: dense global and case sequences, each entry's
    /// hash and its link to the previous one, the per-case index and dedup
    /// index pointing at the right entries, every stored Merkle tree node
    /// against the entries (and none past them), and the checkpoint at the
    /// end.
    pub fn verify(&self) -> Result<VerifyReport> {
        let tree = &self.log_tree()?;
        let derived = self.reader()?;
        let mut prev = [0u8; 32];
        let mut expected = 1u64;
        let mut case_seqs: HashMap<String, u64> = HashMap::new();
        let mut frontier = Frontier::default();
        let mut edge = Edge::default();
        for item in tree.scan_prefix([keys::ENTRY]) {
            let (k, v) = item?;
            let entry = decode_entry(&k, &v)?;
            let at = Location::Entry(expected);
            let corrupt = |detail: String| Error::Corruption {
                at: at.clone(),
                detail,
            };
            if entry.global_sequence != expected {
                return Err(corrupt(format!(
                    "expected global sequence {expected}, found {}",
                    entry.global_sequence
                )));
            }
            if entry.prev_hash != prev {
                return Err(corrupt(format!(
                    "previous-hash link broken: entry says {}, previous entry hashes to {}",
                    hex::encode(&entry.prev_hash),
                    hex::encode(prev)
                )));
            }
            let hash = entry_hash(&entry);
            if entry.hash != hash {
                return Err(corrupt(format!(
                    "content does not match its hash: stored {}, computed {}",
                    hex::encode(&entry.hash),
                    hex::encode(hash)
                )));
            }
            let event = entry
                .event
                .as_ref()
                .ok_or_else(|| corrupt("no event".into()))?;
            let case_seq = case_seqs.entry(event.case_id.clone()).or_insert(0);
            *case_seq += 1;
            if entry.case_sequence != *case_seq {
                return Err(corrupt(format!(
                    "expected case sequence {} of case {}, found {}",
                    case_seq, event.case_id, entry.case_sequence
                )));
            }
            let indexed = derived
                .get(packed::case_key(&event.case_id, *case_seq))?
                .and_then(|r| packed::get(&r, packed::case_slot(*case_seq)));
            if indexed != Some(expected) {
                return Err(Error::Corruption {
                    at: Location::CaseIndex(event.case_id.clone(), *case_seq),
                    detail: format!("does not point at entry {expected}"),
                });
            }
            let dedup =
                derived.get(keys::scoped(keys::DEDUP, agency_of(event), &event.event_id))?;
            if dedup.as_deref().and_then(keys::be_u64) != Some(expected) {
                return Err(Error::Corruption {
                    at: Location::Dedup(event.event_id.clone()),
                    detail: format!("does not point at entry {expected}"),
                });
            }
            edge.add(&frontier.push(merkle::leaf_hash(&hash))?, |_, _| Ok(None))?;
            for ((level, index), computed) in edge.take_full() {
                check_tile(tree, level, index, &computed)?;
            }
            prev = hash;
            expected += 1;
        }
        let entries = expected - 1;
        let cp = self.checkpoint();
        if cp.global_sequence != entries || cp.last_hash != prev {
            return Err(Error::Corruption {
                at: Location::Checkpoint,
                detail: format!(
                    "checkpoint says {} entries ending in {}, the log has {} ending in {}",
                    cp.global_sequence,
                    hex::encode(&cp.last_hash),
                    entries,
                    hex::encode(prev)
                ),
            });
        }
        for ((level, index), computed) in edge.into_tiles() {
            check_tile(tree, level, index, &computed)?;
        }
        // No tile may hold nodes past the last entry, and no record of the
        // older one-record-per-node tree may be left.
        for item in tree.scan_prefix([keys::TILE]) {
            let (k, _) = item?;
            let Some((level, index)) = keys::parse_tile(&k) else {
                return Err(Error::Corruption {
                    at: Location::Key(hex::encode(&k)),
                    detail: "not a Merkle tile key".into(),
                });
            };
            if tiles::expected_width(entries, level, index) == 0 {
                return Err(Error::Corruption {
                    at: Location::Tile(level, index),
                    detail: format!("covers leaves past the log's {entries} entries"),
                });
            }
        }
        if let Some(item) = tree.scan_prefix([keys::TREE]).next() {
            let (k, _) = item?;
            return Err(Error::Corruption {
                at: Location::Key(hex::encode(&k)),
                detail: "a Merkle node record of storage layout 2 is left beside the tiles; run `lianxi rebuild`".into(),
            });
        }
        Ok(VerifyReport {
            entries,
            cases: case_seqs.len() as u64,
            last_hash: prev,
            root: frontier.root(),
        })
    }
}

/// Compares a stored tile with the one computed from the entries.
pub(super) fn check_tile(tree: &sled::Tree, level: u8, index: u64, computed: &[u8]) -> Result<()> {
    match tiles::read(tree, level, index)? {
        Some(stored) if stored == computed => Ok(()),
        Some(stored) => {
            let differs = stored
                .chunks(32)
                .zip(computed.chunks(32))
                .position(|(a, b)| a != b)
                .unwrap_or(stored.len().min(computed.len()) / 32);
            Err(Error::Corruption {
                at: Location::Tile(level, index),
                detail: format!(
                    "the stored tile ({} hashes) does not match the one computed from the entries ({} hashes) from hash {differs} on",
                    stored.len() / 32,
                    computed.len() / 32
                ),
            })
        }
        None => Err(tiles::missing(level, index)),
    }
}
