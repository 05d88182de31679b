//! The traffic of the `policy` benchmark, between a client and a server "Pod": the server
//! accepts on [`CONN_PORTS`] consecutive ports (writes the address it accepted on and closes,
//! like the services bench's server) and sinks one bulk stream on [`STREAM_PORT`]; the client
//! either opens new connections back to back on several threads (connections/s, connect
//! latency) or sends one stream (bytes/s), or checks what policy lets through.
//!
//! The services bench's client does not fit: it connects to Service VIPs on port 80 through
//! the socket load balancer, and one destination port would let policy's conntrack answer most
//! connections from flows it has already seen (see `policy_workload::CONN_PORT`).

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::{
    policy_topology::enter_netns,
    policy_workload::{CLOSED_PORT, CONN_PORT, CONN_PORTS, STREAM_PORT},
};

/// The size of each write of the stream and each read of the sink.
const CHUNK: usize = 256 * 1024;

/// Joins `cgroup` (keelson's socket hooks run for every Pod's sockets, so the bench's "Pods"
/// run under the datapath's cgroup root too) and the namespace `netns`.
fn enter(netns: &Path, cgroup: Option<&Path>) -> Result<()> {
    if let Some(cg) = cgroup {
        fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining {}", cg.display()))?;
    }
    enter_netns(netns).context("entering the network namespace")
}

fn listen(port: u16) -> Result<TcpListener> {
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding port {port}"))?;
    // SAFETY: listen(2) on our own listening socket only raises its backlog.
    if unsafe { libc::listen(l.as_raw_fd(), 65_535) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(l)
}

/// Serves until killed: `threads` accepting threads per connection port, one thread per
/// stream connection reading to EOF.
pub fn serve(netns: &Path, cgroup: Option<&Path>, threads: usize) -> Result<()> {
    enter(netns, cgroup)?;
    let mut handles = Vec::new();
    for port in CONN_PORT..CONN_PORT + CONN_PORTS {
        let l = listen(port)?;
        for _ in 0..threads.max(1) {
            let l = l.try_clone()?;
            handles.push(thread::spawn(move || {
                for mut conn in l.incoming().flatten() {
                    if let Ok(local) = conn.local_addr() {
                        let _ = conn.write_all(format!("{local}\n").as_bytes());
                    }
                }
            }));
        }
    }
    let sink = listen(STREAM_PORT)?;
    handles.push(thread::spawn(move || {
        for conn in sink.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; CHUNK];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    }));
    println!("READY");
    std::io::stdout().flush()?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// One connection: connect (timed), read the server's line to EOF, close.
fn one_connection(to: SocketAddr) -> std::io::Result<(Duration, String)> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    let connect = start.elapsed();
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    s.read_to_string(&mut line)?;
    Ok((connect, line))
}

/// What a connection attempt to a port ended in.
fn attempt(to: SocketAddr, timeout: Duration) -> &'static str {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(_) => "connected",
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "refused",
        Err(e) if e.kind() == ErrorKind::TimedOut => "timeout",
        Err(_) => "error",
    }
}

/// Correctness: every connection port answers with the server's address and that port, the
/// stream port accepts, and a connection to [`CLOSED_PORT`] is refused or (dropped by policy)
/// times out. Prints one JSON line.
pub fn check(netns: &Path, cgroup: Option<&Path>, server: Ipv4Addr) -> Result<()> {
    enter(netns, cgroup)?;
    let mut errors = Vec::new();
    for port in CONN_PORT..CONN_PORT + CONN_PORTS {
        let to = SocketAddr::V4(SocketAddrV4::new(server, port));
        match one_connection(to) {
            Ok((_, line)) if line.trim() == to.to_string() => {}
            Ok((_, line)) => errors.push(format!("{to}: answered {:?}", line.trim())),
            Err(e) => errors.push(format!("{to}: {e}")),
        }
    }
    let stream = attempt(
        SocketAddr::V4(SocketAddrV4::new(server, STREAM_PORT)),
        Duration::from_secs(2),
    );
    if stream != "connected" {
        errors.push(format!("stream port: {stream}"));
    }
    let closed = attempt(
        SocketAddr::V4(SocketAddrV4::new(server, CLOSED_PORT)),
        Duration::from_millis(500),
    );
    println!("{}", json!({ "errors": errors, "closed_port": closed }));
    Ok(())
}

/// The `p` quantile of sorted values (nearest rank); 0 for none.
pub fn quantile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a vector of at most millions"
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Connection load: `threads` threads opening new connections back to back, thread `t`'s
/// `n`th to connection port `(t + n) % CONN_PORTS`, for `warmup + duration`; connections
/// started and finished inside the window count. Prints one JSON line.
pub fn connections(
    netns: &Path,
    cgroup: Option<&Path>,
    server: Ipv4Addr,
    threads: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<()> {
    enter(netns, cgroup)?;
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let handles: Vec<_> = (0..threads.max(1))
        .map(|t| {
            thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut n = t;
                loop {
                    let began = Instant::now();
                    if began >= window_end {
                        break;
                    }
                    let port = CONN_PORT + u16::try_from(n % usize::from(CONN_PORTS)).unwrap_or(0);
                    n += 1;
                    let r = one_connection(SocketAddr::V4(SocketAddrV4::new(server, port)));
                    let counted = began >= window_start && Instant::now() <= window_end;
                    match r {
                        Ok((connect, _)) if counted => {
                            lat.push(u32::try_from(connect.as_micros()).unwrap_or(u32::MAX));
                        }
                        Err(_) if counted => errors += 1,
                        _ => {}
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (lat, e) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let rate = all.len() as f64 / duration.as_secs_f64();
    println!(
        "{}",
        json!({
            "connections": all.len(),
            "errors": errors,
            "rate": rate,
            "p50_us": quantile(&all, 0.50),
            "p99_us": quantile(&all, 0.99),
        })
    );
    Ok(())
}

/// One bulk stream: connects to the sink and writes [`CHUNK`]-sized buffers for `warmup +
/// duration`; the bytes the socket took inside the window count (in steady state the send
/// buffer is as full at the window's end as at its start). Prints one JSON line.
pub fn stream(
    netns: &Path,
    cgroup: Option<&Path>,
    server: Ipv4Addr,
    warmup: Duration,
    duration: Duration,
) -> Result<()> {
    enter(netns, cgroup)?;
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::V4(SocketAddrV4::new(server, STREAM_PORT)),
        Duration::from_secs(3),
    )
    .context("connecting to the sink")?;
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let (window_start, window_end) = (start + warmup, start + warmup + duration);
    let mut bytes = 0u64;
    let mut counting_since = None;
    loop {
        let now = Instant::now();
        if now >= window_end {
            break;
        }
        if now >= window_start && counting_since.is_none() {
            counting_since = Some(now);
        }
        let n = s.write(&buf).context("writing the stream")?;
        if n == 0 {
            bail!("the sink closed the stream");
        }
        if counting_since.is_some() {
            bytes += u64::try_from(n).unwrap_or(0);
        }
    }
    let counted = counting_since.map_or(Duration::ZERO, |t| t.elapsed());
    #[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
    let rate = if counted.is_zero() {
        0.0
    } else {
        bytes as f64 / counted.as_secs_f64()
    };
    println!("{}", json!({ "bytes": bytes, "rate": rate }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
