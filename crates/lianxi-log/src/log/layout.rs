//! The storage layout marker and the checks `open` makes of the newest
//! entries.

use std::path::Path;

use lianxi_proto::v1::Checkpoint;
use prost::Message;

use super::read::read_entry;
use super::{Log, RebuildReport};
use crate::error::{Error, Location, Result};
use crate::keys;
use crate::store;
use crate::tiles;

impl Log {
    /// Refuses a data directory written with another storage layout: its
    /// duplicate and lookup indexes would be misread (an old `D` key is
    /// never found under the agency-scoped key, so a re-sent event would be
    /// applied twice and a lookup would say "not found, safe to publish").
    ///
    /// `append_group` and `receipt_for_event` check it on every call; a
    /// node may call [`Log::check_storage_layout`] right after opening to
    /// refuse at start.
    pub(super) fn check_layout(&self, cp: &Checkpoint) -> Result<()> {
        let tree = &self.log_tree()?;
        if tree.contains_key(keys::REBUILDING)? {
            return Err(Error::Layout {
                detail: "a rebuild of the derived records (views, indexes, Merkle tiles) was cut off before it finished; start `lianxi serve` on the data directory, or run `lianxi rebuild`, and it is run again from the entries (nothing in the log itself is lost)".into(),
            });
        }
        match tree.get(keys::LAYOUT)? {
            Some(v)
                if v.as_ref() == [keys::LAYOUT_VERSION]
                    || v.as_ref() == [keys::LAYOUT_WRITTEN_THROUGH] =>
            {
                Ok(())
            }
            Some(v) if keys::upgradable(&v) => Err(Error::Layout {
                detail: format!(
                    "the data directory has storage layout {}, and this lianxi writes layout {} (the same entries, more derived records: the Merkle tree as tiles, the list filters' index); start `lianxi serve` on it, or run `lianxi rebuild` once, and the derived records are written again from the entries (nothing in the log itself changes)",
                    v.first().copied().unwrap_or(0),
                    keys::LAYOUT_VERSION
                ),
            }),
            Some(v) => Err(Error::Layout {
                detail: format!(
                    "the data directory has storage layout {}, and this lianxi reads layout {}; run the lianxi version that wrote it, or start this one on an empty data directory (it reads the events stream again from the start)",
                    v.first().copied().unwrap_or(0),
                    keys::LAYOUT_VERSION
                ),
            }),
            None if cp.stream_sequence == 0
                && cp.global_sequence == 0
                && tree.scan_prefix([keys::DEDUP]).next().is_none() =>
            {
                Ok(())
            }
            None => Err(Error::Layout {
                detail: format!(
                    "the data directory was written by a lianxi from before event ids were scoped by agency (storage layout 1); this version reads layout {} and would misread its duplicate and lookup indexes, so it refuses to use it. Move the directory aside and start the node on an empty one: it reads the events stream again from the start and rebuilds the log (or keep running the older lianxi on it)",
                    keys::LAYOUT_VERSION
                ),
            }),
        }
    }

    /// Upgrades a data directory of storage layout 2 or 3 (the same
    /// entries; the Merkle tree one record per node, no list filters'
    /// index) in place, and finishes a rebuild that was cut off:
    /// in both cases `rebuild` derives every derived record again from the
    /// entries. The rebuild's report when it ran; nothing otherwise.
    pub fn upgrade_storage_layout(&self) -> Result<Option<RebuildReport>> {
        let tree = self.log_tree()?;
        let old = tree.get(keys::LAYOUT)?.filter(|v| keys::upgradable(v));
        let interrupted = tree.contains_key(keys::REBUILDING)?;
        if old.is_none() && !interrupted {
            return Ok(None);
        }
        // `rebuild` removes layout 2's records and moves the marker on; it
        // can be run again after a crash.
        let report = self.rebuild()?;
        // The open-time check of the newest entries was left for now.
        if interrupted && self.behind().is_none() {
            let found = tail_damage(self.path(), &self.log_tree()?, &self.checkpoint())?;
            *self.inner.damage.lock().unwrap_or_else(|p| p.into_inner()) = found;
        }
        if let Some(old) = old {
            tracing::info!(
                data_dir = %self.path().display(),
                entries = report.entries,
                "storage layout {} upgraded to {}: the derived records written again from the entries",
                old.first().copied().unwrap_or(0),
                keys::LAYOUT_VERSION
            );
        } else {
            tracing::warn!(
                data_dir = %self.path().display(),
                entries = report.entries,
                "a rebuild cut off before it finished was run again from the entries"
            );
        }
        Ok(Some(report))
    }

    /// `Err(Error::Layout)`, saying what to do, when the data directory was
    /// written with another storage layout than this version's (see
    /// ARCHITECTURE.md, "Storage layout").
    pub fn check_storage_layout(&self) -> Result<()> {
        self.check_layout(&self.checkpoint())
    }
}

/// How many of the newest entries `open` checks against the checkpoint.
pub(super) const TAIL_CHECK: u64 = 1024;

pub(super) fn read_checkpoint(tree: &sled::Tree) -> Result<Checkpoint> {
    Ok(match tree.get(keys::CHECKPOINT)? {
        Some(b) => Checkpoint::decode(b.as_ref()).map_err(|e| Error::Corruption {
            at: Location::Checkpoint,
            detail: e.to_string(),
        })?,
        None => Checkpoint {
            stream_sequence: 0,
            global_sequence: 0,
            last_hash: vec![0; 32],
        },
    })
}

/// Checks the newest entries (up to `TAIL_CHECK`) against the checkpoint:
/// each is there, decodes, links to the one before, has its Merkle leaf,
/// and the last one's hash is the checkpoint's. A damaged file that sled
/// reopens as a mix of old and new state (a checkpoint ahead of its
/// entries, an entry missing near the end) is caught here, at start, not
/// by a client later.
/// The damage `check_tail` finds, as the reason the log refuses to grow.
pub(super) fn tail_damage(
    path: &Path,
    tree: &sled::Tree,
    cp: &Checkpoint,
) -> Result<Option<String>> {
    match store::guard(path, || check_tail(tree, cp)) {
        Ok(()) => Ok(None),
        Err(e @ (Error::Corruption { .. } | Error::Damaged { .. })) => {
            let e = damaged(path, e);
            tracing::error!(data_dir = %path.display(), "{e}; the node does not write to it");
            Ok(Some(e.to_string()))
        }
        Err(e) => Err(e),
    }
}

pub(super) fn check_tail(tree: &sled::Tree, cp: &Checkpoint) -> Result<()> {
    let last = cp.global_sequence;
    if last == 0 {
        return Ok(());
    }
    let first = last.saturating_sub(TAIL_CHECK - 1).max(1);
    let mut prev: Option<Vec<u8>> = None;
    // A layout-2 log (upgraded by `serve` or `rebuild`) has a record per
    // node instead of tiles.
    let nodes_layout = tree
        .get(keys::LAYOUT)?
        .is_some_and(|v| v.as_ref() == [keys::LAYOUT_NODES]);
    for seq in first..=last {
        let entry = read_entry(tree, seq)?.ok_or_else(|| Error::Corruption {
            at: Location::Entry(seq),
            detail: format!("missing, though the checkpoint covers {last} entries"),
        })?;
        if let Some(prev) = &prev
            && &entry.prev_hash != prev
        {
            return Err(Error::Corruption {
                at: Location::Entry(seq),
                detail: "does not link to the entry before it".to_owned(),
            });
        }
        let leaf = if nodes_layout {
            tree.contains_key(keys::tree_node(0, seq - 1))?
        } else {
            tiles::has_leaf(tree, seq - 1)?
        };
        if !leaf {
            return Err(Error::Corruption {
                at: Location::Tile(0, (seq - 1) / tiles::WIDTH),
                detail: format!("missing, though the checkpoint covers {last} entries"),
            });
        }
        prev = Some(entry.hash);
    }
    if prev.as_deref() != Some(cp.last_hash.as_slice()) {
        return Err(Error::Corruption {
            at: Location::Checkpoint,
            detail: format!("its hash is not the hash of entry {last}"),
        });
    }
    if read_entry(tree, last + 1)?.is_some() {
        return Err(Error::Corruption {
            at: Location::Entry(last + 1),
            detail: format!("present, though the checkpoint covers only {last} entries"),
        });
    }
    Ok(())
}

/// Corruption found at open is a damaged data directory: the node must not
/// start on it.
pub(super) fn damaged(path: &Path, e: Error) -> Error {
    match e {
        Error::Corruption { at, detail } => Error::Damaged {
            path: path.display().to_string(),
            detail: format!("{at}: {detail}"),
        },
        e => e,
    }
}
