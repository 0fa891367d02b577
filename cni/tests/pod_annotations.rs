//! Pods that choose their addresses with annotations, as Calico users do, on the Kubernetes
//! datastore with the Pods and namespaces in a real API server: pools named on the Pod or its
//! namespace, a fixed address (refused with a precise CNI error, and nothing left behind, when
//! it is taken or outside every pool), and an address outside IPAM only where the network
//! config allows it.

mod common;

use brindle_datastore::testing::{Backend, KubeApiServer, TestStore};
use common::{Expect, Node, Pod};
use serde_json::Value;

fn api(node: &Node) -> &KubeApiServer {
    match node.store.as_ref() {
        Some(TestStore::Kubernetes(server)) => server,
        other => panic!("a Kubernetes datastore, not {other:?}"),
    }
}

/// Creates `yaml` in the API server.
fn create(node: &Node, yaml: &str) {
    let file = node.scratch.path().join(format!("object-{}.yaml", brindle_e2e::netns::unique()));
    std::fs::write(&file, yaml).unwrap();
    api(node).kubectl(&["create", "-f", &file.display().to_string()]).unwrap();
}

/// A pod in `namespace` whose Pod carries `annotations` (a YAML flow mapping).
fn pod(node: &Node, name: &str, namespace: &str, annotations: &str) -> Pod {
    let mut pod = Pod::new(name);
    pod.attachment.pod_namespace = namespace.into();
    create(
        node,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {namespace}, annotations: {annotations}}}\n\
             spec: {{nodeName: {}, containers: [{{name: c, image: c}}]}}\n",
            pod.attachment.pod_name, node.name
        ),
    );
    pod
}

fn address(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned()
}

#[test]
fn pods_choose_pools_and_addresses_with_annotations() {
    let node = Node::new(Backend::Kubernetes);
    node.apply("kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: blue}\nspec: {cidr: 10.77.0.0/24}\n");
    for namespace in ["default", "pinned"] {
        let annotations = if namespace == "pinned" { r#"{brindle.io/ipv4pools: '["blue"]'}"# } else { "{}" };
        let namespace_yaml =
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, annotations: {annotations}}}\n");
        if namespace != "default" {
            create(&node, &namespace_yaml);
        }
        create(
            &node,
            &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {namespace}}}\n"),
        );
    }
    let conf = node.conf("1.0.0", false);
    let mut added = Vec::new();
    let mut add = |pod: Pod, conf: &Value| -> String {
        let result = node.brindle("ADD", conf, &pod).result();
        let ip = address(&result);
        added.push((pod, result));
        ip
    };

    // Pools by name, on the Pod, or on its namespace.
    let ip = add(pod(&node, "blue", "default", r#"{brindle.io/ipv4pools: '["blue"]'}"#), &conf);
    assert!(ip.starts_with("10.77.0."), "the Pod's pool: {ip}");
    let ip = add(pod(&node, "pinned", "pinned", "{}"), &conf);
    assert!(ip.starts_with("10.77.0."), "the namespace's pool: {ip}");
    let ip = add(pod(&node, "override", "pinned", r#"{brindle.io/ipv4pools: '["10.244.0.0/16"]'}"#), &conf);
    assert!(ip.starts_with("10.244."), "the Pod's pool wins over its namespace's: {ip}");

    // A fixed address; asked for again by another pod, refused with code 102 and nothing left.
    let fixed = r#"{brindle.io/ipAddrs: '["10.244.9.9"]'}"#;
    assert_eq!(add(pod(&node, "fixed", "default", fixed), &conf), "10.244.9.9");
    let (veths, allocations, endpoints) = (node.host_veths(), node.allocations(), node.endpoints());
    let twin = pod(&node, "twin", "default", fixed);
    let refused = node.brindle("ADD", &conf, &twin);
    assert_eq!(refused.code(), 102, "{}", refused.stdout);
    assert!(
        refused.json["msg"].as_str().unwrap().contains("10.244.9.9 is already taken by k8s-pod-network."),
        "{}",
        refused.stdout
    );
    // Outside every pool: code 7, naming the annotation.
    let outside =
        node.brindle("ADD", &conf, &pod(&node, "outside", "default", r#"{brindle.io/ipAddrs: '["10.99.0.1"]'}"#));
    assert_eq!(outside.code(), 7);
    assert_eq!(outside.json["details"], "brindle.io/ipAddrs");
    assert!(outside.json["msg"].as_str().unwrap().contains("10.99.0.1 is in no enabled IPPool"), "{}", outside.stdout);
    assert_eq!(
        (node.host_veths(), node.allocations(), node.endpoints()),
        (veths, allocations, endpoints),
        "a refused ADD leaves nothing"
    );

    // Outside IPAM: only where the network config allows it.
    let unmanaged = r#"{brindle.io/ipAddrsNoIpam: '["10.123.0.5"]'}"#;
    let forbidden = node.brindle("ADD", &conf, &pod(&node, "unmanaged", "default", unmanaged));
    assert_eq!(forbidden.code(), 7);
    assert!(
        forbidden.json["msg"].as_str().unwrap().contains("feature_control.ip_addrs_no_ipam"),
        "{}",
        forbidden.stdout
    );
    let mut allowing = conf.clone();
    allowing["feature_control"] = serde_json::json!({"ip_addrs_no_ipam": true});
    let allocations = node.allocations();
    assert_eq!(add(pod(&node, "unmanaged-ok", "default", unmanaged), &allowing), "10.123.0.5");
    assert_eq!(node.allocations(), allocations, "IPAM gave nothing for it");

    for (pod, result) in &added {
        let mut del = conf.clone();
        del["prevResult"] = result.clone();
        node.brindle("DEL", &del, pod).result();
    }
    node.assert_clean();
}
