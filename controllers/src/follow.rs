//! Following one kind of Kubernetes object: every object in a cache (kube's reflector), and a
//! sync run with what the cache makes of them (the desired state) whenever that changes, and
//! every resync interval. A burst of events makes one run; events that change nothing desired
//! (kubelet's heartbeats, a Pod's status) make none. A failed run is logged and tried again at
//! the next event or resync.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::resource::Spec;
use brindle_datastore::store::Watch;
use brindle_datastore::{Client, keys};
use futures::{FutureExt, StreamExt};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde::de::DeserializeOwned;

/// What a sync run changed in the datastore.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Resources created.
    pub created: usize,
    /// Resources updated.
    pub updated: usize,
    /// Resources deleted.
    pub deleted: usize,
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} created, {} updated, {} deleted", self.created, self.updated, self.deleted)
    }
}

/// Follows `api`'s objects for ever: `desired` makes the desired state of the cache's objects,
/// `sync` makes the datastore match it. Each of `nudges` runs a sync too (the datastore's side
/// changed: a node registered after its Kubernetes Node).
pub async fn follow<K, D>(
    what: &'static str,
    api: kube::Api<K>,
    resync: Duration,
    mut nudges: impl futures::Stream<Item = ()> + Unpin,
    desired: impl Fn(Vec<Arc<K>>) -> D,
    mut sync: impl AsyncFnMut(&D) -> brindle_datastore::Result<Changes>,
) where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
    D: PartialEq,
{
    let (cache, writer) = reflector::store::<K>();
    let mut events = reflector(writer, watcher(api, watcher::Config::default())).default_backoff().boxed();
    let mut listed = false;
    let mut applied: Option<D> = None;
    let mut resync_at = tokio::time::Instant::now() + resync;
    loop {
        let due = tokio::select! {
            event = events.next() => {
                listed |= seen(what, event);
                false
            }
            _ = tokio::time::sleep_until(resync_at) => true,
            Some(()) = nudges.next() => {
                while let Some(Some(())) = nudges.next().now_or_never() {}
                applied = None;
                false
            }
        };
        while let Some(event) = events.next().now_or_never() {
            listed |= seen(what, event);
        }
        if due {
            resync_at = tokio::time::Instant::now() + resync;
        }
        if !listed {
            continue; // nothing is known until the first listing is complete
        }
        let wanted = desired(cache.state());
        if !due && applied.as_ref() == Some(&wanted) {
            continue;
        }
        match sync(&wanted).await {
            Ok(changes) => {
                if changes != Changes::default() {
                    tracing::info!(%changes, "synced {what}");
                }
                applied = Some(wanted);
            }
            Err(e) => {
                tracing::warn!(error = %e, "syncing {what} failed; trying again at the next change");
                applied = None;
            }
        }
    }
}

/// Yields whenever a resource of kind `S` changes in the datastore, for ever (a watch that
/// breaks is started again, and its restart yields too, as changes may have been missed).
pub fn datastore_changes<S: Spec>(client: Client) -> impl futures::Stream<Item = ()> + Unpin {
    Box::pin(futures::stream::unfold((client, None::<Watch>), |(client, mut watch)| async move {
        loop {
            let Some(open) = watch.as_mut() else {
                let started = async {
                    let (_, revision) = client.list::<S>().await?;
                    client.store().watch(&keys::kind_prefix::<S>(), revision).await
                };
                match started.await {
                    Ok(w) => watch = Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, kind = S::KIND, "watching the datastore; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            };
            match open.next().await {
                Some(Ok(_)) => return Some(((), (client, watch))),
                Some(Err(_)) => {} // passing: the watch resumes by itself
                None => {
                    watch = None;
                    return Some(((), (client, watch)));
                }
            }
        }
    }))
}

/// Logs a failed watch; true when the event completes a listing.
fn seen<K>(what: &str, event: Option<Result<watcher::Event<K>, watcher::Error>>) -> bool {
    match event {
        Some(Ok(watcher::Event::InitDone)) => true,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "watching {what}");
            false
        }
        _ => false,
    }
}
