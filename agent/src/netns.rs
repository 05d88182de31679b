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
    process::Command,
};

use nix::sched::{CloneFlags, setns};

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
    #[error("running {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Command { cmd: String, stderr: String },
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
/// up. `ip netns add` does the bind mount that keeps an empty namespace alive.
pub fn create_named(name: &str) -> Result<PathBuf, NetnsError> {
    let path = named_path(name);
    if !path.exists() {
        run("ip", &["netns", "add", name])?;
    }
    run("ip", &["-n", name, "link", "set", "lo", "up"])?;
    Ok(path)
}

/// Removes the named namespace; a missing one is not an error.
pub fn delete_named(name: &str) -> Result<(), NetnsError> {
    if !named_path(name).exists() {
        return Ok(());
    }
    run("ip", &["netns", "delete", name])
}

/// Runs a command to completion, turning a non-zero exit into an error with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<(), NetnsError> {
    output(program, args).map(|_| ())
}

/// Runs a command to completion and returns its stdout.
pub(crate) fn output(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
