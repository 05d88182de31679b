//! Label and field selectors of list and watch requests (`?labelSelector=` and `?fieldSelector=`),
//! and matching of `metav1.LabelSelector` objects (workload selectors against template labels).

use serde_json::Value;

use super::error::ApiError;

/// One requirement of a label selector string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector` (requirements ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelReq>);

/// Splits at commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(rest: &str) -> Option<Vec<String>> {
    let rest = rest.trim();
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::BadRequest(format!(
                "unable to parse requirement: invalid label selector: {s:?}"
            ))
        };
        let mut reqs = Vec::new();
        for part in split_top(s)
            .into_iter()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let req = if let Some(key) = part.strip_prefix('!') {
                LabelReq::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some(idx) = part.find(" notin ") {
                LabelReq::NotIn(
                    part[..idx].trim().to_string(),
                    parse_set(&part[idx + 7..]).ok_or_else(bad)?,
                )
            } else if let Some(idx) = part.find(" in ") {
                LabelReq::In(
                    part[..idx].trim().to_string(),
                    parse_set(&part[idx + 4..]).ok_or_else(bad)?,
                )
            } else if part.contains(' ') || part.contains('(') {
                return Err(bad());
            } else {
                LabelReq::Exists(part.to_string())
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether `labels` (a JSON map or null) satisfies every requirement.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed `fieldSelector`: `path=value` / `path!=value` pairs, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `metadata.name=x,spec.nodeName!=y`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, eq, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector: {s:?}"
                )));
            };
            reqs.push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    /// Whether `obj` satisfies every requirement; an absent field compares as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let mut cur = obj;
            for seg in path.split('.') {
                cur = &cur[seg];
            }
            let have = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

/// Whether a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`) selects `labels`.
pub fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let labels_ok = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let exprs_ok = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str().unwrap_or_default() {
                "In" => get(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => get(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => get(key).is_some(),
                "DoesNotExist" => get(key).is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

/// The requirements of a `metav1.LabelSelector` as apimachinery's `labels.Selector` prints them
/// (metav1.LabelSelectorAsSelector, then Requirement.String): sorted by key, values sorted.
/// `None` when the selector cannot be converted (an unknown operator, `In`/`NotIn` without values).
fn selector_requirements(selector: &Value) -> Option<Vec<(String, String)>> {
    let mut reqs: Vec<(String, String)> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())))
        .collect();
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let mut values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let req = match e["operator"].as_str().unwrap_or_default() {
            "In" | "NotIn" if values.is_empty() => return None,
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        };
        reqs.push((key.to_string(), req));
    }
    // internalSelector.Add sorts by key; a stable sort keeps matchLabels first on a tie.
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Some(reqs)
}

/// The string form of a `metav1.LabelSelector` (what Scale.status.selector carries), e.g.
/// `app=web,tier in (a,b)`; empty for the empty selector or one that cannot be converted.
pub fn label_selector_string(selector: &Value) -> String {
    selector_requirements(selector)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(",")
}

/// metav1.FormatLabelSelector, as kubectl's columns show a selector: its string form, `<none>`
/// when it selects everything, `<error>` when it cannot be converted.
pub fn format_label_selector(selector: &Value) -> String {
    match selector_requirements(selector) {
        None => "<error>".into(),
        Some(reqs) if reqs.is_empty() => "<none>".into(),
        Some(reqs) => reqs
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_label_selector_operators() {
        let labels = json!({"app": "web", "tier": "fe"});
        let ok = |s: &str| LabelSelector::parse(s).expect("parses").matches(&labels);
        assert!(ok("app=web"));
        assert!(ok("app==web,tier!=be"));
        assert!(ok("app in (web, api),tier"));
        assert!(!ok("app notin (web)"));
        assert!(ok("!missing"));
        assert!(!ok("missing"));
        assert!(!ok("app=api"));
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn api_field_selector_paths() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let ok = |s: &str| FieldSelector::parse(s).expect("parses").matches(&pod);
        assert!(ok("metadata.name=p,metadata.namespace=ns"));
        assert!(ok("spec.nodeName=n1,status.phase!=Pending"));
        assert!(!ok("spec.nodeName="));
        assert!(FieldSelector::parse("bogus").is_err());
    }

    #[test]
    fn api_label_selector_object() {
        let sel = json!({"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "t", "operator": "In", "values": ["a"]}]});
        assert!(label_selector_matches(&sel, &json!({"app": "x", "t": "a"})));
        assert!(!label_selector_matches(&sel, &json!({"app": "x"})));
        assert_eq!(label_selector_string(&sel), "app=x,t in (a)");
    }

    #[test]
    fn api_label_selector_format_is_apimachinery_s() {
        let sel = json!({"matchLabels": {"tier": "fe", "app": "web"}, "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "dev"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "NotIn", "values": ["b", "a"]},
            {"key": "gpu", "operator": "Exists"}]});
        assert_eq!(
            format_label_selector(&sel),
            "app=web,!canary,env in (dev,prod),gpu,tier=fe,zone notin (a,b)"
        );
        assert_eq!(format_label_selector(&json!({})), "<none>");
        assert_eq!(
            format_label_selector(&json!({"matchLabels": {}, "matchExpressions": []})),
            "<none>"
        );
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "Near"}]});
        assert_eq!(format_label_selector(&bad), "<error>");
        assert_eq!(label_selector_string(&bad), "");
    }
}
