//! The duplicate index: `D` + agency + event id -> the global sequence of
//! the agency's accepted event with that id. The idempotency key: event ids
//! are each agency's own namespace.

use std::collections::HashMap;

use lianxi_proto::v1::Agency;

use crate::error::Result;
use crate::keys;
use crate::pending::{Reader, Sink};

use super::Step;

#[derive(Default)]
pub(crate) struct Dedup {
    changed: HashMap<(Agency, String), u64>,
}

impl Dedup {
    /// The global sequence of the agency's accepted event `event_id`.
    pub(crate) fn get(&self, base: &Reader, agency: Agency, event_id: &str) -> Result<Option<u64>> {
        if let Some(g) = self.changed.get(&(agency, event_id.to_owned())) {
            return Ok(Some(*g));
        }
        Ok(base
            .get(keys::scoped(keys::DEDUP, agency, event_id))?
            .as_deref()
            .and_then(keys::be_u64))
    }

    pub(crate) fn add(&mut self, step: &Step<'_>) {
        self.changed.insert(
            (
                lianxi_domain::intake::agency_of(step.event),
                step.event.event_id.clone(),
            ),
            step.entry.global_sequence,
        );
    }

    pub(crate) fn write(&mut self, out: &mut impl Sink) {
        for ((agency, id), g) in self.changed.drain() {
            out.put(&keys::scoped(keys::DEDUP, agency, &id), &g.to_be_bytes());
        }
    }
}
