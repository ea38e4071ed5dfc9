//! The whole log of a tenant, for tests that move a replica's messages by hand.

use sync_engine::Replica;
use sync_ledger::LogRead;
use sync_types::{Message, TenantId};

/// Every message of `tenant`'s log with its inline data, in log order.
pub(crate) fn full_log(r: &Replica, tenant: &TenantId) -> Vec<(Message, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let LogRead::Page(page) = r.changes_since(tenant, after, 100).unwrap() else {
            panic!("gap")
        };
        out.extend(page.entries.into_iter().map(|e| (e.message, e.data)));
        if !page.has_more {
            return out;
        }
        after = page.next;
    }
}
