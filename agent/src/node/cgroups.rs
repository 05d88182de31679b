//! A container's resource limits, enforced through its own cgroups: `limits.memory` as the
//! memory limit (the kernel's OOM killer ends a container over it, reported `OOMKilled`),
//! `limits.cpu` as a CFS quota and `requests.cpu` as a weight, as the kubelet maps them
//! (pkg/kubelet/cm: `ResourceConfigForPod`, `MilliCPUToQuota`, `MilliCPUToShares`). This
//! kernel's cgroups are hybrid (cgroup v2 at `/sys/fs/cgroup/unified` holds no memory or cpu
//! controller), so limits live in the v1 `memory` and `cpu` hierarchies, under
//! `keelson/<node>/<pod uid>/<container>`, next to the Pod's v2 cgroup the socket load
//! balancer sees.

use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Container;

use super::env::quantity;

/// The v1 hierarchies keelson uses.
const V1_ROOT: &str = "/sys/fs/cgroup";
/// The CFS period the kubelet uses (100 ms).
const CFS_PERIOD_US: u64 = 100_000;

/// Errors of setting up a container's cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a container's resources ask the kernel for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    pub cpu_shares: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The limits of `container`'s `resources` (requests.cpu defaults to limits.cpu, as the API
/// server defaults it).
pub fn limits(container: &Container) -> Limits {
    let res = container.resources.as_ref();
    let get = |which: fn(
        &k8s_openapi::api::core::v1::ResourceRequirements,
    ) -> Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               key: &str| {
        res.and_then(which)
            .and_then(|m| m.get(key))
            .and_then(|q| quantity(&q.0))
    };
    let mem = get(|r| r.limits.as_ref(), "memory");
    let cpu_limit = get(|r| r.limits.as_ref(), "cpu");
    let cpu_request = get(|r| r.requests.as_ref(), "cpu").or(cpu_limit);
    Limits {
        memory_bytes: mem.map(|b| b.ceil() as u64),
        // At least 1 ms per period, the kernel's minimum quota (MinQuotaPeriod).
        cpu_quota_us: cpu_limit.map(|c| ((c * CFS_PERIOD_US as f64).ceil() as u64).max(1_000)),
        // milli-CPU × 1024 / 1000, at least 2 (MinShares).
        cpu_shares: cpu_request.map(|c| ((c * 1024.0) as u64).max(2)),
    }
}

/// The cgroups a container runs in besides its Pod's v2 cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerCgroups {
    /// Directories whose `cgroup.procs` the container's process joins.
    pub dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
}

/// Where a Pod's v1 cgroups of `controller` live.
fn pod_dir(controller: &str, node: &str, uid: &str) -> PathBuf {
    Path::new(V1_ROOT)
        .join(controller)
        .join("keelson")
        .join(node)
        .join(uid)
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Io {
        what: "writing",
        path: path.to_owned(),
        source,
    })
}

/// Creates (or reuses) the container's cgroups and writes its limits. Nothing is made for a
/// container without limits, or where the v1 hierarchy is absent. Blocking.
pub fn setup(
    node: &str,
    uid: &str,
    container: &str,
    limits: Limits,
) -> Result<ContainerCgroups, CgroupError> {
    let mut out = ContainerCgroups::default();
    let mk = |controller: &str| -> Result<Option<PathBuf>, CgroupError> {
        if !Path::new(V1_ROOT)
            .join(controller)
            .join("cgroup.procs")
            .exists()
        {
            return Ok(None);
        }
        let dir = pod_dir(controller, node, uid).join(container);
        fs::create_dir_all(&dir).map_err(|source| CgroupError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Some(dir))
    };
    if let Some(bytes) = limits.memory_bytes
        && let Some(dir) = mk("memory")?
    {
        // Raise memsw first when lowering is impossible the other way round: the memory
        // limit may never exceed memory+swap, so set memory, then memsw to the same value
        // (no swap beyond the limit, as the kubelet's containers get on a swapless node).
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            let _ = fs::write(&memsw, "-1");
        }
        write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
        if memsw.exists() {
            write(&memsw, &bytes.to_string())?;
        }
        out.dirs.push(dir.clone());
        out.memory = Some(dir);
    }
    if (limits.cpu_quota_us.is_some() || limits.cpu_shares.is_some())
        && let Some(dir) = mk("cpu")?
    {
        write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
        let quota = limits
            .cpu_quota_us
            .map_or("-1".to_owned(), |q| q.to_string());
        write(&dir.join("cpu.cfs_quota_us"), &quota)?;
        if let Some(shares) = limits.cpu_shares {
            write(&dir.join("cpu.shares"), &shares.to_string())?;
        }
        out.dirs.push(dir);
    }
    Ok(out)
}

impl ContainerCgroups {
    /// How many processes the OOM killer has killed in the container's memory cgroup
    /// (`oom_kill` of memory.oom_control, Linux 4.13).
    pub fn oom_kills(&self) -> u64 {
        self.memory
            .as_ref()
            .and_then(|d| fs::read_to_string(d.join("memory.oom_control")).ok())
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

/// Removes a Pod's v1 cgroups (its processes are gone by then). Blocking.
pub fn remove_pod(node: &str, uid: &str) {
    for controller in ["memory", "cpu"] {
        let dir = pod_dir(controller, node, uid);
        for c in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = super::process::remove_cgroup(&c.path());
        }
        let _ = fs::remove_dir(&dir);
    }
}

/// Removes a node's v1 cgroups (`keelson down`, and tests).
pub fn remove_node(node: &str) {
    for controller in ["memory", "cpu"] {
        let dir = Path::new(V1_ROOT)
            .join(controller)
            .join("keelson")
            .join(node);
        for pod in fs::read_dir(&dir).into_iter().flatten().flatten() {
            for c in fs::read_dir(pod.path()).into_iter().flatten().flatten() {
                let _ = super::process::remove_cgroup(&c.path());
            }
            let _ = fs::remove_dir(pod.path());
        }
        let _ = fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn limits_as_the_kubelet_maps_them() {
        let c: Container = serde_json::from_value(json!({"name": "c", "resources": {
            "limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "250m"}}}))
        .expect("container");
        assert_eq!(
            limits(&c),
            Limits {
                memory_bytes: Some(64 << 20),
                cpu_quota_us: Some(50_000),
                cpu_shares: Some(256),
            }
        );
        let only_limit: Container =
            serde_json::from_value(json!({"name": "c", "resources": {"limits": {"cpu": "1m"}}}))
                .expect("container");
        let l = limits(&only_limit);
        assert_eq!((l.cpu_quota_us, l.cpu_shares), (Some(1_000), Some(2)));
        assert!(limits(&serde_json::from_value(json!({"name": "c"})).expect("c")).is_empty());
    }

    #[test]
    fn memory_cgroup_is_made_limited_and_removed() {
        if !Path::new(V1_ROOT).join("memory/cgroup.procs").exists() {
            return;
        }
        let node = format!("cgtest-{}", std::process::id());
        let cg = setup(
            &node,
            "u1",
            "c",
            Limits {
                memory_bytes: Some(32 << 20),
                ..Limits::default()
            },
        )
        .expect("setup");
        let dir = pod_dir("memory", &node, "u1").join("c");
        let limit = fs::read_to_string(dir.join("memory.limit_in_bytes")).expect("limit");
        remove_node(&node);
        assert_eq!(limit.trim(), (32u64 << 20).to_string());
        assert_eq!(cg.dirs, [dir.clone()]);
        assert_eq!(cg.oom_kills(), 0);
        assert!(!dir.exists());
        assert!(
            !Path::new(V1_ROOT)
                .join("memory/keelson")
                .join(&node)
                .exists()
        );
    }
}
