//! etcd goes away in the middle of allocations: calls fail with Unavailable in bounded time,
//! work again once etcd is back, and nothing is handed out twice or leaked.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use brindle_datastore::ipam::{AllocateRequest, Allocation, Ipam};
use brindle_datastore::resource::{IpPool, Resource};
use brindle_datastore::testing::EtcdServer;
use brindle_datastore::{Client, Error, WatchEvent};

/// Far above the 2 s call timeout the test server's selection sets: "does not hang".
const HANG: Duration = Duration::from_secs(15);

fn request(handle: &str) -> AllocateRequest {
    AllocateRequest {
        holder: Allocation { handle: handle.into(), node: "n1".into(), ..Allocation::default() },
        ipv4: 1,
        ..AllocateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_survive_an_etcd_outage_without_duplicates_or_leaks() {
    let mut etcd = EtcdServer::start().unwrap();
    let store = brindle_datastore::connect(&etcd.selection()).await.unwrap();
    let client = Client::new(store.clone());
    let mut pool = IpPool::new("10.30.0.0/24".parse().unwrap());
    pool.block_size = Some(28);
    client.create(Resource::new("p", pool)).await.unwrap();
    let ipam = Ipam::new(client.clone());
    let mut watch = store.watch(brindle_datastore::keys::BLOCKS, 0).await.unwrap();

    let mut handles = Vec::new();
    let mut granted = Vec::new();
    for i in 0..20 {
        let handle = format!("net.before{i}");
        granted.push(ipam.allocate(&request(&handle)).await.unwrap()[0].ip);
        handles.push(handle);
    }

    etcd.stop();
    for i in 0..3 {
        let handle = format!("net.during{i}");
        let started = Instant::now();
        let outcome = ipam.allocate(&request(&handle)).await;
        assert!(started.elapsed() < HANG, "allocate hung for {:?}", started.elapsed());
        assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
        handles.push(handle);
    }
    let started = Instant::now();
    assert!(matches!(store.get("/anything").await, Err(Error::Unavailable(_))));
    assert!(started.elapsed() < HANG);

    etcd.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while granted.len() < 40 {
        let handle = format!("net.after{i}");
        i += 1;
        match ipam.allocate(&request(&handle)).await {
            Ok(got) => granted.push(got[0].ip),
            Err(Error::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("allocation after the restart: {e}"),
        }
        handles.push(handle);
    }

    // A frozen etcd accepts connections but never answers: calls must still come back.
    etcd.freeze().unwrap();
    let started = Instant::now();
    let outcome = ipam.allocate(&request("net.frozen")).await;
    handles.push("net.frozen".into());
    assert!(started.elapsed() < HANG, "allocate hung for {:?}", started.elapsed());
    assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
    etcd.thaw().unwrap();
    granted.push(ipam.allocate(&request("net.thawed")).await.unwrap()[0].ip);
    handles.push("net.thawed".into());

    let distinct: HashSet<_> = granted.iter().collect();
    assert_eq!(distinct.len(), granted.len(), "an address was handed out twice: {granted:?}");

    // The watch rode out the outage and still sees new writes.
    let fresh = ipam.allocate(&request("net.watched")).await.unwrap()[0].ip;
    handles.push("net.watched".into());
    let seen = tokio::time::timeout(HANG, async {
        loop {
            match watch.next().await {
                Some(Ok(WatchEvent::Put(kv))) if String::from_utf8_lossy(&kv.value).contains("net.watched") => {
                    return true;
                }
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(seen, Ok(true), "the watch delivered the write of {fresh} made after the outage");

    // Every handle, including those whose call failed, releases cleanly: nothing leaks.
    for handle in &handles {
        ipam.release_handle(handle).await.unwrap();
    }
    let blocks = ipam.blocks().await.unwrap();
    assert!(blocks.iter().all(|(b, _)| b.is_empty()), "leaked: {blocks:?}");
}
