//! The one list of the datapath's maps: name, pin name, kind, key, value, size and flags.
//!
//! The eBPF object declares its maps from this list, the agent builds its typed handles from
//! it and [`crate::names`] takes the names from it, so a map is written down once. The list
//! is a macro that hands every entry to a callback macro of the caller's, which turns each
//! kind into its own crate's type (`aya_ebpf::maps::HashMap` in the programs,
//! `aya::maps::HashMap` in the agent):
//!
//! ```text
//! CONST field "pin_name" Kind<Key, Value>(max_entries, flags);
//! ```
//!
//! Kinds: `Hash`, `Lru` (LRU hash), `Array`, `PerCpuArray` (keys are `u32` indexes), `Lpm`
//! (longest-prefix-match trie; its keys are wrapped in the kernel's `{prefixlen, data}`), and
//! `RingBuf` (key and value `()`, `max_entries` is its size in bytes).

/// Flags of map creation (`BPF_F_*` of the kernel's uapi `bpf.h`).
pub mod map_flags {
    /// Entries are allocated on insert rather than all at creation. Required by LPM tries.
    pub const NO_PREALLOC: u32 = 1;
}

/// Hands the list of maps to `$callback`. See the module documentation for the format.
#[macro_export]
macro_rules! datapath_maps {
    ($callback:ident) => {
        $callback! {
            /// Frontend (address, port, protocol) and slot → backend count or backend id.
            SERVICES services "kls_services"
                Hash<$crate::ServiceKey, $crate::ServiceValue>
                ($crate::limits::MAX_SERVICE_ENTRIES, 0);
            /// Backend id → address, port, protocol.
            BACKENDS backends "kls_backends"
                Hash<$crate::BackendKey, $crate::Backend>($crate::limits::MAX_BACKENDS, 0);
            /// Reverse-NAT index → frontend.
            REVNAT revnat "kls_revnat"
                Hash<$crate::RevNatKey, $crate::RevNatValue>($crate::limits::MAX_REVNAT, 0);
            /// Which socket talks to which backend, for recvmsg and getpeername.
            SOCK_REVNAT sock_revnat "kls_sock_revnat"
                Lru<$crate::SockRevNatKey, $crate::SockRevNatValue>
                ($crate::limits::MAX_SOCK_REVNAT, 0);
            /// Local Pods: address → veth, MACs, identity, policy enforcement.
            ENDPOINTS endpoints "kls_endpoints"
                Hash<$crate::EndpointKey, $crate::EndpointInfo>($crate::limits::MAX_ENDPOINTS, 0);
            /// Per-CPU counters of drops and events.
            METRICS metrics "kls_metrics"
                PerCpuArray<u32, $crate::MetricValue>($crate::limits::METRICS_SLOTS, 0);
            /// Session affinity of clients (LRU: idle clients age out).
            AFFINITY affinity "kls_affinity"
                Lru<$crate::AffinityKey, $crate::AffinityValue>($crate::limits::MAX_AFFINITY, 0);
            SERVICES6 services6 "kls_services6"
                Hash<$crate::ServiceKey6, $crate::ServiceValue>
                ($crate::limits::MAX_SERVICE_ENTRIES, 0);
            BACKENDS6 backends6 "kls_backends6"
                Hash<$crate::BackendKey, $crate::Backend6>($crate::limits::MAX_BACKENDS, 0);
            REVNAT6 revnat6 "kls_revnat6"
                Hash<$crate::RevNatKey, $crate::RevNatValue6>($crate::limits::MAX_REVNAT, 0);
            SOCK_REVNAT6 sock_revnat6 "kls_sockrevnat6"
                Lru<$crate::SockRevNatKey6, $crate::SockRevNatValue6>
                ($crate::limits::MAX_SOCK_REVNAT, 0);
            /// Conntrack of per-packet translated flows. A plain hash, not an LRU: a full table
            /// refuses new flows (counted as `ct_full`, as netfilter's "table full, dropping
            /// packet") instead of silently evicting established ones; the agent's GC removes
            /// closed and idle flows.
            CT ct "kls_ct" Hash<$crate::CtKey, $crate::CtValue>($crate::limits::MAX_CT, 0);
            /// What the agent tells the programs about the node (one entry).
            CONFIG config "kls_config" Array<u32, $crate::NodeConfig>(1, 0);
            /// Maglev lookup tables: 4 KiB each and only Maglev frontends have one, so they are
            /// allocated on insert.
            MAGLEV maglev "kls_maglev"
                Hash<$crate::MaglevKey, $crate::MaglevTable>
                ($crate::limits::MAX_MAGLEV, $crate::maps::map_flags::NO_PREALLOC);
            /// `namespace/name` per reverse-NAT index, for the dump tools; no program reads it,
            /// but it lives beside the maps it explains so that it survives agent restarts.
            SVC_NAMES svc_names "kls_svc_names"
                Hash<$crate::RevNatKey, $crate::ServiceName>
                ($crate::limits::MAX_REVNAT, $crate::maps::map_flags::NO_PREALLOC);
            /// Address or CIDR → security identity (longest prefix wins).
            IPCACHE ipcache "kls_ipcache"
                Lpm<$crate::IpcacheKey, $crate::IpcacheValue>
                ($crate::limits::MAX_IPCACHE, $crate::maps::map_flags::NO_PREALLOC);
            /// (endpoint, peer identity, direction, protocol, port prefix) → allowed.
            POLICY policy "kls_policy"
                Lpm<$crate::PolicyKey, $crate::PolicyValue>
                ($crate::limits::MAX_POLICY, $crate::maps::map_flags::NO_PREALLOC);
            /// Flows policy allowed, so that their replies pass (LRU: idle flows age out and
            /// are checked again if they come back).
            POL_CT pol_ct "kls_pol_ct"
                Lru<$crate::PolicyCtKey, $crate::PolicyCtValue>($crate::limits::MAX_POL_CT, 0);
            /// The policy revision and event switches (one entry).
            POL_STATE pol_state "kls_pol_state" Array<u32, $crate::PolicyState>(1, 0);
            /// `namespace/name` per policy index, for flows and the dump tools.
            POL_NAMES pol_names "kls_pol_names"
                Hash<u32, $crate::PolicyName>
                ($crate::limits::MAX_POLICIES, $crate::maps::map_flags::NO_PREALLOC);
            /// The labels an identity stands for, for the dump tools.
            ID_NAMES id_names "kls_id_names"
                Hash<u32, $crate::IdentityName>
                ($crate::limits::MAX_IDENTITIES, $crate::maps::map_flags::NO_PREALLOC);
            /// Flow events: drops, and first packets of flows when asked.
            EVENTS events "kls_events" RingBuf<(), ()>($crate::limits::EVENTS_BYTES, 0);
        }
    };
}

/// Generates the name constants of [`crate::names`] and the list of them all.
macro_rules! map_names {
    ($(
        $(#[$doc:meta])*
        $konst:ident $field:ident $name:literal
        $kind:ident < $k:ty, $v:ty > ($max:expr, $flags:expr);
    )*) => {
        $(
            $(#[$doc])*
            pub const $konst: &str = $name;
        )*
        /// Every map the datapath pins, for loaders and dump tools that walk them all.
        pub const ALL: &[&str] = &[$($konst),*];
    };
}
pub(crate) use map_names;

#[cfg(test)]
mod tests {
    use crate::names;

    #[test]
    fn names_are_unique_and_fit_the_kernel() {
        for (i, a) in names::ALL.iter().enumerate() {
            // BPF_OBJ_NAME_LEN is 16 with the NUL.
            assert!(a.len() <= 15, "{a} is longer than the kernel keeps");
            assert!(a.starts_with("kls_"), "{a}");
            for b in &names::ALL[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(names::ALL.contains(&names::CT));
    }
}
