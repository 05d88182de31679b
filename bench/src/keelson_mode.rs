//! keelson's side of the benchmark: the bench's Services as the API objects the agent
//! watches (selector-less Services with hand-written EndpointSlices), programmed into a
//! freshly loaded datapath through the agent's own services code path
//! (`keelson_agent::services::Programmer`: the objects as the watches' first lists, then a
//! pass that reads the maps, plans every Service, diffs and applies), then changed one
//! EndpointSlice at a time as the agent's loop does it (one watch event, then a pass that
//! plans that Service again and diffs what it touched against the state carried from the
//! previous pass).

use std::{collections::BTreeMap, path::Path, time::Duration, time::Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use keelson_agent::{
    loader::{Datapath, DatapathConfig},
    services::{Programmer, plan::NodeContext},
};
use kube::runtime::watcher;

use crate::workload::{BenchService, ENDPOINT_PORT, NAMESPACE, PORT_NAME, SERVICE_PORT};

/// The Service and EndpointSlice objects of `services`.
pub fn objects(services: &[BenchService]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let svcs = services
        .iter()
        .map(|s| Service {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: Some(s.cluster_ip.to_string()),
                cluster_ips: Some(vec![s.cluster_ip.to_string()]),
                ports: Some(vec![ServicePort {
                    name: Some(PORT_NAME.into()),
                    port: i32::from(SERVICE_PORT),
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(i32::from(ENDPOINT_PORT))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let slices = services
        .iter()
        .map(|s| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{}-bench", s.name)),
                namespace: Some(NAMESPACE.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_string(),
                    s.name.clone(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                s.endpoints
                    .iter()
                    .map(|ip| Endpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some(PORT_NAME.into()),
                port: Some(i32::from(ENDPOINT_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })
        .collect();
    (svcs, slices)
}

/// How many single-EndpointSlice passes are timed (half of them put an endpoint back).
pub const CHANGE_PASSES: usize = 40;

/// Loads the datapath with `cgroup` as its cgroup root and pins under `pins`, then programs
/// `services` from nothing; returns the datapath, the programming time (taking the objects
/// as the watches' first lists, then the first pass: the objects are built before the clock
/// starts, as the watches deliver them)
/// and the sorted times of [`CHANGE_PASSES`] passes that each program one EndpointSlice change.
pub fn load_and_program(
    cgroup: &Path,
    pins: &Path,
    services: &[BenchService],
) -> Result<(Datapath, Duration, Vec<Duration>)> {
    let dp = Datapath::load(DatapathConfig {
        pin_dir: pins.to_path_buf(),
        cgroup_root: cgroup.to_path_buf(),
        node_netns: None,
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "loading the datapath: {e}: {:?}",
            std::error::Error::source(&e)
        )
    })?;
    let (svcs, mut slices) = objects(services);
    let mut programmer = Programmer::new(NodeContext::default());
    let start = Instant::now();
    programmer.load(svcs, slices.iter().cloned());
    programmer.pass(&dp).context("programming the Services")?;
    let took = start.elapsed();
    let state = dp.read_lb().context("reading the maps back")?;
    ensure!(
        state.services.len() == services.len(),
        "the maps hold {} frontends, expected {}",
        state.services.len(),
        services.len()
    );
    let passes = change_passes(&dp, &mut programmer, &mut slices)?;
    Ok((dp, took, passes))
}

/// The agent loop's cost of one EndpointSlice change once everything is programmed: each
/// timed pass takes one watch event replacing the last endpoint of one slice with a fresh
/// address, the next puts it back (so the datapath ends as it started, for the correctness
/// check and the load).
fn change_passes(
    dp: &Datapath,
    programmer: &mut Programmer,
    slices: &mut [EndpointSlice],
) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(CHANGE_PASSES);
    for c in 0..CHANGE_PASSES / 2 {
        let i = (c * 97) % slices.len();
        let last = slices[i]
            .endpoints
            .as_mut()
            .and_then(|e| e.last_mut())
            .context("a bench slice without endpoints")?;
        let original = last.addresses.clone();
        for addresses in [vec![format!("10.244.121.{}", c + 1)], original] {
            if let Some(ep) = slices[i].endpoints.as_mut().and_then(|e| e.last_mut()) {
                ep.addresses = addresses;
            }
            let event = watcher::Event::Apply(slices[i].clone());
            let start = Instant::now();
            programmer.slice_event(event);
            let ops = programmer.pass(dp).context("programming one change")?;
            times.push(start.elapsed());
            ensure!(ops > 0, "a changed endpoint was not programmed");
        }
    }
    times.sort();
    Ok(times)
}
