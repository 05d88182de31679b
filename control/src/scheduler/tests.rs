//! Plan tests of the scheduler: filters, scores and whole decisions, without I/O.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Affinity, Container, Node, NodeAffinity, NodeCondition, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::cache::Cache;
use super::filter::*;
use super::score::*;
use super::*;
use crate::controllers::objects::testutil::{labels, pod as bare_pod, with_owner};

fn node(name: &str, cpu: &str, mem: &str, pods: &str) -> Node {
    let q = |v: &str| Quantity(v.to_string());
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels(&[("kubernetes.io/hostname", name)])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                ("cpu".into(), q(cpu)),
                ("memory".into(), q(mem)),
                ("pods".into(), q(pods)),
            ])),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn pod_req(name: &str, cpu: &str, mem: &str) -> Pod {
    let mut p = bare_pod(name, 0);
    let q = |v: &str| Quantity(v.to_string());
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".into(), q(cpu)),
                    ("memory".into(), q(mem)),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

fn on(mut p: Pod, node: &str) -> Pod {
    p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
    p
}

fn info(n: &Node, pods: Vec<&Pod>) -> NodeInfo {
    NodeInfo::new(n, pods)
}

fn ctx(p: &Pod) -> ScoreContext<'_> {
    ScoreContext {
        pod: PodInfo::new(p),
        spread: None,
    }
}

/// Schedules `p` on a cache of `nodes` and `pods` from a fresh cursor.
fn decide(p: &Pod, nodes: &[&Node], pods: &[&Pod]) -> Decision {
    schedule(
        p,
        Cache::from_objects(nodes, pods).nodes(),
        &mut Cursor::default(),
    )
}

#[test]
fn pending_means_unbound_ours_and_alive() {
    let p = bare_pod("a", 0);
    assert!(is_pending(&p));
    assert!(!is_pending(&on(p.clone(), "n1")));
    let mut other = p.clone();
    other.spec.as_mut().expect("spec").scheduler_name = Some("my-scheduler".into());
    assert!(!is_pending(&other));
    let mut ours = p.clone();
    ours.spec.as_mut().expect("spec").scheduler_name = Some(SCHEDULER_NAME.into());
    assert!(is_pending(&ours));
    let mut going = p;
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    assert!(!is_pending(&going));
}

#[test]
fn not_ready_and_cordoned_nodes_are_filtered() {
    let p = bare_pod("a", 0);
    let mut n = node("n1", "4", "8Gi", "110");
    assert!(node_ready(&p, &info(&n, vec![])).is_ok());
    n.status
        .as_mut()
        .expect("status")
        .conditions
        .as_mut()
        .expect("c")[0]
        .status = "Unknown".into();
    assert_eq!(
        node_ready(&p, &info(&n, vec![])),
        Err("node(s) were not ready".into())
    );

    let mut c = node("n2", "4", "8Gi", "110");
    c.spec.as_mut().expect("spec").unschedulable = Some(true);
    assert!(node_unschedulable(&p, &info(&c, vec![])).is_err());
    let mut tolerant = p.clone();
    tolerant.spec.as_mut().expect("spec").tolerations = Some(vec![Toleration {
        key: Some(UNSCHEDULABLE_TAINT.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }]);
    assert!(node_unschedulable(&tolerant, &info(&c, vec![])).is_ok());
}

#[test]
fn resources_count_existing_pods_against_allocatable() {
    let n = node("n1", "1", "1Gi", "2");
    let existing = on(pod_req("e", "600m", "512Mi"), "n1");
    let ni = info(&n, vec![&existing]);
    assert!(
        resources_fit(&pod_req("a", "400m", "512Mi"), &ni).is_ok(),
        "exactly full fits"
    );
    assert_eq!(
        resources_fit(&pod_req("b", "500m", "100Mi"), &ni),
        Err("Insufficient cpu".into())
    );
    assert_eq!(
        resources_fit(&pod_req("c", "100m", "600Mi"), &ni),
        Err("Insufficient memory".into())
    );
    let other = on(bare_pod("o", 0), "n1");
    let full = info(&n, vec![&existing, &other]);
    assert_eq!(
        resources_fit(&bare_pod("d", 0), &full),
        Err("Too many pods".into())
    );
    // A Node that reports no cpu/memory does not limit them.
    let mut unknown = node("n2", "1", "1Gi", "10");
    unknown.status.as_mut().expect("status").allocatable = None;
    assert!(resources_fit(&pod_req("big", "64", "1Ti"), &info(&unknown, vec![])).is_ok());
}

#[test]
fn node_selector_and_required_affinity() {
    let mut n = node("n1", "4", "8Gi", "110");
    n.metadata.labels = Some(labels(&[("disk", "ssd"), ("zone", "a"), ("gen", "5")]));
    let ni = info(&n, vec![]);
    let mut p = bare_pod("a", 0);
    p.spec.as_mut().expect("spec").node_selector = Some(labels(&[("disk", "ssd")]));
    assert!(node_affinity(&p, &ni).is_ok());
    p.spec.as_mut().expect("spec").node_selector = Some(labels(&[("disk", "hdd")]));
    assert!(node_affinity(&p, &ni).is_err());

    let req = |op: &str, key: &str, values: &[&str]| NodeSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    };
    let with_terms = |terms: Vec<NodeSelectorTerm>| {
        let mut p = bare_pod("b", 0);
        p.spec.as_mut().expect("spec").affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    let term = |exprs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
        match_expressions: Some(exprs),
        match_fields: None,
    };
    let ok = |exprs| node_affinity(&with_terms(vec![term(exprs)]), &ni).is_ok();
    assert!(ok(vec![req("In", "zone", &["a", "b"])]));
    assert!(!ok(vec![req("In", "zone", &["b"])]));
    assert!(ok(vec![req("NotIn", "zone", &["b"])]));
    assert!(!ok(vec![req("NotIn", "zone", &["a"])]));
    assert!(ok(vec![req("NotIn", "missing", &["a"])]));
    assert!(ok(vec![req("Exists", "disk", &[])]));
    assert!(!ok(vec![req("Exists", "gpu", &[])]));
    assert!(ok(vec![req("DoesNotExist", "gpu", &[])]));
    assert!(!ok(vec![req("DoesNotExist", "disk", &[])]));
    assert!(ok(vec![req("Gt", "gen", &["4"])]) && !ok(vec![req("Lt", "gen", &["4"])]));
    assert!(
        !ok(vec![req("In", "zone", &["a"]), req("Exists", "gpu", &[])]),
        "expressions are ANDed"
    );
    // Terms are ORed; an empty term or term list matches nothing.
    let any = with_terms(vec![
        term(vec![req("Exists", "gpu", &[])]),
        term(vec![req("In", "zone", &["a"])]),
    ]);
    assert!(node_affinity(&any, &ni).is_ok());
    assert!(node_affinity(&with_terms(vec![]), &ni).is_err());
    assert!(node_affinity(&with_terms(vec![NodeSelectorTerm::default()]), &ni).is_err());
    let by_name = with_terms(vec![NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![req("In", "metadata.name", &["n1"])]),
    }]);
    assert!(node_affinity(&by_name, &ni).is_ok());
}

#[test]
fn taints_need_tolerations_for_noschedule_and_noexecute() {
    let mut n = node("n1", "4", "8Gi", "110");
    let taint = |key: &str, value: Option<&str>, effect: &str| Taint {
        key: key.into(),
        value: value.map(Into::into),
        effect: effect.into(),
        time_added: None,
    };
    n.spec.as_mut().expect("spec").taints = Some(vec![
        taint("dedicated", Some("db"), "NoSchedule"),
        taint("soft", None, "PreferNoSchedule"),
    ]);
    let ni = info(&n, vec![]);
    let p = bare_pod("a", 0);
    assert_eq!(
        taint_toleration(&p, &ni),
        Err("node(s) had untolerated taint {dedicated: db}".into())
    );
    let tol = |key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>| Toleration {
        key: key.map(Into::into),
        operator: Some(op.into()),
        value: value.map(Into::into),
        effect: effect.map(Into::into),
        toleration_seconds: None,
    };
    let with = |t: Toleration| {
        let mut p = bare_pod("b", 0);
        p.spec.as_mut().expect("spec").tolerations = Some(vec![t]);
        p
    };
    assert!(
        taint_toleration(
            &with(tol(
                Some("dedicated"),
                "Equal",
                Some("db"),
                Some("NoSchedule")
            )),
            &ni
        )
        .is_ok()
    );
    assert!(
        taint_toleration(
            &with(tol(Some("dedicated"), "Equal", Some("web"), None)),
            &ni
        )
        .is_err()
    );
    assert!(taint_toleration(&with(tol(Some("dedicated"), "Exists", None, None)), &ni).is_ok());
    assert!(
        taint_toleration(&with(tol(None, "Exists", None, None)), &ni).is_ok(),
        "empty key + Exists tolerates all"
    );
    assert!(
        taint_toleration(
            &with(tol(Some("dedicated"), "Exists", None, Some("NoExecute"))),
            &ni
        )
        .is_err(),
        "effect must match"
    );

    let mut ne = node("n2", "4", "8Gi", "110");
    ne.spec.as_mut().expect("spec").taints = Some(vec![taint(
        "node.kubernetes.io/unreachable",
        None,
        "NoExecute",
    )]);
    assert!(taint_toleration(&p, &info(&ne, vec![])).is_err());
}

#[test]
fn least_allocated_prefers_emptier_nodes() {
    let busy = node("busy", "2", "4Gi", "110");
    let idle = node("idle", "2", "4Gi", "110");
    let load = on(pod_req("l", "1", "2Gi"), "busy");
    let b = info(&busy, vec![&load]);
    let i = info(&idle, vec![]);
    let p = pod_req("p", "500m", "512Mi");
    let c = ctx(&p);
    assert!(least_allocated(&c, &i) > least_allocated(&c, &b));
    // 2 cpu: (2000-500)*100/2000 = 75; 4Gi: (4096-512)*100/4096 = 87 -> 81.
    assert_eq!(least_allocated(&c, &i), 81);
}

#[test]
fn balanced_allocation_prefers_even_use_of_cpu_and_memory() {
    let n = node("n", "4", "4Gi", "110");
    let cpu_heavy = on(pod_req("h", "2", "0"), "n");
    let skewed = info(&n, vec![&cpu_heavy]);
    let even = info(&n, vec![]);
    let p = pod_req("p", "1", "1Gi");
    let c = ctx(&p);
    // Empty + the Pod: 1/4 cpu and 1/4 memory -> 100.
    assert_eq!(balanced_allocation(&c, &even), 100);
    // 3/4 cpu and 1/4 memory: (1 - 0.25) * 100 = 75.
    assert_eq!(balanced_allocation(&c, &skewed), 75);
}

#[test]
fn default_normalize_scales_and_reverses() {
    let mut s = vec![0, 5, 10];
    default_normalize(&mut s, false);
    assert_eq!(s, vec![0, 50, 100]);
    let mut r = vec![0, 1, 2];
    default_normalize(&mut r, true);
    assert_eq!(r, vec![100, 50, 0]);
    let mut zero = vec![0, 0];
    default_normalize(&mut zero, true);
    assert_eq!(zero, vec![100, 100], "nothing to count is best everywhere");
}

#[test]
fn feasible_nodes_to_find_follow_kube_scheduler() {
    assert_eq!(num_feasible_nodes_to_find(0, None), 0);
    assert_eq!(num_feasible_nodes_to_find(99, None), 99);
    assert_eq!(num_feasible_nodes_to_find(100, None), 100);
    assert_eq!(num_feasible_nodes_to_find(200, None), 100, "at least 100");
    assert_eq!(
        num_feasible_nodes_to_find(1000, None),
        420,
        "50 - 1000/125 = 42 %"
    );
    assert_eq!(num_feasible_nodes_to_find(5000, None), 500, "10 %");
    assert_eq!(num_feasible_nodes_to_find(6000, None), 300, "at least 5 %");
    assert_eq!(num_feasible_nodes_to_find(1000, Some(10)), 100);
    assert_eq!(num_feasible_nodes_to_find(1000, Some(100)), 1000);
}

fn many_nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| node(&format!("n{i:04}"), "4", "32Gi", "110"))
        .collect()
}

#[test]
fn schedule_scores_a_share_of_the_nodes_and_rotates_its_start() {
    let nodes = many_nodes(1000);
    let refs: Vec<&Node> = nodes.iter().collect();
    let cache = Cache::from_objects(&refs, &[]);
    let mut cursor = Cursor::default();
    let p = pod_req("p", "100m", "500Mi");
    let Decision::Bind(first) = schedule(&p, cache.nodes(), &mut cursor) else {
        panic!("fits")
    };
    assert_eq!(cursor.next_start, 420, "stopped after 420 feasible Nodes");
    assert!(
        first.as_str() < "n0420",
        "picked among the Nodes examined: {first}"
    );
    let Decision::Bind(second) = schedule(&p, cache.nodes(), &mut cursor) else {
        panic!("fits")
    };
    assert_eq!(cursor.next_start, 840);
    assert!(
        ("n0420".."n0840").contains(&second.as_str()),
        "the next search starts where the last stopped: {second}"
    );
    // A Pod that fits nowhere examines every Node.
    let huge = pod_req("huge", "64", "1Gi");
    assert_eq!(
        schedule(&huge, cache.nodes(), &mut cursor),
        Decision::Unschedulable("0/1000 nodes are available: 1000 Insufficient cpu.".into())
    );
}

#[test]
fn select_host_rotates_among_ties() {
    let mut ties = 0;
    assert_eq!(select_host(&[], &mut ties), None);
    assert_eq!(select_host(&[1, 9, 3], &mut ties), Some(1));
    assert_eq!(ties, 0, "no tie, no turn");
    let s = [5, 7, 7, 1, 7];
    let picks: Vec<usize> = (0..4)
        .map(|_| select_host(&s, &mut ties).expect("some"))
        .collect();
    assert_eq!(picks, vec![1, 2, 4, 1]);
}

/// Places `count` alike Pods one after another, assuming each as the loop does; returns Pods
/// per Node.
fn place_alike(cache: &mut Cache, count: usize, owner: Option<&str>) -> HashMap<String, usize> {
    let mut cursor = Cursor::default();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..count {
        let mut p = pod_req(&format!("p{i}"), "100m", "500Mi");
        if let Some(o) = owner {
            p = with_owner(p, "ReplicaSet", o, &format!("{o}-uid"));
        }
        let Decision::Bind(n) = schedule(&p, cache.nodes(), &mut cursor) else {
            panic!("pod {i} should fit")
        };
        cache.assume(&p, &n);
        *per_node.entry(n).or_default() += 1;
    }
    per_node
}

#[test]
fn alike_pods_spread_evenly_over_many_nodes() {
    let nodes = many_nodes(1000);
    let refs: Vec<&Node> = nodes.iter().collect();
    let mut cache = Cache::from_objects(&refs, &[]);
    let per_node = place_alike(&mut cache, 5000, None);
    assert_eq!(per_node.len(), 1000, "every Node used");
    let max = per_node.values().max().copied().unwrap_or(0);
    let min = per_node.values().min().copied().unwrap_or(0);
    assert!(max as f64 <= 1.5 * 5.0, "max {max} over a mean of 5");
    assert!(min >= 4, "min {min}");
}

#[test]
fn replicas_spread_over_hosts_and_zones() {
    let mut nodes = many_nodes(6);
    for (i, n) in nodes.iter_mut().enumerate() {
        n.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(framework::ZONE_LABEL.into(), format!("z{}", i % 2));
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let mut cache = Cache::from_objects(&refs, &[]);
    let per_node = place_alike(&mut cache, 12, Some("rs"));
    assert!(per_node.values().all(|&c| c == 2), "{per_node:?}");
}

#[test]
fn topology_spread_scores_fewer_matching_pods_higher() {
    let n1 = node("n1", "4", "8Gi", "110");
    let n2 = node("n2", "4", "8Gi", "110");
    let sib = on(
        with_owner(bare_pod("s1", 0), "ReplicaSet", "rs", "rs-uid"),
        "n1",
    );
    let stranger = on(
        with_owner(bare_pod("x", 0), "ReplicaSet", "other", "other-uid"),
        "n2",
    );
    let cache = Cache::from_objects(&[&n1, &n2], &[&sib, &stranger]);
    let all = cache.nodes();
    let feasible: Vec<&NodeInfo> = all.iter().collect();
    let p = with_owner(bare_pod("new", 0), "ReplicaSet", "rs", "rs-uid");
    let info = PodInfo::new(&p);
    let state = spread::pre_score(&info, &feasible, all).expect("the Pod has a group");
    // Hostname only (no zones): weight ln(2 + 2); n1: 1 * ln 4 + 2 = 3.39 -> 3; n2: 2.
    let mut raw: Vec<i64> = feasible
        .iter()
        .map(|n| spread::raw_score(&state, n))
        .collect();
    assert_eq!(raw, vec![3, 2]);
    spread::normalize(&mut raw);
    // 100 * (max + min - s) / max: n1 66, n2 100.
    assert_eq!(raw, vec![66, 100]);
    assert!(
        spread::pre_score(&PodInfo::new(&bare_pod("orphan", 0)), &feasible, all).is_none(),
        "a Pod without a controller spreads against nothing"
    );
    assert_eq!(
        decide(&p, &[&n1, &n2], &[&sib, &stranger]),
        Decision::Bind("n2".into())
    );
}

#[test]
fn schedule_spreads_replicas_and_uses_assumed_bindings() {
    let n1 = node("n1", "4", "8Gi", "110");
    let n2 = node("n2", "4", "8Gi", "110");
    let first = with_owner(bare_pod("r-1", 0), "ReplicaSet", "r", "r-uid");
    let second = with_owner(bare_pod("r-2", 0), "ReplicaSet", "r", "r-uid");
    let mut cache = Cache::from_objects(&[&n1, &n2], &[&first, &second]);
    let mut cursor = Cursor::default();
    let Decision::Bind(a) = schedule(&first, cache.nodes(), &mut cursor) else {
        panic!("should bind")
    };
    assert_eq!(a, "n1", "the first tie goes to the first Node");
    // first is assumed on n1 (its binding not yet in the store): second goes to n2.
    cache.assume(&first, "n1");
    assert_eq!(
        schedule(&second, cache.nodes(), &mut cursor),
        Decision::Bind("n2".into())
    );
}

#[test]
fn unschedulable_message_counts_reasons() {
    let small = node("small", "1", "1Gi", "110");
    let mut tainted = node("tainted", "8", "8Gi", "110");
    tainted.spec.as_mut().expect("spec").taints = Some(vec![Taint {
        key: "k".into(),
        value: Some("v".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }]);
    let mut down = node("down", "8", "8Gi", "110");
    down.status.as_mut().expect("status").conditions = None;
    let p = pod_req("big", "2", "100Mi");
    assert_eq!(
        decide(&p, &[&small, &tainted, &down], &[&p]),
        Decision::Unschedulable(
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {k: v}, 1 node(s) were not ready.".into()
        )
    );
    assert_eq!(
        decide(&p, &[], &[&p]),
        Decision::Unschedulable("0/0 nodes are available.".into())
    );
}

#[test]
fn unschedulable_condition_is_written_once() {
    let now = crate::controllers::objects::testutil::ts(5);
    let mut p = bare_pod("a", 0);
    let c = unschedulable_condition(&p, "0/1 nodes are available: 1 Insufficient cpu.", now)
        .expect("new condition");
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()),
        ("PodScheduled", "False", Some("Unschedulable"))
    );
    p.status.as_mut().expect("status").conditions = Some(vec![c]);
    assert!(
        unschedulable_condition(&p, "0/1 nodes are available: 1 Insufficient cpu.", now).is_none()
    );
    assert!(
        unschedulable_condition(&p, "0/2 nodes are available: 2 Insufficient cpu.", now).is_some()
    );
}

#[test]
fn terminal_pods_free_their_node() {
    let n = node("n1", "1", "1Gi", "110");
    let mut done = on(pod_req("done", "1", "1Gi"), "n1");
    done.status.as_mut().expect("status").phase = Some("Succeeded".into());
    let p = pod_req("p", "1", "1Gi");
    assert_eq!(decide(&p, &[&n], &[&done, &p]), Decision::Bind("n1".into()));
}

#[test]
fn prefer_no_schedule_taints_and_preferred_affinity_steer_placement() {
    use k8s_openapi::api::core::v1::PreferredSchedulingTerm;
    let mut soft = node("a-soft", "4", "8Gi", "110");
    soft.spec.as_mut().expect("spec").taints = Some(vec![Taint {
        key: "k".into(),
        value: None,
        effect: "PreferNoSchedule".into(),
        time_added: None,
    }]);
    let plain = node("b-plain", "4", "8Gi", "110");
    let p = bare_pod("p", 0);
    assert_eq!(
        decide(&p, &[&soft, &plain], &[&p]),
        Decision::Bind("b-plain".into()),
        "the PreferNoSchedule taint repels"
    );
    let (a, b) = (info(&soft, vec![]), info(&plain, vec![]));
    let c = ctx(&p);
    let mut raw = vec![
        intolerable_prefer_no_schedule(&c, &a),
        intolerable_prefer_no_schedule(&c, &b),
    ];
    assert_eq!(raw, vec![1, 0]);
    default_normalize(&mut raw, true);
    assert_eq!(raw, vec![0, 100]);

    let mut ssd = node("z-ssd", "4", "8Gi", "110");
    ssd.metadata.labels = Some(labels(&[("disk", "ssd")]));
    let mut picky = bare_pod("picky", 0);
    picky.spec.as_mut().expect("spec").affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                PreferredSchedulingTerm {
                    weight: 50,
                    preference: NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "disk".into(),
                            operator: "In".into(),
                            values: Some(vec!["ssd".into()]),
                        }]),
                        match_fields: None,
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        decide(&picky, &[&plain, &ssd], &[&picky]),
        Decision::Bind("z-ssd".into()),
        "preferred even though it comes last"
    );
    let c = ctx(&picky);
    let (a, b) = (info(&plain, vec![]), info(&ssd, vec![]));
    assert_eq!(
        (preferred_affinity(&c, &a), preferred_affinity(&c, &b)),
        (0, 50)
    );
}
