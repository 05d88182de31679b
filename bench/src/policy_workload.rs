//! The cluster of the `policy` benchmark, as API objects: one namespace, a server Pod, a
//! client Pod, remote Pods with label sets of their own on a second node, and N
//! NetworkPolicies that all select the server, the first allowing the client's label set and
//! every other one a remote Pod's. The same objects feed the compiler directly (datapath
//! figures) and go through the API (end-to-end figures).

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{
    api::{
        core::v1::{
            Container, ContainerPort, Namespace, Node, NodeAddress, NodeStatus, Pod, PodIP,
            PodSpec, PodStatus,
        },
        networking::v1::{
            NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

/// The namespace of every object of the benchmark.
pub const NAMESPACE: &str = "benchpol";
/// The server Pod's label (every policy's `podSelector`).
pub const SERVER_LABEL: (&str, &str) = ("app", "server");
/// The label key whose value decides who may connect.
pub const ROLE: &str = "role";
/// The client's role while policy allows it; [`DENIED_ROLE`] is allowed by no policy.
pub const ALLOWED_ROLE: &str = "allowed";
pub const DENIED_ROLE: &str = "denied";
/// The first of the server's connection ports: it listens on [`CONN_PORTS`] consecutive ports
/// (one `endPort` range in every policy). A client reuses a source port only after every
/// destination port has had it, so (over a run's few hundred thousand connections) each
/// connection is a new flow to policy rather than a hit in its conntrack, which keeps every
/// 4-tuple it has seen (see `bench/src/policy.rs`).
pub const CONN_PORT: u16 = 8080;
pub const CONN_PORTS: u16 = 16;
/// The server's bulk-transfer (sink) port.
pub const STREAM_PORT: u16 = 5201;
/// A port no policy allows and nothing listens on: a connection to it is refused without
/// policy and dropped (times out) with it.
pub const CLOSED_PORT: u16 = 9;

/// The Pods of the datapath part. Both are local to the node; the remote Pods are on
/// [`REMOTE_NODE`].
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
/// The node the datapath part compiles for, and its address.
pub const NODE: &str = "benchpol-node";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
/// A node without an agent, holding the remote Pods.
pub const REMOTE_NODE: &str = "benchpol-remote";
pub const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 99);
/// The most remote Pods (and so policies) the address plan supports.
pub const MAX_REMOTE: usize = 10_000;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// The benchmark's namespace, with the name label the API server sets.
pub fn namespace() -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            labels: Some(labels(&[("kubernetes.io/metadata.name", NAMESPACE)])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A Node with one InternalIP.
pub fn node(name: &str, ip: Ipv4Addr) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip.to_string(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The role label of remote Pod `i` (1-based), which policy `i` allows.
pub fn other_role(i: usize) -> String {
    format!("other-{i:05}")
}

/// The address of remote Pod `i` (1-based): 10.244.16.0/18, 250 per /24, clear of the local
/// Pods' 10.244.1.0/24.
pub fn remote_ip(i: usize) -> Ipv4Addr {
    assert!((1..=MAX_REMOTE).contains(&i), "remote Pod {i} out of range");
    let i = u32::try_from(i - 1).expect("small");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 16, 0)) + (i / 250) * 256 + i % 250 + 1)
}

/// A Pod running `command` on `node` (empty: left to the scheduler) with `labels`; `ip`
/// fills `status.podIP`/`podIPs` and `phase: Running` (what a kubelet reports), for Pods
/// no agent runs.
pub fn pod(
    name: &str,
    node: &str,
    pod_labels: &[(&str, &str)],
    command: &[&str],
    ports: &[u16],
    ip: Option<Ipv4Addr>,
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(labels(pod_labels)),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: (!node.is_empty()).then(|| node.to_string()),
            containers: vec![Container {
                name: "main".into(),
                image: Some("example.invalid/benchpol:1".into()),
                command: Some(command.iter().map(|s| (*s).to_string()).collect()),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .iter()
                        .map(|&p| ContainerPort {
                            container_port: i32::from(p),
                            ..Default::default()
                        })
                        .collect()
                }),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(1),
            ..Default::default()
        }),
        status: ip.map(pod_status),
    }
}

/// The status a kubelet reports for a running Pod with address `ip`.
pub fn pod_status(ip: Ipv4Addr) -> PodStatus {
    PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
        ..Default::default()
    }
}

/// Remote Pod `i` (1-based) on [`REMOTE_NODE`] (or `node`), with its own role.
pub fn remote_pod(i: usize, node: &str) -> Pod {
    let role = other_role(i);
    pod(
        &format!("other-{i:05}"),
        node,
        &[(ROLE, &role)],
        &["/bin/false"],
        &[],
        Some(remote_ip(i)),
    )
}

/// The name of policy `i` (0-based).
pub fn policy_name(i: usize) -> String {
    format!("allow-{i:05}")
}

/// Policy `i` (0-based): selects the server, allows TCP to the connection ports and the
/// stream port from Pods of role `allowed` (policy 0) or [`other_role`]`(i)`.
pub fn policy(i: usize) -> NetworkPolicy {
    let role = if i == 0 {
        ALLOWED_ROLE.to_string()
    } else {
        other_role(i)
    };
    let tcp = |port: u16, end: Option<u16>| NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(i32::from(port))),
        end_port: end.map(i32::from),
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(policy_name(i)),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(&[SERVER_LABEL])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[(ROLE, &role)])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![
                    tcp(CONN_PORT, Some(CONN_PORT + CONN_PORTS - 1)),
                    tcp(STREAM_PORT, None),
                ]),
            }]),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_addresses_are_distinct_and_clear_of_the_local_pods() {
        let ips: std::collections::BTreeSet<Ipv4Addr> = (1..=MAX_REMOTE).map(remote_ip).collect();
        assert_eq!(ips.len(), MAX_REMOTE);
        assert_eq!(remote_ip(1), Ipv4Addr::new(10, 244, 16, 1));
        assert_eq!(remote_ip(251), Ipv4Addr::new(10, 244, 17, 1));
        assert!(ips.iter().all(|ip| {
            let [a, b, c, d] = ip.octets();
            (a, b) == (10, 244) && (16..64).contains(&c) && (1..=250).contains(&d)
        }));
    }

    #[test]
    fn the_first_policy_allows_the_client_and_the_others_one_remote_pod_each() {
        // The role the policy's one ingress peer selects, and the ports of its rule.
        let rule = |p: NetworkPolicy| {
            p.spec
                .and_then(|s| s.ingress)
                .and_then(|mut i| i.pop())
                .expect("one ingress rule")
        };
        let role = |p: NetworkPolicy| {
            rule(p)
                .from
                .and_then(|mut f| f.pop())
                .and_then(|peer| peer.pod_selector)
                .and_then(|sel| sel.match_labels)
                .and_then(|mut l| l.remove(ROLE))
                .expect("a role label")
        };
        assert_eq!(role(policy(0)), ALLOWED_ROLE);
        assert_eq!(role(policy(7)), other_role(7));
        let ports = rule(policy(3)).ports.expect("ports");
        assert_eq!(
            ports[0].end_port,
            Some(i32::from(CONN_PORT + CONN_PORTS - 1))
        );
        assert_eq!(policy_name(12), "allow-00012");
    }
}
