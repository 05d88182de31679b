//! Cluster DNS end to end on a 2-node `keelson up` cluster: the `kube-dns` Service at
//! 10.96.0.10 served by the `keelson-dns` Pods (one per node), Pods resolving Services by
//! name, a headless Service's endpoints, an SRV record, NXDOMAIN, and lookups that keep
//! working while the agents of the DNS Pods' nodes are killed with SIGKILL and restarted.

mod support;

use std::time::Duration;

use support::{LocalCluster, output_text, wait_for};

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 2
  selector:
    matchLabels: {app: hello}
  template:
    metadata:
      labels: {app: hello}
    spec:
      containers:
        - name: hello
          image: example.invalid/hello:1
          command: ["/usr/bin/python3", "-m", "http.server", "8080"]
          readinessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector: {app: hello}
  ports:
    - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: hello-headless
spec:
  clusterIP: None
  selector: {app: hello}
  ports:
    - {name: http, port: 8080}
"#;

/// One answer per line, each prefixed with what was asked; `dig` straight at the Service
/// address, `getent` through the Pod's resolv.conf (search path and ndots).
const CHECKS: &str = r#"
q() { dig +time=2 +tries=2 @10.96.0.10 "$@"; }
echo "A $(q +short hello.default.svc.cluster.local A)"
echo "HEADLESS $(q +short hello-headless.default.svc.cluster.local A | sort | tr '\n' ' ')"
echo "SRV $(q +short _http._tcp.hello.default.svc.cluster.local SRV)"
echo "NX $(q nope.default.svc.cluster.local A | grep -o 'status: [A-Z]*')"
echo "KUBEDNS $(q +short kube-dns.kube-system.svc.cluster.local A)"
echo "GETENT $(getent hosts hello.default.svc.cluster.local | cut -d' ' -f1)"
echo "SHORT $(getent hosts hello | cut -d' ' -f1)"
echo "RESOLV $(grep -c '^nameserver 10.96.0.10' /etc/resolv.conf)"
"#;

/// For `SECONDS_TOTAL` seconds a lookup every 50 ms; prints each failure and a tally.
const LOOP: &str = r#"
ok=0; fail=0
end=$(( $(date +%s) + SECONDS_TOTAL ))
while [ "$(date +%s)" -lt "$end" ]; do
  out=$(dig +short +time=1 +tries=1 @10.96.0.10 hello.default.svc.cluster.local A)
  if [ "$out" = "$VIP" ]; then ok=$((ok+1)); else fail=$((fail+1)); echo "fail: $out"; fi
  sleep 0.05
done
echo "result ok=$ok fail=$fail"
"#;

fn pod(name: &str, node: &str, script: &str, env: &[(&str, &str)]) -> String {
    let env: String = env
        .iter()
        .map(|(k, v)| format!("        - {{name: {k}, value: \"{v}\"}}\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
    - name: c
      image: example.invalid/client:1
      env:
        - {{name: PATH, value: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
{env}      command: ["/bin/sh", "-c", "{}"]
"#,
        support::yaml_quoted(script)
    )
}

fn phase(c: &LocalCluster, pod: &str) -> String {
    c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
        .stdout
        .iter()
        .map(|&b| b as char)
        .collect()
}

fn finished_logs(c: &LocalCluster, pod: &str, timeout: Duration) -> String {
    wait_for(&format!("{pod} to finish"), timeout, || {
        matches!(phase(c, pod).as_str(), "Succeeded" | "Failed").then_some(())
    });
    c.kubectl_ok(&["logs", pod])
}

fn line<'a>(logs: &'a str, key: &str) -> &'a str {
    logs.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key} "))
                .or((l == key).then_some(""))
        })
        .unwrap_or_else(|| panic!("no {key} line in:\n{logs}"))
        .trim()
}

#[test]
fn pods_resolve_services_through_the_cluster_dns() {
    let c = LocalCluster::up("kdns", 2);

    // What `keelson up` made: the Service at the tenth address, two DNS Pods on two nodes.
    let ip = c.kubectl_ok(&[
        "get",
        "svc",
        "kube-dns",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(ip.trim(), "10.96.0.10");
    let nodes = c.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "k8s-app=kube-dns",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ]);
    let mut nodes: Vec<&str> = nodes.lines().filter(|l| !l.is_empty()).collect();
    nodes.sort();
    assert_eq!(nodes, vec![c.node(1), c.node(2)], "one DNS Pod per node");

    c.apply_ok("app.yaml", APP);
    c.wait_ready_replicas("hello", 2, Duration::from_secs(120));
    let vip = c.kubectl_ok(&["get", "svc", "hello", "-o", "jsonpath={.spec.clusterIP}"]);
    let vip = vip.trim().to_owned();
    let mut pod_ips: Vec<String> = c.pods("hello").values().map(|p| p.ip.clone()).collect();
    pod_ips.sort();

    for i in 1..=2 {
        let name = format!("checks-{i}");
        c.apply_ok(
            &format!("{name}.yaml"),
            &pod(&name, &c.node(i), CHECKS, &[]),
        );
        let logs = finished_logs(&c, &name, Duration::from_secs(60));
        println!("{name}:\n{logs}");
        assert_eq!(line(&logs, "A"), vip, "{logs}");
        let mut headless: Vec<&str> = line(&logs, "HEADLESS").split_whitespace().collect();
        headless.sort();
        assert_eq!(headless, pod_ips, "{logs}");
        assert_eq!(
            line(&logs, "SRV"),
            "0 100 80 hello.default.svc.cluster.local.",
            "{logs}"
        );
        assert_eq!(line(&logs, "NX"), "status: NXDOMAIN", "{logs}");
        assert_eq!(line(&logs, "KUBEDNS"), "10.96.0.10", "{logs}");
        // Through the Pod's own resolv.conf: the search path and ndots:5 of ClusterFirst.
        assert_eq!(line(&logs, "RESOLV"), "1", "{logs}");
        assert_eq!(line(&logs, "GETENT"), vip, "{logs}");
        assert_eq!(line(&logs, "SHORT"), vip, "{logs}");
    }

    // Lookups keep working while the agents of both DNS Pods' nodes are killed and restarted.
    let script = LOOP.replace("SECONDS_TOTAL", "16");
    c.apply_ok(
        "loop.yaml",
        &pod("loop", &c.node(1), &script, &[("VIP", &vip)]),
    );
    wait_for("the lookup loop to run", Duration::from_secs(60), || {
        (phase(&c, "loop") == "Running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    for i in [1, 2, 1] {
        c.restart_agent(i);
        std::thread::sleep(Duration::from_secs(2));
    }
    let logs = finished_logs(&c, "loop", Duration::from_secs(60));
    let result = line(&logs, "result");
    println!("loop: {result}");
    let count = |key: &str| -> u32 {
        result
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {result:?}"))
    };
    assert_eq!(
        count("fail"),
        0,
        "lookups failed across agent restarts:\n{logs}"
    );
    assert!(
        count("ok") > 100,
        "too few lookups to mean anything: {result}"
    );

    // The DNS Pods were never restarted: they outlived the agents.
    let restarts = c.kubectl(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "k8s-app=kube-dns",
        "-o",
        "jsonpath={.items[*].status.containerStatuses[*].restartCount}",
    ]);
    let text = String::from_utf8_lossy(&restarts.stdout);
    assert!(
        text.split_whitespace().all(|n| n == "0"),
        "DNS Pods restarted: {}",
        output_text(&restarts)
    );
}
