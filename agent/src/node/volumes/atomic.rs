//! Writes a volume's payload so a running container sees the old files or the new ones, never
//! a mix: the kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go). The files live in a
//! timestamped directory `..<time>`, the symlink `..data` points at the current one and is
//! replaced by a rename, and each top-level name is a symlink through `..data`.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
};

use super::payload::Payload;

const DATA_LINK: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> super::VolumeError {
    let path = path.to_owned();
    move |source| super::VolumeError::Io { what, path, source }
}

/// Whether the directory `..data` points at holds exactly `payload`.
fn current_matches(dir: &Path, payload: &Payload) -> bool {
    let Ok(target) = fs::read_link(dir.join(DATA_LINK)) else {
        return false;
    };
    let ts = dir.join(target);
    let mut found = 0usize;
    for (path, file) in payload {
        let p = ts.join(path);
        let Ok(meta) = fs::metadata(&p) else {
            return false;
        };
        if meta.permissions().mode() & 0o7777 != file.mode {
            return false;
        }
        if fs::read(&p).ok().as_deref() != Some(file.data.as_slice()) {
            return false;
        }
        found += 1;
    }
    found == count_files(&ts)
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// Makes `dir` (which must exist) hold `payload`; returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload) -> Result<bool, super::VolumeError> {
    if current_matches(dir, payload) {
        return Ok(false);
    }
    let old = fs::read_link(dir.join(DATA_LINK)).ok();
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let ts: PathBuf = dir.join(&stamp);
    fs::create_dir(&ts).map_err(io("creating", &ts))?;
    fs::set_permissions(&ts, fs::Permissions::from_mode(0o755)).map_err(io("chmod", &ts))?;
    for (path, file) in payload {
        let p = ts.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let mut f = fs::File::create(&p).map_err(io("writing", &p))?;
        f.write_all(&file.data).map_err(io("writing", &p))?;
        f.set_permissions(fs::Permissions::from_mode(file.mode))
            .map_err(io("chmod", &p))?;
    }
    // The switch: a new symlink renamed over `..data` (rename(2) is atomic).
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&stamp, &tmp).map_err(io("linking", &tmp))?;
    fs::rename(&tmp, dir.join(DATA_LINK)).map_err(io("renaming", &tmp))?;
    // Top-level names through `..data`; names no longer in the payload go.
    let tops: std::collections::BTreeSet<&str> =
        payload.keys().filter_map(|p| p.split('/').next()).collect();
    for top in &tops {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(top), &link).map_err(io("linking", &link))?;
        }
    }
    for entry in fs::read_dir(dir).map_err(io("reading", dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(name.as_str()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::{super::payload::FileData, *};

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                (
                    (*p).to_owned(),
                    FileData {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn files_switch_through_the_data_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert!(write(d, &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o600)])).expect("write"));
        assert_eq!(fs::read_to_string(d.join("a")).expect("a"), "1");
        assert_eq!(fs::read_to_string(d.join("sub/b")).expect("b"), "2");
        assert_eq!(
            fs::metadata(d.join("sub/b"))
                .expect("b")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_link(d.join("a")).expect("link"),
            Path::new("..data/a")
        );
        let first = fs::read_link(d.join(DATA_LINK)).expect("data");
        // The same payload again changes nothing.
        assert!(!write(d, &payload(&[("a", "1", 0o644), ("sub/b", "2", 0o600)])).expect("write"));
        // A new payload: new directory, old one and the dropped name gone.
        assert!(write(d, &payload(&[("a", "3", 0o644)])).expect("write"));
        assert_eq!(fs::read_to_string(d.join("a")).expect("a"), "3");
        assert!(fs::symlink_metadata(d.join("sub")).is_err());
        assert!(!d.join(first).exists());
        let dirs = fs::read_dir(d)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .count();
        assert_eq!(dirs, 1);
    }
}
