//! Who may replicate what: owner or delegate authorizations, and their epoch.
//!
//! The authorization epoch ([`authorization_epoch`]) is the hash of the canonical
//! credentials. It is part of a link's identity, so any change of grants (a re-grant, a
//! new expiry, another delegate) makes a new link and invalidates in-flight work of the
//! old one, while the projection id, which names the compared message set, stays the
//! same.
//!
//! Canonical layout: `version:str (0 | 1 delegate:str grants:list<id:str scope
//! actions:u8 expires_at_ms:u64>)`, grants sorted by id.

use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalWriter, sha256_b64url};
use crate::error::ValidationError;
use crate::ids::{GrantId, PrincipalId};
use crate::scope::{Scope, hash_text};

/// Version string hashed into every authorization epoch.
pub const AUTHORIZATION_EPOCH_VERSION: &str = "weft-authorization-v1";
/// Most grants one delegate authorization may hold.
pub const GRANTS_MAX: usize = 32;

/// A set of actions a grant allows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Actions(u8);

impl Actions {
    /// Read messages, log pages, blobs and roots.
    pub const READ: Actions = Actions(1);
    /// Write messages and blobs.
    pub const WRITE: Actions = Actions(2);
    /// Run diffs and subscriptions.
    pub const SYNC: Actions = Actions(4);
    /// All actions.
    pub const ALL: Actions = Actions(7);
    /// No action.
    pub const NONE: Actions = Actions(0);

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    /// Whether every action of `other` is in `self`.
    pub const fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// The actions in words, as error messages and tools print them: `read, sync`, or
/// `none`.
impl std::fmt::Display for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (bit, name) in [
            (Actions::READ, "read"),
            (Actions::WRITE, "write"),
            (Actions::SYNC, "sync"),
        ] {
            if self.contains(bit) {
                f.write_str(if first { "" } else { ", " })?;
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl TryFrom<u8> for Actions {
    type Error = ValidationError;
    fn try_from(bits: u8) -> Result<Self, Self::Error> {
        if bits & !Actions::ALL.0 != 0 {
            return Err(crate::codec::rejected(ValidationError::Malformed {
                what: "actions",
                reason: "unknown action bits",
            }));
        }
        Ok(Actions(bits))
    }
}

impl From<Actions> for u8 {
    fn from(a: Actions) -> u8 {
        a.0
    }
}

/// A delegation: a scope, the actions allowed on it, and an expiry.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Grant {
    /// The grant's id.
    pub id: GrantId,
    /// What it covers.
    pub scope: Scope,
    /// What it allows.
    pub actions: Actions,
    /// When it stops being valid, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// How a replica authenticates to a node for one tenant.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Authorization {
    /// The tenant's owner: everything is allowed.
    Owner,
    /// A delegate holding grants.
    Delegate(Delegation),
}

/// A delegate and its grants: non-empty, sorted by id, ids unique.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "DelegationParts", into = "DelegationParts")]
pub struct Delegation {
    delegate: PrincipalId,
    grants: Vec<Grant>,
}

#[derive(Serialize, Deserialize)]
struct DelegationParts {
    delegate: PrincipalId,
    grants: Vec<Grant>,
}

impl Delegation {
    /// Sorts grants by id; fails when there are none, too many, or two share an id.
    pub fn new(delegate: PrincipalId, mut grants: Vec<Grant>) -> Result<Self, ValidationError> {
        if grants.is_empty() {
            return Err(ValidationError::Empty { what: "grants" });
        }
        if grants.len() > GRANTS_MAX {
            return Err(ValidationError::TooLong {
                what: "grants",
                len: grants.len(),
                max: GRANTS_MAX,
            });
        }
        grants.sort_by(|a, b| a.id.cmp(&b.id));
        if grants.windows(2).any(|w| w[0].id == w[1].id) {
            return Err(ValidationError::Malformed {
                what: "grants",
                reason: "two grants share an id",
            });
        }
        Ok(Self { delegate, grants })
    }

    /// The delegate.
    pub fn delegate(&self) -> &PrincipalId {
        &self.delegate
    }

    /// The grants, sorted by id.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }
}

impl TryFrom<DelegationParts> for Delegation {
    type Error = ValidationError;
    fn try_from(p: DelegationParts) -> Result<Self, Self::Error> {
        Self::new(p.delegate, p.grants).map_err(crate::codec::rejected)
    }
}

impl From<Delegation> for DelegationParts {
    fn from(d: Delegation) -> Self {
        Self {
            delegate: d.delegate,
            grants: d.grants,
        }
    }
}

impl Authorization {
    /// Whether the authorization allows `actions` on `scope` at `now_ms`: always for the
    /// owner; for a delegate, when one unexpired grant covers both.
    pub fn allows(&self, scope: &Scope, actions: Actions, now_ms: u64) -> bool {
        match self {
            Authorization::Owner => true,
            Authorization::Delegate(d) => d.grants.iter().any(|g| {
                g.expires_at_ms > now_ms && g.actions.contains(actions) && g.scope.covers(scope)
            }),
        }
    }
}

hash_text!(
    /// The hash of canonical credentials ([`authorization_epoch`]).
    AuthorizationEpoch
);

/// The authorization's epoch: `base64url(SHA-256(version, canonical credentials))`.
pub fn authorization_epoch(authorization: &Authorization) -> AuthorizationEpoch {
    let mut w = CanonicalWriter::new();
    w.str(AUTHORIZATION_EPOCH_VERSION);
    match authorization {
        Authorization::Owner => {
            w.u8(0);
        }
        Authorization::Delegate(d) => {
            w.u8(1).str(d.delegate.as_str()).list(&d.grants, |w, g| {
                w.str(g.id.as_str());
                g.scope.write_canonical(w);
                w.u8(g.actions.bits()).u64(g.expires_at_ms);
            });
        }
    }
    AuthorizationEpoch::from_hash_text(sha256_b64url(&w.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ProtocolName;

    fn grant(id: &str, expires_at_ms: u64, actions: Actions) -> Grant {
        Grant {
            id: GrantId::new(id).unwrap(),
            scope: Scope::protocols(vec![ProtocolName::new("p").unwrap()]).unwrap(),
            actions,
            expires_at_ms,
        }
    }

    #[test]
    fn delegations_are_canonical() {
        let d = PrincipalId::new("d").unwrap();
        let a = Delegation::new(
            d.clone(),
            vec![grant("b", 1, Actions::READ), grant("a", 1, Actions::READ)],
        )
        .unwrap();
        assert_eq!(a.grants()[0].id.as_str(), "a");
        assert!(Delegation::new(d.clone(), vec![]).is_err());
        assert!(
            Delegation::new(
                d,
                vec![grant("a", 1, Actions::READ), grant("a", 2, Actions::READ)]
            )
            .is_err()
        );
    }

    #[test]
    fn epochs_change_with_grants() {
        let d = PrincipalId::new("d").unwrap();
        let one = Authorization::Delegate(
            Delegation::new(d.clone(), vec![grant("a", 1, Actions::READ)]).unwrap(),
        );
        let later = Authorization::Delegate(
            Delegation::new(d, vec![grant("a", 2, Actions::READ)]).unwrap(),
        );
        assert_ne!(authorization_epoch(&one), authorization_epoch(&later));
        assert_ne!(
            authorization_epoch(&one),
            authorization_epoch(&Authorization::Owner)
        );
    }

    #[test]
    fn allows_checks_expiry_actions_and_scope() {
        let d = PrincipalId::new("d").unwrap();
        let auth = Authorization::Delegate(
            Delegation::new(d, vec![grant("a", 100, Actions::READ.union(Actions::SYNC))]).unwrap(),
        );
        let scope = Scope::protocols(vec![ProtocolName::new("p").unwrap()]).unwrap();
        assert!(auth.allows(&scope, Actions::READ, 99));
        assert!(!auth.allows(&scope, Actions::READ, 100), "expired");
        assert!(
            !auth.allows(&scope, Actions::WRITE, 99),
            "action not granted"
        );
        assert!(
            !auth.allows(&Scope::Full, Actions::READ, 99),
            "scope beyond the grant"
        );
        assert!(Authorization::Owner.allows(&Scope::Full, Actions::ALL, u64::MAX));
        assert!(Actions::try_from(8).is_err());
    }

    #[test]
    fn actions_are_named_in_words() {
        assert_eq!(Actions::NONE.to_string(), "none");
        assert_eq!(Actions::WRITE.to_string(), "write");
        assert_eq!(Actions::READ.union(Actions::SYNC).to_string(), "read, sync");
        assert_eq!(Actions::ALL.to_string(), "read, write, sync");
    }
}
