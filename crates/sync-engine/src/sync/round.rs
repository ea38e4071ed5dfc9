//! The order of one one-shot sync of a link, sans-IO: catch up; when the catch-up
//! stopped (a gap, a missing dependency), reconcile and catch up again; push; reconcile
//! when due, and compare roots anyway when that is cheap.
//!
//! [`Round::poll`] says which operation runs next ([`RoundStep`]); the driver in
//! [`run`](super::run) runs it and reports how it ended. What each operation changes in
//! the link's state goes through [`link_news::apply`](crate::link_news::apply), the
//! same code the [`LinkMachine`](crate::machine::LinkMachine) applies, so a link's
//! status and counters are the same whichever drove it.

use sync_types::{LinkState, ProgressToken};

#[cfg(doc)]
use sync_types::Gap;

/// What a one-shot round does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RoundStep {
    /// Catch up from the stored pull checkpoint; answer with
    /// [`Round::caught_up`].
    CatchUp,
    /// Reconcile; answer with [`Round::reconciled`].
    Reconcile,
    /// Move the pull checkpoint to this position (the gap's newest entry): a reconcile
    /// converged after a gap, so everything up to it is here. No answer needed.
    ResumePullAt(Option<ProgressToken>),
    /// Push from the stored push checkpoint; answer with [`Round::pushed`].
    Push,
    /// The round is over.
    Done,
}

/// How a catch-up ended, as the round needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CatchUpEnd {
    /// It reached the head or its page budget.
    Read,
    /// The remote cannot serve the cursor; its newest entry, where the log resumes
    /// after a reconcile ([`Gap::latest_available`]).
    Gap(Option<ProgressToken>),
    /// An entry did not settle (a dependency the log cannot give).
    Unsettled,
}

/// Whether a link is due a full reconcile in a one-shot round: it never synced, it is
/// marked `needs_reconcile`, or its integrity interval has passed since the last
/// reconcile (`None`: none in this process).
pub(crate) fn reconcile_due(
    state: &LinkState,
    last_reconcile_ms: Option<u64>,
    now_ms: u64,
    integrity_check_ms: u64,
) -> bool {
    state.last_sync_ms.is_none()
        || state.needs_reconcile
        || last_reconcile_ms.is_none_or(|t| now_ms.saturating_sub(t) >= integrity_check_ms)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    CatchingUp {
        again: bool,
    },
    /// Reconcile after a stopped catch-up (with where the log resumes, when it was a
    /// gap).
    Repair(Option<Option<ProgressToken>>),
    Repairing(Option<Option<ProgressToken>>),
    Resume(Option<ProgressToken>),
    CatchUpAgain,
    Push,
    Pushing,
    Final,
    Reconciling,
    Done,
}

/// One one-shot sync of a link. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Round {
    phase: Phase,
    /// Comparing roots is cheap for this link (cached roots of a full or protocol
    /// scope), so the round ends with one even when no reconcile is due.
    roots_cheap: bool,
}

impl Round {
    /// A round; `roots_cheap`: see the field.
    pub(crate) fn new(roots_cheap: bool) -> Self {
        Self {
            phase: Phase::Start,
            roots_cheap,
        }
    }

    /// The next operation.
    pub(crate) fn poll(&mut self) -> RoundStep {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Start => {
                self.phase = Phase::CatchingUp { again: false };
                RoundStep::CatchUp
            }
            Phase::Repair(gap) => {
                self.phase = Phase::Repairing(gap);
                RoundStep::Reconcile
            }
            Phase::Resume(token) => {
                self.phase = Phase::CatchUpAgain;
                RoundStep::ResumePullAt(token)
            }
            Phase::CatchUpAgain => {
                self.phase = Phase::CatchingUp { again: true };
                RoundStep::CatchUp
            }
            Phase::Push => {
                self.phase = Phase::Pushing;
                RoundStep::Push
            }
            Phase::Final => {
                self.phase = Phase::Reconciling;
                RoundStep::Reconcile
            }
            Phase::Done => RoundStep::Done,
            phase => {
                debug_assert!(false, "poll while waiting for an answer: {phase:?}");
                self.phase = phase;
                RoundStep::Done
            }
        }
    }

    /// The catch-up ended so.
    pub(crate) fn caught_up(&mut self, end: CatchUpEnd) {
        self.phase = match (std::mem::replace(&mut self.phase, Phase::Done), end) {
            // The tree diff finds what the log cannot give, then the log resumes.
            (Phase::CatchingUp { again: false }, CatchUpEnd::Gap(resume)) => {
                Phase::Repair(Some(resume))
            }
            (Phase::CatchingUp { again: false }, CatchUpEnd::Unsettled) => Phase::Repair(None),
            // A second stop is left to the next round (the link is marked).
            (Phase::CatchingUp { .. }, _) => Phase::Push,
            (phase, _) => {
                debug_assert!(false, "a catch-up result while {phase:?}");
                phase
            }
        };
    }

    /// The push ended; `due` is [`reconcile_due`] over the link's state now.
    pub(crate) fn pushed(&mut self, due: bool) {
        debug_assert_eq!(self.phase, Phase::Pushing);
        self.phase = if due || self.roots_cheap {
            Phase::Final
        } else {
            Phase::Done
        };
    }

    /// A reconcile ended; `converged`: the roots were equal afterwards.
    pub(crate) fn reconciled(&mut self, converged: bool) {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Repairing(Some(resume)) if converged => Phase::Resume(resume),
            Phase::Repairing(_) => Phase::CatchUpAgain,
            Phase::Reconciling => Phase::Done,
            phase => {
                debug_assert!(false, "a reconcile result while {phase:?}");
                phase
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_types::{Authorization, Cid, Endpoint, Scope, StreamId, TenantId};

    fn token(position: u8) -> ProgressToken {
        ProgressToken {
            stream_id: StreamId::from_bytes([7; 16]),
            epoch: 1,
            position: u64::from(position),
            cid: Cid::from_bytes([position; 32]),
        }
    }

    fn gap() -> CatchUpEnd {
        CatchUpEnd::Gap(Some(token(90)))
    }

    /// Drives a round, answering each step from the script, and returns the steps.
    fn run(
        roots_cheap: bool,
        mut catch_ups: Vec<CatchUpEnd>,
        converged: bool,
        due: bool,
    ) -> Vec<RoundStep> {
        catch_ups.reverse();
        let mut round = Round::new(roots_cheap);
        let mut steps = Vec::new();
        loop {
            let step = round.poll();
            steps.push(step.clone());
            match step {
                RoundStep::CatchUp => round.caught_up(catch_ups.pop().unwrap_or(CatchUpEnd::Read)),
                RoundStep::Reconcile => round.reconciled(converged),
                RoundStep::ResumePullAt(_) => {}
                RoundStep::Push => round.pushed(due),
                RoundStep::Done => return steps,
            }
            assert!(steps.len() < 20, "the round does not end: {steps:?}");
        }
    }

    #[test]
    fn a_quiet_round_catches_up_and_pushes_and_compares_roots_only_when_cheap() {
        use RoundStep::*;
        assert_eq!(run(false, vec![], true, false), vec![CatchUp, Push, Done]);
        assert_eq!(
            run(true, vec![], true, false),
            vec![CatchUp, Push, Reconcile, Done]
        );
        assert_eq!(
            run(false, vec![], true, true),
            vec![CatchUp, Push, Reconcile, Done],
            "a due reconcile runs whatever the scope"
        );
    }

    #[test]
    fn a_gap_is_reconciled_then_the_log_resumes_at_its_newest_entry() {
        use RoundStep::*;
        assert_eq!(
            run(false, vec![gap()], true, false),
            vec![
                CatchUp,
                Reconcile,
                ResumePullAt(Some(token(90))),
                CatchUp,
                Push,
                Done
            ]
        );
    }

    #[test]
    fn a_gap_that_did_not_converge_keeps_the_checkpoint() {
        use RoundStep::*;
        assert_eq!(
            run(false, vec![gap()], false, false),
            vec![CatchUp, Reconcile, CatchUp, Push, Done]
        );
    }

    #[test]
    fn a_second_stop_is_left_to_the_next_round() {
        use RoundStep::*;
        assert_eq!(
            run(
                false,
                vec![CatchUpEnd::Unsettled, CatchUpEnd::Unsettled],
                true,
                true
            ),
            vec![CatchUp, Reconcile, CatchUp, Push, Reconcile, Done]
        );
    }

    #[test]
    fn a_reconcile_is_due_on_first_sync_when_marked_and_after_the_interval() {
        let mut state = LinkState::new(
            TenantId::new("did:example:t").unwrap(),
            Endpoint::new("http://node.example:1").unwrap(),
            Scope::Full,
            Authorization::Owner,
        );
        assert!(
            reconcile_due(&state, Some(1_000), 1_000, 60_000),
            "never synced"
        );
        state.last_sync_ms = Some(500);
        assert!(!reconcile_due(&state, Some(1_000), 60_999, 60_000));
        assert!(
            reconcile_due(&state, Some(1_000), 61_000, 60_000),
            "interval passed"
        );
        assert!(
            reconcile_due(&state, None, 1_000, 60_000),
            "none in this process"
        );
        state.needs_reconcile = true;
        assert!(reconcile_due(&state, Some(1_000), 1_000, 60_000), "marked");
    }
}
