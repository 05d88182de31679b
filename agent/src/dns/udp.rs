//! The UDP listener: receive loops (one per CPU) on one socket that answer repeated
//! questions from a cache of encoded responses and hand the rest to the [`Handler`]. A
//! response made from the snapshot alone is a function of the question's bytes (everything
//! but the 16-bit ID: flags, question, EDNS) and of the snapshot, so it is kept, keyed by
//! those bytes, until the snapshot's serial changes; a hit copies it and sets the ID (RFC
//! 1035 §4.1.1: the ID is copied into the reply). Messages are parsed and built with
//! hickory-proto; forwarded answers are never cached (their TTLs run down upstream).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use prometheus_client::metrics::counter::Counter;
use tokio::net::UdpSocket;

use super::server::{Asked, Handler, ProtoLabels, RcodeLabels, rcode_label};

/// The most responses kept; the cache starts over when it is full.
const MAX_ENTRIES: usize = 16_384;
/// The largest UDP message read (EDNS payloads beyond this are not accepted).
const MAX_MESSAGE: usize = 4096;

/// A kept response: its bytes with the ID zeroed, and its rcode's counter.
#[derive(Debug)]
struct Cached {
    bytes: Vec<u8>,
    rcode: Counter,
}

/// Responses by question bytes, for one snapshot serial.
#[derive(Debug, Default)]
struct Cache {
    serial: u32,
    entries: HashMap<Vec<u8>, Cached>,
}

/// What the loops share.
#[derive(Debug)]
struct Shared {
    handler: Arc<Handler>,
    socket: UdpSocket,
    cache: Mutex<Cache>,
    requests: Counter,
}

/// Serves UDP on `socket` until receiving fails.
pub async fn serve(socket: UdpSocket, handler: Arc<Handler>) -> Result<(), std::io::Error> {
    let requests = handler
        .metrics
        .requests
        .get_or_create(&ProtoLabels {
            proto: "udp".into(),
        })
        .clone();
    let shared = Arc::new(Shared {
        handler,
        socket,
        cache: Mutex::default(),
        requests,
    });
    let loops = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..loops {
        set.spawn(receive(Arc::clone(&shared)));
    }
    match set.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(std::io::Error::other(e)),
        None => Ok(()),
    }
}

async fn receive(shared: Arc<Shared>) -> Result<(), std::io::Error> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, peer) = match shared.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // An ICMP error of an earlier send (the client went away) is not ours to end on.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        let packet = &buf[..n];
        // Shorter than a header: nothing to answer (not even an ID to answer with).
        if n < 12 {
            continue;
        }
        shared.requests.inc();
        let serial = shared.handler.snapshot.get().serial;
        let hit = {
            let cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
            (cache.serial == serial)
                .then(|| cache.entries.get(&packet[2..]))
                .flatten()
                .map(|c| {
                    let mut bytes = c.bytes.clone();
                    bytes[..2].copy_from_slice(&packet[..2]);
                    (bytes, c.rcode.clone())
                })
        };
        match hit {
            Some((bytes, rcode)) => {
                let _ = shared.socket.send_to(&bytes, peer).await;
                rcode.inc();
                shared
                    .handler
                    .metrics
                    .duration
                    .observe(start.elapsed().as_secs_f64());
            }
            // Asked for the first time since the snapshot changed, or forwarded: off the
            // loop, which an upstream's round trip must not hold up.
            None => {
                let (shared, packet) = (Arc::clone(&shared), packet.to_vec());
                tokio::spawn(async move {
                    answer(&shared, &packet, peer, serial, start).await;
                });
            }
        }
    }
}

/// Answers one message through the handler, and keeps the response when it came from the
/// snapshot.
async fn answer(shared: &Shared, packet: &[u8], peer: SocketAddr, serial: u32, start: Instant) {
    let metrics = &shared.handler.metrics;
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            // The header was readable (12 bytes): FORMERR with the ID, as RFC 1035 §4.1.1
            // describes for a query the server cannot interpret.
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
            m.metadata.response_code = ResponseCode::FormErr;
            if let Ok(bytes) = m.to_vec() {
                let _ = shared.socket.send_to(&bytes, peer).await;
            }
            return;
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return;
    }
    let asked = Asked {
        metadata: &request.metadata,
        queries: &request.queries,
        raw: packet,
        tcp: false,
    };
    let reply = shared.handler.reply(&asked).await;
    let rcode = reply.metadata.response_code;
    let cacheable = reply.from_snapshot;
    let Some(bytes) = encode(&request, reply) else {
        return;
    };
    let _ = shared.socket.send_to(&bytes, peer).await;
    let counter = metrics
        .responses
        .get_or_create(&RcodeLabels {
            rcode: rcode_label(rcode),
        })
        .clone();
    counter.inc();
    metrics.duration.observe(start.elapsed().as_secs_f64());
    if cacheable && shared.handler.snapshot.get().serial == serial {
        let mut cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.serial != serial || cache.entries.len() >= MAX_ENTRIES {
            cache.entries.clear();
            cache.serial = serial;
        }
        let mut kept = bytes;
        kept[..2].fill(0);
        cache.entries.insert(
            packet[2..].to_vec(),
            Cached {
                bytes: kept,
                rcode: counter,
            },
        );
    }
}

/// The response to `request` in wire format, cut to the client's UDP size (512 bytes, or its
/// EDNS payload size) with TC set when it does not fit (RFC 1035 §4.2.1, RFC 6891 §6.2.5).
fn encode(request: &Message, reply: super::server::Reply) -> Option<Vec<u8>> {
    let mut m = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    m.metadata = reply.metadata;
    m.metadata.id = request.metadata.id;
    m.queries = request.queries.clone();
    m.answers = reply.answers;
    m.authorities = reply.authorities;
    m.additionals = reply.additionals;
    // EDNS (RFC 6891): answer with our own OPT when the client sent one.
    m.edns = reply.edns.or_else(|| {
        request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e
        })
    });
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= usize::from(request.max_payload()) {
        return Some(bytes);
    }
    m.truncate().to_vec().ok()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::{
        op::{Metadata, OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };

    use super::*;
    use crate::dns::server::Reply;

    fn reply_with(n: u8) -> (Message, Reply) {
        let mut request = Message::new(0x1234, MessageType::Query, OpCode::Query);
        let name = Name::from_ascii("web.default.svc.cluster.local.").expect("name");
        request.add_query(Query::query(name.clone(), RecordType::A));
        let answers = (0..n)
            .map(|i| Record::from_rdata(name.clone(), 5, RData::A(A(Ipv4Addr::new(10, 0, 0, i)))))
            .collect();
        let reply = Reply {
            metadata: Metadata::response_from_request(&request.metadata),
            answers,
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: None,
            from_snapshot: true,
        };
        (request, reply)
    }

    #[test]
    fn responses_carry_the_id_and_are_cut_to_the_udp_size() {
        let (request, reply) = reply_with(3);
        let m = Message::from_vec(&encode(&request, reply).expect("encode")).expect("decode");
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.answers.len(), 3);
        assert!(!m.metadata.truncation);
        // 60 A records do not fit in 512 bytes: TC set, no answers, the question kept.
        let (request, reply) = reply_with(60);
        let bytes = encode(&request, reply).expect("encode");
        assert!(bytes.len() <= 512);
        let m = Message::from_vec(&bytes).expect("decode");
        assert!(m.metadata.truncation && m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
    }
}
