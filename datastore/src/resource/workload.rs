//! WorkloadEndpoint: one pod interface, written by the CNI plugin.

use ipnetwork::IpNetwork;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Spec, Validator};

fn default_orchestrator() -> String {
    "k8s".into()
}

fn default_endpoint() -> String {
    "eth0".into()
}

/// The WorkloadEndpoint spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEndpoint {
    /// The node the pod runs on.
    pub node: String,
    /// Who created the pod (`k8s`, `cni`).
    #[serde(default = "default_orchestrator")]
    pub orchestrator: String,
    /// The pod's name.
    pub pod: String,
    /// The interface inside the pod.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// The container runtime's ID of the pod sandbox.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The host-side interface.
    pub interface_name: String,
    /// The pod interface's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The pod's addresses, each a /32 or /128.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub ip_networks: Vec<IpNetwork>,
    /// Profiles (policy groups) the endpoint belongs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// The pod's service account (what policies' `serviceAccountSelector` and rules'
    /// `serviceAccounts` match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The pod's named ports (what policies' named ports resolve to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

/// A named port of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    /// The name policies use.
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port number.
    pub port: u16,
}

impl Spec for WorkloadEndpoint {
    const KIND: &'static str = "WorkloadEndpoint";
    const PLURAL: &'static str = "workloadendpoints";
    const NAMESPACED: bool = true;

    fn validate(&self, v: &mut Validator) {
        v.require(!self.node.is_empty(), "spec.node", "", "is required");
        v.require(!self.container_id.is_empty(), "spec.containerID", "", "is required");
        let name_ok = !self.interface_name.is_empty() && self.interface_name.len() <= 15;
        v.require(
            name_ok,
            "spec.interfaceName",
            &self.interface_name,
            "must be 1-15 characters (a Linux interface name)",
        );
        if let Some(mac) = &self.mac {
            v.mac("spec.mac", mac);
        }
        for (i, port) in self.ports.iter().enumerate() {
            v.port_name(&format!("spec.ports[{i}].name"), &port.name);
            v.require(
                ["TCP", "UDP", "SCTP"].contains(&port.protocol.as_str()),
                &format!("spec.ports[{i}].protocol"),
                &port.protocol,
                "must be TCP, UDP or SCTP",
            );
            v.require(port.port != 0, &format!("spec.ports[{i}].port"), port.port, "must be 1-65535");
        }
        for (i, net) in self.ip_networks.iter().enumerate() {
            let host = if net.is_ipv4() { 32 } else { 128 };
            v.require(
                net.prefix() == host,
                &format!("spec.ipNetworks[{i}]"),
                net,
                "must be a single address (/32 or /128)",
            );
        }
    }
}
