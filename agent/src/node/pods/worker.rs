//! One Pod's worker: its sandbox, then what its containers are made from (sources, volumes,
//! `/etc/hosts` and `/etc/resolv.conf`, kept fresh while it runs), its containers, the status
//! it reports, and on deletion the grace period, the teardown and the confirmation to the API
//! server (delete with gracePeriodSeconds=0).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    DEFAULT_GRACE, PodRuntimeConfig, SANDBOX_RETRY,
    containers::{PodContext, PodShared, run_containers, stop_containers},
    sandbox::{ensure_sandbox, rec_netns, teardown_sandbox},
};
use crate::node::{
    env, podfiles,
    process::PodRecord,
    rootfs::PodFiles,
    sources::PodSources,
    status::{self, ContainerState, ContainerView, PodView, RestartPolicy, Transitions},
    volumes::{self, payload::Downward},
};

/// How often a running Pod's ConfigMap, Secret and downward API volumes are brought up to date
/// (the kubelet's sync period is a minute; updates must show within one).
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

pub(super) fn grace_of(pod: &Pod) -> Duration {
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
pub(super) async fn pod_worker(
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
        probe_ready: c.readiness_probe.is_none() && c.startup_probe.is_none(),
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
        hooks: Mutex::default(),
        tokens: Default::default(),
        stop: CancellationToken::new(),
    });
    let runner = tokio::spawn(prepare_and_run(
        Arc::clone(&shared),
        client.clone(),
        pod.clone(),
    ));

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

/// What the downward API of this Pod reads.
fn downward(shared: &PodShared) -> Downward {
    Downward {
        pod_ip: Some(shared.pod_ip),
        node_ip: shared.cfg.node_ip,
    }
}

/// Reads the Pod's sources, sets its volumes up and writes its hosts and resolv.conf; the
/// error is the message its containers wait with.
async fn prepare(
    shared: &Arc<PodShared>,
    client: &Client,
    pod: &Pod,
) -> Result<PodContext, String> {
    let sources = PodSources::fetch(client, pod, true, &shared.tokens)
        .await
        .map_err(|e| crate::cni::server::error_chain(&e))?;
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let (p, s, src, d) = (
        pod.clone(),
        Arc::clone(shared),
        sources.clone(),
        downward(shared),
    );
    let (volumes, files) = tokio::task::spawn_blocking(move || {
        let volumes = volumes::setup(&p, &s.pod_dir, &src, d).map_err(|e| e.to_string())?;
        let dns = &s.cfg.cluster_dns;
        let hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            podfiles::hosts(&p, Some(s.pod_ip), &dns.domain)
        };
        let node_resolv = podfiles::ResolvConf::parse(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        );
        let resolv = podfiles::resolv_conf(&p, dns, &node_resolv).render();
        let files = PodFiles {
            hosts: s.pod_dir.join("etc-hosts"),
            resolv_conf: s.pod_dir.join("resolv.conf"),
        };
        for (path, text) in [(&files.hosts, hosts), (&files.resolv_conf, resolv)] {
            std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok::<_, String>((volumes, files))
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(PodContext {
        sources,
        volumes,
        files: Some(files),
        hostname: (!host_network).then(|| podfiles::hostname(pod)),
    })
}

/// Sets every container of the Pod waiting with `reason`: `message`.
fn all_waiting(
    shared: &PodShared,
    pod: &Pod,
    reason: &str,
    message: &str,
    only: Option<&[String]>,
) {
    let state = || ContainerState::Waiting {
        reason: reason.into(),
        message: message.into(),
    };
    let wanted = |c: &Container| only.is_none_or(|names| names.contains(&c.name));
    let spec = pod.spec.clone().unwrap_or_default();
    for (idx, c) in spec.init_containers.iter().flatten().enumerate() {
        if wanted(c) {
            shared.update_init_view(idx, |v| v.state = state());
        }
    }
    for (idx, c) in spec.containers.iter().enumerate() {
        if wanted(c) {
            shared.update_view(idx, |v| v.state = state());
        }
    }
}

/// Prepares the Pod (retrying while a volume cannot be set up, `ContainerCreating` with the
/// reason, or a container's env cannot be resolved, `CreateContainerConfigError`, as the
/// kubelet keeps such Pods waiting), keeps its volumes fresh, and runs its containers.
async fn prepare_and_run(shared: Arc<PodShared>, client: Client, pod: Pod) {
    let ctx = loop {
        let wait = match prepare(&shared, &client, &pod).await {
            Ok(ctx) => {
                let spec = pod.spec.clone().unwrap_or_default();
                let broken: Vec<(String, String)> = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                    .filter_map(|c| {
                        env::config_error(&pod, c, &ctx.sources).map(|m| (c.name.clone(), m))
                    })
                    .collect();
                if broken.is_empty() {
                    break ctx;
                }
                for (name, msg) in &broken {
                    all_waiting(
                        &shared,
                        &pod,
                        "CreateContainerConfigError",
                        msg,
                        Some(std::slice::from_ref(name)),
                    );
                }
                tracing::info!(uid = %shared.uid, error = %broken[0].1, "container configuration not resolvable yet");
                SANDBOX_RETRY
            }
            Err(msg) => {
                tracing::info!(uid = %shared.uid, error = %msg, "setting up pod volumes");
                all_waiting(&shared, &pod, "ContainerCreating", &msg, None);
                SANDBOX_RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stop.cancelled() => return,
        }
    };
    let has_payload = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| {
            v.iter().any(|v| {
                v.config_map.is_some()
                    || v.secret.is_some()
                    || v.projected.is_some()
                    || v.downward_api.is_some()
            })
        });
    if has_payload {
        let (shared, client, pod) = (Arc::clone(&shared), client.clone(), pod.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(VOLUME_REFRESH) => {}
                    () = shared.stop.cancelled() => return,
                }
                let Ok(sources) = PodSources::fetch(&client, &pod, false, &shared.tokens).await
                else {
                    continue;
                };
                let (p, s, d) = (pod.clone(), Arc::clone(&shared), downward(&shared));
                let _ = tokio::task::spawn_blocking(move || {
                    let n = volumes::refresh(&p, &s.pod_dir, &sources, d);
                    if n > 0 {
                        tracing::info!(uid = %s.uid, volumes = n, "volumes updated");
                    }
                })
                .await;
            }
        });
    }
    run_containers(shared, pod, ctx).await;
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
