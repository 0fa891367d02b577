//! brindle's policy kinds, with Calico's fields and semantics: `NetworkPolicy` (in a
//! namespace), `GlobalNetworkPolicy` (cluster-wide) and `Tier` (an ordered group of policies;
//! `Pass` moves on to the next tier).

use ipnetwork::IpNetwork;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Spec, Validator};

/// The tier every policy is in unless it names another; Kubernetes NetworkPolicies are in it.
pub const DEFAULT_TIER: &str = "default";

/// What a rule does with the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Accepted; no later rule or tier is consulted.
    Allow,
    /// Dropped.
    Deny,
    /// Logged (with a prefix naming the policy); the next rule decides.
    Log,
    /// Skips the rest of the tier: the next tier decides.
    Pass,
}

/// A protocol: a name or an IP protocol number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Protocol {
    /// An IP protocol number.
    Number(u8),
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6`, `SCTP` or `UDPLite`.
    Name(String),
}

impl Protocol {
    /// The IP protocol number; `None` for an unknown name.
    pub fn number(&self) -> Option<u8> {
        match self {
            Protocol::Number(n) => Some(*n),
            Protocol::Name(name) => match name.as_str() {
                "TCP" => Some(6),
                "UDP" => Some(17),
                "ICMP" => Some(1),
                "ICMPv6" => Some(58),
                "SCTP" => Some(132),
                "UDPLite" => Some(136),
                _ => None,
            },
        }
    }

    /// Whether rules on it can name ports.
    pub fn has_ports(&self) -> bool {
        matches!(self.number(), Some(6 | 17 | 132 | 136))
    }
}

/// A port: a number, a range `"first:last"`, or a named port of the pods.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Port {
    /// One port.
    Number(u16),
    /// A range `"first:last"` or a name.
    Text(String),
}

/// A number or a string, as Kubernetes' structural schemas say it.
macro_rules! int_or_string_schema {
    ($($type:ty),*) => {$(
        impl JsonSchema for $type {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($type).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"x-kubernetes-int-or-string": true})
            }
        }
    )*};
}

int_or_string_schema!(Port, Protocol);

/// A [`Port`] as what it means.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// Ports `first..=last`.
    Range(u16, u16),
    /// A named port, resolved on each pod.
    Named(String),
}

impl Port {
    /// What the port means; `None` when it is neither a number, a range nor a port name.
    pub fn meaning(&self) -> Option<PortMatch> {
        match self {
            Port::Number(n) => Some(PortMatch::Range(*n, *n)),
            Port::Text(text) => match text.split_once(':') {
                Some((a, b)) => {
                    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                    (a <= b).then_some(PortMatch::Range(a, b))
                }
                None => match text.parse() {
                    Ok(n) => Some(PortMatch::Range(n, n)),
                    Err(_) => Some(PortMatch::Named(text.clone())),
                },
            },
        }
    }
}

/// An ICMP type and, optionally, code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpMatch {
    /// The ICMP type.
    #[serde(rename = "type")]
    pub kind: u8,
    /// The ICMP code (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// Service accounts a rule side matches (by name and/or by the account's labels).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Any of these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// One side of a rule (its source or destination). Every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    /// Any of these networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub nets: Vec<IpNetwork>,
    /// None of these networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub not_nets: Vec<IpNetwork>,
    /// Endpoints this selects (in the policy's namespace for a NetworkPolicy, unless
    /// `namespaceSelector` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Not endpoints this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    /// Endpoints in namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Any of these ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// None of these ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
    /// Endpoints running as these service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountMatch>,
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// What to do with matching traffic.
    pub action: Action,
    /// 4 or 6: the rule applies to that family only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// The protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Not this protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// The ICMP type and code (protocol ICMP or ICMPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpMatch>,
    /// Not this ICMP type and code.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpMatch>,
    /// The source.
    #[serde(default, skip_serializing_if = "is_any")]
    pub source: EntityRule,
    /// The destination.
    #[serde(default, skip_serializing_if = "is_any")]
    pub destination: EntityRule,
}

fn is_any(side: &EntityRule) -> bool {
    *side == EntityRule::default()
}

/// `Ingress` or `Egress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum PolicyType {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

/// What NetworkPolicy and GlobalNetworkPolicy share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// The tier (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Lower orders are applied first; a policy without one comes last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// The endpoints the policy applies to (`all()` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// GlobalNetworkPolicy only: endpoints in namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Endpoints whose service account's name is selected by this (`name == 'x'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// The directions it applies to: by default Ingress, and Egress when there are egress
    /// rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    /// Rules for traffic to the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules for traffic from the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

impl PolicySpec {
    /// The tier's name.
    pub fn tier(&self) -> &str {
        self.tier.as_deref().unwrap_or(DEFAULT_TIER)
    }

    /// Whether it applies to ingress and to egress.
    pub fn directions(&self) -> (bool, bool) {
        if self.types.is_empty() {
            return (true, !self.egress.is_empty());
        }
        (self.types.contains(&PolicyType::Ingress), self.types.contains(&PolicyType::Egress))
    }

    fn check(&self, global: bool, v: &mut Validator) {
        if let Some(tier) = &self.tier {
            v.dns_subdomain("spec.tier", tier);
        }
        if let Some(order) = self.order {
            v.require(order.is_finite(), "spec.order", order, "must be a finite number");
        }
        for (field, selector) in [
            ("spec.selector", &self.selector),
            ("spec.namespaceSelector", &self.namespace_selector),
            ("spec.serviceAccountSelector", &self.service_account_selector),
        ] {
            if let Some(s) = selector {
                v.selector(field, s);
            }
        }
        if !global && self.namespace_selector.is_some() {
            v.problem("spec.namespaceSelector", "", "is for GlobalNetworkPolicy; a NetworkPolicy is in one namespace");
        }
        let (ingress, egress) = self.directions();
        if !ingress && !self.ingress.is_empty() {
            v.problem("spec.ingress", "", "has rules but types does not include Ingress");
        }
        if !egress && !self.egress.is_empty() {
            v.problem("spec.egress", "", "has rules but types does not include Egress");
        }
        for (direction, rules) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            for (i, rule) in rules.iter().enumerate() {
                check_rule(rule, &format!("spec.{direction}[{i}]"), v);
            }
        }
    }
}

fn check_rule(rule: &Rule, at: &str, v: &mut Validator) {
    if let Some(version) = rule.ip_version {
        v.require(version == 4 || version == 6, &format!("{at}.ipVersion"), version, "must be 4 or 6");
    }
    for (field, protocol) in [("protocol", &rule.protocol), ("notProtocol", &rule.not_protocol)] {
        if let Some(p @ Protocol::Name(name)) = protocol
            && p.number().is_none()
        {
            v.problem(&format!("{at}.{field}"), name, "must be TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number");
        }
    }
    let icmp_protocol = rule.protocol.as_ref().and_then(Protocol::number).is_some_and(|n| n == 1 || n == 58);
    for (field, icmp) in [("icmp", &rule.icmp), ("notICMP", &rule.not_icmp)] {
        if icmp.is_some() && !icmp_protocol {
            v.problem(&format!("{at}.{field}"), "", "needs protocol ICMP or ICMPv6");
        }
    }
    if let (Some(version), Some(protocol)) = (rule.ip_version, rule.protocol.as_ref().and_then(Protocol::number)) {
        let wrong = (version == 4 && protocol == 58) || (version == 6 && protocol == 1);
        v.require(!wrong, &format!("{at}.protocol"), protocol, "is for the other IP version");
    }
    let has_ports = rule.protocol.as_ref().is_some_and(Protocol::has_ports);
    for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        let at = format!("{at}.{side}");
        for (field, selector) in [
            ("selector", &entity.selector),
            ("notSelector", &entity.not_selector),
            ("namespaceSelector", &entity.namespace_selector),
        ] {
            if let Some(s) = selector {
                v.selector(&format!("{at}.{field}"), s);
            }
        }
        for (field, nets) in [("nets", &entity.nets), ("notNets", &entity.not_nets)] {
            for (i, net) in nets.iter().enumerate() {
                v.network_address(&format!("{at}.{field}[{i}]"), net);
                if let Some(version) = rule.ip_version {
                    let family = if net.is_ipv4() { 4 } else { 6 };
                    v.require(family == version, &format!("{at}.{field}[{i}]"), net, "is not of the rule's ipVersion");
                }
            }
        }
        for (field, ports) in [("ports", &entity.ports), ("notPorts", &entity.not_ports)] {
            if !ports.is_empty() && !has_ports {
                v.problem(&format!("{at}.{field}"), "", "needs protocol TCP, UDP, SCTP or UDPLite");
            }
            for (i, port) in ports.iter().enumerate() {
                let field = format!("{at}.{field}[{i}]");
                match (port, port.meaning()) {
                    (Port::Number(0), _) | (_, Some(PortMatch::Range(0, _))) => v.problem(&field, 0, "must be 1-65535"),
                    (_, Some(PortMatch::Named(name))) => v.port_name(&field, &name),
                    (Port::Text(text), None) => {
                        v.problem(&field, text, "must be a port, a range \"first:last\" or a port name")
                    }
                    _ => {}
                }
            }
        }
        if let Some(accounts) = &entity.service_accounts {
            for (i, name) in accounts.names.iter().enumerate() {
                v.dns_subdomain(&format!("{at}.serviceAccounts.names[{i}]"), name);
            }
        }
    }
}

/// A brindle NetworkPolicy: applies to endpoints of its namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct NetworkPolicy(pub PolicySpec);

impl Spec for NetworkPolicy {
    const KIND: &'static str = "NetworkPolicy";
    const PLURAL: &'static str = "networkpolicies";
    const NAMESPACED: bool = true;

    fn validate(&self, v: &mut Validator) {
        self.0.check(false, v);
    }
}

/// A brindle GlobalNetworkPolicy: applies to endpoints of every namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct GlobalNetworkPolicy(pub PolicySpec);

impl Spec for GlobalNetworkPolicy {
    const KIND: &'static str = "GlobalNetworkPolicy";
    const PLURAL: &'static str = "globalnetworkpolicies";

    fn validate(&self, v: &mut Validator) {
        self.0.check(true, v);
    }
}

/// A tier: policies are evaluated tier by tier, in the tiers' order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tier {
    /// Lower orders come first; a tier without one comes last (the `default` tier's is
    /// 1,000,000 unless a Tier resource says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
}

/// The order of the `default` tier when no Tier resource gives one (Calico's).
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;

impl Spec for Tier {
    const KIND: &'static str = "Tier";
    const PLURAL: &'static str = "tiers";

    fn validate(&self, v: &mut Validator) {
        if let Some(order) = self.order {
            v.require(order.is_finite(), "spec.order", order, "must be a finite number");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{AnyResource, parse_documents};

    #[test]
    fn calico_policies_parse_and_validate() {
        let text = "
apiVersion: brindle.io/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-ssh}
spec:
  tier: security
  order: 10
  namespaceSelector: team == 'a'
  ingress:
  - action: Deny
    protocol: TCP
    destination: {ports: [22, '8000:8080', http]}
  - action: Allow
    protocol: ICMP
    icmp: {type: 8}
    source: {notNets: [10.0.0.0/8], serviceAccounts: {names: [api]}}
---
apiVersion: brindle.io/v1
kind: Tier
metadata: {name: security}
spec: {order: 100}
";
        let docs = parse_documents(text).unwrap();
        let AnyResource::GlobalNetworkPolicy(p) = &docs[0] else { panic!("{docs:?}") };
        assert!(p.validate().is_ok(), "{:?}", p.validate());
        assert_eq!(p.spec.0.tier(), "security");
        assert_eq!(p.spec.0.directions(), (true, false));
        let ports: Vec<_> = p.spec.0.ingress[0].destination.ports.iter().map(|p| p.meaning().unwrap()).collect();
        assert_eq!(ports, [PortMatch::Range(22, 22), PortMatch::Range(8000, 8080), PortMatch::Named("http".into())]);
        assert!(matches!(&docs[1], AnyResource::Tier(t) if t.spec.order == Some(100.0)));
    }

    #[test]
    fn a_bad_policy_names_every_field() {
        let text = "
apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  selector: role === 'x'
  namespaceSelector: all()
  types: [Ingress]
  egress: [{action: Allow}]
  ingress:
  - action: Allow
    protocol: Carrier-Pigeon
    destination: {ports: [80], nets: [10.0.0.1/8]}
  - action: Allow
    protocol: TCP
    icmp: {type: 8}
    source: {ports: ['90:80', Bad_Name]}
";
        let error = parse_documents(text).unwrap()[0].validate().unwrap_err().to_string();
        for expected in [
            "spec.selector \"role === 'x'\"",
            "spec.namespaceSelector: is for GlobalNetworkPolicy",
            "spec.egress: has rules but types does not include Egress",
            "spec.ingress[0].protocol \"Carrier-Pigeon\"",
            "spec.ingress[0].destination.nets[0] \"10.0.0.1/8\"",
            "spec.ingress[0].destination.ports: needs protocol",
            "spec.ingress[1].icmp: needs protocol ICMP",
            "spec.ingress[1].source.ports[0] \"90:80\"",
            "spec.ingress[1].source.ports[1] \"Bad_Name\"",
        ] {
            assert!(error.contains(expected), "{expected} in {error}");
        }
        let unknown = "apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
                       spec: {ingress: [{action: Reject}]}\n";
        let error = parse_documents(unknown).unwrap_err().to_string();
        assert!(error.contains("spec.ingress[0].action") && error.contains("Reject"), "{error}");
    }
}
