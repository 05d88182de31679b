//! What a pass costs at 1,000 Pods and 1,000 NetworkPolicies: the time of [`plan`] and
//! [`diff`] is printed (run with `--nocapture`), not asserted tightly, since a label change
//! must be enforced within 100 ms at p99 on a loaded machine and a debug build is slower
//! than the agent's.

use std::time::{Duration, Instant};

use keelson_common::proto;
use serde_json::json;

use super::{
    compile::plan,
    diff::diff,
    model::{NodeContext, Snapshot},
    testutil::*,
};

const NAMESPACES: usize = 50;
const APPS_PER_NAMESPACE: usize = 5;
const PODS: usize = 1000;
const POLICIES: usize = 1000;
const NODES: usize = 10;

/// 1,000 Pods in 50 namespaces (5 apps of 4 replicas each, so 250 identities) spread over
/// `nodes` nodes, and 1,000 policies (20 per namespace) with the usual shapes: ingress from
/// another app of the namespace and from one app of other teams' namespaces on fixed, ranged
/// and named ports; egress to a database app anywhere, to an ipBlock with an except, and DNS.
fn cluster(nodes: usize) -> Snapshot {
    let mut pods = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let ns = i % NAMESPACES;
        let app = (i / NAMESPACES) % APPS_PER_NAMESPACE;
        let addr = format!("10.100.{}.{}", i / 250, i % 250 + 1);
        let mut p = pod(
            &format!("ns{ns}"),
            &format!("pod{i}"),
            &addr,
            &[
                ("app", &format!("app{app}")),
                ("pod-template-hash", "5d9c7b"),
            ],
        );
        p.node_name = format!("node{}", i % nodes);
        pods.push(with_ports(
            p,
            &[("http", 8080, proto::TCP), ("metrics", 9090, proto::TCP)],
        ));
    }
    let mut policies = Vec::with_capacity(POLICIES);
    for i in 0..POLICIES {
        let ns = i % NAMESPACES;
        let app = (i / NAMESPACES) % APPS_PER_NAMESPACE;
        let from = (app + 1) % APPS_PER_NAMESPACE;
        policies.push(policy(
            &format!("ns{ns}"),
            &format!("policy{i}"),
            json!({
                "podSelector": {"matchLabels": {"app": format!("app{app}")}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": format!("app{from}")}}}],
                     "ports": [{"port": 80}, {"port": 8443, "endPort": 8450}, {"port": "http"}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 7)}},
                               "podSelector": {"matchExpressions": [
                                   {"key": "app", "operator": "In", "values": ["app0", "app1"]}]}}],
                     "ports": [{"port": "metrics"}]}],
                "egress": [
                    {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "app4"}}}],
                     "ports": [{"port": 5432}, {"port": "http"}]},
                    {"to": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + i % 16),
                                         "except": [format!("172.{}.{}.0/24", 16 + i % 16, i % 200)]}}],
                     "ports": [{"port": 443}]},
                    {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                     "ports": [{"protocol": "UDP", "port": 53}]}],
            }),
        ));
    }
    let mut s = snapshot(pods, policies);
    for n in 0..NAMESPACES {
        let name = format!("ns{n}");
        let team = format!("t{}", n % 7);
        s.add_namespace(namespace(&name, &[("team", &team)]));
    }
    s
}

/// CPU time of the calling thread: unlike the wall clock, it does not count the time other
/// processes of a busy machine hold the CPU.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the valid pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` a few times; returns its result and its best wall and CPU times.
fn timed<T>(f: impl Fn() -> T) -> (T, Duration, Duration) {
    let (mut wall, mut cpu) = (Duration::MAX, Duration::MAX);
    let mut out = None;
    for _ in 0..5 {
        let (started, cpu_started) = (Instant::now(), thread_cpu_time());
        let v = f();
        wall = wall.min(started.elapsed());
        cpu = cpu.min(thread_cpu_time() - cpu_started);
        out = Some(v);
    }
    (out.expect("ran"), wall, cpu)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn policy_scale_plan_1000_pods_1000_policies() {
    for nodes in [NODES, 1] {
        let s = cluster(nodes);
        let node = NodeContext {
            node_name: "node0".into(),
            node_ip: NODE_IP,
        };
        let (d, plan_wall, plan_cpu) = timed(|| plan(&s, &node));
        // A label change: one Pod moves to another app, so it is selected by other policies
        // and is another peer for others.
        let mut changed = s.clone();
        changed
            .pods
            .get_mut("ns1/pod1")
            .expect("pod1")
            .labels
            .insert("app".into(), "app4".into());
        let (d2, replan_wall, replan_cpu) = timed(|| plan(&changed, &node));
        let (ops, diff_wall, _) = timed(|| diff(&d, &d2));
        let (_, full_diff_wall, _) = timed(|| diff(&Default::default(), &d));
        println!(
            "policy plan, {PODS} Pods ({} on this node), {POLICIES} policies: plan {:.1} ms \
             (CPU {:.1} ms; {} identities, {} ipcache, {} policy entries), re-plan after a \
             label change {:.1} ms (CPU {:.1} ms), its diff {:.2} ms ({} ops), diff from empty \
             maps {:.1} ms",
            d.endpoints.len(),
            ms(plan_wall),
            ms(plan_cpu),
            d.identities.len(),
            d.ipcache.len(),
            d.policy.len(),
            ms(replan_wall),
            ms(replan_cpu),
            ms(diff_wall),
            ops.len(),
            ms(full_diff_wall),
        );
        assert_eq!(d.endpoints.len(), PODS / nodes);
        assert!(!ops.is_empty());
        // Generous bound: catches an accidental quadratic blow-up, not a slow machine.
        assert!(plan_cpu < Duration::from_secs(5), "{plan_cpu:?}");
    }
}
