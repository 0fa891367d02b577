use brindle_datastore::ipam::Allocation;

use super::*;

fn node(name: &str, ip: &str, vxlan: Option<(&str, &str)>) -> Resource<Node> {
    let mut spec = Node {
        bgp: Some(brindle_datastore::resource::NodeBgp {
            ipv4_address: Some(ip.parse().unwrap()),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some((tunnel, mac)) = vxlan {
        spec.ipv4_vxlan_tunnel_addr = Some(tunnel.parse().unwrap());
        spec.vxlan_tunnel_mac_addr = Some(mac.into());
    }
    Resource::new(name, spec)
}

fn pool(cidr: &str, vxlan: EncapMode, ipip: EncapMode) -> Resource<IpPool> {
    let mut spec = IpPool::new(cidr.parse().unwrap());
    spec.vxlan_mode = vxlan;
    spec.ipip_mode = ipip;
    Resource::new("p", spec)
}

fn block(cidr: &str, owner: &str) -> Block {
    Block::new(cidr.parse().unwrap(), Some(owner.into()))
}

fn me(ipip: bool) -> Me {
    Me {
        name: "a".into(),
        ipv4: Some("10.0.0.1/24".parse().unwrap()),
        ipv6: None,
        ipip_supported: ipip,
        tunnels: Tunnels::default(),
        to_host: Default::default(),
        device_routes: Vec::new(),
        wireguard: [None, None],
        wireguard_interfaces: ["wg.brindle".into(), "wg-v6.brindle".into()],
    }
}

fn cluster(pool: Resource<IpPool>) -> Cluster {
    Cluster {
        pools: vec![pool],
        nodes: vec![
            node("a", "10.0.0.1/24", Some(("10.244.0.1", "02:00:00:00:00:0a"))),
            node("b", "10.0.0.2/24", Some(("10.244.1.1", "02:00:00:00:00:0b"))),
            node("c", "10.0.1.3/24", Some(("10.244.2.1", "02:00:00:00:00:0c"))),
        ],
        blocks: vec![block("10.244.0.0/26", "a"), block("10.244.1.0/26", "b"), block("10.244.2.0/26", "c")],
        ..Cluster::default()
    }
}

/// An address of c's block (10.244.2.0) lent to node b.
fn lend_from_c_to_b(c: &mut Cluster) {
    let holder =
        Allocation { handle: "n.x".into(), kind: AllocationKind::Workload, node: "b".into(), ..Allocation::default() };
    c.blocks[2].allocate(holder, 0, 0).unwrap();
}

fn route(d: &Desired, dst: &str) -> Option<Target> {
    d.routes.get(&dst.parse().unwrap()).cloned()
}

#[test]
fn own_blocks_are_blackholed_and_no_encap_goes_direct_on_the_subnet() {
    let d = desired(&me(false), &cluster(pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never)), None);
    assert_eq!(route(&d, "10.244.0.0/26"), Some(Target::Blackhole));
    assert_eq!(route(&d, "10.244.1.0/26"), Some(Target::Direct { via: "10.0.0.2".parse().unwrap() }));
    // c is on another subnet: no-encap cannot reach it without BGP, and says so.
    assert_eq!(route(&d, "10.244.2.0/26"), None);
    assert!(d.all_problems().iter().any(|p| p.contains("node c") && p.contains("BGP")), "{:?}", d.all_problems());
    assert!(d.vxlan == [false, false] && d.vteps.is_empty());
}

#[test]
fn vxlan_always_routes_through_tunnel_addresses_with_vteps() {
    let d = desired(&me(false), &cluster(pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never)), None);
    assert_eq!(route(&d, "10.244.1.0/26"), Some(Target::Vxlan { via: "10.244.1.1".parse().unwrap() }));
    assert_eq!(route(&d, "10.244.2.0/26"), Some(Target::Vxlan { via: "10.244.2.1".parse().unwrap() }));
    assert_eq!(d.vxlan, [true, false]);
    assert_eq!(d.vteps.len(), 2, "every other node, never this one");
    assert_eq!(d.vteps[0].node_ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(d.vteps[0].mac, [2, 0, 0, 0, 0, 0x0b]);
}

#[test]
fn cross_subnet_encapsulates_only_across_subnets() {
    let d = desired(&me(false), &cluster(pool("10.244.0.0/16", EncapMode::CrossSubnet, EncapMode::Never)), None);
    assert_eq!(route(&d, "10.244.1.0/26"), Some(Target::Direct { via: "10.0.0.2".parse().unwrap() }));
    assert_eq!(route(&d, "10.244.2.0/26"), Some(Target::Vxlan { via: "10.244.2.1".parse().unwrap() }));
}

#[test]
fn ipip_routes_via_node_addresses_or_explains_the_missing_module() {
    let c = cluster(pool("10.244.0.0/16", EncapMode::Never, EncapMode::Always));
    let with = desired(&me(true), &c, None);
    assert_eq!(route(&with, "10.244.2.0/26"), Some(Target::Ipip { via: "10.0.1.3".parse().unwrap() }));
    assert!(with.ipip && with.vxlan == [false, false]);
    let without = desired(&me(false), &c, None);
    assert_eq!(route(&without, "10.244.2.0/26"), None);
    assert!(without.all_problems().iter().any(|p| p.contains("no ipip module")), "{:?}", without.all_problems());
    assert!(!without.ipip);
    // Own blocks are still blackholed: the other modes keep working.
    assert_eq!(route(&without, "10.244.0.0/26"), Some(Target::Blackhole));
}

#[test]
fn borrowed_addresses_get_host_routes_and_local_workloads_their_veth() {
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never));
    // b borrowed an address from c's block.
    lend_from_c_to_b(&mut c);
    let wep = WorkloadEndpoint {
        node: "a".into(),
        orchestrator: "k8s".into(),
        pod: "web".into(),
        endpoint: "eth0".into(),
        container_id: "c1".into(),
        interface_name: "brin0123456789a".into(),
        mac: None,
        ip_networks: vec!["10.244.0.5/32".parse().unwrap()],
        profiles: Vec::new(),
        service_account_name: None,
        ports: vec![],
    };
    c.workloads.push(Resource::new("a-k8s-web-eth0", wep));
    let d = desired(&me(false), &c, None);
    assert_eq!(route(&d, "10.244.2.0/32"), Some(Target::Vxlan { via: "10.244.1.1".parse().unwrap() }));
    assert_eq!(route(&d, "10.244.0.5/32"), Some(Target::Workload { interface: "brin0123456789a".into() }));
}

#[test]
fn nat_outgoing_lists_enabled_nat_pools_and_all_pools() {
    let mut p = pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never);
    p.spec.nat_outgoing = true;
    let mut c = cluster(p);
    c.pools.push(pool("10.245.0.0/16", EncapMode::Never, EncapMode::Never));
    let d = desired(&me(false), &c, None);
    assert_eq!(d.nat_pools, vec!["10.244.0.0/16".parse::<IpNetwork>().unwrap()]);
    assert_eq!(d.pools.len(), 2);
}

#[test]
fn equal_cost_next_hops_make_one_multipath_route_of_the_usable_ones() {
    let c = cluster(pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never));
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let mut learned = Learned { converged: true, ..Learned::default() };
    let changes = LearnedChanges {
        routes: [("10.244.9.0/24".parse().unwrap(), Some(ip("10.0.0.254")))].into(),
        // The best's hop, another router on the subnet, one far away (left out).
        multipath: [("10.244.9.0/24".parse().unwrap(), vec![ip("10.0.0.254"), ip("10.0.0.253"), ip("172.16.0.1")])]
            .into(),
        ..Default::default()
    };
    assert_eq!(learned.take_in(changes).map(|c| c.len()), Some(1));
    let d = desired(&me(false), &c, Some(&learned));
    let both = Target::Multipath { via: vec![ip("10.0.0.253"), ip("10.0.0.254")] };
    assert_eq!(route(&d, "10.244.9.0/24"), Some(both));
    // One router left: back to a plain route, and the change is noticed.
    let one = LearnedChanges {
        routes: [("10.244.9.0/24".parse().unwrap(), Some(ip("10.0.0.254")))].into(),
        multipath: [("10.244.9.0/24".parse().unwrap(), Vec::new())].into(),
        ..Default::default()
    };
    assert_eq!(learned.take_in(one).map(|c| c.len()), Some(1), "the same best, fewer paths: changed");
    let d = desired(&me(false), &c, Some(&learned));
    assert_eq!(route(&d, "10.244.9.0/24"), Some(Target::Direct { via: ip("10.0.0.254") }));
}

#[test]
fn with_bgp_remote_blocks_follow_learned_routes_once_converged() {
    let c = cluster(pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never));
    // Before convergence, nothing learned yet: the datastore's routes stand (no churn).
    let warming = desired(&me(false), &c, Some(&Learned::default()));
    assert_eq!(route(&warming, "10.244.1.0/26"), Some(Target::Direct { via: "10.0.0.2".parse().unwrap() }));
    // Converged: only what BGP says; a withdrawn block has no route, an external prefix in
    // the pool is routed to its next hop.
    let mut learned = Learned { converged: true, ..Learned::default() };
    learned.routes.insert("10.244.9.0/24".parse().unwrap(), "10.0.0.254".parse().unwrap());
    // Outside every pool (a BGPFilter let it in): routed natively, if the next hop is near.
    learned.routes.insert("192.168.77.0/24".parse().unwrap(), "10.0.0.254".parse().unwrap());
    learned.routes.insert("192.168.78.0/24".parse().unwrap(), "172.16.0.1".parse().unwrap());
    // Never a route the node itself depends on: a default route, or its own subnet.
    learned.routes.insert("0.0.0.0/0".parse().unwrap(), "10.0.0.254".parse().unwrap());
    learned.routes.insert("10.0.0.0/25".parse().unwrap(), "10.0.0.254".parse().unwrap());
    let d = desired(&me(false), &c, Some(&learned));
    assert_eq!(route(&d, "10.244.1.0/26"), None);
    assert_eq!(route(&d, "10.244.9.0/24"), Some(Target::Direct { via: "10.0.0.254".parse().unwrap() }));
    assert_eq!(route(&d, "192.168.77.0/24"), Some(Target::Direct { via: "10.0.0.254".parse().unwrap() }));
    assert_eq!(route(&d, "192.168.78.0/24"), None);
    assert!(d.all_problems().iter().any(|p| p.contains("192.168.78.0/24 via 172.16.0.1")), "{:?}", d.all_problems());
    for taken in ["0.0.0.0/0", "10.0.0.0/25"] {
        assert_eq!(route(&d, taken), None, "{taken}");
        assert!(d.all_problems().iter().any(|p| p.contains(&format!("{taken} overlaps this node's own subnet"))));
    }
}

#[test]
fn learned_routes_with_a_next_hop_that_cannot_carry_traffic_are_not_installed() {
    let c = cluster(pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never));
    let mut learned = Learned { converged: true, ..Learned::default() };
    let bad = [("192.168.1.0/24", "10.0.0.1"), ("192.168.2.0/24", "10.244.1.5"), ("192.168.3.0/24", "169.254.1.1")];
    for (prefix, next_hop) in bad {
        learned.routes.insert(prefix.parse().unwrap(), next_hop.parse().unwrap());
    }
    // A block of another node, announced with this node as its next hop: not installed
    // either (it would loop), and the block is left without a route rather than a wrong one.
    learned.routes.insert("10.244.1.0/26".parse().unwrap(), "10.0.0.1".parse().unwrap());
    let d = desired(&me(false), &c, Some(&learned));
    let reasons = ["which is this node", "which is inside an IP pool", "which is not a host address"];
    for ((prefix, next_hop), reason) in bad.into_iter().zip(reasons) {
        assert_eq!(route(&d, prefix), None, "{prefix} via {next_hop}");
        let said = format!("{prefix} via {next_hop}, {reason}");
        assert!(d.all_problems().iter().any(|p| p.contains(&said)), "{said}: {:?}", d.all_problems());
    }
    assert_eq!(route(&d, "10.244.1.0/26"), None);
    assert!(d.all_problems().iter().any(|p| p.contains("via 10.0.0.1, which is this node")), "{:?}", d.all_problems());
    assert_eq!(route(&d, "10.244.0.0/26"), Some(Target::Blackhole), "own blocks stay blackholed");
    // The refusal is this node's doing: the block counts as unrouted (not ready). Node c's
    // block, which c does not advertise at all, does not: its session is c's problem.
    assert_eq!(d.unrouted, ["10.244.1.0/26".parse::<IpNetwork>().unwrap()].into());
    assert!(d.all_problems().iter().any(|p| p.contains("10.244.2.0/26 of node c is not advertised over BGP")));
}

#[test]
fn blocks_of_registered_nodes_without_a_route_are_unrouted_and_those_of_gone_nodes_are_not() {
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never));
    assert!(desired(&me(false), &c, None).unrouted.is_empty(), "VXLAN reaches every node");
    c.nodes[2].spec.ipv4_vxlan_tunnel_addr = None;
    assert_eq!(desired(&me(false), &c, None).unrouted, ["10.244.2.0/26".parse::<IpNetwork>().unwrap()].into());
    c.nodes.pop();
    assert!(desired(&me(false), &c, None).unrouted.is_empty(), "node c is gone: its block waits for GC");
}

#[test]
fn the_firewall_knows_every_node_address_and_bgp_peer_and_their_ports() {
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never));
    let peer = BgpPeer { peer_ip: Some("192.0.2.1:1179".into()), ..BgpPeer::default() };
    c.peers.push(Resource::new("tor", peer));
    c.nodes[1].spec.addresses.push(brindle_datastore::resource::NodeAddress {
        address: "10.9.9.2".parse().unwrap(),
        kind: "InternalIP".into(),
    });
    let d = desired(&me(false), &c, None);
    let text = |ips: &[IpAddr]| ips.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(text(&d.node_addresses), ["10.0.0.1", "10.0.0.2", "10.0.1.3", "10.9.9.2"], "every address a node has");
    assert_eq!(text(&d.control_hosts), ["10.0.0.1", "10.0.0.2", "10.0.1.3", "10.9.9.2", "192.0.2.1"]);
    assert_eq!(d.bgp_ports, [179, 1179], "the cluster's port and the peer's own");
}

#[test]
fn a_peer_reachable_by_a_gateway_gets_a_host_route_through_it_on_the_nodes_it_applies_to() {
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never));
    let peer = |ip: &str, gateway: &str, node: Option<&str>| BgpPeer {
        peer_ip: Some(ip.into()),
        reachable_by: Some(gateway.parse().unwrap()),
        node: node.map(Into::into),
        ..BgpPeer::default()
    };
    c.peers.push(Resource::new("far", peer("192.0.2.1", "10.0.0.254", None)));
    c.peers.push(Resource::new("elsewhere", peer("192.0.2.2", "10.0.0.254", Some("b"))));
    c.peers.push(Resource::new("off-subnet", peer("192.0.2.3", "10.9.0.1", None)));
    let d = desired(&me(false), &c, None);
    assert_eq!(route(&d, "192.0.2.1/32"), Some(Target::Direct { via: "10.0.0.254".parse().unwrap() }));
    assert_eq!(route(&d, "192.0.2.2/32"), None, "that BGPPeer is node b's");
    assert_eq!(route(&d, "192.0.2.3/32"), None);
    assert!(
        d.problems.iter().any(|p| p.contains("192.0.2.3") && p.contains("10.9.0.1 is on none of this node's subnets")),
        "{:?}",
        d.problems
    );
}

#[test]
fn pod_mtu_subtracts_the_largest_overhead() {
    let mut vxlan = IpPool::new("10.244.0.0/16".parse().unwrap());
    vxlan.vxlan_mode = EncapMode::Always;
    let mut ipip = IpPool::new("10.245.0.0/16".parse().unwrap());
    ipip.ipip_mode = EncapMode::CrossSubnet;
    let plain = IpPool::new("10.246.0.0/16".parse().unwrap());
    assert_eq!(pod_mtu(1500, &[Resource::new("p", plain.clone())]), 1500);
    assert_eq!(pod_mtu(1500, &[Resource::new("p", plain), Resource::new("q", ipip.clone())]), 1480);
    assert_eq!(pod_mtu(9000, &[Resource::new("p", ipip), Resource::new("q", vxlan)]), 8950);
}

#[test]
fn tunnel_devices_are_desired_once_the_node_has_its_tunnel_address() {
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never));
    c.nodes[0].spec.ipv4_vxlan_tunnel_addr = None;
    let d = desired(&me(true), &c, None);
    assert!(d.vxlan[0] && d.vxlan_devices[0].is_none(), "no tunnel address yet: {d:?}");
    c.nodes[0].spec.ipv4_vxlan_tunnel_addr = Some("10.244.0.0".parse().unwrap());
    let [device, none] = desired(&me(true), &c, None).vxlan_devices;
    let device = device.unwrap();
    assert!(none.is_none(), "no IPv6 pool, no IPv6 device");
    assert_eq!(
        (device.address, device.local, device.mtu),
        ("10.244.0.0".parse().unwrap(), "10.0.0.1".parse().unwrap(), 1450)
    );
    assert_eq!(desired(&me(true), &c, None).pod_mtu, 1450);
}

/// WireGuard: once this node's key is published, every node with a key is reached through
/// the device's own table (ahead of the main table, whatever the pool's encapsulation), with
/// its blocks and borrowed addresses as allowed IPs; what the main table must keep inside
/// those (addresses lent to a node without a key) is thrown back to it; a node without a
/// key is reached as the pool says, unencrypted.
#[test]
fn wireguard_encrypts_to_every_node_with_a_key_and_not_to_the_others() {
    let key = |n: u8| format!("{}{}=", "A".repeat(42), ["A", "E", "I"][usize::from(n)]);
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never));
    lend_from_c_to_b(&mut c);
    // b lends an address of its own block to c.
    let held_by_c =
        Allocation { handle: "n.y".into(), kind: AllocationKind::Workload, node: "c".into(), ..Allocation::default() };
    c.blocks[1].allocate(held_by_c, 0, 0).unwrap();
    let mut me = me(false);
    me.wireguard[0] = Some(WireguardSettings {
        ipv6: false,
        interface: "wg.brindle".into(),
        port: 51820,
        mtu: 1440,
        private_key_file: "/var/lib/brindle/wireguard.key".into(),
        table: 1,
        rule_priority: 99,
        mark: 0x100000,
    });
    c.nodes[1].spec.wireguard_public_key = Some(key(1));
    let unpublished = desired(&me, &c, None);
    assert!(unpublished.wireguard[0].is_none(), "this node's own key is not published yet");
    c.nodes[0].spec.wireguard_public_key = Some(key(0));
    let d = desired(&me, &c, None);
    let vxlan_to = |via: &str| Some(Target::Vxlan { via: via.parse().unwrap() });
    assert_eq!(route(&d, "10.244.1.0/26"), vxlan_to("10.244.1.1"), "the main table keeps the pool's mode");
    assert_eq!(route(&d, "10.244.2.0/26"), vxlan_to("10.244.2.1"));
    let device = d.wireguard[0].clone().expect("the device");
    assert!(d.wireguard[1].is_none(), "IPv6 WireGuard is off");
    assert_eq!(device.address, Some("10.244.0.1".parse().unwrap()));
    assert_eq!(device.peers.len(), 1, "{:?}", device.peers);
    let peer = &device.peers[0];
    assert_eq!((peer.public_key.as_str(), peer.endpoint), (key(1).as_str(), "10.0.0.2:51820".parse().unwrap()));
    let allowed: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
    assert_eq!(allowed, ["10.244.1.0/26", "10.244.2.0/32"]);
    let table: Vec<String> = device.routes.iter().map(|(dst, target)| format!("{dst} {target:?}")).collect();
    assert_eq!(
        table,
        [
            "10.244.1.0/26 Wireguard { interface: \"wg.brindle\" }",
            "10.244.1.0/32 Throw",
            "10.244.2.0/32 Wireguard { interface: \"wg.brindle\" }",
        ],
        "b's block and what it borrowed are encrypted; what c borrowed from b is not"
    );
    assert_eq!(d.pod_mtu, 1440, "the pods fit in WireGuard's MTU");
}

/// Dual stack with VXLAN in both families: IPv6 blocks go through the IPv6 device to the
/// nodes' IPv6 tunnel addresses, with IPv6 VTEPs beside the IPv4 ones, an MTU 70 below the
/// uplink's, and CrossSubnet judged on the IPv6 subnets.
#[test]
fn vxlan_over_ipv6_has_its_own_device_vteps_and_cross_subnet() {
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never));
    c.pools.push(pool("fd00:244::/56", EncapMode::CrossSubnet, EncapMode::Never));
    for (i, (address, tunnel)) in
        [("fd00::1/64", "fd00:244::1"), ("fd00::2/64", "fd00:244:0:1::1"), ("fd00:1::3/64", "fd00:244:0:2::1")]
            .into_iter()
            .enumerate()
    {
        let spec = &mut c.nodes[i].spec;
        spec.bgp.as_mut().unwrap().ipv6_address = Some(address.parse().unwrap());
        spec.ipv6_vxlan_tunnel_addr = Some(tunnel.parse().unwrap());
        spec.vxlan_tunnel_mac_addr_v6 = Some(format!("02:00:00:00:06:0{i}"));
    }
    c.blocks.push(block("fd00:244::/122", "a"));
    c.blocks.push(block("fd00:244:0:1::/122", "b"));
    c.blocks.push(block("fd00:244:0:2::/122", "c"));
    let mut me = me(false);
    me.ipv6 = Some("fd00::1/64".parse().unwrap());
    let d = desired(&me, &c, None);
    assert_eq!(d.vxlan, [true, true]);
    let v6 = d.vxlan_devices[1].clone().expect("the IPv6 device");
    assert_eq!((v6.name(), v6.local, v6.mtu), ("vxlan6.brindle", "fd00::1".parse().unwrap(), 1430));
    assert_eq!(v6.address, "fd00:244::1".parse::<IpAddr>().unwrap());
    assert_eq!(
        route(&d, "fd00:244:0:1::/122"),
        Some(Target::Direct { via: "fd00::2".parse().unwrap() }),
        "same subnet"
    );
    assert_eq!(route(&d, "fd00:244:0:2::/122"), Some(Target::Vxlan { via: "fd00:244:0:2::1".parse().unwrap() }));
    let v6_vteps: Vec<&Vtep> = d.vteps.iter().filter(|v| v.node_ip.is_ipv6()).collect();
    assert_eq!(v6_vteps.len(), 2, "{:?}", d.vteps);
    assert!(v6_vteps.iter().all(|v| v.tunnel_ip.is_ipv6() && v.mac[4] == 6), "{v6_vteps:?}");
    assert_eq!(d.vteps.len(), 4, "the IPv4 ones stay");
    // A node without an IPv6 tunnel address yet: no route to its IPv6 block, and it says so.
    c.nodes[2].spec.ipv6_vxlan_tunnel_addr = None;
    let d = desired(&me, &c, None);
    assert_eq!(route(&d, "fd00:244:0:2::/122"), None);
    assert!(
        d.all_problems().iter().any(|p| p.contains("node c has no VXLAN tunnel address")),
        "{:?}",
        d.all_problems()
    );
}

#[test]
fn recalculating_the_prefixes_bgp_changed_gives_what_a_full_calculation_gives() {
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never));
    // An address of c's block lent to b (10.244.2.0): a /32 toward b.
    lend_from_c_to_b(&mut c);
    let net = |s: &str| s.parse::<IpNetwork>().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut learned = Learned { converged: true, ..Learned::default() };
    learned.routes.insert(net("10.244.1.0/26"), ip("10.0.0.2"));
    learned.routes.insert(net("10.244.2.0/26"), ip("10.0.0.3"));
    learned.routes.insert(net("192.168.1.0/24"), ip("10.0.0.254"));
    let mut kept = desired(&me(false), &c, Some(&learned));
    // Withdrawn, moved, refused (this node as next hop), new outside every pool, new and
    // unreachable, a borrowed address learned, and our own block announced back to us.
    let changes = LearnedChanges {
        routes: [
            (net("10.244.1.0/26"), None),
            (net("10.244.2.0/26"), Some(ip("10.0.0.9"))),
            (net("192.168.1.0/24"), Some(ip("10.0.0.1"))),
            (net("192.168.2.0/24"), Some(ip("10.0.0.254"))),
            (net("192.168.3.0/24"), Some(ip("172.16.0.1"))),
            (net("10.244.2.0/32"), Some(ip("10.0.0.2"))),
            (net("10.244.0.0/26"), Some(ip("10.0.0.2"))),
        ]
        .into(),
        ..LearnedChanges::default()
    };
    let changed = learned.take_in(changes).expect("only some prefixes changed");
    assert_eq!(changed.len(), 7);
    kept.relearn(&me(false), &c, &learned, &changed);
    let full = desired(&me(false), &c, Some(&learned));
    assert_eq!(kept, full);
    assert_eq!(route(&kept, "10.244.2.0/26"), Some(Target::Direct { via: "10.0.0.9".parse().unwrap() }));
    assert_eq!(route(&kept, "10.244.0.0/26"), Some(Target::Blackhole), "BGP has no say over our own block");
    assert!(kept.unrouted.is_empty(), "{:?}", kept.unrouted);
    // And back: the withdrawn block returns, the refused route is healed.
    let back = LearnedChanges {
        routes: [(net("10.244.1.0/26"), Some(ip("10.0.0.2"))), (net("192.168.1.0/24"), Some(ip("10.0.0.254")))].into(),
        ..LearnedChanges::default()
    };
    let changed = learned.take_in(back).unwrap();
    kept.relearn(&me(false), &c, &learned, &changed);
    assert_eq!(kept, desired(&me(false), &c, Some(&learned)));
    assert!(!kept.all_problems().iter().any(|p| p.contains("192.168.1.0/24")), "{:?}", kept.all_problems());
}

#[test]
fn taking_in_changes_says_which_prefixes_changed_or_that_everything_did() {
    let net = |s: &str| s.parse::<IpNetwork>().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut learned = Learned::default();
    let first = LearnedChanges { routes: [(net("10.1.0.0/16"), Some(ip("10.0.0.2")))].into(), ..Default::default() };
    assert_eq!(learned.take_in(first.clone()), Some([net("10.1.0.0/16")].into()));
    assert_eq!(learned.take_in(first), Some(BTreeSet::new()), "the same next hop again is no change");
    let gone = LearnedChanges { routes: [(net("10.9.0.0/16"), None)].into(), ..Default::default() };
    assert_eq!(learned.take_in(gone), Some(BTreeSet::new()), "withdrawing what was never learned is no change");
    // Convergence changes what every unlearned block means; a new table replaces the old.
    assert_eq!(learned.take_in(LearnedChanges { converged: true, ..Default::default() }), None);
    let table = LearnedChanges { table: Some([(net("10.2.0.0/16"), ip("10.0.0.3"))].into()), ..Default::default() };
    assert_eq!(learned.take_in(table), None);
    assert_eq!(learned.routes.keys().copied().collect::<Vec<_>>(), [net("10.2.0.0/16")]);
    assert!(learned.converged);
}

#[test]
fn a_policy_that_fails_validation_is_left_out_and_said_so() {
    let mut c = cluster(pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never));
    let good = brindle_datastore::resource::parse_documents(
        "apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: good, namespace: x}\nspec: {ingress: [{action: Allow}]}\n",
    )
    .unwrap();
    let brindle_datastore::resource::AnyResource::NetworkPolicy(good) = good[0].clone() else { panic!() };
    let mut bad = good.clone();
    bad.metadata.name = "bad".into();
    bad.spec.0.selector = Some("app === 'x'".into());
    c.network_policies = vec![good, bad];
    let d = desired(&me(false), &c, None);
    assert!(
        d.problems
            .iter()
            .any(|p| p.contains("NetworkPolicy \"bad\" is invalid: spec.selector") && p.contains("not enforced")),
        "{:?}",
        d.problems
    );
    assert!(!d.problems.iter().any(|p| p.contains("\"good\"")), "{:?}", d.problems);
}
