//! `metav1.LabelSelector` matching, compiled once per policy and evaluated against label
//! sets, with apimachinery's semantics (`metav1.LabelSelectorAsSelector`): `matchLabels` and
//! `matchExpressions` are ANDed, the empty selector selects everything.
//!
//! The agent does not link the control plane, so this is its own copy of the rules the API
//! server validates selectors by.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::model::Labels;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Req<'a> {
    Eq(&'a str, &'a str),
    In(&'a str, &'a [String]),
    NotIn(&'a str, &'a [String]),
    Exists(&'a str),
    DoesNotExist(&'a str),
}

impl Req<'_> {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Req::Eq(k, v) => labels.get(*k).is_some_and(|x| x == v),
            Req::In(k, vs) => labels.get(*k).is_some_and(|x| vs.contains(x)),
            Req::NotIn(k, vs) => labels.get(*k).is_none_or(|x| !vs.contains(x)),
            Req::Exists(k) => labels.contains_key(*k),
            Req::DoesNotExist(k) => !labels.contains_key(*k),
        }
    }
}

/// A compiled label selector, borrowing from the `LabelSelector` it was compiled from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector<'a> {
    /// Requirements, all of which must hold; none: everything matches.
    Reqs(Vec<Req<'a>>),
    /// A selector apimachinery cannot convert (an unknown operator, `In` or `NotIn` without
    /// values, `Exists` with values). The API server refuses such policies; one that slipped
    /// through selects nothing rather than everything.
    Invalid,
}

impl<'a> Selector<'a> {
    /// The selector that selects everything (`{}`).
    pub const fn everything() -> Self {
        Selector::Reqs(Vec::new())
    }

    pub fn compile(sel: &'a LabelSelector) -> Self {
        let mut reqs: Vec<Req<'a>> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Req::Eq(k, v))
            .collect();
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.as_deref().unwrap_or_default();
            let key = e.key.as_str();
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => return Selector::Invalid,
                "Exists" | "DoesNotExist" if !values.is_empty() => return Selector::Invalid,
                "In" => Req::In(key, values),
                "NotIn" => Req::NotIn(key, values),
                "Exists" => Req::Exists(key),
                "DoesNotExist" => Req::DoesNotExist(key),
                _ => return Selector::Invalid,
            };
            reqs.push(req);
        }
        Selector::Reqs(reqs)
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Selector::Reqs(reqs) => reqs.iter().all(|r| r.matches(labels)),
            Selector::Invalid => false,
        }
    }

    /// Selects every label set.
    pub fn is_everything(&self) -> bool {
        matches!(self, Selector::Reqs(r) if r.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).into()).collect()),
        }
    }

    fn sel(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn policy_selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        let ok = |s: LabelSelector| Selector::compile(&s).matches(&l);
        assert!(ok(sel(&[], vec![])));
        assert!(Selector::compile(&sel(&[], vec![])).is_everything());
        assert!(ok(sel(&[("app", "web")], vec![])));
        assert!(!ok(sel(&[("app", "web"), ("tier", "be")], vec![])));
        assert!(ok(sel(&[], vec![expr("tier", "In", &["fe", "be"])])));
        assert!(!ok(sel(&[], vec![expr("tier", "In", &["be"])])));
        assert!(!ok(sel(&[], vec![expr("zone", "In", &["a"])])));
        assert!(ok(sel(&[], vec![expr("tier", "NotIn", &["be"])])));
        assert!(ok(sel(&[], vec![expr("zone", "NotIn", &["a"])])));
        assert!(!ok(sel(&[], vec![expr("tier", "NotIn", &["fe"])])));
        assert!(ok(sel(&[], vec![expr("app", "Exists", &[])])));
        assert!(!ok(sel(&[], vec![expr("zone", "Exists", &[])])));
        assert!(ok(sel(&[], vec![expr("zone", "DoesNotExist", &[])])));
        assert!(!ok(sel(&[], vec![expr("app", "DoesNotExist", &[])])));
        // matchLabels and matchExpressions are ANDed.
        assert!(!ok(sel(
            &[("app", "web")],
            vec![expr("tier", "In", &["be"])]
        )));
    }

    #[test]
    fn policy_selector_invalid_selects_nothing() {
        let l = labels(&[("app", "web")]);
        for s in [
            sel(&[], vec![expr("app", "In", &[])]),
            sel(&[], vec![expr("app", "NotIn", &[])]),
            sel(&[], vec![expr("app", "Exists", &["web"])]),
            sel(&[], vec![expr("app", "Matches", &["web"])]),
        ] {
            let s = Selector::compile(&s);
            assert_eq!(s, Selector::Invalid);
            assert!(!s.matches(&l));
            assert!(!s.matches(&Labels::new()));
        }
    }
}
