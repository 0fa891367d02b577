//! Where things live in the key space. Nothing else builds keys.

use ipnetwork::IpNetwork;

use crate::resource::Spec;

/// The prefix of every resource key.
pub const RESOURCES: &str = "/brindle/v1/";

/// The prefix of every IPAM block key.
pub const BLOCKS: &str = "/brindle/ipam/v1/blocks/";

/// Where garbage collection keeps what its last pass saw (outside the blocks' prefix).
pub const IPAM_GC_RECORD: &str = "/brindle/ipam/v1/gc";

/// The key whose revision serializes creating resources of kind `S` that can conflict with
/// each other (overlapping pools): see `Client::create`. Outside the resources' prefix.
pub fn create_guard<S: Spec>() -> String {
    format!("/brindle/guards/v1/{}", S::PLURAL)
}

/// The prefix of every resource of kind `S`.
pub fn kind_prefix<S: Spec>() -> String {
    format!("{RESOURCES}{}/", S::PLURAL)
}

/// The key of one resource: `/brindle/v1/<plural>/[<namespace>/]<name>`.
pub fn resource<S: Spec>(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{}{ns}/{name}", kind_prefix::<S>()),
        None => format!("{}{name}", kind_prefix::<S>()),
    }
}

/// The key of the block with this CIDR: `/brindle/ipam/v1/blocks/10.244.0.64-26`.
pub fn block(cidr: &IpNetwork) -> String {
    format!("{BLOCKS}{}-{}", cidr.network(), cidr.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{IpPool, WorkloadEndpoint};

    #[test]
    fn layout_matches_the_design() {
        assert_eq!(resource::<IpPool>(None, "default"), "/brindle/v1/ippools/default");
        assert_eq!(resource::<WorkloadEndpoint>(Some("ns1"), "pod-eth0"), "/brindle/v1/workloadendpoints/ns1/pod-eth0");
        assert_eq!(block(&"10.244.0.64/26".parse().unwrap()), "/brindle/ipam/v1/blocks/10.244.0.64-26");
        assert_eq!(block(&"fd00::40/122".parse().unwrap()), "/brindle/ipam/v1/blocks/fd00::40-122");
        assert!(!IPAM_GC_RECORD.starts_with(BLOCKS), "listing the blocks must not return the record");
        assert!(!create_guard::<IpPool>().starts_with(RESOURCES), "listing resources must not return a guard");
    }
}
