//! The DNS server: the handler answering from the snapshot (or the upstream resolvers for
//! names outside the cluster) for hickory-server's TCP listener and keelson's UDP loop
//! ([`super::udp`]), and the metrics it counts.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
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
    #[error("serving UDP on {addr}")]
    Udp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ProtoLabels {
    pub proto: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RcodeLabels {
    pub rcode: String,
}

/// What the server counts, served on `/metrics` (the families CoreDNS's `prometheus` plugin
/// exports, under keelson's prefix).
#[derive(Debug)]
pub struct DnsMetrics {
    registry: Registry,
    pub(super) requests: Family<ProtoLabels, Counter>,
    pub(super) responses: Family<RcodeLabels, Counter>,
    forwards: Counter,
    forward_failures: Counter,
    pub(super) duration: Histogram,
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

/// A question as either listener received it.
#[derive(Debug)]
pub(super) struct Asked<'a> {
    pub metadata: &'a Metadata,
    pub queries: &'a [Query],
    /// The whole message, as forwarded upstream.
    pub raw: &'a [u8],
    pub tcp: bool,
}

/// What goes into the response: header and the three sections.
#[derive(Debug)]
pub(super) struct Reply {
    pub metadata: Metadata,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    pub edns: Option<Edns>,
    /// Made from the snapshot alone (not forwarded, no CNAME chased upstream, the snapshot
    /// synced): the same question gets the same answer until the snapshot changes.
    pub from_snapshot: bool,
}

impl Handler {
    pub(super) async fn reply(&self, request: &Asked<'_>) -> Reply {
        let mut metadata = Metadata::response_from_request(request.metadata);
        let empty = |metadata: Metadata| Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: None,
            from_snapshot: false,
        };
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            metadata.response_code = ResponseCode::NotImp;
            return empty(metadata);
        }
        let [query] = request.queries else {
            // Zero or several questions: RFC 9619 allows one per message.
            metadata.response_code = ResponseCode::FormErr;
            return empty(metadata);
        };
        // The name as asked (its case kept in the answers, RFC 4343).
        let qname = query.name().clone();
        let qtype = query.query_type();
        let snap = self.snapshot.get();
        metadata.recursion_available = true;
        match records::answer(&snap, &self.zone, &qname, qtype) {
            Answer::Found {
                mut answers,
                additionals,
            } => {
                metadata.authoritative = true;
                let chased = self.chase_cname(request, &mut answers, qtype).await;
                Reply {
                    metadata,
                    answers,
                    authorities: Vec::new(),
                    additionals,
                    edns: None,
                    from_snapshot: !chased && snap_ready(&self.snapshot),
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
                    from_snapshot: true,
                }
            }
            Answer::Forward => self.forward(request, metadata).await,
        }
    }

    async fn forward(&self, request: &Asked<'_>, mut metadata: Metadata) -> Reply {
        self.metrics.forwards.inc();
        match self.upstream.exchange(request.raw, request.tcp).await {
            Some(reply) => {
                metadata = reply.metadata;
                metadata.id = request.metadata.id;
                Reply {
                    metadata,
                    answers: reply.answers,
                    authorities: reply.authorities,
                    additionals: reply.additionals,
                    edns: reply.edns,
                    from_snapshot: false,
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
                    from_snapshot: false,
                }
            }
        }
    }

    /// An ExternalName's CNAME points out of the cluster: resolve its target upstream and add
    /// the records, as CoreDNS does, since stub resolvers do not chase CNAMEs themselves.
    /// Whether it asked upstream.
    async fn chase_cname(
        &self,
        request: &Asked<'_>,
        answers: &mut Vec<Record>,
        qtype: RecordType,
    ) -> bool {
        if !matches!(qtype, RecordType::A | RecordType::AAAA) {
            return false;
        }
        let Some(RData::CNAME(target)) = answers.last().map(|r| &r.data) else {
            return false;
        };
        let mut query = Message::query();
        query.metadata.id = request.metadata.id;
        query.metadata.recursion_desired = true;
        query.add_query(hickory_proto::op::Query::query(target.0.clone(), qtype));
        let Ok(bytes) = query.to_vec() else {
            return true;
        };
        self.metrics.forwards.inc();
        if let Some(reply) = self.upstream.exchange(&bytes, false).await {
            answers.extend(reply.answers);
        }
        true
    }
}

fn snap_ready(shared: &SharedSnapshot) -> bool {
    shared.is_ready()
}

/// hickory-server's handle on the shared [`Handler`] (its TCP listener).
#[derive(Debug)]
struct TcpHandler(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let this = &self.0;
        let start = Instant::now();
        let proto = match request.protocol() {
            hickory_server::net::xfer::Protocol::Tcp => "tcp",
            _ => "udp",
        };
        this.metrics
            .requests
            .get_or_create(&ProtoLabels {
                proto: proto.to_owned(),
            })
            .inc();
        let queries: Vec<Query> = request
            .queries
            .queries()
            .iter()
            .map(|q| q.original().clone())
            .collect();
        let asked = Asked {
            metadata: &request.metadata,
            queries: &queries,
            raw: request.as_slice(),
            tcp: proto == "tcp",
        };
        let reply = this.reply(&asked).await;
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
        this.metrics
            .responses
            .get_or_create(&RcodeLabels {
                rcode: rcode_label(rcode),
            })
            .inc();
        this.metrics.duration.observe(start.elapsed().as_secs_f64());
        info
    }
}

/// The rcode as CoreDNS's `coredns_dns_responses_total` labels it (RFC 6895 mnemonics).
pub(super) fn rcode_label(rcode: ResponseCode) -> String {
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

/// Binds UDP and TCP on `addr` and serves `handler` until the server fails: TCP through
/// hickory-server, UDP through [`super::udp`].
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
    let handler = Arc::new(handler);
    let mut server = Server::new(TcpHandler(Arc::clone(&handler)));
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64);
    tokio::select! {
        r = server.block_until_done() => r.map_err(ServerError::Serve),
        r = super::udp::serve(udp, handler) => r.map_err(|source| ServerError::Udp { addr, source }),
    }
}
