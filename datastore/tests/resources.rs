//! Typed resources through the Client, on both backends: validation on write, immutable
//! fields, overlap checks and compare-and-swap on resourceVersion.

mod common;

use brindle_datastore::resource::{AnyResource, kind_named, parse_documents};
use brindle_datastore::resource::{BgpConfiguration, IpPool, Node, NodeBgp, Resource, WorkloadEndpoint};
use brindle_datastore::testing::Backend;
use brindle_datastore::{Applied, Client, Error};

per_backend!(
    pools_are_validated_and_cas_protected,
    namespaced_resources_are_keyed_by_namespace,
    apply_creates_replaces_and_skips_what_is_unchanged,
    concurrent_overlapping_pools_are_never_both_created,
    a_pool_may_not_hold_a_nodes_address,
);

async fn pools_are_validated_and_cas_protected(backend: Backend) {
    let (_server, store) = common::open(backend).await;
    let client = Client::new(store);
    let created =
        client.create(Resource::new("default-ipv4", IpPool::new("10.244.0.0/16".parse().unwrap()))).await.unwrap();
    assert_eq!(created.spec.block_size, Some(26), "defaults are stored explicitly");
    assert!(created.revision().is_some());

    let err = client.create(Resource::new("other", IpPool::new("10.244.128.0/17".parse().unwrap()))).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPPool \"other\" is invalid: spec.cidr \"10.244.128.0/17\": overlaps IPPool \"default-ipv4\" (10.244.0.0/16)"
    );
    let err = client.create(Resource::new("bad", IpPool::new("10.9.0.1/16".parse().unwrap()))).await.unwrap_err();
    assert!(matches!(err, Error::Validation(_)), "{err}");
    assert!(client.find::<IpPool>(None, "bad").await.unwrap().is_none(), "an invalid resource is not stored");
    assert!(matches!(
        client.create(Resource::new("default-ipv4", IpPool::new("10.1.0.0/16".parse().unwrap()))).await,
        Err(Error::AlreadyExists(what)) if what == "IPPool \"default-ipv4\""
    ));

    let mut changed = created.clone();
    changed.spec.nat_outgoing = true;
    let updated = client.update(changed.clone()).await.unwrap();
    assert!(updated.revision() > created.revision());
    assert!(matches!(client.update(changed).await, Err(Error::Conflict { .. })), "a stale resourceVersion loses");

    let mut moved = updated.clone();
    moved.spec.cidr = "10.245.0.0/16".parse().unwrap();
    let err = client.update(moved).await.unwrap_err().to_string();
    assert!(err.contains("spec.cidr \"10.245.0.0/16\": is immutable (was 10.244.0.0/16)"), "{err}");

    let mut unversioned = updated.clone();
    unversioned.metadata.resource_version = None;
    assert!(client.update(unversioned).await.unwrap_err().to_string().contains("resourceVersion is required"));

    let (pools, _) = client.list::<IpPool>().await.unwrap();
    assert_eq!(pools, vec![updated.clone()]);
    client.delete::<IpPool>(None, "default-ipv4", updated.revision()).await.unwrap();
    assert!(
        matches!(client.get::<IpPool>(None, "default-ipv4").await, Err(Error::NotFound(what)) if what == "IPPool \"default-ipv4\"")
    );

    let config = client.create(Resource::new("default", BgpConfiguration::default())).await.unwrap();
    assert_eq!(client.get::<BgpConfiguration>(None, "default").await.unwrap(), config);
}

async fn namespaced_resources_are_keyed_by_namespace(backend: Backend) {
    let (_server, store) = common::open(backend).await;
    let client = Client::new(store);
    let endpoint = |ns: &str| {
        let mut r = Resource::new(
            "node1-k8s-web-eth0",
            WorkloadEndpoint {
                node: "node1".into(),
                orchestrator: "k8s".into(),
                pod: "web".into(),
                endpoint: "eth0".into(),
                container_id: format!("c-{ns}"),
                interface_name: "brin0123456789a".into(),
                mac: Some("ee:ee:ee:ee:ee:ee".into()),
                ip_networks: vec!["10.244.0.5/32".parse().unwrap()],
                profiles: vec![],
                service_account_name: None,
                ports: vec![],
            },
        );
        r.metadata.namespace = Some(ns.into());
        r
    };
    client.create(endpoint("blue")).await.unwrap();
    client.create(endpoint("green")).await.unwrap();
    let green = client.get::<WorkloadEndpoint>(Some("green"), "node1-k8s-web-eth0").await.unwrap();
    assert_eq!(green.spec.container_id, "c-green");
    assert_eq!(client.list::<WorkloadEndpoint>().await.unwrap().0.len(), 2);
    let mut no_namespace = endpoint("x");
    no_namespace.metadata.namespace = None;
    let err = client.create(no_namespace).await.unwrap_err().to_string();
    assert!(err.contains("metadata.namespace: is required"), "{err}");
}

async fn apply_creates_replaces_and_skips_what_is_unchanged(backend: Backend) {
    let (_server, store) = common::open(backend).await;
    let client = Client::new(store);
    let pool = |nat: bool| {
        parse_documents(&format!(
            "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {{name: p}}\nspec: {{cidr: 10.9.0.0/16, natOutgoing: {nat}}}\n"
        ))
        .unwrap()
        .remove(0)
    };
    let (_, done) = pool(false).apply(&client).await.unwrap();
    assert_eq!(done, Applied::Created);
    let (stored, done) = pool(false).apply(&client).await.unwrap();
    assert_eq!(done, Applied::Unchanged, "defaults filled on write do not count as a change");
    let (replaced, done) = pool(true).apply(&client).await.unwrap();
    assert_eq!(done, Applied::Replaced);
    assert!(replaced.metadata().resource_version > stored.metadata().resource_version);

    // replace without a revision takes whatever is stored; with a stale one it loses.
    pool(false).replace(&client).await.unwrap();
    let mut stale = pool(true);
    stale.metadata_mut().resource_version = stored.metadata().resource_version.clone();
    assert!(matches!(stale.replace(&client).await, Err(Error::Conflict { .. })));
    let mut missing = pool(true);
    missing.metadata_mut().name = "nope".into();
    assert!(matches!(missing.replace(&client).await, Err(Error::NotFound(_))));

    let kind = kind_named("ippools").unwrap();
    assert_eq!(kind, "IPPool");
    let listed = AnyResource::list(&client, kind).await.unwrap();
    assert_eq!(listed.len(), 1);
    listed[0].delete(&client).await.unwrap();
    assert!(AnyResource::list(&client, kind).await.unwrap().is_empty());
    assert!(matches!(AnyResource::get(&client, kind, None, "p").await, Err(Error::NotFound(_))));
}

async fn concurrent_overlapping_pools_are_never_both_created(backend: Backend) {
    let (_server, store) = common::open(backend).await;
    // Pairs of overlapping pools created at the same moment, each through its own client.
    for round in 0..8u8 {
        let (a, b) = (Client::new(store.clone()), Client::new(store.clone()));
        let wide = Resource::new(format!("wide-{round}"), IpPool::new(format!("10.{round}.0.0/16").parse().unwrap()));
        let narrow =
            Resource::new(format!("narrow-{round}"), IpPool::new(format!("10.{round}.128.0/17").parse().unwrap()));
        let (first, second) = tokio::join!(a.create(wide), b.create(narrow));
        let created = usize::from(first.is_ok()) + usize::from(second.is_ok());
        assert!(created <= 1, "round {round}: both overlapping pools were created");
        for refused in [first.err(), second.err()].into_iter().flatten() {
            assert!(refused.to_string().contains("overlaps IPPool"), "round {round}: {refused}");
        }
    }
    let (pools, _) = Client::new(store).list::<IpPool>().await.unwrap();
    for (i, p) in pools.iter().enumerate() {
        for q in &pools[i + 1..] {
            assert!(!p.spec.cidr.contains(q.spec.cidr.network()) && !q.spec.cidr.contains(p.spec.cidr.network()));
        }
    }
}

async fn a_pool_may_not_hold_a_nodes_address(backend: Backend) {
    let (_server, store) = common::open(backend).await;
    let client = Client::new(store);
    let node = Node {
        bgp: Some(NodeBgp { ipv4_address: Some("10.250.0.10/24".parse().unwrap()), ..NodeBgp::default() }),
        ..Node::default()
    };
    client.create(Resource::new("node-0", node)).await.unwrap();
    let err =
        client.create(Resource::new("underlay", IpPool::new("10.250.0.0/24".parse().unwrap()))).await.unwrap_err();
    assert!(
        err.to_string().contains("spec.cidr \"10.250.0.0/24\": contains 10.250.0.10, the address of node \"node-0\""),
        "{err}"
    );
    assert!(client.list::<IpPool>().await.unwrap().0.is_empty());
}
