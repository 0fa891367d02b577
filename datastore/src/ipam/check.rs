//! The judgement behind `ipam check` and garbage collection: which addresses have lost their
//! holder, which blocks belong to nodes that are gone, which blocks disagree with their pool,
//! and which of those may be released now. Pure: the caller reads the resources, the record
//! the previous pass left and the clock.
//!
//! An address is released only when all three hold:
//! - its holder is missing: no WorkloadEndpoint has its container (a pod's address), or its
//!   Node is gone (a tunnel address);
//! - it was allocated at least a grace period ago;
//! - an earlier pass saw the same leak (same address, same handle) at least a grace period
//!   before.
//!
//! A node that is gone loses its blocks by the same two-pass rule. The CNI plugin takes a pod's
//! address before it writes the pod's WorkloadEndpoint, so during an ADD the address has no
//! holder; the age rule keeps garbage collection away from it however often it runs, and the
//! two-pass rule keeps one wrong clock or one odd moment from costing a live pod its address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{AllocationKind, Block};
use crate::resource::{IpPool, Node, Resource, WorkloadEndpoint};
use crate::selector::Selector;
use crate::store::Revision;

/// An address whose holder is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leak {
    /// The address.
    pub ip: IpAddr,
    /// Its handle: only an address this handle still holds is released.
    pub handle: String,
    /// A pod's address or a node's tunnel address.
    pub kind: AllocationKind,
    /// The node it was allocated for.
    pub node: String,
    /// The pod, for workload addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Why it counts as leaked.
    pub reason: String,
    /// When it was allocated (ms since the Unix epoch; 0 when not recorded).
    pub allocated_at_ms: u64,
    /// When a pass first saw it without its holder.
    pub first_seen_ms: u64,
    /// The earliest time a pass may release it.
    pub release_after_ms: u64,
    /// Whether this pass may release it: old enough, and seen by an earlier pass a grace
    /// period ago.
    pub releasable: bool,
}

/// A node that owns blocks but no longer exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoneNode {
    /// The node's name.
    pub node: String,
    /// The blocks it still owns: empty ones are deleted, the others lose their owner so any
    /// node can use their free addresses.
    pub blocks: Vec<IpNetwork>,
    /// When a pass first saw it missing.
    pub first_seen_ms: u64,
    /// The earliest time a pass may take its blocks away.
    pub release_after_ms: u64,
    /// Whether this pass may take its blocks away.
    pub releasable: bool,
}

/// A block worth an operator's look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockIssue {
    /// The block.
    pub cidr: IpNetwork,
    /// Its owner.
    pub owner: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// What a pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// When the pass looked (ms since the Unix epoch).
    pub at_ms: u64,
    /// The grace period it applied (IPAMConfiguration `leakGracePeriod`), in milliseconds.
    pub grace_ms: u64,
    /// How many blocks there are.
    pub blocks: usize,
    /// How many addresses are taken.
    pub allocations: usize,
    /// Addresses whose pod or node is missing, releasable or not yet.
    pub leaked: Vec<Leak>,
    /// Nodes that own blocks but do not exist.
    pub gone_nodes: Vec<GoneNode>,
    /// Owned blocks with no address taken (not a fault: the owner keeps them for new pods).
    pub empty_blocks: Vec<BlockIssue>,
    /// Blocks that disagree with their pool.
    pub mismatched_blocks: Vec<BlockIssue>,
}

impl CheckReport {
    /// Whether nothing needs fixing (empty blocks are fine).
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty() && self.gone_nodes.is_empty() && self.mismatched_blocks.is_empty()
    }

    /// What the next pass needs to know of this one: when each leak and each gone node was
    /// first seen.
    pub fn record(&self) -> GcRecord {
        GcRecord {
            leaks: self
                .leaked
                .iter()
                .map(|l| LeakSighting { ip: l.ip, handle: l.handle.clone(), first_seen_ms: l.first_seen_ms })
                .collect(),
            gone_nodes: self.gone_nodes.iter().map(|n| (n.node.clone(), n.first_seen_ms)).collect(),
        }
    }
}

/// What a garbage-collection pass leaves for the next: since when each leak and each gone node
/// has been seen. Stored in the datastore beside the blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcRecord {
    /// Addresses seen without their holder.
    pub leaks: Vec<LeakSighting>,
    /// Nodes seen missing while owning blocks, with when they were first seen.
    pub gone_nodes: BTreeMap<String, u64>,
}

/// One address seen without its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeakSighting {
    /// The address.
    pub ip: IpAddr,
    /// The handle that held it: a sighting counts only for the same address and handle.
    pub handle: String,
    /// When a pass first saw it.
    pub first_seen_ms: u64,
}

/// The resources a pass judges.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inputs<'a> {
    pub blocks: &'a [(Block, Revision)],
    pub nodes: &'a [Resource<Node>],
    pub pools: &'a [Resource<IpPool>],
    pub endpoints: &'a [Resource<WorkloadEndpoint>],
}

/// The container ID a handle `<network>.<containerID>` was made for.
fn container_of(handle: &str) -> &str {
    handle.rsplit_once('.').map_or(handle, |(_, id)| id)
}

/// Why an allocation's holder counts as missing, if it does.
pub(super) fn missing_holder(
    kind: AllocationKind,
    handle: &str,
    node: &str,
    containers: &HashSet<&str>,
    nodes: &HashSet<&str>,
) -> Option<String> {
    match kind {
        AllocationKind::Workload if !containers.contains(container_of(handle)) => {
            Some(format!("no WorkloadEndpoint has container ID \"{}\"", container_of(handle)))
        }
        AllocationKind::Tunnel if !nodes.contains(node) => {
            Some(format!("tunnel address of node \"{node}\", which does not exist"))
        }
        _ => None,
    }
}

/// When something first seen at `first_seen` (by an earlier pass when `seen_before`) and made at
/// `made` may be released, and whether it may be now.
fn timing(made: u64, first_seen: u64, seen_before: bool, now: u64, grace: u64) -> (u64, bool) {
    let after = made.max(first_seen).saturating_add(grace);
    (after, seen_before && after <= now)
}

pub(super) fn check(inputs: Inputs<'_>, previous: &GcRecord, now_ms: u64, grace_ms: u64) -> CheckReport {
    let node_names: HashSet<&str> = inputs.nodes.iter().map(|n| n.metadata.name.as_str()).collect();
    let containers: HashSet<&str> = inputs.endpoints.iter().map(|e| e.spec.container_id.as_str()).collect();
    let sightings: HashMap<(IpAddr, &str), u64> =
        previous.leaks.iter().map(|s| ((s.ip, s.handle.as_str()), s.first_seen_ms)).collect();
    let mut report = CheckReport { at_ms: now_ms, grace_ms, blocks: inputs.blocks.len(), ..CheckReport::default() };
    let mut gone: BTreeMap<&str, Vec<IpNetwork>> = BTreeMap::new();
    for (block, _) in inputs.blocks {
        let issue = |reason: String| BlockIssue { cidr: block.cidr, owner: block.owner.clone(), reason };
        let pool = inputs.pools.iter().find(|p| p.spec.cidr.contains(block.cidr.network()));
        match (&block.owner, pool) {
            (Some(owner), _) if !node_names.contains(owner.as_str()) => gone.entry(owner).or_default().push(block.cidr),
            (_, None) => report.mismatched_blocks.push(issue("no IPPool contains it any more".into())),
            (Some(owner), Some(pool)) => {
                let labels = inputs.nodes.iter().find(|n| &n.metadata.name == owner).map(|n| &n.metadata.labels);
                let selected =
                    pool.spec.node_selector.parse::<Selector>().is_ok_and(|s| labels.is_some_and(|l| s.matches(l)));
                if !selected {
                    report.mismatched_blocks.push(issue(format!(
                        "IPPool \"{}\" no longer selects its owner, node \"{owner}\" (nodeSelector {})",
                        pool.metadata.name, pool.spec.node_selector
                    )));
                }
            }
            (None, Some(_)) => {}
        }
        if block.is_empty() && block.owner.is_some() {
            report.empty_blocks.push(issue("no address in use".into()));
        }
        for (ip, a) in block.allocations() {
            report.allocations += 1;
            let Some(reason) = missing_holder(a.kind, &a.handle, &a.node, &containers, &node_names) else {
                continue;
            };
            let seen = sightings.get(&(ip, a.handle.as_str())).copied();
            let first_seen_ms = seen.unwrap_or(now_ms);
            let (release_after_ms, releasable) =
                timing(a.allocated_at_ms, first_seen_ms, seen.is_some(), now_ms, grace_ms);
            report.leaked.push(Leak {
                ip,
                handle: a.handle.clone(),
                kind: a.kind,
                node: a.node.clone(),
                pod: a.pod.clone(),
                namespace: a.namespace.clone(),
                reason,
                allocated_at_ms: a.allocated_at_ms,
                first_seen_ms,
                release_after_ms,
                releasable,
            });
        }
    }
    for (node, blocks) in gone {
        let seen = previous.gone_nodes.get(node).copied();
        let first_seen_ms = seen.unwrap_or(now_ms);
        let (release_after_ms, releasable) = timing(0, first_seen_ms, seen.is_some(), now_ms, grace_ms);
        report.gone_nodes.push(GoneNode { node: node.to_owned(), blocks, first_seen_ms, release_after_ms, releasable });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Allocation;

    const GRACE: u64 = 900_000;

    fn endpoint(container: &str) -> Resource<WorkloadEndpoint> {
        let mut r = Resource::new(
            "n1-k8s-pod-eth0",
            WorkloadEndpoint {
                node: "n1".into(),
                orchestrator: "k8s".into(),
                pod: "pod".into(),
                endpoint: "eth0".into(),
                container_id: container.into(),
                interface_name: "brin0".into(),
                mac: None,
                ip_networks: vec![],
                profiles: vec![],
            },
        );
        r.metadata.namespace = Some("default".into());
        r
    }

    fn holder(handle: &str, kind: AllocationKind) -> Allocation {
        Allocation { handle: handle.into(), kind, node: "n1".into(), ..Allocation::default() }
    }

    struct World {
        blocks: Vec<(Block, Revision)>,
        nodes: Vec<Resource<Node>>,
        pools: Vec<Resource<IpPool>>,
        endpoints: Vec<Resource<WorkloadEndpoint>>,
    }

    impl World {
        /// Node n1 with a block of pool p, and `handles` allocated in it at `at`.
        fn new(handles: &[(&str, AllocationKind)], at: u64) -> World {
            let mut block = Block::new("10.0.0.0/26".parse().unwrap(), Some("n1".into()));
            for (handle, kind) in handles {
                block.allocate(holder(handle, *kind), at, 0);
            }
            World {
                blocks: vec![(block, 1)],
                nodes: vec![Resource::new("n1", Node::default())],
                pools: vec![Resource::new("p", IpPool::new("10.0.0.0/24".parse().unwrap()))],
                endpoints: vec![],
            }
        }

        fn check(&self, previous: &GcRecord, now: u64) -> CheckReport {
            let inputs =
                Inputs { blocks: &self.blocks, nodes: &self.nodes, pools: &self.pools, endpoints: &self.endpoints };
            check(inputs, previous, now, GRACE)
        }
    }

    fn releasable(report: &CheckReport) -> Vec<String> {
        report.leaked.iter().filter(|l| l.releasable).map(|l| l.handle.clone()).collect()
    }

    #[test]
    fn a_leak_is_releasable_only_when_old_and_seen_a_grace_period_earlier() {
        let world = World::new(&[("net.dead", AllocationKind::Workload)], 1_000);
        let first = world.check(&GcRecord::default(), 2_000_000);
        assert_eq!(first.leaked.len(), 1);
        assert!(first.leaked[0].reason.contains("\"dead\""));
        assert_eq!(first.leaked[0].first_seen_ms, 2_000_000);
        assert_eq!(first.leaked[0].release_after_ms, 2_000_000 + GRACE);
        assert!(releasable(&first).is_empty(), "old enough, but no earlier pass saw it");

        let too_soon = world.check(&first.record(), 2_000_000 + GRACE - 1);
        assert!(releasable(&too_soon).is_empty(), "the earlier pass was less than a grace period ago");
        assert_eq!(too_soon.leaked[0].first_seen_ms, 2_000_000, "the first sighting is carried forward");

        let second = world.check(&too_soon.record(), 2_000_000 + GRACE);
        assert_eq!(releasable(&second), ["net.dead"]);
    }

    #[test]
    fn a_young_allocation_without_its_endpoint_is_never_releasable() {
        // An ADD in flight: the address is taken, the WorkloadEndpoint not yet written. Passes
        // every second for less than a grace period never release it.
        let world = World::new(&[("net.adding", AllocationKind::Workload)], 5_000_000);
        let mut record = GcRecord::default();
        for now in (5_000_000..5_000_000 + GRACE).step_by(1_000) {
            let report = world.check(&record, now);
            assert!(releasable(&report).is_empty(), "released at {now}");
            record = report.record();
        }
        // Once its endpoint exists, it is no longer a leak at all.
        let mut world = world;
        world.endpoints.push(endpoint("adding"));
        assert!(world.check(&record, 5_000_000 + 2 * GRACE).leaked.is_empty());
    }

    #[test]
    fn a_sighting_counts_only_for_the_same_address_and_handle() {
        let world = World::new(&[("net.new-owner", AllocationKind::Workload)], 0);
        let mut record = world.check(&GcRecord::default(), 1_000).record();
        record.leaks[0].handle = "net.old-owner".into();
        let report = world.check(&record, 1_000 + GRACE);
        assert!(releasable(&report).is_empty(), "the address changed hands since the sighting");
        assert_eq!(report.leaked[0].first_seen_ms, 1_000 + GRACE);
    }

    #[test]
    fn endpoints_and_nodes_hold_their_addresses() {
        let mut world = World::new(
            &[
                ("net.live", AllocationKind::Workload),
                ("tunnel-ipv4.n1", AllocationKind::Tunnel),
                ("net.dead", AllocationKind::Workload),
            ],
            0,
        );
        world.endpoints.push(endpoint("live"));
        let report = world.check(&GcRecord::default(), 10);
        assert_eq!(report.allocations, 3);
        let leaked: Vec<&str> = report.leaked.iter().map(|l| l.handle.as_str()).collect();
        assert_eq!(leaked, ["net.dead"]);
        assert!(report.gone_nodes.is_empty());
    }

    #[test]
    fn a_gone_node_loses_its_blocks_and_tunnel_address_after_two_passes() {
        let mut world = World::new(&[("tunnel-ipv4.n1", AllocationKind::Tunnel)], 0);
        world.blocks.push((Block::new("10.0.0.64/26".parse().unwrap(), Some("n1".into())), 2));
        world.nodes.clear();
        let first = world.check(&GcRecord::default(), 100);
        assert_eq!(first.gone_nodes.len(), 1);
        assert_eq!(first.gone_nodes[0].blocks.len(), 2);
        assert!(!first.gone_nodes[0].releasable);
        assert!(first.leaked[0].reason.contains("tunnel address of node \"n1\""));
        assert!(first.mismatched_blocks.is_empty(), "a missing owner is a gone node, not a pool mismatch");

        let second = world.check(&first.record(), 100 + GRACE);
        assert!(second.gone_nodes[0].releasable);
        assert_eq!(releasable(&second), ["tunnel-ipv4.n1"]);
    }

    #[test]
    fn blocks_out_of_their_pool_are_reported() {
        let mut world = World::new(&[], 0);
        world.blocks.push((Block::new("10.9.0.0/26".parse().unwrap(), None), 2));
        world.pools[0].spec.node_selector = "role == 'edge'".into();
        let report = world.check(&GcRecord::default(), 0);
        let mismatched: Vec<&str> = report.mismatched_blocks.iter().map(|b| b.reason.as_str()).collect();
        assert_eq!(
            mismatched,
            [
                "IPPool \"p\" no longer selects its owner, node \"n1\" (nodeSelector role == 'edge')",
                "no IPPool contains it any more"
            ]
        );
        assert_eq!(report.empty_blocks.len(), 1);
        assert!(!report.is_clean());
    }

    #[test]
    fn the_report_round_trips_as_json() {
        let world = World::new(&[("net.dead", AllocationKind::Workload)], 0);
        let report = world.check(&GcRecord::default(), 7);
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<CheckReport>(&json).unwrap(), report);
        assert!(json.contains("\"releaseAfterMs\""), "{json}");
    }
}
