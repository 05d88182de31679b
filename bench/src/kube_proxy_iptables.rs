//! kube-proxy's iptables mode, reproduced: the jump rules it installs with `iptables -I` and
//! the `iptables-restore` input its sync writes for ClusterIP Services (the layout of
//! pkg/proxy/iptables/proxier.go: KUBE-SERVICES → KUBE-SVC-* with `statistic` cascades →
//! KUBE-SEP-* with hairpin masquerade marking and DNAT; KUBE-POSTROUTING masquerades by mark;
//! the filter table's KUBE-FORWARD and the empty per-feature chains).
//!
//! The configuration reproduced is kube-proxy's default for a cluster with `--cluster-cidr`
//! (local-traffic detection by CIDR, masqueradeAll off, mark bit 14 = 0x4000).

use std::fmt::Write as _;

use crate::{
    kube_proxy_hash::{iptables_sep_chain, iptables_svc_chain},
    workload::{BenchService, CLUSTER_CIDR, ENDPOINT_PORT, SERVICE_PORT},
};

const MASQ_MARK: &str = "0x4000";

/// kube-proxy's jump rules (its `iptablesJumpChains`), each the arguments of one
/// `iptables -w -t <table> -I <chain> ...` call.
pub fn jump_rules() -> Vec<Vec<String>> {
    let new = ["-m", "conntrack", "--ctstate", "NEW"];
    let rules: [(&str, &str, &str, &str, &[&str]); 12] = [
        (
            "filter",
            "INPUT",
            "KUBE-EXTERNAL-SERVICES",
            "kubernetes externally-visible service portals",
            &new,
        ),
        (
            "filter",
            "FORWARD",
            "KUBE-EXTERNAL-SERVICES",
            "kubernetes externally-visible service portals",
            &new,
        ),
        (
            "filter",
            "INPUT",
            "KUBE-NODEPORTS",
            "kubernetes health check service ports",
            &[],
        ),
        (
            "filter",
            "FORWARD",
            "KUBE-SERVICES",
            "kubernetes service portals",
            &new,
        ),
        (
            "filter",
            "OUTPUT",
            "KUBE-SERVICES",
            "kubernetes service portals",
            &new,
        ),
        (
            "filter",
            "FORWARD",
            "KUBE-FORWARD",
            "kubernetes forwarding rules",
            &[],
        ),
        (
            "filter",
            "INPUT",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            &new,
        ),
        (
            "filter",
            "OUTPUT",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            &new,
        ),
        (
            "filter",
            "FORWARD",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            &new,
        ),
        (
            "nat",
            "OUTPUT",
            "KUBE-SERVICES",
            "kubernetes service portals",
            &[],
        ),
        (
            "nat",
            "PREROUTING",
            "KUBE-SERVICES",
            "kubernetes service portals",
            &[],
        ),
        (
            "nat",
            "POSTROUTING",
            "KUBE-POSTROUTING",
            "kubernetes postrouting rules",
            &[],
        ),
    ];
    // kube-proxy's EnsureChain before each jump: create the chain (an existing one is fine).
    let mut out: Vec<Vec<String>> = rules
        .iter()
        .map(|(table, _, target, _, _)| {
            ["-w", "-t", table, "-N", target].map(String::from).to_vec()
        })
        .collect();
    out.sort();
    out.dedup();
    for (table, chain, target, comment, extra) in rules {
        let mut args: Vec<String> = ["-w", "-t", table, "-I", chain]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.extend(extra.iter().map(ToString::to_string));
        args.extend(["-m", "comment", "--comment", comment, "-j", target].map(String::from));
        out.push(args);
    }
    out
}

/// kube-proxy's probability format: `%0.10f` of 1/(remaining endpoints).
fn probability(remaining: usize) -> String {
    #[expect(clippy::cast_precision_loss, reason = "endpoint counts are tiny")]
    let p = 1.0 / remaining as f64;
    format!("{p:.10}")
}

/// The `iptables-restore --noflush` input of one full sync for `services`.
pub fn restore_input(services: &[BenchService]) -> String {
    let mut s = String::with_capacity(services.len() * 1600 + 4096);
    // filter table: the chains kube-proxy owns; for Services with endpoints only
    // KUBE-FORWARD has rules.
    s.push_str("*filter\n");
    for chain in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    s.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        s,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    s.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    s.push_str("COMMIT\n");

    // nat table: every chain is declared first, then the rules (kube-proxy's natChains and
    // natRules buffers).
    s.push_str("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    let mut rules = String::with_capacity(services.len() * 1400);
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    rules.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    for svc in services {
        let port_name = svc.port_name();
        let svc_chain = iptables_svc_chain(&port_name, "tcp");
        let _ = writeln!(s, ":{svc_chain} - [0:0]");
        let vip = svc.cluster_ip;
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m tcp -p tcp -d {vip} --dport {SERVICE_PORT} -j {svc_chain}"
        );
        let _ = writeln!(
            rules,
            "-A {svc_chain} -m comment --comment \"{port_name} cluster IP\" -m tcp -p tcp -d {vip} --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        );
        let n = svc.endpoints.len();
        let mut sep_rules = String::new();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let endpoint = format!("{ep}:{ENDPOINT_PORT}");
            let sep = iptables_sep_chain(&port_name, "tcp", &endpoint);
            let _ = writeln!(s, ":{sep} - [0:0]");
            if i + 1 < n {
                let _ = writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{port_name} -> {endpoint}\" -m statistic --mode random --probability {} -j {sep}",
                    probability(n - i)
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{port_name} -> {endpoint}\" -j {sep}"
                );
            }
            let _ = writeln!(
                sep_rules,
                "-A {sep} -m comment --comment {port_name} -s {ep} -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                sep_rules,
                "-A {sep} -m comment --comment {port_name} -m tcp -p tcp -j DNAT --to-destination {endpoint}"
            );
        }
        rules.push_str(&sep_rules);
    }
    rules.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    s.push_str(&rules);
    s.push_str("COMMIT\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::services;

    #[test]
    fn two_services_have_kube_proxy_layout() {
        let text = restore_input(&services(2));
        let svc0 = iptables_svc_chain("bench/svc-00000:http", "tcp");
        let sep0 = iptables_sep_chain("bench/svc-00000:http", "tcp", "10.244.1.0:8080");
        let nat: Vec<&str> = text
            .split("*nat\n")
            .nth(1)
            .expect("nat table")
            .lines()
            .collect();
        // Chains: 4 fixed + per Service 1 SVC + 3 SEP.
        assert_eq!(nat.iter().filter(|l| l.starts_with(':')).count(), 4 + 2 * 4);
        assert!(nat.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"bench/svc-00000:http cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j {svc0}"
        ).as_str()));
        let svc_rules: Vec<&&str> = nat
            .iter()
            .filter(|l| l.starts_with(&format!("-A {svc0} ")))
            .collect();
        assert_eq!(svc_rules.len(), 4, "{svc_rules:?}");
        assert!(svc_rules[0].ends_with("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));
        assert!(svc_rules[1].contains("--probability 0.3333333333 -j KUBE-SEP-"));
        assert!(svc_rules[2].contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert!(!svc_rules[3].contains("statistic"));
        assert!(svc_rules[1].ends_with(&sep0));
        assert!(nat.contains(
            &format!("-A {sep0} -m comment --comment bench/svc-00000:http -s 10.244.1.0 -j KUBE-MARK-MASQ").as_str()
        ));
        assert!(nat.contains(
            &format!("-A {sep0} -m comment --comment bench/svc-00000:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.0:8080").as_str()
        ));
        // The nodeports jump stays last in KUBE-SERVICES.
        let last_services = nat
            .iter()
            .rev()
            .find(|l| l.starts_with("-A KUBE-SERVICES "))
            .expect("rule");
        assert!(last_services.ends_with("--dst-type LOCAL -j KUBE-NODEPORTS"));
        assert_eq!(text.matches("COMMIT\n").count(), 2);
    }

    #[test]
    fn jump_rules_create_chains_before_jumping() {
        let rules = jump_rules();
        let first_jump = rules.iter().position(|r| r[3] == "-I").expect("a jump");
        assert!(rules[..first_jump].iter().all(|r| r[3] == "-N"));
        assert!(rules.iter().any(|r| r.join(" ")
            == "-w -t nat -I PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES"));
    }
}
