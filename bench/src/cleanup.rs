//! Everything a bench run makes on the machine, found from its names and removed. Every name
//! carries the pid of the run that made it (network namespaces, cgroups, bpffs pin
//! directories, temporary files, the API part's local cluster), so what belongs to a run can
//! be found without memory of it: at start, the leftovers of runs whose process is gone; at
//! the end of a run, whatever its drop guards missed; on SIGINT, SIGTERM or SIGHUP, all of
//! the run's own, before it exits.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// Network namespaces: `<NETNS_PREFIX><pid>-<mode>-<size>-{cli,node,srv}` in /run/netns.
pub const NETNS_PREFIX: &str = "kls-b-";
/// cgroups and pin directories: `<root>/<STATE_PREFIX><pid>-<mode>-<size>`, each directly
/// under its root, so removing a run's own directories leaves nothing behind.
pub const STATE_PREFIX: &str = "keelson-test-bench-";
/// Temporary files: `<temp dir>/<TEMP_PREFIX><pid>-<name>`.
pub const TEMP_PREFIX: &str = "keelson-bench-";
/// The API part's local cluster: `<CLUSTER_PREFIX><pid>`.
pub const CLUSTER_PREFIX: &str = "kb";

/// The directories the bench makes things in.
#[derive(Debug, Clone)]
pub struct Places {
    pub netns: PathBuf,
    /// The cgroup v2 mount.
    pub cgroup: PathBuf,
    pub pins: PathBuf,
    pub temp: PathBuf,
    /// Where `keelson up` records its clusters.
    pub clusters: PathBuf,
}

impl Places {
    /// The machine's.
    pub fn system() -> Self {
        Self {
            netns: PathBuf::from(keelson_localcluster::names::NETNS_DIR),
            cgroup: keelson_localcluster::cleanup::cgroup2_root(),
            pins: PathBuf::from("/sys/fs/bpf"),
            temp: std::env::temp_dir(),
            clusters: PathBuf::from(keelson_localcluster::names::RUN_DIR),
        }
    }
}

/// One thing a run made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Item {
    /// Variants are in removal order: the cluster's processes first, then the namespaces,
    /// the pins (unpinning the links detaches the programs), the cgroups (once their
    /// processes are gone), the files.
    Cluster(String),
    Netns(String),
    PinDir(PathBuf),
    Cgroup(PathBuf),
    TempFile(PathBuf),
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Cluster(name) => write!(f, "local cluster {name}"),
            Item::Netns(name) => write!(f, "network namespace {name}"),
            Item::PinDir(p) => write!(f, "pin directory {}", p.display()),
            Item::Cgroup(p) => write!(f, "cgroup {}", p.display()),
            Item::TempFile(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// The pid of the run that made `name`: the digits right after `prefix`, up to a `-` or the
/// end.
pub fn owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn names_in(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything in `places` made by a run whose pid `owned` accepts, in removal order.
pub fn find(places: &Places, owned: impl Fn(u32) -> bool) -> Vec<Item> {
    let mine = |name: &str, prefix: &str| owner(name, prefix).is_some_and(&owned);
    let mut items = Vec::new();
    for (name, _) in names_in(&places.clusters) {
        // A cluster is `kb<pid>` exactly; names the bench does not make are left alone.
        if name.len() > CLUSTER_PREFIX.len() && !name.contains('-') && mine(&name, CLUSTER_PREFIX) {
            items.push(Item::Cluster(name));
        }
    }
    for (name, _) in names_in(&places.netns) {
        if mine(&name, NETNS_PREFIX) {
            items.push(Item::Netns(name));
        }
    }
    for (name, path) in names_in(&places.pins) {
        if mine(&name, STATE_PREFIX) {
            items.push(Item::PinDir(path));
        }
    }
    for (name, path) in names_in(&places.cgroup) {
        if mine(&name, STATE_PREFIX) {
            items.push(Item::Cgroup(path));
        }
    }
    for (name, path) in names_in(&places.temp) {
        if mine(&name, TEMP_PREFIX) {
            items.push(Item::TempFile(path));
        }
    }
    items.sort();
    items
}

/// Removes one item; one that is already gone is not an error.
pub fn remove(item: &Item, cgroup_root: &Path) -> Result<()> {
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    match item {
        Item::Cluster(name) => {
            keelson_localcluster::down(name).with_context(|| format!("keelson down {name}"))?;
        }
        Item::Netns(name) => delete_netns(name)?,
        Item::PinDir(p) => gone(fs::remove_dir_all(p))?,
        Item::Cgroup(p) => remove_cgroup(p, cgroup_root)?,
        // A directory (the api bench's scratch) goes with everything in it.
        Item::TempFile(p) if p.is_dir() => gone(fs::remove_dir_all(p))?,
        Item::TempFile(p) => gone(fs::remove_file(p))?,
    }
    Ok(())
}

/// `ip netns del name`; a namespace already gone is fine.
pub fn delete_netns(name: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "del", name])
        .output()
        .context("spawning ip")?;
    if !out.status.success() && Path::new("/run/netns").join(name).exists() {
        anyhow::bail!(
            "ip netns del {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes a cgroup directory: its processes, if any are left, are moved to the root first
/// (a cgroup with processes cannot be removed), and `EBUSY` is retried for a while, as a
/// cgroup may still count as populated for a moment after its last process has exited.
pub fn remove_cgroup(path: &Path, root: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(procs) = fs::read_to_string(path.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = fs::write(root.join("cgroup.procs"), pid);
            }
        }
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}

/// Removes `items`, reporting each failure; returns how many were removed.
fn remove_all(items: &[Item], cgroup_root: &Path) -> usize {
    let mut removed = 0;
    for item in items {
        match remove(item, cgroup_root) {
            Ok(()) => removed += 1,
            Err(e) => eprintln!("bench: cannot remove {item}: {e:#}"),
        }
    }
    removed
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Held while the run makes something that [`find`] looks for, and by the signal handler
/// from its sweep until the process exits: so a sweep never runs half-way through making
/// something, and nothing is made after it.
static GATE: Mutex<()> = Mutex::new(());

/// Runs `make` (which creates something of the run's) under the gate.
pub fn making<T>(make: impl FnOnce() -> T) -> T {
    let _gate = GATE.lock().unwrap_or_else(PoisonError::into_inner);
    make()
}

/// The signals that end a run with its things removed.
fn end_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// One run of the bench: created first in the process, dropped last (on return and on
/// unwinding alike).
pub struct Run {
    places: Places,
}

impl Run {
    /// Removes the leftovers of earlier runs whose process is gone and starts the thread
    /// that takes SIGINT, SIGTERM and SIGHUP: it removes everything of this run and exits
    /// with 128 + the signal. Must be called before any other thread starts: the signals are
    /// blocked here, and threads inherit the mask (so only that thread takes them). Child
    /// processes get an empty mask from `std::process::Command`.
    pub fn start() -> Result<Self> {
        anyhow::ensure!(
            nix::unistd::geteuid().is_root(),
            "the benchmark creates namespaces and loads eBPF: run it as root"
        );
        let places = Places::system();
        let leftovers = find(&places, |pid| !alive(pid));
        if !leftovers.is_empty() {
            eprintln!(
                "bench: removing {} leftovers of earlier runs",
                leftovers.len()
            );
            remove_all(&leftovers, &places.cgroup);
        }
        let set = end_signals();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .context("blocking the end signals")?;
        let handler_places = places.clone();
        thread::Builder::new()
            .name("bench-signals".into())
            .spawn(move || {
                let Ok(sig) = set.wait() else { return };
                eprintln!("bench: {sig}: removing everything of this run");
                // Never released: the process exits holding it.
                let gate = GATE.lock().unwrap_or_else(PoisonError::into_inner);
                sweep_own(&handler_places);
                drop(gate);
                // The server and client children die with this process (PR_SET_PDEATHSIG).
                std::process::exit(128 + sig as i32);
            })
            .context("starting the signal thread")?;
        Ok(Self { places })
    }
}

/// Removes everything of this process's run; returns what was found.
fn sweep_own(places: &Places) -> Vec<Item> {
    let me = std::process::id();
    let items = find(places, |pid| pid == me);
    remove_all(&items, &places.cgroup);
    items
}

impl Drop for Run {
    fn drop(&mut self) {
        // If an end signal came, its handler holds the gate and exits the process; waiting
        // here keeps this thread from exiting first, half-way through that sweep.
        let gate = GATE.lock().unwrap_or_else(PoisonError::into_inner);
        // The drop guards have removed everything by now; what is left is a bug, named.
        let left = sweep_own(&self.places);
        for item in &left {
            eprintln!("bench: BUG: {item} outlived its guard (removed now)");
        }
        drop(gate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_pid_right_after_the_prefix() {
        assert_eq!(owner("kls-b-4242-keelson-10-cli", NETNS_PREFIX), Some(4242));
        assert_eq!(
            owner("keelson-test-bench-7-direct-10000", STATE_PREFIX),
            Some(7)
        );
        assert_eq!(owner("keelson-bench-99-10.targets", TEMP_PREFIX), Some(99));
        assert_eq!(owner("kb123", CLUSTER_PREFIX), Some(123));
        assert_eq!(owner("kls-b-x1-cli", NETNS_PREFIX), None);
        assert_eq!(owner("kls-b--cli", NETNS_PREFIX), None);
        assert_eq!(owner("kls-kb1-n1", NETNS_PREFIX), None);
        assert_eq!(owner("kbx", CLUSTER_PREFIX), None);
    }

    /// A scratch tree standing for the machine's directories.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn scratch() -> (Scratch, Places) {
        let root = std::env::temp_dir().join(format!("bench-cleanup-test-{}", std::process::id()));
        let places = Places {
            netns: root.join("netns"),
            cgroup: root.join("cgroup"),
            pins: root.join("bpf"),
            temp: root.join("tmp"),
            clusters: root.join("clusters"),
        };
        for d in [
            &places.netns,
            &places.cgroup,
            &places.pins,
            &places.temp,
            &places.clusters,
        ] {
            fs::create_dir_all(d).expect("mkdir");
        }
        (Scratch(root), places)
    }

    #[test]
    fn find_takes_exactly_the_runs_own_names_and_remove_clears_them() {
        let (_scratch, p) = scratch();
        for (run, tag) in [(111, "keelson-10000"), (222, "direct-10")] {
            for side in ["cli", "node", "srv"] {
                fs::write(p.netns.join(format!("kls-b-{run}-{tag}-{side}")), "").expect("ns");
            }
            let pins = p.pins.join(format!("keelson-test-bench-{run}-{tag}"));
            fs::create_dir_all(pins.join("links")).expect("pins");
            fs::write(pins.join("links").join("connect4"), "").expect("pin");
            fs::create_dir(p.cgroup.join(format!("keelson-test-bench-{run}-{tag}"))).expect("cg");
            fs::write(p.temp.join(format!("keelson-bench-{run}-10.targets")), "").expect("tmp");
            fs::write(p.clusters.join(format!("kb{run}")), "").expect("cluster");
        }
        // Not the bench's: another prefix, another cluster, a test's namespace.
        for other in [
            p.netns.join("kls-kb111-n1"),
            p.netns.join("kls-t-bench-111-ipt"),
            p.cgroup.join("keelson"),
            p.temp.join("keelson-bench-x-1"),
            p.clusters.join("kb111x"),
            p.clusters.join("keelson"),
        ] {
            fs::write(other, "").expect("other");
        }
        let found = find(&p, |pid| pid == 111);
        let pins = p.pins.join("keelson-test-bench-111-keelson-10000");
        let cgroup = p.cgroup.join("keelson-test-bench-111-keelson-10000");
        let temp = p.temp.join("keelson-bench-111-10.targets");
        assert_eq!(
            found,
            [
                Item::Cluster("kb111".into()),
                Item::Netns("kls-b-111-keelson-10000-cli".into()),
                Item::Netns("kls-b-111-keelson-10000-node".into()),
                Item::Netns("kls-b-111-keelson-10000-srv".into()),
                Item::PinDir(pins.clone()),
                Item::Cgroup(cgroup.clone()),
                Item::TempFile(temp.clone()),
            ]
        );
        // Directories and files go without root (namespaces and clusters need it).
        for item in &found[4..] {
            remove(item, &p.cgroup).expect("remove");
            // Twice is fine: a sweep after the guards finds things already gone.
            remove(item, &p.cgroup).expect("remove again");
        }
        assert!(!pins.exists() && !cgroup.exists() && !temp.exists());
        let left = find(&p, |pid| pid == 111);
        assert!(
            left.iter()
                .all(|i| matches!(i, Item::Cluster(_) | Item::Netns(_)))
        );
        assert_eq!(find(&p, |pid| pid == 222).len(), 7);
        assert!(find(&p, |pid| pid == 333).is_empty());
    }
}
