//! brindle-controllers against a real kube-apiserver: two replicas, one leading by the Lease,
//! garbage collection that frees the address of a gone Pod and never that of a Pod that
//! exists, the other replica taking over when the leader is killed; on an etcd datastore, Nodes,
//! Namespaces, NetworkPolicies and pods' endpoints following Kubernetes; and a deleted
//! Kubernetes Node leaving a lab's other nodes at once.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use brindle_datastore::Client;
use brindle_datastore::ipam::{AllocateRequest, Allocation, Ipam};
use brindle_datastore::resource::{IpPool, IpamConfiguration, Node, NodeBgp, OrchestratorRef, Resource};
use brindle_datastore::testing::{EtcdServer, KubeApiServer};
use brindle_e2e::process::Process;
use brindle_e2e::wait::wait_for;

/// IPAMConfiguration's leakGracePeriod here: a gone Pod's address comes back after two passes
/// this far apart.
const GRACE: Duration = Duration::from_secs(2);
const LEASE: &str = "3s";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A replica of brindle-controllers named `identity`, logging to `log`; stopped on drop.
fn replica(datastore: &str, identity: &str, extra: &[&str], log: &Path) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_brindle-controllers"))
        .args(["--datastore", datastore, "--identity", identity, "--lease-namespace", "default"])
        .args(["--lease-duration", LEASE, "--gc-interval", "500ms", "--log", "info"])
        .args(extra)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Process(child)
}

fn holder(server: &KubeApiServer) -> String {
    let path = "jsonpath={.spec.holderIdentity}";
    server.kubectl(&["get", "lease", "-n", "default", "brindle-controllers", "-o", path]).unwrap_or_default()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A pod's address as the `brindle` plugin takes it for Pod `default/pod` on node n1.
async fn allocate(ipam: &Ipam, pod: &str) -> IpAddr {
    let holder = Allocation {
        handle: format!("k8s-pod-network.c-{pod}"),
        network: Some("k8s-pod-network".into()),
        endpoint: true,
        node: "n1".into(),
        pod: Some(pod.into()),
        namespace: Some("default".into()),
        ..Allocation::default()
    };
    ipam.allocate(&AllocateRequest { holder, ipv4: 1, ..AllocateRequest::default() }).await.unwrap()[0].ip
}

/// The handle holding `ip`, if any.
async fn held_by(ipam: &Ipam, ip: IpAddr) -> Option<String> {
    let blocks = ipam.blocks().await.unwrap();
    blocks.iter().find(|(b, _)| b.cidr.contains(ip)).and_then(|(b, _)| b.holder(ip)).map(|a| a.handle.clone())
}

#[test]
fn two_replicas_one_frees_the_addresses_of_gone_pods_only_and_the_other_takes_over_when_it_dies() {
    let server = KubeApiServer::start().unwrap();
    let rt = runtime();
    let client =
        rt.block_on(async { Client::new(brindle_datastore::store::connect(&server.selection()).await.unwrap()) });
    let ipam = Ipam::new(client.clone());
    let (alive, gone) = rt.block_on(async {
        client.create(Resource::new("pool", IpPool::new("10.44.0.0/24".parse().unwrap()))).await.unwrap();
        let bgp = NodeBgp { ipv4_address: Some("10.0.0.1/24".parse().unwrap()), ..NodeBgp::default() };
        client.create(Resource::new("n1", Node { bgp: Some(bgp), ..Node::default() })).await.unwrap();
        let config = IpamConfiguration { leak_grace_period: GRACE, ..IpamConfiguration::default() };
        client.create(Resource::new("default", config)).await.unwrap();
        (allocate(&ipam, "alive").await, allocate(&ipam, "gone").await)
    });
    // Pod `alive` exists; neither has a WorkloadEndpoint (its ADD in flight, or a CNI DEL that
    // lost its endpoint): the Pod alone decides.
    let scratch = tempfile::tempdir().unwrap();
    let pod = scratch.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: default}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: alive, namespace: default}\n\
         spec: {nodeName: n1, containers: [{name: c, image: c}]}\n",
    )
    .unwrap();
    server.kubectl(&["create", "-f", &pod.display().to_string()]).unwrap();

    let (log_a, log_b) = (scratch.path().join("a.log"), scratch.path().join("b.log"));
    let mut a = replica(&server.selection(), "replica-a", &[], &log_a);
    wait_for("replica-a to take the lease", Duration::from_secs(30), || holder(&server) == "replica-a")
        .unwrap_or_else(|e| panic!("{e}: {}", log_of(&log_a)));
    let b = replica(&server.selection(), "replica-b", &[], &log_b);

    let started = Instant::now();
    let freed = wait_for("the gone Pod's address to be freed", Duration::from_secs(30), || {
        rt.block_on(held_by(&ipam, gone)).is_none()
    });
    freed.unwrap_or_else(|e| panic!("{e}: {}", log_of(&log_a)));
    println!(
        "a gone Pod's address was freed {:.1} s after the leader started (grace period {GRACE:?})",
        started.elapsed().as_secs_f64()
    );
    // Passes go on, long past the grace period: the Pod that exists keeps its address.
    std::thread::sleep(3 * GRACE);
    assert_eq!(rt.block_on(held_by(&ipam, alive)).as_deref(), Some("k8s-pod-network.c-alive"), "{}", log_of(&log_a));
    assert!(log_of(&log_a).contains("leading"), "{}", log_of(&log_a));
    assert!(!log_of(&log_b).contains("leading"), "only one replica leads: {}", log_of(&log_b));

    // The leader dies without a word; the other takes the lease once it expires, and works.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let killed = Instant::now();
    wait_for("replica-b to take the lease", Duration::from_secs(30), || holder(&server) == "replica-b")
        .unwrap_or_else(|e| panic!("{e}: {}", log_of(&log_b)));
    println!("replica-b took over {:.1} s after replica-a was killed (lease {LEASE})", killed.elapsed().as_secs_f64());
    let gone_too = rt.block_on(allocate(&ipam, "gone-too"));
    let freed = wait_for("replica-b to free another gone Pod's address", Duration::from_secs(30), || {
        rt.block_on(held_by(&ipam, gone_too)).is_none()
    });
    freed.unwrap_or_else(|e| panic!("{e}: {}", log_of(&log_b)));
    assert!(rt.block_on(held_by(&ipam, alive)).is_some());

    // Stopped, a leader gives the lease up at once rather than letting it expire.
    let pid = b.keep();
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    wait_for("replica-b to give the lease up", Duration::from_secs(5), || holder(&server).is_empty())
        .unwrap_or_else(|e| panic!("{e}: {}", log_of(&log_b)));
    wait_for("replica-b to exit", Duration::from_secs(5), || !brindle_e2e::process::alive(pid)).unwrap();
}

#[test]
fn on_etcd_the_datastore_follows_kubernetes_nodes_namespaces_policies_and_pod_labels() {
    use brindle_datastore::resource::{KubernetesNetworkPolicy, Namespace, WorkloadEndpoint};
    let server = KubeApiServer::start().unwrap();
    let etcd = EtcdServer::start().unwrap();
    let rt = runtime();
    let client =
        rt.block_on(async { Client::new(brindle_datastore::store::connect(&etcd.selection()).await.unwrap()) });
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    // What the datastore has before: nodes registered by their agents (and one that is no
    // Kubernetes Node), a pod's endpoint as the CNI plugin wrote it, a namespace applied by hand.
    rt.block_on(async {
        let mut n1 = Resource::new("n1", Node::default());
        n1.metadata.labels = labels(&[("route-reflector", "true")]);
        client.create(n1).await.unwrap();
        client.create(Resource::new("bare-metal-router", Node::default())).await.unwrap();
        client.create(brindle_datastore::testing::pod_endpoint("n1", "team-a", "web", &[])).await.unwrap();
        client.create(Resource::new("by-hand", Namespace::default())).await.unwrap();
    });
    let scratch = tempfile::tempdir().unwrap();
    let objects = scratch.path().join("objects.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {zone: a}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {team: a}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot, namespace: team-a}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team-a, labels: {app: web}}\n\
         spec: {nodeName: n1, serviceAccountName: robot, containers: [{name: c, image: c}]}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: team-a}\n\
         spec: {podSelector: {}}\n",
    )
    .unwrap();
    server.kubectl(&["create", "-f", &objects.display().to_string()]).unwrap();

    let log = scratch.path().join("controllers.log");
    let kubeconfig = server.kubeconfig().display().to_string();
    let _replica = replica(&etcd.selection(), "replica-a", &["--kubeconfig", &kubeconfig], &log);
    let follows = |what: &str, check: &mut dyn FnMut() -> bool| {
        wait_for(what, Duration::from_secs(10), check).unwrap_or_else(|e| panic!("{e}: {}", log_of(&log)));
    };
    let node_labels = || rt.block_on(client.find::<Node>(None, "n1")).unwrap().map(|n| n.metadata.labels);
    let endpoint = || rt.block_on(client.find::<WorkloadEndpoint>(Some("team-a"), "n1-k8s-web-eth0")).unwrap().unwrap();
    let namespace_labels =
        |name: &str| rt.block_on(client.find::<Namespace>(None, name)).unwrap().map(|n| n.metadata.labels);
    let policy = || rt.block_on(client.find::<KubernetesNetworkPolicy>(Some("team-a"), "deny-all")).unwrap();

    follows("n1 to take its Kubernetes Node's labels", &mut || {
        node_labels() == Some(labels(&[("route-reflector", "true"), ("zone", "a")]))
    });
    let n1 = rt.block_on(client.get::<Node>(None, "n1")).unwrap();
    assert_eq!(n1.spec.orchestrator_refs, [OrchestratorRef::kubernetes("n1")]);
    follows("the endpoint to take its Pod's labels and account", &mut || {
        let e = endpoint();
        e.metadata.labels == labels(&[("app", "web")]) && e.spec.service_account_name.as_deref() == Some("robot")
    });
    // Kubernetes labels every namespace with its name, and selectors may use that too.
    let team = |t: &str| Some(labels(&[("kubernetes.io/metadata.name", "team-a"), ("team", t)]));
    follows("the namespace to be mirrored", &mut || namespace_labels("team-a") == team("a"));
    follows("the NetworkPolicy to be mirrored", &mut || policy().is_some());

    // kubectl changes, followed.
    server.kubectl(&["label", "node", "n1", "zone=b", "rack=7", "--overwrite"]).unwrap();
    server.kubectl(&["label", "pod", "-n", "team-a", "web", "app=db", "--overwrite"]).unwrap();
    server.kubectl(&["label", "namespace", "team-a", "team=b", "--overwrite"]).unwrap();
    server.kubectl(&["delete", "networkpolicy", "-n", "team-a", "deny-all"]).unwrap();
    follows("n1 to follow a relabel", &mut || {
        node_labels() == Some(labels(&[("rack", "7"), ("route-reflector", "true"), ("zone", "b")]))
    });
    follows("the endpoint to follow its Pod's relabel", &mut || endpoint().metadata.labels == labels(&[("app", "db")]));
    follows("the namespace to follow a relabel", &mut || namespace_labels("team-a") == team("b"));
    follows("the deleted NetworkPolicy to go", &mut || policy().is_none());
    server.kubectl(&["label", "node", "n1", "zone-"]).unwrap();
    follows("n1 to lose a label removed in Kubernetes", &mut || {
        node_labels() == Some(labels(&[("rack", "7"), ("route-reflector", "true")]))
    });

    server.kubectl(&["delete", "node", "n1"]).unwrap();
    follows("n1 to go with its Kubernetes Node", &mut || node_labels().is_none());
    let bare = rt.block_on(client.find::<Node>(None, "bare-metal-router")).unwrap();
    assert!(bare.is_some(), "a node that was never a Kubernetes Node stays");
    assert!(namespace_labels("by-hand").is_some(), "a namespace applied by hand stays");
}

/// `command` in network namespace `netns`; its stdout.
fn in_netns(netns: &str, command: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", netns]).args(command).output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_deleted_kubernetes_node_leaves_the_other_nodes_at_once_and_its_addresses_come_back() {
    a_deleted_node_leaves(brindle_e2e::lab::Store::Kubernetes);
}

/// The same with brindle's state in etcd: the lab's brindle-controllers deletes the node's
/// brindle Node with its Kubernetes Node (the node registered after its Kubernetes Node, and
/// was given its reference at once).
#[test]
fn on_etcd_a_deleted_kubernetes_node_leaves_the_other_nodes_at_once_too() {
    a_deleted_node_leaves(brindle_e2e::lab::Store::EtcdKubernetes);
}

fn a_deleted_node_leaves(datastore: brindle_e2e::lab::Store) {
    use brindle_e2e::lab::{Mode, Options, Peering, TestLab, agent_status, with_client};
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_brindle-controllers")).parent().unwrap();
    let options = Options {
        nodes: 3,
        pods_per_node: 1,
        mode: Mode::Vxlan,
        peering: Peering::Mesh,
        datastore,
        reflectors: 1,
        iptables: Default::default(),
        ipv6: false,
    };
    let lab = TestLab::up("ctn", bin_dir, &options).unwrap();
    let state = &lab.state;
    let (leaving, staying) = (&state.nodes[2], &state.nodes[..2]);
    let leaving_pod = state.pods.iter().find(|p| p.node == 2).unwrap().ip.parse::<IpAddr>().unwrap();
    let vtep = with_client(state, |client| {
        let name = leaving.name.clone();
        async move { Ok(client.get::<Node>(None, &name).await?.spec) }
    })
    .unwrap();
    let (tunnel, mac) = (vtep.ipv4_vxlan_tunnel_addr.unwrap().to_string(), vtep.vxlan_tunnel_mac_addr.unwrap());
    // What a staying node has of the leaving one: a BGP session, a route to its block through
    // its tunnel address, its VTEP's ARP and FDB entries.
    let traces = |netns: &str| -> Vec<&'static str> {
        let mut found = Vec::new();
        if in_netns(netns, &["ip", "route", "show", "proto", "98"]).contains(&format!("via {tunnel} ")) {
            found.push("route");
        }
        if in_netns(netns, &["ip", "neigh", "show", "dev", "vxlan.brindle"]).contains(&format!("{tunnel} ")) {
            found.push("ARP entry");
        }
        if in_netns(netns, &["bridge", "fdb", "show", "dev", "vxlan.brindle"]).contains(&mac) {
            found.push("FDB entry");
        }
        found
    };
    let peers = |node: &brindle_e2e::lab::LabNode| {
        agent_status(&node.status_socket())["bgp"]["peers"].as_array().map_or(0, Vec::len)
    };
    for node in staying {
        assert_eq!(traces(&node.netns), ["route", "ARP entry", "FDB entry"], "{}", node.name);
        assert_eq!(peers(node), 2, "{}", node.name);
    }

    // The machine is gone (its agent with it), and its Kubernetes Node is deleted.
    assert!(brindle_e2e::process::terminate(leaving.agent_pid, "brindle-node"));
    state.kubectl(&["delete", "node", &leaving.name], None).unwrap();
    let deleted = Instant::now();
    for node in staying {
        let dropped = wait_for("the leaving node to be dropped", Duration::from_secs(10), || {
            traces(&node.netns).is_empty() && peers(node) == 1
        });
        dropped.unwrap_or_else(|e| {
            panic!("{e}: {} still has {:?}, {} peers", node.name, traces(&node.netns), peers(node))
        });
    }
    println!("the other nodes dropped the deleted node {:.2} s after its deletion", deleted.elapsed().as_secs_f64());

    // brindle-controllers gives its block and its pod's address back after the grace period.
    with_client(state, |client| async move {
        let config = IpamConfiguration { leak_grace_period: GRACE, ..IpamConfiguration::default() };
        match client.find::<IpamConfiguration>(None, "default").await? {
            Some(mut existing) => {
                existing.spec = config;
                client.update(existing).await?
            }
            None => client.create(Resource::new("default", config)).await?,
        };
        Ok(())
    })
    .unwrap();
    // In place of the lab's own replica (on etcd), one that collects every half second.
    if let Some(pid) = state.controllers_pid {
        assert!(brindle_e2e::process::terminate(pid, "brindle-controllers"), "the lab's brindle-controllers ran");
    }
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("controllers.log");
    let controllers = Command::new("ip")
        .args(["netns", "exec", &state.router, env!("CARGO_BIN_EXE_brindle-controllers")])
        .args(["--datastore", &state.datastore, "--lease-namespace", "default", "--gc-interval", "500ms"])
        .args(["--kubeconfig", state.kubeconfig().unwrap()])
        .args(["--log", "info"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _controllers = Process(controllers);
    let leaving_name = leaving.name.clone();
    let returned = wait_for("the deleted node's block and address to come back", Duration::from_secs(30), || {
        let name = leaving_name.clone();
        with_client(state, move |client| async move {
            let blocks = Ipam::new(client).blocks().await?;
            let owned = blocks.iter().any(|(b, _)| b.owner.as_deref() == Some(name.as_str()));
            let held = blocks.iter().any(|(b, _)| b.holder(leaving_pod).is_some());
            Ok(!owned && !held)
        })
        .unwrap()
    });
    returned.unwrap_or_else(|e| panic!("{e}: {}", log_of(&log)));
}
