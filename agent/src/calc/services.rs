//! Services with `externalTrafficPolicy: Local`, as Calico advertises them: each of their
//! addresses inside an advertised service range (cluster IPs in `serviceClusterIPs`, external
//! IPs in `serviceExternalIPs`, LoadBalancer IPs in `serviceLoadBalancerIPs`) is advertised as a
//! host route (/32, /128) by exactly the nodes with a ready endpoint of the Service, so traffic
//! from outside arrives where it is served, without a second hop that would lose the client's
//! address. Pure: the agent's Service follower gives the Services and EndpointSlices.

use std::collections::BTreeSet;
use std::net::IpAddr;

use brindle_datastore::resource::BgpConfiguration;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service with `externalTrafficPolicy: Local` and a ready endpoint on this node: its
/// addresses by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalService {
    /// `spec.clusterIPs`.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
}

/// The Services with `externalTrafficPolicy: Local` that have a ready endpoint on `node`.
pub fn local_services<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> Vec<LocalService> {
    let served_here: BTreeSet<(&str, &str)> = slices
        .into_iter()
        .filter(|slice| {
            slice.endpoints.iter().any(|e| {
                e.node_name.as_deref() == Some(node) && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
            })
        })
        .filter_map(|slice| {
            let namespace = slice.metadata.namespace.as_deref()?;
            let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
            Some((namespace, service.as_str()))
        })
        .collect();
    let addresses = |list: Option<&Vec<String>>| -> Vec<IpAddr> {
        list.into_iter().flatten().filter_map(|a| a.parse().ok()).collect()
    };
    services
        .into_iter()
        .filter(|s| s.spec.as_ref().and_then(|spec| spec.external_traffic_policy.as_deref()) == Some("Local"))
        .filter(|s| {
            let key =
                (s.metadata.namespace.as_deref().unwrap_or_default(), s.metadata.name.as_deref().unwrap_or_default());
            served_here.contains(&key)
        })
        .map(|s| {
            let spec = s.spec.as_ref();
            let ingress = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
            LocalService {
                cluster_ips: addresses(spec.and_then(|spec| spec.cluster_ips.as_ref())),
                external_ips: addresses(spec.and_then(|spec| spec.external_ips.as_ref())),
                load_balancer_ips: ingress
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_deref()?.parse().ok())
                    .collect(),
            }
        })
        .collect()
}

/// The host routes this node advertises for `local` Services: each address inside a range
/// `bgp` advertises for its kind.
pub fn host_routes(local: &[LocalService], bgp: &BgpConfiguration) -> BTreeSet<IpNetwork> {
    let within =
        |ranges: &[brindle_datastore::resource::ServiceCidr], ip: &IpAddr| ranges.iter().any(|r| r.cidr.contains(*ip));
    let mut routes = BTreeSet::new();
    for service in local {
        let kinds = [
            (&service.cluster_ips, &bgp.service_cluster_ips),
            (&service.external_ips, &bgp.service_external_ips),
            (&service.load_balancer_ips, &bgp.service_load_balancer_ips),
        ];
        for (ips, ranges) in kinds {
            routes.extend(ips.iter().filter(|ip| within(ranges, ip)).map(|&ip| IpNetwork::from(ip)));
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, policy: &str, cluster_ip: &str, lb_ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "web"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "clusterIPs": [cluster_ip],
                     "externalIPs": ["198.51.100.7"]},
            "status": {"loadBalancer": {"ingress": [{"ip": lb_ip}]}},
        }))
        .unwrap()
    }

    fn slice(service: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|(node, ready)| serde_json::json!({"addresses": ["10.244.0.9"], "nodeName": node, "conditions": {"ready": ready}}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-x1"), "namespace": "web", "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn only_local_services_served_here_are_advertised_and_only_inside_their_ranges() {
        let services = [
            service("here", "Local", "10.96.0.10", "192.0.2.10"),
            service("cluster-policy", "Cluster", "10.96.0.11", "192.0.2.11"),
            service("elsewhere", "Local", "10.96.0.12", "192.0.2.12"),
            service("not-ready-here", "Local", "10.96.0.13", "192.0.2.13"),
        ];
        let slices = [
            slice("here", &[("n2", true), ("n1", true)]),
            slice("cluster-policy", &[("n1", true)]),
            slice("elsewhere", &[("n2", true)]),
            slice("not-ready-here", &[("n1", false)]),
        ];
        let local = local_services(&services, &slices, "n1");
        assert_eq!(local.len(), 1, "{local:?}");
        let cidr = |s: &str| brindle_datastore::resource::ServiceCidr { cidr: s.parse().unwrap() };
        let mut bgp =
            BgpConfiguration { service_cluster_ips: vec![cidr("10.96.0.0/16")], ..BgpConfiguration::default() };
        let routes: Vec<String> = host_routes(&local, &bgp).iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.96.0.10/32"], "the LoadBalancer and external IPs are in no advertised range");
        bgp.service_load_balancer_ips = vec![cidr("192.0.2.0/24")];
        bgp.service_external_ips = vec![cidr("198.51.100.0/24")];
        let routes: Vec<String> = host_routes(&local, &bgp).iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.96.0.10/32", "192.0.2.10/32", "198.51.100.7/32"]);
    }
}
