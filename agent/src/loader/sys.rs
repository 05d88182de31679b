//! The few system calls aya 0.14 does not wrap: mounting bpffs, opening a pinned object,
//! replacing a link's program (BPF_LINK_UPDATE, kernel 5.7, 0c991ebc8c69) and running a
//! closure inside another network namespace.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Whether a bpffs is mounted exactly at `mount_point` (per `/proc/mounts`).
pub fn bpffs_mounted(mount_point: &Path) -> io::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_src, target, fstype) = (fields.next(), fields.next(), fields.next());
        fstype == Some("bpf") && target.map(Path::new) == Some(mount_point)
    }))
}

/// Mounts a bpffs at `mount_point` unless one is there already.
pub fn ensure_bpffs(mount_point: &Path) -> io::Result<()> {
    if bpffs_mounted(mount_point)? {
        return Ok(());
    }
    std::fs::create_dir_all(mount_point)?;
    nix::mount::mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Opens a pinned BPF object (map, program or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid BPF_OBJ_GET attribute whose `pathname` points at a
    // NUL-terminated string that outlives the call; the size passed is the struct's size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            size_of::<ObjGetAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success BPF_OBJ_GET returns a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Atomically makes `link` run `new_prog` instead of its current program.
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid BPF_LINK_UPDATE attribute of the size passed; both fds are
    // borrowed for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &attr as *const LinkUpdateAttr,
            size_of::<LinkUpdateAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread that first enters the network namespace at `netns` (when given).
/// Netlink and tcx attachment resolve interface names and indexes in the caller's namespace;
/// a dedicated thread keeps the rest of the process in its own.
pub fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let Some(netns) = netns else {
        return Ok(f());
    };
    let file = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("network namespace worker panicked"))?
    })
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The per-type part of a link's `struct bpf_link_info`: the union that follows `type`, `id`
/// and `prog_id`, at offset 16.
fn link_info_union(link: BorrowedFd<'_>) -> io::Result<[u8; 16]> {
    #[repr(C, align(8))]
    struct Info([u8; 256]);
    let mut info = Info([0; 256]);
    let attr = InfoByFdAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<Info>() as u32,
        info: info.0.as_mut_ptr() as u64,
    };
    // SAFETY: `attr.info` points at a writable, 8-aligned buffer of `info_len` bytes that
    // outlives the call; the kernel writes at most that many.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoByFdAttr,
            size_of::<InfoByFdAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut union = [0u8; 16];
    union.copy_from_slice(&info.0[16..32]);
    Ok(union)
}

/// The ifindex a tcx link is attached to (`tcx.ifindex`, first in its union member); 0 once
/// the device is gone.
pub fn link_ifindex(link: BorrowedFd<'_>) -> io::Result<u32> {
    let u = link_info_union(link)?;
    Ok(u32::from_ne_bytes([u[0], u[1], u[2], u[3]]))
}

/// The id of the cgroup a cgroup link is attached to (`cgroup.cgroup_id`, first in its union
/// member); 0 once the cgroup is gone. On cgroup v2 the id is the directory's inode number.
pub fn link_cgroup_id(link: BorrowedFd<'_>) -> io::Result<u64> {
    let u = link_info_union(link)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&u[0..8]);
    Ok(u64::from_ne_bytes(id))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `create_dir_all` for a directory below a parent that `keelson down` of another cluster may
/// remove at the same moment (it removes the shared `keelson` parents once empty): a parent
/// that vanished between two steps is created again.
pub fn create_dir_all_shared(path: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::create_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 5 => tries += 1,
            other => return other,
        }
    }
}
