//! Node: one host of the cluster, as its agent registered it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Spec, Validator};

/// The Node spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    /// The node's BGP identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgp>,
    /// The address of the node's IPv4 VXLAN device.
    #[serde(default, rename = "ipv4VXLANTunnelAddr", skip_serializing_if = "Option::is_none")]
    pub ipv4_vxlan_tunnel_addr: Option<Ipv4Addr>,
    /// The address of the node's IPv6 VXLAN device.
    #[serde(default, rename = "ipv6VXLANTunnelAddr", skip_serializing_if = "Option::is_none")]
    pub ipv6_vxlan_tunnel_addr: Option<Ipv6Addr>,
    /// The MAC address of the node's IPv4 VXLAN device.
    #[serde(default, rename = "vxlanTunnelMACAddr", skip_serializing_if = "Option::is_none")]
    pub vxlan_tunnel_mac_addr: Option<String>,
    /// The MAC address of the node's IPv6 VXLAN device.
    #[serde(default, rename = "vxlanTunnelMACAddrV6", skip_serializing_if = "Option::is_none")]
    pub vxlan_tunnel_mac_addr_v6: Option<String>,
    /// The public key of the node's WireGuard device (base64), published by its agent when
    /// WireGuard is enabled (Calico keeps it in the Node's status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<String>,
    /// The public key of the node's IPv6 WireGuard device (its own key pair), published when
    /// `wireguardEnabledV6`.
    #[serde(default, rename = "wireguardPublicKeyV6", skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key_v6: Option<String>,
    /// Every address the node is known by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// The orchestrators' nodes this node is (Calico's `orchestratorRefs`). brindle-controllers
    /// records the Kubernetes Node whose labels it copies here on the etcd datastore, and
    /// deletes this node once that Kubernetes Node is gone; a node with no reference is never
    /// deleted for want of one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orchestrator_refs: Vec<OrchestratorRef>,
}

/// A node of an orchestrator that a brindle Node is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrchestratorRef {
    /// The orchestrator: `k8s` for Kubernetes.
    pub orchestrator: String,
    /// The orchestrator's name for the node.
    pub node_name: String,
}

impl OrchestratorRef {
    /// The orchestrator name of Kubernetes.
    pub const KUBERNETES: &'static str = "k8s";

    /// A reference to Kubernetes Node `name`.
    pub fn kubernetes(name: &str) -> OrchestratorRef {
        OrchestratorRef { orchestrator: Self::KUBERNETES.to_owned(), node_name: name.to_owned() }
    }
}

/// A node's BGP identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBgp {
    /// The node's IPv4 address with its subnet's prefix length, e.g. `10.0.0.5/24`.
    #[serde(default, rename = "ipv4Address", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub ipv4_address: Option<IpNetwork>,
    /// The node's IPv6 address with its prefix length.
    #[serde(default, rename = "ipv6Address", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub ipv6_address: Option<IpNetwork>,
    /// The node's own AS number; the cluster-wide one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Makes the node a route reflector for this cluster ID.
    #[serde(default, rename = "routeReflectorClusterID", skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// The address of the node's IP-in-IP device.
    #[serde(default, rename = "ipv4IPIPTunnelAddr", skip_serializing_if = "Option::is_none")]
    pub ipv4_ipip_tunnel_addr: Option<Ipv4Addr>,
}

/// One address of a node, as Kubernetes reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeAddress {
    /// The address.
    pub address: IpAddr,
    /// `InternalIP`, `ExternalIP`, `CalicoNodeIP`-style tags.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Whether `key` is a WireGuard key as `wg` prints one: 32 bytes in base64 (44 characters,
/// the last `=`, the one before it from the 16 that end a 32-byte encoding).
pub fn is_wireguard_key(key: &str) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = key.as_bytes();
    bytes.len() == 44
        && bytes[43] == b'='
        && bytes[..43].iter().all(|b| ALPHABET.contains(b))
        && ALPHABET.iter().position(|c| *c == bytes[42]).is_some_and(|i| i % 4 == 0)
}

impl Node {
    /// The node's IPv4 address, from its BGP identity.
    pub fn ipv4(&self) -> Option<IpNetwork> {
        self.bgp.as_ref().and_then(|b| b.ipv4_address)
    }

    /// The node's address of a family (with its subnet's prefix length).
    pub fn address_of_family(&self, ipv6: bool) -> Option<IpNetwork> {
        self.bgp.as_ref().and_then(|b| if ipv6 { b.ipv6_address } else { b.ipv4_address })
    }

    /// The address of the node's VXLAN device of a family.
    pub fn vxlan_tunnel_addr(&self, ipv6: bool) -> Option<IpAddr> {
        if ipv6 { self.ipv6_vxlan_tunnel_addr.map(IpAddr::V6) } else { self.ipv4_vxlan_tunnel_addr.map(IpAddr::V4) }
    }

    /// The public key of the node's WireGuard device of a family.
    pub fn wireguard_key(&self, ipv6: bool) -> Option<&str> {
        if ipv6 { self.wireguard_public_key_v6.as_deref() } else { self.wireguard_public_key.as_deref() }
    }

    /// The MAC of the node's VXLAN device of a family.
    pub fn vxlan_tunnel_mac(&self, ipv6: bool) -> Option<&str> {
        if ipv6 { self.vxlan_tunnel_mac_addr_v6.as_deref() } else { self.vxlan_tunnel_mac_addr.as_deref() }
    }

    /// The node's address of `ip`'s family (with its subnet's prefix length).
    pub fn address_like(&self, ip: IpAddr) -> Option<IpNetwork> {
        self.address_of_family(ip.is_ipv6())
    }

    /// Every address the node is known by: its BGP addresses of both families and the
    /// addresses it lists.
    pub fn known_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let bgp = self.bgp.iter().flat_map(|b| [b.ipv4_address, b.ipv6_address]).flatten().map(|n| n.ip());
        bgp.chain(self.addresses.iter().map(|a| a.address))
    }
}

impl Spec for Node {
    const KIND: &'static str = "Node";
    const PLURAL: &'static str = "nodes";

    fn validate(&self, v: &mut Validator) {
        if let Some(bgp) = &self.bgp {
            if let Some(a) = bgp.ipv4_address {
                v.require(a.is_ipv4(), "spec.bgp.ipv4Address", a, "must be an IPv4 address with its prefix length");
            }
            if let Some(a) = bgp.ipv6_address {
                v.require(a.is_ipv6(), "spec.bgp.ipv6Address", a, "must be an IPv6 address with its prefix length");
            }
            if let Some(asn) = bgp.as_number {
                v.as_number("spec.bgp.asNumber", asn);
            }
        }
        if let Some(mac) = &self.vxlan_tunnel_mac_addr {
            v.mac("spec.vxlanTunnelMACAddr", mac);
        }
        if let Some(mac) = &self.vxlan_tunnel_mac_addr_v6 {
            v.mac("spec.vxlanTunnelMACAddrV6", mac);
        }
        for (field, key) in [
            ("spec.wireguardPublicKey", &self.wireguard_public_key),
            ("spec.wireguardPublicKeyV6", &self.wireguard_public_key_v6),
        ] {
            if let Some(key) = key {
                v.require(is_wireguard_key(key), field, key, "must be a WireGuard key: 32 bytes in base64");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, from_value};

    #[test]
    fn calico_field_names_parse() {
        let node: Resource<Node> = from_value(serde_json::json!({
            "apiVersion": "brindle.io/v1", "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"bgp": {"ipv4Address": "10.0.0.5/24", "asNumber": 64513,
                             "routeReflectorClusterID": "224.0.0.1", "ipv4IPIPTunnelAddr": "10.244.0.1"},
                     "ipv4VXLANTunnelAddr": "10.244.0.2", "vxlanTunnelMACAddr": "66:aa:bb:cc:dd:ee",
                     "addresses": [{"address": "10.0.0.5", "type": "InternalIP"}]}
        }))
        .unwrap();
        assert_eq!(node.spec.ipv4().unwrap().to_string(), "10.0.0.5/24");
        assert!(node.validate().is_ok());
    }

    #[test]
    fn wrong_family_and_bad_mac_are_named() {
        let mut node = Resource::new("n1", Node::default());
        node.spec.bgp = Some(NodeBgp {
            ipv4_address: Some("fd00::1/64".parse().unwrap()),
            as_number: Some(0),
            ..NodeBgp::default()
        });
        node.spec.vxlan_tunnel_mac_addr = Some("66:aa".into());
        node.spec.wireguard_public_key = Some("not a key".into());
        node.spec.wireguard_public_key_v6 = Some("nor this".into());
        let err = node.validate().unwrap_err().to_string();
        assert!(err.contains("spec.bgp.ipv4Address \"fd00::1/64\""), "{err}");
        assert!(err.contains("spec.bgp.asNumber \"0\""), "{err}");
        assert!(err.contains("spec.vxlanTunnelMACAddr \"66:aa\""), "{err}");
        assert!(err.contains("spec.wireguardPublicKey \"not a key\""), "{err}");
        assert!(err.contains("spec.wireguardPublicKeyV6 \"nor this\""), "{err}");
    }

    #[test]
    fn wireguard_keys_are_44_characters_of_base64_for_32_bytes() {
        // As `wg genkey | wg pubkey` prints them.
        assert!(is_wireguard_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="));
        assert!(is_wireguard_key("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="));
        assert!(!is_wireguard_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg"), "no padding");
        assert!(!is_wireguard_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dh="), "33rd byte's bits set");
        assert!(!is_wireguard_key("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D!="));
    }
}
