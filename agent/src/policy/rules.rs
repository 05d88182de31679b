//! One NetworkPolicy read into what the compiler evaluates: its Pod selector, its policy
//! types and its rules, each with its peers and ports, with the defaults of the
//! networking.k8s.io/v1 API applied and input the API server refuses reduced to "allows
//! nothing" rather than "allows everything".

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};

use super::{model::Cidr, ports::PortSpec, selector::Selector};

/// A policy ready to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy<'a> {
    /// `namespace/name`.
    pub key: &'a str,
    pub namespace: &'a str,
    /// Which Pods of `namespace` it applies to.
    pub pod_selector: Selector<'a>,
    /// Its ingress rules if its types include Ingress (an empty list: nothing is allowed in).
    pub ingress: Option<Vec<Rule<'a>>>,
    /// Likewise for Egress.
    pub egress: Option<Vec<Rule<'a>>>,
}

/// One ingress or egress rule: traffic to or from any of its peers on any of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule<'a> {
    pub peers: Peers<'a>,
    pub ports: Ports<'a>,
}

/// The peers of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers<'a> {
    /// `from`/`to` unset or empty: "this rule matches all sources/destinations".
    Any,
    List(Vec<Peer<'a>>),
}

/// One `from`/`to` item.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer<'a> {
    /// `podSelector` and/or `namespaceSelector`: Pods of some namespaces with some labels.
    Pods {
        namespaces: Namespaces<'a>,
        pods: Selector<'a>,
    },
    /// `ipBlock`.
    Block { cidr: Cidr, except: Vec<Cidr> },
    /// An item the API server refuses (no field set, `ipBlock` beside a selector, a CIDR that
    /// does not parse) or an IPv6 `ipBlock`, which this IPv4 datapath has no addresses for.
    Nothing,
}

/// Which namespaces a [`Peer::Pods`] looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Namespaces<'a> {
    /// `namespaceSelector` unset: the policy's own namespace.
    Own,
    /// The namespaces whose labels match.
    Matching(Selector<'a>),
}

/// The ports of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports<'a> {
    /// `ports` unset or empty: every protocol and port.
    Any,
    /// Each item that reads ([`PortSpec::from_k8s`]); none left: nothing is allowed.
    List(Vec<PortSpec<'a>>),
}

const INGRESS: &str = "Ingress";
const EGRESS: &str = "Egress";

impl<'a> CompiledPolicy<'a> {
    /// Reads a policy stored under `key`; `None` without a spec.
    pub fn compile(key: &'a str, np: &'a NetworkPolicy) -> Option<Self> {
        let spec = np.spec.as_ref()?;
        let namespace = np.metadata.namespace.as_deref().unwrap_or("default");
        // NetworkPolicySpec.policyTypes: unset, it is Ingress, plus Egress when the policy
        // has egress rules (the API server defaults it so on create; older objects and other
        // servers may not have).
        let egress_rules = spec.egress.as_deref().unwrap_or_default();
        let (ingress, egress) = match spec.policy_types.as_deref() {
            Some(types) if !types.is_empty() => (
                types.iter().any(|t| t == INGRESS),
                types.iter().any(|t| t == EGRESS),
            ),
            _ => (true, !egress_rules.is_empty()),
        };
        let ingress = ingress.then(|| {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| Rule::new(r.from.as_deref(), r.ports.as_deref()))
                .collect()
        });
        let egress = egress.then(|| {
            egress_rules
                .iter()
                .map(|r| Rule::new(r.to.as_deref(), r.ports.as_deref()))
                .collect()
        });
        Some(Self {
            key,
            namespace,
            // An unset podSelector is the empty one: every Pod of the namespace.
            pod_selector: spec
                .pod_selector
                .as_ref()
                .map_or(Selector::everything(), Selector::compile),
            ingress,
            egress,
        })
    }

    /// Every CIDR its ipBlocks name (`cidr` and `except`).
    pub fn cidrs(&self) -> impl Iterator<Item = &Cidr> {
        self.ingress
            .iter()
            .chain(&self.egress)
            .flatten()
            .flat_map(|r| match &r.peers {
                Peers::Any => &[][..],
                Peers::List(peers) => peers.as_slice(),
            })
            .flat_map(|p| match p {
                Peer::Block { cidr, except } => std::slice::from_ref(cidr).iter().chain(except),
                _ => [].iter().chain(&[]),
            })
    }
}

impl<'a> Rule<'a> {
    fn new(peers: Option<&'a [NetworkPolicyPeer]>, ports: Option<&'a [NetworkPolicyPort]>) -> Self {
        let peers = match peers {
            None | Some([]) => Peers::Any,
            Some(list) => Peers::List(list.iter().map(Peer::from_k8s).collect()),
        };
        let ports = match ports {
            None | Some([]) => Ports::Any,
            Some(list) => Ports::List(list.iter().filter_map(PortSpec::from_k8s).collect()),
        };
        Self { peers, ports }
    }
}

impl<'a> Peer<'a> {
    fn from_k8s(p: &'a NetworkPolicyPeer) -> Self {
        if let Some(block) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return Peer::Nothing;
            }
            let Some(cidr) = Cidr::parse(&block.cidr) else {
                return Peer::Nothing;
            };
            let mut except = Vec::new();
            for e in block.except.iter().flatten() {
                // An except that does not parse: the block allows nothing, rather than the
                // addresses its author meant to keep out.
                let Some(e) = Cidr::parse(e) else {
                    return Peer::Nothing;
                };
                except.push(e);
            }
            return Peer::Block { cidr, except };
        }
        match (&p.namespace_selector, &p.pod_selector) {
            (None, None) => Peer::Nothing,
            (None, Some(pods)) => Peer::Pods {
                namespaces: Namespaces::Own,
                pods: Selector::compile(pods),
            },
            // Both set: Pods matching podSelector in namespaces matching namespaceSelector.
            (Some(ns), pods) => Peer::Pods {
                namespaces: Namespaces::Matching(Selector::compile(ns)),
                pods: pods
                    .as_ref()
                    .map_or(Selector::everything(), Selector::compile),
            },
        }
    }
}
