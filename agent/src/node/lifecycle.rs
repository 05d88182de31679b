//! Container lifecycle hooks (`lifecycle.postStart`, `lifecycle.preStop`): what a handler does
//! (exec, httpGet, tcpSocket, sleep) and running it against a container, as the kubelet's
//! `handlerRunner` does (pkg/kubelet/lifecycle/handlers.go).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};

use super::probe::{self, ProbeAction, ProbeTarget};

/// A hook's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// Runs like a probe: exec in the container, an HTTP GET or a TCP connect to the Pod.
    Action(ProbeAction),
    /// `sleep.seconds` (KEP-3960).
    Sleep(Duration),
}

/// The hook of a handler; `None` for one this node cannot run (an unresolvable named port).
pub fn hook(handler: &LifecycleHandler, container: &Container) -> Option<Hook> {
    if let Some(s) = &handler.sleep {
        return Some(Hook::Sleep(Duration::from_secs(
            u64::try_from(s.seconds).unwrap_or(0),
        )));
    }
    // The handler's actions are a probe's; plan them as one to share the port resolution.
    let as_probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        ..Probe::default()
    };
    probe::plan(&as_probe, container).map(|p| Hook::Action(p.action))
}

/// Runs the hook within `timeout`; `true` when it succeeded.
pub async fn run(hook: &Hook, target: &ProbeTarget, timeout: Duration) -> bool {
    match hook {
        Hook::Sleep(d) => {
            tokio::time::sleep((*d).min(timeout)).await;
            true
        }
        Hook::Action(a) => probe::run_once(a, target, timeout).await,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn handlers_become_hooks() {
        let c: Container = serde_json::from_value(json!({"name": "c",
            "ports": [{"name": "http", "containerPort": 8080}]}))
        .expect("container");
        let h = |v: serde_json::Value| -> LifecycleHandler {
            serde_json::from_value(v).expect("handler")
        };
        assert_eq!(
            hook(&h(json!({"exec": {"command": ["sh", "-c", "true"]}})), &c),
            Some(Hook::Action(ProbeAction::Exec {
                argv: vec!["sh".into(), "-c".into(), "true".into()]
            }))
        );
        assert_eq!(
            hook(
                &h(json!({"httpGet": {"port": "http", "path": "/stop"}})),
                &c
            ),
            Some(Hook::Action(ProbeAction::Http {
                port: 8080,
                path: "/stop".into(),
                host: None
            }))
        );
        assert_eq!(
            hook(&h(json!({"sleep": {"seconds": 3}})), &c),
            Some(Hook::Sleep(Duration::from_secs(3)))
        );
        assert_eq!(hook(&h(json!({"tcpSocket": {"port": "nope"}})), &c), None);
    }
}
