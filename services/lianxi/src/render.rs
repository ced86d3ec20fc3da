//! Readable text for people at a terminal. `--json` gives the canonical form.

use std::fmt::Write;

use lianxi_proto::Timestamp;
use lianxi_proto::v1::{
    Agency, Category, Channel, ConsentStatus, CoordinatedStatus, GetCaseResponse, InvolvementState,
    Level, Obligation, ObligationKind, RiskLevel, Role, TimelineEntry,
};

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

pub(crate) fn timeline(case_id: &str, entries: &[TimelineEntry]) -> String {
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
    }
    s
}

pub(crate) fn rejections(list: &[lianxi_proto::v1::Receipt]) -> String {
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
