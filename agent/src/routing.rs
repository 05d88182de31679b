//! Routes between nodes: in this node's namespace, a route to every other Node's podCIDR via
//! that Node's InternalIP (native routing; the nodes share an L2 underlay), kept equal to the
//! Node list as Nodes come and go, and IPv4 forwarding switched on.
//!
//! `plan` computes the wanted routes from the Nodes, `diff` compares them with the installed
//! ones; the loop only applies the difference. Only gateway routes tagged with keelson's route
//! protocol are managed here: the per-Pod `/32` device routes belong to the CNI server.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    runtime::watcher::{self, Event},
};

use crate::links::{LinkError, NetOps, Route};

/// How often the routes are re-checked even without Node events, to repair outside changes.
const RESYNC: Duration = Duration::from_secs(30);

/// Errors of the routing loop.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("enabling IPv4 forwarding")]
    Forwarding(#[source] LinkError),
    #[error("the task enabling IPv4 forwarding failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The wanted routes: every other Node with a podCIDR and an InternalIP.
pub fn plan(self_name: &str, nodes: &[Node]) -> BTreeMap<Ipv4Network, Ipv4Addr> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(self_name))
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| {
            let cidr: Ipv4Network = n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
            let ip: Ipv4Addr = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some((cidr, ip))
        })
        .collect()
}

/// What to change so the installed gateway routes equal `wanted`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteChanges {
    pub replace: Vec<Route>,
    pub delete: Vec<Ipv4Network>,
}

/// Compares the wanted routes with keelson's installed routes (device-only routes are ignored).
pub fn diff(wanted: &BTreeMap<Ipv4Network, Ipv4Addr>, installed: &[Route]) -> RouteChanges {
    let current: BTreeMap<Ipv4Network, Ipv4Addr> = installed
        .iter()
        .filter_map(|r| Some((r.dst, r.via?)))
        .collect();
    let replace = wanted
        .iter()
        .filter(|(dst, via)| current.get(dst) != Some(via))
        .map(|(dst, via)| Route {
            dst: *dst,
            via: Some(*via),
            dev: None,
            scope_link: false,
        })
        .collect();
    let delete = current
        .keys()
        .filter(|dst| !wanted.contains_key(dst))
        .copied()
        .collect();
    RouteChanges { replace, delete }
}

/// Applies the changes, logging each failure and going on with the rest.
fn apply(net: &dyn NetOps, ns: Option<&std::path::Path>, changes: &RouteChanges) {
    for r in &changes.replace {
        match net.replace_route(ns, r) {
            Ok(()) => tracing::info!(dst = %r.dst, via = ?r.via, "route to node podCIDR installed"),
            Err(e) => {
                tracing::warn!(dst = %r.dst, error = %crate::cni::server::error_chain(&e), "installing a node route")
            }
        }
    }
    for dst in &changes.delete {
        match net.delete_route(ns, *dst) {
            Ok(()) => tracing::info!(%dst, "route to removed node deleted"),
            Err(e) => {
                tracing::warn!(%dst, error = %crate::cni::server::error_chain(&e), "deleting a node route")
            }
        }
    }
}

fn reconcile(
    self_name: &str,
    nodes: &BTreeMap<String, Node>,
    net: &dyn NetOps,
    ns: Option<&std::path::Path>,
) {
    let list: Vec<Node> = nodes.values().cloned().collect();
    let wanted = plan(self_name, &list);
    match net.routes(ns) {
        Ok(installed) => apply(net, ns, &diff(&wanted, &installed)),
        Err(e) => tracing::warn!(error = %crate::cni::server::error_chain(&e), "listing routes"),
    }
}

/// Keeps the node's routes to other nodes' podCIDRs up to date until dropped.
pub async fn run(
    client: Client,
    self_name: String,
    node_netns: Option<PathBuf>,
    net: Arc<dyn NetOps>,
) -> Result<(), RoutingError> {
    {
        let (net, ns) = (Arc::clone(&net), node_netns.clone());
        tokio::task::spawn_blocking(move || net.set_ipv4_sysctl(ns.as_deref(), "ip_forward", "1"))
            .await
            .map_err(RoutingError::Task)?
            .map_err(RoutingError::Forwarding)?;
    }
    let api: Api<Node> = Api::all(client);
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut initial: BTreeMap<String, Node> = BTreeMap::new();
    let mut synced = false;
    let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        let changed = tokio::select! {
            ev = events.try_next() => match ev {
                Ok(Some(Event::Init)) => { initial.clear(); false }
                Ok(Some(Event::InitApply(n))) => { initial.insert(n.metadata.name.clone().unwrap_or_default(), n); false }
                Ok(Some(Event::InitDone)) => { nodes = std::mem::take(&mut initial); synced = true; true }
                Ok(Some(Event::Apply(n))) => { nodes.insert(n.metadata.name.clone().unwrap_or_default(), n); true }
                Ok(Some(Event::Delete(n))) => { nodes.remove(n.metadata.name.as_deref().unwrap_or_default()); true }
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "watching Nodes");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    false
                }
            },
            _ = resync.tick() => true,
        };
        if changed && synced {
            let (net, ns, name, snapshot) = (
                Arc::clone(&net),
                node_netns.clone(),
                self_name.clone(),
                nodes.clone(),
            );
            let _ = tokio::task::spawn_blocking(move || {
                reconcile(&name, &snapshot, &*net, ns.as_deref())
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "podCIDR": cidr },
            "status": { "addresses": [
                { "type": "Hostname", "address": name },
                { "type": "InternalIP", "address": ip },
            ]},
        }))
        .expect("node")
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    #[test]
    fn plan_routes_other_nodes_with_cidr_and_address() {
        let nodes = [
            node("n1", Some("10.244.1.0/24"), "10.250.0.11"),
            node("n2", Some("10.244.2.0/24"), "10.250.0.12"),
            node("n3", None, "10.250.0.13"),
            node("n4", Some("10.244.4.0/24"), "not-an-ip"),
        ];
        let wanted = plan("n1", &nodes);
        assert_eq!(wanted.len(), 1);
        assert_eq!(
            wanted.get(&net("10.244.2.0/24")),
            Some(&Ipv4Addr::new(10, 250, 0, 12))
        );
    }

    #[test]
    fn diff_adds_changes_and_removes_only_gateway_routes() {
        let wanted: BTreeMap<_, _> = [
            (net("10.244.2.0/24"), Ipv4Addr::new(10, 250, 0, 12)),
            (net("10.244.3.0/24"), Ipv4Addr::new(10, 250, 0, 13)),
        ]
        .into();
        let installed = vec![
            // Up to date.
            Route {
                dst: net("10.244.2.0/24"),
                via: Some(Ipv4Addr::new(10, 250, 0, 12)),
                dev: Some("eth0".into()),
                scope_link: false,
            },
            // Node moved to another address.
            Route {
                dst: net("10.244.3.0/24"),
                via: Some(Ipv4Addr::new(10, 250, 0, 99)),
                dev: Some("eth0".into()),
                scope_link: false,
            },
            // Node deleted.
            Route {
                dst: net("10.244.5.0/24"),
                via: Some(Ipv4Addr::new(10, 250, 0, 15)),
                dev: Some("eth0".into()),
                scope_link: false,
            },
            // A Pod route of the CNI server: not ours to touch.
            Route {
                dst: net("10.244.1.7/32"),
                via: None,
                dev: Some("kls12345678".into()),
                scope_link: true,
            },
        ];
        let changes = diff(&wanted, &installed);
        assert_eq!(
            changes.replace,
            vec![Route {
                dst: net("10.244.3.0/24"),
                via: Some(Ipv4Addr::new(10, 250, 0, 13)),
                dev: None,
                scope_link: false
            }]
        );
        assert_eq!(changes.delete, vec![net("10.244.5.0/24")]);
        assert_eq!(
            diff(&BTreeMap::new(), &installed[3..]),
            RouteChanges::default()
        );
    }
}
