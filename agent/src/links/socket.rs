//! One blocking rtnetlink socket: requests answered by an acknowledgement, a single object, or
//! a multipart dump (rtnetlink(7), netlink(7) "NLMSG_ERROR", "NLM_F_DUMP"). Messages are encoded
//! and decoded by `netlink-packet-route`; this file only frames the exchange.
//!
//! A netlink socket talks to the network namespace it was created in, whatever namespace the
//! thread using it is in later (net/netlink/af_netlink.c: `sock_net(sk)`), so a socket for a
//! Pod's namespace is opened on a short-lived thread that has entered it and then used from
//! anywhere.

use std::{io, path::Path};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::LinkError;
use crate::netns;

/// Big enough for one datagram of a dump: the kernel fills at most 32 KiB per `recvmsg`
/// (netlink_dump: `max(NLMSG_GOODSIZE, min(rcvbuf, 32768))`).
const RECV_BUF: usize = 64 * 1024;

/// A connected NETLINK_ROUTE socket and its next sequence number.
#[derive(Debug)]
pub(super) struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens a socket in the namespace at `ns` (`None`: the caller's own).
    pub(super) fn open(ns: Option<&Path>) -> Result<Self, LinkError> {
        match ns {
            None => Self::open_here(),
            Some(_) => netns::in_netns(ns, Self::open_here)?,
        }
    }

    fn open_here() -> Result<Self, LinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(LinkError::Socket)?;
        sock.bind_auto().map_err(LinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(LinkError::Socket)?;
        Ok(Self {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, io::Error> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.sock.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Receives until `done` says the exchange for `seq` is complete, handing it every message
    /// of that exchange.
    fn recv_until(
        &mut self,
        op: &dyn Fn() -> String,
        seq: u32,
        mut on_msg: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> Result<bool, LinkError>,
    ) -> Result<(), LinkError> {
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| LinkError::Netlink { op: op(), source })?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|source| LinkError::Decode { op: op(), source })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq && on_msg(msg.payload)? {
                    return Ok(());
                }
                if len == 0 {
                    break;
                }
                // Messages are 4-byte aligned (NLMSG_ALIGN).
                off += (len + 3) & !3;
            }
        }
    }

    /// Sends a change and waits for its acknowledgement; a refusal is its errno.
    pub(super) fn ack(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), LinkError> {
        let seq = self
            .send(msg, flags | NLM_F_ACK)
            .map_err(|source| LinkError::Netlink { op: op(), source })?;
        self.recv_until(op, seq, |payload| match payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(_) => Err(LinkError::Netlink {
                    op: op(),
                    source: e.to_io(),
                }),
            },
            _ => Ok(false),
        })
    }

    /// Sends a `GET` for one object; `Ok(None)` when the kernel answers `errno_missing`.
    pub(super) fn get(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
        errno_missing: i32,
    ) -> Result<Option<RouteNetlinkMessage>, LinkError> {
        let seq = self
            .send(msg, 0)
            .map_err(|source| LinkError::Netlink { op: op(), source })?;
        let mut out = None;
        self.recv_until(op, seq, |payload| match payload {
            NetlinkPayload::InnerMessage(m) => {
                out = Some(m);
                Ok(true)
            }
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(c) if -c.get() == errno_missing => Ok(true),
                Some(_) => Err(LinkError::Netlink {
                    op: op(),
                    source: e.to_io(),
                }),
            },
            _ => Ok(false),
        })?;
        Ok(out)
    }

    /// Dumps a table: every object until `NLMSG_DONE`.
    pub(super) fn dump(
        &mut self,
        op: &dyn Fn() -> String,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, LinkError> {
        let seq = self
            .send(msg, NLM_F_DUMP)
            .map_err(|source| LinkError::Netlink { op: op(), source })?;
        let mut out = Vec::new();
        self.recv_until(op, seq, |payload| match payload {
            NetlinkPayload::InnerMessage(m) => {
                out.push(m);
                Ok(false)
            }
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(true),
                Some(_) => Err(LinkError::Netlink {
                    op: op(),
                    source: e.to_io(),
                }),
            },
            _ => Ok(false),
        })?;
        Ok(out)
    }
}
