//! What the end-to-end tests share: the binaries under test, a local cluster that removes
//! itself even when a test fails, and a probe that asks a Service from inside a node.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

/// Makes the command's process move itself into `cgroup` between fork and exec.
fn join_cgroup_on_exec(cmd: &mut Command, cgroup: &Path) {
    keelson_localcluster::join_cgroup_on_exec(cmd, cgroup).expect("cgroup path");
}

pub fn keelson() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keelson"))
}

/// The real kubectl that `cargo xtask setup` installs.
pub fn kubectl() -> PathBuf {
    std::env::var_os("KEELSON_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".local/share/keelson/venv/bin/kubectl")
        })
}

pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What the tests need to know of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSummary {
    pub node: String,
    pub ip: String,
    pub ready: bool,
}

/// A local cluster started by `keelson up`, removed by `keelson down` on drop.
pub struct LocalCluster {
    pub name: String,
    pub kubeconfig: PathBuf,
    pub data_dir: tempfile::TempDir,
    /// Agents this test restarted: its own children, reaped after `keelson down` kills them.
    restarted: std::sync::Mutex<Vec<Child>>,
}

impl LocalCluster {
    pub fn up(name: &str, nodes: u8) -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        // Whatever a crashed earlier run of this test left behind goes first.
        let _ = Command::new(keelson())
            .args(["down", "--name", name])
            .output();
        let out = Command::new(keelson())
            .args([
                "up",
                "--nodes",
                &nodes.to_string(),
                "--name",
                name,
                "--data-dir",
            ])
            .arg(data_dir.path())
            .output()
            .expect("running keelson up");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let kubeconfig = text
            .lines()
            .find_map(|l| l.strip_prefix("KUBECONFIG="))
            .map(PathBuf::from);
        let cluster = LocalCluster {
            name: name.to_string(),
            kubeconfig: kubeconfig.clone().unwrap_or_default(),
            data_dir,
            restarted: std::sync::Mutex::new(Vec::new()),
        };
        assert!(
            out.status.success() && kubeconfig.is_some(),
            "keelson up failed:\n{}",
            output_text(&out)
        );
        cluster
    }

    pub fn node(&self, i: u8) -> String {
        format!("{}-n{i}", self.name)
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(kubectl())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("running kubectl")
    }

    /// Runs kubectl and fails the test, with its output, if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `yaml` to `file` in the test's data directory and runs `kubectl apply -f` on it.
    pub fn apply(&self, file: &str, yaml: &str) -> Output {
        let path = self.data_dir.path().join(file);
        std::fs::write(&path, yaml).expect("manifest");
        self.kubectl(&["apply", "-f", &path.to_string_lossy()])
    }

    /// [`Self::apply`], failing the test if kubectl does.
    pub fn apply_ok(&self, file: &str, yaml: &str) {
        let out = self.apply(file, yaml);
        assert!(
            out.status.success(),
            "kubectl apply {file}:\n{}",
            output_text(&out)
        );
    }

    /// Waits until Deployment `name` reports `n` ready replicas.
    pub fn wait_ready_replicas(&self, name: &str, n: u32, timeout: Duration) {
        wait_for(&format!("{n} ready replicas of {name}"), timeout, || {
            let ready = self.kubectl_ok(&[
                "get",
                "deployment",
                name,
                "-o",
                "jsonpath={.status.readyReplicas}",
            ]);
            (ready.trim() == n.to_string()).then_some(())
        });
    }

    pub fn pin_dir(&self, i: u8) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/keelson").join(self.node(i))
    }

    pub fn node_cgroup(&self, i: u8) -> PathBuf {
        PathBuf::from("/sys/fs/cgroup/unified/keelson")
            .join(&self.name)
            .join(self.node(i))
    }

    /// Runs `program args` as a host process of node `i`: in the node's network namespace and
    /// under its cgroup root, so the node's socket-level load balancer applies to it.
    pub fn run_on_node(&self, i: u8, program: &Path, args: &[&str]) -> Output {
        self.node_command(i, program, args)
            .output()
            .expect("running a probe on the node")
    }

    /// Like [`Self::run_on_node`], in the background.
    pub fn spawn_on_node(&self, i: u8, program: &Path, args: &[&str]) -> Child {
        self.node_command(i, program, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting a probe on the node")
    }

    /// The command [`Self::run_on_node`] runs, for a caller that wires its stdio itself (a
    /// long-running helper fed on stdin, say).
    pub fn command_on_node(&self, i: u8, program: &Path, args: &[&str]) -> Command {
        self.node_command(i, program, args)
    }

    fn node_command(&self, i: u8, program: &Path, args: &[&str]) -> Command {
        let cg = self.node_cgroup(i).join("e2e-probe");
        std::fs::create_dir_all(&cg).expect("probe cgroup");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/kls-{}", self.node(i)))
            .arg(program)
            .args(args);
        join_cgroup_on_exec(&mut cmd, &cg);
        cmd
    }

    /// Kills node `i`'s agent with SIGKILL and starts it again with the same command line, as
    /// a supervisor would after a crash. Returns once the new agent answers on its API.
    pub fn restart_agent(&self, i: u8) {
        let marker = format!("agent --node-name {}", self.node(i));
        let pids = processes_with(&marker);
        assert_eq!(
            pids.len(),
            1,
            "expected one agent for {}: {pids:?}",
            self.node(i)
        );
        let argv: Vec<String> = std::fs::read(format!("/proc/{}/cmdline", pids[0]))
            .expect("agent cmdline")
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // SIGKILL, as a crash would end it: no shutdown path of the agent runs.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill agent");
        while processes_with(&marker).contains(&pids[0])
            && !std::fs::read_to_string(format!("/proc/{}/stat", pids[0]))
                .is_ok_and(|s| s.contains(") Z"))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = self
            .data_dir
            .path()
            .join("nodes")
            .join(self.node(i))
            .join("agent.log");
        let out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .expect("agent log");
        let err = out.try_clone().expect("agent log");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        join_cgroup_on_exec(
            &mut cmd,
            &PathBuf::from("/sys/fs/cgroup/unified/keelson")
                .join(&self.name)
                .join("system"),
        );
        let child = cmd.spawn().expect("restarting the agent");
        self.restarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        let api = argv
            .iter()
            .position(|a| a == "--api-listen")
            .map(|p| argv[p + 1].clone())
            .expect("--api-listen");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(&api).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "restarted agent not serving on {api}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Pods with label app=<app> that are not being deleted, by name.
    pub fn pods(&self, app: &str) -> BTreeMap<String, PodSummary> {
        let json = self.kubectl_ok(&["get", "pods", "-l", &format!("app={app}"), "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("pod list json");
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let summary = PodSummary {
                    node: text(&p["spec"]["nodeName"]),
                    ip: text(&p["status"]["podIP"]),
                    ready,
                };
                (text(&p["metadata"]["name"]), summary)
            })
            .collect()
    }

    /// Pod name → node name of the Pods with label app=<app>.
    pub fn pods_by_node(&self, app: &str) -> BTreeMap<String, String> {
        self.pods(app)
            .into_iter()
            .map(|(name, p)| (name, p.node))
            .collect()
    }

    pub fn down(&self) -> Output {
        Command::new(keelson())
            .args(["down", "--name", &self.name])
            .output()
            .expect("keelson down")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.down();
        for mut child in self
            .restarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every process whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
        })
        .collect()
}

/// Asks a Service `count` times, each time on a new socket, and prints which Pod answered.
pub const PROBE: &str = r#"
import json, socket, sys
proto, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
answers, errors = {}, []
for i in range(count):
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            name = data.split(b"\r\n\r\n", 1)[1].decode().strip()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.sendto(b"ping", (host, port))
            data, peer = s.recvfrom(4096)
            if peer != (host, port):
                raise Exception("reply from %s, not from the Service address" % (peer,))
            name = data.decode().strip()
        s.close()
        answers[name] = answers.get(name, 0) + 1
    except Exception as e:
        errors.append(str(e))
print(json.dumps({"answers": answers, "errors": errors}))
"#;

#[derive(Debug, serde::Deserialize)]
pub struct ProbeResult {
    pub answers: BTreeMap<String, u32>,
    pub errors: Vec<String>,
}

pub fn parse_probe(text: &str) -> ProbeResult {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no probe output in {text:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad probe output {line:?}: {e}"))
}

/// A machine outside the cluster on its underlay: a network namespace of the test's own with a
/// veth plugged into the underlay bridge. Removed (with its veth) on drop.
pub struct ExternalClient {
    pub netns: String,
    pub ip: String,
}

impl ExternalClient {
    /// Joins cluster `cluster`'s underlay with address `10.250.0.<host>`.
    pub fn join(cluster: &str, host: u8) -> Self {
        let netns = format!("kls-t-{cluster}-x{host}");
        let _ = Command::new("ip")
            .args(["netns", "delete", &netns])
            .output();
        let client = ExternalClient {
            netns: netns.clone(),
            ip: format!("10.250.0.{host}"),
        };
        let underlay = format!("kls-{cluster}-ul");
        let port = format!("x{host}{}", std::process::id() % 100_000);
        let addr = format!("{}/24", client.ip);
        for args in [
            vec!["netns", "add", &netns],
            vec![
                "link", "add", "eth0", "netns", &netns, "type", "veth", "peer", "name", &port,
                "netns", &underlay,
            ],
            vec!["-n", &underlay, "link", "set", &port, "master", "br0", "up"],
            vec!["-n", &netns, "addr", "add", &addr, "dev", "eth0"],
            vec!["-n", &netns, "link", "set", "lo", "up"],
            vec!["-n", &netns, "link", "set", "eth0", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("ip");
            assert!(out.status.success(), "ip {args:?}: {}", output_text(&out));
        }
        client
    }

    /// Routes `dst` through `via` (how a router or BGP speaker would send traffic for a
    /// LoadBalancer address to a node).
    pub fn route(&self, dst: &str, via: &str) {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "route", "replace", dst, "via", via])
            .output()
            .expect("ip route");
        assert!(out.status.success(), "{}", output_text(&out));
    }

    /// Runs `program args` in the client's namespace.
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program)
            .args(args)
            .output()
            .expect("running in the external client")
    }

    /// Like [`Self::run`], in the background.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> Child {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting in the external client")
    }
}

impl Drop for ExternalClient {
    fn drop(&mut self) {
        // The veth goes with the namespace; processes still inside are killed first.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .output();
    }
}

/// The underlay address of node `i`.
pub fn node_ip(i: u8) -> String {
    format!("10.250.0.{}", 10 + u16::from(i))
}

/// A script as one double-quoted YAML scalar (for `command: [python3, -c, "<script>"]`).
pub fn yaml_quoted(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Polls `f` every 250 ms until it returns a value; fails the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
