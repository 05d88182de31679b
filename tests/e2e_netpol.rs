//! NetworkPolicy end to end, as the upstream netpol e2e suite checks it: Pods a, b, c in
//! namespaces x, y, z over two nodes, each serving TCP and UDP on ports 80 and 81, plus two
//! hosts outside the cluster; for each case the whole matrix of who reaches whom on which port
//! is probed until it is the expected one (or a timeout), and every difference is printed.
//! Each node's own stack probes the Pods on it in every case: it must reach them however they
//! are isolated.
//! One cluster serves every case; each case's policies and label changes are undone after it,
//! and connectivity must come back in full before the next one.

mod netpol_matrix;
mod support;

use std::time::Instant;

use netpol_matrix::{
    Action, Case, Peer, PodDef, World, all, any, ext, exts, ns, pod, pods, tcp, tcp_any, udp,
    udp_any,
};
use support::LocalCluster;

/// One name, so that a crashed run's leftovers are removed by the next run's `keelson up`.
const CLUSTER: &str = "netpolmx";

/// The model's Pods: every namespace has Pods on both nodes, so that each case crosses nodes
/// as well as namespaces. a and b carry `tier: web` for the Exists/DoesNotExist cases.
fn model() -> Vec<PodDef> {
    [
        ("x", "a", 1),
        ("x", "b", 2),
        ("x", "c", 1),
        ("y", "a", 2),
        ("y", "b", 1),
        ("y", "c", 2),
        ("z", "a", 1),
        ("z", "b", 2),
        ("z", "c", 2),
    ]
    .into_iter()
    .map(|(ns, name, node)| {
        let mut labels = vec![("pod", name)];
        if name != "c" {
            labels.push(("tier", "web"));
        }
        PodDef {
            ns,
            name,
            node,
            labels,
        }
    })
    .collect()
}

/// A NetworkPolicy manifest; `spec` is YAML flow style. Namespace y is quoted wherever it
/// appears: YAML 1.1, which kubectl reads, takes a bare `y` for `true`.
fn np(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: '{namespace}'}}\nspec: {spec}\n---\n"
    )
}

const POD_A: &str = "podSelector: {matchLabels: {pod: a}}";

fn apply(yaml: String) -> Action {
    Action::Apply(yaml)
}

fn cases() -> Vec<Case> {
    let deny_ingress_x = np(
        "x",
        "deny-ingress",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    let deny_egress_x = np(
        "x",
        "deny-egress",
        "{podSelector: {}, policyTypes: [Egress]}",
    );
    let to_a = |rule: &str| np("x", "to-a", &format!("{{{POD_A}, ingress: [{rule}]}}"));
    let from_a = |rule: &str| {
        np(
            "x",
            "from-a",
            &format!("{{{POD_A}, policyTypes: [Egress], egress: [{rule}]}}"),
        )
    };
    vec![
        Case::new("allow-all").step("", vec![], |_| {}),
        Case::policy("deny-ingress-in-x", &deny_ingress_x, |r| {
            r.deny(any(), ns("x"), all());
        }),
        Case::policy("deny-egress-in-x", &deny_egress_x, |r| {
            r.deny(ns("x"), any(), all());
        }),
        Case::policy(
            "deny-all-in-x",
            &np("x", "deny-all", "{podSelector: {}, policyTypes: [Ingress, Egress]}"),
            |r| {
                r.deny(any(), ns("x"), all()).deny(ns("x"), any(), all());
            },
        ),
        Case::policy(
            "ingress-from-same-namespace",
            &np(
                "x",
                "same-ns",
                "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
            ),
            |r| {
                r.deny(any() & !ns("x"), ns("x"), all());
            },
        ),
        Case::policy(
            "ingress-from-all-namespaces",
            &to_a("{from: [{namespaceSelector: {}}]}"),
            // Every Pod, but nothing outside the cluster.
            |r| {
                r.deny(exts(), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-from-namespace-by-name-label",
            &to_a("{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}}]}"),
            |r| {
                r.deny(any() & !ns("y"), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-from-namespace-by-custom-label",
            &to_a("{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}"),
            |r| {
                r.deny(any() & !ns("z"), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-from-namespaces-notin",
            &to_a(
                "{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}",
            ),
            // Outside hosts are in no namespace, so no namespaceSelector takes them in.
            |r| {
                r.deny(ns("x") | exts(), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-namespace-and-pod-in-one-peer",
            &to_a(
                "{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: ['y', z]}]}, podSelector: {matchLabels: {pod: b}}}]}",
            ),
            |r| {
                r.deny(
                    any() & !(pod("y", "b") | pod("z", "b")),
                    pod("x", "a"),
                    all(),
                );
            },
        ),
        Case::policy(
            "ingress-or-of-two-peers",
            &to_a(
                "{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}, {podSelector: {matchLabels: {pod: b}}}]}",
            ),
            |r| {
                r.deny(any() & !(ns("y") | pod("x", "b")), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-pod-in",
            &to_a(
                "{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}",
            ),
            |r| {
                r.deny(
                    any() & !(pod("x", "b") | pod("x", "c")),
                    pod("x", "a"),
                    all(),
                );
            },
        ),
        Case::policy(
            "ingress-pod-notin",
            &to_a(
                "{from: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [b]}]}}]}",
            ),
            |r| {
                r.deny(any() & !(pod("x", "a") | pod("x", "c")), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-pod-exists",
            &np(
                "x",
                "to-c",
                "{podSelector: {matchLabels: {pod: c}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]}]}",
            ),
            |r| {
                r.deny(
                    any() & !(pod("x", "a") | pod("x", "b")),
                    pod("x", "c"),
                    all(),
                );
            },
        ),
        Case::policy(
            "ingress-pod-doesnotexist",
            &to_a("{from: [{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}"),
            |r| {
                r.deny(any() & !pod("x", "c"), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-tcp-80-only",
            // No `from`: any source, outside hosts included, on that port.
            &to_a("{ports: [{port: 80}]}"),
            |r| {
                r.deny(any(), pod("x", "a"), !tcp(80));
            },
        ),
        Case::policy(
            "ingress-port-81-from-pods",
            &to_a(
                "{from: [{namespaceSelector: {}}], ports: [{port: 81, protocol: TCP}, {port: 81, protocol: UDP}]}",
            ),
            |r| {
                r.deny(any(), pod("x", "a"), all())
                    .allow(pods(), pod("x", "a"), tcp(81) | udp(81));
            },
        ),
        Case::policy(
            "ingress-named-udp-port",
            &to_a(
                "{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: serve-80-udp, protocol: UDP}]}",
            ),
            |r| {
                r.deny(any(), pod("x", "a"), all())
                    .allow(ns("y"), pod("x", "a"), udp(80));
            },
        ),
        Case::policy(
            "ingress-named-tcp-port-whole-namespace",
            &np(
                "x",
                "named",
                "{podSelector: {}, ingress: [{ports: [{port: serve-81-tcp}]}]}",
            ),
            |r| {
                r.deny(any(), ns("x"), !tcp(81));
            },
        ),
        Case::policy(
            "ingress-udp-only",
            &to_a("{ports: [{protocol: UDP}]}"),
            |r| {
                r.deny(any(), pod("x", "a"), tcp_any());
            },
        ),
        Case::policy(
            "ingress-tcp-only-from-z",
            &to_a("{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{protocol: TCP}]}"),
            |r| {
                r.deny(any(), pod("x", "a"), all())
                    .allow(ns("z"), pod("x", "a"), tcp_any());
            },
        ),
        Case::policy(
            "ingress-port-ranges",
            // 81-1000 is no aligned prefix: it is split into several.
            &to_a(
                "{ports: [{protocol: UDP, port: 80, endPort: 81}, {protocol: TCP, port: 81, endPort: 1000}]}",
            ),
            |r| {
                r.deny(any(), pod("x", "a"), tcp(80));
            },
        ),
        Case::policy(
            "egress-to-namespace-y",
            &np(
                "x",
                "to-y",
                "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}",
            ),
            |r| {
                r.deny(ns("x"), any() & !ns("y"), all());
            },
        ),
        Case::policy(
            "egress-tcp-80-only",
            &np(
                "x",
                "egress-80",
                "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}",
            ),
            |r| {
                r.deny(ns("x"), any(), !tcp(80));
            },
        ),
        Case::policy(
            "egress-udp-port-range-to-pods",
            &from_a("{to: [{namespaceSelector: {}}], ports: [{protocol: UDP, port: 80, endPort: 81}]}"),
            |r| {
                r.deny(pod("x", "a"), any(), all())
                    .allow(pod("x", "a"), pods(), udp_any());
            },
        ),
        Case::policy(
            "egress-named-port",
            &np(
                "x",
                "egress-named",
                "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-81-tcp}]}]}",
            ),
            // Upstream's "should allow egress access on one named port": no `to`, so every
            // destination, each Pod on the number its own container port of that name has. A
            // named port is a Pod's: outside hosts have none.
            |r| {
                r.deny(ns("x"), any(), all())
                    .allow(ns("x"), pods(), tcp(81));
            },
        ),
        Case::policy(
            "egress-named-port-to-pods",
            &from_a(
                "{to: [{namespaceSelector: {}}], ports: [{port: serve-80-udp, protocol: UDP}]}",
            ),
            |r| {
                r.deny(pod("x", "a"), any(), all())
                    .allow(pod("x", "a"), pods(), udp(80));
            },
        ),
        Case::policy(
            "egress-namespace-and-pod-in-one-peer",
            &from_a("{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: b}}}]}"),
            |r| {
                r.deny(pod("x", "a"), any() & !pod("y", "b"), all());
            },
        ),
        Case::policy(
            "ingress-and-egress-in-one-policy",
            &np(
                "x",
                "both",
                &format!(
                    "{{{POD_A}, policyTypes: [Ingress, Egress], ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}], egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: 'y'}}}}}}]}}]}}"
                ),
            ),
            |r| {
                r.deny(any() & !pod("x", "b"), pod("x", "a"), all())
                    .deny(pod("x", "a"), any() & !ns("y"), all());
            },
        ),
        Case::policy(
            "egress-denied-at-client-though-server-allows",
            &(np(
                "y",
                "from-x",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}",
            ) + &deny_egress_x),
            |r| {
                r.deny(any() & !ns("x"), pod("y", "a"), all())
                    .deny(ns("x"), any(), all());
            },
        ),
        Case::policy(
            "policies-in-two-namespaces",
            &(from_a("{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}")
                + &np(
                    "y",
                    "from-z",
                    "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}",
                )),
            // x/a may only send to y, which takes only z: x/a reaches nothing.
            |r| {
                r.deny(pod("x", "a"), any() & !ns("y"), all())
                    .deny(any() & !ns("z"), ns("y"), all());
            },
        ),
        Case::policy(
            "union-of-two-policies",
            &(to_a("{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}")
                + &np(
                    "x",
                    "c-to-a-81",
                    &format!(
                        "{{{POD_A}, ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: c}}}}}}], ports: [{{port: 81}}]}}]}}"
                    ),
                )),
            |r| {
                r.deny(any() & !ns("y"), pod("x", "a"), all())
                    .allow(pod("x", "c"), pod("x", "a"), tcp(81));
            },
        ),
        Case::policy(
            "stacked-overlapping-selectors",
            &(np(
                "x",
                "web-from-y",
                "{podSelector: {matchLabels: {tier: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]}",
            ) + &np(
                "x",
                "b-from-z",
                "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}",
            )),
            |r| {
                r.deny(any() & !ns("y"), pod("x", "a"), all())
                    .deny(any() & !(ns("y") | ns("z")), pod("x", "b"), all());
            },
        ),
        Case::policy(
            "single-pod-selected",
            &np(
                "x",
                "deny-b",
                "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress]}",
            ),
            |r| {
                r.deny(any(), pod("x", "b"), all());
            },
        ),
        Case::policy(
            "ingress-allow-all-rule",
            &(deny_ingress_x.clone() + &to_a("{}")),
            |r| {
                r.deny(any(), pod("x", "b") | pod("x", "c"), all());
            },
        ),
        Case::policy(
            "ingress-empty-from-list",
            // `from: []` is the same as no `from`: every source.
            &np(
                "x",
                "empty-from",
                "{podSelector: {}, ingress: [{from: [], ports: [{port: 80, protocol: UDP}]}]}",
            ),
            |r| {
                r.deny(any(), ns("x"), !udp(80));
            },
        ),
        Case::policy(
            "egress-allow-all-rule",
            &(deny_egress_x.clone() + &from_a("{}")),
            |r| {
                r.deny(pod("x", "b") | pod("x", "c"), any(), all());
            },
        ),
        // Traffic flows while the policy is edited: besides the matrix, two connections
        // opened before the first edit. y/b → x/a stops once an edit denies y (keelson checks
        // established flows again on every policy change); x/c → x/b keeps working, also once
        // x/c is isolated for ingress, since its packets are replies to x/c's own connection.
        Case::new("policy-update")
            .step(
                "from namespace y",
                vec![apply(to_a("{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}"))],
                |r| {
                    r.deny(any() & !ns("y"), pod("x", "a"), all());
                },
            )
            .flow(Peer::pod("y", "b"), Peer::pod("x", "a"), true)
            .flow(Peer::pod("x", "c"), Peer::pod("x", "b"), true)
            .step(
                "edited: from namespace z on tcp/80",
                vec![apply(to_a(
                    "{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 80}]}",
                ))],
                |r| {
                    r.deny(any(), pod("x", "a"), all())
                        .allow(ns("z"), pod("x", "a"), tcp(80));
                },
            )
            .flow(Peer::pod("y", "b"), Peer::pod("x", "a"), false)
            .flow(Peer::pod("x", "c"), Peer::pod("x", "b"), true)
            .step(
                "edited: selects x/c instead",
                vec![apply(np(
                    "x",
                    "to-a",
                    "{podSelector: {matchLabels: {pod: c}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 80}]}]}",
                ))],
                |r| {
                    r.deny(any(), pod("x", "c"), all())
                        .allow(ns("z"), pod("x", "c"), tcp(80));
                },
            )
            .flow(Peer::pod("x", "c"), Peer::pod("x", "b"), true),
        Case::new("pod-label-selects-peer")
            .step(
                "no Pod has role=client",
                vec![apply(to_a(
                    "{from: [{podSelector: {matchLabels: {role: client}}}]}",
                ))],
                |r| {
                    r.deny(any(), pod("x", "a"), all());
                },
            )
            .step(
                "x/b labelled role=client",
                vec![Action::LabelPod {
                    ns: "x",
                    name: "b",
                    label: "role=client",
                }],
                |r| {
                    r.deny(any() & !pod("x", "b"), pod("x", "a"), all());
                },
            )
            .step(
                "the label moved from x/b to x/c",
                vec![
                    Action::LabelPod {
                        ns: "x",
                        name: "b",
                        label: "role-",
                    },
                    Action::LabelPod {
                        ns: "x",
                        name: "c",
                        label: "role=client",
                    },
                ],
                |r| {
                    r.deny(any() & !pod("x", "c"), pod("x", "a"), all());
                },
            ),
        Case::new("pod-label-selects-target")
            .step(
                "tier=web isolated",
                vec![apply(np(
                    "x",
                    "deny-web",
                    "{podSelector: {matchLabels: {tier: web}}, policyTypes: [Ingress]}",
                ))],
                |r| {
                    r.deny(any(), pod("x", "a") | pod("x", "b"), all());
                },
            )
            .step(
                "tier removed from x/b",
                vec![Action::LabelPod {
                    ns: "x",
                    name: "b",
                    label: "tier-",
                }],
                |r| {
                    r.deny(any(), pod("x", "a"), all());
                },
            )
            .step(
                "tier=web added to x/c",
                vec![Action::LabelPod {
                    ns: "x",
                    name: "c",
                    label: "tier=web",
                }],
                |r| {
                    r.deny(any(), pod("x", "a") | pod("x", "c"), all());
                },
            ),
        Case::new("namespace-label-selects-peer")
            .step(
                "no namespace has team=blue",
                vec![apply(to_a(
                    "{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}",
                ))],
                |r| {
                    r.deny(any(), pod("x", "a"), all());
                },
            )
            .step(
                "y labelled team=blue",
                vec![Action::LabelNamespace {
                    ns: "y",
                    label: "team=blue",
                }],
                |r| {
                    r.deny(any() & !ns("y"), pod("x", "a"), all());
                },
            )
            .step(
                "the label moved from y to z",
                vec![
                    Action::LabelNamespace {
                        ns: "y",
                        label: "team-",
                    },
                    Action::LabelNamespace {
                        ns: "z",
                        label: "team=blue",
                    },
                ],
                |r| {
                    r.deny(any() & !ns("z"), pod("x", "a"), all());
                },
            ),
        Case::new("policy-deleted")
            .step(
                "deny all in x",
                vec![apply(np(
                    "x",
                    "deny-all",
                    "{podSelector: {}, policyTypes: [Ingress, Egress]}",
                ))],
                |r| {
                    r.deny(any(), ns("x"), all()).deny(ns("x"), any(), all());
                },
            )
            .step(
                "deleted",
                vec![Action::DeletePolicy {
                    ns: "x",
                    name: "deny-all",
                }],
                |_| {},
            ),
        Case::new("pod-created-after-policy")
            .step(
                "x isolated; y/a takes only pod=d of x",
                vec![apply(
                    deny_ingress_x.clone()
                        + &np(
                            "y",
                            "from-x-d",
                            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: d}}}]}]}",
                        ),
                )],
                |r| {
                    r.deny(any(), ns("x"), all()).deny(any(), pod("y", "a"), all());
                },
            )
            .step(
                // On node 1, y/a on node 2: the new Pod's identity has to reach the other node.
                "x/d created",
                vec![Action::CreatePod(PodDef {
                    ns: "x",
                    name: "d",
                    node: 1,
                    labels: vec![("pod", "d")],
                })],
                |r| {
                    r.deny(any(), ns("x"), all())
                        .deny(any() & !pod("x", "d"), pod("y", "a"), all());
                },
            ),
        // ipBlock matches addresses outside the cluster only (as Cilium does by default), so
        // these cases use the outside hosts: ext1 = 10.250.0.200, ext2 = 10.250.0.201.
        Case::policy(
            "egress-ipblock-with-except",
            &np(
                "x",
                "cidr",
                "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.250.0.0/24, except: [10.250.0.201/32]}}]}]}",
            ),
            |r| {
                r.deny(ns("x"), any() & !ext(1), all());
            },
        ),
        Case::policy(
            "egress-ipblock-one-host",
            &np(
                "x",
                "cidr",
                "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.250.0.201/32}}]}]}",
            ),
            |r| {
                r.deny(ns("x"), any() & !ext(2), all());
            },
        ),
        Case::policy(
            "egress-ipblock-everything-but-pods",
            &np(
                "x",
                "cidr",
                "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]}",
            ),
            |r| {
                r.deny(ns("x"), pods(), all());
            },
        ),
        Case::policy(
            "ingress-ipblock-one-host",
            &to_a("{from: [{ipBlock: {cidr: 10.250.0.200/32}}]}"),
            |r| {
                r.deny(any() & !ext(1), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-ipblock-with-except",
            &to_a("{from: [{ipBlock: {cidr: 10.250.0.0/24, except: [10.250.0.200/32]}}]}"),
            |r| {
                r.deny(any() & !ext(2), pod("x", "a"), all());
            },
        ),
        Case::policy(
            "ingress-ipblock-on-udp-81",
            &np(
                "x",
                "cidr-udp",
                "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.250.0.0/24}}], ports: [{port: 81, protocol: UDP}]}]}",
            ),
            |r| {
                r.deny(any(), ns("x"), all())
                    .allow(exts(), ns("x"), udp(81));
            },
        ),
    ]
}

#[test]
fn network_policy_connectivity_matrix() {
    let total = Instant::now();
    let c = LocalCluster::up(CLUSTER, 2);
    println!("cluster up in {:.1} s", total.elapsed().as_secs_f64());
    let model = model();
    let started = Instant::now();
    let mut world = World::start(&c, &model);
    println!(
        "Pods, outside hosts and probers ready in {:.1} s:",
        started.elapsed().as_secs_f64()
    );
    world.describe();

    let mut cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    // KEELSON_NETPOL_CASES=a,b runs only those cases (while working on one of them).
    if let Ok(only) = std::env::var("KEELSON_NETPOL_CASES") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        cases.retain(|c| only.contains(&c.name));
    }
    let results: Vec<_> = cases.iter().map(|case| world.run(case, &model)).collect();
    drop(world);

    println!("\nsummary ({:.1} s in all):", total.elapsed().as_secs_f64());
    for r in &results {
        println!(
            "  {:<48} {:<6} {:>5.1} s",
            r.name,
            if r.ok { "ok" } else { "FAILED" },
            r.took.as_secs_f64()
        );
    }
    let failed: Vec<&str> = results.iter().filter(|r| !r.ok).map(|r| r.name).collect();
    println!(
        "{} cases: {} ok, {} failed",
        results.len(),
        results.len() - failed.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "cases failed: {failed:?}");
}
