//! Security identities and policy indexes: numbers every node derives on its own, from the
//! same objects, to the same values, without asking anyone.
//!
//! Cilium allocates identities through a cluster-wide store (CRDs or its kvstore); keelson has
//! no such store, so an identity is a function of what it stands for: a fixed-key SipHash-2-4
//! of a canonical text, reduced into the identity range. SipHash is specified (Aumasson and
//! Bernstein, 2012), so every build, architecture and version agrees (std's `DefaultHasher`
//! promises none of that). Two texts that land on one value are told apart by sorting all
//! texts and giving each, in that order, the next free value from its hash: every node that
//! sees the same objects resolves collisions the same way.
//!
//! - A set of (namespace name, namespace labels, Pod labels) gets an identity in
//!   `[identity::FIRST_LABELS, identity::FIRST_CIDR)`.
//! - An `ipBlock` CIDR (its `cidr` or one of its `except`) gets one in
//!   `[identity::FIRST_CIDR, u32::MAX]`. `0.0.0.0/0` is no CIDR identity: it is WORLD, what the
//!   datapath makes of an address the ipcache has nothing more specific for (as Cilium maps
//!   `0.0.0.0/0` to `reserved:world`).
//! - A NetworkPolicy `namespace/name` gets an index in `[1, u32::MAX]` (0: no policy).

use std::collections::{BTreeSet, HashMap, HashSet};

use keelson_common::policy::identity;
use siphasher::sip::SipHasher24;

use super::model::{Cidr, Labels};

/// The fixed SipHash key. Changing it renumbers every identity of a cluster at once (agents
/// of two versions would disagree on every peer during an upgrade), so it never changes.
const SIP_KEY: (u64, u64) = (0x6b65_656c_736f_6e2d, 0x6964_656e_7469_7479);

/// The label that the API server sets on every Namespace to its name (KEP-2161); the text
/// shown for an identity leaves it out, since the namespace's name is shown already.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What a Pod's identity stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelSet<'a> {
    pub namespace: &'a str,
    pub namespace_labels: &'a Labels,
    pub pod_labels: &'a Labels,
}

impl LabelSet<'_> {
    /// The text the identity is hashed from: `ns=<name>;<pod labels>;ns:<namespace labels>`,
    /// labels as `k=v` sorted by key and joined by commas. Label keys and values, and
    /// namespace names, cannot hold `=`, `,` or `;` (apimachinery's IsQualifiedName,
    /// IsValidLabelValue, IsDNS1123Label), so two different sets never share a text.
    pub fn canonical(&self) -> String {
        self.render(true)
    }

    /// The text the dump tools show (`id_names`): the canonical text without the namespace's
    /// name label, e.g. `ns=shop;app=web,tier=fe` or `ns=shop;app=web;ns:team=a`.
    pub fn text(&self) -> String {
        self.render(false)
    }

    fn render(&self, all_namespace_labels: bool) -> String {
        let mut s = format!("ns={};", self.namespace);
        join_labels(&mut s, self.pod_labels.iter());
        let ns_labels: Vec<(&String, &String)> = self
            .namespace_labels
            .iter()
            .filter(|(k, v)| {
                all_namespace_labels
                    || !(k.as_str() == NAMESPACE_NAME_LABEL && *v == self.namespace)
            })
            .collect();
        if !ns_labels.is_empty() {
            s.push_str(";ns:");
            join_labels(&mut s, ns_labels.into_iter());
        }
        s
    }
}

fn join_labels<'a>(s: &mut String, labels: impl Iterator<Item = (&'a String, &'a String)>) {
    for (i, (k, v)) in labels.enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
}

/// The text of a CIDR identity: `cidr=10.0.0.0/8`.
pub fn cidr_text(cidr: &Cidr) -> String {
    format!("cidr={cidr}")
}

/// Identities of label sets, by canonical text.
pub fn label_identities<'t>(
    canonicals: impl IntoIterator<Item = &'t str>,
) -> HashMap<&'t str, u32> {
    allocate(canonicals, identity::FIRST_LABELS, identity::FIRST_CIDR - 1)
}

/// Identities of CIDRs; `0.0.0.0/0` gets none (it is WORLD).
pub fn cidr_identities<'c>(cidrs: impl IntoIterator<Item = &'c Cidr>) -> HashMap<Cidr, u32> {
    let texts: Vec<(String, Cidr)> = cidrs
        .into_iter()
        .filter(|c| !c.is_everything())
        .map(|c| (cidr_text(c), *c))
        .collect();
    let by_text: HashMap<&str, Cidr> = texts.iter().map(|(t, c)| (t.as_str(), *c)).collect();
    allocate(by_text.keys().copied(), identity::FIRST_CIDR, u32::MAX)
        .into_iter()
        .map(|(t, id)| (by_text[t], id))
        .collect()
}

/// Indexes of policies, by `namespace/name`.
pub fn policy_indexes<'t>(names: impl IntoIterator<Item = &'t str>) -> HashMap<&'t str, u32> {
    allocate(names, 1, u32::MAX)
}

fn hash(text: &str) -> u64 {
    SipHasher24::new_with_keys(SIP_KEY.0, SIP_KEY.1).hash(text.as_bytes())
}

/// Gives every distinct text a value in `[first, last]`: its hash reduced into the range, or
/// on a collision the next free value, texts taken in sorted order.
pub fn allocate<'t>(
    texts: impl IntoIterator<Item = &'t str>,
    first: u32,
    last: u32,
) -> HashMap<&'t str, u32> {
    let sorted: BTreeSet<&str> = texts.into_iter().collect();
    let size = u64::from(last - first) + 1;
    let mut taken: HashSet<u32> = HashSet::with_capacity(sorted.len());
    let mut out = HashMap::with_capacity(sorted.len());
    for text in sorted {
        if taken.len() as u64 >= size {
            // More texts than values (billions): the rest get none.
            break;
        }
        // hash % size < size <= 2^32, so the sum stays within [first, last].
        let mut value = first + (hash(text) % size) as u32;
        while !taken.insert(value) {
            value = if value == last { first } else { value + 1 };
        }
        out.insert(text, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn policy_identity_texts() {
        let ns = labels(&[(NAMESPACE_NAME_LABEL, "shop"), ("team", "a")]);
        let pod = labels(&[("tier", "fe"), ("app", "web")]);
        let set = LabelSet {
            namespace: "shop",
            namespace_labels: &ns,
            pod_labels: &pod,
        };
        assert_eq!(
            set.canonical(),
            "ns=shop;app=web,tier=fe;ns:kubernetes.io/metadata.name=shop,team=a"
        );
        assert_eq!(set.text(), "ns=shop;app=web,tier=fe;ns:team=a");
        let only_name = labels(&[(NAMESPACE_NAME_LABEL, "shop")]);
        let set = LabelSet {
            namespace_labels: &only_name,
            ..set
        };
        assert_eq!(set.text(), "ns=shop;app=web,tier=fe");
        assert_eq!(
            cidr_text(&Cidr::parse("10.0.0.0/8").expect("cidr")),
            "cidr=10.0.0.0/8"
        );
    }

    #[test]
    fn policy_identity_values_are_stable_and_in_range() {
        let a = label_identities(["ns=a;app=x", "ns=a;app=y"]);
        let b = label_identities(["ns=a;app=y", "ns=a;app=x", "ns=a;app=x"]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        for id in a.values() {
            assert!((identity::FIRST_LABELS..identity::FIRST_CIDR).contains(id));
        }
        // The value of a text does not depend on the others while nothing collides.
        assert_eq!(
            label_identities(["ns=a;app=x"])["ns=a;app=x"],
            a["ns=a;app=x"]
        );
        // Pinned: every node and every version computes these very values.
        assert_eq!(a["ns=a;app=x"], 1_563_372_298);
        assert_eq!(
            cidr_identities([&Cidr::parse("10.0.0.0/8").expect("cidr")])
                .into_values()
                .next(),
            Some(3_483_631_127)
        );
        assert_eq!(
            policy_indexes(["default/deny"])["default/deny"],
            487_085_635
        );

        let ten = Cidr::parse("10.0.0.0/8").expect("cidr");
        let all = Cidr::parse("0.0.0.0/0").expect("cidr");
        let c = cidr_identities([&ten, &all, &ten]);
        assert_eq!(c.len(), 1, "0.0.0.0/0 is WORLD");
        assert!(c[&ten] >= identity::FIRST_CIDR);
        assert!(policy_indexes(["ns/p"])["ns/p"] >= 1);
    }

    #[test]
    fn policy_identity_collisions_probe_in_sorted_order() {
        // A range of 3 values for 3 texts: all distinct whatever the hashes, and the same
        // assignment whatever order the texts come in.
        let texts = ["c", "a", "b"];
        let one = allocate(texts, 10, 12);
        let two = allocate(["b", "c", "a"], 10, 12);
        assert_eq!(one, two);
        let mut values: Vec<u32> = one.values().copied().collect();
        values.sort_unstable();
        assert_eq!(values, [10, 11, 12]);
        // The first text in sorted order keeps its own hash's value.
        assert_eq!(one["a"], 10 + (hash("a") % 3) as u32);
        // More texts than values: the extra ones get none.
        assert_eq!(allocate(["a", "b", "c"], 7, 8).len(), 2);
    }
}
