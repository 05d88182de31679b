//! A container's own view of the filesystem under the `process` runtime. There are no images:
//! the host's root stays the base, seen through an overlay whose upper layer is the
//! container's own (writes stay in the container, as a container's root does). In a private
//! mount namespace the container gets `/proc`, `/sys` and `/dev`, the Pod's `/etc/hosts` and
//! `/etc/resolv.conf`, and every volume at its `mountPath` (`subPath`, `readOnly`), then
//! pivots into it. The plan is made in the agent; the child only replays prepared system
//! calls between fork and exec.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Component, Path, PathBuf},
};

use k8s_openapi::api::core::v1::Container;

/// Errors of planning or preparing a container's mounts.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("volumeMount {mount:?}: no volume named {volume:?} in the pod")]
    UnknownVolume { mount: String, volume: String },
    #[error("volumeMount {mount:?}: {field} {value:?} {why}")]
    BadPath {
        mount: String,
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("path {0:?} holds a NUL byte")]
    Nul(PathBuf),
}

/// One bind mount into the container: a host path at an absolute path of the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// The per-Pod files every container of the Pod gets.
#[derive(Debug, Clone)]
pub struct PodFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

fn bad(mount: &str, field: &'static str, value: &str, why: &'static str) -> RootfsError {
    RootfsError::BadPath {
        mount: mount.to_owned(),
        field,
        value: value.to_owned(),
        why,
    }
}

/// The bind mounts of a container: the Pod's files, then its volumeMounts in order (a later
/// mount may sit inside an earlier one). `volumes` maps each volume name to its host path.
pub fn binds(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    files: &PodFiles,
) -> Result<Vec<Bind>, RootfsError> {
    let mut out = vec![
        Bind {
            source: files.hosts.clone(),
            target: PathBuf::from("/etc/hosts"),
            read_only: false,
        },
        Bind {
            source: files.resolv_conf.clone(),
            target: PathBuf::from("/etc/resolv.conf"),
            read_only: false,
        },
    ];
    for m in container.volume_mounts.iter().flatten() {
        let root = volumes
            .get(&m.name)
            .ok_or_else(|| RootfsError::UnknownVolume {
                mount: m.mount_path.clone(),
                volume: m.name.clone(),
            })?;
        let target = Path::new(&m.mount_path);
        if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
            return Err(bad(
                &m.name,
                "mountPath",
                &m.mount_path,
                "must be absolute and may not contain '..'",
            ));
        }
        let sub = m.sub_path.as_deref().filter(|s| !s.is_empty());
        let source = match sub {
            None => root.clone(),
            Some(sub) => {
                let p = Path::new(sub);
                if p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                    return Err(bad(
                        &m.name,
                        "subPath",
                        sub,
                        "must be a relative path without '..'",
                    ));
                }
                root.join(p)
            }
        };
        out.push(Bind {
            source,
            target: target.to_owned(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

/// `path` of the container as the host's root resolves it: every symlink in its parent
/// resolved (the host's `/lib` may be a link to `usr/lib`, and an upper-layer directory of
/// that name would hide it), the last component kept as it is (a bind over `/etc/resolv.conf`
/// must replace the link, not follow it).
fn resolve_in_lower(path: &Path) -> PathBuf {
    let Some(name) = path.file_name() else {
        return PathBuf::from("/");
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    // The longest prefix that exists, canonicalized, then the rest as given.
    let mut existing = parent.to_owned();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(ToOwned::to_owned),
            existing.parent(),
        ) {
            (Some(n), Some(up)) => {
                rest.push(n);
                existing = up.to_owned();
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    out.extend(rest.iter().rev());
    out.join(name)
}

fn cstr(p: &Path) -> Result<CString, RootfsError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| RootfsError::Nul(p.to_owned()))
}

/// A container's mounts, ready to be replayed by [`Prepared::enter`] in the forked child.
#[derive(Debug)]
pub struct Prepared {
    merged: CString,
    overlay_opts: CString,
    /// (host source, target inside `merged`, read-only).
    binds: Vec<(CString, CString, bool)>,
    cwd: CString,
    hostname: Option<CString>,
}

/// Prepares the overlay of `dir` (`upper`, `work`, `merged`; a fresh upper layer, as a
/// restarted container gets a fresh root) and the targets of `binds` in it. `hostname` is set
/// in a new UTS namespace (`None`: the node's, for hostNetwork Pods). Blocking.
pub fn prepare(
    dir: &Path,
    binds: &[Bind],
    cwd: &Path,
    hostname: Option<&str>,
) -> Result<Prepared, RootfsError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| RootfsError::Io { what, path, source }
    };
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(io("clearing", d))?;
        }
    }
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).map_err(io("creating", d))?;
    }
    let in_upper = |target: &Path| upper.join(target.strip_prefix("/").unwrap_or(target));
    let mut planned = Vec::new();
    for b in binds {
        let resolved = resolve_in_lower(&b.target);
        let at = in_upper(&resolved);
        let source_is_dir = std::fs::metadata(&b.source)
            .map_err(io("reading", &b.source))?
            .is_dir();
        if source_is_dir {
            std::fs::create_dir_all(&at).map_err(io("creating", &at))?;
        } else {
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            std::fs::File::create(&at).map_err(io("creating", &at))?;
        }
        planned.push((
            cstr(&b.source)?,
            cstr(&merged.join(resolved.strip_prefix("/").unwrap_or(&resolved)))?,
            b.read_only,
        ));
    }
    let cwd_resolved = resolve_in_lower(cwd);
    if !cwd_resolved.exists() {
        let at = in_upper(&cwd_resolved);
        std::fs::create_dir_all(&at).map_err(io("creating", &at))?;
    }
    let opts = format!(
        "lowerdir=/,upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    Ok(Prepared {
        merged: cstr(&merged)?,
        overlay_opts: CString::new(opts).map_err(|_| RootfsError::Nul(upper.clone()))?,
        binds: planned,
        cwd: cstr(&cwd_resolved)?,
        hostname: hostname
            .map(|h| CString::new(h).map_err(|_| RootfsError::Nul(PathBuf::from(h))))
            .transpose()?,
    })
}

/// Fails the child with the error of the last system call.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Prepared {
    /// Enters the container's filesystem: a new mount (and UTS) namespace, the overlay, the
    /// system directories, the binds, then `pivot_root` into the overlay and `chdir` to the
    /// working directory.
    ///
    /// # Safety
    /// Only for the forked child between fork and exec: it makes system calls on memory
    /// prepared before the fork and allocates nothing.
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        let flags = libc::CLONE_NEWNS
            | if self.hostname.is_some() {
                libc::CLONE_NEWUTS
            } else {
                0
            };
        // SAFETY: every pointer is a NUL-terminated string owned by `self` (alive for the
        // call) or null where the call allows it; the calls only change this process.
        unsafe {
            check(libc::unshare(flags))?;
            // Nothing mounted here may propagate back to the host (mount_namespaces(7)).
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"overlay".as_ptr(),
                self.merged.as_ptr(),
                c"overlay".as_ptr(),
                0,
                self.overlay_opts.as_ptr().cast(),
            ))?;
            if libc::chdir(self.merged.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The host's /proc, /sys and /dev as they are (the overlay's lower layer is the
            // root filesystem alone, without the filesystems mounted on it).
            for sys in [c"/proc", c"/sys", c"/dev"] {
                // Relative to the overlay: "proc", "sys", "dev".
                let rel = sys.as_ptr().add(1);
                check(libc::mount(
                    sys.as_ptr(),
                    rel,
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
            }
            for (src, dst, ro) in &self.binds {
                check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if *ro {
                    check(libc::mount(
                        null,
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            if let Some(h) = &self.hostname {
                check(libc::sethostname(h.as_ptr(), h.as_bytes().len()))?;
            }
            // pivot_root(".", "."): the old root is stacked on the new one and then detached
            // (pivot_root(2), NOTES).
            check(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            )?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(self.cwd.as_ptr()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn files() -> PodFiles {
        PodFiles {
            hosts: PathBuf::from("/pod/hosts"),
            resolv_conf: PathBuf::from("/pod/resolv.conf"),
        }
    }

    fn container(mounts: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "volumeMounts": mounts})).expect("container")
    }

    #[test]
    fn binds_follow_volume_mounts() {
        let vols: BTreeMap<String, PathBuf> = [
            ("cfg".to_owned(), PathBuf::from("/pod/volumes/cfg")),
            ("data".to_owned(), PathBuf::from("/pod/volumes/data")),
        ]
        .into();
        let b = binds(
            &container(json!([
                {"name": "cfg", "mountPath": "/etc/app", "readOnly": true},
                {"name": "data", "mountPath": "/var/data/one", "subPath": "one"},
            ])),
            &vols,
            &files(),
        )
        .expect("binds");
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].target, Path::new("/etc/hosts"));
        assert_eq!(
            b[2],
            Bind {
                source: "/pod/volumes/cfg".into(),
                target: "/etc/app".into(),
                read_only: true
            }
        );
        assert_eq!(b[3].source, Path::new("/pod/volumes/data/one"));
    }

    #[test]
    fn bad_mounts_are_refused() {
        let vols: BTreeMap<String, PathBuf> = [("v".to_owned(), PathBuf::from("/v"))].into();
        for m in [
            json!([{"name": "v", "mountPath": "/x", "subPath": "../etc"}]),
            json!([{"name": "v", "mountPath": "/x", "subPath": "/etc"}]),
            json!([{"name": "v", "mountPath": "relative"}]),
        ] {
            let e = binds(&container(m.clone()), &vols, &files()).expect_err("refused");
            assert!(matches!(e, RootfsError::BadPath { .. }), "{m}: {e}");
        }
        let e = binds(
            &container(json!([{"name": "w", "mountPath": "/x"}])),
            &vols,
            &files(),
        )
        .expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "volumeMount \"/x\": no volume named \"w\" in the pod"
        );
    }

    #[test]
    fn lower_paths_resolve_parent_links_but_not_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("dir");
        std::os::unix::fs::symlink(&real, dir.path().join("link")).expect("link");
        std::os::unix::fs::symlink("elsewhere", real.join("file")).expect("file link");
        let real = std::fs::canonicalize(&real).expect("canon");
        assert_eq!(
            resolve_in_lower(&dir.path().join("link/file")),
            real.join("file")
        );
        assert_eq!(
            resolve_in_lower(&dir.path().join("link/new/deep")),
            real.join("new/deep")
        );
    }

    /// A container started with its own root: its files and volumes bound in, read-only where
    /// asked, its own hostname, its writes kept from the host.
    #[tokio::test]
    async fn a_container_sees_its_own_root() {
        let unique = format!("rootfs-{}", std::process::id());
        let cgroup = PathBuf::from(format!("/sys/fs/cgroup/unified/keelson-test-{unique}"));
        std::fs::create_dir_all(&cgroup).expect("cgroup");
        struct Cg(PathBuf);
        impl Drop for Cg {
            fn drop(&mut self) {
                let _ = crate::node::process::remove_cgroup(&self.0);
            }
        }
        let _cg = Cg(cgroup.clone());
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "10.244.9.9\tpod-x\n").expect("hosts");
        let vol = dir.path().join("vol");
        std::fs::create_dir(&vol).expect("vol");
        std::fs::write(vol.join("key"), "value").expect("key");
        let marker = format!("/etc/keelson-rootfs-test-{unique}");
        let binds = vec![
            Bind {
                source: hosts.clone(),
                target: "/etc/hosts".into(),
                read_only: false,
            },
            Bind {
                source: vol.clone(),
                target: "/etc/app/config".into(),
                read_only: true,
            },
        ];
        let prepared = prepare(
            &dir.path().join("c"),
            &binds,
            Path::new("/srv/keelson-wd"),
            Some("pod-x"),
        )
        .expect("prepare");
        let log = dir.path().join("c.log");
        let script = format!(
            "cat /etc/hosts; hostname; cat /etc/app/config/key; echo; \
             touch /etc/app/config/new 2>/dev/null && echo WRITABLE || echo READONLY; \
             echo x > {marker} && cat {marker}; pwd; ls /proc/self/ns/mnt >/dev/null && echo PROC"
        );
        let spec = crate::node::process::ProcessSpec {
            logger: None,
            argv: vec!["sh".into(), "-c".into(), script],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/srv/keelson-wd".into(),
            log: log.clone(),
            netns: "/proc/self/ns/net".into(),
            cgroup,
            extra_cgroups: vec![],
            rootfs: Some(std::sync::Arc::new(prepared)),
            enter_ns_of: None,
        };
        let mut child = crate::node::process::spawn(&spec).expect("spawn");
        let status = child.wait().await.expect("wait");
        let out = std::fs::read_to_string(&log).expect("log");
        assert!(status.success(), "{out}");
        assert_eq!(
            out,
            "10.244.9.9\tpod-x\npod-x\nvalue\nREADONLY\nx\n/srv/keelson-wd\nPROC\n"
        );
        assert!(
            !Path::new(&marker).exists(),
            "a container's write reached the host"
        );
        assert!(!Path::new("/srv/keelson-wd").exists());
        assert!(!vol.join("new").exists());
    }
}
