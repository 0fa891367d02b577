//! Services over BGP, as an upstream router sees them: a lab whose nodes peer with BIRD in the
//! lab's router, on the Kubernetes datastore and on etcd beside an API server (the agents read
//! Services and EndpointSlices from the API either way). The service ranges come from every node; a Service
//! with `externalTrafficPolicy: Local` has its cluster IP and LoadBalancer IP advertised as host
//! routes by exactly the nodes with a ready endpoint (EndpointSlices), following the endpoint
//! as it moves and withdrawn when none is ready.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use brindle_e2e::bird::Bird;
use brindle_e2e::lab::{self, Mode, Options, Peering, Store, TestLab};
use brindle_e2e::netns::Netns;
use brindle_e2e::wait::wait_for;

/// `kubectl` against the lab's API server, with `stdin`.
fn kubectl(state: &lab::LabState, args: &[&str], stdin: Option<&str>) -> String {
    state.kubectl(args, stdin).unwrap()
}

/// The next hops BIRD has for exactly `prefix`.
fn next_hops(bird: &Bird, prefix: &str) -> BTreeSet<String> {
    let shown = bird.cli(&format!("show route {prefix}"));
    let mut hops = BTreeSet::new();
    let mut words = shown.split_whitespace();
    while let Some(word) = words.next() {
        if word == "via"
            && let Some(hop) = words.next()
        {
            hops.insert(hop.to_owned());
        }
    }
    hops
}

#[test]
fn service_ranges_come_from_every_node_and_a_local_service_from_the_nodes_that_serve_it() {
    services_over_bgp(Store::Kubernetes);
}

#[test]
fn on_etcd_the_agents_follow_services_in_the_api_server_beside_it() {
    services_over_bgp(Store::EtcdKubernetes);
}

fn services_over_bgp(datastore: Store) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_brindle-lab")).parent().unwrap();
    let options = Options {
        nodes: 3,
        pods_per_node: 0,
        mode: Mode::None,
        peering: Peering::Mesh,
        datastore,
        reflectors: 1,
        iptables: Default::default(),
        ipv6: false,
    };
    let test_lab = TestLab::up("svc", bin_dir, &options).unwrap();
    let state = &test_lab.state;
    let address = |i: usize| state.nodes[i].address.to_string();

    // BIRD in the lab's router (10.250.0.1), a peer of every node. The router is the lab's:
    // its guard must not delete it.
    let router = std::mem::ManuallyDrop::new(Netns { name: state.router.clone() });
    let neighbors: String = (0..3)
        .map(|i| format!("protocol bgp node{i} {{ local as 65001; neighbor {} as 64512; ipv4 {{ import all; export none; }}; }}\n", address(i)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let bird = &Bird::start(&router, dir.path(), &format!("router id 10.250.0.1;\nprotocol device {{}}\n{neighbors}"))
        .unwrap();
    lab::apply(
        state,
        "apiVersion: brindle.io/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n\
         spec: {serviceClusterIPs: [{cidr: 10.96.0.0/16}], serviceLoadBalancerIPs: [{cidr: 192.0.2.0/24}]}\n---\n\
         apiVersion: brindle.io/v1\nkind: BGPPeer\nmetadata: {name: upstream}\nspec: {peerIP: 10.250.0.1, asNumber: 65001}\n",
    )
    .unwrap();
    let every_node: BTreeSet<String> = (0..3).map(address).collect();
    let ranges = wait_for("BIRD to learn the service ranges from every node", Duration::from_secs(30), || {
        next_hops(bird, "10.96.0.0/16") == every_node && next_hops(bird, "192.0.2.0/24") == every_node
    });
    ranges.unwrap_or_else(|e| panic!("{e}: {}", bird.cli("show route")));

    // A LoadBalancer Service with externalTrafficPolicy Local, its endpoint on node-1.
    kubectl(
        state,
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
             spec: {type: LoadBalancer, externalTrafficPolicy: Local, clusterIP: 10.96.0.50, ports: [{port: 80}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: spread, namespace: default}\n\
             spec: {type: LoadBalancer, externalTrafficPolicy: Cluster, clusterIP: 10.96.0.51, ports: [{port: 80}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nports: [{port: 80, protocol: TCP}]\n\
             endpoints: [{addresses: [10.244.1.5], nodeName: node-1, conditions: {ready: true}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: spread-1, namespace: default, labels: {kubernetes.io/service-name: spread}}\n\
             addressType: IPv4\nports: [{port: 80, protocol: TCP}]\n\
             endpoints: [{addresses: [10.244.1.6], nodeName: node-1, conditions: {ready: true}}]\n",
        ),
    );
    let ingress = r#"{"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}"#;
    kubectl(state, &["patch", "service", "web", "--subresource=status", "--type=merge", "-p", ingress], None);
    let only = |i: usize| BTreeSet::from([address(i)]);
    let served_by = |i: usize| {
        let wanted = only(i);
        move || next_hops(bird, "10.96.0.50/32") == wanted && next_hops(bird, "192.0.2.10/32") == wanted
    };
    wait_for("the Service's host routes from node-1 alone", Duration::from_secs(10), served_by(1))
        .unwrap_or_else(|e| panic!("{e}: {}", bird.cli("show route")));
    assert!(next_hops(bird, "10.96.0.51/32").is_empty(), "a Service with externalTrafficPolicy Cluster has none");

    // The endpoint moves to node-2: the routes follow.
    let moved = Instant::now();
    let to_node_2 = r#"[{"op": "replace", "path": "/endpoints/0/nodeName", "value": "node-2"}]"#;
    kubectl(state, &["patch", "endpointslice", "web-1", "--type=json", "-p", to_node_2], None);
    wait_for("the host routes to follow the endpoint to node-2", Duration::from_secs(10), served_by(2))
        .unwrap_or_else(|e| panic!("{e}: {}", bird.cli("show route")));
    println!("the host routes moved to node-2 {:.2} s after the endpoint did", moved.elapsed().as_secs_f64());

    // No ready endpoint: withdrawn from everywhere; the range stays.
    let unready = Instant::now();
    let not_ready = r#"[{"op": "replace", "path": "/endpoints/0/conditions/ready", "value": false}]"#;
    kubectl(state, &["patch", "endpointslice", "web-1", "--type=json", "-p", not_ready], None);
    wait_for("the host routes to be withdrawn", Duration::from_secs(10), || {
        next_hops(bird, "10.96.0.50/32").is_empty() && next_hops(bird, "192.0.2.10/32").is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {}", bird.cli("show route")));
    println!(
        "the host routes were withdrawn {:.2} s after the last endpoint stopped being ready",
        unready.elapsed().as_secs_f64()
    );
    assert_eq!(next_hops(bird, "10.96.0.0/16"), every_node);
}
