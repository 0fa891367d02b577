//! Three-node clusters per encapsulation mode, with real agents and pods made by the CNI
//! plugin: every pod reaches every other pod; natOutgoing pods reach outside as their node;
//! drift is repaired within one resync; foreign routes and rules are never touched; pool
//! changes apply without restarts; IP-in-IP in Debian's kernel under qemu where this one
//! lacks it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use brindle_e2e::netns;
use brindle_e2e::underlay::OUTSIDE;
use common::Cluster;

const ONE_SUBNET: &[&str] = &["10.250.0.0/24"];
const THREE_NODES: &[(usize, u32)] = &[(0, 10), (0, 11), (0, 12)];

fn pool(mode: &str, nat: bool) -> String {
    format!(
        "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {{name: pods}}\n\
         spec: {{cidr: 10.244.0.0/16, vxlanMode: {mode}, natOutgoing: {nat}}}\n"
    )
}

fn two_pods_per_node(cluster: &mut Cluster) {
    for i in 0..cluster.nodes.len() {
        cluster.add_pod(i, |_| {});
        cluster.add_pod(i, |_| {});
    }
}

fn assert_full_mesh(cluster: &Cluster) {
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "pod pairs that cannot talk: {failing:?}\nagent 0 log:\n{}", cluster.agent_log(0));
}

/// Node 0's device `name`: whether it is up, and how many packets it has sent.
fn device_state(cluster: &Cluster, name: &str) -> (bool, u64) {
    let text = cluster.ip(0, &["-s", "-o", "link", "show", name]);
    let up = text.split(['<', '>']).nth(1).is_some_and(|flags| flags.split(',').any(|f| f == "UP"));
    // `-o` puts the statistics on the line after "TX:", as `bytes packets ...`.
    let sent = text.split("TX:").nth(1).and_then(|t| t.split_whitespace().nth(8)).and_then(|n| n.parse().ok());
    (up, sent.unwrap_or_else(|| panic!("no TX statistics in {text}")))
}

#[test]
fn vxlan_cluster_reaches_everything_and_repairs_drift() {
    let mut cluster = Cluster::new(ONE_SUBNET, THREE_NODES, &pool("Always", true));
    cluster.start_all();
    two_pods_per_node(&mut cluster);
    assert_full_mesh(&cluster);

    // The agent published the MTU the pods got: the uplink's 1500 minus VXLAN's 50.
    let mtu = std::fs::read_to_string(cluster.nodes[0].state.path().join("mtu")).unwrap();
    assert_eq!(mtu, "1450");
    let (_, link) = netns::output(cluster.pods[0].netns.command("ip").args(["link", "show", "eth0"]));
    assert!(link.contains("mtu 1450"), "{link}");

    // The tunnel: one device, static ARP and FDB entries for the two other nodes.
    let fdb = netns::output(cluster.nodes[0].netns.command("bridge").args(["fdb", "show", "dev", "vxlan.brindle"])).1;
    for other in [1, 2] {
        assert!(fdb.contains(&format!("dst {}", cluster.nodes[other].address)), "{fdb}");
    }

    // natOutgoing: a pod reaches an address outside every pool, which sees the node.
    let router = cluster.underlay.router.path();
    let (listening, ready) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        netns::enter(&router).unwrap();
        let listener = TcpListener::bind((OUTSIDE, 8080)).unwrap();
        listening.send(()).unwrap();
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(b"hi").unwrap();
        peer.ip().to_string()
    });
    ready.recv().expect("the outside server listens");
    let pod = cluster.pods[0].netns.path();
    let client = std::thread::spawn(move || {
        netns::enter(&pod).unwrap();
        let mut conn =
            TcpStream::connect_timeout(&format!("{OUTSIDE}:8080").parse().unwrap(), Duration::from_secs(5)).unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    });
    assert_eq!(client.join().unwrap(), "hi");
    assert_eq!(server.join().unwrap(), cluster.nodes[0].address.to_string(), "the far end must see the node's address");

    // Foreign state that must never be touched.
    cluster.ip(0, &["route", "add", "203.0.113.0/24", "via", "10.250.0.1", "proto", "static"]);
    let foreign_rule = ["-A", "FORWARD", "-s", "203.0.113.0/24", "-j", "ACCEPT"];
    netns::run(cluster.nodes[0].netns.command("iptables").args(foreign_rule)).unwrap();

    // Drift: a remote block's route, an FDB entry and our FORWARD chain, all come back.
    let routes = cluster.ip(0, &["route", "show", "proto", "98"]);
    let remote = routes.lines().find(|l| l.contains("vxlan.brindle")).expect("a route through the tunnel").to_owned();
    let dst = remote.split_whitespace().next().unwrap().to_owned();
    cluster.ip(0, &["route", "del", &dst]);
    let victim = cluster.nodes[1].address.to_string();
    let mac = fdb.lines().find(|l| l.contains(&victim)).unwrap().split_whitespace().next().unwrap().to_owned();
    netns::run(cluster.nodes[0].netns.command("bridge").args([
        "fdb",
        "del",
        &mac,
        "dev",
        "vxlan.brindle",
        "dst",
        &victim,
    ]))
    .unwrap();
    netns::run(cluster.nodes[0].netns.command("iptables").args(["-F", "brin-FORWARD"])).unwrap();
    let pod_ip = cluster.pods[0].ip.clone();
    cluster.ip(0, &["route", "del", &pod_ip]);
    cluster.eventually(Duration::from_secs(5), "the deleted route is back", || {
        cluster.ip(0, &["route", "show", &dst]).contains("vxlan.brindle")
    });
    cluster.eventually(Duration::from_secs(5), "the deleted FDB entry is back", || {
        netns::output(cluster.nodes[0].netns.command("bridge").args(["fdb", "show", "dev", "vxlan.brindle"]))
            .1
            .contains(&victim)
    });
    cluster.eventually(Duration::from_secs(5), "the pod's deleted route is back", || {
        cluster.ip(0, &["route", "show", &pod_ip]).contains("dev brin")
    });
    cluster.eventually(Duration::from_secs(5), "the flushed chain is refilled", || {
        netns::output(cluster.nodes[0].netns.command("iptables").args(["-S", "brin-FORWARD"])).1.contains("brin+")
    });
    assert!(
        cluster.ip(0, &["route", "show", "203.0.113.0/24"]).contains("proto static"),
        "a foreign route was touched"
    );
    let rules = netns::output(cluster.nodes[0].netns.command("iptables").args(["-S", "FORWARD"])).1;
    assert!(rules.contains("-A FORWARD -s 203.0.113.0/24 -j ACCEPT"), "a foreign rule was touched: {rules}");

    // A restart with nothing changed changes nothing, and pods keep talking meanwhile.
    let before = cluster.ip(0, &["route", "show", "proto", "98"]);
    cluster.stop_agent(0);
    assert!(cluster.pods[0].ping(&cluster.pods[2].ip), "pods stopped talking while the agent was down");
    cluster.start_agent(0);
    cluster.wait_ready(0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.ip(0, &["route", "show", "proto", "98"]), before);
    let metrics = cluster.metrics(0);
    assert!(
        metrics.contains("brindle_route_changes_total 0"),
        "the restart changed routes:\n{metrics}\n{}",
        cluster.agent_log(0)
    );
}

#[test]
fn no_encap_cluster_then_switched_to_vxlan_without_restart() {
    let mut cluster = Cluster::new(ONE_SUBNET, THREE_NODES, &pool("Never", false));
    cluster.start_all();
    two_pods_per_node(&mut cluster);
    assert_full_mesh(&cluster);
    let routes = cluster.ip(0, &["route", "show", "proto", "98"]);
    assert!(routes.contains(&format!("via {} dev eth0", cluster.nodes[1].address)), "{routes}");
    assert!(!cluster.ip(0, &["link", "show"]).contains("vxlan.brindle"));

    cluster.apply(&pool("Always", false));
    cluster.eventually(Duration::from_secs(10), "routes move to the tunnel", || {
        cluster.ip(0, &["route", "show", "proto", "98"]).contains("vxlan.brindle")
    });
    assert_full_mesh(&cluster);
    let address = format!("{}/24 on eth0: first-found", cluster.nodes[0].address);
    let client = cluster.client();
    let node0 = cluster
        .runtime
        .block_on(client.get::<brindle_datastore::resource::Node>(None, &cluster.nodes[0].name))
        .unwrap();
    assert!(node0.metadata.annotations["brindle.io/ipv4-detection"].starts_with(&address), "{:?}", node0.metadata);

    // A node that goes away: once garbage collection has seen it gone for the grace period
    // (none here) its blocks lose their owner, and the others drop its routes.
    let gone = cluster.nodes[2].name.clone();
    cluster.stop_agent(2);
    let client = cluster.client();
    cluster.runtime.block_on(client.delete::<brindle_datastore::resource::Node>(None, &gone, None)).unwrap();
    cluster.apply(
        "apiVersion: brindle.io/v1\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {leakGracePeriod: 1ms}\n",
    );
    let ipam = brindle_datastore::ipam::Ipam::new(cluster.client());
    for _ in 0..2 {
        cluster.runtime.block_on(ipam.collect_garbage()).unwrap();
    }
    let owners: Vec<Option<String>> =
        cluster.runtime.block_on(ipam.blocks()).unwrap().into_iter().map(|(b, _)| b.owner).collect();
    assert!(!owners.contains(&Some(gone.clone())), "{owners:?}");
    let node2_address = cluster.nodes[2].address.to_string();
    let state = || {
        format!(
            "{}\n{}",
            cluster.ip(0, &["route", "show", "proto", "98"]),
            netns::output(cluster.nodes[0].netns.command("bridge").args(["fdb", "show", "dev", "vxlan.brindle"])).1
        )
    };
    let what = format!("the removed node's routes go away\n{}", state());
    cluster.eventually(Duration::from_secs(10), &what, || {
        let routes = cluster.ip(0, &["route", "show", "proto", "98"]);
        !netns::output(cluster.nodes[0].netns.command("bridge").args(["fdb", "show", "dev", "vxlan.brindle"]))
            .1
            .contains(&node2_address)
            && routes.lines().filter(|l| l.contains("vxlan.brindle")).count() == 1
    });

    // Back to no encapsulation: routes go direct again and the tunnel device goes away.
    cluster.apply(&pool("Never", false));
    cluster.eventually(Duration::from_secs(10), "routes leave the tunnel", || {
        let routes = cluster.ip(0, &["route", "show", "proto", "98"]);
        !routes.contains("vxlan.brindle") && routes.contains(&format!("via {} dev eth0", cluster.nodes[1].address))
    });
    assert!(!cluster.ip(0, &["link", "show"]).contains("vxlan.brindle"));
    cluster.pods.retain(|p| p.node != 2);
    assert_full_mesh(&cluster);
}

/// Dual stack with VXLAN in both families: IPv6 goes through `vxlan6.brindle` between the
/// nodes' IPv6 addresses, with its own neighbour and FDB entries and an MTU 70 below the
/// uplink's, beside the IPv4 device; the IPv6 pool switched to no encapsulation takes that
/// device away and leaves the IPv4 one.
#[test]
fn dual_stack_vxlan_carries_each_family_through_its_own_device() {
    let v6_pool = |mode: &str| {
        format!(
            "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {{name: pods-v6}}\nspec: {{cidr: 'fd00:10:244::/56', vxlanMode: {mode}}}\n"
        )
    };
    let mut cluster =
        Cluster::new(ONE_SUBNET, THREE_NODES, &format!("{}---\n{}", pool("Always", false), v6_pool("Always")));
    cluster.add_ipv6();
    cluster.start_all();
    for i in 0..3 {
        cluster.add_dual_stack_pod(i);
    }
    assert!(cluster.pods.iter().all(|p| p.ipv6.is_some()));
    assert_full_mesh(&cluster);
    let (up, sent) = device_state(&cluster, "vxlan6.brindle");
    assert!(up && sent > 0, "the pods' IPv6 packets did not go through vxlan6.brindle");
    let routes_v6 = cluster.ip(0, &["-6", "route", "show", "proto", "98"]);
    assert_eq!(
        routes_v6.lines().filter(|l| l.contains("dev vxlan6.brindle") && l.contains("onlink")).count(),
        2,
        "{routes_v6}"
    );
    let device = cluster.ip(0, &["-d", "link", "show", "vxlan6.brindle"]);
    assert!(device.contains("mtu 1430") && device.contains("local fd00:250::10"), "{device}");
    let neighbours = cluster.ip(0, &["-6", "neigh", "show", "dev", "vxlan6.brindle"]);
    assert_eq!(neighbours.lines().filter(|l| l.contains("PERMANENT")).count(), 2, "{neighbours}");
    let fdb = netns::output(cluster.nodes[0].netns.command("bridge").args(["fdb", "show", "dev", "vxlan6.brindle"])).1;
    for other in ["fd00:250::11", "fd00:250::12"] {
        assert!(fdb.contains(&format!("dst {other}")), "no FDB entry toward {other}: {fdb}");
    }
    assert!(cluster.ip(0, &["route", "show", "proto", "98"]).contains("dev vxlan.brindle"), "IPv4 keeps its own");

    cluster.apply(&v6_pool("Never"));
    cluster.eventually(Duration::from_secs(10), "IPv6 goes direct and its device goes away", || {
        let routes_v6 = cluster.ip(0, &["-6", "route", "show", "proto", "98"]);
        routes_v6.contains("via fd00:250::11 dev eth0") && !cluster.ip(0, &["link", "show"]).contains("vxlan6.brindle")
    });
    assert!(cluster.ip(0, &["link", "show"]).contains("vxlan.brindle"), "the IPv4 device stays");
    assert_full_mesh(&cluster);
}

#[test]
fn vxlan_cross_subnet_goes_direct_inside_a_subnet() {
    let placement = &[(0, 10), (0, 11), (1, 12)];
    let mut cluster = Cluster::new(&["10.250.0.0/24", "10.251.0.0/24"], placement, &pool("CrossSubnet", false));
    cluster.start_all();
    two_pods_per_node(&mut cluster);
    assert_full_mesh(&cluster);
    let routes = cluster.ip(0, &["route", "show", "proto", "98"]);
    assert!(
        routes.contains(&format!("via {} dev eth0", cluster.nodes[1].address)),
        "same subnet goes direct: {routes}"
    );
    assert_eq!(
        routes.lines().filter(|l| l.contains("vxlan.brindle")).count(),
        1,
        "the other subnet is tunnelled: {routes}"
    );
}

#[test]
fn new_and_disabled_pools_apply_without_restart() {
    let mut cluster = Cluster::new(ONE_SUBNET, &[(0, 10), (0, 11)], &pool("Never", false));
    cluster.start_all();
    cluster.add_pod(0, |_| {});
    cluster.add_pod(1, |_| {});
    cluster.apply(
        "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: second}\n\
         spec: {cidr: 10.245.0.0/16, vxlanMode: Always, natOutgoing: true}\n",
    );
    // A pod from the new pool, on node 1: reachable from node 0's pod through the tunnel the
    // new pool asked for.
    let second = cluster.add_pod(1, |conf| conf["ipam"]["ipv4_pools"] = serde_json::json!(["second"]));
    assert!(cluster.pods[second].ip.starts_with("10.245."), "{}", cluster.pods[second].ip);
    assert_full_mesh(&cluster);
    assert!(cluster.ip(0, &["route", "show", "proto", "98"]).contains("vxlan.brindle"));

    // Disabling the first pool stops allocation from it; its pods keep their routes.
    cluster.apply(
        "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\n\
         spec: {cidr: 10.244.0.0/16, vxlanMode: Never, natOutgoing: false, disabled: true}\n",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_full_mesh(&cluster);
    let pod = brindle_e2e::netns::Netns::new("agt", "pod").unwrap();
    let attachment = brindle_e2e::cni::Attachment {
        container_id: "refused".into(),
        netns: pod.path(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "refused".into(),
    };
    let mut conf = cluster.cni_conf(0);
    conf["ipam"]["ipv4_pools"] = serde_json::json!(["pods"]);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_brindle-node")).parent().unwrap().to_owned();
    let out = brindle_e2e::cni::exec_in(
        &cluster.nodes[0].netns.name,
        &bin.join("brindle"),
        "ADD",
        &conf,
        &attachment,
        &bin.display().to_string(),
    )
    .unwrap();
    assert!(!out.ok && out.stdout.contains("disabled"), "{}", out.stdout);
}

/// Node 0's WireGuard peers, as `wg` shows them: their public keys.
fn wireguard_peers(cluster: &Cluster) -> Vec<String> {
    let out = netns::output(cluster.nodes[0].netns.command("wg").args(["show", "wg.brindle", "peers"]));
    out.1.split_whitespace().map(str::to_owned).collect()
}

/// What node 0 sends on its uplink while its pods ping every other pod, at every address they
/// both have: one line per packet (`tcpdump -nn`), ARP and IPv6 neighbour discovery aside.
fn underlay_capture(cluster: &Cluster) -> Vec<String> {
    let mut capture = cluster.nodes[0]
        .netns
        .command("tcpdump")
        .args(["-i", "eth0", "-nn", "-l", "-Q", "out", "not arp"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for from in cluster.pods.iter().filter(|p| p.node == 0) {
        for to in cluster.pods.iter().filter(|p| p.node != 0) {
            assert!(from.ping(&to.ip), "{} cannot reach {}", from.ip, to.ip);
            if let (Some(_), Some(ipv6)) = (&from.ipv6, &to.ipv6) {
                assert!(from.ping(ipv6), "{} cannot reach {ipv6}", from.ip);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // Ours, by its PID.
    let _ = std::process::Command::new("kill").arg(capture.id().to_string()).status();
    let mut text = String::new();
    std::io::Read::read_to_string(capture.stdout.as_mut().unwrap(), &mut text).unwrap();
    let _ = capture.wait();
    let discovery = ["ICMP6, neighbor", "ICMP6, router", "ICMP6, multicast listener"];
    text.lines()
        .filter(|l| !l.trim().is_empty() && !discovery.iter().any(|d| l.contains(d)))
        .map(str::to_owned)
        .collect()
}

/// WireGuard, where Debian's kernel runs it (this one has no wireguard module): every node
/// makes a key pair (the private key 0600 in its state directory), publishes its public key,
/// and pod traffic between nodes goes through WireGuard's own table, ahead of the pool's VXLAN
/// routes in the main table, crossing the underlay as WireGuard UDP only; a node that joins,
/// a key rotated on one node and a node that leaves reach the others' peers, and WireGuard turned
/// off leaves VXLAN carrying the pods, with no rule, table or device behind.
#[test]
fn wireguard_encrypts_pod_traffic_between_nodes_and_follows_their_keys() {
    if !brindle_e2e::vm::here_or_in_a_vm(&["wireguard"]) {
        return;
    }
    let enabled = "kind: AgentConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\nspec: {wireguardEnabled: true}\n";
    let mut cluster = Cluster::new(ONE_SUBNET, THREE_NODES, &format!("{}---\n{enabled}", pool("Always", false)));
    for i in 0..2 {
        cluster.start_agent(i);
        cluster.wait_ready(i);
    }
    cluster.eventually(Duration::from_secs(10), "nodes 0 and 1 peer", || wireguard_peers(&cluster).len() == 1);
    // Node 2 joins: node 0 takes its key.
    cluster.start_agent(2);
    cluster.wait_ready(2);
    cluster.eventually(Duration::from_secs(10), "node 0 peers with node 2", || wireguard_peers(&cluster).len() == 2);
    for i in 0..3 {
        cluster.add_pod(i, |_| {});
    }
    assert_full_mesh(&cluster);
    let table = cluster.ip(0, &["route", "show", "table", "1", "proto", "98"]);
    assert_eq!(table.lines().filter(|l| l.contains("dev wg.brindle")).count(), 2, "{table}");
    let main = cluster.ip(0, &["route", "show", "proto", "98"]);
    assert_eq!(main.lines().filter(|l| l.contains("dev vxlan.brindle")).count(), 2, "{main}");
    const RULE: &str = "99:\tnot from all fwmark 0x100000/0x100000 lookup 1 proto 98";
    let rules = cluster.ip(0, &["rule", "show"]);
    assert!(rules.contains(RULE), "{rules}");
    assert_eq!(wireguard_peers(&cluster).len(), 2);
    let key_file = cluster.nodes[1].state.path().join("wireguard.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let sent = underlay_capture(&cluster);
    let pods: Vec<&str> =
        sent.iter().filter(|l| !l.contains(".179 ") && !l.contains(".179:")).map(String::as_str).collect();
    assert!(!pods.is_empty(), "nothing crossed the underlay");
    assert!(
        pods.iter().all(|l| l.contains(".51820: UDP")),
        "pod traffic crossed the underlay unencrypted:\n{}",
        pods.join("\n")
    );

    // The agent's status shows every peer with its handshake and traffic.
    let status = cluster.status(0);
    let peers = status["wireguard"]["peers"].as_array().cloned().unwrap_or_default();
    assert_eq!(peers.len(), 2, "{status}");
    assert!(
        peers.iter().all(|p| p["configured"] == true
            && p["latestHandshake"].as_u64() > Some(0)
            && p["sent"].as_u64() > Some(0)),
        "{status}"
    );

    // diagnose follows the rule to WireGuard's table and finds node 1's key among the peers.
    let name = |i: usize| format!("default/{}", cluster.pods[i].attachment.pod_name);
    let (healthy, shown) = netns::output(
        cluster.nodes[0]
            .netns
            .command(&common::bin_dir().join("brindlectl").display().to_string())
            .env("NODENAME", &cluster.nodes[0].name)
            .args(["--datastore", &cluster.selection(), "diagnose", &name(0), &name(1)]),
    );
    assert!(healthy, "{shown}");
    for expected in ["WireGuard: ", "dev wg.brindle table 1", "wg.brindle has node", "key as a peer"] {
        assert!(shown.contains(expected), "{expected} in {shown}");
    }

    // Node 1 loses its key: a new pair at its next start, which node 0 takes in.
    let node1 = cluster.nodes[1].name.clone();
    let public = |cluster: &Cluster| {
        let client = cluster.client();
        let node = cluster.runtime.block_on(client.get::<brindle_datastore::resource::Node>(None, &node1)).unwrap();
        node.spec.wireguard_public_key.unwrap()
    };
    let old = public(&cluster);
    cluster.stop_agent(1);
    std::fs::remove_file(&key_file).unwrap();
    cluster.start_agent(1);
    cluster.wait_ready(1);
    let new = public(&cluster);
    assert_ne!(old, new, "a new key pair");
    cluster.eventually(Duration::from_secs(10), "node 0 takes node 1's new key", || {
        let peers = wireguard_peers(&cluster);
        peers.contains(&new) && !peers.contains(&old)
    });
    assert_full_mesh(&cluster);

    // Node 2 leaves: node 0 drops it as a peer.
    let node2 = cluster.nodes[2].name.clone();
    cluster.stop_agent(2);
    let client = cluster.client();
    cluster.runtime.block_on(client.delete::<brindle_datastore::resource::Node>(None, &node2, None)).unwrap();
    cluster.eventually(Duration::from_secs(10), "node 0 drops node 2's peer", || wireguard_peers(&cluster).len() == 1);

    // WireGuard off (read at start, as Felix does): the restarted agents find the rule, the
    // table and the device of their earlier run and remove them; VXLAN carries the pods.
    cluster.apply(&enabled.replace("true", "false"));
    for i in 0..2 {
        cluster.stop_agent(i);
        cluster.start_agent(i);
        cluster.wait_ready(i);
    }
    cluster.eventually(Duration::from_secs(10), "WireGuard is gone from nodes 0 and 1", || {
        (0..2).all(|i| {
            !cluster.ip(i, &["rule", "show"]).contains(RULE)
                && !cluster.ip(i, &["route", "show", "table", "all", "proto", "98"]).contains(" table 1 ")
                && !cluster.ip(i, &["link", "show"]).contains("wg.brindle")
        })
    });
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    assert!(a.ping(&b.ip) && b.ping(&a.ip), "pods on nodes 0 and 1 reach each other through VXLAN");
}

/// IPv6 WireGuard beside IPv4's (`wireguardEnabledV6`), where Debian's kernel runs it: each
/// node makes a second key pair and publishes it as `wireguardPublicKeyV6`; pods' IPv6 traffic
/// goes through `wg-v6.brindle` from the IPv6 table 1 by the IPv6 rule, ahead of the IPv6
/// pool's direct routes, and the underlay carries only WireGuard UDP of both ports.
#[test]
fn dual_stack_wireguard_encrypts_each_family_through_its_own_device() {
    if !brindle_e2e::vm::here_or_in_a_vm(&["wireguard"]) {
        return;
    }
    let v6_pool =
        "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods-v6}\nspec: {cidr: 'fd00:10:244::/56'}\n";
    let enabled = "kind: AgentConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\n\
                   spec: {wireguardEnabled: true, wireguardEnabledV6: true}\n";
    let yaml = format!("{}---\n{v6_pool}---\n{enabled}", pool("Always", false));
    let mut cluster = Cluster::new(ONE_SUBNET, THREE_NODES, &yaml);
    cluster.add_ipv6();
    cluster.start_all();
    for i in 0..3 {
        cluster.add_dual_stack_pod(i);
    }
    assert_full_mesh(&cluster);

    let node0 = cluster.nodes[0].name.clone();
    let client = cluster.client();
    let node = cluster.runtime.block_on(client.get::<brindle_datastore::resource::Node>(None, &node0)).unwrap();
    let (v4_key, v6_key) = (node.spec.wireguard_public_key.unwrap(), node.spec.wireguard_public_key_v6.unwrap());
    assert_ne!(v4_key, v6_key, "a key pair of its own for IPv6");
    use std::os::unix::fs::PermissionsExt;
    let key_file = cluster.nodes[0].state.path().join("wireguard-v6.key");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);

    let table = cluster.ip(0, &["-6", "route", "show", "table", "1", "proto", "98"]);
    assert_eq!(table.lines().filter(|l| l.contains("dev wg-v6.brindle")).count(), 2, "{table}");
    let main = cluster.ip(0, &["-6", "route", "show", "proto", "98"]);
    assert_eq!(main.lines().filter(|l| l.contains("via fd00:250::")).count(), 2, "direct beneath: {main}");
    let rules = cluster.ip(0, &["-6", "rule", "show"]);
    assert!(rules.contains("99:\tnot from all fwmark 0x100000/0x100000 lookup 1 proto 98"), "{rules}");
    let device = cluster.ip(0, &["link", "show", "wg-v6.brindle"]);
    assert!(device.contains("mtu 1420"), "the uplink's 1500 less 80: {device}");

    let sent = underlay_capture(&cluster);
    assert!(sent.iter().any(|l| l.contains(".51821: UDP")), "no IPv6 WireGuard crossed the underlay");
    let plain: Vec<&String> =
        sent.iter().filter(|l| !l.contains(".51820: UDP") && !l.contains(".51821: UDP")).collect();
    assert!(plain.is_empty(), "pod traffic crossed the underlay unencrypted: {plain:#?}");
    let status = cluster.status(0);
    let peers = status["wireguardV6"]["peers"].as_array().cloned().unwrap_or_default();
    assert_eq!(peers.len(), 2, "{status}");
    assert!(
        peers.iter().all(|p| p["endpoint"].as_str().is_some_and(|e| e.starts_with("[fd00:250::"))
            && p["latestHandshake"].as_u64() > Some(0)),
        "{status}"
    );
}

/// IP-in-IP, where Debian's kernel runs it (this one has no ipip module): Always tunnels to
/// every node through `tunl0`, CrossSubnet only across subnets, a switch to VXLAN brings
/// `tunl0` down and the routes onto the VXLAN device, and back again; every pod reaches every
/// other throughout, and the pods' traffic really goes through `tunl0`.
#[test]
fn ip_in_ip_always_cross_subnet_and_switched_to_vxlan_and_back() {
    if !brindle_e2e::vm::here_or_in_a_vm(&["ipip"]) {
        return;
    }
    let ipip = |mode: &str| {
        format!(
            "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {{name: pods}}\nspec: {{cidr: 10.244.0.0/16, ipipMode: {mode}}}\n"
        )
    };
    let routes = |cluster: &Cluster| cluster.ip(0, &["route", "show", "proto", "98"]);
    let placement = &[(0, 10), (0, 11), (1, 12)];
    let mut cluster = Cluster::new(&["10.250.0.0/24", "10.251.0.0/24"], placement, &ipip("Always"));
    cluster.start_all();
    two_pods_per_node(&mut cluster);
    let (_, sent_before) = device_state(&cluster, "tunl0");
    assert_full_mesh(&cluster);
    let (up, sent) = device_state(&cluster, "tunl0");
    assert!(up && sent > sent_before, "the pods' packets did not go through tunl0 (sent {sent_before} then {sent})");
    let (node1, node2) = (cluster.nodes[1].address, cluster.nodes[2].address);
    let now = routes(&cluster);
    for node in [node1, node2] {
        assert!(now.contains(&format!("via {node} dev tunl0 onlink")), "Always tunnels to {node}: {now}");
    }
    let tunnel_address = cluster.ip(0, &["-o", "address", "show", "tunl0"]);
    assert!(tunnel_address.contains("inet 10.244."), "tunl0 has no tunnel address: {tunnel_address}");

    cluster.apply(&ipip("CrossSubnet"));
    cluster.eventually(Duration::from_secs(10), "the same subnet goes direct", || {
        routes(&cluster).contains(&format!("via {node1} dev eth0"))
    });
    let now = routes(&cluster);
    assert!(now.contains(&format!("via {node2} dev tunl0 onlink")), "across subnets it tunnels: {now}");
    assert_full_mesh(&cluster);

    cluster.apply(&pool("Always", false));
    cluster.eventually(Duration::from_secs(10), "the routes move to VXLAN and tunl0 goes down", || {
        let now = routes(&cluster);
        !now.contains("tunl0") && now.contains("vxlan.brindle") && !device_state(&cluster, "tunl0").0
    });
    assert_full_mesh(&cluster);

    cluster.apply(&ipip("Always"));
    cluster.eventually(Duration::from_secs(10), "the routes come back to tunl0", || {
        let now = routes(&cluster);
        now.contains("dev tunl0") && !now.contains("vxlan.brindle") && device_state(&cluster, "tunl0").0
    });
    assert!(!cluster.ip(0, &["link", "show"]).contains("vxlan.brindle"), "the VXLAN device stayed");
    assert_full_mesh(&cluster);
}

#[test]
fn an_agent_that_cannot_route_to_another_nodes_pods_is_not_ready_and_says_why() {
    // Two subnets, no encapsulation and no BGP: neither node can reach the other's block.
    let mut cluster = Cluster::new(&["10.250.0.0/24", "10.251.0.0/24"], &[(0, 10), (1, 10)], &pool("Never", false));
    cluster.start_agent(0);
    cluster.start_agent(1);
    cluster.eventually(Duration::from_secs(10), "the agents publish the pod MTU", || {
        (0..2).all(|i| cluster.nodes[i].state.path().join("mtu").exists())
    });
    cluster.add_pod(0, |_| {});
    cluster.add_pod(1, |_| {});
    cluster.eventually(Duration::from_secs(10), "node 0 says it cannot route", || {
        let readiness = cluster.http(0, 9099, "/readiness");
        readiness.starts_with("HTTP/1.0 503") && readiness.contains("no route to 1 block(s) of other nodes")
    });
    let status = cluster.status(0);
    assert!(status["ready"] == false && status["notReady"].as_str().unwrap().contains("no route"), "{status}");
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("is not on this node's subnet") && problems.contains("does not encapsulate"),
        "{problems}"
    );
    // VXLAN across subnets routes it, and the agent is ready again.
    cluster.apply(&pool("CrossSubnet", false));
    cluster.wait_ready(0);
    assert_full_mesh(&cluster);
}
