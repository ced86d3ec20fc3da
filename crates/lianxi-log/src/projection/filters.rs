//! The list filters' index: so that a page of `ListCases` with a filter
//! reads the views that may match, not every view.
//!
//! `K` + facet (one byte) + value + case id -> empty, one posting per case
//! and value of what `lianxi_domain::facets` says of its current view:
//! - `K 1` status, `K 2` category, `K 3` risk level, `K 4` each involved
//!   agency: + the value as 4 bytes (big-endian, sign bit flipped) + case id;
//! - `K 5` the earliest due time among open obligations: + the time as 16
//!   bytes (nanoseconds since the epoch, big-endian, sign bit flipped) +
//!   case id, so the cases overdue at `now` are the range below `now`.
//!
//! A view that changes moves its postings: the ones it no longer has are
//! removed, the new ones added. `lianxi_domain::matches` remains the judge
//! of every view read; the index only narrows what is read.

use std::collections::BTreeMap;

use lianxi_proto::Timestamp;
use lianxi_proto::v1::CaseView;

use crate::keys;
use crate::pending::Sink;

/// A facet of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facet {
    Status = 1,
    Category = 2,
    RiskLevel = 3,
    Agency = 4,
}

const NEXT_DUE: u8 = 5;

/// The postings of a view.
pub(crate) fn postings(view: &CaseView) -> Vec<Vec<u8>> {
    let f = lianxi_domain::facets(view);
    let case = view.case_id.as_str();
    let mut out = vec![
        value_key(Facet::Status, f.status, case),
        value_key(Facet::Category, f.category, case),
        value_key(Facet::RiskLevel, f.risk_level, case),
    ];
    out.extend(
        f.agencies
            .iter()
            .map(|a| value_key(Facet::Agency, *a, case)),
    );
    if let Some(due) = &f.next_due {
        let mut k = due_prefix(due);
        k.extend_from_slice(case.as_bytes());
        out.push(k);
    }
    out
}

/// The prefix of the postings of one value of a facet.
pub(crate) fn value_prefix(facet: Facet, value: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + 24);
    k.push(keys::FILTER_INDEX);
    k.push(facet as u8);
    k.extend_from_slice(&((value as u32) ^ (1 << 31)).to_be_bytes());
    k
}

fn value_key(facet: Facet, value: i32, case_id: &str) -> Vec<u8> {
    let mut k = value_prefix(facet, value);
    k.extend_from_slice(case_id.as_bytes());
    k
}

/// The start of the next-due postings at time `t` (those of earlier times
/// sort before it).
pub(crate) fn due_prefix(t: &Timestamp) -> Vec<u8> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let mut k = Vec::with_capacity(18 + 24);
    k.push(keys::FILTER_INDEX);
    k.push(NEXT_DUE);
    k.extend_from_slice(&((nanos as u128) ^ (1 << 127)).to_be_bytes());
    k
}

/// Where the next-due postings start.
pub(crate) fn due_start() -> [u8; 2] {
    [keys::FILTER_INDEX, NEXT_DUE]
}

/// The length of a next-due posting's key before its case id.
pub(crate) const DUE_PREFIX_LEN: usize = 18;

#[derive(Default)]
pub(crate) struct Filters {
    /// Posting -> present (insert) or gone (remove); the last change wins.
    changed: BTreeMap<Vec<u8>, bool>,
}

impl Filters {
    /// Moves a case's postings from those of its view before (`old`, from
    /// [`postings`]) to those of its view `after`.
    pub(crate) fn add(&mut self, old: Option<Vec<Vec<u8>>>, after: &CaseView) {
        let old = old.unwrap_or_default();
        let new = postings(after);
        for k in &old {
            if !new.contains(k) {
                self.changed.insert(k.clone(), false);
            }
        }
        for k in new {
            // A posting the view before had is in the store or in this
            // set already.
            if !old.contains(&k) {
                self.changed.insert(k, true);
            }
        }
    }

    pub(crate) fn write(&mut self, out: &mut impl Sink) {
        for (k, present) in std::mem::take(&mut self.changed) {
            if present {
                out.put(&k, &[]);
            } else {
                out.delete(&k);
            }
        }
    }
}
