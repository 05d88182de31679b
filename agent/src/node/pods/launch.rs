//! How one container is started: its argv and environment, its own filesystem view (a fresh
//! overlay root with the Pod's files and volumes bound in) and its cgroups with the limits of
//! its resources, prepared again for every start, as a restarted container gets a fresh root.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use k8s_openapi::api::core::v1::Container;

use super::containers::PodShared;
use crate::node::{
    cgroups::{self, ContainerCgroups, Limits},
    process::{self, ProcessSpec},
    rootfs::{self, Bind},
};

/// Where the container's root is made, and what is bound into it.
#[derive(Debug, Clone)]
pub struct OwnRoot {
    /// `<pod dir>/rootfs/<container>`: the overlay's upper, work and merged directories.
    pub dir: PathBuf,
    pub binds: Vec<Bind>,
    /// The Pod's hostname, in a UTS namespace of the container's own (`None`: the node's).
    pub hostname: Option<String>,
}

/// Everything needed to (re)start one container.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub argv: Result<Vec<String>, String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub root: Option<OwnRoot>,
    pub limits: Limits,
}

/// A started container and what its end is judged by.
pub struct Started {
    pub child: tokio::process::Child,
    pub cgroups: ContainerCgroups,
    /// The OOM kill count of its memory cgroup before it started.
    pub oom_before: u64,
}

impl Launch {
    /// A container with `env`, run in the agent's own mount namespace (tests, and where the
    /// Pod has no root of its own).
    pub fn plain(container: &Container, env: Vec<(String, String)>) -> Self {
        Self {
            name: container.name.clone(),
            argv: process::container_argv(
                container.command.as_deref().unwrap_or_default(),
                container.args.as_deref().unwrap_or_default(),
            )
            .map_err(|e| e.to_string()),
            env,
            cwd: container
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .map_or_else(|| PathBuf::from("/"), PathBuf::from),
            root: None,
            limits: cgroups::limits(container),
        }
    }

    /// Prepares the root and cgroups and starts the process; the error is the message the
    /// container's Waiting state shows.
    pub async fn start(&self, shared: &Arc<PodShared>, log_key: &str) -> Result<Started, String> {
        let argv = self.argv.clone()?;
        let (launch, shared) = (self.clone(), Arc::clone(shared));
        let log = crate::node::api::log_path(&shared.pod_dir, log_key);
        let previous = crate::node::api::previous_log_path(&shared.pod_dir, log_key);
        tokio::task::spawn_blocking(move || {
            // A new run gets a new log; the last run's stays for `kubectl logs --previous`.
            if log.exists() {
                let _ = std::fs::rename(&log, &previous);
            }
            let cgroups = cgroups::setup(
                &shared.cfg.node_name,
                &shared.uid,
                &launch.name,
                launch.limits,
            )
            .map_err(|e| crate::cni::server::error_chain(&e))?;
            let rootfs = launch
                .root
                .as_ref()
                .map(|r| {
                    rootfs::prepare(&r.dir, &r.binds, &launch.cwd, r.hostname.as_deref())
                        .map(Arc::new)
                        .map_err(|e| crate::cni::server::error_chain(&e))
                })
                .transpose()?;
            let spec = ProcessSpec {
                argv,
                env: launch.env.clone(),
                cwd: launch.cwd.clone(),
                log,
                logger: shared.cfg.logger_bin.clone(),
                netns: shared.netns.clone(),
                cgroup: shared.cgroup.clone(),
                extra_cgroups: cgroups.dirs.clone(),
                rootfs,
                enter_ns_of: None,
            };
            let oom_before = cgroups.oom_kills();
            // tokio::process needs the runtime's context to register the child.
            let child = process::spawn(&spec).map_err(|e| crate::cni::server::error_chain(&e))?;
            Ok(Started {
                child,
                cgroups,
                oom_before,
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The binds of a container, or the message of its `CreateContainerConfigError`.
pub fn binds(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    files: &rootfs::PodFiles,
) -> Result<Vec<Bind>, String> {
    rootfs::binds(container, volumes, files).map_err(|e| e.to_string())
}
