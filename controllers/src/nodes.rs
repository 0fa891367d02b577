//! Nodes on the etcd datastore, kept in step with Kubernetes' as Calico's kube-controllers
//! keep them: a brindle Node named like a Kubernetes Node takes that Node's labels (so pool
//! `nodeSelector`s, BGPPeer selectors and route-reflector roles see them) and a reference to it;
//! a brindle Node whose referenced Kubernetes Node is gone is deleted, so the other agents drop
//! its BGP session, routes and tunnel entries at once, and IPAM garbage collection gives its
//! blocks back after its grace period.
//!
//! Labels set on a brindle Node by hand stay, unless Kubernetes sets the same key: the keys last
//! copied from Kubernetes are noted in an annotation, so a label removed in Kubernetes is removed
//! here too. On the Kubernetes datastore a brindle Node *is* the Kubernetes Node, and there is
//! nothing to do.
//!
//! [`plan`] is pure; [`sync`] reads both sides and applies the plan by compare-and-swap (a node
//! changed meanwhile is left for the next pass).

use std::collections::{BTreeMap, BTreeSet};

use brindle_datastore::resource::{Node, OrchestratorRef, Resource};
use brindle_datastore::{Client, Error};

use crate::follow::Changes;

/// The annotation listing the label keys last copied from the Kubernetes Node (comma-separated).
pub const SYNCED_LABELS_ANNOTATION: &str = "brindle.io/kubernetes-labels";

/// A node's labels.
pub type Labels = BTreeMap<String, String>;

/// What a pass changes.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes whose Kubernetes Node is gone.
    pub delete: Vec<Resource<Node>>,
    /// Nodes with new labels or a new reference to their Kubernetes Node.
    pub update: Vec<Resource<Node>>,
}

/// Compares the brindle `nodes` with the Kubernetes Nodes (`kubernetes`: name to labels).
pub fn plan(kubernetes: &BTreeMap<String, Labels>, nodes: &[Resource<Node>]) -> Plan {
    let mut plan = Plan::default();
    for node in nodes {
        let name = node.metadata.name.as_str();
        let Some(labels) = kubernetes.get(name) else {
            let referenced = node.spec.orchestrator_refs.iter().any(|r| r.orchestrator == OrchestratorRef::KUBERNETES);
            if referenced {
                plan.delete.push(node.clone());
            }
            continue;
        };
        let synced = node.metadata.annotations.get(SYNCED_LABELS_ANNOTATION);
        let previous: BTreeSet<&str> =
            synced.map(|keys| keys.split(',').filter(|k| !k.is_empty()).collect()).unwrap_or_default();
        let mut wanted = node.clone();
        wanted.metadata.labels.retain(|key, _| !previous.contains(key.as_str()));
        wanted.metadata.labels.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        wanted.metadata.annotations.insert(SYNCED_LABELS_ANNOTATION.to_owned(), keys.join(","));
        let reference = OrchestratorRef::kubernetes(name);
        wanted.spec.orchestrator_refs.retain(|r| r.orchestrator != OrchestratorRef::KUBERNETES);
        wanted.spec.orchestrator_refs.push(reference);
        wanted.spec.orchestrator_refs.sort();
        if wanted != *node {
            plan.update.push(wanted);
        }
    }
    plan
}

/// A Kubernetes Node's metadata, as the watch delivers it.
pub type NodeMeta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Node>;

/// The Kubernetes Nodes' names and labels.
pub fn kubernetes_labels(nodes: Vec<std::sync::Arc<NodeMeta>>) -> BTreeMap<String, Labels> {
    nodes
        .iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
        .collect()
}

/// One pass: reads the brindle Nodes and applies the [`plan`] for the Kubernetes Nodes'
/// `labels`.
pub async fn sync(labels: &BTreeMap<String, Labels>, client: &Client) -> brindle_datastore::Result<Changes> {
    let (nodes, _) = client.list::<Node>().await?;
    let plan = plan(labels, &nodes);
    let mut synced = Changes::default();
    for node in plan.delete {
        let name = node.metadata.name.as_str();
        match client.delete::<Node>(None, name, node.revision()).await {
            Ok(()) => {
                tracing::info!(node = name, "deleted a node whose Kubernetes Node is gone");
                synced.deleted += 1;
            }
            Err(Error::NotFound(_) | Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for node in plan.update {
        let name = node.metadata.name.clone();
        match client.update(node).await {
            Ok(_) => {
                tracing::info!(node = %name, "copied its Kubernetes Node's labels");
                synced.updated += 1;
            }
            Err(Error::NotFound(_) | Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(synced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn node(name: &str, own: &[(&str, &str)], synced: Option<&str>, referenced: bool) -> Resource<Node> {
        let mut node = Resource::new(name, Node::default());
        node.metadata.labels = labels(own);
        if let Some(keys) = synced {
            node.metadata.annotations.insert(SYNCED_LABELS_ANNOTATION.into(), keys.into());
        }
        if referenced {
            node.spec.orchestrator_refs.push(OrchestratorRef::kubernetes(name));
        }
        node
    }

    #[test]
    fn a_node_takes_its_kubernetes_nodes_labels_and_keeps_its_own() {
        let kubernetes = BTreeMap::from([("n1".to_owned(), labels(&[("zone", "b"), ("rack", "7")]))]);
        // `zone` and `old` were copied before; `route-reflector` was set by hand.
        let before = node("n1", &[("zone", "a"), ("old", "x"), ("route-reflector", "true")], Some("old,zone"), false);
        let plan = plan(&kubernetes, &[before]);
        assert!(plan.delete.is_empty());
        let [after] = plan.update.as_slice() else { panic!("{plan:?}") };
        assert_eq!(after.metadata.labels, labels(&[("rack", "7"), ("route-reflector", "true"), ("zone", "b")]));
        assert_eq!(after.metadata.annotations[SYNCED_LABELS_ANNOTATION], "rack,zone");
        assert_eq!(after.spec.orchestrator_refs, [OrchestratorRef::kubernetes("n1")]);
        // Applied, the plan is empty: nothing is written again.
        assert_eq!(super::plan(&kubernetes, std::slice::from_ref(after)), Plan::default());
    }

    #[test]
    fn only_a_node_that_was_a_kubernetes_node_is_deleted_when_that_is_gone() {
        let kubernetes = BTreeMap::from([("n1".to_owned(), Labels::new())]);
        let nodes = [
            node("n1", &[], Some(""), true),
            node("gone", &[], Some(""), true),
            node("bare-metal-router", &[("role", "edge")], None, false),
        ];
        let plan = plan(&kubernetes, &nodes);
        let deleted: Vec<&str> = plan.delete.iter().map(|n| n.metadata.name.as_str()).collect();
        assert_eq!(deleted, ["gone"], "a node no Kubernetes Node ever named is not Kubernetes' to delete");
        assert!(plan.update.is_empty(), "{plan:?}");
    }
}
