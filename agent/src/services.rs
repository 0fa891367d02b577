//! On the Kubernetes datastore, the Services with `externalTrafficPolicy: Local` that this node
//! serves (a ready endpoint here), followed from the API's Services and EndpointSlices for the
//! BGP plan; [`crate::calc::services`] says which of their addresses are advertised.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::watch;

use brindle_datastore::store::KubernetesStore;

use crate::calc::services::{LocalService, local_services};

/// Which stream an event came from, and whether it completed a listing.
enum Seen {
    Services(bool),
    Slices(bool),
    Failed(String),
}

fn seen<K>(event: Result<watcher::Event<K>, watcher::Error>, wrap: fn(bool) -> Seen) -> Seen {
    match event {
        Ok(event) => wrap(matches!(event, watcher::Event::InitDone)),
        Err(e) => Seen::Failed(e.to_string()),
    }
}

/// Publishes this node's local Services on `tx` whenever they change, for ever.
pub async fn follow_local_services(api: KubernetesStore, node: String, tx: watch::Sender<Vec<LocalService>>) {
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let config = watcher::Config::default;
    let service_events = reflector(services_writer, watcher(kube::Api::all(api.client()), config()))
        .default_backoff()
        .map(|e| seen(e, Seen::Services));
    let slice_events = reflector(slices_writer, watcher(kube::Api::all(api.client()), config()))
        .default_backoff()
        .map(|e| seen(e, Seen::Slices));
    let mut events = std::pin::pin!(futures::stream::select(service_events, slice_events));
    let (mut services_listed, mut slices_listed) = (false, false);
    while let Some(first) = events.next().await {
        let mut take = |event: Seen| match event {
            Seen::Services(done) => services_listed |= done,
            Seen::Slices(done) => slices_listed |= done,
            Seen::Failed(e) => tracing::warn!(error = %e, "watching Services and EndpointSlices"),
        };
        take(first);
        while let Some(Some(event)) = events.next().now_or_never() {
            take(event);
        }
        if !(services_listed && slices_listed) {
            continue;
        }
        let (services, slices) = (services.state(), slices.state());
        let local = local_services(services.iter().map(AsRef::as_ref), slices.iter().map(AsRef::as_ref), &node);
        tx.send_if_modified(|current| {
            let changed = *current != local;
            if changed {
                tracing::info!(services = local.len(), "local Services changed");
                *current = local;
            }
            changed
        });
    }
}
