//! The load-balancer state in the agent's terms (frontends, backends, reverse-NAT indexes) and
//! the map operations that move the datapath from one state to another. Pure data: the
//! planner produces it, the map layer reads and writes it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use keelson_common::proto;

/// A transport protocol a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// Parses a Kubernetes protocol name (`None` means the API default, TCP).
    pub fn from_k8s(name: Option<&str>) -> Option<Self> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number the datapath matches on.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => proto::TCP,
            Proto::Udp => proto::UDP,
            Proto::Sctp => proto::SCTP,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            proto::TCP => Some(Proto::Tcp),
            proto::UDP => Some(Proto::Udp),
            proto::SCTP => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Service frontend: ClusterIP, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub address: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.address, self.port),
            self.proto
        )
    }
}

/// A backend: a Pod (or any endpoint) address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub address: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.address, self.port),
            self.proto
        )
    }
}

/// What the API says the datapath should do: each frontend's backends, in slot order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<Frontend, Vec<BackendAddr>>,
    /// Frontends with `sessionAffinity: ClientIP`: the timeout in seconds.
    pub affinity: BTreeMap<Frontend, u32>,
    /// Master flags besides affinity ([`keelson_common::service_flags`]: `EXTERNAL`,
    /// `MAGLEV`, `LOCAL`); absent means none.
    pub flags: BTreeMap<Frontend, u8>,
    /// `namespace/name` of the Service each frontend belongs to (for the dump tools).
    pub names: BTreeMap<Frontend, String>,
    /// Every endpoint the EndpointSlices still list, whatever its conditions: a backend that
    /// left every frontend's slots but is still listed (terminating, or not ready) keeps its
    /// backend entry, and so its conntrack entries and established flows (KEP-1669); it is
    /// removed, and its flows with it, once it is no longer listed at all.
    pub retained: BTreeSet<BackendAddr>,
}

/// One frontend as found in the `services` map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The master slot: backend count and reverse-NAT index, if present.
    pub master: Option<(u16, u16)>,
    /// The master's session-affinity timeout in seconds, if affinity is on.
    pub affinity: Option<u32>,
    /// The master's other flags (everything but `AFFINITY`).
    pub flags: u8,
    /// Backend slots `1..`: slot → backend id.
    pub slots: BTreeMap<u16, u32>,
}

/// What the maps hold now (read back after an agent restart, so nothing is flushed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbState {
    pub services: BTreeMap<Frontend, ServiceEntry>,
    pub backends: BTreeMap<u32, BackendAddr>,
    pub revnat: BTreeMap<u16, Frontend>,
    /// `namespace/name` per reverse-NAT index.
    pub names: BTreeMap<u16, String>,
    /// Maglev tables per (reverse-NAT index, protocol).
    pub maglev: BTreeMap<(u16, Proto), Vec<u32>>,
}

impl LbState {
    /// The backends of `frontend` in slot order, as the datapath would choose among them.
    pub fn backends_of(&self, frontend: &Frontend) -> Vec<Option<BackendAddr>> {
        let Some(entry) = self.services.get(frontend) else {
            return Vec::new();
        };
        let count = entry.master.map_or(0, |(count, _)| count);
        (1..=count)
            .map(|slot| {
                entry
                    .slots
                    .get(&slot)
                    .and_then(|id| self.backends.get(id))
                    .copied()
            })
            .collect()
    }
}

/// One change to the maps. [`crate::services::plan::diff`] orders them so that the datapath
/// never follows a reference to an entry not written yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend {
        id: u32,
        backend: BackendAddr,
    },
    PutRevNat {
        index: u16,
        frontend: Frontend,
    },
    PutSlot {
        frontend: Frontend,
        slot: u16,
        backend_id: u32,
    },
    PutMaster {
        frontend: Frontend,
        count: u16,
        rev_nat_index: u16,
        /// Session-affinity timeout in seconds, `None` without affinity.
        affinity_timeout: Option<u32>,
        /// Flags besides affinity.
        flags: u8,
    },
    PutName {
        index: u16,
        name: String,
    },
    PutMaglev {
        index: u16,
        proto: Proto,
        table: Vec<u32>,
    },
    DeleteMaglev {
        index: u16,
        proto: Proto,
    },
    DeleteSlot {
        frontend: Frontend,
        slot: u16,
    },
    DeleteRevNat {
        index: u16,
    },
    DeleteBackend {
        id: u32,
    },
}
