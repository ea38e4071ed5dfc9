//! Arbitrary bytes through the frame decoders (no network code: sync-transport is built
//! without its `net` feature). Decoding must return an error or a value within limits,
//! never panic, and a value that decodes must re-encode to a frame that decodes to it,
//! in version 1 and, where the value has one, in the dense form of version 2 (whose
//! decoder, `sync_transport::dense`, rebuilds messages from name tables and indices).
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
        if let Some(dense) = frame::encode_dense(&value) {
            let again = frame::decode::<T>(&dense, FRAME_BYTES_MAX_DEFAULT)
                .expect("a decoded value re-encodes to a decodable dense frame");
            assert_eq!(again, value);
        }
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
