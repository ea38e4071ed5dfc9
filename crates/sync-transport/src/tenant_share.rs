//! Each tenant's share of the node's in-flight requests.
//!
//! Connection limits are per address, so a tenant whose clients come from many addresses
//! (or one busy tenant behind a proxy) could still keep every request worker of the node
//! busy. A request/reply call or a blob download holds one slot of its tenant's share,
//! [`ServerConfig::requests_per_tenant_max`](crate::ServerConfig::requests_per_tenant_max),
//! for as long as it runs (a download: until its last byte is sent or its connection
//! goes, since the slot lives in the body stream); one more is answered 503 `Overloaded`
//! naming the limit, which clients retry like any overload. Other tenants are not
//! affected. Uploads have their own per-tenant slots (`Handler::blob_write_begin`) and
//! subscriptions their own node-wide limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sync_types::TenantId;

use crate::proto::{ErrorCode, ErrorReply};

/// In-flight requests per tenant.
#[derive(Debug, Default)]
pub(crate) struct TenantShares {
    in_flight: Mutex<HashMap<TenantId, usize>>,
}

/// One in-flight request of a tenant; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct ShareGuard {
    shares: Arc<TenantShares>,
    tenant: TenantId,
}

impl TenantShares {
    /// Takes a slot of `tenant`'s share, or refuses when it holds `max` already.
    pub(crate) fn enter(
        self: &Arc<Self>,
        tenant: &TenantId,
        max: usize,
    ) -> Result<ShareGuard, ErrorReply> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = in_flight.entry(tenant.clone()).or_insert(0);
        if *n >= max.max(1) {
            return Err(ErrorReply::new(
                ErrorCode::Overloaded,
                format!(
                    "tenant {tenant} is at the node's limit of {max} requests in flight per tenant"
                ),
            ));
        }
        *n += 1;
        Ok(ShareGuard {
            shares: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// How many requests of `tenant` are in flight.
    #[cfg(test)]
    fn in_flight(&self, tenant: &TenantId) -> usize {
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.get(tenant).copied().unwrap_or(0)
    }
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        let mut in_flight = self
            .shares
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = in_flight.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_at_its_share_is_refused_and_others_are_not() {
        let shares = Arc::new(TenantShares::default());
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        let first = shares.enter(&a, 2).unwrap();
        let _second = shares.enter(&a, 2).unwrap();
        let refused = shares.enter(&a, 2).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Overloaded);
        assert!(
            refused
                .message
                .contains("limit of 2 requests in flight per tenant"),
            "{}",
            refused.message
        );
        let _other = shares
            .enter(&b, 2)
            .expect("another tenant has its own share");
        drop(first);
        let _again = shares
            .enter(&a, 2)
            .expect("a finished request gives its slot back");
        assert_eq!(shares.in_flight(&a), 2);
    }

    #[test]
    fn shares_are_forgotten_when_a_tenant_has_nothing_in_flight() {
        let shares = Arc::new(TenantShares::default());
        let a = TenantId::new("a").unwrap();
        drop(shares.enter(&a, 1).unwrap());
        assert!(shares.in_flight.lock().unwrap().is_empty());
    }
}
