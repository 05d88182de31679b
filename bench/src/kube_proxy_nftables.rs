//! kube-proxy's nftables mode, reproduced: the `ip kube-proxy` table of
//! pkg/proxy/nftables/proxier.go as one `nft -f` transaction — base chains at kube-proxy's
//! hooks and priorities (filter at dstnat-10 / dstnat+10, nat at dstnat / srcnat), the
//! `service-ips` verdict map keyed by `ip daddr . meta l4proto . th dport`, one
//! `service-HASH-ns/name/proto/port` chain per Service port with a `numgen random mod N vmap`
//! and one `endpoint-HASH-...` chain per endpoint with hairpin marking and `dnat`.
//!
//! The configuration reproduced: `--cluster-cidr` local-traffic detection, masqueradeAll off,
//! mark 0x4000, the Service CIDR known (so unallocated ClusterIPs are dropped), NodePorts on
//! the node's own address set.

use std::{fmt::Write as _, net::Ipv4Addr};

use crate::{
    kube_proxy_hash::{nft_endpoint_base, nft_service_base},
    workload::{
        BenchService, CLUSTER_CIDR, ENDPOINT_PORT, NAMESPACE, PORT_NAME, SERVICE_CIDR, SERVICE_PORT,
    },
};

/// The table kube-proxy owns.
pub const TABLE: &str = "kube-proxy";
const MASQ_MARK: &str = "0x4000";

/// The `nft -f` input of one full sync for `services`, on a node whose NodePort address is
/// `node_ip`.
pub fn ruleset(services: &[BenchService], node_ip: Ipv4Addr) -> String {
    let t = format!("ip {TABLE}");
    let mut s = String::with_capacity(services.len() * 1500 + 8192);
    let _ = writeln!(s, "add table {t} {{ comment \"rules for kube-proxy\" ; }}");
    // Base chains: dstnat = -100, srcnat = 100.
    for (name, kind, hook, prio) in [
        ("filter-prerouting", "filter", "prerouting", -110),
        ("filter-input", "filter", "input", -110),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("filter-output-post-dnat", "filter", "output", -90),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ] {
        let _ = writeln!(
            s,
            "add chain {t} {name} {{ type {kind} hook {hook} priority {prio} ; }}"
        );
    }
    for chain in [
        "nodeport-endpoints-check",
        "service-endpoints-check",
        "firewall-check",
        "services",
        "masquerading",
        "cluster-ips-check",
        "mark-for-masquerade",
    ] {
        let _ = writeln!(s, "add chain {t} {chain}");
    }
    for (dst, src, extra) in [
        ("nodeport-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-forward", "ct state new "),
        ("service-endpoints-check", "filter-output", "ct state new "),
        ("firewall-check", "filter-prerouting", "ct state new "),
        ("firewall-check", "filter-output", "ct state new "),
        ("services", "nat-output", ""),
        ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
        ("cluster-ips-check", "filter-forward", "ct state new "),
        (
            "cluster-ips-check",
            "filter-output-post-dnat",
            "ct state new ",
        ),
    ] {
        let _ = writeln!(s, "add rule {t} {src} {extra}jump {dst}");
    }
    let _ = writeln!(
        s,
        "add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}"
    );
    let _ = writeln!(
        s,
        "add rule {t} masquerading mark and {MASQ_MARK} == 0 return"
    );
    let _ = writeln!(s, "add rule {t} masquerading mark set mark xor {MASQ_MARK}");
    let _ = writeln!(s, "add rule {t} masquerading masquerade fully-random");
    let _ = writeln!(
        s,
        "add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(
        s,
        "add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    let _ = writeln!(
        s,
        "add rule {t} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
    );
    let _ = writeln!(
        s,
        "add set {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    let _ = writeln!(s, "add element {t} nodeport-ips {{ {node_ip} }}");
    let _ = writeln!(
        s,
        "add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    );
    let _ = writeln!(
        s,
        "add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    );
    let _ = writeln!(
        s,
        "add chain {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    );
    let _ = writeln!(s, "add rule {t} reject-chain reject");
    let _ = writeln!(
        s,
        "add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    let _ = writeln!(
        s,
        "add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
    );
    let _ = writeln!(
        s,
        "add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    );
    let _ = writeln!(
        s,
        "add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
    );
    let _ = writeln!(
        s,
        "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(
        s,
        "add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    );
    let _ = writeln!(
        s,
        "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    let _ = writeln!(
        s,
        "add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
    );

    for svc in services {
        let base = nft_service_base(NAMESPACE, &svc.name, "tcp", PORT_NAME);
        let chain = format!("service-{base}");
        let vip = svc.cluster_ip;
        let endpoint_chains: Vec<String> = svc
            .endpoints
            .iter()
            .map(|ep| {
                format!(
                    "endpoint-{}",
                    nft_endpoint_base(
                        NAMESPACE,
                        &svc.name,
                        "tcp",
                        PORT_NAME,
                        &ep.to_string(),
                        ENDPOINT_PORT
                    )
                )
            })
            .collect();
        let _ = writeln!(s, "add chain {t} {chain}");
        for ep_chain in &endpoint_chains {
            let _ = writeln!(s, "add chain {t} {ep_chain}");
        }
        let _ = writeln!(s, "add element {t} cluster-ips {{ {vip} }}");
        let _ = writeln!(
            s,
            "add element {t} service-ips {{ {vip} . tcp . {SERVICE_PORT} : goto {chain} }}"
        );
        let _ = writeln!(
            s,
            "add rule {t} {chain} ip daddr {vip} tcp dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
        );
        let vmap: Vec<String> = endpoint_chains
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : goto {c}"))
            .collect();
        let _ = writeln!(
            s,
            "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
            endpoint_chains.len(),
            vmap.join(" , ")
        );
        for (ep, ep_chain) in svc.endpoints.iter().zip(&endpoint_chains) {
            let _ = writeln!(
                s,
                "add rule {t} {ep_chain} ip saddr {ep} jump mark-for-masquerade"
            );
            let _ = writeln!(
                s,
                "add rule {t} {ep_chain} meta l4proto tcp dnat to {ep}:{ENDPOINT_PORT}"
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::services;

    #[test]
    fn two_services_have_kube_proxy_layout() {
        let text = ruleset(&services(2), Ipv4Addr::new(10, 253, 0, 1));
        let chain = "service-".to_string() + &nft_service_base("bench", "svc-00001", "tcp", "http");
        assert!(text.contains(&format!(
            "add element ip kube-proxy service-ips {{ 10.96.0.11 . tcp . 80 : goto {chain} }}\n"
        )));
        assert!(text.contains(&format!(
            "add rule ip kube-proxy {chain} ip daddr 10.96.0.11 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade\n"
        )));
        let ep = "endpoint-".to_string()
            + &nft_endpoint_base("bench", "svc-00001", "tcp", "http", "10.244.1.3", 8080);
        assert!(text.contains(&format!(
            "add rule ip kube-proxy {chain} numgen random mod 3 vmap {{ 0 : goto {ep} , "
        )));
        assert!(text.contains(&format!(
            "add rule ip kube-proxy {ep} meta l4proto tcp dnat to 10.244.1.3:8080\n"
        )));
        assert!(text.contains(
            "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n"
        ));
        assert!(text.contains(
            "add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }\n"
        ));
        // 2 service chains + 6 endpoint chains.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("add chain ip kube-proxy ") && l.contains("-bench/"))
                .count(),
            8
        );
    }
}
