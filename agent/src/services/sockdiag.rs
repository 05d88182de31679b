//! [`SocketDestroyer`] on the kernel's sock_diag netlink interface: a dump of one protocol's
//! sockets (`SOCK_DIAG_BY_FAMILY` with `NLM_F_DUMP`, IPv4 and IPv6), then `SOCK_DESTROY` for
//! each one whose remote address is a target, named by its full socket id and cookie so a
//! socket that was closed and replaced in between is not hit (inet_diag_find_one_icsk). The
//! netlink socket is opened inside the target network namespace, which it then stays bound to
//! (netlink sockets belong to the namespace they were created in).

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    message::SockDiagDestroy,
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use super::{model::Proto, teardown::SocketDestroyer};

/// Destroys sockets through sock_diag netlink messages.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetlinkDestroyer;

impl SocketDestroyer for NetlinkDestroyer {
    fn destroy(&self, netns: &Path, proto: Proto, targets: &[SocketAddr]) -> io::Result<usize> {
        let protocol = match proto {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
            // sctp_diag has no destroy operation.
            Proto::Sctp => return Ok(0),
        };
        let targets: BTreeSet<SocketAddr> = targets.iter().map(|t| unmapped(*t)).collect();
        let socket = crate::netns::in_netns(Some(netns), || {
            let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
            s.bind_auto()?;
            s.connect(&netlink_sys::SocketAddr::new(0, 0))?;
            Ok::<_, io::Error>(s)
        })
        .map_err(io::Error::other)??;
        let mut destroyed = 0;
        for family in [AF_INET, AF_INET6] {
            let matching: Vec<SocketId> = dump(&socket, family, protocol)?
                .into_iter()
                .filter(|id| {
                    targets.contains(&unmapped(SocketAddr::new(
                        id.destination_address,
                        id.destination_port,
                    )))
                })
                .collect();
            for id in matching {
                match destroy_one(&socket, family, protocol, id) {
                    Ok(()) => destroyed += 1,
                    // Closed since the dump: nothing left to destroy.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(destroyed)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, a dual-stack socket's view of an IPv4
/// peer) as the IPv4 address it maps.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

fn request(family: u8, protocol: u8, socket_id: SocketId) -> InetRequest {
    InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    }
}

fn send<T>(socket: &Socket, flags: u16, payload: T) -> io::Result<()>
where
    NetlinkMessage<T>: std::fmt::Debug,
    T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    Ok(())
}

/// The ids of every `protocol` socket of `family` in the socket's namespace.
fn dump(socket: &Socket, family: u8, protocol: u8) -> io::Result<Vec<SocketId>> {
    let any = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    send(
        socket,
        NLM_F_REQUEST | NLM_F_DUMP,
        SockDiagMessage::InetRequest(request(family, protocol, any)),
    )?;
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(ids),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    ids.push(r.header.socket_id);
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// Sends SOCK_DESTROY for one socket and reads the kernel's acknowledgement.
fn destroy_one(socket: &Socket, family: u8, protocol: u8, id: SocketId) -> io::Result<()> {
    send(
        socket,
        NLM_F_REQUEST | NLM_F_ACK,
        SockDiagDestroy::new(SockDiagMessage::InetRequest(request(family, protocol, id))),
    )?;
    let mut buf = vec![0u8; 8192];
    let n = socket.recv(&mut &mut buf[..], 0)?;
    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match msg.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
        _ => Ok(()),
    }
}
