//! The person index: `P` + person token -> the latest case opened for that
//! person (removed when that case's personal data is erased), and its
//! history, `H` + person + global sequence -> the case that entry made the
//! person's latest (empty where an erasure ended it), so a past view can be
//! rebuilt exactly. The token is an HMAC of the person reference under the
//! city's index key, never the reference.

use std::collections::HashMap;

use lianxi_domain::PriorCase;
use lianxi_domain::intake::{is_erasure, prior_of};
use lianxi_proto::Timestamp;
use lianxi_proto::v1::LogEntry;
use prost::Message;

use crate::error::{Error, Location, Result};
use crate::keys;
use crate::packed;
use crate::pending::{Reader, Sink};

use super::{Step, entry_person};

#[derive(Default)]
pub(crate) struct Persons {
    /// The person's latest case, or `None` where an erasure removed it.
    latest: HashMap<String, Option<PriorCase>>,
    history: Vec<(Vec<u8>, Vec<u8>)>,
    /// The person token of openings added since the last write, by case.
    case_persons: HashMap<String, String>,
}

impl Persons {
    /// The latest case opened for a person.
    pub(crate) fn prior(&self, base: &Reader, person: &str) -> Result<Option<PriorCase>> {
        if let Some(prior) = self.latest.get(person) {
            return Ok(prior.clone());
        }
        let key = keys::named(keys::PERSON, person);
        match base.get(&key)? {
            Some(b) => decode_prior(&b).map(Some).ok_or_else(|| Error::Corruption {
                at: Location::Key(hex::encode(&key)),
                detail: "person index record is malformed".into(),
            }),
            None => Ok(None),
        }
    }

    pub(crate) fn add(&mut self, base: &Reader, step: &Step<'_>) -> Result<()> {
        let g = step.entry.global_sequence;
        if let Some(p) = step.person {
            let prior = prior_of(step.view);
            self.history
                .push((keys::person_history(p, g), encode_prior(&prior)));
            self.latest.insert(p.to_owned(), Some(prior));
            self.case_persons
                .insert(step.event.case_id.clone(), p.to_owned());
        }
        // After an erasure the index stops pointing at the case (if it still
        // does), and its history says so from this entry on.
        if is_erasure(step.event) {
            let case_id = &step.event.case_id;
            let person = match self.case_persons.get(case_id) {
                Some(p) => Some(p.clone()),
                None => first_entry(base, case_id)?.as_ref().and_then(entry_person),
            };
            if let Some(p) = person
                && self.prior(base, &p)?.is_some_and(|x| &x.case_id == case_id)
            {
                self.history.push((keys::person_history(&p, g), Vec::new()));
                self.latest.insert(p, None);
            }
        }
        Ok(())
    }

    pub(crate) fn write(&mut self, out: &mut impl Sink) {
        for (person, prior) in self.latest.drain() {
            let key = keys::named(keys::PERSON, &person);
            match prior {
                Some(p) => out.put(&key, &encode_prior(&p)),
                None => out.delete(&key),
            }
        }
        for (key, value) in self.history.drain(..) {
            out.put(&key, &value);
        }
        self.case_persons.clear();
    }
}

/// A case's first entry, as stored.
fn first_entry(base: &Reader, case_id: &str) -> Result<Option<LogEntry>> {
    let Some(g) = base
        .get(packed::case_key(case_id, 1))?
        .and_then(|r| packed::get(&r, 0))
    else {
        return Ok(None);
    };
    match base.tree().get(keys::seq(keys::ENTRY, g))? {
        Some(b) => LogEntry::decode(b.as_ref())
            .map(Some)
            .map_err(|e| Error::Corruption {
                at: Location::Entry(g),
                detail: format!("entry does not decode: {e}"),
            }),
        None => Ok(None),
    }
}

fn encode_prior(p: &PriorCase) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + p.case_id.len());
    v.extend_from_slice(&p.opened_at.seconds.to_be_bytes());
    v.extend_from_slice(&p.opened_at.nanos.to_be_bytes());
    v.extend_from_slice(p.case_id.as_bytes());
    v
}

pub(crate) fn decode_prior(b: &[u8]) -> Option<PriorCase> {
    let seconds = i64::from_be_bytes(b.get(0..8)?.try_into().ok()?);
    let nanos = i32::from_be_bytes(b.get(8..12)?.try_into().ok()?);
    let case_id = String::from_utf8(b.get(12..)?.to_vec()).ok()?;
    Some(PriorCase {
        case_id,
        opened_at: Timestamp { seconds, nanos },
    })
}
