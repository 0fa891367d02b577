//! The plugins with others: `brindle` delegating to the reference host-local IPAM, and
//! `brindle-ipam` under the reference ptp plugin.

mod common;

use brindle_datastore::testing::Backend;
use common::{Expect, Node, Pod, exec};
use serde_json::json;

#[test]
fn brindle_delegates_to_host_local() {
    let node = Node::new(Backend::Sqlite);
    let data_dir = node.scratch.path().join("host-local");
    let mut conf = node.conf("1.0.0", false);
    conf["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "10.98.0.0/24"}]], "dataDir": data_dir});
    let pod = Pod::new("hl");
    let result = node.brindle("ADD", &conf, &pod).result();
    let ip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    assert!(ip.starts_with("10.98.0."), "{result}");
    assert!(data_dir.join("k8s-pod-network").join(&ip).exists(), "host-local did not record {ip}");
    assert!(pod.ping(common::NODE_V4), "the pod cannot reach its node");
    let mut del = conf.clone();
    del["prevResult"] = result;
    node.brindle("DEL", &del, &pod).result();
    assert!(!data_dir.join("k8s-pod-network").join(&ip).exists(), "DEL did not reach host-local");
    node.assert_clean();
}

/// brindle-ipam called the way any main plugin calls its IPAM (the reference ptp cannot use
/// it: ptp 1.1.1 assumes a subnet and fails on /32 host addresses, the shape Calico's IPAM
/// gives too).
#[test]
fn brindle_ipam_serves_any_main_plugin() {
    let node = Node::new(Backend::Sqlite);
    let mut conf = node.conf("0.4.0", true);
    conf["type"] = json!("bridge");
    let pod = Pod::new("ipam");
    let ipam = env!("CARGO_BIN_EXE_brindle-ipam");
    let result = exec(ipam, "ADD", &conf, &pod).result();
    assert_eq!(result["cniVersion"], "0.4.0");
    assert_eq!(result["ips"][0]["version"], "4", "{result}");
    assert!(result["ips"][0]["address"].as_str().unwrap().ends_with("/32"), "{result}");
    assert!(result["ips"][1]["address"].as_str().unwrap().ends_with("/128"), "{result}");
    assert!(result["interfaces"].as_array().is_none_or(Vec::is_empty), "IPAM makes no interfaces: {result}");
    assert_eq!(node.allocations(), 2);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result;
    exec(ipam, "CHECK", &with_prev, &pod).result();
    exec(ipam, "DEL", &with_prev, &pod).result();
    assert_eq!(node.allocations(), 0, "DEL did not release the addresses");
    let out = exec(ipam, "CHECK", &with_prev, &pod);
    assert_eq!(out.code(), 101, "CHECK after DEL must say the addresses are gone: {}", out.stdout);
    exec(ipam, "DEL", &with_prev, &pod).result();
}
