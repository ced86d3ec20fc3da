//! A subject and an event from the fuzz input through `check_envelope`,
//! `decide`, `apply` and the query-time functions. The envelope accepts an
//! event only on its own subject.
#![no_main]

use lianxi_proto::v1::Event;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let (raw, payload) = lianxi_fuzz::split_subject(data);
    let Ok(e) = Event::decode(payload) else {
        return;
    };
    let subject = lianxi_fuzz::subject_or_good(selector, raw, &e);
    if lianxi_fuzz::run_domain(&subject, &e).is_ok() {
        let own = lianxi_domain::event_subject(&e).expect("an accepted event has a subject");
        assert_eq!(subject, own, "accepted on a subject that is not its own");
    }
});
