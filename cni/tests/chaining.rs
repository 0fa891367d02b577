//! `brindle` first in a conflist with the reference `portmap` and `bandwidth` plugins after
//! it, run the way libcni runs a list: ADD, CHECK and DEL succeed, the port mapping forwards a
//! TCP connection from outside the node to the pod, and the bandwidth limits are on the
//! pod's host veth.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use brindle_datastore::testing::Backend;
use common::{ConfList, Node, Pod, enter};
use serde_json::json;

per_backend!(portmap_and_bandwidth_chain_after_brindle);

fn portmap_and_bandwidth_chain_after_brindle(backend: Backend) {
    let node = Node::new(backend);
    let mut first = node.conf("1.0.0", false);
    first.as_object_mut().unwrap().remove("cniVersion");
    let conflist = ConfList {
        list: json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "plugins": [
                first,
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            ]
        }),
        runtime_config: json!({
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 1_000_000, "egressRate": 8_000_000, "egressBurst": 1_000_000},
        }),
        cni_path: common::cni_path(),
        runner: Vec::new(),
        root: None,
    };
    let pod = Pod::new("web");
    let result = conflist.add(&pod.attachment).unwrap().unwrap_or_else(|e| panic!("ADD failed: {}", e.stdout));
    let pod_ip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    let veth = result["interfaces"][0]["name"].as_str().unwrap().to_owned();

    // A server in the pod; a client in the world connects to the node's port 8080.
    let pod_path = pod.netns.path();
    let server = std::thread::spawn(move || {
        enter(&pod_path);
        let listener = TcpListener::bind("0.0.0.0:80").unwrap();
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(b"hello from the pod").unwrap();
        peer
    });
    let world = node.world.path();
    let client = std::thread::spawn(move || {
        enter(&world);
        let target = format!("{}:8080", common::NODE_V4).parse().unwrap();
        let mut conn = (0..50)
            .find_map(|_| {
                TcpStream::connect_timeout(&target, Duration::from_secs(2))
                    .inspect_err(|_| std::thread::sleep(Duration::from_millis(100)))
                    .ok()
            })
            .expect("connect to the mapped port");
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    });
    assert_eq!(client.join().unwrap(), "hello from the pod");
    let peer = server.join().unwrap();
    assert_eq!(peer.ip().to_string(), common::WORLD_V4, "the pod sees the client's own address");
    let _ = pod_ip;

    // bandwidth put a token bucket on the host veth.
    let (_, qdisc) = common::output(std::process::Command::new("tc").args(["qdisc", "show", "dev", &veth]));
    assert!(qdisc.contains("tbf"), "{qdisc}");

    // portmap 1.1.1 (Debian 12) looks for its IPv6 rules on CHECK whenever ip6tables exists,
    // even for an IPv4-only container, and fails (containernetworking/plugins#819, fixed in
    // later releases). That one failure, and only it, is tolerated; every other plugin's CHECK
    // must pass.
    match conflist.check(&pod.attachment, &result).unwrap() {
        Ok(()) => {}
        Err(e) if e.json["msg"].as_str().is_some_and(|m| m.starts_with("could not check ipv6 dnat")) => {
            let mut without_portmap = conflist.list.clone();
            without_portmap["plugins"].as_array_mut().unwrap().remove(1);
            let rest = ConfList { list: without_portmap, ..conflist.clone() };
            rest.check(&pod.attachment, &result).unwrap().unwrap_or_else(|e| panic!("CHECK failed: {}", e.stdout));
        }
        Err(e) => panic!("CHECK failed: {}", e.stdout),
    }
    conflist.del(&pod.attachment, &result).unwrap().unwrap_or_else(|e| panic!("DEL failed: {}", e.stdout));
    assert!(!node.links().contains("brin"), "{}", node.links());
    let (_, nat) = common::output(std::process::Command::new("iptables-save").args(["-t", "nat"]));
    assert!(!nat.contains(&pod.container_id[..12]) && !nat.contains("8080"), "portmap left rules: {nat}");
    // A second DEL of the whole list (runtimes retry) is fine.
    conflist.del(&pod.attachment, &result).unwrap().unwrap_or_else(|e| panic!("second DEL failed: {}", e.stdout));
}
