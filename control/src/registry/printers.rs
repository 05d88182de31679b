//! The helpers of server-side printing that kinds' Table rows share (human durations, `<none>`,
//! selectors, container lists), as in kube-apiserver's pkg/printers/internalversion/printers.go.

use serde_json::{Value, json};

/// A Table column: (name, type, priority). Priority 1 columns show with `-o wide`.
pub type Column = (&'static str, &'static str, u8);

/// Kubernetes' HumanDuration (apimachinery/pkg/util/duration).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (mins, hours, days) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if mins < 10 {
        if secs % 60 == 0 {
            format!("{mins}m")
        } else {
            format!("{mins}m{}s", secs % 60)
        }
    } else if mins < 180 {
        format!("{mins}m")
    } else if hours < 8 {
        if mins % 60 == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{}m", mins % 60)
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 192 {
        if hours % 24 == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{}h", hours % 24)
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        let years = days / 365;
        if days % 365 == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{}d", days % 365)
        }
    } else {
        format!("{}y", days / 365)
    }
}

/// How long ago RFC 3339 time `t` was, as kubectl shows it; `<unknown>` without a valid time.
pub fn since(t: Option<&str>) -> String {
    t.and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map_or_else(
            || "<unknown>".into(),
            |t| human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        )
}

/// The AGE column: since `metadata.creationTimestamp`.
pub fn age(obj: &Value) -> String {
    since(obj["metadata"]["creationTimestamp"].as_str())
}

/// A value as a cell string ("" for null).
pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An integer (0 when absent).
pub fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// `<none>` for an empty cell.
pub fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

/// An array's items (none when absent).
pub fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// The entries of a map (`data`, `binaryData`), 0 when absent.
pub fn entries(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

/// The object's name cell.
pub fn name(obj: &Value) -> Value {
    json!(s(&obj["metadata"]["name"]))
}

/// A string map as `k1=v1,k2=v2` (a Service selector, a nodeSelector), `<none>` when empty.
pub fn key_values(v: &Value) -> String {
    let pairs: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    or_none(pairs.join(","))
}

/// A label selector as kubectl prints it, `<none>` when empty.
pub fn selector_string(sel: &Value) -> String {
    or_none(crate::api::selectors::label_selector_string(sel))
}

/// The columns of a Deployment or ReplicaSet after its counts, filled by [`template_cells`].
pub const TEMPLATE_COLUMNS: [Column; 4] = [
    ("Age", "string", 0),
    ("Containers", "string", 1),
    ("Images", "string", 1),
    ("Selector", "string", 1),
];

fn containers_images(tpl_spec: &Value) -> (String, String) {
    let cs = arr(&tpl_spec["containers"]);
    (
        cs.iter()
            .map(|c| s(&c["name"]))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(&c["image"]))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The cells of a Deployment or ReplicaSet: its name and three counts, then
/// [`TEMPLATE_COLUMNS`] (age, and the containers, images and selector of its template).
pub fn template_cells(o: &Value, counts: [Value; 3]) -> Vec<Value> {
    let spec = &o["spec"];
    let (containers, images) = containers_images(&spec["template"]["spec"]);
    let mut cells = vec![name(o)];
    cells.extend(counts);
    cells.extend([
        json!(age(o)),
        json!(containers),
        json!(images),
        json!(selector_string(&spec["selector"])),
    ]);
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_printers_human_duration() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(3600 * 3 + 60), "3h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
