//! A Pod's probe loops: readiness marks a container ready or not, liveness kills a container
//! that keeps failing so its supervisor restarts it.

use std::sync::Arc;

use nix::sys::signal::Signal;

use super::containers::PodShared;
use crate::node::{
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
        if running {
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
