//! Bad input gets the spec's error code and a message naming the problem, never a panic, and
//! leaves nothing behind: no veth, no route, no address, no endpoint, no record.

mod common;

use brindle_datastore::testing::Backend;
use common::{Expect, Node, Outcome, Pod, exec_env, exec_raw};
use serde_json::json;

const BRINDLE: &str = env!("CARGO_BIN_EXE_brindle");
const BRINDLE_IPAM: &str = env!("CARGO_BIN_EXE_brindle-ipam");

per_backend!(malformed_requests_get_precise_codes, an_exhausted_pool_rolls_back_and_status_says_so);

fn vars<'a>(command: &'a str, pod: &'a Pod, netns: &'a str, path: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", &pod.container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path),
    ]
}

fn malformed_requests_get_precise_codes(backend: Backend) {
    let node = Node::new(backend);
    let conf = node.conf("1.0.0", false);
    let pod = Pod::new("bad");
    let netns = pod.netns.path().display().to_string();
    let path = common::cni_path();

    // A missing variable: code 4, named in details.
    let mut without_netns = vars("ADD", &pod, &netns, &path);
    without_netns.retain(|(k, _)| *k != "CNI_NETNS");
    let out = exec_env(BRINDLE, &conf, &without_netns);
    assert_eq!(out.code(), 4);
    assert_eq!(out.json["details"], "CNI_NETNS", "{}", out.stdout);

    // Unknown CNI_ARGS without IgnoreUnknown: code 4 naming the key.
    let mut args = vars("ADD", &pod, &netns, &path);
    args.push(("CNI_ARGS", "K8S_POD_NAME=x;COLOR=blue"));
    let out = exec_env(BRINDLE, &conf, &args);
    assert_eq!(out.code(), 4);
    assert!(out.stdout.contains("COLOR"), "{}", out.stdout);

    // Unparsable JSON: code 6.
    let out = exec_raw(BRINDLE, b"{\"cniVersion\": \"1.0.0\", ", &vars("ADD", &pod, &netns, &path));
    assert_eq!(out.code(), 6);

    // An unknown cniVersion: code 1, listing what is supported.
    let mut future = conf.clone();
    future["cniVersion"] = json!("9.0.0");
    let out = exec_env(BRINDLE, &future, &vars("ADD", &pod, &netns, &path));
    assert_eq!(out.code(), 1);
    assert!(out.stdout.contains("1.1.0"), "{}", out.stdout);

    // CHECK on a 0.3.1 config, GC on 1.0.0: code 1.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    old["prevResult"] = json!({"ips": []});
    assert_eq!(exec_env(BRINDLE, &old, &vars("CHECK", &pod, &netns, &path)).code(), 1);
    assert_eq!(exec_env(BRINDLE, &conf, &vars("GC", &pod, &netns, &path)).code(), 1);

    // A host-local field in brindle-ipam's section: code 2, naming the field.
    let mut subnet = conf.clone();
    subnet["ipam"]["subnet"] = json!("10.1.0.0/24");
    let out = exec_env(BRINDLE, &subnet, &vars("ADD", &pod, &netns, &path));
    assert_eq!(out.code(), 2);
    assert_eq!(out.json["details"], "ipam.subnet", "{}", out.stdout);

    // No network name: code 7.
    let mut nameless = conf.clone();
    nameless.as_object_mut().unwrap().remove("name");
    assert_eq!(exec_env(BRINDLE, &nameless, &vars("ADD", &pod, &netns, &path)).code(), 7);

    // A network namespace that does not exist: code 3, and nothing allocated.
    let out = exec_env(BRINDLE, &conf, &vars("ADD", &pod, "/var/run/netns/brindle-no-such-netns", &path));
    assert_eq!(out.code(), 3);
    assert!(out.stdout.contains("brindle-no-such-netns"), "{}", out.stdout);

    // An IPAM plugin that is not installed: code 7 naming it.
    let mut missing = conf.clone();
    missing["ipam"] = json!({"type": "no-such-ipam"});
    let out = exec_env(BRINDLE, &missing, &vars("ADD", &pod, &netns, &path));
    assert_eq!(out.code(), 7);
    assert!(out.stdout.contains("no-such-ipam"), "{}", out.stdout);

    // An interface of that name already in the pod: the ADD fails and rolls back.
    pod.netns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]).unwrap();
    let out = node.brindle("ADD", &conf, &pod);
    assert!(out.code() == 999 && out.stdout.contains("already exists"), "{}", out.stdout);
    node.assert_clean();

    // VERSION needs nothing but the command, and answers in the version asked.
    let out = exec_raw(BRINDLE, br#"{"cniVersion":"0.4.0"}"#, &[("CNI_COMMAND", "VERSION")]);
    assert_eq!(out.json["cniVersion"], "0.4.0");
    assert!(out.json["supportedVersions"].as_array().unwrap().contains(&json!("1.1.0")));

    // DEL of something that never existed succeeds (also with the netns gone).
    let out = exec_env(BRINDLE, &conf, &vars("DEL", &pod, "", &path));
    assert!(out.ok, "{}", out.stdout);
    node.assert_clean();
}

fn an_exhausted_pool_rolls_back_and_status_says_so(backend: Backend) {
    let node = Node::new(backend);
    node.apply(
        "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: tiny}\nspec: {cidr: 10.99.0.0/30, blockSize: 30}\n",
    );
    let mut conf = node.conf("1.1.0", false);
    conf["ipam"]["ipv4_pools"] = json!(["tiny"]);
    let status = |conf: &serde_json::Value| -> Outcome { exec_env(BRINDLE, conf, &[("CNI_COMMAND", "STATUS")]) };
    assert!(status(&conf).ok, "{}", status(&conf).stdout);
    let pods: Vec<Pod> = (0..5).map(|i| Pod::new(&format!("full{i}"))).collect();
    for pod in &pods[..4] {
        node.brindle("ADD", &conf, pod).result();
    }
    let out = node.brindle("ADD", &conf, &pods[4]);
    assert_eq!(out.code(), 100, "{}", out.stdout);
    assert!(out.stdout.contains("tiny") || out.stdout.contains("10.99.0.0/30"), "{}", out.stdout);
    assert_eq!(node.allocations(), 4);
    assert_eq!(node.host_veths(), 4);
    // STATUS: no room is "not available" (50); so is the IPAM plugin's STATUS.
    assert_eq!(status(&conf).code(), 50);
    assert_eq!(exec_env(BRINDLE_IPAM, &conf, &[("CNI_COMMAND", "STATUS")]).code(), 50);
    for pod in &pods[..4] {
        node.brindle("DEL", &conf, pod).result();
    }
    node.assert_clean();
}

#[test]
fn input_that_is_not_what_it_claims_is_refused_before_anything_is_allocated() {
    let node = Node::new(Backend::Sqlite);
    let conf = node.conf("1.0.0", false);
    let pod = Pod::new("claims");
    let path = common::cni_path();
    let file = node.scratch.path().join("not-a-netns");
    std::fs::write(&file, "").unwrap();
    let (file, dir) = (file.display().to_string(), node.scratch.path().display().to_string());
    for (netns, what) in
        [(file.as_str(), "a file"), (dir.as_str(), "a directory"), ("/proc/self/ns/uts", "a UTS namespace")]
    {
        let out = exec_env(BRINDLE, &conf, &vars("ADD", &pod, netns, &path));
        assert_eq!(out.code(), 4, "{what}: {}", out.stdout);
        assert_eq!(out.json["details"], "CNI_NETNS", "{what}: {}", out.stdout);
        assert!(out.stdout.contains("is not a network namespace"), "{what}: {}", out.stdout);
    }

    // A container ID the spec forbids (a newline in it).
    let netns = pod.netns.path().display().to_string();
    let mut newline = vars("ADD", &pod, &netns, &path);
    newline[1].1 = "abc\ndef";
    let out = exec_env(BRINDLE, &conf, &newline);
    assert_eq!(out.code(), 4, "{}", out.stdout);
    assert_eq!(out.json["details"], "CNI_CONTAINERID", "{}", out.stdout);

    // A config of 2 MiB is refused without being read whole.
    let mut huge = conf.clone();
    huge["padding"] = json!("x".repeat(2 << 20));
    let out = exec_env(BRINDLE, &huge, &vars("ADD", &pod, &netns, &path));
    assert_eq!(out.code(), 6, "{}", &out.stdout[..out.stdout.len().min(300)]);
    assert!(out.stdout.contains("larger than 1024 KiB"), "{}", out.stdout);

    // Nothing was allocated, not even an address now resting in a cooldown.
    let ipam = brindle_datastore::ipam::Ipam::new(node.client());
    assert!(node.runtime.block_on(ipam.blocks()).unwrap().is_empty(), "IPAM was touched");
    node.assert_clean();
}

#[test]
fn a_pod_name_of_the_longest_kind_gets_an_endpoint() {
    let node = Node::new(Backend::Sqlite);
    let conf = node.conf("1.0.0", false);
    let mut pod = Pod::new("long");
    pod.attachment.pod_name = format!("p{}", "o".repeat(241)) + "d";
    assert_eq!(pod.attachment.pod_name.len(), 243);
    let result = node.brindle("ADD", &conf, &pod).result();
    assert_eq!(node.endpoints(), 1);
    assert!(pod.ping(common::NODE_V4), "the pod cannot reach its node");
    let mut del = conf.clone();
    del["prevResult"] = result;
    node.brindle("DEL", &del, &pod).result();
    node.assert_clean();
}

#[test]
fn an_etcd_outage_is_try_again_later_and_leaves_nothing() {
    let mut node = Node::new(Backend::Etcd);
    let conf = node.conf("1.1.0", false);
    let pod = Pod::new("outage");
    let before = Pod::new("before");
    let running = node.brindle("ADD", &conf, &before).result();
    assert!(running["ips"][0]["address"].is_string());
    let Some(brindle_datastore::testing::TestStore::Etcd(etcd)) = node.store.as_mut() else { unreachable!() };
    etcd.stop();
    let out = node.brindle("ADD", &conf, &pod);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert_eq!(node.host_veths(), 1, "the failed ADD left a veth: {}", node.links());
    let out = exec_env(BRINDLE, &conf, &[("CNI_COMMAND", "STATUS")]);
    assert_eq!(out.code(), 50, "{}", out.stdout);
    let Some(brindle_datastore::testing::TestStore::Etcd(etcd)) = node.store.as_mut() else { unreachable!() };
    etcd.restart().unwrap();
    assert!(exec_env(BRINDLE, &conf, &[("CNI_COMMAND", "STATUS")]).ok);
    assert_eq!(node.allocations(), 1, "the failed ADD leaked an address");
}
