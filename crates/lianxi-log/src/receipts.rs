//! Receipts built from stored records: what an agency is told about each
//! message it published.

use lianxi_proto::v1::{
    Agency, DuplicateRecord, LogEntry, Receipt, ReceiptStatus, RejectionRecord,
};

/// The agency named by the subject a message arrived on (the subject, not
/// the body: the bus lets an agency publish only on its own subjects).
fn subject_agency(subject: &str) -> Agency {
    lianxi_domain::parse_subject(subject)
        .map(|(a, _)| a)
        .unwrap_or(Agency::Unspecified)
}

pub(crate) fn accepted(entry: &LogEntry) -> Receipt {
    let event = entry.event.clone().unwrap_or_default();
    Receipt {
        status: ReceiptStatus::Accepted as i32,
        event_id: event.event_id,
        case_id: event.case_id,
        agency: subject_agency(&entry.subject) as i32,
        subject: entry.subject.clone(),
        stream_sequence: entry.stream_sequence,
        recorded_at: entry.recorded_at,
        global_sequence: entry.global_sequence,
        case_sequence: entry.case_sequence,
        entry_hash: hex::encode(&entry.hash),
        ..Receipt::default()
    }
}

pub(crate) fn duplicate(d: &DuplicateRecord, case_id: String) -> Receipt {
    Receipt {
        status: ReceiptStatus::Duplicate as i32,
        event_id: d.event_id.clone(),
        case_id,
        agency: subject_agency(&d.subject) as i32,
        subject: d.subject.clone(),
        stream_sequence: d.stream_sequence,
        recorded_at: d.recorded_at,
        original_global_sequence: d.original_global_sequence,
        ..Receipt::default()
    }
}

pub fn rejected(r: &RejectionRecord) -> Receipt {
    Receipt {
        status: ReceiptStatus::Rejected as i32,
        event_id: r.event_id.clone(),
        case_id: r.case_id.clone(),
        agency: subject_agency(&r.subject) as i32,
        subject: r.subject.clone(),
        stream_sequence: r.stream_sequence,
        recorded_at: r.recorded_at,
        code: r.code,
        reason: r.reason.clone(),
        ..Receipt::default()
    }
}
