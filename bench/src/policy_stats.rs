//! keelson's own per-packet cost in the `policy` benchmark: the kernel's run-time statistics
//! (run count, run time) of the datapath's tc programs on the Pods' veths, read from the
//! programs this datapath loaded (every endpoint's filters run those same programs), so that
//! another datapath on the machine does not count. The statistics are switched on by
//! `keelson_mode::with_hook_stats`, which also gives the socket hooks' figures.

use anyhow::Result;
use keelson_agent::loader::Datapath;
use keelson_common::names;

/// The tc programs measured; both are shared by every endpoint of a datapath.
pub const TC_PROGRAMS: [&str; 2] = [names::PROG_FROM_CONTAINER, names::PROG_TO_CONTAINER];

/// (name, run count, run time in ns) of each of [`TC_PROGRAMS`] of `dp`; counts stay 0 while
/// the statistics are off.
pub fn tc_counters(dp: &Datapath) -> Result<Vec<(&'static str, u64, u64)>> {
    let infos = dp
        .program_infos(&TC_PROGRAMS)
        .map_err(|e| anyhow::anyhow!("{e}: {:?}", std::error::Error::source(&e)))?;
    Ok(infos
        .into_iter()
        .map(|(name, info)| {
            let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            (name, info.run_count(), ns)
        })
        .collect())
}
