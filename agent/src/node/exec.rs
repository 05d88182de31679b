//! Running a command inside a running container (`kubectl exec`): the new process joins every
//! namespace of the container's main process that differs from the agent's own (ipc, uts, net,
//! then mnt, and the container's root), the container's cgroups (v2, and v1 `memory` when the
//! host has it), gets the container's environment, and is wired to pipes or to a pty.
//!
//! The namespace and cgroup descriptors are opened before the fork; between fork and exec the
//! child only makes async-signal-safe system calls on them (setns(2), fchdir(2), chroot(2),
//! write(2), setsid(2), ioctl(2)). The fork itself runs on a blocking thread
//! ([`spawn_blocking`](tokio::task::spawn_blocking)), never on the async runtime.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::PathBuf,
    process::Stdio,
};

/// Errors of entering a container.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("container {container} is not running")]
    NotRunning { container: String },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening a pty")]
    Pty(#[source] nix::Error),
    #[error("exec: {argv0:?}")]
    Start {
        argv0: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no command given")]
    NoCommand,
    #[error("the exec thread ended")]
    Join(#[source] tokio::task::JoinError),
}

/// Namespaces a process joins, in the order it joins them: the mount namespace last, since
/// after it the paths of the agent's own root are gone (setns(2): "Changing the mount
/// namespace ... the caller's root and cwd are reset"). user and pid are not joined: the
/// runtime creates neither for containers.
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("mnt", libc::CLONE_NEWNS),
];

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
    /// The pty's size from the start (width, height): the client's first resize, so a
    /// command that reads its terminal size at once sees the real one.
    pub size: Option<(u16, u16)>,
}

/// The streams of a started process.
#[derive(Debug)]
pub enum ExecIo {
    Pipes {
        stdin: Option<tokio::process::ChildStdin>,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    },
    /// The pty's master side (reads and writes through separate descriptors of it).
    Pty { master: OwnedFd },
}

/// A started process inside a container.
#[derive(Debug)]
pub struct Exec {
    pub child: tokio::process::Child,
    pub io: ExecIo,
}

/// One namespace the process must join.
#[derive(Debug)]
struct JoinNs {
    file: File,
    kind: libc::c_int,
}

/// What the child needs between fork and exec, prepared (opened, allocated) before the fork.
#[derive(Debug)]
struct Entry {
    namespaces: Vec<JoinNs>,
    /// The container's root directory (`/proc/<pid>/root`), entered after the mount namespace.
    root: Option<File>,
    cwd: CString,
    /// `cgroup.procs` of each cgroup the container's process is in.
    cgroups: Vec<File>,
    env: Vec<(String, String)>,
}

/// The namespaces of `pid` that differ from this process's own (same device and inode means the
/// same namespace: namespaces(7)).
fn differing_namespaces(pid: i32) -> Result<Vec<JoinNs>, ExecError> {
    let mut out = Vec::new();
    for (name, kind) in NAMESPACES {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let io = |what| {
            let path = theirs.clone();
            move |source| ExecError::Io { what, path, source }
        };
        let t = fs::metadata(&theirs).map_err(io("reading"))?;
        let ours = fs::metadata(format!("/proc/self/ns/{name}")).map_err(io("reading"))?;
        if (t.dev(), t.ino()) != (ours.dev(), ours.ino()) {
            let file = File::open(&theirs).map_err(io("opening"))?;
            out.push(JoinNs { file, kind: *kind });
        }
    }
    Ok(out)
}

/// Where each cgroup hierarchy this process can join is mounted: (`None` for v2 or the v1
/// controller name, mount point), from /proc/self/mountinfo (proc(5)).
fn cgroup_mounts(mountinfo: &str) -> Vec<(Option<String>, PathBuf)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source
        // super-options.
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or_default();
        let super_opts = r.nth(1).unwrap_or_default();
        match fstype {
            "cgroup2" => out.push((None, PathBuf::from(mount_point))),
            "cgroup" => {
                for opt in super_opts.split(',') {
                    if opt == "memory" {
                        out.push((Some("memory".to_owned()), PathBuf::from(mount_point)));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The `cgroup.procs` files of the cgroups listed in `/proc/<pid>/cgroup` (cgroups(7)): the v2
/// one and, on a hybrid host, the v1 memory one, which is where memory limits live there.
pub fn cgroup_procs_paths(proc_cgroup: &str, mountinfo: &str) -> Vec<PathBuf> {
    let mounts = cgroup_mounts(mountinfo);
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let want = if controllers.is_empty() {
            None
        } else if controllers.split(',').any(|c| c == "memory") {
            Some("memory".to_owned())
        } else {
            continue;
        };
        if let Some((_, root)) = mounts.iter().find(|(c, _)| *c == want) {
            out.push(root.join(path.trim_start_matches('/')).join("cgroup.procs"));
        }
    }
    out
}

/// The environment of `pid` (`/proc/<pid>/environ`: NUL-separated `KEY=value`).
pub fn parse_environ(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn prepare(pid: i32) -> Result<Entry, ExecError> {
    let read = |p: String| {
        fs::read(&p).map_err(|source| ExecError::Io {
            what: "reading",
            path: PathBuf::from(p),
            source,
        })
    };
    let namespaces = differing_namespaces(pid)?;
    let root_path = PathBuf::from(format!("/proc/{pid}/root"));
    let root = if namespaces.iter().any(|n| n.kind == libc::CLONE_NEWNS) {
        Some(File::open(&root_path).map_err(|source| ExecError::Io {
            what: "opening",
            path: root_path,
            source,
        })?)
    } else {
        None
    };
    // The container's working directory as its own root sees it; "/" when it cannot be read.
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| PathBuf::from("/"));
    let cwd = CString::new(cwd.as_os_str().as_bytes()).unwrap_or_else(|_| c"/".to_owned());
    let proc_cgroup = String::from_utf8_lossy(&read(format!("/proc/{pid}/cgroup"))?).into_owned();
    let mountinfo = String::from_utf8_lossy(&read("/proc/self/mountinfo".into())?).into_owned();
    let mut cgroups = Vec::new();
    for path in cgroup_procs_paths(&proc_cgroup, &mountinfo) {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| ExecError::Io {
                what: "opening",
                path,
                source,
            })?;
        cgroups.push(f);
    }
    let env = parse_environ(&read(format!("/proc/{pid}/environ"))?);
    Ok(Entry {
        namespaces,
        root,
        cwd,
        cgroups,
        env,
    })
}

/// Starts `spec` inside the container whose main process is `pid`. Blocking (it forks): call
/// it from [`spawn_in_container`] or another blocking thread.
pub fn spawn_blocking_in(pid: i32, spec: &ExecSpec) -> Result<Exec, ExecError> {
    let argv0 = spec.argv.first().ok_or(ExecError::NoCommand)?.clone();
    let entry = prepare(pid)?;
    let mut cmd = tokio::process::Command::new(&argv0);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(entry.env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    // A terminal gets a TERM, as container runtimes set it for `tty: true` (runc: TERM=xterm).
    if spec.tty && !entry.env.iter().any(|(k, _)| k == "TERM") {
        cmd.env("TERM", "xterm");
    }
    let mut master = None;
    if spec.tty {
        let size = spec.size.map(|(width, height)| libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = nix::pty::openpty(size.as_ref(), None).map_err(ExecError::Pty)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| ExecError::Io {
                what: "duplicating",
                path: PathBuf::from("pty"),
                source,
            })
        };
        cmd.stdin(Stdio::from(dup(&pty.slave)?))
            .stdout(Stdio::from(dup(&pty.slave)?))
            .stderr(Stdio::from(pty.slave));
        master = Some(pty.master);
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    let ns: Vec<(RawFd, libc::c_int)> = entry
        .namespaces
        .iter()
        .map(|n| (n.file.as_raw_fd(), n.kind))
        .collect();
    let root_fd = entry.root.as_ref().map(File::as_raw_fd);
    let cgroup_fds: Vec<RawFd> = entry.cgroups.iter().map(File::as_raw_fd).collect();
    let cwd = entry.cwd.clone();
    let tty = spec.tty;
    // SAFETY: the closure runs in the forked child before exec. It only makes async-signal-safe
    // system calls on descriptors and a C string prepared before the fork (all owned by `entry`
    // and `cwd`, which live until after `spawn` returns), and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let last = || Err(std::io::Error::last_os_error());
            // Cgroups first: everything the child does from here on is accounted to the
            // container ("0" moves the writing process itself, cgroups(7)).
            for fd in &cgroup_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return last();
                }
            }
            for (fd, kind) in &ns {
                if libc::setns(*fd, *kind) != 0 {
                    return last();
                }
            }
            // The container's root: a pivot_root'ed mount namespace has its own, which setns
            // alone does not make the caller's root (nsenter(1) --root does the same).
            if let Some(root) = root_fd
                && (libc::fchdir(root) != 0 || libc::chroot(c".".as_ptr()) != 0)
            {
                return last();
            }
            if libc::chdir(cwd.as_ptr()) != 0 && libc::chdir(c"/".as_ptr()) != 0 {
                return last();
            }
            // Own session; with a pty, the pty (on fd 0) becomes its controlling terminal
            // (tty_ioctl(4): TIOCSCTTY), so job control and ^C work in an interactive shell.
            if libc::setsid() < 0 {
                return last();
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return last();
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ExecError::Start {
        argv0: argv0.clone(),
        source,
    })?;
    // The parent's copies of the slave side go with `cmd`: the master reads EOF (EIO) once the
    // process and its children have closed theirs.
    drop(cmd);
    drop(entry);
    let io = match master {
        Some(master) => ExecIo::Pty { master },
        None => ExecIo::Pipes {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        },
    };
    Ok(Exec { child, io })
}

/// [`spawn_blocking_in`] on a blocking thread.
pub async fn spawn_in_container(pid: i32, spec: ExecSpec) -> Result<Exec, ExecError> {
    tokio::task::spawn_blocking(move || spawn_blocking_in(pid, &spec))
        .await
        .map_err(ExecError::Join)?
}

/// Sets the window size of a pty (tty_ioctl(4): TIOCSWINSZ); the kernel sends SIGWINCH to the
/// terminal's foreground process group.
pub fn resize(master: &OwnedFd, width: u16, height: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points at a live local; the
    // descriptor is owned and open.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The exit code of a finished process: its code, or 128+signal when killed, as shells report.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Where the cgroup v2 hierarchy is mounted on this host.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup_mounts(&mountinfo)
        .into_iter()
        .find(|(c, _)| c.is_none())
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 24 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn cgroups_of_a_process_on_a_hybrid_host() {
        let proc_cgroup = "12:memory:/pods/p1\n4:cpu,cpuacct:/\n0::/keelson/n1/pods/p1\n";
        assert_eq!(
            cgroup_procs_paths(proc_cgroup, MOUNTINFO),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/pods/p1/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/unified/keelson/n1/pods/p1/cgroup.procs"),
            ]
        );
        // A pure v2 host: only the unified line.
        assert_eq!(
            cgroup_procs_paths("0::/a\n", MOUNTINFO),
            vec![PathBuf::from("/sys/fs/cgroup/unified/a/cgroup.procs")]
        );
    }

    #[test]
    fn environ_is_split_on_nul() {
        assert_eq!(
            parse_environ(b"PATH=/bin\0A=b=c\0\0=x\0"),
            vec![
                ("PATH".to_owned(), "/bin".to_owned()),
                ("A".to_owned(), "b=c".to_owned())
            ]
        );
    }

    /// Removes the test's namespace and cgroup even when the test fails.
    struct Sandbox {
        netns: String,
        cgroup: PathBuf,
        pid: Option<i32>,
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            if let Some(pid) = self.pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = super::super::process::remove_cgroup(&self.cgroup);
            let _ = crate::netns::delete_named(&self.netns);
        }
    }

    #[tokio::test]
    async fn exec_joins_the_containers_netns_cgroup_and_environment() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let unique = format!("exec-{}", std::process::id());
        let root = cgroup2_root().expect("cgroup2 mount");
        let mut sb = Sandbox {
            netns: format!("kstr-t-{unique}"),
            cgroup: root.join(format!("keelson-test-{unique}")),
            pid: None,
        };
        let ns = crate::netns::create_named(&sb.netns).expect("netns");
        fs::create_dir_all(&sb.cgroup).expect("cgroup");
        let dir = tempfile::tempdir().expect("tempdir");
        let container = super::super::process::spawn(&super::super::process::ProcessSpec {
            logger: None,
            argv: vec!["sleep".into(), "60".into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("GREETING".into(), "from-the-container".into()),
            ],
            cwd: PathBuf::from("/tmp"),
            log: dir.path().join("c.log"),
            netns: ns.clone(),
            cgroup: sb.cgroup.clone(),
            extra_cgroups: Vec::new(),
            rootfs: None,
            enter_ns_of: None,
        })
        .expect("container");
        let pid = container.id().expect("pid") as i32;
        sb.pid = Some(pid);

        let spec = ExecSpec {
            size: None,
            argv: vec![
                "sh".into(),
                "-c".into(),
                "read x; echo got-$x; echo $GREETING; pwd; readlink /proc/self/ns/net; cat /proc/self/cgroup; echo oops >&2; exit 7".into(),
            ],
            stdin: true,
            tty: false,
        };
        let mut exec = spawn_in_container(pid, spec).await.expect("exec");
        let ExecIo::Pipes {
            stdin: Some(mut stdin),
            stdout: Some(mut stdout),
            stderr: Some(mut stderr),
        } = exec.io
        else {
            panic!("pipes expected");
        };
        stdin.write_all(b"line\n").await.expect("stdin");
        drop(stdin);
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.expect("stdout");
        let mut err = String::new();
        stderr.read_to_string(&mut err).await.expect("stderr");
        let code = exit_code(exec.child.wait().await.expect("wait"));
        assert_eq!(code, 7);
        assert_eq!(err, "oops\n");
        let want_ns = format!("net:[{}]", fs::metadata(&ns).expect("ns").ino());
        assert!(out.contains("got-line\n"), "{out}");
        assert!(out.contains("from-the-container\n"), "{out}");
        assert!(out.contains("/tmp\n"), "{out}");
        assert!(out.contains(&want_ns), "{out}");
        assert!(out.contains(&format!("0::/keelson-test-{unique}")), "{out}");
    }

    #[tokio::test]
    async fn exec_with_a_tty_sees_a_terminal_of_the_requested_size() {
        use tokio::io::AsyncReadExt as _;
        let me = std::process::id() as i32;
        let spec = ExecSpec {
            size: None,
            argv: vec![
                "sh".into(),
                "-c".into(),
                "sleep 0.3; test -t 0 && echo is-a-tty; stty size".into(),
            ],
            stdin: true,
            tty: true,
        };
        let mut exec = spawn_in_container(me, spec).await.expect("exec");
        let ExecIo::Pty { master } = exec.io else {
            panic!("pty expected");
        };
        resize(&master, 91, 17).expect("resize");
        let mut reader = tokio::fs::File::from_std(File::from(master));
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        // The master reads EIO once the slave side is gone: the end of the output.
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let out = String::from_utf8_lossy(&out);
        assert_eq!(exit_code(exec.child.wait().await.expect("wait")), 0);
        assert!(out.contains("is-a-tty"), "{out}");
        assert!(out.contains("17 91"), "{out}");
    }
}
