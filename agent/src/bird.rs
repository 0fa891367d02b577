//! The external-BIRD backend's configuration: brindle's BGP plan rendered through the
//! shipped BIRD 2 template, so BIRD peers exactly as the embedded speaker would.

use std::net::IpAddr;

use serde_json::{Value, json};

use brindle_bgp::rib::{FilterRule, PrefixFilter};
use brindle_bgp::speaker::LimitAction;

use crate::bgp::read_password;
use crate::calc::bgp::{NEVER_READ, Plan};
use crate::calc::{Cluster, Me};

/// The shipped template.
pub const TEMPLATE: &str = include_str!("../../config-render/templates/bird.conf.j2");

/// The template's context for `me`. Passwords are read from their files here.
pub fn context(me: &Me, cluster: &Cluster, plan: &Plan) -> anyhow::Result<Value> {
    let Some(IpAddr::V4(router_id)) = me.ipv4.map(|n| n.ip()) else {
        anyhow::bail!("BIRD needs the node's IPv4 address as its router ID")
    };
    let node_bgp = cluster.nodes.iter().find(|n| n.metadata.name == me.name).and_then(|n| n.spec.bgp.as_ref());
    let asn = node_bgp.and_then(|b| b.as_number).unwrap_or(cluster.bgp.as_number);
    // One family per address the node has: its filters, kernel and static protocols and
    // peer template, as the embedded speaker keeps each session to its own family.
    let families: [Option<Value>; 2] = [(false, me.ipv4), (true, me.ipv6)].map(|(v6, local)| {
        local.map(|local| {
            json!({
                "name": if v6 { "ipv6" } else { "ipv4" },
                "suffix": if v6 { "6" } else { "4" },
                "local": local.ip(),
                "pools": cluster.pools.iter().map(|p| p.spec.cidr).filter(|c| c.is_ipv6() == v6).collect::<Vec<_>>(),
                "originate": plan
                    .originate
                    .iter()
                    .filter(|(p, _)| p.is_ipv6() == v6)
                    .map(|(prefix, communities)| json!({ "prefix": prefix, "communities": communities.iter().map(|c| bird_community(c)).collect::<Vec<_>>() }))
                    .collect::<Vec<_>>(),
            })
        })
    });
    let mut peers = Vec::new();
    for peer in &plan.peers {
        let Some(family) = &families[usize::from(peer.address.is_ipv6())] else { continue };
        let password = match plan.passwords.get(&peer.address).map(|file| read_password(peer.address, file)) {
            Some(Err(e)) => {
                // One unreadable secret costs that peer its session, not the whole render.
                tracing::warn!(error = %format!("{e:#}"), "BGP peer left out of BIRD's configuration");
                continue;
            }
            Some(Ok(password)) => Some(password),
            None => None,
        };
        if password.as_deref().is_some_and(|p| p.contains(['"', '\\', '\n'])) {
            anyhow::bail!("the BGP password of {} has a character BIRD's configuration cannot carry", peer.address);
        }
        let mine = me.address_like(peer.address);
        // BGPFilter rules come first, then the defaults, as in the embedded speaker.
        let filtered = plan.filtered.contains(&peer.address);
        let rules = |filter: &PrefixFilter| filtered.then(|| filter.rules.iter().map(bird_rule).collect::<Vec<_>>());
        peers.push(json!({
            "name": format!("peer_{}", peer.address.to_string().replace(['.', ':'], "_")),
            "family": family,
            "address": peer.address,
            "port": peer.port,
            "asn": peer.asn,
            "kind": plan.kinds.get(&peer.address).copied().unwrap_or("global"),
            "passive": peer.passive,
            "rr_client": peer.rr_client,
            "hold_time": peer.hold_time,
            "keepalive_time": peer.keepalive_time,
            "ttl_security": peer.ttl_security,
            "local_as": peer.local_as,
            "allow_local_as": peer.allow_local_as,
            "keep_next_hop": peer.keep_original_next_hop,
            "source": peer.local_address,
            "direct": mine.is_some_and(|net| net.contains(peer.address)),
            "password": password,
            "import_limit": peer.prefix_limit.map(|l| l.max),
            "import_limit_action": peer.prefix_limit.map(|l| match l.action {
                LimitAction::Warn => "warn",
                LimitAction::Restart(_) => "restart",
            }),
            "bfd": peer.bfd.map(|b| json!({
                "min_tx_ms": b.timing.desired_min_tx.as_millis(),
                "min_rx_ms": b.timing.required_min_rx.as_millis(),
                "multiplier": b.timing.detect_mult,
                "graceful": b.graceful,
            })),
            "import_rules": rules(&peer.import),
            "export_rules": rules(&peer.export),
        }));
    }
    Ok(json!({
        "node": me.name,
        "router_id": router_id,
        "asn": asn,
        "cluster_id": node_bgp.and_then(|b| b.route_reflector_cluster_id),
        "graceful_restart": 120,
        "debug": cluster.bgp.log_severity_screen == Some(brindle_datastore::resource::LogSeverity::Debug),
        "families": families.iter().flatten().collect::<Vec<_>>(),
        "bfd": plan.peers.iter().any(|p| p.bfd.is_some()),
        "max_paths": cluster.bgp.max_paths,
        "listen_port": cluster.bgp.listen_port,
        "unread_interfaces": NEVER_READ.iter().copied().chain(cluster.bgp.ignored_interfaces.iter().map(String::as_str)).collect::<Vec<_>>(),
        "peers": peers,
    }))
}

/// A filter rule as a BIRD filter statement: `if net ~ [ 10.0.0.0/8{8,32} ] then accept;`,
/// the prefix test negated with `!`, and `source = RTS_BGP` and `ifname ~ "eth*"` added for
/// rules on the source and the interface.
fn bird_rule(rule: &FilterRule) -> String {
    let test = format!("net ~ [ {}{{{},{}}} ]", rule.prefix, rule.min_len, rule.max_len);
    let mut test = if rule.negate { format!("!({test})") } else { test };
    if rule.learned_only {
        test = format!("({test}) && source = RTS_BGP");
    }
    if let Some(interface) = &rule.interface {
        test = format!("({test}) && ifname ~ \"{}\"", interface.pattern);
    }
    format!("if {test} then {};", if rule.accept { "accept" } else { "reject" })
}

/// A community as a BIRD filter statement: `aa:nn` -> `bgp_community.add((aa,nn));`,
/// `aa:bb:cc` -> `bgp_large_community.add((aa,bb,cc));` (validated by the plan).
fn bird_community(text: &str) -> String {
    let parts = text.replace(':', ",");
    if text.matches(':').count() == 2 {
        format!("bgp_large_community.add(({parts}));")
    } else {
        format!("bgp_community.add(({parts}));")
    }
}

#[cfg(test)]
mod tests {
    use brindle_datastore::ipam::Block;
    use brindle_datastore::resource::{BgpPassword, BgpPeer, Resource};
    use brindle_render::{Outcome, TemplateResource, render};

    use super::*;
    use crate::calc::bgp::plan;
    use crate::fixtures::{self, me, settings};

    fn cluster(mesh: bool) -> Cluster {
        let mut c = fixtures::cluster(mesh);
        c.blocks = vec![Block::new("10.244.0.0/26".parse().unwrap(), Some("a".into()))];
        c
    }

    /// Renders through brindle-render with `bird -p` as the check, as the agent does.
    fn rendered(me: &Me, cluster: &Cluster) -> String {
        let dir = tempfile::tempdir().unwrap();
        let resource = TemplateResource {
            src: "bird.conf.j2".into(),
            dest: dir.path().join("bird.conf"),
            keys: vec![],
            mode: 0o640,
            check_cmd: Some("bird -p -c {src}".into()),
            reload_cmd: None,
        };
        let ctx = context(me, cluster, &plan(me, cluster, &settings(), &[])).unwrap();
        assert_eq!(render(&resource, TEMPLATE, &ctx).unwrap(), Outcome::Installed);
        std::fs::read_to_string(&resource.dest).unwrap()
    }

    #[test]
    fn a_mesh_node_passes_bird_p() {
        let text = rendered(&me("b", "10.0.0.2/24"), &cluster(true));
        assert!(
            text.contains(
                "neighbor 10.0.0.1 port 179 as 64512;\n  local 10.0.0.2;\n  hold time 90;\n  direct;\n  passive on;"
            ),
            "{text}"
        );
        assert!(
            text.contains("neighbor 10.0.0.3 port 179 as 64512;\n  local 10.0.0.2;\n  hold time 90;\n  direct;\n}"),
            "{text}"
        );
    }

    #[test]
    fn source_address_none_leaves_the_address_to_the_kernel_and_a_far_peer_is_multihop() {
        let mut c = cluster(true);
        let peer = BgpPeer {
            peer_ip: Some("192.0.2.9".into()),
            as_number: Some(65001),
            source_address: Some(brindle_datastore::resource::SourceAddress::None),
            reachable_by: Some("10.0.0.254".parse().unwrap()),
            ..BgpPeer::default()
        };
        c.peers.push(Resource::new("far", peer));
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        assert!(
            text.contains("neighbor 192.0.2.9 port 179 as 65001;\n  hold time 90;\n  multihop;\n}"),
            "no local address, and multihop: {text}"
        );
        assert_eq!(text.matches("  local 10.0.0.1;\n").count(), 2, "the mesh keeps the node's address: {text}");
    }

    #[test]
    fn a_dual_stack_node_peers_once_per_family_and_passes_bird_p() {
        use brindle_datastore::resource::IpPool;
        let mut c = cluster(true);
        c.pools.push(Resource::new("p6", IpPool::new("fd00:10:244::/56".parse().unwrap())));
        c.blocks.push(Block::new("fd00:10:244::/122".parse().unwrap(), Some("a".into())));
        for (node, ip) in c.nodes.iter_mut().zip(["fd00::1/64", "fd00::2/64", "fd00::3/64"]) {
            node.spec.bgp.as_mut().unwrap().ipv6_address = Some(ip.parse().unwrap());
        }
        let mut a = me("a", "10.0.0.1/24");
        a.ipv6 = Some("fd00::1/64".parse().unwrap());
        let text = rendered(&a, &c);
        assert!(text.contains("protocol bgp peer_fd00__2 from brindle_peer6 {\n  neighbor fd00::2 port 179"), "{text}");
        assert!(text.contains("protocol bgp peer_10_0_0_2 from brindle_peer4 {"), "{text}");
        assert!(text.contains("neighbor fd00::2 port 179 as 64512;\n  local fd00::1;\n"), "{text}");
        assert!(text.contains("if net ~ [ fd00:10:244::/56+ ] then accept;"), "{text}");
        assert!(text.contains("route fd00:10:244::/122 blackhole;"), "{text}");
        // A node without an IPv6 address has no IPv6 sessions at all.
        let text = rendered(&me("b", "10.0.0.2/24"), &c);
        assert!(!text.contains("ipv6"), "{text}");
    }

    #[test]
    fn a_peer_with_a_bgp_filter_gets_its_own_filters_and_passes_bird_p() {
        use brindle_datastore::resource::{BgpFilter, BgpFilterRule, FilterAction, MatchOperator, PrefixLength};
        let mut c = cluster(true);
        c.filters.push(Resource::new(
            "upstream",
            BgpFilter {
                import_v4: vec![BgpFilterRule {
                    action: FilterAction::Accept,
                    match_operator: Some(MatchOperator::In),
                    cidr: Some("192.168.0.0/16".parse().unwrap()),
                    prefix_length: Some(PrefixLength { min: None, max: Some(24) }),
                    source: None,
                    interface: Some("eth*".into()),
                }],
                export_v4: vec![BgpFilterRule {
                    action: FilterAction::Reject,
                    match_operator: Some(MatchOperator::NotIn),
                    cidr: Some("10.244.0.0/17".parse().unwrap()),
                    prefix_length: None,
                    source: Some(brindle_datastore::resource::RouteSource::RemotePeers),
                    interface: None,
                }],
                ..BgpFilter::default()
            },
        ));
        c.peers.push(Resource::new(
            "upstream",
            BgpPeer {
                peer_ip: Some("192.0.2.9".into()),
                as_number: Some(65001),
                keep_original_next_hop: true,
                filters: vec!["upstream".into()],
                ..BgpPeer::default()
            },
        ));
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        assert!(
            text.contains(
                "  ipv4 {\n    next hop keep;\n    # BGPFilter rules, then the defaults.\n    import filter {\n      \
                 if (net ~ [ 192.168.0.0/16{16,24} ]) && ifname ~ \"eth*\" then accept;\n      \
                 if net ~ [ 10.244.0.0/16{16,32} ] then accept;\n      reject;\n    };"
            ),
            "{text}"
        );
        assert!(
            text.contains("      if (!(net ~ [ 10.244.0.0/17{17,32} ])) && source = RTS_BGP then reject;\n"),
            "{text}"
        );
        assert!(
            text.contains("export filter {\n      if source = RTS_DEVICE then reject;\n"),
            "device routes never go out: {text}"
        );
        assert_eq!(text.matches("import filter {").count(), 1, "mesh peers keep the shared filters: {text}");
    }

    #[test]
    fn a_peer_with_a_prefix_limit_gets_birds_import_limit_and_passes_bird_p() {
        use brindle_datastore::resource::MaxPrefixesAction;
        let mut c = cluster(true);
        for (name, ip, action) in
            [("restart", "192.0.2.9", None), ("warn", "192.0.2.10", Some(MaxPrefixesAction::Warn))]
        {
            c.peers.push(Resource::new(
                name,
                BgpPeer {
                    peer_ip: Some(ip.into()),
                    as_number: Some(65001),
                    max_prefixes: Some(5000),
                    max_prefixes_action: action,
                    ..BgpPeer::default()
                },
            ));
        }
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        assert!(text.contains("  ipv4 {\n    import limit 5000 action restart;\n  };"), "{text}");
        assert!(text.contains("  ipv4 {\n    import limit 5000 action warn;\n  };"), "{text}");
        assert_eq!(text.matches("import limit").count(), 2, "mesh peers have none: {text}");
    }

    #[test]
    fn bfd_on_the_mesh_and_a_peer_gets_birds_bfd_protocol_and_passes_bird_p() {
        use brindle_datastore::resource::Bfd;
        let mut c = cluster(true);
        assert!(!rendered(&me("a", "10.0.0.1/24"), &c).contains("bfd"), "no BFD unless asked for");
        c.bgp.node_mesh_bfd = Some(Bfd::default());
        let fast = Bfd {
            min_tx: Some(std::time::Duration::from_millis(100)),
            multiplier: Some(5),
            graceful: true,
            ..Bfd::default()
        };
        c.peers.push(Resource::new(
            "tor",
            BgpPeer {
                peer_ip: Some("10.0.0.254".into()),
                as_number: Some(65001),
                bfd: Some(fast),
                ..BgpPeer::default()
            },
        ));
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        assert_eq!(text.matches("protocol bfd brindle_bfd {").count(), 1, "{text}");
        let mesh = "  bfd {\n    min tx interval 300 ms;\n    min rx interval 300 ms;\n    multiplier 3;\n  };";
        assert!(text.contains(mesh), "{text}");
        let tor =
            "  bfd {\n    min tx interval 100 ms;\n    min rx interval 300 ms;\n    multiplier 5;\n    graceful;\n  };";
        assert!(text.contains(tor), "{text}");
    }

    #[test]
    fn keepalive_gtsm_local_as_and_allowas_in_are_rendered_as_birds_and_pass_bird_p() {
        let mut c = cluster(true);
        for (name, ip, hops) in [("tor", "10.0.0.254", 1), ("far", "192.0.2.9", 3)] {
            c.peers.push(Resource::new(
                name,
                BgpPeer {
                    peer_ip: Some(ip.into()),
                    as_number: Some(65001),
                    keepalive_time: Some(std::time::Duration::from_secs(10)),
                    ttl_security: Some(hops),
                    local_as_number: Some(65100),
                    num_allowed_local_as_numbers: Some(2),
                    ..BgpPeer::default()
                },
            ));
        }
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        assert_eq!(text.matches("  keepalive time 10;\n").count(), 2, "{text}");
        assert_eq!(text.matches("  ttl security on;\n").count(), 2, "{text}");
        assert!(text.contains("  ttl security on;\n  multihop 3;\n"), "the hops of a peer further away: {text}");
        assert_eq!(text.matches("multihop").count(), 1, "{text}");
        assert_eq!(text.matches("  direct;\n").count(), 3, "the mesh and the top-of-rack router: {text}");
        assert_eq!(text.matches("  local as 65100;\n  allow local as 2;\n").count(), 2, "{text}");
    }

    #[test]
    fn equal_cost_paths_are_merged_into_the_kernel_up_to_max_paths() {
        let mut c = cluster(true);
        assert_eq!(rendered(&me("a", "10.0.0.1/24"), &c).matches("  merge paths on limit 8;\n").count(), 1);
        c.bgp.max_paths = 1;
        assert!(!rendered(&me("a", "10.0.0.1/24"), &c).contains("merge paths"));
    }

    #[test]
    fn device_routes_are_read_from_every_interface_but_the_pods_and_the_ignored_ones() {
        let mut c = cluster(true);
        c.bgp.ignored_interfaces = vec!["docker*".into(), "eth1".into()];
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        let direct =
            "protocol direct {\n  ipv4;\n  interface -\"brin*\", -\"kube-ipvs*\", -\"docker*\", -\"eth1\", \"*\";\n}";
        assert!(text.contains(direct), "{text}");
    }

    #[test]
    fn another_listen_port_is_birds_local_port() {
        let mut c = cluster(true);
        assert!(rendered(&me("a", "10.0.0.1/24"), &c).contains("  local as 64512;\n"));
        c.bgp.listen_port = 1179;
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        assert!(text.contains("  local port 1179 as 64512;\n"), "{text}");
        assert!(text.contains("neighbor 10.0.0.2 port 1179 as 64512;"), "{text}");
    }

    #[test]
    fn bgp_debug_severity_turns_on_birds_protocol_debugging() {
        let mut c = cluster(true);
        assert!(!rendered(&me("b", "10.0.0.2/24"), &c).contains("debug protocols"));
        c.bgp.log_severity_screen = Some(brindle_datastore::resource::LogSeverity::Debug);
        assert!(rendered(&me("b", "10.0.0.2/24"), &c).contains("\ndebug protocols all;\n"));
    }

    #[test]
    fn a_reflector_passes_bird_p() {
        let mut c = cluster(false);
        c.peers.push(Resource::new(
            "all",
            BgpPeer {
                node_selector: Some("rr == 'true'".into()),
                peer_selector: Some("all()".into()),
                ..BgpPeer::default()
            },
        ));
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        assert_eq!(text.matches("rr client;").count(), 2, "{text}");
        assert!(text.contains("rr cluster id 1.0.0.1;"), "{text}");
        assert!(text.contains("route 10.244.0.0/26 blackhole;"), "{text}");
    }

    #[test]
    fn communities_render_as_bird_statements_and_pass_bird_p() {
        use brindle_datastore::resource::PrefixAdvertisement;
        let mut c = cluster(true);
        c.bgp.prefix_advertisements = vec![PrefixAdvertisement {
            cidr: "10.244.0.0/16".parse().unwrap(),
            communities: vec!["64512:100".into(), "1:2:3".into()],
        }];
        let text = rendered(&me("a", "10.0.0.1/24"), &c);
        assert!(
            text.contains(
                "route 10.244.0.0/26 blackhole { bgp_community.add((64512,100)); bgp_large_community.add((1,2,3)); };"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_external_peer_with_a_password_passes_bird_p() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut c = cluster(true);
        c.peers.push(Resource::new(
            "upstream",
            BgpPeer {
                peer_ip: Some("192.0.2.9".into()),
                as_number: Some(65001),
                password: Some(BgpPassword { file: Some(file), secret_key_ref: None }),
                keep_original_next_hop: true,
                ..BgpPeer::default()
            },
        ));
        let text = rendered(&me("b", "10.0.0.2/24"), &c);
        assert!(
            text.contains("neighbor 192.0.2.9 port 179 as 65001;\n  local 10.0.0.2;\n  hold time 90;\n  multihop;\n  password \"s3cret\";"),
            "{text}"
        );
    }
}
