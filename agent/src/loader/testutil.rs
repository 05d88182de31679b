//! Fixtures for root-only datapath tests: unique names and guards that remove pin
//! directories, cgroups, network namespaces and processes even when a test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
};

use super::{Datapath, DatapathConfig};

/// A name no other test (in this process or another) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A bpffs pin directory `/sys/fs/bpf/keelson-test-<name>`, removed on drop. No shared parent:
/// each test owns and removes everything it created.
#[derive(Debug)]
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(name: &str) -> Self {
        super::sys::ensure_bpffs(Path::new("/sys/fs/bpf")).expect("mount bpffs");
        Self(PathBuf::from(format!("/sys/fs/bpf/keelson-test-{name}")))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Unpinning the links detaches the programs; unpinning the maps frees them.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A cgroup v2 directory `/sys/fs/cgroup/unified/keelson-test-<name>`, removed on drop.
#[derive(Debug)]
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    pub fn new(name: &str) -> Self {
        let path = PathBuf::from(format!("/sys/fs/cgroup/unified/keelson-test-{name}"));
        fs::create_dir_all(&path).expect("create cgroup");
        Self(path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Move stragglers out so the directory can go.
        if let Ok(procs) = fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = fs::write("/sys/fs/cgroup/unified/cgroup.procs", pid);
            }
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// A network namespace `/run/netns/kls-t-...` with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let name = format!("kls-t-{name}");
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd).args(args).status().expect("spawn");
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// A datapath loaded for one test: its own pins and cgroup (dropped in the right order:
/// datapath, then pins, then cgroup).
#[derive(Debug)]
pub struct TestDatapath {
    pub dp: Datapath,
    pub pins: PinDir,
    pub cgroup: Cgroup,
}

impl TestDatapath {
    pub fn load(name: &str, node_netns: Option<PathBuf>) -> Self {
        let name = unique(name);
        let pins = PinDir::new(&name);
        let cgroup = Cgroup::new(&name);
        let dp = Datapath::load(DatapathConfig {
            pin_dir: pins.0.clone(),
            cgroup_root: cgroup.0.clone(),
            node_netns,
        })
        .unwrap_or_else(|e| panic!("load datapath: {e}: {:?}", std::error::Error::source(&e)));
        Self { dp, pins, cgroup }
    }
}

/// The packets counted at `index` of the datapath's metrics map.
pub fn metric(t: &TestDatapath, index: u32) -> u64 {
    t.dp.with_maps(move |m| m.metric(index))
        .expect("metric")
        .packets
}

/// The bytes counted at `index` of the datapath's metrics map.
pub fn metric_bytes(t: &TestDatapath, index: u32) -> u64 {
    t.dp.with_maps(move |m| m.metric(index))
        .expect("metric")
        .bytes
}
