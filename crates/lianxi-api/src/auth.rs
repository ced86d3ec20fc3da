//! Who is calling, in what role, and what that role may see.
//!
//! A caller presents a bearer token; the node keeps only SHA-256 hashes of
//! tokens, in a principals file, each naming a principal and its role. Need
//! to know is decided here from the case view, so every handler asks the
//! same question the same way.

use std::collections::HashSet;

use lianxi_proto::v1::{Agency, CaseView, InvolvementState, PrincipalRole};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// The metadata key of the purpose a caller states for a call.
pub const PURPOSE_METADATA: &str = "lianxi-purpose";

/// A stated purpose is cut to this many characters before it is recorded.
pub const MAX_PURPOSE_CHARS: usize = 200;

/// The name every caller gets on a node without authentication.
pub const DEVELOPMENT_PRINCIPAL: &str = "development";

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// What a principal may do. An agency sees the cases it is involved in; a
/// secretariat the cases of its jurisdiction; an auditor the log and the
/// access log but no case through the case API; an operator the node's
/// intake but no case contents.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Agency(Agency),
    /// `jurisdiction` is a code prefix such as `330100/330106`; it covers
    /// that area and every area below it.
    Secretariat {
        jurisdiction: String,
    },
    Auditor,
    Operator,
    /// No authentication: a development node on a loopback address.
    Development,
}

impl Principal {
    pub fn proto_role(&self) -> PrincipalRole {
        match self.role {
            Role::Agency(_) => PrincipalRole::Agency,
            Role::Secretariat { .. } => PrincipalRole::Secretariat,
            Role::Auditor => PrincipalRole::Auditor,
            Role::Operator => PrincipalRole::Operator,
            Role::Development => PrincipalRole::Development,
        }
    }

    /// The agency token or jurisdiction the principal acts for; empty for
    /// the other roles. Recorded in the access log.
    pub fn scope(&self) -> String {
        match &self.role {
            Role::Agency(a) => lianxi_domain::agency_token(*a)
                .unwrap_or_default()
                .to_owned(),
            Role::Secretariat { jurisdiction } => jurisdiction.clone(),
            Role::Auditor | Role::Operator | Role::Development => String::new(),
        }
    }

    fn role_name(&self) -> &'static str {
        match self.role {
            Role::Agency(_) => "an agency",
            Role::Secretariat { .. } => "a secretariat",
            Role::Auditor => "an auditor",
            Role::Operator => "an operator",
            Role::Development => "a development caller",
        }
    }
}

/// A principals file that cannot be used, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Not TOML, or a key the file does not know (the message names the
    /// line and the key).
    #[error("the principals file is not valid: {0}")]
    Syntax(String),
    #[error(
        "the principals file lists no principals; add at least one [[principal]] entry (name, role, token_sha256)"
    )]
    Empty,
    /// One entry is wrong. `entry` counts `[[principal]]` entries from 1.
    #[error("principal entry {entry} ({name:?}): {problem}")]
    Entry {
        entry: usize,
        name: String,
        problem: String,
    },
}

/// Principals and the hashes of their tokens, from a TOML file:
///
/// ```toml
/// [[principal]]
/// name = "police-records"
/// role = "agency"
/// agency = "police"
/// token_sha256 = "<hex of SHA-256 of the token>"
///
/// [[principal]]
/// name = "secretariat-xihu"
/// role = "secretariat"
/// jurisdiction = "330100/330106"
/// token_sha256 = "..."
///
/// [[principal]]
/// name = "audit-office"
/// role = "auditor"
/// token_sha256 = "..."
/// ```
///
/// Only hashes are stored, so the file gives away no token.
#[derive(Debug, Clone)]
pub struct Principals {
    entries: Vec<([u8; 32], Principal)>,
    /// No authentication: every caller is the development principal.
    development: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: String,
    agency: Option<String>,
    jurisdiction: Option<String>,
    token_sha256: String,
}

const MAX_NAME_LEN: usize = 64;

fn agency_tokens() -> String {
    lianxi_domain::ALL_AGENCIES
        .iter()
        .filter_map(|a| lianxi_domain::agency_token(*a))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_entry(e: &Entry) -> Result<([u8; 32], Principal), String> {
    let name_ok = !e.name.is_empty()
        && e.name.len() <= MAX_NAME_LEN
        && e.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(format!(
            "name must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ . (it is recorded in the access log)"
        ));
    }
    let field = |present: bool, key: &str, role: &str| {
        if present {
            Err(format!(
                "`{key}` does not apply to role \"{role}\"; remove it"
            ))
        } else {
            Ok(())
        }
    };
    let role = match e.role.as_str() {
        "agency" => {
            field(e.jurisdiction.is_some(), "jurisdiction", "agency")?;
            let Some(token) = &e.agency else {
                return Err(format!(
                    "role \"agency\" needs `agency = \"...\"`, one of: {}",
                    agency_tokens()
                ));
            };
            let agency = lianxi_domain::agency_from_token(token).ok_or_else(|| {
                format!(
                    "agency {token:?} is not known; use one of: {}",
                    agency_tokens()
                )
            })?;
            Role::Agency(agency)
        }
        "secretariat" => {
            field(e.agency.is_some(), "agency", "secretariat")?;
            let Some(j) = &e.jurisdiction else {
                return Err(
                    "role \"secretariat\" needs `jurisdiction = \"...\"`, the code prefix of its area, e.g. \"330100/330106\""
                        .into(),
                );
            };
            if j.is_empty() || j.starts_with('/') || j.ends_with('/') || j.contains("//") {
                return Err(format!(
                    "jurisdiction {j:?} must be an area code path such as \"330100\" or \"330100/330106\", without leading, trailing or doubled '/'"
                ));
            }
            Role::Secretariat {
                jurisdiction: j.clone(),
            }
        }
        "auditor" | "operator" => {
            field(e.agency.is_some(), "agency", &e.role)?;
            field(e.jurisdiction.is_some(), "jurisdiction", &e.role)?;
            if e.role == "auditor" {
                Role::Auditor
            } else {
                Role::Operator
            }
        }
        "development" => {
            return Err(
                "role \"development\" cannot be configured: it is what every caller gets on a node started without a principals file (loopback only); use agency, secretariat, auditor or operator"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "role {other:?} is not known; use agency, secretariat, auditor or operator"
            ));
        }
    };
    let hash = parse_hash(&e.token_sha256)?;
    Ok((
        hash,
        Principal {
            name: e.name.clone(),
            role,
        },
    ))
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let fix = "give the SHA-256 of the token as 64 hex digits (e.g. `printf %s \"$TOKEN\" | sha256sum`), never the token itself";
    if s.len() != 64 {
        return Err(format!(
            "token_sha256 has {} characters, not 64; {fix}",
            s.len()
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|e| format!("token_sha256 is not hex ({e}); {fix}"))?;
    Ok(out)
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn unauthenticated(problem: &str) -> Status {
    Status::unauthenticated(format!(
        "{problem}; pass the token you were issued as `authorization: Bearer <token>` (on the command line: --token or LIANXI_TOKEN)"
    ))
}

impl Principals {
    pub fn from_toml(s: &str) -> Result<Principals, AuthConfigError> {
        let file: File = toml::from_str(s).map_err(|e| AuthConfigError::Syntax(e.to_string()))?;
        if file.principal.is_empty() {
            return Err(AuthConfigError::Empty);
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut entries = Vec::with_capacity(file.principal.len());
        for (i, e) in file.principal.iter().enumerate() {
            let problem = |problem: String| AuthConfigError::Entry {
                entry: i + 1,
                name: e.name.clone(),
                problem,
            };
            let (hash, principal) = parse_entry(e).map_err(problem)?;
            if !names.insert(principal.name.clone()) {
                return Err(problem(
                    "another entry has the same name; give each principal its own name".into(),
                ));
            }
            if !hashes.insert(hash) {
                return Err(problem(
                    "another entry has the same token_sha256; issue each principal its own token"
                        .into(),
                ));
            }
            entries.push((hash, principal));
        }
        Ok(Principals {
            entries,
            development: false,
        })
    }

    /// No authentication: every caller is the development principal. Only
    /// for a node on a loopback address; the binary enforces that.
    pub fn development() -> Principals {
        Principals {
            entries: Vec::new(),
            development: true,
        }
    }

    /// Whether this is the no-authentication development mode.
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// The configured principals, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Principal> {
        self.entries.iter().map(|(_, p)| p)
    }

    /// The caller, from `authorization: Bearer <token>`.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        if self.development {
            return Ok(Principal {
                name: DEVELOPMENT_PRINCIPAL.into(),
                role: Role::Development,
            });
        }
        let Some(value) = metadata.get("authorization") else {
            return Err(unauthenticated("no token was given"));
        };
        let malformed = || unauthenticated("the authorization metadata is not `Bearer <token>`");
        let value = value.to_str().map_err(|_| malformed())?;
        let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(malformed());
        }
        let presented = token_hash(token);
        // Every entry is compared, each in constant time, so the time taken
        // says nothing about which hash (or how much of one) matched.
        let mut found = None;
        for (hash, principal) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(principal);
            }
        }
        found
            .cloned()
            .ok_or_else(|| unauthenticated("the token is not known to this node"))
    }
}

/// The purpose the caller stated in `lianxi-purpose` metadata, or empty.
/// Percent-encoded UTF-8 is decoded (gRPC metadata is ASCII, a purpose may
/// not be); control characters become spaces; cut to
/// [`MAX_PURPOSE_CHARS`] characters.
pub fn purpose(metadata: &MetadataMap) -> String {
    let Some(value) = metadata.get(PURPOSE_METADATA) else {
        return String::new();
    };
    let decoded = percent_encoding::percent_decode(value.as_bytes()).decode_utf8_lossy();
    decoded
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_PURPOSE_CHARS)
        .collect()
}

/// Whether `jurisdiction` is `area` or lies below it (`330100/330106`
/// covers `330100/330106/330106004` but not `330100/3301061`).
fn within(jurisdiction: &str, area: &str) -> bool {
    jurisdiction
        .strip_prefix(area)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether `agency` is involved in the case: it has an involvement that it
/// has not returned.
fn involved(view: &CaseView, agency: Agency) -> bool {
    view.agencies
        .iter()
        .any(|x| x.agency == agency as i32 && x.state != InvolvementState::Returned as i32)
}

/// Need to know, for reading one case.
pub fn may_read_case(p: &Principal, view: &CaseView) -> bool {
    match &p.role {
        Role::Agency(a) => involved(view, *a),
        Role::Secretariat { jurisdiction } => within(&view.jurisdiction, jurisdiction),
        Role::Development => true,
        Role::Auditor | Role::Operator => false,
    }
}

/// The services of the node, for [`may_call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Cases,
    Audit,
    Intake,
}

/// Which roles may call which service at all; need to know for a single
/// case is [`may_read_case`].
pub fn may_call(p: &Principal, service: Service) -> Result<(), Status> {
    let allowed = match service {
        Service::Cases => matches!(
            p.role,
            Role::Agency(_) | Role::Secretariat { .. } | Role::Development
        ),
        Service::Audit => matches!(p.role, Role::Auditor | Role::Development),
        Service::Intake => matches!(p.role, Role::Operator | Role::Agency(_) | Role::Development),
    };
    if allowed {
        return Ok(());
    }
    let (what, fix) = match service {
        Service::Cases => (
            "read cases",
            match p.role {
                Role::Auditor => {
                    "auditors read the log and past states of cases through the Audit service"
                }
                _ => "operators see the node's intake (ListRejections), not case contents",
            },
        ),
        Service::Audit => (
            "call the Audit service",
            "it is for auditors; use a token issued to the audit office",
        ),
        Service::Intake => (
            "list rejected messages",
            "that is for operators and for agencies (their own messages)",
        ),
    };
    Err(Status::permission_denied(format!(
        "principal {:?} is {} and may not {what}; {fix}",
        p.name,
        p.role_name()
    )))
}

#[cfg(test)]
mod tests;
