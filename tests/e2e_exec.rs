//! End to end with the real kubectl on a two-node `keelson up` cluster: `kubectl exec` (exit
//! codes, stdin, a TTY), `kubectl cp` both ways, `kubectl port-forward` of a Pod and of a
//! Service, `kubectl attach`, the errors of a bad request, and `kubectl logs -f`.

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use support::{LocalCluster, kubectl, output_text, wait_for};

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: web
    image: none
    command: [python3, -u, -m, http.server, "8080", --bind, "0.0.0.0"]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: ticker
  labels: {app: ticker}
spec:
  containers:
  - name: ticker
    image: none
    command: [sh, -c, "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// A background kubectl, killed when the test is done with it (or fails).
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Background {
    fn start(c: &LocalCluster, args: &[&str]) -> Self {
        Self(
            Command::new(kubectl())
                .args(args)
                .env("KUBECONFIG", &c.kubeconfig)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting kubectl"),
        )
    }

    /// Lines of its stdout, read on a thread.
    fn lines(&mut self) -> mpsc::Receiver<String> {
        let out = self.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// Waits for a line containing `needle`; fails with what was seen.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with {needle:?} in time; saw {seen:?}"),
        }
    }
}

/// `GET /` over plain HTTP/1.0 to `127.0.0.1:port`: the status line and the body.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn port_forward_serves_http(c: &LocalCluster, target: &str, local: u16, remote: u16) {
    let mapping = format!("{local}:{remote}");
    let mut pf = Background::start(c, &["port-forward", target, &mapping]);
    let lines = pf.lines();
    wait_line(&lines, "Forwarding from 127.0.0.1", Duration::from_secs(20));
    // Several connections through one port-forward session, one after the other.
    for i in 0..3 {
        let got = http_get(local).unwrap_or_else(|e| panic!("request {i} via {target}: {e}"));
        assert!(got.starts_with("HTTP/1.0 200"), "via {target}: {got}");
        assert!(got.contains("Directory listing"), "via {target}: {got}");
    }
    assert!(
        pf.0.try_wait().expect("try_wait").is_none(),
        "kubectl port-forward {target} exited"
    );
}

#[test]
fn exec_cp_port_forward_attach_and_logs_with_kubectl() {
    let c = LocalCluster::up("kstr", 2);
    c.apply_ok("web.yaml", WEB);
    let (ip, node) = wait_for("Pod web Running", Duration::from_secs(60), || {
        let p = c.pods("web").remove("web")?;
        let phase = c.kubectl_ok(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running" && !p.ip.is_empty()).then_some((p.ip, p.node))
    });
    wait_for("Pod ticker Running", Duration::from_secs(60), || {
        let phase = c.kubectl_ok(&["get", "pod", "ticker", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });

    // exec runs in the Pod's network namespace: it sees the Pod's IP on its interface.
    let out = c.kubectl_ok(&["exec", "web", "--", "hostname", "-I"]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [ip.as_str()],
        "on {node}"
    );
    let fib = c.kubectl_ok(&[
        "exec",
        "web",
        "-c",
        "web",
        "--",
        "cat",
        "/proc/net/fib_trie",
    ]);
    assert!(fib.contains(&ip), "{fib}");
    // The container's environment (the Service variables the agent gave it).
    let env = c.kubectl_ok(&["exec", "web", "--", "sh", "-c", "echo $WEB_SERVICE_PORT"]);
    assert_eq!(env.trim(), "80");

    // The exit code comes back, worded as kube-apiserver and kubectl word it.
    let out = c.kubectl(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(
        stderr.contains("command terminated with exit code 3"),
        "{stderr}"
    );

    // stdin: kubectl closes it (the v5 close signal) when its input ends.
    let mut child = Command::new(kubectl())
        .args([
            "exec",
            "-i",
            "web",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl exec -i");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello from stdin\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("kubectl exec -i");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HELLO FROM STDIN\ndone\n"
    );

    // -it: a terminal of its own, sized from kubectl's (script(1) gives kubectl a pty).
    let cmd = format!(
        "stty cols 97 rows 23; KUBECONFIG={} {} exec -it web -- sh -c 'test -t 0 && echo TTY-OK; echo HOST=$(hostname); hostname -I; stty size; exit 4'",
        c.kubeconfig.display(),
        kubectl().display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TTY-OK"), "{}", output_text(&out));
    assert!(text.contains("23 97"), "{}", output_text(&out));
    // The shell is in the Pod's UTS and network namespaces: its hostname and its IP.
    assert!(text.contains("HOST=web"), "{}", output_text(&out));
    assert!(text.contains(&ip), "{}", output_text(&out));
    assert_eq!(out.status.code(), Some(4), "{}", output_text(&out));

    // cp in and out (kubectl runs tar through exec both ways).
    let local = c.data_dir.path().join("payload.txt");
    let content: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&local, &content).expect("payload");
    let remote = format!("/tmp/kstr-cp-{}.txt", std::process::id());
    let _cleanup = RemoveOnDrop(remote.clone().into());
    c.kubectl_ok(&["cp", &local.to_string_lossy(), &format!("web:{remote}")]);
    let inside = c.kubectl_ok(&["exec", "web", "--", "wc", "-l", &remote]);
    assert!(inside.starts_with("2000 "), "{inside}");
    let back = c.data_dir.path().join("back.txt");
    c.kubectl_ok(&["cp", &format!("web:{remote}"), &back.to_string_lossy()]);
    assert_eq!(
        std::fs::read_to_string(&back).expect("copied back"),
        content
    );

    // port-forward to the Pod and to a Service (kubectl picks a Pod and the target port).
    port_forward_serves_http(&c, "pod/web", 18080, 8080);
    port_forward_serves_http(&c, "svc/web", 18081, 80);
    // A port nothing listens on: the error reaches kubectl, the session stays usable.
    {
        let mut pf = Background::start(&c, &["port-forward", "pod/web", "18082:9"]);
        let lines = pf.lines();
        wait_line(&lines, "Forwarding from 127.0.0.1", Duration::from_secs(20));
        let got = http_get(18082).unwrap_or_default();
        assert!(!got.contains("200"), "{got}");
    }

    // A missing container: a clear error, and the Pod is unharmed.
    let out = c.kubectl(&["exec", "web", "-c", "nope", "--", "true"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("container nope is not valid for pod web"),
        "{}",
        output_text(&out)
    );
    let out = c.kubectl(&["exec", "missing-pod", "--", "true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        c.kubectl_ok(&["exec", "web", "--", "echo", "still-fine"]),
        "still-fine\n"
    );

    // The agent serves exec, port-forward and logs to the API server only, over TLS: a caller
    // without the server's client certificate is refused in the handshake, in plain HTTP gets
    // no HTTP answer, and the server's certificate (from its data dir) is let in.
    let agent = c.kubectl_ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.metadata.annotations.keelson\\.io/agent-api}",
    ]);
    let server_dir = c.data_dir.path().join("server");
    let cert = server_dir.join("apiserver-agent-client.crt");
    let key = server_dir.join("apiserver-agent-client.key");
    for path in [
        "/exec/default/web/web?command=id&stdout=true",
        "/portForward/default/web?port=8080",
        "/containerLogs/default/web/web",
    ] {
        let answer = raw_upgrade(&agent, path);
        assert!(!answer.starts_with("HTTP/1.1 1"), "{path}: {answer}");
        let url = format!("https://{agent}{path}");
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", &url])
            .output()
            .expect("curl");
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "{path} without a client certificate: {}",
            output_text(&out)
        );
    }
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(format!("https://{agent}/containerLogs/default/web/web"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{}", output_text(&out));

    // attach: the running container's output from now on.
    let mut at = Background::start(&c, &["attach", "ticker"]);
    let lines = at.lines();
    wait_line(&lines, "tick-", Duration::from_secs(20));
    drop(at);

    // logs -f follows: the requests above are in the server's log, new ones keep coming.
    let mut logs = Background::start(&c, &["logs", "-f", "ticker"]);
    let lines = logs.lines();
    let first = wait_line(&lines, "tick-", Duration::from_secs(20));
    let n: u64 = first
        .trim_start_matches("tick-")
        .trim()
        .parse()
        .expect("tick number");
    wait_line(&lines, &format!("tick-{}", n + 5), Duration::from_secs(20));
    drop(logs);

    // --timestamps prefixes each line with the RFC 3339 time it was written; --since keeps
    // only recent lines; --limit-bytes cuts the output.
    let stamped = c.kubectl_ok(&["logs", "ticker", "--timestamps", "--tail=3"]);
    let stamped: Vec<&str> = stamped.lines().collect();
    assert_eq!(stamped.len(), 3, "{stamped:?}");
    for line in &stamped {
        let (time, text) = line.split_once(' ').unwrap_or_default();
        assert!(
            time.len() == 30 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{line}"
        );
        assert!(text.starts_with("tick-"), "{line}");
    }
    // Enough history (5 s of ticks) that 2 s of it is a strict part.
    let all = wait_for("5 s of ticker output", Duration::from_secs(30), || {
        let n = c.kubectl_ok(&["logs", "ticker"]).lines().count();
        (n >= 25).then_some(n)
    });
    let recent = c
        .kubectl_ok(&["logs", "ticker", "--since=2s"])
        .lines()
        .count();
    assert!(
        recent > 0 && recent < all && recent <= 15,
        "{recent} of {all}"
    );
    assert_eq!(
        c.kubectl_ok(&["logs", "ticker", "--limit-bytes=7"]),
        "tick-1\n"
    );
}

/// A WebSocket upgrade request straight to `addr` in plain HTTP, without credentials; the
/// answer's head (empty when the agent hangs up, as its TLS does).
fn raw_upgrade(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("agent API {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let sent = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
    );
    if sent.is_err() {
        return String::new();
    }
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Removes a file the test put on the host (the `process` runtime's Pods share its /tmp).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
