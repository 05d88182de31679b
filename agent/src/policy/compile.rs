//! The pure half of NetworkPolicy enforcement: from the API's Pods, Namespaces, Nodes and
//! NetworkPolicies to the contents of the ipcache, policy, endpoint and name maps of one node
//! ([`plan`]). No I/O.
//!
//! The model is Cilium's: every address the ipcache knows resolves to an identity (a Pod's
//! stands for its namespace's and its own labels; the node's is HOST, other nodes' are
//! REMOTE_NODE, an `ipBlock` prefix has its own, anything else is WORLD), and what a local
//! endpoint may receive or send is a set of (peer identity, direction, protocol, port prefix)
//! entries. Peers are resolved against identities, not Pods: all Pods with one label set are
//! one peer, so the entries grow with the number of distinct label sets a policy allows, not
//! with the number of Pods.
//!
//! Semantics, per the networking.k8s.io/v1 API reference and its KEPs:
//! - A Pod is isolated for ingress (egress) once any policy whose `policyTypes` include
//!   Ingress (Egress) selects it; what it may then receive (send) is the union of what the
//!   ingress (egress) rules of every such policy allow.
//! - `ipBlock` matches the addresses of its prefixes that are no Pod's and no node's: Pods and
//!   nodes have /32 ipcache entries of their own identities, which the datapath's longest
//!   prefix match finds first. The API reference leaves open whether ipBlock matches Pod IPs
//!   ("may or may not"); this is Cilium's default (no `policy-cidr-match-mode: nodes`).
//! - Traffic from the node itself (HOST) is always allowed by the datapath (kubelet probes,
//!   as the API reference requires), so no entry is written for it.
//! - Named ports resolve, for ingress, against the container ports of the selected Pod; for
//!   egress, against those of each peer Pod. All Pods of an identity are one peer, so an
//!   egress named port allows the numbers it has on any Pod of that identity (Cilium does
//!   likewise). A named egress port of a rule without peers resolves against every Pod's
//!   identity; towards an `ipBlock` it names nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use keelson_common::{
    IpcacheValue, PolicyKey, PolicyValue,
    policy::{direction, endpoint_flags, identity, ipcache_flags, policy_prefix},
};

use super::{
    identity::{LabelSet, cidr_identities, cidr_text, label_identities, policy_indexes},
    model::{
        Cidr, Desired, EndpointPolicy, Labels, MAX_IDENTITY_NAME, MAX_POLICY_NAME, NodeContext,
        PodInfo, PolicyEntryKey, Snapshot, fit,
    },
    ports::{self, PortPrefix, PortSpec},
    rules::{CompiledPolicy, Namespaces, Peer, Peers, Ports, Rule},
};

static NO_LABELS: Labels = Labels::new();

/// The datapath's form of an address: its wire bytes read as a native u32.
pub fn net_address(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The policy trie key of an entry: `endpoint` and `peer` whole, then protocol and port as
/// far as `port.0` (the prefix length) covers them.
pub fn policy_key(endpoint: Ipv4Addr, peer: u32, dir: u8, port: PortPrefix) -> PolicyEntryKey {
    let (len, proto, dport) = port;
    let key = PolicyKey::lookup(
        net_address(endpoint),
        peer,
        dir,
        if len > policy_prefix::ANY_PROTO {
            proto
        } else {
            0
        },
        if len > policy_prefix::ANY_PORT {
            dport.to_be()
        } else {
            0
        },
    );
    (len, key)
}

/// The contents of the policy maps for the node `node`.
pub fn plan(snapshot: &Snapshot, node: &NodeContext) -> Desired {
    let policies: Vec<CompiledPolicy<'_>> = snapshot
        .policies
        .iter()
        .filter_map(|(key, np)| CompiledPolicy::compile(key, np))
        .collect();
    let universe = Universe::new(snapshot, node, &policies);
    let indexes = policy_indexes(policies.iter().map(|p| p.key));
    let mut out = universe.maps(snapshot, node);
    let mut resolver = Resolver::new(&universe);
    // Every entry as (packed key, position of its policy in namespace/name order), sorted
    // once at the end: a sort of integers costs a fraction of as many map insertions, whose
    // key comparisons go field by field. Of equal keys the lowest position, the first
    // policy, names the entry.
    let mut entries: Vec<(u128, u32)> = Vec::new();
    let mut index_at: Vec<u32> = Vec::new();
    for policy in &policies {
        let selected: Vec<usize> = universe
            .local
            .get(policy.namespace)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&e| {
                policy
                    .pod_selector
                    .matches(&universe.endpoints[e].pod.labels)
            })
            .collect();
        if selected.is_empty() {
            continue;
        }
        let index = indexes[policy.key];
        out.policy_names
            .insert(index, fit(policy.key, MAX_POLICY_NAME));
        let position = index_at.len() as u32;
        index_at.push(index);
        for (rules, dir, flag) in [
            (
                &policy.ingress,
                direction::INGRESS,
                endpoint_flags::INGRESS_ISOLATED,
            ),
            (
                &policy.egress,
                direction::EGRESS,
                endpoint_flags::EGRESS_ISOLATED,
            ),
        ] {
            let Some(rules) = rules else {
                continue;
            };
            for &e in &selected {
                if let Some(ep) = out.endpoints.get_mut(&universe.endpoints[e].ip) {
                    ep.flags |= flag;
                }
            }
            for rule in rules {
                let peers = resolver.resolve(policy.namespace, rule);
                let allowed = Allowed::new(&universe, rule, &peers, dir);
                for &e in &selected {
                    let ep = &universe.endpoints[e];
                    allowed.put(ep, |peer, port| {
                        entries.push((pack(&policy_key(ep.ip, peer, dir, port)), position));
                    });
                }
            }
        }
    }
    entries.sort_unstable();
    entries.dedup_by_key(|e| e.0);
    // Sorted in the map's own order, so the map is built from them in one sweep.
    out.policy = entries
        .into_iter()
        .map(|(key, position)| {
            let value = PolicyValue {
                policy: index_at[position as usize],
                flags: 0,
            };
            (unpack(key), value)
        })
        .collect();
    out
}

/// A policy entry key as one integer that orders as the key does: prefix length, then the
/// fields of [`PolicyKey`] in their order.
fn pack((len, k): &PolicyEntryKey) -> u128 {
    (u128::from(*len) << 96)
        | (u128::from(k.endpoint) << 64)
        | (u128::from(k.identity) << 32)
        | (u128::from(k.dir) << 24)
        | (u128::from(k.proto) << 16)
        | u128::from(k.dport)
}

fn unpack(v: u128) -> PolicyEntryKey {
    // Each field is cut back to its own width.
    let key = PolicyKey {
        endpoint: (v >> 64) as u32,
        identity: (v >> 32) as u32,
        dir: (v >> 24) as u8,
        proto: (v >> 16) as u8,
        dport: v as u16,
    };
    ((v >> 96) as u32, key)
}

/// What one rule allows, whichever Pod it selects: (peer, port) pairs, and the named ports
/// that each selected Pod resolves on its own (ingress).
#[derive(Debug)]
struct Allowed<'r> {
    pairs: Vec<(u32, PortPrefix)>,
    /// Ingress named ports (protocol, name) and the peers they are allowed from.
    own_named: Vec<(u8, &'r str)>,
    peers: Vec<u32>,
}

impl<'r> Allowed<'r> {
    fn new(universe: &Universe<'_>, rule: &'r Rule<'r>, peers: &Resolved, dir: u8) -> Self {
        let ids: Vec<u32> = peers
            .any
            .then_some(identity::ANY)
            .into_iter()
            .chain(peers.labels.iter().map(|&i| universe.idents[i].id))
            .chain(peers.others.iter().copied())
            .collect();
        let mut out = Self {
            pairs: Vec::new(),
            own_named: Vec::new(),
            peers: Vec::new(),
        };
        let specs = match &rule.ports {
            Ports::Any => {
                out.pairs = ids.iter().map(|&id| (id, ports::ANY)).collect();
                return out;
            }
            Ports::List(specs) => specs,
        };
        for spec in specs {
            match *spec {
                PortSpec::Proto(proto) => {
                    out.pairs
                        .extend(ids.iter().map(|&id| (id, ports::any_port(proto))));
                }
                PortSpec::Range { proto, lo, hi } => {
                    let prefixes = ports::range_prefixes(proto, lo, hi);
                    for &id in &ids {
                        out.pairs.extend(prefixes.iter().map(|&p| (id, p)));
                    }
                }
                PortSpec::Named { proto, name } if dir == direction::INGRESS => {
                    out.own_named.push((proto, name));
                }
                PortSpec::Named { proto, name } => {
                    // A rule without peers stands for every Pod, so the name resolves against
                    // every identity's Pods (the upstream suite's "should allow egress access
                    // on one named port"); ipBlock peers have no container ports to name.
                    let label_peers: Vec<usize> = if peers.any {
                        (0..universe.idents.len()).collect()
                    } else {
                        peers.labels.clone()
                    };
                    for &i in &label_peers {
                        let ident = &universe.idents[i];
                        let numbers = ident.named_ports.get(&(name, proto));
                        for &n in numbers.into_iter().flatten() {
                            out.pairs.push((ident.id, (policy_prefix::FULL, proto, n)));
                        }
                    }
                }
            }
        }
        if !out.own_named.is_empty() {
            out.peers = ids;
        }
        out
    }

    /// Hands every (peer, port) the rule allows `ep` to `put`.
    fn put(&self, ep: &Endpoint<'_>, mut put: impl FnMut(u32, PortPrefix)) {
        for &(peer, port) in &self.pairs {
            put(peer, port);
        }
        for &(proto, name) in &self.own_named {
            for c in ep
                .pod
                .ports
                .iter()
                .filter(|c| c.proto == proto && c.name == name)
            {
                for &peer in &self.peers {
                    put(peer, (policy_prefix::FULL, proto, c.port));
                }
            }
        }
    }
}

/// A local Pod with an address.
#[derive(Debug)]
struct Endpoint<'a> {
    pod: &'a PodInfo,
    ip: Ipv4Addr,
}

/// One label identity and what resolving peers needs of it.
#[derive(Debug)]
struct Ident<'a> {
    id: u32,
    namespace: &'a str,
    pod_labels: &'a Labels,
    text: String,
    /// Container port numbers of its Pods by (name, protocol), for egress named ports.
    named_ports: BTreeMap<(&'a str, u8), BTreeSet<u16>>,
}

/// Everything about the cluster that a plan evaluates policies against.
#[derive(Debug)]
struct Universe<'a> {
    /// Pods with an address, each address once (the first Pod by namespace/name has it:
    /// a second one is a view of the API that has not caught up with a reuse yet), with
    /// their identity.
    pods: Vec<(&'a PodInfo, Ipv4Addr, u32)>,
    idents: Vec<Ident<'a>>,
    /// Indexes into `idents`, by namespace.
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
    /// Labels of each namespace (none for one not seen).
    namespace_labels: HashMap<&'a str, &'a Labels>,
    /// Identities of ipBlock prefixes, sorted by prefix.
    cidrs: Vec<(Cidr, u32)>,
    /// This node's Pods with an address.
    endpoints: Vec<Endpoint<'a>>,
    /// Indexes into `endpoints`, by namespace.
    local: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Universe<'a> {
    fn new(snapshot: &'a Snapshot, node: &NodeContext, policies: &[CompiledPolicy<'a>]) -> Self {
        let namespace_labels: HashMap<&str, &Labels> = snapshot
            .namespaces
            .values()
            .map(|ns| (ns.name.as_str(), &ns.labels))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let live: Vec<(&PodInfo, Ipv4Addr, LabelSet<'_>, String)> = snapshot
            .pods
            .values()
            .filter(|p| !p.host_network)
            .filter_map(|p| Some((p, p.ip?)))
            .filter(|(_, ip)| seen.insert(*ip))
            .map(|(p, ip)| {
                let set = LabelSet {
                    namespace: &p.namespace,
                    namespace_labels: namespace_labels
                        .get(p.namespace.as_str())
                        .copied()
                        .unwrap_or(&NO_LABELS),
                    pod_labels: &p.labels,
                };
                (p, ip, set, set.canonical())
            })
            .collect();
        let ids = label_identities(live.iter().map(|(_, _, _, c)| c.as_str()));

        let mut idents: Vec<Ident<'_>> = Vec::with_capacity(ids.len());
        let mut ident_of: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
        let mut pods = Vec::with_capacity(live.len());
        let mut endpoints = Vec::new();
        let mut local: HashMap<&str, Vec<usize>> = HashMap::new();
        for (pod, ip, set, canonical) in &live {
            let i = *ident_of.entry(canonical.as_str()).or_insert_with(|| {
                idents.push(Ident {
                    id: ids[canonical.as_str()],
                    namespace: &pod.namespace,
                    pod_labels: &pod.labels,
                    text: fit(&set.text(), MAX_IDENTITY_NAME),
                    named_ports: BTreeMap::new(),
                });
                idents.len() - 1
            });
            for c in pod.ports.iter().filter(|c| !c.name.is_empty()) {
                idents[i]
                    .named_ports
                    .entry((c.name.as_str(), c.proto))
                    .or_default()
                    .insert(c.port);
            }
            pods.push((*pod, *ip, idents[i].id));
            if pod.node_name == node.node_name {
                local
                    .entry(pod.namespace.as_str())
                    .or_default()
                    .push(endpoints.len());
                endpoints.push(Endpoint { pod, ip: *ip });
            }
        }
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, ident) in idents.iter().enumerate() {
            by_namespace.entry(ident.namespace).or_default().push(i);
        }
        let wanted: BTreeSet<Cidr> = policies.iter().flat_map(|p| p.cidrs()).copied().collect();
        let mut cidrs: Vec<(Cidr, u32)> = cidr_identities(&wanted).into_iter().collect();
        cidrs.sort_unstable();
        Self {
            pods,
            idents,
            by_namespace,
            namespace_labels,
            cidrs,
            endpoints,
            local,
        }
    }

    /// The ipcache, endpoints and identity names, without policy yet.
    fn maps(&self, snapshot: &Snapshot, node: &NodeContext) -> Desired {
        let mut out = Desired::default();
        for &(cidr, id) in &self.cidrs {
            out.ipcache.insert(
                cidr,
                IpcacheValue {
                    identity: id,
                    flags: 0,
                },
            );
            out.identities.insert(id, cidr_text(&cidr));
        }
        for ident in &self.idents {
            out.identities.insert(ident.id, ident.text.clone());
        }
        for &(pod, ip, id) in &self.pods {
            let local = pod.node_name == node.node_name;
            let flags = if local {
                ipcache_flags::LOCAL_POD
            } else {
                ipcache_flags::REMOTE_POD
            };
            out.ipcache.insert(
                Cidr::host(ip),
                IpcacheValue {
                    identity: id,
                    flags,
                },
            );
            if local {
                out.endpoints.insert(
                    ip,
                    EndpointPolicy {
                        identity: id,
                        flags: 0,
                    },
                );
            }
        }
        // Node addresses last: should a Pod claim one (a stale view), the node keeps it.
        for n in snapshot.nodes.values() {
            let id = if n.name == node.node_name {
                identity::HOST
            } else {
                identity::REMOTE_NODE
            };
            for &a in &n.addresses {
                out.ipcache.insert(
                    Cidr::host(a),
                    IpcacheValue {
                        identity: id,
                        flags: 0,
                    },
                );
            }
        }
        out.ipcache.insert(
            Cidr::host(node.node_ip),
            IpcacheValue {
                identity: identity::HOST,
                flags: 0,
            },
        );
        out
    }
}

/// The peers of one rule as identities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Resolved {
    /// Any peer at all (identity::ANY).
    any: bool,
    /// Label identities, as indexes into [`Universe::idents`], sorted and distinct.
    labels: Vec<usize>,
    /// CIDR identities and WORLD, sorted and distinct.
    others: Vec<u32>,
}

/// Resolves rules' peers, remembering each peer's identities: policies of one namespace tend
/// to name the same peers, and a label change then costs a lookup per repeated peer rather
/// than a scan of every identity.
#[derive(Debug)]
struct Resolver<'u, 'a> {
    universe: &'u Universe<'a>,
    /// Identities of Pod peers by (the policy's namespace if the peer looks only there, peer).
    pods: HashMap<(&'u str, &'u Peer<'u>), Vec<usize>>,
}

impl<'u, 'a> Resolver<'u, 'a> {
    fn new(universe: &'u Universe<'a>) -> Self {
        Self {
            universe,
            pods: HashMap::new(),
        }
    }

    fn resolve(&mut self, namespace: &'u str, rule: &'u Rule<'u>) -> Resolved {
        let mut out = Resolved::default();
        let list = match &rule.peers {
            Peers::Any => {
                out.any = true;
                return out;
            }
            Peers::List(list) => list,
        };
        for peer in list {
            match peer {
                Peer::Nothing => {}
                Peer::Block { cidr, except } => {
                    // Every prefix the datapath may return for an address of the block: the
                    // ones inside `cidr` and outside every `except`. A more specific prefix of
                    // another policy inside the block must be allowed too, or its addresses
                    // would lose this rule's allowance to that policy's entry.
                    out.others.extend(
                        self.universe
                            .cidrs
                            .iter()
                            .filter(|(c, _)| {
                                cidr.contains(c) && !except.iter().any(|e| e.contains(c))
                            })
                            .map(|&(_, id)| id),
                    );
                    if cidr.is_everything() {
                        out.others.push(identity::WORLD);
                    }
                }
                Peer::Pods { namespaces, pods } => {
                    let scope = match namespaces {
                        Namespaces::Own => namespace,
                        Namespaces::Matching(_) => "",
                    };
                    let universe = self.universe;
                    let found = self
                        .pods
                        .entry((scope, peer))
                        .or_insert_with(|| universe.pod_peers(namespace, namespaces, pods));
                    out.labels.extend_from_slice(found);
                }
            }
        }
        out.labels.sort_unstable();
        out.labels.dedup();
        out.others.sort_unstable();
        out.others.dedup();
        out
    }
}

impl Universe<'_> {
    /// The label identities of a Pod peer of a policy in `namespace`.
    fn pod_peers(
        &self,
        namespace: &str,
        namespaces: &Namespaces<'_>,
        pods: &super::selector::Selector<'_>,
    ) -> Vec<usize> {
        let matching = |i: &&usize| pods.matches(self.idents[**i].pod_labels);
        match namespaces {
            Namespaces::Own => self
                .by_namespace
                .get(namespace)
                .into_iter()
                .flatten()
                .filter(matching)
                .copied()
                .collect(),
            Namespaces::Matching(sel) => self
                .by_namespace
                .iter()
                .filter(|(ns, _)| {
                    let labels = self
                        .namespace_labels
                        .get(*ns)
                        .copied()
                        .unwrap_or(&NO_LABELS);
                    sel.matches(labels)
                })
                .flat_map(|(_, idents)| idents)
                .filter(matching)
                .copied()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_packed_keys_order_and_round_trip_as_keys() {
        let keys: Vec<PolicyEntryKey> = [
            (72, PolicyKey::lookup(1, 0, 0, 0, 0)),
            (96, PolicyKey::lookup(1, 0, 0, 6, 80)),
            (96, PolicyKey::lookup(u32::MAX, 0, 1, 17, u16::MAX)),
            (80, PolicyKey::lookup(2, u32::MAX, 1, 132, 0)),
            (80, PolicyKey::lookup(2, 7, 1, 132, 0)),
            (93, PolicyKey::lookup(2, 7, 0, 6, 1000u16.to_be())),
        ]
        .into();
        for a in &keys {
            assert_eq!(unpack(pack(a)), *a);
            for b in &keys {
                assert_eq!(pack(a).cmp(&pack(b)), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }
}
