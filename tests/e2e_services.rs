//! Service semantics on a running cluster, as kube-proxy users rely on them: named targetPorts
//! resolved per endpoint, Services without selectors fed by hand-written EndpointSlices,
//! headless Services, sessionAffinity ClientIP, and bad Service/EndpointSlice input refused
//! with the field named while the datapath stays as it was.

mod support;

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use support::{LocalCluster, PROBE, output_text, parse_probe, yaml_quoted};

/// Two Deployments whose containers name their port `web` but listen on different numbers;
/// one Service targets the name.
const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: blue
spec:
  replicas: 2
  selector:
    matchLabels: {app: named, color: blue}
  template:
    metadata:
      labels: {app: named, color: blue}
    spec:
      containers:
        - name: web
          image: example.invalid/web:1
          command: ["/usr/bin/python3", "-c", "SERVER", "8080"]
          ports: [{name: web, containerPort: 8080}]
          readinessProbe: {tcpSocket: {port: web}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: green
spec:
  replicas: 1
  selector:
    matchLabels: {app: named, color: green}
  template:
    metadata:
      labels: {app: named, color: green}
    spec:
      containers:
        - name: web
          image: example.invalid/web:1
          command: ["/usr/bin/python3", "-c", "SERVER", "8081"]
          ports: [{name: web, containerPort: 8081}]
          readinessProbe: {tcpSocket: {port: web}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata:
  name: named
spec:
  selector: {app: named}
  ports: [{port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata:
  name: sticky
spec:
  selector: {app: named}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata:
  name: headless
spec:
  clusterIP: None
  selector: {app: named}
  ports: [{port: 80, targetPort: web}]
"#;

const SERVER: &str = r#"import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ['HOSTNAME'] + '\n').encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('0.0.0.0', int(sys.argv[1])), H).serve_forever()
"#;

fn probe(c: &LocalCluster, dir: &Path, vip: &str, n: u32) -> support::ProbeResult {
    let p = dir.join("probe.py");
    std::fs::write(&p, PROBE).expect("probe");
    let out = c.run_on_node(
        1,
        Path::new("/usr/bin/python3"),
        &[&p.to_string_lossy(), "tcp", vip, "80", &n.to_string()],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    parse_probe(&String::from_utf8_lossy(&out.stdout))
}

fn dump_services(c: &LocalCluster) -> String {
    let out = std::process::Command::new(support::keelson())
        .args(["bpf", "dump", "services", "--json", "--pin-dir"])
        .arg(c.pin_dir(1))
        .output()
        .expect("bpf dump");
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn service_semantics() {
    let name = format!("svc{}", std::process::id());
    let c = LocalCluster::up(&name, 2);
    let dir = c.data_dir.path();
    let out = c.apply("app.yaml", &APP.replace("SERVER", &yaml_quoted(SERVER)));
    assert!(out.status.success(), "{}", output_text(&out));
    let start = Instant::now();
    while c.pods_by_node("named").len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Pods not created"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=named",
        "--timeout=120s",
    ]);
    let pods: BTreeSet<String> = c.pods_by_node("named").into_keys().collect();

    // A named targetPort resolves per endpoint: blue Pods on 8080, the green one on 8081.
    let vip = c.kubectl_ok(&["get", "svc", "named", "-o", "jsonpath={.spec.clusterIP}"]);
    let r = probe(&c, dir, &vip, 60);
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        r.answers.keys().cloned().collect::<BTreeSet<_>>(),
        pods,
        "{r:?}"
    );

    // sessionAffinity ClientIP: one client keeps its backend.
    let sticky = c.kubectl_ok(&["get", "svc", "sticky", "-o", "jsonpath={.spec.clusterIP}"]);
    let r = probe(&c, dir, &sticky, 30);
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.answers.len(), 1, "affinity broken: {r:?}");

    // Headless: no VIP, nothing in the datapath.
    let headless = c.kubectl_ok(&["get", "svc", "headless", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(headless, "None");

    // No selector: a hand-written EndpointSlice feeds the Service.
    let green_ip = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "color=green",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let manual = format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: manual
spec:
  ports: [{{name: http, port: 80, targetPort: 8081}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  labels: {{kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{{name: http, port: 8081, protocol: TCP}}]
endpoints:
  - addresses: ["{green_ip}"]
    conditions: {{ready: true}}
"#
    );
    let out = c.apply("manual.yaml", &manual);
    assert!(out.status.success(), "{}", output_text(&out));
    let manual_vip = c.kubectl_ok(&["get", "svc", "manual", "-o", "jsonpath={.spec.clusterIP}"]);
    let start = Instant::now();
    loop {
        let r = probe(&c, dir, &manual_vip, 5);
        if r.errors.is_empty() && r.answers.len() == 1 {
            let green = c.kubectl_ok(&[
                "get",
                "pods",
                "-l",
                "color=green",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ]);
            assert_eq!(r.answers.keys().next(), Some(&green), "{r:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "manual endpoints not served: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad input: refused with the field named, the datapath unchanged.
    let before = dump_services(&c);
    let cases = [
        (
            "dup.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: dup}\nspec:\n  selector: {app: x}\n  ports: [{name: a, port: 80}, {name: b, port: 80}]\n",
            "spec.ports[1]",
        ),
        (
            "range.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: range}\nspec:\n  type: NodePort\n  selector: {app: x}\n  ports: [{port: 80, nodePort: 20000}]\n",
            "spec.ports[0].nodePort",
        ),
        (
            "proto.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: proto}\nspec:\n  selector: {app: x}\n  ports: [{port: 80, protocol: FOO}]\n",
            "spec.ports[0].protocol",
        ),
        (
            "slice.yaml",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bad-slice\n  labels: {kubernetes.io/service-name: manual}\naddressType: IPv4\nendpoints: [{addresses: [\"999.1.1.1\"]}]\n",
            "endpoints[0].addresses[0]",
        ),
    ];
    for (file, yaml, field) in cases {
        let out = c.apply(file, yaml);
        assert!(
            !out.status.success(),
            "{file} accepted:\n{}",
            output_text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(field),
            "{file}: {field} not named:\n{}",
            output_text(&out)
        );
    }
    // A NodePort already taken is refused too.
    let taken = "apiVersion: v1\nkind: Service\nmetadata: {name: NAME}\nspec:\n  type: NodePort\n  selector: {app: x}\n  ports: [{port: 80, nodePort: 30080}]\n";
    let out = c.apply("np1.yaml", &taken.replace("NAME", "np1"));
    assert!(out.status.success(), "{}", output_text(&out));
    let out = c.apply("np2.yaml", &taken.replace("NAME", "np2"));
    assert!(
        !out.status.success(),
        "a taken nodePort was accepted:\n{}",
        output_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.ports[0].nodePort"),
        "{}",
        output_text(&out)
    );
    c.kubectl_ok(&["delete", "svc", "np1"]);
    // np1's own ClusterIP leaves the map once its deletion reaches the agent; the refused
    // objects must have left no trace at all.
    let start = Instant::now();
    while dump_services(&c) != before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "bad input changed the datapath:\nbefore {before}\nafter {}",
            dump_services(&c)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
