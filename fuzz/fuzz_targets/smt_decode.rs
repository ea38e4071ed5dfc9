//! Fuzz the `sync-smt` wire: arbitrary bytes into both message decoders, arbitrary
//! requests into a responder, arbitrary responses into an initiator mid-session. Every
//! input must end in `Ok` or `Err`, never a panic, an abort or unbounded memory.
//!
//! Run with `cd fuzz && cargo fuzz run smt_decode`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sync_smt::{
    Config, Initiator, Limits, PROTOCOL_VERSION, Request, Responder, Response, Step, Tree,
};

fn trees() -> &'static (Tree, Tree) {
    static TREES: OnceLock<(Tree, Tree)> = OnceLock::new();
    TREES.get_or_init(|| {
        let keys: Vec<[u8; 32]> = (0u32..3000).map(|i| *blake3_like(i)).collect();
        (
            Tree::from_keys(keys[..2500].iter().copied()),
            Tree::from_keys(keys[400..].iter().copied()),
        )
    })
}

/// Spread keys without a hash dependency: a multiplicative scramble of the index.
fn blake3_like(i: u32) -> Box<[u8; 32]> {
    let mut k = [0u8; 32];
    let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in k.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    Box::new(k)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        message_bytes_max: 1 << 20,
        queries_max: 1 << 12,
    };
    let (a, b) = trees();
    let mut framed = Vec::with_capacity(rest.len() + 1);
    framed.push(PROTOCOL_VERSION);
    framed.extend_from_slice(rest);
    match mode % 4 {
        0 => {
            let _ = Request::decode(rest, &limits);
            let _ = Response::decode(rest, &limits);
        }
        1 => {
            let _ = Responder::new(limits).respond_bytes(b, &framed);
        }
        2 => {
            // A forged response to the first request of a session.
            let config = Config {
                limits,
                params: sync_smt::Params {
                    resolve_keys_max: 64,
                    ..Default::default()
                },
                ..Config::default()
            };
            if let Ok((mut session, _)) = Initiator::start(a, config, [3; 16]) {
                let _ = session.handle_bytes(a, &framed);
            }
        }
        _ => {
            // A forged response after one honest round, when splits and digests are open.
            let config = Config {
                limits,
                params: sync_smt::Params {
                    resolve_keys_max: 64,
                    ..Default::default()
                },
                ..Config::default()
            };
            let responder = Responder::new(limits);
            if let Ok((mut session, request)) = Initiator::start(a, config, [3; 16]) {
                if let Ok(reply) = responder.respond(b, &request) {
                    if let Ok(Step::Send(_)) = session.handle(a, reply) {
                        let _ = session.handle_bytes(a, &framed);
                    }
                }
            }
        }
    }
});
