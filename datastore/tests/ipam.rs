//! Block IPAM semantics on both backends.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use brindle_datastore::ipam::{AllocateRequest, Allocation, AllocationKind, GcOutcome, Ipam, LeakOutcome, NodeOutcome};
use brindle_datastore::resource::{IpPool, IpamConfiguration, Node, Resource, WorkloadEndpoint};
use brindle_datastore::testing::{Backend, TestStore};
use brindle_datastore::{Client, Error};

per_backend!(
    allocate_fills_own_block_then_claims_another,
    release_by_handle_and_by_address,
    borrows_when_no_block_is_free_unless_strict,
    exhaustion_names_the_pool,
    node_selector_and_disabled_pools,
    released_addresses_return_in_fifo_order_after_the_cooldown,
    dual_stack_and_rollback,
    gc_frees_a_planted_orphan_only_after_two_passes_a_grace_period_apart,
    release_leaves_an_address_that_changed_hands_or_found_its_holder,
    a_deleted_nodes_addresses_come_back_to_the_pool,
    an_unowned_block_is_deleted_only_after_its_addresses_rested,
    tunnel_address_is_stable,
    clients_of_one_node_with_stale_caches_claim_without_listing_and_never_overclaim,
    a_nodes_first_allocation_reads_only_its_own_blocks_where_the_store_can_pick_them_out,
    a_client_that_knows_only_its_nodes_blocks_lists_them_all_when_its_claims_collide,
    a_client_that_knows_only_its_nodes_blocks_claims_an_unowned_block_in_its_way,
);

struct Fixture {
    _server: TestStore,
    client: Client,
    ipam: Ipam,
}

async fn fixture(backend: Backend, pools: &[(&str, &str, u8)]) -> Fixture {
    let (server, store) = common::open(backend).await;
    let client = Client::new(store);
    for (name, cidr, block_size) in pools {
        let mut pool = IpPool::new(cidr.parse().unwrap());
        pool.block_size = Some(*block_size);
        client.create(Resource::new(*name, pool)).await.unwrap();
    }
    let ipam = Ipam::new(client.clone());
    Fixture { _server: server, client, ipam }
}

/// A pod's address as the `brindle` plugin takes it: handle `<network>.<container>`, an
/// endpoint expected.
fn holder(handle: &str, node: &str) -> Allocation {
    Allocation {
        handle: handle.into(),
        network: handle.split_once('.').map(|(network, _)| network.into()),
        endpoint: true,
        kind: AllocationKind::Workload,
        node: node.into(),
        pod: Some(format!("pod-{handle}")),
        namespace: Some("default".into()),
        ..Allocation::default()
    }
}

fn v4(handle: &str, node: &str) -> AllocateRequest {
    AllocateRequest { holder: holder(handle, node), ipv4: 1, ..AllocateRequest::default() }
}

async fn one(ipam: &Ipam, request: &AllocateRequest) -> IpAddr {
    let got = ipam.allocate(request).await.unwrap_or_else(|e| panic!("allocate {}: {e}", request.holder.handle));
    assert_eq!(got.len(), 1);
    got[0].ip
}

/// The /30 an IPv4 address lies in: its block in the tests' pools of /30 blocks.
fn block_30(ip: IpAddr) -> std::net::Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => ipnetwork::Ipv4Network::new(v4, 30).unwrap().network(),
        IpAddr::V6(_) => unreachable!("an IPv4 pool"),
    }
}

async fn set_config(client: &Client, config: IpamConfiguration) {
    client.create(Resource::new("default", config)).await.unwrap();
}

async fn owners(ipam: &Ipam) -> BTreeMap<String, Option<String>> {
    ipam.blocks().await.unwrap().into_iter().map(|(b, _)| (b.cidr.to_string(), b.owner.clone())).collect()
}

async fn allocate_fills_own_block_then_claims_another(backend: Backend) {
    let f = fixture(backend, &[("p", "10.10.0.0/24", 30)]).await;
    let mut ips = Vec::new();
    for i in 0..5 {
        ips.push(one(&f.ipam, &v4(&format!("net.c{i}"), "n1")).await);
    }
    let blocks = f.ipam.blocks().await.unwrap();
    assert_eq!(blocks.len(), 2, "four addresses fill a /30, the fifth claims a second block");
    assert!(blocks.iter().all(|(b, _)| b.owner.as_deref() == Some("n1")));
    let first_block = blocks.iter().find(|(b, _)| b.in_use() == 4).unwrap().0.cidr;
    assert!(ips[..4].iter().all(|ip| first_block.contains(*ip)), "{ips:?} fill {first_block} first");
    let second = Ipam::new(f.client.clone());
    let next = one(&second, &v4("net.c5", "n1")).await;
    assert!(!first_block.contains(next), "a second client also fills the node's open block");
    assert_eq!(f.ipam.blocks().await.unwrap().len(), 2);
}

async fn release_by_handle_and_by_address(backend: Backend) {
    let f = fixture(backend, &[("p", "10.11.0.0/24", 26)]).await;
    let a = one(&f.ipam, &v4("net.a", "n1")).await;
    let b = one(&f.ipam, &v4("net.b", "n1")).await;
    assert_eq!(f.ipam.release_handle("net.a").await.unwrap(), vec![a]);
    assert!(f.ipam.release_handle("net.a").await.unwrap().is_empty(), "a second release finds nothing");
    let released = f.ipam.release_ips(&[b, "10.11.0.99".parse().unwrap()]).await.unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!((released[0].0, released[0].1.handle.as_str()), (b, "net.b"));
    let blocks = f.ipam.blocks().await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert!(blocks[0].0.is_empty());
    assert_eq!(blocks[0].0.owner.as_deref(), Some("n1"), "the node keeps its empty block");
}

async fn borrows_when_no_block_is_free_unless_strict(backend: Backend) {
    // Two /30 blocks in the pool: n1 and n2 take one each.
    let f = fixture(backend, &[("p", "10.12.0.0/29", 30)]).await;
    one(&f.ipam, &v4("net.n2-0", "n2")).await;
    let n2_block = f.ipam.blocks().await.unwrap()[0].0.cidr;
    for i in 0..4 {
        one(&f.ipam, &v4(&format!("net.n1-{i}"), "n1")).await;
    }
    let borrowed = one(&f.ipam, &v4("net.n1-4", "n1")).await;
    assert!(n2_block.contains(borrowed), "{borrowed} is borrowed from n2's {n2_block}");
    assert_eq!(
        owners(&f.ipam).await[&n2_block.to_string()].as_deref(),
        Some("n2"),
        "borrowing does not move the block"
    );
    let holder = f.ipam.blocks().await.unwrap().into_iter().find(|(b, _)| b.cidr == n2_block).unwrap().0;
    assert_eq!(holder.holder(borrowed).unwrap().node, "n1");

    set_config(&f.client, IpamConfiguration { strict_affinity: true, ..IpamConfiguration::default() }).await;
    let err = f.ipam.allocate(&v4("net.n1-5", "n1")).await.unwrap_err();
    assert!(matches!(err, Error::Exhausted(_)), "{err}");
    assert!(err.to_string().contains("strict affinity forbids borrowing"), "{err}");
}

async fn exhaustion_names_the_pool(backend: Backend) {
    let f = fixture(backend, &[("tiny", "10.13.0.0/30", 30)]).await;
    for i in 0..4 {
        one(&f.ipam, &v4(&format!("net.{i}"), "n1")).await;
    }
    let err = f.ipam.allocate(&v4("net.4", "n1")).await.unwrap_err();
    assert!(matches!(err, Error::Exhausted(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "no free address for node \"n1\" (no block has a free address): IPPool \"tiny\" (10.13.0.0/30): 1 of 1 blocks claimed"
    );
}

async fn node_selector_and_disabled_pools(backend: Backend) {
    let f = fixture(backend, &[]).await;
    let mut zoned = IpPool::new("10.14.0.0/24".parse().unwrap());
    zoned.node_selector = "zone == \"a\"".into();
    f.client.create(Resource::new("zone-a", zoned)).await.unwrap();
    let mut off = IpPool::new("10.15.0.0/24".parse().unwrap());
    off.disabled = true;
    f.client.create(Resource::new("off", off)).await.unwrap();
    f.client.create(Resource::new("everyone", IpPool::new("10.16.0.0/24".parse().unwrap()))).await.unwrap();
    let mut node = Resource::new("nb", Node::default());
    node.metadata.labels.insert("zone".into(), "b".into());
    f.client.create(node).await.unwrap();
    let mut node = Resource::new("na", Node::default());
    node.metadata.labels.insert("zone".into(), "a".into());
    f.client.create(node).await.unwrap();

    for i in 0..10 {
        let ip = one(&f.ipam, &v4(&format!("net.b{i}"), "nb")).await;
        assert!(
            "10.16.0.0/24".parse::<ipnetwork::IpNetwork>().unwrap().contains(ip),
            "{ip}: only the pool that selects nb, never the disabled one"
        );
    }
    let mut request = v4("net.x", "nb");
    request.ipv4_pools = vec!["zone-a".into()];
    let err = f.ipam.allocate(&request).await.unwrap_err().to_string();
    assert!(err.contains("IPPool \"zone-a\" (10.14.0.0/24) does not select node \"nb\""), "{err}");
    request.ipv4_pools = vec!["10.15.0.0/24".into()];
    let err = f.ipam.allocate(&request).await.unwrap_err().to_string();
    assert!(err.contains("IPPool \"off\" (10.15.0.0/24) is disabled"), "{err}");
    let mut request = v4("net.a", "na");
    request.ipv4_pools = vec!["zone-a".into()];
    let ip = one(&f.ipam, &request).await;
    assert!("10.14.0.0/24".parse::<ipnetwork::IpNetwork>().unwrap().contains(ip));
}

async fn released_addresses_return_in_fifo_order_after_the_cooldown(backend: Backend) {
    let f = fixture(backend, &[("p", "10.17.0.0/30", 30)]).await;
    set_config(
        &f.client,
        IpamConfiguration { release_cooldown: Duration::from_secs(60), ..IpamConfiguration::default() },
    )
    .await;
    let now = Arc::new(AtomicU64::new(1_000_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let ipam = Ipam::new(f.client.clone()).with_clock(clock);
    let mut ips = Vec::new();
    for i in 0..4 {
        ips.push(one(&ipam, &v4(&format!("net.{i}"), "n1")).await);
    }
    ipam.release_handle("net.2").await.unwrap();
    now.fetch_add(1_000, Ordering::SeqCst);
    ipam.release_handle("net.0").await.unwrap();

    let err = ipam.allocate(&v4("net.new0", "n1")).await.unwrap_err().to_string();
    assert!(err.contains("2 released addresses still cooling down"), "{err}");
    now.fetch_add(59_000, Ordering::SeqCst); // net.2 has rested 60 s, net.0 59 s
    assert_eq!(one(&ipam, &v4("net.new1", "n1")).await, ips[2], "the first released comes back first");
    assert!(ipam.allocate(&v4("net.new2", "n1")).await.is_err(), "net.0 is still cooling");
    now.fetch_add(1_000, Ordering::SeqCst);
    assert_eq!(one(&ipam, &v4("net.new3", "n1")).await, ips[0]);
}

async fn dual_stack_and_rollback(backend: Backend) {
    let f = fixture(backend, &[("v4", "10.18.0.0/24", 26), ("v6", "fd00:18::/64", 122)]).await;
    let request = AllocateRequest { holder: holder("net.ds", "n1"), ipv4: 1, ipv6: 1, ..AllocateRequest::default() };
    let got = f.ipam.allocate(&request).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].ip.is_ipv4() && got[1].ip.is_ipv6(), "{got:?}");
    assert_eq!((got[0].pool.as_str(), got[1].pool.as_str()), ("v4", "v6"));
    assert_eq!(got[1].block.prefix(), 122);

    let mut request =
        AllocateRequest { holder: holder("net.fail", "n1"), ipv4: 1, ipv6: 1, ..AllocateRequest::default() };
    request.ipv6_pools = vec!["missing".into()];
    let err = f.ipam.allocate(&request).await.unwrap_err();
    assert!(err.to_string().contains("IPPool \"missing\" does not exist"), "{err}");
    let in_use: usize = f.ipam.blocks().await.unwrap().iter().map(|(b, _)| b.in_use()).sum();
    assert_eq!(in_use, 2, "the IPv4 address of the failed request was given back");
}

/// An IPAM client on a clock the test moves, with this IPAM configuration.
async fn manual_clock(f: &Fixture, config: IpamConfiguration) -> (Ipam, Arc<AtomicU64>) {
    set_config(&f.client, config).await;
    let now = Arc::new(AtomicU64::new(1_000_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    (Ipam::new(f.client.clone()).with_clock(clock), now)
}

fn grace(grace: Duration) -> IpamConfiguration {
    IpamConfiguration { leak_grace_period: grace, ..IpamConfiguration::default() }
}

fn endpoint(node: &str, container: &str, ip: IpAddr) -> Resource<WorkloadEndpoint> {
    let mut endpoint = Resource::new(
        format!("{node}-k8s-{container}-eth0"),
        WorkloadEndpoint {
            node: node.into(),
            orchestrator: "k8s".into(),
            pod: container.into(),
            endpoint: "eth0".into(),
            container_id: container.into(),
            interface_name: "brin1".into(),
            mac: None,
            ip_networks: vec![ipnetwork::IpNetwork::new(ip, 32).unwrap()],
            profiles: vec![],
            service_account_name: None,
            ports: vec![],
        },
    );
    endpoint.metadata.namespace = Some("default".into());
    endpoint
}

fn released(outcome: &GcOutcome) -> Vec<IpAddr> {
    outcome.leaks.iter().filter(|(_, o)| *o == LeakOutcome::Released).map(|(l, _)| l.ip).collect()
}

async fn gc_frees_a_planted_orphan_only_after_two_passes_a_grace_period_apart(backend: Backend) {
    let f = fixture(backend, &[("p", "10.19.0.0/24", 26), ("p6", "fd00:19::/64", 122)]).await;
    let (ipam, now) = manual_clock(&f, grace(Duration::from_secs(60))).await;
    f.client.create(Resource::new("n1", Node::default())).await.unwrap();
    let live = one(&ipam, &v4("k8s-pod-network.live", "n1")).await;
    f.client.create(endpoint("n1", "live", live)).await.unwrap();
    let request =
        AllocateRequest { holder: holder("k8s-pod-network.dead", "n1"), ipv4: 1, ipv6: 1, ..Default::default() };
    let mut orphans: Vec<IpAddr> = ipam.allocate(&request).await.unwrap().iter().map(|a| a.ip).collect();
    orphans.sort();

    // Passes until a grace period after the first sighting see them and leave them alone.
    for step in [0, 30_000, 29_999] {
        now.fetch_add(step, Ordering::SeqCst);
        let pass = ipam.collect_garbage().await.unwrap();
        assert!(released(&pass).is_empty(), "{pass:?}");
        let mut seen: Vec<IpAddr> = pass.report.leaked.iter().map(|l| l.ip).collect();
        seen.sort();
        assert_eq!(seen, orphans);
    }
    let check = ipam.check().await.unwrap();
    assert_eq!(check.leaked[0].first_seen_ms, 1_000_000, "the first sighting, from the first pass");
    assert_eq!(check.leaked[0].release_after_ms, 1_060_000);
    assert!(!check.leaked[0].releasable);

    now.fetch_add(1, Ordering::SeqCst);
    let second = ipam.collect_garbage().await.unwrap();
    let mut freed = released(&second);
    freed.sort();
    assert_eq!(freed, orphans, "the IPv4 and the IPv6 orphan");
    let after = ipam.check().await.unwrap();
    assert!(after.leaked.is_empty() && after.is_clean(), "{after:?}");
    let blocks = ipam.blocks().await.unwrap();
    let block = &blocks.iter().find(|(b, _)| b.cidr.contains(live)).unwrap().0;
    assert_eq!(block.holder(live).map(|a| a.handle.as_str()), Some("k8s-pod-network.live"));
    for orphan in orphans {
        assert!(blocks.iter().all(|(b, _)| b.holder(orphan).is_none()), "{orphan} is still taken");
    }

    // A clock well behind the last pass's does not act.
    now.fetch_sub(10 * 60_000, Ordering::SeqCst);
    let err = ipam.collect_garbage().await.unwrap_err().to_string();
    assert!(err.contains("clock is 600 s behind the last garbage-collection pass"), "{err}");
}

async fn release_leaves_an_address_that_changed_hands_or_found_its_holder(backend: Backend) {
    let f = fixture(backend, &[("p", "10.22.0.0/30", 30)]).await;
    let config = IpamConfiguration { release_cooldown: Duration::ZERO, ..grace(Duration::from_millis(1)) };
    let (ipam, now) = manual_clock(&f, config).await;
    f.client.create(Resource::new("n1", Node::default())).await.unwrap();
    let returning = one(&ipam, &v4("k8s-pod-network.returning", "n1")).await;
    let reused = one(&ipam, &v4("k8s-pod-network.reused", "n1")).await;
    for pod in ["live0", "live1"] {
        let ip = one(&ipam, &v4(&format!("k8s-pod-network.{pod}"), "n1")).await;
        f.client.create(endpoint("n1", pod, ip)).await.unwrap();
    }
    ipam.collect_garbage().await.unwrap();
    now.fetch_add(1, Ordering::SeqCst);
    let report = ipam.check().await.unwrap();
    assert_eq!(report.leaked.iter().filter(|l| l.releasable).count(), 2, "{report:?}");

    // Between the judgement and the release: one holder appears, one address changes hands.
    f.client.create(endpoint("n1", "returning", returning)).await.unwrap();
    ipam.release_handle("k8s-pod-network.reused").await.unwrap();
    assert_eq!(one(&ipam, &v4("k8s-pod-network.new", "n1")).await, reused, "the only free address");

    let outcomes = ipam.release_leaks(&report.leaked).await.unwrap();
    assert!(outcomes.iter().all(|(_, o)| matches!(o, LeakOutcome::Kept(_))), "{outcomes:?}");
    let block = &ipam.blocks().await.unwrap()[0].0;
    assert_eq!(block.holder(returning).map(|a| a.handle.as_str()), Some("k8s-pod-network.returning"));
    assert_eq!(block.holder(reused).map(|a| a.handle.as_str()), Some("k8s-pod-network.new"));
}

async fn a_deleted_nodes_addresses_come_back_to_the_pool(backend: Backend) {
    // Two /28 blocks: the gone node has the first (its tunnel address and 14 pods), the staying
    // node fills the second and borrows the first's last address.
    let f = fixture(backend, &[("p", "10.20.0.0/27", 28)]).await;
    let (ipam, now) = manual_clock(&f, grace(Duration::from_secs(60))).await;
    for node in ["gone", "stay"] {
        f.client.create(Resource::new(node, Node::default())).await.unwrap();
    }
    let tunnel = ipam.tunnel_address("gone", false).await.unwrap().ip;
    let mut gone = vec![tunnel];
    for i in 0..14 {
        gone.push(one(&ipam, &v4(&format!("net.gone{i}"), "gone")).await);
    }
    // A pod of the gone node whose endpoint is still there: no pod runs on a node that does
    // not exist, so its address goes too, and its endpoint with it.
    f.client.create(endpoint("gone", "gone0", gone[1])).await.unwrap();
    let mut stay = Vec::new();
    for i in 0..17 {
        let ip = one(&ipam, &v4(&format!("net.stay{i}"), "stay")).await;
        f.client.create(endpoint("stay", &format!("stay{i}"), ip)).await.unwrap();
        stay.push(ip);
    }
    let borrowed = stay[16];
    let first_block = ipam.blocks().await.unwrap()[0].0.clone();
    assert!(first_block.cidr.contains(borrowed) && first_block.owner.as_deref() == Some("gone"));
    f.client.delete::<Node>(None, "gone", None).await.unwrap();

    now.fetch_add(60_000, Ordering::SeqCst);
    let first = ipam.collect_garbage().await.unwrap();
    assert!(released(&first).is_empty() && first.nodes.is_empty(), "one pass is not enough: {first:?}");
    assert_eq!(first.report.gone_nodes.len(), 1);
    assert_eq!(first.report.gone_nodes[0].blocks, [first_block.cidr]);
    assert_eq!(first.report.gone_nodes[0].endpoints, ["default/gone-k8s-gone0-eth0"]);

    now.fetch_add(60_000, Ordering::SeqCst);
    let second = ipam.collect_garbage().await.unwrap();
    let mut freed = released(&second);
    freed.sort();
    gone.sort();
    assert_eq!(freed, gone, "the tunnel address and every pod address of the gone node");
    let cleared: Vec<&NodeOutcome> = second.nodes.iter().map(|(_, o)| o).collect();
    assert_eq!(
        cleared,
        [
            &NodeOutcome::EndpointDeleted("default/gone-k8s-gone0-eth0".into()),
            &NodeOutcome::BlockDisowned(first_block.cidr)
        ],
        "the block keeps the borrowed address of a live pod"
    );
    let blocks = ipam.blocks().await.unwrap();
    let held = blocks.iter().find(|(b, _)| b.cidr == first_block.cidr).unwrap().0.clone();
    assert_eq!((held.owner.as_deref(), held.in_use()), (None, 1));
    assert_eq!(held.holder(borrowed).map(|a| a.handle.as_str()), Some("net.stay16"));
    assert!(ipam.check().await.unwrap().is_clean(), "{:?}", ipam.check().await.unwrap());

    // Other nodes can use the free space, even under strict affinity: the disowned block is
    // the only one a new node can claim, and its released addresses come back after their rest.
    now.fetch_add(60_000, Ordering::SeqCst);
    let mut config = f.client.get::<IpamConfiguration>(None, "default").await.unwrap();
    config.spec.strict_affinity = true;
    f.client.update(config).await.unwrap();
    let new = one(&ipam, &v4("net.x1", "x1")).await;
    assert!(first_block.cidr.contains(new), "{new}");
    let claimed = ipam.blocks().await.unwrap();
    assert_eq!(claimed.iter().find(|(b, _)| b.cidr == first_block.cidr).unwrap().0.owner.as_deref(), Some("x1"));
}

async fn an_unowned_block_is_deleted_only_after_its_addresses_rested(backend: Backend) {
    let f = fixture(backend, &[("p", "10.23.0.0/28", 28)]).await;
    let (ipam, now) = manual_clock(&f, grace(Duration::from_secs(60))).await;
    f.client.create(Resource::new("n1", Node::default())).await.unwrap();
    let pod = one(&ipam, &v4("net.pod", "n1")).await;
    f.client.create(endpoint("n1", "pod", pod)).await.unwrap();
    f.client.delete::<Node>(None, "n1", None).await.unwrap();
    for _ in 0..2 {
        now.fetch_add(60_000, Ordering::SeqCst);
        ipam.collect_garbage().await.unwrap();
    }
    // Released just now: the emptied block stays, without an owner, while the address rests
    // (60 s), so a claimer cannot hand it out at once.
    let blocks = ipam.blocks().await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].0.owner.as_deref(), blocks[0].0.in_use()), (None, 0));
    now.fetch_add(59_000, Ordering::SeqCst);
    assert!(ipam.collect_garbage().await.unwrap().idle_blocks_deleted.is_empty());
    now.fetch_add(1_000, Ordering::SeqCst);
    assert_eq!(ipam.collect_garbage().await.unwrap().idle_blocks_deleted, [blocks[0].0.cidr]);
    assert!(ipam.blocks().await.unwrap().is_empty());
}

async fn tunnel_address_is_stable(backend: Backend) {
    let f = fixture(backend, &[("p", "10.21.0.0/24", 26)]).await;
    let first = f.ipam.tunnel_address("n1", false).await.unwrap();
    let again = f.ipam.tunnel_address("n1", false).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(first.pool, "p");
    let block = f.ipam.blocks().await.unwrap().remove(0).0;
    assert_eq!(block.holder(first.ip).unwrap().kind, AllocationKind::Tunnel);
    assert_eq!(block.owner.as_deref(), Some("n1"));
}

/// Three clients of one node claim from what their caches know. A client whose cache misses a
/// block claimed by a sibling loses the race for it and moves on to the next; one that loses
/// twice lists the blocks again and uses a block of its node with room rather than claim a
/// fourth.
async fn clients_of_one_node_with_stale_caches_claim_without_listing_and_never_overclaim(backend: Backend) {
    let f = fixture(backend, &[("p", "10.30.0.0/24", 30)]).await;
    let (a, b, c) = (&f.ipam, Ipam::new(f.client.clone()), Ipam::new(f.client.clone()));
    let mut ips = Vec::new();
    for i in 0..4 {
        ips.push(one(a, &v4(&format!("net.a{i}"), "n1")).await);
    }
    // c's cache now knows the node's first block, full, and nothing else.
    assert_eq!(c.blocks().await.unwrap().len(), 1, "four addresses fill the node's first /30");
    // b claims the next block in the node's claim order.
    ips.push(one(&b, &v4("net.b0", "n1")).await);
    // a's cache has not seen that block: it loses the race for it and claims the one after.
    ips.push(one(a, &v4("net.a4", "n1")).await);
    assert_eq!(a.blocks().await.unwrap().len(), 3);
    // c loses the races for both, lists, and takes an address in one of them.
    ips.push(one(&c, &v4("net.c0", "n1")).await);
    let blocks = a.blocks().await.unwrap();
    assert_eq!(blocks.len(), 3, "no fourth block while the node's blocks have room: {blocks:?}");
    assert!(blocks.iter().all(|(b, _)| b.owner.as_deref() == Some("n1")));
    let distinct: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "every address handed out once: {ips:?}");
    let in_use: usize = blocks.iter().map(|(b, _)| b.in_use()).sum();
    assert_eq!(in_use, ips.len());
}

/// A fresh client (a CNI plugin's one call) asks the store for its node's blocks only. The
/// Kubernetes API picks them out by owner; etcd and SQLite cannot, and every block is listed.
async fn a_nodes_first_allocation_reads_only_its_own_blocks_where_the_store_can_pick_them_out(backend: Backend) {
    let f = fixture(backend, &[("p", "10.40.0.0/24", 30)]).await;
    let mut first = BTreeMap::new();
    for node in ["n1", "n2", "n3"] {
        first.insert(node, one(&f.ipam, &v4(&format!("net.{node}-0"), node)).await);
    }
    let owned = f.client.store().list_owned_blocks("n2").await.unwrap();
    match backend {
        Backend::Kubernetes => {
            let owned = owned.expect("the API server selects blocks by owner");
            let keys: Vec<&str> = owned.items.iter().map(|kv| kv.key.as_str()).collect();
            let n2_block = f.ipam.blocks().await.unwrap().into_iter().find(|(b, _)| b.owner.as_deref() == Some("n2"));
            let n2_block = n2_block.expect("n2 claimed a block").0.cidr;
            assert_eq!(keys, [brindle_datastore::keys::block(&n2_block)], "only n2's block");
            assert!(owned.revision > 0);
        }
        Backend::Etcd | Backend::Sqlite => assert!(owned.is_none(), "only the Kubernetes API selects by owner"),
    }
    assert!(f.client.store().list_owned_blocks("n4").await.unwrap().is_none_or(|l| l.items.is_empty()));

    // Fresh clients fill their node's block, then claim the next free one.
    for i in 1..=4 {
        let ip = one(&Ipam::new(f.client.clone()), &v4(&format!("net.n2-{i}"), "n2")).await;
        if i < 4 {
            assert_eq!(block_30(ip), block_30(first["n2"]), "{ip} in n2's first block");
        } else {
            assert_ne!(block_30(ip), block_30(first["n2"]), "n2's first block is full: {ip} in a new one");
        }
    }
    let owners = owners(&f.ipam).await;
    assert_eq!(owners.len(), 4, "three nodes' blocks and n2's second: {owners:?}");
    assert_eq!(owners.values().filter(|o| o.as_deref() == Some("n2")).count(), 2);
}

/// An IPAMBlock definition without its selectable owner (an older manifest's, or an API server
/// that cannot select by it) makes the store say it cannot pick a node's blocks out, and a
/// fresh client lists every block instead: allocations go on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_without_a_selectable_owner_lists_every_block() {
    let f = fixture(Backend::Kubernetes, &[("p", "10.41.0.0/24", 30)]).await;
    let TestStore::Kubernetes(server) = &f._server else { unreachable!("a Kubernetes fixture") };
    let first = one(&f.ipam, &v4("net.n1-0", "n1")).await;
    assert!(f.client.store().list_owned_blocks("n1").await.unwrap().is_some());
    let remove = r#"[{"op": "remove", "path": "/spec/versions/0/selectableFields"}]"#;
    server.kubectl(&["patch", "crd", "ipamblocks.brindle.io", "--type=json", "-p", remove]).unwrap();
    // The API server serves the changed definition within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f.client.store().list_owned_blocks("n1").await {
            Ok(None) => break,
            outcome => assert!(
                std::time::Instant::now() < deadline,
                "the API server still selects by owner without the selectable field: {outcome:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = one(&Ipam::new(f.client.clone()), &v4("net.n1-1", "n1")).await;
    assert_eq!(block_30(next), block_30(first), "a fresh client still fills its node's block");
}

/// How many LIST requests for IPAMBlocks the fixture's API server has answered; None on
/// etcd and SQLite.
fn listings_of(f: &Fixture) -> Option<u64> {
    let TestStore::Kubernetes(server) = &f._server else { return None };
    let counts = server.request_counts().unwrap();
    Some(counts.get(&("LIST".to_owned(), "ipamblocks".to_owned())).copied().unwrap_or_default())
}

/// One address for `node` from a fresh client (a CNI plugin's one call), and on the
/// Kubernetes API how many listings of blocks that call made.
async fn fresh_allocation(f: &Fixture, handle: &str, node: &str) -> (IpAddr, Option<u64>) {
    let before = listings_of(f);
    let ip = one(&Ipam::new(f.client.clone()), &v4(handle, node)).await;
    (ip, before.zip(listings_of(f)).map(|(before, after)| after - before))
}

/// On the Kubernetes API, a fresh client (a CNI plugin's one call) whose node's blocks are full
/// claims the node's next block with one create: the API server answers one listing of
/// blocks, the node's own, and no listing of every node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_a_fresh_client_claims_its_nodes_next_block_without_listing_every_block() {
    let f = fixture(Backend::Kubernetes, &[("p", "10.42.0.0/24", 30)]).await;
    for node in ["n1", "n3"] {
        one(&f.ipam, &v4(&format!("net.{node}-0"), node)).await;
    }
    let first: Vec<IpAddr> = fill(&f.ipam, "n2", 4).await;
    assert!(first.iter().all(|ip| block_30(*ip) == block_30(first[0])), "four addresses fill one /30: {first:?}");

    let (next, listings) = fresh_allocation(&f, "net.n2-4", "n2").await;
    assert_ne!(block_30(next), block_30(first[0]), "n2's first block is full: {next} in a new one");
    assert_eq!(listings, Some(1), "one listing of blocks, n2's own");
    let owners = owners(&f.ipam).await;
    assert_eq!(owners.values().filter(|o| o.as_deref() == Some("n2")).count(), 2, "{owners:?}");
}

/// Allocates `count` addresses for `node` with `ipam`, one call each.
async fn fill(ipam: &Ipam, node: &str, count: usize) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for i in 0..count {
        ips.push(one(ipam, &v4(&format!("net.{node}-{i}"), node)).await);
    }
    ips
}

/// A /28 pool of /30 blocks, and the order in which node `node` claims them.
fn claim_order_of_28(cidr: &str, node: &str) -> Vec<ipnetwork::IpNetwork> {
    let pool = IpPool { block_size: Some(30), ..IpPool::new(cidr.parse().unwrap()) };
    let order: Vec<ipnetwork::IpNetwork> = brindle_datastore::ipam::pools::claim_order(&pool, node).collect();
    assert_eq!(order.len(), 4, "a /28 of /30 blocks");
    order
}

/// A fresh client that knows only its node's blocks walks the node's claim order and finds
/// the blocks there taken by other nodes: after two failed creates it lists every block and
/// claims the one left free.
async fn a_client_that_knows_only_its_nodes_blocks_lists_them_all_when_its_claims_collide(backend: Backend) {
    let f = fixture(backend, &[("p", "10.43.0.0/28", 30)]).await;
    let order = claim_order_of_28("10.43.0.0/28", "n2");
    // Other nodes hold the first three blocks of n2's claim order.
    for (i, block) in order[..3].iter().enumerate() {
        let node = format!("other{i}");
        f.ipam.allocate_ips(&holder(&format!("net.{node}"), &node), &[block.network()]).await.unwrap();
    }
    let (got, listings) = fresh_allocation(&f, "net.n2-0", "n2").await;
    if let Some(listings) = listings {
        assert_eq!(listings, 2, "n2's own blocks, then every block after two collisions");
    }
    assert!(order[3].contains(got), "{got} in the one block left, {}", order[3]);
    let owners = owners(&f.ipam).await;
    assert_eq!(owners.get(&order[3].to_string()), Some(&Some("n2".to_owned())), "{owners:?}");
    assert_eq!(owners.len(), 4);
}

/// A block in a node's claim order that no node owns (one a deleted node left, still holding
/// an address) is claimed by a fresh client that knows only its node's blocks: its create is
/// refused, a read of that one block shows it unowned, and the client claims it, with no
/// listing of every block and no new block.
async fn a_client_that_knows_only_its_nodes_blocks_claims_an_unowned_block_in_its_way(backend: Backend) {
    let f = fixture(backend, &[("p", "10.44.0.0/28", 30)]).await;
    let order = claim_order_of_28("10.44.0.0/28", "n2");
    f.ipam.allocate_ips(&holder("net.other", "other"), &[order[0].network()]).await.unwrap();
    let mut left = brindle_datastore::ipam::Block::new(order[1], None);
    left.allocate(holder("net.orphan", "gone"), 1, 0).expect("a fresh block has room");
    let key = brindle_datastore::keys::block(&order[1]);
    f.client.store().create(&key, &serde_json::to_vec(&left).unwrap()).await.unwrap();

    let (got, listings) = fresh_allocation(&f, "net.n2-0", "n2").await;
    if let Some(listings) = listings {
        assert_eq!(listings, 1, "only n2's own blocks listed");
    }
    assert!(order[1].contains(got), "{got} in the unowned block {}", order[1]);
    let owners = owners(&f.ipam).await;
    assert_eq!(owners.get(&order[1].to_string()), Some(&Some("n2".to_owned())), "{owners:?}");
    assert_eq!(owners.len(), 2, "no new block while an unowned one has room: {owners:?}");
}
