//! The controller and scheduler loops against a real `keelson server` in this process: a
//! Node (with a stand-in kubelet written here: Lease renewal and Pod status), a Deployment and
//! a Service go through IPAM, scheduling, ReplicaSets, Pods, EndpointSlices, scaling and
//! garbage collection, all through the Kubernetes API.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::testutil::{start_server, wait_for};

/// The Node of the test, with its stand-in kubelet.
const NODE: &str = "kls-t-ctl-n1";

/// The objects `api` lists with label selector `labels`; None while the list fails.
async fn labelled<K>(api: &Api<K>, labels: &str) -> Option<Vec<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(&ListParams::default().labels(labels)).await.ok()?;
    Some(list.items)
}

/// Whether `p` is bound to the test's Node.
fn on_node(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE)
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_service_and_node_reconcile_through_the_api() {
    let server = start_server().await;
    let client = server.client.clone();

    // A Node with a stand-in kubelet: Ready, allocatable, a fresh Lease.
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "z1"}}
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    // The controllers started above (node IPAM, lifecycle) write this Node too: like a
    // kubelet, patch only the status fields set here instead of replacing a stale copy.
    nodes
        .patch_status(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "lastHeartbeatTime": now_rfc3339()}],
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}
            }})),
        )
        .await
        .expect("node status");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": NODE},
        "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": now_rfc3339()}
    }))
    .expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");

    // Node IPAM gives it a podCIDR from the cluster CIDR.
    let cidr = wait_for("a podCIDR", Duration::from_secs(5), || {
        let nodes = nodes.clone();
        async move { nodes.get(NODE).await.ok()?.spec?.pod_cidr }
    })
    .await;
    assert_eq!(cidr, "10.244.0.0/24");

    // A Deployment and a Service with a named targetPort.
    let ns = "default";
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "100m"}}}]}
            }
        }
    }))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .expect("service");
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");

    // ReplicaSet -> Pods -> scheduled to the Node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let bound = wait_for("3 bound pods", Duration::from_secs(10), || {
        let pods = pods.clone();
        async move {
            let list = labelled(&pods, "app=web").await?;
            let bound: Vec<Pod> = list.into_iter().filter(on_node).collect();
            (bound.len() == 3).then_some(bound)
        }
    })
    .await;
    for p in &bound {
        let name = p.metadata.name.as_deref().expect("name");
        assert!(name.starts_with("web-"), "{name}");
        let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "ReplicaSet");
    }

    // The stand-in kubelet: Pods Running and Ready with IPs.
    for (i, p) in bound.iter().enumerate() {
        let ip = format!("10.244.0.{}", 10 + i);
        let name = p.metadata.name.as_deref().expect("name");
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}]
            }})),
        )
        .await
        .expect("pod status");
    }

    // Deployment status and EndpointSlice follow.
    wait_for("deployment available", Duration::from_secs(5), || {
        let deployments = deployments.clone();
        async move {
            let st = deployments.get("web").await.ok()?.status?;
            (st.available_replicas == Some(3) && st.updated_replicas == Some(3)).then_some(())
        }
    })
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let slice = wait_for(
        "an endpointslice with 3 ready endpoints",
        Duration::from_secs(5),
        || {
            let slices = slices.clone();
            async move {
                let list = labelled(&slices, "kubernetes.io/service-name=web").await?;
                let s = list.into_iter().next()?;
                let ready = s
                    .endpoints
                    .iter()
                    .flatten()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .count();
                (ready == 3).then_some(s)
            }
        },
    )
    .await;
    let port = &slice.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(8080))
    );
    assert_eq!(
        slice.endpoints.as_ref().expect("eps")[0].zone.as_deref(),
        Some("z1")
    );

    // Scaling is honoured within 2 s end to end.
    let start = Instant::now();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale");
    wait_for("1 active pod", Duration::from_secs(2), || {
        let pods = pods.clone();
        async move {
            let list = labelled(&pods, "app=web").await?;
            (list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
                == 1)
                .then_some(())
        }
    })
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));

    // Deleting the Deployment collects its ReplicaSet.
    deployments
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete");
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    wait_for("the replicaset collected", Duration::from_secs(5), || {
        let replicasets = replicasets.clone();
        async move {
            replicasets
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    // And deleting the Service its slices.
    services
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete service");
    wait_for("the slices collected", Duration::from_secs(5), || {
        let slices = slices.clone();
        async move {
            let list = labelled(&slices, "kubernetes.io/service-name=web").await?;
            list.is_empty().then_some(())
        }
    })
    .await;

    // A DaemonSet puts one Pod on the Node; deleting it collects the Pod.
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), ns);
    let ds = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1"]}]}}
        }
    }))
    .expect("daemonset");
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .expect("create daemonset");
    wait_for("the daemon pod", Duration::from_secs(5), || {
        let pods = pods.clone();
        async move {
            let list = labelled(&pods, "app=agent").await?;
            let bound = list.iter().filter(|p| on_node(p)).count();
            (list.len() == 1 && bound == 1).then_some(())
        }
    })
    .await;
    wait_for("daemonset status", Duration::from_secs(5), || {
        let daemonsets = daemonsets.clone();
        async move {
            let st = daemonsets.get("agent").await.ok()?.status?;
            (st.desired_number_scheduled == 1 && st.current_number_scheduled == 1).then_some(())
        }
    })
    .await;
    daemonsets
        .delete("agent", &DeleteParams::background())
        .await
        .expect("delete daemonset");
    wait_for("the daemon pod collected", Duration::from_secs(5), || {
        let pods = pods.clone();
        async move {
            let list = labelled(&pods, "app=agent").await?;
            list.iter()
                .all(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        }
    })
    .await;
}
