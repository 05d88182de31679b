//! Node IPAM: gives every Node without one a spec.podCIDR carved from the cluster CIDR. The
//! blocks in use are derived from the Nodes themselves (plus allocations the store has not shown
//! yet), so nothing is persisted elsewhere, a restart loses nothing, and a deleted Node's block is
//! free again as soon as the Node is gone.

use std::collections::BTreeMap;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::ControllerError;
use super::runtime::{Controller, Informers, Reconciler, Requeue, Touch, WorkQueue, key_of};
use crate::ipam::{Allocator, Range};

/// The pool Node podCIDRs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// The cluster CIDR.
    pub cluster: Ipv4Network,
    /// Prefix length of each Node's block.
    pub mask: u8,
}

impl Pool {
    /// Parses `cluster_cidr` and checks that `/mask` blocks fit in it.
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<Self, ControllerError> {
        let cluster: Ipv4Network = cluster_cidr
            .parse()
            .map_err(|e| ControllerError::Config(format!("cluster CIDR {cluster_cidr:?}: {e}")))?;
        if mask < cluster.prefix() || mask > 32 {
            return Err(ControllerError::Config(format!(
                "node CIDR mask /{mask} does not fit in cluster CIDR {cluster_cidr}"
            )));
        }
        // Normalise 10.244.3.0/16 to 10.244.0.0/16.
        let cluster = Ipv4Network::new(cluster.network(), cluster.prefix())
            .map_err(|e| ControllerError::Config(e.to_string()))?;
        Ok(Self { cluster, mask })
    }

    /// The pool's blocks, numbered in address order.
    pub fn range(&self) -> Option<Range> {
        Range::blocks(self.cluster, self.mask).ok()
    }

    /// The number of Node blocks in the pool.
    pub fn blocks(&self) -> u64 {
        self.range().map_or(0, |r| r.len())
    }

    /// The `i`th block.
    pub fn block(&self, i: u64) -> Option<Ipv4Network> {
        self.range()?.item(i)
    }
}

/// What the IPAM plan sees besides the Node.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The pool.
    pub pool: Pool,
    /// Every Node.
    pub nodes: Vec<&'a Node>,
    /// Blocks assigned by us that the store does not show yet.
    pub pending: Vec<Ipv4Network>,
}

/// One IPAM step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set the Node's spec.podCIDR and spec.podCIDRs to this block.
    Assign { node: String, cidr: Ipv4Network },
    /// The pool has no free block left.
    Exhausted,
}

/// The IPv4 podCIDRs a Node holds.
pub fn node_cidrs(node: &Node) -> Vec<Ipv4Network> {
    let spec = node.spec.as_ref();
    let list = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let single = spec.and_then(|s| s.pod_cidr.clone());
    list.into_iter()
        .chain(single)
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Plans a podCIDR for `node` if it has none.
pub fn plan(node: &Node, snap: &Snapshot<'_>) -> Vec<Change> {
    let has_cidr = node.spec.as_ref().is_some_and(|s| {
        s.pod_cidr.as_deref().is_some_and(|c| !c.is_empty())
            || s.pod_cidrs.as_ref().is_some_and(|c| !c.is_empty())
    });
    if has_cidr || node.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    // Every block a Node's CIDR (of whatever size) or a pending assignment overlaps is taken;
    // the first free one goes to this Node.
    let free = snap.pool.range().and_then(|range| {
        let mut blocks = Allocator::new(range);
        snap.nodes
            .iter()
            .flat_map(|n| node_cidrs(n))
            .chain(snap.pending.iter().copied())
            .for_each(|c| blocks.occupy(c));
        blocks.next_free(0, |_| true)
    });
    match free {
        Some(cidr) => vec![Change::Assign {
            node: node.metadata.name.clone().unwrap_or_default(),
            cidr,
        }],
        None => vec![Change::Exhausted],
    }
}

/// Node IPAM: a Node's key for every change of it, every Node's when one is deleted (its
/// block may let a Node that found the pool exhausted get one now).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeIpamController {
    /// The blocks given out.
    pub pool: Pool,
}

impl Controller for NodeIpamController {
    const NAME: &'static str = "nodeipam";
    type Loop = NodeIpamLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> NodeIpamLoop {
        let nodes = informers.all::<Node>();
        let store = nodes.store();
        let (q, all_nodes) = (queue.clone(), store.clone());
        nodes.on(move |t| match t {
            Touch::Changed(n) => q.add(key_of(n)),
            Touch::Deleted(_) => all_nodes.state().iter().for_each(|n| q.add(key_of(&**n))),
            Touch::Relisted(all) => all.iter().for_each(|n| q.add(key_of(&**n))),
        });
        NodeIpamLoop {
            client: informers.client().clone(),
            nodes: store,
            pool: self.pool,
            pending: BTreeMap::new(),
        }
    }
}

/// The IPAM loop: one Node key at a time, so two Nodes never get the same block.
pub(crate) struct NodeIpamLoop {
    pub(crate) client: Client,
    pub(crate) nodes: Store<Node>,
    pub(crate) pool: Pool,
    /// Blocks assigned but not yet visible in the store, by Node name.
    pub(crate) pending: BTreeMap<String, Ipv4Network>,
}

impl Reconciler for NodeIpamLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let nodes = self.nodes.state();
        // Forget pending blocks the store now shows, or whose Node is gone.
        self.pending.retain(|name, _| {
            nodes.iter().any(|n| {
                n.metadata.name.as_deref() == Some(name.as_str()) && node_cidrs(n).is_empty()
            })
        });
        let Some(node) = self.nodes.get(&ObjectRef::new(key)) else {
            return Ok(None);
        };
        if let Some(cidr) = self.pending.get(key) {
            tracing::debug!(node = key, %cidr, "podCIDR assigned, waiting for the store");
            return Ok(None);
        }
        let snap = Snapshot {
            pool: self.pool,
            nodes: nodes.iter().map(|n| &**n).collect(),
            pending: self.pending.values().copied().collect(),
        };
        let api: Api<Node> = Api::all(self.client.clone());
        for change in plan(&node, &snap) {
            match change {
                Change::Assign { node, cidr } => {
                    let c = cidr.to_string();
                    let patch = serde_json::json!({ "spec": { "podCIDR": c, "podCIDRs": [c] } });
                    api.patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    tracing::info!(node, cidr = c, "assigned podCIDR");
                    self.pending.insert(node, cidr);
                }
                Change::Exhausted => {
                    tracing::error!(node = key, pool = %self.pool.cluster, "no free podCIDR left");
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(Into::into),
                pod_cidrs: cidr.map(|c| vec![c.to_string()]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn assigned(changes: &[Change]) -> Option<String> {
        match changes {
            [Change::Assign { cidr, .. }] => Some(cidr.to_string()),
            _ => None,
        }
    }

    #[test]
    fn pool_validates_and_counts_blocks() {
        let p = Pool::new("10.244.0.0/16", 24).expect("pool");
        assert_eq!(p.blocks(), 256);
        assert_eq!(
            p.block(0).map(|b| b.to_string()).as_deref(),
            Some("10.244.0.0/24")
        );
        assert_eq!(
            p.block(255).map(|b| b.to_string()).as_deref(),
            Some("10.244.255.0/24")
        );
        assert_eq!(p.block(256), None);
        assert!(Pool::new("10.244.0.0/16", 8).is_err());
        assert!(Pool::new("not-a-cidr", 24).is_err());
        assert_eq!(
            Pool::new("10.244.7.1/16", 24)
                .expect("pool")
                .cluster
                .to_string(),
            "10.244.0.0/16"
        );
    }

    #[test]
    fn assigns_first_free_block_and_skips_used_ones() {
        let pool = Pool::new("10.244.0.0/16", 24).expect("pool");
        let a = node("a", Some("10.244.0.0/24"));
        let b = node("b", Some("10.244.2.0/24"));
        let c = node("c", None);
        let snap = Snapshot {
            pool,
            nodes: vec![&a, &b, &c],
            pending: vec![],
        };
        assert_eq!(assigned(&plan(&c, &snap)).as_deref(), Some("10.244.1.0/24"));
        assert!(plan(&a, &snap).is_empty(), "nodes with a podCIDR keep it");
        // A pending allocation is in use too.
        let snap = Snapshot {
            pool,
            nodes: vec![&a, &b, &c],
            pending: vec!["10.244.1.0/24".parse().expect("net")],
        };
        assert_eq!(assigned(&plan(&c, &snap)).as_deref(), Some("10.244.3.0/24"));
    }

    #[test]
    fn never_double_allocates_across_many_nodes() {
        let pool = Pool::new("10.0.0.0/20", 24).expect("pool");
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..16 {
            let new = node(&format!("n{i}"), None);
            let refs: Vec<&Node> = nodes.iter().chain(std::iter::once(&new)).collect();
            let cidr = assigned(&plan(
                &new,
                &Snapshot {
                    pool,
                    nodes: refs,
                    pending: vec![],
                },
            ))
            .expect("a block");
            nodes.push(node(&format!("n{i}"), Some(&cidr)));
        }
        let mut all: Vec<String> = nodes
            .iter()
            .flat_map(node_cidrs)
            .map(|c| c.to_string())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 16);
        let extra = node("extra", None);
        let refs: Vec<&Node> = nodes.iter().chain(std::iter::once(&extra)).collect();
        assert_eq!(
            plan(
                &extra,
                &Snapshot {
                    pool,
                    nodes: refs,
                    pending: vec![]
                }
            ),
            vec![Change::Exhausted]
        );
        // Deleting a Node frees its block for the next one.
        nodes.remove(5);
        let refs: Vec<&Node> = nodes.iter().chain(std::iter::once(&extra)).collect();
        assert_eq!(
            assigned(&plan(
                &extra,
                &Snapshot {
                    pool,
                    nodes: refs,
                    pending: vec![]
                }
            ))
            .as_deref(),
            Some("10.0.5.0/24")
        );
    }

    #[test]
    fn overlapping_foreign_cidrs_are_respected() {
        let pool = Pool::new("10.244.0.0/16", 24).expect("pool");
        // A Node configured by hand with a bigger block covering the first four /24s.
        let big = node("big", Some("10.244.0.0/22"));
        let outside = node("outside", Some("192.168.0.0/24"));
        let new = node("new", None);
        let snap = Snapshot {
            pool,
            nodes: vec![&big, &outside, &new],
            pending: vec![],
        };
        assert_eq!(
            assigned(&plan(&new, &snap)).as_deref(),
            Some("10.244.4.0/24")
        );
    }
}
