//! End to end: what a network engineer sees of NetworkPolicy on a 2-node `keelson up`
//! cluster — `keelson policy whatif` listing the flows a draft deny-all would stop, then,
//! once it is applied, `keelson flows --verdict dropped` naming both Pods of a refused
//! connection within a second and saying that no policy allows it; `keelson bpf dump
//! policy|ipcache|identities` with names; the policy metrics.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use support::{LocalCluster, output_text, wait_for, yaml_quoted};

const SERVER: &str = r#"import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"web\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// Connects to the server every 200 ms and prints each outcome.
const CLIENT: &str = r#"import socket, sys, time
while True:
    s = socket.socket(); s.settimeout(0.3)
    try:
        s.connect((sys.argv[1], 8080)); print("ok", flush=True)
    except Exception as e:
        print("fail", e, flush=True)
    s.close(); time.sleep(0.2)
"#;

const PODS: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: NODE1
  containers:
    - name: web
      image: example.invalid/web:1
      command: ["/usr/bin/python3", "-c", "SERVER"]
      ports: [{name: http, containerPort: 8080}]
"#;

const CLIENT_POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: shopper, namespace: default, labels: {app: shopper}}
spec:
  nodeName: NODE2
  containers:
    - name: c
      image: example.invalid/web:1
      command: ["/usr/bin/python3", "-c", "CLIENT", "WEB_IP"]
"#;

const DENY_ALL: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

fn keelson(c: &LocalCluster, args: &[&str]) -> String {
    let out = Command::new(support::keelson())
        .args(args)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .output()
        .expect("keelson");
    assert!(
        out.status.success(),
        "keelson {args:?}:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn flows_whatif_and_dumps_explain_a_default_deny() {
    let c = LocalCluster::up("klsflows", 2);
    c.apply_ok(
        "pods.yaml",
        &PODS
            .replace("NODE1", &c.node(1))
            .replace("SERVER", &yaml_quoted(SERVER)),
    );
    let web_ip = wait_for("the web Pod's address", Duration::from_secs(30), || {
        let ip = c.kubectl_ok(&[
            "-n",
            "shop",
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.status.podIP}",
        ]);
        (!ip.trim().is_empty()).then(|| ip.trim().to_owned())
    });
    c.apply_ok(
        "client.yaml",
        &CLIENT_POD
            .replace("NODE2", &c.node(2))
            .replace("CLIENT", &yaml_quoted(CLIENT))
            .replace("WEB_IP", &web_ip),
    );

    // Allowed flows are recorded on both nodes.
    let flows = wait_for("allowed flows to shop/web", Duration::from_secs(30), || {
        let text = keelson(&c, &["flows", "--pod", "shop/web", "--verdict", "allowed"]);
        text.contains("default/shopper").then_some(text)
    });
    assert!(
        flows.contains(&format!("shop/web ({web_ip}):8080")),
        "{flows}"
    );

    // A draft deny-all: whatif lists the conversation it would stop, before anything applies.
    let draft = c.data_dir.path().join("deny-all.yaml");
    std::fs::write(&draft, DENY_ALL).expect("draft");
    let whatif = keelson(
        &c,
        &[
            "policy",
            "whatif",
            "-f",
            &draft.to_string_lossy(),
            "--since",
            "10m",
        ],
    );
    println!("whatif:\n{whatif}");
    assert!(
        whatif.lines().any(|l| l.starts_with("ALLOWED -> DROPPED")
            && l.contains("default/shopper")
            && l.contains("shop/web:8080")),
        "{whatif}"
    );
    assert!(
        !c.kubectl_ok(&["get", "networkpolicy", "-A"])
            .contains("deny-all"),
        "whatif applies nothing"
    );

    // Applied: the next connection is refused and reported within a second.
    c.kubectl_ok(&["apply", "-f", &draft.to_string_lossy()]);
    let applied = Instant::now();
    let line = wait_for("the drop in keelson flows", Duration::from_secs(15), || {
        let text = keelson(&c, &["flows", "--verdict", "dropped", "--since", "1m"]);
        text.lines()
            .find(|l| l.contains("default/shopper") && l.contains("shop/web"))
            .map(str::to_owned)
    });
    println!("dropped flow after {:?}: {line}", applied.elapsed());
    assert!(line.contains("DROPPED ingress: no policy allows"), "{line}");
    // The drop is shown within a second of the attempt: the flow's own time stamp and the
    // moment it was first seen, measured with `--follow`.
    let mut follower = Command::new(support::keelson())
        .args([
            "flows",
            "--follow",
            "--verdict",
            "dropped",
            "--json",
            "--kubeconfig",
        ])
        .arg(&c.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("keelson flows --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let started = jiff::Timestamp::now();
    let mut reader = std::io::BufReader::new(stdout);
    let mut latency = None;
    for _ in 0..200 {
        let mut l = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut l).unwrap_or(0) == 0 {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(&l).expect("json flow");
        let time: jiff::Timestamp = v["time"].as_str().expect("time").parse().expect("ts");
        if time > started {
            latency = Some(jiff::Timestamp::now().duration_since(time));
            assert_eq!(v["source"]["pod"], "default/shopper", "{l}");
            assert_eq!(v["destination"]["pod"], "shop/web", "{l}");
            assert_eq!(v["reason"], "policy_denied", "{l}");
            break;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let latency = latency.expect("a new drop seen with --follow");
    println!("drop shown {latency:?} after the attempt");
    assert!(latency < jiff::SignedDuration::from_secs(1), "{latency:?}");

    // The maps, decoded with names.
    let pin = c.pin_dir(1);
    let dump = |what: &str| {
        let out = Command::new(support::keelson())
            .args(["bpf", "dump", what, "--pin-dir"])
            .arg(&pin)
            .output()
            .expect("dump");
        assert!(out.status.success(), "{}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let endpoints = dump("endpoints");
    assert!(endpoints.contains("[isolated: ingress]"), "{endpoints}");
    let ipcache = dump("ipcache");
    assert!(ipcache.contains(&format!("{web_ip}/32")), "{ipcache}");
    assert!(ipcache.contains("app=web"), "{ipcache}");
    let identities = dump("identities");
    assert!(identities.contains("app=shopper"), "{identities}");

    let metrics = wait_for("policy metrics", Duration::from_secs(10), || {
        let text = http_get(&agent_api(&c, 1), "/metrics")?;
        text.lines()
            .any(|l| {
                l.starts_with("keelson_policy_verdicts_total{")
                    && l.contains("verdict=\"dropped\"")
                    && !l.ends_with(" 0")
            })
            .then_some(text)
    });
    assert!(
        metrics.contains("keelson_map_entries{map=\"kls_policy\"}"),
        "{metrics}"
    );
}

/// The agent API address node `i` registered.
fn agent_api(c: &LocalCluster, i: u8) -> String {
    c.kubectl_ok(&[
        "get",
        "node",
        &c.node(i),
        "-o",
        "jsonpath={.metadata.annotations.keelson\\.io/agent-metrics}",
    ])
    .trim()
    .to_owned()
}

/// The body of `GET path` on `addr` (HTTP/1.0, so the server closes the connection).
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}
