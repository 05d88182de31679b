//! Links, addresses, routes and neighbours in the node's and the Pods' network namespaces.
//!
//! All of it goes through the narrow [`NetOps`] trait. The implementation, [`IpRoute`], drives
//! iproute2 (`ip -json`, entered into a namespace with `nsenter --net=<path>`, which unlike
//! `ip netns exec` does not remount `/sys`). iproute2 was chosen over the rtnetlink crate for
//! now because its behaviour for every operation here (veth creation straight into a target
//! namespace, permanent neighbours, scoped routes, protocol-tagged routes) is known and
//! already installed on every node; the trait keeps a switch to rtnetlink local to this file.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;
use serde::Deserialize;

use crate::netns::{self, NetnsError};

/// Route protocol number keelson tags its own routes with, so listing and pruning never touch
/// routes someone else installed (values 0-4 and the ones in /etc/iproute2/rt_protos are taken;
/// 198 is unassigned).
pub const ROUTE_PROTO: u8 = 198;

/// Errors of link, address, route and neighbour operations.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Command(#[from] NetnsError),
    #[error("decoding `ip -json` output of {cmd}")]
    Decode {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("bad MAC address {0:?}")]
    Mac(String),
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
}

/// [`NetOps`] through iproute2.
#[derive(Debug, Clone, Default)]
pub struct IpRoute;

impl IpRoute {
    fn ip(&self, ns: Option<&Path>, args: &[&str]) -> Result<String, NetnsError> {
        match ns {
            None => netns::output("ip", args),
            Some(path) => {
                let net = format!("--net={}", path.display());
                let mut full = vec![net.as_str(), "ip"];
                full.extend_from_slice(args);
                netns::output("nsenter", &full)
            }
        }
    }

    /// Runs an `ip` command whose failure with one of `benign` in stderr means "already in the
    /// wanted state".
    fn ip_tolerant(
        &self,
        ns: Option<&Path>,
        args: &[&str],
        benign: &[&str],
    ) -> Result<(), LinkError> {
        match self.ip(ns, args) {
            Ok(_) => Ok(()),
            Err(NetnsError::Command { stderr, .. })
                if benign.iter().any(|b| stderr.contains(b)) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[derive(Deserialize)]
struct JsonAddrLink {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    addr_info: Vec<JsonAddr>,
}

#[derive(Deserialize)]
struct JsonAddr {
    local: Option<String>,
}

#[derive(Deserialize)]
struct JsonLink {
    ifindex: u32,
    address: Option<String>,
}

#[derive(Deserialize)]
struct JsonRoute {
    dst: String,
    gateway: Option<String>,
    dev: Option<String>,
    scope: Option<String>,
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

/// Parses a route destination as iproute2 prints it (`default`, `10.0.0.1`, `10.0.0.0/24`).
fn parse_dst(s: &str) -> Option<Ipv4Network> {
    if s == "default" {
        return Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).ok();
    }
    if s.contains('/') {
        return s.parse().ok();
    }
    s.parse::<Ipv4Addr>()
        .ok()
        .and_then(|ip| Ipv4Network::new(ip, 32).ok())
}

impl NetOps for IpRoute {
    fn create_veth(
        &self,
        ns: Option<&Path>,
        host: &str,
        peer: &str,
        peer_ns: &Path,
    ) -> Result<(), LinkError> {
        let peer_ns = peer_ns.display().to_string();
        self.ip(
            ns,
            &[
                "link", "add", host, "type", "veth", "peer", "name", peer, "netns", &peer_ns,
            ],
        )?;
        Ok(())
    }

    fn link(&self, ns: Option<&Path>, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        let args = ["-json", "link", "show", "dev", name];
        let out = match self.ip(ns, &args) {
            Ok(out) => out,
            Err(NetnsError::Command { stderr, .. }) if stderr.contains("does not exist") => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let links: Vec<JsonLink> =
            serde_json::from_str(&out).map_err(|source| LinkError::Decode {
                cmd: args.join(" "),
                source,
            })?;
        let Some(link) = links.into_iter().next() else {
            return Ok(None);
        };
        let mac = parse_mac(link.address.as_deref().unwrap_or_default())?;
        Ok(Some(LinkInfo {
            ifindex: link.ifindex,
            mac,
        }))
    }

    fn link_with_addr(
        &self,
        ns: Option<&Path>,
        ip: Ipv4Addr,
    ) -> Result<Option<(String, u32)>, LinkError> {
        let args = ["-json", "-4", "addr", "show"];
        let out = self.ip(ns, &args)?;
        let links: Vec<JsonAddrLink> =
            serde_json::from_str(&out).map_err(|source| LinkError::Decode {
                cmd: args.join(" "),
                source,
            })?;
        let want = ip.to_string();
        Ok(links
            .into_iter()
            .find(|l| {
                l.addr_info
                    .iter()
                    .any(|a| a.local.as_deref() == Some(want.as_str()))
            })
            .map(|l| (l.ifname, l.ifindex)))
    }

    fn delete_link(&self, ns: Option<&Path>, name: &str) -> Result<(), LinkError> {
        self.ip_tolerant(
            ns,
            &["link", "delete", "dev", name],
            &["does not exist", "Cannot find device"],
        )
    }

    fn set_up(&self, ns: Option<&Path>, name: &str) -> Result<(), LinkError> {
        self.ip(ns, &["link", "set", "dev", name, "up"])?;
        Ok(())
    }

    fn add_addr(&self, ns: Option<&Path>, dev: &str, addr: Ipv4Network) -> Result<(), LinkError> {
        let addr = addr.to_string();
        self.ip_tolerant(ns, &["addr", "add", &addr, "dev", dev], &["File exists"])
    }

    fn replace_route(&self, ns: Option<&Path>, route: &Route) -> Result<(), LinkError> {
        let dst = route.dst.to_string();
        let via = route.via.map(|v| v.to_string());
        let proto = ROUTE_PROTO.to_string();
        let mut args = vec!["route", "replace", dst.as_str()];
        if let Some(via) = &via {
            args.extend(["via", via.as_str()]);
        }
        if let Some(dev) = &route.dev {
            args.extend(["dev", dev.as_str()]);
        }
        if route.scope_link {
            args.extend(["scope", "link"]);
        }
        args.extend(["proto", proto.as_str()]);
        self.ip(ns, &args)?;
        Ok(())
    }

    fn delete_route(&self, ns: Option<&Path>, dst: Ipv4Network) -> Result<(), LinkError> {
        let dst = dst.to_string();
        let proto = ROUTE_PROTO.to_string();
        self.ip_tolerant(
            ns,
            &["route", "delete", &dst, "proto", &proto],
            &["No such process"],
        )
    }

    fn routes(&self, ns: Option<&Path>) -> Result<Vec<Route>, LinkError> {
        let proto = ROUTE_PROTO.to_string();
        let args = ["-json", "route", "show", "proto", proto.as_str()];
        let out = self.ip(ns, &args)?;
        let routes: Vec<JsonRoute> =
            serde_json::from_str(&out).map_err(|source| LinkError::Decode {
                cmd: args.join(" "),
                source,
            })?;
        Ok(routes
            .into_iter()
            .filter_map(|r| {
                Some(Route {
                    dst: parse_dst(&r.dst)?,
                    via: r.gateway.and_then(|g| g.parse().ok()),
                    dev: r.dev,
                    scope_link: r.scope.as_deref() == Some("link"),
                })
            })
            .collect())
    }

    fn replace_neigh(
        &self,
        ns: Option<&Path>,
        ip: Ipv4Addr,
        mac: [u8; 6],
        dev: &str,
    ) -> Result<(), LinkError> {
        let (ip, mac) = (ip.to_string(), format_mac(mac));
        self.ip(
            ns,
            &[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
        )?;
        Ok(())
    }

    fn set_ipv4_sysctl(&self, ns: Option<&Path>, key: &str, value: &str) -> Result<(), LinkError> {
        // /proc/sys/net resolves to the namespace of the thread that opens it.
        let path = PathBuf::from("/proc/sys/net/ipv4").join(key);
        let value = value.to_owned();
        netns::in_netns(ns, move || std::fs::write(&path, value.as_bytes()))?.map_err(
            |source| NetnsError::Spawn {
                cmd: format!("sysctl net.ipv4.{key}"),
                source,
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_rejects_garbage() {
        let mac = parse_mac("0a:1B:22:33:44:ff").expect("valid");
        assert_eq!(mac, [0x0a, 0x1b, 0x22, 0x33, 0x44, 0xff]);
        assert_eq!(format_mac(mac), "0a:1b:22:33:44:ff");
        assert!(parse_mac("0a:1b:22:33:44").is_err());
        assert!(parse_mac("0a:1b:22:33:44:55:66").is_err());
        assert!(parse_mac("zz:1b:22:33:44:55").is_err());
    }

    #[test]
    fn route_destinations_as_iproute2_prints_them() {
        assert_eq!(
            parse_dst("default"),
            Some("0.0.0.0/0".parse().expect("cidr"))
        );
        assert_eq!(
            parse_dst("10.244.1.0/24"),
            Some("10.244.1.0/24".parse().expect("cidr"))
        );
        assert_eq!(
            parse_dst("10.244.1.7"),
            Some("10.244.1.7/32".parse().expect("cidr"))
        );
        assert_eq!(parse_dst("fe80::/64"), None);
    }
}
