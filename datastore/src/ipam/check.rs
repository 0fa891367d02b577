//! `ipam check`: compares the blocks with the nodes, pools and workload endpoints they should
//! agree with. Pure: the caller reads the resources.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::{AllocationKind, Block};
use crate::resource::{IpPool, Node, Resource, WorkloadEndpoint};
use crate::selector::Selector;
use crate::store::Revision;

/// An address whose holder is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    /// The address.
    pub ip: IpAddr,
    /// Its handle: `brindlectl ipam release` or a handle release frees it.
    pub handle: String,
    /// The node it was allocated for.
    pub node: String,
    /// The pod, for workload addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Why it counts as leaked.
    pub reason: String,
}

/// A block worth an operator's look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockIssue {
    /// The block.
    pub cidr: IpNetwork,
    /// Its owner.
    pub owner: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// What `check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// How many blocks there are.
    pub blocks: usize,
    /// How many addresses are taken.
    pub allocations: usize,
    /// Addresses whose pod or node no longer exists.
    pub leaked: Vec<Leak>,
    /// Owned blocks with no address taken (not a fault: the owner keeps them for new pods).
    pub empty_blocks: Vec<BlockIssue>,
    /// Blocks that disagree with their owner node or their pool.
    pub mismatched_blocks: Vec<BlockIssue>,
}

impl CheckReport {
    /// Whether nothing needs fixing (empty blocks are fine).
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty() && self.mismatched_blocks.is_empty()
    }
}

/// The container ID a handle `<network>.<containerID>` was made for.
fn container_of(handle: &str) -> &str {
    handle.rsplit_once('.').map_or(handle, |(_, id)| id)
}

pub(super) fn check(
    blocks: &[(Block, Revision)],
    nodes: &[Resource<Node>],
    pools: &[Resource<IpPool>],
    endpoints: &[Resource<WorkloadEndpoint>],
) -> CheckReport {
    let node_names: HashSet<&str> = nodes.iter().map(|n| n.metadata.name.as_str()).collect();
    let containers: HashSet<&str> = endpoints.iter().map(|e| e.spec.container_id.as_str()).collect();
    let mut report = CheckReport { blocks: blocks.len(), ..CheckReport::default() };
    for (block, _) in blocks {
        let issue = |reason: String| BlockIssue { cidr: block.cidr, owner: block.owner.clone(), reason };
        let pool = pools.iter().find(|p| p.spec.cidr.contains(block.cidr.network()));
        match (&block.owner, pool) {
            (_, None) => report.mismatched_blocks.push(issue("no IPPool contains it any more".into())),
            (Some(owner), _) if !node_names.contains(owner.as_str()) => {
                report.mismatched_blocks.push(issue(format!("its owner, node \"{owner}\", does not exist")))
            }
            (Some(owner), Some(pool)) => {
                let labels = nodes.iter().find(|n| &n.metadata.name == owner).map(|n| &n.metadata.labels);
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
            let reason = match a.kind {
                AllocationKind::Workload if !containers.contains(container_of(&a.handle)) => {
                    Some(format!("no WorkloadEndpoint has container ID \"{}\"", container_of(&a.handle)))
                }
                AllocationKind::Tunnel if !node_names.contains(a.node.as_str()) => {
                    Some(format!("tunnel address of node \"{}\", which does not exist", a.node))
                }
                _ => None,
            };
            if let Some(reason) = reason {
                report.leaked.push(Leak {
                    ip,
                    handle: a.handle.clone(),
                    node: a.node.clone(),
                    pod: a.pod.clone(),
                    namespace: a.namespace.clone(),
                    reason,
                });
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Allocation;

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

    #[test]
    fn finds_leaks_orphans_and_empty_blocks() {
        let pools = vec![Resource::new("p", IpPool::new("10.0.0.0/24".parse().unwrap()))];
        let nodes = vec![Resource::new("n1", Node::default())];
        let mut good = Block::new("10.0.0.0/26".parse().unwrap(), Some("n1".into()));
        let holder = |handle: &str, kind| Allocation {
            handle: handle.into(),
            kind,
            node: "n1".into(),
            pod: None,
            namespace: None,
        };
        good.allocate(holder("net.live", AllocationKind::Workload), 0, 0);
        good.allocate(holder("net.dead", AllocationKind::Workload), 0, 0);
        good.allocate(holder("tunnel-ipv4.n1", AllocationKind::Tunnel), 0, 0);
        let orphan = Block::new("10.0.0.64/26".parse().unwrap(), Some("gone".into()));
        let outside = Block::new("10.9.0.0/26".parse().unwrap(), None);
        let report = check(&[(good, 1), (orphan, 2), (outside, 3)], &nodes, &pools, &[endpoint("live")]);
        assert_eq!(report.allocations, 3);
        assert_eq!(report.leaked.len(), 1);
        assert_eq!(report.leaked[0].ip.to_string(), "10.0.0.1");
        assert!(report.leaked[0].reason.contains("\"dead\""));
        let mismatched: Vec<String> = report.mismatched_blocks.iter().map(|b| b.reason.clone()).collect();
        assert_eq!(mismatched, ["its owner, node \"gone\", does not exist", "no IPPool contains it any more"]);
        assert_eq!(report.empty_blocks.len(), 1);
        assert!(!report.is_clean());
    }
}
