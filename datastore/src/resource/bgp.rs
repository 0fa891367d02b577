//! BGPPeer and BGPConfiguration: who the nodes peer with, and the cluster's BGP settings.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validation::{is_dns_subdomain, is_interface_pattern};
use super::{Spec, Validator};

/// The BGPPeer spec: one peering, global or for selected nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPeer {
    /// Only this node peers (otherwise every node, or those `nodeSelector` picks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The nodes that peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// The peer's address, optionally with a port: `10.0.0.1`, `10.0.0.1:1179`, `[fd00::1]:179`.
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// Peer with the nodes this selects instead of a fixed address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// The peer's AS number (with `peerIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// The TCP MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
    /// Pass routes on with the next hop they came with.
    #[serde(default)]
    pub keep_original_next_hop: bool,
    /// How long the peer's routes are kept while it restarts (graceful restart).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_restart_time: Option<Duration>,
    /// BGPFilters whose rules come, in this order, before the defaults on these sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// The most prefixes the peer may have on a node (BIRD's `import limit`, FRR's
    /// `maximum-prefix`); no limit when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<u32>,
    /// What passing `maxPrefixes` does (default `Restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes_action: Option<MaxPrefixesAction>,
    /// How long a peer that passed `maxPrefixes` stays down (default 60s; with the BIRD
    /// backend, BIRD's error wait).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub max_prefixes_restart_time: Option<Duration>,
    /// A BFD session with the peer (RFC 5880, single hop): its failure ends the BGP session
    /// at once instead of after the hold time. `bfd: {}` for the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<Bfd>,
    /// Calico's switch for BFD: `BFDIfDirectlyConnected` runs BFD with its defaults (or
    /// `bfd`'s settings) when the peer is on one of the node's subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_detection_mode: Option<FailureDetectionMode>,
    /// Time between KEEPALIVEs (default: a third of the hold time).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub keepalive_time: Option<Duration>,
    /// GTSM (RFC 5082): the peer is this many hops away; segments from further away are
    /// dropped, and ours are sent with TTL 255.
    #[serde(default, rename = "ttlSecurity", skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// Which address the node speaks from: `UseNodeIP` (the default) or `None` (the kernel's
    /// choice for the route to the peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// The AS the node speaks as to this peer, instead of its own.
    #[serde(default, rename = "localASNumber", skip_serializing_if = "Option::is_none")]
    pub local_as_number: Option<u32>,
    /// How often the node's AS may appear in a route from the peer before it is taken for a
    /// loop (allowas-in; default 0).
    #[serde(default, rename = "numAllowedLocalASNumbers", skip_serializing_if = "Option::is_none")]
    pub num_allowed_local_as_numbers: Option<u8>,
    /// The gateway a peer on none of the node's subnets is reached through: the node gets a
    /// route to `peerIP` through it (Calico's reachableBy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_by: Option<IpAddr>,
}

/// When to run BFD with a peer (Calico's `failureDetectionMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureDetectionMode {
    /// None beyond `bfd`, if given.
    #[default]
    None,
    /// BFD when the peer is directly connected.
    BFDIfDirectlyConnected,
}

/// The address a node speaks BGP from (Calico's `sourceAddress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SourceAddress {
    /// The node's own address of the peer's family.
    #[default]
    UseNodeIP,
    /// Whatever the kernel picks for the route to the peer.
    None,
}

/// A BFD session's settings (asynchronous mode, single hop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bfd {
    /// How often to send once the session is up (default 300ms).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub min_tx: Option<Duration>,
    /// How often the peer's packets can be taken (default 300ms).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub min_rx: Option<Duration>,
    /// Packets missed before the path is declared down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u8>,
    /// When BFD goes down, keep the peer's routes as stale if graceful restart was negotiated
    /// (BIRD's `bfd graceful`); by default they go at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub graceful: bool,
}

impl Bfd {
    /// Checks the intervals and the multiplier, naming fields under `field`.
    pub fn validate(&self, field: &str, v: &mut Validator) {
        for (name, interval) in [("minTx", self.min_tx), ("minRx", self.min_rx)] {
            if let Some(interval) = interval {
                // The packet carries microseconds in 32 bits.
                let usable = interval >= Duration::from_millis(1) && interval.as_micros() <= u128::from(u32::MAX);
                v.require(usable, &format!("{field}.{name}"), format!("{interval:?}"), "must be 1ms to 1h11m");
            }
        }
        if self.multiplier == Some(0) {
            v.problem(&format!("{field}.multiplier"), 0, "must be 1-255");
        }
    }
}

/// What a peer passing its `maxPrefixes` causes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MaxPrefixesAction {
    /// The session ends with Cease 6/1 (RFC 4486), the peer's routes go, and it comes back
    /// after `maxPrefixesRestartTime`.
    #[default]
    Restart,
    /// A warning in the log; the routes are kept.
    Warn,
}

/// Where a BGP password comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPassword {
    /// A key of a Kubernetes secret in brindle's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A file on the node holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl BgpPassword {
    /// Checks that exactly one source is given, and a secret's name and key, naming fields
    /// under `field`.
    pub fn validate(&self, field: &str, v: &mut Validator) {
        v.require(
            self.secret_key_ref.is_some() != self.file.is_some(),
            field,
            "",
            "give exactly one of secretKeyRef or file",
        );
        if let Some(secret) = &self.secret_key_ref {
            v.dns_subdomain(&format!("{field}.secretKeyRef.name"), &secret.name);
            v.require(
                is_secret_key(&secret.key),
                &format!("{field}.secretKeyRef.key"),
                &secret.key,
                "must be letters, digits, '-', '_' and '.' (not '.' nor starting with '..'), at most 253 characters",
            );
        }
    }
}

/// A key of a Kubernetes secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The secret's name.
    pub name: String,
    /// The key within it.
    pub key: String,
}

impl SecretKeyRef {
    /// The file the key is in when the secret is mounted as a volume at `dir/<name>`, or
    /// `None` when the name or key could lead elsewhere (checked again here, as a resource
    /// may have been stored before validation knew the rule).
    pub fn file_in(&self, dir: &Path) -> Option<PathBuf> {
        (is_dns_subdomain(&self.name) && is_secret_key(&self.key)).then(|| dir.join(&self.name).join(&self.key))
    }
}

impl BgpPeer {
    /// The peer's address and the port `peerIP` names, if it names one (`None`: no `peerIP`,
    /// or one that is not an address).
    pub fn peer_address(&self) -> Option<(IpAddr, Option<u16>)> {
        parse_peer_ip(self.peer_ip.as_deref()?)
    }
}

/// A `peerIP`: `10.0.0.1`, `10.0.0.1:1179`, `fd00::1`, `[fd00::1]:1179`; the port when given.
fn parse_peer_ip(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    s.parse::<SocketAddr>().ok().map(|a| (a.ip(), Some(a.port())))
}

/// Whether another host can be a BGP peer at `ip`: not unspecified, loopback, multicast,
/// broadcast or link-local (which would need an interface to be named).
fn is_peer_host(ip: IpAddr) -> bool {
    let special = match ip {
        IpAddr::V4(a) => a.is_broadcast() || a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    };
    !(special || ip.is_unspecified() || ip.is_loopback() || ip.is_multicast())
}

impl Spec for BgpPeer {
    const KIND: &'static str = "BGPPeer";
    const PLURAL: &'static str = "bgppeers";

    fn validate(&self, v: &mut Validator) {
        if self.node.is_some() && self.node_selector.is_some() {
            v.problem(
                "spec.nodeSelector",
                self.node_selector.as_deref().unwrap_or_default(),
                "cannot be used together with spec.node",
            );
        }
        if let Some(s) = &self.node_selector {
            v.selector("spec.nodeSelector", s);
        }
        match (&self.peer_ip, &self.peer_selector) {
            (Some(_), Some(sel)) => v.problem("spec.peerSelector", sel, "cannot be used together with spec.peerIP"),
            (None, None) => v.problem("spec.peerIP", "", "one of peerIP or peerSelector is required"),
            (Some(ip), None) => {
                match parse_peer_ip(ip) {
                    None => v.problem(
                        "spec.peerIP",
                        ip,
                        "must be an IP address, optionally with a port (10.0.0.1:179, [fd00::1]:179)",
                    ),
                    Some((address, _)) if !is_peer_host(address) => v.problem(
                        "spec.peerIP",
                        ip,
                        "must be the unicast address of another host (not loopback, multicast, broadcast, \
                         link-local or unspecified)",
                    ),
                    Some((_, Some(0))) => v.problem("spec.peerIP", ip, "the port must be 1-65535"),
                    Some(_) => {}
                }
                match self.as_number {
                    Some(asn) => v.as_number("spec.asNumber", asn),
                    None => v.problem("spec.asNumber", "", "is required with peerIP"),
                }
            }
            (None, Some(sel)) => {
                v.selector("spec.peerSelector", sel);
                if let Some(asn) = self.as_number {
                    v.problem(
                        "spec.asNumber",
                        asn,
                        "must be left out with peerSelector: each selected node's own AS is used",
                    );
                }
            }
        }
        for (i, name) in self.filters.iter().enumerate() {
            v.dns_subdomain(&format!("spec.filters[{i}]"), name);
        }
        if let Some(bfd) = &self.bfd {
            bfd.validate("spec.bfd", v);
        }
        if let Some(asn) = self.local_as_number {
            v.as_number("spec.localASNumber", asn);
        }
        if self.ttl_security == Some(0) {
            v.problem("spec.ttlSecurity", 0, "must be 1-255 hops");
        }
        if let Some(k) = self.keepalive_time {
            v.require(
                (1..=u64::from(u16::MAX)).contains(&k.as_secs()),
                "spec.keepaliveTime",
                format!("{k:?}"),
                "must be 1s to 18h",
            );
        }
        if self.max_prefixes == Some(0) {
            v.problem("spec.maxPrefixes", 0, "must be at least 1 (leave it out for no limit)");
        }
        if self.max_prefixes.is_none() {
            if let Some(action) = self.max_prefixes_action {
                v.problem("spec.maxPrefixesAction", format!("{action:?}"), "needs spec.maxPrefixes");
            }
            if let Some(time) = self.max_prefixes_restart_time {
                v.problem("spec.maxPrefixesRestartTime", format!("{time:?}"), "needs spec.maxPrefixes");
            }
        }
        if let Some(password) = &self.password {
            password.validate("spec.password", v);
        }
        if let Some(gateway) = self.reachable_by {
            match (&self.peer_ip, self.peer_address()) {
                (None, _) => v.problem("spec.reachableBy", gateway, "needs spec.peerIP"),
                (Some(_), None) => {} // peerIP's own problem says it.
                (Some(_), Some((peer, _))) => v.require(
                    gateway.is_ipv4() == peer.is_ipv4() && is_peer_host(gateway) && gateway != peer,
                    "spec.reachableBy",
                    gateway,
                    "must be a unicast address of peerIP's family, other than peerIP",
                ),
            }
        }
    }
}

/// A key of a Kubernetes secret, as Kubernetes allows them: what becomes a file name in a
/// secret volume (never `.`, `..` or kubelet's own `..data`-style names).
fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && !key.starts_with("..")
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A named community value that prefix advertisements can refer to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Community {
    /// The name used in `prefixAdvertisements`.
    pub name: String,
    /// `aa:nn` (standard) or `aa:nn:mm` (large).
    pub value: String,
}

/// Communities to attach to the routes inside a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrefixAdvertisement {
    /// The routes it applies to.
    #[schemars(with = "String")]
    pub cidr: IpNetwork,
    /// Community names (from `communities`) or literal values.
    #[serde(default)]
    pub communities: Vec<String>,
}

/// A service range to advertise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceCidr {
    /// The range.
    #[schemars(with = "String")]
    pub cidr: IpNetwork,
}

fn default_asn() -> u32 {
    64512
}

fn default_true() -> bool {
    true
}

fn default_port() -> u16 {
    179
}

/// The BGPConfiguration spec: `default` for the cluster, `node.<name>` to override for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpConfiguration {
    /// The cluster's AS number.
    #[serde(default = "default_asn")]
    pub as_number: u32,
    /// Whether every node peers with every other node.
    #[serde(default = "default_true")]
    pub node_to_node_mesh_enabled: bool,
    /// The TCP port BGP listens on.
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// The BGP speaker's log level (the embedded speaker's, or BIRD's: Debug turns on its
    /// protocol debugging); unset, the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<super::LogSeverity>,
    /// Named communities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// Communities per advertised range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// Service cluster IP ranges to advertise.
    #[serde(default, rename = "serviceClusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub service_cluster_ips: Vec<ServiceCidr>,
    /// Service external IP ranges to advertise.
    #[serde(default, rename = "serviceExternalIPs", skip_serializing_if = "Vec::is_empty")]
    pub service_external_ips: Vec<ServiceCidr>,
    /// Service LoadBalancer IP ranges to advertise (the addresses a load-balancer controller
    /// gives Services of type LoadBalancer).
    #[serde(default, rename = "serviceLoadBalancerIPs", skip_serializing_if = "Vec::is_empty")]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
    /// BFD on every node-to-node mesh session (none when left out).
    #[serde(default, rename = "nodeMeshBFD", skip_serializing_if = "Option::is_none")]
    pub node_mesh_bfd: Option<Bfd>,
    /// The TCP MD5 password of every node-to-node mesh session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BgpPassword>,
    /// How long a mesh peer's routes are kept while it restarts (graceful restart).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub node_mesh_max_restart_time: Option<Duration>,
    /// The most equal-cost paths (from several peers, e.g. two top-of-rack routers) a learned
    /// route spreads over (ECMP, BIRD's `merge paths`); 1 keeps the best alone. Taken at the
    /// agent's start.
    #[serde(default = "default_max_paths")]
    pub max_paths: u8,
    /// Interfaces (names or globs with `*` and `?`) whose device routes brindle does not read,
    /// beyond the pods' `brin*` and kube-proxy's `kube-ipvs*`: BGPFilter `interface` rules
    /// never match a route through them, and BIRD's `direct` protocol leaves them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_interfaces: Vec<String>,
}

fn default_max_paths() -> u8 {
    8
}

impl BgpConfiguration {
    /// Every service range to advertise, each with its field's name: cluster IPs, external
    /// IPs, LoadBalancer IPs.
    pub fn service_ranges(&self) -> impl Iterator<Item = (&'static str, usize, IpNetwork)> + '_ {
        [
            ("spec.serviceClusterIPs", &self.service_cluster_ips),
            ("spec.serviceExternalIPs", &self.service_external_ips),
            ("spec.serviceLoadBalancerIPs", &self.service_load_balancer_ips),
        ]
        .into_iter()
        .flat_map(|(field, list)| list.iter().enumerate().map(move |(i, s)| (field, i, s.cidr)))
    }
}

impl Default for BgpConfiguration {
    fn default() -> Self {
        BgpConfiguration {
            as_number: default_asn(),
            node_to_node_mesh_enabled: true,
            listen_port: default_port(),
            log_severity_screen: None,
            communities: Vec::new(),
            prefix_advertisements: Vec::new(),
            service_cluster_ips: Vec::new(),
            service_external_ips: Vec::new(),
            service_load_balancer_ips: Vec::new(),
            node_mesh_bfd: None,
            node_mesh_password: None,
            node_mesh_max_restart_time: None,
            max_paths: default_max_paths(),
            ignored_interfaces: Vec::new(),
        }
    }
}

/// Whether `value` is a standard (`aa:nn`, 16-bit parts) or large (`aa:nn:mm`, 32-bit) community.
fn is_community(value: &str) -> bool {
    let parts: Vec<&str> = value.split(':').collect();
    match parts.len() {
        2 => parts.iter().all(|p| p.parse::<u16>().is_ok()),
        3 => parts.iter().all(|p| p.parse::<u32>().is_ok()),
        _ => false,
    }
}

impl Spec for BgpConfiguration {
    const KIND: &'static str = "BGPConfiguration";
    const PLURAL: &'static str = "bgpconfigurations";

    fn validate(&self, v: &mut Validator) {
        v.as_number("spec.asNumber", self.as_number);
        v.require(self.listen_port != 0, "spec.listenPort", self.listen_port, "must be a port number 1-65535");
        for (i, c) in self.communities.iter().enumerate() {
            v.require(
                is_community(&c.value),
                &format!("spec.communities[{i}].value"),
                &c.value,
                "must be aa:nn or aa:nn:mm",
            );
        }
        for (i, adv) in self.prefix_advertisements.iter().enumerate() {
            v.network_address(&format!("spec.prefixAdvertisements[{i}].cidr"), &adv.cidr);
            for c in &adv.communities {
                let known = self.communities.iter().any(|named| &named.name == c);
                v.require(
                    known || is_community(c),
                    &format!("spec.prefixAdvertisements[{i}].communities"),
                    c,
                    "is neither a name from spec.communities nor an aa:nn / aa:nn:mm value",
                );
            }
        }
        for (field, i, cidr) in self.service_ranges() {
            v.network_address(&format!("{field}[{i}].cidr"), &cidr);
        }
        if let Some(bfd) = &self.node_mesh_bfd {
            bfd.validate("spec.nodeMeshBFD", v);
        }
        if let Some(password) = &self.node_mesh_password {
            password.validate("spec.nodeMeshPassword", v);
        }
        v.require(self.max_paths >= 1, "spec.maxPaths", self.max_paths, "must be 1-255 (1: no multipath)");
        for (i, name) in self.ignored_interfaces.iter().enumerate() {
            let field = format!("spec.ignoredInterfaces[{i}]");
            v.require(is_interface_pattern(name), &field, name, "must be an interface name or glob (eth*, kube-*)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;

    fn problems<S: Spec>(spec: S) -> String {
        Resource::new("x", spec).validate().map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn peer_needs_exactly_one_target() {
        assert!(problems(BgpPeer::default()).contains("one of peerIP or peerSelector is required"));
        let peer =
            BgpPeer { peer_ip: Some("10.0.0.1".into()), peer_selector: Some("all()".into()), ..BgpPeer::default() };
        assert!(problems(peer).contains("cannot be used together with spec.peerIP"));
    }

    #[test]
    fn a_prefix_limit_is_at_least_one_and_its_settings_need_it() {
        let peer = |max_prefixes, action| BgpPeer {
            peer_ip: Some("10.0.0.1".into()),
            as_number: Some(65000),
            max_prefixes,
            max_prefixes_action: action,
            ..BgpPeer::default()
        };
        assert_eq!(problems(peer(Some(1000), Some(MaxPrefixesAction::Warn))), "");
        assert!(problems(peer(Some(0), None)).contains("spec.maxPrefixes"), "{}", problems(peer(Some(0), None)));
        let orphan = problems(peer(None, Some(MaxPrefixesAction::Warn)));
        assert!(orphan.contains("spec.maxPrefixesAction") && orphan.contains("needs spec.maxPrefixes"), "{orphan}");
        let yaml: BgpPeer = serde_saphyr::from_str(
            "peerIP: 10.0.0.1\nasNumber: 65000\nmaxPrefixes: 10\nmaxPrefixesAction: Warn\n\
                                    maxPrefixesRestartTime: 2m\n",
        )
        .unwrap();
        assert_eq!(yaml.max_prefixes_restart_time, Some(Duration::from_secs(120)));
    }

    #[test]
    fn calicos_session_fields_are_read_as_calico_writes_them_and_checked() {
        let peer: BgpPeer = serde_saphyr::from_str(
            "peerIP: 10.0.0.1\nasNumber: 65000\nkeepaliveTime: 10s\nttlSecurity: 1\nsourceAddress: None\n\
             failureDetectionMode: BFDIfDirectlyConnected\nlocalASNumber: 65100\nnumAllowedLocalASNumbers: 2\n\
             reachableBy: 10.0.1.1\n",
        )
        .unwrap();
        assert_eq!(peer.reachable_by, Some("10.0.1.1".parse().unwrap()));
        assert_eq!(peer.keepalive_time, Some(Duration::from_secs(10)));
        assert_eq!(peer.ttl_security, Some(1));
        assert_eq!(peer.source_address, Some(SourceAddress::None));
        assert_eq!(peer.failure_detection_mode, Some(FailureDetectionMode::BFDIfDirectlyConnected));
        assert_eq!((peer.local_as_number, peer.num_allowed_local_as_numbers), (Some(65100), Some(2)));
        assert_eq!(problems(peer.clone()), "");
        let bad = BgpPeer {
            ttl_security: Some(0),
            keepalive_time: Some(Duration::from_millis(10)),
            local_as_number: Some(0),
            reachable_by: Some("fd00::1".parse().unwrap()),
            ..peer.clone()
        };
        let said = problems(bad);
        assert!(said.contains("spec.ttlSecurity") && said.contains("spec.keepaliveTime"), "{said}");
        assert!(said.contains("spec.localASNumber"), "{said}");
        assert!(said.contains("spec.reachableBy") && said.contains("of peerIP's family"), "{said}");
        let by_selector = BgpPeer { peer_ip: None, as_number: None, peer_selector: Some("all()".into()), ..peer };
        let said = problems(by_selector);
        assert!(said.contains("spec.reachableBy") && said.contains("needs spec.peerIP"), "{said}");
        let mesh: BgpConfiguration = serde_saphyr::from_str(
            "nodeMeshPassword: {secretKeyRef: {name: bgp, key: '..x'}}\nnodeMeshMaxRestartTime: 2m\n\
             ignoredInterfaces: [docker*, 'bad name']\n",
        )
        .unwrap();
        assert_eq!(mesh.node_mesh_max_restart_time, Some(Duration::from_secs(120)));
        assert_eq!(mesh.ignored_interfaces, ["docker*", "bad name"]);
        let said = problems(mesh);
        assert!(said.contains("spec.nodeMeshPassword.secretKeyRef.key"), "{said}");
        assert!(said.contains("spec.ignoredInterfaces[1] \"bad name\"") && !said.contains("[0]"), "{said}");
    }

    #[test]
    fn bfd_settings_are_read_and_checked_by_field() {
        let peer: BgpPeer = serde_saphyr::from_str(
            "peerIP: 10.0.0.1\nasNumber: 65000\nbfd:\n  minTx: 100ms\n  minRx: 200ms\n  multiplier: 5\n",
        )
        .unwrap();
        let bfd = peer.bfd.unwrap();
        assert_eq!(
            (bfd.min_tx, bfd.min_rx, bfd.multiplier),
            (Some(Duration::from_millis(100)), Some(Duration::from_millis(200)), Some(5))
        );
        assert_eq!(problems(peer.clone()), "");
        let bad =
            BgpPeer { bfd: Some(Bfd { min_rx: Some(Duration::from_micros(10)), multiplier: Some(0), ..bfd }), ..peer };
        let said = problems(bad);
        assert!(said.contains("spec.bfd.minRx") && said.contains("spec.bfd.multiplier"), "{said}");
        let mesh = BgpConfiguration {
            node_mesh_bfd: Some(Bfd { multiplier: Some(0), ..Bfd::default() }),
            ..Default::default()
        };
        assert!(problems(mesh).contains("spec.nodeMeshBFD.multiplier"));
    }

    #[test]
    fn peer_ip_takes_an_optional_port() {
        let peer = BgpPeer { peer_ip: Some("[fd00::1]:1179".into()), as_number: Some(65000), ..BgpPeer::default() };
        assert_eq!(peer.peer_address(), Some(("fd00::1".parse().unwrap(), Some(1179))));
        assert_eq!(problems(peer), "");
        let peer = BgpPeer { peer_ip: Some("10.0.0.300".into()), ..BgpPeer::default() };
        let err = problems(peer);
        assert!(err.contains("spec.peerIP \"10.0.0.300\""), "{err}");
        assert!(err.contains("spec.asNumber: is required with peerIP"), "{err}");
    }

    #[test]
    fn peer_ip_is_another_hosts_unicast_address() {
        for bad in ["127.0.0.1", "224.0.0.5", "0.0.0.0", "255.255.255.255", "169.254.1.1", "::1", "fe80::1", "ff02::5"]
        {
            let peer = BgpPeer { peer_ip: Some(bad.into()), as_number: Some(65000), ..BgpPeer::default() };
            let err = problems(peer);
            assert!(
                err.contains(&format!("spec.peerIP \"{bad}\": must be the unicast address of another host")),
                "{err}"
            );
        }
        let peer = BgpPeer { peer_ip: Some("10.0.0.1:0".into()), as_number: Some(65000), ..BgpPeer::default() };
        assert!(problems(peer).contains("the port must be 1-65535"));
    }

    #[test]
    fn password_has_one_source() {
        let peer = BgpPeer {
            peer_ip: Some("10.0.0.1".into()),
            as_number: Some(64512),
            password: Some(BgpPassword::default()),
            ..BgpPeer::default()
        };
        assert!(problems(peer).contains("give exactly one of secretKeyRef or file"));
    }

    #[test]
    fn a_secret_reference_cannot_leave_its_secret() {
        let with_secret = |name: &str, key: &str| BgpPeer {
            peer_ip: Some("10.0.0.1".into()),
            as_number: Some(64512),
            password: Some(BgpPassword {
                secret_key_ref: Some(SecretKeyRef { name: name.into(), key: key.into() }),
                file: None,
            }),
            ..BgpPeer::default()
        };
        assert_eq!(problems(with_secret("bgp-secrets", "rr_1.password")), "");
        let err = problems(with_secret("../etc", ".."));
        assert!(err.contains("spec.password.secretKeyRef.name \"../etc\""), "{err}");
        assert!(err.contains("spec.password.secretKeyRef.key \"..\""), "{err}");
        assert!(problems(with_secret("s", "a/b")).contains("secretKeyRef.key \"a/b\""));
        assert!(problems(with_secret("s", "..data")).contains("secretKeyRef.key \"..data\""));
        // The agent checks again before it reads (a resource may predate the rule).
        let dir = Path::new("/etc/brindle/secrets");
        let file = |name: &str, key: &str| SecretKeyRef { name: name.into(), key: key.into() }.file_in(dir);
        assert_eq!(file("bgp-secrets", "rr"), Some(dir.join("bgp-secrets/rr")));
        assert_eq!(file("bgp-secrets", "/etc/shadow"), None);
        assert_eq!(file("..", "x"), None);
    }

    #[test]
    fn configuration_defaults_and_communities() {
        let config = BgpConfiguration::default();
        assert_eq!((config.as_number, config.node_to_node_mesh_enabled, config.listen_port), (64512, true, 179));
        let config = BgpConfiguration {
            communities: vec![Community { name: "gold".into(), value: "65000:100".into() }],
            prefix_advertisements: vec![PrefixAdvertisement {
                cidr: "10.0.0.0/8".parse().unwrap(),
                communities: vec!["gold".into(), "1:2:3".into(), "silver".into()],
            }],
            ..BgpConfiguration::default()
        };
        let err = problems(config);
        assert!(err.contains("communities \"silver\""), "{err}");
        assert!(!err.contains("\"gold\""), "{err}");
    }
}
