//! A Pod's sandbox: its network namespace and `keelson cni` attachment (or the node's
//! namespace for hostNetwork Pods), its cgroup, and on removal everything set up for it:
//! processes, attachment, volumes, cgroups, namespace.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Pod;
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt as _;

use super::{PodError, PodRuntimeConfig};
use crate::{
    cni::protocol::{CniError, CniResult},
    netns,
    node::{
        cgroups,
        process::{self, PodRecord},
        volumes,
    },
};

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

/// Sets up the sandbox of a Pod (idempotent: a recorded sandbox whose namespace still exists is
/// reused) and returns the Pod IP.
pub(super) async fn ensure_sandbox(
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
pub(super) fn rec_netns(rec: &PodRecord, cfg: &PodRuntimeConfig) -> PathBuf {
    if rec.netns.is_empty() {
        netns::named_path(&netns::pod_netns_name(&cfg.node_name, &rec.uid))
    } else {
        PathBuf::from(&rec.netns)
    }
}

/// Removes a Pod's sandbox: remaining processes, CNI attachment, cgroup, namespace, state.
pub(super) async fn teardown_sandbox(cfg: &PodRuntimeConfig, rec: &PodRecord) {
    let cgroup = cfg.pod_cgroup(&rec.uid);
    for c in rec.containers.values() {
        if process::is_alive(c.pid, c.start_ticks) {
            process::signal(c.pid, Signal::SIGKILL);
        }
    }
    {
        let (pod_dir, node, uid) = (
            cfg.pod_dir(&rec.uid),
            cfg.node_name.clone(),
            rec.uid.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            volumes::teardown(&pod_dir);
            cgroups::remove_pod(&node, &uid);
        })
        .await;
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
