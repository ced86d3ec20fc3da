//! Receipts built from stored records: what an agency is told about each
//! message it published.

use lianxi_proto::v1::{
    Agency, DuplicateRecord, LogEntry, Receipt, ReceiptStatus, RejectionRecord,
};

/// The agency named by the subject a message arrived on (the subject, not
/// the body: the bus lets an agency publish only on its own subjects),
/// whenever its agency token is valid, even if the rest of the subject is
/// malformed: the receipt of a message on `lianxi.v1.events.police.A.B`
/// goes to the police.
fn subject_agency(subject: &str) -> Agency {
    lianxi_domain::subject_agency(subject).unwrap_or(Agency::Unspecified)
}

/// The longest subject a receipt echoes.
const ECHO_SUBJECT_CHARS: usize = 200;

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

/// The receipt of a rejection: everything it echoes of the message (ids,
/// subject, reason) is escaped and bounded (`lianxi_domain::printable`),
/// so a hostile value cannot reach a terminal or a log through it.
pub fn rejected(r: &RejectionRecord) -> Receipt {
    use lianxi_domain::{MAX_ID_LEN, MAX_REASON_CHARS, printable};
    Receipt {
        status: ReceiptStatus::Rejected as i32,
        event_id: printable(&r.event_id, MAX_ID_LEN),
        case_id: printable(&r.case_id, MAX_ID_LEN),
        agency: subject_agency(&r.subject) as i32,
        subject: printable(&r.subject, ECHO_SUBJECT_CHARS),
        stream_sequence: r.stream_sequence,
        recorded_at: r.recorded_at,
        code: r.code,
        reason: printable(&r.reason, MAX_REASON_CHARS),
        ..Receipt::default()
    }
}
