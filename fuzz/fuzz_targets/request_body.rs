//! A client's request body (`Call::from_json`, what `POST /v1/messages` parses first): a call
//! or `InvalidCall`, never a panic or another error, with a message bounded by the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seawall::core::{Call, Error};

fuzz_target!(|body: &[u8]| {
    match Call::from_json(body) {
        Ok(call) => {
            assert!(!call.model().is_empty());
            assert!(call.max_tokens() > 0);
        }
        Err(Error::InvalidCall(message)) => assert!(message.len() <= 2 * body.len() + 256),
        Err(other) => panic!("not an InvalidCall: {other:?}"),
    }
});
