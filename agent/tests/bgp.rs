//! The agent with its embedded BGP speaker: a node-to-node mesh whose learned routes become
//! the kernel's routes to other nodes' blocks.

mod common;

use std::time::Duration;

use common::Cluster;

#[test]
fn a_three_node_mesh_routes_pods_by_bgp() {
    let yaml = "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n";
    let mut cluster = Cluster::new(&["10.250.0.0/24"], &[(0, 10), (0, 11), (0, 12)], yaml);
    cluster.agent_args = vec!["--bgp".into(), "embedded".into()];
    cluster.start_all();
    for i in 0..3 {
        cluster.add_pod(i, |_| {});
    }
    // Each node learns the two other nodes' blocks over BGP.
    for i in 0..3 {
        cluster.eventually(Duration::from_secs(15), &format!("node {i} learns two blocks"), || {
            cluster.http(i, 9091, "/metrics").contains("brindle_bgp_routes_learned 2")
        });
    }
    let failing = cluster.reachability(Duration::from_secs(10));
    assert!(failing.is_empty(), "pod pairs that cannot talk: {failing:?}\n{}", cluster.agent_log(0));
    // The kernel's routes match the other nodes' blocks, each via its node.
    let routes = cluster.ip(0, &["route", "show", "proto", "98"]);
    for other in [1, 2] {
        let via = format!("via {} dev eth0", cluster.nodes[other].address);
        assert_eq!(routes.lines().filter(|l| l.contains(&via)).count(), 1, "{routes}");
    }
}
