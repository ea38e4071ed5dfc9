//! Arbitrary bytes through the frame decoders (no network code: sync-transport is built
//! without its `net` feature). Decoding must return an error or a value within limits,
//! never panic, and a value that decodes must re-encode to a frame that decodes to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_transport::frame::{self, Body, FRAME_BYTES_MAX_DEFAULT};
use sync_transport::proto::{ErrorReply, Notice, Reply, Request, SubscribeRequest};

fn check<T: Body + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = frame::decode::<T>(data, FRAME_BYTES_MAX_DEFAULT) {
        value.check_limits().expect("a decoded value is within limits");
        let again = frame::decode::<T>(&frame::encode(&value), FRAME_BYTES_MAX_DEFAULT)
            .expect("a decoded frame re-encodes to a decodable frame");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = frame::Header::decode(data, FRAME_BYTES_MAX_DEFAULT);
    check::<Request>(data);
    check::<Reply>(data);
    check::<ErrorReply>(data);
    check::<SubscribeRequest>(data);
    check::<Notice>(data);
});
