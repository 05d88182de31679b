//! The cluster's DNS records: an in-memory snapshot of Services, EndpointSlices and Pods, and
//! the pure function that answers one question (name, type) from it, following the Kubernetes
//! DNS-based service discovery specification
//! (<https://github.com/kubernetes/dns/blob/master/docs/specification.md>, version 1.1.0)
//! and CoreDNS's `kubernetes` plugin where the specification leaves a choice.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT},
};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};

/// TTL of every answer and of negative answers (the SOA minimum), CoreDNS's default (`ttl 5`).
pub const TTL: u32 = 5;

/// The version of the specification these records follow, served as `dns-version.<zone>` TXT
/// (specification §2.2).
pub const SPEC_VERSION: &str = "1.1.0";

/// The label kube-controller-manager puts on an EndpointSlice to name its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service port as DNS sees it: SRV records exist only for named ports (§2.3.3, §2.4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    pub name: String,
    /// Lowercase: `tcp`, `udp`, `sctp` (the `_<proto>` label).
    pub protocol: String,
    pub port: u16,
}

/// One ready endpoint of a headless Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub ip: IpAddr,
    /// `hostname` of the endpoint (a Pod's `spec.hostname` under a matching `subdomain`).
    pub hostname: Option<String>,
    /// The ports of the EndpointSlice the endpoint is in (for SRV of headless Services the
    /// port is the endpoint's, §2.4.3).
    pub ports: Vec<PortEntry>,
}

impl EndpointEntry {
    /// The first label of the endpoint's own name: its hostname, or its address with dashes
    /// as CoreDNS derives it (`10-244-1-5`) when it has none.
    pub fn label(&self) -> String {
        match &self.hostname {
            Some(h) => h.to_ascii_lowercase(),
            None => dashed(self.ip),
        }
    }
}

/// What a Service resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A/AAAA of the cluster IPs (§2.3.2).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: A/AAAA of the ready endpoints (§2.4.2).
    Headless,
    /// A CNAME to `spec.externalName` (§2.5).
    ExternalName(Name),
}

/// One Service and the endpoints DNS serves for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub kind: ServiceKind,
    pub ports: Vec<PortEntry>,
    /// Ready endpoints (and not-ready ones if `publishNotReadyAddresses`), sorted by address.
    pub endpoints: Vec<EndpointEntry>,
}

/// Everything DNS answers from, built from the watched objects in one pass.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// namespace → Service name → entry.
    services: HashMap<String, HashMap<String, ServiceEntry>>,
    /// Pod IP → namespaces of Pods holding it (CoreDNS's `pods verified`).
    pods: HashMap<IpAddr, Vec<String>>,
    /// address → the name its PTR record points to, relative to the zone
    /// (`svc.ns.svc`, `host.svc.ns.svc`).
    reverse: HashMap<IpAddr, String>,
    /// The SOA serial: changes whenever the snapshot does.
    pub serial: u32,
}

/// The cluster domain (`cluster.local.`), lowercase and fully qualified.
#[derive(Debug, Clone)]
pub struct Zone {
    pub domain: Name,
}

impl Zone {
    /// `domain` like `cluster.local` (a trailing dot is optional).
    pub fn new(domain: &str) -> Result<Self, hickory_proto::ProtoError> {
        let mut name = Name::from_ascii(domain.trim_end_matches('.'))?.to_lowercase();
        name.set_fqdn(true);
        Ok(Self { domain: name })
    }

    /// `rel` (like `hello.default.svc`) under the zone.
    fn name(&self, rel: &str) -> Name {
        Name::from_ascii(rel)
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone())
    }

    /// The zone's SOA record, put in the authority section of negative answers (RFC 2308 §3)
    /// with CoreDNS's values.
    pub fn soa(&self, serial: u32) -> Record {
        let soa = SOA::new(
            self.name("ns.dns"),
            self.name("hostmaster"),
            serial,
            7200,
            1800,
            86400,
            TTL,
        );
        Record::from_rdata(self.domain.clone(), TTL, RData::SOA(soa))
    }
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR with these records (the additional section holds the addresses of SRV targets).
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// NOERROR without records: the name exists, not with this type (RFC 2308 §2.2).
    NoData,
    /// NXDOMAIN: no such name in the cluster zone (RFC 2308 §2.1).
    NxDomain,
    /// Not ours: ask the upstream resolvers.
    Forward,
}

impl Snapshot {
    /// Builds the snapshot from the objects the watches hold.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        pods: impl IntoIterator<Item = &'a Pod>,
        serial: u32,
    ) -> Self {
        let mut snap = Self {
            serial,
            ..Self::default()
        };
        let mut publish_not_ready = HashSet::new();
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
                svc.spec.as_ref(),
            ) else {
                continue;
            };
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                match spec
                    .external_name
                    .as_deref()
                    .and_then(|n| Name::from_ascii(n.trim_end_matches('.')).ok())
                {
                    Some(mut target) => {
                        target.set_fqdn(true);
                        ServiceKind::ExternalName(target)
                    }
                    None => continue,
                }
            } else if spec.cluster_ip.as_deref() == Some("None") {
                ServiceKind::Headless
            } else {
                let ips: Vec<IpAddr> = spec
                    .cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|ip| ip.parse().ok())
                    .fold(Vec::new(), |mut v, ip| {
                        if !v.contains(&ip) {
                            v.push(ip);
                        }
                        v
                    });
                if ips.is_empty() {
                    // Not allocated yet: no record until it is.
                    continue;
                }
                ServiceKind::ClusterIp(ips)
            };
            if spec.publish_not_ready_addresses == Some(true) {
                publish_not_ready.insert((ns.to_owned(), name.to_owned()));
            }
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(PortEntry {
                        name: p.name.as_deref().filter(|n| !n.is_empty())?.to_owned(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            snap.services.entry(ns.to_owned()).or_default().insert(
                name.to_owned(),
                ServiceEntry {
                    kind,
                    ports,
                    endpoints: Vec::new(),
                },
            );
        }
        for slice in slices {
            let Some(ns) = slice.metadata.namespace.as_deref() else {
                continue;
            };
            let Some(svc_name) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let Some(entry) = snap
                .services
                .get_mut(ns)
                .and_then(|m| m.get_mut(svc_name.as_str()))
            else {
                continue;
            };
            let include_not_ready = publish_not_ready.contains(&(ns.to_owned(), svc_name.clone()));
            let ports: Vec<PortEntry> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(PortEntry {
                        name: p.name.as_deref().filter(|n| !n.is_empty())?.to_owned(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: u16::try_from(p.port?).ok()?,
                    })
                })
                .collect();
            for ep in slice.endpoints.iter().flatten() {
                // A missing `ready` means ready (EndpointSlice API, KEP-752).
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready && !include_not_ready {
                    continue;
                }
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    if entry.endpoints.iter().any(|e| e.ip == ip) {
                        continue;
                    }
                    entry.endpoints.push(EndpointEntry {
                        ip,
                        hostname: ep.hostname.clone().filter(|h| !h.is_empty()),
                        ports: ports.clone(),
                    });
                }
            }
        }
        // Reverse records: cluster IPs first, then endpoints, in a stable order so the same
        // objects always give the same PTR (CoreDNS's serviceRecordForIP looks the same way).
        let mut ordered: BTreeMap<(&str, &str), &ServiceEntry> = BTreeMap::new();
        for (ns, m) in &mut snap.services {
            for (name, entry) in m.iter_mut() {
                entry.endpoints.sort_by_key(|e| e.ip);
                ordered.insert((ns.as_str(), name.as_str()), entry);
            }
        }
        let mut reverse = HashMap::new();
        for (&(ns, name), entry) in &ordered {
            if let ServiceKind::ClusterIp(ips) = &entry.kind {
                for ip in ips {
                    reverse
                        .entry(*ip)
                        .or_insert_with(|| format!("{name}.{ns}.svc"));
                }
            }
        }
        for (&(ns, name), entry) in &ordered {
            for ep in &entry.endpoints {
                reverse
                    .entry(ep.ip)
                    .or_insert_with(|| format!("{}.{name}.{ns}.svc", ep.label()));
            }
        }
        snap.reverse = reverse;
        for pod in pods {
            let Some(ns) = pod.metadata.namespace.as_deref() else {
                continue;
            };
            let status = pod.status.as_ref();
            let ips = status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(status.and_then(|s| s.pod_ip.as_deref()));
            for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                let nss = snap.pods.entry(ip).or_default();
                if !nss.iter().any(|n| n == ns) {
                    nss.push(ns.to_owned());
                }
            }
        }
        snap
    }

    /// The number of Services in the snapshot.
    pub fn service_count(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }

    fn service(&self, ns: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get(ns)?.get(name)
    }
}

/// The address as a DNS label, dashes for dots and colons (`10-244-1-5`, `fd00--5`).
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The reverse of [`dashed`].
fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn address_record(name: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), TTL, data)
}

/// The records of `ips` that match `qtype` (A → IPv4, AAAA → IPv6, ANY → both).
fn addresses(name: &Name, ips: impl IntoIterator<Item = IpAddr>, qtype: RecordType) -> Vec<Record> {
    ips.into_iter()
        .filter(|ip| match qtype {
            RecordType::A => ip.is_ipv4(),
            RecordType::AAAA => ip.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        })
        .map(|ip| address_record(name, ip))
        .collect()
}

fn found(answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
    if answers.is_empty() {
        Answer::NoData
    } else {
        Answer::Found {
            answers,
            additionals,
        }
    }
}

/// Answers `qname`/`qtype` from the snapshot. Names under the cluster zone are ours (a name
/// that is not in the snapshot is NXDOMAIN); reverse names of addresses the snapshot knows are
/// ours; everything else is forwarded, as CoreDNS's `kubernetes` plugin with
/// `fallthrough in-addr.arpa ip6.arpa` and a `forward . /etc/resolv.conf` behind it.
pub fn answer(snap: &Snapshot, zone: &Zone, qname: &Name, qtype: RecordType) -> Answer {
    let lower = qname.to_lowercase();
    if zone.domain.zone_of(&lower) {
        let rel = lower.num_labels() - zone.domain.num_labels();
        let labels: Vec<&str> = lower
            .iter()
            .take(usize::from(rel))
            .map(|l| std::str::from_utf8(l).unwrap_or(""))
            .collect();
        return in_zone(snap, zone, qname, &labels, qtype);
    }
    reverse(snap, zone, qname, &lower, qtype)
}

/// Names under the cluster zone; `labels` are those left of the zone, leftmost first.
fn in_zone(
    snap: &Snapshot,
    zone: &Zone,
    qname: &Name,
    labels: &[&str],
    qtype: RecordType,
) -> Answer {
    match labels {
        [] => match qtype {
            RecordType::SOA | RecordType::ANY => found(vec![zone.soa(snap.serial)], vec![]),
            _ => Answer::NoData,
        },
        ["dns-version"] => match qtype {
            RecordType::TXT | RecordType::ANY => found(
                vec![Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::TXT(TXT::new(vec![SPEC_VERSION.to_owned()])),
                )],
                vec![],
            ),
            _ => Answer::NoData,
        },
        ["svc"] | ["pod"] => Answer::NoData,
        [ns, "svc"] => {
            if snap.services.contains_key(*ns) {
                Answer::NoData
            } else {
                Answer::NxDomain
            }
        }
        [svc, ns, "svc"] => match snap.service(ns, svc) {
            None => Answer::NxDomain,
            Some(entry) => service(zone, qname, svc, ns, entry, qtype),
        },
        [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            match snap.service(ns, svc) {
                None => Answer::NxDomain,
                Some(entry) => srv(zone, qname, svc, ns, entry, &port[1..], &proto[1..], qtype),
            }
        }
        [proto, svc, ns, "svc"] if proto.starts_with('_') => match snap.service(ns, svc) {
            // `_tcp.svc.ns.svc.zone` is an empty non-terminal when a named port uses it.
            Some(entry) if entry.ports.iter().any(|p| p.protocol == proto[1..]) => Answer::NoData,
            _ => Answer::NxDomain,
        },
        [host, svc, ns, "svc"] => match snap.service(ns, svc) {
            Some(entry) if entry.kind == ServiceKind::Headless => {
                let ips = entry
                    .endpoints
                    .iter()
                    .filter(|e| e.label() == *host)
                    .map(|e| e.ip)
                    .collect::<Vec<_>>();
                if ips.is_empty() {
                    Answer::NxDomain
                } else {
                    found(addresses(qname, ips, qtype), vec![])
                }
            }
            _ => Answer::NxDomain,
        },
        [ip, ns, "pod"] => match undashed(ip) {
            Some(ip)
                if snap
                    .pods
                    .get(&ip)
                    .is_some_and(|nss| nss.iter().any(|n| n == ns)) =>
            {
                found(addresses(qname, [ip], qtype), vec![])
            }
            _ => Answer::NxDomain,
        },
        _ => Answer::NxDomain,
    }
}

fn service(
    zone: &Zone,
    qname: &Name,
    svc: &str,
    ns: &str,
    entry: &ServiceEntry,
    qtype: RecordType,
) -> Answer {
    match &entry.kind {
        ServiceKind::ExternalName(target) => match qtype {
            // A CNAME answers every type but the ones naming the node itself (RFC 1034 §3.6.2).
            RecordType::SOA | RecordType::NS => Answer::NoData,
            _ => found(
                vec![Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::CNAME(CNAME(target.clone())),
                )],
                vec![],
            ),
        },
        ServiceKind::ClusterIp(ips) => match qtype {
            RecordType::SRV => {
                // SRV at the Service's own name: every named port (CoreDNS does the same).
                let target = zone.name(&format!("{svc}.{ns}.svc"));
                let answers = entry
                    .ports
                    .iter()
                    .map(|p| srv_record(qname, 100, p.port, &target))
                    .collect();
                found(
                    answers,
                    addresses(&target, ips.iter().copied(), RecordType::ANY),
                )
            }
            _ => found(addresses(qname, ips.iter().copied(), qtype), vec![]),
        },
        ServiceKind::Headless => match qtype {
            RecordType::SRV => {
                let (answers, additionals) = headless_srv(zone, svc, ns, entry, qname, None);
                found(answers, additionals)
            }
            _ => found(
                addresses(qname, entry.endpoints.iter().map(|e| e.ip), qtype),
                vec![],
            ),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn srv(
    zone: &Zone,
    qname: &Name,
    svc: &str,
    ns: &str,
    entry: &ServiceEntry,
    port: &str,
    proto: &str,
    qtype: RecordType,
) -> Answer {
    let port_named = |p: &PortEntry| p.name == port && p.protocol == proto;
    if !entry.ports.iter().any(port_named) {
        return Answer::NxDomain;
    }
    if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
        return Answer::NoData;
    }
    match &entry.kind {
        ServiceKind::ClusterIp(ips) => {
            // §2.3.3: `_port._proto.svc.ns.svc.zone. SRV 0 100 <port> svc.ns.svc.zone.`
            let target = zone.name(&format!("{svc}.{ns}.svc"));
            let answers = entry
                .ports
                .iter()
                .filter(|p| port_named(p))
                .map(|p| srv_record(qname, 100, p.port, &target))
                .collect();
            found(
                answers,
                addresses(&target, ips.iter().copied(), RecordType::ANY),
            )
        }
        ServiceKind::Headless => {
            let (answers, additionals) =
                headless_srv(zone, svc, ns, entry, qname, Some((port, proto)));
            found(answers, additionals)
        }
        ServiceKind::ExternalName(_) => Answer::NoData,
    }
}

/// §2.4.3: one SRV per ready endpoint and named port, its target the endpoint's own name,
/// the endpoint's address in the additional section.
fn headless_srv(
    zone: &Zone,
    svc: &str,
    ns: &str,
    entry: &ServiceEntry,
    qname: &Name,
    only: Option<(&str, &str)>,
) -> (Vec<Record>, Vec<Record>) {
    let mut targets = Vec::new();
    for ep in &entry.endpoints {
        for p in &ep.ports {
            if only.is_some_and(|(name, proto)| p.name != name || p.protocol != proto) {
                continue;
            }
            targets.push((ep, p.port));
        }
    }
    // CoreDNS spreads the weight evenly over the targets.
    let weight = u16::try_from(100 / targets.len().max(1)).unwrap_or(100);
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for (ep, port) in targets {
        let target = zone.name(&format!("{}.{svc}.{ns}.svc", ep.label()));
        answers.push(srv_record(qname, weight, port, &target));
        let addr = address_record(&target, ep.ip);
        if !additionals.contains(&addr) {
            additionals.push(addr);
        }
    }
    (answers, additionals)
}

fn srv_record(qname: &Name, weight: u16, port: u16, target: &Name) -> Record {
    Record::from_rdata(
        qname.clone(),
        TTL,
        RData::SRV(SRV::new(0, weight, port, target.clone())),
    )
}

/// `in-addr.arpa` and `ip6.arpa` names: PTR of addresses the snapshot knows (§2.3.4, §2.4.4),
/// the rest forwarded.
fn reverse(snap: &Snapshot, zone: &Zone, qname: &Name, lower: &Name, qtype: RecordType) -> Answer {
    let Ok(net) = lower.parse_arpa_name() else {
        return Answer::Forward;
    };
    let full = if net.addr().is_ipv4() { 32 } else { 128 };
    if net.prefix_len() != full {
        return Answer::Forward;
    }
    let Some(target) = snap.reverse.get(&net.addr()) else {
        return Answer::Forward;
    };
    match qtype {
        RecordType::PTR | RecordType::ANY => found(
            vec![Record::from_rdata(
                qname.clone(),
                TTL,
                RData::PTR(PTR(zone.name(target))),
            )],
            vec![],
        ),
        _ => Answer::NoData,
    }
}
