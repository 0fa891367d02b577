//! The WorkloadEndpoint the main plugin writes for each attachment, so the agent and
//! brindlectl see the pod's interface.

use brindle_datastore::resource::{Resource, WorkloadEndpoint};
use brindle_datastore::store::kubernetes::PodFacts;
use brindle_datastore::{Client, Error as StoreError};
use ipnetwork::IpNetwork;
use sha1::{Digest, Sha1};

use crate::error::Result;

/// Which endpoint an attachment has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointId {
    /// The pod's namespace (`default` without Kubernetes).
    pub namespace: String,
    /// `<node>-<orchestrator>-<pod>-<interface>`, as Calico names them: unique across nodes.
    pub name: String,
    /// `k8s`, or `cni` when the runtime gave no pod name.
    pub orchestrator: &'static str,
    /// The pod's name, or the container ID without Kubernetes.
    pub pod: String,
    /// The sandbox.
    pub container_id: String,
    /// The interface inside it.
    pub ifname: String,
}

/// The longest resource name (a DNS subdomain).
const MAX_NAME: usize = 253;

/// `<node>-<orchestrator>-<pod>-<interface>`, lower-cased. A resource name is a DNS subdomain
/// (dot-separated labels of letters, digits and inner dashes): a name that is not one (an `_`
/// in a container ID, an empty label) becomes one label with `-` for everything else, and one
/// longer than 253 (a long node name and a long pod name) keeps its start; either way it then
/// ends in a digest of the whole, so it stays unique.
fn endpoint_name(node: &str, orchestrator: &str, pod: &str, ifname: &str) -> String {
    let full = format!("{node}-{orchestrator}-{pod}-{ifname}").to_lowercase();
    let valid_labels = full.split('.').all(|label| {
        !label.is_empty()
            && label.starts_with(|c: char| c.is_ascii_alphanumeric())
            && label.ends_with(|c: char| c.is_ascii_alphanumeric())
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    if valid_labels && full.len() <= MAX_NAME {
        return full;
    }
    // Anything else becomes one label of letters, digits and dashes.
    let clean: String =
        full.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' }).collect();
    let digest: String = Sha1::digest(full.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let keep = clean.len().min(MAX_NAME - digest.len() - 1);
    format!("{}-{digest}", clean[..keep].trim_end_matches('-'))
}

impl EndpointId {
    /// The endpoint of an attachment.
    pub fn new(node: &str, namespace: Option<&str>, pod: Option<&str>, container_id: &str, ifname: &str) -> Self {
        let (orchestrator, pod) = match pod {
            Some(pod) => ("k8s", pod.to_owned()),
            None => ("cni", container_id.to_owned()),
        };
        EndpointId {
            namespace: namespace.unwrap_or("default").to_owned(),
            name: endpoint_name(node, orchestrator, &pod, ifname),
            orchestrator,
            pod,
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        }
    }

    /// `namespace/name`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Writes (or overwrites: a new sandbox of the same pod) the endpoint.
    pub async fn write(
        &self,
        client: &Client,
        node: &str,
        host_veth: &str,
        mac: &str,
        addresses: Vec<IpNetwork>,
        facts: PodFacts,
    ) -> Result<()> {
        let spec = WorkloadEndpoint {
            node: node.to_owned(),
            orchestrator: self.orchestrator.to_owned(),
            pod: self.pod.clone(),
            endpoint: self.ifname.clone(),
            container_id: self.container_id.clone(),
            interface_name: host_veth.to_owned(),
            mac: Some(mac.to_owned()).filter(|m| !m.is_empty()),
            ip_networks: addresses,
            profiles: Vec::new(),
            service_account_name: facts.service_account,
            ports: facts.ports,
        };
        let mut resource = Resource::new(self.name.clone(), spec);
        resource.metadata.namespace = Some(self.namespace.clone());
        resource.metadata.labels = facts.labels;
        match client.create(resource.clone()).await {
            Ok(_) => Ok(()),
            Err(StoreError::AlreadyExists(_)) => {
                let existing = client.get::<WorkloadEndpoint>(Some(&self.namespace), &self.name).await?;
                resource.metadata.resource_version = existing.metadata.resource_version;
                client.update(resource).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the endpoint if it still belongs to this sandbox (a newer sandbox of the same
    /// pod may have replaced it). Missing is fine.
    pub async fn delete(&self, client: &Client) -> Result<()> {
        let Some(existing) = client.find::<WorkloadEndpoint>(Some(&self.namespace), &self.name).await? else {
            return Ok(());
        };
        if existing.spec.container_id != self.container_id {
            tracing::info!(endpoint = %self.path(), "endpoint belongs to a newer sandbox; left alone");
            return Ok(());
        }
        match client.delete::<WorkloadEndpoint>(Some(&self.namespace), &self.name, existing.revision()).await {
            Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_within_a_resource_name_and_unique() {
        assert_eq!(endpoint_name("node-1", "k8s", "Web-0", "eth0"), "node-1-k8s-web-0-eth0");
        let long_pod = "p".repeat(243);
        let a = endpoint_name("node-with-a-long-name", "k8s", &long_pod, "eth0");
        let b = endpoint_name("node-with-a-long-name", "k8s", &long_pod, "eth1");
        assert_eq!(a.len(), MAX_NAME);
        assert_ne!(a, b, "the digest keeps interfaces apart");
        assert!(a.starts_with("node-with-a-long-name-k8s-ppp"), "{a}");
        let odd = endpoint_name("n1", "cni", "Ab_c.", "eth0");
        assert!(odd.starts_with("n1-cni-ab-c--eth0-"), "{odd}");
        assert_eq!(endpoint_name("n1", "k8s", "web.v2", "eth0.100"), "n1-k8s-web.v2-eth0.100", "dotted labels stay");
        assert_ne!(odd, endpoint_name("n1", "cni", "Ab-c.", "eth0"), "'_' and '-' stay apart");
        for name in [a, odd] {
            let mut validator = brindle_datastore::resource::Validator::new("WorkloadEndpoint", &name);
            validator.dns_subdomain("metadata.name", &name);
            assert!(validator.finish().is_ok(), "{name}");
        }
    }
}
