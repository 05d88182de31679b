//! A connectivity matrix for NetworkPolicy tests, after the upstream netpol e2e suite's
//! `Model`, `Reachability` and `TestCase`: a fixed set of Pods (namespaces x, y, z; Pods a, b, c
//! in each, spread over both nodes), two hosts outside the cluster on its underlay and the
//! nodes' own host stacks; every ordered pair probed on TCP and UDP ports 80 and 81; the whole
//! observed matrix compared with the expected one after each step of a case.
//!
//! Probes go to Pod addresses directly (no Services), from long-running probers inside each
//! source's network namespace, so that a round of several hundred probes costs about one probe
//! timeout and no process start-up.

pub mod model;
pub mod probe;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

pub use model::{
    Cell, Outcome, Peer, PodDef, PortProto, Proto, Reach, all, any, ext, exts, ns, pod, pods, tcp,
    tcp_any, udp, udp_any,
};

use crate::support::{ExternalClient, LocalCluster, node_ip, output_text, yaml_quoted};
use probe::Prober;

/// How long one probe waits for a TCP connection or a UDP answer. A denied TCP SYN is dropped,
/// so a denial costs this much; an allowed probe on a local link takes milliseconds.
const PROBE_TIMEOUT: &str = "1.0";
/// How long a step may take to show its expected matrix after its actions.
const ENFORCEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A step whose expected matrix is the one already observed would match at once, before its
/// actions reach the datapath; it is checked again after this long.
const SETTLE: Duration = Duration::from_secs(3);
/// For at most this many differing pairs of a failed step, the datapath's flow records are
/// shown.
const EXPLAINED: usize = 3;
/// At most this many rows of differences are listed per failed step.
const MAX_LISTED: usize = 40;

const PYTHON: &str = "/usr/bin/python3";

/// The server every Pod and external host runs: TCP and UDP on ports 80 and 81, each answering
/// with the name given as argv[1] (a TCP client gets it and EOF, a UDP client one datagram);
/// and, for long-lived connections, a line echo on TCP [`ECHO_PORT`] outside the matrix.
const SERVER: &str = r#"import socket, sys, threading
ECHO_PORT = 7000
name = (sys.argv[1] + "\n").encode()
def tcp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(256)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(name)
        except OSError:
            pass
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        _, peer = s.recvfrom(2048)
        s.sendto(name, peer)
def echo_one(c):
    with c, c.makefile("rwb") as f:
        for line in f:
            f.write(name.strip() + b" " + line)
            f.flush()
def echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo_one, args=(c,), daemon=True).start()
threads = [threading.Thread(target=f, args=(p,), daemon=True) for f in (tcp, udp) for p in (80, 81)]
threads.append(threading.Thread(target=echo, args=(ECHO_PORT,), daemon=True))
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

/// The port of the servers' line echo (see [`SERVER`]).
const ECHO_PORT: &str = "7000";

/// One long-lived TCP connection to argv[1]:argv[2]: prints `connected` (or an error and
/// exits), then for each line on stdin sends five lines 100 ms apart, each waiting up to
/// 0.5 s for its echo, and prints how many were answered.
const FLOW_CLIENT: &str = r#"import json, socket, sys, time
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
except OSError as e:
    print("error %s" % e, flush=True)
    sys.exit(1)
s.settimeout(0.5)
print("connected", flush=True)
buf = b""
for _ in sys.stdin:
    answered = 0
    for i in range(5):
        try:
            s.sendall(b"ping\n")
            while b"\n" not in buf:
                chunk = s.recv(256)
                if not chunk:
                    raise OSError("closed by the server")
                buf += chunk
            buf = buf.split(b"\n", 1)[1]
            answered += 1
        except OSError:
            pass
        time.sleep(0.1)
    print(json.dumps({"answered": answered, "sent": 5}), flush=True)
"#;

/// A step of a case: what it changes, then the matrix expected once that is enforced, and
/// what should become of long-lived connections.
pub struct Step {
    what: String,
    actions: Vec<Action>,
    expect: Box<dyn Fn(&mut Reach)>,
    flows: Vec<FlowCheck>,
}

/// A long-lived connection between two Pods, to the echo port: opened (before the actions of
/// the first step that names it) while the path is open, then checked after each step that
/// names it, once its matrix is the expected one: `alive` it must carry every line, else none.
#[derive(Debug, Clone)]
struct FlowCheck {
    from: Peer,
    to: Peer,
    alive: bool,
}

/// An open long-lived connection; its client is killed on drop.
#[derive(Debug)]
struct Flow {
    prober: Prober,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("what", &self.what)
            .field("actions", &self.actions)
            .field("flows", &self.flows)
            .finish_non_exhaustive()
    }
}

/// What a step does to the cluster.
#[derive(Debug, Clone)]
pub enum Action {
    /// `kubectl apply` of these manifests (policies, usually).
    Apply(String),
    DeletePolicy {
        ns: &'static str,
        name: &'static str,
    },
    /// `kubectl label pod`: `key=value`, or `key-` to remove it.
    LabelPod {
        ns: &'static str,
        name: &'static str,
        label: &'static str,
    },
    LabelNamespace {
        ns: &'static str,
        label: &'static str,
    },
    /// A Pod beyond the model's, created now and removed when the case ends.
    CreatePod(PodDef),
}

/// A named sequence of steps; whatever they did is undone when it ends.
#[derive(Debug)]
pub struct Case {
    pub name: &'static str,
    steps: Vec<Step>,
}

impl Case {
    pub fn new(name: &'static str) -> Self {
        Case {
            name,
            steps: Vec::new(),
        }
    }

    /// The usual case: apply `yaml`, expect what `expect` says.
    pub fn policy(name: &'static str, yaml: &str, expect: impl Fn(&mut Reach) + 'static) -> Self {
        Case::new(name).step("", vec![Action::Apply(yaml.to_string())], expect)
    }

    pub fn step(
        mut self,
        what: &str,
        actions: Vec<Action>,
        expect: impl Fn(&mut Reach) + 'static,
    ) -> Self {
        self.steps.push(Step {
            what: what.to_string(),
            actions,
            expect: Box::new(expect),
            flows: Vec::new(),
        });
        self
    }

    /// Adds to the last step: an established connection from Pod `from` to Pod `to` (opened
    /// when first named) carries data after it (`alive`) or is stopped.
    pub fn flow(mut self, from: Peer, to: Peer, alive: bool) -> Self {
        self.steps
            .last_mut()
            .expect("flow() follows a step")
            .flows
            .push(FlowCheck { from, to, alive });
        self
    }
}

/// A probe whose outcome differs from the expectation.
#[derive(Debug)]
struct Difference {
    cell: Cell,
    expected: bool,
    observed: Outcome,
}

/// What running one case gave.
#[derive(Debug)]
pub struct CaseResult {
    pub name: &'static str,
    pub ok: bool,
    pub took: Duration,
}

/// A Pod of the model as it runs.
#[derive(Debug, Clone)]
struct RunningPod {
    def: PodDef,
    ip: String,
    netns: PathBuf,
}

/// The cluster with the model's Pods, the external hosts and a prober in every source.
pub struct World<'c> {
    // Fields drop in this order: probers and flows, then the external servers, then the hosts.
    probers: BTreeMap<Peer, Prober>,
    flows: BTreeMap<(Peer, Peer), Flow>,
    ext_servers: Vec<Child>,
    exts: Vec<ExternalClient>,
    c: &'c LocalCluster,
    dir: PathBuf,
    pods: BTreeMap<Peer, RunningPod>,
    /// Connectivity seen by the last round of probes.
    last: BTreeMap<Cell, bool>,
    files: usize,
}

impl fmt::Debug for World<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("cluster", &self.c.name)
            .field("pods", &self.pods)
            .finish_non_exhaustive()
    }
}

/// The external hosts: `ext<i>` is 10.250.0.(199 + i).
pub const EXT_HOSTS: [u8; 2] = [200, 201];

pub fn ext_ip(i: u8) -> String {
    format!("10.250.0.{}", EXT_HOSTS[usize::from(i) - 1])
}

impl<'c> World<'c> {
    /// Creates the namespaces and Pods of `model`, the external hosts and the probers.
    pub fn start(c: &'c LocalCluster, model: &[PodDef]) -> Self {
        let dir = c.data_dir.path().to_path_buf();
        std::fs::write(dir.join("server.py"), SERVER).expect("server script");
        std::fs::write(dir.join("prober.py"), probe::PROBER).expect("prober script");
        std::fs::write(dir.join("flow.py"), FLOW_CLIENT).expect("flow script");
        let mut world = World {
            probers: BTreeMap::new(),
            flows: BTreeMap::new(),
            ext_servers: Vec::new(),
            exts: Vec::new(),
            c,
            dir,
            pods: BTreeMap::new(),
            last: BTreeMap::new(),
            files: 0,
        };
        let namespaces: BTreeSet<&str> = model.iter().map(|p| p.ns).collect();
        let mut yaml = String::new();
        for n in &namespaces {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: '{n}'\n  labels: {{ns: '{n}'}}\n---\n"
            ));
        }
        for p in model {
            yaml.push_str(&world.pod_yaml(p));
            yaml.push_str("---\n");
        }
        c.apply_ok("model.yaml", &yaml);

        for (i, host) in EXT_HOSTS.iter().enumerate() {
            let x = ExternalClient::join(&c.name, *host);
            let name = format!("ext{}", i + 1);
            let server = x.spawn(
                Path::new(PYTHON),
                &[&world.dir.join("server.py").to_string_lossy(), &name],
            );
            world.ext_servers.push(server);
            world.exts.push(x);
        }

        world.wait_running(model);
        // Outside hosts reach Pods the way a router would: each node's podCIDR through it.
        let nodes: serde_json::Value =
            serde_json::from_str(&c.kubectl_ok(&["get", "nodes", "-o", "json"])).expect("nodes");
        for n in nodes["items"].as_array().expect("items") {
            let name = n["metadata"]["name"].as_str().unwrap_or_default();
            let cidr = n["spec"]["podCIDR"]
                .as_str()
                .unwrap_or_else(|| panic!("node {name} has no podCIDR"));
            let i = node_index(&c.name, name);
            for x in &world.exts {
                x.route(cidr, &node_ip(i));
            }
        }
        for (i, x) in world.exts.iter().enumerate() {
            let peer = Peer::Ext(u8::try_from(i + 1).expect("few hosts"));
            let prober = Prober::in_netns(
                &format!("/run/netns/{}", x.netns),
                &world.dir,
                &peer,
                PROBE_TIMEOUT,
            );
            world.probers.insert(peer, prober);
        }
        for i in [1u8, 2] {
            let peer = Peer::Node(i);
            let script = world.dir.join("prober.py");
            let cmd = c.command_on_node(
                i,
                Path::new(PYTHON),
                &[&script.to_string_lossy(), PROBE_TIMEOUT],
            );
            let log = format!("prober-{peer}.log");
            world
                .probers
                .insert(peer, Prober::spawn(cmd, &world.dir, &log));
        }
        world
    }

    fn pod_yaml(&self, p: &PodDef) -> String {
        let labels: Vec<String> = p
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: '{v}'"))
            .collect();
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: '{ns}'
  labels: {{{labels}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
    - name: server
      image: example.invalid/netpol-server:1
      command: ["/usr/bin/python3", "-c", "{server}", "{ns}/{name}"]
      ports:
        - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}
        - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}
        - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
        - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
      readinessProbe: {{tcpSocket: {{port: 80}}, periodSeconds: 1}}
"#,
            name = p.name,
            ns = p.ns,
            labels = labels.join(", "),
            node = self.c.node(p.node),
            server = yaml_quoted(SERVER),
        )
    }

    /// Waits until every Pod of `defs` is Ready with an address, then starts its prober.
    fn wait_running(&mut self, defs: &[PodDef]) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let v: serde_json::Value =
                serde_json::from_str(&self.c.kubectl_ok(&["get", "pods", "-A", "-o", "json"]))
                    .expect("pod list");
            let mut found = BTreeMap::new();
            for p in v["items"].as_array().expect("items") {
                let m = &p["metadata"];
                let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let ip = p["status"]["podIP"].as_str().unwrap_or_default();
                if !ready || ip.is_empty() || !m["deletionTimestamp"].is_null() {
                    continue;
                }
                let key = (
                    m["namespace"].as_str().unwrap_or_default().to_string(),
                    m["name"].as_str().unwrap_or_default().to_string(),
                );
                let uid: String = m["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(8)
                    .collect();
                let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
                // The agent names a Pod's network namespace after its node and UID.
                let netns = PathBuf::from(format!("/run/netns/kls-{node}-{uid}"));
                found.insert(key, (ip.to_string(), netns));
            }
            let missing: Vec<String> = defs
                .iter()
                .filter(|d| !found.contains_key(&(d.ns.to_string(), d.name.to_string())))
                .map(|d| format!("{}/{}", d.ns, d.name))
                .collect();
            if missing.is_empty() {
                for d in defs {
                    let (ip, netns) = found[&(d.ns.to_string(), d.name.to_string())].clone();
                    assert!(netns.exists(), "{netns:?} of {}/{} missing", d.ns, d.name);
                    let peer = d.peer();
                    let prober =
                        Prober::in_netns(&netns.to_string_lossy(), &self.dir, &peer, PROBE_TIMEOUT);
                    self.probers.insert(peer.clone(), prober);
                    self.pods.insert(
                        peer,
                        RunningPod {
                            def: d.clone(),
                            ip,
                            netns,
                        },
                    );
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Pods not Ready: {missing:?}\n{}",
                self.c.kubectl_ok(&["get", "pods", "-A", "-o", "wide"])
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Prints where the Pods run.
    pub fn describe(&self) {
        for (peer, p) in &self.pods {
            println!(
                "  {peer:<4} {:<15} node {}  labels {:?}  {}",
                p.ip,
                p.def.node,
                p.def.labels,
                p.netns.display()
            );
        }
        for (i, x) in self.exts.iter().enumerate() {
            println!(
                "  ext{} {:<15} outside the cluster ({})",
                i + 1,
                x.ip,
                x.netns
            );
        }
    }

    /// Every probe of a round: each Pod to every Pod and external host, each external host to
    /// every Pod, each node's host to the Pods on it; all on every port.
    fn cells(&self) -> Vec<Cell> {
        let pods: Vec<&Peer> = self.pods.keys().collect();
        let exts: Vec<Peer> = (1..=self.exts.len())
            .map(|i| Peer::Ext(u8::try_from(i).expect("few hosts")))
            .collect();
        let mut pairs: Vec<(Peer, Peer)> = Vec::new();
        for from in &pods {
            for to in pods
                .iter()
                .map(|p| (*p).clone())
                .chain(exts.iter().cloned())
            {
                pairs.push(((*from).clone(), to));
            }
        }
        for from in &exts {
            for to in &pods {
                pairs.push((from.clone(), (*to).clone()));
            }
        }
        for i in [1u8, 2] {
            for (to, p) in &self.pods {
                if p.def.node == i {
                    pairs.push((Peer::Node(i), to.clone()));
                }
            }
        }
        pairs
            .into_iter()
            .flat_map(|(from, to)| {
                model::PORTS.iter().map(move |port| Cell {
                    from: from.clone(),
                    to: to.clone(),
                    port: *port,
                })
            })
            .collect()
    }

    fn address(&self, peer: &Peer) -> String {
        match peer {
            Peer::Pod { .. } => self.pods[peer].ip.clone(),
            Peer::Ext(i) => ext_ip(*i),
            Peer::Node(i) => node_ip(*i),
        }
    }

    /// One round: every cell probed, all sources at once.
    fn observe(&mut self, cells: &[Cell]) -> BTreeMap<Cell, Outcome> {
        let mut by_source: BTreeMap<Peer, Vec<&Cell>> = BTreeMap::new();
        for cell in cells {
            by_source.entry(cell.from.clone()).or_default().push(cell);
        }
        let mut sent = Vec::new();
        for (from, cells) in &by_source {
            let jobs: Vec<(String, u16, Proto)> = cells
                .iter()
                .map(|c| (self.address(&c.to), c.port.port, c.port.proto))
                .collect();
            let prober = self.probers.get_mut(from).expect("a prober per source");
            sent.push((from.clone(), prober.send(&jobs)));
        }
        let mut observed = BTreeMap::new();
        for (from, ok) in sent {
            let cells = &by_source[&from];
            let prober = self.probers.get_mut(&from).expect("a prober per source");
            let outcomes = match ok {
                Ok(()) => prober.receive(cells.len()),
                Err(e) => vec![Outcome::Error(e); cells.len()],
            };
            for (cell, outcome) in cells.iter().zip(outcomes) {
                observed.insert((*cell).clone(), outcome);
            }
        }
        self.last = observed
            .iter()
            .map(|(cell, o)| (cell.clone(), o.connected(&cell.to)))
            .collect();
        observed
    }

    /// The matrix a step expects: everything connected, then `expect`'s changes, then the two
    /// paths no policy applies to (see [`Reach::finish`]).
    fn expected(&self, expect: &dyn Fn(&mut Reach)) -> BTreeMap<Cell, bool> {
        let mut r = Reach::new(self.cells());
        expect(&mut r);
        r.finish()
    }

    /// Probes until the observed matrix is `expected` or [`ENFORCEMENT_TIMEOUT`] passes.
    /// Returns the rounds it took, or the differences of the last round.
    fn converge(
        &mut self,
        expected: &BTreeMap<Cell, bool>,
        settle: bool,
    ) -> Result<u32, Vec<Difference>> {
        let cells: Vec<Cell> = expected.keys().cloned().collect();
        let start = Instant::now();
        let mut rounds = 0;
        let mut settled = !settle;
        loop {
            let observed = self.observe(&cells);
            rounds += 1;
            let diff: Vec<Difference> = expected
                .iter()
                .filter_map(|(cell, want)| {
                    let got = &observed[cell];
                    (got.connected(&cell.to) != *want).then(|| Difference {
                        cell: cell.clone(),
                        expected: *want,
                        observed: got.clone(),
                    })
                })
                .collect();
            if diff.is_empty() {
                if settled {
                    return Ok(rounds);
                }
                settled = true;
                std::thread::sleep(SETTLE);
                continue;
            }
            if start.elapsed() >= ENFORCEMENT_TIMEOUT {
                return Err(diff);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Opens `f`'s connection unless it is open already.
    fn open_flow(&mut self, f: &FlowCheck) -> Result<(), String> {
        let key = (f.from.clone(), f.to.clone());
        if self.flows.contains_key(&key) {
            return Ok(());
        }
        let netns = match self.pods.get(&f.from) {
            Some(p) => p.netns.to_string_lossy().into_owned(),
            None => return Err(format!("no Pod {} for a connection", f.from)),
        };
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={netns}"))
            .arg(PYTHON)
            .arg(self.dir.join("flow.py"))
            .arg(self.address(&f.to))
            .arg(ECHO_PORT);
        let log = format!("flow-{}-{}.log", f.from, f.to).replace('/', "-");
        let mut prober = Prober::spawn(cmd, &self.dir, &log);
        let line = prober.read_line();
        if line.trim() != "connected" {
            return Err(format!("connection {} → {}: {line:?}", f.from, f.to));
        }
        self.flows.insert(key, Flow { prober });
        Ok(())
    }

    /// Whether `f`'s connection carries data as `f.alive` says.
    fn check_flow(&mut self, f: &FlowCheck) -> Result<(), String> {
        let what = format!("long-lived {} → {}", f.from, f.to);
        let flow = self
            .flows
            .get_mut(&(f.from.clone(), f.to.clone()))
            .ok_or_else(|| format!("{what}: not open"))?;
        flow.prober.write_line("check")?;
        let line = flow.prober.read_line();
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("{what}: client said {line:?}: {e}"))?;
        let (answered, sent) = (v["answered"].as_u64(), v["sent"].as_u64());
        let ok = if f.alive {
            answered == sent
        } else {
            answered == Some(0)
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{what}: expected {}, {} of {} lines answered",
                if f.alive { "alive" } else { "stopped" },
                answered.unwrap_or(0),
                sent.unwrap_or(0)
            ))
        }
    }

    /// What the datapath recorded for the first few differing pairs (`keelson flows`): the
    /// verdict, the direction it was taken in and the policy that allowed it, if any.
    fn explain(&self, diff: &[Difference]) {
        let mut pairs: Vec<(&Peer, &Peer, PortProto)> = Vec::new();
        for d in diff {
            if !pairs
                .iter()
                .any(|(f, t, _)| *f == &d.cell.from && *t == &d.cell.to)
            {
                pairs.push((&d.cell.from, &d.cell.to, d.cell.port));
            }
        }
        for (from, to, port) in pairs.into_iter().take(EXPLAINED) {
            let pod = match (from, to) {
                (_, Peer::Pod { .. }) => to,
                _ => from,
            };
            let out = std::process::Command::new(crate::support::keelson())
                .arg("flows")
                .arg("--kubeconfig")
                .arg(&self.c.kubeconfig)
                .args(["--pod", &pod.to_string(), "--since", "20s"])
                .output();
            let text = match out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
                Ok(o) => {
                    println!("    (keelson flows: {})", output_text(&o).trim());
                    continue;
                }
                Err(e) => {
                    println!("    (keelson flows: {e})");
                    continue;
                }
            };
            // Ends print as `ns/name (ip)` for Pods and `ip (kind)` otherwise.
            let end = |p: &Peer| match p {
                Peer::Pod { .. } => format!("{p} ("),
                _ => format!("{} (", self.address(p)),
            };
            let (src, dst) = (end(from), format!("-> {}", end(to)));
            let port_text = format!(":{} {}", port.port, port.proto.name()).to_lowercase();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&src) && l.contains(&dst))
                .filter(|l| l.to_lowercase().contains(&port_text))
                .collect();
            println!(
                "    flows {from} → {to} {port} (last 20 s, {} recorded):",
                lines.len()
            );
            for l in &lines[lines.len().saturating_sub(3)..] {
                println!("      {l}");
            }
        }
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = self.c.kubectl(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("kubectl {args:?}: {}", output_text(&out)))
        }
    }

    fn act(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Apply(yaml) => {
                self.files += 1;
                let file = format!("step-{}.yaml", self.files);
                let out = self.c.apply(&file, yaml);
                if !out.status.success() {
                    return Err(format!("kubectl apply {file}: {}", output_text(&out)));
                }
            }
            Action::DeletePolicy { ns, name } => {
                self.kubectl(&["delete", "networkpolicy", "-n", ns, name])?;
            }
            Action::LabelPod { ns, name, label } => {
                self.kubectl(&["label", "pod", "-n", ns, name, label, "--overwrite"])?;
            }
            Action::LabelNamespace { ns, label } => {
                self.kubectl(&["label", "namespace", ns, label, "--overwrite"])?;
            }
            Action::CreatePod(def) => {
                self.files += 1;
                let file = format!("step-{}.yaml", self.files);
                let out = self.c.apply(&file, &self.pod_yaml(def));
                if !out.status.success() {
                    return Err(format!("kubectl apply {file}: {}", output_text(&out)));
                }
                self.wait_running(std::slice::from_ref(def));
            }
        }
        Ok(())
    }

    /// Undoes what `case` did: its policies, label changes and extra Pods.
    fn undo(&mut self, case: &Case, model: &[PodDef]) -> Result<(), String> {
        self.kubectl(&["delete", "networkpolicies", "--all", "--all-namespaces"])?;
        for action in case.steps.iter().flat_map(|s| &s.actions) {
            match action {
                Action::LabelPod { ns, name, label } => {
                    let key = label_key(label);
                    let original = model
                        .iter()
                        .find(|p| p.ns == *ns && p.name == *name)
                        .and_then(|p| p.labels.iter().find(|(k, _)| *k == key))
                        .map(|(_, v)| *v);
                    let restore = match original {
                        Some(v) => format!("{key}={v}"),
                        None => format!("{key}-"),
                    };
                    self.kubectl(&["label", "pod", "-n", ns, name, &restore, "--overwrite"])?;
                }
                Action::LabelNamespace { ns, label } => {
                    let key = label_key(label);
                    let restore = if key == "ns" {
                        format!("ns={ns}")
                    } else {
                        format!("{key}-")
                    };
                    self.kubectl(&["label", "namespace", ns, &restore, "--overwrite"])?;
                }
                Action::CreatePod(def) => {
                    let peer = def.peer();
                    self.probers.remove(&peer);
                    self.pods.remove(&peer);
                    self.kubectl(&["delete", "pod", "-n", def.ns, def.name, "--wait=false"])?;
                }
                Action::Apply(_) | Action::DeletePolicy { .. } => {}
            }
        }
        Ok(())
    }

    /// Runs `case`: each step's actions, then the matrix until it is the expected one; then
    /// undoes the case and checks that everything is connected again.
    pub fn run(&mut self, case: &Case, model: &[PodDef]) -> CaseResult {
        let start = Instant::now();
        let mut ok = true;
        let multi = case.steps.len() > 1;
        for (n, step) in case.steps.iter().enumerate() {
            let label = if multi {
                format!("{}/{} ({})", case.name, n + 1, step.what)
            } else {
                case.name.to_string()
            };
            let step_start = Instant::now();
            let before = self.last.clone();
            if let Err(e) = step.flows.iter().try_for_each(|f| self.open_flow(f)) {
                println!("case {label}: FAILED: {e}");
                ok = false;
                continue;
            }
            if let Err(e) = step.actions.iter().try_for_each(|a| self.act(a)) {
                println!("case {label}: FAILED: {e}");
                ok = false;
                continue;
            }
            let expected = self.expected(&step.expect);
            // A step that expects what is already there passes at once, before its change has
            // reached the datapath; such a step is probed again a little later.
            let settle = !step.actions.is_empty() && before == expected;
            let converged = self.converge(&expected, settle);
            let flows: Vec<String> = step
                .flows
                .iter()
                .filter_map(|f| self.check_flow(f).err())
                .collect();
            match converged {
                Ok(rounds) if flows.is_empty() => println!(
                    "case {label}: ok ({} probes, {rounds} round{}{}, {:.1} s)",
                    expected.len(),
                    if rounds == 1 { "" } else { "s" },
                    if step.flows.is_empty() {
                        String::new()
                    } else {
                        format!(", {} long-lived connections", step.flows.len())
                    },
                    step_start.elapsed().as_secs_f64()
                ),
                Ok(_) => ok = false,
                Err(diff) => {
                    ok = false;
                    report(&label, &expected, &diff, step_start.elapsed());
                    self.explain(&diff);
                }
            }
            if !flows.is_empty() {
                println!("case {label}: FAILED (long-lived connections)");
                for f in &flows {
                    println!("    {f}");
                }
            }
        }
        self.flows.clear();
        let undo_start = Instant::now();
        let undone = self.undo(case, model);
        let label = format!("{} (undone)", case.name);
        match undone {
            Err(e) => {
                println!("case {label}: FAILED: {e}");
                ok = false;
            }
            Ok(()) => {
                let expected = self.expected(&|_| {});
                if let Err(diff) = self.converge(&expected, false) {
                    ok = false;
                    report(&label, &expected, &diff, undo_start.elapsed());
                    self.explain(&diff);
                }
            }
        }
        CaseResult {
            name: case.name,
            ok,
            took: start.elapsed(),
        }
    }
}

fn label_key(label: &str) -> &str {
    label
        .split_once('=')
        .map(|(k, _)| k)
        .unwrap_or_else(|| label.trim_end_matches('-'))
}

/// The node number of node `name` of cluster `cluster`.
fn node_index(cluster: &str, name: &str) -> u8 {
    name.strip_prefix(cluster)
        .and_then(|r| r.strip_prefix("-n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("node {name} is not of cluster {cluster}"))
}

/// Prints a failed step: how many probes differ and, for each pair of peers, the ports on which
/// they differ in the same way (from → to, ports, expected, observed).
fn report(label: &str, expected: &BTreeMap<Cell, bool>, diff: &[Difference], took: Duration) {
    println!(
        "case {label}: FAILED ({:.1} s): {} of {} probes differ",
        took.as_secs_f64(),
        diff.len(),
        expected.len()
    );
    let mut rows: BTreeMap<(&Peer, &Peer, bool, String), Vec<String>> = BTreeMap::new();
    for d in diff {
        rows.entry((
            &d.cell.from,
            &d.cell.to,
            d.expected,
            d.observed.describe(&d.cell.to),
        ))
        .or_default()
        .push(d.cell.port.to_string());
    }
    println!(
        "    {:<6}   {:<6} {:<31} {:<9} observed",
        "from", "to", "ports", "expected"
    );
    for ((from, to, want, got), ports) in rows.iter().take(MAX_LISTED) {
        println!(
            "    {:<6} → {:<6} {:<31} {:<9} {got}",
            from.to_string(),
            to.to_string(),
            ports.join(","),
            if *want { "allowed" } else { "denied" },
        );
    }
    if rows.len() > MAX_LISTED {
        println!("    … and {} more rows", rows.len() - MAX_LISTED);
    }
}
