//! [`NetOps`] over rtnetlink: each operation is one or two requests (a name → ifindex lookup,
//! then the change) on a socket in the namespace to act in, built with `rtnetlink`'s message
//! builders and `netlink-packet-route`'s types.
//!
//! The socket of one long-lived namespace (the node's) is kept open and reused; a socket for
//! any other namespace (a Pod's) is opened per operation and closed right after, because an
//! open socket holds a reference on its namespace (net/core/net_namespace.c) and would keep a
//! deleted Pod namespace, and what is in it, alive.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use ipnetwork::Ipv4Network;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};

use super::{LinkError, LinkInfo, NetOps, ROUTE_PROTO, Route, socket::NlSocket};
use crate::netns::NetnsError;

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;

/// [`NetOps`] through rtnetlink.
#[derive(Debug, Default)]
pub struct Netlink {
    /// The namespace whose socket is kept (`None`: the agent's own) and the socket, opened on
    /// first use and dropped after a transport error so the next call starts clean.
    kept: (Option<PathBuf>, Mutex<Option<NlSocket>>),
}

impl Netlink {
    /// Keeps a socket open for `ns` (the node's namespace; `None`: the caller's own), the one
    /// almost every operation is in.
    pub fn for_namespace(ns: Option<PathBuf>) -> Self {
        Self {
            kept: (ns, Mutex::new(None)),
        }
    }

    /// Runs `f` with a socket in `ns`.
    fn with<T>(
        &self,
        ns: Option<&Path>,
        f: impl FnOnce(&mut NlSocket) -> Result<T, LinkError>,
    ) -> Result<T, LinkError> {
        if self.kept.0.as_deref() == ns {
            // A panic while holding the lock leaves at worst a socket with unread replies,
            // which the sequence numbers skip over.
            let mut kept = self
                .kept
                .1
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sock = match &mut *kept {
                Some(sock) => sock,
                empty @ None => empty.insert(NlSocket::open(ns)?),
            };
            let out = f(sock);
            if matches!(out, Err(LinkError::Netlink { ref source, .. }) if source.raw_os_error().is_none())
            {
                *kept = None;
            }
            return out;
        }
        f(&mut NlSocket::open(ns)?)
    }

    /// Creates a bridge `name` in `ns` (the underlay of a local cluster); an existing one is
    /// kept.
    pub fn create_bridge(&self, ns: Option<&Path>, name: &str) -> Result<(), LinkError> {
        let msg = LinkBridge::new(name).build();
        let op = || format!("create bridge {name}");
        self.with(ns, |s| {
            match s.ack(
                &op,
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            ) {
                Err(e) if e.errno() == Some(EEXIST) => Ok(()),
                other => other,
            }
        })
    }

    /// Enslaves `dev` to the bridge `master` (`ip link set dev <dev> master <master>`).
    pub fn set_master(&self, ns: Option<&Path>, dev: &str, master: &str) -> Result<(), LinkError> {
        self.with(ns, |s| {
            let master_index = index_of(s, master)?;
            let msg = LinkUnspec::new_with_name(dev)
                .controller(master_index)
                .build();
            s.ack(
                &|| format!("set {dev} master {master}"),
                RouteNetlinkMessage::NewLink(msg),
                0,
            )
        })
    }
}

/// The ifindex of `name`, or [`LinkError::NoLink`].
fn index_of(s: &mut NlSocket, name: &str) -> Result<u32, LinkError> {
    get_link(s, name)?
        .map(|m| m.header.index)
        .ok_or_else(|| LinkError::NoLink(name.to_owned()))
}

fn get_link(s: &mut NlSocket, name: &str) -> Result<Option<LinkMessage>, LinkError> {
    let msg = LinkUnspec::new_with_name(name).build();
    let reply = s.get(
        &|| format!("get link {name}"),
        RouteNetlinkMessage::GetLink(msg),
        ENODEV,
    )?;
    Ok(match reply {
        Some(RouteNetlinkMessage::NewLink(m)) => Some(m),
        _ => None,
    })
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_mac(m: &LinkMessage) -> [u8; 6] {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or_default()
}

/// Every link of the namespace by ifindex → name.
fn link_names(s: &mut NlSocket) -> Result<Vec<(u32, String)>, LinkError> {
    let links = s.dump(
        &|| "dump links".to_owned(),
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    Ok(links
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some((l.header.index, link_name(&l)?)),
            _ => None,
        })
        .collect())
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// A route of ours as read back from the kernel; `None` for anything not IPv4 unicast.
fn decode_route(m: &RouteMessage, names: &[(u32, String)]) -> Option<Route> {
    if m.header.address_family != AddressFamily::Inet || m.header.kind != RouteType::Unicast {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let (mut via, mut dev) = (None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
            RouteAttribute::Oif(i) => {
                dev = names.iter().find(|(n, _)| n == i).map(|(_, s)| s.clone());
            }
            _ => {}
        }
    }
    Some(Route {
        dst: Ipv4Network::new(dst, m.header.destination_prefix_length).ok()?,
        via,
        dev,
        scope_link: m.header.scope == RouteScope::Link,
    })
}

impl NetOps for Netlink {
    fn create_veth(
        &self,
        ns: Option<&Path>,
        host: &str,
        peer: &str,
        peer_ns: &Path,
    ) -> Result<(), LinkError> {
        // IFLA_NET_NS_FD on the peer (drivers/net/veth.c: veth_newlink reads the peer's own
        // attributes, namespace included): the Pod side is born in the Pod's namespace, as
        // `ip link add ... peer name eth0 netns <ns>` does.
        let target = File::open(peer_ns).map_err(|source| NetnsError::Open {
            path: peer_ns.to_owned(),
            source,
        })?;
        let peer_msg = LinkUnspec::new_with_name(peer)
            .setns_by_fd(target.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        let op = || {
            format!(
                "create veth {host} with peer {peer} in {}",
                peer_ns.display()
            )
        };
        let out = self.with(ns, |s| {
            s.ack(
                &op,
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            )
        });
        // The kernel has resolved the fd by the time it acknowledged.
        drop(target);
        out
    }

    fn link(&self, ns: Option<&Path>, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        self.with(ns, |s| {
            Ok(get_link(s, name)?.map(|m| LinkInfo {
                ifindex: m.header.index,
                mac: link_mac(&m),
            }))
        })
    }

    fn link_with_addr(
        &self,
        ns: Option<&Path>,
        ip: Ipv4Addr,
    ) -> Result<Option<(String, u32)>, LinkError> {
        self.with(ns, |s| {
            let mut req = AddressMessage::default();
            req.header.family = AddressFamily::Inet;
            let addrs = s.dump(
                &|| "dump addresses".to_owned(),
                RouteNetlinkMessage::GetAddress(req),
            )?;
            let want = IpAddr::V4(ip);
            let Some(index) = addrs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.attributes.iter().any(|at| {
                        matches!(at, AddressAttribute::Local(l) if *l == want)
                            || matches!(at, AddressAttribute::Address(l) if *l == want)
                    }) =>
                {
                    Some(a.header.index)
                }
                _ => None,
            }) else {
                return Ok(None);
            };
            let name = link_names(s)?
                .into_iter()
                .find(|(i, _)| *i == index)
                .map(|(_, n)| n);
            Ok(name.map(|n| (n, index)))
        })
    }

    fn delete_link(&self, ns: Option<&Path>, name: &str) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_name(name).build();
        self.with(ns, |s| {
            match s.ack(
                &|| format!("delete link {name}"),
                RouteNetlinkMessage::DelLink(msg),
                0,
            ) {
                Err(e) if e.errno() == Some(ENODEV) => Ok(()),
                other => other,
            }
        })
    }

    fn set_up(&self, ns: Option<&Path>, name: &str) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_name(name).up().build();
        self.with(ns, |s| {
            s.ack(
                &|| format!("set link {name} up"),
                RouteNetlinkMessage::NewLink(msg),
                0,
            )
        })
    }

    fn add_addr(&self, ns: Option<&Path>, dev: &str, addr: Ipv4Network) -> Result<(), LinkError> {
        self.with(ns, |s| {
            let index = index_of(s, dev)?;
            let msg = AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(addr.ip(), addr.prefix())
                .build();
            match s.ack(
                &|| format!("add address {addr} to {dev}"),
                RouteNetlinkMessage::NewAddress(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            ) {
                Err(e) if e.errno() == Some(EEXIST) => Ok(()),
                other => other,
            }
        })
    }

    fn replace_route(&self, ns: Option<&Path>, route: &Route) -> Result<(), LinkError> {
        self.with(ns, |s| {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(route.dst.ip(), route.dst.prefix())
                .protocol(RouteProtocol::from(ROUTE_PROTO))
                .table_id(u32::from(RouteHeader::RT_TABLE_MAIN));
            if let Some(via) = route.via {
                b = b.gateway(via);
            }
            if let Some(dev) = &route.dev {
                b = b.output_interface(index_of(s, dev)?);
            }
            if route.scope_link {
                b = b.scope(RouteScope::Link);
            }
            s.ack(
                &|| format!("replace route {}", route.dst),
                RouteNetlinkMessage::NewRoute(b.build()),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
        })
    }

    fn delete_route(&self, ns: Option<&Path>, dst: Ipv4Network) -> Result<(), LinkError> {
        // As `ip route delete <dst> proto <p>`: scope NOWHERE and type UNSPEC match any scope
        // and type, the protocol must be ours (net/ipv4/fib_trie.c: fib_table_delete).
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .protocol(RouteProtocol::from(ROUTE_PROTO))
            .scope(RouteScope::NoWhere)
            .kind(RouteType::Unspec);
        b.get_mut().header.table = RouteHeader::RT_TABLE_MAIN;
        let msg = b.build();
        self.with(ns, |s| {
            match s.ack(
                &|| format!("delete route {dst}"),
                RouteNetlinkMessage::DelRoute(msg),
                0,
            ) {
                Err(e) if e.errno() == Some(ESRCH) => Ok(()),
                other => other,
            }
        })
    }

    fn routes(&self, ns: Option<&Path>) -> Result<Vec<Route>, LinkError> {
        self.with(ns, |s| {
            let mut req = RouteMessage::default();
            req.header.address_family = AddressFamily::Inet;
            let dump = s.dump(
                &|| "dump routes".to_owned(),
                RouteNetlinkMessage::GetRoute(req),
            )?;
            let ours: Vec<RouteMessage> = dump
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewRoute(r)
                        if u8::from(r.header.protocol) == ROUTE_PROTO
                            && route_table(&r) == u32::from(RouteHeader::RT_TABLE_MAIN) =>
                    {
                        Some(r)
                    }
                    _ => None,
                })
                .collect();
            if ours.is_empty() {
                return Ok(Vec::new());
            }
            let names = link_names(s)?;
            Ok(ours
                .iter()
                .filter_map(|r| decode_route(r, &names))
                .collect())
        })
    }

    fn replace_neigh(
        &self,
        ns: Option<&Path>,
        ip: Ipv4Addr,
        mac: [u8; 6],
        dev: &str,
    ) -> Result<(), LinkError> {
        self.with(ns, |s| {
            let mut msg = NeighbourMessage::default();
            msg.header.family = AddressFamily::Inet;
            msg.header.ifindex = index_of(s, dev)?;
            msg.header.state = NeighbourState::Permanent;
            msg.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            s.ack(
                &|| format!("replace neighbour {ip} on {dev}"),
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
        })
    }

    fn set_ipv4_sysctl(&self, ns: Option<&Path>, key: &str, value: &str) -> Result<(), LinkError> {
        // /proc/sys/net resolves to the network namespace of the thread that opens it
        // (fs/proc/proc_net.c, net/sysctl_net.c: `current->nsproxy->net_ns`).
        if key.contains('/') || key.contains("..") {
            return Err(LinkError::Sysctl {
                key: key.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        let path = Path::new("/proc/sys/net/ipv4").join(key.replace('.', "/"));
        let write = || std::fs::write(&path, value.as_bytes());
        let out = match ns {
            None => write(),
            Some(_) => crate::netns::in_netns(ns, write)?,
        };
        out.map_err(|source| LinkError::Sysctl {
            key: key.to_owned(),
            source,
        })
    }

    fn in_namespace(
        &self,
        ns: Option<&Path>,
        f: &mut dyn FnMut(&dyn NetOps) -> Result<(), LinkError>,
    ) -> Result<(), LinkError> {
        if self.kept.0.as_deref() == ns {
            return f(self);
        }
        // Dropped (and so closed) on return: the socket holds a reference on the namespace.
        let scoped = Self {
            kept: (
                ns.map(Path::to_owned),
                Mutex::new(Some(NlSocket::open(ns)?)),
            ),
        };
        f(&scoped)
    }
}
