//! Many pods, quickly: repeated ADD/DEL leaves nothing behind, concurrent ADDs on one node get
//! distinct addresses, GC collects exactly the attachments that are no longer valid.

mod common;

use std::collections::HashSet;

use brindle_datastore::testing::Backend;
use common::{Expect, Node, Pod};
use serde_json::json;

per_backend!(concurrent_adds_get_distinct_addresses, gc_releases_only_what_is_not_valid);

fn ip_of(result: &serde_json::Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().to_owned()
}

#[test]
fn five_hundred_add_del_cycles_leave_nothing_behind() {
    let node = Node::new(Backend::Sqlite);
    let conf = node.conf("1.0.0", false);
    let pods: Vec<Pod> = (0..4).map(|i| Pod::new(&format!("cycle{i}"))).collect();
    for cycle in 0..500 {
        let pod = &pods[cycle % pods.len()];
        let result = node.brindle("ADD", &conf, pod).result();
        let mut del = conf.clone();
        del["prevResult"] = result;
        node.brindle("DEL", &del, pod).result();
    }
    node.assert_clean();
}

fn concurrent_adds_get_distinct_addresses(backend: Backend) {
    let node = Node::new(backend);
    let conf = node.conf("1.0.0", false);
    let pods: Vec<Pod> = (0..32).map(|i| Pod::new(&format!("burst{i}"))).collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods.iter().map(|pod| s.spawn(|| node.brindle("ADD", &conf, pod).result())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addresses: HashSet<String> = results.iter().map(ip_of).collect();
    assert_eq!(addresses.len(), 32, "duplicate addresses: {addresses:?}");
    assert_eq!(node.allocations(), 32);
    assert_eq!(node.endpoints(), 32);
    // Every pod is wired: the first reaches the last.
    let last = results[31]["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    assert!(pods[0].ping(&last), "pod 0 cannot reach pod 31 at {last}");
    std::thread::scope(|s| {
        for pod in &pods {
            s.spawn(|| node.brindle("DEL", &conf, pod).result());
        }
    });
    node.assert_clean();
}

fn gc_releases_only_what_is_not_valid(backend: Backend) {
    let node = Node::new(backend);
    let conf = node.conf("1.1.0", false);
    let keep = Pod::new("keep");
    let gone = Pod::new("gone");
    let kept = node.brindle("ADD", &conf, &keep).result();
    node.brindle("ADD", &conf, &gone).result();
    // An allocation whose record was lost (a crash between IPAM and the veth) is found too.
    let orphan_holder = brindle_datastore::ipam::Allocation {
        handle: "k8s-pod-network.orphan".into(),
        network: Some("k8s-pod-network".into()),
        endpoint: true,
        kind: brindle_datastore::ipam::AllocationKind::Workload,
        node: node.name.clone(),
        ..Default::default()
    };
    let ipam = brindle_datastore::ipam::Ipam::new(node.client());
    let request = brindle_datastore::ipam::AllocateRequest { holder: orphan_holder, ipv4: 1, ..Default::default() };
    node.runtime.block_on(ipam.allocate(&request)).unwrap();
    // Another node's allocation of the same network is not this node's to collect.
    let mut other = request.clone();
    other.holder.node = "another-node".into();
    other.holder.handle = "k8s-pod-network.elsewhere".into();
    node.runtime.block_on(ipam.allocate(&other)).unwrap();
    // Nor is a live attachment of network "k8s-pod-network.x" on this node, whose handle
    // starts with this network's name and a dot.
    let mut longer = request.clone();
    longer.holder.network = Some("k8s-pod-network.x".into());
    longer.holder.handle = "k8s-pod-network.x.c1".into();
    node.runtime.block_on(ipam.allocate(&longer)).unwrap();
    assert_eq!(node.allocations(), 5);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    let out = common::exec_env(
        env!("CARGO_BIN_EXE_brindle"),
        &gc,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", &common::cni_path())],
    );
    assert!(out.ok, "GC failed: {}", out.stdout);
    assert_eq!(node.allocations(), 3, "the kept pod, the other node's and the other network's addresses remain");
    assert_eq!(node.endpoints(), 1);
    let links = node.links();
    assert!(links.contains(kept["interfaces"][0]["name"].as_str().unwrap()), "{links}");
    assert_eq!(node.host_veths(), 1, "{links}");
    let kept_ip = ip_of(&kept);
    let kept_ip = kept_ip.split('/').next().unwrap();
    assert!(
        common::output(std::process::Command::new("ping").args(["-c1", "-W2", kept_ip])).0,
        "the kept pod was disturbed"
    );
    node.brindle("DEL", &conf, &keep).result();
}

#[test]
fn a_late_del_of_an_old_sandbox_leaves_the_new_one_alone() {
    let node = Node::new(Backend::Sqlite);
    let conf = node.conf("1.0.0", false);
    // Two sandboxes of one pod: the runtime made a new one before the old one's DEL came.
    let old = Pod::new("web");
    let mut new = Pod::new("web");
    new.attachment.pod_name.clone_from(&old.attachment.pod_name);
    let old_result = node.brindle("ADD", &conf, &old).result();
    let new_result = node.brindle("ADD", &conf, &new).result();
    assert_eq!(old_result["interfaces"][0]["name"], new_result["interfaces"][0]["name"], "one host veth name");

    // The host veth carries the new sandbox's mark; and the old sandbox's record is gone as if
    // the node had rebooted, so only the mark can tell whose veth it is.
    let veth = new_result["interfaces"][0]["name"].as_str().unwrap().to_owned();
    let link = node.links();
    let line = link.lines().find(|l| l.contains(&format!(" {veth}@"))).unwrap_or_default();
    assert!(line.contains(&format!("alias brindle:{}", new.container_id)), "{line}");
    for record in std::fs::read_dir(node.records.path()).unwrap().flatten() {
        if record.file_name().to_string_lossy().contains(&new.container_id) {
            std::fs::remove_file(record.path()).unwrap();
        }
    }

    let mut del = conf.clone();
    del["prevResult"] = old_result;
    node.brindle("DEL", &del, &old).result();

    // The new sandbox keeps its interface, its route, its endpoint, its record and its address.
    let new_ip = ip_of(&new_result);
    let new_ip = new_ip.split('/').next().unwrap();
    let (_, inside) = new.exec("ip", &["-o", "link", "show", "eth0"]);
    assert!(inside.contains("eth0"), "the new sandbox lost eth0: {inside}");
    assert!(new.ping(common::NODE_V4), "the new sandbox cannot reach its node");
    assert!(node.routes().contains(new_ip), "{}", node.routes());
    assert_eq!(node.endpoints(), 1);
    assert_eq!(node.allocations(), 1, "the old sandbox's address is released, the new one's kept");

    let mut del = conf.clone();
    del["prevResult"] = new_result;
    node.brindle("DEL", &del, &new).result();
    node.assert_clean();
}
