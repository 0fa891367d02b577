//! The names brindle gives what it makes in the kernel, so every component recognises them.

/// The routing protocol number on every route brindle makes, so the agent can tell its own
/// routes from everyone else's (`ip route show proto 98`).
pub const ROUTE_PROTOCOL: u8 = 98;

/// The kernel's main routing table (`ip route` without `table`).
pub const MAIN_TABLE: u32 = 254;

/// Every host-side pod veth's name starts with this (`brin` + a digest of the endpoint).
pub const WORKLOAD_PREFIX: &str = "brin";

/// The VXLAN device over IPv4.
pub const VXLAN_DEVICE: &str = "vxlan.brindle";

/// The VXLAN device over IPv6 (pods' IPv6 traffic between nodes' IPv6 addresses). Not
/// `vxlan-v6.brindle`: a name has at most 15 bytes (IFNAMSIZ), and the kernel refuses longer.
pub const VXLAN_V6_DEVICE: &str = "vxlan6.brindle";

/// The VXLAN device of a family.
pub fn vxlan_device(ipv6: bool) -> &'static str {
    if ipv6 { VXLAN_V6_DEVICE } else { VXLAN_DEVICE }
}

/// The kernel's IP-in-IP device (it exists in every namespace once the ipip module is
/// loaded).
pub const IPIP_DEVICE: &str = "tunl0";

/// Whether `name` is a pod's host-side veth.
pub fn is_workload(name: &str) -> bool {
    name.starts_with(WORKLOAD_PREFIX)
}

/// The chain that dispatches traffic from workloads to their endpoints' egress chains.
pub const FROM_WORKLOADS: &str = "brin-from-wl";

/// The chain that dispatches traffic to workloads to their endpoints' ingress chains.
pub const TO_WORKLOADS: &str = "brin-to-wl";

/// The policy chain of every endpoint with the same policies in one direction, named by a
/// digest of `profile` (those policies, tier by tier, as text): `brin-tw-<16 hex>` for traffic
/// to them (their ingress), `brin-fw-<16 hex>` for traffic from them (their egress).
pub fn profile_chain(profile: &str, ingress: bool) -> String {
    format!("brin-{}-{}", if ingress { "tw" } else { "fw" }, digest(profile))
}

/// A policy's chain for one direction, named by a digest of `policy` (its kind, namespace
/// and name as text): `brin-pi-<16 hex>` (ingress) or `brin-pe-<16 hex>` (egress).
pub fn policy_chain(policy: &str, ingress: bool) -> String {
    format!("brin-p{}-{}", if ingress { 'i' } else { 'e' }, digest(policy))
}

/// A short stable digest of `text` (FNV-1a, 64 bits, as 16 hex digits): names derived from
/// what they stand for fit iptables' and ipset's 28- and 31-character limits.
pub fn digest(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_fit_the_kernel_s_limits() {
        let chain = policy_chain("KubernetesNetworkPolicy some-long-namespace/a-very-long-policy-name", true);
        assert!(chain.len() <= 28 && chain.starts_with("brin-pi-"), "{chain}");
        let profile = profile_chain("tier default: KubernetesNetworkPolicy x/a, KubernetesNetworkPolicy x/b", false);
        assert!(profile.len() <= 28 && profile.starts_with("brin-fw-"), "{profile}");
        assert_ne!(digest("a"), digest("b"));
        assert_eq!(digest(""), "cbf29ce484222325", "FNV-1a's offset basis");
    }
}
