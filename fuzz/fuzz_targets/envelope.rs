//! The envelope and event parser on arbitrary bytes: no panic, and whatever
//! parses re-serialises and parses again to an equal value.
#![no_main]

use cariosan_webhooks::model::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(envelope) = Envelope::from_slice(body) {
        let again = serde_json::to_vec(&envelope).expect("a parsed envelope serialises");
        let reparsed = Envelope::from_slice(&again).expect("a serialised envelope parses");
        assert_eq!(envelope, reparsed);
    }
});
