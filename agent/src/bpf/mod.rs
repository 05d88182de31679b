//! `keelson bpf ...`: reads a node's pinned maps and prints them for people and scripts.

mod policy;

use std::{net::Ipv4Addr, path::Path};

use serde_json::{Value, json};

use keelson_common::{ct_dir, ct_flags, service_flags};

use crate::{
    loader::{Maps, MapsError, maps::ip_from_net},
    services::model::{LbState, Proto},
};

/// What `keelson bpf dump` can show.
pub const DUMPABLE: [&str; 11] = [
    "services",
    "backends",
    "revnat",
    "ct",
    "affinity",
    "maglev",
    "endpoints",
    "metrics",
    "policy",
    "ipcache",
    "identities",
];

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

/// Renders the map `what` (one of [`DUMPABLE`]) pinned under `pin_dir`: one line per entry,
/// or a JSON array with `json`. Entries that belong to a Service show its `namespace/name`.
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
        "ct" => ct(&maps).map_err(maps_err)?,
        "affinity" => affinity(&maps).map_err(maps_err)?,
        "maglev" => maglev(&maps.read_lb().map_err(maps_err)?),
        "endpoints" => endpoints(&maps).map_err(maps_err)?,
        "policy" => policy::policy(&maps).map_err(maps_err)?,
        "ipcache" => policy::ipcache(&maps).map_err(maps_err)?,
        "identities" => policy::identities(&maps).map_err(maps_err)?,
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
            let flags = flag_names(entry.flags);
            if !flags.is_empty() {
                text.push_str(&format!(" [{}]", flags.join(",")));
            }
            let service = state.names.get(&rev_nat_index);
            if let Some(name) = service {
                text = format!("{name:<30} {text}");
            }
            let json = json!({
                "service": service,
                "flags": flags,
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

fn flag_names(flags: u8) -> Vec<&'static str> {
    [
        (service_flags::EXTERNAL, "external"),
        (service_flags::MAGLEV, "maglev"),
        (service_flags::LOCAL, "local"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// Conntrack of per-packet translated flows: each direction as it arrives and what it is
/// rewritten to, with the Service it belongs to.
fn ct(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    let names = maps.read_names()?;
    let now = crate::loader::sys::monotonic_ns();
    Ok(maps
        .read_ct()?
        .into_iter()
        .map(|(k, v)| {
            let proto = Proto::from_number(k.proto).map_or("?", Proto::as_str);
            let dir = if k.dir == ct_dir::REPLY { "reply" } else { "original" };
            let from = sock(k.saddr, k.sport);
            let to = sock(k.daddr, k.dport);
            let nat_from = sock(v.nat_saddr, v.nat_sport);
            let nat_to = sock(v.nat_daddr, v.nat_dport);
            let mut how = Vec::new();
            if v.flags & ct_flags::SNAT != 0 {
                how.push("snat");
            }
            if v.flags & ct_flags::LOCAL_BACKEND != 0 {
                how.push("local-backend");
            }
            let service = names.get(&v.rev_nat_index);
            let idle_s = now.saturating_sub(v.last_seen_ns) / 1_000_000_000;
            Row {
                text: format!(
                    "{proto} {dir:<8} {from} -> {to} => {nat_from} -> {nat_to} backend {} [{}] idle {idle_s}s {}",
                    v.backend_id,
                    how.join(","),
                    service.map_or("", String::as_str),
                ),
                json: json!({
                    "protocol": proto,
                    "direction": dir,
                    "source": from,
                    "destination": to,
                    "nat_source": nat_from,
                    "nat_destination": nat_to,
                    "backend_id": v.backend_id,
                    "rev_nat_index": v.rev_nat_index,
                    "service": service,
                    "snat": v.flags & ct_flags::SNAT != 0,
                    "local_backend": v.flags & ct_flags::LOCAL_BACKEND != 0,
                    "idle_seconds": idle_s,
                }),
            }
        })
        .collect())
}

/// Session-affinity entries: which client sticks to which backend of which Service.
fn affinity(maps: &Maps) -> Result<Vec<Row>, MapsError> {
    let names = maps.read_names()?;
    let lb = maps.read_lb()?;
    let now = crate::loader::sys::monotonic_ns();
    let mut rows: Vec<_> = maps.read_affinity()?;
    rows.sort_by_key(|(k, _)| (k.rev_nat_index, k.client));
    Ok(rows
        .into_iter()
        .map(|(k, v)| {
            // Clients outside the node are keyed by address (high bit set), Pods by their
            // network namespace cookie.
            let client = if k.client & (1 << 63) != 0 {
                Ipv4Addr::from((k.client as u32).to_ne_bytes()).to_string()
            } else {
                format!("netns-cookie:{}", k.client)
            };
            let backend = lb.backends.get(&v.backend_id).map(ToString::to_string);
            let service = names.get(&k.rev_nat_index);
            let idle_s = now.saturating_sub(v.last_used_ns) / 1_000_000_000;
            Row {
                text: format!(
                    "{} client {client} -> backend {} ({}) idle {idle_s}s",
                    service.map_or("?", String::as_str),
                    v.backend_id,
                    backend.as_deref().unwrap_or("gone"),
                ),
                json: json!({
                    "service": service,
                    "rev_nat_index": k.rev_nat_index,
                    "client": client,
                    "backend_id": v.backend_id,
                    "backend": backend,
                    "idle_seconds": idle_s,
                }),
            }
        })
        .collect())
}

/// Maglev tables: each backend's share of the table.
fn maglev(state: &LbState) -> Vec<Row> {
    state
        .maglev
        .iter()
        .map(|((index, proto), table)| {
            let mut share: std::collections::BTreeMap<u32, usize> = Default::default();
            for id in table {
                *share.entry(*id).or_default() += 1;
            }
            let service = state.names.get(index);
            let frontend = state.revnat.get(index).map(|f| {
                std::net::SocketAddr::new(f.address, f.port).to_string() + "/" + proto.as_str()
            });
            let parts: Vec<String> = share
                .iter()
                .map(|(id, n)| {
                    let b = state
                        .backends
                        .get(id)
                        .map_or("gone".to_owned(), ToString::to_string);
                    format!("{b}: {n}")
                })
                .collect();
            Row {
                text: format!(
                    "{} {} table of {}: {}",
                    service.map_or("?", String::as_str),
                    frontend.as_deref().unwrap_or("?"),
                    table.len(),
                    parts.join(", ")
                ),
                json: json!({
                    "service": service,
                    "rev_nat_index": index,
                    "frontend": frontend,
                    "size": table.len(),
                    "share": share.iter().map(|(id, n)| json!({
                        "backend_id": id,
                        "backend": state.backends.get(id).map(ToString::to_string),
                        "slots": n,
                    })).collect::<Vec<_>>(),
                }),
            }
        })
        .collect()
}

fn sock(address: u32, port: u16) -> String {
    std::net::SocketAddrV4::new(ip_from_net(address), u16::from_be(port)).to_string()
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
                "{ip} ifindex {} mac {} host-mac {} identity {}{}",
                ep.ifindex,
                mac(&ep.pod_mac),
                mac(&ep.host_mac),
                ep.identity,
                isolation(ep.flags)
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

/// The policy isolation of an endpoint, as its flags say.
fn isolation(flags: u32) -> &'static str {
    use keelson_common::policy::endpoint_flags::{EGRESS_ISOLATED, INGRESS_ISOLATED};
    match (flags & INGRESS_ISOLATED != 0, flags & EGRESS_ISOLATED != 0) {
        (true, true) => " [isolated: ingress,egress]",
        (true, false) => " [isolated: ingress]",
        (false, true) => " [isolated: egress]",
        (false, false) => "",
    }
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
