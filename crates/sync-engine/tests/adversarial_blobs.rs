//! Issue 16's blob findings, from the attacker's side: a real node
//! (`sync_transport::serve` over a `ReplicaHandler`) on 127.0.0.1, attacked with the
//! transport's HTTP client and tokens from the node's `TokenKey`, while a well-behaved
//! replica of the victim's tenant syncs through the same node.
//!
//! - F3: another tenant's owner, and a delegate of another protocol of the victim's own
//!   tenant, ask for a blob by its cid (and try to gain it by writing a message naming
//!   it): each gets exactly the answer a blob the node does not have gets.
//! - F4: another tenant uploads wrong bytes under the cid the victim is about to
//!   upload: the victim sees none of it and its sync stores the right bytes; the
//!   attacker's upload fails with an error of its own.
//! - F5: uploads opened and abandoned hold only their own tenant's slots, and only
//!   until their connection goes.

mod sync_support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sync_engine::blob::Residency;
use sync_engine::node::BlobLimits;
use sync_engine::sync::HttpConnector;
use sync_engine::{Replica, ReplicaHandler, WriteRequest};
use sync_support::*;
use sync_transport::proto::{
    BlobReadRequest, BlobStat, BlobStatRequest, BlobWriteRequest, ErrorCode, MessageData,
    WriteBatchRequest,
};
use sync_transport::server::ServerHandle;
use sync_transport::{
    BlobSource, Claims, ClientConfig, HttpClient, Remote, Role, ServerConfig, Token,
    TransportError, serve,
};
use sync_types::*;

/// The attacking tenant.
fn mallory() -> TenantId {
    TenantId::new("did:example:mallory").unwrap()
}

fn mallory_principal() -> PrincipalId {
    PrincipalId::new("did:example:mallory").unwrap()
}

/// A second protocol of the victim's tenant, with one type, `item`.
fn other() -> ProtocolName {
    ProtocolName::new("https://example.com/other").unwrap()
}

fn item() -> ProtocolPath {
    ProtocolPath::new("item").unwrap()
}

/// A node serving on 127.0.0.1 with `limits`; the handler is kept to look at its
/// upload slots.
struct World {
    node: Replica,
    handler: ReplicaHandler,
    ep: Endpoint,
    _server: ServerHandle<ReplicaHandler>,
}

async fn world(limits: BlobLimits) -> World {
    let node = replica(100);
    let handler = ReplicaHandler::new(node.clone()).with_blob_limits(limits);
    let server = serve(
        Arc::new(handler.clone()),
        ServerConfig::new(key()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let ep = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    World {
        node,
        handler,
        ep,
        _server: server,
    }
}

fn http() -> Arc<HttpConnector> {
    Arc::new(HttpConnector::default())
}

fn client(ep: &Endpoint, claims: Claims) -> HttpClient {
    HttpClient::new(ep, &Token::issue(&key(), claims), ClientConfig::default()).unwrap()
}

fn owner_of(tenant: TenantId, principal: PrincipalId) -> Claims {
    Claims::owner(
        tenant,
        principal,
        GrantId::new("owner").unwrap(),
        FAR_FUTURE_MS,
    )
}

/// A delegate of the victim's tenant limited to `scope`, reading, syncing and writing.
fn delegate(scope: Scope) -> Claims {
    Claims {
        tenant: tenant(),
        principal: PrincipalId::new("did:example:delegate").unwrap(),
        role: Role::Delegate,
        scope,
        actions: Actions::ALL,
        expires_at_ms: FAR_FUTURE_MS,
        grant_id: GrantId::new("delegate").unwrap(),
    }
}

/// `len` deterministic bytes (above the inline limit, so they travel as a blob).
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0] ^ seed)
        .collect()
}

/// Writes a `note` whose payload is the blob `data`; returns the record and the blob.
fn write_blob_note(r: &Replica, key: &str, data: &[u8]) -> (RecordId, DataRef) {
    let blob = r.write_blob(data).unwrap();
    assert!(!blob.is_inline());
    let req = WriteRequest {
        protocol: notes(),
        path: note(),
        key: sync_engine::RecordKey::Natural(key.as_bytes().to_vec()),
        parent: None,
        data: None,
        author: alice(),
    };
    let receipt = r.write_with_blob(&tenant(), req, blob).unwrap();
    (receipt.record_id, blob)
}

/// The victim's replica: notes and the other protocol configured, one blob note.
fn victim_with_blob(data: &[u8]) -> (Replica, RecordId, DataRef) {
    let a = replica(1);
    configure(&a);
    configure_other(&a);
    let (id, blob) = write_blob_note(&a, "secret", data);
    (a, id, blob)
}

fn configure_other(r: &Replica) {
    let types = vec![TypeRule {
        path: item(),
        data_bytes_max: None,
    }];
    r.configure(&tenant(), &other(), types, vec![], &alice())
        .unwrap();
}

fn stat_req(tenant: TenantId, scope: Scope, cid: Cid) -> BlobStatRequest {
    BlobStatRequest { tenant, scope, cid }
}

fn read_req(tenant: TenantId, scope: Scope, cid: Cid, len: u64) -> BlobReadRequest {
    BlobReadRequest {
        tenant,
        scope,
        cid,
        offset: 0,
        len,
    }
}

fn refusal(e: TransportError) -> (u16, ErrorCode, String) {
    match e {
        TransportError::Refused {
            status,
            code,
            message,
            ..
        } => (status, code, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

/// What `c` learns of blob `cid` through `tenant` and `scope` is exactly what it learns
/// of a blob that does not exist: the same stat, and the same error code and text on a
/// read.
async fn assert_hidden(c: &HttpClient, tenant: &TenantId, scope: &Scope, cid: Cid) {
    let missing = Cid::of_data(b"a blob this node never saw");
    let stat = c
        .blob_stat(stat_req(tenant.clone(), scope.clone(), cid))
        .await
        .unwrap();
    let none = c
        .blob_stat(stat_req(tenant.clone(), scope.clone(), missing))
        .await
        .unwrap();
    let shape = |s: &BlobStat| (s.size, s.received_bytes, s.complete);
    assert_eq!(shape(&stat), (None, 0, false), "{cid} is not revealed");
    assert_eq!(shape(&stat), shape(&none));
    let read = c
        .blob_read(read_req(tenant.clone(), scope.clone(), cid, 1024))
        .await
        .unwrap_err();
    let read_none = c
        .blob_read(read_req(tenant.clone(), scope.clone(), missing, 1024))
        .await
        .unwrap_err();
    let (read, read_none) = (refusal(read), refusal(read_none));
    assert_eq!(read.1, ErrorCode::NotFound, "{read:?}");
    assert_eq!(
        read, read_none,
        "the same answer as for a blob that does not exist"
    );
}

/// A `Write` of `tenant` naming blob `blob` that its author never uploaded.
fn write_naming(
    tenant: &TenantId,
    protocol: &ProtocolName,
    path: &ProtocolPath,
    author: &PrincipalId,
    blob: DataRef,
) -> Message {
    let record_id = RecordId::from_natural_key(tenant, protocol, b"claim");
    Message::Write(Write {
        tenant: tenant.clone(),
        record_id,
        parent_id: None,
        protocol: protocol.clone(),
        path: path.clone(),
        context_id: ContextId::root(record_id),
        prev: None,
        timestamp: Hlc {
            wall_ms: 1_700_000_000_000,
            counter: 0,
            node: NodeId(66),
        },
        author: author.clone(),
        data: Some(blob),
    })
}

async fn write_batch(
    c: &HttpClient,
    tenant: &TenantId,
    messages: Vec<Message>,
) -> Vec<ApplyOutcome> {
    let messages = messages
        .into_iter()
        .map(|message| MessageData {
            message,
            data: None,
        })
        .collect();
    c.write_batch(WriteBatchRequest {
        tenant: tenant.clone(),
        messages,
    })
    .await
    .unwrap()
    .outcomes
}

/// Runs `passes` sync passes of a well-behaved replica while others push (so it need not
/// be quiet at the end), each of which must succeed.
async fn syncs_without_error<C: sync_engine::sync::Connector>(
    e: &sync_engine::Engine<C>,
    passes: usize,
) {
    for _ in 0..passes {
        let report = e.sync_once().await;
        assert!(
            report.is_ok(),
            "a well-behaved replica's sync failed: {report:?}"
        );
    }
}

/// The well-behaved replica of the victim's tenant got the record and its verified
/// blob, byte for byte.
fn assert_has_blob(r: &Replica, id: &RecordId, blob: &DataRef, data: &[u8]) {
    let rec = r.get(&tenant(), id).unwrap().unwrap();
    assert_eq!(rec.residency, Residency::Resident);
    assert_eq!(rec.data_ref, Some(*blob));
    assert_eq!(r.read_blob(&blob.data_cid, 0, blob.size).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_another_tenants_owner_cannot_stat_read_or_claim_a_blob() {
    let w = world(BlobLimits::default()).await;
    let data = bytes(300_000, 1);
    let (a, id, blob) = victim_with_blob(&data);
    let ea = engine(&a, http(), vec![w.ep.clone()], fast_config());
    sync_until_quiet(&ea, 5).await;
    assert!(w.node.ledger().blobs().has(&blob.data_cid).unwrap());

    // Mallory owns her own tenant, and configures a protocol there to write into.
    let m = client(&w.ep, owner_of(mallory(), mallory_principal()));
    let own = Replica::builder()
        .node_id(NodeId(66))
        .seed(66)
        .in_memory()
        .unwrap();
    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: None,
    }];
    let cfg = own
        .configure(&mallory(), &notes(), types, vec![], &mallory_principal())
        .unwrap();
    let cfg = own.ledger().get_message(&mallory(), &cfg).unwrap().unwrap();

    // A well-behaved replica of the victim syncs while Mallory attacks.
    let b = replica(2);
    configure(&b);
    let eb = engine(&b, http(), vec![w.ep.clone()], fast_config());
    let attack = async {
        assert_hidden(&m, &mallory(), &Scope::Full, blob.data_cid).await;
        // Naming the blob in her own tenant does not make it hers: the node wants
        // the bytes from her first.
        let claim = write_naming(&mallory(), &notes(), &note(), &mallory_principal(), blob);
        let outcomes = write_batch(&m, &mallory(), vec![cfg.message.clone(), claim]).await;
        assert!(matches!(outcomes[0], ApplyOutcome::Applied), "{outcomes:?}");
        assert_eq!(
            outcomes[1],
            ApplyOutcome::Incomplete {
                missing: vec![Dependency::Blob(blob.data_cid)]
            }
        );
        assert_hidden(&m, &mallory(), &Scope::Full, blob.data_cid).await;
        // Her token does not reach the victim's tenant at all.
        let e = m
            .blob_stat(stat_req(tenant(), Scope::Full, blob.data_cid))
            .await
            .unwrap_err();
        assert_eq!(refusal(e).1, ErrorCode::Forbidden);
    };
    tokio::join!(attack, sync_until_quiet(&eb, 5));
    assert_has_blob(&b, &id, &blob, &data);

    // Nothing of Mallory's claim was stored; the victim's blob and later syncs are
    // intact.
    assert!(
        w.node
            .ledger()
            .blob_referrers(&mallory(), &blob.data_cid, 10)
            .unwrap()
            .is_empty()
    );
    assert_has_blob(&w.node, &id, &blob, &data);
    let more = bytes(200_000, 2);
    let (id2, blob2) = write_blob_note(&a, "later", &more);
    sync_until_quiet(&ea, 5).await;
    sync_until_quiet(&eb, 5).await;
    assert_has_blob(&b, &id2, &blob2, &more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_a_delegate_of_another_protocol_cannot_stat_read_or_claim_a_blob() {
    let w = world(BlobLimits::default()).await;
    let data = bytes(300_000, 3);
    let (a, id, blob) = victim_with_blob(&data);
    let ea = engine(&a, http(), vec![w.ep.clone()], fast_config());
    sync_until_quiet(&ea, 5).await;

    let scope = Scope::protocols(vec![other()]).unwrap();
    let d = client(&w.ep, delegate(scope.clone()));
    let b = replica(2);
    configure(&b);
    let eb = engine(&b, http(), vec![w.ep.clone()], fast_config());
    let attack = async {
        assert_hidden(&d, &tenant(), &scope, blob.data_cid).await;
        // Asking for the whole tenant is beyond the grant.
        let e = d
            .blob_read(read_req(tenant(), Scope::Full, blob.data_cid, 1024))
            .await
            .unwrap_err();
        assert_eq!(refusal(e).1, ErrorCode::Forbidden);
        // Naming the blob in a record of its own protocol does not grant it either.
        let principal = PrincipalId::new("did:example:delegate").unwrap();
        let claim = write_naming(&tenant(), &other(), &item(), &principal, blob);
        let outcomes = write_batch(&d, &tenant(), vec![claim]).await;
        assert_eq!(
            outcomes,
            vec![ApplyOutcome::Incomplete {
                missing: vec![Dependency::Blob(blob.data_cid)]
            }]
        );
        assert_hidden(&d, &tenant(), &scope, blob.data_cid).await;
    };
    tokio::join!(attack, sync_until_quiet(&eb, 5));
    assert_has_blob(&b, &id, &blob, &data);
    assert_eq!(
        w.node
            .ledger()
            .blob_referrers(&tenant(), &blob.data_cid, 10)
            .unwrap()
            .len(),
        1,
        "only the victim's own note names the blob"
    );
    assert_has_blob(&w.node, &id, &blob, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_another_tenants_wrong_bytes_under_the_victims_cid_disturb_nothing() {
    let w = world(BlobLimits::default()).await;
    let data = bytes(400_000, 4);
    // The victim is about to upload: the blob is written locally, not yet synced.
    let (a, id, blob) = victim_with_blob(&data);
    let m = client(&w.ep, owner_of(mallory(), mallory_principal()));
    let wrong = bytes(data.len(), 99);
    let half = (data.len() / 2) as u64;
    let upload = |offset: u64, len: u64| BlobWriteRequest {
        tenant: mallory(),
        cid: blob.data_cid,
        total_size: data.len() as u64,
        offset,
        len,
    };
    let source = |from: u64, to: u64| -> BlobSource {
        let range = usize::try_from(from).unwrap()..usize::try_from(to).unwrap();
        sync_transport::client::blob_source_from_bytes(wrong[range].to_vec().into(), 16 * 1024)
    };
    let stat = m
        .blob_write(upload(0, half), source(0, half))
        .await
        .unwrap();
    assert_eq!((stat.received_bytes, stat.complete), (half, false));

    // A writer's stat tells it where its own upload stands (to resume it)...
    let hers = m
        .blob_stat(stat_req(mallory(), Scope::Full, blob.data_cid))
        .await
        .unwrap();
    assert_eq!((hers.received_bytes, hers.complete), (half, false));
    // ...but the victim sees none of Mallory's progress.
    let owner = client(&w.ep, owner_of(tenant(), alice()));
    let mine = owner
        .blob_stat(stat_req(tenant(), Scope::Full, blob.data_cid))
        .await
        .unwrap();
    assert_eq!((mine.received_bytes, mine.complete), (0, false));

    // The victim syncs (uploading the blob, then the note) while a well-behaved
    // replica syncs too.
    let ea = engine(&a, http(), vec![w.ep.clone()], fast_config());
    let b = replica(2);
    configure(&b);
    let eb = engine(&b, http(), vec![w.ep.clone()], fast_config());
    let victim = async {
        let report = ea.sync_once().await;
        assert!(report.is_ok(), "{report:?}");
    };
    tokio::join!(victim, syncs_without_error(&eb, 3));
    assert_has_blob(&w.node, &id, &blob, &data);

    // Mallory's upload fails with an error about her own bytes.
    let total = data.len() as u64;
    let e = m
        .blob_write(upload(half, total - half), source(half, total))
        .await
        .unwrap_err();
    let (status, code, message) = refusal(e);
    assert_eq!((status, code), (400, ErrorCode::BadRequest));
    assert!(
        message.contains(&format!(
            "the uploaded bytes are not blob {}",
            blob.data_cid
        )),
        "{message}"
    );
    assert_hidden(&m, &mallory(), &Scope::Full, blob.data_cid).await;

    // The stored bytes are the victim's, every replica gets them, later syncs work.
    assert_has_blob(&w.node, &id, &blob, &data);
    sync_until_quiet(&eb, 5).await;
    assert_has_blob(&b, &id, &blob, &data);
    let more = bytes(150_000, 5);
    let (id2, blob2) = write_blob_note(&a, "later", &more);
    sync_until_quiet(&ea, 5).await;
    sync_until_quiet(&eb, 5).await;
    assert_has_blob(&b, &id2, &blob2, &more);
}

/// Waits for `cond`, failing after a minute: a liveness bound, not a timing claim.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_abandoned_uploads_hold_only_their_tenants_slots_and_only_while_connected() {
    let limits = BlobLimits {
        uploads_max: 4,
        uploads_per_tenant_max: 2,
        ..BlobLimits::default()
    };
    let w = world(limits).await;
    let m = client(&w.ep, owner_of(mallory(), mallory_principal()));
    let total = 300_000u64;
    let open = |seed: u8| BlobWriteRequest {
        tenant: mallory(),
        cid: Cid::of_data(&[seed; 8]),
        total_size: total,
        offset: 0,
        len: total,
    };
    // Each sends one piece and then nothing, holding its request open.
    let stalled = || -> BlobSource {
        futures_util::stream::once(async { Ok(bytes::Bytes::from(vec![1u8; 1000])) })
            .chain(futures_util::stream::pending())
            .boxed()
    };
    let mut held = Vec::new();
    for seed in 0..2 {
        let m = m.clone();
        let req = open(seed);
        let source = stalled();
        held.push(tokio::spawn(async move { m.blob_write(req, source).await }));
    }
    let handler = w.handler.clone();
    eventually("two uploads are open", || handler.blob_uploads_open() == 2).await;

    // A third of Mallory's is refused, naming the limit.
    let e = m.blob_write(open(2), stalled()).await.unwrap_err();
    let (status, code, message) = refusal(e);
    assert_eq!((status, code), (503, ErrorCode::Unavailable));
    assert!(
        message.contains("limit of 2 concurrent blob uploads (uploads_per_tenant_max)"),
        "{message}"
    );

    // Meanwhile the victim uploads and a well-behaved replica syncs, unaffected.
    let data = bytes(500_000, 6);
    let (a, id, blob) = victim_with_blob(&data);
    let ea = engine(&a, http(), vec![w.ep.clone()], fast_config());
    let b = replica(2);
    configure(&b);
    let eb = engine(&b, http(), vec![w.ep.clone()], fast_config());
    sync_until_quiet(&ea, 5).await;
    sync_until_quiet(&eb, 5).await;
    assert_has_blob(&w.node, &id, &blob, &data);
    assert_has_blob(&b, &id, &blob, &data);

    // Mallory disconnects: her slots come back as her connections go, without
    // waiting for any idle time.
    for task in &held {
        task.abort();
    }
    eventually("abandoned uploads release their slots", || {
        handler.blob_uploads_open() == 0
    })
    .await;
    for seed in 0..2u8 {
        let cid = Cid::of_data(&[seed; 8]);
        assert!(
            !w.node.ledger().blobs().has(&cid).unwrap(),
            "nothing stored"
        );
    }

    // And she can upload again, like anyone else.
    let hers = bytes(usize::try_from(total).unwrap(), 7);
    let cid = Cid::of_data(&hers);
    let req = BlobWriteRequest { cid, ..open(0) };
    let source = sync_transport::client::blob_source_from_bytes(hers.clone().into(), 64 * 1024);
    let stat = m.blob_write(req, source).await.unwrap();
    assert!(stat.complete);
    assert_eq!(w.node.read_blob(&cid, 0, total).unwrap(), hers);
    // The victim's later writes still sync.
    let more = bytes(100_000, 8);
    let (id2, blob2) = write_blob_note(&a, "later", &more);
    sync_until_quiet(&ea, 5).await;
    sync_until_quiet(&eb, 5).await;
    assert_has_blob(&b, &id2, &blob2, &more);
}

/// The legitimate paths: an owner reads its tenant's blob, a delegate whose grant
/// covers the record reads it, and the engine's push (blob, then message) and pull
/// work over the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_delegates_whose_grant_covers_the_record_read_the_blob() {
    let w = world(BlobLimits::default()).await;
    let data = bytes(350_000, 9);
    let (a, id, blob) = victim_with_blob(&data);
    let ea = engine(&a, http(), vec![w.ep.clone()], fast_config());
    sync_until_quiet(&ea, 5).await;

    let read_all = |c: HttpClient, scope: Scope| async move {
        let stat = c
            .blob_stat(stat_req(tenant(), scope.clone(), blob.data_cid))
            .await
            .unwrap();
        assert_eq!(
            (stat.size, stat.received_bytes, stat.complete),
            (Some(blob.size), blob.size, true)
        );
        c.blob_read(read_req(tenant(), scope, blob.data_cid, blob.size))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    };
    let owner = client(&w.ep, owner_of(tenant(), alice()));
    assert_eq!(read_all(owner, Scope::Full).await, data);
    let notes_scope = Scope::protocols(vec![notes()]).unwrap();
    let d = client(&w.ep, delegate(notes_scope.clone()));
    assert_eq!(read_all(d.clone(), notes_scope.clone()).await, data);
    let both = Scope::protocols(vec![notes(), other()]).unwrap();
    let d2 = client(&w.ep, delegate(both.clone()));
    assert_eq!(read_all(d2, both).await, data);

    // A delegate that may read the blob may name it in a new write without sending it
    // again.
    let principal = PrincipalId::new("did:example:delegate").unwrap();
    let again = write_naming(&tenant(), &notes(), &note(), &principal, blob);
    assert!(matches!(
        write_batch(&d, &tenant(), vec![again]).await[..],
        [ApplyOutcome::Applied]
    ));

    // Pull: another replica gets the record with its blob.
    let b = replica(2);
    configure(&b);
    let eb = engine(&b, http(), vec![w.ep.clone()], fast_config());
    sync_until_quiet(&eb, 5).await;
    assert_has_blob(&b, &id, &blob, &data);
}

/// An upload whose connection goes part way through a request loses only what was not
/// committed: the writer's stat names the durable offset, and the upload resumes there
/// and stores the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_mid_request_resumes_from_its_durable_offset() {
    let w = world(BlobLimits::default()).await;
    let owner = client(&w.ep, owner_of(tenant(), alice()));
    let data = bytes(1_500_000, 10);
    let cid = Cid::of_data(&data);
    let total = data.len() as u64;
    let req = move |offset: u64| BlobWriteRequest {
        tenant: tenant(),
        cid,
        total_size: total,
        offset,
        len: total - offset,
    };
    // 1.2 MB, then nothing: the node commits every 16 chunks (1 MiB) as they fill.
    let sent = bytes::Bytes::from(data[..1_200_000].to_vec());
    let source: BlobSource = futures_util::stream::once(async move { Ok(sent) })
        .chain(futures_util::stream::pending())
        .boxed();
    let task = {
        let owner = owner.clone();
        tokio::spawn(async move { owner.blob_write(req(0), source).await })
    };
    let handler = w.handler.clone();
    let ledger = w.node.ledger();
    eventually("the first MiB is committed", || {
        ledger
            .blobs()
            .tenant_upload_offset(&tenant(), &cid)
            .unwrap()
            .is_some_and(|n| n >= 1024 * 1024)
    })
    .await;
    task.abort();
    eventually("the cut upload releases its slot", || {
        handler.blob_uploads_open() == 0
    })
    .await;

    let stat = owner
        .blob_stat(stat_req(tenant(), Scope::Full, cid))
        .await
        .unwrap();
    assert_eq!((stat.received_bytes, stat.complete), (1024 * 1024, false));
    let from = stat.received_bytes;
    let rest = bytes::Bytes::from(data[usize::try_from(from).unwrap()..].to_vec());
    let done = owner
        .blob_write(
            req(from),
            sync_transport::client::blob_source_from_bytes(rest, 64 * 1024),
        )
        .await
        .unwrap();
    assert!(done.complete);
    assert_eq!(w.node.read_blob(&cid, 0, total).unwrap(), data);
}

/// The node-wide bound holds over tenants and is named when reached; the slots come
/// back as the connections go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_wide_upload_limit_is_named_when_reached() {
    let limits = BlobLimits {
        uploads_max: 2,
        uploads_per_tenant_max: 1,
        ..BlobLimits::default()
    };
    let w = world(limits).await;
    let stalled = |t: TenantId, seed: u8| {
        let principal = PrincipalId::new(format!("did:example:p{seed}")).unwrap();
        let c = client(&w.ep, owner_of(t.clone(), principal));
        let req = BlobWriteRequest {
            tenant: t,
            cid: Cid::of_data(&[seed; 8]),
            total_size: 100_000,
            offset: 0,
            len: 100_000,
        };
        let source: BlobSource =
            futures_util::stream::once(async { Ok(bytes::Bytes::from(vec![1u8; 1000])) })
                .chain(futures_util::stream::pending())
                .boxed();
        (c, req, source)
    };
    let mut held = Vec::new();
    for (i, name) in ["did:example:one", "did:example:two"]
        .into_iter()
        .enumerate()
    {
        let (c, req, source) = stalled(TenantId::new(name).unwrap(), u8::try_from(i).unwrap());
        held.push(tokio::spawn(async move { c.blob_write(req, source).await }));
    }
    let handler = w.handler.clone();
    eventually("two uploads are open", || handler.blob_uploads_open() == 2).await;
    let (c, req, source) = stalled(mallory(), 9);
    let (status, code, message) = refusal(c.blob_write(req, source).await.unwrap_err());
    assert_eq!((status, code), (503, ErrorCode::Unavailable));
    assert!(
        message.contains("the node holds its limit of 2 concurrent blob uploads (uploads_max)"),
        "{message}"
    );
    for task in &held {
        task.abort();
    }
    eventually("the slots come back", || handler.blob_uploads_open() == 0).await;
}
