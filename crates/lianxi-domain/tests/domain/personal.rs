//! Personal fields: the walk matches the proto's marks, who may read what,
//! and the rules of restriction and erasure.

use std::collections::BTreeSet;

use lianxi_domain::personal::{
    PERSONAL_FIELDS, Reader, for_each_personal_mut, has_personal, kind_of, may_read, set_personal,
};
use lianxi_proto::v1::{
    Agency, CaseOpened, Child, Event, Person, PersonalDataErased, PersonalDataRestricted,
    PersonalDataState, PersonalKind, RejectionCode, Sealed, event::Body,
};
use prost::Message;

use crate::support::*;

// ------------------------------------------- the proto's marks, read back

/// Just enough of `google.protobuf.FileDescriptorSet` to read the
/// `(lianxi.v1.personal)` option, which generic descriptor types drop as an
/// unknown extension.
#[derive(Clone, PartialEq, Message)]
struct FileSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<File>,
}
#[derive(Clone, PartialEq, Message)]
struct File {
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
    #[prost(message, repeated, tag = "4")]
    message_type: Vec<Msg>,
}
#[derive(Clone, PartialEq, Message)]
struct Msg {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    field: Vec<Field>,
}
#[derive(Clone, PartialEq, Message)]
struct Field {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(int32, optional, tag = "4")]
    label: Option<i32>,
    #[prost(string, optional, tag = "6")]
    type_name: Option<String>,
    #[prost(message, optional, tag = "8")]
    options: Option<FieldOptions>,
    #[prost(int32, optional, tag = "9")]
    oneof_index: Option<i32>,
}
#[derive(Clone, PartialEq, Message)]
struct FieldOptions {
    #[prost(int32, optional, tag = "50701")]
    personal: Option<i32>,
}

const REPEATED: i32 = 3;

fn marked_fields() -> BTreeSet<(String, i32)> {
    let set = FileSet::decode(lianxi_proto::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut messages = std::collections::HashMap::new();
    for f in &set.file {
        let package = f.package.clone().unwrap_or_default();
        for m in &f.message_type {
            let name = format!(".{package}.{}", m.name.clone().unwrap_or_default());
            messages.insert(name, m.clone());
        }
    }
    let mut out = BTreeSet::new();
    let event = &messages[".lianxi.v1.Event"];
    for f in event.field.iter().filter(|f| f.oneof_index.is_some()) {
        walk(
            &messages,
            f,
            f.name.clone().unwrap_or_default(),
            &mut out,
            0,
        );
    }
    out
}

fn walk(
    messages: &std::collections::HashMap<String, Msg>,
    field: &Field,
    path: String,
    out: &mut BTreeSet<(String, i32)>,
    depth: usize,
) {
    assert!(
        depth < 8,
        "the event's message types nest too deeply at {path}"
    );
    if let Some(kind) = field.options.as_ref().and_then(|o| o.personal) {
        out.insert((path.clone(), kind));
    }
    let Some(msg) = field.type_name.as_ref().and_then(|t| messages.get(t)) else {
        return;
    };
    let base = if field.label == Some(REPEATED) {
        format!("{path}[]")
    } else {
        path
    };
    for f in &msg.field {
        let name = f.name.clone().unwrap_or_default();
        walk(messages, f, format!("{base}.{name}"), out, depth + 1);
    }
}

fn table() -> BTreeSet<(String, i32)> {
    PERSONAL_FIELDS
        .iter()
        .map(|(p, k)| ((*p).to_owned(), *k as i32))
        .collect()
}

#[test]
fn the_table_is_exactly_the_fields_marked_in_the_proto() {
    let marked = marked_fields();
    assert!(
        marked.len() >= 12,
        "expected the proto's marks, found {marked:?}"
    );
    assert_eq!(marked, table());
}

/// One event of every kind that has personal fields, each of them filled.
fn full_events() -> Vec<Event> {
    let child = |n: &str| Child {
        name: format!("child {n}"),
        birth_date: format!("2016-0{n}-01"),
        note: format!("school {n}"),
    };
    let opening = Body::CaseOpened(CaseOpened {
        person_ref: "P-1".into(),
        mandatory_reporter: "school nurse".into(),
        person: Some(Person {
            name: "Li Hua".into(),
            id_number: "110101199001011234".into(),
            phone: "13800000000".into(),
            address: "12 River Road".into(),
        }),
        children: vec![child("1"), child("2")],
        ..match opened(lianxi_proto::v1::Channel::WalkIn) {
            Body::CaseOpened(o) => o,
            _ => unreachable!(),
        }
    });
    let mut exit = exited("pl-1");
    if let Body::ShelterExited(b) = &mut exit {
        b.destination = "sister's flat".into();
    }
    vec![
        ev("e1", WF, "2026-03-02T09:00:00Z", opening),
        ev("e2", POLICE, "2026-03-02T09:00:00Z", warning("w-1")),
        ev("e3", CIVIL, "2026-03-02T09:00:00Z", admitted("pl-1", true)),
        ev("e4", CIVIL, "2026-03-02T09:00:00Z", exit),
    ]
}

#[test]
fn the_walk_visits_every_marked_field_and_set_puts_values_back() {
    let mut seen = BTreeSet::new();
    for original in full_events() {
        let mut e = original.clone();
        let read_only = lianxi_domain::personal::personal_paths(&original);
        let mut taken = Vec::new();
        for_each_personal_mut(&mut e, &mut |path, kind, value| {
            assert_eq!(kind_of(path), Some(kind), "{path}");
            let pattern = path.replace("[0]", "[]").replace("[1]", "[]");
            seen.insert((pattern, kind as i32));
            taken.push((path.to_owned(), std::mem::take(value)));
        });
        assert!(!has_personal(&e), "the walk emptied every value");
        let written: Vec<String> = taken.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(read_only, written, "both walks visit the same fields");
        assert_ne!(e, original);
        for (path, value) in taken {
            assert!(set_personal(&mut e, &path, value), "{path}");
        }
        assert_eq!(e, original, "set_personal restores what the walk took");
    }
    assert_eq!(seen, table());
}

#[test]
fn set_personal_refuses_paths_the_event_does_not_have() {
    let mut e = full_events().remove(1);
    assert!(!set_personal(
        &mut e,
        "shelter_admitted.location",
        "x".into()
    ));
    let mut o = full_events().remove(0);
    assert!(!set_personal(
        &mut o,
        "case_opened.children[5].name",
        "x".into()
    ));
    assert!(!set_personal(&mut o, "case_opened.summary", "x".into()));
    assert_eq!(kind_of("case_opened.summary"), None);
    assert_eq!(
        kind_of("case_opened.children[3].note"),
        Some(PersonalKind::Child)
    );
}

#[test]
fn who_reads_what() {
    use PersonalKind::*;
    let police = Reader::Agency(Agency::Police);
    let wf = Reader::Agency(Agency::WomensFederation);
    let labour = Reader::Agency(Agency::Labour);
    assert!(may_read(police, Reporter));
    assert!(!may_read(wf, Reporter));
    assert!(!may_read(Reader::Secretariat, Reporter));
    assert!(may_read(Reader::Secretariat, Identity));
    assert!(!may_read(Reader::Secretariat, Whereabouts));
    assert!(may_read(Reader::Agency(Agency::CivilAffairs), Whereabouts));
    assert!(!may_read(wf, Whereabouts));
    assert!(may_read(labour, Child));
    assert!(!may_read(Reader::Agency(Agency::JusticeBureau), Child));
    for k in [Identity, Whereabouts, Child, Reporter] {
        assert!(!may_read(Reader::Auditor, k));
        assert!(may_read(Reader::Development, k));
    }
}

// ------------------------------------------------ restriction and erasure

fn restrict(until: &str) -> Body {
    Body::PersonalDataRestricted(PersonalDataRestricted {
        legal_basis: "appeal pending".into(),
        retain_until: Some(t(until)),
        authorised_by: "staff-7".into(),
    })
}

fn erase() -> Body {
    Body::PersonalDataErased(PersonalDataErased {
        legal_basis: "request of the person".into(),
        authorised_by: "staff-7".into(),
    })
}

#[test]
fn only_the_committee_erases() {
    let r = given(vec![opening()]).then_reject(
        ev("e-x", WF, "2026-03-03T09:00:00Z", erase()),
        RejectionCode::NotPermitted,
    );
    assert!(
        r.reason.contains("political-legal committee"),
        "{}",
        r.reason
    );
}

#[test]
fn erasure_is_recorded_in_the_view_and_works_on_a_closed_case() {
    let v = given(vec![
        opening(),
        ev("e-c", WF, "2026-03-03T09:00:00Z", closed()),
    ])
    .then_ok(ev("e-x", PLC, "2026-03-04T09:00:00Z", erase()));
    assert_eq!(v.personal_data, PersonalDataState::Erased as i32);
    assert_eq!(v.personal_data_basis, "request of the person");
    assert_eq!(v.personal_data_changed_at, Some(t("2026-03-04T09:00:00Z")));
    assert!(v.closed_at.is_some(), "erasure does not reopen the case");
}

#[test]
fn after_erasure_no_personal_values_are_accepted_but_other_events_are() {
    let s = given(vec![
        opening(),
        ev("e-x", PLC, "2026-03-03T09:00:00Z", erase()),
    ]);
    // The opening agency restates the opening, person reference included.
    let r = s.then_reject(
        corr("e-o2", WF, "2026-03-03T10:00:00Z", "e-open", open_hotline()),
        RejectionCode::NotPermitted,
    );
    assert!(r.reason.contains("erased"), "{}", r.reason);
    assert!(r.reason.contains("case_opened.person_ref"), "{}", r.reason);
    let mut bare = open_hotline();
    if let Body::CaseOpened(b) = &mut bare {
        b.person_ref.clear();
    }
    given(vec![
        opening(),
        ev("e-x", PLC, "2026-03-03T09:00:00Z", erase()),
    ])
    .then_ok(corr("e-o2", WF, "2026-03-03T10:00:00Z", "e-open", bare));
    let again = given(vec![
        opening(),
        ev("e-x", PLC, "2026-03-03T09:00:00Z", erase()),
    ])
    .then_reject(
        ev("e-y", PLC, "2026-03-03T11:00:00Z", erase()),
        RejectionCode::Conflict,
    );
    assert!(again.reason.contains("already erased"), "{}", again.reason);
}

#[test]
fn a_legal_hold_blocks_erasure_until_it_ends() {
    let held = || {
        given(vec![
            opening(),
            ev(
                "e-h",
                PLC,
                "2026-03-03T09:00:00Z",
                restrict("2026-09-01T00:00:00Z"),
            ),
        ])
    };
    assert_eq!(
        held().view().personal_data,
        PersonalDataState::LegalHold as i32
    );
    assert_eq!(held().view().retain_until, Some(t("2026-09-01T00:00:00Z")));
    let r = held().then_reject(
        ev("e-x", PLC, "2026-04-01T09:00:00Z", erase()),
        RejectionCode::NotPermitted,
    );
    assert!(r.reason.contains("legal hold until"), "{}", r.reason);
    let r = held().then_reject(
        corr("e-o2", WF, "2026-04-01T09:00:00Z", "e-open", open_hotline()),
        RejectionCode::NotPermitted,
    );
    assert!(r.reason.contains("blocked from every use"), "{}", r.reason);
    let v = held().then_ok(ev("e-x", PLC, "2026-09-02T09:00:00Z", erase()));
    assert_eq!(v.personal_data, PersonalDataState::Erased as i32);
    assert_eq!(v.retain_until, None);
}

#[test]
fn a_restriction_must_end_after_it_starts_and_cannot_be_corrected() {
    given(vec![opening()]).then_reject(
        ev(
            "e-h",
            PLC,
            "2026-03-03T09:00:00Z",
            restrict("2026-03-01T00:00:00Z"),
        ),
        RejectionCode::InvalidField,
    );
    given(vec![
        opening(),
        ev(
            "e-h",
            PLC,
            "2026-03-03T09:00:00Z",
            restrict("2026-09-01T00:00:00Z"),
        ),
    ])
    .then_reject(
        corr(
            "e-h2",
            PLC,
            "2026-03-03T10:00:00Z",
            "e-h",
            restrict("2026-10-01T00:00:00Z"),
        ),
        RejectionCode::BadCorrection,
    );
    let missing = Body::PersonalDataErased(PersonalDataErased::default());
    given(vec![opening()]).then_reject(
        ev("e-x", PLC, "2026-03-03T09:00:00Z", missing),
        RejectionCode::MissingField,
    );
}

#[test]
fn the_view_keeps_the_openings_sealed_reference_not_its_value() {
    use lianxi_domain::{Context, EntryMeta, Policy, apply};
    let sealed = vec![
        Sealed {
            path: "case_opened.person_ref".into(),
            ciphertext: vec![1, 2, 3],
            ..Sealed::default()
        },
        Sealed {
            path: "case_opened.person.name".into(),
            ciphertext: vec![4, 5, 6],
            ..Sealed::default()
        },
    ];
    let policy = Policy::default();
    let ctx = Context {
        policy: &policy,
        prior_case: None,
    };
    let meta = EntryMeta {
        global_sequence: 1,
        case_sequence: 1,
        recorded_at: t("2026-03-02T09:00:00Z"),
        sealed: &sealed,
    };
    let v = apply(&ctx, None, &opening(), &meta);
    assert_eq!(v.personal.len(), 1, "only the view's paths are kept");
    assert_eq!(v.personal[0].path, "case_opened.person_ref");
    assert_eq!(v.personal[0].ciphertext, vec![1, 2, 3]);
    assert_eq!(v.personal[0].event_id, "e-open");
    assert!(v.person_ref.is_empty());
    let meta2 = EntryMeta {
        global_sequence: 2,
        case_sequence: 2,
        sealed: &[],
        ..meta
    };
    let erased = apply(
        &ctx,
        Some(v),
        &ev("e-x", PLC, "2026-03-03T09:00:00Z", erase()),
        &meta2,
    );
    assert!(erased.personal[0].ciphertext.is_empty());
    assert_eq!(erased.personal[0].path, "case_opened.person_ref");
}
