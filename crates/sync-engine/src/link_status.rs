//! What a one-shot sync ([`crate::Engine::sync_link`], [`crate::Engine::sync_once`])
//! leaves in a link's status.
//!
//! The live driver owns a link's status while it runs; a link synced only by one-shot
//! syncs would otherwise keep whatever it was last given: `initializing` forever, or
//! `repairing` after a watch saw a fault, so health stayed unhealthy although every
//! sync converged. A one-shot sync that ended with equal roots is evidence the link is
//! healthy, and it is a poll, so it leaves the link `polling`, walking only
//! transitions [`LinkStatus::can_transition`] allows. A sync that failed, or did not
//! compare roots, changes nothing. `live` is left to the live driver that set it, and
//! `paused` and `terminal_incomplete` need an explicit act to leave.

use sync_types::LinkStatus;

/// The statuses a link passes through, in order, after a one-shot sync that converged,
/// starting from `from`; empty when it keeps its status.
pub(crate) fn after_converged_sync(from: LinkStatus) -> &'static [LinkStatus] {
    use LinkStatus::*;
    match from {
        Initializing | Opening | Repairing => &[Polling],
        // A degraded link heals through repairing, as the table has it.
        DegradedPoll => &[Repairing, Polling],
        Live | Polling | Paused | TerminalIncomplete => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_converged_sync_walks_allowed_transitions_to_a_healthy_status() {
        for from in LinkStatus::ALL {
            let path = after_converged_sync(from);
            let mut at = from;
            for &to in path {
                assert!(at.can_transition(to), "{at} -> {to} is not in the table");
                at = to;
            }
            match from {
                LinkStatus::Paused | LinkStatus::TerminalIncomplete | LinkStatus::Live => {
                    assert!(path.is_empty(), "{from} is left alone");
                }
                _ => assert_eq!(at, LinkStatus::Polling, "from {from}"),
            }
            if from != LinkStatus::TerminalIncomplete {
                assert!(!at.is_unhealthy(), "{from} ends {at}");
            }
        }
    }
}
