//! Network namespaces: running code inside the node's or a Pod's namespace without moving the
//! agent, and creating/removing the named Pod namespaces under `/run/netns`.
//!
//! The agent stays in the root namespace (it keeps `/sys/fs/cgroup`, the bpffs and loopback to
//! the API server) and enters other namespaces per operation on a dedicated thread: `setns(2)`
//! with `CLONE_NEWNET` changes only the calling thread, and sockets created there stay bound to
//! that namespace after the thread ends.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Where named network namespaces live (iproute2's convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of entering, creating and removing namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the thread working in network namespace {0} panicked")]
    Panicked(PathBuf),
    #[error("creating network namespace {path}: {what}")]
    Create {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("bringing up the loopback of network namespace {path}")]
    Loopback {
        path: PathBuf,
        #[source]
        source: Box<crate::links::LinkError>,
    },
    #[error("removing network namespace {path}")]
    Delete {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `f` on a thread that has entered the network namespace at `path` (`None`: the
/// caller's own namespace, still on a separate thread for uniformity).
pub fn in_netns<T, F>(path: Option<&Path>, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = match path {
        Some(p) => Some(File::open(p).map_err(|source| NetnsError::Open {
            path: p.to_owned(),
            source,
        })?),
        None => None,
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            if let (Some(file), Some(p)) = (file, path) {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: p.to_owned(),
                    source,
                })?;
            }
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked(path.map(Path::to_owned).unwrap_or_default()))?
    })
}

/// Name of a Pod's network namespace: `kls-<node>-<first 8 chars of the pod uid>`.
pub fn pod_netns_name(node: &str, pod_uid: &str) -> String {
    let short: String = pod_uid.chars().take(8).collect();
    format!("kls-{node}-{short}")
}

/// Path of a named namespace.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates the named namespace `/run/netns/<name>` unless it exists, and brings its loopback
/// up. As `ip netns add` does: a thread unshares a new network namespace and bind-mounts its
/// `/proc/thread-self/ns/net` on the file, which keeps the namespace alive with no process in
/// it (ip-netns(8)); `/run/netns` is made a shared mount first so the mount shows in mount
/// namespaces created later (iproute2 ip/ipnetns.c: netns_add).
pub fn create_named(name: &str) -> Result<PathBuf, NetnsError> {
    let path = named_path(name);
    if !path.exists() {
        share_run_dir()?;
        let fail = |what: &'static str| {
            let path = path.clone();
            move |source: nix::Error| NetnsError::Create {
                path,
                what,
                source: source.into(),
            }
        };
        File::create_new(&path)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(File::open(&path)?)
                } else {
                    Err(e)
                }
            })
            .map_err(|source| NetnsError::Create {
                path: path.clone(),
                what: "creating the mount point",
                source,
            })?;
        let made = std::thread::scope(|s| {
            s.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(fail("unsharing"))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(fail("bind-mounting"))?;
                crate::links::bring_up_loopback(None).map_err(|e| NetnsError::Loopback {
                    path: path.clone(),
                    source: Box::new(e),
                })
            })
            .join()
            .map_err(|_| NetnsError::Panicked(path.clone()))?
        });
        if let Err(e) = made {
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        return Ok(path);
    }
    crate::links::bring_up_loopback(Some(&path)).map_err(|e| NetnsError::Loopback {
        path: path.clone(),
        source: Box::new(e),
    })?;
    Ok(path)
}

/// Makes `/run/netns` a shared mount point of its own (bind-mounting it on itself the first
/// time), as iproute2 does before creating a namespace.
fn share_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    let err = |what: &'static str| {
        move |source: nix::Error| NetnsError::Create {
            path: dir.to_owned(),
            what,
            source: source.into(),
        }
    };
    std::fs::create_dir_all(dir).map_err(|source| NetnsError::Create {
        path: dir.to_owned(),
        what: "creating the directory",
        source,
    })?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point yet.
        Err(nix::Error::EINVAL) => {
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(err("bind-mounting on itself"))?;
            mount(None::<&str>, dir, Some("none"), shared, None::<&str>)
                .map_err(err("making it shared"))
        }
        Err(e) => Err(err("making it shared")(e)),
    }
}

/// Removes the named namespace (`ip netns delete`: detach the bind mount, remove the file);
/// a missing one is not an error. The namespace itself goes when nothing uses it any more.
pub fn delete_named(name: &str) -> Result<(), NetnsError> {
    let path = named_path(name);
    if !path.exists() {
        return Ok(());
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not mounted (a creation interrupted half-way); the file still goes.
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => {
            return Err(NetnsError::Delete {
                path,
                source: e.into(),
            });
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Delete { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_netns_name_uses_first_eight_uid_chars() {
        assert_eq!(
            pod_netns_name("keelson-n1", "0f3c9a2e-1111-2222-3333-444455556666"),
            "kls-keelson-n1-0f3c9a2e"
        );
        assert_eq!(pod_netns_name("n", "abc"), "kls-n-abc");
    }

    #[test]
    fn in_netns_enters_the_namespace_and_leaves_the_caller_alone() {
        let name = format!("kls-t-nsenter-{}", std::process::id());
        let path = create_named(&name).expect("create netns");
        struct Guard(String);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = delete_named(&self.0);
            }
        }
        let _guard = Guard(name.clone());
        let own = std::fs::read_link("/proc/thread-self/ns/net").expect("own ns");
        let inside = in_netns(Some(&path), || {
            std::fs::read_link("/proc/thread-self/ns/net")
        })
        .expect("enter")
        .expect("readlink");
        assert_ne!(own, inside);
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").expect("own ns"),
            own
        );
        // Creating it again is a no-op, deleting twice is fine.
        create_named(&name).expect("create again");
        delete_named(&name).expect("delete");
        delete_named(&name).expect("delete again");
        assert!(!path.exists());
    }
}
