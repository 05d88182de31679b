//! Port-forwarding into a Pod: a TCP connection to `127.0.0.1:<port>` made from inside the
//! Pod's network namespace, as the kubelet's streaming server does for `pods/portforward`.
//!
//! The socket is created on a short-lived thread that joins the Pod's namespace (setns(2)
//! changes only the calling thread's namespace); the socket keeps that namespace after the
//! thread is gone, so the connection is then driven from the async runtime like any other.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

/// How long a connection to the Pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of connecting to a Pod's port.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("opening the network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering the network namespace {path}")]
    Setns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to connect to localhost:{port} inside namespace {path}")]
    Connect {
        port: u16,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the connecting thread ended")]
    Thread,
}

/// Connects to `127.0.0.1:port` inside the network namespace at `netns` (a bind-mounted
/// namespace file or `/proc/<pid>/ns/net`).
pub async fn connect(netns: &Path, port: u16) -> Result<tokio::net::TcpStream, ForwardError> {
    let path = netns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portforward-dial".into())
        .spawn(move || {
            let _ = tx.send(connect_blocking(&path, port));
        })
        .map_err(|_| ForwardError::Thread)?;
    let stream = rx.await.map_err(|_| ForwardError::Thread)??;
    stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(stream))
        .map_err(|source| ForwardError::Connect {
            port,
            path: netns.to_owned(),
            source,
        })
}

/// Runs on a thread of its own, which ends right after: its namespace is never reused.
fn connect_blocking(path: &Path, port: u16) -> Result<TcpStream, ForwardError> {
    let ns = File::open(path).map_err(|source| ForwardError::Netns {
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: setns on an open namespace descriptor; it changes only this thread, which exists
    // for this connection alone.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(ForwardError::Setns {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|source| ForwardError::Connect {
        port,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    struct Netns(String);

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = crate::netns::delete_named(&self.0);
        }
    }

    #[tokio::test]
    async fn connects_to_loopback_inside_the_namespace_only() {
        let name = Netns(format!("kstr-pf-{}", std::process::id()));
        let path = crate::netns::create_named(&name.0).expect("netns");
        // A listener inside the namespace, on its own loopback (brought up by a thread there).
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let ns = File::open(&p).expect("ns");
            // SAFETY: setns on an open namespace descriptor, on this test thread only.
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0);
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip");
            assert!(up.success());
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            tx.send(l.local_addr().expect("addr").port()).expect("send");
            let (mut s, _) = l.accept().expect("accept");
            use std::io::{Read as _, Write as _};
            let mut b = [0u8; 4];
            s.read_exact(&mut b).expect("read");
            s.write_all(&b.map(|c| c.to_ascii_uppercase()))
                .expect("write");
        });
        let port = rx.recv().expect("port");
        // The agent's own namespace has no such listener.
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the port must only be open inside the namespace"
        );
        let mut s = connect(&path, port).await.expect("connect");
        s.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.expect("read");
        assert_eq!(&b, b"PING");
        let err = connect(&path, 1).await.expect_err("nothing listens on 1");
        assert!(
            matches!(err, ForwardError::Connect { port: 1, .. }),
            "{err}"
        );
    }
}
