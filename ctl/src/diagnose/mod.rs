//! `diagnose POD_A POD_B`: the path between two pods explained. From the datastore: each
//! pod's endpoint, address, block and owner, pool and encapsulation, and the nodes' tunnel
//! settings; from that, the route each node should have toward the other pod. Run on one of
//! the two nodes, it also reads that node's kernel — the pod's veth and host route, proxy ARP,
//! the route toward the other pod, the VXLAN device with its ARP and FDB entries, MTUs — and
//! says exactly what is missing. Then policy: what decides each direction, and whether the
//! node's kernel holds it (`policy`).

mod policy;

pub use policy::Probe;

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Context, bail};
use brindle_datastore::Client;
use brindle_datastore::ipam::{Block, Ipam};
use brindle_datastore::policy::{NamespaceLabels, Policies};
use brindle_datastore::resource::{
    AgentConfiguration, Encapsulation, GlobalNetworkPolicy, IpPool, KubernetesNetworkPolicy, Namespace, NetworkPolicy,
    Node, Resource, Tier, WorkloadEndpoint,
};
use ipnetwork::IpNetwork;

use brindle_kernel::RouteKind;
use brindle_kernel::names::{IPIP_DEVICE, ROUTE_PROTOCOL, vxlan_device};

use crate::filter::Filter;
use crate::kernel::Kernel;

/// One pod as the datastore knows it.
#[derive(Debug, Clone)]
struct Pod {
    endpoint: Resource<WorkloadEndpoint>,
    ip: IpAddr,
    block: Option<Block>,
    pool: Option<Resource<IpPool>>,
    node: Option<Resource<Node>>,
}

impl Pod {
    fn label(&self) -> String {
        format!("{}/{}", self.endpoint.metadata.namespace.as_deref().unwrap_or("default"), self.endpoint.spec.pod)
    }
    fn node_name(&self) -> &str {
        &self.endpoint.spec.node
    }
}

/// How traffic from one node reaches another's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hop {
    /// Both pods on one node: the other pod's host route.
    Local,
    /// Through vxlan.brindle to the far node's tunnel address.
    Vxlan { tunnel: IpAddr, mac: String, underlay: IpAddr },
    /// Through tunl0 to the far node's address.
    Ipip { underlay: IpAddr },
    /// Straight to the far node's address.
    Direct { underlay: IpAddr },
    /// Encrypted through the near node's WireGuard device to the far node's key.
    Wireguard { interface: String, public_key: String, underlay: IpAddr },
}

/// What diagnose found, as lines of checks in sections.
#[derive(Debug, Default)]
pub struct Findings {
    text: String,
    problems: usize,
}

impl Findings {
    fn section(&mut self, title: &str) {
        let _ = writeln!(self.text, "\n{title}");
    }
    fn ok(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "  ✓ {}", line.as_ref());
    }
    fn note(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "  · {}", line.as_ref());
    }
    fn problem(&mut self, line: impl AsRef<str>) {
        self.problems += 1;
        let _ = writeln!(self.text, "  ✗ {}", line.as_ref());
    }
    fn check(&mut self, good: bool, ok: impl AsRef<str>, bad: impl AsRef<str>) {
        if good { self.ok(ok) } else { self.problem(bad) }
    }

    /// How many problems were found.
    pub fn problems(&self) -> usize {
        self.problems
    }

    /// The report.
    pub fn render(&self) -> String {
        let verdict = match self.problems {
            0 => "\nNo problem found on the path.\n".to_owned(),
            n => format!("\n{n} problem(s) found; each ✗ line says what is missing.\n"),
        };
        format!("{}{verdict}", self.text.trim_start_matches('\n'))
    }
}

/// Finds a pod's endpoint by `namespace/name`, `name` (namespace default) or IP.
fn find_endpoint<'a>(
    endpoints: &'a [Resource<WorkloadEndpoint>],
    what: &str,
) -> anyhow::Result<&'a Resource<WorkloadEndpoint>> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return endpoints
            .iter()
            .find(|e| e.spec.ip_networks.iter().any(|n| n.ip() == ip))
            .with_context(|| format!("no WorkloadEndpoint has address {ip}"));
    }
    let (namespace, pod) = what.split_once('/').unwrap_or(("default", what));
    endpoints.iter().find(|e| e.spec.pod == pod && e.metadata.namespace.as_deref() == Some(namespace)).with_context(
        || format!("no WorkloadEndpoint for pod {namespace}/{pod} (is it running, and wired by brindle?)"),
    )
}

fn load_pod(
    what: &str,
    endpoints: &[Resource<WorkloadEndpoint>],
    blocks: &[Block],
    pools: &[Resource<IpPool>],
    nodes: &[Resource<Node>],
) -> anyhow::Result<Pod> {
    let endpoint = find_endpoint(endpoints, what)?.clone();
    let Some(ip) = endpoint.spec.ip_networks.iter().map(IpNetwork::ip).find(IpAddr::is_ipv4) else {
        bail!("WorkloadEndpoint {} has no IPv4 address", endpoint.metadata.name);
    };
    Ok(Pod {
        ip,
        block: blocks.iter().find(|b| b.cidr.contains(ip)).cloned(),
        pool: pools.iter().find(|p| p.spec.cidr.contains(ip)).cloned(),
        node: nodes.iter().find(|n| n.metadata.name == endpoint.spec.node).cloned(),
        endpoint,
    })
}

/// Checks what the datastore says about one pod.
fn datastore_checks(f: &mut Findings, pod: &Pod) {
    f.section(&format!("{} — datastore", pod.label()));
    f.ok(format!(
        "WorkloadEndpoint {}: address {}, node {}, host veth {}",
        pod.endpoint.metadata.name,
        pod.ip,
        pod.node_name(),
        pod.endpoint.spec.interface_name
    ));
    match &pod.pool {
        Some(pool) => f.ok(format!(
            "IPPool {} ({}): ipipMode {:?}, vxlanMode {:?}{}",
            pool.metadata.name,
            pool.spec.cidr,
            pool.spec.ipip_mode,
            pool.spec.vxlan_mode,
            if pool.spec.disabled { ", disabled for new pods" } else { "" }
        )),
        None => f.problem(format!("{} is in no IPPool: no node routes it", pod.ip)),
    }
    match &pod.block {
        None => f.problem(format!("no IPAM block holds {}: the address is not allocated", pod.ip)),
        Some(block) => {
            let owner = block.owner.as_deref().unwrap_or("(none)");
            let holder = block.holder(pod.ip);
            let container = &pod.endpoint.spec.container_id;
            match holder {
                Some(a) if a.names_container(container) => f.ok(format!(
                    "block {} (owner {owner}) holds {} for this pod (handle {})",
                    block.cidr, pod.ip, a.handle
                )),
                Some(a) => f.problem(format!(
                    "block {} holds {} for handle {}, not for this pod's container {container}: two pods share an address",
                    block.cidr, pod.ip, a.handle
                )),
                None => f.problem(format!(
                    "block {} does not hold {}: IPAM thinks the address is free and may give it to another pod",
                    block.cidr, pod.ip
                )),
            }
            if block.owner.as_deref() != Some(pod.node_name()) {
                f.note(format!(
                    "the address is borrowed from {owner}'s block; nodes route it alone (/32, /128) to {}",
                    pod.node_name()
                ));
            }
        }
    }
    match &pod.node {
        None => f.problem(format!("Node {} does not exist", pod.node_name())),
        Some(node) => match node.spec.address_like(pod.ip) {
            Some(address) => f.ok(format!("Node {}: address {address}", node.metadata.name)),
            None => f.problem(format!(
                "Node {} has no {} address: other nodes cannot route to it",
                node.metadata.name,
                if pod.ip.is_ipv4() { "IPv4" } else { "IPv6" }
            )),
        },
    }
}

/// How `from`'s node sends to `to`'s pods, per `to`'s pool; an error in words when the
/// datastore lacks what the hop needs.
/// `wireguard` names the WireGuard device of a node and family (IPv6 or not), used where both
/// nodes published a key of the family.
fn hop(from: &Pod, to: &Pod, wireguard: &dyn Fn(&str, bool) -> String) -> Result<Hop, String> {
    if from.node_name() == to.node_name() {
        return Ok(Hop::Local);
    }
    let pool = to.pool.as_ref().ok_or("the destination is in no pool")?;
    let far = to.node.as_ref().ok_or_else(|| format!("node {} does not exist", to.node_name()))?;
    let family = if to.ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let far_address =
        far.spec.address_like(to.ip).ok_or_else(|| format!("node {} has no {family} address", to.node_name()))?;
    let near_address = from.node.as_ref().and_then(|n| n.spec.address_like(to.ip));
    let v6 = to.ip.is_ipv6();
    if let (Some(_), Some(public_key)) =
        (from.node.as_ref().and_then(|n| n.spec.wireguard_key(v6)), far.spec.wireguard_key(v6))
    {
        let interface = wireguard(from.node_name(), v6);
        return Ok(Hop::Wireguard { interface, public_key: public_key.to_owned(), underlay: far_address.ip() });
    }
    match pool.spec.encapsulation_toward(near_address, far_address.ip()) {
        Encapsulation::Vxlan => {
            let (address_field, mac_field) = if v6 {
                ("ipv6VXLANTunnelAddr", "vxlanTunnelMACAddrV6")
            } else {
                ("ipv4VXLANTunnelAddr", "vxlanTunnelMACAddr")
            };
            let tunnel = far.spec.vxlan_tunnel_addr(v6).ok_or_else(|| {
                format!("node {} has no {address_field} yet (its agent assigns one at start)", to.node_name())
            })?;
            let mac = far
                .spec
                .vxlan_tunnel_mac(v6)
                .map(str::to_owned)
                .ok_or_else(|| format!("node {} has no {mac_field} yet", to.node_name()))?;
            Ok(Hop::Vxlan { tunnel, mac, underlay: far_address.ip() })
        }
        Encapsulation::Ipip => Ok(Hop::Ipip { underlay: far_address.ip() }),
        Encapsulation::None => Ok(Hop::Direct { underlay: far_address.ip() }),
    }
}

/// `ip` alone: /32 or /128.
fn host_prefix(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("a host prefix is valid")
}

/// The prefix `from`'s node routes toward `to`: its whole block when `to`'s node owns the
/// block, its /32 when the address is borrowed.
fn destination(to: &Pod) -> IpNetwork {
    match &to.block {
        Some(b) if b.owner.as_deref() == Some(to.node_name()) => b.cidr,
        _ => host_prefix(to.ip),
    }
}

fn describe_hop(hop: &Hop, to: &Pod) -> String {
    let dst = destination(to);
    match hop {
        Hop::Local => format!("same node: {} dev {}", to.ip, to.endpoint.spec.interface_name),
        Hop::Vxlan { tunnel, underlay, .. } => format!(
            "VXLAN: {dst} via {tunnel} dev {} onlink (to node {} at {underlay})",
            vxlan_device(tunnel.is_ipv6()),
            to.node_name()
        ),
        Hop::Ipip { underlay } => format!("IP-in-IP: {dst} via {underlay} dev {IPIP_DEVICE} onlink"),
        Hop::Direct { underlay } => format!("no encapsulation: {dst} via {underlay}"),
        Hop::Wireguard { interface, public_key, underlay } => {
            format!("WireGuard: {dst} dev {interface} (to node {} at {underlay}, key {public_key})", to.node_name())
        }
    }
}

/// Checks this node's kernel for the local pod `here` and the path to `there`.
fn kernel_checks(f: &mut Findings, kernel: &Kernel, here: &Pod, there: &Pod, hop: Option<&Hop>) {
    f.section(&format!("{} — kernel of {} (this node)", here.label(), here.node_name()));
    let veth = &here.endpoint.spec.interface_name;
    match kernel.link(veth) {
        None => f.problem(format!("host veth {veth} does not exist: the pod is cut off (re-create the pod)")),
        Some(link) => {
            f.check(link.up, format!("host veth {veth} is up, MTU {}", link.mtu), format!("host veth {veth} is down"));
            let proxy_arp = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{veth}/proxy_arp"))
                .map(|v| v.trim() == "1")
                .unwrap_or(false);
            f.check(
                proxy_arp,
                format!("proxy ARP on {veth}: the pod's gateway 169.254.1.1 answers"),
                format!("proxy ARP is off on {veth}: the pod cannot resolve its gateway 169.254.1.1"),
            );
            if let Some(Hop::Vxlan { tunnel, .. }) = hop
                && let Some(vxlan) = kernel.link(vxlan_device(tunnel.is_ipv6()))
                && link.mtu > vxlan.mtu
            {
                f.problem(format!(
                    "the pod's MTU {} is larger than {}'s {}: large packets across nodes are dropped",
                    link.mtu, vxlan.name, vxlan.mtu
                ));
            }
        }
    }
    match kernel.route_to(here.ip) {
        Some(r) if r.device.as_deref() == Some(veth.as_str()) && r.route.dst == host_prefix(here.ip) => {
            f.ok(format!("host route to the pod: {r}"))
        }
        other => f.problem(format!(
            "no host route {}/32 dev {veth} (the kernel would use: {}); the agent repairs this on its next resync",
            here.ip,
            other.map_or("nothing".to_owned(), ToString::to_string)
        )),
    }

    f.section(&format!("toward {} ({} on {})", there.label(), there.ip, there.node_name()));
    let Some(hop) = hop else {
        f.problem("cannot tell how this node should reach it (see the datastore problems above)");
        return;
    };
    f.note(format!("expected: {}", describe_hop(hop, there)));
    let actual = kernel.route_to(there.ip);
    let shown = actual.map_or("no route at all".to_owned(), ToString::to_string);
    let dst = destination(there);
    let (device, gateway): (String, Option<IpAddr>) = match hop {
        Hop::Local => (there.endpoint.spec.interface_name.clone(), None),
        Hop::Vxlan { tunnel, .. } => (vxlan_device(tunnel.is_ipv6()).into(), Some(*tunnel)),
        Hop::Ipip { underlay } => (IPIP_DEVICE.into(), Some(*underlay)),
        Hop::Direct { underlay } => (String::new(), Some(*underlay)),
        Hop::Wireguard { interface, .. } => (interface.clone(), None),
    };
    let matches = actual.is_some_and(|r| {
        r.route.kind == RouteKind::Unicast
            && r.route.gateway == gateway
            && (device.is_empty() || r.device.as_deref() == Some(device.as_str()))
    });
    let learned = matches!(hop, Hop::Direct { .. })
        && actual.is_some_and(|r| {
            r.route.kind == RouteKind::Unicast && r.route.gateway.is_some() && r.route.protocol == ROUTE_PROTOCOL
        });
    if matches {
        f.ok(format!("route: {shown}"));
    } else if learned {
        f.ok(format!("route: {shown} (a next hop BGP chose, not the node's own address)"));
    } else {
        let expected = if *hop == Hop::Local { host_prefix(there.ip) } else { dst }.to_string();
        f.problem(format!(
            "route to {expected} is missing or wrong: the kernel uses `{shown}`; brindle-node programs it from {} \
             (check `brindlectl node status` on this node)",
            if matches!(hop, Hop::Local) { "the pod's endpoint" } else { "BGP or the datastore" }
        ));
    }
    if let Hop::Wireguard { interface, public_key, .. } = hop {
        match kernel.link(interface) {
            None => f.problem(format!("{interface} does not exist: is there a wireguard module?")),
            Some(dev) => f.check(dev.up, format!("{interface} is up, MTU {}", dev.mtu), format!("{interface} is down")),
        }
        let node = there.node_name();
        match kernel.wireguard_peers.as_ref().map(|devices| devices.get(interface)) {
            None => f.note("WireGuard's peers unread (no `wg` here)"),
            Some(peers) => f.check(
                peers.is_some_and(|keys| keys.contains(public_key)),
                format!("{interface} has node {node}'s key as a peer"),
                format!(
                    "{interface} has no peer with node {node}'s key {public_key}: this node's agent has not taken it \
                     in yet (see `brindlectl node status`)"
                ),
            ),
        }
    }
    if matches!(hop, Hop::Ipip { .. }) && kernel.link(IPIP_DEVICE).is_none() {
        f.problem(format!("this kernel has no {IPIP_DEVICE} (no ipip module): IP-in-IP pools cannot be routed here"));
    }
    if let Hop::Vxlan { tunnel, mac, underlay } = hop {
        let name = vxlan_device(tunnel.is_ipv6());
        let neighbour = if tunnel.is_ipv6() { "NDP" } else { "ARP" };
        match kernel.link(name) {
            None => f.problem(format!("{name} does not exist")),
            Some(dev) => {
                f.check(dev.up, format!("{name} is up, MTU {}", dev.mtu), format!("{name} is down"));
                let arp = kernel.arp.iter().any(|n| n.index == dev.index && n.ip == *tunnel && n.mac == *mac);
                f.check(
                    arp,
                    format!("{neighbour}: {tunnel} is at {mac}"),
                    format!(
                        "no {neighbour} entry {tunnel} lladdr {mac} on {name}: packets stop at neighbour resolution"
                    ),
                );
                let fdb = kernel.fdb.iter().any(|n| n.index == dev.index && n.mac == *mac && n.ip == *underlay);
                f.check(
                    fdb,
                    format!("FDB: {mac} is behind {underlay}"),
                    format!("no FDB entry {mac} dst {underlay} on {name}: the encapsulated packet has nowhere to go"),
                );
            }
        }
    }
}

/// Explains the path between pods `a` and `b`. `local_node` is where this runs (its kernel is
/// read when it hosts one of the pods).
/// Every policy and namespace, as the agents see them.
async fn load_policies(client: &Client) -> anyhow::Result<(Policies, NamespaceLabels)> {
    let (tiers, _) = client.list::<Tier>().await?;
    let (kubernetes, _) = client.list::<KubernetesNetworkPolicy>().await?;
    let (namespaced, _) = client.list::<NetworkPolicy>().await?;
    let (global, _) = client.list::<GlobalNetworkPolicy>().await?;
    let (namespaces, _) = client.list::<Namespace>().await?;
    let labels = namespaces.into_iter().map(|n| (n.metadata.name, n.metadata.labels)).collect();
    Ok((Policies::new(&tiers, &kubernetes, &namespaced, &global), labels))
}

/// Explains the path and the policy between pods `a` and `b` (for `probe`, or a ping), with
/// the kernel's part when run on `local_node`, one of theirs.
pub async fn diagnose(
    client: &Client,
    a: &str,
    b: &str,
    local_node: Option<&str>,
    probe: Option<Probe>,
) -> anyhow::Result<Findings> {
    let (endpoints, _) = client.list::<WorkloadEndpoint>().await?;
    let (pools, _) = client.list::<IpPool>().await?;
    let (nodes, _) = client.list::<Node>().await?;
    let blocks: Vec<Block> = Ipam::new(client.clone()).blocks().await?.into_iter().map(|(b, _)| b).collect();
    let a = load_pod(a, &endpoints, &blocks, &pools, &nodes)?;
    let b = load_pod(b, &endpoints, &blocks, &pools, &nodes)?;

    let mut f = Findings::default();
    datastore_checks(&mut f, &a);
    datastore_checks(&mut f, &b);
    f.section("path");
    let (configs, _) = client.list::<AgentConfiguration>().await?;
    // A node's own AgentConfiguration (`node.<name>`) wins over `default`, as in its agent.
    let wireguard = |node: &str, v6: bool| {
        let own = format!("node.{node}");
        let config =
            configs.iter().find(|c| c.metadata.name == own).or(configs.iter().find(|c| c.metadata.name == "default"));
        let spec = config.map_or_else(AgentConfiguration::default, |c| c.spec.clone());
        if v6 { spec.wireguard_interface_name_v6 } else { spec.wireguard_interface_name }
    };
    let a_to_b = hop(&a, &b, &wireguard);
    let b_to_a = hop(&b, &a, &wireguard);
    for (from, to, hop) in [(&a, &b, &a_to_b), (&b, &a, &b_to_a)] {
        match hop {
            Ok(h) => f.ok(format!("{} → {}: {}", from.node_name(), to.label(), describe_hop(h, to))),
            Err(why) => f.problem(format!("{} → {}: {why}", from.node_name(), to.label())),
        }
    }

    let here = local_node.filter(|n| *n == a.node_name() || *n == b.node_name());
    let (policies, namespaces) = load_policies(client).await?;
    let filter = match here {
        Some(_) => Some(Filter::read().context("reading this node's iptables and ipsets")?),
        None => None,
    };
    match here {
        None => f.note(format!(
            "run this on {} or {} to check their kernels too (this is {})",
            a.node_name(),
            b.node_name(),
            local_node.unwrap_or("an unknown node")
        )),
        Some(node) => {
            let kernel = Kernel::read().await.context("reading this node's routes and neighbours")?;
            for (pod, other, hop) in [(&a, &b, &a_to_b), (&b, &a, &b_to_a)] {
                if pod.node_name() == node {
                    kernel_checks(&mut f, &kernel, pod, other, hop.as_ref().ok());
                }
            }
        }
    }
    let kernel = filter.as_ref().zip(here);
    policy::checks(&mut f, &policies, &namespaces, [&a, &b], probe, kernel);
    Ok(f)
}
