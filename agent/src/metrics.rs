//! The agent's Prometheus metrics (`GET /metrics` on the agent API): the datapath's per-CPU
//! counters (drops by reason, events), read from the pinned `metrics` map at scrape time, and
//! the map writes the agent could not make because a map was full.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::loader::{Datapath, MapsError, MetricKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: String,
    direction: String,
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
    let verdicts = Family::<VerdictLabels, Counter>::default();
    let forwarded = Family::<DirectionLabels, Counter>::default();
    for sample in dp.metrics()? {
        match sample.kind {
            MetricKind::Drop => {
                let l = ReasonLabels {
                    reason: sample.name.to_owned(),
                    direction: sample.direction.to_owned(),
                };
                drop_packets.get_or_create(&l).inc_by(sample.packets);
                drop_bytes.get_or_create(&l).inc_by(sample.bytes);
                if sample.name == "policy_denied" {
                    verdicts
                        .get_or_create(&VerdictLabels {
                            verdict: "dropped".into(),
                            direction: sample.direction.to_owned(),
                        })
                        .inc_by(sample.packets);
                }
            }
            MetricKind::Count => {
                let (verdict_dir, forward_dir) = match sample.name {
                    "policy_allowed_ingress" => (Some("ingress"), None),
                    "policy_allowed_egress" => (Some("egress"), None),
                    "forwarded_ingress" => (None, Some("ingress")),
                    "forwarded_egress" => (None, Some("egress")),
                    _ => (None, None),
                };
                if let Some(direction) = verdict_dir {
                    verdicts
                        .get_or_create(&VerdictLabels {
                            verdict: "allowed".into(),
                            direction: direction.into(),
                        })
                        .inc_by(sample.packets);
                }
                if let Some(direction) = forward_dir {
                    forwarded
                        .get_or_create(&DirectionLabels {
                            direction: direction.into(),
                        })
                        .inc_by(sample.packets);
                }
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
        "datapath_forwarded",
        "Packets delivered to (ingress) or sent by (egress) local Pods",
        forwarded,
    );
    registry.register(
        "policy_verdicts",
        "NetworkPolicy verdicts on new flows of isolated Pods (allowed) and on refused packets (dropped)",
        verdicts,
    );
    let fill = Family::<MapLabels, Gauge>::default();
    let capacity = Family::<MapLabels, Gauge>::default();
    for (map, entries, max) in dp.map_fill()? {
        let l = MapLabels {
            map: map.to_owned(),
        };
        fill.get_or_create(&l)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        capacity.get_or_create(&l).set(i64::from(max));
    }
    registry.register("map_entries", "Entries a datapath map holds", fill);
    registry.register("map_capacity", "Entries a datapath map can hold", capacity);
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
