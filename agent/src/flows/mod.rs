//! Flow visibility, as Hubble gives it: the datapath's events (every drop, and the first packet
//! of every flow when asked) decoded, named (Pods, Services, policies) and kept in a bounded
//! buffer so that `keelson flows --since 5m` works after the fact; followers get new flows as
//! they come. The agent API serves them as JSON lines (`GET /flows`), `keelson flows` merges
//! the nodes' streams.

pub mod client;
pub mod names;
pub mod reader;
pub mod whatif;

use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use keelson_common::{
    DropReason, FlowEvent,
    policy::{direction, identity, verdict},
    proto,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Flows the agent remembers (about 300 bytes each).
pub const KEPT_FLOWS: usize = 8192;

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// Absent for protocols without ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `namespace/name` of the Pod with this address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub identity: u32,
    /// What the identity stands for: `host`, `world`, `remote-node`, a Pod's labels, a CIDR.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub labels: String,
}

/// A flow as `keelson flows` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub time: Timestamp,
    pub node: String,
    /// `allowed` or `dropped`.
    pub verdict: String,
    /// `ingress` or `egress`, seen from the local Pod the verdict concerns.
    pub direction: String,
    /// The drop reason (`policy_denied`, ...); absent for allowed flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `TCP`, `UDP`, `SCTP`, `ICMP` or the protocol number.
    pub protocol: String,
    /// TCP flags of the packet, e.g. `SYN`, `SYN,ACK`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tcp_flags: String,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// The Services (`namespace/name`) whose backend the destination is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// The NetworkPolicy (`namespace/name`) that allowed the flow, or for a flow no policy
    /// allows, `None` with `reason: policy_denied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl Flow {
    /// Whether the flow concerns the Pod `namespace/name` at either end.
    pub fn involves(&self, pod: &str) -> bool {
        self.source.pod.as_deref() == Some(pod) || self.destination.pod.as_deref() == Some(pod)
    }

    /// One line in the manner of `hubble observe`.
    pub fn line(&self) -> String {
        let end = |e: &Endpoint| {
            let who = e.pod.clone().unwrap_or_else(|| e.ip.to_string());
            let who = if e.pod.is_some() {
                format!("{who} ({})", e.ip)
            } else {
                format!("{who} ({})", identity::kind(e.identity))
            };
            match e.port {
                Some(p) => format!("{who}:{p}"),
                None => who,
            }
        };
        let why = match (&self.policy, self.verdict.as_str(), self.reason.as_deref()) {
            (Some(p), _, _) => format!("by policy {p}"),
            (None, "dropped", Some("policy_denied")) => "no policy allows".to_owned(),
            (None, "dropped", Some(r)) => r.to_owned(),
            _ => "no policy applies".to_owned(),
        };
        let svc = if self.services.is_empty() {
            String::new()
        } else {
            format!(" service {}", self.services.join(","))
        };
        let flags = if self.tcp_flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.tcp_flags)
        };
        format!(
            "{} {} {} -> {}{} {}{} {} {}: {}",
            self.time.strftime("%b %e %H:%M:%S%.3f"),
            self.node,
            end(&self.source),
            end(&self.destination),
            svc,
            self.protocol,
            flags,
            self.verdict.to_uppercase(),
            self.direction,
            why
        )
    }
}

/// Names of protocol numbers.
pub fn protocol_name(p: u8) -> String {
    match p {
        proto::TCP => "TCP".into(),
        proto::UDP => "UDP".into(),
        proto::SCTP => "SCTP".into(),
        1 => "ICMP".into(),
        n => n.to_string(),
    }
}

/// `SYN,ACK` for the flags byte of a TCP header.
pub fn tcp_flags_text(flags: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// The parts of a [`Flow`] that come from the event alone (names are the caller's).
pub fn decode(event: &FlowEvent, time: Timestamp, node: &str) -> Flow {
    let has_ports = matches!(event.proto, proto::TCP | proto::UDP | proto::SCTP);
    let end = |ip: u32, port: u16, id: u32| Endpoint {
        ip: Ipv4Addr::from(ip.to_ne_bytes()),
        port: has_ports.then(|| u16::from_be(port)),
        pod: None,
        identity: id,
        labels: String::new(),
    };
    Flow {
        time,
        node: node.to_owned(),
        verdict: verdict::name(event.verdict).to_owned(),
        direction: direction::name(event.dir).to_owned(),
        reason: DropReason::from_number(event.reason).map(|r| r.name().to_owned()),
        protocol: protocol_name(event.proto),
        tcp_flags: if event.proto == proto::TCP {
            tcp_flags_text(event.tcp_flags)
        } else {
            String::new()
        },
        source: end(event.saddr, event.sport, event.src_identity),
        destination: end(event.daddr, event.dport, event.dst_identity),
        services: Vec::new(),
        policy: None,
    }
}

/// The agent's recent flows, and a channel to follow new ones.
#[derive(Debug)]
pub struct FlowStore {
    kept: Mutex<VecDeque<Arc<Flow>>>,
    capacity: usize,
    live: broadcast::Sender<Arc<Flow>>,
}

impl FlowStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            kept: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            live: broadcast::channel(1024).0,
        }
    }

    /// Records a flow; the oldest is forgotten when the buffer is full.
    pub fn push(&self, flow: Flow) {
        let flow = Arc::new(flow);
        {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == self.capacity {
                kept.pop_front();
            }
            kept.push_back(Arc::clone(&flow));
        }
        // Nobody following is not an error.
        let _ = self.live.send(flow);
    }

    /// The kept flows at or after `since`, oldest first.
    pub fn since(&self, since: Option<Timestamp>) -> Vec<Arc<Flow>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .filter(|f| since.is_none_or(|s| f.time >= s))
            .cloned()
            .collect()
    }

    /// New flows from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Flow>> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(v: u8, reason: u32) -> FlowEvent {
        FlowEvent {
            time_ns: 0,
            saddr: u32::from_ne_bytes([10, 244, 1, 3]),
            daddr: u32::from_ne_bytes([10, 244, 2, 4]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: proto::TCP,
            verdict: v,
            dir: direction::INGRESS,
            tcp_flags: 0x02,
            reason,
            policy: 0,
            src_identity: 300,
            dst_identity: 301,
            rev_nat_index: 0,
            pad: [0; 2],
            ifindex: 4,
        }
    }

    #[test]
    fn a_default_deny_drop_reads_as_hubble_would_say_it() {
        let mut f = decode(
            &event(verdict::DROPPED, DropReason::PolicyIngress as u32),
            Timestamp::UNIX_EPOCH,
            "n1",
        );
        f.source.pod = Some("x/a".into());
        f.destination.pod = Some("y/b".into());
        assert_eq!(f.source.port, Some(40000));
        assert_eq!(f.reason.as_deref(), Some("policy_denied"));
        assert_eq!(f.tcp_flags, "SYN");
        let line = f.line();
        assert!(
            line.contains("x/a (10.244.1.3):40000 -> y/b (10.244.2.4):80"),
            "{line}"
        );
        assert!(
            line.ends_with("DROPPED ingress: no policy allows"),
            "{line}"
        );
        assert!(f.involves("y/b") && !f.involves("z/c"));
        let json = serde_json::to_string(&f).expect("json");
        let back: Flow = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, f);
    }

    #[test]
    fn the_store_keeps_the_newest_and_answers_since() {
        let store = FlowStore::new(2);
        let mut rx = store.subscribe();
        for secs in [1, 2, 3] {
            let t = Timestamp::from_second(secs).expect("time");
            store.push(decode(&event(verdict::ALLOWED, 0), t, "n1"));
        }
        let all = store.since(None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].time.as_second(), 2);
        let late = store.since(Some(Timestamp::from_second(3).expect("time")));
        assert_eq!(late.len(), 1);
        assert_eq!(rx.try_recv().expect("followed").time.as_second(), 1);
    }
}
