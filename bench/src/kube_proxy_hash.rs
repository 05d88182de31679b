//! The chain names kube-proxy derives from Service ports and endpoints: SHA-256, base32
//! (RFC 4648 standard alphabet), truncated — pkg/proxy/iptables and pkg/proxy/nftables.

use data_encoding::BASE32;
use ring::digest::{SHA256, digest};

/// Standard base32 of SHA-256 of `input`.
fn hash32(input: &str) -> String {
    BASE32.encode(digest(&SHA256, input.as_bytes()).as_ref())
}

/// iptables mode: `KUBE-SVC-` + 16 characters of hash(servicePortName + protocol).
pub fn iptables_svc_chain(port_name: &str, proto: &str) -> String {
    format!("KUBE-SVC-{}", &hash32(&format!("{port_name}{proto}"))[..16])
}

/// iptables mode: `KUBE-SEP-` + 16 characters of hash(servicePortName + protocol + "ip:port").
pub fn iptables_sep_chain(port_name: &str, proto: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        &hash32(&format!("{port_name}{proto}{endpoint}"))[..16]
    )
}

/// nftables mode: 8 characters of the hash, a dash, then the name itself (names here stay
/// far below kube-proxy's 240-character truncation limit).
fn hash_and_prefix(name: &str) -> String {
    format!("{}-{name}", &hash32(name)[..8])
}

/// nftables mode: the base of a Service port's chains, `HASH-ns/name/proto/port`.
pub fn nft_service_base(namespace: &str, name: &str, proto: &str, port: &str) -> String {
    hash_and_prefix(&format!("{namespace}/{name}/{proto}/{port}"))
}

/// nftables mode: the base of an endpoint's chain, `HASH-ns/name/proto/port__ip/port`.
pub fn nft_endpoint_base(
    namespace: &str,
    name: &str,
    proto: &str,
    port: &str,
    ip: &str,
    ep_port: u16,
) -> String {
    hash_and_prefix(&format!(
        "{namespace}/{name}/{proto}/{port}__{ip}/{ep_port}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected names are the ones kube-proxy's own unit tests (proxier_test.go of both
    // modes) show for the same inputs.
    #[test]
    fn iptables_chain_names_match_kube_proxy() {
        assert_eq!(
            iptables_svc_chain("ns1/svc1:p80", "tcp"),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            iptables_sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn nftables_chain_names_match_kube_proxy() {
        assert_eq!(
            nft_service_base("ns1", "svc1", "tcp", "p80"),
            "ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            nft_endpoint_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }
}
