//! The desired dataplane, computed from the cluster's state: a pure function, so every rule
//! of DESIGN.md's encapsulation table is tested without a kernel. `bgp` plans the BGP side.

pub mod bgp;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use brindle_datastore::ipam::{AllocationKind, Block};
use brindle_datastore::resource::{
    BgpConfiguration, BgpFilter, BgpPeer, EncapMode, Encapsulation, IpPool, Node, Resource, WorkloadEndpoint,
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
    /// This node's VXLAN device MAC (the one its Node publishes).
    pub vxlan_mac: [u8; 6],
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels { uplink_mtu: 1500, vxlan_vni: 4096, vxlan_port: 4789, vxlan_mac: [0x66, 0, 0, 0, 0, 0] }
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
    /// This node's workload endpoints.
    pub workloads: Vec<Resource<WorkloadEndpoint>>,
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
    pub routes: BTreeMap<IpNetwork, IpAddr>,
    /// Whether BGP has converged since start. Until then, remote blocks BGP has not taught
    /// yet keep the routes the datastore implies (the same ones), so a restarting agent
    /// changes nothing.
    pub converged: bool,
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
    /// Through the VXLAN device to another node's tunnel address.
    Vxlan {
        /// The other node's VXLAN tunnel address.
        via: Ipv4Addr,
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
}

/// A remote node's VXLAN endpoint: ARP entry (tunnel IP -> MAC) and FDB entry (MAC -> node).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vtep {
    /// The node's tunnel address.
    pub tunnel_ip: Ipv4Addr,
    /// Its VXLAN device's MAC.
    pub mac: [u8; 6],
    /// The node's underlay address.
    pub node_ip: Ipv4Addr,
}

/// The VXLAN device as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// This node's underlay address (the VTEP).
    pub local: Ipv4Addr,
    /// The device's MAC.
    pub mac: [u8; 6],
    /// This node's tunnel address, on the device.
    pub address: Ipv4Addr,
    /// The device's MTU: the uplink's less VXLAN's overhead.
    pub mtu: u32,
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
    /// Whether this node needs its VXLAN device.
    pub vxlan: bool,
    /// Whether this node needs `tunl0` (a pool uses IP-in-IP and the kernel has it).
    pub ipip: bool,
    /// The VXLAN device, once this node has a tunnel address (`None` while `vxlan` waits
    /// for one).
    pub vxlan_device: Option<VxlanDevice>,
    /// `tunl0`, once this node has a tunnel address.
    pub ipip_device: Option<IpipDevice>,
    /// The pods' MTU: the uplink's less the largest overhead the pools' encapsulation adds.
    pub pod_mtu: u32,
    /// Remote VTEPs.
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
    /// Blocks (and borrowed addresses) of other nodes that this node cannot route because of
    /// a problem of its own (configuration, a refused next hop): their pods are out of reach,
    /// and the agent is not ready. A block its owner does not advertise (its session is down)
    /// or of a node that is gone is not counted: that is not this node's to fix.
    pub unrouted: Vec<IpNetwork>,
    /// Things that could not be done, in words (logged and reported).
    pub problems: Vec<String>,
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

/// `learned` without the routes whose next hop [`next_hop_flaw`] refuses, each named in
/// `problems` (copied only when one is refused).
fn with_sane_next_hops<'a>(
    learned: &'a Learned,
    me: &Me,
    cluster: &Cluster,
    problems: &mut Vec<String>,
) -> Cow<'a, Learned> {
    let refused: Vec<(IpNetwork, IpAddr, &str)> = learned
        .routes
        .iter()
        .filter_map(|(prefix, next_hop)| next_hop_flaw(*next_hop, me, cluster).map(|flaw| (*prefix, *next_hop, flaw)))
        .collect();
    if refused.is_empty() {
        return Cow::Borrowed(learned);
    }
    let mut sane = learned.clone();
    for (prefix, next_hop, flaw) in refused {
        problems.push(format!("learned {prefix} via {next_hop}, which {flaw}; not installed"));
        sane.routes.remove(&prefix);
    }
    Cow::Owned(sane)
}

/// Whether a route toward another node's addresses could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Routed,
    /// A problem of this node's stops it.
    Unroutable,
    /// The other node does not offer it (not registered, or not advertised over BGP).
    Unadvertised,
}

/// The pod MTU: the uplink's less the largest encapsulation overhead the enabled pools use.
pub fn pod_mtu(uplink_mtu: u32, pools: &[Resource<IpPool>]) -> u32 {
    let overhead = pools.iter().filter(|p| !p.spec.disabled).map(|p| p.spec.max_overhead()).max().unwrap_or(0);
    uplink_mtu.saturating_sub(overhead)
}

/// Computes the desired dataplane for `me`; `learned` holds BGP's routes when the agent runs
/// a speaker (`None`: routes come from the datastore alone).
pub fn desired(me: &Me, cluster: &Cluster, learned: Option<&Learned>) -> Desired {
    let mut out = Desired::default();
    let heard = learned;
    let sane = learned.map(|learned| with_sane_next_hops(learned, me, cluster, &mut out.problems));
    let learned = sane.as_deref();
    let nodes: BTreeMap<&str, &Node> = cluster.nodes.iter().map(|n| (n.metadata.name.as_str(), &n.spec)).collect();
    let pool_of = |cidr: &IpNetwork| cluster.pools.iter().find(|p| p.spec.cidr.contains(cidr.network()));
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
    out.vxlan = cluster.pools.iter().any(|p| p.spec.vxlan_mode != EncapMode::Never && !p.spec.disabled);
    out.ipip =
        me.ipip_supported && cluster.pools.iter().any(|p| p.spec.ipip_mode != EncapMode::Never && !p.spec.disabled);
    out.pod_mtu = pod_mtu(me.tunnels.uplink_mtu, &cluster.pools);
    let tunnel_address = nodes.get(me.name.as_str()).and_then(|n| n.ipv4_vxlan_tunnel_addr);
    let uplink_mtu = me.tunnels.uplink_mtu;
    if let (true, Some(address), Some(IpAddr::V4(local))) = (out.vxlan, tunnel_address, me.ipv4.map(|n| n.ip())) {
        out.vxlan_device = Some(VxlanDevice {
            vni: me.tunnels.vxlan_vni,
            port: me.tunnels.vxlan_port,
            local,
            mac: me.tunnels.vxlan_mac,
            address,
            mtu: uplink_mtu.saturating_sub(Encapsulation::Vxlan.overhead(false)),
        });
    }
    if let (true, Some(address)) = (out.ipip, tunnel_address) {
        let mtu = uplink_mtu.saturating_sub(Encapsulation::Ipip.overhead(false));
        out.ipip_device = Some(IpipDevice { address, mtu });
    }

    // Routes toward another node for `dst`, per the pool's mode; whether this node could
    // route it (a problem of its own stops it) or the other node's BGP did not advertise it.
    let remote = |out: &mut Desired, dst: IpNetwork, pool: &IpPool, node_name: &str| -> Reach {
        let Some(node) = nodes.get(node_name) else {
            out.problems.push(format!("{dst} belongs to node {node_name}, which is not registered"));
            return Reach::Unadvertised;
        };
        let mine = me.address_like(dst.ip());
        let theirs = node.address_like(dst.ip()).map(|n| n.ip());
        let Some(peer) = theirs else {
            out.problems.push(format!("node {node_name} has no address of {dst}'s family; no route to {dst}"));
            return Reach::Unroutable;
        };
        let mut peer = peer;
        if let Some(learned) = learned
            && pool.encapsulation_toward(mine, peer) != Encapsulation::Vxlan
        {
            match learned.routes.get(&dst) {
                Some(next_hop) => peer = *next_hop,
                // Refused by this node (its next hop): a problem of ours, already named.
                None if heard.is_some_and(|h| h.routes.contains_key(&dst)) => return Reach::Unroutable,
                None if learned.converged => {
                    out.problems
                        .push(format!("{dst} of node {node_name} is not advertised over BGP (is its session up?)"));
                    return Reach::Unadvertised;
                }
                None => {}
            }
        }
        let target = match (pool.encapsulation_toward(mine, peer), peer) {
            (Encapsulation::Vxlan, _) => match node.ipv4_vxlan_tunnel_addr {
                Some(via) if dst.is_ipv4() => Target::Vxlan { via },
                _ => {
                    out.problems.push(format!("node {node_name} has no VXLAN tunnel address yet; no route to {dst}"));
                    return Reach::Unroutable;
                }
            },
            (Encapsulation::Ipip, IpAddr::V4(via)) if me.ipip_supported => Target::Ipip { via },
            (Encapsulation::Ipip, _) => {
                out.problems.push(format!(
                    "pool {} uses IP-in-IP, which this kernel lacks (no ipip module); no route to {dst}",
                    pool.cidr
                ));
                return Reach::Unroutable;
            }
            (Encapsulation::None, peer) if same_subnet(mine, peer) => Target::Direct { via: peer },
            (Encapsulation::None, peer) => {
                out.problems.push(format!(
                    "node {node_name} ({peer}) is not on this node's subnet and pool {} does not encapsulate; \
                     {dst} needs BGP or a router that knows it",
                    pool.cidr
                ));
                return Reach::Unroutable;
            }
        };
        out.routes.insert(dst, target);
        Reach::Routed
    };

    for block in &cluster.blocks {
        let Some(pool) = pool_of(&block.cidr) else { continue };
        match block.owner.as_deref() {
            Some(owner) if owner == me.name => {
                out.routes.insert(block.cidr, Target::Blackhole);
            }
            Some(owner) if remote(&mut out, block.cidr, &pool.spec, owner) == Reach::Unroutable => {
                out.unrouted.push(block.cidr);
            }
            Some(_) | None => {}
        }
        // Addresses borrowed from the block's owner: a /32 (/128) toward where they are used.
        for (ip, allocation) in block.allocations() {
            let used_on = allocation.node.as_str();
            if allocation.kind == AllocationKind::Workload
                && Some(used_on) != block.owner.as_deref()
                && used_on != me.name
            {
                let host = IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix");
                if remote(&mut out, host, &pool.spec, used_on) == Reach::Unroutable {
                    out.unrouted.push(host);
                }
            }
        }
    }

    // Learned prefixes that are not blocks the datastore knows (external peers' routes
    // inside a pool, or outside every pool when a BGPFilter let them in): routed toward the
    // next hop as the pool says.
    if let Some(learned) = learned {
        for (prefix, next_hop) in &learned.routes {
            if out.routes.contains_key(prefix) {
                continue;
            }
            let pool = pool_of(prefix);
            let mine = me.address_like(prefix.ip());
            // A route of ours replaces the kernel's route to the same prefix: never one the
            // node itself depends on (its subnet, or a default or wider route covering it).
            if pool.is_none() && mine.is_some_and(|net| prefix.contains(net.ip()) || net.contains(prefix.ip())) {
                out.problems.push(format!("learned {prefix} overlaps this node's own subnet; not installed"));
                continue;
            }
            let how = pool.map_or(Encapsulation::None, |pool| pool.spec.encapsulation_toward(mine, *next_hop)); // no pool: natively
            let target = match (how, next_hop) {
                (Encapsulation::Vxlan, _) => continue,
                (Encapsulation::Ipip, IpAddr::V4(via)) if me.ipip_supported => Target::Ipip { via: *via },
                (Encapsulation::None, via) if same_subnet(mine, *via) => Target::Direct { via: *via },
                _ => {
                    out.problems
                        .push(format!("learned {prefix} via {next_hop}, which this node cannot reach directly"));
                    continue;
                }
            };
            out.routes.insert(*prefix, target);
        }
    }

    for workload in &cluster.workloads {
        for net in &workload.spec.ip_networks {
            out.routes.insert(*net, Target::Workload { interface: workload.spec.interface_name.clone() });
        }
    }

    if out.vxlan {
        for (name, node) in &nodes {
            if *name == me.name {
                continue;
            }
            let (Some(tunnel_ip), Some(mac), Some(IpAddr::V4(node_ip))) =
                (node.ipv4_vxlan_tunnel_addr, node.vxlan_tunnel_mac_addr.as_deref(), node.ipv4().map(|n| n.ip()))
            else {
                continue;
            };
            match brindle_kernel::parse_mac(mac) {
                Some(mac) => out.vteps.push(Vtep { tunnel_ip, mac, node_ip }),
                None => out.problems.push(format!("node {name} has a malformed VXLAN MAC \"{mac}\"")),
            }
        }
        out.vteps.sort();
    }
    out
}

#[cfg(test)]
mod tests;
