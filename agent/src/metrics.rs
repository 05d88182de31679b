//! The agent's Prometheus metrics (`GET /metrics` on the agent API): the datapath's per-CPU
//! counters (drops by reason, events), read from the pinned `metrics` map at scrape time, and
//! the map writes the agent could not make because a map was full.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::loader::{Datapath, MapsError, MetricKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

/// Renders every metric in the Prometheus text format (OpenMetrics flavour of
/// prometheus-client).
pub fn render(dp: &Datapath) -> Result<String, MapsError> {
    let mut registry = Registry::with_prefix("keelson");
    let drop_packets = Family::<ReasonLabels, Counter>::default();
    let drop_bytes = Family::<ReasonLabels, Counter>::default();
    let event_packets = Family::<EventLabels, Counter>::default();
    let event_bytes = Family::<EventLabels, Counter>::default();
    for sample in dp.metrics()? {
        match sample.kind {
            MetricKind::Drop => {
                let l = ReasonLabels {
                    reason: sample.name.to_owned(),
                };
                drop_packets.get_or_create(&l).inc_by(sample.packets);
                drop_bytes.get_or_create(&l).inc_by(sample.bytes);
            }
            MetricKind::Count => {
                let l = EventLabels {
                    event: sample.name.to_owned(),
                };
                event_packets.get_or_create(&l).inc_by(sample.packets);
                event_bytes.get_or_create(&l).inc_by(sample.bytes);
            }
        }
    }
    let map_full = Family::<MapLabels, Counter>::default();
    // Every map is listed, at 0 until it refuses a write, so alerts need no absent() rules.
    for map in keelson_common::names::ALL {
        map_full
            .get_or_create(&MapLabels {
                map: (*map).to_owned(),
            })
            .inc_by(0);
    }
    for (map, n) in dp.map_full_counts() {
        map_full
            .get_or_create(&MapLabels {
                map: map.to_owned(),
            })
            .inc_by(n);
    }
    registry.register(
        "datapath_drops",
        "Packets and socket calls the datapath refused, by reason",
        drop_packets,
    );
    registry.register(
        "datapath_drop_bytes",
        "Bytes of the packets the datapath refused, by reason",
        drop_bytes,
    );
    registry.register(
        "datapath_events",
        "What the datapath did (translations, deliveries), by event",
        event_packets,
    );
    registry.register(
        "datapath_event_bytes",
        "Bytes of the packets counted in datapath_events",
        event_bytes,
    );
    registry.register(
        "map_full",
        "Map writes the agent could not make because the map was full",
        map_full,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    Ok(out)
}
