//! Kubernetes' own kinds that brindle reads as they are: `Namespace` (`v1`, for its labels)
//! and `NetworkPolicy` (`networking.k8s.io/v1`), so `brindlectl apply -f` takes the YAML a user
//! gives kubectl, and on the Kubernetes datastore they are the API server's own objects.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Spec, Validator};
use crate::selector::Selector;

/// A Kubernetes Namespace: its labels (in the metadata) are what `namespaceSelector`s match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// Kubernetes' finalizers, kept as the API server gives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

impl Spec for Namespace {
    const KIND: &'static str = "Namespace";
    const PLURAL: &'static str = "namespaces";
    const API_VERSION: &'static str = "v1";

    fn validate(&self, _v: &mut Validator) {}
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must have exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One requirement of a [`LabelSelector`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelRequirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A label key or value a brindle selector can quote: Kubernetes' characters only.
fn plain(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl LabelSelector {
    /// The same selection in brindle's selector syntax (`{}` is `all()`).
    pub fn to_selector_source(&self) -> String {
        let quoted = |values: &[String]| values.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ");
        let mut terms: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k} == '{v}'")).collect();
        for r in &self.match_expressions {
            terms.push(match r.operator.as_str() {
                "In" => format!("{} in {{{}}}", r.key, quoted(&r.values)),
                "NotIn" => format!("{} not in {{{}}}", r.key, quoted(&r.values)),
                "Exists" => format!("has({})", r.key),
                _ => format!("!has({})", r.key),
            });
        }
        if terms.is_empty() { "all()".into() } else { terms.join(" && ") }
    }

    /// The parsed selection; `None` when [`LabelSelector::validate`] would refuse it.
    pub fn to_selector(&self) -> Option<Selector> {
        self.to_selector_source().parse().ok()
    }

    fn validate(&self, field: &str, v: &mut Validator) {
        for (k, value) in &self.match_labels {
            v.require(!k.is_empty() && plain(k), &format!("{field}.matchLabels"), k, "is not a label key");
            v.require(plain(value), &format!("{field}.matchLabels.{k}"), value, "is not a label value");
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            v.require(!r.key.is_empty() && plain(&r.key), &format!("{at}.key"), &r.key, "is not a label key");
            match r.operator.as_str() {
                "In" | "NotIn" => {
                    v.require(!r.values.is_empty(), &format!("{at}.values"), "", "must not be empty for In and NotIn")
                }
                "Exists" | "DoesNotExist" => v.require(
                    r.values.is_empty(),
                    &format!("{at}.values"),
                    r.values.join(","),
                    "must be empty for Exists and DoesNotExist",
                ),
                other => v.problem(&format!("{at}.operator"), other, "must be In, NotIn, Exists or DoesNotExist"),
            }
            for value in &r.values {
                v.require(plain(value), &format!("{at}.values"), value, "is not a label value");
            }
        }
    }
}

/// A port: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrString {
    /// A port number.
    Int(u16),
    /// A named port of the pods.
    String(String),
}

/// A port of a NetworkPolicy rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    /// TCP (the default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The port, a number or a named port; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// The last port of a range starting at `port` (a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl NetworkPolicyPort {
    /// The protocol, TCP when not given.
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

/// An address block: `cidr` but not the `except` blocks inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// The block.
    #[schemars(with = "String")]
    pub cidr: IpNetwork,
    /// Blocks inside `cidr` that are left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub except: Vec<IpNetwork>,
}

/// A peer of a rule: pods (by pod and namespace selectors) or an address block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    /// Pods (in the policy's namespace, unless `namespaceSelector` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose pods (those `podSelector` selects, or all) are the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// An address block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// An ingress rule: traffic from any of `from` to any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    /// Where traffic may come from; anywhere when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
    /// The ports it may reach; every port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// An egress rule: traffic to any of `to` on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    /// Where traffic may go; anywhere when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
    /// The ports it may reach; every port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// A Kubernetes NetworkPolicy spec, as `networking.k8s.io/v1` defines it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesNetworkPolicy {
    /// The pods of the namespace the policy applies to (`{}`: all of them).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress` and/or `Egress`; by default Ingress, and Egress when there are egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    /// Allowed incoming traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Allowed outgoing traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

impl KubernetesNetworkPolicy {
    /// Whether the policy isolates its pods for ingress and for egress (Kubernetes' defaults
    /// when `policyTypes` is not given).
    pub fn isolates(&self) -> (bool, bool) {
        if self.policy_types.is_empty() {
            return (true, !self.egress.is_empty());
        }
        (self.policy_types.iter().any(|t| t == "Ingress"), self.policy_types.iter().any(|t| t == "Egress"))
    }
}

fn validate_peers(peers: &[NetworkPolicyPeer], field: &str, v: &mut Validator) {
    for (i, peer) in peers.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, selectors) {
            (Some(_), true) => v.problem(&at, "", "ipBlock may not be combined with podSelector or namespaceSelector"),
            (None, false) => v.problem(&at, "", "must have podSelector, namespaceSelector or ipBlock"),
            _ => {}
        }
        if let Some(s) = &peer.pod_selector {
            s.validate(&format!("{at}.podSelector"), v);
        }
        if let Some(s) = &peer.namespace_selector {
            s.validate(&format!("{at}.namespaceSelector"), v);
        }
        if let Some(block) = &peer.ip_block {
            v.network_address(&format!("{at}.ipBlock.cidr"), &block.cidr);
            for (j, except) in block.except.iter().enumerate() {
                let inside = except.is_ipv4() == block.cidr.is_ipv4()
                    && except.prefix() > block.cidr.prefix()
                    && block.cidr.contains(except.network());
                v.require(inside, &format!("{at}.ipBlock.except[{j}]"), except, "must be a block strictly inside cidr");
            }
        }
    }
}

fn validate_ports(ports: &[NetworkPolicyPort], field: &str, v: &mut Validator) {
    for (i, port) in ports.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let protocol = port.protocol();
        v.require(
            ["TCP", "UDP", "SCTP"].contains(&protocol),
            &format!("{at}.protocol"),
            protocol,
            "must be TCP, UDP or SCTP",
        );
        match (&port.port, port.end_port) {
            (Some(IntOrString::Int(0)), _) => v.problem(&format!("{at}.port"), 0, "must be 1-65535"),
            (Some(IntOrString::String(name)), _) => v.port_name(&format!("{at}.port"), name),
            _ => {}
        }
        match (&port.port, port.end_port) {
            (Some(IntOrString::Int(start)), Some(end)) if end < *start => {
                v.problem(&format!("{at}.endPort"), end, "must not be below port")
            }
            (Some(IntOrString::Int(_)), Some(_)) | (_, None) => {}
            (_, Some(end)) => v.problem(&format!("{at}.endPort"), end, "needs port to be a number"),
        }
    }
}

impl Spec for KubernetesNetworkPolicy {
    const KIND: &'static str = "KubernetesNetworkPolicy";
    const WIRE_KIND: &'static str = "NetworkPolicy";
    const API_VERSION: &'static str = "networking.k8s.io/v1";
    const PLURAL: &'static str = "kubernetesnetworkpolicies";
    const NAMESPACED: bool = true;

    fn validate(&self, v: &mut Validator) {
        self.pod_selector.validate("spec.podSelector", v);
        for (i, t) in self.policy_types.iter().enumerate() {
            v.require(
                t == "Ingress" || t == "Egress",
                &format!("spec.policyTypes[{i}]"),
                t,
                "must be Ingress or Egress",
            );
        }
        for (i, rule) in self.ingress.iter().enumerate() {
            validate_peers(&rule.from, &format!("spec.ingress[{i}].from"), v);
            validate_ports(&rule.ports, &format!("spec.ingress[{i}].ports"), v);
        }
        for (i, rule) in self.egress.iter().enumerate() {
            validate_peers(&rule.to, &format!("spec.egress[{i}].to"), v);
            validate_ports(&rule.ports, &format!("spec.egress[{i}].ports"), v);
        }
    }
}

#[cfg(test)]
mod tests {

    use crate::resource::{AnyResource, parse_documents};

    #[test]
    fn kubectl_yaml_parses_as_kubernetes_kinds() {
        let text = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchExpressions: [{key: role, operator: In, values: [api, web]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 5432}, {protocol: UDP, port: 1000, endPort: 2000}, {port: pg}]
";
        let docs = parse_documents(text).unwrap();
        let AnyResource::Namespace(ns) = &docs[0] else { panic!("{docs:?}") };
        assert_eq!(ns.metadata.labels["ns"], "x");
        let AnyResource::KubernetesNetworkPolicy(p) = &docs[1] else { panic!("{docs:?}") };
        assert!(p.validate().is_ok(), "{:?}", p.validate());
        assert_eq!(p.spec.isolates(), (true, false));
        let peer = &p.spec.ingress[0].from[0];
        assert_eq!(peer.pod_selector.as_ref().unwrap().to_selector_source(), "role in {'api', 'web'}",);
        let selector = peer.namespace_selector.as_ref().unwrap().to_selector().unwrap();
        assert!(selector.matches(&[("team".to_owned(), "a".to_owned())].into()));
        // It serializes back as Kubernetes' own kind.
        let json = docs[1].to_json();
        assert_eq!(
            (json["apiVersion"].as_str(), json["kind"].as_str()),
            (Some("networking.k8s.io/v1"), Some("NetworkPolicy"))
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        let text = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Has}]}
  policyTypes: [Ingress, Sideways]
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}, {}]
    ports: [{protocol: ICMP}, {port: 80, endPort: 70}, {port: Not_A_Name}]
";
        let docs = parse_documents(text).unwrap();
        let error = docs[0].validate().unwrap_err().to_string();
        for expected in [
            "spec.podSelector.matchExpressions[0].operator \"Has\"",
            "spec.policyTypes[1] \"Sideways\"",
            "spec.ingress[0].from[0].ipBlock.except[0] \"192.168.0.0/16\"",
            "spec.ingress[0].from[1]: must have podSelector",
            "spec.ingress[0].ports[0].protocol \"ICMP\"",
            "spec.ingress[0].ports[1].endPort \"70\"",
            "spec.ingress[0].ports[2].port \"Not_A_Name\"",
        ] {
            assert!(error.contains(expected), "{expected} in {error}");
        }
    }
}
