//! The per-case index: `N` + case id + 0x00 + chunk -> the global sequences
//! of the case's entries in case order, 256 to a record (`packed.rs`).

use crate::error::Result;
use crate::packed;
use crate::pending::{Reader, Sink};

use super::Step;

#[derive(Default)]
pub(crate) struct CaseIndex {
    records: packed::Records,
}

impl CaseIndex {
    pub(crate) fn add(&mut self, base: &Reader, step: &Step<'_>) -> Result<()> {
        let case_sequence = step.entry.case_sequence;
        self.records.set(
            &packed::case_key(&step.event.case_id, case_sequence),
            packed::case_slot(case_sequence),
            step.entry.global_sequence,
            |k| Ok(base.get(k)?.map(|v| v.to_vec())),
        )
    }

    pub(crate) fn write(&mut self, out: &mut impl Sink) {
        std::mem::take(&mut self.records).write(out);
    }
}
