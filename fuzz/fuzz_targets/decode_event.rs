//! Any bytes through the node's own decoding (`lianxi_domain::decode_event`:
//! protobuf, then the schema walk that tells a newer sender's fields) and
//! through `Event::decode`. The two agree: bytes prost cannot read are
//! MALFORMED, an event with unknown field numbers is SCHEMA_NEWER, anything
//! else is the event prost decoded. Whatever decodes re-encodes to the
//! same event and goes through the whole domain on its own subject.
#![no_main]

use lianxi_proto::v1::{Event, RejectionCode};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let node = lianxi_domain::decode_event(data);
    let Ok(e) = Event::decode(data) else {
        let (partial, r) = *node.expect_err("prost refused bytes the node decoded");
        assert!(partial.is_none());
        assert_eq!(r.code, RejectionCode::Malformed);
        lianxi_fuzz::check_rejection(&r);
        return;
    };
    match node {
        Ok(n) => assert_eq!(n, e, "the node decoded another event than prost"),
        Err(b) => {
            let (partial, r) = *b;
            assert_eq!(r.code, RejectionCode::SchemaNewer, "{}", r.reason);
            assert_eq!(partial.as_ref(), Some(&e));
            assert!(!lianxi_domain::unknown_event_fields(data).is_empty());
            lianxi_fuzz::check_rejection(&r);
        }
    }
    let again = Event::decode(e.encode_to_vec().as_slice()).expect("a re-encoded event decodes");
    assert_eq!(again, e, "decode(encode(e)) differs from e");
    let subject = lianxi_domain::event_subject(&e).unwrap_or_default();
    let _ = lianxi_fuzz::run_domain(&subject, &e);
});
