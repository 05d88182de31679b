//! The agent restarts without hurting traffic: while a node's agent is killed with SIGKILL and
//! started again three times, steady loops of new connections to a ClusterIP (from the node,
//! through the socket hooks) and to a NodePort (from outside, through the uplink program and
//! its conntrack) lose nothing, and a long-lived TCP connection through each survives. The pinned maps and links
//! keep serving while no agent runs, and the restarted agent reconciles them with the API
//! without a flush (it still follows a scale-down afterwards).

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use support::{ExternalClient, LocalCluster, node_ip, output_text};

/// For `seconds`: a new TCP connection + HTTP request to `vip:<http port>` every 20 ms, and a
/// line echoed over one long-lived connection to `vip:<echo port>`; prints the tallies.
const STEADY: &str = r#"
import json, socket, sys, time
vip, http_port, echo_port, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
long = socket.create_connection((vip, echo_port), timeout=2)
lf = long.makefile("rwb")
stats = {"requests": 0, "failures": [], "echoes": 0, "echo_failures": []}
end = time.time() + seconds
while time.time() < end:
    try:
        s = socket.create_connection((vip, http_port), timeout=2)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        if b" 200 " not in data.split(b"\r\n", 1)[0]:
            raise Exception("bad answer %r" % data[:60])
        stats["requests"] += 1
    except Exception as e:
        stats["failures"].append(str(e))
    try:
        lf.write(b"ping %d\n" % stats["echoes"])
        lf.flush()
        line = lf.readline()
        if not line.startswith(b"ping"):
            raise Exception("echo %r" % line)
        stats["echoes"] += 1
    except Exception as e:
        stats["echo_failures"].append(str(e))
    time.sleep(0.02)
print(json.dumps(stats))
"#;

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: svc
spec:
  replicas: 3
  selector:
    matchLabels: {app: svc}
  template:
    metadata:
      labels: {app: svc}
    spec:
      containers:
        - name: svc
          image: example.invalid/svc:1
          command: ["/usr/bin/python3", "-c"]
          args:
            - |
              import http.server, os, socketserver, threading
              class H(http.server.BaseHTTPRequestHandler):
                  def do_GET(self):
                      body = (os.environ["HOSTNAME"] + "\n").encode()
                      self.send_response(200)
                      self.send_header("Content-Length", str(len(body)))
                      self.end_headers()
                      self.wfile.write(body)
                  def log_message(self, *a):
                      pass
              class Echo(socketserver.StreamRequestHandler):
                  def handle(self):
                      for line in self.rfile:
                          self.wfile.write(line)
              socketserver.ThreadingTCPServer.allow_reuse_address = True
              echo = socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Echo)
              threading.Thread(target=echo.serve_forever, daemon=True).start()
              http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
          readinessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: svc
spec:
  type: NodePort
  selector: {app: svc}
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: echo, port: 7000, targetPort: 7000}
"#;

#[derive(Debug, serde::Deserialize)]
struct Steady {
    requests: u32,
    failures: Vec<String>,
    echoes: u32,
    echo_failures: Vec<String>,
}

#[test]
fn agent_restarts_keep_every_connection() {
    let name = format!("rst{}", std::process::id());
    let c = LocalCluster::up(&name, 1);
    let dir = c.data_dir.path();
    c.apply_ok("app.yaml", APP);
    c.wait_ready_replicas("svc", 3, Duration::from_secs(120));
    let vip = c.kubectl_ok(&["get", "svc", "svc", "-o", "jsonpath={.spec.clusterIP}"]);
    let steady = dir.join("steady.py");
    std::fs::write(&steady, STEADY).expect("probe");
    let python = Path::new("/usr/bin/python3");

    let node_port = |i: usize| {
        c.kubectl_ok(&[
            "get",
            "svc",
            "svc",
            "-o",
            &format!("jsonpath={{.spec.ports[{i}].nodePort}}"),
        ])
    };
    let (http_np, echo_np) = (node_port(0), node_port(1));
    let outside = ExternalClient::join(&name, 200);
    let steady_path = steady.to_string_lossy().into_owned();
    let from_node = c.spawn_on_node(1, python, &[&steady_path, &vip, "80", "7000", "12"]);
    let from_outside = outside.spawn(
        python,
        &[&steady_path, &node_ip(1), &http_np, &echo_np, "12"],
    );
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..3 {
        c.restart_agent(1);
        std::thread::sleep(Duration::from_secs(2));
    }
    for (what, probe) in [("ClusterIP", from_node), ("NodePort", from_outside)] {
        let out = probe.wait_with_output().expect("probe");
        assert!(out.status.success(), "{what}: {}", output_text(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let r: Steady = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", output_text(&out)));
        println!("{what}: {r:?}");
        assert!(
            r.failures.is_empty(),
            "{what}: requests lost across agent restarts: {r:?}"
        );
        assert!(
            r.echo_failures.is_empty(),
            "{what}: the long-lived connection broke: {r:?}"
        );
        assert!(
            r.requests > 100 && r.echoes > 100,
            "{what}: too little traffic to mean anything: {r:?}"
        );
    }

    // The restarted agent still follows the API: after a scale-down only one backend answers.
    c.kubectl_ok(&["scale", "deployment/svc", "--replicas=1"]);
    let probe_py = dir.join("probe.py");
    std::fs::write(
        &probe_py,
        "import socket,sys\nnames=set()\nfor i in range(20):\n    s=socket.create_connection((sys.argv[1],80),timeout=2)\n    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    d=b''\n    while True:\n        c=s.recv(4096)\n        if not c: break\n        d+=c\n    names.add(d.split(b'\\r\\n\\r\\n',1)[1].strip())\nprint(len(names))\n",
    )
    .expect("probe");
    let start = Instant::now();
    loop {
        let out = c.run_on_node(1, python, &[&probe_py.to_string_lossy(), &vip]);
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "restarted agent did not apply the scale-down: {}",
            output_text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
