//! Long-running probers: one Python process inside each source's network namespace that
//! takes a round of probes as one line of JSON and answers with one line of outcomes, running
//! the probes of the round in parallel. The same handle drives the long-lived connection
//! clients, which also talk in lines.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use super::model::{Outcome, Peer, Proto};

/// Reads `[[address, port, "tcp"|"udp"], ...]` per line and prints a list of outcomes in the
/// same order: `ok:<answer>`, `timeout`, `refused` or `error:<text>`. argv[1] is the timeout
/// in seconds. UDP sockets are connected so that an ICMP error shows as refused and only an
/// answer from the probed address counts.
pub const PROBER: &str = r#"import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
timeout = float(sys.argv[1])
def probe(job):
    host, port, proto = job
    s = None
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=timeout)
            data = b""
            while True:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            s.connect((host, port))
            s.send(b"ping")
            data = s.recv(256)
        return "ok:" + data.decode(errors="replace").strip()
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "error:%s" % e
    finally:
        if s is not None:
            s.close()
pool = ThreadPoolExecutor(max_workers=96)
for line in sys.stdin:
    jobs = json.loads(line)
    print(json.dumps(list(pool.map(probe, jobs))), flush=True)
"#;

/// A prober (or another line-driven helper) process; killed on drop.
#[derive(Debug)]
pub struct Prober {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Prober {
    /// Starts the prober in network namespace `netns` (a path).
    pub fn in_netns(netns: &str, dir: &Path, peer: &Peer, timeout: &str) -> Self {
        let log = format!("prober-{}.log", peer.to_string().replace('/', "-"));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={netns}"))
            .arg(super::PYTHON)
            .arg(dir.join("prober.py"))
            .arg(timeout);
        Self::spawn(cmd, dir, &log)
    }

    /// Starts `cmd` (a helper script under some wrapper), its stderr into file `log` of the
    /// data directory.
    pub fn spawn(mut cmd: Command, dir: &Path, log: &str) -> Self {
        let log = std::fs::File::create(dir.join(log)).expect("helper log");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting a prober");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Prober {
            child,
            stdin,
            stdout,
        }
    }

    /// Hands a round to the prober without waiting for it.
    pub fn send(&mut self, jobs: &[(String, u16, Proto)]) -> Result<(), String> {
        let line: Vec<serde_json::Value> = jobs
            .iter()
            .map(|(host, port, proto)| serde_json::json!([host, port, proto.name()]))
            .collect();
        let mut text = serde_json::to_string(&line).expect("json");
        text.push('\n');
        self.stdin
            .write_all(text.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("prober gone: {e}"))
    }

    /// Writes one line to the process.
    pub fn write_line(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("helper gone: {e}"))
    }

    /// Reads one line from the process (empty once it exited).
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line
    }

    /// The outcomes of the round sent last, `n` of them.
    pub fn receive(&mut self, n: usize) -> Vec<Outcome> {
        let mut line = String::new();
        let parsed = match self.stdout.read_line(&mut line) {
            Ok(0) => Err("prober exited".to_string()),
            Ok(_) => serde_json::from_str::<Vec<String>>(&line)
                .map_err(|e| format!("prober said {line:?}: {e}")),
            Err(e) => Err(format!("reading the prober: {e}")),
        };
        match parsed {
            Ok(v) if v.len() == n => v.iter().map(|s| parse(s)).collect(),
            Ok(v) => vec![Outcome::Error(format!("{} outcomes for {n} probes", v.len())); n],
            Err(e) => vec![Outcome::Error(e); n],
        }
    }
}

fn parse(s: &str) -> Outcome {
    if let Some(name) = s.strip_prefix("ok:") {
        Outcome::Answer(name.to_string())
    } else if s == "timeout" {
        Outcome::Timeout
    } else if s == "refused" {
        Outcome::Refused
    } else {
        Outcome::Error(s.strip_prefix("error:").unwrap_or(s).to_string())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
