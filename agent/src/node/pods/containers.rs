//! A Pod's containers: each init container run to success in order, then every container
//! supervised (start or re-adopt, wait, restart per the restart policy with the kubelet's
//! back-off, `OOMKilled` when the kernel's OOM killer ended it) with its probes, and all of
//! them stopped within the grace period on deletion.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container, Pod};
use nix::sys::signal::Signal;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    PodRuntimeConfig,
    launch::{self, Launch, OwnRoot, Started},
    probes,
};
use crate::node::{
    env::{self, container_env},
    lifecycle::{self, Hook},
    probe::{self, ProbeTarget},
    process::{self, ContainerRecord, PodRecord, Running},
    rootfs::PodFiles,
    sources::PodSources,
    status::{ContainerState, ContainerView, RestartPolicy, Terminated},
};

/// Shared state of one Pod's worker and its container supervisors.
pub(super) struct PodShared {
    pub cfg: Arc<PodRuntimeConfig>,
    pub uid: String,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub pod_dir: PathBuf,
    pub pod_ip: Ipv4Addr,
    pub policy: RestartPolicy,
    pub views: Mutex<Vec<ContainerView>>,
    pub init_views: Mutex<Vec<ContainerView>>,
    pub record: Mutex<PodRecord>,
    pub changed: Notify,
    /// The containers' lifecycle state: preStop hooks to run on deletion, and which
    /// containers have not passed their startup probe yet.
    pub hooks: Mutex<Hooks>,
    /// The ServiceAccount tokens of its projected volumes, renewed before they expire.
    pub tokens: crate::node::tokens::TokenCache,
    pub stop: CancellationToken,
}

impl PodShared {
    pub fn update_view(&self, idx: usize, f: impl FnOnce(&mut ContainerView)) {
        if let Ok(mut views) = self.views.lock()
            && let Some(v) = views.get_mut(idx)
        {
            f(v);
        }
        self.changed.notify_one();
    }

    pub fn update_init_view(&self, idx: usize, f: impl FnOnce(&mut ContainerView)) {
        if let Ok(mut views) = self.init_views.lock()
            && let Some(v) = views.get_mut(idx)
        {
            f(v);
        }
        self.changed.notify_one();
    }

    /// The pid of container `idx`'s current process, if it runs.
    pub fn container_pid(&self, idx: usize) -> Option<i32> {
        let name = self.views.lock().ok()?.get(idx)?.name.clone();
        let c = self.record.lock().ok()?.containers.get(&name)?.clone();
        process::is_alive(c.pid, c.start_ticks).then_some(c.pid)
    }

    pub fn update_record(&self, f: impl FnOnce(&mut PodRecord)) {
        if let Ok(mut rec) = self.record.lock() {
            f(&mut rec);
            if let Err(e) = rec.save(&self.pod_dir) {
                tracing::warn!(uid = %self.uid, error = %crate::cni::server::error_chain(&e), "saving pod state");
            }
        }
    }
}

/// What the Pod's stop and probes need of each container's lifecycle.
#[derive(Debug, Default)]
pub(super) struct Hooks {
    /// Container name → its preStop hook and where it runs.
    pub pre_stop: BTreeMap<String, (Hook, ProbeTarget)>,
    /// Indexes of containers whose startup probe has not succeeded in their current run:
    /// readiness and liveness probes wait for it.
    pub starting: std::collections::BTreeSet<usize>,
}

/// Runs one container: start (or re-adopt), wait, restart per policy with backoff, until the
/// Pod stops.
pub(super) async fn supervise(shared: Arc<PodShared>, idx: usize, launch: Launch) {
    let name = launch.name.clone();
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
    // Failed starts back off like crashes but are not restarts of a container that ran.
    let mut create_failures = 0u32;
    // The memory cgroup of the current run and its OOM kill count before it started.
    let mut oom: Option<(crate::node::cgroups::ContainerCgroups, u64)> = None;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let (mut proc_, started_at, since) = match running.take() {
            Some(r) => r,
            None => match launch.start(&shared, &name).await {
                Ok(Started {
                    child,
                    cgroups,
                    oom_before,
                }) => {
                    oom = Some((cgroups, oom_before));
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
            },
        };
        let code = tokio::select! {
            code = proc_.wait() => code,
            () = shared.stop.cancelled() => {
                // The Pod is being torn down: keep reaping our child until it is gone.
                let _ = proc_.wait().await;
                return;
            }
        };
        let mut finished = Terminated::from_exit(code, Some(started_at), jiff::Timestamp::now());
        if let Some((cg, before)) = oom.take()
            && cg.oom_kills() > before
        {
            // The kernel's OOM killer ended it (SIGKILL, 137): the kubelet's reason.
            finished.reason = "OOMKilled".into();
        }
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
pub(super) async fn run_init(shared: Arc<PodShared>, idx: usize, launch: Launch) -> bool {
    let name = launch.name.clone();
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
    loop {
        if shared.stop.is_cancelled() {
            return false;
        }
        let started = match adopted.take() {
            Some(a) => Ok(a),
            None => launch
                .start(&shared, &name)
                .await
                .map(|Started { child, .. }| {
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

/// What every container of a Pod is made from, set up once the sandbox exists: its sources
/// (env values), its volumes' host paths, its `/etc/hosts` and `/etc/resolv.conf`, and
/// whether containers get a root of their own.
#[derive(Debug, Clone, Default)]
pub(super) struct PodContext {
    pub sources: PodSources,
    pub volumes: BTreeMap<String, PathBuf>,
    /// `None`: containers run in the agent's mount namespace (tests).
    pub files: Option<PodFiles>,
    pub hostname: Option<String>,
}

impl PodContext {
    /// The launch of `container`, or the message of its `CreateContainerConfigError`.
    fn launch(
        &self,
        shared: &PodShared,
        pod: &Pod,
        container: &Container,
        key: &str,
    ) -> Result<Launch, String> {
        if let Some(msg) = env::config_error(pod, container, &self.sources) {
            return Err(msg);
        }
        let env = container_env(
            pod,
            container,
            Some(shared.pod_ip),
            shared.cfg.node_ip,
            &self.sources,
        );
        let mut launch = Launch::plain(container, env);
        if let Some(files) = &self.files {
            launch.root = Some(OwnRoot {
                dir: shared.pod_dir.join("rootfs").join(key.replace('/', "-")),
                binds: launch::binds(container, &self.volumes, files)?,
                hostname: self.hostname.clone(),
            });
        }
        Ok(launch)
    }
}

/// Runs the init containers in order, then the containers (and their probes) until the Pod
/// stops. A container whose configuration cannot be resolved waits with
/// `CreateContainerConfigError` (the Pod worker retries it with fresh sources).
pub(super) async fn run_containers(shared: Arc<PodShared>, pod: Pod, ctx: PodContext) {
    let spec = pod.spec.clone().unwrap_or_default();
    let pod_ip = shared.pod_ip;
    let config_error = |msg: String| ContainerState::Waiting {
        reason: "CreateContainerConfigError".into(),
        message: msg,
    };
    for (idx, c) in spec
        .init_containers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match ctx.launch(&shared, &pod, &c, &format!("init/{}", c.name)) {
            Ok(launch) => {
                if !run_init(Arc::clone(&shared), idx, launch).await {
                    return;
                }
            }
            Err(msg) => {
                shared.update_init_view(idx, |v| v.state = config_error(msg));
                return;
            }
        }
    }
    let mut tasks = Vec::new();
    for (idx, c) in spec.containers.into_iter().enumerate() {
        let launch = match ctx.launch(&shared, &pod, &c, &c.name) {
            Ok(l) => l,
            Err(msg) => {
                tracing::warn!(uid = %shared.uid, container = %c.name, error = %msg, "container configuration");
                shared.update_view(idx, |v| v.state = config_error(msg));
                continue;
            }
        };
        let target = || ProbeTarget {
            pod_ip,
            netns: shared.netns.clone(),
            cgroup: shared.cgroup.clone(),
            cwd: PathBuf::from("/"),
            env: launch.env.clone(),
            container_pid: None,
        };
        let lc = c.lifecycle.as_ref();
        if let Some(h) = lc
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| lifecycle::hook(h, &c))
            && let Ok(mut hooks) = shared.hooks.lock()
        {
            hooks.pre_stop.insert(c.name.clone(), (h, target()));
        }
        let post_start = lc
            .and_then(|l| l.post_start.as_ref())
            .and_then(|h| lifecycle::hook(h, &c))
            .map(|h| (h, target()));
        if let Some(plan) = c.startup_probe.as_ref().and_then(|p| probe::plan(p, &c)) {
            if let Ok(mut hooks) = shared.hooks.lock() {
                hooks.starting.insert(idx);
            }
            tasks.push(tokio::spawn(probes::startup_loop(
                Arc::clone(&shared),
                idx,
                plan,
                target(),
                c.readiness_probe.is_some(),
            )));
        }
        if let Some(plan) = c.readiness_probe.as_ref().and_then(|p| probe::plan(p, &c)) {
            tasks.push(tokio::spawn(probes::readiness_loop(
                Arc::clone(&shared),
                idx,
                plan,
                target(),
            )));
        } else if c.readiness_probe.is_some() {
            tracing::warn!(uid = %shared.uid, container = %c.name, "readiness probe kind not supported; container counts as ready");
            shared.update_view(idx, |v| v.probe_ready = true);
        }
        if let Some(plan) = c.liveness_probe.as_ref().and_then(|p| probe::plan(p, &c)) {
            tasks.push(tokio::spawn(probes::liveness_loop(
                Arc::clone(&shared),
                idx,
                c.name.clone(),
                plan,
                target(),
            )));
        }
        if let Some((hook, target)) = post_start {
            tasks.push(tokio::spawn(probes::post_start_loop(
                Arc::clone(&shared),
                idx,
                hook,
                target,
            )));
        }
        tasks.push(tokio::spawn(supervise(Arc::clone(&shared), idx, launch)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Runs every container's preStop hook (together, within the grace period), then sends
/// SIGTERM to every container, waits for the rest of `grace` for them to end, then SIGKILL
/// (the kubelet's `killContainer`).
pub(super) async fn stop_containers(shared: &PodShared, grace: Duration) {
    let started = Instant::now();
    let pre_stop: Vec<(String, Hook, ProbeTarget)> = shared
        .hooks
        .lock()
        .map(|mut h| {
            std::mem::take(&mut h.pre_stop)
                .into_iter()
                .map(|(n, (hook, t))| (n, hook, t))
                .collect()
        })
        .unwrap_or_default();
    if !pre_stop.is_empty() && !grace.is_zero() {
        let runs = pre_stop.into_iter().filter_map(|(name, hook, target)| {
            let c = shared.record.lock().ok()?.containers.get(&name)?.clone();
            process::is_alive(c.pid, c.start_ticks).then_some(async move {
                let target = ProbeTarget {
                    container_pid: Some(c.pid),
                    ..target
                };
                if !lifecycle::run(&hook, &target, grace).await {
                    tracing::info!(uid = %shared.uid, container = %name, "preStop hook failed");
                }
            })
        });
        futures::future::join_all(runs).await;
    }
    let grace = grace.saturating_sub(started.elapsed());
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
