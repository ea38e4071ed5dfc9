//! Authorization from the attacker's side, on real sockets against a real node: for each
//! field of a pushed message that names a tenant, protocol, record, parent or author, a
//! client whose token does not grant it is refused with a clear answer, nothing of the
//! attack is stored, and the owner's replica syncing beside it is unaffected.
//!
//! F1, F2 and F7 are the findings of the hostile-client review (issue 16); the other
//! tests pin classes that already held (tenant and scope escapes, forged, expired and
//! read-only tokens). Wire-level attacks are in `adversarial_wire.rs`, blob access in
//! `adversarial_blobs.rs`.

mod adversary;
mod sync_support;

use adversary::*;
use sync_support::*;
use sync_transport::{Role, Token, TokenKey};
use sync_types::*;

/// F1: a delegate granted only `evil` configures it, then writes a version naming
/// `evil` over the owner's notes record, based on its head. The record's protocol is
/// fixed by its first version, so the write is `Invalid` and names both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_a_delegate_cannot_overwrite_a_record_of_another_protocol() {
    let site = Site::new().await;
    let attacker = site.client(evil_delegate());
    let configured = send(&attacker, vec![configure_msg(&evil(), &mallory())]).await;
    assert_eq!(
        configured,
        vec![ApplyOutcome::Applied],
        "evil is in its grant"
    );
    let before = site.log_position();
    let head = site.victim_head();
    for prev in [Some(head), None] {
        let attack = write_msg(&evil(), victim_id(), prev, &mallory(), b"pwned");
        let cid = attack.message.cid();
        let outcomes = send(&attacker, vec![attack]).await;
        let reason = invalid_reason(&outcomes[0]);
        assert!(
            reason.contains("belongs to protocol https://example.com/notes")
                && reason.contains("naming protocol https://example.com/evil"),
            "{reason}"
        );
        assert!(!site.node.ledger().has_message(&tenant(), &cid).unwrap());
    }
    assert_eq!(site.log_position(), before, "nothing of the attack stored");
    site.assert_unharmed("after-f1").await;
}

/// F1 for the owner: even a full token cannot move a record into another protocol (and
/// around that protocol's type rules).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_the_owner_cannot_move_a_record_into_another_protocol() {
    let site = Site::new().await;
    let owner = site.client(owner_claims());
    assert_eq!(
        send(&owner, vec![configure_msg(&evil(), &alice())]).await,
        vec![ApplyOutcome::Applied]
    );
    let before = site.log_position();
    let attack = write_msg(
        &evil(),
        victim_id(),
        Some(site.victim_head()),
        &alice(),
        b"x",
    );
    let outcomes = send(&owner, vec![attack]).await;
    assert!(invalid_reason(&outcomes[0]).contains("belongs to protocol"));
    assert_eq!(site.log_position(), before);
    site.assert_unharmed("after-owner-move").await;
}

/// F2: deletes naming the delegate's protocol cannot tombstone the owner's record, for
/// a protocol-set delegate and for a projection delegate (whose deletes the node
/// classifies through the stored record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_a_delegate_cannot_delete_a_record_of_another_protocol() {
    let site = Site::new().await;
    let projection = Scope::projection(vec![ProjectionEntry::whole(evil())]).unwrap();
    let scopes = [Scope::protocols(vec![evil()]).unwrap(), projection];
    for (round, scope) in scopes.into_iter().enumerate() {
        let attacker = site.client(claims(mallory(), Role::Delegate, scope, Actions::ALL));
        let setup = send(&attacker, vec![configure_msg(&evil(), &mallory())]).await;
        assert!(matches!(
            setup[0],
            ApplyOutcome::Applied | ApplyOutcome::Duplicate
        ));
        let before = site.log_position();
        let attack = delete_msg(&evil(), victim_id(), site.victim_head(), &mallory());
        let outcomes = send(&attacker, vec![attack]).await;
        let reason = invalid_reason(&outcomes[0]);
        assert!(reason.contains("belongs to protocol"), "{reason}");
        assert_eq!(site.log_position(), before, "round {round}");
        site.assert_unharmed(&format!("after-f2-{round}")).await;
    }
}

/// A child names its parent: a write of `evil` hung under the owner's notes record is
/// `Invalid`, so a context chain cannot reach into another protocol's records (which a
/// projection by context would then hand to the attacker's grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_hang_under_a_record_of_another_protocol() {
    let site = Site::new().await;
    let attacker = site.client(evil_delegate());
    send(&attacker, vec![configure_msg(&evil(), &mallory())]).await;
    let before = site.log_position();
    let parent = ContextId::root(victim_id());
    let child = RecordId::from_natural_key(&tenant(), &evil(), b"child");
    let mut attack = write_msg(&evil(), child, None, &mallory(), b"squat");
    let Message::Write(w) = &mut attack.message else {
        unreachable!()
    };
    w.parent_id = Some(victim_id());
    w.path = comment();
    w.context_id = parent.child(child).unwrap();
    let outcomes = send(&attacker, vec![attack]).await;
    let reason = invalid_reason(&outcomes[0]);
    assert!(
        reason.contains("parent record") && reason.contains("belongs to protocol"),
        "{reason}"
    );
    assert_eq!(site.log_position(), before);
    site.assert_unharmed("after-child").await;
}

/// F7: a delegate writes only as its own principal. A version claiming another author
/// is `Unauthorized` and not stored; the same version under its own name is applied;
/// relaying a message the node already holds (a replica pushing what it pulled) is a
/// harmless `Duplicate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_a_delegate_writes_only_as_its_own_principal() {
    let site = Site::new().await;
    let bob = PrincipalId::new("did:example:bob").unwrap();
    let notes_scope = Scope::protocols(vec![notes()]).unwrap();
    let delegate = site.client(claims(
        bob.clone(),
        Role::Delegate,
        notes_scope,
        Actions::ALL,
    ));
    let record = RecordId::from_natural_key(&tenant(), &notes(), b"bob's");
    let forged = write_msg(&notes(), record, None, &alice(), b"signed alice");
    let forged_cid = forged.message.cid();
    let before = site.log_position();
    assert_eq!(
        send(&delegate, vec![forged]).await,
        vec![ApplyOutcome::Unauthorized]
    );
    assert!(
        !site
            .node
            .ledger()
            .has_message(&tenant(), &forged_cid)
            .unwrap()
    );
    assert_eq!(site.log_position(), before);

    let honest = write_msg(&notes(), record, None, &bob, b"signed bob");
    assert_eq!(
        send(&delegate, vec![honest]).await,
        vec![ApplyOutcome::Applied]
    );
    let stored = site.node.get(&tenant(), &record).unwrap().unwrap();
    assert_eq!(stored.author, bob);

    let held = site
        .node
        .ledger()
        .get_message(&tenant(), &site.victim_head())
        .unwrap()
        .unwrap();
    let relay = sync_transport::proto::MessageData {
        message: held.message,
        data: held.data,
    };
    assert_eq!(
        send(&delegate, vec![relay]).await,
        vec![ApplyOutcome::Duplicate]
    );
    site.assert_unharmed("after-f7").await;
}

/// Tenant escapes: a message of another tenant inside a batch is `Invalid`; a batch for
/// another tenant is refused as a whole (403) and names the tenants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_batches_of_another_tenant_are_refused() {
    let site = Site::new().await;
    let owner = site.client(owner_claims());
    let eve = TenantId::new("did:example:eve").unwrap();
    let mut foreign = write_msg(&notes(), victim_id(), None, &alice(), b"eve's");
    let Message::Write(w) = &mut foreign.message else {
        unreachable!()
    };
    w.tenant = eve.clone();
    let before = site.log_position();
    let outcomes = send(&owner, vec![foreign.clone()]).await;
    assert!(invalid_reason(&outcomes[0]).contains("another tenant"));
    let (status, reason) = send_refused(&owner, eve.clone(), vec![foreign]).await;
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("tenant"), "{reason}");
    assert_eq!(site.log_position(), before);
    assert!(site.node.ledger().log_head(&eve).unwrap().is_none());
    site.assert_unharmed("after-tenant-escape").await;
}

/// Scope escapes: a delegate of `evil` writing or deleting notes is `Unauthorized`
/// before the node's store is consulted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_cannot_write_outside_its_protocols() {
    let site = Site::new().await;
    let attacker = site.client(evil_delegate());
    let before = site.log_position();
    let outcomes = send(
        &attacker,
        vec![
            configure_msg(&notes(), &mallory()),
            write_msg(
                &notes(),
                victim_id(),
                Some(site.victim_head()),
                &mallory(),
                b"x",
            ),
            delete_msg(&notes(), victim_id(), site.victim_head(), &mallory()),
        ],
    )
    .await;
    assert_eq!(outcomes, vec![ApplyOutcome::Unauthorized; 3]);
    assert_eq!(site.log_position(), before);
    site.assert_unharmed("after-scope-escape").await;
}

/// Tokens: one signed with another key, an expired one and a read-only one are refused
/// (401, 401, 403) with a reason, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_read_only_tokens_cannot_write() {
    let site = Site::new().await;
    let attack = || {
        vec![write_msg(
            &notes(),
            victim_id(),
            Some(site.victim_head()),
            &alice(),
            b"x",
        )]
    };
    let before = site.log_position();

    let forged = Token::issue(&TokenKey::derive(b"not the node's key"), owner_claims());
    let (status, reason) = send_refused(
        &site.client_with_token(forged.to_string()),
        tenant(),
        attack(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(reason.contains("does not verify"), "{reason}");

    let mut expired = owner_claims();
    expired.expires_at_ms = 1;
    let (status, reason) = send_refused(&site.client(expired), tenant(), attack()).await;
    assert_eq!(status, 401);
    assert!(reason.contains("expired"), "{reason}");

    let read_only = claims(alice(), Role::Owner, Scope::Full, Actions::READ);
    let (status, reason) = send_refused(&site.client(read_only), tenant(), attack()).await;
    assert_eq!(status, 403, "{reason}");

    let garbage = site.client_with_token("weft1.AAAA.BBBB".into());
    let (status, _) = send_refused(&garbage, tenant(), attack()).await;
    assert_eq!(status, 401);

    assert_eq!(site.log_position(), before);
    site.assert_unharmed("after-tokens").await;
}

/// The same rule on the replica side: what a (hostile or compromised) node hands a
/// replica in a pull, a live event or a diff fetch goes through the replica's apply,
/// which refuses a version naming another protocol than the stored record, and a child
/// under a record of another protocol, however the message got there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_pulled_versions_that_move_a_record() {
    let site = Site::new().await;
    let owner = &site.owner;
    owner
        .apply(
            &tenant(),
            vec![{
                let c = configure_msg(&evil(), &mallory());
                (c.message, c.data)
            }],
            sync_engine::Origin::Remote(None),
        )
        .unwrap();
    let head = owner
        .ledger()
        .record_head(&tenant(), &victim_id())
        .unwrap()
        .unwrap()
        .winner
        .cid;
    let hostile = [
        write_msg(&evil(), victim_id(), Some(head), &mallory(), b"pulled"),
        delete_msg(&evil(), victim_id(), head, &mallory()),
    ];
    for m in hostile {
        let cid = m.message.cid();
        let outcomes = owner
            .apply(
                &tenant(),
                vec![(m.message, m.data)],
                sync_engine::Origin::Remote(None),
            )
            .unwrap();
        assert!(invalid_reason(&outcomes[0]).contains("belongs to protocol"));
        assert!(!owner.ledger().has_message(&tenant(), &cid).unwrap());
    }
    assert_eq!(get(owner, VICTIM).as_deref(), Some(VICTIM_DATA));
    site.assert_unharmed("after-hostile-pull").await;
}
