//! The policy programmer's access to the maps: the ipcache, policy and name maps and the
//! endpoints' identities and isolation flags read back into a [`Desired`], [`PolicyOp`]s
//! applied, and the policy revision bumped after each applied change.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{MapError, lpm_trie::Key};
use keelson_common::{EndpointKey, IdentityName, IpcacheKey, PolicyName, PolicyState, names};

use super::maps::{Maps, MapsError, classify, ip_from_net, ip_to_net, is_not_found};
use crate::policy::model::{Cidr, Desired, EndpointPolicy, POLICY_FLAGS, PolicyEntryKey, PolicyOp};

/// `BPF_EXIST` of the kernel's uapi `bpf.h`: update an element only if it exists.
const BPF_EXIST: u64 = 2;

impl Maps {
    /// Everything the policy programmer owns, as the maps hold it. Endpoint flags are reduced
    /// to the policy bits ([`POLICY_FLAGS`]).
    pub fn read_policy_state(&self) -> Result<Desired, MapsError> {
        let mut out = Desired {
            endpoints: self.read_policy_endpoints()?,
            ..Desired::default()
        };
        for (key, value) in walk(&self.ipcache, names::IPCACHE)? {
            let len = u8::try_from(key.prefix_len()).unwrap_or(u8::MAX);
            // The kernel keeps prefixes within the 32 bits of an IPv4 key.
            if let Some(cidr) = Cidr::new(ip_from_net(key.data().address), len) {
                out.ipcache.insert(cidr, value);
            }
        }
        for (key, value) in walk(&self.policy, names::POLICY)? {
            out.policy.insert((key.prefix_len(), key.data()), value);
        }
        for (index, name) in walk(&self.pol_names, names::POL_NAMES)? {
            out.policy_names.insert(index, text_of(&name.name));
        }
        for (identity, name) in walk(&self.id_names, names::ID_NAMES)? {
            out.identities.insert(identity, text_of(&name.name));
        }
        Ok(out)
    }

    /// The identity and policy flags of every endpoint the CNI server recorded.
    pub fn read_policy_endpoints(&self) -> Result<BTreeMap<Ipv4Addr, EndpointPolicy>, MapsError> {
        Ok(walk(&self.endpoints, names::ENDPOINTS)?
            .into_iter()
            .map(|(k, v)| {
                let policy = EndpointPolicy {
                    identity: v.identity,
                    flags: v.flags & POLICY_FLAGS,
                };
                (ip_from_net(k.address), policy)
            })
            .collect())
    }

    /// Applies `ops` in order. Stops at the first failure (a full map is
    /// [`MapsError::Full`]): the next pass reads the maps back and goes on from what was
    /// written. An endpoint the map does not hold is skipped.
    pub fn apply_policy(&mut self, ops: &[PolicyOp]) -> Result<(), MapsError> {
        for op in ops {
            self.apply_policy_op(op)?;
        }
        Ok(())
    }

    fn apply_policy_op(&mut self, op: &PolicyOp) -> Result<(), MapsError> {
        let what = || format!("{op:?}");
        match op {
            PolicyOp::PutPolicyName { index, name } => {
                let mut value = PolicyName { name: [0; 128] };
                fill(&mut value.name, name);
                self.pol_names
                    .insert(index, value, 0)
                    .map_err(|e| classify(names::POL_NAMES, what(), e))
            }
            PolicyOp::PutIdentityName { identity, name } => {
                let mut value = IdentityName { name: [0; 256] };
                fill(&mut value.name, name);
                self.id_names
                    .insert(identity, value, 0)
                    .map_err(|e| classify(names::ID_NAMES, what(), e))
            }
            PolicyOp::PutPolicy { key, value } => self
                .policy
                .insert(&policy_key(key), value, 0)
                .map_err(|e| classify(names::POLICY, what(), e)),
            PolicyOp::PutIpcache { cidr, value } => self
                .ipcache
                .insert(&ipcache_key(cidr), value, 0)
                .map_err(|e| classify(names::IPCACHE, what(), e)),
            PolicyOp::SetEndpoint { address, policy } => {
                // Read-modify-write: ifindex and MACs are the CNI server's, which runs its map
                // work on this same thread, so nothing writes the entry in between.
                let key = EndpointKey {
                    address: ip_to_net(*address),
                };
                let mut info = match self.endpoints.get(&key, 0) {
                    Ok(info) => info,
                    Err(e) if is_not_found(&e) => return Ok(()),
                    Err(source) => return Err(op_err(names::ENDPOINTS, what(), source)),
                };
                info.identity = policy.identity;
                info.flags = (info.flags & !POLICY_FLAGS) | (policy.flags & POLICY_FLAGS);
                match self.endpoints.insert(key, info, BPF_EXIST) {
                    Ok(()) => Ok(()),
                    Err(e) if is_not_found(&e) => Ok(()),
                    Err(source) => Err(op_err(names::ENDPOINTS, what(), source)),
                }
            }
            PolicyOp::DeleteIpcache { cidr } => gone(
                self.ipcache.remove(&ipcache_key(cidr)),
                names::IPCACHE,
                what,
            ),
            PolicyOp::DeletePolicy { key } => {
                gone(self.policy.remove(&policy_key(key)), names::POLICY, what)
            }
            PolicyOp::DeletePolicyName { index } => {
                gone(self.pol_names.remove(index), names::POL_NAMES, what)
            }
            PolicyOp::DeleteIdentityName { identity } => {
                gone(self.id_names.remove(identity), names::ID_NAMES, what)
            }
        }
    }

    /// The revision the datapath's policy conntrack compares flows against.
    pub fn policy_revision(&self) -> Result<u32, MapsError> {
        Ok(self.policy_state()?.revision)
    }

    /// Increments the policy revision (wrapping), keeping the event switches: every flow the
    /// policy conntrack holds is checked again on its next packet, so that an established
    /// connection a changed policy denies stops. Returns the new revision.
    pub fn bump_policy_revision(&mut self) -> Result<u32, MapsError> {
        let mut state = self.policy_state()?;
        state.revision = state.revision.wrapping_add(1);
        self.pol_state
            .set(0, state, 0)
            .map_err(|source| op_err(names::POL_STATE, "write".into(), source))?;
        Ok(state.revision)
    }

    fn policy_state(&self) -> Result<PolicyState, MapsError> {
        self.pol_state
            .get(&0, 0)
            .map_err(|source| op_err(names::POL_STATE, "read".into(), source))
    }
}

fn policy_key(key: &PolicyEntryKey) -> Key<keelson_common::PolicyKey> {
    Key::new(key.0, key.1)
}

fn ipcache_key(cidr: &Cidr) -> Key<IpcacheKey> {
    Key::new(
        u32::from(cidr.prefix_len()),
        IpcacheKey {
            address: ip_to_net(cidr.addr()),
        },
    )
}

/// Copies `text` into a NUL-padded name, cut to leave the last byte NUL.
fn fill(buf: &mut [u8], text: &str) {
    let bytes = text.as_bytes();
    let n = bytes.len().min(buf.len() - 1);
    buf[..n].copy_from_slice(&bytes[..n]);
}

fn text_of(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Every entry of a map; an entry deleted between two steps of the walk is skipped.
fn walk<K, V>(
    map: impl IntoIterator<Item = Result<(K, V), MapError>>,
    name: &'static str,
) -> Result<Vec<(K, V)>, MapsError> {
    let mut out = Vec::new();
    for item in map {
        match item {
            Ok(kv) => out.push(kv),
            Err(e) if is_not_found(&e) => continue,
            Err(source) => return Err(op_err(name, "iterate".into(), source)),
        }
    }
    Ok(out)
}

/// A delete of an entry already gone is no error.
fn gone(
    result: Result<(), MapError>,
    map: &'static str,
    what: impl FnOnce() -> String,
) -> Result<(), MapsError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(source) => Err(op_err(map, what(), source)),
    }
}

fn op_err(map: &'static str, op: String, source: MapError) -> MapsError {
    MapsError::Op { map, op, source }
}
