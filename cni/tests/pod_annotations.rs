//! Pods that choose their addresses with annotations, as Calico users do, with the Pods and
//! namespaces in a real API server: pools named on the Pod or its namespace, a fixed address
//! (refused with a precise CNI error, and nothing left behind, when it is taken or outside
//! every pool), and an address outside IPAM only where the network config allows it. On the
//! Kubernetes datastore, and on etcd with the API server beside it (the conflist's
//! `kubernetes.kubeconfig`), where the endpoint takes its Pod's labels from the ADD on.

mod common;

use brindle_datastore::resource::WorkloadEndpoint;
use brindle_datastore::testing::{Backend, KubeApiServer, TestStore};
use common::{Expect, Node, Pod};
use serde_json::Value;

/// A node and the API server that holds its Pods.
struct Cluster {
    node: Node,
    /// The API server beside a datastore that is not Kubernetes.
    beside: Option<KubeApiServer>,
}

impl Cluster {
    fn new(backend: Backend) -> Cluster {
        let node = Node::new(backend);
        let beside = (backend != Backend::Kubernetes).then(|| KubeApiServer::start().unwrap());
        Cluster { node, beside }
    }

    fn api(&self) -> &KubeApiServer {
        match (&self.beside, self.node.store.as_ref()) {
            (Some(server), _) => server,
            (None, Some(TestStore::Kubernetes(server))) => server,
            (None, other) => panic!("no Kubernetes API: {other:?}"),
        }
    }

    /// The network config, naming the API server where it is not the datastore.
    fn conf(&self) -> Value {
        let mut conf = self.node.conf("1.0.0", false);
        if let Some(server) = &self.beside {
            conf["kubernetes"] = serde_json::json!({"kubeconfig": server.kubeconfig()});
        }
        conf
    }

    /// Creates `yaml` in the API server.
    fn create(&self, yaml: &str) {
        let file = self.node.scratch.path().join(format!("object-{}.yaml", brindle_e2e::netns::unique()));
        std::fs::write(&file, yaml).unwrap();
        self.api().kubectl(&["create", "-f", &file.display().to_string()]).unwrap();
    }

    /// A pod in `namespace` whose Pod carries `annotations` (a YAML flow mapping) and the
    /// label `pod: NAME`.
    fn pod(&self, name: &str, namespace: &str, annotations: &str) -> Pod {
        let mut pod = Pod::new(name);
        pod.attachment.pod_namespace = namespace.into();
        self.create(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {namespace}, labels: {{pod: {name}}}, \
             annotations: {annotations}}}\nspec: {{nodeName: {}, containers: [{{name: c, image: c}}]}}\n",
            pod.attachment.pod_name, self.node.name
        ));
        pod
    }

    /// The labels of Pod `name`'s endpoint.
    fn endpoint_labels(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        let client = self.node.client();
        let (endpoints, _) = self.node.runtime.block_on(client.list::<WorkloadEndpoint>()).unwrap();
        let endpoint = endpoints.into_iter().find(|e| e.spec.pod == name).expect("its endpoint");
        endpoint.metadata.labels
    }
}

fn address(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned()
}

#[test]
fn pods_choose_pools_and_addresses_with_annotations() {
    pods_choose_pools_and_addresses(Backend::Kubernetes);
}

#[test]
fn on_etcd_the_plugin_reads_pods_from_the_api_server_beside_it() {
    pods_choose_pools_and_addresses(Backend::Etcd);
}

fn pods_choose_pools_and_addresses(backend: Backend) {
    let cluster = Cluster::new(backend);
    let node = &cluster.node;
    node.apply("kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: blue}\nspec: {cidr: 10.77.0.0/24}\n");
    for namespace in ["default", "pinned"] {
        let annotations = if namespace == "pinned" { r#"{brindle.io/ipv4pools: '["blue"]'}"# } else { "{}" };
        let namespace_yaml =
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, annotations: {annotations}}}\n");
        if namespace != "default" {
            cluster.create(&namespace_yaml);
        }
        cluster.create(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {namespace}}}\n"
        ));
    }
    let conf = cluster.conf();
    let mut added = Vec::new();
    let mut add = |pod: Pod, conf: &Value| -> String {
        let result = node.brindle("ADD", conf, &pod).result();
        let ip = address(&result);
        added.push((pod, result));
        ip
    };

    // Pools by name, on the Pod, or on its namespace.
    let blue = cluster.pod("blue", "default", r#"{brindle.io/ipv4pools: '["blue"]'}"#);
    let blue_name = blue.attachment.pod_name.clone();
    let ip = add(blue, &conf);
    assert!(ip.starts_with("10.77.0."), "the Pod's pool: {ip}");
    assert_eq!(cluster.endpoint_labels(&blue_name).get("pod").map(String::as_str), Some("blue"), "the Pod's labels");
    let ip = add(cluster.pod("pinned", "pinned", "{}"), &conf);
    assert!(ip.starts_with("10.77.0."), "the namespace's pool: {ip}");
    let ip = add(cluster.pod("override", "pinned", r#"{brindle.io/ipv4pools: '["10.244.0.0/16"]'}"#), &conf);
    assert!(ip.starts_with("10.244."), "the Pod's pool wins over its namespace's: {ip}");

    // A fixed address; asked for again by another pod, refused with code 102 and nothing left.
    let fixed = r#"{brindle.io/ipAddrs: '["10.244.9.9"]'}"#;
    assert_eq!(add(cluster.pod("fixed", "default", fixed), &conf), "10.244.9.9");
    let (veths, allocations, endpoints) = (node.host_veths(), node.allocations(), node.endpoints());
    let twin = cluster.pod("twin", "default", fixed);
    let refused = node.brindle("ADD", &conf, &twin);
    assert_eq!(refused.code(), 102, "{}", refused.stdout);
    assert!(
        refused.json["msg"].as_str().unwrap().contains("10.244.9.9 is already taken by k8s-pod-network."),
        "{}",
        refused.stdout
    );
    // Outside every pool: code 7, naming the annotation.
    let outside =
        node.brindle("ADD", &conf, &cluster.pod("outside", "default", r#"{brindle.io/ipAddrs: '["10.99.0.1"]'}"#));
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
    let forbidden = node.brindle("ADD", &conf, &cluster.pod("unmanaged", "default", unmanaged));
    assert_eq!(forbidden.code(), 7);
    assert!(
        forbidden.json["msg"].as_str().unwrap().contains("feature_control.ip_addrs_no_ipam"),
        "{}",
        forbidden.stdout
    );
    let mut allowing = conf.clone();
    allowing["feature_control"] = serde_json::json!({"ip_addrs_no_ipam": true});
    let allocations = node.allocations();
    assert_eq!(add(cluster.pod("unmanaged-ok", "default", unmanaged), &allowing), "10.123.0.5");
    assert_eq!(node.allocations(), allocations, "IPAM gave nothing for it");

    for (pod, result) in &added {
        let mut del = conf.clone();
        del["prevResult"] = result.clone();
        node.brindle("DEL", &del, pod).result();
    }
    node.assert_clean();
}
