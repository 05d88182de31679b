//! The `keelson cni` process: validates the CNI environment and configuration, answers VERSION
//! itself and forwards every other command to the agent's socket.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::protocol::{
    AgentRequest, AgentResponse, CniEnv, CniError, Command, NetConf, code, version_result,
};

/// How long the plugin waits for the agent. ADD creates links and programs the datapath, which
/// takes well under a second; the margin covers a loaded node.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the plugin process prints and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

impl Outcome {
    /// A failure: the error object on stdout, exit code 1 (spec: "a non-zero return code").
    pub fn error(err: &CniError) -> Self {
        Self {
            stdout: serde_json::to_string(err).unwrap_or_default(),
            exit_code: 1,
        }
    }
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            exit_code: 0,
        }
    }
}

/// Runs one plugin invocation against the given environment and stdin.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    match run_inner(get_env, stdin) {
        Ok(stdout) => Outcome::ok(stdout),
        Err(e) => Outcome::error(&e),
    }
}

fn run_inner(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String, CniError> {
    let env = CniEnv::from_lookup(get_env)?;
    if env.command == Command::Version {
        // VERSION's stdin carries only cniVersion (spec: "VERSION"); it may even be empty.
        let version = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| super::protocol::CNI_VERSION.to_owned());
        return Ok(version_result(&version).to_string());
    }
    let conf = NetConf::parse(stdin)?;
    let request = AgentRequest {
        env,
        config: conf.raw.clone(),
    };
    let with_version = |mut e: CniError| {
        e.cni_version = conf.cni_version.clone();
        e
    };
    match ask_agent(&conf.agent_socket, &request).map_err(with_version)? {
        AgentResponse::Ok(Some(result)) => Ok(result.to_string()),
        AgentResponse::Ok(None) => Ok(String::new()),
        AgentResponse::Err(e) => Err(e),
    }
}

/// One request, one response over the agent's socket. An agent that cannot be reached is
/// "try again later" (code 11): the runtime retries, and the agent may just be restarting.
fn ask_agent(socket: &Path, request: &AgentRequest) -> Result<AgentResponse, CniError> {
    let unreachable = |what: &str, e: std::io::Error| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("keelson agent unreachable at {}", socket.display()),
            format!("{what}: {e}"),
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable("connect", e))?;
    stream
        .set_read_timeout(Some(AGENT_TIMEOUT))
        .map_err(|e| unreachable("set timeout", e))?;
    stream
        .set_write_timeout(Some(AGENT_TIMEOUT))
        .map_err(|e| unreachable("set timeout", e))?;
    let body = serde_json::to_vec(request).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "encoding the agent request",
            e.to_string(),
        )
    })?;
    stream
        .write_all(&body)
        .map_err(|e| unreachable("write", e))?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| unreachable("shutdown", e))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| unreachable("read", e))?;
    serde_json::from_slice(&reply).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "the agent's answer is not valid",
            e.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn error_of(out: &Outcome) -> CniError {
        serde_json::from_str(&out.stdout).expect("stdout is a CNI error object")
    }

    #[test]
    fn version_prints_supported_versions() {
        let out = run(
            env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"1.0.0"}"#,
        );
        assert_eq!(out.exit_code, 0);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn failures_print_error_objects_and_exit_non_zero() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        let out = run(env(&add), b"not json");
        assert_ne!(out.exit_code, 0);
        assert_eq!(error_of(&out).code, code::DECODE_FAILURE);

        let out = run(env(&[("CNI_COMMAND", "ADD")]), b"{}");
        assert_ne!(out.exit_code, 0);
        assert_eq!(error_of(&out).code, code::INVALID_ENV);

        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("absent.sock");
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"keelson","type":"keelson","agentSocket":"{}"}}"#,
            sock.display()
        );
        let out = run(env(&add), conf.as_bytes());
        assert_ne!(out.exit_code, 0);
        let err = error_of(&out);
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert_eq!(err.cni_version, "1.0.0");
    }
}
