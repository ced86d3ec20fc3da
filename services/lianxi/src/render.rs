//! Readable text for people at a terminal. `--json` gives the canonical form.

use std::fmt::Write;

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    Agency, Category, Channel, ConsentStatus, CoordinatedStatus, GetCaseResponse, InvolvementState,
    Level, Obligation, ObligationKind, RiskLevel, Role, TimelineEntry,
};

/// The most characters of one value shown at the terminal (free text is at
/// most 4,096 characters; escapes lengthen it).
const SHOWN_CHARS: usize = 16_384;

/// Escapes every string in a message for the terminal: agency text (case
/// ids, descriptions, reasons, subjects) may hold line breaks, escape
/// sequences or bidirectional overrides, which would forge lines or
/// commands on an operator's screen. Each string goes through
/// `lianxi_domain::printable` (through the message's canonical JSON, so no
/// field is forgotten); the renderer's own line breaks and colours are
/// added afterwards.
macro_rules! shown {
    ($v:expr) => {{
        let mut value = serde_json::to_value($v).unwrap_or_default();
        scrub(&mut value);
        serde_json::from_value(value).unwrap_or_default()
    }};
}

fn scrub(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => *s = lianxi_domain::printable(s, SHOWN_CHARS),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut item) in old {
                scrub(&mut item);
                map.insert(lianxi_domain::printable(&k, SHOWN_CHARS), item);
            }
        }
        _ => {}
    }
}

/// One agency-supplied value for the terminal.
fn safe(s: &str) -> String {
    lianxi_domain::printable(s, SHOWN_CHARS)
}

/// "COORDINATED_STATUS_IN_PROGRESS" with prefix "COORDINATED_STATUS_" -> "in progress".
fn words(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .replace('_', " ")
        .to_lowercase()
}

fn agency(n: i32) -> &'static str {
    lianxi_domain::agency_name(Agency::try_from(n).unwrap_or(Agency::Unspecified))
}

pub(crate) fn time(t: Option<&Timestamp>) -> String {
    match t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)) {
        Some(dt) => dt.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => "-".to_owned(),
    }
}

fn enum_words<E>(n: i32, prefix: &str, name: fn(&E) -> &'static str) -> String
where
    E: TryFrom<i32>,
{
    match E::try_from(n) {
        Ok(e) => words(name(&e), prefix),
        Err(_) => format!("unknown ({n})"),
    }
}

fn obligation_line(o: &Obligation, overdue: bool) -> String {
    let kind = enum_words::<ObligationKind>(o.kind, "OBLIGATION_KIND_", |e| e.as_str_name());
    let mark = if overdue { "  OVERDUE" } else { "" };
    format!(
        "  {:<20} {:<20} due {}{mark}  ({})",
        agency(o.owner),
        kind,
        time(o.due_at.as_ref()),
        o.description
    )
}

pub(crate) fn case(r: &GetCaseResponse) -> String {
    let r: &GetCaseResponse = &shown!(r);
    let mut s = String::new();
    let Some(v) = &r.view else {
        return "no view\n".into();
    };
    let status =
        enum_words::<CoordinatedStatus>(v.status, "COORDINATED_STATUS_", |e| e.as_str_name());
    let _ = writeln!(s, "Case {}  ·  {}", v.case_id, status.to_uppercase());
    let _ = writeln!(
        s,
        "  {} · opened {} via {} · {} ({})",
        enum_words::<Category>(v.category, "CATEGORY_", |e| e.as_str_name()),
        time(v.opened_at.as_ref()),
        enum_words::<Channel>(v.channel, "CHANNEL_", |e| e.as_str_name()),
        v.jurisdiction,
        enum_words::<Level>(v.level, "LEVEL_", |e| e.as_str_name()),
    );
    let _ = writeln!(
        s,
        "  first contact: {}   lead: {}   events: {}   last: {}",
        agency(v.first_contact),
        agency(v.lead),
        v.case_sequence,
        time(v.last_event_at.as_ref())
    );
    if v.closed_at.is_some() {
        let _ = writeln!(s, "  closed {}", time(v.closed_at.as_ref()));
    }
    let _ = writeln!(s, "  {}", personal_line(v));
    let _ = writeln!(s, "\nAgencies");
    for a in &v.agencies {
        let _ = writeln!(
            s,
            "  {:<28} {:<14} {}",
            agency(a.agency),
            enum_words::<Role>(a.role, "ROLE_", |e| e.as_str_name()),
            enum_words::<InvolvementState>(a.state, "INVOLVEMENT_STATE_", |e| e.as_str_name()),
        );
    }
    let open: Vec<&Obligation> = v
        .obligations
        .iter()
        .filter(|o| o.fulfilled_at.is_none() && !o.cancelled)
        .collect();
    let _ = writeln!(
        s,
        "\nOpen obligations (judged at {})",
        time(r.evaluated_at.as_ref())
    );
    if open.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for o in open {
        let overdue = r.overdue.iter().any(|x| x.id == o.id);
        let _ = writeln!(s, "{}", obligation_line(o, overdue));
    }
    let _ = writeln!(s, "\nFlags");
    let mut flags = Vec::new();
    if let Some(f) = &v.flags {
        let risk = enum_words::<RiskLevel>(f.risk_level, "RISK_LEVEL_", |e| e.as_str_name());
        if f.high_risk {
            flags.push(format!("HIGH RISK (score {})", f.risk_score));
        } else if f.risk_level != 0 {
            flags.push(format!("risk {risk} (score {})", f.risk_score));
        }
        if f.protection_order {
            let state = if r.protection_order_active {
                "in force"
            } else {
                "expired"
            };
            flags.push(format!(
                "protection order {state} until {}",
                time(f.protection_order_expires_at.as_ref())
            ));
        }
        if f.repeat_case {
            flags.push(format!("repeat case (previous: {})", f.previous_case_id));
        }
        if f.escalated {
            flags.push("escalated to the joint meeting".into());
        }
        if f.warning_follow_up_open {
            flags.push(format!(
                "warning follow-up due {}",
                time(f.warning_follow_up_due_at.as_ref())
            ));
        }
        if f.in_shelter {
            flags.push("in shelter".into());
        }
        if f.shared_without_consent {
            flags.push("shared without consent".into());
        }
        flags.push(format!(
            "consent {}",
            enum_words::<ConsentStatus>(f.consent, "CONSENT_STATUS_", |e| e.as_str_name())
        ));
    }
    if !r.overdue.is_empty() {
        flags.push(format!("{} overdue obligation(s)", r.overdue.len()));
    }
    let _ = writeln!(s, "  {}", flags.join(" · "));
    s
}

/// The case's personal data: its state, and the person reference and
/// reporter as far as the caller may see them.
fn personal_line(v: &lianxi_proto::v1::CaseView) -> String {
    use lianxi_proto::v1::PersonalDataState;
    let state = match PersonalDataState::try_from(v.personal_data) {
        Ok(PersonalDataState::Erased) => format!(
            "personal data ERASED {} ({})",
            time(v.personal_data_changed_at.as_ref()),
            v.personal_data_basis
        ),
        Ok(PersonalDataState::LegalHold) => format!(
            "personal data on LEGAL HOLD until {} ({})",
            time(v.retain_until.as_ref()),
            v.personal_data_basis
        ),
        _ => "personal data active".to_owned(),
    };
    let mut shown = Vec::new();
    if !v.person_ref.is_empty() {
        shown.push(format!("person {}", v.person_ref));
    }
    if !v.mandatory_reporter.is_empty() {
        shown.push(format!("reported by {}", v.mandatory_reporter));
    }
    for w in &v.personal {
        shown.push(format!("{} {}", w.path, redaction(w.redaction)));
    }
    if shown.is_empty() {
        state
    } else {
        format!("{state} · {}", shown.join(" · "))
    }
}

fn redaction(n: i32) -> String {
    enum_words::<lianxi_proto::v1::Redaction>(n, "REDACTION_", |e| e.as_str_name())
}

pub(crate) fn timeline(case_id: &str, entries: &[TimelineEntry]) -> String {
    let case_id = safe(case_id);
    let entries: &[TimelineEntry] = &entries
        .iter()
        .map(|e| shown!(e))
        .collect::<Vec<TimelineEntry>>();
    let mut s = String::new();
    let _ = writeln!(s, "Timeline of case {case_id} ({} events)", entries.len());
    for e in entries {
        let _ = writeln!(
            s,
            "{:>4}  {}  {:<26} {}",
            e.case_sequence,
            time(e.occurred_at.as_ref()),
            agency(e.agency),
            e.line
        );
        let _ = writeln!(
            s,
            "      recorded {}  #{}  {}  {}",
            time(e.recorded_at.as_ref()),
            e.global_sequence,
            e.event_id,
            e.hash.get(..16).unwrap_or(&e.hash)
        );
        for w in &e.withheld {
            let _ = writeln!(s, "      {}: {}", w.path, redaction(w.redaction));
        }
    }
    s
}

pub(crate) fn rejections(list: &[lianxi_proto::v1::Receipt]) -> String {
    let list: &[lianxi_proto::v1::Receipt] = &list
        .iter()
        .map(|r| shown!(r))
        .collect::<Vec<lianxi_proto::v1::Receipt>>();
    use lianxi_proto::v1::RejectionCode;
    let mut s = String::new();
    let _ = writeln!(s, "{} rejected message(s)", list.len());
    for r in list {
        let code = enum_words::<RejectionCode>(r.code, "REJECTION_CODE_", |e| e.as_str_name());
        let id = if r.event_id.is_empty() {
            "(unreadable)"
        } else {
            r.event_id.as_str()
        };
        let _ = writeln!(
            s,
            "  #{:<7} {}  {:<26} {:<24} {}",
            r.stream_sequence,
            time(r.recorded_at.as_ref()),
            agency(r.agency),
            id,
            code
        );
        let _ = writeln!(s, "           {}", r.reason);
    }
    s
}

/// ANSI colour when standard output is a terminal and NO_COLOR is unset.
fn paint(code: &str, text: &str) -> String {
    use std::io::IsTerminal;
    let on = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

fn status_word(n: i32) -> String {
    enum_words::<CoordinatedStatus>(n, "COORDINATED_STATUS_", |e| e.as_str_name())
}

fn risk_word(n: i32) -> String {
    enum_words::<RiskLevel>(n, "RISK_LEVEL_", |e| e.as_str_name())
}

fn day(t: Option<&Timestamp>) -> String {
    match t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0)) {
        Some(dt) => dt.format("%Y-%m-%d").to_string(),
        None => "-".to_owned(),
    }
}

fn summary_flags(c: &lianxi_proto::v1::CaseSummary) -> String {
    let mut f = Vec::new();
    if c.overdue > 0 {
        f.push(paint("31", &format!("{} overdue", c.overdue)));
    }
    if c.risk_level == RiskLevel::High as i32 {
        f.push(paint("31", "high risk"));
    }
    if c.escalated {
        f.push("escalated".to_owned());
    }
    if c.repeat_case {
        f.push("repeat".to_owned());
    }
    if c.protection_order_active {
        f.push(format!(
            "order to {}",
            day(c.protection_order_expires_at.as_ref())
        ));
    }
    f.join(", ")
}

pub(crate) fn cases(list: &[lianxi_proto::v1::CaseSummary], at: Option<&Timestamp>) -> String {
    let list: &[lianxi_proto::v1::CaseSummary] = &list
        .iter()
        .map(|c| shown!(c))
        .collect::<Vec<lianxi_proto::v1::CaseSummary>>();
    let mut s = String::new();
    let _ = writeln!(s, "{} case(s), judged at {}", list.len(), time(at));
    if list.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "{:<16} {:<19} {:<22} {:<9} {:<22} {:<10} flags",
        "case", "status", "category", "risk", "lead", "opened"
    );
    for c in list {
        let _ = writeln!(
            s,
            "{:<16} {:<19} {:<22} {:<9} {:<22} {:<10} {}",
            c.case_id,
            status_word(c.status),
            enum_words::<Category>(c.category, "CATEGORY_", |e| e.as_str_name()),
            risk_word(c.risk_level),
            agency(c.lead),
            day(c.opened_at.as_ref()),
            summary_flags(c)
        );
    }
    s
}

pub(crate) fn agenda(r: &lianxi_proto::v1::GetAgendaResponse) -> String {
    let r: &lianxi_proto::v1::GetAgendaResponse = &shown!(r);
    use lianxi_proto::v1::AgendaReason;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Agenda for the next joint meeting: {} case(s), judged at {}",
        r.items.len(),
        time(r.evaluated_at.as_ref())
    );
    for (i, item) in r.items.iter().enumerate() {
        let Some(c) = &item.case else { continue };
        let reasons: Vec<String> = item
            .reasons
            .iter()
            .map(|n| enum_words::<AgendaReason>(*n, "AGENDA_REASON_", |e| e.as_str_name()))
            .collect();
        let _ = writeln!(
            s,
            "\n{:>3}. {}  {}  {} · {} · lead {}",
            i + 1,
            paint("1", &c.case_id),
            status_word(c.status).to_uppercase(),
            enum_words::<Category>(c.category, "CATEGORY_", |e| e.as_str_name()),
            c.jurisdiction,
            agency(c.lead)
        );
        let _ = writeln!(s, "     why: {}", reasons.join(", "));
        for o in &item.overdue {
            let _ = writeln!(s, "   {}", paint("31", &obligation_line(o, true)));
        }
    }
    s
}

pub(crate) fn stats(r: &lianxi_proto::v1::GetStatsResponse) -> String {
    let r: &lianxi_proto::v1::GetStatsResponse = &shown!(r);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} case(s), judged at {}",
        r.cases,
        time(r.evaluated_at.as_ref())
    );
    let section =
        |s: &mut String, title: &str, counts: &[lianxi_proto::v1::Count], prefix: &str| {
            let _ = writeln!(s, "\n{title}");
            for c in counts {
                let key = c
                    .key
                    .strip_prefix(prefix)
                    .unwrap_or(&c.key)
                    .replace('_', " ")
                    .to_lowercase();
                let _ = writeln!(s, "  {key:<32} {:>7}", c.count);
            }
        };
    section(&mut s, "By status", &r.by_status, "COORDINATED_STATUS_");
    section(&mut s, "By category", &r.by_category, "CATEGORY_");
    section(&mut s, "By risk level", &r.by_risk_level, "RISK_LEVEL_");
    section(&mut s, "By network level", &r.by_network_level, "LEVEL_");
    section(&mut s, "By agency involved", &r.by_agency, "AGENCY_");
    section(&mut s, "By month opened", &r.by_month, "");
    let _ = writeln!(
        s,
        "\nTimes (hours)                      cases    median       p90"
    );
    for d in &r.durations {
        let _ = writeln!(
            s,
            "  {:<32} {:>5} {:>9.1} {:>9.1}",
            d.name.replace('_', " "),
            d.cases,
            d.median_hours,
            d.p90_hours
        );
    }
    let _ = writeln!(
        s,
        "\nOverdue by agency            obligations  overdue     rate"
    );
    for a in &r.overdue_by_agency {
        let _ = writeln!(
            s,
            "  {:<28} {:>9} {:>8} {:>7.1}%",
            agency(a.agency),
            a.obligations,
            a.overdue,
            a.overdue_rate * 100.0
        );
    }
    s
}

pub(crate) fn change(c: &lianxi_proto::v1::CaseChange) -> String {
    let c: &lianxi_proto::v1::CaseChange = &shown!(c);
    let status = c
        .view
        .as_ref()
        .map(|v| status_word(v.status))
        .unwrap_or_default();
    match &c.entry {
        Some(e) if c.view.is_some() => format!(
            "#{:<7} {:<16} {}  {}  -> {}\n",
            c.global_sequence,
            c.case_id,
            time(e.occurred_at.as_ref()),
            e.line,
            status
        ),
        Some(e) => format!(
            "#{:<7} {:<16} {}  {}\n",
            c.global_sequence,
            c.case_id,
            time(e.occurred_at.as_ref()),
            e.line
        ),
        None => format!(
            "#{:<7} {:<16} now {} ({} events)\n",
            c.global_sequence,
            c.case_id,
            status.to_uppercase(),
            c.view.as_ref().map_or(0, |v| v.case_sequence)
        ),
    }
}

pub(crate) fn as_of(r: &lianxi_proto::v1::GetCaseAsOfResponse) -> String {
    let r: &lianxi_proto::v1::GetCaseAsOfResponse = &shown!(r);
    let mut s = format!(
        "As of log entry #{} ({} of the case's events applied)\n",
        r.as_of_global_sequence, r.entries_applied
    );
    let reply = GetCaseResponse {
        view: r.view.clone(),
        ..GetCaseResponse::default()
    };
    s.push_str(&case(&reply));
    s
}

pub(crate) fn access(list: &[lianxi_proto::v1::AccessRecord]) -> String {
    let list: &[lianxi_proto::v1::AccessRecord] = &list
        .iter()
        .map(|a| shown!(a))
        .collect::<Vec<lianxi_proto::v1::AccessRecord>>();
    use lianxi_proto::v1::PrincipalRole;
    let mut s = String::new();
    let _ = writeln!(s, "{} access record(s)", list.len());
    for r in list {
        let role = enum_words::<PrincipalRole>(r.role, "PRINCIPAL_ROLE_", |e| e.as_str_name());
        let verdict = if r.allowed {
            "allowed".to_owned()
        } else {
            paint("31", "DENIED")
        };
        let method = r.method.rsplit('/').next().unwrap_or(&r.method);
        let _ = writeln!(
            s,
            "  #{:<6} {}  {:<20} {:<12} {:<14} {:<16} {}",
            r.sequence,
            time(r.at.as_ref()),
            r.principal,
            role,
            method,
            if r.case_id.is_empty() {
                "-"
            } else {
                &r.case_id
            },
            verdict
        );
        let mut why = r.detail.clone();
        if !r.purpose.is_empty() {
            why = format!("purpose: {}; {why}", r.purpose);
        }
        let _ = writeln!(s, "          {why}");
        if !r.case_ids.is_empty() {
            let _ = writeln!(s, "          shown: {}", shown(&r.case_ids));
        }
    }
    s
}

/// The cases a call showed: the first ten, then how many in all.
fn shown(ids: &[String]) -> String {
    const FIRST: usize = 10;
    let mut line = ids
        .iter()
        .take(FIRST)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > FIRST {
        line.push_str(&format!(", ... ({} cases in all)", ids.len()));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use lianxi_proto::v1::{CaseView, Receipt, ReceiptStatus, RejectionCode};

    const HOSTILE: &str = "C-1\n2026-01-01 INFO forged line\u{1b}[31m\u{7}\u{202e}";

    fn clean(out: &str) {
        assert!(
            !out.chars()
                .any(|c| c != '\n' && lianxi_domain::is_unsafe_char(c)),
            "unsafe character in {out:?}"
        );
        assert!(
            !out.contains("\nforged") && !out.contains("\n2026-01-01 INFO"),
            "{out}"
        );
    }

    #[test]
    fn hostile_agency_text_is_escaped_in_every_rendering() {
        let receipt = Receipt {
            status: ReceiptStatus::Rejected as i32,
            event_id: HOSTILE.into(),
            case_id: HOSTILE.into(),
            subject: format!("lianxi.v1.events.police.{HOSTILE}"),
            code: RejectionCode::CaseMismatch as i32,
            reason: format!("the event is for case {HOSTILE}"),
            ..Receipt::default()
        };
        let out = rejections(std::slice::from_ref(&receipt));
        clean(&out);
        // One heading and two lines per rejection, however many line breaks
        // the agency sent.
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(out.contains("\\u{1b}[31m"), "{out}");

        let view = CaseView {
            case_id: HOSTILE.into(),
            jurisdiction: HOSTILE.into(),
            person_ref: HOSTILE.into(),
            ..CaseView::default()
        };
        let out = case(&GetCaseResponse {
            view: Some(view),
            ..GetCaseResponse::default()
        });
        clean(&out);
        let out = timeline(
            HOSTILE,
            &[TimelineEntry {
                event_id: HOSTILE.into(),
                line: HOSTILE.into(),
                ..TimelineEntry::default()
            }],
        );
        clean(&out);
        assert_eq!(out.lines().count(), 3, "{out}");
    }
}
