//! The judgement behind `ipam check` and garbage collection: which addresses have lost their
//! holder, which nodes are gone, which blocks disagree with their pool, which addresses the
//! endpoints and IPAM disagree on, and which of those may be released now. Pure: the caller
//! reads the resources, the record the previous pass left and the clock.
//!
//! An address's holder is missing when its node does not exist, or, for a pod's address, when
//! its Pod does not exist in the Kubernetes API (where the API is consulted: a Pod that exists
//! never loses its address, whatever became of its endpoint), or, without the API, when the
//! `brindle` plugin took it (it writes a WorkloadEndpoint for every attachment) and no
//! WorkloadEndpoint has its container. An address is released only when, besides,
//! - it was allocated at least a grace period ago, and
//! - an earlier pass saw the same leak (same address, same handle) at least a grace period
//!   before.
//!
//! A gone node's endpoints and blocks go by the same two-pass rule. The CNI plugin takes a
//! pod's address before it writes the pod's WorkloadEndpoint, so during an ADD the address has
//! no holder; the age rule keeps garbage collection away from it however often it runs, as
//! long as the grace period is longer than an ADD takes, and the two-pass rule keeps one odd
//! moment from costing a live pod its address. A grace period of zero turns releasing off.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{Allocation, AllocationKind, Block, recorded_form};
use crate::resource::{IpPool, Node, Resource, WorkloadEndpoint};
use crate::selector::Selector;
use crate::store::Revision;

/// An address whose holder is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leak {
    /// The address.
    pub ip: IpAddr,
    /// Its allocation: the handle (only an address this handle still holds is released), the
    /// node, the pod, when it was made.
    pub holder: Allocation,
    /// Why it counts as leaked.
    pub reason: String,
    /// When a pass first saw it without its holder.
    pub first_seen_ms: u64,
    /// The earliest time a pass may release it (`u64::MAX` while releasing is off).
    pub release_after_ms: u64,
    /// Whether this pass may release it.
    pub releasable: bool,
}

/// A node that does not exist but still has blocks, endpoints or addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoneNode {
    /// The node's name.
    pub node: String,
    /// The blocks it still owns: they lose their owner, and are deleted once empty and past
    /// the release cooldown.
    pub blocks: Vec<IpNetwork>,
    /// Its WorkloadEndpoints (`namespace/name`): no pod runs on a node that does not exist.
    pub endpoints: Vec<String>,
    /// When a pass first saw it missing.
    pub first_seen_ms: u64,
    /// The earliest time a pass may clear it (`u64::MAX` while releasing is off).
    pub release_after_ms: u64,
    /// Whether this pass may clear it.
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

/// An address whose endpoints and IPAM disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressConflict {
    /// The address.
    pub ip: IpAddr,
    /// The endpoints that claim it (`namespace/name`).
    pub endpoints: Vec<String>,
    /// The handle IPAM gives it to, if any.
    pub holder: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// What a pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// When the pass looked (ms since the Unix epoch).
    pub at_ms: u64,
    /// The grace period it applied (IPAMConfiguration `leakGracePeriod`), in milliseconds; 0
    /// means releasing is off.
    pub grace_ms: u64,
    /// How many blocks there are.
    pub blocks: usize,
    /// How many addresses are taken.
    pub allocations: usize,
    /// Addresses whose pod or node is missing, releasable or not yet.
    pub leaked: Vec<Leak>,
    /// Nodes that do not exist but still have blocks, endpoints or addresses.
    pub gone_nodes: Vec<GoneNode>,
    /// Owned blocks with no address taken (not a fault: the owner keeps them for new pods).
    pub empty_blocks: Vec<BlockIssue>,
    /// Blocks that disagree with their pool.
    pub mismatched_blocks: Vec<BlockIssue>,
    /// Addresses two endpoints claim, or that an endpoint claims while IPAM gives them to
    /// another container.
    pub conflicts: Vec<AddressConflict>,
}

impl CheckReport {
    /// Whether nothing needs fixing (empty blocks are fine).
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty()
            && self.gone_nodes.is_empty()
            && self.mismatched_blocks.is_empty()
            && self.conflicts.is_empty()
    }

    /// What the next pass needs to know of this one: when it ran, and since when each leak
    /// and each gone node has been seen.
    pub fn record(&self) -> GcRecord {
        GcRecord {
            at_ms: self.at_ms,
            leaks: self
                .leaked
                .iter()
                .map(|l| LeakSighting { ip: l.ip, handle: l.holder.handle.clone(), first_seen_ms: l.first_seen_ms })
                .collect(),
            gone_nodes: self.gone_nodes.iter().map(|n| (n.node.clone(), n.first_seen_ms)).collect(),
        }
    }
}

/// What a garbage-collection pass leaves for the next: when it ran, and since when each leak
/// and each gone node has been seen. Stored in the datastore beside the blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcRecord {
    /// When the pass ran (a later pass on a clock behind this one refuses to act).
    #[serde(default)]
    pub at_ms: u64,
    /// Addresses seen without their holder.
    pub leaks: Vec<LeakSighting>,
    /// Nodes seen missing, with when they were first seen.
    pub gone_nodes: BTreeMap<String, u64>,
}

impl GcRecord {
    /// Whether `other` holds the same sightings (when the pass ran aside): a pass that saw
    /// nothing new need not write.
    pub fn same_sightings(&self, other: &GcRecord) -> bool {
        self.leaks == other.leaks && self.gone_nodes == other.gone_nodes
    }
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

/// The Pods that exist, as `(namespace, name)`.
pub type PodKeys = HashSet<(String, String)>;

/// The resources a pass judges.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inputs<'a> {
    pub blocks: &'a [(Block, Revision)],
    pub nodes: &'a [Resource<Node>],
    pub pools: &'a [Resource<IpPool>],
    pub endpoints: &'a [Resource<WorkloadEndpoint>],
    /// The Pods of the Kubernetes API, when it is consulted.
    pub pods: Option<&'a PodKeys>,
}

/// Who can hold an address: the nodes, the endpoints' containers and the Pods that exist.
pub(super) struct Holders<'a> {
    nodes: HashSet<&'a str>,
    containers: HashSet<&'a str>,
    pods: Option<&'a PodKeys>,
}

impl<'a> Holders<'a> {
    pub(super) fn new(
        nodes: &'a [Resource<Node>],
        endpoints: &'a [Resource<WorkloadEndpoint>],
        pods: Option<&'a PodKeys>,
    ) -> Self {
        Holders {
            nodes: nodes.iter().map(|n| n.metadata.name.as_str()).collect(),
            containers: endpoints.iter().map(|e| recorded_form(&e.spec.container_id)).collect(),
            pods,
        }
    }

    pub(super) fn node_exists(&self, node: &str) -> bool {
        self.nodes.contains(node)
    }

    /// Why an allocation's holder counts as missing, if it does.
    pub(super) fn missing(&self, allocation: &Allocation) -> Option<String> {
        if !self.node_exists(&allocation.node) {
            return Some(format!("its node \"{}\" does not exist", allocation.node));
        }
        if allocation.kind == AllocationKind::Tunnel {
            return None; // held by its node
        }
        if let (Some(pods), Some(namespace), Some(pod)) = (self.pods, &allocation.namespace, &allocation.pod) {
            return (!pods.contains(&(namespace.clone(), pod.clone())))
                .then(|| format!("Pod {namespace}/{pod} does not exist in the Kubernetes API"));
        }
        if !allocation.endpoint {
            // A pod's address taken by brindle-ipam under another plugin has no endpoint to
            // look for.
            return None;
        }
        let named = allocation.containers_named();
        if named.iter().any(|c| self.containers.contains(c)) {
            return None;
        }
        let container = named.last().copied().unwrap_or(allocation.handle.as_str());
        Some(format!("no WorkloadEndpoint has container ID \"{container}\""))
    }
}

/// Addresses that two endpoints claim, or that an endpoint claims while its block gives them
/// to another container. An endpoint's address outside every block (another IPAM plugin gave
/// it) is not brindle's to judge.
fn conflicts(blocks: &[(Block, Revision)], endpoints: &[Resource<WorkloadEndpoint>]) -> Vec<AddressConflict> {
    let mut claims: BTreeMap<IpAddr, Vec<&Resource<WorkloadEndpoint>>> = BTreeMap::new();
    for endpoint in endpoints {
        for network in &endpoint.spec.ip_networks {
            claims.entry(network.ip()).or_default().push(endpoint);
        }
    }
    let mut found = Vec::new();
    for (ip, claimants) in claims {
        let holder = blocks.iter().find(|(b, _)| b.cidr.contains(ip)).and_then(|(b, _)| b.holder(ip));
        let reason = if claimants.len() > 1 {
            format!("{} endpoints claim it", claimants.len())
        } else {
            let container = claimants[0].spec.container_id.as_str();
            match holder {
                Some(a) if !a.names_container(container) => {
                    format!("its endpoint's container is \"{container}\", but IPAM gives it to handle \"{}\"", a.handle)
                }
                _ => continue,
            }
        };
        found.push(AddressConflict {
            ip,
            endpoints: claimants.iter().map(|e| endpoint_path(e)).collect(),
            holder: holder.map(|a| a.handle.clone()),
            reason,
        });
    }
    found
}

/// `namespace/name` of an endpoint.
pub(super) fn endpoint_path(endpoint: &Resource<WorkloadEndpoint>) -> String {
    format!("{}/{}", endpoint.metadata.namespace.as_deref().unwrap_or_default(), endpoint.metadata.name)
}

/// When something first seen at `first_seen` (by an earlier pass when `seen_before`) and made at
/// `made` may be released, and whether it may be now. A grace period of zero means never.
fn timing(made: u64, first_seen: u64, seen_before: bool, now: u64, grace: u64) -> (u64, bool) {
    if grace == 0 {
        return (u64::MAX, false);
    }
    let after = made.max(first_seen).saturating_add(grace);
    (after, seen_before && after <= now)
}

/// The first sighting: the earlier pass's, but never later than now (a pass whose clock ran
/// ahead must not postpone a release for ever).
fn first_seen(earlier: Option<u64>, now: u64) -> (u64, bool) {
    match earlier {
        Some(at) => (at.min(now), true),
        None => (now, false),
    }
}

pub(super) fn check(inputs: Inputs<'_>, previous: &GcRecord, now_ms: u64, grace_ms: u64) -> CheckReport {
    let holders = Holders::new(inputs.nodes, inputs.endpoints, inputs.pods);
    let sightings: HashMap<(IpAddr, &str), u64> =
        previous.leaks.iter().map(|s| ((s.ip, s.handle.as_str()), s.first_seen_ms)).collect();
    let mut report = CheckReport { at_ms: now_ms, grace_ms, blocks: inputs.blocks.len(), ..CheckReport::default() };
    let mut gone: BTreeMap<&str, (Vec<IpNetwork>, Vec<String>)> = BTreeMap::new();
    for (block, _) in inputs.blocks {
        let issue = |reason: String| BlockIssue { cidr: block.cidr, owner: block.owner.clone(), reason };
        let pool = inputs.pools.iter().find(|p| p.spec.cidr.contains(block.cidr.network()));
        match (&block.owner, pool) {
            (Some(owner), _) if !holders.node_exists(owner) => gone.entry(owner).or_default().0.push(block.cidr),
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
            let Some(reason) = holders.missing(a) else { continue };
            if !holders.node_exists(&a.node) {
                gone.entry(&a.node).or_default();
            }
            let (first_seen_ms, seen_before) = first_seen(sightings.get(&(ip, a.handle.as_str())).copied(), now_ms);
            let (release_after_ms, releasable) =
                timing(a.allocated_at_ms, first_seen_ms, seen_before, now_ms, grace_ms);
            report.leaked.push(Leak { ip, holder: a.clone(), reason, first_seen_ms, release_after_ms, releasable });
        }
    }
    for endpoint in inputs.endpoints.iter().filter(|e| !holders.node_exists(&e.spec.node)) {
        gone.entry(&endpoint.spec.node).or_default().1.push(endpoint_path(endpoint));
    }
    report.conflicts = conflicts(inputs.blocks, inputs.endpoints);
    for (node, (blocks, endpoints)) in gone {
        let (first_seen_ms, seen_before) = first_seen(previous.gone_nodes.get(node).copied(), now_ms);
        let (release_after_ms, releasable) = timing(0, first_seen_ms, seen_before, now_ms, grace_ms);
        let node = node.to_owned();
        report.gone_nodes.push(GoneNode { node, blocks, endpoints, first_seen_ms, release_after_ms, releasable });
    }
    report
}

/// The blocks no node owns that hold nothing and rest no address: nothing is lost by deleting
/// them.
pub(super) fn idle_unowned(blocks: &[(Block, Revision)], now_ms: u64, cooldown_ms: u64) -> BTreeSet<IpNetwork> {
    blocks
        .iter()
        .filter(|(b, _)| b.owner.is_none() && b.is_empty() && b.cooling(now_ms, cooldown_ms) == 0)
        .map(|(b, _)| b.cidr)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: u64 = 900_000;

    fn endpoint(node: &str, container: &str, ip: &str) -> Resource<WorkloadEndpoint> {
        let mut r = Resource::new(
            format!("{node}-k8s-{container}-eth0"),
            WorkloadEndpoint {
                node: node.into(),
                orchestrator: "k8s".into(),
                pod: container.into(),
                endpoint: "eth0".into(),
                container_id: container.into(),
                interface_name: "brin0".into(),
                mac: None,
                ip_networks: vec![format!("{ip}/32").parse().unwrap()],
                profiles: vec![],
                service_account_name: None,
                ports: vec![],
            },
        );
        r.metadata.namespace = Some("default".into());
        r
    }

    /// A pod's address as the `brindle` plugin takes it: network `net`, an endpoint expected.
    fn pod(handle: &str) -> Allocation {
        Allocation {
            handle: handle.into(),
            network: Some("net".into()),
            endpoint: true,
            node: "n1".into(),
            ..Allocation::default()
        }
    }

    fn tunnel() -> Allocation {
        Allocation {
            handle: "tunnel-ipv4.n1".into(),
            kind: AllocationKind::Tunnel,
            node: "n1".into(),
            ..Allocation::default()
        }
    }

    struct World {
        blocks: Vec<(Block, Revision)>,
        nodes: Vec<Resource<Node>>,
        pools: Vec<Resource<IpPool>>,
        endpoints: Vec<Resource<WorkloadEndpoint>>,
        pods: Option<PodKeys>,
    }

    impl World {
        /// Node n1 with a block of pool p, and `holders` allocated in it at `at`.
        fn new(holders: &[Allocation], at: u64) -> World {
            let mut block = Block::new("10.0.0.0/26".parse().unwrap(), Some("n1".into()));
            for holder in holders {
                block.allocate(holder.clone(), at, 0);
            }
            World {
                blocks: vec![(block, 1)],
                nodes: vec![Resource::new("n1", Node::default())],
                pools: vec![Resource::new("p", IpPool::new("10.0.0.0/24".parse().unwrap()))],
                endpoints: vec![],
                pods: None,
            }
        }

        fn check(&self, previous: &GcRecord, now: u64) -> CheckReport {
            let inputs = Inputs {
                blocks: &self.blocks,
                nodes: &self.nodes,
                pools: &self.pools,
                endpoints: &self.endpoints,
                pods: self.pods.as_ref(),
            };
            check(inputs, previous, now, GRACE)
        }
    }

    fn releasable(report: &CheckReport) -> Vec<String> {
        report.leaked.iter().filter(|l| l.releasable).map(|l| l.holder.handle.clone()).collect()
    }

    #[test]
    fn a_leak_is_releasable_only_when_old_and_seen_a_grace_period_earlier() {
        let world = World::new(&[pod("net.dead")], 1_000);
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
    fn an_allocation_stamped_after_its_sighting_waits_a_grace_period_from_its_stamp() {
        // The allocating node's clock runs ahead of the collector's: the allocation looks made
        // after the pass that first saw it. It still gets its whole grace period.
        let world = World::new(&[pod("net.skewed")], 5_000_000);
        let first = world.check(&GcRecord::default(), 1_000_000);
        let report = world.check(&first.record(), 1_000_000 + GRACE);
        assert!(releasable(&report).is_empty(), "{report:?}");
        assert_eq!(report.leaked[0].release_after_ms, 5_000_000 + GRACE);
    }

    #[test]
    fn a_sighting_from_a_clock_ahead_is_taken_as_now() {
        let world = World::new(&[pod("net.dead")], 0);
        let mut record = world.check(&GcRecord::default(), 1_000).record();
        record.leaks[0].first_seen_ms = u64::MAX - 1;
        let report = world.check(&record, 2_000);
        assert_eq!(report.leaked[0].first_seen_ms, 2_000, "never later than now");
        assert!(releasable(&world.check(&report.record(), 2_000 + GRACE)).contains(&"net.dead".to_owned()));
    }

    #[test]
    fn a_young_allocation_without_its_endpoint_is_never_releasable() {
        // An ADD in flight: the address is taken, the WorkloadEndpoint not yet written. Passes
        // every second for less than a grace period never release it.
        let world = World::new(&[pod("net.adding")], 5_000_000);
        let mut record = GcRecord::default();
        for now in (5_000_000..5_000_000 + GRACE).step_by(1_000) {
            let report = world.check(&record, now);
            assert!(releasable(&report).is_empty(), "released at {now}");
            record = report.record();
        }
        // Once its endpoint exists, it is no longer a leak at all.
        let mut world = world;
        world.endpoints.push(endpoint("n1", "adding", "10.0.0.0"));
        assert!(world.check(&record, 5_000_000 + 2 * GRACE).leaked.is_empty());
    }

    #[test]
    fn a_grace_period_of_zero_releases_nothing() {
        let world = World::new(&[pod("net.dead")], 0);
        let inputs =
            Inputs { blocks: &world.blocks, nodes: &world.nodes, pools: &world.pools, endpoints: &[], pods: None };
        let first = check(inputs, &GcRecord::default(), 1_000, 0);
        let second = check(inputs, &first.record(), 1_000_000_000, 0);
        assert_eq!(second.leaked.len(), 1, "still reported");
        assert!(!second.leaked[0].releasable);
        assert_eq!(second.leaked[0].release_after_ms, u64::MAX);
    }

    #[test]
    fn a_sighting_counts_only_for_the_same_address_and_handle() {
        let world = World::new(&[pod("net.new-owner")], 0);
        let mut record = world.check(&GcRecord::default(), 1_000).record();
        record.leaks[0].handle = "net.old-owner".into();
        let report = world.check(&record, 1_000 + GRACE);
        assert!(releasable(&report).is_empty(), "the address changed hands since the sighting");
        assert_eq!(report.leaked[0].first_seen_ms, 1_000 + GRACE);
    }

    #[test]
    fn endpoints_nodes_and_other_plugins_hold_their_addresses() {
        let under_another_plugin = Allocation { endpoint: false, ..pod("net.ptp-pod") };
        let dotted = pod("net.with.dots");
        let mut world =
            World::new(&[pod("net.live"), tunnel(), pod("net.dead"), under_another_plugin, dotted.clone()], 0);
        world.endpoints.push(endpoint("n1", "live", "10.0.0.0"));
        world.endpoints.push(endpoint("n1", "with.dots", "10.0.0.4"));
        let report = world.check(&GcRecord::default(), 10);
        assert_eq!(report.allocations, 5);
        let leaked: Vec<&str> = report.leaked.iter().map(|l| l.holder.handle.as_str()).collect();
        assert_eq!(leaked, ["net.dead"], "a container ID with dots is found by its network");
        assert!(report.gone_nodes.is_empty() && report.conflicts.is_empty(), "{report:?}");
    }

    #[test]
    fn with_the_kubernetes_api_a_pods_address_is_held_by_its_pod_alone() {
        let of = |name: &str, endpoint: bool| Allocation {
            pod: Some(name.into()),
            namespace: Some("default".into()),
            endpoint,
            ..pod(&format!("net.{name}"))
        };
        let allocations = [of("running", true), of("gone", true), of("gone-ptp", false), of("no-endpoint", true)];
        let mut world = World::new(&[&allocations[..], &[tunnel()]].concat(), 0);
        world.endpoints.push(endpoint("n1", "gone", "10.0.0.1"));
        world.pods =
            Some(PodKeys::from([("default".into(), "running".into()), ("default".into(), "no-endpoint".into())]));
        let report = world.check(&GcRecord::default(), 10);
        let leaked: Vec<(&str, &str)> =
            report.leaked.iter().map(|l| (l.holder.handle.as_str(), l.reason.as_str())).collect();
        assert_eq!(
            leaked,
            [
                ("net.gone", "Pod default/gone does not exist in the Kubernetes API"),
                ("net.gone-ptp", "Pod default/gone-ptp does not exist in the Kubernetes API"),
            ],
            "a stale endpoint holds nothing, a Pod without one holds its address, and another plugin's \
             pod is judged by its Pod too"
        );
    }

    #[test]
    fn another_network_of_a_longer_name_is_not_mistaken_for_ours() {
        // Network `net.x`, container `c`: handle `net.x.c`. An endpoint of container `x.c`
        // (network `net`) must not hold it.
        let other = Allocation { network: Some("net.x".into()), ..pod("net.x.c") };
        let mut world = World::new(&[other], 0);
        world.endpoints.push(endpoint("n1", "x.c", "10.0.0.9"));
        let report = world.check(&GcRecord::default(), 10);
        assert_eq!(report.leaked.len(), 1, "{report:?}");
        assert!(report.leaked[0].reason.contains("\"c\""), "{}", report.leaked[0].reason);
    }

    #[test]
    fn a_gone_node_loses_its_endpoints_blocks_and_addresses_after_two_passes() {
        let mut world = World::new(&[tunnel(), pod("net.live-before")], 0);
        world.blocks.push((Block::new("10.0.0.64/26".parse().unwrap(), Some("n1".into())), 2));
        world.endpoints.push(endpoint("n1", "live-before", "10.0.0.1"));
        world.nodes.clear();
        let first = world.check(&GcRecord::default(), 100);
        assert_eq!(first.gone_nodes.len(), 1);
        assert_eq!(first.gone_nodes[0].blocks.len(), 2);
        assert_eq!(first.gone_nodes[0].endpoints, ["default/n1-k8s-live-before-eth0"]);
        assert!(!first.gone_nodes[0].releasable);
        let reasons: Vec<&str> = first.leaked.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(reasons, ["its node \"n1\" does not exist"; 2], "its pod's endpoint does not hold it");
        assert!(first.mismatched_blocks.is_empty(), "a missing owner is a gone node, not a pool mismatch");

        let second = world.check(&first.record(), 100 + GRACE);
        assert!(second.gone_nodes[0].releasable);
        assert_eq!(releasable(&second), ["tunnel-ipv4.n1", "net.live-before"]);
    }

    #[test]
    fn addresses_the_endpoints_and_ipam_disagree_on_are_conflicts() {
        let mut world = World::new(&[pod("net.a"), pod("net.b")], 0);
        world.endpoints.push(endpoint("n1", "a", "10.0.0.0"));
        world.endpoints.push(endpoint("n1", "b", "10.0.0.0"));
        world.endpoints.push(endpoint("n1", "c", "10.0.0.1"));
        world.endpoints.push(endpoint("n1", "outside", "192.168.9.9"));
        let report = world.check(&GcRecord::default(), 10);
        let conflicts: Vec<(String, &str)> =
            report.conflicts.iter().map(|c| (c.ip.to_string(), c.reason.as_str())).collect();
        assert_eq!(
            conflicts,
            [
                ("10.0.0.0".into(), "2 endpoints claim it"),
                ("10.0.0.1".into(), "its endpoint's container is \"c\", but IPAM gives it to handle \"net.b\""),
            ]
        );
        assert!(!report.is_clean());
    }

    #[test]
    fn an_endpoint_with_a_runtimes_container_id_owns_its_address_recorded_short_or_whole() {
        let (live, other) = ("0123456789abcdef".repeat(4), "fedcba9876543210".repeat(4));
        let mut world = World::new(&[pod(&format!("net.{live}")), pod(&format!("net.{other}"))], 0);
        // The second as blocks recorded it before they kept 16 digits: whole.
        let stored = serde_json::to_string(&world.blocks[0].0).unwrap();
        let whole = stored.replace("\"net.fedcba9876543210\"", &format!("\"net.{other}\""));
        assert_ne!(stored, whole);
        world.blocks[0].0 = serde_json::from_str(&whole).unwrap();
        world.endpoints.push(endpoint("n1", &live, "10.0.0.0"));
        world.endpoints.push(endpoint("n1", &other, "10.0.0.1"));
        let report = world.check(&GcRecord::default(), 10 * GRACE);
        assert!(report.is_clean(), "{report:?}");

        world.endpoints.pop();
        world.endpoints.push(endpoint("n1", &"f".repeat(64), "10.0.0.1"));
        let report = world.check(&GcRecord::default(), 10 * GRACE);
        assert_eq!(report.leaked.len(), 1, "{report:?}");
        assert!(report.leaked[0].reason.contains("\"fedcba9876543210\""), "{report:?}");
        assert_eq!(report.conflicts.len(), 1, "{report:?}");
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
    fn idle_unowned_blocks_are_those_with_nothing_held_or_resting() {
        let mut resting = Block::new("10.0.1.0/26".parse().unwrap(), None);
        resting.allocate(pod("net.x"), 0, 0);
        resting.release_handle("net.x", 1_000);
        let idle = Block::new("10.0.2.0/26".parse().unwrap(), None);
        let owned = Block::new("10.0.3.0/26".parse().unwrap(), Some("n1".into()));
        let blocks = vec![(resting, 1), (idle, 2), (owned, 3)];
        assert_eq!(idle_unowned(&blocks, 30_000, 60_000), BTreeSet::from(["10.0.2.0/26".parse().unwrap()]));
        assert_eq!(idle_unowned(&blocks, 61_000, 60_000).len(), 2, "the rest is over");
    }

    #[test]
    fn the_report_round_trips_as_json() {
        let world = World::new(&[pod("net.dead")], 0);
        let report = world.check(&GcRecord::default(), 7);
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<CheckReport>(&json).unwrap(), report);
        assert!(json.contains("\"releaseAfterMs\""), "{json}");
    }
}
