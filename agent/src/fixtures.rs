//! Small clusters for the unit tests of the BGP plan and the BIRD configuration.

use std::collections::BTreeMap;

use brindle_datastore::resource::{IpPool, Node, NodeBgp, Resource};

use crate::calc::bgp::Settings;
use crate::calc::{Cluster, Me};

/// A node with a BGP IPv4 address, labels and, for reflectors, a cluster ID.
pub fn node(name: &str, ip: &str, labels: &[(&str, &str)], cluster_id: Option<&str>) -> Resource<Node> {
    let bgp = NodeBgp {
        ipv4_address: Some(ip.parse().unwrap()),
        route_reflector_cluster_id: cluster_id.map(|c| c.parse().unwrap()),
        ..NodeBgp::default()
    };
    let mut r = Resource::new(name, Node { bgp: Some(bgp), ..Node::default() });
    r.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    r
}

/// The agent's view of itself on node `name` with IPv4 address `ip`.
pub fn me(name: &str, ip: &str) -> Me {
    Me {
        name: name.into(),
        ipv4: Some(ip.parse().unwrap()),
        ipv6: None,
        ipip_supported: false,
        tunnels: Default::default(),
        to_host: Default::default(),
        device_routes: vec![
            ("eth0".into(), "10.0.0.0/24".parse().unwrap()),
            ("brin1".into(), "10.0.0.0/24".parse().unwrap()),
        ],
        wireguard: [None, None],
        wireguard_interfaces: ["wg.brindle".into(), "wg-v6.brindle".into()],
    }
}

/// Pool 10.244.0.0/16 and nodes a (a reflector labelled `rr=true`), b and c on 10.0.0.0/24.
pub fn cluster(mesh: bool) -> Cluster {
    let mut c = Cluster {
        pools: vec![Resource::new("p", IpPool::new("10.244.0.0/16".parse().unwrap()))],
        nodes: vec![
            node("a", "10.0.0.1/24", &[("rr", "true")], Some("1.0.0.1")),
            node("b", "10.0.0.2/24", &[], None),
            node("c", "10.0.0.3/24", &[], None),
        ],
        ..Cluster::default()
    };
    c.bgp.node_to_node_mesh_enabled = mesh;
    c
}

/// Hold time 90 s, secrets under `/etc/brindle/secrets`.
pub fn settings() -> Settings {
    Settings { hold_time: 90, secrets_dir: "/etc/brindle/secrets".into() }
}
