use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::json;

use super::*;

fn service(ns: &str, name: &str, type_: &str, etp: Option<&str>, hc: Option<i32>) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "type": type_,
            "externalTrafficPolicy": etp,
            "healthCheckNodePort": hc,
            "ports": [{"port": 80, "protocol": "TCP"}],
        },
    }))
    .expect("valid Service")
}

/// An EndpointSlice of `svc` with endpoints `(address, node, ready)`.
fn slice(ns: &str, name: &str, svc: &str, eps: &[(&str, &str, Option<bool>)]) -> EndpointSlice {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(addr, node, ready)| {
            json!({
                "addresses": [addr],
                "nodeName": node,
                "conditions": {"ready": ready},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "namespace": ns,
            "name": name,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": 8080, "protocol": "TCP", "name": ""}],
    }))
    .expect("valid EndpointSlice")
}

fn entry(ns: &str, name: &str, n: usize) -> HealthEntry {
    HealthEntry {
        namespace: ns.into(),
        name: name.into(),
        local_endpoints: n,
    }
}

#[test]
fn desired_counts_ready_local_endpoints_across_slices() {
    let svcs = [service(
        "shop",
        "web",
        "LoadBalancer",
        Some("Local"),
        Some(31000),
    )];
    let slices = [
        slice(
            "shop",
            "web-a",
            "web",
            &[
                ("10.244.1.2", "n1", Some(true)),
                ("10.244.1.3", "n1", None), // unset ready counts as ready
                ("10.244.1.4", "n1", Some(false)),
                ("10.244.2.2", "n2", Some(true)),
            ],
        ),
        // The same endpoint in a second slice (a slice split in progress) counts once.
        slice(
            "shop",
            "web-b",
            "web",
            &[
                ("10.244.1.2", "n1", Some(true)),
                ("10.244.1.5", "n1", Some(true)),
            ],
        ),
        // Another namespace's Service of the same name does not count.
        slice("other", "web-c", "web", &[("10.244.1.9", "n1", Some(true))]),
    ];
    let d = desired(&svcs, &slices, "n1");
    assert_eq!(d, BTreeMap::from([(31000, entry("shop", "web", 3))]));
    let d2 = desired(&svcs, &slices, "n2");
    assert_eq!(d2, BTreeMap::from([(31000, entry("shop", "web", 1))]));
    let d3 = desired(&svcs, &slices, "n3");
    assert_eq!(d3, BTreeMap::from([(31000, entry("shop", "web", 0))]));
}

#[test]
fn desired_only_loadbalancers_with_local_policy_and_a_port() {
    let svcs = [
        service("a", "cluster", "LoadBalancer", Some("Cluster"), Some(31001)),
        service("a", "unset", "LoadBalancer", None, Some(31002)),
        service("a", "nodeport", "NodePort", Some("Local"), Some(31003)),
        service("a", "noport", "LoadBalancer", Some("Local"), None),
        service("a", "badport", "LoadBalancer", Some("Local"), Some(70000)),
        service("a", "lb", "LoadBalancer", Some("Local"), Some(31004)),
    ];
    let slices = [slice(
        "a",
        "lb-1",
        "lb",
        &[("10.244.1.2", "n1", Some(true))],
    )];
    let d = desired(&svcs, &slices, "n1");
    assert_eq!(d, BTreeMap::from([(31004, entry("a", "lb", 1))]));
}

#[test]
fn desired_without_slices_reports_zero_and_resolves_port_clashes() {
    let svcs = [
        service("b", "second", "LoadBalancer", Some("Local"), Some(31005)),
        service("a", "first", "LoadBalancer", Some("Local"), Some(31005)),
    ];
    let d = desired(&svcs, &[], "n1");
    assert_eq!(d, BTreeMap::from([(31005, entry("a", "first", 0))]));
    // An empty node name (not yet known) matches no endpoint.
    let slices = [slice("a", "f", "first", &[("10.244.1.2", "", Some(true))])];
    assert_eq!(desired(&svcs, &slices, "")[&31005].local_endpoints, 0);
}

/// A network namespace of the test's own, deleted on drop.
struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kls-t-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = crate::netns::create_named(&name).expect("create test netns");
        TestNetns { name, path }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = crate::netns::delete_named(&self.name);
    }
}

struct Answer {
    status: u16,
    head: String,
    body: serde_json::Value,
}

/// One HTTP request from inside `netns` to its loopback.
fn get(netns: &Path, port: u16) -> std::io::Result<Answer> {
    in_netns(Some(netns), || {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /any/path HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no header end in {raw:?}")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
        let body = serde_json::from_str(body).map_err(std::io::Error::other)?;
        Ok(Answer {
            status,
            head: head.to_ascii_lowercase(),
            body,
        })
    })
    .map_err(std::io::Error::other)?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_in_the_node_namespace_updates_and_closes() {
    let ns = TestNetns::new("hc");
    let port = 31_500;
    let mut servers = HealthServers::new(Handle::current(), Some(&ns.path));

    let errors = servers.sync(&BTreeMap::from([(port, entry("shop", "web", 0))]));
    assert!(errors.is_empty(), "{errors:?}");
    let path = ns.path.clone();
    let a = tokio::task::spawn_blocking(move || get(&path, port))
        .await
        .expect("client thread")
        .expect("answer with no local endpoint");
    assert_eq!(a.status, 503);
    assert!(
        a.head.contains("content-type: application/json"),
        "{}",
        a.head
    );
    assert!(
        a.head.contains("x-content-type-options: nosniff"),
        "{}",
        a.head
    );
    assert_eq!(
        a.body,
        json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 0, "serviceProxyHealthy": true})
    );

    // The port is not open in the agent's own namespace: the listener lives in the node's.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    // An update reaches the running server without rebinding.
    let errors = servers.sync(&BTreeMap::from([(port, entry("shop", "web", 2))]));
    assert!(errors.is_empty(), "{errors:?}");
    let path = ns.path.clone();
    let a = tokio::task::spawn_blocking(move || get(&path, port))
        .await
        .expect("client thread")
        .expect("answer with local endpoints");
    assert_eq!(a.status, 200);
    assert_eq!(a.body["localEndpoints"], 2);

    // A second server on a port already taken fails for that port only.
    let blocker = in_netns(Some(&ns.path), || {
        std::net::TcpListener::bind(("0.0.0.0", 31_501))
    })
    .expect("enter netns")
    .expect("bind blocker");
    let errors = servers.sync(&BTreeMap::from([
        (port, entry("shop", "web", 2)),
        (31_501, entry("shop", "api", 1)),
    ]));
    assert!(matches!(
        errors.get(&31_501),
        Some(HealthError::Bind { port: 31_501, .. })
    ));
    assert_eq!(servers.ports().collect::<Vec<_>>(), vec![port]);
    drop(blocker);

    // Removal closes the port.
    let errors = servers.sync(&BTreeMap::new());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(servers.ports().count(), 0);
    let path = ns.path.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = in_netns(Some(&path), || TcpStream::connect(("127.0.0.1", port)))
                .expect("enter netns");
            match r {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
                _ if Instant::now() > deadline => return false,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
    .await
    .expect("client thread");
    assert!(refused, "port {port} still open after removal");
}

#[tokio::test]
async fn missing_namespace_is_an_error_per_port() {
    let mut servers = HealthServers::new(
        Handle::current(),
        Some(Path::new("/run/netns/kls-t-hc-does-not-exist")),
    );
    let errors = servers.sync(&BTreeMap::from([(31_502, entry("a", "b", 1))]));
    assert!(matches!(errors.get(&31_502), Some(HealthError::Netns(_))));
    assert_eq!(servers.ports().count(), 0);
}
