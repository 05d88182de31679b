//! `keelson down`: finds everything a local cluster made — from its names, not from memory, so
//! it also works after a crash — and removes it: processes first (so nothing recreates what is
//! being removed), then namespaces, pins, cgroups and data.

use std::{
    collections::HashSet,
    fmt, fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};

use crate::{Error, names, topology};

/// What of a cluster exists on this machine.
#[derive(Debug, Default)]
pub struct Inventory {
    pub netns: Vec<String>,
    pub pin_dirs: Vec<PathBuf>,
    pub cgroup: Option<PathBuf>,
    /// The nodes' v1 cgroups of container limits.
    pub limit_cgroups: Vec<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub run_file: Option<PathBuf>,
    pub pids: Vec<i32>,
}

impl Inventory {
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.pin_dirs.is_empty()
            && self.cgroup.is_none()
            && self.limit_cgroups.is_empty()
            && self.data_dir.is_none()
            && self.run_file.is_none()
            && self.pids.is_empty()
    }
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Report {
    pub processes: usize,
    pub netns: usize,
    pub pin_dirs: usize,
    pub cgroups: usize,
    pub data_dir: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed {} process(es), {} network namespace(s), {} pin dir(s), {} cgroup(s){}",
            self.processes,
            self.netns,
            self.pin_dirs,
            self.cgroups,
            if self.data_dir {
                " and the data directory"
            } else {
                ""
            }
        )
    }
}

/// The cgroup v2 mount: the unified hierarchy of a hybrid host, or /sys/fs/cgroup itself.
pub fn cgroup2_root() -> PathBuf {
    let hybrid = Path::new(names::CGROUP2_HYBRID);
    if hybrid.join("cgroup.procs").exists() {
        hybrid.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// Reads what of `cluster` exists now.
pub fn inventory(cluster: &str) -> Inventory {
    let mut inv = Inventory::default();
    if let Ok(dir) = fs::read_dir(names::NETNS_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if names::is_cluster_netns(cluster, &name) {
                inv.netns.push(name);
            }
        }
    }
    inv.netns.sort();
    if let Ok(dir) = fs::read_dir(names::BPFFS_KEELSON) {
        for e in dir.flatten() {
            if names::is_cluster_node(cluster, &e.file_name().to_string_lossy()) {
                inv.pin_dirs.push(e.path());
            }
        }
    }
    let cg = names::cluster_cgroup(&cgroup2_root(), cluster);
    if cg.exists() {
        inv.pids.extend(cgroup_pids(&cg));
        inv.cgroup = Some(cg);
    }
    for hierarchy in names::CGROUP1_LIMITS {
        let dir = Path::new(hierarchy).join("keelson");
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if names::is_cluster_node(cluster, &e.file_name().to_string_lossy()) {
                inv.pids.extend(cgroup_pids(&e.path()));
                inv.limit_cgroups.push(e.path());
            }
        }
    }
    inv.pids.extend(pids_in_netns(&inv.netns));
    let run_file = Path::new(names::RUN_DIR).join(cluster);
    if let Ok(dir) = fs::read_to_string(&run_file) {
        let dir = PathBuf::from(dir.trim());
        if dir.exists() {
            inv.data_dir = Some(dir);
        }
        inv.run_file = Some(run_file);
    }
    inv.pids.sort_unstable();
    inv.pids.dedup();
    inv
}

/// Every pid in a cgroup subtree.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

/// Processes whose network namespace is one of `netns` (a Pod process that never reached its
/// cgroup, or anything started by hand with `ip netns exec`).
fn pids_in_netns(netns: &[String]) -> Vec<i32> {
    let inodes: HashSet<u64> = netns
        .iter()
        .filter_map(|n| fs::metadata(Path::new(names::NETNS_DIR).join(n)).ok())
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .collect()
}

/// Removes everything in `inv`.
pub fn remove(inv: &Inventory) -> Result<Report, Error> {
    let mut report = Report::default();
    if let Some(cg) = &inv.cgroup {
        // cgroup.kill (Linux 5.14) kills the whole subtree atomically, including processes
        // forked while we look.
        let _ = fs::write(cg.join("cgroup.kill"), "1");
    }
    for &pid in &inv.pids {
        if signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL).is_ok() {
            report.processes += 1;
        }
    }
    wait_gone(&inv.pids, Duration::from_secs(10));
    for ns in &inv.netns {
        topology::delete_netns(ns)?;
        report.netns += 1;
    }
    for dir in &inv.pin_dirs {
        fs::remove_dir_all(dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        report.pin_dirs += 1;
    }
    // The shared parent goes too once no cluster uses it.
    let _ = fs::remove_dir(names::BPFFS_KEELSON);
    if let Some(cg) = &inv.cgroup {
        report.cgroups += remove_cgroup_tree(cg)?;
        // Leave the shared parent (`.../keelson`) only if it is empty.
        if let Some(parent) = cg.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
    for cg in &inv.limit_cgroups {
        report.cgroups += remove_cgroup_tree(cg)?;
        if let Some(parent) = cg.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
    if let Some(dir) = &inv.data_dir {
        // Pods' tmpfs volumes (Secrets, memory emptyDirs) of agents that died before tearing
        // them down.
        unmount_below(dir);
        fs::remove_dir_all(dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        report.data_dir = true;
    }
    if let Some(f) = &inv.run_file {
        let _ = fs::remove_file(f);
    }
    Ok(report)
}

fn wait_gone(pids: &[i32], timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        // Signal 0 probes existence; a zombie still counts until its parent reaps it, and
        // processes reparented to init are reaped promptly.
        let alive = pids.iter().any(|&p| {
            signal::kill(Pid::from_raw(p), None).is_ok()
                && !fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
        });
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first (/proc/self/mountinfo, field
/// 5 is the mount point, with spaces as `\040`).
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// rmdir a cgroup tree bottom-up (cgroup directories can only be removed when empty), retrying
/// while the last processes are still exiting.
fn remove_cgroup_tree(dir: &Path) -> Result<usize, Error> {
    let mut removed = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                removed += remove_cgroup_tree(&e.path())?;
            }
        }
    }
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(removed + 1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                return Err(Error::Io {
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
