//! keelson's own per-packet cost in the `policy` benchmark: the kernel's run-time statistics
//! (run count, run time) of the datapath's tc programs on the Pods' veths, found through the
//! endpoint's pinned tcx links (link → program id → program), so that another datapath on the
//! machine does not count. The statistics are switched on by
//! `keelson_mode::with_hook_stats`, which also gives the socket hooks' figures.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};
use keelson_agent::loader::{Datapath, sys};
use keelson_common::names;

use crate::policy_workload::CLIENT_IP;

/// The tc programs measured; both are shared by every endpoint of a datapath.
pub const TC_PROGRAMS: [&str; 2] = [names::PROG_FROM_CONTAINER, names::PROG_TO_CONTAINER];

/// The value of `key:` in a descriptor's `/proc/self/fdinfo` entry.
fn fdinfo_field(fd: &OwnedFd, key: &str) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    parse_fdinfo(&text, key).with_context(|| format!("no {key} in fdinfo"))
}

fn parse_fdinfo(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// A descriptor of program `id` (`BPF_PROG_GET_FD_BY_ID`).
fn prog_fd(id: u32) -> Result<OwnedFd> {
    /// `enum bpf_cmd` in include/uapi/linux/bpf.h.
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    /// The `*_GET_FD_BY_ID` member of `union bpf_attr`.
    #[repr(C)]
    struct GetFdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = GetFdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: the kernel reads `size_of::<GetFdAttr>()` bytes of a live value and returns a
    // new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &raw const attr,
            size_of::<GetFdAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_GET_FD_BY_ID");
    }
    let fd = i32::try_from(fd)?;
    // SAFETY: the descriptor was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The program a pinned link runs.
fn linked_prog(link: &Path) -> Result<OwnedFd> {
    let link = sys::obj_get(link).with_context(|| format!("opening {}", link.display()))?;
    let id = fdinfo_field(&link, "prog_id")?;
    prog_fd(u32::try_from(id)?)
}

/// (name, run count, run time in ns) of each of [`TC_PROGRAMS`] of `dp`; counts stay 0 while
/// the statistics are off.
pub fn tc_counters(dp: &Datapath) -> Result<Vec<(&'static str, u64, u64)>> {
    TC_PROGRAMS
        .into_iter()
        .map(|name| {
            let prog = linked_prog(&dp.endpoint_link_path(name, CLIENT_IP))?;
            Ok((
                name,
                fdinfo_field(&prog, "run_cnt")?,
                fdinfo_field(&prog, "run_time_ns")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields_are_read_by_exact_key() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t3\nrun_time_ns:\t123456\n\
                    run_cnt:\t42\nrecursion_misses:\t0\n";
        assert_eq!(parse_fdinfo(text, "run_cnt"), Some(42));
        assert_eq!(parse_fdinfo(text, "run_time_ns"), Some(123_456));
        assert_eq!(parse_fdinfo(text, "prog_id"), None);
        assert_eq!(
            parse_fdinfo("link_id:\t9\nprog_id:\t77\n", "prog_id"),
            Some(77)
        );
    }
}
