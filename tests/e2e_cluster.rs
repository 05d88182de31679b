//! A standalone cluster end to end: `keelson up --nodes 2`, the real kubectl applying a
//! Deployment and Services, Service traffic over TCP and UDP through the eBPF socket load
//! balancer from a Pod, the API server reached from Pods through the `kubernetes` Service,
//! scaling, deletion, refused bad input, and `keelson down` leaving nothing behind.

mod support;

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use support::{LocalCluster, PROBE, output_text, parse_probe, processes_with};

fn manifest(marker: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: example.invalid/web:1
          command: ["/usr/bin/python3", "-c"]
          args:
            - |
              # {marker}
              import http.server, os
              class H(http.server.BaseHTTPRequestHandler):
                  def do_GET(self):
                      body = (os.environ["HOSTNAME"] + "\n").encode()
                      self.send_response(200)
                      self.send_header("Content-Length", str(len(body)))
                      self.end_headers()
                      self.wfile.write(body)
                  def log_message(self, *a):
                      pass
              http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe:
            tcpSocket: {{port: 8080}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http, protocol: TCP}}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 3
  selector:
    matchLabels: {{app: echo}}
  template:
    metadata:
      labels: {{app: echo}}
    spec:
      containers:
        - name: echo
          image: example.invalid/echo:1
          command: ["/usr/bin/python3", "-c"]
          args:
            - |
              # {marker}
              import os, socket
              s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
              s.bind(("0.0.0.0", 9000))
              while True:
                  data, peer = s.recvfrom(4096)
                  s.sendto((os.environ["HOSTNAME"] + "\n").encode(), peer)
          ports: [{{containerPort: 9000, protocol: UDP}}]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {{app: echo}}
  ports: [{{port: 53, targetPort: 9000, protocol: UDP}}]
"#
    )
}

fn client_pod(node: &str, web: &str, echo: &str) -> String {
    let probe = escape_yaml_double(PROBE);
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
    - name: tcp
      image: example.invalid/client:1
      command: ["/usr/bin/python3", "-c", "{probe}", "tcp", "{web}", "80", "100"]
    - name: udp
      image: example.invalid/client:1
      command: ["/usr/bin/python3", "-c", "{probe}", "udp", "{echo}", "53", "100"]
"#
    )
}

/// The probe as one YAML double-quoted scalar.
fn escape_yaml_double(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Asks the API server for `/version` through `KUBERNETES_SERVICE_HOST:PORT`, verifying its
/// certificate against the cluster CA (so the ClusterIP is one of its names), and prints the
/// environment's `KUBERNETES_*` variables as one JSON line.
const VERSION_PROBE: &str = r#"
import http.client, json, os, ssl, sys
host, port = os.environ["KUBERNETES_SERVICE_HOST"], int(os.environ["KUBERNETES_SERVICE_PORT"])
ctx = ssl.create_default_context(cafile=sys.argv[1])
c = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
c.request("GET", "/version")
r = c.getresponse()
body = json.loads(r.read())
env = {k: v for k, v in os.environ.items() if k.startswith("KUBERNETES_")}
print(json.dumps({"status": r.status, "version": body.get("gitVersion"), "env": env}))
"#;

/// The `kubernetes` Service and EndpointSlice as kubectl shows them, and a Pod on each node
/// reaching the API server through the Service: `/version` over TLS verified with the cluster
/// CA, and the real kubectl run inside the Pod against `$KUBERNETES_SERVICE_HOST`.
fn api_server_through_the_kubernetes_service(c: &LocalCluster) {
    let svc = c.kubectl_ok(&["get", "svc", "kubernetes"]);
    println!("{svc}");
    assert!(
        svc.contains("10.96.0.1") && svc.contains("443/TCP"),
        "{svc}"
    );
    let slice = c.kubectl_ok(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "jsonpath={.endpoints[0].addresses[0]}:{.ports[0].port}",
    ]);
    assert_eq!(slice.trim(), "10.250.0.1:6443");

    let server_dir = c.data_dir.path().join("server");
    let ca = server_dir.join("ca.crt").to_string_lossy().into_owned();
    let token = server_dir
        .join("admin.token")
        .to_string_lossy()
        .into_owned();
    let kubectl = support::kubectl().to_string_lossy().into_owned();
    let probe = escape_yaml_double(VERSION_PROBE);
    let pods: Vec<String> = (1..=2).map(|i| format!("apicheck-{i}")).collect();
    for (i, pod) in (1..=2).zip(&pods) {
        let node = c.node(i);
        let yaml = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {pod}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
    - name: version
      image: example.invalid/client:1
      command: ["/usr/bin/python3", "-c", "{probe}", "{ca}"]
    - name: kubectl
      image: example.invalid/client:1
      env: [{{name: HOME, value: /tmp}}]
      command:
        - /bin/sh
        - -c
        - exec {kubectl} --kubeconfig=/dev/null --server=https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT --certificate-authority={ca} --token=$(cat {token}) get svc kubernetes -o jsonpath={{.spec.clusterIP}}
"#
        );
        c.apply_ok(&format!("{pod}.yaml"), &yaml);
    }
    for pod in &pods {
        c.kubectl_ok(&[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("pod/{pod}"),
            "--timeout=60s",
        ]);
        let line = c.kubectl_ok(&["logs", pod, "-c", "version"]);
        println!("{pod}: {}", line.trim());
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("probe JSON");
        assert_eq!(v["status"], 200, "{v}");
        assert!(
            v["version"].as_str().is_some_and(|s| s.starts_with('v')),
            "{v}"
        );
        assert_eq!(v["env"]["KUBERNETES_SERVICE_HOST"], "10.96.0.1", "{v}");
        assert_eq!(v["env"]["KUBERNETES_SERVICE_PORT"], "443", "{v}");
        assert_eq!(v["env"]["KUBERNETES_PORT"], "tcp://10.96.0.1:443", "{v}");
        let out = c.kubectl_ok(&["logs", pod, "-c", "kubectl"]);
        assert_eq!(out.trim(), "10.96.0.1", "kubectl in {pod}");
    }
    let mut args = vec!["delete", "pod", "--wait=true"];
    args.extend(pods.iter().map(String::as_str));
    c.kubectl_ok(&args);
}

/// `kubectl wait -l` fails when nothing matches yet, so first wait for the controllers to have
/// created the Pods.
fn wait_pods_exist(c: &LocalCluster, app: &str, n: usize) {
    let start = Instant::now();
    while c.pods_by_node(app).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{app}: fewer than {n} Pods after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test file");
    p.to_string_lossy().into_owned()
}

#[test]
fn standalone_cluster_end_to_end() {
    let name = format!("e2e{}", std::process::id());
    let marker = format!("keelson-e2e-marker-{name}");
    let c = LocalCluster::up(&name, 2);
    let dir = c.data_dir.path();

    // Apply with kubectl's default (strict) validation.
    let m = write(dir, "app.yaml", &manifest(&marker));
    c.kubectl_ok(&["apply", "-f", &m]);
    for app in ["web", "echo"] {
        wait_pods_exist(&c, app, 3);
        c.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            &format!("app={app}"),
            "--timeout=120s",
        ]);
    }
    let table = c.kubectl_ok(&["get", "nodes,pods,svc,endpointslices", "-A", "-o", "wide"]);
    println!("{table}");
    for i in 1..=2 {
        let node = c.node(i);
        assert!(
            table
                .lines()
                .any(|l| l.contains(&format!("node/{node} ")) && l.contains(" Ready ")),
            "node {node} not Ready in:\n{table}"
        );
    }
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains("pod/web-") && l.contains("Running"))
            .count(),
        3,
        "{table}"
    );

    let web_vip = c.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let echo_vip = c.kubectl_ok(&["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(web_vip.starts_with("10.96."), "web ClusterIP {web_vip:?}");

    // From a Pod on node 1: 100 TCP requests and 100 UDP datagrams, each on a new socket.
    let client = write(
        dir,
        "client.yaml",
        &client_pod(&c.node(1), &web_vip, &echo_vip),
    );
    c.kubectl_ok(&["apply", "-f", &client]);
    c.kubectl_ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/client",
        "--timeout=120s",
    ]);
    for (container, app) in [("tcp", "web"), ("udp", "echo")] {
        let result = parse_probe(&c.kubectl_ok(&["logs", "client", "-c", container]));
        let pods = c.pods_by_node(app);
        assert!(
            result.errors.is_empty(),
            "{container}: errors {:?}",
            result.errors
        );
        assert_eq!(
            result.answers.values().sum::<u32>(),
            100,
            "{container}: {result:?}"
        );
        let answered: BTreeSet<&String> = result.answers.keys().collect();
        assert_eq!(
            answered,
            pods.keys().collect(),
            "{container}: not every backend answered"
        );
        let nodes: BTreeSet<&String> = pods.values().collect();
        assert_eq!(
            nodes.len(),
            2,
            "{app} backends should run on both nodes: {pods:?}"
        );
    }

    // Scale to one replica: within 2 s only that one answers.
    let probe = write(dir, "probe.py", PROBE);
    c.kubectl_ok(&["scale", "deployment/web", "--replicas=1"]);
    let scaled = Instant::now();
    let python = Path::new("/usr/bin/python3");
    loop {
        let out = c.run_on_node(1, python, &[&probe, "tcp", &web_vip, "80", "20"]);
        assert!(out.status.success(), "probe failed:\n{}", output_text(&out));
        let r = parse_probe(&String::from_utf8_lossy(&out.stdout));
        if r.answers.len() == 1 && r.errors.is_empty() {
            break;
        }
        assert!(
            scaled.elapsed() < Duration::from_secs(2),
            "still {r:?} 2 s after scaling to 1"
        );
    }
    println!(
        "one backend answering {:?} after the scale",
        scaled.elapsed()
    );
    let remaining = c.pods_by_node("web");
    let out = c.run_on_node(1, python, &[&probe, "tcp", &web_vip, "80", "20"]);
    let r = parse_probe(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        r.answers.keys().collect::<BTreeSet<_>>(),
        remaining.keys().collect(),
        "{r:?}"
    );

    api_server_through_the_kubernetes_service(&c);

    // Delete: the Pods, their processes and their map entries go.
    c.kubectl_ok(&["delete", "-f", &m]);
    c.kubectl_ok(&["delete", "pod", "client"]);
    let deleted = Instant::now();
    loop {
        let pods = c.kubectl_ok(&["get", "pods", "-o", "name"]);
        if pods.trim().is_empty() && processes_with(&marker).is_empty() {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(60),
            "left after delete: {pods} {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 1..=2 {
        let out = std::process::Command::new(support::keelson())
            .args(["bpf", "dump", "services", "--json", "--pin-dir"])
            .arg(c.pin_dir(i))
            .output()
            .expect("keelson bpf dump");
        assert!(out.status.success(), "{}", output_text(&out));
        let dump = String::from_utf8_lossy(&out.stdout);
        for vip in [&web_vip, &echo_vip] {
            assert!(
                !dump.contains(vip.as_str()),
                "{vip} still in the services map of node {i}: {dump}"
            );
        }
    }

    // Bad input is refused with the field named, and changes nothing.
    let bad_port = write(
        dir,
        "bad-port.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: badport}\nspec:\n  selector: {app: x}\n  ports: [{port: 70000}]\n",
    );
    let out = c.kubectl(&["apply", "-f", &bad_port]);
    assert!(
        !out.status.success(),
        "port 70000 accepted: {}",
        output_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.ports[0].port"),
        "{}",
        output_text(&out)
    );
    let bad_selector = write(
        dir,
        "bad-selector.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: badsel}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: x}]}\n",
    );
    let out = c.kubectl(&["apply", "-f", &bad_selector]);
    assert!(
        !out.status.success(),
        "mismatched selector accepted: {}",
        output_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.template.metadata.labels"),
        "{}",
        output_text(&out)
    );
    let malformed = write(dir, "malformed.json", "{\"apiVersion\": \"v1\", \"kind\": ");
    let out = c.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/services",
        "-f",
        &malformed,
    ]);
    assert!(
        !out.status.success(),
        "malformed JSON accepted: {}",
        output_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BadRequest"),
        "{}",
        output_text(&out)
    );
    let svcs = c.kubectl_ok(&["get", "svc", "-o", "name"]);
    assert!(!svcs.contains("badport"), "{svcs}");
    assert!(c.kubectl(&["get", "deployment", "badsel"]).status.code() != Some(0));

    // `keelson down` leaves nothing behind.
    let out = c.down();
    assert!(
        out.status.success(),
        "keelson down failed: {}",
        output_text(&out)
    );
    let netns = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("kls-{name}-")))
        .collect::<Vec<_>>();
    assert!(netns.is_empty(), "network namespaces left: {netns:?}");
    assert!(
        !Path::new("/sys/fs/cgroup/unified/keelson")
            .join(&name)
            .exists(),
        "cgroup left"
    );
    for i in 1..=2 {
        assert!(
            !c.pin_dir(i).exists(),
            "pins left in {}",
            c.pin_dir(i).display()
        );
    }
    assert!(processes_with(&marker).is_empty(), "processes left");
    assert!(
        processes_with(&format!("--node-name {name}-n")).is_empty(),
        "agents left"
    );
}
