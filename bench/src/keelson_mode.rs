//! keelson's side of the benchmark: the bench's Services as the API objects the agent
//! watches (selector-less Services with hand-written EndpointSlices), programmed into a
//! freshly loaded datapath through the agent's own services code path
//! (`keelson_agent::services::Programmer`: the objects as the watches' first lists, then a
//! pass that reads the maps, plans every Service, diffs and applies), then changed one
//! EndpointSlice at a time as the agent's loop does it (one watch event, then a pass that
//! plans that Service again and diffs what it touched against the state carried from the
//! previous pass). Also the kernel's run-time statistics of the datapath's socket hooks
//! over a load window.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use keelson_agent::{
    loader::{Datapath, DatapathConfig},
    services::{Programmer, plan::NodeContext},
};
use kube::runtime::watcher;

use crate::workload::{BenchService, ENDPOINT_PORT, NAMESPACE, PORT_NAME, SERVICE_PORT};

/// The Service and EndpointSlice objects of `services`.
pub fn objects(services: &[BenchService]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let svcs = services
        .iter()
        .map(|s| Service {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: Some(s.cluster_ip.to_string()),
                cluster_ips: Some(vec![s.cluster_ip.to_string()]),
                ports: Some(vec![ServicePort {
                    name: Some(PORT_NAME.into()),
                    port: i32::from(SERVICE_PORT),
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(i32::from(ENDPOINT_PORT))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let slices = services
        .iter()
        .map(|s| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{}-bench", s.name)),
                namespace: Some(NAMESPACE.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_string(),
                    s.name.clone(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                s.endpoints
                    .iter()
                    .map(|ip| Endpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some(PORT_NAME.into()),
                port: Some(i32::from(ENDPOINT_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })
        .collect();
    (svcs, slices)
}

/// How many single-EndpointSlice passes are timed (half of them put an endpoint back).
pub const CHANGE_PASSES: usize = 40;

/// Loads the datapath with `cgroup` as its cgroup root and pins under `pins`, then programs
/// `services` from nothing; returns the datapath, the programming time (taking the objects
/// as the watches' first lists, then the first pass: the objects are built before the clock
/// starts, as the watches deliver them)
/// and the sorted times of [`CHANGE_PASSES`] passes that each program one EndpointSlice change.
pub fn load_and_program(
    cgroup: &Path,
    pins: &Path,
    services: &[BenchService],
) -> Result<(Datapath, Duration, Vec<Duration>)> {
    // Loading makes the pin directory, which the signal handler's sweep looks for.
    let dp = crate::cleanup::making(|| {
        Datapath::load(DatapathConfig {
            pin_dir: pins.to_path_buf(),
            cgroup_root: cgroup.to_path_buf(),
            node_netns: None,
        })
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "loading the datapath: {e}: {:?}",
            std::error::Error::source(&e)
        )
    })?;
    let (svcs, mut slices) = objects(services);
    let mut programmer = Programmer::new(NodeContext::default());
    let start = Instant::now();
    programmer.load(svcs, slices.iter().cloned());
    futures::executor::block_on(programmer.pass(&dp)).context("programming the Services")?;
    let took = start.elapsed();
    let state = dp.read_lb().context("reading the maps back")?;
    ensure!(
        state.services.len() == services.len(),
        "the maps hold {} frontends, expected {}",
        state.services.len(),
        services.len()
    );
    let passes = change_passes(&dp, &mut programmer, &mut slices)?;
    Ok((dp, took, passes))
}

/// The agent loop's cost of one EndpointSlice change once everything is programmed: each
/// timed pass takes one watch event replacing the last endpoint of one slice with a fresh
/// address, the next puts it back (so the datapath ends as it started, for the correctness
/// check and the load).
fn change_passes(
    dp: &Datapath,
    programmer: &mut Programmer,
    slices: &mut [EndpointSlice],
) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(CHANGE_PASSES);
    for c in 0..CHANGE_PASSES / 2 {
        let i = (c * 97) % slices.len();
        let last = slices[i]
            .endpoints
            .as_mut()
            .and_then(|e| e.last_mut())
            .context("a bench slice without endpoints")?;
        let original = last.addresses.clone();
        for addresses in [vec![format!("10.244.121.{}", c + 1)], original] {
            if let Some(ep) = slices[i].endpoints.as_mut().and_then(|e| e.last_mut()) {
                ep.addresses = addresses;
            }
            let event = watcher::Event::Apply(slices[i].clone());
            let start = Instant::now();
            programmer.slice_event(event);
            let ops = futures::executor::block_on(programmer.pass(dp))
                .context("programming one change")?;
            times.push(start.elapsed());
            ensure!(ops > 0, "a changed endpoint was not programmed");
        }
    }
    times.sort();
    Ok(times)
}

/// What one socket hook of the datapath did during a load window: the differences of the
/// kernel's counters of the program (`bpf_prog_info.run_cnt`, `.run_time_ns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookRun {
    /// The program's name (`keelson_common::names::PROG_*`).
    pub name: &'static str,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl HookRun {
    /// Average nanoseconds per run; NaN if it did not run.
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds and counts")]
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            f64::NAN
        } else {
            self.run_time_ns as f64 / self.runs as f64
        }
    }
}

/// The kernel's BPF_STATS_RUN_TIME statistics, on while this value lives: the kernel keeps
/// them on while any descriptor returned by BPF_ENABLE_STATS is open (kernel commit
/// d46edd671a14, "bpf: Sharing bpf runtime stats with BPF_ENABLE_STATS", 5.8), so a crash
/// cannot leave `kernel.bpf_stats_enabled` on. It is the syscall of
/// `aya::sys::enable_stats(Stats::RunTime)`, made here directly: this crate reaches aya
/// only through the agent crate.
struct RunTimeStats(#[expect(dead_code, reason = "held open, closed on drop")] OwnedFd);

impl RunTimeStats {
    fn enable() -> io::Result<Self> {
        /// `enum bpf_cmd` and `enum bpf_stats_type` in include/uapi/linux/bpf.h.
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        /// The `enable_stats` member of `union bpf_attr`; the kernel zero-fills the rest of
        /// the union when fewer bytes are passed.
        #[repr(C)]
        struct EnableStatsAttr {
            type_: u32,
        }
        let attr = EnableStatsAttr {
            type_: BPF_STATS_RUN_TIME,
        };
        // SAFETY: the kernel reads `size_of::<EnableStatsAttr>()` bytes from a live value of
        // that size and returns a new descriptor or -1; nothing else is touched.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &raw const attr,
                size_of::<EnableStatsAttr>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the descriptor was just returned by the kernel and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// The counters (run count, run time in ns) of each socket hook of `dp`. The programs are
/// found through the datapath's own object (their program ids), not by name among all
/// loaded programs, so another datapath on the machine does not count.
fn hook_counters(dp: &Datapath) -> Result<Vec<(&'static str, u64, u64)>> {
    let infos = dp
        .sock_program_infos()
        .map_err(|e| anyhow::anyhow!("{e}: {:?}", std::error::Error::source(&e)))?;
    Ok(infos
        .into_iter()
        .map(|(name, info)| {
            let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            (name, info.run_count(), ns)
        })
        .collect())
}

/// The hooks that ran between the counters `before` and `after`, with what they did.
pub fn hook_deltas(
    before: &[(&'static str, u64, u64)],
    after: &[(&'static str, u64, u64)],
) -> Vec<HookRun> {
    after
        .iter()
        .filter_map(|&(name, runs, ns)| {
            let &(_, runs0, ns0) = before.iter().find(|b| b.0 == name)?;
            let run = HookRun {
                name,
                runs: runs.saturating_sub(runs0),
                run_time_ns: ns.saturating_sub(ns0),
            };
            (run.runs > 0).then_some(run)
        })
        .collect()
}

/// Runs `window` (one load window) with the kernel's run-time statistics on, and returns
/// what `dp`'s socket hooks did meanwhile (the client's warm-up included: the ns per run
/// are averages, the counts are of the whole client run).
///
/// While the statistics are on, the kernel reads the clock around every run of every eBPF
/// program on the machine (tens of ns each). They are on only during keelson's windows, so
/// keelson's rate carries that cost and kube-proxy's do not (their connections run no
/// program of ours); the ns per run reported include it.
pub fn with_hook_stats<T>(
    dp: &Datapath,
    window: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<HookRun>)> {
    let stats = RunTimeStats::enable().context("enabling BPF run-time statistics")?;
    let before = hook_counters(dp)?;
    let out = window()?;
    let after = hook_counters(dp)?;
    drop(stats);
    Ok((out, hook_deltas(&before, &after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_deltas_keep_the_hooks_that_ran() {
        let before = [("sock_connect4", 100, 5000), ("sock_sendmsg4", 3, 90)];
        let after = [
            ("sock_connect4", 1100, 105_000),
            ("sock_sendmsg4", 3, 90),
            ("sock_recvmsg4", 1, 1),
        ];
        let runs = hook_deltas(&before, &after);
        assert_eq!(
            runs,
            [HookRun {
                name: "sock_connect4",
                runs: 1000,
                run_time_ns: 100_000
            }]
        );
        assert_eq!(runs[0].ns_per_run(), 100.0);
        let idle = HookRun {
            name: "sock_connect6",
            runs: 0,
            run_time_ns: 0,
        };
        assert!(idle.ns_per_run().is_nan());
    }
}
