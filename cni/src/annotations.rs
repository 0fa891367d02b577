//! What a Pod, and its namespace, ask of IPAM through annotations, as Calico's
//! `cni.projectcalico.org/*` annotations do (on the Kubernetes datastore, where the plugin can
//! read the Pod):
//!
//! - `brindle.io/ipv4pools`, `brindle.io/ipv6pools`: the pools to take the pod's address from,
//!   a JSON list of names or CIDRs, on the Pod or on its namespace (the Pod's win), instead of
//!   the network config's;
//! - `brindle.io/ipAddrs`: fixed addresses from IPAM, a JSON list of at most one address per
//!   family, on the Pod only (refused when another holds one, or it lies in no pool);
//! - `brindle.io/ipAddrsNoIpam`: addresses IPAM knows nothing of, on the Pod only, when the
//!   network config allows them (`"feature_control": {"ip_addrs_no_ipam": true}`), since they
//!   bypass every safeguard IPAM gives.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_datastore::store::KubernetesStore;
use brindle_datastore::store::kubernetes::PodFacts;

use crate::env::PodArgs;
use crate::error::{Error, Result};

/// The pools a pod's IPv4 address comes from.
pub const IPV4_POOLS: &str = "brindle.io/ipv4pools";
/// The pools a pod's IPv6 address comes from.
pub const IPV6_POOLS: &str = "brindle.io/ipv6pools";
/// Fixed addresses from IPAM.
pub const IP_ADDRS: &str = "brindle.io/ipAddrs";
/// Addresses outside IPAM.
pub const IP_ADDRS_NO_IPAM: &str = "brindle.io/ipAddrsNoIpam";

/// What the annotations ask for; empty when they ask nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRequest {
    /// IPv4 pools, instead of the network config's.
    pub ipv4_pools: Option<Vec<String>>,
    /// IPv6 pools, instead of the network config's.
    pub ipv6_pools: Option<Vec<String>>,
    /// Exactly these addresses, from IPAM.
    pub fixed: Vec<IpAddr>,
    /// Exactly these addresses, without IPAM.
    pub without_ipam: Vec<IpAddr>,
}

impl AddressRequest {
    /// Whether the annotations ask for anything.
    pub fn is_empty(&self) -> bool {
        *self == AddressRequest::default()
    }
}

/// What the plugin learns from a pod's Kubernetes Pod.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    /// What its WorkloadEndpoint carries.
    pub facts: PodFacts,
    /// What it asks of IPAM.
    pub addresses: AddressRequest,
}

/// Reads the pod's Pod (and, when it may matter, its namespace) from the Kubernetes API; an
/// empty view without the API, for a runtime that names no pod, or for a Pod the API does not
/// have.
pub async fn view(api: Option<&KubernetesStore>, pod: &PodArgs) -> Result<PodView> {
    let (Some(api), Some(namespace), Some(name)) = (api, &pod.namespace, &pod.name) else {
        return Ok(PodView::default());
    };
    let Some(object) = api.pod(namespace, name).await? else {
        tracing::warn!(%namespace, %name, "no such Pod in the Kubernetes API: its endpoint has no labels");
        return Ok(PodView::default());
    };
    let own = object.metadata.annotations.clone().unwrap_or_default();
    let namespace_annotations =
        if consults_namespace(&own) { api.namespace_annotations(namespace).await? } else { BTreeMap::new() };
    Ok(PodView { facts: PodFacts::of(&object), addresses: parse(&own, &namespace_annotations)? })
}

/// Whether the namespace's annotations could change what the Pod's ask.
fn consults_namespace(pod: &BTreeMap<String, String>) -> bool {
    let fixed = pod.contains_key(IP_ADDRS) || pod.contains_key(IP_ADDRS_NO_IPAM);
    let both_pools = pod.contains_key(IPV4_POOLS) && pod.contains_key(IPV6_POOLS);
    !(fixed || both_pools)
}

fn refused(annotation: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidAnnotation { on: "Pod", annotation: annotation.to_owned(), why: why.to_string() }
}

fn list(annotations: &BTreeMap<String, String>, key: &str) -> Result<Option<Vec<String>>> {
    let Some(text) = annotations.get(key) else { return Ok(None) };
    let items: Vec<String> = serde_json::from_str(text)
        .map_err(|e| refused(key, format!("{text:?} is not a JSON list of strings ({e})")))?;
    if items.is_empty() {
        return Err(refused(key, "the list is empty"));
    }
    Ok(Some(items))
}

fn addresses(annotations: &BTreeMap<String, String>, key: &str) -> Result<Vec<IpAddr>> {
    let Some(items) = list(annotations, key)? else { return Ok(Vec::new()) };
    let ips: Vec<IpAddr> = items
        .iter()
        .map(|s| s.parse().map_err(|_| refused(key, format!("{s:?} is not an IP address"))))
        .collect::<Result<_>>()?;
    for family in [true, false] {
        if ips.iter().filter(|ip| ip.is_ipv4() == family).count() > 1 {
            let name = if family { "IPv4" } else { "IPv6" };
            return Err(refused(key, format!("a pod has at most one {name} address, and {items:?} lists more")));
        }
    }
    Ok(ips)
}

/// What the Pod's annotations, and its namespace's, ask for.
pub fn parse(pod: &BTreeMap<String, String>, namespace: &BTreeMap<String, String>) -> Result<AddressRequest> {
    let fixed = addresses(pod, IP_ADDRS)?;
    let without_ipam = addresses(pod, IP_ADDRS_NO_IPAM)?;
    if !fixed.is_empty() && !without_ipam.is_empty() {
        return Err(refused(IP_ADDRS, format!("cannot be used together with {IP_ADDRS_NO_IPAM}")));
    }
    let pools = |key: &str| -> Result<Option<Vec<String>>> {
        let own = list(pod, key)?;
        if own.is_some() && (!fixed.is_empty() || !without_ipam.is_empty()) {
            return Err(refused(key, "cannot be used together with fixed addresses"));
        }
        if own.is_some() || !fixed.is_empty() || !without_ipam.is_empty() {
            return Ok(own);
        }
        list(namespace, key).map_err(|e| match e {
            Error::InvalidAnnotation { annotation, why, .. } => {
                Error::InvalidAnnotation { on: "namespace", annotation, why }
            }
            other => other,
        })
    };
    Ok(AddressRequest { ipv4_pools: pools(IPV4_POOLS)?, ipv6_pools: pools(IPV6_POOLS)?, fixed, without_ipam })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_pods_pools_win_over_its_namespaces_family_by_family() {
        let pod = annotations(&[(IPV4_POOLS, r#"["blue"]"#)]);
        let namespace = annotations(&[(IPV4_POOLS, r#"["red"]"#), (IPV6_POOLS, r#"["fd00:1::/64"]"#)]);
        let request = parse(&pod, &namespace).unwrap();
        assert_eq!(request.ipv4_pools, Some(vec!["blue".to_owned()]));
        assert_eq!(request.ipv6_pools, Some(vec!["fd00:1::/64".to_owned()]));
        assert!(consults_namespace(&pod));
        assert!(parse(&BTreeMap::new(), &BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn fixed_addresses_are_one_per_family_and_exclude_pools_and_each_other() {
        let pod = annotations(&[(IP_ADDRS, r#"["10.244.3.7", "fd00::7"]"#)]);
        let namespace = annotations(&[(IPV4_POOLS, r#"["red"]"#)]);
        let request = parse(&pod, &namespace).unwrap();
        assert_eq!(request.fixed, ["10.244.3.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]);
        assert_eq!(request.ipv4_pools, None, "the namespace's pools do not apply to fixed addresses");
        assert!(!consults_namespace(&pod));

        let refusal = |pairs: &[(&str, &str)]| parse(&annotations(pairs), &BTreeMap::new()).unwrap_err().to_string();
        assert_eq!(
            refusal(&[(IP_ADDRS, r#"["10.0.0.1", "10.0.0.2"]"#)]),
            r#"Pod annotation brindle.io/ipAddrs: a pod has at most one IPv4 address, and ["10.0.0.1", "10.0.0.2"] lists more"#
        );
        assert_eq!(
            refusal(&[(IP_ADDRS, r#"["10.0.0.1"]"#), (IP_ADDRS_NO_IPAM, r#"["10.9.0.1"]"#)]),
            "Pod annotation brindle.io/ipAddrs: cannot be used together with brindle.io/ipAddrsNoIpam"
        );
        assert_eq!(
            refusal(&[(IP_ADDRS, r#"["10.0.0.1"]"#), (IPV4_POOLS, r#"["red"]"#)]),
            "Pod annotation brindle.io/ipv4pools: cannot be used together with fixed addresses"
        );
        assert_eq!(
            refusal(&[(IP_ADDRS, r#"["ten"]"#)]),
            r#"Pod annotation brindle.io/ipAddrs: "ten" is not an IP address"#
        );
        assert!(
            refusal(&[(IPV6_POOLS, "fd00::/64")])
                .starts_with(r#"Pod annotation brindle.io/ipv6pools: "fd00::/64" is not a JSON list of strings"#)
        );
    }

    #[test]
    fn a_namespaces_bad_annotation_is_named_as_the_namespaces() {
        let namespace = annotations(&[(IPV4_POOLS, "[]")]);
        let refusal = parse(&BTreeMap::new(), &namespace).unwrap_err();
        assert_eq!(refusal.to_string(), "namespace annotation brindle.io/ipv4pools: the list is empty");
        assert_eq!(refusal.code(), 7);
        let json: serde_json::Value = serde_json::from_str(&refusal.to_json("1.0.0")).unwrap();
        assert_eq!(json["details"], IPV4_POOLS);
    }
}
