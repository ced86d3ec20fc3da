//! Decoding an event, and telling a newer sender's fields from damage.
//!
//! Protobuf decoding skips field numbers it does not know, so an event
//! from a sender with a newer `lianxi.v1` (a new kind of body, a new field
//! in a known body) would decode as an event that lacks them: a new body
//! kind reads as "no body", a new field is silently lost. Before anything
//! is decided, [`decode_event`] walks the bytes against this build's schema
//! (the descriptor set compiled into `lianxi-proto`) and rejects an event
//! with field numbers the node does not know as `SCHEMA_NEWER`.

use std::collections::HashMap;
use std::sync::OnceLock;

use lianxi_proto::v1::{Event, RejectionCode};
use prost::Message;
use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use prost_types::field_descriptor_proto::Type;

use crate::error::Rejection;

const EVENT: &str = ".lianxi.v1.Event";
/// Deeper nesting than any lianxi message has; a payload nested deeper is
/// not walked further (prost's own decoding limits it as well).
const MAX_DEPTH: usize = 32;
/// At most this many unknown fields are named in a reason.
const MAX_NAMED: usize = 8;

struct Field {
    name: String,
    /// The full name of the message type, for message fields.
    message: Option<String>,
}

type Schema = HashMap<String, HashMap<u32, Field>>;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut out = Schema::new();
        // The descriptor set is compiled into lianxi-proto from the same
        // .proto files as the messages; a build whose set does not decode
        // knows no message, and every field is then unknown (and refused).
        let set = prost_types::FileDescriptorSet::decode(lianxi_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        for file in &set.file {
            let package = file.package();
            for m in &file.message_type {
                add_message(&mut out, &format!(".{package}"), m);
            }
        }
        out
    })
}

fn add_message(out: &mut Schema, scope: &str, m: &prost_types::DescriptorProto) {
    let full = format!("{scope}.{}", m.name());
    let fields = m
        .field
        .iter()
        .map(|f| {
            let message = (f.r#type() == Type::Message).then(|| f.type_name().to_owned());
            (
                f.number() as u32,
                Field {
                    name: f.name().to_owned(),
                    message,
                },
            )
        })
        .collect();
    for nested in &m.nested_type {
        add_message(out, &full, nested);
    }
    out.insert(full, fields);
}

/// The fields of an encoded `lianxi.v1.Event` that this build's schema
/// does not know, as paths: `#99` for field number 99 of the event,
/// `case_opened.#12` for field 12 inside the `case_opened` body. Empty
/// for an event of this schema (or older). Bytes that are not protobuf end
/// the walk; [`decode_event`] reports those as malformed.
pub fn unknown_event_fields(payload: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema(), EVENT, payload, "", 0, &mut out);
    out
}

fn walk(
    schema: &Schema,
    message: &str,
    mut buf: &[u8],
    path: &str,
    depth: usize,
    out: &mut Vec<String>,
) {
    let Some(fields) = schema.get(message) else {
        // A type from outside lianxi (google.protobuf.Timestamp): not
        // walked; its shape does not change between lianxi versions.
        return;
    };
    while buf.has_remaining() {
        let Ok((number, wire)) = decode_key(&mut buf) else {
            return;
        };
        match fields.get(&number) {
            None => out.push(format!("{path}#{number}")),
            Some(Field {
                name,
                message: Some(inner),
            }) if wire == WireType::LengthDelimited && depth < MAX_DEPTH => {
                let Ok(len) = decode_varint(&mut buf) else {
                    return;
                };
                let Some((body, rest)) = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= buf.len())
                    .map(|len| buf.split_at(len))
                else {
                    return;
                };
                walk(
                    schema,
                    inner,
                    body,
                    &format!("{path}{name}."),
                    depth + 1,
                    out,
                );
                buf = rest;
                continue;
            }
            Some(_) => {}
        }
        if skip_field(wire, number, &mut buf, DecodeContext::default()).is_err() {
            return;
        }
    }
}

/// Decodes an event as published: bytes that are not a protobuf
/// `lianxi.v1.Event` are `MALFORMED`; an event carrying fields this node's
/// schema does not know is `SCHEMA_NEWER` (returned with the event as far
/// as it decoded, so its ids can be reported). The size limit is checked
/// by the caller, before decoding.
#[allow(clippy::type_complexity)]
pub fn decode_event(payload: &[u8]) -> Result<Event, Box<(Option<Event>, Rejection)>> {
    let event = Event::decode(payload).map_err(|e| {
        Box::new((
            None,
            Rejection::new(
                RejectionCode::Malformed,
                format!(
                    "the message is not a protobuf lianxi.v1.Event ({e}); publish the binary encoding of lianxi.v1.Event"
                ),
            ),
        ))
    })?;
    let unknown = unknown_event_fields(payload);
    if unknown.is_empty() {
        return Ok(event);
    }
    let mut named = unknown
        .iter()
        .take(MAX_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if unknown.len() > MAX_NAMED {
        named.push_str(&format!(" and {} more", unknown.len() - MAX_NAMED));
    }
    let what = if event.body.is_none() {
        "a kind of event body this node does not know"
    } else {
        "fields this node does not know"
    };
    Err(Box::new((
        Some(event),
        Rejection::new(
            RejectionCode::SchemaNewer,
            format!(
                "the event carries {what} ({named}): this node's lianxi.v1 schema is older than the sender's. \
                 Nothing was stored; ask the node's operator to upgrade lianxi, then publish the event again under its own event id"
            ),
        ),
    )))
}
