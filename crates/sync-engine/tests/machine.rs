//! The link state machine, driven by hand: every status change, checkpoint rule, retry
//! schedule and staleness guard that `machine` documents.

use sync_engine::machine::*;
use sync_types::*;

fn token(position: u64) -> ProgressToken {
    ProgressToken {
        stream_id: StreamId::from_bytes([7; 16]),
        epoch: 1,
        position,
        cid: Cid::from_bytes([position.to_le_bytes()[0]; 32]),
    }
}

fn local(position: u64) -> ProgressToken {
    ProgressToken {
        stream_id: StreamId::from_bytes([9; 16]),
        epoch: 1,
        position,
        cid: Cid::from_bytes([0; 32]),
    }
}

fn link(scope: Scope) -> LinkState {
    LinkState::new(
        TenantId::new("alice").unwrap(),
        Endpoint::new("http://127.0.0.1:1").unwrap(),
        scope,
        Authorization::Owner,
    )
}

/// Every action the machine has queued, checked for persist-before-announce on the way.
fn drain(m: &mut LinkMachine) -> Vec<Action> {
    let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
    announced_after_persisted(&actions);
    actions
}

/// The machine's promise (and `SyncEvent`'s): an event that reports durable state is
/// emitted after a `Persist` that holds that state. Checked on every drain of every test
/// here, so each path that announces is covered, not one.
fn announced_after_persisted(actions: &[Action]) {
    let mut persisted: Vec<&LinkState> = Vec::new();
    for a in actions {
        match a {
            Action::Persist(s) => persisted.push(s),
            Action::Emit(e) => {
                let held = |f: &dyn Fn(&LinkState) -> bool| persisted.iter().any(|s| f(s));
                let ok = match e {
                    SyncEvent::LinkStatusChanged { to, .. } => held(&|s| s.status == *to),
                    SyncEvent::ConnectivityChanged { to, .. } => held(&|s| s.connectivity == *to),
                    SyncEvent::CheckpointAdvanced {
                        direction, token, ..
                    } => held(&|s| {
                        let cp = match direction {
                            Direction::Pull => &s.pull,
                            Direction::Push => &s.push,
                        };
                        cp.contiguous_applied == Some(*token)
                    }),
                    SyncEvent::ReconcileNeeded { .. } => held(&|s| s.needs_reconcile),
                    _ => true,
                };
                assert!(
                    ok,
                    "{e:?} announced before a Persist holding it: {actions:#?}"
                );
            }
            _ => {}
        }
    }
}

fn events(actions: &[Action]) -> Vec<SyncEvent> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::Emit(e) = a {
                Some(e.clone())
            } else {
                None
            }
        })
        .collect()
}

fn statuses(actions: &[Action]) -> Vec<(LinkStatus, LinkStatus)> {
    events(actions)
        .into_iter()
        .filter_map(|e| {
            if let SyncEvent::LinkStatusChanged { from, to, .. } = e {
                Some((from, to))
            } else {
                None
            }
        })
        .collect()
}

fn subscription(actions: &[Action]) -> (SubscriptionId, Option<ProgressToken>) {
    actions
        .iter()
        .find_map(|a| {
            if let Action::OpenSubscription { id, from } = a {
                Some((*id, *from))
            } else {
                None
            }
        })
        .expect("an OpenSubscription action")
}

fn reconcile(actions: &[Action]) -> Ticket {
    actions
        .iter()
        .find_map(|a| {
            if let Action::Reconcile { ticket } = a {
                Some(*ticket)
            } else {
                None
            }
        })
        .expect("a Reconcile action")
}

fn push(actions: &[Action]) -> (Ticket, Option<ProgressToken>) {
    actions
        .iter()
        .find_map(|a| {
            if let Action::Push { ticket, after } = a {
                Some((*ticket, *after))
            } else {
                None
            }
        })
        .expect("a Push action")
}

fn armed(actions: &[Action], timer: Timer) -> Option<u64> {
    actions.iter().rev().find_map(|a| match a {
        Action::ArmTimer { timer: t, at_ms } if *t == timer => Some(*at_ms),
        _ => None,
    })
}

fn persisted(actions: &[Action]) -> Option<LinkState> {
    actions.iter().rev().find_map(|a| {
        if let Action::Persist(s) = a {
            Some((**s).clone())
        } else {
            None
        }
    })
}

/// A live link that has synced once before (so no first-sync reconcile), started and
/// past end-of-stored-events.
fn live_machine() -> (LinkMachine, SubscriptionId) {
    live_machine_with(LinkConfig::default())
}

fn live_machine_with(config: LinkConfig) -> (LinkMachine, SubscriptionId) {
    let mut state = link(Scope::Full);
    state.last_sync_ms = Some(1);
    state.pull.commit(token(10));
    state.status = LinkStatus::Live;
    let mut m = LinkMachine::new(state, config);
    assert_eq!(
        m.state().status,
        LinkStatus::Opening,
        "a loaded link starts in opening"
    );
    m.handle_start(0);
    let actions = drain(&mut m);
    let (sub, from) = subscription(&actions);
    assert_eq!(
        from,
        Some(token(10)),
        "the subscription resumes from the pull checkpoint"
    );
    m.handle_eose(1, sub, Some(token(10)));
    let actions = drain(&mut m);
    assert_eq!(
        statuses(&actions),
        vec![(LinkStatus::Opening, LinkStatus::Live)]
    );
    (m, sub)
}

#[test]
fn first_start_opens_the_subscription_and_reconciles() {
    let mut m = LinkMachine::new(link(Scope::Full), LinkConfig::default());
    m.set_local_head(Some(local(3)));
    m.handle_start(0);
    let actions = drain(&mut m);
    let (_, from) = subscription(&actions);
    assert_eq!(from, None);
    reconcile(&actions);
    assert_eq!(
        push(&actions).1,
        None,
        "pending local writes are pushed from the start"
    );
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        SyncEvent::ReconcileNeeded {
            reason: ReconcileReason::FirstSync,
            ..
        }
    )));
    assert!(
        persisted(&actions).unwrap().needs_reconcile,
        "the reconcile need is durable"
    );
}

#[test]
fn catch_up_events_are_committed_while_opening() {
    // Events replayed before the subscription reports open must be
    // committed, not only applied.
    let mut state = link(Scope::Full);
    state.last_sync_ms = Some(1);
    state.status = LinkStatus::Repairing;
    let mut m = LinkMachine::new(state, LinkConfig::default());
    assert_eq!(m.state().status, LinkStatus::Opening);
    m.handle_start(0);
    let (sub, _) = subscription(&drain(&mut m));
    let EventDecision::Apply(o) = m.handle_event(1, sub, token(1), EventClass::Apply) else {
        panic!("must apply")
    };
    m.handle_applied(2, sub, o, Ok(()));
    let actions = drain(&mut m);
    assert_eq!(
        persisted(&actions).unwrap().pull.contiguous_applied,
        Some(token(1))
    );
    // Persist comes before the event that announces it.
    let persist_at = actions
        .iter()
        .position(|a| matches!(a, Action::Persist(_)))
        .unwrap();
    let emit_at = actions
        .iter()
        .position(|a| matches!(a, Action::Emit(SyncEvent::CheckpointAdvanced { .. })))
        .unwrap();
    assert!(persist_at < emit_at);
}

#[test]
fn the_pull_checkpoint_advances_only_over_contiguous_applied_deliveries() {
    let (mut m, sub) = live_machine();
    let decide = |m: &mut LinkMachine, p| match m.handle_event(5, sub, token(p), EventClass::Apply)
    {
        EventDecision::Apply(o) => o,
        other => panic!("expected apply, got {other:?}"),
    };
    let a = decide(&mut m, 11);
    assert_eq!(
        m.handle_event(5, sub, token(12), EventClass::Skip),
        EventDecision::Skip
    );
    let c = decide(&mut m, 13);
    m.handle_applied(6, sub, c, Ok(()));
    assert_eq!(
        m.state().pull.contiguous_applied,
        Some(token(10)),
        "11 is still in flight"
    );
    m.handle_applied(7, sub, a, Ok(()));
    assert_eq!(m.state().pull.contiguous_applied, Some(token(13)));
}

#[test]
fn a_failed_apply_sends_the_link_to_repair_without_moving_the_checkpoint() {
    let (mut m, sub) = live_machine();
    let EventDecision::Apply(o) = m.handle_event(5, sub, token(11), EventClass::Apply) else {
        panic!()
    };
    m.handle_applied(6, sub, o, Err("disk full".into()));
    let actions = drain(&mut m);
    assert_eq!(
        statuses(&actions),
        vec![(LinkStatus::Live, LinkStatus::Repairing)]
    );
    assert!(actions.contains(&Action::CloseSubscription));
    reconcile(&actions);
    assert_eq!(m.state().pull.contiguous_applied, Some(token(10)));
    // The old subscription's late inputs are ignored.
    assert_eq!(
        m.handle_event(7, sub, token(12), EventClass::Apply),
        EventDecision::Ignore
    );
}

#[test]
fn too_many_deliveries_in_flight_send_the_link_to_repair() {
    let config = LinkConfig {
        in_flight_deliveries_max: 3,
        ..LinkConfig::default()
    };
    let mut state = link(Scope::Full);
    state.last_sync_ms = Some(1);
    let mut m = LinkMachine::new(state, config);
    m.handle_start(0);
    let (sub, _) = subscription(&drain(&mut m));
    for p in 1..=3 {
        assert!(matches!(
            m.handle_event(1, sub, token(p), EventClass::Apply),
            EventDecision::Apply(_)
        ));
    }
    assert_eq!(
        m.handle_event(1, sub, token(4), EventClass::Apply),
        EventDecision::Ignore
    );
    assert_eq!(m.state().status, LinkStatus::Repairing);
}

#[test]
fn tokens_from_another_stream_or_epoch_and_unknown_events_repair() {
    let (mut m, sub) = live_machine();
    let foreign = ProgressToken {
        epoch: 2,
        ..token(11)
    };
    assert_eq!(
        m.handle_event(2, sub, foreign, EventClass::Apply),
        EventDecision::Ignore
    );
    assert_eq!(m.state().status, LinkStatus::Repairing);

    let (mut m, sub) = live_machine();
    assert_eq!(
        m.handle_event(2, sub, token(11), EventClass::Unknown),
        EventDecision::Ignore
    );
    assert_eq!(m.state().status, LinkStatus::Repairing);
    assert!(m.state().needs_reconcile);
}

#[test]
fn a_gap_repairs_by_reconcile_reopen_and_a_second_reconcile() {
    let (mut m, sub) = live_machine();
    let gap = Gap {
        requested: token(10),
        oldest_available: Some(token(50)),
        latest_available: Some(token(90)),
        reason: GapReason::TooOld,
    };
    m.handle_subscription_end(3, sub, SubscriptionEnd::Gap(gap));
    let actions = drain(&mut m);
    assert!(
        events(&actions)
            .iter()
            .any(|e| matches!(e, SyncEvent::GapDetected { .. }))
    );
    assert!(
        events(&actions)
            .iter()
            .any(|e| matches!(e, SyncEvent::RepairStarted { attempt: 1, .. }))
    );
    let t = reconcile(&actions);
    m.handle_reconcile_result(4, t, ReconcileResult::Done { converged: true });
    let actions = drain(&mut m);
    let (sub2, from) = subscription(&actions);
    assert_eq!(
        from,
        Some(token(90)),
        "reopens from the gap's latest available token"
    );
    assert_eq!(
        persisted(&actions).unwrap().pull.contiguous_applied,
        Some(token(90))
    );
    assert_eq!(
        m.state().status,
        LinkStatus::Repairing,
        "not live until the window is closed"
    );
    m.handle_eose(5, sub2, Some(token(91)));
    let t2 = reconcile(&drain(&mut m));
    m.handle_reconcile_result(6, t2, ReconcileResult::Done { converged: true });
    let actions = drain(&mut m);
    assert_eq!(
        statuses(&actions),
        vec![(LinkStatus::Repairing, LinkStatus::Live)]
    );
    assert!(
        events(&actions)
            .iter()
            .any(|e| matches!(e, SyncEvent::RepairCompleted { .. }))
    );
}

/// Under steady writes on either side the roots after a diff never match: the closing
/// reconcile still exchanged what each side lacked and the reopened subscription is
/// live, so the repair ends there (live, subscription kept, reconcile again later)
/// instead of failing, retrying and degrading to polling without a subscription.
#[test]
fn a_repair_ends_live_when_writes_keep_the_roots_apart() {
    let (mut m, sub) = live_machine();
    m.handle_subscription_end(3, sub, SubscriptionEnd::Error("node error".into()));
    let t = reconcile(&drain(&mut m));
    m.handle_reconcile_result(4, t, ReconcileResult::Done { converged: false });
    let (sub2, _) = subscription(&drain(&mut m));
    m.handle_eose(5, sub2, Some(token(20)));
    let t2 = reconcile(&drain(&mut m));
    m.handle_reconcile_result(6, t2, ReconcileResult::Done { converged: false });
    let actions = drain(&mut m);
    assert_eq!(
        statuses(&actions),
        vec![(LinkStatus::Repairing, LinkStatus::Live)]
    );
    let evs = events(&actions);
    assert!(
        evs.iter()
            .any(|e| matches!(e, SyncEvent::RepairCompleted { .. })),
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, SyncEvent::RepairFailed { .. })),
        "{evs:?}"
    );
    assert!(
        !actions.iter().any(|a| matches!(
            a,
            Action::CloseSubscription | Action::OpenSubscription { .. }
        )),
        "the live subscription stays: {actions:?}"
    );
    assert!(
        m.state().needs_reconcile,
        "the roots are not proven equal yet"
    );
    let at = armed(&actions, Timer::Reconcile).expect("a reconcile again later");
    assert_eq!(m.state().connectivity, Connectivity::Online);

    // Live events keep flowing on the same subscription.
    assert!(matches!(
        m.handle_event(at - 1, sub2, token(21), EventClass::Apply),
        EventDecision::Apply(_)
    ));
    // The next reconcile that converges clears the mark.
    m.handle_timer(at, Timer::Reconcile);
    let t3 = reconcile(&drain(&mut m));
    m.handle_reconcile_result(at + 1, t3, ReconcileResult::Done { converged: true });
    drain(&mut m);
    assert!(!m.state().needs_reconcile);
    assert_eq!(m.state().status, LinkStatus::Live);
}

#[test]
fn repeated_repair_failures_back_off_then_degrade_then_heal() {
    let (mut m, sub) = live_machine();
    m.handle_subscription_end(0, sub, SubscriptionEnd::Error("grant revoked".into()));
    let mut t = reconcile(&drain(&mut m));
    let mut now = 0;
    for (attempt, backoff) in [(1u32, 1_000u64), (2, 3_000)] {
        m.handle_reconcile_result(now, t, ReconcileResult::Failed("unreachable".into()));
        let actions = drain(&mut m);
        assert!(
            events(&actions)
                .iter()
                .any(|e| matches!(e, SyncEvent::RepairFailed { attempt: a, .. } if *a == attempt))
        );
        let at = armed(&actions, Timer::RepairRetry).unwrap();
        // The backoff, jittered over [d/2, 3d/2).
        assert!(
            (now + backoff / 2..now + backoff * 3 / 2).contains(&at),
            "{backoff} jittered, got {}",
            at - now
        );
        now = at;
        m.handle_timer(now, Timer::RepairRetry);
        t = reconcile(&drain(&mut m));
    }
    m.handle_reconcile_result(now, t, ReconcileResult::Failed("unreachable".into()));
    let actions = drain(&mut m);
    assert_eq!(
        statuses(&actions),
        vec![(LinkStatus::Repairing, LinkStatus::DegradedPoll)]
    );
    assert!(
        events(&actions)
            .iter()
            .any(|e| matches!(e, SyncEvent::DegradedPollEntered { .. }))
    );
    let tick = armed(&actions, Timer::DegradedPoll).unwrap();
    assert!(
        (now + 15_000..now + 30_000).contains(&tick),
        "15 to 30 s with jitter, got {}",
        tick - now
    );

    // A failing degraded tick goes back to degraded polling; a succeeding one heals.
    m.handle_timer(tick, Timer::DegradedPoll);
    let t = reconcile(&drain(&mut m));
    m.handle_reconcile_result(tick, t, ReconcileResult::Failed("still down".into()));
    let actions = drain(&mut m);
    assert_eq!(m.state().status, LinkStatus::DegradedPoll);
    let tick = armed(&actions, Timer::DegradedPoll).unwrap();
    m.handle_timer(tick, Timer::DegradedPoll);
    let t = reconcile(&drain(&mut m));
    m.handle_reconcile_result(tick, t, ReconcileResult::Done { converged: true });
    let (sub, _) = subscription(&drain(&mut m));
    m.handle_eose(tick, sub, Some(token(10)));
    let t = reconcile(&drain(&mut m));
    m.handle_reconcile_result(tick, t, ReconcileResult::Done { converged: true });
    assert_eq!(m.state().status, LinkStatus::Live);
}

#[test]
fn a_write_during_a_push_is_flushed_as_soon_as_the_push_settles() {
    let (mut m, _) = live_machine();
    m.handle_local_write(100, local(1));
    let (t1, _) = push(&drain(&mut m));
    m.handle_local_write(101, local(2));
    assert!(
        drain(&mut m)
            .iter()
            .all(|a| !matches!(a, Action::Push { .. }))
    );
    m.handle_push_result(
        105,
        t1,
        PushResult::Settled {
            upto: Some(local(1)),
        },
    );
    let actions = drain(&mut m);
    assert_eq!(
        push(&actions).1,
        Some(local(1)),
        "no batch window for a single write"
    );
    assert_eq!(armed(&actions, Timer::PushBatch), None);
}

/// Messages pulled from the endpoint while a push runs land in the local log behind it;
/// once the push settles the machine pushes over them (the push skips echoes), so the
/// push checkpoint reaches the local head and nothing is left counted as pending.
#[test]
fn echoes_during_a_push_leave_nothing_pending_once_it_settles() {
    let (mut m, _) = live_machine();
    m.handle_local_write(100, local(1));
    let (t1, _) = push(&drain(&mut m));
    m.handle_echo(101, local(2));
    m.handle_echo(102, local(3));
    assert!(
        drain(&mut m)
            .iter()
            .all(|a| !matches!(a, Action::Push { .. })),
        "no second push while one is in flight"
    );
    m.handle_push_result(
        105,
        t1,
        PushResult::Settled {
            upto: Some(local(1)),
        },
    );
    let (t2, after) = push(&drain(&mut m));
    assert_eq!(
        after,
        Some(local(1)),
        "the next push starts after the first"
    );
    m.handle_push_result(
        110,
        t2,
        PushResult::Settled {
            upto: Some(local(3)),
        },
    );
    let actions = drain(&mut m);
    assert_eq!(m.state().push.contiguous_applied, Some(local(3)));
    assert!(actions.iter().all(|a| !matches!(a, Action::Push { .. })));
    // An echo that directly follows a quiet link is passed at once, with no push.
    m.handle_echo(120, local(4));
    assert!(
        drain(&mut m)
            .iter()
            .all(|a| !matches!(a, Action::Push { .. }))
    );
    assert_eq!(m.state().push.contiguous_applied, Some(local(4)));
}

#[test]
fn push_is_immediate_when_idle_and_batched_only_during_a_burst() {
    // Two writes during a push make a burst here; the default is 32.
    let (mut m, _) = live_machine_with(LinkConfig {
        push_burst_writes_min: 2,
        ..LinkConfig::default()
    });
    m.handle_local_write(100, local(1));
    let (t1, after) = push(&drain(&mut m));
    assert_eq!(after, None);
    m.handle_local_write(101, local(2));
    m.handle_local_write(102, local(3));
    assert!(
        drain(&mut m)
            .iter()
            .all(|a| !matches!(a, Action::Push { .. })),
        "no second push while one is in flight"
    );
    m.handle_push_result(
        110,
        t1,
        PushResult::Settled {
            upto: Some(local(1)),
        },
    );
    let actions = drain(&mut m);
    assert_eq!(
        persisted(&actions).unwrap().push.contiguous_applied,
        Some(local(1))
    );
    assert_eq!(
        armed(&actions, Timer::PushBatch),
        Some(210),
        "a 100 ms batch window after a busy push"
    );
    m.handle_timer(210, Timer::PushBatch);
    let (t2, after) = push(&drain(&mut m));
    assert_eq!(after, Some(local(1)));
    m.handle_push_result(
        220,
        t2,
        PushResult::Settled {
            upto: Some(local(3)),
        },
    );
    assert!(drain(&mut m).iter().all(|a| !matches!(
        a,
        Action::Push { .. }
            | Action::ArmTimer {
                timer: Timer::PushBatch,
                ..
            }
    )));
    assert!(
        m.is_caught_up(),
        "everything pushed, and the head seen at end-of-stored-events applied"
    );
}

/// Pushes are retried inside the operation (the engine's one schedule); a push that
/// still fails marks the link for a reconcile, and the machine does not retry it itself.
#[test]
fn a_failed_push_marks_the_link_for_reconcile() {
    let (mut m, _) = live_machine();
    m.handle_local_write(0, local(1));
    let (t, _) = push(&drain(&mut m));
    let now = 0;
    m.handle_push_result(now, t, PushResult::Failed("connection refused".into()));
    let actions = drain(&mut m);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Push { .. })),
        "no retry of its own"
    );
    assert!(persisted(&actions).unwrap().needs_reconcile);
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        SyncEvent::ReconcileNeeded {
            reason: ReconcileReason::PushRetryExhausted,
            ..
        }
    )));
    let at = armed(&actions, Timer::Reconcile).unwrap();
    m.handle_timer(at, Timer::Reconcile);
    let t = reconcile(&drain(&mut m));
    m.handle_reconcile_result(at + 1, t, ReconcileResult::Done { converged: true });
    let actions = drain(&mut m);
    assert!(!persisted(&actions).unwrap().needs_reconcile);
    assert!(
        events(&actions)
            .iter()
            .any(|e| matches!(e, SyncEvent::ReconcileCompleted { .. }))
    );
}

#[test]
fn stale_results_and_timers_are_ignored() {
    let (mut m, sub) = live_machine();
    m.handle_local_write(0, local(1));
    let (t, _) = push(&drain(&mut m));
    m.handle_push_result(
        1,
        Ticket(t.0 + 100),
        PushResult::Settled {
            upto: Some(local(1)),
        },
    );
    assert_eq!(
        m.state().push.contiguous_applied,
        None,
        "a result with another ticket changes nothing"
    );
    m.handle_timer(1, Timer::RepairRetry);
    assert!(
        drain(&mut m).is_empty(),
        "a timer that is not armed does nothing"
    );
    m.handle_stop();
    let actions = drain(&mut m);
    assert!(actions.contains(&Action::CloseSubscription));
    assert!(actions.contains(&Action::CancelTimer(Timer::IntegrityCheck)));
    m.handle_push_result(
        2,
        t,
        PushResult::Settled {
            upto: Some(local(1)),
        },
    );
    assert_eq!(
        m.state().push.contiguous_applied,
        None,
        "results after stop are ignored"
    );
    assert_eq!(
        m.handle_event(3, sub, token(11), EventClass::Apply),
        EventDecision::Ignore
    );
}

#[test]
fn a_dropped_subscription_reconnects_from_the_checkpoint_without_repair() {
    let (mut m, sub) = live_machine();
    m.handle_subscription_end(0, sub, SubscriptionEnd::Disconnected);
    let actions = drain(&mut m);
    assert_eq!(statuses(&actions), vec![]);
    let at = armed(&actions, Timer::Reconnect).unwrap();
    m.handle_timer(at, Timer::Reconnect);
    let (sub2, from) = subscription(&drain(&mut m));
    assert_ne!(sub2, sub);
    assert_eq!(from, Some(token(10)));
}

#[test]
fn poll_mode_backs_off_on_failures_up_to_a_cap() {
    let config = LinkConfig {
        mode: Mode::Poll,
        poll_interval_ms: 1_000,
        ..LinkConfig::default()
    };
    let mut state = link(Scope::Full);
    state.last_sync_ms = Some(1);
    let mut m = LinkMachine::new(state, config);
    m.handle_start(0);
    let actions = drain(&mut m);
    assert_eq!(
        statuses(&actions),
        vec![(LinkStatus::Initializing, LinkStatus::Polling)]
    );
    let mut at = armed(&actions, Timer::Poll).unwrap();
    let mut delays = Vec::new();
    for _ in 0..4 {
        m.handle_timer(at, Timer::Poll);
        let ticket = drain(&mut m)
            .iter()
            .find_map(|a| {
                if let Action::CatchUp { ticket, .. } = a {
                    Some(*ticket)
                } else {
                    None
                }
            })
            .unwrap();
        m.handle_catch_up_result(at, ticket, CatchUpResult::Failed("unreachable".into()));
        let next = armed(&drain(&mut m), Timer::Poll).unwrap();
        delays.push(next - at);
        at = next;
    }
    // Doubling up to the cap, each jittered over [d/2, 3d/2).
    for (delay, expected) in delays.iter().zip([2_000u64, 4_000, 4_000, 4_000]) {
        assert!(
            (expected / 2..expected * 3 / 2).contains(delay),
            "{expected} jittered, got {delay}"
        );
    }
    m.handle_timer(at, Timer::Poll);
    let ticket = drain(&mut m)
        .iter()
        .find_map(|a| {
            if let Action::CatchUp { ticket, .. } = a {
                Some(*ticket)
            } else {
                None
            }
        })
        .unwrap();
    m.handle_catch_up_result(
        at,
        ticket,
        CatchUpResult::Done {
            upto: Some(token(4)),
            head: Some(token(4)),
        },
    );
    let actions = drain(&mut m);
    // Back to the plain interval (jittered) after a success.
    let next = armed(&actions, Timer::Poll).unwrap();
    assert!((at + 500..at + 1_500).contains(&next), "{}", next - at);
    assert_eq!(
        persisted(&actions).unwrap().pull.contiguous_applied,
        Some(token(4))
    );
    assert!(m.is_caught_up());
}

#[test]
fn projections_poll_even_in_live_mode() {
    let scope = Scope::projection(vec![ProjectionEntry {
        protocol: ProtocolName::new("p").unwrap(),
        path_prefixes: vec![ProtocolPath::new("a").unwrap()],
        context_prefixes: vec![],
    }])
    .unwrap();
    let mut m = LinkMachine::new(link(scope), LinkConfig::default());
    m.handle_start(0);
    let actions = drain(&mut m);
    assert!(
        actions
            .iter()
            .all(|a| !matches!(a, Action::OpenSubscription { .. }))
    );
    assert_eq!(m.state().status, LinkStatus::Polling);
}

#[test]
fn terminal_links_do_nothing_more() {
    let (mut m, sub) = live_machine();
    m.handle_terminal();
    let actions = drain(&mut m);
    assert_eq!(
        statuses(&actions),
        vec![(LinkStatus::Live, LinkStatus::TerminalIncomplete)]
    );
    assert_eq!(
        m.handle_event(1, sub, token(11), EventClass::Apply),
        EventDecision::Ignore
    );
    m.handle_start(2);
    assert!(drain(&mut m).is_empty());
    let reloaded = LinkMachine::new(m.state().clone(), LinkConfig::default());
    assert_eq!(reloaded.state().status, LinkStatus::TerminalIncomplete);
}

#[test]
fn caught_up_needs_the_remote_head_and_nothing_pending() {
    let (mut m, sub) = live_machine();
    assert!(
        m.is_caught_up(),
        "checkpoint 10 equals the head 10 seen at end-of-stored-events"
    );
    m.handle_local_write(0, local(1));
    let (t, _) = push(&drain(&mut m));
    assert!(!m.is_caught_up());
    m.handle_push_result(
        1,
        t,
        PushResult::Settled {
            upto: Some(local(1)),
        },
    );
    assert!(m.is_caught_up());
    let _ = sub;
}

/// A node restarts under a fleet: 1,000 replicas' links (one config, each replica's own
/// jitter seed, as the live driver gives from its node id) lose their subscriptions at
/// the same instant. Their reconnects spread over [d/2, 3d/2) of the first backoff
/// instead of landing together; with jitter off they all land at once. The same seeds
/// give the same times again.
#[test]
fn a_fleets_reconnects_after_a_node_restart_spread_over_half_to_one_and_a_half_backoffs() {
    fn reconnects(percent: u32) -> Vec<u64> {
        (0..1_000u64)
            .map(|node_id| {
                let (mut m, sub) = live_machine_with(LinkConfig {
                    jitter_seed: node_id,
                    jitter_percent: percent,
                    ..LinkConfig::default()
                });
                m.handle_subscription_end(10_000, sub, SubscriptionEnd::Disconnected);
                armed(&drain(&mut m), Timer::Reconnect).unwrap() - 10_000
            })
            .collect()
    }
    let d = LinkConfig::default().reconnect_backoff_ms[0];
    let spread = reconnects(50);
    assert!(spread.iter().all(|t| (d / 2..d * 3 / 2).contains(t)));
    // Every tenth of the window gets a share of the fleet: 1,000 links over 10 buckets,
    // none with more than twice its fair share.
    let mut buckets = [0u32; 10];
    for t in &spread {
        let i = usize::try_from((t - d / 2) * 10 / d).unwrap();
        buckets[i] += 1;
    }
    assert!(
        buckets.iter().all(|n| (25..=200).contains(n)),
        "{buckets:?}"
    );
    assert_eq!(spread, reconnects(50));
    assert!(reconnects(0).iter().all(|t| *t == d));
}
