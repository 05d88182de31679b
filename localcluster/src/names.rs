//! The names a local cluster gives to what it creates in the kernel and on disk. `keelson down`
//! finds everything again from these names alone, so it cleans up after a crash too.

use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted on hybrid hosts (v1 controllers, v2 for BPF hooks).
pub const CGROUP2_HYBRID: &str = "/sys/fs/cgroup/unified";
/// bpffs directory under which each node pins its maps and links.
pub const BPFFS_KEELSON: &str = "/sys/fs/bpf/keelson";
/// Where `ip netns` keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Records which data directory each running local cluster uses.
pub const RUN_DIR: &str = "/run/keelson/clusters";
/// Underlay subnet: node i gets 10.250.0.(10+i).
pub const UNDERLAY_PREFIX: &str = "10.250.0";
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// The API server's address on the underlay: it listens here (inside the underlay namespace)
/// besides the host's loopback, and the `kubernetes` Service's endpoint names it, so every
/// Pod reaches the API server through the Service as on a real cluster.
pub const API_IP: &str = "10.250.0.1";
/// The API server's port on the underlay (kube-apiserver's default secure port).
pub const API_PORT: u16 = 6443;
/// The Services' ClusterIP range the server allocates from.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The cluster DNS Service's ClusterIP: the tenth address of [`SERVICE_CIDR`], as kubeadm
/// chooses it. Every Pod's resolv.conf names it (the agents' `--cluster-dns`).
pub const CLUSTER_DNS: &str = "10.96.0.10";
/// The v1 cgroup hierarchies the agents put container limits in (`<hierarchy>/keelson/<node>`).
pub const CGROUP1_LIMITS: [&str; 2] = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu"];
/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// LoadBalancer pool the server assigns `status.loadBalancer.ingress` addresses from. It lies
/// outside the underlay subnet on purpose: like addresses a BGP speaker announces, they are on
/// no link and are reached through a route via a node IP, so traffic to them crosses the
/// node's uplink and meets the LoadBalancer datapath there.
pub const LB_POOL: &str = "10.250.128.0/24";

/// A cluster name is short and alphanumeric, so that every derived name (node, namespace,
/// interface) stays within the kernel's limits and one cluster's names never match another's.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {name:?} must be 1 to 20 lowercase letters or digits, starting with a letter"
        ))
    }
}

/// Name of node `i` (1-based) of cluster `cluster`.
pub fn node_name(cluster: &str, i: u8) -> String {
    format!("{cluster}-n{i}")
}

/// Network namespace of a node.
pub fn node_netns(node: &str) -> String {
    format!("kls-{node}")
}

/// Network namespace holding the underlay bridge every node of the cluster is plugged into.
pub fn underlay_netns(cluster: &str) -> String {
    format!("kls-{cluster}-ul")
}

/// Underlay address of node `i`.
pub fn node_ip(i: u8) -> String {
    format!("{UNDERLAY_PREFIX}.{}", 10 + u16::from(i))
}

/// Whether a network namespace name belongs to `cluster`: its underlay, one of its nodes, or a
/// Pod of one of its nodes (`kls-<cluster>-n<i>-<8 hex>`).
pub fn is_cluster_netns(cluster: &str, netns: &str) -> bool {
    let Some(rest) = netns
        .strip_prefix("kls-")
        .and_then(|r| r.strip_prefix(cluster))
    else {
        return false;
    };
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    if rest == "ul" {
        return true;
    }
    is_node_suffix(rest)
        || rest.split_once('-').is_some_and(|(node, pod)| {
            is_node_suffix(node) && pod.len() == 8 && pod.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

/// Whether a node name (the pin directory's name) belongs to `cluster`.
pub fn is_cluster_node(cluster: &str, node: &str) -> bool {
    node.strip_prefix(cluster)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(is_node_suffix)
}

fn is_node_suffix(s: &str) -> bool {
    s.strip_prefix('n')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// cgroup v2 directory holding everything of the cluster: `system` (server and agents) and one
/// directory per node (the node's socket-LB attach point, Pods below it).
pub fn cluster_cgroup(cgroup2: &Path, cluster: &str) -> PathBuf {
    cgroup2.join("keelson").join(cluster)
}

/// Default data directory of a cluster.
pub fn default_data_dir(cluster: &str) -> PathBuf {
    PathBuf::from("/var/lib/keelson").join(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_checked() {
        assert!(validate_cluster_name("keelson").is_ok());
        assert!(validate_cluster_name("e2e42").is_ok());
        for bad in ["", "a-b", "A", "1abc", "abcdefghijklmnopqrstu", "a_b"] {
            assert!(validate_cluster_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn netns_of_a_cluster_match_only_that_cluster() {
        assert!(is_cluster_netns("a", "kls-a-ul"));
        assert!(is_cluster_netns("a", "kls-a-n1"));
        assert!(is_cluster_netns("a", "kls-a-n12-0123abcd"));
        assert!(!is_cluster_netns("a", "kls-ab-n1"));
        assert!(!is_cluster_netns("a", "kls-a-n1-xyz"));
        assert!(!is_cluster_netns("a", "kls-a-n"));
        assert!(!is_cluster_netns("a", "kls-a"));
        assert!(!is_cluster_netns("a", "other"));
        assert!(!is_cluster_netns("keelson", "kls-t-socklb1"));
    }

    #[test]
    fn nodes_of_a_cluster_match_only_that_cluster() {
        assert!(is_cluster_node("a", "a-n1"));
        assert!(!is_cluster_node("a", "ab-n1"));
        assert!(!is_cluster_node("a", "a-n1x"));
        assert_eq!(node_netns(&node_name("c", 2)), "kls-c-n2");
        assert_eq!(node_ip(2), "10.250.0.12");
    }

    /// Parses `a.b.c.d/len` into (network address as u32, prefix length).
    fn cidr(s: &str) -> (u32, u32) {
        let (ip, len) = s.split_once('/').expect("a/len");
        let ip: std::net::Ipv4Addr = ip.parse().expect("IPv4 address");
        (u32::from(ip), len.parse().expect("prefix length"))
    }

    #[test]
    fn lb_pool_lies_outside_the_underlay() {
        let (pool, pool_len) = cidr(LB_POOL);
        let (underlay, underlay_len) = cidr(&format!("{UNDERLAY_PREFIX}.0/{UNDERLAY_PREFIX_LEN}"));
        let shorter = pool_len.min(underlay_len);
        let mask = u32::MAX << (32 - shorter);
        assert_ne!(
            pool & mask,
            underlay & mask,
            "{LB_POOL} overlaps the underlay"
        );
        assert_eq!(
            pool & !(u32::MAX << (32 - pool_len)),
            0,
            "{LB_POOL} is not a network address"
        );
    }
}
