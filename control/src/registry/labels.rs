//! Label keys, label values and `metav1.LabelSelector` objects validated as apimachinery validates
//! them (pkg/api/validate/content/kube.go IsLabelKey and IsLabelValue, pkg/apis/meta/v1/validation
//! ValidateLabelSelector), with the same messages.

use serde_json::{Value, json};

use super::validation::DNS1123_SUBDOMAIN_MSG;
use crate::api::error::Cause;

/// The pattern of a label key's name part and of a non-empty label value (content/kube.go
/// labelKeyFmt).
const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_MAX_LENGTH: usize = 63;

/// content.MaxLenError.
fn max_len_error(length: usize) -> String {
    format!("must be no more than {length} bytes")
}

/// content.RegexError: the message, the examples and the pattern, in apimachinery's layout.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{msg} (e.g. {}regex used for validation is '{fmt}')",
        examples.join(" or ")
    )
}

/// Whether `s` matches `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]` as a whole.
fn matches_label_pattern(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// Whether `s` matches the RFC 1123 subdomain pattern (labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
/// joined by dots), without its length limits.
fn matches_subdomain_pattern(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

/// The problems of a label key (content.IsLabelKey): an optional RFC 1123 subdomain prefix and
/// `/`, then a name of at most 63 characters. Empty when the key is valid.
pub fn label_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push(format!("prefix part {}", max_len_error(253)));
                }
                if !matches_subdomain_pattern(prefix) {
                    errs.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
                }
            }
            *name
        }
        _ => {
            return vec![format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    LABEL_KEY_ERR,
                    LABEL_KEY_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > LABEL_MAX_LENGTH {
        errs.push(format!("name part {}", max_len_error(LABEL_MAX_LENGTH)));
    }
    if !matches_label_pattern(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                LABEL_KEY_ERR,
                LABEL_KEY_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// The problems of a label value (content.IsLabelValue): empty, or at most 63 characters of the
/// label pattern. Empty when the value is valid.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_MAX_LENGTH {
        errs.push(max_len_error(LABEL_MAX_LENGTH));
    }
    if !value.is_empty() && !matches_label_pattern(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            &format!("({LABEL_KEY_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// ValidateLabelName: one Invalid cause per problem of `key`, at `path`.
fn label_name(key: &str, path: &str, causes: &mut Vec<Cause>) {
    for msg in label_key_errors(key) {
        causes.push(Cause::invalid(path, &json!(key), &msg));
    }
}

/// ValidateLabelSelector of a `metav1.LabelSelector` at `path` (absent or null: nothing to
/// check). `allow_invalid_values` is LabelSelectorValidationOptions'
/// AllowInvalidLabelValueInSelector, which kube-apiserver sets on updates of objects whose stored
/// selector already had invalid values.
pub fn validate_label_selector(
    selector: &Value,
    path: &str,
    allow_invalid_values: bool,
    causes: &mut Vec<Cause>,
) {
    if selector.is_null() {
        return;
    }
    let labels_path = format!("{path}.matchLabels");
    for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
        label_name(k, &labels_path, causes);
        match v.as_str() {
            Some(value) => {
                for msg in label_value_errors(value) {
                    causes.push(Cause::invalid(&labels_path, v, &msg));
                }
            }
            None => causes.push(Cause::invalid(&labels_path, v, "must be a string")),
        }
    }
    let exprs = selector["matchExpressions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, expr) in exprs.iter().enumerate() {
        let epath = format!("{path}.matchExpressions[{i}]");
        let values = expr["values"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let operator = expr["operator"].as_str().unwrap_or_default();
        match operator {
            "In" | "NotIn" if values.is_empty() => causes.push(Cause::required(
                format!("{epath}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => causes.push(Cause::forbidden(
                format!("{epath}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => causes.push(Cause::invalid(
                format!("{epath}.operator"),
                &json!(operator),
                "not a valid selector operator",
            )),
        }
        label_name(
            expr["key"].as_str().unwrap_or_default(),
            &format!("{epath}.key"),
            causes,
        );
        if !allow_invalid_values {
            for (j, v) in values.iter().enumerate() {
                for msg in label_value_errors(v.as_str().unwrap_or_default()) {
                    causes.push(Cause::invalid(format!("{epath}.values[{j}]"), v, &msg));
                }
            }
        }
    }
}

/// Whether a stored selector has problems (kube-apiserver then tolerates invalid values in it on
/// update, ValidationOptionsForNetworking and its kin).
pub fn selector_has_errors(selector: &Value) -> bool {
    let mut causes = Vec::new();
    validate_label_selector(selector, "", false, &mut causes);
    !causes.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_label_keys_and_values() {
        assert!(label_key_errors("app").is_empty());
        assert!(label_key_errors("kubernetes.io/metadata.name").is_empty());
        assert_eq!(
            label_key_errors("bad key"),
            [
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
            ]
        );
        assert_eq!(label_key_errors("").len(), 2);
        assert_eq!(label_key_errors("/a"), ["prefix part must be non-empty"]);
        assert!(
            label_key_errors("Example.com/a")[0]
                .starts_with("prefix part a lowercase RFC 1123 subdomain")
        );
        assert!(label_key_errors("a/b/c")[0].starts_with("a valid label key must consist"));
        assert_eq!(
            label_key_errors(&"a".repeat(64)),
            ["name part must be no more than 63 bytes"]
        );
        assert!(label_value_errors("").is_empty());
        assert!(label_value_errors("my_value.1").is_empty());
        assert_eq!(
            label_value_errors("-x"),
            [
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
            ]
        );
    }

    #[test]
    fn registry_label_selector_causes() {
        let sel = json!({"matchLabels": {"ok": "-bad"}, "matchExpressions": [
            {"key": "a", "operator": "In"},
            {"key": "b", "operator": "Exists", "values": ["x"]},
            {"key": "c!", "operator": "Near", "values": ["x"]},
            {"key": "d", "operator": "NotIn", "values": ["ok", "no!"]},
        ]});
        let mut causes = Vec::new();
        validate_label_selector(&sel, "spec.podSelector", false, &mut causes);
        let got: Vec<(&str, &str)> = causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason))
            .collect();
        assert_eq!(
            got,
            [
                ("spec.podSelector.matchLabels", "FieldValueInvalid"),
                (
                    "spec.podSelector.matchExpressions[0].values",
                    "FieldValueRequired"
                ),
                (
                    "spec.podSelector.matchExpressions[1].values",
                    "FieldValueForbidden"
                ),
                (
                    "spec.podSelector.matchExpressions[2].operator",
                    "FieldValueInvalid"
                ),
                (
                    "spec.podSelector.matchExpressions[2].key",
                    "FieldValueInvalid"
                ),
                (
                    "spec.podSelector.matchExpressions[3].values[1]",
                    "FieldValueInvalid"
                ),
            ]
        );
        assert_eq!(
            causes[3].message,
            "Invalid value: \"Near\": not a valid selector operator"
        );
        let mut tolerant = Vec::new();
        validate_label_selector(&sel, "s", true, &mut tolerant);
        assert_eq!(tolerant.len(), 5);
        assert!(selector_has_errors(&sel));
        assert!(!selector_has_errors(&json!({})));
    }
}
