//! Which pools a request may draw from, and which blocks of a pool a node tries to claim.
//! Pure functions of the resources.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;

use crate::resource::{IpPool, PoolUse, Resource};
use crate::selector::Selector;
use crate::{Error, Result};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of a network.
    pub fn of(net: &IpNetwork) -> Family {
        if net.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// `IPv4` or `IPv6`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

fn selects(pool: &IpPool, labels: &BTreeMap<String, String>) -> bool {
    pool.node_selector.parse::<Selector>().is_ok_and(|s| s.matches(labels))
}

/// The pools a request may use, in preference order.
///
/// With `requested` (pool names or CIDRs), exactly those, each of which must exist, be of the
/// family, be enabled, allow `usage` and select the node; otherwise every enabled pool of the
/// family that allows `usage` and selects the node, in name order.
pub fn eligible<'a>(
    pools: &'a [Resource<IpPool>],
    requested: &[String],
    family: Family,
    usage: PoolUse,
    node: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<&'a Resource<IpPool>>> {
    if requested.is_empty() {
        let chosen: Vec<_> = pools
            .iter()
            .filter(|p| Family::of(&p.spec.cidr) == family && !p.spec.disabled && p.spec.allows(usage))
            .filter(|p| selects(&p.spec, labels))
            .collect();
        if chosen.is_empty() {
            return Err(Error::Exhausted(format!(
                "no enabled {} pool for {usage:?} addresses selects node \"{node}\"",
                family.name()
            )));
        }
        return Ok(chosen);
    }
    requested
        .iter()
        .map(|wanted| {
            let pool = pools
                .iter()
                .find(|p| &p.metadata.name == wanted || p.spec.cidr.to_string() == *wanted)
                .ok_or_else(|| Error::Invalid(format!("IPPool \"{wanted}\" does not exist")))?;
            let describe = || format!("IPPool \"{}\" ({})", pool.metadata.name, pool.spec.cidr);
            if Family::of(&pool.spec.cidr) != family {
                return Err(Error::Invalid(format!("{} is not an {} pool", describe(), family.name())));
            }
            if pool.spec.disabled {
                return Err(Error::Invalid(format!("{} is disabled", describe())));
            }
            if !pool.spec.allows(usage) {
                return Err(Error::Invalid(format!("{} does not allow {usage:?} addresses", describe())));
            }
            if !selects(&pool.spec, labels) {
                return Err(Error::Invalid(format!(
                    "{} does not select node \"{node}\" (nodeSelector {})",
                    describe(),
                    pool.spec.node_selector
                )));
            }
            Ok(pool)
        })
        .collect()
}

/// How many blocks the pool is cut into (saturating at `u64::MAX`).
pub fn block_count(pool: &IpPool) -> u64 {
    let bits = u32::from(pool.block_size().saturating_sub(pool.cidr.prefix()));
    if bits >= 64 { u64::MAX } else { 1u64 << bits }
}

/// The block that holds `ip` in `pool`.
pub fn block_of(pool: &IpPool, ip: std::net::IpAddr) -> Option<IpNetwork> {
    pool.cidr.contains(ip).then(|| {
        let net = IpNetwork::new(ip, pool.block_size()).expect("block size was validated for the family");
        IpNetwork::new(net.network(), net.prefix()).expect("same prefix")
    })
}

/// The `index`-th block of the pool.
fn nth_block(pool: &IpPool, index: u64) -> IpNetwork {
    let host_bits = u32::from(if pool.cidr.is_ipv4() { 32u8 } else { 128u8 } - pool.block_size());
    let offset = u128::from(index) << host_bits;
    let ip = match pool.cidr {
        IpNetwork::V4(net) => std::net::IpAddr::V4(((u128::from(u32::from(net.network())) + offset) as u32).into()),
        IpNetwork::V6(net) => std::net::IpAddr::V6((u128::from(net.network()) + offset).into()),
    };
    IpNetwork::new(ip, pool.block_size()).expect("block size was validated for the family")
}

/// FNV-1a: a hash that stays the same across builds, so a node's starting block is stable.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The pool's blocks in the order `node` tries to claim them: starting at a place derived
/// from the node's name (so nodes claiming at once rarely collide), then wrapping around.
pub fn claim_order<'a>(pool: &'a IpPool, node: &str) -> impl Iterator<Item = IpNetwork> + 'a {
    let count = block_count(pool);
    let start = stable_hash(node) % count;
    (0..count).map(move |i| nth_block(pool, (start + i) % count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, cidr: &str) -> Resource<IpPool> {
        Resource::new(name, IpPool::new(cidr.parse().unwrap()))
    }

    fn names(pools: &[&Resource<IpPool>]) -> Vec<String> {
        pools.iter().map(|p| p.metadata.name.clone()).collect()
    }

    #[test]
    fn unrequested_pools_filter_by_family_state_use_and_selector() {
        let mut disabled = pool("b-disabled", "10.2.0.0/16");
        disabled.spec.disabled = true;
        let mut zoned = pool("c-zoned", "10.3.0.0/16");
        zoned.spec.node_selector = "zone == \"eu\"".into();
        let mut tunnel_only = pool("d-tunnel", "10.4.0.0/16");
        tunnel_only.spec.allowed_uses = vec![PoolUse::Tunnel];
        let pools = vec![pool("a", "10.1.0.0/16"), disabled, zoned, tunnel_only, pool("e-v6", "fd00::/64")];
        let eu: BTreeMap<_, _> = [("zone".to_string(), "eu".to_string())].into();
        let got = eligible(&pools, &[], Family::V4, PoolUse::Workload, "n1", &eu).unwrap();
        assert_eq!(names(&got), ["a", "c-zoned"]);
        let got = eligible(&pools, &[], Family::V4, PoolUse::Workload, "n1", &BTreeMap::new()).unwrap();
        assert_eq!(names(&got), ["a"]);
        let got = eligible(&pools, &[], Family::V4, PoolUse::Tunnel, "n1", &BTreeMap::new()).unwrap();
        assert_eq!(names(&got), ["a", "d-tunnel"]);
        let err = eligible(&pools[1..2], &[], Family::V4, PoolUse::Workload, "n1", &eu).unwrap_err();
        assert!(err.to_string().contains("no enabled IPv4 pool"), "{err}");
    }

    #[test]
    fn requested_pools_are_checked_one_by_one() {
        let mut disabled = pool("off", "10.2.0.0/16");
        disabled.spec.disabled = true;
        let pools = vec![pool("a", "10.1.0.0/16"), disabled, pool("v6", "fd00::/64")];
        let none = BTreeMap::new();
        let by_cidr = eligible(&pools, &["10.1.0.0/16".into()], Family::V4, PoolUse::Workload, "n1", &none).unwrap();
        assert_eq!(names(&by_cidr), ["a"]);
        for (wanted, needle) in [
            ("nope", "IPPool \"nope\" does not exist"),
            ("off", "IPPool \"off\" (10.2.0.0/16) is disabled"),
            ("v6", "is not an IPv4 pool"),
        ] {
            let err = eligible(&pools, &[wanted.into()], Family::V4, PoolUse::Workload, "n1", &none).unwrap_err();
            assert!(err.to_string().contains(needle), "{wanted}: {err}");
        }
    }

    #[test]
    fn claim_order_visits_every_block_once_from_a_stable_start() {
        let p = IpPool::new("10.0.0.0/24".parse().unwrap());
        let order: Vec<_> = claim_order(&p, "node-a").collect();
        assert_eq!(order.len(), 4);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            sorted.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/26", "10.0.0.192/26"]
        );
        assert_eq!(order, claim_order(&p, "node-a").collect::<Vec<_>>());
    }

    #[test]
    fn huge_ipv6_pools_do_not_overflow() {
        let p = IpPool::new("fd00::/64".parse().unwrap());
        assert_eq!(block_count(&p), 1 << 58);
        let first = claim_order(&p, "n").next().unwrap();
        assert_eq!(first.prefix(), 122);
        assert!(p.cidr.contains(first.network()));
        assert_eq!(block_of(&p, "fd00::1:5".parse().unwrap()).unwrap().to_string(), "fd00::1:0/122");
    }
}
