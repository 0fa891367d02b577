//! The resource model: what operators write and every component reads.
//!
//! Each kind is a spec type implementing [`Spec`], wrapped in a [`Resource`] that carries the
//! `apiVersion: brindle.io/v1`, `kind` and [`Metadata`] envelope. Field names and defaults
//! follow Calico's, so a Calico operator feels at home. Parsing is strict (unknown fields are
//! errors that name the field) and validation reports every problem at once, each naming the
//! resource, the field and the value.

mod agent_config;
mod bgp;
mod bgp_filter;
mod ipam_config;
mod ippool;
mod kubernetes;
mod node;
mod policy;
pub mod validation;
mod workload;

use std::collections::BTreeMap;
use std::fmt::Debug;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use agent_config::{
    AgentConfiguration, BgpBackend, EndpointToHostAction, IptablesBackend, LogSeverity, POLICY_ALLOW_MARK,
    POLICY_PASS_MARK,
};
pub use bgp::{
    Bfd, BgpConfiguration, BgpPassword, BgpPeer, Community, FailureDetectionMode, MaxPrefixesAction,
    PrefixAdvertisement, SecretKeyRef, ServiceCidr, SourceAddress,
};
pub use bgp_filter::{BgpFilter, BgpFilterRule, FilterAction, MatchOperator, PrefixLength, RouteSource};
pub use ipam_config::IpamConfiguration;
pub use ippool::{EncapMode, Encapsulation, IpPool, PoolUse};
pub use kubernetes::{
    IntOrString, IpBlock, KubernetesNetworkPolicy, LabelRequirement, LabelSelector, Namespace, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
pub use node::{Node, NodeAddress, NodeBgp, OrchestratorRef, is_wireguard_key};
pub use policy::{
    Action, DEFAULT_TIER, DEFAULT_TIER_ORDER, EntityRule, GlobalNetworkPolicy, IcmpMatch, NetworkPolicy, PolicySpec,
    PolicyType, Port, PortMatch, Protocol, Rule, ServiceAccountMatch, Tier,
};
pub use validation::{Problem, ValidationError, Validator};
pub use workload::{EndpointPort, WorkloadEndpoint};

use crate::{Error, Result};

/// The apiVersion of brindle's own kinds.
pub const API_VERSION: &str = "brindle.io/v1";

/// Identity and bookkeeping common to every resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The resource's name, unique within its kind (and namespace).
    pub name: String,
    /// The namespace, for namespaced kinds only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels, matched by selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form notes for people and tools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The store revision of the last write, set by the datastore. An update must carry the
    /// value it read (compare-and-swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl Metadata {
    /// Metadata with just a name.
    pub fn named(name: impl Into<String>) -> Self {
        Metadata { name: name.into(), ..Metadata::default() }
    }
}

/// A kind of resource: its spec type, names, and rules.
pub trait Spec:
    Serialize + DeserializeOwned + schemars::JsonSchema + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// The kind's name in brindle, e.g. `IPPool`: unique among kinds, and the `kind` field
    /// unless [`Spec::WIRE_KIND`] says otherwise.
    const KIND: &'static str;
    /// The `apiVersion` field: brindle's, or Kubernetes' for its own kinds.
    const API_VERSION: &'static str = API_VERSION;
    /// The `kind` field where it differs from [`Spec::KIND`] (Kubernetes' `NetworkPolicy`,
    /// which brindle calls `KubernetesNetworkPolicy` beside its own).
    const WIRE_KIND: &'static str = Self::KIND;
    /// The lower-case plural used in keys and on the command line, e.g. `ippools`.
    const PLURAL: &'static str;
    /// Whether names are scoped by a namespace.
    const NAMESPACED: bool = false;

    /// Checks the spec on its own, recording every problem.
    fn validate(&self, v: &mut Validator);

    /// Checks what an update may not change. Nothing is immutable unless a kind says so.
    fn validate_update(_old: &Self, _new: &Self, _v: &mut Validator) {}

    /// Whether resources of this kind can conflict with each other (see
    /// [`Spec::check_conflict`]); only then does a write read the others.
    const HAS_CONFLICTS: bool = false;

    /// Records a problem if `self` may not exist beside `other` (e.g. overlapping pools).
    fn check_conflict(&self, _other: &Resource<Self>, _v: &mut Validator) {}

    /// Whether resources of this kind can conflict with nodes (see [`Spec::check_node`]);
    /// only then does a write read the nodes.
    const CONFLICTS_WITH_NODES: bool = false;

    /// Records a problem if `self` may not exist beside `node` (a pool holding its address).
    fn check_node(&self, _node: &Resource<Node>, _v: &mut Validator) {}

    /// Fills defaults that depend on other fields (e.g. a pool's block size on its family),
    /// so what is stored says exactly what is in force.
    fn complete(&mut self) {}
}

/// One resource: the envelope and the spec of kind `S`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource<S> {
    /// Name, labels, revision.
    pub metadata: Metadata,
    /// The kind's settings.
    pub spec: S,
}

impl<S: Spec> Resource<S> {
    /// A resource with this name and spec.
    pub fn new(name: impl Into<String>, spec: S) -> Self {
        Resource { metadata: Metadata::named(name), spec }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The store revision this copy was read at, if it was read from the store.
    pub fn revision(&self) -> Option<i64> {
        self.metadata.resource_version.as_deref().and_then(|v| v.parse().ok())
    }

    /// Validates the metadata and the spec, reporting every problem at once.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut v = Validator::new(S::KIND, &self.metadata.name);
        validation::check_metadata(&self.metadata, S::NAMESPACED, &mut v);
        self.spec.validate(&mut v);
        v.finish()
    }

    /// Validates `self` as an update of `old`: everything [`Resource::validate`] checks, plus
    /// the kind's immutable fields.
    pub fn validate_update(&self, old: &Resource<S>) -> Result<(), ValidationError> {
        let mut v = Validator::new(S::KIND, &self.metadata.name);
        validation::check_metadata(&self.metadata, S::NAMESPACED, &mut v);
        self.spec.validate(&mut v);
        S::validate_update(&old.spec, &self.spec, &mut v);
        v.finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeRef<'a, S> {
    api_version: &'a str,
    kind: &'a str,
    metadata: &'a Metadata,
    spec: &'a S,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<S> {
    api_version: String,
    kind: String,
    metadata: Metadata,
    /// Absent in a Kubernetes Namespace as users write it: the spec's defaults then.
    spec: Option<S>,
}

impl<S: Spec> Serialize for Resource<S> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        EnvelopeRef { api_version: S::API_VERSION, kind: S::WIRE_KIND, metadata: &self.metadata, spec: &self.spec }
            .serialize(serializer)
    }
}

impl<'de, S: Spec> Deserialize<'de> for Resource<S> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let envelope = Envelope::<S>::deserialize(deserializer)?;
        if envelope.api_version != S::API_VERSION {
            let wanted = S::API_VERSION;
            return Err(D::Error::custom(format!("apiVersion \"{}\" is not {wanted}", envelope.api_version)));
        }
        if envelope.kind != S::WIRE_KIND {
            return Err(D::Error::custom(format!("kind \"{}\" is not {}", envelope.kind, S::WIRE_KIND)));
        }
        let spec = match envelope.spec {
            Some(spec) => spec,
            None => serde_json::from_value(serde_json::json!({})).map_err(|_| D::Error::missing_field("spec"))?,
        };
        Ok(Resource { metadata: envelope.metadata, spec })
    }
}

/// Decodes a JSON value into a typed resource; a failure names the field path.
pub fn from_value<S: Spec>(value: serde_json::Value) -> Result<Resource<S>> {
    serde_path_to_error::deserialize(value).map_err(|e| decode_error(S::KIND, e))
}

/// Decodes stored JSON bytes into a typed resource.
pub fn from_slice<S: Spec>(bytes: &[u8]) -> Result<Resource<S>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| decode_error(S::KIND, e))
}

fn decode_error<E: std::fmt::Display>(kind: &str, e: serde_path_to_error::Error<E>) -> Error {
    let path = e.path().to_string();
    if path.is_empty() || path == "." {
        Error::Invalid(format!("{kind}: {}", e.inner()))
    } else {
        Error::Invalid(format!("{kind}: {path}: {}", e.inner()))
    }
}

/// Work done with the type of a kind chosen by name at run time (see [`visit_kind`]).
pub trait KindVisitor {
    /// What the work gives.
    type Output;
    /// Does the work with spec type `S`; `wrap` makes an [`AnyResource`] of a `Resource<S>`.
    fn visit<S: Spec>(self, wrap: fn(Resource<S>) -> AnyResource) -> Self::Output;
}

/// Work done with a resource of any kind as its own type (see [`AnyResource::visit`]).
pub trait ResourceVisitor {
    /// What the work gives.
    type Output;
    /// Does the work with `resource`; `wrap` makes an [`AnyResource`] of a `Resource<S>`.
    fn visit<S: Spec>(self, resource: Resource<S>, wrap: fn(Resource<S>) -> AnyResource) -> Self::Output;
}

macro_rules! any_resource {
    ($($variant:ident($spec:ty)),* $(,)?) => {
        /// A resource of any kind, as found in a file of many documents.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum AnyResource {
            $(
                #[doc = concat!("A `", stringify!($variant), "`.")]
                $variant(Resource<$spec>),
            )*
        }

        /// Every kind's `kind` name, in a stable order.
        pub const KINDS: &[&str] = &[$(<$spec as Spec>::KIND),*];

        /// Every kind with its plural and whether it is namespaced, in the order of [`KINDS`].
        pub const KIND_NAMES: &[(&str, &str, bool)] =
            &[$((<$spec as Spec>::KIND, <$spec as Spec>::PLURAL, <$spec as Spec>::NAMESPACED)),*];

        /// The `kind` name for what an operator typed: the kind in any case (`ippool`), its
        /// plural (`ippools`), or the plural's singular (`workloadendpoint`).
        pub fn kind_named(typed: &str) -> Option<&'static str> {
            let typed = typed.to_ascii_lowercase();
            $(
                let plural = <$spec as Spec>::PLURAL;
                if typed == <$spec as Spec>::KIND.to_ascii_lowercase()
                    || typed == plural
                    || Some(typed.as_str()) == plural.strip_suffix('s')
                {
                    return Some(<$spec as Spec>::KIND);
                }
            )*
            None
        }

        /// The JSON schema of `kind`'s spec, made by `generator`.
        pub fn spec_schema(kind: &str, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
            $(if kind == <$spec as Spec>::KIND { return Some(generator.root_schema_for::<$spec>()); })*
            None
        }

        /// Whether resources of `kind` live in a namespace.
        pub fn kind_is_namespaced(kind: &str) -> bool {
            $(if kind == <$spec as Spec>::KIND { return <$spec as Spec>::NAMESPACED; })*
            false
        }

        /// Runs `visitor` with the spec type of `kind` (a name from [`KINDS`]); `None` for a
        /// kind that does not exist.
        pub fn visit_kind<V: KindVisitor>(kind: &str, visitor: V) -> Option<V::Output> {
            $(if kind == <$spec as Spec>::KIND { return Some(visitor.visit::<$spec>(AnyResource::$variant)); })*
            None
        }

        impl AnyResource {
            /// Runs `visitor` with the resource as its own type.
            pub fn visit<V: ResourceVisitor>(self, visitor: V) -> V::Output {
                match self { $(AnyResource::$variant(r) => visitor.visit(r, AnyResource::$variant)),* }
            }
        }

        impl AnyResource {
            /// Decodes a JSON value by its `apiVersion` and `kind` fields (Kubernetes'
            /// `NetworkPolicy` and brindle's share a kind name).
            pub fn from_value(value: serde_json::Value) -> Result<Self> {
                let field = |name: &str| value.get(name).and_then(|k| k.as_str()).unwrap_or_default().to_owned();
                let (api_version, kind) = (field("apiVersion"), field("kind"));
                $(
                    if kind == <$spec as Spec>::WIRE_KIND && api_version == <$spec as Spec>::API_VERSION {
                        return from_value::<$spec>(value).map(AnyResource::$variant);
                    }
                )*
                // A known kind under another apiVersion: its own decoding names the mismatch.
                $(
                    if kind == <$spec as Spec>::WIRE_KIND {
                        return from_value::<$spec>(value).map(AnyResource::$variant);
                    }
                )*
                if kind.is_empty() {
                    return Err(Error::Invalid("resource has no kind".into()));
                }
                Err(Error::Invalid(format!("unknown kind \"{kind}\" (known: {})", KINDS.join(", "))))
            }

            /// The `kind` name.
            pub fn kind(&self) -> &'static str {
                match self { $(AnyResource::$variant(_) => <$spec as Spec>::KIND),* }
            }

            /// The metadata.
            pub fn metadata(&self) -> &Metadata {
                match self { $(AnyResource::$variant(r) => &r.metadata),* }
            }

            /// The metadata, to change.
            pub fn metadata_mut(&mut self) -> &mut Metadata {
                match self { $(AnyResource::$variant(r) => &mut r.metadata),* }
            }

            /// Validates the resource on its own.
            pub fn validate(&self) -> Result<(), ValidationError> {
                match self { $(AnyResource::$variant(r) => r.validate()),* }
            }

            /// The resource as JSON.
            pub fn to_json(&self) -> serde_json::Value {
                let value = match self { $(AnyResource::$variant(r) => serde_json::to_value(r)),* };
                value.unwrap_or(serde_json::Value::Null)
            }
        }
    };
}

any_resource! {
    IpPool(IpPool),
    Node(Node),
    BgpPeer(BgpPeer),
    BgpConfiguration(BgpConfiguration),
    BgpFilter(BgpFilter),
    AgentConfiguration(AgentConfiguration),
    IpamConfiguration(IpamConfiguration),
    WorkloadEndpoint(WorkloadEndpoint),
    Namespace(Namespace),
    KubernetesNetworkPolicy(KubernetesNetworkPolicy),
    NetworkPolicy(NetworkPolicy),
    GlobalNetworkPolicy(GlobalNetworkPolicy),
    Tier(Tier),
}

/// Parses a file of resources: one JSON object, a JSON array, or YAML with one or more
/// documents separated by `---`. Each document's errors name its position.
pub fn parse_documents(text: &str) -> Result<Vec<AnyResource>> {
    let trimmed = text.trim_start();
    let values: Vec<serde_json::Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str(trimmed).map_err(|e| Error::Invalid(format!("JSON: {e}")))? {
            serde_json::Value::Array(items) => items,
            single => vec![single],
        }
    } else {
        // YAML 1.2 booleans only: a label value such as `y` or `on` stays a string (the
        // "Norway problem" of YAML 1.1).
        let mut options = serde_saphyr::Options::default();
        options.strict_booleans = true;
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| Error::Invalid(format!("YAML: {e}")))?
    };
    values
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, v)| {
            AnyResource::from_value(v).map_err(|e| match e {
                Error::Invalid(msg) => Error::Invalid(format!("document {}: {msg}", i + 1)),
                other => other,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_by_any_name_an_operator_types() {
        for typed in ["IPPool", "ippool", "ippools", "IPPOOLS"] {
            assert_eq!(kind_named(typed), Some("IPPool"), "{typed}");
        }
        assert_eq!(kind_named("workloadendpoint"), Some("WorkloadEndpoint"));
        assert_eq!(kind_named("bgppeers"), Some("BGPPeer"));
        assert_eq!(kind_named("BGPFilter"), Some("BGPFilter"));
        assert_eq!(kind_named("pools"), None);
        assert!(kind_is_namespaced("WorkloadEndpoint") && !kind_is_namespaced("Node"));
    }

    #[test]
    fn yaml_with_many_documents_parses_by_kind() {
        let text = "
apiVersion: brindle.io/v1
kind: IPPool
metadata: {name: default-ipv4}
spec: {cidr: 10.244.0.0/16, vxlanMode: Always, natOutgoing: true}
---
apiVersion: brindle.io/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        let AnyResource::IpPool(pool) = &docs[0] else { panic!("{docs:?}") };
        assert_eq!(pool.spec.vxlan_mode, EncapMode::Always);
        assert_eq!(pool.spec.node_selector, "all()");
        let AnyResource::BgpConfiguration(bgp) = &docs[1] else { panic!("{docs:?}") };
        assert!(!bgp.spec.node_to_node_mesh_enabled);
        assert_eq!(bgp.spec.as_number, 64512);
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = r#"{"apiVersion":"brindle.io/v1","kind":"IPPool","metadata":{"name":"p"},
                       "spec":{"cidr":"10.0.0.0/16","ipipmode":"Always"}}"#;
        let err = parse_documents(text).unwrap_err().to_string();
        assert!(err.contains("document 1: IPPool: spec"), "{err}");
        assert!(err.contains("ipipmode"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_path() {
        let text = "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0/33}\n";
        let err = parse_documents(text).unwrap_err().to_string();
        assert!(err.contains("spec.cidr"), "{err}");
    }

    #[test]
    fn wrong_api_version_and_unknown_kind_are_rejected() {
        let err = parse_documents("apiVersion: v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apiVersion \"v1\""), "{err}");
        let err = parse_documents("apiVersion: brindle.io/v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind \"Pod\""), "{err}");
    }

    #[test]
    fn resources_round_trip_through_json() {
        let pool = Resource::new("p", IpPool::new("10.1.0.0/16".parse().unwrap()));
        let json = serde_json::to_vec(&pool).unwrap();
        assert_eq!(from_slice::<IpPool>(&json).unwrap(), pool);
    }
}
