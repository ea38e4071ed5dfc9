//! Dependency order for a batch of messages.
//!
//! A batch from a peer arrives in any order; applying it in dependency order lets one pass
//! apply almost everything, and leaves bounded retry passes for what depends on messages
//! outside the batch. The order is:
//!
//! 1. `Configure` messages, each after the configures of the protocols it `uses` that are
//!    in the same batch (composed protocols first; cycles are broken deterministically);
//! 2. initial writes, shallow paths first, so parents precede children;
//! 3. later writes;
//! 4. deletes.
//!
//! Within a rank, messages are ordered by `(timestamp, cid)`, so the order is a pure
//! function of the batch's contents.

use std::collections::BTreeSet;

use sync_types::{Cid, Hlc, Message, ProtocolName};

/// Returns the indices of `messages` in dependency order.
#[cfg(test)]
pub(crate) fn dependency_order(messages: &[Message]) -> Vec<usize> {
    let cids: Vec<Cid> = messages.iter().map(Message::cid).collect();
    dependency_order_by(&messages.iter().collect::<Vec<_>>(), &cids)
}

/// [`dependency_order`] with the messages' cids, in order (a cid hashes the message).
pub(crate) fn dependency_order_by(messages: &[&Message], cids: &[Cid]) -> Vec<usize> {
    let keys: Vec<(Hlc, Cid)> = messages
        .iter()
        .zip(cids)
        .map(|(m, c)| (m.timestamp(), *c))
        .collect();
    let mut configures = Vec::new();
    let mut rest: Vec<(u8, usize, usize)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m {
            Message::Configure(_) => configures.push(i),
            Message::Write(w) if w.is_initial() => rest.push((1, w.path.depth(), i)),
            Message::Write(_) => rest.push((2, 0, i)),
            Message::Delete(_) => rest.push((3, 0, i)),
        }
    }
    let mut order = order_configures(messages, configures, &keys);
    rest.sort_by_key(|&(rank, depth, i)| (rank, depth, keys[i]));
    order.extend(rest.into_iter().map(|(_, _, i)| i));
    order
}

/// Kahn's algorithm over `uses` edges inside the batch; ready configures are taken in
/// `(timestamp, cid)` order, and a cycle is broken by taking the smallest remaining one.
fn order_configures(
    messages: &[&Message],
    mut pending: Vec<usize>,
    keys: &[(Hlc, Cid)],
) -> Vec<usize> {
    pending.sort_by_key(|&i| keys[i]);
    let in_batch: BTreeSet<&ProtocolName> =
        pending.iter().map(|&i| messages[i].protocol()).collect();
    let remaining_of = |p: &ProtocolName, pending: &[usize]| {
        pending
            .iter()
            .filter(|&&i| messages[i].protocol() == p)
            .count()
    };
    let mut out = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|&i| {
            let Message::Configure(c) = &messages[i] else {
                unreachable!("only configures are pending")
            };
            c.definition
                .uses
                .iter()
                .all(|u| !in_batch.contains(u) || remaining_of(u, &pending) == 0)
        });
        // With a cycle nothing is ready: take the smallest, which the retry passes of the
        // apply pipeline will sort out.
        let at = ready.unwrap_or(0);
        let i = pending.remove(at);
        out.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_types::*;

    fn ts(wall_ms: u64) -> Hlc {
        Hlc {
            wall_ms,
            counter: 0,
            node: NodeId(1),
        }
    }
    fn p(s: &str) -> ProtocolName {
        ProtocolName::new(s).unwrap()
    }
    fn configure(name: &str, uses: &[&str], at: u64) -> Message {
        let protocol = p(name);
        let types = vec![TypeRule {
            path: ProtocolPath::new("a").unwrap(),
            data_bytes_max: None,
        }];
        Message::Configure(Configure {
            tenant: TenantId::new("t").unwrap(),
            definition: ProtocolDefinition::new(
                &protocol,
                types,
                uses.iter().map(|u| p(u)).collect(),
            )
            .unwrap(),
            protocol,
            timestamp: ts(at),
            author: PrincipalId::new("a").unwrap(),
        })
    }
    fn write(chain: &[u8], prev: Option<u8>, at: u64) -> Message {
        let ids: Vec<RecordId> = chain
            .iter()
            .map(|&b| RecordId::from_bytes([b; 32]))
            .collect();
        let path = vec!["a"; ids.len()].join("/");
        Message::Write(Write {
            tenant: TenantId::new("t").unwrap(),
            record_id: *ids.last().unwrap(),
            parent_id: ids.len().checked_sub(2).map(|i| ids[i]),
            protocol: p("x"),
            path: ProtocolPath::new(path).unwrap(),
            context_id: ContextId::new(ids).unwrap(),
            prev: prev.map(|b| Cid::from_bytes([b; 32])),
            timestamp: ts(at),
            author: PrincipalId::new("a").unwrap(),
            data: None,
        })
    }
    fn delete(record: u8, at: u64) -> Message {
        Message::Delete(Delete {
            tenant: TenantId::new("t").unwrap(),
            record_id: RecordId::from_bytes([record; 32]),
            protocol: p("x"),
            prev: None,
            timestamp: ts(at),
            author: PrincipalId::new("a").unwrap(),
        })
    }

    #[test]
    fn configures_then_parents_then_children_then_updates_then_deletes() {
        let batch = vec![
            delete(1, 1),
            write(&[1], Some(9), 2),
            write(&[1, 2, 3], None, 3),
            write(&[1, 2], None, 4),
            write(&[1], None, 5),
            configure("x", &["y"], 6),
            configure("y", &["z"], 7),
            configure("z", &[], 8),
        ];
        let order = dependency_order(&batch);
        assert_eq!(order, vec![7, 6, 5, 4, 3, 2, 1, 0]);
    }

    #[test]
    fn the_order_does_not_depend_on_the_input_order() {
        let batch = vec![
            write(&[1], None, 5),
            write(&[2], None, 5),
            write(&[1, 3], None, 1),
            configure("x", &[], 9),
        ];
        let cids =
            |b: &[Message], o: Vec<usize>| o.into_iter().map(|i| b[i].cid()).collect::<Vec<_>>();
        let forward = cids(&batch, dependency_order(&batch));
        let mut reversed = batch.clone();
        reversed.reverse();
        assert_eq!(cids(&reversed, dependency_order(&reversed)), forward);
    }

    #[test]
    fn a_uses_cycle_still_orders_every_message_once() {
        let batch = vec![configure("a", &["b"], 1), configure("b", &["a"], 2)];
        let mut order = dependency_order(&batch);
        order.sort();
        assert_eq!(order, vec![0, 1]);
    }
}
