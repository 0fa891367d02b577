//! On the etcd datastore, Kubernetes' Namespaces (their labels, for `namespaceSelector`s) and
//! NetworkPolicies mirrored into the datastore, as Calico's kube-controllers mirror theirs, so
//! the agents enforce what kubectl applied. What the mirror writes carries the annotation
//! [`MIRRORED_ANNOTATION`]; a resource without it (applied with brindlectl) is never deleted
//! for want of a Kubernetes object, though one of the same name is overwritten by it.
//!
//! [`plan`] is pure; [`apply`] reads the datastore and applies the plan by compare-and-swap
//! (what changed meanwhile is left for the next pass).

use std::collections::HashMap;
use std::sync::Arc;

use brindle_datastore::resource::{KubernetesNetworkPolicy, Namespace, Resource, Spec};
use brindle_datastore::{Client, Error};
use k8s_openapi::api::core::v1::Namespace as KubeNamespace;
use k8s_openapi::api::networking::v1::NetworkPolicy as KubeNetworkPolicy;

use crate::follow::Changes;

/// The annotation on what the mirror wrote, with the value [`MIRRORED_FROM`].
pub const MIRRORED_ANNOTATION: &str = "brindle.io/mirrored-from";
/// Where mirrored resources come from.
pub const MIRRORED_FROM: &str = "kubernetes";

/// What a pass changes.
#[derive(Debug, PartialEq)]
pub struct Plan<S> {
    /// Resources Kubernetes has and the datastore does not.
    pub create: Vec<Resource<S>>,
    /// Resources that differ, with the datastore's revision.
    pub update: Vec<Resource<S>>,
    /// Mirrored resources Kubernetes no longer has.
    pub delete: Vec<Resource<S>>,
}

fn key<S>(r: &Resource<S>) -> (Option<String>, String) {
    (r.metadata.namespace.clone(), r.metadata.name.clone())
}

fn mirrored<S>(r: &Resource<S>) -> bool {
    r.metadata.annotations.get(MIRRORED_ANNOTATION).map(String::as_str) == Some(MIRRORED_FROM)
}

/// Compares what Kubernetes has (`desired`) with what the datastore has (`current`).
pub fn plan<S: Spec>(desired: &[Resource<S>], current: &[Resource<S>]) -> Plan<S> {
    let mut stored: HashMap<_, &Resource<S>> = current.iter().map(|r| (key(r), r)).collect();
    let mut plan = Plan { create: Vec::new(), update: Vec::new(), delete: Vec::new() };
    for wanted in desired {
        let mut wanted = wanted.clone();
        wanted.spec.complete();
        wanted.metadata.annotations.insert(MIRRORED_ANNOTATION.to_owned(), MIRRORED_FROM.to_owned());
        match stored.remove(&key(&wanted)) {
            None => plan.create.push(wanted),
            Some(existing) => {
                let same = existing.spec == wanted.spec
                    && existing.metadata.labels == wanted.metadata.labels
                    && mirrored(existing);
                if !same {
                    let mut updated = existing.clone();
                    updated.spec = wanted.spec;
                    updated.metadata.labels = wanted.metadata.labels;
                    updated.metadata.annotations.extend(wanted.metadata.annotations);
                    plan.update.push(updated);
                }
            }
        }
    }
    let mut gone: Vec<Resource<S>> = stored.into_values().filter(|r| mirrored(r)).cloned().collect();
    gone.sort_by_key(key);
    plan.delete = gone;
    plan
}

/// One pass: makes the datastore's resources of kind `S` mirror `desired`.
pub async fn apply<S: Spec>(client: &Client, desired: &[Resource<S>]) -> brindle_datastore::Result<Changes> {
    let (current, _) = client.list::<S>().await?;
    let plan = plan(desired, &current);
    let mut changes = Changes::default();
    let lost = |e: &Error| matches!(e, Error::NotFound(_) | Error::Conflict { .. } | Error::AlreadyExists(_));
    for r in plan.create {
        match client.create(r).await {
            Ok(_) => changes.created += 1,
            Err(e) if lost(&e) => {}
            Err(e) => return Err(e),
        }
    }
    for r in plan.update {
        match client.update(r).await {
            Ok(_) => changes.updated += 1,
            Err(e) if lost(&e) => {}
            Err(e) => return Err(e),
        }
    }
    for r in plan.delete {
        match client.delete::<S>(r.metadata.namespace.as_deref(), &r.metadata.name, r.revision()).await {
            Ok(()) => changes.deleted += 1,
            Err(e) if lost(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(changes)
}

/// The brindle view of Kubernetes Namespaces: names and labels.
pub fn namespaces(objects: Vec<Arc<KubeNamespace>>) -> Vec<Resource<Namespace>> {
    objects
        .iter()
        .map(|n| {
            let mut r = Resource::new(n.metadata.name.clone().unwrap_or_default(), Namespace::default());
            r.metadata.labels = n.metadata.labels.clone().unwrap_or_default();
            r
        })
        .collect()
}

/// The brindle view of Kubernetes NetworkPolicies. One brindle cannot read is logged and left
/// out (its namespace's pods are then not isolated by it: the log says so).
pub fn network_policies(objects: Vec<Arc<KubeNetworkPolicy>>) -> Vec<Resource<KubernetesNetworkPolicy>> {
    let mut policies = Vec::with_capacity(objects.len());
    for object in &objects {
        let (namespace, name) = (object.metadata.namespace.clone(), object.metadata.name.clone().unwrap_or_default());
        let spec = serde_json::to_value(&object.spec).and_then(serde_json::from_value::<KubernetesNetworkPolicy>);
        match spec {
            Ok(spec) => {
                let mut r = Resource::new(name, spec);
                r.metadata.namespace = namespace;
                r.metadata.labels = object.metadata.labels.clone().unwrap_or_default();
                policies.push(r);
            }
            Err(e) => tracing::error!(
                namespace = namespace.as_deref().unwrap_or_default(),
                policy = %name,
                error = %e,
                "cannot read this NetworkPolicy; it is not enforced"
            ),
        }
    }
    policies
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn namespace(name: &str, pairs: &[(&str, &str)], mirrored: bool) -> Resource<Namespace> {
        let mut r = Resource::new(name, Namespace::default());
        r.metadata.labels = labels(pairs);
        if mirrored {
            r.metadata.annotations.insert(MIRRORED_ANNOTATION.into(), MIRRORED_FROM.into());
        }
        r.metadata.resource_version = Some("7".into());
        r
    }

    #[test]
    fn the_datastore_follows_kubernetes_and_keeps_what_was_applied_by_hand() {
        let desired = [
            Resource { metadata: namespace("new", &[], false).metadata, spec: Namespace::default() },
            namespace("relabelled", &[("team", "b")], false),
            namespace("same", &[("team", "c")], false),
            namespace("taken-over", &[], false),
        ];
        let current = [
            namespace("relabelled", &[("team", "a")], true),
            namespace("same", &[("team", "c")], true),
            namespace("taken-over", &[], false),
            namespace("deleted", &[], true),
            namespace("by-hand", &[], false),
        ];
        let plan = plan(&desired, &current);
        let names = |list: &[Resource<Namespace>]| list.iter().map(|r| r.metadata.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&plan.create), ["new"]);
        assert!(mirrored(&plan.create[0]), "what it creates is marked as mirrored");
        assert_eq!(names(&plan.update), ["relabelled", "taken-over"], "one relabelled, one made by hand overwritten");
        assert_eq!(plan.update[0].metadata.labels, labels(&[("team", "b")]));
        assert_eq!(plan.update[0].metadata.resource_version.as_deref(), Some("7"), "updated by compare-and-swap");
        assert_eq!(names(&plan.delete), ["deleted"], "only what it mirrored is deleted");
    }

    #[test]
    fn a_kubernetes_network_policy_reads_as_brindles() {
        let object: KubeNetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "team-a"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80, "protocol": "TCP"}]}]}
        }))
        .unwrap();
        let policies = network_policies(vec![Arc::new(object)]);
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(policies[0].spec.ingress.len(), 1);
        assert_eq!(policies[0].spec.pod_selector.match_labels, labels(&[("app", "web")]));
    }
}
