//! The DNS server: hickory-server's request handler answering from the snapshot (or the
//! upstream resolvers for names outside the cluster), its UDP and TCP listeners, and the
//! metrics it counts.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode},
    rr::{RData, Record, RecordType},
};
use hickory_server::{
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server},
    zone_handler::MessageResponseBuilder,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

use super::{
    records::{self, Answer, Zone},
    watch::SharedSnapshot,
};

/// How long one upstream resolver gets before the next is asked (CoreDNS's forward plugin
/// gives up on an upstream after 2 s too).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle TCP connections are closed after this long (RFC 7766 §6.2.3 suggests seconds).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest UDP response read from an upstream (EDNS payloads beyond this are not offered).
const UPSTREAM_BUF: usize = 4096;

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {proto} {addr}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the DNS server stopped")]
    Serve(#[source] hickory_server::net::NetError),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtoLabels {
    proto: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    rcode: String,
}

/// What the server counts, served on `/metrics` (the families CoreDNS's `prometheus` plugin
/// exports, under keelson's prefix).
#[derive(Debug)]
pub struct DnsMetrics {
    registry: Registry,
    requests: Family<ProtoLabels, Counter>,
    responses: Family<RcodeLabels, Counter>,
    forwards: Counter,
    forward_failures: Counter,
    duration: Histogram,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keelson_dns");
        let requests = Family::<ProtoLabels, Counter>::default();
        let responses = Family::<RcodeLabels, Counter>::default();
        let forwards = Counter::default();
        let forward_failures = Counter::default();
        // 25 µs .. ~3.3 s, CoreDNS's request_duration_seconds covers the same span.
        let duration = Histogram::new(exponential_buckets(0.000_025, 2.0, 18));
        registry.register("requests", "DNS requests received", requests.clone());
        registry.register(
            "responses",
            "DNS responses sent, by rcode",
            responses.clone(),
        );
        registry.register(
            "forward_requests",
            "requests forwarded to the upstream resolvers",
            forwards.clone(),
        );
        registry.register(
            "forward_failures",
            "forwarded requests no upstream resolver answered",
            forward_failures.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "time from request to response",
            duration.clone(),
        );
        Self {
            registry,
            requests,
            responses,
            forwards,
            forward_failures,
            duration,
        }
    }
}

impl DnsMetrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The resolvers names outside the cluster go to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub servers: Vec<SocketAddr>,
}

impl Upstream {
    /// The `nameserver` lines of a resolv.conf (port 53), as CoreDNS's
    /// `forward . /etc/resolv.conf` reads them.
    pub fn from_resolv_conf(text: &str) -> Self {
        let servers = text
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some("nameserver"))
                    .then(|| words.next())
                    .flatten()
            })
            .filter_map(|ip| ip.split('%').next()?.parse().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        Self { servers }
    }

    /// Sends `query` (a whole DNS message) to each resolver in turn until one answers; over
    /// TCP when the UDP answer is truncated or the client asked over TCP.
    async fn exchange(&self, query: &[u8], tcp_first: bool) -> Option<Message> {
        for server in &self.servers {
            let reply = if tcp_first {
                exchange_tcp(*server, query).await
            } else {
                match exchange_udp(*server, query).await {
                    Some(m) if m.metadata.truncation => exchange_tcp(*server, query).await,
                    other => other,
                }
            };
            if reply.is_some() {
                return reply;
            }
        }
        None
    }
}

async fn exchange_udp(server: SocketAddr, query: &[u8]) -> Option<Message> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect(server).await.ok()?;
    sock.send(query).await.ok()?;
    let mut buf = vec![0; UPSTREAM_BUF];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..n]).ok()
}

/// DNS over TCP: each message after its two-byte length (RFC 1035 §4.2.2).
async fn exchange_tcp(server: SocketAddr, query: &[u8]) -> Option<Message> {
    let io = async {
        let mut stream = TcpStream::connect(server).await.ok()?;
        let len = u16::try_from(query.len()).ok()?;
        stream.write_all(&len.to_be_bytes()).await.ok()?;
        stream.write_all(query).await.ok()?;
        let len = stream.read_u16().await.ok()?;
        let mut buf = vec![0; usize::from(len)];
        stream.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok()
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, io).await.ok()?
}

/// hickory-server's handler: one request, one answer.
#[derive(Debug)]
pub struct Handler {
    pub zone: Zone,
    pub snapshot: Arc<SharedSnapshot>,
    pub upstream: Upstream,
    pub metrics: Arc<DnsMetrics>,
}

/// What goes into the response: header and the three sections.
struct Reply {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    edns: Option<Edns>,
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let empty = |metadata: Metadata| Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: None,
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            metadata.response_code = ResponseCode::NotImp;
            return empty(metadata);
        }
        let [query] = request.queries.queries() else {
            // Zero or several questions: RFC 9619 allows one per message.
            metadata.response_code = ResponseCode::FormErr;
            return empty(metadata);
        };
        // The name as asked (its case kept in the answers, RFC 4343).
        let qname = query.original().name().clone();
        let qtype = query.query_type();
        let snap = self.snapshot.get();
        metadata.recursion_available = true;
        match records::answer(&snap, &self.zone, &qname, qtype) {
            Answer::Found {
                mut answers,
                additionals,
            } => {
                metadata.authoritative = true;
                self.chase_cname(request, &mut answers, qtype).await;
                Reply {
                    metadata,
                    answers,
                    authorities: Vec::new(),
                    additionals,
                    edns: None,
                }
            }
            Answer::NoData | Answer::NxDomain if !snap_ready(&self.snapshot) => {
                // Not synced yet: an honest "try again" rather than a wrong negative answer.
                metadata.response_code = ResponseCode::ServFail;
                empty(metadata)
            }
            neg @ (Answer::NoData | Answer::NxDomain) => {
                metadata.authoritative = true;
                if neg == Answer::NxDomain {
                    metadata.response_code = ResponseCode::NXDomain;
                }
                Reply {
                    metadata,
                    answers: Vec::new(),
                    authorities: vec![self.zone.soa(snap.serial)],
                    additionals: Vec::new(),
                    edns: None,
                }
            }
            Answer::Forward => self.forward(request, metadata).await,
        }
    }

    async fn forward(&self, request: &Request, mut metadata: Metadata) -> Reply {
        self.metrics.forwards.inc();
        let tcp = request.protocol() == hickory_server::net::xfer::Protocol::Tcp;
        match self.upstream.exchange(request.as_slice(), tcp).await {
            Some(reply) => {
                metadata = reply.metadata;
                metadata.id = request.metadata.id;
                Reply {
                    metadata,
                    answers: reply.answers,
                    authorities: reply.authorities,
                    additionals: reply.additionals,
                    edns: reply.edns,
                }
            }
            None => {
                self.metrics.forward_failures.inc();
                metadata.response_code = ResponseCode::ServFail;
                Reply {
                    metadata,
                    answers: Vec::new(),
                    authorities: Vec::new(),
                    additionals: Vec::new(),
                    edns: None,
                }
            }
        }
    }

    /// An ExternalName's CNAME points out of the cluster: resolve its target upstream and add
    /// the records, as CoreDNS does, since stub resolvers do not chase CNAMEs themselves.
    async fn chase_cname(&self, request: &Request, answers: &mut Vec<Record>, qtype: RecordType) {
        if !matches!(qtype, RecordType::A | RecordType::AAAA) {
            return;
        }
        let Some(RData::CNAME(target)) = answers.last().map(|r| &r.data) else {
            return;
        };
        let mut query = Message::query();
        query.metadata.id = request.metadata.id;
        query.metadata.recursion_desired = true;
        query.add_query(hickory_proto::op::Query::query(target.0.clone(), qtype));
        let Ok(bytes) = query.to_vec() else {
            return;
        };
        self.metrics.forwards.inc();
        if let Some(reply) = self.upstream.exchange(&bytes, false).await {
            answers.extend(reply.answers);
        }
    }
}

fn snap_ready(shared: &SharedSnapshot) -> bool {
    shared.is_ready()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let proto = match request.protocol() {
            hickory_server::net::xfer::Protocol::Tcp => "tcp",
            _ => "udp",
        };
        self.metrics
            .requests
            .get_or_create(&ProtoLabels {
                proto: proto.to_owned(),
            })
            .inc();
        let reply = self.reply(request).await;
        let rcode = reply.metadata.response_code;
        // EDNS (RFC 6891): answer with our own OPT when the client sent one.
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e
        });
        let edns = reply.edns.or(edns);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = edns.as_ref() {
            builder.edns(e);
        }
        let response = builder.build(
            reply.metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata,
                    counts: hickory_proto::op::HeaderCounts::default(),
                })
            }
        };
        self.metrics
            .responses
            .get_or_create(&RcodeLabels {
                rcode: rcode_label(rcode),
            })
            .inc();
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        info
    }
}

/// The rcode as CoreDNS's `coredns_dns_responses_total` labels it (RFC 6895 mnemonics).
fn rcode_label(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => u16::from(other).to_string(),
    }
}

/// Binds UDP and TCP on `addr` and serves `handler` until the server fails.
pub async fn serve(addr: SocketAddr, handler: Handler) -> Result<(), ServerError> {
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            proto: "tcp",
            addr,
            source,
        })?;
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64);
    server.block_until_done().await.map_err(ServerError::Serve)
}
