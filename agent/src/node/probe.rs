//! Readiness probes (tcpSocket, httpGet, exec), run inside the Pod's network namespace the way
//! the kubelet runs them against the Pod IP, with the kubelet's defaults for timing and
//! thresholds.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::process::{self, ProcessSpec};
use crate::netns;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    Tcp {
        port: u16,
    },
    Http {
        port: u16,
        path: String,
        host: Option<String>,
    },
    Exec {
        argv: Vec<String>,
    },
}

/// A probe with its timing, defaults filled in (Probe's API defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// Resolves a port that may name one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The plan of a probe; `None` for probes the runtime cannot run (gRPC, unresolvable ports).
pub fn plan(probe: &Probe, container: &Container) -> Option<ProbePlan> {
    let action = if let Some(tcp) = &probe.tcp_socket {
        ProbeAction::Tcp {
            port: resolve_port(&tcp.port, container)?,
        }
    } else if let Some(http) = &probe.http_get {
        ProbeAction::Http {
            port: resolve_port(&http.port, container)?,
            path: http
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".to_owned()),
            host: http.host.clone().filter(|h| !h.is_empty()),
        }
    } else if let Some(exec) = &probe.exec {
        ProbeAction::Exec {
            argv: exec.command.clone().filter(|c| !c.is_empty())?,
        }
    } else {
        return None;
    };
    let secs = |v: Option<i32>, default: u64| {
        Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
    };
    let count = |v: Option<i32>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    Some(ProbePlan {
        action,
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    })
}

/// Where a probe runs.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub pod_ip: Ipv4Addr,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// The container's process: an exec probe runs in its mount and UTS namespaces (its own
    /// root, its volumes), as the kubelet's runs inside the container.
    pub container_pid: Option<i32>,
}

/// Runs the probe once; `true` on success.
pub async fn run_once(action: &ProbeAction, target: &ProbeTarget, timeout: Duration) -> bool {
    match action {
        ProbeAction::Tcp { port } => {
            let addr = SocketAddr::from((target.pod_ip, *port));
            let ns = target.netns.clone();
            tokio::task::spawn_blocking(move || {
                netns::in_netns(Some(&ns), || {
                    TcpStream::connect_timeout(&addr, timeout).is_ok()
                })
                .unwrap_or(false)
            })
            .await
            .unwrap_or(false)
        }
        ProbeAction::Http { port, path, host } => {
            let addr = SocketAddr::from((target.pod_ip, *port));
            let host = host.clone().unwrap_or_else(|| addr.to_string());
            let (ns, path) = (target.netns.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                netns::in_netns(Some(&ns), || http_get(addr, &host, &path, timeout))
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false)
        }
        ProbeAction::Exec { argv } => {
            let spec = ProcessSpec {
                logger: None,
                argv: argv.clone(),
                env: target.env.clone(),
                cwd: target.cwd.clone(),
                log: PathBuf::from("/dev/null"),
                netns: target.netns.clone(),
                cgroup: target.cgroup.clone(),
                extra_cgroups: Vec::new(),
                rootfs: None,
                enter_ns_of: target.container_pid,
            };
            let Ok(mut child) = process::spawn(&spec) else {
                return false;
            };
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) => status.success(),
                Ok(Err(_)) => false,
                Err(_) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    false
                }
            }
        }
    }
}

/// An HTTP/1.0 GET; success is a status in 200..400 (the kubelet's rule).
fn http_get(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: kube-probe/keelson\r\nAccept: */*\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    parse_status(&head[..n]).is_some_and(|code| (200..400).contains(&code))
}

/// The status code of an HTTP status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Success/failure counting with thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeState {
    pub ready: bool,
    successes: u32,
    failures: u32,
}

impl ProbeState {
    /// The state a liveness probe starts in: alive until proven otherwise.
    pub fn alive() -> Self {
        Self {
            ready: true,
            successes: 0,
            failures: 0,
        }
    }

    /// Records a result; returns whether readiness changed.
    pub fn record(&mut self, ok: bool, plan: &ProbePlan) -> bool {
        let before = self.ready;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= plan.success_threshold {
                self.ready = true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= plan.failure_threshold {
                self.ready = false;
            }
        }
        before != self.ready
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn container() -> Container {
        serde_json::from_value(json!({"name":"c","ports":[{"name":"http","containerPort":8080}]}))
            .expect("container")
    }

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).expect("probe")
    }

    #[test]
    fn plans_resolve_named_ports_and_fill_defaults() {
        let p = plan(&probe(json!({"httpGet":{"port":"http"}})), &container()).expect("plan");
        assert_eq!(
            p.action,
            ProbeAction::Http {
                port: 8080,
                path: "/".into(),
                host: None
            }
        );
        assert_eq!(p.period, Duration::from_secs(10));
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!((p.success_threshold, p.failure_threshold), (1, 3));
        let p = plan(
            &probe(json!({"tcpSocket":{"port":53},"periodSeconds":2,"failureThreshold":1})),
            &container(),
        )
        .expect("plan");
        assert_eq!(p.action, ProbeAction::Tcp { port: 53 });
        assert_eq!(p.period, Duration::from_secs(2));
        assert_eq!(p.failure_threshold, 1);
        assert!(plan(&probe(json!({"tcpSocket":{"port":"nope"}})), &container()).is_none());
        assert!(plan(&probe(json!({"grpc":{"port":9000}})), &container()).is_none());
        let p = plan(&probe(json!({"exec":{"command":["true"]}})), &container()).expect("plan");
        assert_eq!(
            p.action,
            ProbeAction::Exec {
                argv: vec!["true".into()]
            }
        );
    }

    #[test]
    fn thresholds() {
        let p = ProbePlan {
            action: ProbeAction::Tcp { port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 2,
        };
        let mut s = ProbeState::default();
        assert!(!s.record(true, &p));
        assert!(s.record(true, &p));
        assert!(s.ready);
        assert!(!s.record(false, &p));
        assert!(s.ready);
        assert!(s.record(false, &p));
        assert!(!s.ready);
    }

    #[test]
    fn liveness_starts_alive_and_dies_after_the_failure_threshold() {
        let p = ProbePlan {
            action: ProbeAction::Tcp { port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        };
        let mut s = ProbeState::alive();
        assert!(s.ready);
        assert!(!s.record(false, &p));
        assert!(!s.record(false, &p));
        assert!(s.record(false, &p));
        assert!(!s.ready);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500 x"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0"), None);
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_a_local_listener() {
        let name = format!("kls-t-probe-{}", std::process::id());
        let ns = netns::create_named(&name).expect("netns");
        struct Guard(String);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = netns::delete_named(&self.0);
            }
        }
        let _g = Guard(name);
        let listener = netns::in_netns(Some(&ns), || std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("enter")
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let mut s = s;
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok");
            }
        });
        let target = ProbeTarget {
            pod_ip: Ipv4Addr::LOCALHOST,
            netns: ns.clone(),
            cgroup: PathBuf::new(),
            cwd: PathBuf::from("/"),
            env: vec![],
            container_pid: None,
        };
        let t = Duration::from_secs(1);
        assert!(run_once(&ProbeAction::Tcp { port }, &target, t).await);
        assert!(
            run_once(
                &ProbeAction::Http {
                    port,
                    path: "/".into(),
                    host: None
                },
                &target,
                t
            )
            .await
        );
        // Nothing listens on the neighbouring port inside the namespace.
        assert!(
            !run_once(
                &ProbeAction::Tcp {
                    port: port.wrapping_add(1)
                },
                &target,
                t
            )
            .await
        );
    }
}
