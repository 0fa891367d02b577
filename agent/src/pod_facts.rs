//! On the Kubernetes datastore, this node's WorkloadEndpoints follow their Pods: labels, service
//! account and named ports as kubectl changes them (the CNI plugin copied them at ADD), so
//! policy selectors follow too. Level-triggered: the latest facts of every Pod on the node are
//! compared with the endpoints whenever either changes, so an update lost to a conflict or a
//! Pod seen before its endpoint is made good at the next change of either.

use std::collections::HashMap;

use brindle_datastore::Client;
use brindle_datastore::resource::{Resource, WorkloadEndpoint};
use brindle_datastore::store::KubernetesStore;
use brindle_datastore::store::kubernetes::PodFacts;
use futures::StreamExt;
use tokio::sync::watch;

use crate::syncer::Published;

/// Pods by `(namespace, name)`.
type Known = HashMap<(String, String), PodFacts>;

/// Runs until the cluster it follows has no sender left.
pub async fn follow_pods(api: KubernetesStore, client: Client, node: String, mut cluster: watch::Receiver<Published>) {
    let mut known = Known::new();
    let mut pods = std::pin::pin!(api.pods_on(&node));
    loop {
        tokio::select! {
            next = pods.next() => match next {
                Some(Ok((namespace, name, Some(facts)))) => drop(known.insert((namespace, name), facts)),
                Some(Ok((namespace, name, None))) => drop(known.remove(&(namespace, name))),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot follow this node's Pods");
                    continue;
                }
                None => return,
            },
            changed = cluster.changed() => if changed.is_err() { return },
        }
        let Some(current) = cluster.borrow().clone() else { continue };
        for (namespace, name, facts) in stale(&current.workloads, &node, &known) {
            let path = format!("{namespace}/{name}");
            // The endpoint as stored now (the cluster's copy carries no revision to update).
            let updated = match client.find::<WorkloadEndpoint>(Some(&namespace), &name).await {
                Ok(found) => found.and_then(|e| facts.apply_to(&e)),
                Err(e) => {
                    tracing::warn!(endpoint = %path, error = %e, "cannot read the endpoint");
                    None
                }
            };
            let Some(updated) = updated else { continue };
            match client.update(updated).await {
                Ok(_) => tracing::info!(endpoint = %path, "endpoint follows its Pod"),
                // A conflict: the endpoint changed meanwhile; its next version comes round.
                Err(e) => tracing::debug!(endpoint = %path, error = %e, "endpoint not updated"),
            }
        }
    }
}

/// This node's endpoints whose Pod says otherwise than they do: namespace, name and the Pod's
/// facts.
fn stale<'a>(
    workloads: &[Resource<WorkloadEndpoint>],
    node: &str,
    known: &'a Known,
) -> Vec<(String, String, &'a PodFacts)> {
    workloads
        .iter()
        .filter(|e| e.spec.node == node && e.spec.orchestrator == "k8s")
        .filter_map(|e| {
            let namespace = e.metadata.namespace.clone()?;
            let facts = known.get(&(namespace.clone(), e.spec.pod.clone()))?;
            facts.apply_to(e).map(|_| (namespace, e.name().to_owned(), facts))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(node: &str, pod: &str, labels: &[(&str, &str)]) -> Resource<WorkloadEndpoint> {
        brindle_datastore::testing::pod_endpoint(node, "x", pod, labels)
    }

    #[test]
    fn only_this_nodes_endpoints_whose_pod_changed_are_rewritten() {
        let workloads = [
            endpoint("n1", "a", &[("app", "web")]),
            endpoint("n1", "b", &[("app", "db")]),
            endpoint("n1", "unknown", &[]),
            endpoint("n2", "a", &[]),
        ];
        let facts = |app: &str| PodFacts { labels: [("app".into(), app.into())].into(), ..PodFacts::default() };
        let known: Known =
            [(("x".into(), "a".into()), facts("web")), (("x".into(), "b".into()), facts("cache"))].into();
        let stale = stale(&workloads, "n1", &known);
        assert_eq!(stale.len(), 1, "a is as its Pod says, unknown has no Pod, n2 is another node's");
        assert_eq!((stale[0].1.as_str(), stale[0].2.labels["app"].as_str()), ("n1-k8s-b-eth0", "cache"));
        let updated = stale[0].2.apply_to(&workloads[1]).unwrap();
        assert_eq!(updated.metadata.labels["app"], "cache");
        assert!(stale[0].2.apply_to(&updated).is_none(), "then it is as its Pod says");
    }
}
