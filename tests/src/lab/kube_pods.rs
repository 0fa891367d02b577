//! On a lab whose datastore is the Kubernetes API, a pod is a Kubernetes Pod too, as on a
//! cluster: the lab creates the Pod (in its Namespace, with its ServiceAccount, labels, named
//! container ports and `nodeName`) before the CNI plugin wires it, so its WorkloadEndpoint takes
//! them from the Pod; relabels the Pod (the node's agent carries the labels to the endpoint);
//! and deletes the Pod with the pod.

use std::collections::BTreeMap;

use anyhow::Context;
use brindle_datastore::resource::EndpointPort;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// What a Pod is made of.
pub struct PodSpec<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The node it runs on.
    pub node: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its service account (`default` when none).
    pub service_account: Option<&'a str>,
    /// Its named container ports.
    pub ports: &'a [EndpointPort],
}

/// Creates `object` unless one of its name exists.
async fn create_unless_there<K>(api: Api<K>, object: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the Pod (and its Namespace and ServiceAccount when they are missing).
pub async fn create(client: &kube::Client, pod: &PodSpec<'_>) -> anyhow::Result<()> {
    let namespace = pod.namespace;
    let account = pod.service_account.unwrap_or("default");
    create_unless_there(Api::<Namespace>::all(client.clone()), json!({"metadata": {"name": namespace}})).await?;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    create_unless_there(accounts, json!({"metadata": {"name": account, "namespace": namespace}})).await?;
    let ports: Vec<serde_json::Value> =
        pod.ports.iter().map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol})).collect();
    let object: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod.name, "namespace": namespace, "labels": pod.labels},
        "spec": {
            "nodeName": pod.node,
            "serviceAccountName": account,
            "automountServiceAccountToken": false,
            "containers": [{"name": "serve", "image": "brindle-lab", "ports": ports}],
        },
    }))?;
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating Pod {namespace}/{}", pod.name))?;
    Ok(())
}

/// Gives the Pod exactly `labels` (compare-and-swap on its resourceVersion, retried).
pub async fn relabel(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    for _ in 0..10 {
        let mut pod = pods.get(name).await.with_context(|| format!("reading Pod {namespace}/{name}"))?;
        pod.metadata.labels = Some(labels.clone());
        match pods.replace(name, &PostParams::default(), &pod).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("relabelling Pod {namespace}/{name}")),
        }
    }
    anyhow::bail!("Pod {namespace}/{name} kept changing while it was relabelled")
}

/// Deletes the Pod at once (no kubelet here waits for its containers).
pub async fn delete(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    match pods.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting Pod {namespace}/{name}")),
    }
}
