//! Unit tests of the push core ([`super`]), without tokio.

use super::*;
use sync_types::{
    Configure, ContextId, DataRef, Hlc, PrincipalId, ProtocolDefinition, ProtocolName,
    ProtocolPath, RecordId, StreamId, TenantId, Write,
};

fn tenant() -> TenantId {
    TenantId::new("did:example:t").unwrap()
}

fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/p").unwrap()
}

/// A write of record `n`; with `blob`, its payload is too large to travel inline.
fn write(n: u8, blob: bool) -> PushItem {
    let record_id = RecordId::from_natural_key(&tenant(), &protocol(), &[n]);
    let size = if blob { 1 << 20 } else { 10 };
    let message = Message::Write(Write {
        tenant: tenant(),
        record_id,
        parent_id: None,
        protocol: protocol(),
        path: ProtocolPath::new("note").unwrap(),
        context_id: ContextId::root(record_id),
        prev: None,
        timestamp: Hlc::ZERO,
        author: PrincipalId::new("did:example:t").unwrap(),
        data: Some(DataRef {
            data_cid: Cid::from_bytes([n; 32]),
            size,
        }),
    });
    PushItem::new(message, None)
}

fn configure() -> PushItem {
    let message = Message::Configure(Configure {
        tenant: tenant(),
        protocol: protocol(),
        definition: ProtocolDefinition {
            types: vec![],
            uses: vec![],
        },
        timestamp: Hlc::ZERO,
        author: PrincipalId::new("did:example:t").unwrap(),
    });
    PushItem::new(message, None)
}

fn cfg(schedule: &[u64], passes: usize) -> SyncConfig {
    SyncConfig {
        push_retry_backoff_ms: schedule.to_vec(),
        dependency_passes_max: passes,
        ..SyncConfig::default()
    }
}

fn missing_protocol() -> ApplyOutcome {
    ApplyOutcome::Incomplete {
        missing: vec![Dependency::Protocol(protocol())],
    }
}

fn sent(pass: &Pass, outcome: impl Fn(usize) -> ApplyOutcome) -> Vec<(usize, ApplyOutcome)> {
    pass.plain
        .iter()
        .chain(&pass.with_blob)
        .map(|&i| (i, outcome(i)))
        .collect()
}

fn expect_send(batch: &mut BatchSend) -> Pass {
    match batch.poll() {
        Step::Send(pass) => pass,
        other => panic!("expected a send, got {other:?}"),
    }
}

fn unreachable() -> TransportError {
    TransportError::Unreachable("connection refused".into())
}

#[test]
fn a_batch_the_remote_accepts_settles_in_one_send() {
    let mut batch = BatchSend::new(vec![write(1, false), write(2, false)], &cfg(&[0], 3));
    let pass = expect_send(&mut batch);
    assert_eq!(pass.plain, vec![0, 1]);
    assert!(pass.blobs.is_empty() && pass.with_blob.is_empty());
    batch.on_sent(sent(&pass, |_| ApplyOutcome::Applied));
    assert_eq!(batch.poll(), Step::Done);
    let end = batch.end();
    assert_eq!(end.settles, vec![Settle::Done, Settle::Done]);
    assert_eq!(end.delivered, 2);
    assert!(end.dead_letters.is_empty() && !end.exhausted && end.error.is_none());
}

#[test]
fn a_missing_dependency_is_supplied_and_sent_before_what_waited_for_it() {
    let mut batch = BatchSend::new(vec![write(1, false), write(2, false)], &cfg(&[0], 3));
    let pass = expect_send(&mut batch);
    batch.on_sent(sent(&pass, |i| match i {
        0 => missing_protocol(),
        _ => ApplyOutcome::Applied,
    }));
    let Step::Supply(missing) = batch.poll() else {
        panic!("expected a supply step");
    };
    assert_eq!(missing, BTreeSet::from([Dependency::Protocol(protocol())]));
    // The configure, and a message already in the batch, which is not sent again.
    batch.on_supplied(vec![configure(), write(2, false)]);
    let pass = expect_send(&mut batch);
    assert_eq!(
        pass.plain,
        vec![2, 0],
        "the dependency first, then its dependent"
    );
    assert_eq!(batch.items()[2].cid, configure().cid);
    batch.on_sent(sent(&pass, |_| ApplyOutcome::Applied));
    assert_eq!(batch.poll(), Step::Done);
    let end = batch.end();
    assert_eq!(end.settles, vec![Settle::Done, Settle::Done]);
    assert_eq!(end.dependencies_sent, 1);
    assert_eq!(
        end.delivered, 2,
        "dependencies are not counted as the batch's own"
    );
}

#[test]
fn dependency_passes_are_bounded_and_what_stays_incomplete_is_exhausted() {
    let mut batch = BatchSend::new(vec![write(1, false)], &cfg(&[0], 2));
    let pass = expect_send(&mut batch);
    batch.on_sent(sent(&pass, |_| missing_protocol()));
    assert!(matches!(batch.poll(), Step::Supply(_)));
    batch.on_supplied(vec![configure()]);
    let pass = expect_send(&mut batch);
    // The remote still misses something: the pass limit is reached, no more supply.
    batch.on_sent(sent(&pass, |i| match i {
        0 => missing_protocol(),
        _ => ApplyOutcome::Applied,
    }));
    assert_eq!(batch.poll(), Step::Done);
    let end = batch.end();
    assert_eq!(end.settles, vec![Settle::Open]);
    assert!(end.exhausted);
    assert_eq!(end.dead_letters.len(), 1);
    assert_eq!(
        end.dead_letters[0].category,
        DeadLetterCategory::PushExhausted
    );
    assert_eq!(end.dead_letters[0].code.as_deref(), Some("incomplete"));
}

#[test]
fn nothing_found_to_supply_ends_the_attempt() {
    let mut batch = BatchSend::new(vec![write(1, false)], &cfg(&[0], 5));
    let pass = expect_send(&mut batch);
    batch.on_sent(sent(&pass, |_| missing_protocol()));
    assert!(matches!(batch.poll(), Step::Supply(_)));
    batch.on_supplied(vec![]);
    assert_eq!(batch.poll(), Step::Done);
    assert_eq!(batch.end().settles, vec![Settle::Open]);
}

#[test]
fn transport_failures_retry_on_the_schedule_and_resend_only_the_unsettled() {
    let mut batch = BatchSend::new(
        vec![write(1, false), write(2, false), write(3, false)],
        &cfg(&[0, 250, 1_000], 3),
    );
    let pass = expect_send(&mut batch);
    batch.on_sent(sent(&pass, |i| match i {
        0 => ApplyOutcome::Applied,
        1 => ApplyOutcome::invalid("bad"),
        _ => ApplyOutcome::Deferred,
    }));
    assert_eq!(batch.poll(), Step::Wait(250));
    let pass = expect_send(&mut batch);
    assert_eq!(pass.plain, vec![2], "only the deferred one goes again");
    batch.on_failed(unreachable());
    assert_eq!(batch.poll(), Step::Wait(1_000));
    let pass = expect_send(&mut batch);
    assert_eq!(pass.plain, vec![2]);
    batch.on_failed(unreachable());
    assert_eq!(batch.poll(), Step::Done, "the schedule is spent");
    let end = batch.end();
    assert_eq!(
        end.settles,
        vec![Settle::Done, Settle::Failed, Settle::Open]
    );
    assert!(end.exhausted);
    assert!(matches!(end.error, Some(TransportError::Unreachable(_))));
    let categories: Vec<_> = end
        .dead_letters
        .iter()
        .map(|d| (d.index, d.category))
        .collect();
    assert_eq!(
        categories,
        vec![
            (1, DeadLetterCategory::PushPermanent),
            (2, DeadLetterCategory::PushExhausted)
        ]
    );
    assert!(end.dead_letters[1].reason.contains("after 3 attempts"));
    assert!(end.dead_letters[1].reason.contains("connection refused"));
}

#[test]
fn a_failed_attempt_forgets_the_dependencies_it_supplied() {
    let mut batch = BatchSend::new(vec![write(1, false)], &cfg(&[0, 0], 3));
    let pass = expect_send(&mut batch);
    batch.on_sent(sent(&pass, |_| missing_protocol()));
    assert!(matches!(batch.poll(), Step::Supply(_)));
    batch.on_supplied(vec![configure()]);
    let _ = expect_send(&mut batch);
    batch.on_failed(unreachable());
    // The second attempt starts from the batch alone and may supply the same
    // dependency again.
    let pass = expect_send(&mut batch);
    assert_eq!(pass.plain, vec![0]);
    assert_eq!(batch.items().len(), 1);
    batch.on_sent(sent(&pass, |_| missing_protocol()));
    assert!(matches!(batch.poll(), Step::Supply(_)));
    batch.on_supplied(vec![configure()]);
    let pass = expect_send(&mut batch);
    assert_eq!(pass.plain, vec![1, 0]);
    batch.on_sent(sent(&pass, |_| ApplyOutcome::Applied));
    assert_eq!(batch.poll(), Step::Done);
    let end = batch.end();
    assert_eq!(end.settles, vec![Settle::Done]);
    assert!(
        end.error.is_none(),
        "a later attempt that got through clears the error"
    );
    assert_eq!(end.dependencies_sent, 2);
}

#[test]
fn small_messages_go_while_blobs_upload_and_go_again_when_they_needed_one() {
    // 0 names a blob; 1 is a later version that depends on it (the remote answers
    // Incomplete while 0 is not there yet); 2 is independent.
    let mut batch = BatchSend::new(
        vec![write(1, true), write(2, false), write(3, false)],
        &cfg(&[0], 3),
    );
    let pass = expect_send(&mut batch);
    assert_eq!(pass.plain, vec![1, 2]);
    assert_eq!(pass.with_blob, vec![0]);
    assert_eq!(pass.blobs, vec![Cid::from_bytes([1; 32])]);
    batch.on_sent(sent(&pass, |i| match i {
        1 => missing_protocol(),
        _ => ApplyOutcome::Applied,
    }));
    // Sent once more, after the blob and its message are up; no supply needed.
    let again = expect_send(&mut batch);
    assert_eq!(again.plain, vec![1]);
    assert!(again.blobs.is_empty() && again.with_blob.is_empty());
    batch.on_sent(vec![(1, ApplyOutcome::Applied)]);
    assert_eq!(batch.poll(), Step::Done);
    assert_eq!(batch.end().settles, vec![Settle::Done; 3]);
}

fn token(position: u8) -> ProgressToken {
    ProgressToken {
        stream_id: StreamId::from_bytes([1; 16]),
        epoch: 1,
        position: u64::from(position),
        cid: Cid::from_bytes([position; 32]),
    }
}

#[test]
fn a_page_moves_the_checkpoint_over_what_settled_and_skipped() {
    let cfg = SyncConfig {
        push_batch_messages: 2,
        ..SyncConfig::default()
    };
    // 1: an echo (not sent); 2, 3: first batch; 4: second batch; 5: third batch.
    let entries = vec![
        (token(1), None),
        (token(2), Some(write(2, false))),
        (token(3), Some(write(3, false))),
        (token(4), Some(write(4, false))),
        (token(5), Some(write(5, false))),
    ];
    let mut page = PushPage::new(entries, Some(token(5)), &cfg);
    assert_eq!(page.next_batch().map(|b| b.len()), Some(2));
    page.batch_settled(&[Settle::Done, Settle::Failed]);
    assert_eq!(page.next_batch().map(|b| b.len()), Some(2));
    page.batch_settled(&[Settle::Open, Settle::Done]);
    assert!(
        page.next_batch().is_none(),
        "an unsettled message ends the page"
    );
    let (prefix, acked) = page.finish();
    assert_eq!(prefix.settled, 3);
    assert!(!prefix.complete);
    assert_eq!(prefix.target, Some(token(3)));
    assert_eq!(
        acked.messages, 1,
        "the refused one is settled but not delivered"
    );
    assert_eq!(acked.bytes, write(2, false).bytes);
}

#[test]
fn a_page_of_echoes_only_moves_to_its_cursor() {
    let mut page = PushPage::new(
        vec![(token(1), None), (token(2), None)],
        Some(token(9)),
        &SyncConfig::default(),
    );
    assert!(page.next_batch().is_none());
    let (prefix, acked) = page.finish();
    assert!(prefix.complete);
    assert_eq!(prefix.target, Some(token(9)));
    assert_eq!(acked, Traffic::default());
}

/// A later version of the record `write(n, false)` writes.
fn update(n: u8) -> PushItem {
    let PushItem { item, .. } = write(n, false);
    let Message::Write(mut w) = item.message else {
        unreachable!()
    };
    w.prev = Some(Cid::from_bytes([n; 32]));
    PushItem::new(Message::Write(w), None)
}

#[test]
fn a_batch_goes_ahead_only_when_it_does_not_depend_on_the_one_in_flight() {
    let c = cfg(&[0, 1], 4);
    let independent = [write(1, false), write(2, false)];
    assert!(may_send_ahead(&[write(3, false)], &independent, &c));
    // The protocol is configured by the batch in flight.
    assert!(!may_send_ahead(&[configure()], &independent, &c));
    // A later version of a record whose earlier one is in flight.
    assert!(!may_send_ahead(&[write(1, false)], &[update(1)], &c));
    assert!(may_send_ahead(&[write(2, false)], &[update(1)], &c));
    // A blob, or a first attempt that waits, keeps the batch for its turn.
    assert!(!may_send_ahead(&[write(3, false)], &[write(4, true)], &c));
    assert!(!may_send_ahead(
        &[write(3, false)],
        &independent,
        &cfg(&[5], 4)
    ));
}

#[test]
fn the_page_offers_the_next_batch_ahead_only_while_one_is_in_flight() {
    let c = SyncConfig {
        push_batch_messages: 1,
        ..cfg(&[0], 4)
    };
    let entries = (1..=3u8).map(|n| (token(n), Some(write(n, false))));
    let mut page = PushPage::new(entries, Some(token(3)), &c);
    assert!(page.ahead(&c).is_none(), "nothing in flight yet");
    let first = page.next_batch().unwrap();
    let ahead = page.ahead(&c).unwrap();
    page.batch_settled(&[Settle::Done]);
    let second = page.next_batch().unwrap();
    assert_eq!(ahead[0].cid, second[0].cid);
    assert_ne!(first[0].cid, second[0].cid);
    // An unsettled batch ends the page: what went ahead is not delivered as its own.
    page.batch_settled(&[Settle::Open]);
    assert!(page.next_batch().is_none());
}
