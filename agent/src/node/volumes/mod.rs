//! A Pod's volumes on the node: each one set up once per Pod under `<pod dir>/volumes/<name>`
//! (or, for `hostPath`, checked on the host), kept up to date while the Pod runs, and torn
//! down with it. `emptyDir` is a directory (a tmpfs with `medium: Memory`); `configMap`,
//! `secret`, `downwardAPI` and `projected` hold a payload written atomically (Secrets, and
//! projected volumes that may hold them, on tmpfs, never on disk); `hostPath` is the host's own
//! path after its `type` check.

pub mod atomic;
pub mod payload;

use std::{
    collections::BTreeMap,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Pod, Volume};
use nix::mount::{MntFlags, MsFlags};

use self::payload::Downward;
use super::sources::PodSources;

/// Errors of setting up a volume, worded as the kubelet's `MountVolume.SetUp failed` events.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume {volume:?} : {kind} {name:?} not found")]
    Missing {
        volume: String,
        kind: &'static str,
        name: String,
    },
    #[error(
        "MountVolume.SetUp failed for volume {volume:?} : {kind} references non-existent {} key: {key}",
        if *kind == "configmap" { "config" } else { "secret" }
    )]
    MissingKey {
        volume: String,
        kind: &'static str,
        key: String,
    },
    #[error(
        "MountVolume.SetUp failed for volume {volume:?} : path {path:?} must be relative and may not contain '..'"
    )]
    BadPath { volume: String, path: String },
    #[error(
        "MountVolume.SetUp failed for volume {volume:?} : {what} is not supported by this node"
    )]
    Unsupported { volume: String, what: String },
    #[error(
        "MountVolume.SetUp failed for volume {volume:?} : hostPath type check failed: {path} is not a {want}"
    )]
    HostPathType {
        volume: String,
        path: String,
        want: &'static str,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {what} at {path}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Where the volumes of a Pod live on the node.
pub fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// How one volume is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Backing {
    /// A directory under the Pod's volumes directory; on tmpfs when `memory` (with a size).
    Dir { memory: bool, size: Option<u64> },
    /// The host's own path.
    Host(PathBuf),
}

/// A Secret's files never touch the disk: a volume holding one is a tmpfs (the kubelet's
/// secret and projected volumes are tmpfs mounts).
fn on_tmpfs(v: &Volume) -> bool {
    v.secret.is_some()
        || v.projected.is_some()
        || v.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) == Some("Memory")
}

fn backing(v: &Volume) -> Result<Backing, VolumeError> {
    if let Some(h) = &v.host_path {
        return Ok(Backing::Host(PathBuf::from(&h.path)));
    }
    if v.empty_dir.is_some()
        || v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
    {
        let size = v
            .empty_dir
            .as_ref()
            .and_then(|e| e.size_limit.as_ref())
            .and_then(|q| super::env::quantity(&q.0))
            .map(|b| b as u64);
        return Ok(Backing::Dir {
            memory: on_tmpfs(v),
            size,
        });
    }
    Err(VolumeError::Unsupported {
        volume: v.name.clone(),
        what: "this volume type".into(),
    })
}

/// The `type` check of a hostPath volume (pkg/volume/hostpath: `checkType`), creating what
/// the `...OrCreate` types ask for.
fn check_host_path(volume: &str, path: &Path, kind: &str) -> Result<(), VolumeError> {
    let fail = |want| VolumeError::HostPathType {
        volume: volume.to_owned(),
        path: path.display().to_string(),
        want,
    };
    let meta = std::fs::metadata(path);
    let io = |what| {
        let p = path.to_owned();
        move |source| VolumeError::Io {
            what,
            path: p,
            source,
        }
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(path).map_err(io("creating"))?;
                return Ok(());
            }
            meta.ok()
                .filter(|m| m.is_dir())
                .map(|_| ())
                .ok_or_else(|| fail("directory"))
        }
        "Directory" => meta
            .ok()
            .filter(|m| m.is_dir())
            .map(|_| ())
            .ok_or_else(|| fail("directory")),
        "FileOrCreate" => {
            if meta.is_err() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io("creating"))?;
                return Ok(());
            }
            meta.ok()
                .filter(|m| m.is_file())
                .map(|_| ())
                .ok_or_else(|| fail("file"))
        }
        "File" => meta
            .ok()
            .filter(|m| m.is_file())
            .map(|_| ())
            .ok_or_else(|| fail("file")),
        "Socket" => meta
            .ok()
            .filter(|m| m.file_type().is_socket())
            .map(|_| ())
            .ok_or_else(|| fail("socket")),
        "CharDevice" => meta
            .ok()
            .filter(|m| m.file_type().is_char_device())
            .map(|_| ())
            .ok_or_else(|| fail("character device")),
        "BlockDevice" => meta
            .ok()
            .filter(|m| m.file_type().is_block_device())
            .map(|_| ())
            .ok_or_else(|| fail("block device")),
        other => Err(VolumeError::Unsupported {
            volume: volume.to_owned(),
            what: format!("hostPath type {other:?}"),
        }),
    }
}

/// Sets up every volume of the Pod (idempotent: a volume already set up is refreshed) and
/// returns the host path of each by name. Blocking: run it off the async runtime.
pub fn setup(
    pod: &Pod,
    pod_dir: &Path,
    sources: &PodSources,
    d: Downward,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let mut out = BTreeMap::new();
    let base = volumes_dir(pod_dir);
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        // The payload first: a missing ConfigMap leaves nothing half made.
        let payload = payload::payload(pod, v, sources, d).transpose()?;
        let path = match backing(v)? {
            Backing::Host(path) => {
                let kind = v
                    .host_path
                    .as_ref()
                    .and_then(|h| h.type_.clone())
                    .unwrap_or_default();
                check_host_path(&v.name, &path, &kind)?;
                path
            }
            Backing::Dir { memory, size } => {
                let dir = base.join(&v.name);
                std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Io {
                    what: "creating",
                    path: dir.clone(),
                    source,
                })?;
                if memory && !is_mount_point(&dir) {
                    let opts = match size {
                        Some(b) => format!("mode=0755,size={b}"),
                        None => "mode=0755".to_owned(),
                    };
                    nix::mount::mount(
                        Some("tmpfs"),
                        &dir,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some(opts.as_str()),
                    )
                    .map_err(|source| VolumeError::Mount {
                        what: "tmpfs",
                        path: dir.clone(),
                        source,
                    })?;
                }
                if let Some(p) = &payload {
                    atomic::write(&dir, p)?;
                }
                dir
            }
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Rewrites the payload volumes from fresh sources (ConfigMap and Secret changes reach running
/// Pods this way); a volume whose source broke keeps its last files, as the kubelet's do.
pub fn refresh(pod: &Pod, pod_dir: &Path, sources: &PodSources, d: Downward) -> usize {
    let base = volumes_dir(pod_dir);
    let mut changed = 0;
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        match payload::payload(pod, v, sources, d) {
            Some(Ok(p)) => match atomic::write(&base.join(&v.name), &p) {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(volume = %v.name, error = %crate::cni::server::error_chain(&e), "refreshing volume")
                }
            },
            Some(Err(e)) => {
                tracing::debug!(volume = %v.name, error = %e, "volume source unavailable; keeping its files")
            }
            None => {}
        }
    }
    changed
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(a), Some(Ok(b))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else {
        return false;
    };
    a.dev() != b.dev()
}

/// Unmounts the Pod's tmpfs volumes (lazily: a process that still holds one does not keep the
/// Pod's directory from going) and removes the volumes directory. Blocking.
pub fn teardown(pod_dir: &Path) {
    let base = volumes_dir(pod_dir);
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let p = entry.path();
        if is_mount_point(&p)
            && let Err(e) = nix::mount::umount2(&p, MntFlags::MNT_DETACH)
        {
            tracing::warn!(path = %p.display(), error = %e, "unmounting volume");
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c"}], "volumes": volumes},
        }))
        .expect("pod")
    }

    const D: Downward = Downward {
        pod_ip: None,
        node_ip: std::net::Ipv4Addr::LOCALHOST,
    };

    #[test]
    fn empty_dir_config_map_and_secret_on_tmpfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources = PodSources {
            config_maps: [("cfg".to_owned(), [("k".to_owned(), b"v1".to_vec())].into())].into(),
            secrets: [("s".to_owned(), [("pw".to_owned(), b"x".to_vec())].into())].into(),
            ..Default::default()
        };
        let mut p = pod(json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "s"}},
        ]));
        let paths = setup(&p, dir.path(), &sources, D).expect("setup");
        let cleanup = scopeguard(dir.path());
        assert!(paths["scratch"].is_dir());
        assert_eq!(
            std::fs::read_to_string(paths["cfg"].join("k")).expect("k"),
            "v1"
        );
        assert!(
            is_mount_point(&paths["sec"]),
            "secret volume on its own tmpfs"
        );
        assert!(!is_mount_point(&paths["cfg"]));
        assert_eq!(
            std::fs::read_to_string(paths["sec"].join("pw")).expect("pw"),
            "x"
        );
        // An update reaches the files; a source that disappears keeps them.
        let newer = PodSources {
            config_maps: [("cfg".to_owned(), [("k".to_owned(), b"v2".to_vec())].into())].into(),
            ..sources.clone()
        };
        assert_eq!(refresh(&p, dir.path(), &newer, D), 1);
        assert_eq!(
            std::fs::read_to_string(paths["cfg"].join("k")).expect("k"),
            "v2"
        );
        assert_eq!(refresh(&p, dir.path(), &PodSources::default(), D), 0);
        assert_eq!(
            std::fs::read_to_string(paths["cfg"].join("k")).expect("k"),
            "v2"
        );
        drop(cleanup);
        assert!(!volumes_dir(dir.path()).exists());
        // A missing ConfigMap fails before anything is made.
        p = pod(json!([{"name": "cfg", "configMap": {"name": "absent"}}]));
        let e = setup(&p, dir.path(), &sources, D).expect_err("missing");
        assert!(matches!(e, VolumeError::Missing { .. }), "{e}");
    }

    #[test]
    fn host_path_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("file");
        std::fs::write(&f, "x").expect("file");
        assert!(check_host_path("v", dir.path(), "Directory").is_ok());
        let e = check_host_path("v", &f, "Directory").expect_err("file is no directory");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        assert!(check_host_path("v", &f, "File").is_ok());
        let made = dir.path().join("a/b");
        assert!(check_host_path("v", &made, "DirectoryOrCreate").is_ok());
        assert!(made.is_dir());
        let touched = dir.path().join("t");
        assert!(check_host_path("v", &touched, "FileOrCreate").is_ok());
        assert!(touched.is_file());
        assert!(check_host_path("v", &dir.path().join("none"), "Socket").is_err());
    }

    /// Tears the volumes down when dropped, even when an assertion failed.
    fn scopeguard(pod_dir: &Path) -> impl Drop + '_ {
        struct G<'a>(&'a Path);
        impl Drop for G<'_> {
            fn drop(&mut self) {
                teardown(self.0);
            }
        }
        G(pod_dir)
    }
}
