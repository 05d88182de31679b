//! Pod status as the kubelet-lite reports it: the phase, the four standard conditions and the
//! container statuses, computed without I/O from what the runtime knows about a Pod.
//!
//! The phase follows the kubelet's `getPhase` (pkg/kubelet/kubelet_pods.go): a container that
//! never started keeps the Pod Pending; one that waits to be restarted counts as running.

use std::{collections::BTreeMap, net::Ipv4Addr};

use jiff::Timestamp;
use serde_json::{Value, json};

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Parses the API value; absent or unknown means the API default, Always.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    /// `Completed` or `Error` (the kubelet's reasons), or what killed it.
    pub reason: String,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
}

impl Terminated {
    pub fn from_exit(
        exit_code: i32,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    ) -> Self {
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        Self {
            exit_code,
            reason: reason.to_owned(),
            started_at,
            finished_at,
        }
    }
}

/// A container's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Waiting { reason: String, message: String },
    Running { started_at: Timestamp },
    Terminated(Terminated),
}

/// What the runtime knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    pub last_terminated: Option<Terminated>,
    pub restart_count: u32,
    /// Result of the readiness probe; `true` when the container has none.
    pub probe_ready: bool,
}

impl ContainerView {
    pub fn ready(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. }) && self.probe_ready
    }
}

/// What the runtime knows about one Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub uid: String,
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Ipv4Addr,
    pub start_time: Timestamp,
    pub restart_policy: RestartPolicy,
    /// Init containers, run one after the other to success before `containers` start.
    pub init_containers: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
}

impl PodView {
    /// Whether every init container ran to success.
    pub fn initialized(&self) -> bool {
        self.init_containers
            .iter()
            .all(|c| matches!(&c.state, ContainerState::Terminated(t) if t.exit_code == 0))
    }

    /// Whether an init container failed for good (restartPolicy Never).
    fn init_failed(&self) -> bool {
        self.restart_policy == RestartPolicy::Never
            && self
                .init_containers
                .iter()
                .any(|c| matches!(&c.state, ContainerState::Terminated(t) if t.exit_code != 0))
    }
}

/// Pod phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }
}

/// The Pod's phase.
pub fn phase(view: &PodView) -> Phase {
    if view.init_failed() {
        return Phase::Failed;
    }
    if view.pod_ip.is_none() || view.containers.is_empty() || !view.initialized() {
        return Phase::Pending;
    }
    let (mut waiting, mut running, mut failed) = (0, 0, 0);
    for c in &view.containers {
        match &c.state {
            ContainerState::Running { .. } => running += 1,
            // Waiting for a restart: the Pod as a whole keeps running.
            ContainerState::Waiting { .. }
                if c.restart_count > 0 || c.last_terminated.is_some() =>
            {
                running += 1
            }
            ContainerState::Waiting { .. } => waiting += 1,
            ContainerState::Terminated(t) if view.restart_policy.restarts(t.exit_code) => {
                running += 1
            }
            ContainerState::Terminated(t) if t.exit_code != 0 => failed += 1,
            ContainerState::Terminated(_) => {}
        }
    }
    if waiting > 0 {
        Phase::Pending
    } else if running > 0 {
        Phase::Running
    } else if failed > 0 {
        Phase::Failed
    } else {
        Phase::Succeeded
    }
}

/// Condition statuses and when they last changed, carried from one report to the next so
/// `lastTransitionTime` only moves when the status does.
pub type Transitions = BTreeMap<&'static str, (bool, Timestamp)>;

fn ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v =
        json!({ "exitCode": t.exit_code, "reason": t.reason, "finishedAt": ts(t.finished_at) });
    if let Some(s) = t.started_at {
        v["startedAt"] = json!(ts(s));
    }
    v
}

fn state_json(s: &ContainerState) -> Value {
    match s {
        ContainerState::Waiting { reason, message } => {
            json!({ "waiting": { "reason": reason, "message": message } })
        }
        ContainerState::Running { started_at } => {
            json!({ "running": { "startedAt": ts(*started_at) } })
        }
        ContainerState::Terminated(t) => json!({ "terminated": terminated_json(t) }),
    }
}

/// The `status` object of the Pod, and the transitions to pass to the next call.
pub fn pod_status(view: &PodView, prev: &Transitions, now: Timestamp) -> (Value, Transitions) {
    let phase = phase(view);
    let all_ready = !view.containers.is_empty() && view.containers.iter().all(ContainerView::ready);
    let terminal = matches!(phase, Phase::Succeeded | Phase::Failed);
    let mut next = Transitions::new();
    let mut conditions = Vec::new();
    let wanted: [(&'static str, bool, Option<&str>); 4] = [
        ("PodScheduled", true, None),
        (
            "Initialized",
            view.initialized(),
            (!view.initialized()).then_some("ContainersNotInitialized"),
        ),
        (
            "ContainersReady",
            all_ready,
            (!all_ready).then_some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        (
            "Ready",
            all_ready,
            (!all_ready).then_some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
    ];
    for (kind, status, reason) in wanted {
        let since = match prev.get(kind) {
            Some((was, at)) if *was == status => *at,
            _ => now,
        };
        next.insert(kind, (status, since));
        let mut c = json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "lastTransitionTime": ts(since),
        });
        if let Some(reason) = reason {
            c["reason"] = json!(reason);
        }
        conditions.push(c);
    }
    let statuses = |list: &[ContainerView], init: bool| -> Vec<Value> {
        list.iter()
            .map(|c| {
                let mut v = json!({
                    "name": c.name,
                    "image": c.image,
                    "imageID": "",
                    "containerID": format!("keelson://{}/{}", view.uid, c.name),
                    // A completed init container counts as ready (the kubelet's convention).
                    "ready": if init {
                        matches!(&c.state, ContainerState::Terminated(t) if t.exit_code == 0)
                    } else {
                        c.ready()
                    },
                    "started": matches!(c.state, ContainerState::Running { .. }),
                    "restartCount": c.restart_count,
                    "state": state_json(&c.state),
                });
                if let Some(t) = &c.last_terminated {
                    v["lastState"] = json!({ "terminated": terminated_json(t) });
                }
                v
            })
            .collect()
    };
    let containers = statuses(&view.containers, false);
    let mut status = json!({
        "phase": phase.as_str(),
        "conditions": conditions,
        "hostIP": view.host_ip.to_string(),
        "hostIPs": [{ "ip": view.host_ip.to_string() }],
        "startTime": ts(view.start_time),
        "containerStatuses": containers,
    });
    if !view.init_containers.is_empty() {
        status["initContainerStatuses"] = json!(statuses(&view.init_containers, true));
    }
    if let Some(ip) = view.pod_ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{ "ip": ip.to_string() }]);
    }
    (status, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("ts")
    }

    fn running(name: &str, probe_ready: bool) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "busybox".into(),
            state: ContainerState::Running { started_at: t(1) },
            last_terminated: None,
            restart_count: 0,
            probe_ready,
        }
    }

    fn exited(name: &str, code: i32) -> ContainerView {
        ContainerView {
            state: ContainerState::Terminated(Terminated::from_exit(code, Some(t(1)), t(2))),
            ..running(name, true)
        }
    }

    fn pod(policy: RestartPolicy, containers: Vec<ContainerView>) -> PodView {
        PodView {
            uid: "u1".into(),
            pod_ip: Some(Ipv4Addr::new(10, 244, 1, 2)),
            host_ip: Ipv4Addr::new(10, 250, 0, 11),
            start_time: t(0),
            restart_policy: policy,
            init_containers: vec![],
            containers,
        }
    }

    fn condition(status: &Value, kind: &str) -> (String, Option<String>, String) {
        let c = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == kind)
            .expect("cond");
        (
            c["status"].as_str().expect("status").to_owned(),
            c["reason"].as_str().map(str::to_owned),
            c["lastTransitionTime"].as_str().expect("time").to_owned(),
        )
    }

    #[test]
    fn phases() {
        use RestartPolicy::*;
        let mut p = pod(Always, vec![running("a", true)]);
        assert_eq!(phase(&p), Phase::Running);
        p.pod_ip = None;
        assert_eq!(phase(&p), Phase::Pending);
        let waiting = ContainerView {
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            ..running("b", true)
        };
        assert_eq!(
            phase(&pod(Always, vec![running("a", true), waiting.clone()])),
            Phase::Pending
        );
        let restarting = ContainerView {
            restart_count: 1,
            ..waiting
        };
        assert_eq!(phase(&pod(Always, vec![restarting])), Phase::Running);
        assert_eq!(
            phase(&pod(Never, vec![exited("a", 0), exited("b", 0)])),
            Phase::Succeeded
        );
        assert_eq!(
            phase(&pod(Never, vec![exited("a", 0), exited("b", 2)])),
            Phase::Failed
        );
        assert_eq!(
            phase(&pod(OnFailure, vec![exited("a", 0)])),
            Phase::Succeeded
        );
        assert_eq!(phase(&pod(OnFailure, vec![exited("a", 1)])), Phase::Running);
        assert_eq!(
            phase(&pod(Never, vec![running("a", true), exited("b", 1)])),
            Phase::Running
        );
    }

    #[test]
    fn restart_policy_decisions() {
        assert!(RestartPolicy::Always.restarts(0));
        assert!(RestartPolicy::OnFailure.restarts(137));
        assert!(!RestartPolicy::OnFailure.restarts(0));
        assert!(!RestartPolicy::Never.restarts(1));
        assert_eq!(RestartPolicy::parse(None), RestartPolicy::Always);
        assert_eq!(RestartPolicy::parse(Some("Never")), RestartPolicy::Never);
    }

    #[test]
    fn ready_needs_every_container_running_and_probed() {
        let p = pod(
            RestartPolicy::Always,
            vec![running("a", true), running("b", false)],
        );
        let (status, trans) = pod_status(&p, &Transitions::new(), t(10));
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.244.1.2");
        assert_eq!(status["podIPs"][0]["ip"], "10.244.1.2");
        assert_eq!(status["hostIP"], "10.250.0.11");
        assert_eq!(condition(&status, "Ready").0, "False");
        assert_eq!(
            condition(&status, "Ready").1.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(condition(&status, "PodScheduled").0, "True");
        assert_eq!(status["containerStatuses"][1]["ready"], false);
        assert_eq!(
            status["containerStatuses"][0]["state"]["running"]["startedAt"],
            "2023-11-14T22:13:21Z"
        );

        // The probe passes later: Ready flips and its transition time moves; PodScheduled keeps its.
        let p = pod(
            RestartPolicy::Always,
            vec![running("a", true), running("b", true)],
        );
        let (status, _) = pod_status(&p, &trans, t(20));
        assert_eq!(condition(&status, "Ready").0, "True");
        assert_eq!(condition(&status, "Ready").2, ts(t(20)));
        assert_eq!(condition(&status, "PodScheduled").2, ts(t(10)));
    }

    #[test]
    fn init_containers_gate_the_pod() {
        use RestartPolicy::*;
        let waiting = ContainerView {
            state: ContainerState::Waiting {
                reason: "PodInitializing".into(),
                message: String::new(),
            },
            ..running("main", true)
        };
        let mut p = pod(Always, vec![waiting]);
        p.init_containers = vec![running("init", true)];
        assert_eq!(phase(&p), Phase::Pending);
        let (status, _) = pod_status(&p, &Transitions::new(), t(5));
        assert_eq!(condition(&status, "Initialized").0, "False");
        assert_eq!(
            condition(&status, "Initialized").1.as_deref(),
            Some("ContainersNotInitialized")
        );
        assert_eq!(status["initContainerStatuses"][0]["name"], "init");
        assert_eq!(status["initContainerStatuses"][0]["ready"], false);

        p.init_containers = vec![exited("init", 0)];
        p.containers = vec![running("main", true)];
        assert_eq!(phase(&p), Phase::Running);
        let (status, _) = pod_status(&p, &Transitions::new(), t(5));
        assert_eq!(condition(&status, "Initialized").0, "True");
        assert_eq!(status["initContainerStatuses"][0]["ready"], true);

        p.init_containers = vec![exited("init", 1)];
        assert_eq!(
            phase(&p),
            Phase::Pending,
            "a failed init container is retried unless restartPolicy is Never"
        );
        p.restart_policy = Never;
        assert_eq!(phase(&p), Phase::Failed);
    }

    #[test]
    fn container_status_carries_restarts_and_last_state() {
        let c = ContainerView {
            restart_count: 3,
            last_terminated: Some(Terminated::from_exit(1, Some(t(1)), t(2))),
            ..running("a", true)
        };
        let (status, _) = pod_status(
            &pod(RestartPolicy::Always, vec![c]),
            &Transitions::new(),
            t(5),
        );
        let cs = &status["containerStatuses"][0];
        assert_eq!(cs["restartCount"], 3);
        assert_eq!(cs["started"], true);
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(cs["containerID"], "keelson://u1/a");

        let (status, _) = pod_status(
            &pod(RestartPolicy::Never, vec![exited("a", 0)]),
            &Transitions::new(),
            t(5),
        );
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(
            status["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert_eq!(
            condition(&status, "Ready").1.as_deref(),
            Some("PodCompleted")
        );
    }
}
