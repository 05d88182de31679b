//! The generated kube-proxy rulesets are accepted by the real tools: `iptables-restore
//! --test` and `nft -c -f`, each in a network namespace of the test's own, and loading them
//! for real gives the chain counts kube-proxy's layout implies.

use std::{net::Ipv4Addr, process::Command};

use crate::{
    kube_proxy_iptables, kube_proxy_nftables,
    run::{TempFile, run_in},
    topology::Netns,
    workload::services,
};

fn netns(tag: &str) -> Netns {
    Netns::new(format!("kls-t-bench-{}-{tag}", std::process::id())).expect("netns")
}

#[test]
fn iptables_restore_accepts_and_loads_the_ruleset() {
    let ns = netns("ipt");
    let file = TempFile::write(
        "test-ipt.rules",
        kube_proxy_iptables::restore_input(&services(20)),
    )
    .expect("write");
    let path = file.0.to_string_lossy().into_owned();
    for args in kube_proxy_iptables::jump_rules() {
        run_in(&ns.path(), "iptables", &args).expect("jump rule");
    }
    run_in(
        &ns.path(),
        "iptables-restore",
        &["--test".into(), "--noflush".into(), path.clone()],
    )
    .expect("iptables-restore --test");
    run_in(
        &ns.path(),
        "iptables-restore",
        &["-w".into(), "--noflush".into(), path],
    )
    .expect("iptables-restore");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iptables-save", "-t", "nat"])
        .output()
        .expect("iptables-save");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with(":KUBE-SVC-")).count(),
        20
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count(),
        60
    );
    // One rule per Service in KUBE-SERVICES plus the NodePort jump.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .count(),
        21
    );
}

#[test]
fn nft_accepts_and_loads_the_ruleset() {
    let ns = netns("nft");
    let file = TempFile::write(
        "test-nft.rules",
        kube_proxy_nftables::ruleset(&services(20), Ipv4Addr::new(10, 253, 0, 1)),
    )
    .expect("write");
    let path = file.0.to_string_lossy().into_owned();
    run_in(&ns.path(), "nft", &["-c".into(), "-f".into(), path.clone()]).expect("nft -c");
    run_in(&ns.path(), "nft", &["-f".into(), path]).expect("nft -f");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "nft",
            "list",
            "map",
            "ip",
            "kube-proxy",
            "service-ips",
        ])
        .output()
        .expect("nft list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(" : goto service-").count(), 20, "{text}");
}
