//! The simulated machines of a local cluster: one network namespace per node, each with an
//! `eth0` plugged into a bridge that lives in the cluster's own underlay namespace, so nothing
//! of the cluster appears in the host's root namespace.
//!
//! Links are made with iproute2's `ip`, the tool every reader of this file can rerun by hand to
//! see what a step does; the agent, which changes links at Pod rate, speaks netlink instead.

use std::process::Command;

use crate::{Error, names};

/// Runs `ip <args>`.
fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Spawn {
            what: "ip".into(),
            source: e,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Sets a sysctl inside a network namespace. `ip netns exec` remounts /sys for the command
/// it runs, which does not matter here: sysctl writes /proc/sys/net, which is per namespace.
fn netns_sysctl(netns: &str, key: &str, value: &str) -> Result<(), Error> {
    ip(&[
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ])
}

/// Creates the underlay namespace and its bridge, which carries the API server's underlay
/// address ([`names::API_IP`]): the underlay namespace is the control-plane machine of the
/// cluster's network.
pub fn create_underlay(cluster: &str) -> Result<(), Error> {
    let ul = names::underlay_netns(cluster);
    ip(&["netns", "add", &ul])?;
    ip(&["-n", &ul, "link", "set", "lo", "up"])?;
    ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
    let addr = format!("{}/{}", names::API_IP, names::UNDERLAY_PREFIX_LEN);
    ip(&["-n", &ul, "addr", "add", &addr, "dev", "br0"])?;
    ip(&["-n", &ul, "link", "set", "br0", "up"])
}

/// Routes `pod_cidr` via `node_ip` in the underlay namespace, so the API server's answers
/// reach the Pods of that node (as a router of a natively routed cluster has a route to each
/// node's podCIDR).
pub fn route_pod_cidr(cluster: &str, pod_cidr: &str, node_ip: &str) -> Result<(), Error> {
    let ul = names::underlay_netns(cluster);
    ip(&["-n", &ul, "route", "replace", pod_cidr, "via", node_ip])
}

/// Creates node `i`'s namespace, its `eth0` on the underlay with its node IP, and turns on
/// forwarding (the node routes between its Pods and the other nodes).
pub fn create_node(cluster: &str, i: u8) -> Result<(), Error> {
    let node = names::node_name(cluster, i);
    let ns = names::node_netns(&node);
    let ul = names::underlay_netns(cluster);
    let port = format!("n{i}");
    ip(&["netns", "add", &ns])?;
    ip(&[
        "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &ul,
    ])?;
    ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
    let addr = format!("{}/{}", names::node_ip(i), names::UNDERLAY_PREFIX_LEN);
    ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    netns_sysctl(&ns, "net.ipv4.ip_forward", "1")
}

/// Deletes a named network namespace; its veths go with it.
pub fn delete_netns(netns: &str) -> Result<(), Error> {
    ip(&["netns", "delete", netns])
}
