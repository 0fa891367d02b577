//! The Datastore contract, run unchanged against real etcd and a real SQLite file.

mod common;

use std::time::Duration;

use brindle_datastore::testing::Backend;
use brindle_datastore::{Error, WatchEvent};
use common::{compact, open, open_with};

per_backend!(
    crud_with_compare_and_swap,
    list_by_prefix_is_sorted_and_isolated,
    watch_delivers_every_change_in_order,
    watch_resumes_from_a_revision,
    watch_reports_compacted_history,
    concurrent_cas_increments_lose_nothing,
);

async fn crud_with_compare_and_swap(backend: Backend) {
    let (_server, store) = open(backend).await;
    let r1 = store.create("/t/a", b"one").await.unwrap();
    assert!(matches!(store.create("/t/a", b"again").await, Err(Error::AlreadyExists(k)) if k == "/t/a"));
    let kv = store.get("/t/a").await.unwrap();
    assert_eq!((kv.value.as_slice(), kv.revision), (&b"one"[..], r1));

    let r2 = store.update("/t/a", b"two", r1).await.unwrap();
    assert!(r2 > r1);
    match store.update("/t/a", b"stale", r1).await {
        Err(Error::Conflict { key, expected, actual, current }) => {
            assert_eq!((key.as_str(), expected, actual), ("/t/a", r1, r2));
            let current = current.expect("the refusal carries the stored value");
            assert_eq!((current.value.as_slice(), current.revision), (&b"two"[..], r2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get("/t/a").await.unwrap().value, b"two", "a lost CAS changes nothing");

    assert!(matches!(store.delete("/t/a", Some(r1)).await, Err(Error::Conflict { .. })));
    store.delete("/t/a", Some(r2)).await.unwrap();
    assert!(matches!(store.get("/t/a").await, Err(Error::NotFound(_))));
    assert!(matches!(store.delete("/t/a", None).await, Err(Error::NotFound(_))));
    assert!(matches!(store.update("/t/a", b"x", r2).await, Err(Error::NotFound(_))));
    let r3 = store.create("/t/a", b"reborn").await.unwrap();
    assert!(r3 > r2, "revisions never go back");
}

async fn list_by_prefix_is_sorted_and_isolated(backend: Backend) {
    let (_server, store) = open(backend).await;
    for key in ["/p/b", "/p/a", "/p/c/d", "/pq/x", "/o"] {
        store.create(key, key.as_bytes()).await.unwrap();
    }
    let listing = store.list("/p/").await.unwrap();
    let keys: Vec<_> = listing.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/p/a", "/p/b", "/p/c/d"]);
    assert!(listing.items.iter().all(|kv| kv.revision <= listing.revision));
    assert!(store.list("/nothing/").await.unwrap().items.is_empty());
}

async fn next_event(watch: &mut brindle_datastore::Watch) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("watch event in time") {
        Some(Ok(event)) => event,
        Some(Err(e)) => panic!("watch error: {e}"),
        None => panic!("watch ended"),
    }
}

async fn watch_delivers_every_change_in_order(backend: Backend) {
    let (_server, store) = open(backend).await;
    store.create("/w/before", b"x").await.unwrap();
    let start = store.list("/w/").await.unwrap().revision;
    let mut watch = store.watch("/w/", start).await.unwrap();

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut expected = Vec::new();
            for i in 0..100 {
                let key = format!("/w/k{}", i % 7);
                let revision = match store.get(&key).await {
                    Ok(kv) if i % 5 == 0 => {
                        store.delete(&key, Some(kv.revision)).await.unwrap();
                        expected.push(format!("del {key}"));
                        continue;
                    }
                    Ok(kv) => store.update(&key, format!("{i}").as_bytes(), kv.revision).await.unwrap(),
                    Err(_) => store.create(&key, format!("{i}").as_bytes()).await.unwrap(),
                };
                store.create(&format!("/other/{i}"), b"not watched").await.unwrap();
                expected.push(format!("put {key}={i}@{revision}"));
            }
            expected
        })
    };
    let expected = writer.await.unwrap();
    let mut seen = Vec::new();
    let mut last = start;
    while seen.len() < expected.len() {
        let (text, revision) = match next_event(&mut watch).await {
            WatchEvent::Put(kv) => {
                (format!("put {}={}@{}", kv.key, String::from_utf8_lossy(&kv.value), kv.revision), kv.revision)
            }
            WatchEvent::Delete { key, revision } => (format!("del {key}"), revision),
            WatchEvent::Compacted { .. } => panic!("unexpected compaction"),
        };
        assert!(revision > last, "revisions increase: {revision} after {last}");
        last = revision;
        seen.push(text);
    }
    assert_eq!(seen, expected);
}

async fn watch_resumes_from_a_revision(backend: Backend) {
    let (_server, store) = open(backend).await;
    let r1 = store.create("/r/a", b"1").await.unwrap();
    let r2 = store.create("/r/b", b"2").await.unwrap();
    let _r3 = store.update("/r/a", b"3", r1).await.unwrap();
    let mut watch = store.watch("/r/", r2).await.unwrap();
    match next_event(&mut watch).await {
        WatchEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.value.as_slice()), ("/r/a", &b"3"[..])),
        other => panic!("expected the update after r2, got {other:?}"),
    }
}

async fn watch_reports_compacted_history(backend: Backend) {
    // SQLite keeps `history` revisions and trims every 256 writes.
    let extra = if backend == Backend::Sqlite { "&history=10" } else { "" };
    let (server, store) = open_with(backend, extra).await;
    let mut revision = store.create("/c/k", b"0").await.unwrap();
    for i in 1..300 {
        revision = store.update("/c/k", format!("{i}").as_bytes(), revision).await.unwrap();
    }
    compact(&server, revision - 5).await;
    let mut watch = store.watch("/c/", 1).await.unwrap();
    match next_event(&mut watch).await {
        WatchEvent::Compacted { compact_revision } => assert!(compact_revision > 1),
        other => panic!("expected a compaction signal, got {other:?}"),
    }
    assert!(watch.next().await.is_none(), "the watch ends after the signal");
    // A fresh listing and a watch from its revision work.
    let listing = store.list("/c/").await.unwrap();
    let mut watch = store.watch("/c/", listing.revision).await.unwrap();
    store.update("/c/k", b"after", listing.items[0].revision).await.unwrap();
    assert!(matches!(next_event(&mut watch).await, WatchEvent::Put(kv) if kv.value == b"after"));
}

async fn concurrent_cas_increments_lose_nothing(backend: Backend) {
    let (_server, store) = open(backend).await;
    store.create("/n/counter", b"0").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            for _ in 0..25 {
                loop {
                    let kv = store.get("/n/counter").await.unwrap();
                    let n: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                    match store.update("/n/counter", (n + 1).to_string().as_bytes(), kv.revision).await {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(store.get("/n/counter").await.unwrap().value, b"200");
}
