//! A pod is untrusted. In three-node clusters with real agents, pods try what an attacker in a
//! pod would: inject VXLAN into another node, forge their source address, advertise
//! themselves as an IPv6 router to their node, and open BGP connections to nodes (also while
//! their own node's agent is down). Each attempt fails; the same packets from a
//! node, where that is legitimate, get through, so every test shows its packets were right.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use brindle_e2e::netns::{self, Netns};
use common::Cluster;

const ONE_SUBNET: &[&str] = &["10.250.0.0/24"];
const THREE_NODES: &[(usize, u32)] = &[(0, 10), (0, 11), (0, 12)];
const PORT: &str = "5555";

/// The packet builder (common/craft.py) run inside `netns` by Debian's Python.
fn craft(netns: &Netns, args: &[&str]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/craft.py");
    let mut command = netns.command("/usr/bin/python3");
    command.arg(script).args(args);
    command
}

/// A UDP listener on PORT inside `netns` for `seconds`.
fn listen(netns: &Netns, seconds: &str) -> Child {
    let child = craft(netns, &["listen", PORT, seconds]).stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let it bind
    child
}

/// What a listener received: one `<source> <payload>` line per datagram.
fn heard(listener: Child) -> String {
    String::from_utf8_lossy(&listener.wait_with_output().unwrap().stdout).into_owned()
}

fn run(mut command: Command) {
    let (ok, out) = netns::output(&mut command);
    assert!(ok, "{out}");
}

/// Whether a TCP connection from `netns` to `host:port` opens within a second.
fn connects(netns: &Netns, host: &str, port: &str) -> bool {
    netns::output(&mut craft(netns, &["connect", host, port, "1"])).0
}

fn vxlan_cluster() -> Cluster {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\n\
                spec: {cidr: 10.244.0.0/16, vxlanMode: Always, natOutgoing: true}\n";
    let mut cluster = Cluster::new(ONE_SUBNET, THREE_NODES, yaml);
    cluster.start_all();
    cluster.add_pod(0, |_| {});
    cluster.add_pod(0, |_| {});
    cluster.add_pod(1, |_| {});
    cluster.add_pod(2, |_| {});
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "pod pairs that cannot talk: {failing:?}\n{}", cluster.agent_log(0));
    cluster
}

#[test]
fn a_pod_can_neither_inject_vxlan_nor_forge_its_source() {
    let cluster = vxlan_cluster();
    let (attacker, sibling, target, remote) = (&cluster.pods[0], &cluster.pods[1], &cluster.pods[2], &cluster.pods[3]);
    let node1 = cluster.nodes[1].address.to_string();
    let link = cluster.ip(1, &["-o", "link", "show", "vxlan.brindle"]);
    let vtep_mac = link.split("link/ether ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap().to_owned();
    let inject = |from: &Netns| craft(from, &["vxlan", &node1, "4789", "4096", &vtep_mac, "6.6.6.6", &target.ip, PORT]);

    // The frame is right: from another node it is decapsulated and reaches the pod.
    let listener = listen(&target.netns, "1.5");
    run(inject(&cluster.nodes[2].netns));
    assert!(heard(listener).contains("6.6.6.6 injected"), "a node's VXLAN frame should arrive");
    // From a pod it never leaves the pod's node; from a host that is not a node, the node
    // it is sent to drops it.
    let listener = listen(&target.netns, "1.5");
    run(inject(&attacker.netns));
    run(inject(&cluster.underlay.router));
    let got = heard(listener);
    assert!(!got.contains("6.6.6.6"), "injected into node 1: {got}");

    // Forged sources: a sibling's, a remote pod's, the node's, an outside address; then the
    // pod's own, which alone arrives.
    let listener = listen(&target.netns, "2");
    let node0 = cluster.nodes[0].address.to_string();
    for source in [sibling.ip.as_str(), remote.ip.as_str(), node0.as_str(), "8.8.8.8", attacker.ip.as_str()] {
        run(craft(&attacker.netns, &["spoof", source, &target.ip, PORT]));
    }
    let got = heard(listener);
    let sources: std::collections::BTreeSet<&str> = got.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(sources, [attacker.ip.as_str()].into(), "{got}");
}

#[test]
fn router_advertisements_from_a_pod_change_nothing_on_its_node() {
    let cluster = vxlan_cluster();
    let pod = &cluster.pods[0];
    // The pod's link-local address must be usable (past duplicate address detection) for the
    // advertisement to be a valid one.
    cluster.eventually(Duration::from_secs(5), "the pod's link-local address", || {
        let (_, addr) = netns::output(pod.netns.command("ip").args(["-6", "addr", "show", "dev", "eth0"]));
        addr.contains("scope link") && !addr.contains("tentative")
    });
    // The host veth takes no advertisement and configures nothing from one, whatever the
    // node's forwarding setting.
    let links = cluster.ip(0, &["-o", "link", "show"]);
    let veth = links.lines().filter_map(|l| l.split(": ").nth(1)).find(|n| n.starts_with("brin"));
    let veth = veth.expect("the pod's host veth").split('@').next().unwrap().to_owned();
    for setting in ["accept_ra", "autoconf"] {
        let (_, value) = netns::output(
            cluster.nodes[0].netns.command("sysctl").args(["-n", &format!("net.ipv6.conf.{veth}.{setting}")]),
        );
        assert_eq!(value.trim(), "0", "{setting} on {veth}");
    }
    run(craft(&pod.netns, &["ra", "eth0", "2001:db8:1::"]));
    std::thread::sleep(Duration::from_millis(500));
    let routes = cluster.ip(0, &["-6", "route", "show"]);
    let addresses = cluster.ip(0, &["-6", "addr", "show"]);
    assert!(!routes.contains("default") && !routes.contains("2001:db8:1:"), "{routes}");
    assert!(!addresses.contains("2001:db8:1:"), "{addresses}");
}

#[test]
fn no_pod_speaks_bgp_to_any_node_even_with_its_agent_down() {
    // natOutgoing: a pod's connections to other nodes leave as its node's, which is what a
    // peer would take for the node's own session.
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16, natOutgoing: true}\n---\n\
                kind: AgentConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\nspec: {bgpBackend: Embedded}\n";
    let mut cluster = Cluster::new(ONE_SUBNET, THREE_NODES, yaml);
    cluster.start_all();
    let attacker = cluster.add_pod(0, |_| {});
    cluster.add_pod(1, |_| {});
    cluster.add_pod(2, |_| {});
    for i in 0..3 {
        cluster.eventually(Duration::from_secs(15), &format!("node {i} learns two blocks"), || {
            cluster.metrics(i).contains("brindle_bgp_routes_learned 2")
        });
    }
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.address.to_string()).collect();
    // The port is open: the nodes reach each other's BGP.
    assert!(connects(&cluster.nodes[2].netns, &nodes[1], "179"), "node 2 to node 1");
    assert!(connects(&cluster.nodes[0].netns, &nodes[0], "179"), "node 0 to itself");
    // A pod reaches it neither on its own node nor on another, with its agent up or down
    // (then the pod would hold its node's session with node 1).
    for agent_up in [true, false] {
        for target in [0, 1] {
            let pod = &cluster.pods[attacker].netns;
            assert!(!connects(pod, &nodes[target], "179"), "pod to node {target}:179, agent up: {agent_up}");
        }
        cluster.stop_agent(0);
    }
    // Pod traffic as such still flows; metrics listen on the node's address, not on every one.
    assert!(cluster.pods[attacker].ping(&cluster.pods[1].ip));
    let (_, listening) = netns::output(cluster.nodes[1].netns.command("ss").args(["-ltn", "sport", "= :9091"]));
    assert!(listening.contains(&format!("{}:9091", nodes[1])) && !listening.contains("0.0.0.0:9091"), "{listening}");
}
