//! IPPool: a range pods (and tunnel devices) take addresses from, and how traffic to it is
//! carried between nodes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Spec, Validator};

/// When a pool's traffic is encapsulated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EncapMode {
    /// Never encapsulate.
    #[default]
    Never,
    /// Always encapsulate between nodes.
    Always,
    /// Encapsulate only towards nodes in another subnet.
    CrossSubnet,
}

/// What a pool's addresses may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PoolUse {
    /// Pod addresses.
    Workload,
    /// Node tunnel device addresses.
    Tunnel,
}

fn default_selector() -> String {
    "all()".to_owned()
}

fn default_uses() -> Vec<PoolUse> {
    vec![PoolUse::Workload, PoolUse::Tunnel]
}

fn is_default_uses(uses: &[PoolUse]) -> bool {
    uses == default_uses()
}

/// The IPPool spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpPool {
    /// The pool's range. Immutable.
    #[schemars(with = "String")]
    pub cidr: IpNetwork,
    /// The prefix length of the blocks the pool is cut into: 20-32 for IPv4 (default 26),
    /// 116-128 for IPv6 (default 122). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// IP-in-IP encapsulation (IPv4 only).
    #[serde(default, rename = "ipipMode")]
    pub ipip_mode: EncapMode,
    /// VXLAN encapsulation.
    #[serde(default, rename = "vxlanMode")]
    pub vxlan_mode: EncapMode,
    /// Masquerade traffic from this pool to destinations outside every pool.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// No new addresses are handed out of a disabled pool.
    #[serde(default)]
    pub disabled: bool,
    /// Keep the pool's routes out of BGP.
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
    /// Which nodes may take blocks from the pool.
    #[serde(default = "default_selector")]
    pub node_selector: String,
    /// What the addresses may be used for.
    #[serde(default = "default_uses", skip_serializing_if = "is_default_uses")]
    pub allowed_uses: Vec<PoolUse>,
}

impl IpPool {
    /// A pool over `cidr` with every other field at its default.
    pub fn new(cidr: IpNetwork) -> Self {
        IpPool {
            cidr,
            block_size: None,
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export: false,
            node_selector: default_selector(),
            allowed_uses: default_uses(),
        }
    }

    /// The block prefix length in force.
    pub fn block_size(&self) -> u8 {
        self.block_size.unwrap_or(if self.cidr.is_ipv4() { 26 } else { 122 })
    }

    /// Whether the pool may serve `usage`.
    pub fn allows(&self, usage: PoolUse) -> bool {
        self.allowed_uses.contains(&usage)
    }

    /// How the pool's traffic travels from a node whose address (with its subnet's prefix
    /// length) is `mine` to another node at `peer`: VXLAN, else IP-in-IP (IPv4 only), each
    /// when its mode is `Always`, or `CrossSubnet` and `peer` is outside `mine`'s subnet;
    /// otherwise unencapsulated. The one rule the agent programs and `diagnose` explains.
    pub fn encapsulation_toward(&self, mine: Option<IpNetwork>, peer: IpAddr) -> Encapsulation {
        let same_subnet = mine.is_some_and(|net| net.contains(peer));
        let applies = |mode: EncapMode| match mode {
            EncapMode::Never => false,
            EncapMode::Always => true,
            EncapMode::CrossSubnet => !same_subnet,
        };
        if applies(self.vxlan_mode) {
            Encapsulation::Vxlan
        } else if self.cidr.is_ipv4() && applies(self.ipip_mode) {
            Encapsulation::Ipip
        } else {
            Encapsulation::None
        }
    }

    /// The most the pool's encapsulation can add to a packet, in bytes: what the pod MTU
    /// leaves for it.
    pub fn max_overhead(&self) -> u32 {
        let v6 = self.cidr.is_ipv6();
        if self.vxlan_mode != EncapMode::Never {
            Encapsulation::Vxlan.overhead(v6)
        } else if self.ipip_mode != EncapMode::Never && !v6 {
            Encapsulation::Ipip.overhead(v6)
        } else {
            0
        }
    }
}

/// How a packet travels between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// As it is, routed to the node.
    None,
    /// In VXLAN (UDP) to the node's VTEP.
    Vxlan,
    /// In IP-in-IP to the node.
    Ipip,
}

impl Encapsulation {
    /// The bytes it adds to a packet of the family: VXLAN 50 over IPv4 and 70 over IPv6
    /// (outer IP, UDP, VXLAN and Ethernet headers), IP-in-IP 20.
    pub fn overhead(self, ipv6: bool) -> u32 {
        match self {
            Encapsulation::None => 0,
            Encapsulation::Ipip => 20,
            Encapsulation::Vxlan if ipv6 => 70,
            Encapsulation::Vxlan => 50,
        }
    }
}

/// Ranges no pool may overlap: pods would be unreachable or would shadow host traffic.
const RESERVED: &[(&str, &str)] = &[
    ("169.254.0.0/16", "the link-local range (the pods' gateway 169.254.1.1 lives there)"),
    ("127.0.0.0/8", "the loopback range"),
    ("224.0.0.0/4", "the multicast range"),
    ("fe80::/10", "the IPv6 link-local range"),
    ("::1/128", "the IPv6 loopback address"),
    ("ff00::/8", "the IPv6 multicast range"),
];

/// Whether two networks share any address.
pub(crate) fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

impl Spec for IpPool {
    const KIND: &'static str = "IPPool";
    const PLURAL: &'static str = "ippools";

    fn validate(&self, v: &mut Validator) {
        v.network_address("spec.cidr", &self.cidr);
        for (range, what) in RESERVED {
            let reserved: IpNetwork = range.parse().expect("reserved ranges are valid CIDRs");
            if overlaps(&self.cidr, &reserved) {
                v.problem("spec.cidr", self.cidr, format!("overlaps {what} {range}"));
            }
        }
        let size = self.block_size();
        let (family, range) = if self.cidr.is_ipv4() { ("IPv4", 20..=32) } else { ("IPv6", 116..=128) };
        if !range.contains(&size) {
            v.problem(
                "spec.blockSize",
                size,
                format!("must be {} to {} for an {family} pool", range.start(), range.end()),
            );
        } else if size < self.cidr.prefix() {
            v.problem(
                "spec.blockSize",
                size,
                format!("a /{size} block does not fit in the /{} pool", self.cidr.prefix()),
            );
        }
        if self.cidr.is_ipv6() && self.ipip_mode != EncapMode::Never {
            v.problem(
                "spec.ipipMode",
                format!("{:?}", self.ipip_mode),
                "IP-in-IP carries IPv4 only; use vxlanMode for an IPv6 pool",
            );
        }
        if self.ipip_mode != EncapMode::Never && self.vxlan_mode != EncapMode::Never {
            v.problem(
                "spec.vxlanMode",
                format!("{:?}", self.vxlan_mode),
                format!("cannot be on together with ipipMode {:?}; choose one encapsulation", self.ipip_mode),
            );
        }
        v.selector("spec.nodeSelector", &self.node_selector);
        if self.allowed_uses.is_empty() {
            v.problem("spec.allowedUses", "[]", "must name Workload, Tunnel or both");
        }
    }

    fn validate_update(old: &Self, new: &Self, v: &mut Validator) {
        if old.cidr != new.cidr {
            v.problem("spec.cidr", new.cidr, format!("is immutable (was {}); create a new pool instead", old.cidr));
        }
        if old.block_size() != new.block_size() {
            v.problem("spec.blockSize", new.block_size(), format!("is immutable (was {})", old.block_size()));
        }
    }

    const HAS_CONFLICTS: bool = true;

    fn check_conflict(&self, other: &super::Resource<Self>, v: &mut Validator) {
        if overlaps(&self.cidr, &other.spec.cidr) {
            v.problem(
                "spec.cidr",
                self.cidr,
                format!("overlaps IPPool \"{}\" ({})", other.metadata.name, other.spec.cidr),
            );
        }
    }

    const CONFLICTS_WITH_NODES: bool = true;

    fn check_node(&self, node: &super::Resource<super::Node>, v: &mut Validator) {
        if let Some(address) = node.spec.known_addresses().find(|a| self.cidr.contains(*a)) {
            v.problem(
                "spec.cidr",
                self.cidr,
                format!(
                    "contains {address}, the address of node \"{}\": pods would be given node addresses and \
                     every route to a node inside a pool is refused",
                    node.metadata.name
                ),
            );
        }
    }

    fn complete(&mut self) {
        self.block_size = Some(self.block_size());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    fn problems(spec: IpPool) -> String {
        Resource::new("p", spec).validate().map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    fn pool(cidr: &str) -> IpPool {
        IpPool::new(cidr.parse().unwrap())
    }

    #[test]
    fn a_plain_pool_is_valid_with_calico_defaults() {
        let p = pool("10.244.0.0/16");
        assert_eq!(problems(p.clone()), "");
        assert_eq!(p.block_size(), 26);
        assert_eq!(pool("fd00:10::/64").block_size(), 122);
    }

    #[test]
    fn unmasked_cidr_suggests_the_network() {
        assert!(
            problems(pool("10.244.1.7/16"))
                .contains("spec.cidr \"10.244.1.7/16\": has host bits set; did you mean 10.244.0.0/16?")
        );
    }

    #[test]
    fn block_size_must_fit_the_family_and_the_pool() {
        let mut p = pool("10.0.0.0/16");
        p.block_size = Some(19);
        assert!(problems(p).contains("spec.blockSize \"19\": must be 20 to 32 for an IPv4 pool"));
        let mut p = pool("fd00::/64");
        p.block_size = Some(112);
        assert!(problems(p).contains("must be 116 to 128 for an IPv6 pool"));
        let mut p = pool("10.0.0.0/28");
        p.block_size = Some(26);
        assert!(problems(p).contains("a /26 block does not fit in the /28 pool"));
    }

    #[test]
    fn reserved_ranges_are_refused() {
        assert!(problems(pool("169.254.0.0/20")).contains("link-local"));
        assert!(problems(pool("0.0.0.0/0")).contains("link-local"));
        assert!(problems(pool("fe80::/64")).contains("IPv6 link-local"));
    }

    #[test]
    fn encapsulation_rules() {
        let mut p = pool("fd00::/64");
        p.ipip_mode = EncapMode::Always;
        assert!(problems(p).contains("spec.ipipMode \"Always\": IP-in-IP carries IPv4 only"));
        let mut p = pool("10.0.0.0/16");
        p.ipip_mode = EncapMode::CrossSubnet;
        p.vxlan_mode = EncapMode::Always;
        assert!(problems(p).contains("cannot be on together with ipipMode CrossSubnet"));
    }

    #[test]
    fn bad_selector_is_named() {
        let mut p = pool("10.0.0.0/16");
        p.node_selector = "zone ==".into();
        assert!(problems(p).contains("spec.nodeSelector \"zone ==\""));
    }

    #[test]
    fn cidr_and_block_size_are_immutable() {
        let old = Resource::new("p", pool("10.0.0.0/16"));
        let mut new = old.clone();
        new.spec.cidr = "10.1.0.0/16".parse().unwrap();
        new.spec.block_size = Some(28);
        let err = new.validate_update(&old).unwrap_err().to_string();
        assert!(err.contains("spec.cidr \"10.1.0.0/16\": is immutable (was 10.0.0.0/16)"), "{err}");
        assert!(err.contains("spec.blockSize \"28\": is immutable (was 26)"), "{err}");
    }

    #[test]
    fn encapsulation_follows_the_modes_and_the_subnet() {
        let mut pool = IpPool::new("10.244.0.0/16".parse().unwrap());
        let mine = Some("10.0.0.5/24".parse().unwrap());
        let (near, far) = ("10.0.0.9".parse().unwrap(), "10.0.1.9".parse().unwrap());
        assert_eq!(pool.encapsulation_toward(mine, far), Encapsulation::None);
        pool.ipip_mode = EncapMode::CrossSubnet;
        assert_eq!(pool.encapsulation_toward(mine, near), Encapsulation::None);
        assert_eq!(pool.encapsulation_toward(mine, far), Encapsulation::Ipip);
        assert_eq!(pool.max_overhead(), 20);
        pool.vxlan_mode = EncapMode::Always;
        assert_eq!(pool.encapsulation_toward(mine, near), Encapsulation::Vxlan, "VXLAN wins");
        assert_eq!(pool.max_overhead(), 50);
        let mut v6 = IpPool::new("fd00:10:244::/64".parse().unwrap());
        v6.ipip_mode = EncapMode::Always;
        assert_eq!(
            v6.encapsulation_toward(None, "fd00::9".parse().unwrap()),
            Encapsulation::None,
            "no IP-in-IP for IPv6"
        );
        assert_eq!(v6.max_overhead(), 0);
        v6.vxlan_mode = EncapMode::CrossSubnet;
        assert_eq!(v6.max_overhead(), 70);
    }
}
