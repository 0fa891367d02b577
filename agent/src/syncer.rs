//! Datastore watch -> the cluster as the calculation sees it. One list of everything under
//! `/brindle/`, then one watch from that revision; every batch of events publishes a fresh
//! [`Cluster`]. A compaction or a broken watch starts over with a new list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_datastore::ipam::Block;
use brindle_datastore::resource::{
    BgpConfiguration, BgpFilter, BgpPeer, GlobalNetworkPolicy, IpPool, KubernetesNetworkPolicy, Namespace,
    NetworkPolicy, Node, Resource, Spec, Tier, WorkloadEndpoint,
};
use brindle_datastore::{Datastore, WatchEvent, keys};
use tokio::sync::watch;

use crate::calc::Cluster;
use crate::status::Metrics;

/// Everything under this prefix is brindle's.
const ROOT: &str = "/brindle/";

/// Whether the cluster is decoded from this key: resources and IPAM blocks (not, say, the
/// garbage collector's record), so a change elsewhere costs no recomputation.
fn decoded(key: &str) -> bool {
    key.starts_with(keys::RESOURCES) || key.starts_with(keys::BLOCKS)
}

/// What the syncer publishes: the cluster, or nothing before the first complete list.
pub type Published = Option<Arc<Cluster>>;

/// The first and the longest wait before listing again after the datastore failed.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// How long a sync must have held before its failure starts the waits over (a watch that fails
/// as soon as it starts keeps backing off).
const HELD: Duration = Duration::from_secs(1);

/// Keeps `tx` up to date with the datastore until the receiver side is gone. While the
/// datastore cannot be reached, `metrics` says so and since when (the agent is not ready); a
/// watch that ends for another reason (compacted history) is listed again without that. After
/// a sync that held for a while, the wait before the next attempt starts over.
pub async fn run(store: Arc<dyn Datastore>, node: String, tx: watch::Sender<Published>, metrics: Arc<Metrics>) {
    let mut backoff = BACKOFF.0;
    loop {
        let mut synced_at = None;
        match sync_once(&*store, &node, &tx, &metrics, &mut synced_at).await {
            Ok(()) => return,
            Err(e) => {
                metrics.error("datastore");
                if synced_at.is_some_and(|at: Instant| at.elapsed() >= HELD) {
                    backoff = BACKOFF.0;
                }
                tracing::warn!(error = %e, "datastore sync interrupted; listing again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

async fn sync_once(
    store: &dyn Datastore,
    node: &str,
    tx: &watch::Sender<Published>,
    metrics: &Metrics,
    synced_at: &mut Option<Instant>,
) -> anyhow::Result<()> {
    let unreachable = |e: brindle_datastore::Error| {
        metrics.datastore_unreachable(&e.to_string());
        e
    };
    let listing = store.list(ROOT).await.map_err(unreachable)?;
    *synced_at = Some(Instant::now());
    metrics.datastore_reachable();
    let mut cache: BTreeMap<String, Vec<u8>> = listing.items.into_iter().map(|kv| (kv.key, kv.value)).collect();
    tx.send_replace(Some(Arc::new(decode(&cache, node))));
    tracing::info!(keys = cache.len(), revision = listing.revision, "in sync with the datastore");
    let mut watch = store.watch(ROOT, listing.revision).await.map_err(unreachable)?;
    loop {
        let Some(first) = watch.next().await else { anyhow::bail!("the watch ended") };
        let mut events = vec![first.map_err(unreachable)?];
        // Take everything already queued, so a burst becomes one recomputation.
        while let Ok(Some(more)) = tokio::time::timeout(Duration::from_millis(20), watch.next()).await {
            events.push(more.map_err(unreachable)?);
        }
        let mut relevant = false;
        for event in events {
            match event {
                WatchEvent::Put(kv) => {
                    relevant |= decoded(&kv.key);
                    cache.insert(kv.key, kv.value);
                }
                WatchEvent::Delete { key, .. } => {
                    relevant |= decoded(&key);
                    cache.remove(&key);
                }
                WatchEvent::Compacted { compact_revision } => {
                    anyhow::bail!("the watch fell behind compaction at revision {compact_revision}")
                }
            }
        }
        metrics.watch_batch();
        if !relevant {
            continue;
        }
        if tx.send(Some(Arc::new(decode(&cache, node)))).is_err() {
            return Ok(());
        }
    }
}

fn decode_kind<S: Spec>(cache: &BTreeMap<String, Vec<u8>>) -> Vec<Resource<S>> {
    let prefix = keys::kind_prefix::<S>();
    cache
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(key, value)| match serde_json::from_slice(value) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping a value that does not decode");
                None
            }
        })
        .collect()
}

/// The cluster from the raw cache.
fn decode(cache: &BTreeMap<String, Vec<u8>>, node: &str) -> Cluster {
    let blocks = cache
        .range(keys::BLOCKS.to_owned()..)
        .take_while(|(k, _)| k.starts_with(keys::BLOCKS))
        .filter_map(|(key, value)| match serde_json::from_slice::<Block>(value) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping a block that does not decode");
                None
            }
        })
        .collect();
    let configs = decode_kind::<BgpConfiguration>(cache);
    let own = format!("node.{node}");
    let bgp = configs
        .iter()
        .find(|c| c.metadata.name == own)
        .or_else(|| configs.iter().find(|c| c.metadata.name == "default"))
        .map(|c| c.spec.clone())
        .unwrap_or_default();
    Cluster {
        pools: decode_kind::<IpPool>(cache),
        nodes: decode_kind::<Node>(cache),
        blocks,
        workloads: decode_kind::<WorkloadEndpoint>(cache),
        namespaces: decode_kind::<Namespace>(cache),
        kubernetes_policies: decode_kind::<KubernetesNetworkPolicy>(cache),
        network_policies: decode_kind::<NetworkPolicy>(cache),
        global_policies: decode_kind::<GlobalNetworkPolicy>(cache),
        tiers: decode_kind::<Tier>(cache),
        bgp,
        peers: decode_kind::<BgpPeer>(cache),
        filters: decode_kind::<BgpFilter>(cache),
    }
}
