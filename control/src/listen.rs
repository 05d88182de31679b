//! Where the API server accepts connections: TCP sockets bound in the server's own network
//! namespace or in another one named by its `/run/netns` path — in a local cluster, the
//! underlay that the nodes (and so the Pods behind the `kubernetes` Service) are plugged into,
//! while kubectl keeps reaching the server on the host's loopback.
//!
//! A socket belongs to the network namespace it was created in for its whole life, whichever
//! namespace the thread that later accepts on it is in (network_namespaces(7)), so binding on a
//! short-lived thread that entered the namespace is enough: the rest of the server never leaves
//! its own.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// Errors of binding a listening socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("opening network namespace {}: {source}", path.display())]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {}: {source}", path.display())]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("listening on {addr}{}: {source}", in_netns(netns.as_deref()))]
    Bind {
        addr: SocketAddr,
        netns: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread binding {addr} in another network namespace panicked")]
    Thread { addr: SocketAddr },
}

fn in_netns(netns: Option<&Path>) -> String {
    netns
        .map(|p| format!(" in network namespace {}", p.display()))
        .unwrap_or_default()
}

/// A TCP listener on `addr`, non-blocking (ready for the async runtime), in network namespace
/// `netns` when given and in the process's own otherwise.
pub fn bind(addr: SocketAddr, netns: Option<&Path>) -> Result<TcpListener, ListenError> {
    let bind_here = move || {
        let listener = TcpListener::bind(addr).map_err(|source| ListenError::Bind {
            addr,
            netns: netns.map(Path::to_path_buf),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ListenError::Bind {
                addr,
                netns: netns.map(Path::to_path_buf),
                source,
            })?;
        Ok(listener)
    };
    let Some(path) = netns else {
        return bind_here();
    };
    let file = File::open(path).map_err(|source| ListenError::OpenNetns {
        path: path.to_path_buf(),
        source,
    })?;
    // setns(2) moves only the calling thread; this thread ends right after the bind, so no
    // other work of the server ever runs in the other namespace.
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| ListenError::EnterNetns {
                path: path.to_path_buf(),
                source,
            })?;
            bind_here()
        })
        .join()
        .map_err(|_| ListenError::Thread { addr })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_in_the_own_namespace_and_reports_a_missing_one() {
        let l = bind("127.0.0.1:0".parse().expect("addr"), None).expect("binds");
        assert!(l.local_addr().expect("addr").port() > 0);
        let err = bind(
            "127.0.0.1:0".parse().expect("addr"),
            Some(Path::new("/run/netns/keelson-no-such-namespace")),
        )
        .expect_err("no such namespace");
        assert!(
            matches!(err, ListenError::OpenNetns { .. }),
            "unexpected error {err}"
        );
    }

    /// A socket bound in another namespace lives there: in a fresh namespace whose loopback is
    /// up, the port bound there is not bound in the test's own namespace.
    #[test]
    fn a_socket_bound_in_another_namespace_lives_there() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a network namespace");
            return;
        }
        let name = format!("keelson-listen-{}", std::process::id());
        let path = PathBuf::from("/run/netns").join(&name);
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        run(&["netns", "add", &name]);
        struct Gone(String);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", &self.0])
                    .output();
            }
        }
        let _gone = Gone(name.clone());
        run(&["-n", &name, "link", "set", "lo", "up"]);
        let there = bind("127.0.0.1:0".parse().expect("addr"), Some(&path)).expect("binds there");
        let port = there.local_addr().expect("addr").port();
        // The same port is free here: the two sockets are in different namespaces.
        let here = bind(SocketAddr::from(([127, 0, 0, 1], port)), None);
        assert!(here.is_ok(), "port {port} taken in the own namespace too");
    }
}
