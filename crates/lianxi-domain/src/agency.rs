//! Agencies as they appear on the wire (subject tokens) and to people (names).

use lianxi_proto::v1::{Agency, Event, RejectionCode};

use crate::error::Rejection;
use crate::validate::{check_case_id, label_agency};

/// Every event is published under this prefix, then the agency token, then
/// the case id. Streams and consumers filter on it.
pub const EVENTS_SUBJECT_PREFIX: &str = "lianxi.v1.events";

/// The longest id an agency may choose (event, case, referral, ...). Ids are
/// keys in the log's indexes and tokens in subjects, so they stay short.
pub const MAX_ID_LEN: usize = 64;

/// Every real agency, in agency-number order.
pub const ALL_AGENCIES: [Agency; 7] = [
    Agency::PoliticalLegalCommittee,
    Agency::Police,
    Agency::Court,
    Agency::CivilAffairs,
    Agency::Labour,
    Agency::WomensFederation,
    Agency::JusticeBureau,
];

/// The subject token an agency publishes under; `None` for `UNSPECIFIED`,
/// which no agency may publish as.
pub fn agency_token(a: Agency) -> Option<&'static str> {
    match a {
        Agency::Unspecified => None,
        Agency::PoliticalLegalCommittee => Some("political_legal_committee"),
        Agency::Police => Some("police"),
        Agency::Court => Some("court"),
        Agency::CivilAffairs => Some("civil_affairs"),
        Agency::Labour => Some("labour"),
        Agency::WomensFederation => Some("womens_federation"),
        Agency::JusticeBureau => Some("justice_bureau"),
    }
}

/// The inverse of [`agency_token`].
pub fn agency_from_token(t: &str) -> Option<Agency> {
    ALL_AGENCIES
        .into_iter()
        .find(|a| agency_token(*a) == Some(t))
}

/// The agency's name as a person reads it at the start of a sentence.
pub fn agency_name(a: Agency) -> &'static str {
    match a {
        Agency::Unspecified => "An unspecified agency",
        Agency::PoliticalLegalCommittee => "Political-legal committee",
        Agency::Police => "Police",
        Agency::Court => "Court",
        Agency::CivilAffairs => "Civil affairs",
        Agency::Labour => "Labour",
        Agency::WomensFederation => "Women's federation",
        Agency::JusticeBureau => "Justice bureau",
    }
}

/// The agency as the object of a sentence ("referred the case to the court").
pub(crate) fn agency_object(a: Agency) -> &'static str {
    match a {
        Agency::Unspecified => "an unspecified agency",
        Agency::PoliticalLegalCommittee => "the political-legal committee",
        Agency::Police => "the police",
        Agency::Court => "the court",
        Agency::CivilAffairs => "civil affairs",
        Agency::Labour => "labour",
        Agency::WomensFederation => "the women's federation",
        Agency::JusticeBureau => "the justice bureau",
    }
}

/// The agency named by a raw enum number, for messages about bad input.
pub(crate) fn agency_object_i32(v: i32) -> &'static str {
    Agency::try_from(v).map_or("an unknown agency", agency_object)
}

/// The subject an event must be published on:
/// `lianxi.v1.events.<agency>.<case_id>`.
pub fn event_subject(e: &Event) -> Result<String, Rejection> {
    let agency = label_agency(e.agency, "agency")?;
    check_case_id(&e.case_id)?;
    let token = agency_token(agency).unwrap_or("unspecified");
    Ok(format!("{EVENTS_SUBJECT_PREFIX}.{token}.{}", e.case_id))
}

/// Splits a subject into the publishing agency and the case id.
pub fn parse_subject(subject: &str) -> Result<(Agency, String), Rejection> {
    let bad = |why: &str| {
        Rejection::new(
            RejectionCode::BadSubject,
            format!(
                "subject \"{}\" {why}; publish on {EVENTS_SUBJECT_PREFIX}.<agency>.<case_id>",
                shorten(subject)
            ),
        )
    };
    let rest = subject
        .strip_prefix(EVENTS_SUBJECT_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| bad(&format!("does not start with {EVENTS_SUBJECT_PREFIX}.")))?;
    let mut parts = rest.split('.');
    let (Some(token), Some(case_id), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(
            "must have exactly an agency and a case id after the prefix",
        ));
    };
    let agency = agency_from_token(token).ok_or_else(|| {
        Rejection::new(
            RejectionCode::UnknownAgency,
            format!(
                "subject names agency \"{}\", which is not one of police, court, civil_affairs, labour, womens_federation, justice_bureau, political_legal_committee",
                shorten(token)
            ),
        )
    })?;
    if check_case_id(case_id).is_err() {
        return Err(bad(
            "has an invalid case id; use 1 to 64 characters of A-Z a-z 0-9 _ -",
        ));
    }
    Ok((agency, case_id.to_owned()))
}

/// The agency of a subject whenever its agency token is valid, even when
/// the rest of the subject is not (`lianxi.v1.events.police.A.B`,
/// `lianxi.v1.events.police.*`, a control character in the case token): the
/// bus lets an agency publish only under its own token, so the token says
/// who sent the message. `None` when the subject does not start with
/// [`EVENTS_SUBJECT_PREFIX`] followed by one of the seven agency tokens.
pub fn subject_agency(subject: &str) -> Option<Agency> {
    let rest = subject
        .strip_prefix(EVENTS_SUBJECT_PREFIX)?
        .strip_prefix('.')?;
    let token = rest.split('.').next()?;
    agency_from_token(token)
}

/// The most characters of agency input quoted in a rejection reason.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Keeps user input quoted in messages to a readable length, and harmless
/// on a terminal or in a log line (see [`printable`]).
pub(crate) fn shorten(s: &str) -> String {
    printable(s, MAX_QUOTED_CHARS)
}

/// Whether a character must not reach a terminal, a log line or a reason as
/// it is: control characters (C0, DEL, C1: line breaks, escape sequences,
/// BEL) and the invisible format characters that reorder or hide text
/// (bidirectional overrides and isolates, zero-width characters, line and
/// paragraph separators, the byte-order mark).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Text from outside (an agency's ids, subjects, values) made safe to echo:
/// every unsafe character (see [`is_unsafe_char`]) written as a Rust-style
/// escape such as `\n` or `\u{1b}`, so it can neither start a new line
/// nor send an escape sequence to a terminal, and the result cut to at most
/// `limit` characters (then `...`). Text with no unsafe character and
/// within the limit comes back unchanged.
pub fn printable(s: &str, limit: usize) -> String {
    let mut out = String::with_capacity(s.len().min(limit.saturating_mul(4)) + 3);
    let mut written = 0usize;
    for c in s.chars() {
        let piece: String = if matches!(c, '\n' | '\r' | '\t') {
            c.escape_default().collect()
        } else if is_unsafe_char(c) {
            c.escape_unicode().collect()
        } else {
            c.into()
        };
        let len = piece.chars().count();
        if written + len > limit {
            out.push_str("...");
            break;
        }
        out.push_str(&piece);
        written += len;
    }
    out
}
