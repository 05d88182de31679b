//! The `process` runtime: a container is a host process started inside the Pod's network
//! namespace and cgroup, in its own session, with its output going through `keelson logger`
//! into `<data_dir>/pods/<uid>/<container>.log` ([`super::logfile`]). Pids are recorded in `state.json` next to the logs
//! so a restarted agent re-adopts running containers instead of starting them twice.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// Errors of starting and tracking container processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "container has neither command nor args: the process runtime has no image entrypoint to fall back on"
    )]
    NoCommand,
    #[error("{what} {path}")]
    Io {
        what: &'static str,
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

/// Everything needed to start one container process.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    /// The `keelson` binary that runs as `keelson logger`, writing the output to `log` in the
    /// CRI format with times and streams ([`super::logfile`]); `None`: the output goes into
    /// `log` as it is (probes, tests).
    pub logger: Option<PathBuf>,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    /// More cgroups to join (the container's v1 memory and cpu cgroups, [`super::cgroups`]).
    pub extra_cgroups: Vec<PathBuf>,
    /// The container's own filesystem view ([`super::rootfs`]); `None` runs it in the
    /// agent's mount namespace.
    pub rootfs: Option<std::sync::Arc<super::rootfs::Prepared>>,
    /// Join the mount and UTS namespaces of this process (an exec probe joins its
    /// container's) instead of making a root.
    pub enter_ns_of: Option<i32>,
}

/// The argv of a container: `command` then `args`; with no command, `args` alone (there is no
/// image ENTRYPOINT to prepend).
pub fn container_argv(command: &[String], args: &[String]) -> Result<Vec<String>, ProcessError> {
    let argv: Vec<String> = command.iter().chain(args).cloned().collect();
    if argv.is_empty() {
        Err(ProcessError::NoCommand)
    } else {
        Ok(argv)
    }
}

/// Starts the process. It enters the network namespace and the cgroup between fork and exec,
/// so not a single instruction of the container runs outside them.
pub fn spawn(spec: &ProcessSpec) -> Result<tokio::process::Child, ProcessError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| ProcessError::Io { what, path, source }
    };
    if let Some(dir) = spec.log.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let (log, log_err) = match &spec.logger {
        Some(bin) => start_logger(bin, &spec.log)?,
        None => {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&spec.log)
                .map_err(io("opening", &spec.log))?;
            let log_err = log.try_clone().map_err(io("duplicating", &spec.log))?;
            (log.into(), log_err.into())
        }
    };
    let netns = File::open(&spec.netns).map_err(io("opening", &spec.netns))?;
    let procs_path = spec.cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(io("opening", &procs_path))?;
    let mut cmd = tokio::process::Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        // With its own root the container's working directory is entered after the pivot
        // (std changes directory before the pre_exec hook runs).
        .current_dir(if spec.rootfs.is_some() {
            Path::new("/")
        } else {
            spec.cwd.as_path()
        })
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        // Containers outlive the agent: a restarted agent re-adopts them.
        .kill_on_drop(false);
    let extra = spec
        .extra_cgroups
        .iter()
        .map(|dir| {
            let path = dir.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io("opening", &path))
        })
        .collect::<Result<Vec<File>, _>>()?;
    let extra_fds: Vec<i32> = extra.iter().map(|f| f.as_raw_fd()).collect();
    let (netns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
    let rootfs = spec.rootfs.clone();
    // The container's namespaces, opened before the fork (mount first: setns(2) into a mount
    // namespace also moves the root and working directory to its root).
    let joined = spec
        .enter_ns_of
        .map(|pid| {
            ["mnt", "uts"]
                .iter()
                .map(|ns| {
                    let path = PathBuf::from(format!("/proc/{pid}/ns/{ns}"));
                    File::open(&path).map_err(io("opening", &path))
                })
                .collect::<Result<Vec<File>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let joined_fds: Vec<(i32, i32)> = joined
        .iter()
        .zip([libc::CLONE_NEWNS, libc::CLONE_NEWUTS])
        .map(|(f, t)| (f.as_raw_fd(), t))
        .collect();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setns, write, setsid, and the mounts of `Prepared::enter`) on descriptors
    // and strings made before the fork; it allocates nothing. `netns`, `procs` and `extra`
    // outlive `spawn` below, so the descriptors are valid.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself (cgroup.procs, v2 and v1 alike).
            for fd in std::iter::once(&procs_fd).chain(&extra_fds) {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Own session and process group: signals reach the container's whole tree, and
            // the agent's terminal or process group never does.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(root) = &rootfs {
                root.enter()?;
            }
            for (fd, nstype) in &joined_fds {
                if libc::setns(*fd, *nstype) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io("starting", Path::new(&spec.argv[0])))?;
    drop((netns, procs, extra, joined));
    Ok(child)
}

/// Starts `keelson logger <log>` reading two new pipes, and returns their write ends (the
/// container's stdout and stderr). The logger runs in its own session, so it outlives the
/// agent as the container does; a task reaps it when it ends.
fn start_logger(bin: &Path, log: &Path) -> Result<(OwnedFd, OwnedFd), ProcessError> {
    let pipe = |what| {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ProcessError::Io {
            what,
            path: log.to_owned(),
            source: e.into(),
        })
    };
    let (out_r, out_w) = pipe("making the stdout pipe for")?;
    let (err_r, err_w) = pipe("making the stderr pipe for")?;
    let err_fd = err_r.as_raw_fd();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("logger")
        .arg(log)
        .stdin(Stdio::from(out_r))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false);
    // SAFETY: runs in the forked child before exec and makes only async-signal-safe calls
    // (dup2, setsid) on a descriptor opened before the fork and kept open until `spawn`
    // returns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the copy: the logger finds the pipe at fd 3.
            if libc::dup2(err_fd, super::logfile::STDERR_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Io {
        what: "starting the logger of",
        path: log.to_owned(),
        source,
    })?;
    drop(err_r);
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok((out_w, err_w))
}

/// The start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat): with
/// the pid it identifies a process across pid reuse.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the recorded process is still the one that was started.
pub fn is_alive(pid: i32, ticks: u64) -> bool {
    start_ticks(pid) == Some(ticks) && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(false)
}

/// A running container process: one this agent started, or one re-adopted after a restart.
#[derive(Debug)]
pub enum Running {
    Child(tokio::process::Child),
    Adopted { pid: i32, ticks: u64 },
}

impl Running {
    pub fn pid(&self) -> Option<i32> {
        match self {
            Self::Child(c) => c.id().and_then(|p| i32::try_from(p).ok()),
            Self::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Waits for the process to end and returns its exit code (128+signal when killed, as
    /// shells and the kubelet report it). An adopted process is not our child, so its code is
    /// unknown; it is reported as 255 ("unknown") after it disappears.
    pub async fn wait(&mut self) -> i32 {
        match self {
            Self::Child(c) => match c.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    status
                        .code()
                        .or_else(|| status.signal().map(|s| 128 + s))
                        .unwrap_or(255)
                }
                Err(_) => 255,
            },
            Self::Adopted { pid, ticks } => {
                while is_alive(*pid, *ticks) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                255
            }
        }
    }
}

/// Sends `sig` to the process group of `pid` (containers lead their own session), falling back
/// to the process alone.
pub fn signal(pid: i32, sig: Signal) {
    if killpg(Pid::from_raw(pid), sig).is_err() {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Pids in a cgroup (cgroup.procs).
pub fn cgroup_pids(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills whatever is left in a cgroup and removes it. A missing cgroup is not an error.
pub fn remove_cgroup(cgroup: &Path) -> Result<(), ProcessError> {
    if !cgroup.exists() {
        return Ok(());
    }
    for _ in 0..50 {
        let pids = cgroup_pids(cgroup);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::remove_dir(cgroup).map_err(|source| ProcessError::Io {
        what: "removing cgroup",
        path: cgroup.to_owned(),
        source,
    })
}

/// Restart delay after `restarts` restarts: 10 s doubling up to 5 min, the kubelet's
/// CrashLoopBackOff (pkg/kubelet/kubelet.go: backOffPeriod, MaxContainerBackOff).
pub fn restart_backoff(restarts: u32) -> Duration {
    const BASE: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(300);
    BASE.checked_mul(
        1u32.checked_shl(restarts.saturating_sub(1))
            .unwrap_or(u32::MAX),
    )
    .map_or(MAX, |d| d.min(MAX))
}

/// A container that ran at least this long before exiting restarts without delay and resets
/// its backoff (the kubelet resets after twice the maximum backoff).
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// A recorded container process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub pid: i32,
    pub start_ticks: u64,
    pub started_at: jiff::Timestamp,
    pub restart_count: u32,
    /// Set when the process ended while the agent watched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<jiff::Timestamp>,
}

/// `<data_dir>/pods/<uid>/state.json`: what the agent set up for a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: String,
    pub container_id: String,
    pub pod_ip: Option<std::net::Ipv4Addr>,
    /// `spec.hostNetwork`: the Pod shares the node's namespace and has no CNI attachment.
    #[serde(default)]
    pub host_network: bool,
    pub containers: BTreeMap<String, ContainerRecord>,
}

impl PodRecord {
    pub fn path(pod_dir: &Path) -> PathBuf {
        pod_dir.join("state.json")
    }

    /// Reads the record; `None` if there is none.
    pub fn load(pod_dir: &Path) -> Result<Option<Self>, ProcessError> {
        let path = Self::path(pod_dir);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| ProcessError::Decode { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ProcessError::Io {
                what: "reading",
                path,
                source,
            }),
        }
    }

    /// Writes the record atomically.
    pub fn save(&self, pod_dir: &Path) -> Result<(), ProcessError> {
        let path = Self::path(pod_dir);
        let io = |what| {
            let path = path.clone();
            move |source| ProcessError::Io { what, path, source }
        };
        fs::create_dir_all(pod_dir).map_err(io("creating the directory of"))?;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| ProcessError::Decode {
            path: path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io("writing"))?;
        f.write_all(&bytes).map_err(io("writing"))?;
        fs::rename(&tmp, &path).map_err(io("renaming"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_and_caps_at_five_minutes() {
        assert_eq!(restart_backoff(0), Duration::from_secs(10));
        assert_eq!(restart_backoff(1), Duration::from_secs(10));
        assert_eq!(restart_backoff(2), Duration::from_secs(20));
        assert_eq!(restart_backoff(3), Duration::from_secs(40));
        assert_eq!(restart_backoff(5), Duration::from_secs(160));
        assert_eq!(restart_backoff(6), Duration::from_secs(300));
        assert_eq!(restart_backoff(40), Duration::from_secs(300));
    }

    #[test]
    fn argv_from_command_and_args() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            container_argv(&s(&["sh", "-c"]), &s(&["echo hi"])).expect("argv"),
            s(&["sh", "-c", "echo hi"])
        );
        assert_eq!(
            container_argv(&[], &s(&["sleep", "1"])).expect("argv"),
            s(&["sleep", "1"])
        );
        assert!(matches!(
            container_argv(&[], &[]),
            Err(ProcessError::NoCommand)
        ));
    }

    #[test]
    fn start_ticks_identify_this_process() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).expect("own stat");
        assert!(is_alive(me, ticks));
        assert!(!is_alive(me, ticks + 1));
    }

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(PodRecord::load(dir.path()).expect("load"), None);
        let mut rec = PodRecord {
            namespace: "default".into(),
            name: "p".into(),
            uid: "u".into(),
            ..Default::default()
        };
        rec.containers.insert(
            "c".into(),
            ContainerRecord {
                pid: 42,
                start_ticks: 7,
                started_at: jiff::Timestamp::UNIX_EPOCH,
                restart_count: 1,
                exit_code: Some(3),
                finished_at: None,
            },
        );
        rec.save(dir.path()).expect("save");
        assert_eq!(PodRecord::load(dir.path()).expect("load"), Some(rec));
    }

    /// Removes the test's namespace and cgroup even when the test fails.
    struct Sandbox {
        netns: String,
        cgroup: PathBuf,
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = remove_cgroup(&self.cgroup);
            let _ = crate::netns::delete_named(&self.netns);
        }
    }

    #[tokio::test]
    async fn container_runs_in_pod_netns_and_cgroup_with_output_in_its_log() {
        use std::os::unix::fs::MetadataExt as _;
        let unique = format!("proc-{}", std::process::id());
        let sb = Sandbox {
            netns: format!("kls-t-{unique}"),
            cgroup: PathBuf::from(format!("/sys/fs/cgroup/unified/keelson-test-{unique}")),
        };
        let ns = crate::netns::create_named(&sb.netns).expect("netns");
        fs::create_dir_all(&sb.cgroup).expect("cgroup");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        let spec = ProcessSpec {
            logger: None,
            argv: ["sh", "-c", "echo out-$GREETING; echo err >&2; cat /proc/self/cgroup; readlink /proc/self/ns/net; pwd; sleep 30"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("GREETING".into(), "hi".into())],
            cwd: PathBuf::from("/tmp"),
            log: log.clone(),
            netns: ns.clone(),
            cgroup: sb.cgroup.clone(),
            extra_cgroups: Vec::new(),
            rootfs: None,
            enter_ns_of: None,
        };
        let child = spawn(&spec).expect("spawn");
        let pid = child.id().expect("pid") as i32;
        let mut running = Running::Child(child);
        assert!(cgroup_pids(&sb.cgroup).contains(&pid));
        let want_ns = format!("net:[{}]", fs::metadata(&ns).expect("ns").ino());
        let mut text = String::new();
        for _ in 0..100 {
            text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("/tmp") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(text.contains("out-hi\n"), "{text}");
        assert!(text.contains("err\n"), "{text}");
        assert!(
            text.contains(&format!("0::/keelson-test-{unique}")),
            "{text}"
        );
        assert!(text.contains(&want_ns), "{text}");
        // Its own session: the process group is the pid.
        assert_eq!(
            nix::unistd::getpgid(Some(Pid::from_raw(pid))).expect("pgid"),
            Pid::from_raw(pid)
        );
        let ticks = start_ticks(pid).expect("ticks");
        assert!(is_alive(pid, ticks));
        signal(pid, Signal::SIGTERM);
        assert_eq!(running.wait().await, 128 + 15);
        assert!(!is_alive(pid, ticks));
    }
}
