//! The privilege check the agent runs first: it needs CAP_NET_ADMIN (links, routes, tc),
//! CAP_SYS_ADMIN (setns, mounts, cgroups) and CAP_BPF (loading programs, maps), and says which
//! one is missing rather than failing halfway through setup.

/// A capability the agent needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    /// Bit number (include/uapi/linux/capability.h).
    pub bit: u32,
}

/// What the agent needs.
pub const REQUIRED: [Capability; 3] = [
    Capability {
        name: "CAP_NET_ADMIN",
        bit: 12,
    },
    Capability {
        name: "CAP_SYS_ADMIN",
        bit: 21,
    },
    // CAP_BPF exists since Linux 5.8; before, CAP_SYS_ADMIN covered it.
    Capability {
        name: "CAP_BPF",
        bit: 39,
    },
];

/// Errors of the privilege check.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("reading /proc/self/status")]
    Read(#[source] std::io::Error),
    #[error("no CapEff line in /proc/self/status")]
    NoCapEff,
    #[error("the agent lacks {}: run it as root or grant these capabilities", .0.join(", "))]
    Missing(Vec<&'static str>),
}

/// The capabilities of `REQUIRED` absent from an effective set.
pub fn missing(cap_eff: u64) -> Vec<&'static str> {
    REQUIRED
        .iter()
        .filter(|c| cap_eff & (1u64 << c.bit) == 0)
        .map(|c| c.name)
        .collect()
}

/// Parses the `CapEff:` line of /proc/<pid>/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| u64::from_str_radix(l.strip_prefix("CapEff:")?.trim(), 16).ok())
}

/// Checks this process's effective capabilities.
pub fn check() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Read)?;
    let eff = parse_cap_eff(&status).ok_or(PrivilegeError::NoCapEff)?;
    let missing = missing(eff);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_capabilities() {
        assert_eq!(missing(u64::MAX), Vec::<&str>::new());
        assert_eq!(
            missing(0),
            vec!["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_BPF"]
        );
        assert_eq!(missing(1 << 12 | 1 << 39), vec!["CAP_SYS_ADMIN"]);
        let err = PrivilegeError::Missing(missing(1 << 21));
        assert_eq!(
            err.to_string(),
            "the agent lacks CAP_NET_ADMIN, CAP_BPF: run it as root or grant these capabilities"
        );
    }

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tkeelson\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
