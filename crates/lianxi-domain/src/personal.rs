//! Personal fields: where they are in an event, what kind they are, who may
//! read them, and whether a case still has readable personal data.
//!
//! The fields are marked `(lianxi.v1.personal)` in the proto. The walk below
//! is written out by hand so that it costs nothing at run time; a test reads
//! the descriptor set and checks that the walk visits exactly the marked
//! fields, so a field marked in the proto and forgotten here fails the build
//! of the test suite, not a victim.

use lianxi_proto::v1::{Agency, Event, PersonalDataState, PersonalKind, event::Body};

/// Every personal field, as `(path pattern, kind)`. A repeated message's
/// elements appear as `[]` in the pattern (`case_opened.children[].name`);
/// in a concrete path the brackets hold the index.
pub const PERSONAL_FIELDS: &[(&str, PersonalKind)] = &[
    ("case_opened.person_ref", PersonalKind::Identity),
    ("case_opened.mandatory_reporter", PersonalKind::Reporter),
    ("case_opened.person.name", PersonalKind::Identity),
    ("case_opened.person.id_number", PersonalKind::Identity),
    ("case_opened.person.phone", PersonalKind::Identity),
    ("case_opened.person.address", PersonalKind::Whereabouts),
    ("case_opened.children[].name", PersonalKind::Child),
    ("case_opened.children[].birth_date", PersonalKind::Child),
    ("case_opened.children[].note", PersonalKind::Child),
    (
        "written_warning_issued.respondent_ref",
        PersonalKind::Identity,
    ),
    ("shelter_admitted.location", PersonalKind::Whereabouts),
    ("shelter_exited.destination", PersonalKind::Whereabouts),
];

/// The paths of the personal fields a case view keeps (sealed) from the
/// case's opening.
pub const VIEW_PERSONAL_PATHS: &[&str] =
    &["case_opened.person_ref", "case_opened.mandatory_reporter"];

/// The walk over an event's personal fields, written once for both `&` and
/// `&mut` access: `walk!(event, visit)` or `walk!(event, visit, mut)`.
/// `visit(path, kind, value)` is called for every field, empty or not.
macro_rules! walk {
    ($event:expr, $visit:ident $(, $m:tt)?) => {{
        use PersonalKind::{Child, Identity, Reporter, Whereabouts};
        match & $($m)? $event.body {
            Some(Body::CaseOpened(b)) => {
                $visit("case_opened.person_ref", Identity, & $($m)? b.person_ref);
                $visit(
                    "case_opened.mandatory_reporter",
                    Reporter,
                    & $($m)? b.mandatory_reporter,
                );
                if let Some(p) = & $($m)? b.person {
                    $visit("case_opened.person.name", Identity, & $($m)? p.name);
                    $visit("case_opened.person.id_number", Identity, & $($m)? p.id_number);
                    $visit("case_opened.person.phone", Identity, & $($m)? p.phone);
                    $visit("case_opened.person.address", Whereabouts, & $($m)? p.address);
                }
                for (i, c) in (& $($m)? b.children).into_iter().enumerate() {
                    $visit(&format!("case_opened.children[{i}].name"), Child, & $($m)? c.name);
                    $visit(
                        &format!("case_opened.children[{i}].birth_date"),
                        Child,
                        & $($m)? c.birth_date,
                    );
                    $visit(&format!("case_opened.children[{i}].note"), Child, & $($m)? c.note);
                }
            }
            Some(Body::WrittenWarningIssued(b)) => $visit(
                "written_warning_issued.respondent_ref",
                Identity,
                & $($m)? b.respondent_ref,
            ),
            Some(Body::ShelterAdmitted(b)) => {
                $visit("shelter_admitted.location", Whereabouts, & $($m)? b.location);
            }
            Some(Body::ShelterExited(b)) => {
                $visit("shelter_exited.destination", Whereabouts, & $($m)? b.destination);
            }
            _ => {}
        }
    }};
}

/// Calls `f(path, kind, value)` for every personal field of the event that
/// holds a value, in field order. `f` may change or empty the value.
pub fn for_each_personal_mut(
    event: &mut Event,
    f: &mut dyn FnMut(&str, PersonalKind, &mut String),
) {
    let mut visit = |path: &str, kind: PersonalKind, value: &mut String| {
        if !value.is_empty() {
            f(path, kind, value);
        }
    };
    walk!(event, visit, mut);
}

/// Calls `f(path, kind, value)` for every personal field of the event that
/// holds a value, in field order.
pub fn for_each_personal(event: &Event, f: &mut dyn FnMut(&str, PersonalKind, &str)) {
    let mut visit = |path: &str, kind: PersonalKind, value: &String| {
        if !value.is_empty() {
            f(path, kind, value);
        }
    };
    walk!(event, visit);
}

/// Whether the event carries any personal value.
pub fn has_personal(event: &Event) -> bool {
    let mut found = false;
    for_each_personal(event, &mut |_, _, _| found = true);
    found
}

/// The paths of the event's personal values, in field order.
pub fn personal_paths(event: &Event) -> Vec<String> {
    let mut paths = Vec::new();
    for_each_personal(event, &mut |p, _, _| paths.push(p.to_owned()));
    paths
}

/// Puts `value` into the field at `path`; false when the event has no such
/// field (the path names another kind of event, or a child that is not
/// there). Setting a value never creates a message that was absent, except
/// `case_opened.person`, which is created for its fields.
pub fn set_personal(event: &mut Event, path: &str, value: String) -> bool {
    let mut value = Some(value);
    let (head, index, leaf) = split_path(path);
    match (event.body.as_mut(), head, index) {
        (Some(Body::CaseOpened(b)), "case_opened", None) => match leaf {
            "person_ref" => b.person_ref = value.take().unwrap_or_default(),
            "mandatory_reporter" => b.mandatory_reporter = value.take().unwrap_or_default(),
            "person.name" | "person.id_number" | "person.phone" | "person.address" => {
                let p = b.person.get_or_insert_with(Default::default);
                let v = value.take().unwrap_or_default();
                match leaf {
                    "person.name" => p.name = v,
                    "person.id_number" => p.id_number = v,
                    "person.phone" => p.phone = v,
                    _ => p.address = v,
                }
            }
            _ => return false,
        },
        (Some(Body::CaseOpened(b)), "case_opened.children", Some(i)) => {
            let Some(c) = b.children.get_mut(i) else {
                return false;
            };
            let v = value.take().unwrap_or_default();
            match leaf {
                "name" => c.name = v,
                "birth_date" => c.birth_date = v,
                "note" => c.note = v,
                _ => return false,
            }
        }
        (Some(Body::WrittenWarningIssued(b)), "written_warning_issued", None)
            if leaf == "respondent_ref" =>
        {
            b.respondent_ref = value.take().unwrap_or_default();
        }
        (Some(Body::ShelterAdmitted(b)), "shelter_admitted", None) if leaf == "location" => {
            b.location = value.take().unwrap_or_default();
        }
        (Some(Body::ShelterExited(b)), "shelter_exited", None) if leaf == "destination" => {
            b.destination = value.take().unwrap_or_default();
        }
        _ => return false,
    }
    true
}

/// Splits `case_opened.children[2].name` into (`case_opened.children`,
/// Some(2), `name`) and `case_opened.person.name` into (`case_opened`,
/// None, `person.name`).
fn split_path(path: &str) -> (&str, Option<usize>, &str) {
    if let Some(open) = path.find('[')
        && let Some(close) = path[open..].find("].")
    {
        let index = path[open + 1..open + close].parse().ok();
        return (&path[..open], index, &path[open + close + 2..]);
    }
    match path.split_once('.') {
        Some((head, leaf)) => (head, None, leaf),
        None => (path, None, ""),
    }
}

/// The kind of the personal field at a concrete path, or `None` when the
/// path names no personal field.
pub fn kind_of(path: &str) -> Option<PersonalKind> {
    let pattern = match (path.find('['), path.find(']')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}[]{}", &path[..open], &path[close + 1..])
        }
        _ => path.to_owned(),
    };
    PERSONAL_FIELDS
        .iter()
        .find(|(p, _)| *p == pattern)
        .map(|(_, k)| *k)
}

/// Who is asking, as far as reading personal fields goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// An agency's system, already past need to know for the case.
    Agency(Agency),
    /// The joint meeting's secretariat, within its jurisdiction.
    Secretariat,
    /// Auditors and operators: they prove and run the log, they do not
    /// read about people.
    Auditor,
    /// A development node with no authentication, on a loopback address.
    Development,
}

/// Whether `reader` needs fields of `kind`. The table:
///
/// | kind | who reads it |
/// |---|---|
/// | identity | involved agencies, the secretariat |
/// | whereabouts | police, courts, civil affairs |
/// | children | police, courts, civil affairs, labour, the women's federation |
/// | mandatory reporter | police |
///
/// Auditors and operators read none; a development node reads all.
pub fn may_read(reader: Reader, kind: PersonalKind) -> bool {
    use Agency::{CivilAffairs, Court, Labour, Police, WomensFederation};
    match (reader, kind) {
        (Reader::Development, _) => true,
        (Reader::Auditor, _) | (_, PersonalKind::Unspecified) => false,
        (Reader::Secretariat, k) => k == PersonalKind::Identity,
        (Reader::Agency(_), PersonalKind::Identity) => true,
        (Reader::Agency(a), PersonalKind::Whereabouts) => {
            matches!(a, Police | Court | CivilAffairs)
        }
        (Reader::Agency(a), PersonalKind::Child) => {
            matches!(a, Police | Court | CivilAffairs | Labour | WomensFederation)
        }
        (Reader::Agency(a), PersonalKind::Reporter) => a == Police,
    }
}

/// The state of a case's personal data, from its view.
pub fn state_of(state: i32) -> PersonalDataState {
    PersonalDataState::try_from(state).unwrap_or(PersonalDataState::Active)
}
