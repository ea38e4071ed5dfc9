//! Hostile but well-framed write batches through a whole node (transport checks, the
//! node's handler, the replica's apply): nothing outside the sender's grant is ever
//! stored. The same checks run as the fuzz target `node_write_batch`, which includes
//! `hostile_batch_support`. Failing cases are kept in `hostile_batch.proptest-regressions`
//! and replayed first (one found the authorship hole F7 before it was closed), as are
//! fuzz crashes, copied there as inputs.

mod hostile_batch_support;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn nothing_outside_the_grant_is_stored(input in proptest::collection::vec(any::<u8>(), 0..160)) {
        if let Err(e) = hostile_batch_support::run(&input) {
            prop_assert!(false, "{}", e);
        }
    }
}
