//! The policy model: every kind of policy (Kubernetes NetworkPolicy, brindle NetworkPolicy and
//! GlobalNetworkPolicy) as one ordered list of tiers of policies with normalised rules, and
//! which of them apply to an endpoint. Pure: the agent compiles it into the dataplane, and
//! diagnose explains a verdict with it.
//!
//! Semantics are Calico's: tiers in order, policies in a tier by `order` then name; the first
//! rule that matches decides (`Log` logs and goes on, `Pass` skips to the next tier); a tier
//! with policies that apply but no rule that matched denies; an endpoint that no policy
//! selects for a direction is not isolated in it. A Kubernetes NetworkPolicy is a policy of the
//! `default` tier at order 1000 whose rules allow, as Calico converts it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::resource::{
    Action, DEFAULT_TIER, DEFAULT_TIER_ORDER, EndpointPort, EntityRule, GlobalNetworkPolicy, IcmpMatch, IntOrString,
    KubernetesNetworkPolicy, LabelSelector, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, PolicySpec, PortMatch,
    Resource, Rule, Tier, WorkloadEndpoint,
};
use crate::selector::Selector;

/// The order Kubernetes NetworkPolicies take in the default tier (Calico's).
pub const KUBERNETES_POLICY_ORDER: f64 = 1000.0;

/// The label a service account's name is matched by in a `serviceAccountSelector`.
pub const SERVICE_ACCOUNT_NAME_LABEL: &str = "brindle.io/name";

/// Which policy a rule came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    /// `NetworkPolicy`, `GlobalNetworkPolicy` or `KubernetesNetworkPolicy`.
    pub kind: &'static str,
    /// The namespace of a namespaced policy.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// The namespaces a selection looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamespaceScope {
    /// Every namespace.
    Any,
    /// This one.
    Named(String),
    /// Those whose labels this selector (its source) selects.
    Selected(String),
}

/// A set of endpoints: by namespace, labels and service account. Its `Display` form is its
/// identity (the dataplane names sets after it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selection {
    /// Where.
    pub namespaces: NamespaceScope,
    /// The endpoints' labels (a selector's source; `all()` for all).
    pub selector: String,
    /// Service account names, any of which; empty for any account.
    pub service_accounts: Vec<String>,
    /// A selector over the service account's labels (its name as [`SERVICE_ACCOUNT_NAME_LABEL`]).
    pub service_account_selector: Option<String>,
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespaces {
            NamespaceScope::Any => f.write_str("any namespace")?,
            NamespaceScope::Named(ns) => write!(f, "namespace {ns}")?,
            NamespaceScope::Selected(s) => write!(f, "namespaces {s}")?,
        }
        write!(f, ", endpoints {}", self.selector)?;
        if !self.service_accounts.is_empty() {
            write!(f, ", service accounts {}", self.service_accounts.join(","))?;
        }
        if let Some(s) = &self.service_account_selector {
            write!(f, ", service accounts {s}")?;
        }
        Ok(())
    }
}

/// An endpoint as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct EndpointView<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its service account.
    pub service_account: Option<&'a str>,
    /// Its named ports.
    pub ports: &'a [EndpointPort],
}

impl<'a> EndpointView<'a> {
    /// The view of a WorkloadEndpoint.
    pub fn of(endpoint: &'a Resource<WorkloadEndpoint>) -> Self {
        EndpointView {
            namespace: endpoint.metadata.namespace.as_deref().unwrap_or_default(),
            labels: &endpoint.metadata.labels,
            service_account: endpoint.spec.service_account_name.as_deref(),
            ports: &endpoint.spec.ports,
        }
    }
}

/// Namespaces' labels by name (a namespace without a Namespace resource has none).
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// Parsed selectors by source, so each is parsed once however many endpoints it is matched
/// against.
#[derive(Debug, Default)]
pub struct Selectors(HashMap<String, Option<Selector>>);

impl Selectors {
    /// Whether the selector `source` selects `labels`. Validation refused what does not
    /// parse; a selector that still does not selects nothing.
    pub fn selects(&mut self, source: &str, labels: &BTreeMap<String, String>) -> bool {
        let parsed = self.0.entry(source.to_owned()).or_insert_with(|| source.parse().ok());
        parsed.as_ref().is_some_and(|s| s.matches(labels))
    }
}

impl Selection {
    /// Whether `endpoint` is in the set.
    pub fn contains(
        &self,
        endpoint: EndpointView<'_>,
        namespaces: &NamespaceLabels,
        selectors: &mut Selectors,
    ) -> bool {
        // Cheapest first: most selections a node's endpoints are judged against are of
        // another namespace.
        let in_scope = match &self.namespaces {
            NamespaceScope::Any => true,
            NamespaceScope::Named(ns) => endpoint.namespace == ns,
            NamespaceScope::Selected(s) => {
                let empty = BTreeMap::new();
                selectors.selects(s, namespaces.get(endpoint.namespace).unwrap_or(&empty))
            }
        };
        let account_ok = || {
            self.service_accounts.is_empty()
                || endpoint.service_account.is_some_and(|sa| self.service_accounts.iter().any(|n| n == sa))
        };
        in_scope
            && account_ok()
            && self.service_account_selector.as_ref().is_none_or(|s| {
                let name = endpoint.service_account.unwrap_or_default();
                selectors.selects(s, &[(SERVICE_ACCOUNT_NAME_LABEL.to_owned(), name.to_owned())].into())
            })
            && selectors.selects(&self.selector, endpoint.labels)
    }
}

/// One side of a normalised rule; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Side {
    /// Any of these networks.
    pub nets: Vec<IpNetwork>,
    /// None of these networks.
    pub not_nets: Vec<IpNetwork>,
    /// Endpoints in this set.
    pub endpoints: Option<Selection>,
    /// Endpoints not in this set.
    pub not_endpoints: Option<Selection>,
    /// Any of these ports.
    pub ports: Vec<PortMatch>,
    /// None of these ports.
    pub not_ports: Vec<PortMatch>,
}

/// A rule, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalRule {
    /// What it does.
    pub action: Action,
    /// 4 or 6 when it is for one family only.
    pub ip_version: Option<u8>,
    /// The IP protocol number.
    pub protocol: Option<u8>,
    /// Not this protocol.
    pub not_protocol: Option<u8>,
    /// ICMP type and code.
    pub icmp: Option<IcmpMatch>,
    /// Not this ICMP type and code.
    pub not_icmp: Option<IcmpMatch>,
    /// The source.
    pub source: Side,
    /// The destination.
    pub destination: Side,
}

/// One policy, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Which resource.
    pub id: PolicyId,
    /// Its order in its tier (none: last).
    pub order: Option<f64>,
    /// The endpoints it applies to.
    pub applies_to: Selection,
    /// Its ingress rules, when it applies to ingress.
    pub ingress: Option<Vec<NormalRule>>,
    /// Its egress rules, when it applies to egress.
    pub egress: Option<Vec<NormalRule>>,
}

/// A direction of traffic, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// To it.
    Ingress,
    /// From it.
    Egress,
}

impl Policy {
    /// Its rules for `direction`, when it applies to that direction.
    pub fn rules(&self, direction: Direction) -> Option<&[NormalRule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// The policies of one tier, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct TierPolicies {
    /// The tier's name.
    pub name: String,
    /// Its order (none: last).
    pub order: Option<f64>,
    /// Its policies, in evaluation order.
    pub policies: Vec<Policy>,
}

/// Every policy, tiers and policies in evaluation order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    /// The tiers that hold a policy, in order.
    pub tiers: Vec<TierPolicies>,
}

fn by_order(a: (Option<f64>, &str), b: (Option<f64>, &str)) -> Ordering {
    let key = |o: Option<f64>| o.unwrap_or(f64::INFINITY);
    key(a.0).total_cmp(&key(b.0)).then_with(|| a.1.cmp(b.1))
}

fn label_selection(namespaces: NamespaceScope, selector: &LabelSelector) -> Selection {
    Selection {
        namespaces,
        selector: selector.to_selector_source(),
        service_accounts: Vec::new(),
        service_account_selector: None,
    }
}

/// A Kubernetes peer as a rule side (its ports added by the caller).
fn kubernetes_peer(peer: &NetworkPolicyPeer, namespace: &str) -> Side {
    if let Some(block) = &peer.ip_block {
        return Side { nets: vec![block.cidr], not_nets: block.except.clone(), ..Side::default() };
    }
    let scope = match &peer.namespace_selector {
        Some(s) => NamespaceScope::Selected(s.to_selector_source()),
        None => NamespaceScope::Named(namespace.to_owned()),
    };
    let pods = peer.pod_selector.clone().unwrap_or_default();
    Side { endpoints: Some(label_selection(scope, &pods)), ..Side::default() }
}

/// Kubernetes ports as (protocol number, ports) pairs; one pair with no protocol when empty.
fn kubernetes_ports(ports: &[NetworkPolicyPort]) -> Vec<(Option<u8>, Vec<PortMatch>)> {
    if ports.is_empty() {
        return vec![(None, Vec::new())];
    }
    ports
        .iter()
        .map(|p| {
            let protocol = match p.protocol() {
                "UDP" => 17,
                "SCTP" => 132,
                _ => 6,
            };
            let port = match (&p.port, p.end_port) {
                (None, _) => None,
                (Some(IntOrString::Int(first)), end) => Some(PortMatch::Range(*first, end.unwrap_or(*first))),
                (Some(IntOrString::String(name)), _) => Some(PortMatch::Named(name.clone())),
            };
            (Some(protocol), port.into_iter().collect())
        })
        .collect()
}

/// The rules of one direction of a Kubernetes policy: every peer with every port.
fn kubernetes_rules(
    peers: &[NetworkPolicyPeer],
    ports: &[NetworkPolicyPort],
    namespace: &str,
    ingress: bool,
) -> Vec<NormalRule> {
    let sides: Vec<Side> = if peers.is_empty() {
        vec![Side::default()]
    } else {
        peers.iter().map(|p| kubernetes_peer(p, namespace)).collect()
    };
    let mut rules = Vec::new();
    for side in &sides {
        for (protocol, ports) in kubernetes_ports(ports) {
            let destination_ports = Side { ports, ..Side::default() };
            let (source, destination) = if ingress {
                (side.clone(), destination_ports)
            } else {
                (Side::default(), Side { ports: destination_ports.ports, ..side.clone() })
            };
            rules.push(NormalRule {
                action: Action::Allow,
                ip_version: None,
                protocol,
                not_protocol: None,
                icmp: None,
                not_icmp: None,
                source,
                destination,
            });
        }
    }
    rules
}

/// A Kubernetes NetworkPolicy as Calico converts it.
pub fn from_kubernetes(policy: &Resource<KubernetesNetworkPolicy>) -> Policy {
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let spec = &policy.spec;
    let (ingress, egress) = spec.isolates();
    Policy {
        id: PolicyId {
            kind: "KubernetesNetworkPolicy",
            namespace: Some(namespace.clone()),
            name: policy.metadata.name.clone(),
        },
        order: Some(KUBERNETES_POLICY_ORDER),
        applies_to: label_selection(NamespaceScope::Named(namespace.clone()), &spec.pod_selector),
        ingress: ingress
            .then(|| spec.ingress.iter().flat_map(|r| kubernetes_rules(&r.from, &r.ports, &namespace, true)).collect()),
        egress: egress
            .then(|| spec.egress.iter().flat_map(|r| kubernetes_rules(&r.to, &r.ports, &namespace, false)).collect()),
    }
}

fn entity_side(entity: &EntityRule, namespace: Option<&str>) -> Side {
    let scope = match (&entity.namespace_selector, namespace) {
        (Some(s), _) => NamespaceScope::Selected(s.clone()),
        (None, Some(ns)) => NamespaceScope::Named(ns.to_owned()),
        (None, None) => NamespaceScope::Any,
    };
    let accounts: Vec<String> = entity.service_accounts.iter().flat_map(|a| a.names.clone()).collect();
    let selects_endpoints =
        entity.selector.is_some() || entity.namespace_selector.is_some() || entity.service_accounts.is_some();
    let selection = |selector: &str| Selection {
        namespaces: scope.clone(),
        selector: selector.to_owned(),
        service_accounts: accounts.clone(),
        service_account_selector: None,
    };
    Side {
        nets: entity.nets.clone(),
        not_nets: entity.not_nets.clone(),
        endpoints: selects_endpoints.then(|| selection(entity.selector.as_deref().unwrap_or("all()"))),
        not_endpoints: entity
            .not_selector
            .as_deref()
            .map(|s| Selection { service_accounts: Vec::new(), ..selection(s) }),
        ports: entity.ports.iter().filter_map(|p| p.meaning()).collect(),
        not_ports: entity.not_ports.iter().filter_map(|p| p.meaning()).collect(),
    }
}

fn brindle_rule(rule: &Rule, namespace: Option<&str>) -> NormalRule {
    NormalRule {
        action: rule.action,
        ip_version: rule.ip_version,
        protocol: rule.protocol.as_ref().and_then(|p| p.number()),
        not_protocol: rule.not_protocol.as_ref().and_then(|p| p.number()),
        icmp: rule.icmp,
        not_icmp: rule.not_icmp,
        source: entity_side(&rule.source, namespace),
        destination: entity_side(&rule.destination, namespace),
    }
}

fn from_spec(id: PolicyId, spec: &PolicySpec) -> Policy {
    let namespace = id.namespace.clone();
    let scope = match (&namespace, &spec.namespace_selector) {
        (Some(ns), _) => NamespaceScope::Named(ns.clone()),
        (None, Some(s)) => NamespaceScope::Selected(s.clone()),
        (None, None) => NamespaceScope::Any,
    };
    let (ingress, egress) = spec.directions();
    let rules = |rules: &[Rule]| rules.iter().map(|r| brindle_rule(r, namespace.as_deref())).collect();
    Policy {
        id,
        order: spec.order,
        applies_to: Selection {
            namespaces: scope,
            selector: spec.selector.clone().unwrap_or_else(|| "all()".into()),
            service_accounts: Vec::new(),
            service_account_selector: spec.service_account_selector.clone(),
        },
        ingress: ingress.then(|| rules(&spec.ingress)),
        egress: egress.then(|| rules(&spec.egress)),
    }
}

impl Policies {
    /// Every policy of every kind, ordered. A policy naming a tier that does not exist is in
    /// a tier of that name ordered last.
    pub fn new(
        tiers: &[Resource<Tier>],
        kubernetes: &[Resource<KubernetesNetworkPolicy>],
        namespaced: &[Resource<NetworkPolicy>],
        global: &[Resource<GlobalNetworkPolicy>],
    ) -> Policies {
        let mut by_tier: BTreeMap<String, Vec<Policy>> = BTreeMap::new();
        for p in kubernetes {
            by_tier.entry(DEFAULT_TIER.into()).or_default().push(from_kubernetes(p));
        }
        for p in namespaced {
            let id = PolicyId {
                kind: "NetworkPolicy",
                namespace: p.metadata.namespace.clone(),
                name: p.metadata.name.clone(),
            };
            by_tier.entry(p.spec.0.tier().to_owned()).or_default().push(from_spec(id, &p.spec.0));
        }
        for p in global {
            let id = PolicyId { kind: "GlobalNetworkPolicy", namespace: None, name: p.metadata.name.clone() };
            by_tier.entry(p.spec.0.tier().to_owned()).or_default().push(from_spec(id, &p.spec.0));
        }
        let tier_order = |name: &str| {
            let configured = tiers.iter().find(|t| t.metadata.name == name).map(|t| t.spec.order);
            match configured {
                Some(order) => order,
                None if name == DEFAULT_TIER => Some(DEFAULT_TIER_ORDER),
                None => None,
            }
        };
        let mut out: Vec<TierPolicies> = by_tier
            .into_iter()
            .map(|(name, mut policies)| {
                policies.sort_by(|a, b| {
                    by_order((a.order, &a.id.name), (b.order, &b.id.name)).then_with(|| a.id.cmp(&b.id))
                });
                TierPolicies { order: tier_order(&name), name, policies }
            })
            .collect();
        out.sort_by(|a, b| by_order((a.order, &a.name), (b.order, &b.name)));
        Policies { tiers: out }
    }

    /// The policies that apply to `endpoint` in `direction`, tier by tier (tiers with none
    /// left out), in evaluation order. Empty: the endpoint is not isolated in `direction`.
    pub fn applying<'p>(
        &'p self,
        endpoint: EndpointView<'_>,
        namespaces: &NamespaceLabels,
        direction: Direction,
        selectors: &mut Selectors,
    ) -> Vec<(&'p TierPolicies, Vec<&'p Policy>)> {
        self.tiers
            .iter()
            .filter_map(|tier| {
                let policies: Vec<&Policy> = tier
                    .policies
                    .iter()
                    .filter(|p| p.rules(direction).is_some() && p.applies_to.contains(endpoint, namespaces, selectors))
                    .collect();
                (!policies.is_empty()).then_some((tier, policies))
            })
            .collect()
    }
}

/// A packet, as policy judges it: addresses, protocol, ports and, where they are pods, its
/// endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Where it comes from.
    pub source: IpAddr,
    /// The source pod, if it is one.
    pub source_endpoint: Option<EndpointView<'a>>,
    /// Where it goes.
    pub destination: IpAddr,
    /// The destination pod, if it is one.
    pub destination_endpoint: Option<EndpointView<'a>>,
    /// The IP protocol number.
    pub protocol: u8,
    /// The source port (TCP, UDP, SCTP, UDPLite).
    pub source_port: Option<u16>,
    /// The destination port.
    pub destination_port: Option<u16>,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
}

fn protocol_label(protocol: u8) -> &'static str {
    match protocol {
        17 => "UDP",
        132 => "SCTP",
        _ => "TCP",
    }
}

impl Side {
    fn matches(
        &self,
        ip: IpAddr,
        endpoint: Option<EndpointView<'_>>,
        port: Option<u16>,
        protocol: u8,
        namespaces: &NamespaceLabels,
        selectors: &mut Selectors,
    ) -> bool {
        let in_set = |selection: &Selection, selectors: &mut Selectors| {
            endpoint.is_some_and(|e| selection.contains(e, namespaces, selectors))
        };
        let port_is = |p: &PortMatch| match (p, port) {
            (PortMatch::Range(a, b), Some(port)) => (*a..=*b).contains(&port),
            (PortMatch::Named(name), Some(port)) => endpoint.is_some_and(|e| {
                e.ports.iter().any(|n| n.name == *name && n.port == port && n.protocol == protocol_label(protocol))
            }),
            (_, None) => false,
        };
        (self.nets.is_empty() || self.nets.iter().any(|n| n.contains(ip)))
            && !self.not_nets.iter().any(|n| n.contains(ip))
            && self.endpoints.as_ref().is_none_or(|s| in_set(s, selectors))
            && !self.not_endpoints.as_ref().is_some_and(|s| in_set(s, selectors))
            && (self.ports.is_empty() || self.ports.iter().any(port_is))
            && !self.not_ports.iter().any(port_is)
    }
}

impl NormalRule {
    /// Whether the rule matches `packet`.
    pub fn matches(&self, packet: &Packet<'_>, namespaces: &NamespaceLabels, selectors: &mut Selectors) -> bool {
        let icmp_is =
            |m: &IcmpMatch| packet.icmp.is_some_and(|(t, c)| t == m.kind && m.code.is_none_or(|code| code == c));
        self.ip_version.is_none_or(|v| (v == 6) == packet.destination.is_ipv6())
            && self.protocol.is_none_or(|p| p == packet.protocol)
            && self.not_protocol != Some(packet.protocol)
            && self.icmp.as_ref().is_none_or(icmp_is)
            && !self.not_icmp.as_ref().is_some_and(icmp_is)
            && self.source.matches(
                packet.source,
                packet.source_endpoint,
                packet.source_port,
                packet.protocol,
                namespaces,
                selectors,
            )
            && self.destination.matches(
                packet.destination,
                packet.destination_endpoint,
                packet.destination_port,
                packet.protocol,
                namespaces,
                selectors,
            )
    }
}

/// What decided a packet's fate in one direction.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No policy selects the endpoint for the direction: it is not isolated.
    NotIsolated,
    /// A rule decided (`Allow` or `Deny`).
    Rule {
        /// The tier.
        tier: String,
        /// The policy.
        policy: PolicyId,
        /// The rule's index in its direction.
        index: usize,
        /// What it did.
        action: Action,
    },
    /// A tier with policies for the endpoint had no rule that allowed it: denied.
    EndOfTier(String),
    /// Every tier passed it on: allowed.
    AllPassed,
}

/// The verdict of one direction, with how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Whether the packet may pass.
    pub allowed: bool,
    /// What decided.
    pub decision: Decision,
    /// Every policy consulted, in order, with its tier, and rules that logged it.
    pub consulted: Vec<String>,
}

impl Policies {
    /// Judges `packet` for `endpoint` (the source for egress, the destination for ingress)
    /// as the dataplane does: tier by tier, policy by policy, the first rule that matches.
    pub fn judge(
        &self,
        endpoint: EndpointView<'_>,
        direction: Direction,
        packet: &Packet<'_>,
        namespaces: &NamespaceLabels,
        selectors: &mut Selectors,
    ) -> Judgement {
        let applying = self.applying(endpoint, namespaces, direction, selectors);
        let mut consulted = Vec::new();
        if applying.is_empty() {
            return Judgement { allowed: true, decision: Decision::NotIsolated, consulted };
        }
        'tiers: for (tier, policies) in applying {
            for policy in policies {
                let order = policy.order.map_or("none".to_owned(), |o| o.to_string());
                consulted.push(format!("tier {}: {} (order {order})", tier.name, policy.id));
                let rules = policy.rules(direction).unwrap_or_default();
                for (index, rule) in rules.iter().enumerate() {
                    if !rule.matches(packet, namespaces, selectors) {
                        continue;
                    }
                    let decided = |allowed| Judgement {
                        allowed,
                        decision: Decision::Rule {
                            tier: tier.name.clone(),
                            policy: policy.id.clone(),
                            index,
                            action: rule.action,
                        },
                        consulted: consulted.clone(),
                    };
                    match rule.action {
                        Action::Allow => return decided(true),
                        Action::Deny => return decided(false),
                        Action::Log => consulted.push(format!("logged by {} rule {index}", policy.id)),
                        Action::Pass => {
                            consulted.push(format!("passed to the next tier by {} rule {index}", policy.id));
                            continue 'tiers;
                        }
                    }
                }
            }
            return Judgement { allowed: false, decision: Decision::EndOfTier(tier.name.clone()), consulted };
        }
        Judgement { allowed: true, decision: Decision::AllPassed, consulted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::policies_from_yaml as policies;

    fn endpoint(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Resource<WorkloadEndpoint> {
        let mut endpoint = crate::testing::pod_endpoint("n", namespace, name, labels);
        endpoint.spec.service_account_name = Some("api".into());
        endpoint
    }

    const MIXED: &str = "
apiVersion: brindle.io/v1
kind: Tier
metadata: {name: security}
spec: {order: 10}
---
apiVersion: brindle.io/v1
kind: GlobalNetworkPolicy
metadata: {name: quarantine}
spec: {tier: security, order: 1, selector: quarantined == 'true', types: [Ingress, Egress]}
---
apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: b-late, namespace: x}
spec: {order: 2000, ingress: [{action: Allow}]}
---
apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: a-early, namespace: x}
spec: {order: 5, selector: app == 'db', ingress: [{action: Deny, protocol: TCP, destination: {ports: [22]}}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {app: api}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.9.0.0/16]}}]
    ports: [{port: 80}, {protocol: UDP, port: 53, endPort: 54}]
";

    #[test]
    fn tiers_and_policies_come_in_evaluation_order() {
        let all = policies(MIXED);
        let names: Vec<(&str, Vec<&str>)> = all
            .tiers
            .iter()
            .map(|t| (t.name.as_str(), t.policies.iter().map(|p| p.id.name.as_str()).collect()))
            .collect();
        assert_eq!(names, [("security", vec!["quarantine"]), ("default", vec!["a-early", "web", "b-late"])]);
        let namespaces = NamespaceLabels::new();
        let db = endpoint("x", "db", &[("app", "db")]);
        let applying = all.applying(EndpointView::of(&db), &namespaces, Direction::Ingress, &mut Selectors::default());
        let names: Vec<Vec<&str>> =
            applying.iter().map(|(_, ps)| ps.iter().map(|p| p.id.name.as_str()).collect()).collect();
        assert_eq!(names, [vec!["a-early", "web", "b-late"]]);
        // Egress: only the quarantine selects for it, and not this endpoint.
        assert!(
            all.applying(EndpointView::of(&db), &namespaces, Direction::Egress, &mut Selectors::default()).is_empty()
        );
        let other = endpoint("z", "q", &[("quarantined", "true")]);
        let applying =
            all.applying(EndpointView::of(&other), &namespaces, Direction::Egress, &mut Selectors::default());
        assert_eq!(applying.len(), 1);
        assert!(applying[0].1[0].egress.as_ref().unwrap().is_empty(), "selected with no rules: isolated");
    }

    #[test]
    fn a_kubernetes_policy_becomes_a_peer_by_port_cross_product() {
        let all = policies(MIXED);
        let web = all.tiers[1].policies.iter().find(|p| p.id.name == "web").unwrap();
        let rules = web.ingress.as_ref().unwrap();
        assert_eq!(rules.len(), 4, "two peers times two ports: {rules:#?}");
        assert!(web.egress.is_none(), "not isolated for egress");
        let pods = rules[0].source.endpoints.as_ref().unwrap();
        assert_eq!(pods.namespaces, NamespaceScope::Selected("ns == 'y'".into()));
        assert_eq!(pods.selector, "app == 'api'");
        assert_eq!((rules[1].protocol, &rules[1].destination.ports), (Some(17), &vec![PortMatch::Range(53, 54)]));
        assert_eq!(rules[2].source.not_nets, ["10.9.0.0/16".parse::<IpNetwork>().unwrap()]);
        let namespaces: NamespaceLabels = [("y".to_owned(), [("ns".to_owned(), "y".to_owned())].into())].into();
        assert!(pods.contains(
            EndpointView::of(&endpoint("y", "a", &[("app", "api")])),
            &namespaces,
            &mut Selectors::default()
        ));
        assert!(!pods.contains(
            EndpointView::of(&endpoint("x", "a", &[("app", "api")])),
            &namespaces,
            &mut Selectors::default()
        ));
    }

    #[test]
    fn judging_follows_tiers_order_and_the_first_matching_rule() {
        let all = policies(MIXED);
        let namespaces: NamespaceLabels = [("y".to_owned(), [("ns".to_owned(), "y".to_owned())].into())].into();
        let db = endpoint("x", "db", &[("app", "db")]);
        let api = endpoint("y", "api", &[("app", "api")]);
        let packet = |port, protocol| Packet {
            source: "10.244.1.1".parse().unwrap(),
            source_endpoint: Some(EndpointView::of(&api)),
            destination: "10.244.2.2".parse().unwrap(),
            destination_endpoint: Some(EndpointView::of(&db)),
            protocol,
            source_port: Some(40000),
            destination_port: Some(port),
            icmp: None,
        };
        let judge = |p: &Packet<'_>| {
            all.judge(EndpointView::of(&db), Direction::Ingress, p, &namespaces, &mut Selectors::default())
        };
        // a-early denies ssh before anything allows it.
        let ssh = judge(&packet(22, 6));
        assert!(!ssh.allowed);
        assert!(
            matches!(&ssh.decision, Decision::Rule { policy, action: Action::Deny, .. } if policy.name == "a-early")
        );
        // The Kubernetes policy allows api pods of y on 80; b-late, after it, would allow anything.
        let web = judge(&packet(80, 6));
        assert!(matches!(&web.decision, Decision::Rule { policy, index: 0, .. } if policy.name == "web"), "{web:?}");
        let other = judge(&packet(9999, 6));
        assert!(matches!(&other.decision, Decision::Rule { policy, .. } if policy.name == "b-late"), "{other:?}");
        assert_eq!(other.consulted.len(), 3, "{:?}", other.consulted);
        // Egress: not isolated.
        let out =
            all.judge(EndpointView::of(&db), Direction::Egress, &packet(80, 6), &namespaces, &mut Selectors::default());
        assert_eq!(out.decision, Decision::NotIsolated);
        // The quarantine tier selects and has no rules: the end of its tier denies.
        let q = endpoint("z", "q", &[("quarantined", "true")]);
        let out =
            all.judge(EndpointView::of(&q), Direction::Ingress, &packet(80, 6), &namespaces, &mut Selectors::default());
        assert_eq!((out.allowed, out.decision), (false, Decision::EndOfTier("security".into())));
    }

    #[test]
    fn brindle_rule_selectors_stay_in_the_policy_namespace_unless_told() {
        let all = policies(
            "
apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  ingress:
  - action: Allow
    source: {selector: app == 'a', notSelector: bad == 'yes'}
  - action: Allow
    source: {namespaceSelector: all(), serviceAccounts: {names: [api]}}
",
        );
        let rules = all.tiers[0].policies[0].ingress.clone().unwrap();
        let first = rules[0].source.endpoints.as_ref().unwrap();
        assert_eq!(first.namespaces, NamespaceScope::Named("x".into()));
        assert_eq!(rules[0].source.not_endpoints.as_ref().unwrap().selector, "bad == 'yes'");
        let second = rules[1].source.endpoints.as_ref().unwrap();
        assert_eq!((second.selector.as_str(), second.service_accounts.as_slice()), ("all()", &["api".to_owned()][..]));
        assert!(second.contains(
            EndpointView::of(&endpoint("z", "e", &[])),
            &NamespaceLabels::new(),
            &mut Selectors::default()
        ));
    }
}
