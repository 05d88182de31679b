//! A Pod's probe loops: readiness marks a container ready or not, liveness kills a container
//! that keeps failing so its supervisor restarts it.

use std::sync::Arc;

use nix::sys::signal::Signal;

use super::containers::PodShared;
use crate::node::{
    lifecycle::{self, Hook},
    probe::{self, ProbeState, ProbeTarget},
    process,
    status::ContainerState,
};

/// Runs a readiness probe for one container until the Pod stops.
pub(super) async fn readiness_loop(
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
        let starting = shared.hooks.lock().is_ok_and(|h| h.starting.contains(&idx));
        if running && !starting {
            let target = ProbeTarget {
                container_pid: shared.container_pid(idx),
                ..target.clone()
            };
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
pub(super) async fn liveness_loop(
    shared: Arc<PodShared>,
    idx: usize,
    name: String,
    plan: probe::ProbePlan,
    target: ProbeTarget,
) {
    let mut state = ProbeState::alive();
    let mut probed: Option<jiff::Timestamp> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(plan.period) => {}
            () = shared.stop.cancelled() => return,
        }
        let Some(started) = running_since(&shared, idx) else {
            continue;
        };
        if shared.hooks.lock().is_ok_and(|h| h.starting.contains(&idx)) {
            // Liveness waits for the startup probe (its initial delay counts from then).
            probed = None;
            continue;
        }
        if probed != Some(started) {
            // A new run of the container: fresh counters, and its initial delay first.
            probed = Some(started);
            state = ProbeState::alive();
            tokio::select! {
                () = tokio::time::sleep(plan.initial_delay) => {}
                () = shared.stop.cancelled() => return,
            }
        }
        let target = ProbeTarget {
            container_pid: shared.container_pid(idx),
            ..target.clone()
        };
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

/// The start time of container `idx`'s current run, if it runs.
fn running_since(shared: &PodShared, idx: usize) -> Option<jiff::Timestamp> {
    shared
        .views
        .lock()
        .ok()
        .and_then(|v| match v.get(idx).map(|c| &c.state) {
            Some(ContainerState::Running { started_at }) => Some(*started_at),
            _ => None,
        })
}

/// Runs a startup probe for each run of container `idx`: until it succeeds the container's
/// readiness and liveness probes wait; after `failureThreshold` failures the container is
/// killed and restarted per the restart policy (the kubelet's startup probe).
pub(super) async fn startup_loop(
    shared: Arc<PodShared>,
    idx: usize,
    plan: probe::ProbePlan,
    target: ProbeTarget,
    has_readiness: bool,
) {
    let mut run: Option<jiff::Timestamp> = None;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(if run.is_none() { plan.initial_delay.max(std::time::Duration::from_millis(200)) } else { plan.period }) => {}
            () = shared.stop.cancelled() => return,
        }
        let Some(started) = running_since(&shared, idx) else {
            continue;
        };
        if run != Some(started) {
            run = Some(started);
            failures = 0;
            if let Ok(mut h) = shared.hooks.lock() {
                h.starting.insert(idx);
            }
            // Not ready before it has started.
            shared.update_view(idx, |v| v.probe_ready = false);
        }
        if !shared.hooks.lock().is_ok_and(|h| h.starting.contains(&idx)) {
            continue;
        }
        let target = ProbeTarget {
            container_pid: shared.container_pid(idx),
            ..target.clone()
        };
        if probe::run_once(&plan.action, &target, plan.timeout).await {
            if let Ok(mut h) = shared.hooks.lock() {
                h.starting.remove(&idx);
            }
            if !has_readiness {
                shared.update_view(idx, |v| v.probe_ready = true);
            }
        } else {
            failures += 1;
            if failures >= plan.failure_threshold
                && let Some(pid) = shared.container_pid(idx)
            {
                tracing::info!(uid = %shared.uid, idx, pid, "startup probe failed; killing container");
                process::signal(pid, Signal::SIGKILL);
                failures = 0;
            }
        }
    }
}

/// Runs the postStart hook after each start of container `idx`; a hook that fails kills the
/// container, which then restarts per the restart policy (the kubelet's FailedPostStartHook).
pub(super) async fn post_start_loop(
    shared: Arc<PodShared>,
    idx: usize,
    hook: Hook,
    target: ProbeTarget,
) {
    /// The kubelet gives a postStart hook until the container's grace period; bound it.
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    let mut hooked: Option<jiff::Timestamp> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            () = shared.stop.cancelled() => return,
        }
        let Some(started) = running_since(&shared, idx) else {
            continue;
        };
        if hooked == Some(started) {
            continue;
        }
        hooked = Some(started);
        let pid = shared.container_pid(idx);
        let target = ProbeTarget {
            container_pid: pid,
            ..target.clone()
        };
        if !lifecycle::run(&hook, &target, TIMEOUT).await
            && let Some(pid) = pid
        {
            tracing::info!(uid = %shared.uid, idx, pid, "postStart hook failed; killing container");
            process::signal(pid, Signal::SIGKILL);
        }
    }
}
