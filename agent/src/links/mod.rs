//! Links, addresses, routes and neighbours in the node's and the Pods' network namespaces.
//!
//! All of it goes through the narrow [`NetOps`] trait, implemented by [`Netlink`]: rtnetlink
//! requests encoded by `netlink-packet-route` on a socket opened inside the namespace to act in
//! (no `ip` or `nsenter` processes: a CNI ADD costs a dozen round trips to the kernel instead
//! of a dozen fork+exec).

mod netlink;
mod socket;
#[cfg(test)]
mod tests;

use std::{net::Ipv4Addr, path::Path};

use ipnetwork::Ipv4Network;

pub use self::netlink::Netlink;
use crate::netns::NetnsError;

/// Route protocol number keelson tags its own routes with, so listing and pruning never touch
/// routes someone else installed (values 0-4 and the ones in /etc/iproute2/rt_protos are taken;
/// 198 is unassigned).
pub const ROUTE_PROTO: u8 = 198;

/// Errors of link, address, route and neighbour operations.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink: {op}")]
    Netlink {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding the kernel's answer to {op}")]
    Decode {
        op: String,
        #[source]
        source: netlink_packet_core::DecodeError,
    },
    #[error("no link named {0}")]
    NoLink(String),
    #[error("writing sysctl net.ipv4.{key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad MAC address {0:?}")]
    Mac(String),
}

impl LinkError {
    /// The errno the kernel refused a request with, if that is what happened.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Netlink { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What the agent needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// A route as keelson installs it: to `dst`, either via a gateway or straight onto a device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Network,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
    /// `scope link`: the destination is directly reachable on `dev`.
    pub scope_link: bool,
}

/// Side effects on links and routes. `ns` is the namespace to act in (`None`: the agent's own).
pub trait NetOps: Send + Sync {
    /// Creates a veth pair: `host` in `ns`, its peer `peer` directly in the namespace `peer_ns`.
    fn create_veth(
        &self,
        ns: Option<&Path>,
        host: &str,
        peer: &str,
        peer_ns: &Path,
    ) -> Result<(), LinkError>;
    /// The link named `name`, or `None` if there is none.
    fn link(&self, ns: Option<&Path>, name: &str) -> Result<Option<LinkInfo>, LinkError>;
    /// The name and ifindex of the link that holds the address `ip`, if any.
    fn link_with_addr(
        &self,
        ns: Option<&Path>,
        ip: Ipv4Addr,
    ) -> Result<Option<(String, u32)>, LinkError>;
    /// Deletes a link (and so a veth's peer); a missing link is not an error.
    fn delete_link(&self, ns: Option<&Path>, name: &str) -> Result<(), LinkError>;
    fn set_up(&self, ns: Option<&Path>, name: &str) -> Result<(), LinkError>;
    /// Adds an address; an address already present is not an error.
    fn add_addr(&self, ns: Option<&Path>, dev: &str, addr: Ipv4Network) -> Result<(), LinkError>;
    /// Adds or replaces a route, tagged with [`ROUTE_PROTO`].
    fn replace_route(&self, ns: Option<&Path>, route: &Route) -> Result<(), LinkError>;
    /// Deletes keelson's route to `dst`; a missing route is not an error.
    fn delete_route(&self, ns: Option<&Path>, dst: Ipv4Network) -> Result<(), LinkError>;
    /// keelson's routes (those tagged with [`ROUTE_PROTO`]) in the main table.
    fn routes(&self, ns: Option<&Path>) -> Result<Vec<Route>, LinkError>;
    /// Adds or replaces a permanent neighbour entry.
    fn replace_neigh(
        &self,
        ns: Option<&Path>,
        ip: Ipv4Addr,
        mac: [u8; 6],
        dev: &str,
    ) -> Result<(), LinkError>;
    /// Writes an IPv4 sysctl of the namespace (`net.ipv4.<key>`), e.g. `ip_forward`.
    fn set_ipv4_sysctl(&self, ns: Option<&Path>, key: &str, value: &str) -> Result<(), LinkError>;
    /// Runs `f` with operations in `ns` that share one connection to that namespace, closed
    /// when `f` returns: a run of changes in a Pod's namespace enters it once, not once per
    /// change. Operations in other namespaces through the handle `f` gets work too, each on
    /// a connection of its own.
    fn in_namespace(
        &self,
        ns: Option<&Path>,
        f: &mut dyn FnMut(&dyn NetOps) -> Result<(), LinkError>,
    ) -> Result<(), LinkError>;
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], LinkError> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let part = parts.next().ok_or_else(|| LinkError::Mac(s.to_owned()))?;
        *b = u8::from_str_radix(part, 16).map_err(|_| LinkError::Mac(s.to_owned()))?;
    }
    if parts.next().is_some() {
        return Err(LinkError::Mac(s.to_owned()));
    }
    Ok(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Brings up `lo` of the namespace at `ns` (`None`: the calling thread's), which a new
/// namespace starts with down.
pub(crate) fn bring_up_loopback(ns: Option<&Path>) -> Result<(), LinkError> {
    Netlink::default().set_up(ns, "lo")
}
