//! The attacker's workbench for the adversarial suites: a real node on 127.0.0.1, a
//! well-behaved owner replica that keeps syncing with it, tokens for any claims, and
//! messages written by hand as a hostile client would.
//!
//! Every attack test follows one shape: the owner's replica holds a record (`victim`) on
//! the node; the attacker sends what it sends; the test asserts the clear refusal, that
//! the node stored nothing of the attack, and (`Site::assert_unharmed`) that the owner's
//! replica still writes and syncs, and a second honest replica reads the victim intact.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Replica, ReplicaHandler};
use sync_transport::proto::{MessageData, WriteBatchRequest};
use sync_transport::{
    Claims, ClientConfig, HttpClient, Remote, Role, ServerConfig, ServerHandle, Token,
    TransportError, serve,
};
use sync_types::*;

use crate::sync_support::*;

/// The record the attacks aim at, written by the owner.
pub const VICTIM: &str = "victim";
/// Its payload.
pub const VICTIM_DATA: &[u8] = b"the owner's words";

pub fn mallory() -> PrincipalId {
    PrincipalId::new("did:example:mallory").unwrap()
}
/// The protocol the attacker is granted.
pub fn evil() -> ProtocolName {
    ProtocolName::new("https://example.com/evil").unwrap()
}
pub fn victim_id() -> RecordId {
    RecordId::from_natural_key(&tenant(), &notes(), VICTIM.as_bytes())
}

/// A node on 127.0.0.1 and the owner's replica, which holds the victim and has synced it.
pub struct Site {
    pub node: Replica,
    pub server: ServerHandle<ReplicaHandler>,
    pub endpoint: Endpoint,
    pub owner: Replica,
    pub owner_engine: Engine<Arc<HttpConnector>>,
}

pub fn http() -> Arc<HttpConnector> {
    Arc::new(HttpConnector::new(ClientConfig {
        retries_max: 0,
        ..ClientConfig::default()
    }))
}

impl Site {
    pub async fn new() -> Site {
        Site::with_config(ServerConfig::new(key())).await
    }

    pub async fn with_config(config: ServerConfig) -> Site {
        let node = replica(100);
        let server = serve(
            Arc::new(ReplicaHandler::new(node.clone())),
            config,
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
        let owner = replica(1);
        configure(&owner);
        put(&owner, VICTIM, VICTIM_DATA);
        let owner_engine = engine(&owner, http(), vec![endpoint.clone()], fast_config());
        sync_until_quiet(&owner_engine, 3).await;
        assert_eq!(get(&node, VICTIM).as_deref(), Some(VICTIM_DATA));
        Site {
            node,
            server,
            endpoint,
            owner,
            owner_engine,
        }
    }

    /// A client of the node holding a token for `claims`, signed with the node's key.
    pub fn client(&self, claims: Claims) -> HttpClient {
        self.client_with_token(Token::issue(&key(), claims).to_string())
    }

    /// A client presenting `token` as it is.
    pub fn client_with_token(&self, token: String) -> HttpClient {
        HttpClient::with_token_text(
            &self.endpoint,
            &token,
            ClientConfig {
                retries_max: 0,
                ..ClientConfig::default()
            },
        )
        .unwrap()
    }

    /// The node's log head position (0 when empty).
    pub fn log_position(&self) -> u64 {
        self.node
            .ledger()
            .log_head(&tenant())
            .unwrap()
            .map_or(0, |t| t.position)
    }

    /// The cid of the victim's winning version on the node.
    pub fn victim_head(&self) -> Cid {
        self.node
            .ledger()
            .record_head(&tenant(), &victim_id())
            .unwrap()
            .expect("the victim is on the node")
            .winner
            .cid
    }

    /// After an attack: the victim is intact on the node; the owner writes and syncs a
    /// new record, and a fresh honest replica pulls both, the victim unchanged.
    pub async fn assert_unharmed(&self, round: &str) {
        let node_victim = self.node.get(&tenant(), &victim_id()).unwrap();
        let node_victim = node_victim.expect("the victim is still on the node");
        assert_eq!(node_victim.protocol, notes(), "{round}: protocol moved");
        assert_eq!(node_victim.data.as_deref(), Some(VICTIM_DATA), "{round}");
        put(&self.owner, round, round.as_bytes());
        sync_until_quiet(&self.owner_engine, 3).await;
        let reader = replica(2);
        let reader_engine = engine(&reader, http(), vec![self.endpoint.clone()], fast_config());
        sync_until_quiet(&reader_engine, 3).await;
        assert_eq!(
            get(&reader, VICTIM).as_deref(),
            Some(VICTIM_DATA),
            "{round}"
        );
        assert_eq!(get(&reader, round).as_deref(), Some(round.as_bytes()));
        assert_eq!(root(&reader), root(&self.node), "{round}");
        assert_eq!(root(&self.owner), root(&self.node), "{round}");
    }
}

/// Claims of `principal` on the test tenant.
pub fn claims(principal: PrincipalId, role: Role, scope: Scope, actions: Actions) -> Claims {
    Claims {
        tenant: tenant(),
        principal,
        role,
        scope,
        actions,
        expires_at_ms: FAR_FUTURE_MS,
        grant_id: GrantId::new("adversary").unwrap(),
    }
}

/// Mallory's delegate claims over the evil protocol only.
pub fn evil_delegate() -> Claims {
    claims(
        mallory(),
        Role::Delegate,
        Scope::protocols(vec![evil()]).unwrap(),
        Actions::ALL,
    )
}

/// The owner's claims.
pub fn owner_claims() -> Claims {
    claims(alice(), Role::Owner, Scope::Full, Actions::ALL)
}

/// A timestamp the node accepts (its clock is the system's).
pub fn now(counter: u32) -> Hlc {
    let wall_ms = SystemClock.now_ms();
    Hlc {
        wall_ms,
        counter,
        node: NodeId(666),
    }
}

/// A configure of `protocol` with the notes protocol's two types.
pub fn configure_msg(protocol: &ProtocolName, author: &PrincipalId) -> MessageData {
    let types = vec![
        TypeRule {
            path: note(),
            data_bytes_max: None,
        },
        TypeRule {
            path: comment(),
            data_bytes_max: None,
        },
    ];
    MessageData {
        message: Message::Configure(Configure {
            tenant: tenant(),
            protocol: protocol.clone(),
            definition: ProtocolDefinition::new(protocol, types, vec![]).unwrap(),
            timestamp: now(0),
            author: author.clone(),
        }),
        data: None,
    }
}

/// A root write of `record` at path `note`, naming `protocol`, based on `prev`.
pub fn write_msg(
    protocol: &ProtocolName,
    record: RecordId,
    prev: Option<Cid>,
    author: &PrincipalId,
    data: &[u8],
) -> MessageData {
    MessageData {
        message: Message::Write(Write {
            tenant: tenant(),
            record_id: record,
            parent_id: None,
            protocol: protocol.clone(),
            path: note(),
            context_id: ContextId::root(record),
            prev,
            timestamp: now(1),
            author: author.clone(),
            data: Some(DataRef::of(data)),
        }),
        data: Some(data.to_vec()),
    }
}

/// A delete of `record` naming `protocol`.
pub fn delete_msg(
    protocol: &ProtocolName,
    record: RecordId,
    prev: Cid,
    author: &PrincipalId,
) -> MessageData {
    MessageData {
        message: Message::Delete(Delete {
            tenant: tenant(),
            record_id: record,
            protocol: protocol.clone(),
            prev: Some(prev),
            timestamp: now(2),
            author: author.clone(),
        }),
        data: None,
    }
}

/// Sends one batch and returns its outcomes.
pub async fn send(client: &HttpClient, messages: Vec<MessageData>) -> Vec<ApplyOutcome> {
    client
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages,
        })
        .await
        .expect("the batch is answered")
        .outcomes
}

/// Sends one batch that must be refused as a whole; returns the HTTP status and reason.
pub async fn send_refused(
    client: &HttpClient,
    tenant: TenantId,
    messages: Vec<MessageData>,
) -> (u16, String) {
    match client
        .write_batch(WriteBatchRequest { tenant, messages })
        .await
    {
        Err(TransportError::Refused {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The reason of an `Invalid` outcome; panics on anything else.
pub fn invalid_reason(outcome: &ApplyOutcome) -> &str {
    match outcome {
        ApplyOutcome::Invalid { reason } => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}
