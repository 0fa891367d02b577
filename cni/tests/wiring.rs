//! Pods wired by the `brindle` plugin on one node: they reach each other and the node, over
//! exactly the interfaces, routes and neighbours DESIGN.md's "Pod wiring" prescribes.

mod common;

use brindle_datastore::resource::WorkloadEndpoint;
use brindle_datastore::testing::Backend;
use common::{Expect, Node, Pod};

per_backend!(two_dual_stack_pods_reach_each_other_and_the_node, the_same_container_twice_gets_the_same_result);

fn address(result: &serde_json::Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap().to_owned())
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| panic!("no {} address in {result}", if v6 { "IPv6" } else { "IPv4" }))
}

fn two_dual_stack_pods_reach_each_other_and_the_node(backend: Backend) {
    let node = Node::new(backend);
    let conf = node.conf("1.0.0", true);
    let a = Pod::new("a");
    let b = Pod::new("b");
    let ra = node.brindle("ADD", &conf, &a).result();
    let rb = node.brindle("ADD", &conf, &b).result();
    let (a4, a6, b4, b6) = (address(&ra, false), address(&ra, true), address(&rb, false), address(&rb, true));

    // The result: host veth, pod eth0 in the sandbox, /32 and /128 addresses, default routes.
    let veth = ra["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert!(veth.starts_with("brin") && veth.len() == 15, "{ra}");
    assert_eq!(ra["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(ra["interfaces"][1]["name"], "eth0");
    assert_eq!(ra["interfaces"][1]["sandbox"], a.netns.path().display().to_string());
    assert!(ra["ips"][0]["address"].as_str().unwrap().ends_with("/32"), "{ra}");
    assert!(ra["ips"].as_array().unwrap().iter().all(|ip| ip["interface"] == 1), "{ra}");

    // The node: a /32 and a /128 route to each pod through its veth, proxy ARP on the veth.
    let routes = node.routes();
    assert!(routes.contains(&format!("{a4} dev {veth} proto 98 scope link")), "{routes}");
    let routes6 = common::run(std::process::Command::new("ip").args(["-6", "route", "show", &a6]));
    assert!(routes6.contains(&format!("dev {veth} proto 98")), "{routes6}");
    let proxy_arp = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{veth}/proxy_arp")).unwrap();
    assert_eq!(proxy_arp.trim(), "1");
    let mtu = node.links();
    assert!(mtu.lines().any(|l| l.contains(&veth) && l.contains("mtu 1400")), "{mtu}");

    // The pod: its address on eth0, 169.254.1.1 on the link, default routes via the gateways.
    let (_, pod_routes) = a.exec("ip", &["route", "show"]);
    assert!(pod_routes.contains("default via 169.254.1.1 dev eth0"), "{pod_routes}");
    assert!(pod_routes.contains("169.254.1.1 dev eth0 proto 98 scope link"), "{pod_routes}");
    let (_, pod_routes6) = a.exec("ip", &["-6", "route", "show", "default"]);
    assert!(pod_routes6.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"), "{pod_routes6}");
    let (_, addrs) = a.exec("ip", &["addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("inet {a4}/32")) && addrs.contains(&format!("inet6 {a6}/128")), "{addrs}");
    assert!(addrs.contains("mtu 1400"), "{addrs}");

    // Traffic: pod to pod both families, pod to node, node to pod.
    assert!(a.ping(&b4), "pod a cannot ping pod b at {b4}");
    assert!(b.ping(&a4), "pod b cannot ping pod a at {a4}");
    assert!(a.ping(&b6), "pod a cannot ping pod b at {b6}");
    assert!(a.ping(common::NODE_V4), "pod a cannot ping its node");
    assert!(common::output(std::process::Command::new("ping").args(["-c1", "-W2", &a4])).0, "node cannot ping pod a");

    // The gateway resolves to the host end's MAC, by proxy ARP.
    let (_, neigh) = a.exec("ip", &["neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("lladdr ee:ee:ee:ee:ee:ee"), "{neigh}");

    // The datastore has an endpoint per pod with its addresses.
    let client = node.client();
    let (endpoints, _) = node.runtime.block_on(client.list::<WorkloadEndpoint>()).unwrap();
    let ep = endpoints.iter().find(|e| e.spec.container_id == a.container_id).expect("endpoint of pod a");
    assert_eq!(ep.spec.interface_name, veth);
    assert_eq!(ep.spec.node, node.name);
    assert_eq!(ep.spec.ip_networks.len(), 2);
    assert_eq!(endpoints.len(), 2);

    // CHECK agrees with the kernel; then a deleted route is noticed.
    let mut check = conf.clone();
    check["prevResult"] = ra.clone();
    node.brindle("CHECK", &check, &a).result();
    a.netns.ip(&["route", "del", "default"]).unwrap();
    let broken = node.brindle("CHECK", &check, &a);
    assert!(broken.stdout.contains("route 0.0.0.0/0 via 169.254.1.1 is missing"), "{}", broken.stdout);

    // DEL removes the veth, the routes, the endpoint and the record; a second DEL is fine.
    for pod in [&a, &b] {
        node.brindle("DEL", &check, pod).result();
        node.brindle("DEL", &check, pod).result();
    }
    assert!(!node.links().contains("brin"), "{}", node.links());
    assert!(!node.routes().contains("proto 98"), "{}", node.routes());
    let (endpoints, _) = node.runtime.block_on(client.list::<WorkloadEndpoint>()).unwrap();
    assert!(endpoints.is_empty(), "{endpoints:?}");
    assert_eq!(node.endpoint_records(), Vec::<std::ffi::OsString>::new());
}

fn the_same_container_twice_gets_the_same_result(backend: Backend) {
    let node = Node::new(backend);
    let conf = node.conf("0.3.1", false);
    let pod = Pod::new("same");
    let first = node.brindle("ADD", &conf, &pod).result();
    let second = node.brindle("ADD", &conf, &pod).result();
    assert_eq!(first, second);
    // 0.3.1 results carry each address's version.
    assert_eq!(first["ips"][0]["version"], "4", "{first}");
    assert_eq!(first["cniVersion"], "0.3.1");
    let blocks = node.runtime.block_on(brindle_datastore::ipam::Ipam::new(node.client()).blocks()).unwrap();
    let used: usize = blocks.iter().map(|(b, _)| b.in_use()).sum();
    assert_eq!(used, 1, "the second ADD allocated again");
    // With its veth gone, the same container ID is wired anew, and its old address is given
    // back rather than held twice.
    let veth = first["interfaces"][0]["name"].as_str().unwrap();
    common::run(std::process::Command::new("ip").args(["link", "del", veth]));
    let third = node.brindle("ADD", &conf, &pod).result();
    assert_eq!(third["interfaces"][0]["name"], veth, "{third}");
    assert!(node.links().contains(veth));
    assert_eq!(node.allocations(), 1, "the re-wired container holds two addresses");
    node.brindle("DEL", &conf, &pod).result();
    node.assert_clean();
}
