//! Any bytes through `Event::decode`; whatever decodes re-encodes to the
//! same event and goes through the whole domain on its own subject.
#![no_main]

use lianxi_proto::v1::Event;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(e) = Event::decode(data) else {
        return;
    };
    let again = Event::decode(e.encode_to_vec().as_slice()).expect("a re-encoded event decodes");
    assert_eq!(again, e, "decode(encode(e)) differs from e");
    let subject = lianxi_domain::event_subject(&e).unwrap_or_default();
    let _ = lianxi_fuzz::run_domain(&subject, &e);
});
