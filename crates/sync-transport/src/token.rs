//! Capability tokens: claims MAC'd with the node's key.
//!
//! A token is a set of [`Claims`] (tenant, principal, owner or delegate, scope, actions,
//! expiry, grant id) and a MAC: `blake3::keyed_hash(node key, TOKEN_DOMAIN || claims)`,
//! where `claims` is the `sync-types` codec encoding. Only the node that holds the key
//! can issue or verify tokens; there is no public-key step, because the node that issues
//! a token (with `weft token issue`) is the node that checks it.
//!
//! Text form, for the CLI and the `Authorization: Bearer` header:
//!
//! ```text
//! weft1.<base64url(claims)>.<base64url(mac)>      (no padding)
//! ```
//!
//! Parsing ([`Token::from_str`]) is structural and bounded ([`TOKEN_TEXT_BYTES_MAX`]);
//! [`Token::verify`] compares MACs in constant time (`blake3::Hash` equality) and then
//! checks the expiry; [`Claims::authorize`] checks a request's tenant, scope and actions.
//! A request beyond the grant is refused with a reason, never narrowed.
//!
//! [`Token::from_str`]: std::str::FromStr::from_str

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sync_types::{
    Actions, Authorization, DecodeError, Delegation, Grant, GrantId, PrincipalId, Scope, TenantId,
    codec,
};

/// The prefix of a token's text form; it names the token format version.
pub const TOKEN_PREFIX: &str = "weft1";
/// Longest token text accepted, in bytes.
pub const TOKEN_TEXT_BYTES_MAX: usize = 8 * 1024;
/// Domain-separation string hashed in front of the claims.
pub const TOKEN_DOMAIN: &[u8] = b"weft-capability-token-v1\0";

/// What [`TokenKey::check`] hashes: never the prefix of a token's claims, so a check
/// is not a MAC of anything a token could carry.
const KEY_CHECK_DOMAIN: &[u8] = b"weft 2026 token key check";

/// The node's secret key for token MACs. `Debug` does not print it, and it has no
/// `PartialEq`, so nothing compares it in variable time.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// A key from 32 secret bytes (generate them with a CSPRNG).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key derived from a secret of any length (a passphrase or a file's content).
    pub fn derive(secret: &[u8]) -> Self {
        Self(blake3::derive_key("weft 2025 capability token key", secret))
    }

    /// A check of the key that reveals nothing of it: 16 bytes of
    /// `blake3::keyed_hash(key, KEY_CHECK_DOMAIN)`. A store records the check of the key
    /// it is served with, so that a node started with another key (a key file not
    /// copied to a new node, a wrong path) is refused at start instead of refusing
    /// every token the other nodes issued.
    pub fn check(&self) -> [u8; 16] {
        let hash = blake3::keyed_hash(&self.0, KEY_CHECK_DOMAIN);
        let mut out = [0u8; 16];
        out.copy_from_slice(&hash.as_bytes()[..16]);
        out
    }

    /// The key as 64 lowercase hex characters, for a key file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return Err(TokenError::Malformed("key must be 64 hex characters"));
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| TokenError::Malformed("key must be 64 hex characters"))?;
        }
        Ok(Self(out))
    }

    fn mac(&self, claims_bytes: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(TOKEN_DOMAIN);
        h.update(claims_bytes);
        h.finalize()
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Whether the holder owns the tenant or is a delegate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Role {
    /// The tenant's owner.
    Owner,
    /// A delegate, limited to the token's scope and actions.
    Delegate,
}

/// What a token allows.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The tenant the token is for.
    pub tenant: TenantId,
    /// Who holds it.
    pub principal: PrincipalId,
    /// Owner or delegate.
    pub role: Role,
    /// What part of the tenant it covers.
    pub scope: Scope,
    /// What it allows on that scope.
    pub actions: Actions,
    /// When it stops being valid, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The grant's id (names the grant in logs and in the authorization epoch).
    pub grant_id: GrantId,
}

impl Claims {
    /// Owner claims: the full scope and every action.
    pub fn owner(
        tenant: TenantId,
        principal: PrincipalId,
        grant_id: GrantId,
        expires_at_ms: u64,
    ) -> Self {
        Self {
            tenant,
            principal,
            role: Role::Owner,
            scope: Scope::Full,
            actions: Actions::ALL,
            expires_at_ms,
            grant_id,
        }
    }

    /// Checks that these claims allow `actions` on `scope` of `tenant` at `now_ms`
    /// (`scope` `None`: the action on any part of the tenant, for requests checked per
    /// item later, such as writes).
    pub fn authorize(
        &self,
        tenant: &TenantId,
        scope: Option<&Scope>,
        actions: Actions,
        now_ms: u64,
    ) -> Result<(), AuthError> {
        if now_ms >= self.expires_at_ms {
            return Err(AuthError::Expired {
                expired_at_ms: self.expires_at_ms,
                now_ms,
            });
        }
        if *tenant != self.tenant {
            return Err(AuthError::WrongTenant {
                token: self.tenant.clone(),
                request: tenant.clone(),
            });
        }
        if !self.actions.contains(actions) {
            return Err(AuthError::ActionNotGranted {
                granted: self.actions,
                needed: actions,
            });
        }
        if let Some(scope) = scope
            && !self.scope.covers(scope)
        {
            return Err(AuthError::ScopeNotCovered {
                granted: self.scope.clone(),
                requested: scope.clone(),
            });
        }
        Ok(())
    }

    /// The `sync-types` authorization these claims stand for (its epoch is part of a
    /// link's identity).
    pub fn authorization(&self) -> Authorization {
        match self.role {
            Role::Owner => Authorization::Owner,
            Role::Delegate => {
                let grant = Grant {
                    id: self.grant_id.clone(),
                    scope: self.scope.clone(),
                    actions: self.actions,
                    expires_at_ms: self.expires_at_ms,
                };
                // One grant, so it is neither empty, too long, nor duplicated.
                let delegation = Delegation::new(self.principal.clone(), vec![grant])
                    .expect("one grant is a valid delegation");
                Authorization::Delegate(delegation)
            }
        }
    }
}

/// Claims and their MAC.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Token {
    claims: Claims,
    claims_bytes: Vec<u8>,
    mac: [u8; 32],
}

impl Token {
    /// Issues a token for `claims`, MAC'd with `key`.
    pub fn issue(key: &TokenKey, claims: Claims) -> Self {
        let claims_bytes = codec::encode(&claims);
        let mac = *key.mac(&claims_bytes).as_bytes();
        Self {
            claims,
            claims_bytes,
            mac,
        }
    }

    /// The claims, unverified: use [`Token::verify`] before trusting them.
    pub fn unverified_claims(&self) -> &Claims {
        &self.claims
    }

    /// Checks the MAC in constant time, then the expiry; returns the verified claims.
    pub fn verify(&self, key: &TokenKey, now_ms: u64) -> Result<&Claims, AuthError> {
        // `blake3::Hash` compares in constant time.
        if key.mac(&self.claims_bytes) != blake3::Hash::from_bytes(self.mac) {
            return Err(AuthError::Forged);
        }
        if now_ms >= self.claims.expires_at_ms {
            return Err(AuthError::Expired {
                expired_at_ms: self.claims.expires_at_ms,
                now_ms,
            });
        }
        Ok(&self.claims)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(&self.claims_bytes),
            URL_SAFE_NO_PAD.encode(self.mac)
        )
    }
}

impl FromStr for Token {
    type Err = TokenError;

    /// Parses the text form; checks structure and claims, not the MAC.
    fn from_str(s: &str) -> Result<Self, TokenError> {
        if s.len() > TOKEN_TEXT_BYTES_MAX {
            return Err(TokenError::TooLong {
                len: s.len(),
                max: TOKEN_TEXT_BYTES_MAX,
            });
        }
        let mut parts = s.split('.');
        let (Some(prefix), Some(claims), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected prefix.claims.mac"));
        };
        if prefix != TOKEN_PREFIX {
            return Err(TokenError::UnknownFormat);
        }
        let claims_bytes = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let mac: [u8; 32] = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed("mac is not base64url"))?
            .try_into()
            .map_err(|_| TokenError::Malformed("mac is not 32 bytes"))?;
        let claims: Claims = codec::decode(&claims_bytes, TOKEN_TEXT_BYTES_MAX)?;
        // Re-encoding must give the same bytes, so one set of claims has one MAC input
        // and two texts never verify to the same claims by accident of encoding.
        if codec::encode(&claims) != claims_bytes {
            return Err(TokenError::Malformed("claims are not canonically encoded"));
        }
        Ok(Self {
            claims,
            claims_bytes,
            mac,
        })
    }
}

/// A token's text could not be parsed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The text is longer than [`TOKEN_TEXT_BYTES_MAX`].
    #[error("token of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text does not start with [`TOKEN_PREFIX`].
    #[error("unknown token format (expected the prefix {TOKEN_PREFIX:?})")]
    UnknownFormat,
    /// The text is not shaped like a token.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The claims do not decode.
    #[error("malformed token claims: {0}")]
    Claims(#[from] DecodeError),
}

/// Why a request's credentials were refused. [`AuthError::http_status`] is 401 for
/// missing, malformed, forged or expired tokens and 403 for requests beyond the grant.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` token came with the request (the scheme is matched
    /// without regard to case).
    #[error("missing bearer token")]
    Missing,
    /// The token text could not be parsed.
    #[error(transparent)]
    Malformed(#[from] TokenError),
    /// The MAC does not match: the token was not issued with this node's key.
    #[error("token signature does not verify")]
    Forged,
    /// The token has expired.
    #[error("token expired at {expired_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// Its expiry.
        expired_at_ms: u64,
        /// The node's clock.
        now_ms: u64,
    },
    /// The request is for another tenant than the token.
    #[error("token is for tenant {token}, request is for tenant {request}")]
    WrongTenant {
        /// The token's tenant.
        token: TenantId,
        /// The request's tenant.
        request: TenantId,
    },
    /// The request needs an action the token does not grant.
    #[error("token grants {granted}; the request needs {needed}")]
    ActionNotGranted {
        /// The actions granted.
        granted: Actions,
        /// The actions the request needs.
        needed: Actions,
    },
    /// The request's scope is not covered by the token's scope.
    #[error("the requested scope ({requested}) is not covered by the token's scope ({granted})")]
    ScopeNotCovered {
        /// The token's scope.
        granted: Scope,
        /// The scope the request asks for.
        requested: Scope,
    },
}

impl AuthError {
    /// 401 when the caller is not authenticated, 403 when authenticated but not allowed.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::Forged
            | AuthError::Expired { .. } => 401,
            AuthError::WrongTenant { .. }
            | AuthError::ActionNotGranted { .. }
            | AuthError::ScopeNotCovered { .. } => 403,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_types::ProtocolName;

    fn claims() -> Claims {
        Claims {
            tenant: TenantId::new("alice").unwrap(),
            principal: PrincipalId::new("bob").unwrap(),
            role: Role::Delegate,
            scope: Scope::protocols(vec![ProtocolName::new("notes").unwrap()]).unwrap(),
            actions: Actions::READ.union(Actions::SYNC),
            expires_at_ms: 1_000,
            grant_id: GrantId::new("g1").unwrap(),
        }
    }

    #[test]
    fn text_form_round_trips_and_verifies() {
        let key = TokenKey::from_bytes([7; 32]);
        let token = Token::issue(&key, claims());
        let text = token.to_string();
        assert!(text.starts_with("weft1."));
        let parsed: Token = text.parse().unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.verify(&key, 999), Ok(&claims()));
    }

    #[test]
    fn forged_expired_and_malformed_tokens_are_refused() {
        let key = TokenKey::from_bytes([7; 32]);
        let other = TokenKey::from_bytes([8; 32]);
        let token = Token::issue(&key, claims());
        assert_eq!(token.verify(&other, 0), Err(AuthError::Forged));
        assert!(matches!(
            token.verify(&key, 1_000),
            Err(AuthError::Expired { .. })
        ));

        // Change the claims but keep the MAC: the MAC no longer matches.
        let mut wider = claims();
        wider.actions = Actions::ALL;
        let tampered = Token::issue(&other, wider);
        let text = format!(
            "{}.{}",
            tampered.to_string().rsplit_once('.').unwrap().0,
            token.to_string().rsplit_once('.').unwrap().1
        );
        let parsed: Token = text.parse().unwrap();
        assert_eq!(parsed.verify(&key, 0), Err(AuthError::Forged));

        assert_eq!(
            "".parse::<Token>(),
            Err(TokenError::Malformed("expected prefix.claims.mac"))
        );
        assert_eq!("weft9.a.b".parse::<Token>(), Err(TokenError::UnknownFormat));
        assert!(matches!(
            "weft1.!!.AAAA".parse::<Token>(),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            "x".repeat(TOKEN_TEXT_BYTES_MAX + 1).parse::<Token>(),
            Err(TokenError::TooLong { .. })
        ));
    }

    #[test]
    fn authorize_refuses_beyond_the_grant() {
        let c = claims();
        let alice = TenantId::new("alice").unwrap();
        let notes = Scope::protocols(vec![ProtocolName::new("notes").unwrap()]).unwrap();
        assert_eq!(c.authorize(&alice, Some(&notes), Actions::READ, 0), Ok(()));
        let wide = c
            .authorize(&alice, Some(&Scope::Full), Actions::READ, 0)
            .unwrap_err();
        assert_eq!(
            wide.to_string(),
            "the requested scope (full) is not covered by the token's scope (protocols notes)"
        );
        assert_eq!(wide.http_status(), 403);
        let write = c
            .authorize(&alice, Some(&notes), Actions::WRITE, 0)
            .unwrap_err();
        assert_eq!(
            write.to_string(),
            "token grants read, sync; the request needs write"
        );
        assert!(matches!(
            c.authorize(
                &TenantId::new("eve").unwrap(),
                Some(&notes),
                Actions::READ,
                0
            ),
            Err(AuthError::WrongTenant { .. })
        ));
        assert_eq!(AuthError::Forged.http_status(), 401);
    }

    #[test]
    fn keys_round_trip_through_hex_and_hide_in_debug() {
        let key = TokenKey::derive(b"passphrase");
        assert_eq!(
            TokenKey::from_hex(&key.to_hex()).unwrap().to_hex(),
            key.to_hex()
        );
        assert_eq!(format!("{key:?}"), "TokenKey(..)");
        assert!(TokenKey::from_hex("zz").is_err());
    }

    #[test]
    fn claims_map_to_authorizations() {
        assert!(matches!(
            claims().authorization(),
            Authorization::Delegate(_)
        ));
        let owner = Claims::owner(
            TenantId::new("a").unwrap(),
            PrincipalId::new("a").unwrap(),
            GrantId::new("o").unwrap(),
            5,
        );
        assert_eq!(owner.authorization(), Authorization::Owner);
    }
}
