//! NetworkPolicy ports as the policy trie holds them: a protocol and a prefix of the
//! destination port, so that a port range (`endPort`, KEP-2079) is a few trie entries rather
//! than one per port, as in Cilium's policy map (its port/mask entries).

use k8s_openapi::{
    api::networking::v1::NetworkPolicyPort, apimachinery::pkg::util::intstr::IntOrString,
};
use keelson_common::policy::{policy_prefix, policy_proto};

/// What one `ports[]` item of a rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec<'a> {
    /// Every port of a protocol (`port` unset).
    Proto(u8),
    /// Ports `lo..=hi` of a protocol (`port`, or `port`..`endPort`).
    Range { proto: u8, lo: u16, hi: u16 },
    /// A named port: the number of the container port of that name and protocol, on the
    /// selected Pod for ingress, on the peer for egress.
    Named { proto: u8, name: &'a str },
}

impl<'a> PortSpec<'a> {
    /// Reads one port item. `None` for items the API server refuses (an unknown protocol, a
    /// number outside 1..=65535, an `endPort` below `port` or with a named port): such an item
    /// allows nothing, rather than everything.
    pub fn from_k8s(p: &'a NetworkPolicyPort) -> Option<Self> {
        // NetworkPolicyPort.protocol: "If not specified, this field defaults to TCP."
        let proto = policy_proto(p.protocol.as_deref().unwrap_or("TCP"))?;
        let spec = match &p.port {
            None if p.end_port.is_some() => return None,
            None => PortSpec::Proto(proto),
            Some(IntOrString::Int(n)) => {
                let lo = port_number(*n)?;
                let hi = match p.end_port {
                    None => lo,
                    Some(e) => port_number(e).filter(|&hi| hi >= lo)?,
                };
                PortSpec::Range { proto, lo, hi }
            }
            Some(IntOrString::String(name)) => {
                if p.end_port.is_some() {
                    return None;
                }
                // A string is a name, even one of digits (IntOrString's type decides, as in
                // kube-apiserver's validation, which refuses names without a letter).
                PortSpec::Named { proto, name }
            }
        };
        Some(spec)
    }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// One trie entry's protocol and port part: (prefix length of the whole key, protocol,
/// port in host order).
pub type PortPrefix = (u32, u8, u16);

/// Every protocol and port.
pub const ANY: PortPrefix = (policy_prefix::ANY_PROTO, 0, 0);

/// Every port of `proto`.
pub const fn any_port(proto: u8) -> PortPrefix {
    (policy_prefix::ANY_PORT, proto, 0)
}

/// The fewest port prefixes that cover exactly `lo..=hi` of `proto`: aligned power-of-two
/// blocks, each a prefix of `80 + k` bits (k fixed high bits of the port).
pub fn range_prefixes(proto: u8, lo: u16, hi: u16) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(lo), u32::from(hi));
    while start <= end {
        // The largest block aligned at `start` that does not pass `end`.
        let mut size: u32 = if start == 0 {
            1 << 16
        } else {
            start & start.wrapping_neg()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        let fixed = 16 - size.trailing_zeros();
        // start < 2^16 here: the loop ends at end <= u16::MAX.
        out.push((policy_prefix::ANY_PORT + fixed, proto, start as u16));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use keelson_common::proto;

    use super::*;

    fn port(
        protocol: Option<&str>,
        port: Option<IntOrString>,
        end: Option<i32>,
    ) -> NetworkPolicyPort {
        NetworkPolicyPort {
            protocol: protocol.map(Into::into),
            port,
            end_port: end,
        }
    }

    #[test]
    fn policy_ports_read_as_the_api_defines_them() {
        use IntOrString::{Int, String as Name};
        let cases: Vec<(NetworkPolicyPort, Option<PortSpec<'static>>)> = vec![
            (port(None, None, None), Some(PortSpec::Proto(proto::TCP))),
            (
                port(Some("UDP"), None, None),
                Some(PortSpec::Proto(proto::UDP)),
            ),
            (
                port(Some("SCTP"), Some(Int(80)), None),
                Some(PortSpec::Range {
                    proto: proto::SCTP,
                    lo: 80,
                    hi: 80,
                }),
            ),
            (
                port(None, Some(Int(1000)), Some(2000)),
                Some(PortSpec::Range {
                    proto: proto::TCP,
                    lo: 1000,
                    hi: 2000,
                }),
            ),
            (
                port(None, Some(Name("http".into())), None),
                Some(PortSpec::Named {
                    proto: proto::TCP,
                    name: "http",
                }),
            ),
            // What the API server refuses allows nothing.
            (port(Some("ICMP"), None, None), None),
            (port(None, Some(Int(0)), None), None),
            (port(None, Some(Int(65536)), None), None),
            (port(None, Some(Int(90)), Some(80)), None),
            (port(None, None, Some(80)), None),
            (port(None, Some(Name("http".into())), Some(90)), None),
        ];
        for (p, want) in &cases {
            assert_eq!(&PortSpec::from_k8s(p), want, "{p:?}");
        }
    }

    #[test]
    fn policy_port_ranges_split_into_fewest_prefixes() {
        let tcp = proto::TCP;
        assert_eq!(range_prefixes(tcp, 80, 80), [(96, tcp, 80)]);
        assert_eq!(range_prefixes(tcp, 80, 81), [(95, tcp, 80)]);
        assert_eq!(range_prefixes(tcp, 0, u16::MAX), [(80, tcp, 0)]);
        assert_eq!(range_prefixes(tcp, 1, u16::MAX).len(), 16);
        assert_eq!(
            range_prefixes(tcp, 1000, 2000),
            [
                (93, tcp, 1000),
                (92, tcp, 1008),
                (87, tcp, 1024),
                (88, tcp, 1536),
                (89, tcp, 1792),
                (90, tcp, 1920),
                (92, tcp, 1984),
                (96, tcp, 2000),
            ]
        );
        // Every split covers its range exactly, with disjoint blocks.
        for (lo, hi) in [
            (1u16, 1u16),
            (3, 17),
            (1023, 1025),
            (32768, 65535),
            (5, 65534),
        ] {
            let mut covered = Vec::new();
            for (len, _, base) in range_prefixes(tcp, lo, hi) {
                let size = 1u32 << (96 - len);
                assert_eq!(u32::from(base) % size, 0, "aligned");
                covered.extend(u32::from(base)..u32::from(base) + size);
            }
            assert_eq!(covered, (u32::from(lo)..=u32::from(hi)).collect::<Vec<_>>());
        }
    }
}
