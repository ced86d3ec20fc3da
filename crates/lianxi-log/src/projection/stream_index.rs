//! The stream index: `B` + chunk -> the global sequences the 256 stream
//! sequences of that chunk became (`packed.rs`; 0 for a message that
//! became no entry). Receipts are read back through it.

use crate::error::Result;
use crate::packed;
use crate::pending::{Reader, Sink};

use super::Step;

#[derive(Default)]
pub(crate) struct StreamIndex {
    records: packed::Records,
}

impl StreamIndex {
    pub(crate) fn add(&mut self, base: &Reader, step: &Step<'_>) -> Result<()> {
        let s = step.entry.stream_sequence;
        self.records.set(
            &packed::by_stream_key(s),
            s % packed::SLOTS,
            step.entry.global_sequence,
            |k| Ok(base.get(k)?.map(|v| v.to_vec())),
        )
    }

    pub(crate) fn write(&mut self, out: &mut impl Sink) {
        std::mem::take(&mut self.records).write(out);
    }
}
