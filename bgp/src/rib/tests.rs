use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::wire::{AsPath, Attribute, MpReach, Origin, Value};

const ASN: u32 = 64512;
const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Adds an established peer `10.0.0.<n>` with router ID `10.255.0.<n>`.
fn peer(rib: &mut Rib, n: u8, peer_as: u32, rr_client: bool) -> PeerId {
    let id = rib.add_peer(PeerConfig { rr_client, ..peer_config(n, peer_as) });
    rib.peer_up(id, session(n));
    id
}

/// Applies `update` from `peer`; the best-path changes.
fn apply(rib: &mut Rib, peer: PeerId, update: &Update) -> Vec<BestChange> {
    let mut changes = Vec::new();
    rib.update(peer, update, &mut changes);
    changes
}

fn session(n: u8) -> PeerSession {
    PeerSession {
        router_id: Ipv4Addr::new(10, 255, 0, n),
        local_v4: Some(ME),
        local_v6: None,
        families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
        four_octet_as: true,
    }
}

/// An UPDATE announcing `prefixes` with an AS path, next hop and optional extras.
fn announce(prefixes: &[&str], path: &[u32], next_hop: &str, extra: Vec<Value>) -> Update {
    let mut attributes = vec![
        Attribute::new(Value::Origin(Origin::Igp)),
        Attribute::new(Value::AsPath(AsPath::sequence(path.to_vec()))),
        Attribute::new(Value::NextHop(ip(next_hop))),
    ];
    attributes.extend(extra.into_iter().map(Attribute::new));
    Update { attributes: attributes.into(), nlri: prefixes.iter().map(|p| net(p)).collect(), ..Update::default() }
}

fn withdraw(prefixes: &[&str]) -> Update {
    Update { withdrawn: prefixes.iter().map(|p| net(p)).collect(), ..Update::default() }
}

fn best_peer(rib: &Rib, prefix: &str) -> Option<PeerId> {
    rib.paths(&net(prefix)).first().map(|p| p.peer)
}

fn sent_to(exports: &[(PeerId, Export)], to: PeerId) -> Vec<&Export> {
    exports.iter().filter(|(p, _)| *p == to).map(|(_, e)| e).collect()
}

#[test]
fn local_routes_go_to_ibgp_peers_with_local_pref_and_our_next_hop() {
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, ASN, false);
    let changes = rib.originate(net("10.244.0.0/26"), PathAttrs::local(None));
    let exports = rib.exports(&changes);
    let [Export::Announce(prefix, attrs)] = sent_to(&exports, a)[..] else { panic!("{exports:?}") };
    assert_eq!(*prefix, net("10.244.0.0/26"));
    assert_eq!((attrs.local_pref, attrs.next_hop), (Some(100), Some(IpAddr::V4(ME))));
    assert_eq!(rib.counts(a).advertised, 1);
}

#[test]
fn a_late_peer_gets_the_whole_table_when_it_comes_up() {
    let mut rib = Rib::new(ASN, ME, None);
    rib.originate(net("10.244.0.0/26"), PathAttrs::local(None));
    rib.originate(net("10.244.0.64/26"), PathAttrs::local(None));
    let late = rib.add_peer(PeerConfig {
        address: "10.0.0.9".parse().unwrap(),
        peer_as: ASN,
        rr_client: false,
        import: PrefixFilter::default(),
        export: PrefixFilter::only(&[net("10.244.0.0/26")]),
        keep_next_hop: false,
        local_as: None,
        allow_local_as: 0,
    });
    let exports = rib.peer_up(late, session(9));
    assert_eq!(exports.len(), 1, "the export filter lets one through: {exports:?}");
}

#[test]
fn the_decision_process_prefers_in_rfc_order() {
    let mut rib = Rib::new(ASN, ME, None);
    let ibgp_a = peer(&mut rib, 2, ASN, false);
    let ibgp_b = peer(&mut rib, 3, ASN, false);
    let ebgp = peer(&mut rib, 4, 65001, false);

    apply(&mut rib, ibgp_a, &announce(&["10.1.0.0/16"], &[65001, 65002], "10.0.0.2", vec![]));
    apply(&mut rib, ibgp_b, &announce(&["10.1.0.0/16"], &[65001, 65002], "10.0.0.3", vec![Value::LocalPref(200)]));
    assert_eq!(best_peer(&rib, "10.1.0.0/16"), Some(ibgp_b), "higher LOCAL_PREF");

    apply(&mut rib, ibgp_b, &announce(&["10.2.0.0/16"], &[65001, 65002, 65003], "10.0.0.3", vec![]));
    apply(&mut rib, ibgp_a, &announce(&["10.2.0.0/16"], &[65001, 65002], "10.0.0.2", vec![]));
    assert_eq!(best_peer(&rib, "10.2.0.0/16"), Some(ibgp_a), "shorter AS_PATH");

    apply(&mut rib, ibgp_a, &announce(&["10.3.0.0/16"], &[65001], "10.0.0.2", vec![Value::Med(50)]));
    apply(&mut rib, ibgp_b, &announce(&["10.3.0.0/16"], &[65001], "10.0.0.3", vec![Value::Med(10)]));
    assert_eq!(best_peer(&rib, "10.3.0.0/16"), Some(ibgp_b), "lower MED from the same neighbour AS");

    apply(&mut rib, ibgp_a, &announce(&["10.4.0.0/16"], &[65001], "10.0.0.2", vec![]));
    apply(&mut rib, ebgp, &announce(&["10.4.0.0/16"], &[65001], "10.0.0.4", vec![]));
    assert_eq!(best_peer(&rib, "10.4.0.0/16"), Some(ebgp), "eBGP over iBGP");

    apply(&mut rib, ibgp_b, &announce(&["10.5.0.0/16"], &[65001], "10.0.0.3", vec![]));
    apply(&mut rib, ibgp_a, &announce(&["10.5.0.0/16"], &[65001], "10.0.0.2", vec![]));
    assert_eq!(best_peer(&rib, "10.5.0.0/16"), Some(ibgp_a), "lower router ID");

    let changes = apply(&mut rib, ibgp_a, &withdraw(&["10.5.0.0/16"]));
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].new.as_ref().map(|p| p.peer), Some(ibgp_b), "the next best takes over");
}

#[test]
fn ibgp_routes_are_not_passed_to_ibgp_peers_but_go_to_ebgp_rewritten() {
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, ASN, false);
    let b = peer(&mut rib, 3, ASN, false);
    let external = peer(&mut rib, 4, 65001, false);
    let changes =
        apply(&mut rib, a, &announce(&["10.1.0.0/16"], &[], "10.0.0.2", vec![Value::LocalPref(300), Value::Med(7)]));
    let exports = rib.exports(&changes);
    assert!(sent_to(&exports, b).is_empty(), "split horizon");
    assert!(sent_to(&exports, a).is_empty(), "never back to the sender");
    let [Export::Announce(_, attrs)] = sent_to(&exports, external)[..] else { panic!("{exports:?}") };
    assert_eq!(attrs.as_path, AsPath::sequence(vec![ASN]));
    assert_eq!((attrs.next_hop, attrs.local_pref, attrs.med), (Some(IpAddr::V4(ME)), None, None));
}

#[test]
fn an_external_peer_can_keep_the_original_next_hop() {
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, ASN, false);
    let keeps = rib.add_peer(PeerConfig {
        address: "10.0.0.5".parse().unwrap(),
        peer_as: 65001,
        rr_client: false,
        import: PrefixFilter::default(),
        export: PrefixFilter::default(),
        keep_next_hop: true,
        local_as: None,
        allow_local_as: 0,
    });
    rib.peer_up(keeps, session(5));
    rib.originate(net("10.244.0.0/26"), PathAttrs::local(None));
    let changes = apply(&mut rib, a, &announce(&["10.244.1.0/26"], &[], "10.0.0.2", vec![]));
    let exports = rib.exports(&changes);
    let [Export::Announce(_, attrs)] = sent_to(&exports, keeps)[..] else { panic!("{exports:?}") };
    assert_eq!(attrs.next_hop, Some(IpAddr::V4(ip("10.0.0.2"))), "the node that owns the block");
}

#[test]
fn a_reflector_reflects_without_touching_the_next_hop() {
    let cluster = ip("10.255.255.1");
    let mut rib = Rib::new(ASN, ME, Some(cluster));
    let client = peer(&mut rib, 2, ASN, true);
    let other_client = peer(&mut rib, 3, ASN, true);
    let non_client = peer(&mut rib, 4, ASN, false);
    let second_non_client = peer(&mut rib, 5, ASN, false);

    let exports = {
        let changes = apply(&mut rib, client, &announce(&["10.1.0.0/16"], &[], "10.0.0.2", vec![]));
        rib.exports(&changes)
    };
    for to in [other_client, non_client, second_non_client] {
        let [Export::Announce(_, attrs)] = sent_to(&exports, to)[..] else { panic!("{to}: {exports:?}") };
        assert_eq!(attrs.originator_id, Some(ip("10.255.0.2")));
        assert_eq!(attrs.cluster_list, vec![cluster]);
        assert_eq!(attrs.next_hop, Some("10.0.0.2".parse().unwrap()), "a reflector never changes the next hop");
    }
    assert!(sent_to(&exports, client).is_empty());

    let changes = apply(&mut rib, non_client, &announce(&["10.2.0.0/16"], &[], "10.0.0.4", vec![]));
    let exports = rib.exports(&changes);
    assert_eq!(sent_to(&exports, client).len(), 1);
    assert_eq!(sent_to(&exports, other_client).len(), 1);
    assert!(sent_to(&exports, second_non_client).is_empty(), "non-client to non-client is not reflected");
}

#[test]
fn loops_are_refused() {
    let mut rib = Rib::new(ASN, ME, Some(ip("10.255.255.1")));
    let client = peer(&mut rib, 2, ASN, true);
    let external = peer(&mut rib, 4, 65001, false);
    apply(&mut rib, external, &announce(&["10.1.0.0/16"], &[65001, ASN], "10.0.0.4", vec![]));
    apply(&mut rib, client, &announce(&["10.2.0.0/16"], &[], "10.0.0.2", vec![Value::OriginatorId(ME)]));
    apply(
        &mut rib,
        client,
        &announce(&["10.3.0.0/16"], &[], "10.0.0.2", vec![Value::ClusterList(vec![ip("10.255.255.1")])]),
    );
    assert!(rib.is_empty(), "{:?}", rib.routes().collect::<Vec<_>>());
}

/// Adds an established peer as [`peer`] does, with a local AS of its own and allowas-in.
fn peer_with(rib: &mut Rib, n: u8, peer_as: u32, local_as: Option<u32>, allow_local_as: u8) -> PeerId {
    let id = rib.add_peer(PeerConfig { local_as, allow_local_as, ..peer_config(n, peer_as) });
    rib.peer_up(id, session(n));
    id
}

fn peer_config(n: u8, peer_as: u32) -> PeerConfig {
    PeerConfig {
        address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
        peer_as,
        rr_client: false,
        import: PrefixFilter::default(),
        export: PrefixFilter::default(),
        keep_next_hop: false,
        local_as: None,
        allow_local_as: 0,
    }
}

#[test]
fn allowas_in_takes_our_as_as_often_as_the_peer_may_send_it() {
    let mut rib = Rib::new(ASN, ME, None);
    let strict = peer_with(&mut rib, 2, 65001, None, 0);
    let lenient = peer_with(&mut rib, 3, 65002, None, 1);
    for from in [strict, lenient] {
        apply(&mut rib, from, &announce(&["10.1.0.0/16"], &[65001, ASN], "10.0.0.2", vec![]));
        apply(&mut rib, from, &announce(&["10.2.0.0/16"], &[65001, ASN, 65003, ASN], "10.0.0.2", vec![]));
    }
    assert_eq!(best_peer(&rib, "10.1.0.0/16"), Some(lenient), "once is allowed from the lenient peer");
    assert_eq!(best_peer(&rib, "10.2.0.0/16"), None, "twice is a loop from either");
}

#[test]
fn a_peer_with_its_own_local_as_is_spoken_to_and_looped_by_that_as() {
    const OTHER: u32 = 65100;
    let mut rib = Rib::new(ASN, ME, None);
    let inside = peer(&mut rib, 2, ASN, false);
    // The peer's AS is ours, but we speak to it as 65100: an external session.
    let outside = peer_with(&mut rib, 4, ASN, Some(OTHER), 0);
    let changes = apply(&mut rib, inside, &announce(&["10.1.0.0/16"], &[], "10.0.0.2", vec![]));
    let exports = rib.exports(&changes);
    let [Export::Announce(_, attrs)] = sent_to(&exports, outside)[..] else { panic!("{exports:?}") };
    assert_eq!(attrs.as_path, AsPath::sequence(vec![OTHER]), "prepended with the peer's local AS");
    apply(&mut rib, outside, &announce(&["10.8.0.0/16"], &[ASN, 65001], "10.0.0.4", vec![]));
    assert_eq!(best_peer(&rib, "10.8.0.0/16"), Some(outside), "the speaker's own AS is the peer's here");
    apply(&mut rib, outside, &announce(&["10.9.0.0/16"], &[ASN, 65001, OTHER], "10.0.0.4", vec![]));
    assert_eq!(best_peer(&rib, "10.9.0.0/16"), None, "the AS we speak to it as, in the path, is a loop");
}

#[test]
fn multipath_reports_equal_cost_paths_coming_and_going_beside_an_unchanged_best() {
    let prefix = net("10.9.0.0/16");
    let hop = |s: &str| -> IpAddr { s.parse().unwrap() };
    for multipath in [false, true] {
        let mut rib = Rib::new(ASN, ME, None);
        rib.set_multipath(multipath);
        let (a, b, c) =
            (peer(&mut rib, 2, 65001, false), peer(&mut rib, 3, 65001, false), peer(&mut rib, 4, 65001, false));
        apply(&mut rib, a, &announce(&["10.9.0.0/16"], &[65001], "10.0.0.2", vec![]));
        let second = apply(&mut rib, b, &announce(&["10.9.0.0/16"], &[65001], "10.0.0.3", vec![]));
        assert_eq!(second.len(), usize::from(multipath), "an equal-cost path beside the best");
        assert!(rib.exports(&second).is_empty(), "the best did not change: nothing to send");
        let longer = apply(&mut rib, c, &announce(&["10.9.0.0/16"], &[65001, 65002], "10.0.0.4", vec![]));
        assert!(longer.is_empty(), "a longer path is not of equal cost");
        assert_eq!(
            rib.multipath(&prefix, 8),
            [hop("10.0.0.2"), hop("10.0.0.3")],
            "the best's first, the longer left out"
        );
        assert_eq!(rib.multipath(&prefix, 1), [hop("10.0.0.2")]);
        let gone = apply(&mut rib, b, &withdraw(&["10.9.0.0/16"]));
        assert_eq!(gone.len(), usize::from(multipath), "an equal-cost path withdrawn");
        assert_eq!(rib.multipath(&prefix, 8), [hop("10.0.0.2")]);
    }
}

#[test]
fn treat_as_withdraw_removes_the_routes() {
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, ASN, false);
    apply(&mut rib, a, &announce(&["10.1.0.0/16"], &[], "10.0.0.2", vec![]));
    let mut broken = announce(&["10.1.0.0/16"], &[], "10.0.0.2", vec![]);
    broken.errors.push(crate::wire::AttributeError {
        type_code: 1,
        action: crate::wire::Action::TreatAsWithdraw,
        subcode: 6,
        reason: "ORIGIN 9".into(),
    });
    let changes = apply(&mut rib, a, &broken);
    assert_eq!(changes.len(), 1);
    assert!(rib.is_empty());
}

#[test]
fn import_filters_keep_foreign_prefixes_out() {
    let mut rib = Rib::new(ASN, ME, None);
    let id = rib.add_peer(PeerConfig {
        address: "10.0.0.2".parse().unwrap(),
        peer_as: ASN,
        rr_client: false,
        import: PrefixFilter::only(&[net("10.244.0.0/16")]),
        export: PrefixFilter::default(),
        keep_next_hop: false,
        local_as: None,
        allow_local_as: 0,
    });
    rib.peer_up(id, session(2));
    apply(&mut rib, id, &announce(&["10.244.3.0/26", "192.168.0.0/24", "10.0.0.0/8"], &[], "10.0.0.2", vec![]));
    let held: Vec<String> = rib.routes().map(|(p, _)| p.to_string()).collect();
    assert_eq!(held, ["10.244.3.0/26"]);
}

#[test]
fn negated_rules_match_the_rest_of_their_family_only() {
    let any = RouteFacts::default();
    let not_in = FilterRule::on_prefixes(net("10.0.0.0/8"), 8, 32, true, false);
    assert!(not_in.matches(&net("192.168.0.0/24"), any));
    assert!(!not_in.matches(&net("10.1.0.0/16"), any));
    assert!(!not_in.matches(&net("fd00::/64"), any), "an IPv4 rule never decides an IPv6 prefix");
    let not_equal = FilterRule::on_prefixes(net("10.1.0.0/16"), 16, 16, true, true);
    assert!(not_equal.matches(&net("10.1.0.0/24"), any) && !not_equal.matches(&net("10.1.0.0/16"), any));
    let filter = PrefixFilter { rules: vec![not_in], default_accept: true };
    assert!(!filter.accepts(&net("192.168.0.0/24"), any) && filter.accepts(&net("10.9.0.0/16"), any));
}

#[test]
fn rules_on_the_source_and_the_interface_match_learned_routes_through_that_interface_only() {
    let everything = FilterRule::on_prefixes(net("0.0.0.0/0"), 0, 32, false, false);
    let learned = FilterRule { learned_only: true, ..everything.clone() };
    let own = RouteFacts { learned: false, next_hop: None };
    let from_peer = |hop: &str| RouteFacts { learned: true, next_hop: Some(hop.parse().unwrap()) };
    assert!(!learned.matches(&net("10.1.0.0/16"), own), "this speaker's own route");
    assert!(learned.matches(&net("10.1.0.0/16"), from_peer("10.0.0.2")));
    let subnets = vec![net("10.0.0.0/24"), net("10.9.0.0/24")];
    let via_eth = FilterRule { interface: Some(InterfaceMatch { pattern: "eth*".into(), subnets }), ..everything };
    assert!(via_eth.matches(&net("10.1.0.0/16"), from_peer("10.9.0.7")));
    assert!(!via_eth.matches(&net("10.1.0.0/16"), from_peer("10.5.0.1")), "a next hop on another interface");
    assert!(!via_eth.matches(&net("10.1.0.0/16"), own), "no next hop, no interface");

    // Through the RIB: an export rule rejecting learned routes leaves our own to the peer.
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, 65001, false);
    let export = PrefixFilter { rules: vec![learned], default_accept: true };
    let b = rib.add_peer(PeerConfig { export, ..peer_config(3, 65002) });
    rib.peer_up(b, session(3));
    apply(&mut rib, a, &announce(&["10.1.0.0/16"], &[65001], "10.0.0.2", vec![]));
    let changes = rib.originate(net("10.244.0.0/26"), PathAttrs::local(None));
    let sent: Vec<IpNetwork> = rib
        .exports(&changes)
        .into_iter()
        .filter(|(to, _)| *to == b)
        .map(|(_, e)| match e {
            Export::Announce(prefix, _) | Export::Withdraw(prefix) => prefix,
        })
        .collect();
    assert_eq!(sent, [net("10.244.0.0/26")]);
    assert_eq!(rib.counts(b).advertised, 1, "the learned route was never sent");
}

#[test]
fn graceful_restart_keeps_stale_routes_until_end_of_rib() {
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, ASN, false);
    let watcher = peer(&mut rib, 3, 65001, false);
    apply(&mut rib, a, &announce(&["10.1.0.0/16", "10.2.0.0/16"], &[], "10.0.0.2", vec![]));
    assert!(rib.peer_down(a, true).is_empty(), "stale routes stay best: nothing changes");
    assert!(rib.paths(&net("10.1.0.0/16"))[0].stale);

    rib.peer_up(a, session(2));
    let changes = apply(&mut rib, a, &announce(&["10.1.0.0/16"], &[], "10.0.0.2", vec![]));
    assert!(!rib.paths(&net("10.1.0.0/16"))[0].stale, "refreshed");
    assert!(rib.exports(&changes).is_empty(), "the same route again is not news to anyone");
    let changes = rib.sweep_stale(a, Some(Family::IPV4_UNICAST));
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].prefix, net("10.2.0.0/16"));
    let exports = rib.exports(&changes);
    assert_eq!(sent_to(&exports, watcher), [&Export::Withdraw(net("10.2.0.0/16"))]);
}

#[test]
fn a_peer_going_down_without_graceful_restart_withdraws_everything() {
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, ASN, false);
    let b = peer(&mut rib, 3, 65001, false);
    apply(&mut rib, a, &announce(&["10.1.0.0/16", "10.2.0.0/16"], &[], "10.0.0.2", vec![]));
    assert_eq!(rib.counts(a).accepted, 2);
    let changes = rib.peer_down(a, false);
    assert_eq!(changes.len(), 2);
    assert_eq!(rib.exports(&changes).iter().filter(|(p, _)| *p == b).count(), 2);
    assert_eq!(rib.counts(a).accepted, 0);
}

#[test]
fn ipv6_routes_take_the_mp_next_hop_and_share_attributes() {
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, ASN, false);
    let nlri: Vec<IpNetwork> = (0..100u16).map(|i| format!("fd00:{i:x}::/64").parse().unwrap()).collect();
    let hop: IpAddr = "fd00::2".parse().unwrap();
    let update = Update {
        attributes: vec![
            Attribute::new(Value::Origin(Origin::Igp)),
            Attribute::new(Value::AsPath(AsPath::default())),
            Attribute::new(Value::MpReach(MpReach::new(Family::IPV6_UNICAST, &[hop], nlri))),
        ]
        .into(),
        ..Update::default()
    };
    apply(&mut rib, a, &update);
    assert_eq!(rib.len(), 100);
    assert_eq!(rib.paths(&net("fd00:7::/64"))[0].attrs.next_hop, Some(hop));
    assert_eq!(rib.attribute_sets(), 1, "100 routes, one shared attribute set");
}

#[test]
fn a_soft_reconfiguration_drops_what_the_new_import_refuses_and_sends_what_the_export_changed() {
    let mut rib = Rib::new(ASN, ME, None);
    let a = peer(&mut rib, 2, 65001, false);
    let b = peer(&mut rib, 3, 65002, false);
    apply(&mut rib, a, &announce(&["10.1.0.0/24", "10.2.0.0/24"], &[65001], "10.0.0.2", vec![]));
    rib.originate(net("10.244.0.0/26"), PathAttrs::local(None));
    rib.originate(net("10.245.0.0/26"), PathAttrs::local(None));
    let config = |import: &[&str], export: &[&str]| PeerConfig {
        address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        peer_as: 65001,
        rr_client: false,
        import: PrefixFilter::only(&import.iter().map(|p| net(p)).collect::<Vec<_>>()),
        export: PrefixFilter::only(&export.iter().map(|p| net(p)).collect::<Vec<_>>()),
        keep_next_hop: false,
        local_as: None,
        allow_local_as: 0,
    };

    // Import only 10.1/16 from a, export only 10.244/16 to it.
    let (changes, exports) = rib.reconfigure(a, config(&["10.1.0.0/16"], &["10.244.0.0/16"]));
    let changed: Vec<IpNetwork> = changes.iter().map(|c| c.prefix).collect();
    assert_eq!(changed, [net("10.2.0.0/24")], "only the refused route goes");
    assert_eq!(best_peer(&rib, "10.1.0.0/24"), Some(a), "the accepted one stays, untouched");
    assert!(rib.paths(&net("10.2.0.0/24")).is_empty());
    // a held 10.244, 10.245 and b's nothing; now it should hold 10.244 only.
    let sent: Vec<String> = exports
        .iter()
        .map(|e| match e {
            Export::Announce(p, _) => format!("+{p}"),
            Export::Withdraw(p) => format!("-{p}"),
        })
        .collect();
    assert_eq!(sent, ["-10.245.0.0/26"], "10.244 was sent already and is unchanged");
    assert_eq!(rib.counts(a).advertised, 1);
    // The other peer hears of the withdrawn route through the changes; the reconfigured one
    // is left out (its exports were worked out whole), its count untouched.
    let to_b = ExportBatch::per_peer(rib.exports_except(&changes, Some(a)));
    assert_eq!(sent_to(&to_b, b), [&Export::Withdraw(net("10.2.0.0/24"))]);
    assert!(sent_to(&to_b, a).is_empty());
    assert_eq!(rib.counts(a).advertised, 1);

    // Exporting more announces what is now let out; a peer that is down gets nothing.
    let (_, exports) = rib.reconfigure(a, config(&["10.1.0.0/16"], &["10.244.0.0/16", "10.245.0.0/16"]));
    assert!(matches!(&exports[..], [Export::Announce(p, _)] if *p == net("10.245.0.0/26")), "{exports:?}");
    rib.peer_down(b, false);
    let (_, exports) = rib.reconfigure(b, config(&[], &[]));
    assert!(exports.is_empty());
}

#[test]
fn peers_sent_alike_share_one_batch_and_a_members_own_route_is_worked_out_per_member() {
    let mut rib = Rib::new(ASN, ME, None);
    let sender = peer(&mut rib, 2, ASN, false);
    let clients: Vec<PeerId> = (3..6).map(|n| peer(&mut rib, n, ASN, true)).collect();
    let narrow = PrefixFilter::only(&[net("10.9.0.0/16")]);
    let picky = rib.add_peer(PeerConfig { rr_client: true, export: narrow, ..peer_config(6, ASN) });
    rib.peer_up(picky, session(6));

    let changes = apply(&mut rib, sender, &announce(&["10.1.0.0/24", "10.2.0.0/24"], &[], "10.0.0.2", vec![]));
    let batches = rib.exports_except(&changes, None);
    assert_eq!(batches.len(), 1, "one batch for the three clients; nothing passes the picky one's filter");
    assert_eq!(batches[0].peers, clients);
    assert_eq!(batches[0].exports.len(), 2);
    assert!(clients.iter().all(|c| rib.counts(*c).advertised == 2), "each member's count follows the batch");

    // A client's own route: the others and the sender hear of it, the client itself not.
    let changes = apply(&mut rib, clients[0], &announce(&["10.3.0.0/24"], &[], "10.0.0.3", vec![]));
    let sent = ExportBatch::per_peer(rib.exports_except(&changes, None));
    let receivers: Vec<PeerId> = sent.iter().map(|(p, _)| *p).collect();
    assert_eq!(receivers, [sender, clients[1], clients[2]]);
    assert_eq!(rib.counts(clients[0]).advertised, 2);
    assert_eq!(rib.counts(clients[1]).advertised, 3);
}
