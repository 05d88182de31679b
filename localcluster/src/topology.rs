//! The simulated machines of a local cluster: one network namespace per node, each with an
//! `eth0` plugged into a bridge that lives in the cluster's own underlay namespace, so nothing
//! of the cluster appears in the host's root namespace.
//!
//! Namespaces, links, addresses, routes and sysctls are made through the agent's netlink
//! [`Netlink`] (no `ip` processes), each step the equivalent of the `ip` command in its comment.

use std::path::PathBuf;

use keelson_agent::{
    links::{LinkError, NetOps as _, Netlink, Route},
    netns::{self, NetnsError},
};

use crate::{Error, names};

fn link_err(step: String) -> impl FnOnce(LinkError) -> Error {
    move |e| Error::Network {
        step,
        source: Box::new(e),
    }
}

fn netns_err(step: String) -> impl FnOnce(NetnsError) -> Error {
    move |e| Error::Network {
        step,
        source: Box::new(e),
    }
}

fn bad_input(step: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Network {
        step: step.to_owned(),
        source: Box::new(e),
    }
}

/// `ip netns add <name>` (loopback up), failing when it exists already.
fn add_netns(name: &str) -> Result<PathBuf, Error> {
    if netns::named_path(name).exists() {
        return Err(bad_input(
            &format!("ip netns add {name}"),
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    netns::create_named(name).map_err(netns_err(format!("ip netns add {name}")))
}

/// Creates the underlay namespace and its bridge, which carries the API server's underlay
/// address ([`names::API_IP`]): the underlay namespace is the control-plane machine of the
/// cluster's network.
pub fn create_underlay(cluster: &str) -> Result<(), Error> {
    let ul = names::underlay_netns(cluster);
    let path = add_netns(&ul)?;
    let ns = Some(path.as_path());
    let net = Netlink::default();
    // ip -n <ul> link add br0 type bridge
    net.create_bridge(ns, "br0")
        .map_err(link_err(format!("ip -n {ul} link add br0 type bridge")))?;
    let addr = format!("{}/{}", names::API_IP, names::UNDERLAY_PREFIX_LEN);
    let cidr = addr
        .parse()
        .map_err(|e| bad_input(&format!("ip -n {ul} addr add {addr} dev br0"), e))?;
    net.add_addr(ns, "br0", cidr)
        .map_err(link_err(format!("ip -n {ul} addr add {addr} dev br0")))?;
    net.set_up(ns, "br0")
        .map_err(link_err(format!("ip -n {ul} link set br0 up")))
}

/// Routes `pod_cidr` via `node_ip` in the underlay namespace, so the API server's answers
/// reach the Pods of that node (as a router of a natively routed cluster has a route to each
/// node's podCIDR).
pub fn route_pod_cidr(cluster: &str, pod_cidr: &str, node_ip: &str) -> Result<(), Error> {
    let ul = names::underlay_netns(cluster);
    let what = format!("ip -n {ul} route replace {pod_cidr} via {node_ip}");
    let route = Route {
        dst: pod_cidr.parse().map_err(|e| bad_input(&what, e))?,
        via: Some(node_ip.parse().map_err(|e| bad_input(&what, e))?),
        dev: None,
        scope_link: false,
    };
    let path = netns::named_path(&ul);
    Netlink::default()
        .replace_route(Some(&path), &route)
        .map_err(link_err(what))
}

/// Creates node `i`'s namespace, its `eth0` on the underlay with its node IP, and turns on
/// forwarding (the node routes between its Pods and the other nodes).
pub fn create_node(cluster: &str, i: u8) -> Result<(), Error> {
    let node = names::node_name(cluster, i);
    let ns_name = names::node_netns(&node);
    let ul = names::underlay_netns(cluster);
    let port = format!("n{i}");
    let path = add_netns(&ns_name)?;
    let ul_path = netns::named_path(&ul);
    let (ns, uns) = (Some(path.as_path()), Some(ul_path.as_path()));
    let net = Netlink::default();
    // ip -n <ns> link add eth0 type veth peer name n<i> netns <ul>
    net.create_veth(ns, "eth0", &port, &ul_path)
        .map_err(link_err(format!(
            "ip -n {ns_name} link add eth0 type veth peer name {port} netns {ul}"
        )))?;
    net.set_master(uns, &port, "br0")
        .map_err(link_err(format!("ip -n {ul} link set {port} master br0")))?;
    net.set_up(uns, &port)
        .map_err(link_err(format!("ip -n {ul} link set {port} up")))?;
    let addr = format!("{}/{}", names::node_ip(i), names::UNDERLAY_PREFIX_LEN);
    let what = format!("ip -n {ns_name} addr add {addr} dev eth0");
    let cidr = addr.parse().map_err(|e| bad_input(&what, e))?;
    net.add_addr(ns, "eth0", cidr).map_err(link_err(what))?;
    net.set_up(ns, "eth0")
        .map_err(link_err(format!("ip -n {ns_name} link set eth0 up")))?;
    net.set_ipv4_sysctl(ns, "ip_forward", "1")
        .map_err(link_err(format!(
            "ip netns exec {ns_name} sysctl -w net.ipv4.ip_forward=1"
        )))
}

/// Deletes a named network namespace; its veths go with it.
pub fn delete_netns(netns: &str) -> Result<(), Error> {
    netns::delete_named(netns).map_err(netns_err(format!("ip netns delete {netns}")))
}
