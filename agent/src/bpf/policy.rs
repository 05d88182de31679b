//! `keelson bpf dump policy|ipcache|identities`: NetworkPolicy's maps decoded, each number
//! beside what it stands for — an identity's namespace and labels, a policy's
//! `namespace/name`, a port prefix as the range it covers.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::lpm_trie::Key;
use keelson_common::{
    IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, names,
    policy::{direction, identity, ipcache_flags, policy_prefix},
};
use serde_json::json;

use super::Row;
use crate::{
    flows::protocol_name,
    loader::{
        Maps, MapsError,
        maps::{ip_from_net, op_err},
    },
};

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// identity → its labels, as the policy programmer described them.
fn identity_names(maps: &Maps) -> Result<BTreeMap<u32, String>, MapsError> {
    let mut out = BTreeMap::new();
    for item in maps.id_names.iter() {
        let (k, v) = item.map_err(|e| op_err(names::ID_NAMES, "iterate", e))?;
        out.insert(k, text(&v.name));
    }
    Ok(out)
}

fn policy_names(maps: &Maps) -> Result<BTreeMap<u32, String>, MapsError> {
    let mut out = BTreeMap::new();
    for item in maps.pol_names.iter() {
        let (k, v) = item.map_err(|e| op_err(names::POL_NAMES, "iterate", e))?;
        out.insert(k, text(&v.name));
    }
    Ok(out)
}

/// What an identity stands for: its labels, or its reserved meaning.
fn describe(id: u32, names: &BTreeMap<u32, String>) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| identity::kind(id).to_owned())
}

/// `identities`: every identity the policy programmer described.
pub fn identities(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    Ok(identity_names(maps)?
        .into_iter()
        .map(|(id, labels)| Row {
            text: format!("{id} {} {labels}", identity::kind(id)),
            json: json!({ "identity": id, "kind": identity::kind(id), "labels": labels }),
        })
        .collect())
}

/// `ipcache`: prefix → identity, most specific first within an address.
pub fn ipcache(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    let names = identity_names(maps)?;
    let mut entries: Vec<(Key<IpcacheKey>, IpcacheValue)> = Vec::new();
    for item in maps.ipcache.iter() {
        entries.push(item.map_err(|e| op_err(names::IPCACHE, "iterate", e))?);
    }
    let mut rows: Vec<(Ipv4Addr, u32, IpcacheValue)> = entries
        .into_iter()
        .map(|(k, v)| (ip_from_net(k.data().address), k.prefix_len(), v))
        .collect();
    rows.sort_by_key(|(ip, len, _)| (*ip, std::cmp::Reverse(*len)));
    Ok(rows
        .into_iter()
        .map(|(ip, len, v)| {
            let place = if v.flags & ipcache_flags::LOCAL_POD != 0 {
                "local pod"
            } else if v.flags & ipcache_flags::REMOTE_POD != 0 {
                "remote pod"
            } else {
                identity::kind(v.identity)
            };
            let labels = describe(v.identity, &names);
            Row {
                text: format!("{ip}/{len} identity {} ({place}) {labels}", v.identity),
                json: json!({
                    "prefix": format!("{ip}/{len}"),
                    "identity": v.identity,
                    "kind": place,
                    "labels": labels,
                }),
            }
        })
        .collect())
}

/// The ports a policy key's prefix covers: `None` for every protocol, `Some((proto, None))`
/// for every port of one, else the inclusive range.
fn ports(key: &PolicyKey, prefix_len: u32) -> Option<(u8, Option<(u16, u16)>)> {
    if prefix_len <= policy_prefix::ANY_PROTO {
        return None;
    }
    if prefix_len <= policy_prefix::ANY_PORT {
        return Some((key.proto, None));
    }
    let bits = (prefix_len - policy_prefix::ANY_PORT).min(16);
    let base = u16::from_be(key.dport);
    let span = if bits == 16 { 0 } else { u16::MAX >> bits };
    Some((key.proto, Some((base & !span, base | span))))
}

/// `policy`: per local endpoint, what it may receive (ingress) or send (egress), from whom,
/// on which ports, and which NetworkPolicy says so.
pub fn policy(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    let ids = identity_names(maps)?;
    let policies = policy_names(maps)?;
    let endpoints: BTreeMap<Ipv4Addr, u32> = maps
        .read_endpoints()?
        .into_iter()
        .map(|(ip, ep)| (ip, ep.identity))
        .collect();
    let mut entries: Vec<(Key<PolicyKey>, PolicyValue)> = Vec::new();
    for item in maps.policy.iter() {
        entries.push(item.map_err(|e| op_err(names::POLICY, "iterate", e))?);
    }
    let mut rows: Vec<(Ipv4Addr, u8, u32, u32, PolicyKey, PolicyValue)> = entries
        .into_iter()
        .map(|(k, v)| {
            let data = k.data();
            let ep = ip_from_net(data.endpoint);
            (
                ep,
                data.dir,
                u32::from_be(data.identity),
                k.prefix_len(),
                data,
                v,
            )
        })
        .collect();
    rows.sort_by_key(|r| (r.0, r.1, r.2, r.4.proto, u16::from_be(r.4.dport), r.3));
    Ok(rows
        .into_iter()
        .map(|(ep, dir, peer, len, key, v)| {
            let ep_labels = endpoints
                .get(&ep)
                .map_or_else(|| "?".to_owned(), |id| describe(*id, &ids));
            let peer_labels = if peer == identity::ANY {
                "any peer".to_owned()
            } else {
                describe(peer, &ids)
            };
            let (proto, range) = match ports(&key, len) {
                None => ("any".to_owned(), None),
                Some((p, r)) => (protocol_name(p), r),
            };
            let port_text = match range {
                None => "all ports".to_owned(),
                Some((a, b)) if a == b => format!("port {a}"),
                Some((a, b)) => format!("ports {a}-{b}"),
            };
            let policy = policies.get(&v.policy).cloned().unwrap_or_default();
            let arrow = if dir == direction::INGRESS { "<-" } else { "->" };
            Row {
                text: format!(
                    "{ep} ({ep_labels}) {} {arrow} identity {peer} ({peer_labels}) {proto} {port_text}: allowed by {policy}",
                    direction::name(dir)
                ),
                json: json!({
                    "endpoint": ep.to_string(),
                    "endpoint_labels": ep_labels,
                    "direction": direction::name(dir),
                    "peer_identity": peer,
                    "peer_labels": peer_labels,
                    "protocol": proto,
                    "ports": range.map(|(a, b)| json!([a, b])),
                    "policy": policy,
                }),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_read_back_as_the_ranges_they_cover() {
        let key = PolicyKey::lookup(0, 5, direction::INGRESS, 6, 80u16.to_be());
        assert_eq!(ports(&key, policy_prefix::ANY_PROTO), None);
        assert_eq!(ports(&key, policy_prefix::ANY_PORT), Some((6, None)));
        assert_eq!(ports(&key, policy_prefix::FULL), Some((6, Some((80, 80)))));
        assert_eq!(ports(&key, 80 + 15), Some((6, Some((80, 81)))));
        let key = PolicyKey::lookup(0, 5, direction::INGRESS, 6, 1024u16.to_be());
        assert_eq!(ports(&key, 80 + 6), Some((6, Some((1024, 2047)))));
    }
}
