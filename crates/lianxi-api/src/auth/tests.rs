use lianxi_proto::v1::AgencyInvolvement;
use tonic::Code;
use tonic::metadata::MetadataValue;

use super::*;

fn hash_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn good_file() -> String {
    format!(
        r#"
[[principal]]
name = "police-records"
role = "agency"
agency = "police"
token_sha256 = "{}"

[[principal]]
name = "secretariat-xihu"
role = "secretariat"
jurisdiction = "330100/330106"
token_sha256 = "{}"

[[principal]]
name = "audit-office"
role = "auditor"
token_sha256 = "{}"

[[principal]]
name = "ops"
role = "operator"
token_sha256 = "{}"
"#,
        hash_hex("police-token"),
        hash_hex("xihu-token"),
        // Upper-case hex is accepted too.
        hash_hex("audit-token").to_uppercase(),
        hash_hex("ops-token"),
    )
}

fn principals() -> Principals {
    Principals::from_toml(&good_file()).unwrap()
}

fn with_auth(value: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert("authorization", value.parse().unwrap());
    m
}

fn principal(role: Role) -> Principal {
    Principal {
        name: "p".into(),
        role,
    }
}

fn all_roles() -> Vec<Role> {
    vec![
        Role::Agency(Agency::Police),
        Role::Secretariat {
            jurisdiction: "330100/330106".into(),
        },
        Role::Auditor,
        Role::Operator,
        Role::Development,
    ]
}

// ---- parsing ----

#[test]
fn a_good_file_gives_every_principal_its_role() {
    let p = principals();
    let got: Vec<_> = p.iter().cloned().collect();
    assert_eq!(
        got,
        vec![
            Principal {
                name: "police-records".into(),
                role: Role::Agency(Agency::Police)
            },
            Principal {
                name: "secretariat-xihu".into(),
                role: Role::Secretariat {
                    jurisdiction: "330100/330106".into()
                }
            },
            Principal {
                name: "audit-office".into(),
                role: Role::Auditor
            },
            Principal {
                name: "ops".into(),
                role: Role::Operator
            },
        ]
    );
    assert!(!p.is_development());
}

#[test]
fn the_example_file_in_deploy_parses() {
    let s = include_str!("../../../../deploy/principals.example.toml");
    let p = Principals::from_toml(s).unwrap();
    assert!(p.iter().any(|p| p.role == Role::Auditor));
    // The example tokens written in its comments are the ones it hashes.
    for (name, token) in [
        ("police-records", "dev-only-police-token"),
        ("secretariat-xihu", "dev-only-xihu-token"),
        ("audit-office", "dev-only-audit-token"),
        ("ops", "dev-only-ops-token"),
    ] {
        let who = p
            .authenticate(&with_auth(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(who.name, name);
    }
}

/// Parses `file` and returns the error's message.
fn bad(file: &str) -> (AuthConfigError, String) {
    let e = Principals::from_toml(file).unwrap_err();
    let msg = e.to_string();
    (e, msg)
}

fn entry(name: &str, rest: &str, token: &str) -> String {
    format!(
        "[[principal]]\nname = \"{name}\"\n{rest}\ntoken_sha256 = \"{}\"\n",
        hash_hex(token)
    )
}

#[test]
fn an_unknown_key_is_named() {
    let file = format!(
        "{}token = \"plain\"\n",
        entry("ops", "role = \"operator\"", "t")
    );
    let (e, msg) = bad(&file);
    assert!(matches!(e, AuthConfigError::Syntax(_)));
    assert!(msg.contains("token"), "{msg}");
    let (_, msg) = bad("secret = 1\n");
    assert!(msg.contains("secret"), "{msg}");
}

#[test]
fn not_toml_and_an_empty_file_are_refused() {
    assert!(matches!(
        bad("[[principal]\nname=").0,
        AuthConfigError::Syntax(_)
    ));
    assert!(matches!(bad("").0, AuthConfigError::Empty));
    let (_, msg) = bad("[[principal]]\nname = \"x\"\nrole = \"operator\"\n");
    assert!(msg.contains("token_sha256"), "{msg}");
}

#[test]
fn duplicate_names_and_duplicate_tokens_name_the_second_entry() {
    let file = entry("ops", "role = \"operator\"", "a") + &entry("ops", "role = \"auditor\"", "b");
    match bad(&file) {
        (AuthConfigError::Entry { entry, name, .. }, msg) => {
            assert_eq!((entry, name.as_str()), (2, "ops"));
            assert!(msg.contains("same name"), "{msg}");
        }
        (e, _) => panic!("{e}"),
    }
    let file =
        entry("ops", "role = \"operator\"", "same") + &entry("audit", "role = \"auditor\"", "same");
    match bad(&file) {
        (AuthConfigError::Entry { entry, name, .. }, msg) => {
            assert_eq!((entry, name.as_str()), (2, "audit"));
            assert!(msg.contains("own token"), "{msg}");
        }
        (e, _) => panic!("{e}"),
    }
}

#[test]
fn a_bad_hash_says_how_to_make_one() {
    for h in [
        "abc".to_owned(),
        "zz".repeat(32),
        // A token pasted where its hash belongs.
        "dev-only-police-token".to_owned(),
    ] {
        let file =
            format!("[[principal]]\nname = \"ops\"\nrole = \"operator\"\ntoken_sha256 = \"{h}\"\n");
        match bad(&file) {
            (AuthConfigError::Entry { entry: 1, .. }, msg) => {
                assert!(msg.contains("sha256sum"), "{msg}");
                assert!(!msg.contains(&h) || h.len() < 10, "echoes the value: {msg}");
            }
            (e, _) => panic!("{e}"),
        }
    }
}

#[test]
fn unknown_roles_and_agencies_list_the_known_ones() {
    let (_, msg) = bad(&entry("x", "role = \"admin\"", "t"));
    assert!(
        msg.contains("\"admin\"") && msg.contains("auditor"),
        "{msg}"
    );
    let (_, msg) = bad(&entry("x", "role = \"agency\"\nagency = \"fbi\"", "t"));
    assert!(
        msg.contains("\"fbi\"") && msg.contains("womens_federation"),
        "{msg}"
    );
    let (_, msg) = bad(&entry("x", "role = \"agency\"", "t"));
    assert!(msg.contains("needs `agency"), "{msg}");
    let (_, msg) = bad(&entry("x", "role = \"development\"", "t"));
    assert!(msg.contains("cannot be configured"), "{msg}");
}

#[test]
fn fields_that_do_not_fit_the_role_are_refused() {
    let (_, msg) = bad(&entry(
        "x",
        "role = \"auditor\"\njurisdiction = \"330100\"",
        "t",
    ));
    assert!(msg.contains("`jurisdiction` does not apply"), "{msg}");
    let (_, msg) = bad(&entry(
        "x",
        "role = \"agency\"\nagency = \"police\"\njurisdiction = \"330100\"",
        "t",
    ));
    assert!(msg.contains("`jurisdiction` does not apply"), "{msg}");
    let (_, msg) = bad(&entry(
        "x",
        "role = \"secretariat\"\nagency = \"police\"\njurisdiction = \"330100\"",
        "t",
    ));
    assert!(msg.contains("`agency` does not apply"), "{msg}");
    let (_, msg) = bad(&entry("x", "role = \"secretariat\"", "t"));
    assert!(msg.contains("needs `jurisdiction"), "{msg}");
    for j in ["", "/330100", "330100/", "330100//330106"] {
        let (_, msg) = bad(&entry(
            "x",
            &format!("role = \"secretariat\"\njurisdiction = \"{j}\""),
            "t",
        ));
        assert!(msg.contains("area code path"), "{j}: {msg}");
    }
}

#[test]
fn bad_names_are_refused() {
    for name in ["", "has space", &"n".repeat(65), "名字"] {
        let (_, msg) = bad(&entry(name, "role = \"operator\"", "t"));
        assert!(msg.contains("name must be"), "{name}: {msg}");
    }
}

// ---- authenticate ----

#[test]
fn a_known_token_is_its_principal() {
    let p = principals();
    let who = p.authenticate(&with_auth("Bearer police-token")).unwrap();
    assert_eq!(who.name, "police-records");
    assert_eq!(who.role, Role::Agency(Agency::Police));
    let who = p.authenticate(&with_auth("bearer audit-token")).unwrap();
    assert_eq!(who.role, Role::Auditor);
}

#[test]
fn a_wrong_token_is_unauthenticated_and_not_echoed() {
    let e = principals()
        .authenticate(&with_auth("Bearer police-tokeN"))
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("not known"), "{}", e.message());
    assert!(!e.message().contains("police-tokeN"));
    assert!(e.message().contains("LIANXI_TOKEN"));
}

#[test]
fn a_missing_header_tells_the_caller_to_pass_a_token() {
    let e = principals().authenticate(&MetadataMap::new()).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("--token"), "{}", e.message());
    assert!(e.message().contains("LIANXI_TOKEN"), "{}", e.message());
}

#[test]
fn a_malformed_header_is_unauthenticated() {
    for v in [
        "police-token",
        "Basic police-token",
        "Bearer",
        "Bearer ",
        "Token police-token",
    ] {
        let e = principals().authenticate(&with_auth(v)).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{v}");
        assert!(
            e.message().contains("Bearer <token>"),
            "{v}: {}",
            e.message()
        );
    }
    let mut m = MetadataMap::new();
    m.insert(
        "authorization",
        MetadataValue::try_from(&b"Bearer \xe4\xbd\xa0"[..]).unwrap(),
    );
    assert_eq!(
        principals().authenticate(&m).unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[test]
fn development_lets_everyone_in_as_development() {
    let p = Principals::development();
    assert!(p.is_development());
    for m in [MetadataMap::new(), with_auth("Bearer whatever")] {
        let who = p.authenticate(&m).unwrap();
        assert_eq!(who.role, Role::Development);
        assert_eq!(who.name, DEVELOPMENT_PRINCIPAL);
        assert_eq!(who.proto_role(), PrincipalRole::Development);
    }
}

#[test]
fn proto_role_and_scope() {
    let cases = [
        (
            Role::Agency(Agency::WomensFederation),
            PrincipalRole::Agency,
            "womens_federation",
        ),
        (
            Role::Secretariat {
                jurisdiction: "330100".into(),
            },
            PrincipalRole::Secretariat,
            "330100",
        ),
        (Role::Auditor, PrincipalRole::Auditor, ""),
        (Role::Operator, PrincipalRole::Operator, ""),
        (Role::Development, PrincipalRole::Development, ""),
    ];
    for (role, proto, scope) in cases {
        let p = principal(role);
        assert_eq!(p.proto_role(), proto);
        assert_eq!(p.scope(), scope);
    }
}

// ---- need to know ----

fn view(jurisdiction: &str, agencies: &[(Agency, InvolvementState)]) -> CaseView {
    CaseView {
        case_id: "DV-1".into(),
        jurisdiction: jurisdiction.into(),
        agencies: agencies
            .iter()
            .map(|(a, s)| AgencyInvolvement {
                agency: *a as i32,
                state: *s as i32,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn an_agency_reads_a_case_while_it_is_involved() {
    let police = principal(Role::Agency(Agency::Police));
    for state in [
        InvolvementState::Received,
        InvolvementState::Accepted,
        InvolvementState::InProgress,
        InvolvementState::Done,
        InvolvementState::Unspecified,
    ] {
        let v = view(
            "330100",
            &[
                (Agency::Court, InvolvementState::Accepted),
                (Agency::Police, state),
            ],
        );
        assert!(may_read_case(&police, &v), "{state:?}");
    }
    let returned = view("330100", &[(Agency::Police, InvolvementState::Returned)]);
    assert!(!may_read_case(&police, &returned));
    let others = view("330100", &[(Agency::Court, InvolvementState::Accepted)]);
    assert!(!may_read_case(&police, &others));
    assert!(!may_read_case(&police, &view("330100", &[])));
}

#[test]
fn a_secretariat_reads_the_cases_of_its_area_and_below() {
    let xihu = principal(Role::Secretariat {
        jurisdiction: "330100/330106".into(),
    });
    for (j, yes) in [
        ("330100/330106", true),
        ("330100/330106/330106004", true),
        ("330100/3301061", false),
        ("330100/330105/330105001", false),
        ("330100", false),
        ("", false),
    ] {
        assert_eq!(may_read_case(&xihu, &view(j, &[])), yes, "{j}");
    }
    let city = principal(Role::Secretariat {
        jurisdiction: "330100".into(),
    });
    assert!(may_read_case(&city, &view("330100/330105/330105001", &[])));
}

#[test]
fn auditors_and_operators_read_no_case_and_development_reads_all() {
    let v = view(
        "330100/330106",
        &[(Agency::Police, InvolvementState::Accepted)],
    );
    assert!(!may_read_case(&principal(Role::Auditor), &v));
    assert!(!may_read_case(&principal(Role::Operator), &v));
    assert!(may_read_case(&principal(Role::Development), &v));
    assert!(may_read_case(
        &principal(Role::Development),
        &CaseView::default()
    ));
}

// ---- which roles call which service ----

#[test]
fn the_service_matrix() {
    use Service::*;
    let expected = |role: &Role, s: Service| {
        matches!(
            (role, s),
            (Role::Development, _)
                | (Role::Agency(_), Cases | Intake)
                | (Role::Secretariat { .. }, Cases)
                | (Role::Auditor, Audit)
                | (Role::Operator, Intake)
        )
    };
    for role in all_roles() {
        for s in [Cases, Audit, Intake] {
            let p = principal(role.clone());
            match may_call(&p, s) {
                Ok(()) => assert!(expected(&role, s), "{role:?} {s:?}"),
                Err(e) => {
                    assert!(!expected(&role, s), "{role:?} {s:?}");
                    assert_eq!(e.code(), Code::PermissionDenied);
                    assert!(e.message().contains("may not"), "{}", e.message());
                    assert!(e.message().contains("\"p\""), "{}", e.message());
                }
            }
        }
    }
    let e = may_call(&principal(Role::Auditor), Cases).unwrap_err();
    assert!(e.message().contains("Audit service"), "{}", e.message());
}

// ---- purpose ----

fn with_purpose(v: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert(PURPOSE_METADATA, v.parse().unwrap());
    m
}

#[test]
fn purpose_is_read_decoded_cleaned_and_cut() {
    assert_eq!(purpose(&MetadataMap::new()), "");
    assert_eq!(
        purpose(&with_purpose("  case conference  ")),
        "case conference"
    );
    // Percent-encoded UTF-8: "家访" (home visit).
    assert_eq!(purpose(&with_purpose("%E5%AE%B6%E8%AE%BF")), "家访");
    assert_eq!(purpose(&with_purpose("100% needed")), "100% needed");
    assert_eq!(purpose(&with_purpose("a%0Ab")), "a b");
    let long = "x".repeat(500);
    assert_eq!(
        purpose(&with_purpose(&long)).chars().count(),
        MAX_PURPOSE_CHARS
    );
    let long_cjk = "%E5%AE%B6".repeat(300);
    let cut = purpose(&with_purpose(&long_cjk));
    assert_eq!(cut.chars().count(), MAX_PURPOSE_CHARS);
    assert!(cut.chars().all(|c| c == '家'));
}
