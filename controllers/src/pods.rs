//! On the etcd datastore, pods' WorkloadEndpoints follow their Pods' labels, service accounts
//! and named ports, as the agents make them on the Kubernetes datastore (where they read the
//! Pods themselves), so policy selectors see what kubectl sets.

use std::collections::HashMap;
use std::sync::Arc;

use brindle_datastore::resource::WorkloadEndpoint;
use brindle_datastore::store::kubernetes::PodFacts;
use brindle_datastore::{Client, Error};
use k8s_openapi::api::core::v1::Pod;

use crate::follow::Changes;

/// Every Pod's facts, by `(namespace, name)`.
pub type Facts = HashMap<(String, String), PodFacts>;

/// The facts of `pods`.
pub fn facts(pods: Vec<Arc<Pod>>) -> Facts {
    pods.iter()
        .map(|p| {
            let key = (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
            (key, PodFacts::of(p))
        })
        .collect()
}

/// One pass: every Kubernetes pod's endpoint that says otherwise than its Pod is updated.
pub async fn sync(facts: &Facts, client: &Client) -> brindle_datastore::Result<Changes> {
    let (endpoints, _) = client.list::<WorkloadEndpoint>().await?;
    let mut changes = Changes::default();
    for endpoint in endpoints.iter().filter(|e| e.spec.orchestrator == "k8s") {
        let namespace = endpoint.metadata.namespace.clone().unwrap_or_default();
        let Some(updated) = facts.get(&(namespace, endpoint.spec.pod.clone())).and_then(|f| f.apply_to(endpoint))
        else {
            continue;
        };
        match client.update(updated).await {
            Ok(_) => changes.updated += 1,
            Err(Error::NotFound(_) | Error::Conflict { .. }) => {} // changed meanwhile: next pass
            Err(e) => return Err(e),
        }
    }
    Ok(changes)
}
