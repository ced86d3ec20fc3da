//! Case views: `V` + case id -> the `CaseView` after the case's last entry.
//! Written once per group per case, not once per event.

use std::collections::HashMap;

use lianxi_proto::v1::CaseView;
use prost::Message;

use crate::error::{Error, Location, Result};
use crate::keys;
use crate::pending::{Reader, Sink};

#[derive(Default)]
pub(crate) struct Views {
    changed: HashMap<String, CaseView>,
}

impl Views {
    /// The current view of a case: as changed here, else as stored.
    pub(crate) fn get(&self, base: &Reader, case_id: &str) -> Result<Option<CaseView>> {
        match self.changed.get(case_id) {
            Some(v) => Ok(Some(v.clone())),
            None => read(base, case_id),
        }
    }

    pub(crate) fn add(&mut self, view: CaseView) {
        self.changed.insert(view.case_id.clone(), view);
    }

    pub(crate) fn write(&mut self, out: &mut impl Sink) {
        for (case, view) in self.changed.drain() {
            out.put(&keys::named(keys::VIEW, &case), &view.encode_to_vec());
        }
    }
}

/// A stored view.
pub(crate) fn read(tree: &Reader, case_id: &str) -> Result<Option<CaseView>> {
    match tree.get(keys::named(keys::VIEW, case_id))? {
        Some(b) => CaseView::decode(b.as_ref())
            .map(Some)
            .map_err(|e| Error::Corruption {
                at: Location::View(case_id.to_owned()),
                detail: e.to_string(),
            }),
        None => Ok(None),
    }
}
