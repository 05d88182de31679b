//! The matrix's vocabulary: peers, ports, probe outcomes, and the expected matrix built from
//! selectors over peers and ports.

use std::{
    collections::BTreeMap,
    fmt,
    ops::{BitAnd, BitOr, Not},
    rc::Rc,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortProto {
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for PortProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto.name(), self.port)
    }
}

/// What every server listens on.
pub const PORTS: [PortProto; 4] = [
    PortProto {
        port: 80,
        proto: Proto::Tcp,
    },
    PortProto {
        port: 81,
        proto: Proto::Tcp,
    },
    PortProto {
        port: 80,
        proto: Proto::Udp,
    },
    PortProto {
        port: 81,
        proto: Proto::Udp,
    },
];

/// One end of a probe.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Pod {
        ns: String,
        name: String,
    },
    /// A host outside the cluster, on its underlay (`ext1`, `ext2`).
    Ext(u8),
    /// A node's own network stack (only ever a source, towards the Pods on that node).
    Node(u8),
}

impl Peer {
    pub fn pod(ns: &str, name: &str) -> Self {
        Peer::Pod {
            ns: ns.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pod { ns, name } => write!(f, "{ns}/{name}"),
            Peer::Ext(i) => write!(f, "ext{i}"),
            Peer::Node(i) => write!(f, "node{i}"),
        }
    }
}

/// One probe of the matrix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    pub from: Peer,
    pub to: Peer,
    pub port: PortProto,
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this name.
    Answer(String),
    /// No connection or no answer within the timeout: what a dropped packet looks like.
    Timeout,
    /// A reset or ICMP port unreachable.
    Refused,
    Error(String),
}

impl Outcome {
    /// Connected means the destination itself answered.
    pub fn connected(&self, to: &Peer) -> bool {
        matches!(self, Outcome::Answer(name) if *name == to.to_string())
    }

    pub fn describe(&self, to: &Peer) -> String {
        match self {
            Outcome::Answer(_) if self.connected(to) => "allowed".into(),
            Outcome::Answer(name) => format!("answered by {name}"),
            Outcome::Timeout => "timeout".into(),
            Outcome::Refused => "refused".into(),
            Outcome::Error(e) => format!("error: {e}"),
        }
    }
}

/// A predicate, combined with `|`, `&` and `!`.
pub struct Pred<T: ?Sized>(Rc<dyn Fn(&T) -> bool>);

impl<T: ?Sized> Clone for Pred<T> {
    fn clone(&self) -> Self {
        Pred(Rc::clone(&self.0))
    }
}

impl<T: ?Sized> fmt::Debug for Pred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pred")
    }
}

impl<T: ?Sized + 'static> Pred<T> {
    pub fn new(f: impl Fn(&T) -> bool + 'static) -> Self {
        Pred(Rc::new(f))
    }

    pub fn matches(&self, t: &T) -> bool {
        (self.0)(t)
    }
}

impl<T: ?Sized + 'static> BitOr for Pred<T> {
    type Output = Pred<T>;
    fn bitor(self, rhs: Self) -> Self {
        Pred::new(move |t| self.matches(t) || rhs.matches(t))
    }
}

impl<T: ?Sized + 'static> BitAnd for Pred<T> {
    type Output = Pred<T>;
    fn bitand(self, rhs: Self) -> Self {
        Pred::new(move |t| self.matches(t) && rhs.matches(t))
    }
}

impl<T: ?Sized + 'static> Not for Pred<T> {
    type Output = Pred<T>;
    fn not(self) -> Self {
        Pred::new(move |t| !self.matches(t))
    }
}

/// Selects peers.
pub type Sel = Pred<Peer>;
/// Selects ports.
pub type Ports = Pred<PortProto>;

/// Every Pod and every external host (not the nodes, which no policy applies to).
pub fn any() -> Sel {
    Pred::new(|p| !matches!(p, Peer::Node(_)))
}

pub fn pods() -> Sel {
    Pred::new(|p| matches!(p, Peer::Pod { .. }))
}

pub fn exts() -> Sel {
    Pred::new(|p| matches!(p, Peer::Ext(_)))
}

pub fn ext(i: u8) -> Sel {
    Pred::new(move |p| *p == Peer::Ext(i))
}

/// The Pods of namespace `n`.
pub fn ns(n: &'static str) -> Sel {
    Pred::new(move |p| matches!(p, Peer::Pod { ns, .. } if ns == n))
}

pub fn pod(n: &'static str, name: &'static str) -> Sel {
    let want = Peer::pod(n, name);
    Pred::new(move |p| *p == want)
}

pub fn all() -> Ports {
    Pred::new(|_| true)
}

pub fn tcp(port: u16) -> Ports {
    Pred::new(move |p: &PortProto| p.proto == Proto::Tcp && p.port == port)
}

pub fn udp(port: u16) -> Ports {
    Pred::new(move |p: &PortProto| p.proto == Proto::Udp && p.port == port)
}

pub fn tcp_any() -> Ports {
    Pred::new(|p: &PortProto| p.proto == Proto::Tcp)
}

pub fn udp_any() -> Ports {
    Pred::new(|p: &PortProto| p.proto == Proto::Udp)
}

/// The expected matrix of a step: every probe connected unless the step says otherwise.
#[derive(Debug)]
pub struct Reach {
    cells: BTreeMap<Cell, bool>,
}

impl Reach {
    pub fn new(cells: Vec<Cell>) -> Self {
        Reach {
            cells: cells.into_iter().map(|c| (c, true)).collect(),
        }
    }

    fn set(&mut self, from: &Sel, to: &Sel, ports: &Ports, connected: bool) -> &mut Self {
        for (cell, v) in &mut self.cells {
            if from.matches(&cell.from) && to.matches(&cell.to) && ports.matches(&cell.port) {
                *v = connected;
            }
        }
        self
    }

    pub fn deny(&mut self, from: Sel, to: Sel, ports: Ports) -> &mut Self {
        self.set(&from, &to, &ports, false)
    }

    pub fn allow(&mut self, from: Sel, to: Sel, ports: Ports) -> &mut Self {
        self.set(&from, &to, &ports, true)
    }

    /// What no policy decides: a Pod's traffic to its own address never leaves its network
    /// namespace (the kernel delivers it over loopback, upstream's suite ignores it too), and a
    /// node's own stack may always reach the Pods on it (kubelet's probes come from there).
    pub fn finish(mut self) -> BTreeMap<Cell, bool> {
        for (cell, v) in &mut self.cells {
            if cell.from == cell.to || matches!(cell.from, Peer::Node(_)) {
                *v = true;
            }
        }
        self.cells
    }
}

/// A Pod of the model: where it runs and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDef {
    pub ns: &'static str,
    pub name: &'static str,
    /// Node number (1 or 2).
    pub node: u8,
    pub labels: Vec<(&'static str, &'static str)>,
}

impl PodDef {
    pub fn peer(&self) -> Peer {
        Peer::pod(self.ns, self.name)
    }
}
