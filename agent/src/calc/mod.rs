//! The desired dataplane, computed from the cluster's state: a pure function, so every rule
//! of DESIGN.md's encapsulation table is tested without a kernel. `bgp` plans the BGP side.

pub mod bgp;
pub mod services;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use brindle_datastore::ipam::{AllocationKind, Block};
use brindle_datastore::policy::{NamespaceLabels, Policies};
use brindle_datastore::resource::{
    BgpConfiguration, BgpFilter, BgpPeer, EncapMode, Encapsulation, EndpointToHostAction, GlobalNetworkPolicy, IpPool,
    KubernetesNetworkPolicy, Namespace, NetworkPolicy, Node, Resource, Spec, Tier, WorkloadEndpoint,
};
use ipnetwork::IpNetwork;

/// What the calculation needs to know about this node.
#[derive(Debug, Clone)]
pub struct Me {
    /// The node's name.
    pub name: String,
    /// Its IPv4 address with the uplink's prefix length.
    pub ipv4: Option<IpNetwork>,
    /// Its IPv6 address with the uplink's prefix length.
    pub ipv6: Option<IpNetwork>,
    /// Whether the kernel can do IP-in-IP here.
    pub ipip_supported: bool,
    /// The node's own tunnel settings.
    pub tunnels: Tunnels,
    /// What happens to workload-to-host traffic its policy allowed.
    pub to_host: EndpointToHostAction,
    /// The subnets of the node's interfaces (its device routes), by interface name, as read
    /// at start.
    pub device_routes: Vec<(String, IpNetwork)>,
    /// WireGuard per family (IPv4, IPv6), when AgentConfiguration enables it.
    pub wireguard: [Option<WireguardSettings>; 2],
    /// The WireGuard devices' names per family, enabled or not: while a family's WireGuard
    /// is off, a device an earlier run left is removed.
    pub wireguard_interfaces: [String; 2],
}

/// This node's WireGuard settings of a family (AgentConfiguration's), with where its private
/// key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardSettings {
    /// For IPv6 (else IPv4).
    pub ipv6: bool,
    /// The device's name.
    pub interface: String,
    /// Its UDP port, every node's.
    pub port: u16,
    /// Its MTU (the uplink's less WireGuard's 60, 80 over IPv6, unless configured).
    pub mtu: u32,
    /// The file holding this node's private key (mode 0600, never leaves the node).
    pub private_key_file: std::path::PathBuf,
    /// The routing table of the routes into the device.
    pub table: u32,
    /// The priority of the rule that sends unmarked packets to `table`.
    pub rule_priority: u32,
    /// The firewall mark the device puts on its own (encrypted) packets, which the rule
    /// leaves to the main table.
    pub mark: u32,
}

/// This node's tunnel settings (from its AgentConfiguration and its uplink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnels {
    /// The uplink's MTU, which every device's MTU derives from.
    pub uplink_mtu: u32,
    /// The VXLAN network identifier.
    pub vxlan_vni: u32,
    /// The VXLAN UDP port.
    pub vxlan_port: u16,
    /// This node's VXLAN device MACs, IPv4's then IPv6's (the ones its Node publishes).
    pub vxlan_macs: [[u8; 6]; 2],
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            uplink_mtu: 1500,
            vxlan_vni: 4096,
            vxlan_port: 4789,
            vxlan_macs: [[0x66, 0, 0, 0, 0, 0], [0x66, 0, 0, 0, 0, 6]],
        }
    }
}

impl Me {
    /// The node's address (with its prefix length) of the family of `other`.
    pub fn address_like(&self, other: IpAddr) -> Option<IpNetwork> {
        if other.is_ipv6() { self.ipv6 } else { self.ipv4 }
    }
}

/// The cluster as the syncer last saw it.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// IP pools.
    pub pools: Vec<Resource<IpPool>>,
    /// Nodes.
    pub nodes: Vec<Resource<Node>>,
    /// IPAM blocks.
    pub blocks: Vec<Block>,
    /// Every node's workload endpoints (policy's sets hold remote ones; routes only this
    /// node's).
    pub workloads: Vec<Resource<WorkloadEndpoint>>,
    /// Namespaces (their labels).
    pub namespaces: Vec<Resource<Namespace>>,
    /// Kubernetes NetworkPolicies.
    pub kubernetes_policies: Vec<Resource<KubernetesNetworkPolicy>>,
    /// brindle NetworkPolicies.
    pub network_policies: Vec<Resource<NetworkPolicy>>,
    /// brindle GlobalNetworkPolicies.
    pub global_policies: Vec<Resource<GlobalNetworkPolicy>>,
    /// Policy tiers.
    pub tiers: Vec<Resource<Tier>>,
    /// The cluster's BGP settings (`default`, or this node's `node.<name>`).
    pub bgp: BgpConfiguration,
    /// BGP peerings beyond the mesh.
    pub peers: Vec<Resource<BgpPeer>>,
    /// Import and export rules BGPPeers name.
    pub filters: Vec<Resource<BgpFilter>>,
}

/// What BGP has taught this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// Best routes: prefix -> next hop.
    pub routes: HashMap<IpNetwork, IpAddr>,
    /// Prefixes with several equal-cost paths: their next hops, the best's first.
    pub multipath: HashMap<IpNetwork, Vec<IpAddr>>,
    /// Whether BGP has converged since start. Until then, remote blocks BGP has not taught
    /// yet keep the routes the datastore implies (the same ones), so a restarting agent
    /// changes nothing.
    pub converged: bool,
}

/// What changed in BGP's best routes since they were last taken in (coalesced: the latest of
/// each prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LearnedChanges {
    /// Prefix -> its next hop now (`None`: no longer learned).
    pub routes: HashMap<IpNetwork, Option<IpAddr>>,
    /// Prefix -> the next hops of its equal-cost paths now, for the prefixes in `routes`
    /// (missing or one hop: no multipath).
    pub multipath: HashMap<IpNetwork, Vec<IpAddr>>,
    /// The whole table, when it was read anew; it replaces what was learned, and `routes`
    /// came after it.
    pub table: Option<HashMap<IpNetwork, IpAddr>>,
    /// BGP converged meanwhile.
    pub converged: bool,
}

impl Learned {
    /// Takes in `changes`. Returns the prefixes whose next hop changed, or `None` when every
    /// route must be recalculated (the table was replaced, or BGP converged just now, which
    /// changes what an unlearned block means).
    pub fn take_in(&mut self, changes: LearnedChanges) -> Option<BTreeSet<IpNetwork>> {
        let mut everything = false;
        if let Some(table) = changes.table {
            self.routes = table;
            self.multipath.clear();
            everything = true;
        }
        if changes.converged && !self.converged {
            self.converged = true;
            everything = true;
        }
        let mut changed = BTreeSet::new();
        let mut multipath = changes.multipath;
        for (prefix, next_hop) in changes.routes {
            let before = match next_hop {
                Some(next_hop) => self.routes.insert(prefix, next_hop),
                None => self.routes.remove(&prefix),
            };
            let hops = multipath.remove(&prefix).filter(|h| h.len() > 1 && next_hop.is_some());
            let hops_before = match hops.clone() {
                Some(hops) => self.multipath.insert(prefix, hops),
                None => self.multipath.remove(&prefix),
            };
            if before != next_hop || hops_before != hops {
                changed.insert(prefix);
            }
        }
        (!everything).then_some(changed)
    }
}

/// Where a route sends its packets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Dropped: a block of this node (its live addresses have their own /32s).
    Blackhole,
    /// Straight to another node on the same subnet, out of the uplink.
    Direct {
        /// The other node's address.
        via: IpAddr,
    },
    /// Spread over several routers on the same subnet, out of the uplink (equal-cost paths
    /// from BGP).
    Multipath {
        /// Their addresses, in order.
        via: Vec<IpAddr>,
    },
    /// Through the VXLAN device of the family to another node's tunnel address.
    Vxlan {
        /// The other node's VXLAN tunnel address of the family.
        via: IpAddr,
    },
    /// Through `tunl0` to another node's address.
    Ipip {
        /// The other node's address.
        via: Ipv4Addr,
    },
    /// A local pod's veth.
    Workload {
        /// The host end.
        interface: String,
    },
    /// Through the WireGuard device, which picks the peer by the destination.
    Wireguard {
        /// The device.
        interface: String,
    },
    /// Not in this (WireGuard's) table: the main table decides.
    Throw,
}

/// Another node as this node's WireGuard device knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WireguardPeer {
    /// Its node's name.
    pub node: String,
    /// Its public key (base64).
    pub public_key: String,
    /// Where it listens: its address of the family and the WireGuard port.
    pub endpoint: std::net::SocketAddr,
    /// What it may send and is sent: its blocks and the addresses it borrowed.
    pub allowed_ips: Vec<IpNetwork>,
}

/// The WireGuard device as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardDevice {
    /// The settings it comes from.
    pub settings: WireguardSettings,
    /// This node's tunnel address of the family, on the device (the source of the node's own
    /// traffic to other nodes' pods, inside this node's allowed IPs at the others).
    pub address: Option<IpAddr>,
    /// Every other node that published a public key.
    pub peers: Vec<WireguardPeer>,
    /// The routes of its table: every peer's allowed IPs into the device, and a throw for
    /// each prefix inside those that the main table routes elsewhere (this node's pods, and
    /// addresses a node without a key borrowed).
    pub routes: BTreeMap<IpNetwork, Target>,
}

/// A remote node's VXLAN endpoint of one family: neighbour entry (tunnel IP -> MAC) and FDB
/// entry (MAC -> node), both of the family.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vtep {
    /// The node's tunnel address.
    pub tunnel_ip: IpAddr,
    /// Its VXLAN device's MAC.
    pub mac: [u8; 6],
    /// The node's underlay address.
    pub node_ip: IpAddr,
}

/// A VXLAN device as it should be (`vxlan.brindle` over IPv4, `vxlan6.brindle` over IPv6:
/// each carries its own family over the same family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// This node's underlay address of the family (the VTEP).
    pub local: IpAddr,
    /// The device's MAC.
    pub mac: [u8; 6],
    /// This node's tunnel address of the family, on the device.
    pub address: IpAddr,
    /// The device's MTU: the uplink's less VXLAN's overhead over the family.
    pub mtu: u32,
}

impl VxlanDevice {
    /// The device's name.
    pub fn name(&self) -> &'static str {
        brindle_kernel::names::vxlan_device(self.address.is_ipv6())
    }
}

/// `tunl0` as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipDevice {
    /// This node's tunnel address, on the device.
    pub address: Ipv4Addr,
    /// The device's MTU: the uplink's less IP-in-IP's overhead.
    pub mtu: u32,
}

/// Everything the dataplane should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Routes by destination.
    pub routes: BTreeMap<IpNetwork, Target>,
    /// Whether this node needs its VXLAN device, per family (IPv4, IPv6).
    pub vxlan: [bool; 2],
    /// Whether this node needs `tunl0` (a pool uses IP-in-IP and the kernel has it).
    pub ipip: bool,
    /// The VXLAN devices per family, once this node has a tunnel address of the family
    /// (`None` while `vxlan` waits for one).
    pub vxlan_devices: [Option<VxlanDevice>; 2],
    /// `tunl0`, once this node has a tunnel address.
    pub ipip_device: Option<IpipDevice>,
    /// The WireGuard devices per family, while the family's WireGuard is enabled and this
    /// node's public key of it is published.
    pub wireguard: [Option<WireguardDevice>; 2],
    /// The WireGuard devices' names, also while there are none (to remove one left over).
    pub wireguard_interfaces: [String; 2],
    /// The pods' MTU: the uplink's less the largest overhead the pools' encapsulation adds.
    pub pod_mtu: u32,
    /// Remote VTEPs, both families.
    pub vteps: Vec<Vtep>,
    /// Every pool's CIDR (the "inside" of natOutgoing).
    pub pools: Vec<IpNetwork>,
    /// CIDRs of pools with natOutgoing.
    pub nat_pools: Vec<IpNetwork>,
    /// Every node's underlay addresses, both families: the only sources VXLAN and IP-in-IP
    /// are taken from.
    pub node_addresses: Vec<IpAddr>,
    /// The hosts of the underlay's control plane: every node and every external BGP peer.
    /// Workloads may not open BGP toward any of them.
    pub control_hosts: Vec<IpAddr>,
    /// The ports BGP speaks on: BGPConfiguration `listenPort` and every BGPPeer's own.
    pub bgp_ports: Vec<u16>,
    /// What happens to workload-to-host traffic its policy allowed.
    pub to_host: EndpointToHostAction,
    /// Network policy for this node's endpoints, both families.
    pub policy: Arc<crate::policy::Program>,
    /// Blocks (and borrowed addresses) of other nodes that this node cannot route because of
    /// a problem of its own (configuration, a refused next hop): their pods are out of reach,
    /// and the agent is not ready. A block its owner does not advertise (its session is down)
    /// or of a node that is gone is not counted: that is not this node's to fix.
    pub unrouted: BTreeSet<IpNetwork>,
    /// Things that could not be done, in words (logged and reported), beyond single routes.
    pub problems: Vec<String>,
    /// Why a route is missing or not what BGP said, by prefix.
    pub route_problems: BTreeMap<IpNetwork, String>,
    /// The prefixes the cluster's state decides, and how: what [`Desired::relearn`] needs to
    /// recalculate one prefix alone.
    origins: BTreeMap<IpNetwork, Origin>,
}

/// What the cluster's state says a prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// This node's: its own block or a local pod's address (BGP has no say).
    Local,
    /// Another node's block, or an address of one borrowed by another node: toward that node.
    Remote(String),
}

/// The route of one prefix, decided alone.
#[derive(Debug, Default)]
struct Decision {
    target: Option<Target>,
    problem: Option<String>,
    /// Unroutable because of a problem of this node's.
    unrouted: bool,
}

impl Decision {
    fn route(target: Target) -> Decision {
        Decision { target: Some(target), ..Decision::default() }
    }

    /// No route, and why (`unrouted`: a problem of this node's stops it).
    fn refused(problem: String, unrouted: bool) -> Decision {
        Decision { target: None, problem: Some(problem), unrouted }
    }

    fn nothing() -> Decision {
        Decision::default()
    }
}

impl Desired {
    /// Every problem, those of single routes after the others.
    pub fn all_problems(&self) -> Vec<String> {
        self.problems.iter().chain(self.route_problems.values()).cloned().collect()
    }

    /// Recalculates the routes of the `changed` prefixes alone, after BGP changed only them
    /// (`learned` as it is now; `me` and `cluster` as this was calculated from). The result is
    /// what [`desired`] would give, at the cost of the change rather than of the table.
    pub fn relearn<'p>(
        &mut self,
        me: &Me,
        cluster: &Cluster,
        learned: &Learned,
        changed: impl IntoIterator<Item = &'p IpNetwork>,
    ) {
        let routing = Routing::new(me, cluster, Some(learned));
        for prefix in changed {
            let decision = match self.origins.get(prefix) {
                Some(Origin::Local) => continue,
                Some(Origin::Remote(node)) => routing.toward_node(*prefix, node),
                None => routing.learned_only(*prefix),
            };
            self.settle(*prefix, decision);
        }
    }

    /// Puts `decision` in place of whatever `prefix` had.
    fn settle(&mut self, prefix: IpNetwork, decision: Decision) {
        match decision.target {
            Some(target) => drop(self.routes.insert(prefix, target)),
            None => drop(self.routes.remove(&prefix)),
        }
        match decision.problem {
            Some(problem) => drop(self.route_problems.insert(prefix, problem)),
            None => drop(self.route_problems.remove(&prefix)),
        }
        if decision.unrouted {
            self.unrouted.insert(prefix);
        } else {
            self.unrouted.remove(&prefix);
        }
    }
}

fn same_subnet(mine: Option<IpNetwork>, theirs: IpAddr) -> bool {
    mine.is_some_and(|net| net.contains(theirs))
}

/// Why a learned next hop cannot carry traffic, if it cannot: it must be another host on a
/// real network, not this node, a pod (inside a pool), nor an unspecified, loopback,
/// link-local or multicast address.
fn next_hop_flaw(next_hop: IpAddr, me: &Me, cluster: &Cluster) -> Option<&'static str> {
    let link_local = match next_hop {
        IpAddr::V4(a) => a.is_link_local() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    };
    if me.address_like(next_hop).is_some_and(|mine| mine.ip() == next_hop) {
        Some("is this node")
    } else if next_hop.is_unspecified() || next_hop.is_loopback() || next_hop.is_multicast() || link_local {
        Some("is not a host address another node can be reached at")
    } else if cluster.pools.iter().any(|p| p.spec.cidr.contains(next_hop)) {
        Some("is inside an IP pool (a pod's address)")
    } else {
        None
    }
}

/// Network policy compiled for this node's endpoints.
///
/// A policy that fails validation (written past brindle's checks, e.g. with kubectl against
/// the CRD) is left out, and the problem says so.
fn policy_program(
    me: &Me,
    cluster: &Cluster,
    memo: &mut crate::policy::Memo,
    problems: &mut Vec<String>,
) -> crate::policy::Program {
    fn valid<S: Spec>(resources: &[Resource<S>], problems: &mut Vec<String>) -> Vec<Resource<S>> {
        let mut out = Vec::with_capacity(resources.len());
        for r in resources {
            match r.validate() {
                Ok(()) => out.push(r.clone()),
                Err(e) => problems.push(format!("{e}; it is not enforced")),
            }
        }
        out
    }
    let policies = Policies::new(
        &cluster.tiers,
        &valid(&cluster.kubernetes_policies, problems),
        &valid(&cluster.network_policies, problems),
        &valid(&cluster.global_policies, problems),
    );
    let namespaces: NamespaceLabels =
        cluster.namespaces.iter().map(|n| (n.metadata.name.clone(), n.metadata.labels.clone())).collect();
    crate::policy::Compiler::new(&policies, &cluster.workloads, &namespaces, memo).compile(&me.name)
}

/// The pod MTU: the uplink's less the largest encapsulation overhead the enabled pools use.
pub fn pod_mtu(uplink_mtu: u32, pools: &[Resource<IpPool>]) -> u32 {
    let overhead = pools.iter().filter(|p| !p.spec.disabled).map(|p| p.spec.max_overhead()).max().unwrap_or(0);
    uplink_mtu.saturating_sub(overhead)
}

/// What BGP says of a prefix, as this node takes it.
enum Heard {
    /// Nothing (not learned, or no speaker).
    Nothing,
    /// A next hop this node refuses, and why.
    Refused(String),
    /// A next hop to use.
    Via(IpAddr),
}

/// The routes toward other nodes and BGP's prefixes, decided one prefix at a time so that a
/// change BGP makes to one prefix is recalculated alone.
struct Routing<'a> {
    me: &'a Me,
    cluster: &'a Cluster,
    nodes: BTreeMap<&'a str, &'a Node>,
    learned: Option<&'a Learned>,
    /// Per family, with WireGuard on here and this node's key published: the device.
    wireguard: [Option<&'a WireguardSettings>; 2],
}

impl<'a> Routing<'a> {
    fn new(me: &'a Me, cluster: &'a Cluster, learned: Option<&'a Learned>) -> Routing<'a> {
        let nodes: BTreeMap<&str, &Node> = cluster.nodes.iter().map(|n| (n.metadata.name.as_str(), &n.spec)).collect();
        let mine = nodes.get(me.name.as_str());
        let wireguard = [false, true].map(|v6| {
            let published = mine.is_some_and(|n| n.wireguard_key(v6).is_some());
            me.wireguard[usize::from(v6)].as_ref().filter(|_| published)
        });
        Routing { me, cluster, nodes, learned, wireguard }
    }

    fn pool_of(&self, prefix: &IpNetwork) -> Option<&'a IpPool> {
        self.cluster.pools.iter().find(|p| p.spec.cidr.contains(prefix.network())).map(|p| &p.spec)
    }

    fn heard(&self, prefix: &IpNetwork) -> Heard {
        let Some(next_hop) = self.learned.and_then(|l| l.routes.get(prefix)) else { return Heard::Nothing };
        match next_hop_flaw(*next_hop, self.me, self.cluster) {
            Some(flaw) => Heard::Refused(format!("learned {prefix} via {next_hop}, which {flaw}; not installed")),
            None => Heard::Via(*next_hop),
        }
    }

    /// Whether traffic to `dst` at node `node_name` goes through WireGuard (which the policy
    /// rule puts ahead of the main table).
    fn encrypted(&self, dst: IpNetwork, node_name: &str) -> bool {
        let v6 = dst.is_ipv6();
        self.wireguard[usize::from(v6)].is_some()
            && self.nodes.get(node_name).is_some_and(|node| node.wireguard_key(v6).is_some())
    }

    /// The main table's route toward node `node_name` for `dst` (its block, or an address of
    /// its own it lent to that node), per the pool's mode. Where WireGuard carries `dst`, a
    /// route the mode cannot make is no problem: WireGuard's table routes it first.
    fn toward_node(&self, dst: IpNetwork, node_name: &str) -> Decision {
        let decision = self.unencrypted_toward_node(dst, node_name);
        if decision.target.is_none() && self.encrypted(dst, node_name) { Decision::nothing() } else { decision }
    }

    /// The route toward node `node_name` for `dst` per the pool's mode, unencrypted.
    fn unencrypted_toward_node(&self, dst: IpNetwork, node_name: &str) -> Decision {
        let Some(pool) = self.pool_of(&dst) else { return Decision::nothing() };
        let Some(node) = self.nodes.get(node_name) else {
            return Decision::refused(format!("{dst} belongs to node {node_name}, which is not registered"), false);
        };
        let mine = self.me.address_like(dst.ip());
        let Some(mut peer) = node.address_like(dst.ip()).map(|n| n.ip()) else {
            return Decision::refused(
                format!("node {node_name} has no address of {dst}'s family; no route to {dst}"),
                true,
            );
        };
        if let Some(learned) = self.learned
            && pool.encapsulation_toward(mine, peer) != Encapsulation::Vxlan
        {
            match self.heard(&dst) {
                Heard::Via(next_hop) => peer = next_hop,
                // A problem of this node's: no route rather than a wrong one.
                Heard::Refused(problem) => return Decision::refused(problem, true),
                Heard::Nothing if learned.converged => {
                    return Decision::refused(
                        format!("{dst} of node {node_name} is not advertised over BGP (is its session up?)"),
                        false,
                    );
                }
                Heard::Nothing => {}
            }
        }
        match (pool.encapsulation_toward(mine, peer), peer) {
            (Encapsulation::Vxlan, _) => match node.vxlan_tunnel_addr(dst.is_ipv6()) {
                Some(via) => Decision::route(Target::Vxlan { via }),
                None => Decision::refused(
                    format!("node {node_name} has no VXLAN tunnel address yet; no route to {dst}"),
                    true,
                ),
            },
            (Encapsulation::Ipip, IpAddr::V4(via)) if self.me.ipip_supported => Decision::route(Target::Ipip { via }),
            (Encapsulation::Ipip, _) => Decision::refused(
                format!(
                    "pool {} uses IP-in-IP, which this kernel lacks (no ipip module); no route to {dst}",
                    pool.cidr
                ),
                true,
            ),
            (Encapsulation::None, peer) if same_subnet(mine, peer) => Decision::route(Target::Direct { via: peer }),
            (Encapsulation::None, peer) => Decision::refused(
                format!(
                    "node {node_name} ({peer}) is not on this node's subnet and pool {} does not encapsulate; \
                     {dst} needs BGP or a router that knows it",
                    pool.cidr
                ),
                true,
            ),
        }
    }

    /// The next hops of the prefix's equal-cost paths that this node can use (on its subnet,
    /// no flaw), sorted, when there are at least two.
    fn equal_cost_hops(&self, prefix: &IpNetwork, mine: Option<IpNetwork>) -> Option<Vec<IpAddr>> {
        let hops = self.learned?.multipath.get(prefix)?;
        let mut usable: Vec<IpAddr> = hops
            .iter()
            .copied()
            .filter(|h| same_subnet(mine, *h) && next_hop_flaw(*h, self.me, self.cluster).is_none())
            .collect();
        usable.sort_unstable();
        usable.dedup();
        (usable.len() > 1).then_some(usable)
    }

    /// A learned prefix the cluster's state does not know (external peers' routes inside a
    /// pool, or outside every pool when a BGPFilter let them in): toward its next hop as the
    /// pool says.
    fn learned_only(&self, prefix: IpNetwork) -> Decision {
        let next_hop = match self.heard(&prefix) {
            Heard::Via(next_hop) => next_hop,
            Heard::Refused(problem) => return Decision::refused(problem, false),
            Heard::Nothing => return Decision::nothing(),
        };
        let pool = self.pool_of(&prefix);
        let mine = self.me.address_like(prefix.ip());
        // A route of ours replaces the kernel's route to the same prefix: never one the node
        // itself depends on (its subnet, or a default or wider route covering it).
        if pool.is_none() && mine.is_some_and(|net| prefix.contains(net.ip()) || net.contains(prefix.ip())) {
            return Decision::refused(
                format!("learned {prefix} overlaps this node's own subnet; not installed"),
                false,
            );
        }
        let how = pool.map_or(Encapsulation::None, |pool| pool.encapsulation_toward(mine, next_hop)); // no pool: natively
        match (how, next_hop) {
            // VXLAN reaches the node itself, not the next hop BGP names.
            (Encapsulation::Vxlan, _) => Decision::nothing(),
            (Encapsulation::Ipip, IpAddr::V4(via)) if self.me.ipip_supported => Decision::route(Target::Ipip { via }),
            (Encapsulation::None, via) if same_subnet(mine, via) => match self.equal_cost_hops(&prefix, mine) {
                Some(via) => Decision::route(Target::Multipath { via }),
                None => Decision::route(Target::Direct { via }),
            },
            _ => Decision::refused(
                format!("learned {prefix} via {next_hop}, which this node cannot reach directly"),
                false,
            ),
        }
    }
}

/// Computes the desired dataplane for `me`; `learned` holds BGP's routes when the agent runs
/// a speaker (`None`: routes come from the datastore alone).
pub fn desired(me: &Me, cluster: &Cluster, learned: Option<&Learned>) -> Desired {
    desired_with(me, cluster, learned, &mut crate::policy::Memo::default())
}

/// [`desired`], reusing what the last calculation compiled of policy (`memo`), so a pod that
/// comes or goes costs that pod, not every pod and policy again.
pub fn desired_with(me: &Me, cluster: &Cluster, learned: Option<&Learned>, memo: &mut crate::policy::Memo) -> Desired {
    let mut out = Desired::default();
    let routing = Routing::new(me, cluster, learned);
    for pool in &cluster.pools {
        out.pools.push(pool.spec.cidr);
        if pool.spec.nat_outgoing && !pool.spec.disabled {
            out.nat_pools.push(pool.spec.cidr);
        }
    }
    out.node_addresses = cluster.nodes.iter().flat_map(|n| n.spec.known_addresses()).collect();
    out.node_addresses.sort();
    out.node_addresses.dedup();
    out.control_hosts = out.node_addresses.clone();
    out.control_hosts.extend(cluster.peers.iter().filter_map(|p| p.spec.peer_address().map(|(ip, _)| ip)));
    out.control_hosts.sort();
    out.control_hosts.dedup();
    out.bgp_ports = std::iter::once(cluster.bgp.listen_port)
        .chain(cluster.peers.iter().filter_map(|p| p.spec.peer_address().and_then(|(_, port)| port)))
        .collect();
    out.bgp_ports.sort_unstable();
    out.bgp_ports.dedup();
    out.to_host = me.to_host;
    out.policy = Arc::new(policy_program(me, cluster, memo, &mut out.problems));
    for v6 in [false, true] {
        out.vxlan[usize::from(v6)] = cluster
            .pools
            .iter()
            .any(|p| p.spec.vxlan_mode != EncapMode::Never && !p.spec.disabled && p.spec.cidr.is_ipv6() == v6);
    }
    out.ipip =
        me.ipip_supported && cluster.pools.iter().any(|p| p.spec.ipip_mode != EncapMode::Never && !p.spec.disabled);
    out.pod_mtu = pod_mtu(me.tunnels.uplink_mtu, &cluster.pools);
    let my_node = routing.nodes.get(me.name.as_str());
    let uplink_mtu = me.tunnels.uplink_mtu;
    for v6 in [false, true] {
        let family = usize::from(v6);
        let address = my_node.and_then(|n| n.vxlan_tunnel_addr(v6));
        let local = if v6 { me.ipv6 } else { me.ipv4 }.map(|n| n.ip());
        if let (true, Some(address), Some(local)) = (out.vxlan[family], address, local) {
            out.vxlan_devices[family] = Some(VxlanDevice {
                vni: me.tunnels.vxlan_vni,
                port: me.tunnels.vxlan_port,
                local,
                mac: me.tunnels.vxlan_macs[family],
                address,
                mtu: uplink_mtu.saturating_sub(Encapsulation::Vxlan.overhead(v6)),
            });
        }
    }
    let tunnel_address = my_node.and_then(|n| n.ipv4_vxlan_tunnel_addr);
    for wireguard in me.wireguard.iter().flatten() {
        out.pod_mtu = out.pod_mtu.min(wireguard.mtu);
    }
    if let (true, Some(address)) = (out.ipip, tunnel_address) {
        let mtu = uplink_mtu.saturating_sub(Encapsulation::Ipip.overhead(false));
        out.ipip_device = Some(IpipDevice { address, mtu });
    }

    // What the cluster's state says each prefix is: this node's own blocks and pods, other
    // nodes' blocks, and addresses borrowed from a block's owner (a /32 or /128 toward where
    // they are used).
    for block in &cluster.blocks {
        if routing.pool_of(&block.cidr).is_none() {
            continue;
        }
        match block.owner.as_deref() {
            Some(owner) if owner == me.name => {
                out.origins.insert(block.cidr, Origin::Local);
                out.routes.insert(block.cidr, Target::Blackhole);
            }
            Some(owner) => drop(out.origins.insert(block.cidr, Origin::Remote(owner.to_owned()))),
            None => {}
        }
        for (ip, allocation) in block.allocations() {
            let used_on = allocation.node.as_str();
            if allocation.kind == AllocationKind::Workload
                && Some(used_on) != block.owner.as_deref()
                && used_on != me.name
            {
                let host = IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix");
                out.origins.insert(host, Origin::Remote(used_on.to_owned()));
            }
        }
    }
    for workload in cluster.workloads.iter().filter(|w| w.spec.node == me.name) {
        for net in &workload.spec.ip_networks {
            out.origins.insert(*net, Origin::Local);
            out.routes.insert(*net, Target::Workload { interface: workload.spec.interface_name.clone() });
        }
    }
    // Settling a prefix leaves the origins alone: they are lent out meanwhile, not copied.
    let origins = std::mem::take(&mut out.origins);
    for (prefix, origin) in &origins {
        if let Origin::Remote(node) = origin {
            out.settle(*prefix, routing.toward_node(*prefix, node));
        }
    }
    out.origins = origins;
    out.wireguard_interfaces.clone_from(&me.wireguard_interfaces);
    for settings in routing.wireguard.into_iter().flatten() {
        let address = my_node.and_then(|n| n.vxlan_tunnel_addr(settings.ipv6));
        out.wireguard[usize::from(settings.ipv6)] = Some(wireguard_device(me, settings, &routing, &out, address));
    }
    if let Some(learned) = learned {
        for prefix in learned.routes.keys() {
            if !out.origins.contains_key(prefix) {
                let decision = routing.learned_only(*prefix);
                out.settle(*prefix, decision);
            }
        }
    }

    for (peer, gateway) in bgp::peer_gateways(me, cluster) {
        let host = IpNetwork::new(peer, if peer.is_ipv4() { 32 } else { 128 }).expect("host prefix");
        if !same_subnet(me.address_like(gateway), gateway) {
            out.problems.push(format!("BGP peer {peer}: reachableBy {gateway} is on none of this node's subnets"));
        } else {
            // A route the cluster's own state asks for (a pod's, a block's) stays.
            out.routes.entry(host).or_insert(Target::Direct { via: gateway });
        }
    }

    for (name, node) in &routing.nodes {
        if *name == me.name {
            continue;
        }
        for v6 in [false, true] {
            let node_ip = node.address_of_family(v6).map(|n| n.ip());
            let (true, Some(tunnel_ip), Some(mac), Some(node_ip)) =
                (out.vxlan[usize::from(v6)], node.vxlan_tunnel_addr(v6), node.vxlan_tunnel_mac(v6), node_ip)
            else {
                continue;
            };
            match brindle_kernel::parse_mac(mac) {
                Some(mac) => out.vteps.push(Vtep { tunnel_ip, mac, node_ip }),
                None => out.problems.push(format!("node {name} has a malformed VXLAN MAC \"{mac}\"")),
            }
        }
    }
    out.vteps.sort();
    out
}

/// The WireGuard device for `settings`: a peer for every other node that published a key of
/// the family and has an address of it, allowed the prefixes of the family the cluster's state
/// routes toward it, and the routes of its table (`main`: the main table's routes, settled).
fn wireguard_device(
    me: &Me,
    settings: &WireguardSettings,
    routing: &Routing<'_>,
    main: &Desired,
    address: Option<IpAddr>,
) -> WireguardDevice {
    let v6 = settings.ipv6;
    let mut peers: Vec<WireguardPeer> = routing
        .nodes
        .iter()
        .filter(|(name, _)| **name != me.name)
        .filter_map(|(name, node)| {
            let public_key = node.wireguard_key(v6)?.to_owned();
            let endpoint = std::net::SocketAddr::new(node.address_of_family(v6)?.ip(), settings.port);
            let allowed_ips = main
                .origins
                .iter()
                .filter(|(prefix, origin)| prefix.is_ipv6() == v6 && **origin == Origin::Remote((*name).to_owned()))
                .map(|(prefix, _)| *prefix)
                .collect();
            Some(WireguardPeer { node: (*name).to_owned(), public_key, endpoint, allowed_ips })
        })
        .collect();
    peers.sort();
    let into_device = Target::Wireguard { interface: settings.interface.clone() };
    let mut routes: BTreeMap<IpNetwork, Target> =
        peers.iter().flat_map(|p| &p.allowed_ips).map(|prefix| (*prefix, into_device.clone())).collect();
    // A more specific prefix inside an encrypted one that goes elsewhere leaves this table.
    let throws: Vec<IpNetwork> = main
        .origins
        .iter()
        .filter(|(prefix, origin)| {
            prefix.is_ipv6() == v6
                && !routes.contains_key(prefix)
                && !matches!(origin, Origin::Remote(node) if routing.encrypted(**prefix, node))
                && (0..prefix.prefix()).any(|len| {
                    IpNetwork::new(prefix.ip(), len)
                        .and_then(|net| IpNetwork::new(net.network(), len))
                        .is_ok_and(|covering| routes.contains_key(&covering))
                })
        })
        .map(|(prefix, _)| *prefix)
        .collect();
    routes.extend(throws.into_iter().map(|prefix| (prefix, Target::Throw)));
    WireguardDevice { settings: settings.clone(), address, peers, routes }
}

#[cfg(test)]
mod tests;
