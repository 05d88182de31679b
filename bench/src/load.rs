//! The traffic of the benchmark: an accept-and-close server (in the server namespace) and a
//! load generator (in the client Pod's namespace and cgroup) opening a new TCP connection to a
//! random target per iteration: a Service VIP, or for the direct mode an endpoint's own
//! address. The same code serves every mode.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rand::Rng as _;
use serde_json::json;

use crate::{
    topology::enter_netns,
    workload::{BenchService, ENDPOINT_PORT, SERVICE_PORT},
};

/// One destination as the client sees it: the address it connects to and the endpoints
/// allowed to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dial: SocketAddrV4,
    pub endpoints: Vec<Ipv4Addr>,
}

/// One target per Service: its VIP and Service port, answered by any of its endpoints (the
/// datapath under test picks one).
pub fn service_targets(services: &[BenchService]) -> Vec<Target> {
    services
        .iter()
        .map(|s| Target {
            dial: SocketAddrV4::new(s.cluster_ip, SERVICE_PORT),
            endpoints: s.endpoints.clone(),
        })
        .collect()
}

/// The same backends with no Service in front: one target per endpoint, its own address
/// and the target port. The client's uniform pick over them is the distribution the
/// translating modes give (a uniform Service, then a uniform endpoint of its equally many),
/// over the same set of destination addresses, so the kernel sees the same spread.
pub fn endpoint_targets(services: &[BenchService]) -> Vec<Target> {
    services
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(|&ep| Target {
            dial: SocketAddrV4::new(ep, ENDPOINT_PORT),
            endpoints: vec![ep],
        })
        .collect()
}

/// The client's input file: one `ip:port ep ep ep` line per target.
pub fn targets_text(targets: &[Target]) -> String {
    let mut s = String::new();
    for t in targets {
        s.push_str(&t.dial.to_string());
        for ep in &t.endpoints {
            s.push(' ');
            s.push_str(&ep.to_string());
        }
        s.push('\n');
    }
    s
}

fn read_targets(path: &Path) -> Result<Vec<Target>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_targets(&text)
}

fn parse_targets(text: &str) -> Result<Vec<Target>> {
    text.lines()
        .map(|l| {
            let mut it = l.split(' ');
            let dial = it.next().context("empty line")?.parse()?;
            Ok(Target {
                dial,
                endpoints: it.map(str::parse).collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// Serves until killed: every accepted connection gets the address it was accepted on
/// (`ip:port\n`, which proves where a VIP was translated to) and is closed.
pub fn serve(netns: &Path, threads: usize) -> Result<()> {
    enter_netns(netns).context("entering the server namespace")?;
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ENDPOINT_PORT))?;
    // SAFETY: listen(2) on our own listening socket only raises its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), 65_535) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    println!("READY");
    std::io::stdout().flush()?;
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let l = listener.try_clone()?;
            Ok(thread::spawn(move || {
                for mut conn in l.incoming().flatten() {
                    if let Ok(local) = conn.local_addr() {
                        let _ = conn.write_all(format!("{local}\n").as_bytes());
                    }
                }
            }))
        })
        .collect::<Result<_>>()?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Joins the cgroup (so keelson's socket hooks apply to this process's sockets) and the
/// client namespace; threads spawned afterwards inherit both.
fn enter_client(netns: &Path, cgroup: &Path) -> Result<()> {
    fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining {}", cgroup.display()))?;
    enter_netns(netns).context("entering the client namespace")
}

/// One connection: connect (timed), read the server's line to EOF, close.
fn one_connection(dial: SocketAddrV4) -> Result<(Duration, String)> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dial), Duration::from_secs(3))?;
    let connect = start.elapsed();
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    s.read_to_string(&mut line)?;
    Ok((connect, line))
}

/// Correctness: connects to the first, the last and a sample of the targets and checks that
/// each answer came from one of that target's endpoints. Prints one JSON line.
pub fn check(netns: &Path, cgroup: &Path, targets_file: &Path, samples: usize) -> Result<()> {
    let targets = read_targets(targets_file)?;
    enter_client(netns, cgroup)?;
    let mut rng = rand::rng();
    let mut picks = vec![0, targets.len() - 1];
    picks.extend((0..samples).map(|_| rng.random_range(0..targets.len())));
    let mut errors = Vec::new();
    for i in picks.iter().copied() {
        let t = &targets[i];
        match one_connection(t.dial) {
            Ok((_, line)) => {
                let ok = line
                    .trim()
                    .parse::<SocketAddrV4>()
                    .is_ok_and(|a| a.port() == ENDPOINT_PORT && t.endpoints.contains(a.ip()));
                if !ok {
                    errors.push(format!("{}: answered by {:?}", t.dial, line.trim()));
                }
            }
            Err(e) => errors.push(format!("{}: {e}", t.dial)),
        }
    }
    println!("{}", json!({ "checked": picks.len(), "errors": errors }));
    Ok(())
}

/// Load: `threads` threads, each opening new connections to random targets back to back for
/// `warmup + duration`; only connections started and finished inside the measurement window
/// count. Prints one JSON line: connections, errors, rate, connect latency percentiles.
pub fn load(
    netns: &Path,
    cgroup: &Path,
    targets_file: &Path,
    threads: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<()> {
    let targets = Arc::new(read_targets(targets_file)?);
    if targets.is_empty() {
        bail!("no targets");
    }
    enter_client(netns, cgroup)?;
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let targets = Arc::clone(&targets);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut rng = rand::rng();
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = &targets[rng.random_range(0..targets.len())];
                    let began = Instant::now();
                    if began >= window_end {
                        break;
                    }
                    let r = one_connection(t.dial);
                    let ended = Instant::now();
                    let counted = began >= window_start && ended <= window_end;
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
    stop.store(true, Ordering::Relaxed);
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a vector of at most millions"
        )]
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i]
    };
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let rate = all.len() as f64 / duration.as_secs_f64();
    println!(
        "{}",
        json!({
            "connections": all.len(),
            "errors": errors,
            "rate": rate,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::services;

    #[test]
    fn direct_targets_are_the_same_backends_addressed_directly() {
        let svcs = services(4);
        let via = service_targets(&svcs);
        let direct = endpoint_targets(&svcs);
        assert_eq!(via.len(), 4);
        assert_eq!(via[1].dial, "10.96.0.11:80".parse().expect("addr"));
        assert_eq!(direct.len(), 12);
        let mut backends: Vec<Ipv4Addr> = via.iter().flat_map(|t| t.endpoints.clone()).collect();
        let mut dialed: Vec<Ipv4Addr> = direct.iter().map(|t| *t.dial.ip()).collect();
        backends.sort();
        dialed.sort();
        assert_eq!(backends, dialed);
        assert!(
            direct
                .iter()
                .all(|t| t.dial.port() == ENDPOINT_PORT && t.endpoints == [*t.dial.ip()])
        );
    }

    #[test]
    fn targets_file_round_trips() {
        let targets = service_targets(&services(3));
        let text = targets_text(&targets);
        assert_eq!(
            text.lines().next(),
            Some("10.96.0.10:80 10.244.1.0 10.244.1.1 10.244.1.2")
        );
        assert_eq!(parse_targets(&text).expect("parse"), targets);
        let direct = endpoint_targets(&services(1));
        assert_eq!(
            parse_targets(&targets_text(&direct)).expect("parse"),
            direct
        );
    }
}
