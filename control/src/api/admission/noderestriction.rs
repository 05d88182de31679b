//! NodeRestriction's checks of a node's writes that need the object's body
//! (plugin/pkg/admission/noderestriction): a node creates only its own Node. The checks that
//! need only the request's target (whose Node, Lease or Pod) are the Node authorizer's
//! (`api::authz::node`).

use serde_json::Value;

use crate::{api::error::ApiError, registry::ResourceInfo};

/// Admits `obj`, written by `node`.
pub fn admit(node: &str, info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    if info.group.is_empty() && info.plural == "nodes" {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if name != node {
            return Err(ApiError::Forbidden {
                group: String::new(),
                kind: "nodes".into(),
                name: name.to_owned(),
                message: format!(
                    "nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\""
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_node_creates_only_itself() {
        let nodes = crate::registry::lookup("", "v1", "nodes").expect("nodes");
        assert!(admit("n1", nodes, &json!({"metadata": {"name": "n1"}})).is_ok());
        let e = admit("n1", nodes, &json!({"metadata": {"name": "n2"}})).expect_err("other");
        assert!(
            e.to_string()
                .contains("node \"n1\" is not allowed to modify node \"n2\"")
        );
        let pods = crate::registry::lookup("", "v1", "pods").expect("pods");
        assert!(admit("n1", pods, &json!({"metadata": {"name": "n2"}})).is_ok());
    }
}
