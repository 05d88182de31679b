//! The map operations from one content of the policy maps to another ([`diff`]), in an order
//! that never denies a packet that both the old and the new policy allow.
//!
//! The datapath reads the maps while they are written one entry at a time, so every moment
//! between two operations is a state it may enforce. The order:
//!
//! 1. names (`pol_names`, `id_names`): only the dump tools and flow events read them;
//! 2. new and changed policy entries: a peer is allowed under its new identity before any
//!    address resolves to it, and an endpoint is allowed what it needs before it is isolated;
//! 3. new and changed ipcache entries: addresses move to their new identities;
//! 4. endpoint identities and isolation flags: isolation starts once its allowances exist,
//!    and ends before they go;
//! 5. removed ipcache entries: their addresses fall back to a shorter prefix's identity or
//!    WORLD, which the new entries already allow where they should;
//! 6. removed policy entries: nothing resolves to their identities any more, and no endpoint
//!    they allowed something for is still isolated by their policy alone;
//! 7. removed names.

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::model::{Desired, EndpointPolicy, PolicyOp};

/// The operations that make the maps holding `current` hold `desired`.
///
/// Endpoints are the CNI server's entries: only those `current` holds (read from the map) are
/// updated; one that is not there yet gets its identity and flags on a later pass, once it is.
pub fn diff(current: &Desired, desired: &Desired) -> Vec<PolicyOp> {
    let mut names = Vec::new();
    let mut names_gone = Vec::new();
    merge(
        &current.policy_names,
        &desired.policy_names,
        |&index, name| {
            names.push(PolicyOp::PutPolicyName {
                index,
                name: name.clone(),
            });
        },
        |&index| names_gone.push(PolicyOp::DeletePolicyName { index }),
    );
    merge(
        &current.identities,
        &desired.identities,
        |&identity, name| {
            names.push(PolicyOp::PutIdentityName {
                identity,
                name: name.clone(),
            });
        },
        |&identity| names_gone.push(PolicyOp::DeleteIdentityName { identity }),
    );
    let mut policy = Vec::new();
    let mut policy_gone = Vec::new();
    merge(
        &current.policy,
        &desired.policy,
        |&key, &value| policy.push(PolicyOp::PutPolicy { key, value }),
        |&key| policy_gone.push(PolicyOp::DeletePolicy { key }),
    );
    let mut ipcache = Vec::new();
    let mut ipcache_gone = Vec::new();
    merge(
        &current.ipcache,
        &desired.ipcache,
        |&cidr, &value| ipcache.push(PolicyOp::PutIpcache { cidr, value }),
        |&cidr| ipcache_gone.push(PolicyOp::DeleteIpcache { cidr }),
    );
    let endpoints = diff_endpoints(&current.endpoints, &desired.endpoints);
    let mut ops = names;
    for part in [
        policy,
        ipcache,
        endpoints,
        ipcache_gone,
        policy_gone,
        names_gone,
    ] {
        ops.extend(part);
    }
    ops
}

/// The endpoint updates alone: those `current` holds whose identity or flags differ.
pub fn diff_endpoints(
    current: &BTreeMap<Ipv4Addr, EndpointPolicy>,
    desired: &BTreeMap<Ipv4Addr, EndpointPolicy>,
) -> Vec<PolicyOp> {
    desired
        .iter()
        .filter(|(ip, want)| current.get(ip).is_some_and(|have| have != *want))
        .map(|(&address, &policy)| PolicyOp::SetEndpoint { address, policy })
        .collect()
}

/// Walks two sorted maps in step: `put` for every key of `want` that `have` lacks or holds
/// another value for, `gone` for every key of `have` that `want` lacks.
fn merge<'m, K: Ord, V: PartialEq>(
    have: &'m BTreeMap<K, V>,
    want: &'m BTreeMap<K, V>,
    mut put: impl FnMut(&'m K, &'m V),
    mut gone: impl FnMut(&'m K),
) {
    let mut have = have.iter().peekable();
    let mut want = want.iter().peekable();
    loop {
        match (have.peek(), want.peek()) {
            (None, None) => return,
            (Some(&(k, _)), None) => {
                gone(k);
                have.next();
            }
            (None, Some(&(k, v))) => {
                put(k, v);
                want.next();
            }
            (Some(&(hk, hv)), Some(&(wk, wv))) => match hk.cmp(wk) {
                std::cmp::Ordering::Less => {
                    gone(hk);
                    have.next();
                }
                std::cmp::Ordering::Greater => {
                    put(wk, wv);
                    want.next();
                }
                std::cmp::Ordering::Equal => {
                    if hv != wv {
                        put(wk, wv);
                    }
                    have.next();
                    want.next();
                }
            },
        }
    }
}

impl Desired {
    /// What the maps hold after `ops` were applied to maps holding `self` (as
    /// `Maps::apply_policy` applies them: an endpoint not held is not added).
    pub fn apply(&mut self, ops: &[PolicyOp]) {
        for op in ops {
            match op {
                PolicyOp::PutPolicyName { index, name } => {
                    self.policy_names.insert(*index, name.clone());
                }
                PolicyOp::PutIdentityName { identity, name } => {
                    self.identities.insert(*identity, name.clone());
                }
                PolicyOp::PutPolicy { key, value } => {
                    self.policy.insert(*key, *value);
                }
                PolicyOp::PutIpcache { cidr, value } => {
                    self.ipcache.insert(*cidr, *value);
                }
                PolicyOp::SetEndpoint { address, policy } => {
                    if let Some(e) = self.endpoints.get_mut(address) {
                        *e = *policy;
                    }
                }
                PolicyOp::DeleteIpcache { cidr } => {
                    self.ipcache.remove(cidr);
                }
                PolicyOp::DeletePolicy { key } => {
                    self.policy.remove(key);
                }
                PolicyOp::DeletePolicyName { index } => {
                    self.policy_names.remove(index);
                }
                PolicyOp::DeleteIdentityName { identity } => {
                    self.identities.remove(identity);
                }
            }
        }
    }
}
