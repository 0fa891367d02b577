//! IPAMConfiguration: the cluster-wide IPAM rules, one resource named `default`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Spec, Validator};

/// The IPAMConfiguration spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IpamConfiguration {
    /// Never borrow addresses from another node's block: a node with no free block gets an
    /// exhaustion error instead.
    pub strict_affinity: bool,
    /// The most blocks one node may own per address family; 0 means no limit. A node at the
    /// limit borrows single addresses (unless `strictAffinity`).
    pub max_blocks_per_node: u32,
    /// How long a released address rests before it is handed out again, so a new pod never
    /// inherits the conntrack entries of the one before it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub release_cooldown: Duration,
    /// How long garbage collection waits before it releases an address whose holder (pod or
    /// node) is missing: the allocation must be at least this old, and an earlier pass must
    /// have seen the same leak at least this long before. The same wait applies before a
    /// deleted node's blocks lose their owner. Longer than any CNI ADD can take.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub leak_grace_period: Duration,
}

impl Default for IpamConfiguration {
    fn default() -> Self {
        IpamConfiguration {
            strict_affinity: false,
            max_blocks_per_node: 0,
            release_cooldown: Duration::from_secs(60),
            leak_grace_period: Duration::from_secs(15 * 60),
        }
    }
}

impl Spec for IpamConfiguration {
    const KIND: &'static str = "IPAMConfiguration";
    const PLURAL: &'static str = "ipamconfigurations";

    fn validate(&self, _v: &mut Validator) {}
}
