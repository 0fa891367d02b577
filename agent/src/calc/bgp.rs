//! The BGP plan, pure: for a cluster snapshot, which peers this node has (the node-to-node
//! mesh, route reflectors, BGPPeers), with which filters and passwords, and which prefixes it
//! originates (its blocks, borrowed addresses, service ranges) with their communities. The
//! embedded speaker (`crate::bgp`) and BIRD's configuration (`crate::bird`) both carry it out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use brindle_bgp::attrs::PathAttrs;
use brindle_bgp::rib::{FilterRule, InterfaceMatch, PrefixFilter};
use brindle_bgp::speaker::{BfdSpec, LimitAction, PeerSpec, PrefixLimit};
use brindle_bgp::wire::Family;
use brindle_datastore::resource::{
    Bfd, BgpFilter, BgpFilterRule, BgpPassword, BgpPeer, FailureDetectionMode, FilterAction, MaxPrefixesAction, Node,
    Resource, RouteSource, SourceAddress,
};
use brindle_datastore::selector::Selector;
use ipnetwork::IpNetwork;

use crate::calc::{Cluster, Me};

/// How long a peer that passed `maxPrefixes` stays down when its BGPPeer does not say.
const DEFAULT_LIMIT_RESTART: std::time::Duration = std::time::Duration::from_secs(60);

/// Interfaces whose device routes are never read, whatever BGPConfiguration's
/// `ignoredInterfaces` adds: the pods' veths, and kube-proxy's IPVS device (which holds every
/// Service's address), as in Calico.
pub const NEVER_READ: [&str; 2] = ["brin*", "kube-ipvs*"];

/// Whether `name` matches `pattern`, in which `*` stands for any run of characters and `?`
/// for one (BIRD's patterns).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and how much of the name it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The node's device routes that brindle reads: all but those of the interfaces
/// [`NEVER_READ`] and `ignoredInterfaces` name.
fn readable_device_routes(me: &Me, cluster: &Cluster) -> Vec<(String, IpNetwork)> {
    let ignored: Vec<&str> =
        NEVER_READ.into_iter().chain(cluster.bgp.ignored_interfaces.iter().map(String::as_str)).collect();
    me.device_routes.iter().filter(|(name, _)| !ignored.iter().any(|p| glob_matches(p, name))).cloned().collect()
}

/// A resource's BFD settings for the speaker, with the speaker's defaults where it says none.
fn bfd_spec(bfd: &Bfd) -> BfdSpec {
    BfdSpec {
        timing: brindle_bgp::bfd::Config::or_defaults(bfd.min_tx, bfd.min_rx, bfd.multiplier),
        graceful: bfd.graceful,
    }
}

/// Seconds of a duration as BGP's 16-bit fields carry them.
fn seconds(d: std::time::Duration) -> u16 {
    d.as_secs().min(u64::from(u16::MAX)) as u16
}

/// A BGPPeer's session settings on `peer` (`direct`: the peer is on one of the node's
/// subnets): keepalive, GTSM, local AS and allowas-in, BFD (its own, or by
/// `failureDetectionMode`), graceful restart, prefix limit and source address.
fn apply_peer_settings(spec: &BgpPeer, peer: &mut PeerSpec, direct: bool) {
    peer.keepalive_time = spec.keepalive_time.map(seconds);
    peer.ttl_security = spec.ttl_security;
    peer.local_as = spec.local_as_number;
    peer.allow_local_as = spec.num_allowed_local_as_numbers.unwrap_or(0);
    let bfd_wanted = spec.failure_detection_mode == Some(FailureDetectionMode::BFDIfDirectlyConnected) && direct;
    peer.bfd = spec.bfd.or(bfd_wanted.then(Bfd::default)).as_ref().map(bfd_spec);
    peer.keep_original_next_hop = spec.keep_original_next_hop;
    peer.max_restart_time = spec.max_restart_time.map(seconds);
    peer.prefix_limit = spec.max_prefixes.map(|max| PrefixLimit {
        max,
        action: match spec.max_prefixes_action.unwrap_or_default() {
            MaxPrefixesAction::Warn => LimitAction::Warn,
            MaxPrefixesAction::Restart => {
                LimitAction::Restart(spec.max_prefixes_restart_time.unwrap_or(DEFAULT_LIMIT_RESTART))
            }
        },
    });
    if spec.source_address == Some(SourceAddress::None) {
        peer.local_address = None;
    }
}

/// The file a password comes from: its own file, or the secret's key as kubelet mounts it.
fn password_file(password: &BgpPassword, settings: &Settings) -> Result<PathBuf, &'static str> {
    match (&password.file, &password.secret_key_ref) {
        (Some(file), _) => Ok(file.clone()),
        (None, Some(secret)) => secret.file_in(&settings.secrets_dir).ok_or("secretKeyRef does not name a secret key"),
        (None, None) => Err("password names no source"),
    }
}

/// This node's BGP settings that do not come from the resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The hold time proposed to peers, in seconds.
    pub hold_time: u16,
    /// Where Kubernetes secrets are mounted, one directory per secret (the layout of a secret
    /// volume): a BGPPeer's `password.secretKeyRef {name, key}` is the file
    /// `<secrets_dir>/<name>/<key>`.
    pub secrets_dir: PathBuf,
}

/// What BGP should be doing for a cluster snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The sessions (passwords not yet filled in).
    pub peers: Vec<PeerSpec>,
    /// Files holding the TCP MD5 password of a peer.
    pub passwords: BTreeMap<IpAddr, PathBuf>,
    /// Why each peer is a peer: `mesh`, `reflector` (it reflects for us), `client` (we
    /// reflect for it), `node` (a BGPPeer for selected nodes) or `global`.
    pub kinds: BTreeMap<IpAddr, &'static str>,
    /// The prefixes this node originates, with the communities each carries (`aa:nn` or
    /// `aa:bb:cc`).
    pub originate: BTreeMap<IpNetwork, Vec<String>>,
    /// Peers whose BGPFilters put rules in front of the default filters.
    pub filtered: BTreeSet<IpAddr>,
    /// What is wrong with the peerings, in words: a peering left out, a filter missing.
    pub problems: Vec<String>,
}

/// Puts the rules of the BGPFilters `names`, in order, in front of `peer`'s default import
/// and export filters, for the peer's family; a rule on an interface matches next hops in
/// the subnets `device_routes` give the interfaces it names. A filter that does not exist is
/// left out and named in `problems`. Returns whether any rule was added.
fn prepend_filters(
    peer: &mut PeerSpec,
    names: &[String],
    filters: &[Resource<BgpFilter>],
    device_routes: &[(String, IpNetwork)],
    problems: &mut Vec<String>,
) -> bool {
    let v6 = peer.address.is_ipv6();
    let as_rule = |rule: &BgpFilterRule| {
        let (prefix, min_len, max_len, negate) = rule.matching(v6);
        let interface = rule.interface.as_ref().map(|pattern| InterfaceMatch {
            pattern: pattern.clone(),
            subnets: device_routes
                .iter()
                .filter(|(name, subnet)| subnet.is_ipv6() == v6 && glob_matches(pattern, name))
                .map(|(_, subnet)| *subnet)
                .collect(),
        });
        FilterRule {
            learned_only: rule.source == Some(RouteSource::RemotePeers),
            interface,
            ..FilterRule::on_prefixes(prefix, min_len, max_len, negate, rule.action == FilterAction::Accept)
        }
    };
    let (mut import, mut export) = (Vec::new(), Vec::new());
    for name in names {
        let Some(filter) = filters.iter().find(|f| &f.metadata.name == name) else {
            problems.push(format!("BGPFilter {name} does not exist; peer {} gets the default filters", peer.address));
            continue;
        };
        let spec = &filter.spec;
        let (imports, exports) =
            if v6 { (&spec.import_v6, &spec.export_v6) } else { (&spec.import_v4, &spec.export_v4) };
        import.extend(imports.iter().map(as_rule));
        export.extend(exports.iter().map(as_rule));
    }
    let added = !(import.is_empty() && export.is_empty());
    import.append(&mut peer.import.rules);
    peer.import.rules = import;
    export.append(&mut peer.export.rules);
    peer.export.rules = export;
    added
}

fn selects(selector: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    selector.parse::<Selector>().map(|s| s.matches(labels)).map_err(|e| format!("selector \"{selector}\": {e}"))
}

/// Whether a BGPPeer applies to the node `name` with `labels`: its `node`, its
/// `nodeSelector`, or every node when it names neither.
fn applies_to(
    spec: &brindle_datastore::resource::BgpPeer,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    match (&spec.node, &spec.node_selector) {
        (Some(node), _) => Ok(node == name),
        (None, Some(selector)) => selects(selector, labels),
        (None, None) => Ok(true),
    }
}

/// The BGPPeers of `me` that name a gateway to their peer (`reachableBy`): each peer's
/// address and its gateway, for a route the node needs to reach the peer at all.
pub fn peer_gateways(me: &Me, cluster: &Cluster) -> Vec<(IpAddr, IpAddr)> {
    let no_labels = BTreeMap::new();
    let labels = cluster.nodes.iter().find(|n| n.metadata.name == me.name).map_or(&no_labels, |n| &n.metadata.labels);
    cluster
        .peers
        .iter()
        .filter(|p| applies_to(&p.spec, &me.name, labels).unwrap_or(false))
        .filter_map(|p| Some((p.spec.peer_address()?.0, p.spec.reachable_by?)))
        .collect()
}

/// The plan for `me`: the node-to-node mesh (each session opened by the lower address only,
/// so they never collide) and every BGPPeer that applies to this node; route reflectors
/// treat nodes outside their cluster as clients. Nodes with addresses of both families peer
/// once per family, as Calico's BIRD does, and each session carries its own family only:
/// imports inside the pools, exports inside the pools and the advertised service ranges (and,
/// for the `local` Services with a ready endpoint here, their addresses as host routes).
pub fn plan(me: &Me, cluster: &Cluster, settings: &Settings, local: &[super::services::LocalService]) -> Plan {
    let hold_time = settings.hold_time;
    let pools: Vec<IpNetwork> = cluster.pools.iter().map(|p| p.spec.cidr).collect();
    let services: Vec<IpNetwork> = cluster.bgp.service_ranges().map(|(_, _, cidr)| cidr).collect();
    let of_family = |ranges: &[IpNetwork], v6: bool| -> PrefixFilter {
        PrefixFilter::only(&ranges.iter().copied().filter(|r| r.is_ipv6() == v6).collect::<Vec<_>>())
    };
    let import = [of_family(&pools, false), of_family(&pools, true)];
    let exportable: Vec<IpNetwork> = pools.iter().chain(&services).copied().collect();
    let export = [of_family(&exportable, false), of_family(&exportable, true)];
    // Each session carries the family of its addresses, and only prefixes of it.
    let with_filters = |mut peer: PeerSpec| -> PeerSpec {
        let family = usize::from(peer.address.is_ipv6());
        peer.families = vec![if peer.address.is_ipv6() { Family::IPV6_UNICAST } else { Family::IPV4_UNICAST }];
        peer.import = import[family].clone();
        peer.export = export[family].clone();
        peer
    };

    let no_labels = BTreeMap::new();
    let my_node = cluster.nodes.iter().find(|n| n.metadata.name == me.name);
    let my_labels = my_node.map_or(&no_labels, |n| &n.metadata.labels);
    let my_cluster_id = my_node.and_then(|n| n.spec.bgp.as_ref()).and_then(|b| b.route_reflector_cluster_id);
    let mut out = Plan::default();
    let mut peers: BTreeMap<IpAddr, PeerSpec> = BTreeMap::new();
    let device_routes = readable_device_routes(me, cluster);

    // One session per family both nodes have an address of.
    let node_peers = |node: &Resource<Node>| -> Vec<PeerSpec> {
        let node_bgp = node.spec.bgp.as_ref();
        let theirs = [node_bgp.and_then(|b| b.ipv4_address), node_bgp.and_then(|b| b.ipv6_address)];
        theirs
            .into_iter()
            .flatten()
            .filter_map(|their| {
                let address = their.ip();
                let mine = me.address_like(address).map(|n| n.ip())?;
                let mut peer =
                    PeerSpec::new(address, node_bgp.and_then(|b| b.as_number).unwrap_or(cluster.bgp.as_number));
                peer.port = cluster.bgp.listen_port;
                peer.hold_time = hold_time;
                peer.passive = mine > address;
                peer.local_address = Some(mine);
                // A reflector reflects for every node that is not a reflector of its own cluster.
                peer.rr_client =
                    my_cluster_id.is_some() && node_bgp.and_then(|b| b.route_reflector_cluster_id) != my_cluster_id;
                Some(with_filters(peer))
            })
            .collect()
    };
    if cluster.bgp.node_to_node_mesh_enabled {
        let mesh_password = match cluster.bgp.node_mesh_password.as_ref().map(|p| password_file(p, settings)) {
            Some(Err(e)) => {
                out.problems.push(format!("BGPConfiguration nodeMeshPassword: {e}"));
                None
            }
            Some(Ok(file)) => Some(file),
            None => None,
        };
        for mut peer in cluster.nodes.iter().filter(|n| n.metadata.name != me.name).flat_map(node_peers) {
            peer.bfd = cluster.bgp.node_mesh_bfd.as_ref().map(bfd_spec);
            peer.max_restart_time = cluster.bgp.node_mesh_max_restart_time.map(seconds);
            if peers.contains_key(&peer.address) {
                continue;
            }
            if let Some(file) = &mesh_password {
                out.passwords.insert(peer.address, file.clone());
            }
            out.kinds.insert(peer.address, "mesh");
            peers.insert(peer.address, peer);
        }
    }
    for resource in &cluster.peers {
        let spec = &resource.spec;
        let applies = match applies_to(spec, &me.name, my_labels) {
            Ok(yes) => yes,
            Err(e) => {
                out.problems.push(format!("BGPPeer {}: {e}", resource.metadata.name));
                continue;
            }
        };
        if let Some(selector) = &spec.peer_selector {
            // Selector peerings are symmetric, as in Calico: the nodes the peer applies to
            // and the nodes it selects peer with each other, whichever side this node is on.
            let i_am_selected = match selects(selector, my_labels) {
                Ok(yes) => yes,
                Err(e) => {
                    out.problems.push(format!("BGPPeer {}: {e}", resource.metadata.name));
                    continue;
                }
            };
            for node in cluster.nodes.iter().filter(|n| n.metadata.name != me.name) {
                let forward = applies && selects(selector, &node.metadata.labels).unwrap_or(false);
                let reverse =
                    i_am_selected && applies_to(spec, &node.metadata.name, &node.metadata.labels).unwrap_or(false);
                if !(forward || reverse) {
                    continue;
                }
                let reflects = node.spec.bgp.as_ref().is_some_and(|b| b.route_reflector_cluster_id.is_some());
                for mut peer in node_peers(node) {
                    if peers.contains_key(&peer.address) {
                        continue;
                    }
                    if prepend_filters(&mut peer, &spec.filters, &cluster.filters, &device_routes, &mut out.problems) {
                        out.filtered.insert(peer.address);
                    }
                    let direct = super::same_subnet(me.address_like(peer.address), peer.address);
                    let local = peer.local_address;
                    apply_peer_settings(spec, &mut peer, direct);
                    // Node-to-node sessions always speak from the node's address: the other
                    // side peers with exactly that one.
                    peer.local_address = local;
                    let kind = match (peer.rr_client, reflects) {
                        (true, _) => "client",
                        (false, true) => "reflector",
                        (false, false) => "node",
                    };
                    out.kinds.insert(peer.address, kind);
                    peers.insert(peer.address, peer);
                }
            }
        }
        if !applies {
            continue;
        }
        if let Some(text) = &spec.peer_ip {
            let Some((address, port)) = spec.peer_address() else {
                out.problems.push(format!("BGPPeer {}: peerIP \"{text}\" is not an address", resource.metadata.name));
                continue;
            };
            let name = &resource.metadata.name;
            let Some(local) = me.address_like(address).map(|n| n.ip()) else {
                out.problems.push(format!("BGPPeer {name}: this node has no address of {address}'s family"));
                continue;
            };
            let password = match spec.password.as_ref().map(|p| password_file(p, settings)) {
                None => None,
                Some(Ok(file)) => Some(file),
                Some(Err(e)) => {
                    out.problems.push(format!("BGPPeer {name}: {e}"));
                    continue;
                }
            };
            let mut peer = PeerSpec::new(address, spec.as_number.unwrap_or(cluster.bgp.as_number));
            peer.port = port.unwrap_or(179);
            peer.hold_time = hold_time;
            peer.local_address = Some(local);
            let direct = super::same_subnet(me.address_like(address), address);
            apply_peer_settings(spec, &mut peer, direct);
            let mut peer = with_filters(peer);
            // A later BGPPeer for the same address replaces an earlier one whole.
            out.passwords.remove(&address);
            out.filtered.remove(&address);
            if prepend_filters(&mut peer, &spec.filters, &cluster.filters, &device_routes, &mut out.problems) {
                out.filtered.insert(address);
            }
            if let Some(file) = password {
                out.passwords.insert(address, file);
            }
            out.kinds
                .insert(address, if spec.node.is_some() || spec.node_selector.is_some() { "node" } else { "global" });
            peers.insert(address, peer);
        }
    }
    out.peers = peers.into_values().collect();
    for block in &cluster.blocks {
        let in_exported_pool =
            cluster.pools.iter().any(|p| p.spec.cidr.contains(block.cidr.network()) && !p.spec.disable_bgp_export);
        if !in_exported_pool {
            continue;
        }
        if block.owner.as_deref() == Some(me.name.as_str()) {
            out.originate.insert(block.cidr, Vec::new());
        }
        for (ip, allocation) in block.allocations() {
            if allocation.node == me.name && block.owner.as_deref() != Some(me.name.as_str()) {
                out.originate
                    .insert(IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix"), Vec::new());
            }
        }
    }
    // Service ranges are advertised by every node, so traffic to them spreads over all; a
    // Service with externalTrafficPolicy Local only from the nodes that serve it.
    for service in services.iter().chain(&super::services::host_routes(local, &cluster.bgp)) {
        out.originate.insert(*service, Vec::new());
    }
    attach_communities(cluster, &mut out);
    out
}

/// Gives each originated prefix the communities of every prefixAdvertisement that covers
/// it; names resolve through BGPConfiguration's `communities`, other entries are literal.
fn attach_communities(cluster: &Cluster, out: &mut Plan) {
    for advertisement in &cluster.bgp.prefix_advertisements {
        let mut values = Vec::new();
        for entry in &advertisement.communities {
            let value =
                cluster.bgp.communities.iter().find(|c| c.name == *entry).map_or(entry.as_str(), |c| c.value.as_str());
            match PathAttrs::local(None).add_community(value) {
                Ok(()) => values.push(value.to_owned()),
                Err(e) => out.problems.push(format!("prefixAdvertisement {}: {e}", advertisement.cidr)),
            }
        }
        for (prefix, communities) in out.originate.iter_mut() {
            let covered = advertisement.cidr.is_ipv4() == prefix.is_ipv4()
                && advertisement.cidr.contains(prefix.network())
                && prefix.prefix() >= advertisement.cidr.prefix();
            if covered {
                communities.extend(values.iter().cloned());
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use std::path::Path;

    use brindle_bgp::rib::RouteFacts;
    use brindle_datastore::ipam::{Allocation, AllocationKind, Block};
    use brindle_datastore::resource::BgpPeer;

    use super::*;
    use crate::fixtures::{cluster, me, settings};

    fn peer(spec: BgpPeer) -> Resource<BgpPeer> {
        Resource::new("peer", spec)
    }

    /// A route learned from a peer, its next hop unknown.
    const LEARNED: RouteFacts = RouteFacts { learned: true, next_hop: None };

    #[test]
    fn the_mesh_is_opened_by_the_lower_address_only() {
        let p = plan(&me("b", "10.0.0.2/24"), &cluster(true), &settings(), &[]);
        let addresses: Vec<String> = p.peers.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.3"]);
        assert!(p.peers[0].passive, "b waits for a, whose address is lower");
        assert!(!p.peers[1].passive, "b connects to c");
        assert!(p.peers.iter().all(|p| p.asn == 64512 && !p.rr_client));
    }

    #[test]
    fn dual_stack_nodes_peer_once_per_family_each_session_carrying_its_own() {
        use brindle_datastore::resource::IpPool;
        let mut c = cluster(true);
        c.pools.push(Resource::new("p6", IpPool::new("fd00:10:244::/56".parse().unwrap())));
        for (node, ip) in c.nodes.iter_mut().zip(["fd00::1/64", "fd00::2/64"]) {
            node.spec.bgp.as_mut().unwrap().ipv6_address = Some(ip.parse().unwrap());
        }
        let mut b = me("b", "10.0.0.2/24");
        b.ipv6 = Some("fd00::2/64".parse().unwrap());
        let p = plan(&b, &c, &settings(), &[]);
        let addresses: Vec<String> = p.peers.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.3", "fd00::1"], "c has no IPv6 address, so no IPv6 session");
        let v6 = &p.peers[2];
        assert!(v6.passive, "fd00::1 is lower, so it connects");
        assert_eq!(v6.families, [Family::IPV6_UNICAST], "an IPv6 session offers IPv6 only");
        assert_eq!(v6.local_address, Some("fd00::2".parse().unwrap()));
        let (v4_block, v6_block) = ("10.244.1.0/26".parse().unwrap(), "fd00:10:244::/122".parse().unwrap());
        assert!(v6.import.accepts(&v6_block, LEARNED) && !v6.import.accepts(&v4_block, LEARNED));
        assert!(p.peers[0].export.accepts(&v4_block, LEARNED) && !p.peers[0].export.accepts(&v6_block, LEARNED));
        assert_eq!(p.kinds[&v6.address], "mesh");
    }

    #[test]
    fn bgp_filters_come_before_the_defaults_in_the_order_the_peer_names_them() {
        use brindle_datastore::resource::{BgpFilter, BgpFilterRule, MatchOperator};
        let rule = |action, cidr: &str| BgpFilterRule {
            action,
            match_operator: Some(MatchOperator::In),
            cidr: Some(cidr.parse().unwrap()),
            prefix_length: None,
            source: None,
            interface: None,
        };
        let mut c = cluster(true);
        c.filters = vec![
            Resource::new(
                "outside",
                BgpFilter { import_v4: vec![rule(FilterAction::Accept, "192.168.0.0/16")], ..BgpFilter::default() },
            ),
            Resource::new(
                "no-pool-slice",
                BgpFilter {
                    import_v4: vec![rule(FilterAction::Reject, "10.244.128.0/17")],
                    export_v4: vec![rule(FilterAction::Reject, "10.244.128.0/17")],
                    ..BgpFilter::default()
                },
            ),
        ];
        c.peers.push(peer(BgpPeer {
            peer_ip: Some("10.0.0.254".into()),
            as_number: Some(65001),
            filters: vec!["outside".into(), "missing".into(), "no-pool-slice".into()],
            ..BgpPeer::default()
        }));
        let p = plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]);
        let external = p.peers.iter().find(|p| p.address.to_string() == "10.0.0.254").unwrap();
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(external.import.accepts(&net("192.168.5.0/24"), LEARNED), "let in by the first filter");
        assert!(!external.import.accepts(&net("10.244.200.0/24"), LEARNED), "kept out by the second");
        assert!(external.import.accepts(&net("10.244.1.0/26"), LEARNED), "the defaults decide the rest");
        assert!(!external.import.accepts(&net("172.16.0.0/24"), LEARNED));
        assert!(!external.export.accepts(&net("10.244.200.0/26"), LEARNED), "a slice of the pool kept in");
        assert!(external.export.accepts(&net("10.244.1.0/26"), LEARNED), "the rest of the pool still goes out");
        assert_eq!(external.families, [Family::IPV4_UNICAST]);
        assert!(p.filtered.contains(&external.address) && p.filtered.len() == 1, "{:?}", p.filtered);
        assert!(p.problems.iter().any(|e| e.contains("BGPFilter missing does not exist")), "{:?}", p.problems);
        let mesh = p.peers.iter().find(|p| p.address.to_string() == "10.0.0.1").unwrap();
        assert!(!mesh.import.accepts(&net("192.168.5.0/24"), LEARNED), "mesh sessions keep the defaults");
    }

    #[test]
    fn rules_on_the_source_and_the_interface_match_learned_routes_and_readable_interfaces() {
        use brindle_datastore::resource::BgpFilter;
        let mut c = cluster(true);
        let rule = |source, interface: &str| BgpFilterRule {
            action: FilterAction::Reject,
            match_operator: None,
            cidr: None,
            prefix_length: None,
            source,
            interface: Some(interface.into()),
        };
        let export_v4 = vec![rule(Some(RouteSource::RemotePeers), "e*0"), rule(None, "brin*")];
        c.filters = vec![Resource::new("f", BgpFilter { export_v4, ..BgpFilter::default() })];
        c.peers.push(peer(BgpPeer {
            peer_ip: Some("10.0.0.254".into()),
            as_number: Some(65001),
            filters: vec!["f".into()],
            ..BgpPeer::default()
        }));
        let external = |c: &Cluster| {
            let p = plan(&me("b", "10.0.0.2/24"), c, &settings(), &[]);
            p.peers.into_iter().find(|p| p.address.to_string() == "10.0.0.254").unwrap().export
        };
        let export = external(&c);
        let block = "10.244.1.0/26".parse().unwrap();
        let via = |hop: &str| RouteFacts { learned: true, next_hop: Some(hop.parse().unwrap()) };
        assert!(!export.accepts(&block, via("10.0.0.3")), "learned through eth0: rejected");
        assert!(export.accepts(&block, RouteFacts { learned: false, next_hop: None }), "the node's own block");
        let rules = &export.rules;
        assert_eq!(rules[0].interface.as_ref().unwrap().subnets, ["10.0.0.0/24".parse::<IpNetwork>().unwrap()]);
        assert!(rules[1].interface.as_ref().unwrap().subnets.is_empty(), "pods' veths are never read");
        c.bgp.ignored_interfaces = vec!["eth?".into()];
        assert!(external(&c).accepts(&block, via("10.0.0.3")), "eth0 ignored: the rule matches nothing");
    }

    #[test]
    fn globs_match_as_birds_do() {
        for (pattern, name) in
            [("eth*", "eth0"), ("*.calico", "vxlan.calico"), ("e?h*", "eth10"), ("*", ""), ("a*b*c", "aXbYbc")]
        {
            assert!(glob_matches(pattern, name), "{pattern} {name}");
        }
        for (pattern, name) in [("eth*", "veth0"), ("eth?", "eth10"), ("*.calico", "calico"), ("a*b*c", "aXbYbd")] {
            assert!(!glob_matches(pattern, name), "{pattern} {name}");
        }
    }

    #[test]
    fn service_ranges_pass_the_export_filter_but_not_the_import_filter() {
        use brindle_datastore::resource::ServiceCidr;
        let mut c = cluster(true);
        c.bgp.service_cluster_ips = vec![ServiceCidr { cidr: "10.96.0.0/12".parse().unwrap() }];
        c.bgp.service_load_balancer_ips = vec![ServiceCidr { cidr: "192.0.2.0/24".parse().unwrap() }];
        let p = plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]);
        let services = "10.96.0.0/12".parse().unwrap();
        assert!(
            p.peers
                .iter()
                .all(|peer| peer.export.accepts(&services, LEARNED) && !peer.import.accepts(&services, LEARNED))
        );
    }

    #[test]
    fn reflectors_take_other_nodes_as_clients_and_clients_peer_only_with_them() {
        let mut c = cluster(false);
        c.peers.push(peer(BgpPeer {
            node_selector: Some("all()".into()),
            peer_selector: Some("rr == 'true'".into()),
            ..BgpPeer::default()
        }));
        // One BGPPeer, as Calico's docs write it: the reflector learns its clients from the
        // same resource (selector peerings are symmetric).
        let reflector = plan(&me("a", "10.0.0.1/24"), &c, &settings(), &[]);
        assert_eq!(reflector.peers.len(), 2);
        assert!(reflector.peers.iter().all(|p| p.rr_client), "{:?}", reflector.peers);
        let client = plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]);
        let addresses: Vec<String> = client.peers.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1"], "with the mesh off a client peers only with the reflector");
        assert!(!client.peers[0].rr_client);
    }

    #[test]
    fn external_peers_apply_to_their_nodes_with_port_and_password_file() {
        let mut c = cluster(true);
        c.peers.push(peer(BgpPeer {
            node: Some("b".into()),
            peer_ip: Some("10.0.0.254:1179".into()),
            as_number: Some(65001),
            password: Some(brindle_datastore::resource::BgpPassword {
                file: Some("/etc/brindle/bgp-pw".into()),
                secret_key_ref: None,
            }),
            keep_original_next_hop: true,
            max_restart_time: Some(std::time::Duration::from_secs(30)),
            max_prefixes: Some(1000),
            ..BgpPeer::default()
        }));
        c.peers.push(peer(BgpPeer {
            node_selector: Some("!!bad".into()),
            peer_ip: Some("10.0.0.253".into()),
            ..BgpPeer::default()
        }));
        let b = plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]);
        let external = b.peers.iter().find(|p| p.address.to_string() == "10.0.0.254").expect("the external peer");
        assert_eq!((external.port, external.asn), (1179, 65001));
        assert!(external.keep_original_next_hop);
        assert_eq!(external.max_restart_time, Some(30));
        let limit = PrefixLimit { max: 1000, action: LimitAction::Restart(DEFAULT_LIMIT_RESTART) };
        assert_eq!(external.prefix_limit, Some(limit), "Restart after 60 s unless the BGPPeer says otherwise");
        assert_eq!(
            b.passwords.get(&external.address).map(|p| p.display().to_string()).as_deref(),
            Some("/etc/brindle/bgp-pw")
        );
        assert!(b.problems.iter().any(|p| p.contains("!!bad")), "{:?}", b.problems);
        let c_plan = plan(&me("c", "10.0.0.3/24"), &c, &settings(), &[]);
        assert!(c_plan.peers.iter().all(|p| p.address.to_string() != "10.0.0.254"), "the peer is b's alone");
    }

    #[test]
    fn a_later_peer_for_the_same_address_replaces_the_earlier_whole_and_families_must_match() {
        use brindle_datastore::resource::BgpPassword;
        let mut c = cluster(true);
        let password = BgpPassword { file: Some("/etc/brindle/pw".into()), secret_key_ref: None };
        let upstream = BgpPeer { peer_ip: Some("10.0.0.254".into()), as_number: Some(65001), ..BgpPeer::default() };
        c.peers.push(peer(BgpPeer { password: Some(password), ..upstream.clone() }));
        c.peers.push(peer(upstream));
        c.peers.push(peer(BgpPeer { peer_ip: Some("fd00::9".into()), as_number: Some(65001), ..BgpPeer::default() }));
        let p = plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]);
        assert!(p.passwords.is_empty(), "the later peer has no password: {:?}", p.passwords);
        assert!(p.peers.iter().all(|peer| peer.address.is_ipv4()), "{:?}", p.peers);
        assert!(p.problems.iter().any(|e| e.contains("no address of fd00::9's family")), "{:?}", p.problems);
    }

    #[test]
    fn a_secret_reference_is_read_from_the_mounted_secret() {
        use brindle_datastore::resource::{BgpPassword, SecretKeyRef};
        let mut c = cluster(true);
        c.peers.push(peer(BgpPeer {
            peer_ip: Some("10.0.0.254".into()),
            as_number: Some(65001),
            password: Some(BgpPassword {
                secret_key_ref: Some(SecretKeyRef { name: "bgp-secrets".into(), key: "upstream".into() }),
                file: None,
            }),
            ..BgpPeer::default()
        }));
        let b = plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]);
        assert_eq!(
            b.passwords[&"10.0.0.254".parse::<IpAddr>().unwrap()],
            Path::new("/etc/brindle/secrets/bgp-secrets/upstream")
        );
        assert!(b.problems.is_empty(), "{:?}", b.problems);
    }

    #[test]
    fn calicos_session_fields_reach_the_sessions_mesh_and_peers_alike() {
        use brindle_datastore::resource::{BgpPassword, SecretKeyRef};
        let mut c = cluster(true);
        c.bgp.node_mesh_password = Some(BgpPassword {
            secret_key_ref: Some(SecretKeyRef { name: "bgp".into(), key: "mesh".into() }),
            file: None,
        });
        c.bgp.node_mesh_max_restart_time = Some(std::time::Duration::from_secs(45));
        let calico_style = BgpPeer {
            as_number: Some(65001),
            keepalive_time: Some(std::time::Duration::from_secs(7)),
            ttl_security: Some(1),
            failure_detection_mode: Some(FailureDetectionMode::BFDIfDirectlyConnected),
            source_address: Some(SourceAddress::None),
            local_as_number: Some(65100),
            num_allowed_local_as_numbers: Some(1),
            ..BgpPeer::default()
        };
        c.peers.push(peer(BgpPeer { peer_ip: Some("10.0.0.254".into()), ..calico_style.clone() }));
        c.peers.push(Resource::new("far", BgpPeer { peer_ip: Some("192.0.2.9".into()), ..calico_style }));
        let b = plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]);
        let by = |a: &str| b.peers.iter().find(|p| p.address.to_string() == a).expect(a);
        let (mesh, tor, far) = (by("10.0.0.1"), by("10.0.0.254"), by("192.0.2.9"));
        assert_eq!(mesh.max_restart_time, Some(45));
        assert_eq!(b.passwords[&mesh.address], Path::new("/etc/brindle/secrets/bgp/mesh"));
        assert!(!b.passwords.contains_key(&tor.address), "the mesh password is the mesh's alone");
        assert_eq!((tor.keepalive_time, tor.ttl_security, tor.local_address), (Some(7), Some(1), None));
        assert_eq!((tor.local_as, tor.allow_local_as), (Some(65100), 1));
        assert_eq!(tor.bfd, Some(bfd_spec(&Bfd::default())), "BFD: the peer is directly connected");
        assert_eq!(far.bfd, None, "no BFD: the peer is not directly connected");
        assert!(mesh.local_address.is_some() && mesh.bfd.is_none());
    }

    #[test]
    fn own_blocks_and_borrowed_addresses_are_originated_unless_export_is_disabled() {
        let mut c = cluster(true);
        let mut theirs = Block::new("10.244.1.0/26".parse().unwrap(), Some("c".into()));
        let borrowed = Allocation {
            handle: "n.x".into(),
            kind: AllocationKind::Workload,
            node: "b".into(),
            ..Allocation::default()
        };
        theirs.allocate(borrowed, 0, 0).unwrap();
        c.blocks = vec![Block::new("10.244.0.0/26".parse().unwrap(), Some("b".into())), theirs];
        let originated: Vec<String> =
            plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]).originate.keys().map(ToString::to_string).collect();
        assert_eq!(originated, ["10.244.0.0/26", "10.244.1.0/32"]);
        c.pools[0].spec.disable_bgp_export = true;
        assert!(plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]).originate.is_empty());
    }

    #[test]
    fn service_ranges_are_advertised_and_communities_attached_by_range() {
        use brindle_datastore::resource::{Community, PrefixAdvertisement, ServiceCidr};
        let mut c = cluster(true);
        c.blocks = vec![Block::new("10.244.0.0/26".parse().unwrap(), Some("b".into()))];
        c.bgp.service_cluster_ips = vec![ServiceCidr { cidr: "10.96.0.0/12".parse().unwrap() }];
        c.bgp.service_load_balancer_ips = vec![ServiceCidr { cidr: "192.0.2.0/24".parse().unwrap() }];
        c.bgp.communities = vec![Community { name: "pods".into(), value: "64512:100".into() }];
        c.bgp.prefix_advertisements = vec![
            PrefixAdvertisement {
                cidr: "10.244.0.0/16".parse().unwrap(),
                communities: vec!["pods".into(), "1:2:3".into()],
            },
            PrefixAdvertisement { cidr: "10.96.0.0/12".parse().unwrap(), communities: vec!["99999:1".into()] },
        ];
        let p = plan(&me("b", "10.0.0.2/24"), &c, &settings(), &[]);
        assert_eq!(p.originate[&"10.244.0.0/26".parse().unwrap()], ["64512:100", "1:2:3"]);
        assert!(p.originate[&"10.96.0.0/12".parse().unwrap()].is_empty(), "the bad community is dropped");
        assert!(p.originate.contains_key(&"192.0.2.0/24".parse().unwrap()), "LoadBalancer IPs too");
        assert!(p.problems.iter().any(|e| e.contains("99999:1")), "{:?}", p.problems);
    }
}
