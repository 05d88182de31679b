//! Loads the eBPF object, pins its maps under the node's bpffs directory and attaches the
//! programs: socket hooks to the node's cgroup root, tc programs to each endpoint's host veth
//! and to the node's uplink.
//!
//! Everything the kernel needs to keep serving lives in bpffs: the maps (reused on the next
//! load, so an agent restart keeps every translation) and the links (so the programs stay
//! attached while the agent is down; the next load swaps the new programs into them).

pub mod maps;
pub mod owner;
mod policy_maps;
pub mod sys;

use std::{
    collections::BTreeMap,
    fs, io,
    net::Ipv4Addr,
    os::{fd::AsFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, ProgramFd, ProgramInfo,
        SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};
use keelson_common::{EndpointInfo, NodeConfig, limits, names, paths, policy::policy_state_flags};

pub use maps::{Maps, MapsError, MetricKind, MetricSample};
pub use owner::MapOwner;

use crate::services::model::{LbState, MapOp};

/// The eBPF object built from `ebpf/` by the build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keelson"));

/// The programs on a Pod's host veth: from the Pod (the veth's ingress) and to it (egress).
const ENDPOINT_PROGRAMS: [(&str, TcAttachType); 2] = [
    (names::PROG_FROM_CONTAINER, TcAttachType::Ingress),
    (names::PROG_TO_CONTAINER, TcAttachType::Egress),
];
/// The tc priority and handle of the endpoint filters: fixed, so a restarted agent finds and
/// replaces its own filters and an operator's `tc filter show` names them.
const ENDPOINT_TC_PRIORITY: u16 = 1;
const ENDPOINT_TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The socket-level load balancer's programs, in attach order. The v6 hooks translate
/// IPv4-mapped destinations of AF_INET6 sockets.
pub const SOCK_PROGRAMS: [&str; 8] = [
    names::PROG_CONNECT4,
    names::PROG_SENDMSG4,
    names::PROG_RECVMSG4,
    names::PROG_GETPEERNAME4,
    names::PROG_CONNECT6,
    names::PROG_SENDMSG6,
    names::PROG_RECVMSG6,
    names::PROG_GETPEERNAME6,
];

/// Every program attached to the node's cgroup: the socket address hooks, then sock_release,
/// which drops a closed socket's reverse entry.
pub const CGROUP_PROGRAMS: [&str; 9] = [
    names::PROG_CONNECT4,
    names::PROG_SENDMSG4,
    names::PROG_RECVMSG4,
    names::PROG_GETPEERNAME4,
    names::PROG_CONNECT6,
    names::PROG_SENDMSG6,
    names::PROG_RECVMSG6,
    names::PROG_GETPEERNAME6,
    names::PROG_SOCK_RELEASE,
];

/// Where the datapath of one node lives.
#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// bpffs directory for this node's pinned maps and links.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory the socket hooks attach to.
    pub cgroup_root: PathBuf,
    /// The node's network namespace; tc programs attach to veths inside it.
    pub node_netns: Option<PathBuf>,
}

/// A local Pod endpoint as the datapath sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// ifindex of the host-side veth, inside the node's network namespace.
    pub host_ifindex: u32,
    pub host_ifname: String,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
}

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("datapath: {0}")]
    Other(String),
    #[error("cannot mount bpffs at {path}")]
    Bpffs {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link of program {name}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("cannot pin link {path}")]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("maps")]
    Maps(#[source] MapsError),
}

/// The loaded datapath of one node. Shared between tasks (`Arc<Datapath>`): the maps belong
/// to their owner thread ([`MapOwner`]), the loaded programs sit behind a mutex for the rare
/// attachments, the kernel does the rest.
#[derive(Debug)]
pub struct Datapath {
    cfg: DatapathConfig,
    /// Holds the loaded programs; their links are pinned, so dropping it detaches nothing.
    ebpf: Mutex<Ebpf>,
    maps: MapOwner,
    /// Writes refused because a map was full, per map (exported as a metric).
    map_full: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl Datapath {
    /// Mounts bpffs if needed, loads the object, reuses or pins maps, attaches socket hooks.
    pub fn load(cfg: DatapathConfig) -> Result<Self, LoaderError> {
        let bpffs = Path::new(paths::BPFFS);
        if cfg.pin_dir.starts_with(bpffs) {
            sys::ensure_bpffs(bpffs).map_err(|source| LoaderError::Bpffs {
                path: bpffs.display().to_string(),
                source,
            })?;
        }
        let links_dir = cfg.pin_dir.join(paths::LINKS_DIR);
        sys::create_dir_all_shared(&links_dir).map_err(|source| LoaderError::Io {
            what: "cannot create pin directory",
            path: links_dir.display().to_string(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&cfg.pin_dir)
            .load(EBPF_OBJECT)
            .map_err(LoaderError::Load)?;

        // The node's cgroup root may not exist before its first Pod; the hooks must be in
        // place before that Pod starts.
        sys::create_dir_all_shared(&cfg.cgroup_root).map_err(|source| LoaderError::Io {
            what: "cannot create cgroup",
            path: cfg.cgroup_root.display().to_string(),
            source,
        })?;
        let cgroup = fs::File::open(&cfg.cgroup_root).map_err(|source| LoaderError::Io {
            what: "cannot open cgroup",
            path: cfg.cgroup_root.display().to_string(),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| LoaderError::Program { name, source })?;
            let link_path = links_dir.join(format!("{name}_link"));
            attach_sock(prog, name, &cgroup, &link_path)?;
        }
        {
            let name = names::PROG_SOCK_RELEASE;
            let prog: &mut CgroupSock = program_mut(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| LoaderError::Program { name, source })?;
            let link_path = links_dir.join(format!("{name}_link"));
            attach_sock(prog, name, &cgroup, &link_path)?;
        }
        for name in [
            names::PROG_FROM_CONTAINER,
            names::PROG_TO_CONTAINER,
            names::PROG_FROM_NETDEV,
            names::PROG_TO_NETDEV,
        ] {
            let tc: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            tc.load()
                .map_err(|source| LoaderError::Program { name, source })?;
        }

        let maps = Maps::take_from(&mut ebpf).map_err(LoaderError::Maps)?;
        let maps = MapOwner::spawn(maps).map_err(|source| LoaderError::Io {
            what: "cannot start the map owner thread for",
            path: cfg.pin_dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            cfg,
            ebpf: Mutex::new(ebpf),
            maps,
            map_full: Arc::default(),
        })
    }

    /// The configuration this datapath was loaded with.
    pub fn config(&self) -> &DatapathConfig {
        &self.cfg
    }

    /// Attaches the tc programs to the endpoint's host veth (ingress: what the Pod sends;
    /// egress: what the node's stack delivers to it) and records it in `endpoints`.
    ///
    /// The map entry is written first, so the Pod's first packet already passes the
    /// anti-spoofing check. Calling it again for the same endpoint swaps the current program
    /// into the existing link (idempotent; what an agent restart does).
    pub fn add_endpoint(&self, ep: &Endpoint) -> Result<(), LoaderError> {
        let info = EndpointInfo {
            ifindex: ep.host_ifindex,
            flags: 0,
            identity: 0,
            pod_mac: ep.pod_mac,
            host_mac: ep.host_mac,
        };
        let ip = ep.ip;
        self.maps
            .run_blocking(move |m| {
                // A restarted agent re-adds its endpoints: the identity and policy flags the
                // policy programmer wrote stay, so enforcement has no gap.
                let mut info = info;
                if let Some(old) = m.endpoint(ip)?
                    && old.ifindex == info.ifindex
                {
                    info.identity = old.identity;
                    info.flags = old.flags;
                }
                m.put_endpoint(ip, info)
            })
            .map_err(LoaderError::Maps)?;
        let mut ebpf = self.lock_ebpf();
        for (name, hook) in ENDPOINT_PROGRAMS {
            self.attach_endpoint_tc(&mut ebpf, name, hook, &ep.host_ifname)?;
            // A tcx link an earlier agent pinned for this address goes: one copy of the
            // program per direction.
            remove_pin(&self.endpoint_link_path(name, ep.ip))?;
        }
        Ok(())
    }

    /// Attaches `name` to a Pod's host veth as a cls_bpf filter in direct-action mode on the
    /// veth's clsact qdisc, or swaps it into the filter already there (an agent restart: the
    /// filter is replaced in place, so the veth is never without its program).
    ///
    /// Not tcx, which the uplink uses: every tcx attach waits for an RCU grace period with
    /// the RTNL held (kernel/bpf/tcx.c `tcx_entry_sync`), 10-30 ms here, twice per Pod and
    /// serialised with every other link change of the node; a cls_bpf filter on a fresh
    /// clsact qdisc costs no grace period.
    fn attach_endpoint_tc(
        &self,
        ebpf: &mut Ebpf,
        name: &'static str,
        hook: TcAttachType,
        ifname: &str,
    ) -> Result<(), LoaderError> {
        let prog: &mut SchedClassifier = program_mut(ebpf, name)?;
        sys::in_netns(self.cfg.node_netns.as_deref(), || {
            // EEXIST when the qdisc is there already (a restart); a real failure shows in
            // the attach below.
            let _ = tc::qdisc_add_clsact(ifname);
            let created = prog.attach_with_options(
                ifname,
                hook,
                TcAttachOptions::Netlink(NlOptions {
                    priority: ENDPOINT_TC_PRIORITY,
                    handle: ENDPOINT_TC_HANDLE,
                    classid: None,
                }),
            );
            let id = match created {
                Ok(id) => id,
                Err(_) => {
                    let existing = SchedClassifierLink::attached(
                        ifname,
                        hook,
                        ENDPOINT_TC_PRIORITY,
                        ENDPOINT_TC_HANDLE,
                        None,
                    )
                    .map_err(|source| LoaderError::Io {
                        what: "no such interface",
                        path: ifname.to_owned(),
                        source,
                    })?;
                    prog.attach_to_link(existing)
                        .map_err(|source| LoaderError::Program { name, source })?
                }
            };
            let link = prog
                .take_link(id)
                .map_err(|source| LoaderError::Program { name, source })?;
            // The filter belongs to the veth, not to this process: dropping the link would
            // detach it, and it must stay when the agent exits (Pods keep running).
            std::mem::forget(link);
            Ok(())
        })
        .map_err(|source| LoaderError::Io {
            what: "cannot enter network namespace",
            path: format!("{:?}", self.cfg.node_netns),
            source,
        })?
    }

    /// Detaches the endpoint programs from the interface `ifindex` of the node's namespace,
    /// if it still exists (a veth that is gone took its filters with it).
    fn detach_endpoint_tc(&self, ifindex: u32) -> Result<(), LoaderError> {
        sys::in_netns(self.cfg.node_netns.as_deref(), || {
            let Ok(ifname) = nix::net::if_::if_indextoname(ifindex) else {
                return;
            };
            let ifname = ifname.to_string_lossy();
            for (_, hook) in ENDPOINT_PROGRAMS {
                if let Ok(link) = SchedClassifierLink::attached(
                    &ifname,
                    hook,
                    ENDPOINT_TC_PRIORITY,
                    ENDPOINT_TC_HANDLE,
                    None,
                ) {
                    // ENOENT: the filter (or the veth) went meanwhile.
                    let _ = aya::programs::Link::detach(link);
                }
            }
        })
        .map_err(|source| LoaderError::Io {
            what: "cannot enter network namespace",
            path: format!("{:?}", self.cfg.node_netns),
            source,
        })
    }

    /// Attaches the uplink program to the node's interface `ifname` (the one holding
    /// `node_ip`) and tells the programs about it. Idempotent, like [`Self::add_endpoint`].
    pub fn attach_uplink(
        &self,
        ifname: &str,
        ifindex: u32,
        node_ip: Ipv4Addr,
    ) -> Result<(), LoaderError> {
        let link_path = self
            .cfg
            .pin_dir
            .join(paths::LINKS_DIR)
            .join(format!("{}_{ifname}", names::PROG_FROM_NETDEV));
        // The configuration first: the program passes everything until it has an uplink.
        let config = NodeConfig {
            node_ip: maps::ip_to_net(node_ip),
            uplink_ifindex: ifindex,
            snat_port_min: limits::SNAT_PORT_MIN,
            snat_port_max: limits::SNAT_PORT_MAX,
            pad: [0; 4],
        };
        self.maps
            .run_blocking(move |m| m.write_config(config))
            .map_err(LoaderError::Maps)?;
        let mut ebpf = self.lock_ebpf();
        self.attach_tc(
            &mut ebpf,
            names::PROG_FROM_NETDEV,
            TcAttachType::Ingress,
            ifname,
            ifindex,
            &link_path,
        )?;
        let egress_path = self
            .cfg
            .pin_dir
            .join(paths::LINKS_DIR)
            .join(format!("{}_{ifname}", names::PROG_TO_NETDEV));
        self.attach_tc(
            &mut ebpf,
            names::PROG_TO_NETDEV,
            TcAttachType::Egress,
            ifname,
            ifindex,
            &egress_path,
        )
    }

    /// Attaches tc program `name` at `hook` of `ifname` through a pinned tcx link, or swaps the
    /// current program into the link an earlier agent pinned there.
    fn attach_tc(
        &self,
        ebpf: &mut Ebpf,
        name: &'static str,
        hook: TcAttachType,
        ifname: &str,
        ifindex: u32,
        link_path: &Path,
    ) -> Result<(), LoaderError> {
        let prog: &mut SchedClassifier = program_mut(ebpf, name)?;
        // An earlier agent's link on this very interface: swap the program in place (tcx
        // refuses the same program twice on one hook, and a swap leaves no unprotected moment).
        if link_path.exists() {
            let prog_fd = prog
                .fd()
                .map_err(|source| LoaderError::Program { name, source })?;
            let reused = sys::obj_get(link_path).and_then(|link| {
                if sys::link_ifindex(link.as_fd())? != ifindex {
                    return Err(io::Error::other("link belongs to another interface"));
                }
                sys::link_update(link.as_fd(), prog_fd.as_fd())
            });
            match reused {
                Ok(()) => return Ok(()),
                // A link of a previous Pod with this address (its veth gone or going).
                Err(e) => {
                    tracing::debug!(path = %link_path.display(), error = %e, "replacing link");
                    remove_pin(link_path)?;
                }
            }
        }
        // tcx resolves the interface in the calling thread's network namespace.
        let link = sys::in_netns(self.cfg.node_netns.as_deref(), || {
            let id = prog
                .attach_with_options(
                    ifname,
                    hook,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|source| LoaderError::Program { name, source })?;
            let link = prog
                .take_link(id)
                .map_err(|source| LoaderError::Program { name, source })?;
            FdLink::try_from(link).map_err(|source| LoaderError::Link { name, source })
        })
        .map_err(|source| LoaderError::Io {
            what: "cannot enter network namespace",
            path: format!("{:?}", self.cfg.node_netns),
            source,
        })??;
        link.pin(link_path).map_err(|source| LoaderError::Pin {
            path: link_path.display().to_string(),
            source,
        })?;
        Ok(())
    }

    /// Forgets an endpoint and takes its filters off its veth if the veth is still there
    /// (usually it went with the Pod's netns, and its filters with it).
    pub fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), LoaderError> {
        let old = self
            .maps
            .run_blocking(move |m| {
                let old = m.endpoint(ip)?;
                m.delete_endpoint(ip)?;
                Ok(old)
            })
            .map_err(LoaderError::Maps)?;
        if let Some(old) = old {
            self.detach_endpoint_tc(old.ifindex)?;
        }
        // Tcx links an earlier agent pinned: unpinning releases them.
        remove_pin(&self.endpoint_link_path(names::PROG_TO_CONTAINER, ip))?;
        remove_pin(&self.endpoint_link_path(names::PROG_FROM_CONTAINER, ip))
    }

    /// Whether the datapath sends an event for every new flow, or for drops only.
    pub fn set_flow_events(&self, all: bool) -> Result<(), MapsError> {
        self.maps.run_blocking(move |m| {
            let mut state = m
                .pol_state
                .get(&0, 0)
                .map_err(|source| maps::op_err(names::POL_STATE, "read", source))?;
            if all {
                state.flags |= policy_state_flags::ALLOWED_EVENTS;
            } else {
                state.flags &= !policy_state_flags::ALLOWED_EVENTS;
            }
            m.pol_state
                .set(0, state, 0)
                .map_err(|source| maps::op_err(names::POL_STATE, "write", source))
        })
    }

    /// The owner of the maps: async code sends its map work there.
    pub fn maps(&self) -> &MapOwner {
        &self.maps
    }

    /// Reads the load-balancer maps back. Blocks the calling thread (see [`Self::maps`]).
    pub fn read_lb(&self) -> Result<LbState, MapsError> {
        self.maps.run_blocking(|m| m.read_lb())
    }

    /// Applies planned map operations, in order, on the owner thread. A full map is an error
    /// for the caller and is counted for [`Self::map_full_counts`].
    pub async fn program(&self, ops: Vec<MapOp>) -> Result<(), MapsError> {
        let full = Arc::clone(&self.map_full);
        self.maps.run(move |m| apply_counted(m, &ops, &full)).await
    }

    /// [`Self::program`], blocking the calling thread.
    pub fn apply(&self, ops: &[MapOp]) -> Result<(), MapsError> {
        let (ops, full) = (ops.to_vec(), Arc::clone(&self.map_full));
        self.maps
            .run_blocking(move |m| apply_counted(m, &ops, &full))
    }

    /// How many writes each map refused because it was full, since this agent started.
    pub fn map_full_counts(&self) -> BTreeMap<&'static str, u64> {
        self.map_full
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a write refused by a full map (the policy programmer's too).
    pub fn count_full(&self, map: &'static str) {
        count_full(&self.map_full, map);
    }

    /// The datapath's drop and event counters (for the agent's Prometheus endpoint). Blocks
    /// the calling thread.
    pub fn metrics(&self) -> Result<Vec<MetricSample>, MapsError> {
        self.maps.run_blocking(|m| m.read_metrics())
    }

    /// Entries and capacity of the maps that fill with the cluster (for the fill-level
    /// metrics). Blocks the calling thread.
    pub fn map_fill(&self) -> Result<Vec<(&'static str, u64, u32)>, MapsError> {
        self.maps.run_blocking(|m| m.fill_levels())
    }

    /// Removes idle conntrack entries (see [`Maps::gc_ct`]). Blocks the calling thread.
    pub fn gc_ct(&self) -> Result<usize, MapsError> {
        self.maps.run_blocking(|m| m.gc_ct(sys::monotonic_ns()))
    }

    /// The kernel's info on each socket hook program (its id and, while BPF_STATS_RUN_TIME
    /// is enabled, its accumulated run time and run count), by program name.
    pub fn sock_program_infos(&self) -> Result<Vec<(&'static str, ProgramInfo)>, LoaderError> {
        self.program_infos(&CGROUP_PROGRAMS)
    }

    /// The kernel's info on each of the programs `names` (see [`Self::sock_program_infos`]).
    pub fn program_infos(
        &self,
        names: &[&'static str],
    ) -> Result<Vec<(&'static str, ProgramInfo)>, LoaderError> {
        let ebpf = self.lock_ebpf();
        names
            .iter()
            .map(|&name| {
                let prog = ebpf.program(name).ok_or_else(|| {
                    LoaderError::Other(format!("program {name} is missing from the object"))
                })?;
                let info = prog
                    .info()
                    .map_err(|source| LoaderError::Program { name, source })?;
                Ok((name, info))
            })
            .collect()
    }

    /// Runs `f` with the maps on their owner thread and blocks until it is done (tests,
    /// tools; async code uses [`Self::maps`]).
    pub fn with_maps<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Maps) -> T + Send + 'static,
    ) -> T {
        self.maps.run_blocking(f)
    }

    /// Runs `f` with the loaded object (tests drive programs through BPF_PROG_TEST_RUN).
    #[cfg(test)]
    pub(crate) fn with_ebpf<T>(&self, f: impl FnOnce(&mut Ebpf) -> T) -> T {
        f(&mut self.lock_ebpf())
    }

    /// The pin of an endpoint's ingress tc link (`from_container`).
    pub fn tc_link_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.endpoint_link_path(names::PROG_FROM_CONTAINER, ip)
    }

    /// The pin of program `prog`'s link on an endpoint's veth. bpffs refuses names with dots
    /// (kernel/bpf/inode.c reserves them), hence the underscores.
    pub fn endpoint_link_path(&self, prog: &str, ip: Ipv4Addr) -> PathBuf {
        let [a, b, c, d] = ip.octets();
        self.cfg
            .pin_dir
            .join(paths::LINKS_DIR)
            .join(format!("{prog}_{a}_{b}_{c}_{d}"))
    }

    fn lock_ebpf(&self) -> MutexGuard<'_, Ebpf> {
        // A panic while holding the lock leaves the programs as the kernel has them: usable.
        self.ebpf
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Applies `ops` and counts a refusal of a full map in `full`.
fn apply_counted(
    maps: &mut Maps,
    ops: &[MapOp],
    full: &Mutex<BTreeMap<&'static str, u64>>,
) -> Result<(), MapsError> {
    let result = maps.apply(ops);
    if let Err(MapsError::Full { map, .. }) = &result {
        count_full(full, map);
    }
    result
}

fn count_full(full: &Mutex<BTreeMap<&'static str, u64>>, map: &'static str) {
    *full
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(map)
        .or_default() += 1;
}

fn remove_pin(path: &Path) -> Result<(), LoaderError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LoaderError::Io {
            what: "cannot unpin",
            path: path.display().to_string(),
            source,
        }),
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoaderError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| LoaderError::Other(format!("program {name} is missing from the object")))?;
    prog.try_into()
        .map_err(|source| LoaderError::Program { name, source })
}

/// A cgroup program attached through a BPF link: the socket address hooks and sock_release.
trait CgroupHook {
    fn prog_fd(&self) -> Result<&ProgramFd, aya::programs::ProgramError>;
    /// Attaches to `cgroup` and hands back the link, owned by the caller.
    fn attach_link(&mut self, name: &'static str, cgroup: &fs::File)
    -> Result<FdLink, LoaderError>;
}

/// Both program types attach and hand out links the same way in aya, without a common trait.
macro_rules! cgroup_hook {
    ($($ty:ty),*) => {$(
        impl CgroupHook for $ty {
            fn prog_fd(&self) -> Result<&ProgramFd, aya::programs::ProgramError> {
                self.fd()
            }

            fn attach_link(
                &mut self,
                name: &'static str,
                cgroup: &fs::File,
            ) -> Result<FdLink, LoaderError> {
                let program = |source| LoaderError::Program { name, source };
                let id = self
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map_err(program)?;
                let link = self.take_link(id).map_err(program)?;
                FdLink::try_from(link).map_err(|source| LoaderError::Link { name, source })
            }
        }
    )*};
}
cgroup_hook!(CgroupSockAddr, CgroupSock);

/// Attaches a socket hook to the cgroup through a pinned link. If a link is pinned already
/// (an earlier agent), the new program is swapped into it atomically: no second attachment,
/// no moment without a program.
fn attach_sock(
    prog: &mut impl CgroupHook,
    name: &'static str,
    cgroup: &fs::File,
    link_path: &Path,
) -> Result<(), LoaderError> {
    if link_path.exists() {
        let prog_fd = prog
            .prog_fd()
            .map_err(|source| LoaderError::Program { name, source })?;
        // The link must still be attached to this very cgroup: a cgroup directory removed and
        // created again (a node restarted without cleaning bpffs) is another cgroup.
        let cgroup_id = cgroup.metadata().map(|m| m.ino());
        let updated = sys::obj_get(link_path).and_then(|link| {
            if sys::link_cgroup_id(link.as_fd())? != cgroup_id? {
                return Err(io::Error::other("link belongs to another cgroup"));
            }
            sys::link_update(link.as_fd(), prog_fd.as_fd())
        });
        match updated {
            Ok(()) => return Ok(()),
            Err(e) => {
                // A link whose cgroup is gone cannot be updated; start over with a new one.
                tracing::warn!(path = %link_path.display(), error = %e, "replacing stale link");
                let _ = fs::remove_file(link_path);
            }
        }
    }
    // BPF links take no attach flags: a link-based attachment always coexists with other
    // links on the cgroup and below it (kernel 5.7, af6eea57437a), so Pods' own cgroups may
    // carry programs of their own.
    let link = prog.attach_link(name, cgroup)?;
    link.pin(link_path).map_err(|source| LoaderError::Pin {
        path: link_path.display().to_string(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod packet_testutil;
#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod from_container_tests;

#[cfg(test)]
mod sock_lb_tests;

#[cfg(test)]
mod endpoint_tests;

#[cfg(test)]
mod from_netdev_tests;

#[cfg(test)]
mod policy_tests;
