//! ClusterRole aggregation, as kube-controller-manager's clusterrole-aggregation controller
//! (pkg/controller/clusterroleaggregation): a ClusterRole with an `aggregationRule` holds the
//! rules of every other ClusterRole its `clusterRoleSelectors` select, in name order, without
//! repeats. Aggregated roles can themselves be selected (`view` feeds `edit`, `edit` feeds
//! `admin`), so any ClusterRole change looks at every aggregated role again until they settle.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::objects::selector_matches;
use super::runtime::{Controller, Informers, Reconciler, Requeue, Touch, WorkQueue, key_of};

/// The rules `role` should hold, or `None` when it is not aggregated or already holds them.
pub fn plan(role: &ClusterRole, all: &[&ClusterRole]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .as_ref()?;
    let mut sources: Vec<&ClusterRole> = all
        .iter()
        .copied()
        .filter(|c| c.metadata.name != role.metadata.name)
        .filter(|c| {
            selectors
                .iter()
                .any(|s| selector_matches(s, c.metadata.labels.as_ref()))
        })
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    for rule in sources.iter().flat_map(|c| c.rules.iter().flatten()) {
        if !rules.contains(rule) {
            rules.push(rule.clone());
        }
    }
    (role.rules.as_deref().unwrap_or_default() != rules.as_slice()).then_some(rules)
}

/// The aggregation loop.
pub(crate) struct AggregationLoop {
    client: Client,
    roles: Store<ClusterRole>,
}

impl Reconciler for AggregationLoop {
    async fn reconcile(&mut self, key: &str) -> Result<Requeue, kube::Error> {
        let Some(role) = self.roles.get(&ObjectRef::new(key)) else {
            return Ok(None);
        };
        let state = self.roles.state();
        let all: Vec<&ClusterRole> = state.iter().map(|r| &**r).collect();
        let Some(rules) = plan(&role, &all) else {
            return Ok(None);
        };
        let api: Api<ClusterRole> = Api::all(self.client.clone());
        api.patch(
            key,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "rules": rules })),
        )
        .await?;
        Ok(None)
    }
}

/// The aggregation controller: every aggregated ClusterRole's key on any ClusterRole change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AggregationController;

impl Controller for AggregationController {
    const NAME: &'static str = "clusterrole-aggregation";
    type Loop = AggregationLoop;

    fn wire(self, informers: &mut Informers, queue: &WorkQueue) -> AggregationLoop {
        let roles = informers.all::<ClusterRole>();
        let store = roles.store();
        let q = queue.clone();
        let watched = store.clone();
        roles.on(move |t| {
            if matches!(
                t,
                Touch::Changed(_) | Touch::Deleted(_) | Touch::Relisted(_)
            ) {
                for r in watched.state() {
                    if r.aggregation_rule.is_some() {
                        q.add(key_of(&*r));
                    }
                }
            }
        });
        AggregationLoop {
            client: informers.client().clone(),
            roles: store,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::rbac::v1::AggregationRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    use super::*;

    fn role(
        name: &str,
        labels: &[(&str, &str)],
        verbs: &[&str],
        selects: Option<&str>,
    ) -> ClusterRole {
        ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            rules: (!verbs.is_empty()).then(|| {
                vec![PolicyRule {
                    verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["pods".into()]),
                    ..Default::default()
                }]
            }),
            aggregation_rule: selects.map(|label| AggregationRule {
                cluster_role_selectors: Some(vec![LabelSelector {
                    match_labels: Some([(label.to_owned(), "true".to_owned())].into()),
                    ..Default::default()
                }]),
            }),
        }
    }

    #[test]
    fn an_aggregated_role_holds_the_rules_of_what_it_selects() {
        let view = role("view", &[("to-edit", "true")], &[], Some("to-view"));
        let reads = role("reads", &[("to-view", "true")], &["get"], None);
        let other = role("other", &[], &["delete"], None);
        let all = [&view, &reads, &other];
        let rules = plan(&view, &all).expect("view gets the reads");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].verbs, ["get"]);
        // Settled: nothing to do.
        let mut settled = view.clone();
        settled.rules = Some(rules);
        assert_eq!(plan(&settled, &[&settled, &reads, &other]), None);
        // Not aggregated: never touched.
        assert_eq!(plan(&reads, &all), None);
        // An aggregated role selected by another feeds it once it holds rules.
        let edit = role("edit", &[], &[], Some("to-edit"));
        let rules = plan(&edit, &[&edit, &settled, &reads]).expect("edit gets view's");
        assert_eq!(rules[0].verbs, ["get"]);
    }
}
