//! What becomes of one message from the bus: a pure function of the
//! message and a read-only state.
//!
//! Intake has two steps. [`parse`] needs no state: size, decoding and the
//! envelope (subject, agency, ids), each message decoded once. [`decide`]
//! looks the parsed message up in a [`State`] (duplicates, the case's view,
//! the event a correction names, the person index) and returns a [`Plan`]:
//! accept (with what to seal), answer as a duplicate of an earlier event,
//! or reject (with what of the bytes to keep). The log supplies the state
//! from its store and applies the plan; a model test drives the same two
//! steps against a state kept in memory.

use lianxi_proto::v1::{Agency, CaseView, Event, PersonalDataState, RejectionCode, event::Body};

use crate::{Context, Policy, PriorCase, Rejection};

/// The largest event a node accepts, in bytes. Larger messages are
/// rejected (and kept, cut to this size) rather than stored.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// A message after [`parse`]: the event, or why it was refused (with the
/// event when it decoded).
pub type Parsed = Result<Event, Box<Refused>>;

/// A refused message: the event if it decoded, and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub event: Option<Event>,
    pub rejection: Rejection,
}

/// Size, decoding and the structural checks that need no state.
pub fn parse(subject: &str, payload: &[u8]) -> Parsed {
    if payload.len() > MAX_EVENT_BYTES {
        return Err(Box::new(Refused {
            event: None,
            rejection: Rejection {
                code: RejectionCode::TooLarge,
                reason: format!(
                    "the event is {} bytes, more than the {} bytes a node accepts; move attachments out of the event and publish it again under a new event id",
                    payload.len(),
                    MAX_EVENT_BYTES
                ),
            },
        }));
    }
    let event = crate::decode_event(payload).map_err(|refused| {
        let (event, rejection) = *refused;
        Box::new(Refused { event, rejection })
    })?;
    match crate::check_envelope(subject, &event) {
        Ok(()) => Ok(event),
        Err(rejection) => Err(Box::new(Refused {
            event: Some(event),
            rejection,
        })),
    }
}

/// What [`decide`] reads. Every method answers from the state as of the
/// message before this one (the log's store and the group built so far).
pub trait State {
    /// A failure to read (storage), passed through unchanged.
    type Error;
    /// The current view of a case.
    fn view(&self, case_id: &str) -> Result<Option<CaseView>, Self::Error>;
    /// The global sequence of the agency's accepted event with this id.
    /// Event ids are each agency's own.
    fn accepted(&self, agency: Agency, event_id: &str) -> Result<Option<u64>, Self::Error>;
    /// The agency's accepted event with this id, as it was accepted.
    fn accepted_event(&self, agency: Agency, event_id: &str) -> Result<Option<Event>, Self::Error>;
    /// The person token of a person reference (an HMAC under the city's
    /// index key, hex): never the reference itself.
    fn person_token(&self, person_ref: &str) -> Result<String, Self::Error>;
    /// The latest case opened for a person, by token.
    fn prior_case(&self, person_token: &str) -> Result<Option<PriorCase>, Self::Error>;
}

/// What becomes of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Append it.
    Accept(Box<Accept>),
    /// The agency sent this event id before and it was accepted: answer
    /// with the original.
    Duplicate {
        agency: Agency,
        event_id: String,
        original_global_sequence: u64,
    },
    /// Keep a rejection record and answer with the reason.
    Reject(Box<Reject>),
}

/// An accepted event and what the log needs to append it.
#[derive(Debug, Clone, PartialEq)]
pub struct Accept {
    pub event: Event,
    /// The case's view before the event (none for an opening).
    pub view: Option<CaseView>,
    /// The person token of an opening that names a person.
    pub person: Option<String>,
    /// The person's latest case before this one, which the view records.
    pub prior: Option<PriorCase>,
    /// The seal plan: the event carries personal values, to be sealed under
    /// the case's data key before the entry is hashed.
    pub seal: bool,
}

/// A rejected message: the reason and what of its bytes to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub event: Option<Event>,
    pub rejection: Rejection,
    pub keep: Keep,
}

/// What a rejection record keeps of the message. Never a personal value in
/// the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The decoded event, re-encoded with its personal values emptied.
    Stripped,
    /// The bytes as received (cut to [`MAX_EVENT_BYTES`]), sealed under the
    /// key of the case the subject names, so that an erasure erases them.
    Sealed { case_id: String },
    /// Nothing: the case the subject names has its personal data erased.
    Withheld,
    /// The bytes as received: the subject names no case, so there is no
    /// key to seal them under.
    AsReceived,
}

/// Decides what becomes of a parsed message arriving on `subject`.
///
/// Order matters: an event that decodes and is well-formed is first looked
/// up by (agency, id), so a re-sent event is a duplicate pointing at the
/// original rather than a rule violation against the later state.
pub fn decide<S: State>(
    policy: &Policy,
    state: &S,
    subject: &str,
    parsed: Parsed,
) -> Result<Plan, S::Error> {
    let refused = match parsed {
        Ok(event) => {
            let agency = agency_of(&event);
            if let Some(original) = state.accepted(agency, &event.event_id)? {
                return Ok(Plan::Duplicate {
                    agency,
                    event_id: event.event_id,
                    original_global_sequence: original,
                });
            }
            match judge(policy, state, event)? {
                Ok(accept) => return Ok(Plan::Accept(Box::new(accept))),
                Err(refused) => refused,
            }
        }
        Err(refused) => *refused,
    };
    let keep = keep(state, subject, &refused)?;
    Ok(Plan::Reject(Box::new(Reject {
        event: refused.event,
        rejection: refused.rejection,
        keep,
    })))
}

/// The state rules. The outer `Result` is a failure to read the state.
fn judge<S: State>(
    policy: &Policy,
    state: &S,
    event: Event,
) -> Result<Result<Accept, Refused>, S::Error> {
    let view = state.view(&event.case_id)?;
    // Only the agency's own events can be corrected (DOMAIN.md: a
    // correction names an earlier event of the same agency), and event ids
    // are each agency's own: look up (own agency, id), so another agency's
    // event is never found, named or compared.
    let corrected = match &event.corrects_event_id {
        Some(id) => state.accepted_event(agency_of(&event), id)?,
        None => None,
    };
    let person = match opening_person(&event) {
        Some(p) => Some(state.person_token(p)?),
        None => None,
    };
    let prior = match &person {
        Some(token) => state.prior_case(token)?,
        None => None,
    };
    let ctx = Context {
        policy,
        prior_case: prior.as_ref(),
    };
    Ok(
        match crate::decide(&ctx, view.as_ref(), &event, corrected.as_ref()) {
            Ok(()) => Ok(Accept {
                seal: crate::personal::has_personal(&event),
                event,
                view,
                person,
                prior,
            }),
            Err(rejection) => Err(Refused {
                event: Some(event),
                rejection,
            }),
        },
    )
}

/// What a rejection keeps: an event that decoded (in this node's schema)
/// re-encoded with its personal values emptied; other bytes sealed under
/// the key of the case their subject names (nothing if that case is
/// already erased), and as they came only when the subject names no case.
fn keep<S: State>(state: &S, subject: &str, refused: &Refused) -> Result<Keep, S::Error> {
    if let Some(case_id) = raw_case(subject, refused) {
        return Ok(match state.view(&case_id)? {
            Some(v) if is_erased(&v) => Keep::Withheld,
            _ => Keep::Sealed { case_id },
        });
    }
    Ok(if kept_as_received(refused) {
        Keep::AsReceived
    } else {
        Keep::Stripped
    })
}

/// Bytes that are kept as received rather than as a re-encoded event: not
/// an event, too large, or of a newer schema (re-encoding would drop what
/// this node does not know).
fn kept_as_received(refused: &Refused) -> bool {
    refused.event.is_none() || refused.rejection.code == RejectionCode::SchemaNewer
}

/// The case whose key seals the bytes a rejection keeps: set for bytes
/// kept as received on a case's subject.
pub fn raw_case(subject: &str, refused: &Refused) -> Option<String> {
    if !kept_as_received(refused) {
        return None;
    }
    crate::parse_subject(subject).ok().map(|(_, case)| case)
}

/// The person reference of a case opening that names a person; only
/// openings (not corrections of them) move the person index.
pub fn opening_person(event: &Event) -> Option<&str> {
    if event.corrects_event_id.is_some() {
        return None;
    }
    match event.body {
        Some(Body::CaseOpened(_)) => crate::person_ref(event),
        _ => None,
    }
}

/// An accepted erasure of the case's personal data (not a correction).
pub fn is_erasure(event: &Event) -> bool {
    event.corrects_event_id.is_none() && matches!(event.body, Some(Body::PersonalDataErased(_)))
}

/// The agency an event is keyed under: its own, which `check_envelope`
/// made equal to its subject's (the bus guarantees the subject).
pub fn agency_of(event: &Event) -> Agency {
    Agency::try_from(event.agency).unwrap_or(Agency::Unspecified)
}

/// Whether a case's personal data is erased.
pub fn is_erased(view: &CaseView) -> bool {
    crate::personal::state_of(view.personal_data) == PersonalDataState::Erased
}

/// What the person index records of a case: its id and opening time.
pub fn prior_of(view: &CaseView) -> PriorCase {
    PriorCase {
        case_id: view.case_id.clone(),
        opened_at: view.opened_at.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use prost::Message;

    use super::*;

    /// A state in memory: views and accepted events only.
    #[derive(Default)]
    struct Mem {
        views: HashMap<String, CaseView>,
        accepted: HashMap<(Agency, String), (u64, Event)>,
    }

    impl State for Mem {
        type Error = Infallible;
        fn view(&self, case_id: &str) -> Result<Option<CaseView>, Infallible> {
            Ok(self.views.get(case_id).cloned())
        }
        fn accepted(&self, agency: Agency, id: &str) -> Result<Option<u64>, Infallible> {
            Ok(self.accepted.get(&(agency, id.to_owned())).map(|x| x.0))
        }
        fn accepted_event(&self, agency: Agency, id: &str) -> Result<Option<Event>, Infallible> {
            Ok(self
                .accepted
                .get(&(agency, id.to_owned()))
                .map(|x| x.1.clone()))
        }
        fn person_token(&self, person_ref: &str) -> Result<String, Infallible> {
            Ok(format!("token-of-{}", person_ref.len()))
        }
        fn prior_case(&self, _: &str) -> Result<Option<PriorCase>, Infallible> {
            Ok(None)
        }
    }

    impl Mem {
        /// Decides a message and, when accepted, applies it.
        fn take(&mut self, subject: &str, payload: &[u8]) -> Plan {
            let policy = Policy::default();
            let Ok(plan) = decide(&policy, &*self, subject, parse(subject, payload));
            if let Plan::Accept(a) = &plan {
                let n = self.accepted.len() as u64 + 1;
                let meta = crate::EntryMeta {
                    global_sequence: n,
                    case_sequence: a.view.as_ref().map_or(0, |v| v.case_sequence) + 1,
                    recorded_at: a.event.occurred_at.unwrap_or_default(),
                    sealed: &[],
                };
                let ctx = Context {
                    policy: &policy,
                    prior_case: a.prior.as_ref(),
                };
                let view = crate::apply(&ctx, a.view.clone(), &a.event, &meta);
                self.views.insert(a.event.case_id.clone(), view);
                self.accepted.insert(
                    (agency_of(&a.event), a.event.event_id.clone()),
                    (n, a.event.clone()),
                );
            }
            plan
        }
    }

    #[test]
    fn each_message_gets_the_plan_its_kind_calls_for() {
        let opening = lianxi_sim::generate(&lianxi_sim::Workload::default())
            .into_iter()
            .map(|(e, _)| e)
            .find(|e| matches!(e.body, Some(Body::CaseOpened(_))))
            .expect("the city opens cases");
        let subject = crate::event_subject(&opening).unwrap();
        let mut mem = Mem::default();
        // Accepted, with the person named and the seal plan set.
        let Plan::Accept(a) = mem.take(&subject, &opening.encode_to_vec()) else {
            panic!("the opening is accepted")
        };
        assert!(a.view.is_none() && a.person.is_some() && a.seal);
        // The same again: a duplicate of entry 1 (not CASE_EXISTS).
        assert_eq!(
            mem.take(&subject, &opening.encode_to_vec()),
            Plan::Duplicate {
                agency: agency_of(&opening),
                event_id: opening.event_id.clone(),
                original_global_sequence: 1,
            }
        );
        // A new id opening the same case breaks a rule: kept stripped.
        let mut again = opening.clone();
        again.event_id.push_str("-2");
        let Plan::Reject(r) = mem.take(&subject, &again.encode_to_vec()) else {
            panic!("a second opening is rejected")
        };
        assert_eq!(
            (r.rejection.code, r.keep.clone()),
            (RejectionCode::CaseExists, Keep::Stripped)
        );
        // Bytes that are no event on the case's subject: sealed under its key.
        let Plan::Reject(r) = mem.take(&subject, &[0xff, 0x01]) else {
            panic!("garbage is rejected")
        };
        assert_eq!(
            r.keep,
            Keep::Sealed {
                case_id: opening.case_id.clone()
            }
        );
        // Too large, on a subject naming no case: kept as received.
        let big = vec![0u8; MAX_EVENT_BYTES + 1];
        let Plan::Reject(r) = mem.take("lianxi.v1.events.police", &big) else {
            panic!("too large is rejected")
        };
        assert_eq!(
            (r.rejection.code, r.keep),
            (RejectionCode::TooLarge, Keep::AsReceived)
        );
        // Once the case's personal data is erased, nothing is kept.
        mem.views.get_mut(&opening.case_id).unwrap().personal_data =
            PersonalDataState::Erased as i32;
        let Plan::Reject(r) = mem.take(&subject, &[0xff, 0x01]) else {
            panic!("garbage is rejected")
        };
        assert_eq!(r.keep, Keep::Withheld);
    }
}
