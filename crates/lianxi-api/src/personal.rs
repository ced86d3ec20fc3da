//! Personal values in responses: put back in their fields for the roles
//! that need them (see `lianxi_domain::personal::may_read`), and listed as
//! withheld, erased or on legal hold for everyone else. Nothing here writes:
//! the stored entries and views stay sealed.

use std::sync::Arc;

use lianxi_crypto::{DataKey, KeyStore};
use lianxi_domain::personal::{Reader, may_read, state_of};
use lianxi_proto::v1::{CaseView, LogEntry, PersonalDataState, PersonalKind, Redaction};

use crate::auth::{Principal, Role};

/// Where the API finds case keys.
#[derive(Clone, Default)]
pub(crate) enum CaseKeys {
    /// No key store: every value is shown as unavailable.
    #[default]
    None,
    /// The node's key store (JetStream key-value, cached in memory).
    Store(Arc<KeyStore>),
    /// Keys derived from a seed as `lianxi_log::GroupKeys::derived` does,
    /// for tests without a bus (feature `test-util`).
    #[cfg(feature = "test-util")]
    Derived(String),
}

impl CaseKeys {
    async fn get(&self, case_id: &str) -> Option<Arc<DataKey>> {
        match self {
            CaseKeys::None => None,
            #[cfg(feature = "test-util")]
            CaseKeys::Derived(seed) => Some(lianxi_log::GroupKeys::derived_case_key(seed, case_id)),
            CaseKeys::Store(s) => match s.case_key(case_id).await {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(case_id, error = %e, "cannot read a case key; personal values are shown as unavailable");
                    None
                }
            },
        }
    }

    /// Puts back the view's personal values the principal may read.
    pub(crate) async fn reveal_view(&self, principal: &Principal, view: &mut CaseView) {
        let verdict = verdict(reader(principal), state_of(view.personal_data));
        let key = if needs_key(view.personal.iter().map(|s| s.path.as_str()), &verdict) {
            self.get(&view.case_id).await
        } else {
            None
        };
        lianxi_crypto::reveal_view(view, key.as_deref(), &verdict);
    }

    /// Puts back the entries' personal values the principal may read, by
    /// the case's current state (`view`).
    pub(crate) async fn reveal_entries(
        &self,
        principal: &Principal,
        view: &CaseView,
        entries: &mut [LogEntry],
    ) {
        let verdict = verdict(reader(principal), state_of(view.personal_data));
        let paths = entries
            .iter()
            .flat_map(|e| e.sealed.iter().map(|s| s.path.as_str()));
        let key = if needs_key(paths, &verdict) {
            self.get(&view.case_id).await
        } else {
            None
        };
        for entry in entries {
            lianxi_crypto::reveal_entry(entry, key.as_deref(), &verdict);
        }
    }
}

type Verdict = Box<dyn Fn(PersonalKind) -> Option<Redaction> + Send + Sync>;

/// Whether a value of a kind is shown (`None`) or why not.
fn verdict(reader: Reader, state: PersonalDataState) -> Verdict {
    Box::new(move |kind| match state {
        PersonalDataState::Erased => Some(Redaction::Erased),
        PersonalDataState::LegalHold => Some(Redaction::LegalHold),
        PersonalDataState::Active => (!may_read(reader, kind)).then_some(Redaction::Withheld),
    })
}

/// Whether any of the paths would be shown, so the key is worth fetching.
fn needs_key<'a>(mut paths: impl Iterator<Item = &'a str>, verdict: &Verdict) -> bool {
    paths.any(|p| {
        verdict(lianxi_domain::personal::kind_of(p).unwrap_or(PersonalKind::Unspecified)).is_none()
    })
}

fn reader(principal: &Principal) -> Reader {
    match &principal.role {
        Role::Agency(a) => Reader::Agency(*a),
        Role::Secretariat { .. } => Reader::Secretariat,
        Role::Auditor | Role::Operator => Reader::Auditor,
        Role::Development => Reader::Development,
    }
}
