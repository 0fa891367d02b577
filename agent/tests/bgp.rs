//! The agent with its embedded BGP speaker: a node-to-node mesh whose learned routes become
//! the kernel's routes to other nodes' blocks.

mod common;

use std::time::Duration;

use common::Cluster;

#[test]
fn a_three_node_dual_stack_mesh_routes_pods_by_bgp() {
    // The backend chosen cluster-wide by AgentConfiguration, not by a flag.
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods-v6}\nspec: {cidr: 'fd00:10:244::/56'}\n---\n\
        kind: AgentConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\nspec: {bgpBackend: Embedded}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11), (0, 12)], yaml);
    cluster.add_ipv6();
    cluster.start_all();
    for i in 0..3 {
        cluster.add_dual_stack_pod(i);
    }
    // Each node learns the two other nodes' blocks of each family over BGP: IPv4 blocks
    // over the IPv4 sessions, IPv6 blocks over the IPv6 sessions.
    for i in 0..3 {
        cluster.eventually(Duration::from_secs(15), &format!("node {i} learns four blocks"), || {
            cluster.metrics(i).contains("brindle_bgp_routes_learned 4")
        });
    }
    let peers = cluster.status(0)["bgp"]["peers"].as_array().cloned().unwrap_or_default();
    let mut addresses: Vec<&str> = peers.iter().filter_map(|p| p["address"].as_str()).collect();
    addresses.sort_unstable();
    assert_eq!(addresses, ["10.250.0.11", "10.250.0.12", "fd00:250::11", "fd00:250::12"], "{peers:?}");
    assert!(peers.iter().all(|p| p["state"] == "Established" && p["routes"] == 1), "{peers:?}");
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "pod pairs that cannot talk: {failing:?}\n{}", cluster.agent_log(0));
    // The kernel's routes match the other nodes' blocks, each via its node.
    let routes = cluster.ip(0, &["route", "show", "proto", "98"]);
    let routes_v6 = cluster.ip(0, &["-6", "route", "show", "proto", "98"]);
    for other in [1, 2] {
        let via = format!("via {} dev eth0", cluster.nodes[other].address);
        assert_eq!(routes.lines().filter(|l| l.contains(&via)).count(), 1, "{routes}");
        let via = format!("via fd00:250::{} dev eth0", cluster.nodes[other].address.octets()[3]);
        assert_eq!(
            routes_v6.lines().filter(|l| l.starts_with("fd00:10:244:") && l.contains(&via)).count(),
            1,
            "{routes_v6}"
        );
    }
}

/// Node `i`'s Node resource with labels and, for reflectors, a cluster ID.
fn node_yaml(cluster: &Cluster, i: usize, reflector: bool) -> String {
    let node = &cluster.nodes[i];
    let (labels, cluster_id) =
        if reflector { ("{rr: 'true'}", ", routeReflectorClusterID: 1.0.0.1") } else { ("{}", "") };
    format!(
        "kind: Node\napiVersion: brindle.io/v1\nmetadata: {{name: {}, labels: {labels}}}\n\
         spec: {{bgp: {{ipv4Address: {}/24{cluster_id}}}}}\n---\n",
        node.name, node.address
    )
}

#[test]
fn route_reflectors_carry_the_routes_with_the_mesh_off() {
    let pool = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: BGPConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\nspec: {nodeToNodeMeshEnabled: false}\n---\n\
        kind: BGPPeer\napiVersion: brindle.io/v1\nmetadata: {name: to-reflectors}\nspec: {nodeSelector: all(), peerSelector: rr == 'true'}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11), (0, 12), (0, 13)], pool);
    // Two reflectors of one cluster (nodes 0 and 1), two clients.
    let nodes: String = (0..4).map(|i| node_yaml(&cluster, i, i < 2)).collect();
    cluster.apply(&nodes);
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    for i in 0..4 {
        cluster.add_pod(i, |_| {});
    }
    for i in 0..4 {
        cluster.eventually(Duration::from_secs(15), &format!("node {i} learns the three other blocks"), || {
            cluster.metrics(i).contains("brindle_bgp_routes_learned 3")
        });
    }
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "pod pairs that cannot talk: {failing:?}\n{}", cluster.agent_log(2));
    // A client's status: its two reflectors, established.
    let status = cluster.status(2);
    let peers = status["bgp"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{status}");
    assert!(peers.iter().all(|p| p["type"] == "reflector" && p["state"] == "Established"), "{status}");
    let reflector = cluster.status(0);
    assert!(reflector["bgp"]["peers"].as_array().unwrap().iter().any(|p| p["type"] == "client"), "{reflector}");
    assert_eq!(status["ready"], true);
    // Clients peer only with the reflectors: no session between the two clients.
    let (_, sockets) =
        brindle_e2e::netns::output(cluster.nodes[2].netns.command("ss").args(["-tn", "state", "established"]));
    assert!(!sockets.contains(&format!("{}:179", cluster.nodes[3].address)), "{sockets}");
    assert!(!sockets.contains(&format!("{}:", cluster.nodes[3].address)), "clients 2 and 3 must not peer: {sockets}");

    // One reflector dies: the other carries on and pod traffic continues.
    cluster.stop_agent(0);
    std::thread::sleep(Duration::from_secs(1));
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "pod pairs that cannot talk after a reflector died: {failing:?}");
}

#[test]
fn an_external_bird_with_a_secret_password_gets_the_pod_blocks_and_only_routes_inside_pools_come_back() {
    let pool = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: BGPPeer\napiVersion: brindle.io/v1\nmetadata: {name: upstream}\nspec: {peerIP: 10.250.0.50, asNumber: 65001, password: {secretKeyRef: {name: bgp-secrets, key: upstream}}}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11)], pool);
    let router = brindle_e2e::netns::Netns::new("agt", "bird").unwrap();
    cluster.underlay.attach(&router, 0, 50).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The secret as kubelet mounts a secret volume: one file per key.
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir(secrets.path().join("bgp-secrets")).unwrap();
    std::fs::write(secrets.path().join("bgp-secrets/upstream"), "md5-s3cret\n").unwrap();
    let neighbors: String = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("protocol bgp node{i} {{ local as 65001; neighbor {} as 64512; password \"md5-s3cret\"; ipv4 {{ import all; export all; }}; }}\n", n.address))
        .collect();
    let config = format!(
        "router id 10.250.0.50;\nprotocol device {{}}\n\
         protocol static {{ ipv4; route 10.244.200.0/24 blackhole; route 192.168.77.0/24 blackhole; }}\n{neighbors}"
    );
    let bird = brindle_e2e::bird::Bird::start(&router, dir.path(), &config).unwrap();
    cluster.agent_args =
        vec!["--bgp".into(), "embedded".into(), "--secrets-dir".into(), secrets.path().display().to_string()];
    cluster.start_all();
    for i in 0..2 {
        cluster.add_pod(i, |_| {});
    }
    cluster.eventually(Duration::from_secs(20), "BIRD learns both nodes' blocks", || {
        let routes = bird.cli("show route");
        cluster.pods.iter().all(|p| {
            let block =
                p.ip.rsplit_once('.')
                    .map(|(net, last)| format!("{net}.{}/26", last.parse::<u8>().unwrap() & !63))
                    .unwrap();
            routes.contains(&block)
        })
    });
    cluster.eventually(Duration::from_secs(10), "the route inside the pool is installed", || {
        cluster.ip(0, &["route", "show", "10.244.200.0/24"]).contains("via 10.250.0.50")
    });
    assert!(
        cluster.ip(0, &["route", "show", "192.168.77.0/24"]).is_empty(),
        "a route outside every pool was installed"
    );
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "{failing:?}");
}

/// Two routers advertising the same prefix at the same cost (two top-of-rack routers): the
/// node installs one route with a next hop through each, and when one withdraws it, the route
/// keeps the other (replaced in place, never missing), and spreads again when it is back.
#[test]
fn equal_cost_routes_from_two_routers_become_one_multipath_route() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: BGPPeer\napiVersion: brindle.io/v1\nmetadata: {name: tor-a}\nspec: {peerIP: 10.250.0.50, asNumber: 65001}\n---\n\
        kind: BGPPeer\napiVersion: brindle.io/v1\nmetadata: {name: tor-b}\nspec: {peerIP: 10.250.0.51, asNumber: 65001}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10)], yaml);
    let dir = tempfile::tempdir().unwrap();
    let mut routers = Vec::new();
    for (name, host) in [("tora", 50u32), ("torb", 51)] {
        let router = brindle_e2e::netns::Netns::new("agt", name).unwrap();
        cluster.underlay.attach(&router, 0, host).unwrap();
        let config = format!(
            "router id 10.250.0.{host};\nprotocol device {{}}\n\
             protocol static s1 {{ ipv4; route 10.244.200.0/24 blackhole; }}\n\
             protocol bgp node0 {{ local as 65001; neighbor {} as 64512; ipv4 {{ import none; export all; }}; }}\n",
            cluster.nodes[0].address
        );
        let home = dir.path().join(name);
        std::fs::create_dir(&home).unwrap();
        let bird = brindle_e2e::bird::Bird::start(&router, &home, &config).unwrap();
        routers.push((router, bird));
    }
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    let route = || cluster.ip(0, &["route", "show", "10.244.200.0/24"]);
    let both = |r: &str| r.contains("nexthop via 10.250.0.50") && r.contains("nexthop via 10.250.0.51");
    cluster.eventually(Duration::from_secs(20), "one route through both routers", || both(&route()));
    routers[1].1.cli("disable s1");
    let mut seen = Vec::new();
    cluster.eventually(Duration::from_secs(10), "the route through the one router left", || {
        let now = route();
        seen.push(now.clone());
        now.starts_with("10.244.200.0/24 via 10.250.0.50 dev eth0")
    });
    assert!(seen.iter().all(|r| !r.is_empty()), "the route went missing on the way: {seen:?}");
    routers[1].1.cli("enable s1");
    cluster.eventually(Duration::from_secs(10), "both routers again", || both(&route()));
}

/// A peer on no subnet of the node's, behind a router that is not the node's default gateway
/// (Calico's `reachableBy`): the agent adds the route to the peer through that router, and
/// the session comes up over it.
#[test]
fn a_peer_reachable_only_through_another_router_peers_over_the_route_the_agent_adds() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: BGPPeer\napiVersion: brindle.io/v1\nmetadata: {name: far}\n\
        spec: {peerIP: 10.251.0.2, asNumber: 65001, reachableBy: 10.250.0.60}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10)], yaml);
    let edge = brindle_e2e::netns::Netns::new("agt", "edge").unwrap();
    cluster.underlay.attach(&edge, 0, 60).unwrap();
    let far = brindle_e2e::netns::Netns::new("agt", "far").unwrap();
    brindle_e2e::netns::veth(&edge, "far0", &far, "eth0").unwrap();
    edge.ip(&["addr", "add", "10.251.0.1/24", "dev", "far0"]).unwrap();
    edge.ip(&["link", "set", "far0", "up"]).unwrap();
    brindle_e2e::netns::run(edge.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"])).unwrap();
    far.ip(&["addr", "add", "10.251.0.2/24", "dev", "eth0"]).unwrap();
    far.ip(&["link", "set", "eth0", "up"]).unwrap();
    far.ip(&["route", "add", "default", "via", "10.251.0.1"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "router id 10.251.0.2;\nprotocol device {{}}\n\
         protocol bgp node0 {{ local as 65001; neighbor {} as 64512; multihop; ipv4 {{ import all; export none; }}; }}\n",
        cluster.nodes[0].address
    );
    let bird = brindle_e2e::bird::Bird::start(&far, dir.path(), &config).unwrap();
    // The node's default gateway does not know the peer's subnet.
    assert!(!brindle_e2e::netns::ping(&cluster.nodes[0].netns.name, "10.251.0.2"), "the peer is reachable already");
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    cluster.add_pod(0, |_| {});
    cluster.eventually(Duration::from_secs(20), "the session is up and BIRD holds the node's block", || {
        bird.cli("show protocols node0").contains("Established") && bird.cli("show route").contains("10.244.")
    });
    let route = cluster.ip(0, &["route", "show", "10.251.0.2"]);
    assert!(route.starts_with("10.251.0.2 via 10.250.0.60 dev eth0"), "{route}");
}

/// BGPFilter rules on the route's source and interface, with each backend on the node that
/// peers: the external BIRD gets the node's own block but not the one it learned from the
/// other node (`source: RemotePeers` rejected), and of two routes from outside the pools the
/// one the rule on `eth0` accepts is installed, the one on an interface the node lacks not.
fn bgp_filter_rules_on_source_and_interface(backend: &str) {
    let pool = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n";
    let filter = "kind: BGPFilter\napiVersion: brindle.io/v1\nmetadata: {name: upstream}\nspec:\n  \
          exportV4: [{action: Reject, source: RemotePeers}]\n  \
          importV4:\n  - {action: Accept, matchOperator: In, cidr: 192.168.80.0/24, interface: 'eth*'}\n  \
          - {action: Accept, matchOperator: In, cidr: 192.168.81.0/24, interface: 'wg*'}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11)], pool);
    cluster.apply(&format!(
        "{filter}---\nkind: BGPPeer\napiVersion: brindle.io/v1\nmetadata: {{name: upstream}}\n\
         spec: {{peerIP: 10.250.0.50, asNumber: 65001, node: {}, filters: [upstream]}}\n",
        cluster.nodes[0].name
    ));
    let router = brindle_e2e::netns::Netns::new("agt", "bird").unwrap();
    cluster.underlay.attach(&router, 0, 50).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "router id 10.250.0.50;\nprotocol device {{}}\n\
         protocol static {{ ipv4; route 192.168.80.0/24 blackhole; route 192.168.81.0/24 blackhole; }}\n\
         protocol bgp node0 {{ local as 65001; neighbor {} as 64512; ipv4 {{ import all; export all; }}; }}\n",
        cluster.nodes[0].address
    );
    let bird = brindle_e2e::bird::Bird::start(&router, dir.path(), &config).unwrap();
    cluster.node_args.insert(0, vec!["--bgp".into(), backend.into()]);
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    for i in 0..2 {
        cluster.add_pod(i, |_| {});
    }
    let block = |i: usize| {
        let ip = &cluster.pods[i].ip;
        ip.rsplit_once('.').map(|(net, last)| format!("{net}.{}/26", last.parse::<u8>().unwrap() & !63)).unwrap()
    };
    cluster.eventually(Duration::from_secs(20), "BIRD learns node 0's block, node 0 the route via eth0", || {
        bird.cli("show route").contains(&block(0))
            && cluster.ip(0, &["route", "show", "192.168.80.0/24"]).contains("via 10.250.0.50")
    });
    cluster.eventually(Duration::from_secs(10), "node 0 learns node 1's block", || {
        !cluster.ip(0, &["route", "show", &block(1)]).is_empty()
    });
    // Let a wrongly sent or installed route have its chance to arrive.
    std::thread::sleep(Duration::from_secs(1));
    let routes = bird.cli("show route");
    assert!(!routes.contains(&block(1)), "node 1's block, learned by node 0, was sent on:\n{routes}");
    let wrong = cluster.ip(0, &["route", "show", "192.168.81.0/24"]);
    assert!(wrong.is_empty(), "a route through an interface the node lacks was installed: {wrong}");
}

#[test]
fn bgp_filter_rules_on_source_and_interface_with_the_embedded_speaker() {
    bgp_filter_rules_on_source_and_interface("embedded");
}

#[test]
fn bgp_filter_rules_on_source_and_interface_with_bird() {
    bgp_filter_rules_on_source_and_interface("bird");
}

#[test]
/// GoBGP as an external peer with a BGPFilter: the filter lets one route from outside the
/// pools in and keeps one service range from going out; the defaults decide the rest.
fn an_external_gobgp_with_a_bgp_filter_gets_what_it_allows() {
    let pool = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: BGPPeer\napiVersion: brindle.io/v1\nmetadata: {name: upstream}\nspec: {peerIP: 10.250.0.51, asNumber: 65002, filters: [upstream]}\n---\n\
        kind: BGPFilter\napiVersion: brindle.io/v1\nmetadata: {name: upstream}\nspec:\n  \
          importV4: [{action: Accept, matchOperator: In, cidr: 192.168.79.0/24}]\n  \
          exportV4: [{action: Reject, matchOperator: Equal, cidr: 10.96.0.0/16}]\n---\n\
        kind: BGPConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\nspec:\n  \
          serviceClusterIPs: [{cidr: 10.96.0.0/16}]\n  serviceExternalIPs: [{cidr: 172.30.0.0/24}]\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11)], pool);
    let router = brindle_e2e::netns::Netns::new("agt", "gobgp").unwrap();
    cluster.underlay.attach(&router, 0, 51).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let neighbors: String = cluster
        .nodes
        .iter()
        .map(|n| {
            format!(
                "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = 64512\n",
                n.address
            )
        })
        .collect();
    let config = format!("[global.config]\n  as = 65002\n  router-id = \"10.250.0.51\"\n{neighbors}");
    let path = dir.path().join("gobgpd.toml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("gobgpd.log")).unwrap();
    let daemon = brindle_e2e::process::Process(
        router.command("gobgpd").arg("-f").arg(&path).args(["-p", "--pprof-disable"]).stdout(log).spawn().unwrap(),
    );
    let gobgp = |args: &[&str]| brindle_e2e::netns::output(router.command("gobgp").args(args)).1;
    cluster.eventually(Duration::from_secs(10), "GoBGP's API answers", || gobgp(&["global"]).contains("AS"));
    gobgp(&["global", "rib", "add", "10.244.201.0/24", "-a", "ipv4"]);
    gobgp(&["global", "rib", "add", "192.168.78.0/24", "-a", "ipv4"]);
    gobgp(&["global", "rib", "add", "192.168.79.0/24", "-a", "ipv4"]);
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    for i in 0..2 {
        cluster.add_pod(i, |_| {});
    }
    cluster.eventually(Duration::from_secs(20), "GoBGP learns the nodes' blocks", || {
        gobgp(&["global", "rib", "-a", "ipv4"]).matches("/26").count() >= 2
    });
    cluster.eventually(Duration::from_secs(10), "the routes inside the pool and the filter are installed", || {
        cluster.ip(1, &["route", "show", "10.244.201.0/24"]).contains("via 10.250.0.51")
            && cluster.ip(1, &["route", "show", "192.168.79.0/24"]).contains("via 10.250.0.51")
    });
    assert!(
        cluster.ip(1, &["route", "show", "192.168.78.0/24"]).is_empty(),
        "a route outside every pool and every filter was installed"
    );
    let rib = gobgp(&["global", "rib", "-a", "ipv4"]);
    assert!(rib.contains("172.30.0.0/24"), "the service range the filter allows is missing:\n{rib}");
    assert!(!rib.contains("10.96.0.0/16"), "the service range the filter rejects was sent:\n{rib}");
    drop(daemon);
}

#[test]
fn an_agent_restart_loses_no_packet() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11), (0, 12)], yaml);
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    for i in 0..3 {
        cluster.add_pod(i, |_| {});
    }
    for i in 0..3 {
        cluster.eventually(Duration::from_secs(15), &format!("node {i} learns two blocks"), || {
            cluster.metrics(i).contains("brindle_bgp_routes_learned 2")
        });
    }
    // 600 pings, one every 10 ms, from a pod on node 1 to the pod on node 0, while node 0's
    // agent stops (SIGTERM) and starts again.
    let target = cluster.pods[0].ip.clone();
    let pinger = cluster.pods[1]
        .netns
        .command("ping")
        .args(["-i", "0.01", "-c", "600", "-W", "1", &target])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    cluster.terminate_agent(0);
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_agent(0);
    cluster.wait_ready(0);
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let answered: std::collections::BTreeSet<u32> =
        text.lines().filter_map(|l| l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    let lost = 600 - answered.len();
    let mut longest_gap = 0;
    let mut gap = 0;
    for seq in 1..=600 {
        gap = if answered.contains(&seq) { 0 } else { gap + 1 };
        longest_gap = longest_gap.max(gap);
    }
    eprintln!("agent restart under traffic: {lost} of 600 pings lost, longest gap {} ms", longest_gap * 10);
    assert_eq!(lost, 0, "pings lost across the restart (longest gap {} ms):\n{text}", longest_gap * 10);
}

#[test]
fn a_dual_stack_mixed_cluster_with_one_bird_node_routes_pod_traffic() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods-v6}\nspec: {cidr: 'fd00:10:244::/56'}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11), (0, 12)], yaml);
    cluster.agent_args = vec!["--bgp".to_owned(), "embedded".to_owned()];
    cluster.node_args.insert(0, vec!["--bgp".to_owned(), "bird".to_owned()]);
    cluster.add_ipv6();
    cluster.start_all();
    for i in 0..3 {
        cluster.add_dual_stack_pod(i);
    }
    // BIRD on node 0 learned the two other blocks of each family and put them in the kernel
    // itself.
    cluster.eventually(Duration::from_secs(20), "BIRD installs the other nodes' blocks", || {
        cluster.ip(0, &["route", "show", "proto", "bird"]).lines().count() == 2
            && cluster.ip(0, &["-6", "route", "show", "proto", "bird"]).lines().count() == 2
    });
    for i in 1..3 {
        cluster.eventually(Duration::from_secs(15), &format!("node {i} learns four blocks"), || {
            cluster.metrics(i).contains("brindle_bgp_routes_learned 4")
        });
    }
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "pod pairs that cannot talk: {failing:?}\n{}", cluster.agent_log(0));
    // The rendered configuration is where the agent says: a session per peer and family.
    let conf = std::fs::read_to_string(cluster.nodes[0].state.path().join("bird/bird.conf")).unwrap();
    assert_eq!(conf.matches("protocol bgp peer_").count(), 4, "{conf}");
}

/// BGPConfiguration `listenPort` other than 179, with a BIRD node and an embedded one: each
/// listens on it and connects to it, and pods reach across.
#[test]
fn another_listen_port_works_for_both_backends() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: BGPConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\nspec: {listenPort: 1179}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11)], yaml);
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    // BIRD on the node with the higher address: the embedded speaker connects to it.
    cluster.node_args.insert(1, vec!["--bgp".into(), "bird".into()]);
    cluster.start_all();
    for i in 0..2 {
        cluster.add_pod(i, |_| {});
    }
    cluster.eventually(Duration::from_secs(20), "BIRD installs the other node's block", || {
        cluster.ip(1, &["route", "show", "proto", "bird"]).lines().count() == 1
    });
    let sockets =
        brindle_e2e::netns::output(cluster.nodes[1].netns.command("ss").args(["-tn", "state", "established"])).1;
    assert!(sockets.contains(":1179"), "the session is not on port 1179: {sockets}");
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "pod pairs that cannot talk: {failing:?}");
}

#[test]
fn a_vanished_node_loses_its_routes_within_the_hold_time() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11), (0, 12)], yaml);
    cluster.agent_args = ["--bgp", "embedded", "--bgp-hold-time", "6"].map(String::from).to_vec();
    cluster.start_all();
    for i in 0..3 {
        cluster.add_pod(i, |_| {});
    }
    for i in 0..3 {
        cluster.eventually(Duration::from_secs(15), &format!("node {i} learns two blocks"), || {
            cluster.metrics(i).contains("brindle_bgp_routes_learned 2")
        });
    }
    // Node 2 drops off the network without a word (its sessions just go silent).
    let gone = cluster.nodes[2].address.to_string();
    cluster.ip(2, &["link", "set", "eth0", "down"]);
    let started = std::time::Instant::now();
    cluster.eventually(Duration::from_secs(12), "node 2's block leaves node 0's kernel", || {
        !cluster.ip(0, &["route", "show", "proto", "98"]).contains(&format!("via {gone}"))
    });
    eprintln!("a vanished node's routes went after {:?} (hold time 6 s)", started.elapsed());
    cluster.eventually(Duration::from_secs(12), "node 1 forgets node 2's block too", || {
        cluster.metrics(1).contains("brindle_bgp_routes_learned 1")
    });
}

/// The same with BFD on the mesh (BGPConfiguration nodeMeshBFD), node 0 running BIRD and the
/// others the embedded speaker: BIRD's BFD and brindle's see node 2 go within the detection
/// time, and both kernels lose its block in well under a second, not a hold time.
#[test]
fn with_bfd_on_the_mesh_a_vanished_node_loses_its_routes_within_the_detection_time() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
        kind: BGPConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\n\
        spec: {nodeMeshBFD: {minTx: 100ms, minRx: 100ms, multiplier: 3}}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11), (0, 12)], yaml);
    cluster.agent_args = ["--bgp", "embedded"].map(String::from).to_vec();
    cluster.node_args.insert(0, ["--bgp", "bird"].map(String::from).to_vec());
    cluster.start_all();
    for i in 0..3 {
        cluster.add_pod(i, |_| {});
    }
    cluster.eventually(Duration::from_secs(20), "BIRD installs the other nodes' blocks", || {
        cluster.ip(0, &["route", "show", "proto", "bird"]).lines().count() == 2
    });
    cluster.eventually(Duration::from_secs(15), "node 1 learns two blocks", || {
        cluster.metrics(1).contains("brindle_bgp_routes_learned 2")
    });
    let gone = cluster.nodes[2].address.to_string();
    cluster.eventually(Duration::from_secs(15), "BFD up between the embedded speakers", || {
        let peers = cluster.status(1)["bgp"]["peers"].as_array().cloned().unwrap_or_default();
        peers.iter().any(|p| p["address"] == gone.as_str() && p["bfd"] == "Up")
    });
    // Until BGP has converged, blocks not heard of are routed from the datastore.
    cluster.eventually(Duration::from_secs(15), "node 1's BGP converged", || {
        cluster.agent_log(1).contains("BGP converged")
    });
    cluster.ip(2, &["link", "set", "eth0", "down"]);
    let started = std::time::Instant::now();
    let via = format!("via {gone}");
    let mut seen = [None, None];
    cluster.eventually(Duration::from_secs(10), "node 2's block leaves nodes 0 and 1", || {
        for (i, proto) in [(0, "bird"), (1, "98")] {
            if seen[i].is_none() && !cluster.ip(i, &["route", "show", "proto", proto]).contains(&via) {
                seen[i] = Some(started.elapsed());
            }
        }
        seen.iter().all(Option::is_some)
    });
    eprintln!(
        "with BFD (3 x 100 ms) a vanished node's routes went after {:?} from BIRD's node and {:?} from the \
         embedded speaker's (hold time 90 s)",
        seen[0].unwrap(),
        seen[1].unwrap()
    );
    let peers = cluster.status(1)["bgp"]["peers"].as_array().cloned().unwrap_or_default();
    let peer = peers.iter().find(|p| p["address"] == gone.as_str()).expect("node 2 is still a peer");
    assert_eq!(peer["bfd"], "Down (control detection time expired)", "{peer}");
    assert!(peer["reason"].as_str().unwrap_or_default().starts_with("BFD session down"), "{peer}");
}

#[test]
fn ip_in_ip_over_a_bgp_mesh_reaches_every_pod() {
    if !brindle_e2e::vm::here_or_in_a_vm(&["ipip"]) {
        return;
    }
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16, ipipMode: Always}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24", "10.251.0.0/24"], &[(0, 10), (0, 11), (1, 12)], yaml);
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    for i in 0..3 {
        cluster.add_pod(i, |_| {});
    }
    let failing = cluster.reachability(Duration::from_secs(15));
    assert!(failing.is_empty(), "{failing:?}");
    assert!(cluster.ip(0, &["route", "show", "proto", "98"]).contains("dev tunl0"));
}

#[test]
fn a_pool_created_and_deleted_resets_no_session_and_loses_no_packet() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11), (0, 12)], yaml);
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    for i in 0..3 {
        cluster.add_pod(i, |_| {});
    }
    for i in 0..3 {
        cluster.eventually(Duration::from_secs(15), &format!("node {i} learns two blocks"), || {
            cluster.metrics(i).contains("brindle_bgp_routes_learned 2")
        });
    }
    let sessions = |i: usize| -> Vec<(String, String, String)> {
        let peers = cluster.status(i)["bgp"]["peers"].as_array().cloned().unwrap_or_default();
        peers.iter().map(|p| (p["address"].to_string(), p["state"].to_string(), p["since"].to_string())).collect()
    };
    let before: Vec<_> = (0..3).map(sessions).collect();
    // Every route change node 1 makes while the pools change, as `ip monitor` sees it.
    let monitor = cluster.nodes[1]
        .netns
        .command("ip")
        .args(["monitor", "route"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let target = cluster.pods[0].ip.clone();
    let pinger = cluster.pods[1]
        .netns
        .command("ping")
        .args(["-i", "0.01", "-c", "400", "-W", "1", &target])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.apply("kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: extra}\nspec: {cidr: 10.99.0.0/16}\n");
    std::thread::sleep(Duration::from_millis(1500));
    let client = cluster.client();
    cluster.runtime.block_on(client.delete::<brindle_datastore::resource::IpPool>(None, "extra", None)).unwrap();
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let answered = text.lines().filter(|l| l.contains("icmp_seq=")).count();
    // Stop `ip monitor`: ours, by its PID.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let changes = String::from_utf8_lossy(&monitor.wait_with_output().unwrap().stdout).into_owned();

    assert_eq!(answered, 400, "pings lost while a pool came and went:\n{text}");
    let after: Vec<_> = (0..3).map(sessions).collect();
    assert_eq!(before, after, "a session was reset (its state or since changed)");
    let block_of_node0 = cluster.ip(1, &["route", "show", "proto", "98"]);
    let deleted: Vec<&str> = changes.lines().filter(|l| l.starts_with("Deleted") && l.contains("10.244.")).collect();
    assert!(deleted.is_empty(), "routes to pods were deleted: {deleted:?}\nnow:\n{block_of_node0}");
}
