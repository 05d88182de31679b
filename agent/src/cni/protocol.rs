//! The CNI 1.1 protocol as keelson speaks it (<https://www.cni.dev/docs/spec/>): the
//! `CNI_*` environment, the network configuration on stdin, error objects with the spec's
//! codes, the result object, and the small JSON request/response the plugin exchanges with the
//! agent over its Unix socket.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CNI version this plugin implements and reports in its results.
pub const CNI_VERSION: &str = "1.1.0";
/// Versions whose result format this plugin produces (1.0.0 and 1.1.0 share it).
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
/// Key of the valid attachments in a GC request's configuration (spec 1.1, "GC").
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// Well-known error codes of the CNI spec ("Error codes" section).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific (codes from 100 on belong to the plugin): setting up or checking the
    /// Pod's interface failed.
    pub const INTERFACE_FAILURE: u32 = 100;
    /// Plugin-specific: the address allocator failed (pool exhausted, state unwritable).
    pub const IPAM_FAILURE: u32 = 101;
    /// Plugin-specific: the eBPF datapath refused the endpoint.
    pub const DATAPATH_FAILURE: u32 = 102;
}

/// The CNI error object, printed on stdout when an operation fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            cni_version: CNI_VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` variables of one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniEnv {
    pub command: Command,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub ifname: String,
    /// `CNI_ARGS`, `K=V;K=V`.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
}

impl CniEnv {
    /// Reads and validates the variables the command needs (spec: "Parameters").
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let command_s = get("CNI_COMMAND")
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set", ""))?;
        let command = Command::parse(&command_s).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "unknown CNI_COMMAND",
                format!("CNI_COMMAND={command_s}"),
            )
        })?;
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(command, Command::Add | Command::Check);
        let require = |k: &str, needed: bool| -> Result<String, CniError> {
            match get(k) {
                Some(v) => Ok(v),
                None if needed => Err(CniError::new(
                    code::INVALID_ENV,
                    format!("{k} is required for {command_s}"),
                    "",
                )),
                None => Ok(String::new()),
            }
        };
        let container_id = require("CNI_CONTAINERID", needs_attachment)?;
        let ifname = require("CNI_IFNAME", needs_attachment)?;
        let netns = require("CNI_NETNS", needs_netns)?;
        if needs_attachment {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Self {
            command,
            container_id,
            netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
            ifname,
            args,
        })
    }
}

/// Container ids are alphanumerics, `_`, `.` and `-`, starting with an alphanumeric
/// (libcni's ValidateContainerID).
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            "invalid CNI_CONTAINERID",
            format!("CNI_CONTAINERID={id}"),
        ))
    }
}

/// Interface names follow the kernel's rules: at most 15 bytes, not `.`/`..`, no `/`, `:` or
/// whitespace (libcni's ValidateInterfaceName).
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            "invalid CNI_IFNAME",
            format!("CNI_IFNAME={name}"),
        ))
    }
}

fn parse_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    CniError::new(
                        code::INVALID_ENV,
                        "malformed CNI_ARGS",
                        format!("CNI_ARGS={s}"),
                    )
                })
        })
        .collect()
}

/// The fields of keelson's network configuration that the plugin reads; the whole object is
/// forwarded to the agent as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub agent_socket: PathBuf,
    pub raw: Value,
}

impl NetConf {
    /// Decodes stdin: broken JSON is code 6 (failed to decode content), a missing field code 7
    /// (invalid network configuration), an unsupported version code 1.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "network configuration is not valid JSON",
                e.to_string(),
            )
        })?;
        let field = |k: &str| raw.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let missing = |k: &str| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("network configuration lacks {k:?}"),
                "",
            )
        };
        let cni_version = field("cniVersion")
            .ok_or_else(|| missing("cniVersion"))?
            .to_owned();
        let name = field("name").ok_or_else(|| missing("name"))?.to_owned();
        let agent_socket =
            PathBuf::from(field("agentSocket").ok_or_else(|| missing("agentSocket"))?);
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError {
                cni_version: cni_version.clone(),
                code: code::INCOMPATIBLE_VERSION,
                msg: "incompatible CNI version".into(),
                details: format!(
                    "config version {cni_version}, plugin supports {SUPPORTED_VERSIONS:?}"
                ),
            });
        }
        Ok(Self {
            cni_version,
            name,
            agent_socket,
            raw,
        })
    }

    /// The attachments a GC request says must be kept.
    pub fn valid_attachments(&self) -> Vec<(String, String)> {
        Self::valid_attachments_of(&self.raw)
    }

    /// The attachments to keep, from a raw configuration object.
    pub fn valid_attachments_of(raw: &Value) -> Vec<(String, String)> {
        raw.get(VALID_ATTACHMENTS_KEY)
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|a| {
                        let id = a.get("containerID")?.as_str()?;
                        let ifname = a.get("ifname")?.as_str()?;
                        Some((id.to_owned(), ifname.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the plugin asks of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRequest {
    pub env: CniEnv,
    pub config: Value,
}

/// What the agent answers: a result object (absent for commands with no output), or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentResponse {
    Ok(Option<Value>),
    Err(CniError),
}

/// CNI result: `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultInterface {
    pub name: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// CNI result: `ips`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultIp {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    pub interface: usize,
}

/// CNI result: `routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRoute {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// The success result of ADD (spec: "Success").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<ResultInterface>,
    pub ips: Vec<ResultIp>,
    pub routes: Vec<ResultRoute>,
}

impl CniResult {
    /// The first IPv4 address of the result, without its prefix length.
    pub fn pod_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.ips
            .iter()
            .find_map(|ip| ip.address.split('/').next()?.parse().ok())
    }
}

/// VERSION's output.
pub fn version_result(cni_version: &str) -> Value {
    serde_json::json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let env = CniEnv::from_lookup(env_of(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=p;K8S_POD_NAMESPACE=default"),
        ]))
        .expect("valid");
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(env.args.get("K8S_POD_NAME").map(String::as_str), Some("p"));

        let err = CniEnv::from_lookup(env_of(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect_err("netns missing");
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(err.msg.contains("CNI_NETNS"), "{err}");
    }

    #[test]
    fn del_without_netns_is_valid_and_version_needs_nothing() {
        let env = CniEnv::from_lookup(env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("valid");
        assert_eq!(env.netns, None);
        assert_eq!(
            CniEnv::from_lookup(env_of(&[("CNI_COMMAND", "VERSION")]))
                .expect("valid")
                .command,
            Command::Version
        );
        assert_eq!(
            CniEnv::from_lookup(env_of(&[("CNI_COMMAND", "GC")]))
                .expect("valid")
                .command,
            Command::Gc
        );
    }

    #[test]
    fn bad_env_is_code_4() {
        for vars in [
            vec![],
            vec![("CNI_COMMAND", "FROB")],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "-bad"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c/1"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "averyveryverylongname"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth:0"),
            ],
            vec![("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "novalue")],
        ] {
            let err = CniEnv::from_lookup(env_of(&vars)).expect_err("invalid env");
            assert_eq!(err.code, code::INVALID_ENV, "{vars:?}: {err}");
        }
    }

    #[test]
    fn netconf_errors_have_the_spec_codes() {
        assert_eq!(
            NetConf::parse(b"{oops").expect_err("broken").code,
            code::DECODE_FAILURE
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"keelson","type":"keelson"}"#)
                .expect_err("no socket")
                .code,
            code::INVALID_CONFIG
        );
        let err = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"k","agentSocket":"/s"}"#)
            .expect_err("old");
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(err.cni_version, "0.2.0");
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"keelson","type":"keelson","agentSocket":"/d/cni.sock",
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"bogus":1}]}"#,
        )
        .expect("valid");
        assert_eq!(conf.agent_socket, PathBuf::from("/d/cni.sock"));
        assert_eq!(
            conf.valid_attachments(),
            vec![("a".to_owned(), "eth0".to_owned())]
        );
    }

    #[test]
    fn error_object_has_the_spec_shape() {
        let v = serde_json::to_value(CniError::new(
            code::TRY_AGAIN_LATER,
            "agent unreachable",
            "connect: refused",
        ))
        .expect("serialize");
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.1.0","code":11,"msg":"agent unreachable","details":"connect: refused"})
        );
    }

    #[test]
    fn result_pod_ip() {
        let r = CniResult {
            cni_version: CNI_VERSION.into(),
            interfaces: vec![],
            ips: vec![ResultIp {
                address: "10.244.1.5/32".into(),
                gateway: None,
                interface: 1,
            }],
            routes: vec![],
        };
        assert_eq!(r.pod_ip(), Some(std::net::Ipv4Addr::new(10, 244, 1, 5)));
    }
}
