//! Names for the numbers of a flow event: the Pod behind an address (from a watch of Pods),
//! the Services whose backend an address and port are (from the load-balancer maps), the
//! NetworkPolicy behind a policy index and the labels behind an identity (from the
//! `pol_names` and `id_names` maps the policy programmer writes). Map-backed names are read
//! again at most once a second, and only when an event names something unknown.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use keelson_common::names;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};

use super::Flow;
use crate::{
    flows::protocol_name,
    loader::{Datapath, Maps, MapsError},
};

/// Least time between two reads of the name maps.
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct MapNames {
    policies: HashMap<u32, String>,
    identities: HashMap<u32, String>,
    /// (backend address, port, protocol name) → Services.
    services: HashMap<(Ipv4Addr, u16, String), BTreeSet<String>>,
    read_at: Option<Instant>,
}

/// What the flows reader names addresses and numbers with.
#[derive(Debug, Default)]
pub struct Namer {
    pods: Mutex<HashMap<Ipv4Addr, String>>,
    maps: Mutex<MapNames>,
}

impl Namer {
    /// Gives `flow` its names; reads the maps again first if it names something unknown.
    pub async fn name(&self, dp: &Datapath, flow: &mut Flow, policy_index: u32) {
        if self.needs_read(flow, policy_index) {
            match dp.maps().run(read_names).await {
                Ok(fresh) => *self.lock_maps() = fresh,
                Err(e) => tracing::debug!(error = %e, "reading flow names"),
            }
        }
        {
            let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            flow.source.pod = pods.get(&flow.source.ip).cloned();
            flow.destination.pod = pods.get(&flow.destination.ip).cloned();
        }
        let maps = self.lock_maps();
        for end in [&mut flow.source, &mut flow.destination] {
            end.labels = maps
                .identities
                .get(&end.identity)
                .cloned()
                .unwrap_or_else(|| keelson_common::policy::identity::kind(end.identity).into());
        }
        if policy_index != 0 {
            flow.policy = maps.policies.get(&policy_index).cloned();
        }
        if let Some(port) = flow.destination.port {
            let key = (flow.destination.ip, port, flow.protocol.clone());
            flow.services = maps
                .services
                .get(&key)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
        }
    }

    fn needs_read(&self, flow: &Flow, policy_index: u32) -> bool {
        let maps = self.lock_maps();
        let stale = maps.read_at.is_none_or(|t| t.elapsed() >= REFRESH);
        let unknown = (policy_index != 0 && !maps.policies.contains_key(&policy_index))
            || [flow.source.identity, flow.destination.identity]
                .iter()
                .any(|id| {
                    *id >= keelson_common::policy::identity::FIRST_LABELS
                        && !maps.identities.contains_key(id)
                });
        maps.read_at.is_none() || (stale && unknown)
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, MapNames> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the address → Pod names from a watch of all Pods, until the watch ends.
    pub async fn watch_pods(&self, client: kube::Client) {
        let mut events = std::pin::pin!(
            watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff()
        );
        let mut fresh: Option<HashMap<Ipv4Addr, String>> = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "pod watch for flow names");
                    continue;
                }
            };
            let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                watcher::Event::Init => fresh = Some(HashMap::new()),
                watcher::Event::InitApply(pod) => {
                    if let (Some(map), Some((ip, name))) = (fresh.as_mut(), pod_address(&pod)) {
                        map.insert(ip, name);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(map) = fresh.take() {
                        *pods = map;
                    }
                }
                watcher::Event::Apply(pod) => {
                    if let Some((ip, name)) = pod_address(&pod) {
                        pods.insert(ip, name);
                    }
                }
                watcher::Event::Delete(pod) => {
                    if let Some((ip, name)) = pod_address(&pod)
                        && pods.get(&ip) == Some(&name)
                    {
                        pods.remove(&ip);
                    }
                }
            }
        }
    }
}

/// A Pod's own IPv4 address and `namespace/name` (not for hostNetwork Pods, whose address
/// is the node's).
fn pod_address(pod: &Pod) -> Option<(Ipv4Addr, String)> {
    if pod.spec.as_ref()?.host_network == Some(true) {
        return None;
    }
    let ip: Ipv4Addr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    let name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref()?
    );
    Some((ip, name))
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Reads the names the maps hold (on the map owner thread).
fn read_names(m: &mut Maps) -> Result<MapNames, MapsError> {
    let mut out = MapNames {
        read_at: Some(Instant::now()),
        ..MapNames::default()
    };
    for item in m.pol_names.iter() {
        let (k, v) =
            item.map_err(|e| crate::loader::maps::op_err(names::POL_NAMES, "iterate", e))?;
        out.policies.insert(k, text(&v.name));
    }
    for item in m.id_names.iter() {
        let (k, v) =
            item.map_err(|e| crate::loader::maps::op_err(names::ID_NAMES, "iterate", e))?;
        out.identities.insert(k, text(&v.name));
    }
    let lb = m.read_lb()?;
    for entry in lb.services.values() {
        let Some(name) = entry.master.and_then(|(_, index)| lb.names.get(&index)) else {
            continue;
        };
        for id in entry.slots.values() {
            if let Some(b) = lb.backends.get(id)
                && let IpAddr::V4(ip) = b.address
            {
                let proto = protocol_name(b.proto.number());
                out.services
                    .entry((ip, b.port, proto))
                    .or_default()
                    .insert(name.clone());
            }
        }
    }
    Ok(out)
}
