//! Arbitrary bytes through the message decoder: it must return an error or a valid
//! message, never panic, and a message that decodes must re-encode to bytes that decode
//! to the same message with the same cid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_types::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = codec::decode_message(data, codec::MESSAGE_BYTES_MAX) {
        let again = codec::decode_message(&codec::encode(&message), codec::MESSAGE_BYTES_MAX)
            .expect("a decoded message re-encodes to a decodable message");
        assert_eq!(again, message);
        assert_eq!(again.cid(), message.cid());
    }
    let _ = codec::decode::<sync_types::LinkState>(data, codec::MESSAGE_BYTES_MAX);
    let _ = codec::decode::<sync_types::Scope>(data, codec::MESSAGE_BYTES_MAX);
});
