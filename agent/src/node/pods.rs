//! The kubelet-lite: runs the Pods bound to this Node. It watches Pods with
//! `spec.nodeName=<node>` and gives each one a worker that sets up its sandbox (cgroup,
//! network namespace, `keelson cni` ADD), supervises its containers through the `process`
//! runtime with the Pod's restart policy, runs readiness probes, reports `pods/status`, and on
//! deletion stops the containers within the grace period, tears the sandbox down and confirms
//! the deletion to the API server (delete with gracePeriodSeconds=0).

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::watcher::{self, Event},
};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::{
    io::AsyncWriteExt as _,
    sync::{Notify, watch},
};
use tokio_util::sync::CancellationToken;

use super::{
    env::{EnvSources, container_env},
    probe::{self, ProbeState, ProbeTarget},
    process::{self, ContainerRecord, PodRecord, ProcessSpec, Running},
    status::{
        self, ContainerState, ContainerView, PodView, RestartPolicy, Terminated, Transitions,
    },
};
use crate::{
    cni::protocol::{CniError, CniResult},
    netns,
};

/// The default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Delay between attempts to set up a sandbox that failed.
const SANDBOX_RETRY: Duration = Duration::from_secs(5);

/// What the Pod runtime needs from the agent's configuration.
#[derive(Debug, Clone)]
pub struct PodRuntimeConfig {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// The node's network namespace (`None`: the agent's own); hostNetwork Pods run in it.
    pub node_netns: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// The node's cgroup root; Pods run in `<root>/pods/<uid>`.
    pub cgroup_root: PathBuf,
    /// The `keelson` binary, run as `keelson cni`.
    pub cni_bin: PathBuf,
    /// The agent's CNI socket, passed to the plugin in the network configuration.
    pub cni_socket: PathBuf,
}

impl PodRuntimeConfig {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid)
    }
    pub fn pod_cgroup(&self, uid: &str) -> PathBuf {
        self.cgroup_root.join("pods").join(uid)
    }
    /// The network configuration handed to the plugin on stdin.
    pub fn cni_config(&self) -> serde_json::Value {
        json!({
            "cniVersion": crate::cni::protocol::CNI_VERSION,
            "name": "keelson",
            "type": "keelson",
            "agentSocket": self.cni_socket,
        })
    }
}

/// Errors of running a Pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("creating {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace")]
    Netns(#[from] netns::NetnsError),
    #[error("running the CNI plugin {bin}")]
    CniSpawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI {command} failed")]
    Cni {
        command: &'static str,
        #[source]
        source: CniError,
    },
    #[error("CNI {command} printed an unreadable answer: {output}")]
    CniOutput {
        command: &'static str,
        output: String,
    },
    #[error("pod state")]
    Process(#[from] process::ProcessError),
}

/// Runs `keelson cni` with `command` for a Pod's attachment (CNI spec 1.1, "Parameters").
pub async fn cni_call(
    cfg: &PodRuntimeConfig,
    command: &'static str,
    container_id: &str,
    netns: Option<&Path>,
    pod: (&str, &str, &str),
) -> Result<Option<CniResult>, PodError> {
    let (namespace, name, uid) = pod;
    let mut cmd = tokio::process::Command::new(&cfg.cni_bin);
    cmd.arg("cni")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cfg.cni_bin.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", ns);
    }
    let spawn_err = |source| PodError::CniSpawn {
        bin: cfg.cni_bin.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(cfg.cni_config().to_string().as_bytes())
            .await
            .map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(match serde_json::from_str::<CniError>(&stdout) {
            Ok(source) => PodError::Cni { command, source },
            Err(_) => PodError::CniOutput {
                command,
                output: stdout,
            },
        });
    }
    if command != "ADD" {
        return Ok(None);
    }
    serde_json::from_str(&stdout)
        .map(Some)
        .map_err(|_| PodError::CniOutput {
            command,
            output: stdout,
        })
}

/// Shared state of one Pod's worker and its container supervisors.
struct PodShared {
    cfg: Arc<PodRuntimeConfig>,
    uid: String,
    netns: PathBuf,
    cgroup: PathBuf,
    pod_dir: PathBuf,
    pod_ip: Ipv4Addr,
    policy: RestartPolicy,
    views: Mutex<Vec<ContainerView>>,
    init_views: Mutex<Vec<ContainerView>>,
    record: Mutex<PodRecord>,
    changed: Notify,
    stop: CancellationToken,
}

impl PodShared {
    fn update_view(&self, idx: usize, f: impl FnOnce(&mut ContainerView)) {
        if let Ok(mut views) = self.views.lock()
            && let Some(v) = views.get_mut(idx)
        {
            f(v);
        }
        self.changed.notify_one();
    }

    fn update_init_view(&self, idx: usize, f: impl FnOnce(&mut ContainerView)) {
        if let Ok(mut views) = self.init_views.lock()
            && let Some(v) = views.get_mut(idx)
        {
            f(v);
        }
        self.changed.notify_one();
    }

    fn update_record(&self, f: impl FnOnce(&mut PodRecord)) {
        if let Ok(mut rec) = self.record.lock() {
            f(&mut rec);
            if let Err(e) = rec.save(&self.pod_dir) {
                tracing::warn!(uid = %self.uid, error = %crate::cni::server::error_chain(&e), "saving pod state");
            }
        }
    }
}

/// Runs one container: start (or re-adopt), wait, restart per policy with backoff, until the
/// Pod stops.
async fn supervise(
    shared: Arc<PodShared>,
    idx: usize,
    container: Container,
    env: Vec<(String, String)>,
) {
    let name = container.name.clone();
    let recorded = shared
        .record
        .lock()
        .ok()
        .and_then(|r| r.containers.get(&name).cloned());
    // A container that already ran to its end before the agent restarted is not run again
    // unless the restart policy says so; one that died unseen counts as killed (exit 137,
    // the kubelet's ContainerStatusUnknown).
    if let Some(c) = &recorded
        && !process::is_alive(c.pid, c.start_ticks)
    {
        let code = c.exit_code.unwrap_or(137);
        if !shared.policy.restarts(code) {
            let finished = Terminated::from_exit(
                code,
                Some(c.started_at),
                c.finished_at.unwrap_or_else(jiff::Timestamp::now),
            );
            shared.update_view(idx, |v| {
                v.state = ContainerState::Terminated(finished);
                v.restart_count = c.restart_count;
            });
            return;
        }
    }
    let adopted = recorded
        .clone()
        .filter(|c| process::is_alive(c.pid, c.start_ticks));
    let mut restarts = recorded
        .as_ref()
        .map_or(0, |c| c.restart_count + u32::from(adopted.is_none()));
    let mut running = adopted.map(|c| {
        tracing::info!(uid = %shared.uid, container = %name, pid = c.pid, "re-adopted running container");
        let started_at = c.started_at;
        shared.update_view(idx, |v| {
            v.state = ContainerState::Running { started_at };
            v.restart_count = c.restart_count;
        });
        (Running::Adopted { pid: c.pid, ticks: c.start_ticks }, started_at, Instant::now())
    });
    let argv = process::container_argv(
        container.command.as_deref().unwrap_or_default(),
        container.args.as_deref().unwrap_or_default(),
    );
    let spec = argv.map(|argv| ProcessSpec {
        argv,
        env,
        cwd: container
            .working_dir
            .clone()
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("/"), PathBuf::from),
        log: shared.pod_dir.join(format!("{name}.log")),
        netns: shared.netns.clone(),
        cgroup: shared.cgroup.clone(),
    });
    // Failed starts back off like crashes but are not restarts of a container that ran.
    let mut create_failures = 0u32;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let (mut proc_, started_at, since) = match running.take() {
            Some(r) => r,
            None => {
                match spec.as_ref().map_err(|e| e.to_string()).and_then(|s| {
                    process::spawn(s).map_err(|e| crate::cni::server::error_chain(&e))
                }) {
                    Ok(child) => {
                        let now = jiff::Timestamp::now();
                        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
                        let ticks = process::start_ticks(pid).unwrap_or(0);
                        shared.update_record(|r| {
                            r.containers.insert(
                                name.clone(),
                                ContainerRecord {
                                    pid,
                                    start_ticks: ticks,
                                    started_at: now,
                                    restart_count: restarts,
                                    exit_code: None,
                                    finished_at: None,
                                },
                            );
                        });
                        shared.update_view(idx, |v| {
                            v.state = ContainerState::Running { started_at: now };
                            v.restart_count = restarts;
                        });
                        tracing::info!(uid = %shared.uid, container = %name, pid, "container started");
                        (Running::Child(child), now, Instant::now())
                    }
                    Err(msg) => {
                        tracing::warn!(uid = %shared.uid, container = %name, error = %msg, "starting container");
                        create_failures = create_failures.saturating_add(1);
                        shared.update_view(idx, |v| {
                            v.state = ContainerState::Waiting {
                                reason: "CreateContainerError".into(),
                                message: msg.clone(),
                            };
                        });
                        tokio::select! {
                            () = tokio::time::sleep(process::restart_backoff(create_failures)) => continue,
                            () = shared.stop.cancelled() => return,
                        }
                    }
                }
            }
        };
        let code = tokio::select! {
            code = proc_.wait() => code,
            () = shared.stop.cancelled() => {
                // The Pod is being torn down: keep reaping our child until it is gone.
                let _ = proc_.wait().await;
                return;
            }
        };
        let finished = Terminated::from_exit(code, Some(started_at), jiff::Timestamp::now());
        shared.update_record(|r| {
            if let Some(c) = r.containers.get_mut(&name) {
                c.exit_code = Some(code);
                c.finished_at = Some(finished.finished_at);
            }
        });
        tracing::info!(uid = %shared.uid, container = %name, exit_code = code, "container exited");
        if !shared.policy.restarts(code) {
            shared.update_view(idx, |v| v.state = ContainerState::Terminated(finished));
            return;
        }
        let ran = since.elapsed();
        restarts = restarts.saturating_add(1);
        // A container that ran long enough is not crash-looping: restart it at once.
        let delay = if ran >= process::BACKOFF_RESET {
            Duration::ZERO
        } else {
            process::restart_backoff(restarts)
        };
        shared.update_view(idx, |v| {
            v.state = ContainerState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!("back-off {}s restarting failed container", delay.as_secs()),
            };
            v.last_terminated = Some(finished);
            v.restart_count = restarts;
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

/// Runs one init container to success: returns `false` when it failed for good
/// (restartPolicy Never) or the Pod stops. Failures are retried with back-off otherwise (an
/// init container is retried even under restartPolicy Always, which then acts as OnFailure).
async fn run_init(
    shared: Arc<PodShared>,
    idx: usize,
    container: Container,
    env: Vec<(String, String)>,
) -> bool {
    let name = container.name.clone();
    // Init containers are recorded under a key no container name can take ('/' is invalid).
    let key = format!("init/{name}");
    let recorded = shared
        .record
        .lock()
        .ok()
        .and_then(|r| r.containers.get(&key).cloned());
    if let Some(c) = &recorded
        && c.exit_code == Some(0)
    {
        let done = Terminated::from_exit(
            0,
            Some(c.started_at),
            c.finished_at.unwrap_or_else(jiff::Timestamp::now),
        );
        shared.update_init_view(idx, |v| v.state = ContainerState::Terminated(done));
        return true;
    }
    let mut adopted = recorded
        .clone()
        .filter(|c| process::is_alive(c.pid, c.start_ticks))
        .map(|c| {
            (
                Running::Adopted {
                    pid: c.pid,
                    ticks: c.start_ticks,
                },
                c.started_at,
            )
        });
    let mut restarts = recorded
        .as_ref()
        .map_or(0, |c| c.restart_count + u32::from(adopted.is_none()));
    let spec = process::container_argv(
        container.command.as_deref().unwrap_or_default(),
        container.args.as_deref().unwrap_or_default(),
    )
    .map(|argv| ProcessSpec {
        argv,
        env,
        cwd: container
            .working_dir
            .clone()
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("/"), PathBuf::from),
        log: shared.pod_dir.join(format!("{name}.log")),
        netns: shared.netns.clone(),
        cgroup: shared.cgroup.clone(),
    });
    loop {
        if shared.stop.is_cancelled() {
            return false;
        }
        let started = match adopted.take() {
            Some(a) => Ok(a),
            None => spec
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|s| process::spawn(s).map_err(|e| crate::cni::server::error_chain(&e)))
                .map(|child| {
                    let now = jiff::Timestamp::now();
                    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
                    let ticks = process::start_ticks(pid).unwrap_or(0);
                    shared.update_record(|r| {
                        r.containers.insert(
                            key.clone(),
                            ContainerRecord {
                                pid,
                                start_ticks: ticks,
                                started_at: now,
                                restart_count: restarts,
                                exit_code: None,
                                finished_at: None,
                            },
                        );
                    });
                    (Running::Child(child), now)
                }),
        };
        let (mut proc_, started_at) = match started {
            Ok(s) => s,
            Err(msg) => {
                shared.update_init_view(idx, |v| {
                    v.state = ContainerState::Waiting {
                        reason: "CreateContainerError".into(),
                        message: msg.clone(),
                    };
                });
                restarts = restarts.saturating_add(1);
                tokio::select! {
                    () = tokio::time::sleep(process::restart_backoff(restarts)) => continue,
                    () = shared.stop.cancelled() => return false,
                }
            }
        };
        shared.update_init_view(idx, |v| {
            v.state = ContainerState::Running { started_at };
            v.restart_count = restarts;
        });
        let code = tokio::select! {
            code = proc_.wait() => code,
            () = shared.stop.cancelled() => {
                let _ = proc_.wait().await;
                return false;
            }
        };
        let finished = Terminated::from_exit(code, Some(started_at), jiff::Timestamp::now());
        shared.update_record(|r| {
            if let Some(c) = r.containers.get_mut(&key) {
                c.exit_code = Some(code);
                c.finished_at = Some(finished.finished_at);
            }
        });
        tracing::info!(uid = %shared.uid, init_container = %name, exit_code = code, "init container exited");
        if code == 0 {
            shared.update_init_view(idx, |v| v.state = ContainerState::Terminated(finished));
            return true;
        }
        if shared.policy == RestartPolicy::Never {
            shared.update_init_view(idx, |v| v.state = ContainerState::Terminated(finished));
            return false;
        }
        restarts = restarts.saturating_add(1);
        let delay = process::restart_backoff(restarts);
        shared.update_init_view(idx, |v| {
            v.state = ContainerState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed init container",
                    delay.as_secs()
                ),
            };
            v.last_terminated = Some(finished);
            v.restart_count = restarts;
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stop.cancelled() => return false,
        }
    }
}

/// Runs the init containers in order, then the containers (and their probes) until the Pod
/// stops.
async fn run_containers(shared: Arc<PodShared>, pod: Pod, sources: EnvSources) {
    let spec = pod.spec.clone().unwrap_or_default();
    let (pod_ip, node_ip) = (shared.pod_ip, shared.cfg.node_ip);
    for (idx, c) in spec
        .init_containers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let env = container_env(&pod, &c, Some(pod_ip), node_ip, &sources);
        if !run_init(Arc::clone(&shared), idx, c, env).await {
            return;
        }
    }
    let mut tasks = Vec::new();
    for (idx, c) in spec.containers.into_iter().enumerate() {
        let env = container_env(&pod, &c, Some(pod_ip), node_ip, &sources);
        if let Some(plan) = c.readiness_probe.as_ref().and_then(|p| probe::plan(p, &c)) {
            let target = ProbeTarget {
                pod_ip,
                netns: shared.netns.clone(),
                cgroup: shared.cgroup.clone(),
                cwd: PathBuf::from("/"),
                env: env.clone(),
            };
            tasks.push(tokio::spawn(probe_loop(
                Arc::clone(&shared),
                idx,
                plan,
                target,
            )));
        } else if c.readiness_probe.is_some() {
            tracing::warn!(uid = %shared.uid, container = %c.name, "readiness probe kind not supported; container counts as ready");
            shared.update_view(idx, |v| v.probe_ready = true);
        }
        if let Some(plan) = c.liveness_probe.as_ref().and_then(|p| probe::plan(p, &c)) {
            let target = ProbeTarget {
                pod_ip,
                netns: shared.netns.clone(),
                cgroup: shared.cgroup.clone(),
                cwd: PathBuf::from("/"),
                env: env.clone(),
            };
            tasks.push(tokio::spawn(liveness_loop(
                Arc::clone(&shared),
                idx,
                c.name.clone(),
                plan,
                target,
            )));
        }
        tasks.push(tokio::spawn(supervise(Arc::clone(&shared), idx, c, env)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Runs a readiness probe for one container until the Pod stops.
async fn probe_loop(
    shared: Arc<PodShared>,
    idx: usize,
    plan: probe::ProbePlan,
    target: ProbeTarget,
) {
    tokio::select! {
        () = tokio::time::sleep(plan.initial_delay) => {}
        () = shared.stop.cancelled() => return,
    }
    let mut state = ProbeState::default();
    loop {
        let running = shared
            .views
            .lock()
            .map(|v| {
                v.get(idx)
                    .is_some_and(|c| matches!(c.state, ContainerState::Running { .. }))
            })
            .unwrap_or(false);
        if running {
            let ok = probe::run_once(&plan.action, &target, plan.timeout).await;
            if state.record(ok, &plan) {
                let ready = state.ready;
                shared.update_view(idx, |v| v.probe_ready = ready);
            }
        } else if state.ready {
            // A restarted container must pass its probe again.
            state = ProbeState::default();
            shared.update_view(idx, |v| v.probe_ready = false);
        }
        tokio::select! {
            () = tokio::time::sleep(plan.period) => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

/// Runs a liveness probe for one container until the Pod stops: when it fails
/// `failureThreshold` times in a row the container is killed, and its supervisor restarts it
/// per the restart policy (the kubelet's behaviour).
async fn liveness_loop(
    shared: Arc<PodShared>,
    idx: usize,
    name: String,
    plan: probe::ProbePlan,
    target: ProbeTarget,
) {
    let running_since = |shared: &PodShared| {
        shared
            .views
            .lock()
            .ok()
            .and_then(|v| match v.get(idx).map(|c| &c.state) {
                Some(ContainerState::Running { started_at }) => Some(*started_at),
                _ => None,
            })
    };
    let mut state = ProbeState::alive();
    let mut probed: Option<jiff::Timestamp> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(plan.period) => {}
            () = shared.stop.cancelled() => return,
        }
        let Some(started) = running_since(&shared) else {
            continue;
        };
        if probed != Some(started) {
            // A new run of the container: fresh counters, and its initial delay first.
            probed = Some(started);
            state = ProbeState::alive();
            tokio::select! {
                () = tokio::time::sleep(plan.initial_delay) => {}
                () = shared.stop.cancelled() => return,
            }
        }
        let ok = probe::run_once(&plan.action, &target, plan.timeout).await;
        if state.record(ok, &plan) && !state.ready {
            let pid = shared
                .record
                .lock()
                .ok()
                .and_then(|r| r.containers.get(&name).map(|c| c.pid));
            if let Some(pid) = pid {
                tracing::info!(uid = %shared.uid, container = %name, pid, "liveness probe failed; killing container");
                process::signal(pid, Signal::SIGKILL);
            }
        }
    }
}

/// Sets up the sandbox of a Pod (idempotent: a recorded sandbox whose namespace still exists is
/// reused) and returns the Pod IP.
async fn ensure_sandbox(
    cfg: &PodRuntimeConfig,
    pod: &Pod,
    rec: &mut PodRecord,
) -> Result<Ipv4Addr, PodError> {
    let uid = rec.uid.clone();
    let cgroup = cfg.pod_cgroup(&uid);
    std::fs::create_dir_all(&cgroup).map_err(|source| PodError::Io {
        path: cgroup.clone(),
        source,
    })?;
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        // The node's own namespace, opened through /proc/self when the agent is in it.
        let ns = cfg
            .node_netns
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
        rec.host_network = true;
        rec.netns = ns.display().to_string();
        rec.pod_ip = Some(cfg.node_ip);
        rec.save(&cfg.pod_dir(&uid))?;
        return Ok(cfg.node_ip);
    }
    let ns_name = netns::pod_netns_name(&cfg.node_name, &uid);
    if let Some(ip) = rec.pod_ip
        && netns::named_path(&ns_name).exists()
    {
        // The sandbox of an earlier agent: keep it if its attachment is intact, otherwise
        // ADD again (idempotent, the address stays the same).
        let ns = netns::named_path(&ns_name);
        let check = cni_call(
            cfg,
            "CHECK",
            &rec.container_id,
            Some(&ns),
            (&rec.namespace, &rec.name, &uid),
        )
        .await;
        match check {
            Ok(_) => return Ok(ip),
            Err(e) => {
                tracing::info!(%uid, error = %crate::cni::server::error_chain(&e), "re-attaching pod network")
            }
        }
    }
    let path = tokio::task::spawn_blocking({
        let ns_name = ns_name.clone();
        move || netns::create_named(&ns_name)
    })
    .await
    .map_err(|e| PodError::Io {
        path: netns::named_path(&ns_name),
        source: std::io::Error::other(e),
    })??;
    let result = cni_call(
        cfg,
        "ADD",
        &rec.container_id,
        Some(&path),
        (&rec.namespace, &rec.name, &uid),
    )
    .await?;
    let ip = result
        .as_ref()
        .and_then(CniResult::pod_ip)
        .ok_or(PodError::CniOutput {
            command: "ADD",
            output: "no IPv4 address in the result".into(),
        })?;
    rec.netns = path.display().to_string();
    rec.pod_ip = Some(ip);
    rec.save(&cfg.pod_dir(&uid))?;
    tracing::info!(pod = %pod.metadata.name.as_deref().unwrap_or_default(), %ip, "pod sandbox ready");
    Ok(ip)
}

/// The namespace a Pod's processes run in.
fn rec_netns(rec: &PodRecord, cfg: &PodRuntimeConfig) -> PathBuf {
    if rec.netns.is_empty() {
        netns::named_path(&netns::pod_netns_name(&cfg.node_name, &rec.uid))
    } else {
        PathBuf::from(&rec.netns)
    }
}

/// Removes a Pod's sandbox: remaining processes, CNI attachment, cgroup, namespace, state.
async fn teardown_sandbox(cfg: &PodRuntimeConfig, rec: &PodRecord) {
    let cgroup = cfg.pod_cgroup(&rec.uid);
    for c in rec.containers.values() {
        if process::is_alive(c.pid, c.start_ticks) {
            process::signal(c.pid, Signal::SIGKILL);
        }
    }
    if rec.host_network {
        let _ = tokio::task::spawn_blocking(move || process::remove_cgroup(&cgroup)).await;
        return;
    }
    let ns_name = netns::pod_netns_name(&cfg.node_name, &rec.uid);
    let ns_path = netns::named_path(&ns_name);
    if let Err(e) = cni_call(
        cfg,
        "DEL",
        &rec.container_id,
        ns_path.exists().then_some(ns_path.as_path()),
        (&rec.namespace, &rec.name, &rec.uid),
    )
    .await
    {
        tracing::warn!(uid = %rec.uid, error = %crate::cni::server::error_chain(&e), "CNI DEL");
    }
    let uid = rec.uid.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = process::remove_cgroup(&cgroup) {
            tracing::warn!(%uid, error = %crate::cni::server::error_chain(&e), "removing pod cgroup");
        }
        if let Err(e) = netns::delete_named(&ns_name) {
            tracing::warn!(%uid, error = %crate::cni::server::error_chain(&e), "removing pod netns");
        }
    })
    .await;
}

/// Sends SIGTERM to every container, waits up to `grace` for them to end, then SIGKILL.
async fn stop_containers(shared: &PodShared, grace: Duration) {
    let pids: Vec<(i32, u64)> = shared
        .record
        .lock()
        .map(|r| {
            r.containers
                .values()
                .map(|c| (c.pid, c.start_ticks))
                .collect()
        })
        .unwrap_or_default();
    for (pid, ticks) in &pids {
        if process::is_alive(*pid, *ticks) {
            process::signal(*pid, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if pids.iter().all(|(p, t)| !process::is_alive(*p, *t))
            && process::cgroup_pids(&shared.cgroup).is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (pid, ticks) in &pids {
        if process::is_alive(*pid, *ticks) {
            process::signal(*pid, Signal::SIGKILL);
        }
    }
}

fn grace_of(pod: &Pod) -> Duration {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_GRACE, Duration::from_secs)
}

/// One Pod's worker: sandbox, containers, status, deletion.
async fn pod_worker(
    cfg: Arc<PodRuntimeConfig>,
    client: Client,
    mut rx: watch::Receiver<Option<Pod>>,
) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod_dir = cfg.pod_dir(&uid);
    let mut rec = match PodRecord::load(&pod_dir) {
        Ok(Some(r)) => r,
        Ok(None) => PodRecord {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            container_id: uid.clone(),
            ..Default::default()
        },
        Err(e) => {
            tracing::warn!(%uid, error = %crate::cni::server::error_chain(&e), "unreadable pod state; starting afresh");
            PodRecord {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.clone(),
                container_id: uid.clone(),
                ..Default::default()
            }
        }
    };
    let spec = pod.spec.clone().unwrap_or_default();
    // Keep the start time an earlier agent reported.
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or_else(jiff::Timestamp::now, |t| t.0);

    // The sandbox, retried until it works or the Pod goes away.
    let pod_ip = loop {
        let current = rx.borrow().clone();
        match current {
            None => {
                teardown_sandbox(&cfg, &rec).await;
                let _ = std::fs::remove_dir_all(&pod_dir);
                return;
            }
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                teardown_sandbox(&cfg, &rec).await;
                confirm_deletion(&api, &name, &uid).await;
                let _ = std::fs::remove_dir_all(&pod_dir);
                return;
            }
            Some(_) => {}
        }
        match ensure_sandbox(&cfg, &pod, &mut rec).await {
            Ok(ip) => break ip,
            Err(e) => {
                let msg = crate::cni::server::error_chain(&e);
                tracing::warn!(%uid, error = %msg, "setting up pod sandbox");
                let _ = api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": {
                            "phase": "Pending",
                            "hostIP": cfg.node_ip.to_string(),
                            "conditions": [{ "type": "PodReadyToStartContainers", "status": "False", "reason": "SandboxSetupFailed", "message": msg }],
                        }})),
                    )
                    .await;
                tokio::select! {
                    () = tokio::time::sleep(SANDBOX_RETRY) => {}
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        }
    };

    let shared_netns = rec_netns(&rec, &cfg);
    let waiting = |c: &Container, reason: &str| ContainerView {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        state: ContainerState::Waiting {
            reason: reason.into(),
            message: String::new(),
        },
        last_terminated: None,
        restart_count: 0,
        probe_ready: c.readiness_probe.is_none(),
    };
    let init_containers = spec.init_containers.clone().unwrap_or_default();
    let first_reason = if init_containers.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let views = spec
        .containers
        .iter()
        .map(|c| waiting(c, first_reason))
        .collect();
    let init_views = init_containers
        .iter()
        .map(|c| waiting(c, "PodInitializing"))
        .collect();
    let shared = Arc::new(PodShared {
        cfg: Arc::clone(&cfg),
        uid: uid.clone(),
        netns: shared_netns,
        cgroup: cfg.pod_cgroup(&uid),
        pod_dir: pod_dir.clone(),
        pod_ip,
        policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
        views: Mutex::new(views),
        init_views: Mutex::new(init_views),
        record: Mutex::new(rec),
        changed: Notify::new(),
        stop: CancellationToken::new(),
    });
    let sources = EnvSources::fetch(&client, &namespace, &pod).await;
    let runner = tokio::spawn(run_containers(Arc::clone(&shared), pod.clone(), sources));

    // Status reporting until the Pod is deleted.
    let mut transitions = Transitions::new();
    let mut last_sent = serde_json::Value::Null;
    shared.changed.notify_one();
    let deleted_in_api = loop {
        tokio::select! {
            () = shared.changed.notified() => {
                // Coalesce bursts (a container start changes record and view in a row).
                tokio::time::sleep(Duration::from_millis(100)).await;
                let view = PodView {
                    uid: uid.clone(),
                    pod_ip: Some(shared.pod_ip),
                    host_ip: shared.cfg.node_ip,
                    start_time,
                    restart_policy: shared.policy,
                    init_containers: shared.init_views.lock().map(|v| v.clone()).unwrap_or_default(),
                    containers: shared.views.lock().map(|v| v.clone()).unwrap_or_default(),
                };
                let (st, next) = status::pod_status(&view, &transitions, jiff::Timestamp::now());
                if st != last_sent {
                    match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": st }))).await {
                        Ok(_) => { last_sent = st; transitions = next; }
                        Err(e) => {
                            tracing::warn!(%uid, error = %e, "reporting pod status");
                            let s = Arc::clone(&shared);
                            tokio::spawn(async move { tokio::time::sleep(Duration::from_secs(2)).await; s.changed.notify_one(); });
                        }
                    }
                }
            }
            r = rx.changed() => {
                if r.is_err() {
                    // The agent is stopping (the watch loop is gone): containers keep running
                    // and are re-adopted by the next agent.
                    return;
                }
                let current = rx.borrow().clone();
                match current {
                    None => break false,
                    Some(p) if p.metadata.deletion_timestamp.is_some() => {
                        shared.stop.cancel();
                        stop_containers(&shared, grace_of(&p)).await;
                        break true;
                    }
                    Some(_) => {}
                }
            }
        }
    };
    shared.stop.cancel();
    stop_containers(&shared, Duration::ZERO).await;
    let _ = runner.await;
    let rec = shared.record.lock().map(|r| r.clone()).unwrap_or_default();
    teardown_sandbox(&cfg, &rec).await;
    if deleted_in_api {
        confirm_deletion(&api, &name, &uid).await;
    }
    let _ = std::fs::remove_dir_all(&pod_dir);
    tracing::info!(%namespace, %name, %uid, "pod removed from node");
}

/// Tells the API server the Pod is gone from the node: delete with grace 0, for this uid only.
async fn confirm_deletion(api: &Api<Pod>, name: &str, uid: &str) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    for _ in 0..5 {
        match api.delete(name, &dp).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
            Err(e) => {
                tracing::warn!(%name, error = %e, "confirming pod deletion");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Removes sandboxes of Pods that no longer exist (deleted while the agent was down).
async fn cleanup_orphans(
    cfg: &PodRuntimeConfig,
    known: &HashMap<String, watch::Sender<Option<Pod>>>,
) {
    let Ok(dirs) = std::fs::read_dir(cfg.data_dir.join("pods")) else {
        return;
    };
    for dir in dirs.flatten() {
        let uid = dir.file_name().to_string_lossy().into_owned();
        if known.contains_key(&uid) {
            continue;
        }
        if let Ok(Some(rec)) = PodRecord::load(&dir.path()) {
            tracing::info!(%uid, pod = %rec.name, "cleaning up the sandbox of a pod that is gone");
            teardown_sandbox(cfg, &rec).await;
        }
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

/// Runs the Pods bound to this node until the task is dropped.
pub async fn run(client: Client, cfg: PodRuntimeConfig) {
    let cfg = Arc::new(cfg);
    let api: Api<Pod> = Api::all(client.clone());
    let selector = format!("spec.nodeName={}", cfg.node_name);
    let mut events = watcher::watcher(api, watcher::Config::default().fields(&selector)).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut init_seen: Vec<String> = Vec::new();
    let mut orphans_checked = false;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                // A later watch event for the same uid (its deletion) must not start it again.
                if let Some(tx) = workers.get(&uid) && tx.is_closed() {
                    workers.remove(&uid);
                }
            }
            ev = events.try_next() => {
                let pod_apply = |pod: Pod, workers: &mut HashMap<String, watch::Sender<Option<Pod>>>| {
                    let Some(uid) = pod.metadata.uid.clone() else { return };
                    if let Some(tx) = workers.get(&uid) {
                        let _ = tx.send(Some(pod));
                        return;
                    }
                    let (tx, rx) = watch::channel(Some(pod));
                    workers.insert(uid.clone(), tx);
                    let (cfg, client, done) = (Arc::clone(&cfg), client.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        pod_worker(cfg, client, rx).await;
                        let _ = done.send(uid);
                    });
                };
                match ev {
                    Ok(Some(Event::Init)) => init_seen.clear(),
                    Ok(Some(Event::InitApply(pod))) => {
                        init_seen.extend(pod.metadata.uid.clone());
                        pod_apply(pod, &mut workers);
                    }
                    Ok(Some(Event::InitDone)) => {
                        // Pods that vanished while the watch was re-listing.
                        for (uid, tx) in &workers {
                            if !init_seen.contains(uid) {
                                let _ = tx.send(None);
                            }
                        }
                        if !orphans_checked {
                            orphans_checked = true;
                            cleanup_orphans(&cfg, &workers).await;
                        }
                    }
                    Ok(Some(Event::Apply(pod))) => pod_apply(pod, &mut workers),
                    Ok(Some(Event::Delete(pod))) => {
                        if let Some(tx) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                            let _ = tx.send(None);
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "watching pods");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_period_prefers_the_deletion_value() {
        let mut pod: Pod = serde_json::from_value(json!({"metadata":{"name":"p"},"spec":{"containers":[],"terminationGracePeriodSeconds":5}})).expect("pod");
        assert_eq!(grace_of(&pod), Duration::from_secs(5));
        pod.metadata.deletion_grace_period_seconds = Some(1);
        assert_eq!(grace_of(&pod), Duration::from_secs(1));
        pod.spec = None;
        pod.metadata.deletion_grace_period_seconds = None;
        assert_eq!(grace_of(&pod), DEFAULT_GRACE);
    }

    #[test]
    fn cni_config_names_the_agent_socket() {
        let cfg = PodRuntimeConfig {
            node_name: "n1".into(),
            node_ip: Ipv4Addr::new(10, 250, 0, 11),
            data_dir: "/var/lib/keelson".into(),
            cgroup_root: "/sys/fs/cgroup/unified/keelson/c/n1".into(),
            cni_bin: "/usr/bin/keelson".into(),
            cni_socket: "/var/lib/keelson/cni.sock".into(),
            node_netns: None,
        };
        let conf = crate::cni::protocol::NetConf::parse(cfg.cni_config().to_string().as_bytes())
            .expect("valid netconf");
        assert_eq!(
            conf.agent_socket,
            PathBuf::from("/var/lib/keelson/cni.sock")
        );
        assert_eq!(
            cfg.pod_cgroup("u"),
            PathBuf::from("/sys/fs/cgroup/unified/keelson/c/n1/pods/u")
        );
    }

    /// A Pod sandbox of the test's own (namespace, cgroup, directory), removed on drop.
    struct TestPod {
        netns: String,
        cgroup: PathBuf,
        _dir: tempfile::TempDir,
        shared: Arc<PodShared>,
    }

    impl Drop for TestPod {
        fn drop(&mut self) {
            let _ = process::remove_cgroup(&self.cgroup);
            let _ = netns::delete_named(&self.netns);
        }
    }

    fn test_pod(tag: &str, policy: RestartPolicy, containers: &[&str]) -> TestPod {
        let unique = format!("sup-{tag}-{}", std::process::id());
        let netns_name = format!("kls-t-{unique}");
        let ns = netns::create_named(&netns_name).expect("netns");
        let cgroup = PathBuf::from(format!("/sys/fs/cgroup/unified/keelson-test-{unique}"));
        std::fs::create_dir_all(&cgroup).expect("cgroup");
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = PodRuntimeConfig {
            node_name: "n1".into(),
            node_ip: Ipv4Addr::new(10, 250, 0, 11),
            node_netns: None,
            data_dir: dir.path().to_owned(),
            cgroup_root: cgroup.clone(),
            cni_bin: "/nonexistent".into(),
            cni_socket: dir.path().join("cni.sock"),
        };
        let view = |name: &str| ContainerView {
            name: name.to_owned(),
            image: "busybox".into(),
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last_terminated: None,
            restart_count: 0,
            probe_ready: true,
        };
        let shared = Arc::new(PodShared {
            cfg: Arc::new(cfg),
            uid: unique.clone(),
            netns: ns,
            cgroup: cgroup.clone(),
            pod_dir: dir.path().join("pod"),
            pod_ip: Ipv4Addr::new(10, 244, 1, 2),
            policy,
            views: Mutex::new(containers.iter().map(|c| view(c)).collect()),
            init_views: Mutex::new(vec![]),
            record: Mutex::new(PodRecord {
                uid: unique,
                ..Default::default()
            }),
            changed: Notify::new(),
            stop: CancellationToken::new(),
        });
        TestPod {
            netns: netns_name,
            cgroup,
            _dir: dir,
            shared,
        }
    }

    fn shell(name: &str, script: &str) -> Container {
        serde_json::from_value(json!({ "name": name, "command": ["sh", "-c", script] }))
            .expect("container")
    }

    fn env() -> Vec<(String, String)> {
        vec![("PATH".into(), "/usr/bin:/bin".into())]
    }

    #[tokio::test]
    async fn supervisor_reports_exit_and_honours_never() {
        let t = test_pod("never", RestartPolicy::Never, &["c"]);
        let run = supervise(
            Arc::clone(&t.shared),
            0,
            shell("c", "echo ran; exit 3"),
            env(),
        );
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("supervisor ends under Never");
        let view = t.shared.views.lock().expect("lock")[0].clone();
        assert!(
            matches!(&view.state, ContainerState::Terminated(x) if x.exit_code == 3),
            "{view:?}"
        );
        let rec = t.shared.record.lock().expect("lock").clone();
        assert_eq!(rec.containers["c"].exit_code, Some(3));
        let log = std::fs::read_to_string(t.shared.pod_dir.join("c.log")).expect("log");
        assert_eq!(log, "ran\n");
    }

    #[tokio::test]
    async fn supervisor_readopts_a_live_container_instead_of_starting_another() {
        let t = test_pod("adopt", RestartPolicy::Always, &["c"]);
        // What a previous agent left: a running container and its record.
        let spec = ProcessSpec {
            argv: vec!["sleep".into(), "30".into()],
            env: env(),
            cwd: "/".into(),
            log: t.shared.pod_dir.join("c.log"),
            netns: t.shared.netns.clone(),
            cgroup: t.shared.cgroup.clone(),
        };
        let mut child = process::spawn(&spec).expect("spawn");
        let pid = child.id().expect("pid") as i32;
        let ticks = process::start_ticks(pid).expect("ticks");
        t.shared.record.lock().expect("lock").containers.insert(
            "c".into(),
            ContainerRecord {
                pid,
                start_ticks: ticks,
                started_at: jiff::Timestamp::now(),
                restart_count: 2,
                exit_code: None,
                finished_at: None,
            },
        );
        let task = tokio::spawn(supervise(
            Arc::clone(&t.shared),
            0,
            shell("c", "echo duplicate; sleep 30"),
            env(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let view = t.shared.views.lock().expect("lock")[0].clone();
        assert!(
            matches!(view.state, ContainerState::Running { .. }),
            "{view:?}"
        );
        assert_eq!(view.restart_count, 2);
        assert_eq!(
            process::cgroup_pids(&t.shared.cgroup),
            vec![pid],
            "a second copy was started"
        );
        assert_eq!(
            t.shared.record.lock().expect("lock").containers["c"].pid,
            pid
        );
        t.shared.stop.cancel();
        process::signal(pid, Signal::SIGKILL);
        let _ = child.wait().await;
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("supervisor stops")
            .expect("join");
        let log = std::fs::read_to_string(t.shared.pod_dir.join("c.log")).unwrap_or_default();
        assert!(!log.contains("duplicate"), "{log}");
    }

    #[tokio::test]
    async fn supervisor_does_not_rerun_a_completed_container_after_agent_restart() {
        let t = test_pod("done", RestartPolicy::OnFailure, &["c"]);
        t.shared.record.lock().expect("lock").containers.insert(
            "c".into(),
            ContainerRecord {
                pid: i32::MAX,
                start_ticks: 1,
                started_at: jiff::Timestamp::now(),
                restart_count: 0,
                exit_code: Some(0),
                finished_at: Some(jiff::Timestamp::now()),
            },
        );
        let run = supervise(Arc::clone(&t.shared), 0, shell("c", "echo again"), env());
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("returns at once");
        let view = t.shared.views.lock().expect("lock")[0].clone();
        assert!(
            matches!(&view.state, ContainerState::Terminated(x) if x.exit_code == 0),
            "{view:?}"
        );
        assert!(
            !t.shared.pod_dir.join("c.log").exists(),
            "the container ran again"
        );
    }

    #[tokio::test]
    async fn init_containers_run_in_order_before_the_containers() {
        let t = test_pod("init", RestartPolicy::Never, &["main"]);
        *t.shared.init_views.lock().expect("lock") = vec![
            ContainerView {
                name: "first".into(),
                image: String::new(),
                state: ContainerState::Waiting {
                    reason: "PodInitializing".into(),
                    message: String::new()
                },
                last_terminated: None,
                restart_count: 0,
                probe_ready: true,
            };
            2
        ];
        let marker = t.shared.pod_dir.join("marker");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "default", "uid": "u" },
            "spec": {
                "restartPolicy": "Never",
                "initContainers": [
                    { "name": "first", "command": ["sh", "-c", format!("echo one > {}", marker.display())] },
                    { "name": "second", "command": ["sh", "-c", format!("echo two >> {}", marker.display())] },
                ],
                "containers": [
                    { "name": "main", "command": ["sh", "-c", format!("cat {}", marker.display())] },
                ],
            },
        }))
        .expect("pod");
        std::fs::create_dir_all(&t.shared.pod_dir).expect("pod dir");
        tokio::time::timeout(
            Duration::from_secs(10),
            run_containers(Arc::clone(&t.shared), pod, EnvSources::default()),
        )
        .await
        .expect("all containers end under Never");
        let log = std::fs::read_to_string(t.shared.pod_dir.join("main.log")).expect("main log");
        assert_eq!(log, "one\ntwo\n");
        let inits = t.shared.init_views.lock().expect("lock").clone();
        assert!(
            inits
                .iter()
                .all(|v| matches!(&v.state, ContainerState::Terminated(x) if x.exit_code == 0)),
            "{inits:?}"
        );
    }

    #[tokio::test]
    async fn failing_liveness_probe_kills_the_container() {
        let t = test_pod("live", RestartPolicy::Always, &["c"]);
        let sup = tokio::spawn(supervise(
            Arc::clone(&t.shared),
            0,
            shell("c", "exec sleep 30"),
            env(),
        ));
        let plan = probe::ProbePlan {
            action: probe::ProbeAction::Exec {
                argv: vec!["false".into()],
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 2,
        };
        let target = ProbeTarget {
            pod_ip: t.shared.pod_ip,
            netns: t.shared.netns.clone(),
            cgroup: t.shared.cgroup.clone(),
            cwd: "/".into(),
            env: env(),
        };
        let live = tokio::spawn(liveness_loop(
            Arc::clone(&t.shared),
            0,
            "c".into(),
            plan,
            target,
        ));
        let mut killed = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            killed = t.shared.views.lock().expect("lock")[0]
                .last_terminated
                .clone();
            if killed.is_some() {
                break;
            }
        }
        let killed = killed.expect("the container was killed by its liveness probe");
        assert_eq!(killed.exit_code, 128 + 9);
        assert_eq!(t.shared.views.lock().expect("lock")[0].restart_count, 1);
        t.shared.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), sup).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), live).await;
    }
}
