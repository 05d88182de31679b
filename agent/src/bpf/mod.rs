//! `keelson bpf ...`: reads a node's pinned maps and prints them for people and scripts.

use std::{net::Ipv4Addr, path::Path};

use serde_json::{Value, json};

use crate::{
    loader::{Maps, MapsError},
    services::model::LbState,
};

/// What `keelson bpf dump` can show.
pub const DUMPABLE: [&str; 5] = ["services", "backends", "revnat", "endpoints", "metrics"];

/// Errors of reading pinned maps.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("bpf dump: {0}")]
    Other(String),
    #[error("unknown map {0:?}; known: {known}", known = DUMPABLE.join(", "))]
    UnknownMap(String),
    #[error(
        "no datapath pinned under {0} (is the agent running, and is this the node's pin directory?)"
    )]
    NotPinned(String),
    #[error("reading the pinned maps under {pin_dir}")]
    Maps {
        pin_dir: String,
        #[source]
        source: Box<MapsError>,
    },
}

/// Renders the map `what` (services, backends, revnat, endpoints, metrics) pinned under
/// `pin_dir`: one line per entry, or a JSON array with `json`.
pub fn dump(pin_dir: &Path, what: &str, json: bool) -> Result<String, DumpError> {
    if !DUMPABLE.contains(&what) {
        return Err(DumpError::UnknownMap(what.to_owned()));
    }
    if !pin_dir.join(keelson_common::names::SERVICES).exists() {
        return Err(DumpError::NotPinned(pin_dir.display().to_string()));
    }
    let maps_err = |source: MapsError| DumpError::Maps {
        pin_dir: pin_dir.display().to_string(),
        source: Box::new(source),
    };
    let maps = Maps::open_pinned(pin_dir).map_err(maps_err)?;
    let rows = match what {
        "services" => services(&maps.read_lb().map_err(maps_err)?),
        "backends" => backends(&maps.read_lb().map_err(maps_err)?),
        "revnat" => revnat(&maps.read_lb().map_err(maps_err)?),
        "endpoints" => endpoints(&maps).map_err(maps_err)?,
        _ => metrics(&maps).map_err(maps_err)?,
    };
    Ok(render(rows, json))
}

/// One entry: its human line and its JSON object.
struct Row {
    text: String,
    json: Value,
}

fn render(rows: Vec<Row>, json: bool) -> String {
    if json {
        let array: Vec<Value> = rows.into_iter().map(|r| r.json).collect();
        let mut out = serde_json::to_string_pretty(&Value::Array(array)).unwrap_or_default();
        out.push('\n');
        out
    } else {
        rows.into_iter().map(|r| r.text + "\n").collect()
    }
}

fn services(state: &LbState) -> Vec<Row> {
    state
        .services
        .iter()
        .map(|(frontend, entry)| {
            let (count, rev_nat_index) = entry.master.unwrap_or((0, 0));
            let backends: Vec<(u16, Option<u32>)> = (1..=count)
                .map(|slot| (slot, entry.slots.get(&slot).copied()))
                .collect();
            let shown: Vec<String> = backends
                .iter()
                .map(
                    |(slot, id)| match id.and_then(|id| state.backends.get(&id)) {
                        Some(b) => std::net::SocketAddr::new(b.address, b.port).to_string(),
                        None => format!("<slot {slot}: missing>"),
                    },
                )
                .collect();
            let mut text = format!("{frontend} -> ");
            if entry.master.is_none() {
                text.push_str("<no master entry>");
            } else if shown.is_empty() {
                text.push_str("<no backends: connections refused>");
            } else {
                text.push_str(&shown.join(", "));
            }
            if let Some(timeout) = entry.affinity {
                text.push_str(&format!(" (affinity {timeout}s)"));
            }
            let json = json!({
                "frontend": frontend.to_string(),
                "address": frontend.address.to_string(),
                "port": frontend.port,
                "protocol": frontend.proto.as_str(),
                "rev_nat_index": rev_nat_index,
                "affinity_timeout_seconds": entry.affinity,
                "backends": backends.iter().map(|(slot, id)| {
                    let b = id.and_then(|id| state.backends.get(&id));
                    json!({
                        "slot": slot,
                        "id": id,
                        "address": b.map(|b| b.address.to_string()),
                        "port": b.map(|b| b.port),
                    })
                }).collect::<Vec<_>>(),
            });
            Row { text, json }
        })
        .collect()
}

fn backends(state: &LbState) -> Vec<Row> {
    state
        .backends
        .iter()
        .map(|(id, b)| Row {
            text: format!("id {id}: {b}"),
            json: json!({
                "id": id,
                "address": b.address.to_string(),
                "port": b.port,
                "protocol": b.proto.as_str(),
            }),
        })
        .collect()
}

fn revnat(state: &LbState) -> Vec<Row> {
    state
        .revnat
        .iter()
        .map(|(index, f)| Row {
            text: format!(
                "index {index}: {}",
                std::net::SocketAddr::new(f.address, f.port)
            ),
            json: json!({ "index": index, "address": f.address.to_string(), "port": f.port }),
        })
        .collect()
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn endpoints(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    Ok(maps
        .read_endpoints()?
        .into_iter()
        .map(|(ip, ep): (Ipv4Addr, _)| Row {
            text: format!(
                "{ip} ifindex {} mac {} host-mac {} identity {}",
                ep.ifindex,
                mac(&ep.pod_mac),
                mac(&ep.host_mac),
                ep.identity
            ),
            json: json!({
                "address": ip.to_string(),
                "ifindex": ep.ifindex,
                "mac": mac(&ep.pod_mac),
                "host_mac": mac(&ep.host_mac),
                "identity": ep.identity,
                "flags": ep.flags,
            }),
        })
        .collect())
}

fn metrics(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    Ok(maps
        .read_metrics()?
        .into_iter()
        .map(|m| Row {
            text: format!(
                "{} {}: {} packets {} bytes",
                m.kind.as_str(),
                m.name,
                m.packets,
                m.bytes
            ),
            json: json!({
                "kind": m.kind.as_str(),
                "name": m.name,
                "packets": m.packets,
                "bytes": m.bytes,
            }),
        })
        .collect())
}

#[cfg(test)]
mod tests;
