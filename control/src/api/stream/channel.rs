//! The Kubernetes channel protocol over WebSockets (k8s.io/apimachinery
//! pkg/util/httpstream/wsstream, KEP-4006 for v5): every binary message starts with a channel
//! byte. exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 error (a `Status`), 4 resize; v5 adds
//! the client's close signal `255, <channel>`. Port-forward: per port `i` channels `2i`
//! (data) and `2i+1` (error), each opening with the port as two little-endian bytes. Plus the
//! typed query options of the streaming subresources.

use super::super::error::ApiError;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5's close signal.
pub const CLOSE: u8 = 255;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// The WebSocket port-forward subprotocol of kube-rs and the Python client (wsstream channels).
pub const PORT_FORWARD: &str = "portforward.k8s.io";
/// kubectl's SPDY-over-WebSocket tunnel (KEP-4006, PortForwardWebsockets): the WebSocket
/// subprotocol is the SPDY one with this prefix, and SPDY frames travel in binary messages.
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The plain SPDY upgrade (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version`).
pub const SPDY_UPGRADE: &str = "SPDY/3.1";

/// One message of the channel protocol.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    v
}

/// Splits a message into its channel and payload.
pub fn split(msg: &[u8]) -> Option<(u8, &[u8])> {
    msg.split_first().map(|(c, rest)| (*c, rest))
}

/// Strips the port prefix from the first message of each port-forward channel.
#[derive(Debug, Default)]
pub struct PortPrefix {
    seen: Vec<bool>,
}

impl PortPrefix {
    /// The payload of a message on `channel` without its port prefix, if this is the channel's
    /// first message.
    pub fn strip<'a>(&mut self, channel: u8, data: &'a [u8]) -> &'a [u8] {
        let i = usize::from(channel);
        if self.seen.len() <= i {
            self.seen.resize(i + 1, false);
        }
        if self.seen[i] {
            data
        } else {
            self.seen[i] = true;
            data.get(2..).unwrap_or_default()
        }
    }
}

/// The query of `pods/exec`, `pods/attach` (PodExecOptions, PodAttachOptions) and
/// `pods/portforward` (PodPortForwardOptions). `command` and `ports` repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub ports: Vec<u16>,
}

impl StreamOptions {
    /// Parses a query string as kube-apiserver's query parameter conversion reads it.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut o = Self::default();
        let flag = |k: &str, v: &str| match v {
            "true" | "1" | "True" => Ok(true),
            "false" | "0" | "False" | "" => Ok(false),
            _ => Err(ApiError::BadRequest(format!(
                "invalid value {v:?} for {k}: a boolean is expected"
            ))),
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "container" => o.container = Some(v.into_owned()),
                "command" => o.command.push(v.into_owned()),
                "stdin" => o.stdin = flag(&k, &v)?,
                "stdout" => o.stdout = flag(&k, &v)?,
                "stderr" => o.stderr = flag(&k, &v)?,
                "tty" => o.tty = flag(&k, &v)?,
                "ports" | "port" => {
                    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        let port = p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "error parsing port {p:?}: it must be a number between 1 and 65535"
                            ))
                        })?;
                        o.ports.push(port);
                    }
                }
                _ => {}
            }
        }
        Ok(o)
    }

    /// The query the agent gets (the kubelet's parameter names).
    pub fn agent_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for c in &self.command {
            q.append_pair("command", c);
        }
        for (k, v) in [
            ("stdin", self.stdin),
            ("stdout", self.stdout),
            ("stderr", self.stderr),
            ("tty", self.tty),
        ] {
            if v {
                q.append_pair(k, "true");
            }
        }
        for p in &self.ports {
            q.append_pair("port", &p.to_string());
        }
        q.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_options_as_kubectl_sends_them() {
        let o = StreamOptions::parse(
            "command=sh&command=-c&command=echo+%24HOSTNAME%3B+exit+3&container=web&stdin=true&stdout=true&stderr=true&tty=false",
        )
        .expect("parse");
        assert_eq!(o.command, ["sh", "-c", "echo $HOSTNAME; exit 3"]);
        assert_eq!(o.container.as_deref(), Some("web"));
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let again = StreamOptions::parse(&o.agent_query()).expect("agent query");
        assert_eq!(again.command, o.command);
        assert!(again.stdin && again.stdout && again.stderr && !again.tty);
        assert!(StreamOptions::parse("tty=maybe").is_err());
    }

    #[test]
    fn ports_repeat_or_are_comma_separated() {
        let o = StreamOptions::parse("ports=8080&ports=53,9000").expect("parse");
        assert_eq!(o.ports, [8080, 53, 9000]);
        for bad in ["ports=0", "ports=65536", "ports=http"] {
            assert!(StreamOptions::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_messages_and_port_prefixes() {
        assert_eq!(frame(STDOUT, b"hi"), b"\x01hi");
        assert_eq!(split(b"\x03{}"), Some((ERROR, &b"{}"[..])));
        assert_eq!(split(b""), None);
        let mut p = PortPrefix::default();
        assert_eq!(p.strip(0, &8080u16.to_le_bytes()), b"");
        assert_eq!(p.strip(1, b"\x90\x1fboom"), b"boom");
        assert_eq!(p.strip(0, b"data"), b"data");
    }
}
