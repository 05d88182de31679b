//! Pod IP address management: hands out addresses of the node's `spec.podCIDR` to CNI
//! attachments and keeps the allocations in `<data_dir>/ipam.json`, so an agent restart never
//! gives a live Pod's address to another one.
//!
//! An allocation is keyed by (container id, interface name), as CNI identifies an attachment
//! (spec 1.1, "Attachment"), which makes a repeated ADD idempotent. The network address, the
//! first host address (`.1`, kept free for a node-side gateway) and the broadcast address are
//! never handed out. Allocation continues after the last address handed out rather than
//! re-using the lowest free one, so a just-released address is not immediately re-used by the
//! next Pod while other nodes may still hold state (conntrack, endpoints) for it.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// Errors of address management.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Network),
    #[error("pod CIDR {0} is too small to hand out addresses")]
    CidrTooSmall(Ipv4Network),
    #[error("reading or writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One handed-out address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
}

/// What `ipam.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamState {
    /// Kept as text: ipnetwork's serde support is an optional feature not worth a dependency
    /// change.
    cidr: Option<String>,
    last: Option<Ipv4Addr>,
    allocations: BTreeMap<Ipv4Addr, Allocation>,
}

/// The allocator of one node's pod CIDR, persisted after every change.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    cidr: Ipv4Network,
    state: IpamState,
}

impl Ipam {
    /// Opens (or starts) the allocation file and binds it to `cidr`. Allocations outside a
    /// changed CIDR are dropped: their Pods cannot keep addresses the node no longer owns.
    pub fn open(path: &Path, cidr: Ipv4Network) -> Result<Self, IpamError> {
        let mut state = match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<IpamState>(&bytes).map_err(|source| IpamError::Decode {
                    path: path.to_owned(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IpamState::default(),
            Err(source) => {
                return Err(IpamError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if hosts(cidr).is_none() {
            return Err(IpamError::CidrTooSmall(cidr));
        }
        if state
            .cidr
            .as_deref()
            .and_then(|c| c.parse::<Ipv4Network>().ok())
            != Some(cidr)
        {
            state.allocations.retain(|ip, _| cidr.contains(*ip));
            state.last = state.last.filter(|ip| cidr.contains(*ip));
            state.cidr = Some(cidr.to_string());
        }
        let ipam = Self {
            path: path.to_owned(),
            cidr,
            state,
        };
        ipam.save()?;
        Ok(ipam)
    }

    /// The CIDR addresses come from.
    pub fn cidr(&self) -> Ipv4Network {
        self.cidr
    }

    /// Returns the address of the attachment, allocating one if it has none yet.
    pub fn allocate(&mut self, container_id: &str, ifname: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.lookup(container_id, ifname) {
            return Ok(ip);
        }
        let cidr = self.cidr();
        let (first, last) = hosts(cidr).ok_or(IpamError::CidrTooSmall(cidr))?;
        let (first, last) = (u32::from(first), u32::from(last));
        let span = last - first + 1;
        let start = match self.state.last {
            Some(prev) if (first..=last).contains(&u32::from(prev)) => u32::from(prev) + 1 - first,
            _ => 0,
        };
        for step in 0..span {
            let candidate = Ipv4Addr::from(first + (start + step) % span);
            if let std::collections::btree_map::Entry::Vacant(slot) =
                self.state.allocations.entry(candidate)
            {
                slot.insert(Allocation {
                    container_id: container_id.to_owned(),
                    ifname: ifname.to_owned(),
                });
                self.state.last = Some(candidate);
                self.save()?;
                return Ok(candidate);
            }
        }
        Err(IpamError::Exhausted(cidr))
    }

    /// The address held by an attachment, if any.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Option<Ipv4Addr> {
        self.state
            .allocations
            .iter()
            .find(|(_, a)| a.container_id == container_id && a.ifname == ifname)
            .map(|(ip, _)| *ip)
    }

    /// Releases the attachment's address; releasing an unknown attachment is not an error
    /// (CNI DEL must be idempotent).
    pub fn release(
        &mut self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Ipv4Addr>, IpamError> {
        let ip = self.lookup(container_id, ifname);
        if let Some(ip) = ip {
            self.state.allocations.remove(&ip);
            self.save()?;
        }
        Ok(ip)
    }

    /// Every current allocation.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &Allocation)> {
        self.state.allocations.iter().map(|(ip, a)| (*ip, a))
    }

    fn save(&self) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|source| IpamError::Decode {
            path: self.path.clone(),
            source,
        })?;
        // Write-then-rename keeps the file whole if the agent dies mid-write. No fsync: the
        // page cache outlives an agent crash, and a machine crash ends every Pod network
        // namespace the file describes (the sandboxes are made again after a reboot), so the
        // state only has to survive the agent, as host-local's files (written without fsync)
        // do. The fsync was 0.6 ms of every CNI ADD and DEL.
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// First and last address that may be handed out: skips the network address, `.1` and the
/// broadcast address.
fn hosts(cidr: Ipv4Network) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if cidr.prefix() > 29 {
        return None;
    }
    let net = u32::from(cidr.network());
    let bcast = u32::from(cidr.broadcast());
    Some((Ipv4Addr::from(net + 2), Ipv4Addr::from(bcast - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Network {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn allocates_from_dot_two_and_is_idempotent_per_attachment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ipam =
            Ipam::open(&dir.path().join("ipam.json"), cidr("10.244.1.0/24")).expect("open");
        let a = ipam.allocate("c1", "eth0").expect("alloc");
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate("c1", "eth0").expect("again"), a);
        let b = ipam.allocate("c2", "eth0").expect("alloc");
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        let c = ipam.allocate("c1", "net1").expect("second interface");
        assert_eq!(c, Ipv4Addr::new(10, 244, 1, 4));
    }

    #[test]
    fn release_frees_and_next_allocation_moves_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ipam =
            Ipam::open(&dir.path().join("ipam.json"), cidr("10.244.1.0/24")).expect("open");
        let a = ipam.allocate("c1", "eth0").expect("alloc");
        assert_eq!(ipam.release("c1", "eth0").expect("release"), Some(a));
        assert_eq!(ipam.release("c1", "eth0").expect("release twice"), None);
        assert_eq!(ipam.lookup("c1", "eth0"), None);
        // The released address is not handed out again right away.
        assert_eq!(
            ipam.allocate("c2", "eth0").expect("alloc"),
            Ipv4Addr::new(10, 244, 1, 3)
        );
    }

    #[test]
    fn exhaustion_is_an_error_and_wraps_around_after_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A /29 has 8 addresses: network, .1, broadcast excluded leaves .2-.6.
        let mut ipam =
            Ipam::open(&dir.path().join("ipam.json"), cidr("10.244.1.0/29")).expect("open");
        for i in 0..5 {
            ipam.allocate(&format!("c{i}"), "eth0").expect("alloc");
        }
        assert!(matches!(
            ipam.allocate("c9", "eth0"),
            Err(IpamError::Exhausted(_))
        ));
        ipam.release("c0", "eth0").expect("release");
        assert_eq!(
            ipam.allocate("c9", "eth0").expect("alloc"),
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert!(matches!(
            Ipam::open(&dir.path().join("other.json"), cidr("10.244.1.0/30")),
            Err(IpamError::CidrTooSmall(_))
        ));
    }

    #[test]
    fn allocations_survive_reopen_and_cidr_change_drops_foreign_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ipam.json");
        let a = {
            let mut ipam = Ipam::open(&path, cidr("10.244.1.0/24")).expect("open");
            ipam.allocate("c1", "eth0").expect("alloc")
        };
        let mut ipam = Ipam::open(&path, cidr("10.244.1.0/24")).expect("reopen");
        assert_eq!(ipam.lookup("c1", "eth0"), Some(a));
        assert_eq!(
            ipam.allocate("c2", "eth0").expect("alloc"),
            Ipv4Addr::new(10, 244, 1, 3)
        );
        let ipam = Ipam::open(&path, cidr("10.244.2.0/24")).expect("reopen with new cidr");
        assert_eq!(ipam.allocations().count(), 0);
        assert_eq!(ipam.cidr(), cidr("10.244.2.0/24"));
    }

    #[test]
    fn corrupt_file_is_a_decode_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ipam.json");
        fs::write(&path, b"{not json").expect("write");
        assert!(matches!(
            Ipam::open(&path, cidr("10.244.1.0/24")),
            Err(IpamError::Decode { .. })
        ));
    }
}
