//! What a lab is made of, decided before anything is built: the options an operator gives,
//! where each node sits on the underlay, and the resources that describe the cluster.

use serde::{Deserialize, Serialize};

/// How pod traffic crosses between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// VXLAN between every pair of nodes.
    Vxlan,
    /// VXLAN only between nodes in different subnets (two subnets and a router).
    VxlanCrosssubnet,
    /// IP-in-IP between every pair of nodes (needs the kernel's ipip module).
    Ipip,
    /// IP-in-IP only between subnets (needs the ipip module).
    IpipCrosssubnet,
    /// No encapsulation: nodes share one subnet and route pod addresses directly.
    None,
}

/// How nodes learn each other's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Peering {
    /// The embedded BGP speaker, full node-to-node mesh.
    Mesh,
    /// The embedded BGP speaker, mesh off, the first `reflectors` nodes route reflectors
    /// (one cluster ID) for the others.
    Rr,
    /// No BGP: routes come from the datastore (which node owns which block).
    None,
}

/// Where the cluster's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Store {
    /// An SQLite file in the lab's directory.
    Sqlite,
    /// An etcd server in the router's namespace.
    Etcd,
    /// A kube-apiserver (with its own etcd) in the router's namespace.
    Kubernetes,
    /// An etcd server for brindle's state beside a kube-apiserver, as a cluster that keeps
    /// Calico in an etcd of its own: brindle-controllers copies the API's Nodes' labels,
    /// Namespaces, Pods' labels and NetworkPolicies into etcd.
    EtcdKubernetes,
}

impl Store {
    /// Whether the lab has a Kubernetes API (its pods are then Kubernetes Pods).
    pub fn has_kubernetes(self) -> bool {
        matches!(self, Store::Kubernetes | Store::EtcdKubernetes)
    }
}

/// Which iptables the agents program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Iptables {
    /// iptables-nft (nf_tables).
    #[default]
    Nft,
    /// iptables-legacy.
    Legacy,
}

/// Everything `brindle-lab up` is asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    /// How many nodes.
    pub nodes: usize,
    /// How many pods on each node.
    pub pods_per_node: usize,
    /// The encapsulation.
    pub mode: Mode,
    /// The BGP topology.
    pub peering: Peering,
    /// The datastore.
    pub datastore: Store,
    /// How many route reflectors (with `Peering::Rr`): node-0 onwards.
    #[serde(default = "one")]
    pub reflectors: usize,
    /// The agents' iptables.
    #[serde(default)]
    pub iptables: Iptables,
    /// Dual-stack: nodes and pods get an IPv6 address beside their IPv4 one.
    #[serde(default)]
    pub ipv6: bool,
}

fn one() -> usize {
    1
}

/// The underlay's subnets; CrossSubnet modes use both, the others the first.
pub const SUBNETS: [&str; 2] = ["10.250.0.0/24", "10.250.1.0/24"];

/// The underlay's IPv6 subnets, beside [`SUBNETS`] in a dual-stack lab.
pub const SUBNETS_V6: [&str; 2] = ["fd00:250::/64", "fd00:250:1::/64"];

/// The pods' pool.
pub const POOL_CIDR: &str = "10.244.0.0/16";

/// The pods' IPv6 pool in a dual-stack lab.
pub const POOL_V6_CIDR: &str = "fd00:10:244::/56";

/// The most nodes a lab has (host numbers .10 up in a /24).
pub const MAX_NODES: usize = 200;

/// The name an enum value has on the command line (`vxlan-crosssubnet`).
pub fn cli_name<T: clap::ValueEnum>(value: &T) -> String {
    value.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

impl Mode {
    /// Whether nodes sit in two subnets behind a router.
    pub fn cross_subnet(self) -> bool {
        matches!(self, Mode::VxlanCrosssubnet | Mode::IpipCrosssubnet)
    }

    /// Whether the mode needs the kernel's ipip module.
    pub fn needs_ipip(self) -> bool {
        matches!(self, Mode::Ipip | Mode::IpipCrosssubnet)
    }

    /// The pool's `ipipMode` and `vxlanMode`.
    fn pool_modes(self) -> (&'static str, &'static str) {
        match self {
            Mode::Vxlan => ("Never", "Always"),
            Mode::VxlanCrosssubnet => ("Never", "CrossSubnet"),
            Mode::Ipip => ("Always", "Never"),
            Mode::IpipCrosssubnet => ("CrossSubnet", "Never"),
            Mode::None => ("Never", "Never"),
        }
    }
}

impl Options {
    /// Rejects what cannot be built, saying why.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=MAX_NODES).contains(&self.nodes), "--nodes must be between 1 and {MAX_NODES}");
        anyhow::ensure!(self.pods_per_node <= 50, "--pods-per-node must be at most 50");
        anyhow::ensure!(
            (1..=self.nodes).contains(&self.reflectors),
            "--reflectors must be between 1 and --nodes ({})",
            self.nodes
        );
        Ok(())
    }

    /// Node `i`'s place on the underlay: (subnet index, host number).
    pub fn placement(&self, i: usize) -> (usize, u32) {
        let subnet = if self.mode.cross_subnet() { i % 2 } else { 0 };
        (subnet, 10 + i as u32)
    }

    /// The subnets the underlay needs.
    pub fn subnets(&self) -> &'static [&'static str] {
        if self.mode.cross_subnet() { &SUBNETS } else { &SUBNETS[..1] }
    }

    /// Node `i`'s IPv6 underlay address in a dual-stack lab: host number `n` of its subnet's
    /// IPv6 twin (`fd00:250::10` beside `10.250.0.10`).
    pub fn address_v6(&self, i: usize) -> Option<std::net::Ipv6Addr> {
        let (subnet, host) = self.placement(i);
        let net: ipnetwork::Ipv6Network = self.subnets_v6().get(subnet)?.parse().ok()?;
        Some((u128::from(net.network()) + u128::from(host)).into())
    }

    /// The IPv6 subnets the underlay needs: one beside each IPv4 subnet, none unless dual-stack.
    pub fn subnets_v6(&self) -> &'static [&'static str] {
        if self.ipv6 { &SUBNETS_V6[..self.subnets().len()] } else { &[] }
    }

    /// The resources that make the cluster: the pool, the BGP backend and topology, and for
    /// route reflection the reflectors' Nodes (labelled, with one cluster ID) made before
    /// their agents start. `addresses` are the nodes' underlay addresses, node-0 first.
    pub fn resources(&self, addresses: &[std::net::Ipv4Addr]) -> String {
        let (ipip, vxlan) = self.mode.pool_modes();
        let mut yaml = format!(
            "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {{name: pods}}\n\
             spec: {{cidr: {POOL_CIDR}, ipipMode: {ipip}, vxlanMode: {vxlan}, natOutgoing: true}}\n"
        );
        if self.ipv6 {
            // VXLAN carries IPv6 too; IP-in-IP does not, so beside it IPv6 is routed natively.
            yaml += &format!(
                "---\nkind: IPPool\napiVersion: brindle.io/v1\nmetadata: {{name: pods-v6}}\n\
                 spec: {{cidr: '{POOL_V6_CIDR}', vxlanMode: {vxlan}}}\n"
            );
        }
        let backend = if self.peering == Peering::None { "None" } else { "Embedded" };
        let iptables = match self.iptables {
            Iptables::Nft => "NFT",
            Iptables::Legacy => "Legacy",
        };
        yaml += &format!(
            "---\nkind: AgentConfiguration\napiVersion: brindle.io/v1\nmetadata: {{name: default}}\n\
             spec: {{bgpBackend: {backend}, iptablesBackend: {iptables}, logSeverityScreen: Info}}\n"
        );
        if self.peering == Peering::Rr {
            yaml += "---\nkind: BGPConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\n\
                     spec: {nodeToNodeMeshEnabled: false}\n\
                     ---\nkind: BGPPeer\napiVersion: brindle.io/v1\nmetadata: {name: to-reflectors}\n\
                     spec: {nodeSelector: all(), peerSelector: route-reflector == 'true'}\n";
            for (i, address) in addresses.iter().take(self.reflectors).enumerate() {
                let ipv6 = self.address_v6(i).map(|a| format!(", ipv6Address: '{a}/64'")).unwrap_or_default();
                yaml += &format!(
                    "---\nkind: Node\napiVersion: brindle.io/v1\n\
                     metadata: {{name: {}, labels: {{route-reflector: 'true'}}}}\n\
                     spec: {{bgp: {{ipv4Address: {address}/24{ipv6}, routeReflectorClusterID: 224.0.0.1}}}}\n",
                    node_name(i)
                );
            }
        }
        yaml
    }
}

/// Node `i`'s name in the datastore.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The name of pod `j` on node `i`.
pub fn pod_name(i: usize, j: usize) -> String {
    format!("pod-{i}-{j}")
}

#[cfg(test)]
mod tests {
    use brindle_datastore::resource::{AnyResource, parse_documents};

    use super::*;

    fn options(mode: Mode, peering: Peering) -> Options {
        Options {
            nodes: 3,
            pods_per_node: 2,
            mode,
            peering,
            datastore: Store::Sqlite,
            reflectors: 2,
            iptables: Iptables::Nft,
            ipv6: false,
        }
    }

    #[test]
    fn the_resources_of_every_combination_are_valid() {
        for mode in [Mode::Vxlan, Mode::VxlanCrosssubnet, Mode::Ipip, Mode::IpipCrosssubnet, Mode::None] {
            for peering in [Peering::Mesh, Peering::Rr, Peering::None] {
                let addresses = ["10.250.0.10".parse().unwrap(), "10.250.0.11".parse().unwrap()];
                let yaml = options(mode, peering).resources(&addresses);
                let resources = parse_documents(&yaml).unwrap_or_else(|e| panic!("{mode:?} {peering:?}: {e}"));
                for r in &resources {
                    r.validate().unwrap_or_else(|e| panic!("{mode:?} {peering:?}: {e}"));
                }
                let reflectors = resources.iter().filter(|r| matches!(r, AnyResource::Node(_))).count();
                assert_eq!(reflectors, if peering == Peering::Rr { 2 } else { 0 });
            }
        }
    }

    #[test]
    fn cross_subnet_modes_alternate_nodes_between_two_subnets() {
        let cross = options(Mode::VxlanCrosssubnet, Peering::Mesh);
        assert_eq!((0..3).map(|i| cross.placement(i)).collect::<Vec<_>>(), [(0, 10), (1, 11), (0, 12)]);
        assert_eq!(cross.subnets().len(), 2);
        let flat = options(Mode::None, Peering::None);
        assert_eq!(flat.placement(2), (0, 12));
        assert_eq!(flat.subnets().len(), 1);
        assert_eq!(flat.address_v6(2), None);
    }

    #[test]
    fn a_dual_stack_lab_has_a_second_pool_twin_addresses_and_ipv6_in_vxlan_when_ipv4_is() {
        let mut dual = Options { ipv6: true, ..options(Mode::None, Peering::Rr) };
        dual.check().unwrap();
        assert_eq!(dual.subnets_v6(), ["fd00:250::/64"]);
        assert_eq!(dual.address_v6(2), Some("fd00:250::c".parse().unwrap()));
        let yaml = dual.resources(&["10.250.0.10".parse().unwrap(), "10.250.0.11".parse().unwrap()]);
        let resources = parse_documents(&yaml).unwrap();
        assert!(resources.iter().all(|r| r.validate().is_ok()), "{yaml}");
        assert!(yaml.contains(POOL_V6_CIDR) && yaml.contains("ipv6Address: 'fd00:250::a/64'"), "{yaml}");
        // VXLAN encapsulates both families; IP-in-IP only IPv4.
        dual.mode = Mode::VxlanCrosssubnet;
        dual.check().unwrap();
        let yaml = dual.resources(&["10.250.0.10".parse().unwrap()]);
        assert!(yaml.contains(&format!("cidr: '{POOL_V6_CIDR}', vxlanMode: CrossSubnet")), "{yaml}");
        dual.mode = Mode::Ipip;
        let yaml = dual.resources(&["10.250.0.10".parse().unwrap()]);
        assert!(yaml.contains(&format!("cidr: '{POOL_V6_CIDR}', vxlanMode: Never")), "{yaml}");
    }
}
