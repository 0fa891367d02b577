//! brindle-bgp against real BIRD 2 and GoBGP 3 speakers, each in its own network namespace.
//! Needs root, `bird2` and `gobgpd` (the test script installs them).

mod common;

use std::time::Duration;

use common::{Bird, Brindle, Frr, Gobgp, Netns, Switch, bird_config, link, wait_for};

const LONG: Duration = Duration::from_secs(40);

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("brindle-bgp-interop-").tempdir().expect("temp dir")
}

/// The name of the veth `link` gave the namespace on its `b` side.
fn veth_in(ns: &Netns) -> String {
    let links = ns.output("ip", &["-o", "link", "show"]);
    links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
        .find(|name| name.starts_with("vb"))
        .expect("a veth made by link()")
        .to_owned()
}

fn gobgp_config(net: u8, me: u8, asn: u32, peers: &[(&str, u32, &str)]) -> String {
    let mut config = format!(
        "[global.config]\n  as = {asn}\n  router-id = \"10.{net}.0.{me}\"\n  port = 179\n  local-address-list = [\"10.{net}.0.{me}\"]\n"
    );
    for (address, peer_as, extra) in peers {
        config.push_str(&format!(
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{address}\"\n    peer-as = {peer_as}\n{extra}\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n"
        ));
    }
    config
}

#[test]
fn ibgp_with_bird_carries_ipv4_and_ipv6_both_ways() {
    let dir = tempdir();
    let (a, b) = (Netns::new("br"), Netns::new("bird"));
    link(&a, &b, 61, 1, 2);
    let bird = Bird::start(
        &b,
        dir.path(),
        "bird",
        &bird_config(61, 2, 64512, &["192.168.20.0/24", "fd00:20::/64"], &[("p1", "10.61.0.1", 64512, "")]),
    );
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.61.0.1\"\nlisten = \"10.61.0.1:179\"\n\
         [[peers]]\naddress = \"10.61.0.2\"\nasn = 64512\n\
         [[originate]]\nprefix = \"192.168.10.0/26\"\n\
         [[originate]]\nprefix = \"fd00:10::/64\"\nnext_hop = \"fd00:61::1\"\n",
    );
    brindle.wait_established("10.61.0.2");
    wait_for(LONG, "BIRD's routes at brindle", || {
        (brindle.has_route("192.168.20.0/24") && brindle.has_route("fd00:20::/64")).then_some(())
    });
    wait_for(LONG, "brindle's routes at BIRD", || {
        (bird.has_route("192.168.10.0/26") && bird.has_route("fd00:10::/64")).then_some(())
    });
    let routes = brindle.best_routes();
    let v6 = routes.iter().find(|(p, _, _)| p == "fd00:20::/64").unwrap();
    assert_eq!(v6.1, "fd00:61::2", "the IPv6 next hop BIRD gave");
}

#[test]
fn ebgp_with_gobgp_prepends_and_sets_the_next_hop() {
    let dir = tempdir();
    let (a, g) = (Netns::new("br"), Netns::new("gobgp"));
    link(&a, &g, 62, 1, 3);
    let gobgp = Gobgp::start(&g, dir.path(), "gobgp", &gobgp_config(62, 3, 65001, &[("10.62.0.1", 64512, "")]));
    gobgp.cli(&["global", "rib", "add", "192.168.30.0/24", "-a", "ipv4"]);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.62.0.1\"\nlisten = \"10.62.0.1:179\"\n\
         [[peers]]\naddress = \"10.62.0.3\"\nasn = 65001\n\
         [[originate]]\nprefix = \"192.168.10.0/26\"\n",
    );
    brindle.wait_established("10.62.0.3");
    let route =
        wait_for(LONG, "GoBGP's route", || brindle.best_routes().into_iter().find(|(p, _, _)| p == "192.168.30.0/24"));
    assert_eq!((route.1.as_str(), route.2.as_slice()), ("10.62.0.3", &[65001][..]));
    wait_for(LONG, "our route at GoBGP", || gobgp.has_route("192.168.10.0/26", "ipv4").then_some(()));
    let rib = gobgp.cli(&["global", "rib", "-a", "ipv4", "192.168.10.0/26"]);
    assert!(rib.contains("64512") && rib.contains("10.62.0.1"), "AS path and next hop at GoBGP: {rib}");
}

#[test]
fn md5_with_bird_matching_comes_up_and_mismatching_says_why() {
    let dir = tempdir();
    let (a, b) = (Netns::new("br"), Netns::new("bird"));
    link(&a, &b, 63, 1, 2);
    let bird = Bird::start(
        &b,
        dir.path(),
        "bird",
        &bird_config(63, 2, 64512, &["192.168.20.0/24"], &[("good", "10.63.0.1", 64512, "password \"s3cret\";")]),
    );
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.63.0.1\"\nlisten = \"10.63.0.1:179\"\n\
         [[peers]]\naddress = \"10.63.0.2\"\nasn = 64512\npassword = \"s3cret\"\n",
    );
    brindle.wait_established("10.63.0.2");
    assert!(bird.established("good"));
    drop(brindle);

    let brindle = Brindle::start(
        &a,
        dir.path(),
        "wrong",
        "asn = 64512\nrouter_id = \"10.63.0.1\"\nlisten = \"10.63.0.1:179\"\n\
         [[peers]]\naddress = \"10.63.0.2\"\nasn = 64512\npassword = \"wrong\"\n",
    );
    let error = wait_for(LONG, "the mismatch to show", || {
        let (state, error) = brindle.peer("10.63.0.2");
        (state != "Established" && error.contains("MD5")).then_some(error)
    });
    assert!(error.contains("timed out"), "{error}");
}

#[test]
fn reflector_for_bird_and_gobgp_clients() {
    let dir = tempdir();
    let (a, b, g) = (Netns::new("rr"), Netns::new("bird"), Netns::new("gobgp"));
    let _switch = Switch::new(64, &[(&a, 1), (&b, 2), (&g, 3)]);
    let bird = Bird::start(
        &b,
        dir.path(),
        "bird",
        &bird_config(64, 2, 64512, &["192.168.20.0/24"], &[("reflector", "10.64.0.1", 64512, "")]),
    );
    let gobgp = Gobgp::start(&g, dir.path(), "gobgp", &gobgp_config(64, 3, 64512, &[("10.64.0.1", 64512, "")]));
    gobgp.cli(&["global", "rib", "add", "192.168.30.0/24", "-a", "ipv4"]);
    let rr = Brindle::start(
        &a,
        dir.path(),
        "rr",
        "asn = 64512\nrouter_id = \"10.64.0.1\"\nlisten = \"10.64.0.1:179\"\ncluster_id = \"10.64.0.1\"\n\
         [[peers]]\naddress = \"10.64.0.2\"\nasn = 64512\nroute_reflector_client = true\n\
         [[peers]]\naddress = \"10.64.0.3\"\nasn = 64512\nroute_reflector_client = true\n",
    );
    rr.wait_established("10.64.0.2");
    rr.wait_established("10.64.0.3");
    wait_for(LONG, "GoBGP's route reflected to BIRD", || bird.has_route("192.168.30.0/24").then_some(()));
    wait_for(LONG, "BIRD's route reflected to GoBGP", || gobgp.has_route("192.168.20.0/24", "ipv4").then_some(()));
    let at_bird = bird.cli("show route 192.168.30.0/24 all");
    assert!(at_bird.contains("BGP.originator_id: 10.64.0.3"), "{at_bird}");
    assert!(at_bird.contains("BGP.cluster_list: 10.64.0.1"), "{at_bird}");
    assert!(at_bird.contains("BGP.next_hop: 10.64.0.3"), "the reflector kept GoBGP's next hop: {at_bird}");
}

#[test]
fn client_of_a_bird_reflector() {
    let dir = tempdir();
    let (r, c1, c2) = (Netns::new("bird"), Netns::new("c1"), Netns::new("c2"));
    let _switch = Switch::new(65, &[(&r, 1), (&c1, 2), (&c2, 3)]);
    let _bird = Bird::start(
        &r,
        dir.path(),
        "bird",
        &bird_config(
            65,
            1,
            64512,
            &[],
            &[
                ("c1", "10.65.0.2", 64512, "rr client; rr cluster id 10.65.0.1;"),
                ("c2", "10.65.0.3", 64512, "rr client; rr cluster id 10.65.0.1;"),
            ],
        )
        // A reflector passes the clients' next hops on untouched.
        .replace("next hop self; ", ""),
    );
    let config = |me: u8, prefix: &str| {
        format!(
            "asn = 64512\nrouter_id = \"10.65.0.{me}\"\nlisten = \"10.65.0.{me}:179\"\n\
             [[peers]]\naddress = \"10.65.0.1\"\nasn = 64512\n[[originate]]\nprefix = \"{prefix}\"\n"
        )
    };
    let one = Brindle::start(&c1, dir.path(), "one", &config(2, "192.168.2.0/24"));
    let two = Brindle::start(&c2, dir.path(), "two", &config(3, "192.168.3.0/24"));
    let route =
        wait_for(LONG, "the reflected route", || two.best_routes().into_iter().find(|(p, _, _)| p == "192.168.2.0/24"));
    assert_eq!(route.1, "10.65.0.2", "the next hop is the originating client's");
    wait_for(LONG, "the other reflected route", || one.has_route("192.168.3.0/24").then_some(()));
}

#[test]
fn ibgp_mesh_of_brindle_bird_and_gobgp() {
    let dir = tempdir();
    let (a, b, g) = (Netns::new("br"), Netns::new("bird"), Netns::new("gobgp"));
    let _switch = Switch::new(66, &[(&a, 1), (&b, 2), (&g, 3)]);
    let bird = Bird::start(
        &b,
        dir.path(),
        "bird",
        &bird_config(
            66,
            2,
            64512,
            &["192.168.20.0/24"],
            &[("brindle", "10.66.0.1", 64512, ""), ("gobgp", "10.66.0.3", 64512, "")],
        ),
    );
    let gobgp = Gobgp::start(
        &g,
        dir.path(),
        "gobgp",
        &gobgp_config(66, 3, 64512, &[("10.66.0.1", 64512, ""), ("10.66.0.2", 64512, "")]),
    );
    gobgp.cli(&["global", "rib", "add", "192.168.30.0/24", "-a", "ipv4"]);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.66.0.1\"\nlisten = \"10.66.0.1:179\"\n\
         [[peers]]\naddress = \"10.66.0.2\"\nasn = 64512\n[[peers]]\naddress = \"10.66.0.3\"\nasn = 64512\n\
         [[originate]]\nprefix = \"192.168.10.0/24\"\n",
    );
    wait_for(LONG, "brindle learns both", || {
        (brindle.has_route("192.168.20.0/24") && brindle.has_route("192.168.30.0/24")).then_some(())
    });
    wait_for(LONG, "BIRD learns both", || {
        (bird.has_route("192.168.10.0/24") && bird.has_route("192.168.30.0/24")).then_some(())
    });
    wait_for(LONG, "GoBGP learns both", || {
        (gobgp.has_route("192.168.10.0/24", "ipv4") && gobgp.has_route("192.168.20.0/24", "ipv4")).then_some(())
    });
}

#[test]
fn graceful_restart_of_brindle_while_bird_helps() {
    let dir = tempdir();
    let (a, b) = (Netns::new("br"), Netns::new("bird"));
    link(&a, &b, 67, 1, 2);
    let bird = Bird::start(&b, dir.path(), "bird", &bird_config(67, 2, 64512, &[], &[("p1", "10.67.0.1", 64512, "")]));
    let config = |prefixes: &[&str]| {
        let mut c = "asn = 64512\nrouter_id = \"10.67.0.1\"\nlisten = \"10.67.0.1:179\"\ngraceful_restart = 60\n\
                     [[peers]]\naddress = \"10.67.0.2\"\nasn = 64512\n"
            .to_string();
        for p in prefixes {
            c.push_str(&format!("[[originate]]\nprefix = \"{p}\"\n"));
        }
        c
    };
    let first = Brindle::start(&a, dir.path(), "first", &config(&["192.168.1.0/24", "192.168.2.0/24"]));
    first.wait_established("10.67.0.2");
    wait_for(LONG, "routes at BIRD", || {
        (bird.has_route("192.168.1.0/24") && bird.has_route("192.168.2.0/24")).then_some(())
    });

    first.process.signal("-KILL");
    drop(first);
    std::thread::sleep(Duration::from_secs(1));
    let during = bird.cli("show route 192.168.1.0/24 all");
    assert!(during.contains("192.168.1.0/24"), "BIRD keeps the routes while brindle restarts: {during}");

    let second = Brindle::start(&a, dir.path(), "second", &config(&["192.168.1.0/24", "192.168.3.0/24"]));
    second.wait_established("10.67.0.2");
    wait_for(LONG, "the new route", || bird.has_route("192.168.3.0/24").then_some(()));
    wait_for(LONG, "the stale route swept at End-of-RIB", || (!bird.has_route("192.168.2.0/24")).then_some(()));
    assert!(bird.has_route("192.168.1.0/24"), "the refreshed route stays");
}

#[test]
fn a_silent_peer_loses_its_routes_after_the_hold_time() {
    let dir = tempdir();
    let (a, b) = (Netns::new("br"), Netns::new("bird"));
    link(&a, &b, 68, 1, 2);
    let bird = Bird::start(
        &b,
        dir.path(),
        "bird",
        &bird_config(68, 2, 64512, &["192.168.20.0/24"], &[("p1", "10.68.0.1", 64512, "hold time 6;")])
            .replace("graceful restart on;", "graceful restart off;"),
    );
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.68.0.1\"\nlisten = \"10.68.0.1:179\"\n[[peers]]\naddress = \"10.68.0.2\"\nasn = 64512\nhold_time = 6\n",
    );
    wait_for(LONG, "BIRD's route", || brindle.has_route("192.168.20.0/24").then_some(()));
    bird.process.signal("-STOP");
    // The route first: the peer's error is set before its routes go, so read after they went.
    let error = wait_for(Duration::from_secs(20), "the hold timer", || {
        (!brindle.has_route("192.168.20.0/24")).then(|| brindle.peer("10.68.0.2").1)
    });
    assert_eq!(error, "hold timer expired");
}

#[test]
fn ebgp_with_bird_both_ways() {
    let dir = tempdir();
    let (a, b) = (Netns::new("br"), Netns::new("bird"));
    link(&a, &b, 69, 1, 2);
    let bird = Bird::start(
        &b,
        dir.path(),
        "bird",
        &bird_config(69, 2, 65002, &["192.168.20.0/24", "fd00:20::/64"], &[("p1", "10.69.0.1", 64512, "")]),
    );
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.69.0.1\"\nlisten = \"10.69.0.1:179\"\n\
         [[peers]]\naddress = \"10.69.0.2\"\nasn = 65002\n\
         [[originate]]\nprefix = \"192.168.10.0/26\"\n",
    );
    brindle.wait_established("10.69.0.2");
    let route =
        wait_for(LONG, "BIRD's route", || brindle.best_routes().into_iter().find(|(p, _, _)| p == "192.168.20.0/24"));
    assert_eq!(route.2, [65002]);
    wait_for(LONG, "BIRD's IPv6 route", || brindle.has_route("fd00:20::/64").then_some(()));
    wait_for(LONG, "our route at BIRD", || bird.has_route("192.168.10.0/26").then_some(()));
    let at_bird = bird.cli("show route 192.168.10.0/26 all");
    assert!(at_bird.contains("BGP.as_path: 64512"), "{at_bird}");
    assert!(at_bird.contains("BGP.next_hop: 10.69.0.1"), "{at_bird}");
}

#[test]
fn ipv6_with_gobgp_both_ways() {
    let dir = tempdir();
    let (a, g) = (Netns::new("br"), Netns::new("gobgp"));
    link(&a, &g, 70, 1, 3);
    let gobgp = Gobgp::start(&g, dir.path(), "gobgp", &gobgp_config(70, 3, 64512, &[("10.70.0.1", 64512, "")]));
    gobgp.cli(&["global", "rib", "add", "fd00:30::/64", "nexthop", "fd00:70::3", "-a", "ipv6"]);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.70.0.1\"\nlisten = \"10.70.0.1:179\"\n\
         [[peers]]\naddress = \"10.70.0.3\"\nasn = 64512\n\
         [[originate]]\nprefix = \"fd00:10::/64\"\nnext_hop = \"fd00:70::1\"\n",
    );
    brindle.wait_established("10.70.0.3");
    let route = wait_for(LONG, "GoBGP's IPv6 route", || {
        brindle.best_routes().into_iter().find(|(p, _, _)| p == "fd00:30::/64")
    });
    assert_eq!(route.1, "fd00:70::3");
    wait_for(LONG, "our IPv6 route at GoBGP", || gobgp.has_route("fd00:10::/64", "ipv6").then_some(()));
}

/// BIRD restarted next to brindle, first closing its connection (killed: the kernel sends the
/// FIN), then without (frozen, its link cut, killed, a new BIRD started, the link back):
/// either way its new connection is taken at once, never refused as a collision, and its routes stay through
/// the restart (graceful restart on both sides).
#[test]
fn bird_restarting_with_or_without_a_fin_is_taken_back_at_once() {
    let dir = tempdir();
    let (a, b) = (Netns::new("br"), Netns::new("bird"));
    link(&a, &b, 69, 1, 2);
    let veth = veth_in(&b);
    let config =
        bird_config(69, 2, 64512, &["192.168.30.0/24"], &[("p1", "10.69.0.1", 64512, "connect delay time 1;")]);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.69.0.1\"\nlisten = \"10.69.0.1:179\"\n[[peers]]\naddress = \"10.69.0.2\"\nasn = 64512\n",
    );
    let mut bird = Bird::start(&b, dir.path(), "bird-0", &config);
    wait_for(LONG, "BIRD's route", || brindle.has_route("192.168.30.0/24").then_some(()));

    for (round, fin) in [(1, true), (2, false)] {
        if !fin {
            // Frozen first: a BIRD that saw its link go down would end the session itself,
            // with a Cease.
            bird.process.signal("-STOP");
            b.output("ip", &["link", "set", &veth, "down"]);
        }
        bird.process.signal("-KILL");
        drop(bird);
        let began = std::time::Instant::now();
        bird = Bird::start(&b, dir.path(), &format!("bird-{round}"), &config);
        if !fin {
            b.output("ip", &["link", "set", &veth, "up"]);
        }
        assert!(brindle.has_route("192.168.30.0/24"), "the route is kept while BIRD restarts");
        wait_for(LONG, "the new BIRD's session", || bird.established("p1").then_some(()));
        let back = began.elapsed().as_secs_f64();
        brindle.wait_established("10.69.0.2");
        let how = if fin { "with" } else { "without" };
        println!("BIRD restarted {how} a FIN: established again {back:.1} s after it started");
        assert!(brindle.has_route("192.168.30.0/24"), "the route is still there");
    }
    let log = brindle.process.log();
    assert!(
        !log.contains("NOTIFICATION sent") && !log.contains("collision") && !log.contains("refusing"),
        "brindle refused a connection: {log}"
    );
}

/// BIRD sending more prefixes than brindle-bgp's limit for it: the session ends with Cease 6/1,
/// which BIRD reports as such, and BIRD's routes leave brindle-bgp.
#[test]
fn bird_past_its_prefix_limit_is_ceased() {
    let dir = tempdir();
    let (a, b) = (Netns::new("br"), Netns::new("bird"));
    link(&a, &b, 70, 1, 2);
    let statics: Vec<String> = (0..12).map(|i| format!("192.168.{i}.0/24")).collect();
    let statics: Vec<&str> = statics.iter().map(String::as_str).collect();
    let config = bird_config(70, 2, 64512, &statics, &[("p1", "10.70.0.1", 64512, "")]);
    // brindle first, listening when BIRD first connects: a BIRD refused there waits out its
    // retry timers before it tries again.
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.70.0.1\"\nlisten = \"10.70.0.1:179\"\n[[peers]]\naddress = \"10.70.0.2\"\nasn = 64512\n\
         max_prefixes = 10\nmax_prefixes_restart = 60\n",
    );
    let bird = Bird::start(&b, dir.path(), "bird", &format!("log stderr all;\n{config}"));
    // BIRD's log, not its last error: that is overwritten when BIRD tries again during the
    // pause and is refused.
    let deadline = std::time::Instant::now() + LONG;
    let said = loop {
        let log = bird.process.log();
        if log.contains("p1: Received: Maximum number of prefixes reached") {
            break log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "BIRD reports no Cease: {log}\nbrindle: {}",
            brindle.process.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(brindle.best_routes().is_empty(), "BIRD's routes are gone: {:?}", brindle.best_routes());
    assert!(
        brindle.peer("10.70.0.2").1.contains("passed its limit of 10 prefixes"),
        "{:?}: {said}",
        brindle.peer("10.70.0.2")
    );
}

/// The same with GoBGP: killed and started again, with a FIN and without one (its link cut
/// first), it is taken back at once, never refused as a collision.
#[test]
fn gobgp_restarting_with_or_without_a_fin_is_taken_back_at_once() {
    let dir = tempdir();
    let (a, g) = (Netns::new("br"), Netns::new("gobgp"));
    link(&a, &g, 71, 1, 3);
    let veth = veth_in(&g);
    let extra = "  [neighbors.graceful-restart.config]\n    enabled = true\n  [neighbors.timers.config]\n    connect-retry = 1\n";
    let config = gobgp_config(71, 3, 64512, &[("10.71.0.1", 64512, extra)]);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.71.0.1\"\nlisten = \"10.71.0.1:179\"\n[[peers]]\naddress = \"10.71.0.3\"\nasn = 64512\n",
    );
    let start = |name: &str| {
        let gobgp = Gobgp::start(&g, dir.path(), name, &config);
        gobgp.cli(&["global", "rib", "add", "192.168.31.0/24", "-a", "ipv4"]);
        gobgp
    };
    let mut gobgp = start("gobgp-0");
    wait_for(LONG, "GoBGP's route", || brindle.has_route("192.168.31.0/24").then_some(()));

    for (round, fin) in [(1, true), (2, false)] {
        if !fin {
            gobgp.process.signal("-STOP");
            g.output("ip", &["link", "set", &veth, "down"]);
        }
        gobgp.process.signal("-KILL");
        drop(gobgp);
        let began = std::time::Instant::now();
        gobgp = start(&format!("gobgp-{round}"));
        if !fin {
            g.output("ip", &["link", "set", &veth, "up"]);
        }
        let deadline = std::time::Instant::now() + LONG;
        while !gobgp.established("10.71.0.1") {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: GoBGP says {}; brindle says {:?}: {}",
                gobgp.cli(&["neighbor", "10.71.0.1"]),
                brindle.peer("10.71.0.3"),
                brindle.process.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let back = began.elapsed().as_secs_f64();
        brindle.wait_established("10.71.0.3");
        let how = if fin { "with" } else { "without" };
        println!("GoBGP restarted {how} a FIN: established again {back:.1} s after it started");
        wait_for(LONG, "GoBGP's route again", || brindle.has_route("192.168.31.0/24").then_some(()));
    }
    let log = brindle.process.log();
    assert!(
        !log.contains("NOTIFICATION sent") && !log.contains("collision") && !log.contains("refusing"),
        "brindle refused a connection: {log}"
    );
}

/// The same with FRR (graceful restart on): its daemons killed and started again, with a FIN
/// and without one (its link cut first), it is taken back at once and its route kept through
/// the restart.
#[test]
fn frr_restarting_with_or_without_a_fin_is_taken_back_at_once() {
    let dir = tempdir();
    let (a, f) = (Netns::new("br"), Netns::new("frr"));
    link(&a, &f, 79, 1, 2);
    let veth = veth_in(&f);
    let bgpd = "router bgp 64512\n bgp router-id 10.79.0.2\n no bgp network import-check\n bgp graceful-restart\n \
        neighbor 10.79.0.1 remote-as 64512\n neighbor 10.79.0.1 timers connect 1\n \
        address-family ipv4 unicast\n  network 192.168.79.0/24\n exit-address-family\n";
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.79.0.1\"\nlisten = \"10.79.0.1:179\"\n[[peers]]\naddress = \"10.79.0.2\"\nasn = 64512\n",
    );
    let mut frr = Frr::start(&f, dir.path(), "frr-0", bgpd, "");
    wait_for(LONG, "FRR's route", || brindle.has_route("192.168.79.0/24").then_some(()));

    for (round, fin) in [(1, true), (2, false)] {
        if !fin {
            frr.freeze();
            f.output("ip", &["link", "set", &veth, "down"]);
        }
        drop(frr);
        let began = std::time::Instant::now();
        frr = Frr::start(&f, dir.path(), &format!("frr-{round}"), bgpd, "");
        if !fin {
            f.output("ip", &["link", "set", &veth, "up"]);
        }
        assert!(brindle.has_route("192.168.79.0/24"), "round {round}: the route is kept while FRR restarts");
        let deadline = std::time::Instant::now() + LONG;
        while !frr.vtysh("show bgp neighbors 10.79.0.1").contains("BGP state = Established") {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: FRR says {}; brindle says {:?}",
                frr.vtysh("show bgp neighbors 10.79.0.1"),
                brindle.peer("10.79.0.2"),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let back = began.elapsed().as_secs_f64();
        brindle.wait_established("10.79.0.2");
        let how = if fin { "with" } else { "without" };
        println!("FRR restarted {how} a FIN: established again {back:.1} s after it started");
        wait_for(LONG, "FRR's route after the restart", || brindle.has_route("192.168.79.0/24").then_some(()));
    }
    let log = brindle.process.log();
    assert!(
        !log.contains("NOTIFICATION sent") && !log.contains("collision") && !log.contains("refusing"),
        "brindle refused a connection: {log}"
    );
}

/// GTSM (RFC 5082) with BIRD's `ttl security on`: with both sides on, the session comes up
/// whichever side connects; a peer sending with an ordinary TTL is shut out.
#[test]
fn gtsm_with_bird_comes_up_and_shuts_out_a_peer_without_it() {
    let dir = tempdir();
    let (a, b, c) = (Netns::new("br"), Netns::new("gtsm"), Netns::new("plain"));
    link(&a, &b, 77, 1, 2);
    link(&a, &c, 78, 1, 3);
    let secured = bird_config(77, 2, 64512, &["192.168.77.0/24"], &[("p1", "10.77.0.1", 64512, "ttl security on;")]);
    let bird = Bird::start(&b, dir.path(), "bird-gtsm", &secured);
    let plain = bird_config(78, 3, 64512, &["192.168.78.0/24"], &[("p1", "10.78.0.1", 64512, "")]);
    let plain_bird = Bird::start(&c, dir.path(), "bird-plain", &plain);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.77.0.1\"\nlisten = \"0.0.0.0:179\"\n\
         [[peers]]\naddress = \"10.77.0.2\"\nasn = 64512\nttl_security = 1\n\
         [[peers]]\naddress = \"10.78.0.3\"\nasn = 64512\nttl_security = 1\n",
    );
    wait_for(LONG, "the GTSM session", || brindle.has_route("192.168.77.0/24").then_some(()));
    assert!(bird.established("p1"));
    // BIRD without GTSM sends with TTL 64: its segments never reach the session.
    std::thread::sleep(Duration::from_secs(5));
    assert_ne!(brindle.peer("10.78.0.3").0, "Established");
    assert!(!plain_bird.established("p1"), "{}", plain_bird.cli("show protocols all p1"));
}

/// A per-peer local AS and allowas-in, with BIRD: BIRD (AS 65001) knows us only as AS 65100,
/// sees our route with that AS alone in its path, and one of its routes already carries
/// 65100, which allowas-in 1 lets in.
#[test]
fn a_per_peer_local_as_and_allowas_in_work_with_bird() {
    let dir = tempdir();
    let (a, b) = (Netns::new("br"), Netns::new("bird"));
    link(&a, &b, 79, 1, 2);
    let config = "router id 10.79.0.2;\nprotocol device {}\n\
        protocol static s4 { ipv4; route 192.168.79.0/24 blackhole; route 192.168.80.0/24 blackhole; }\n\
        protocol bgp p1 {\n  local 10.79.0.2 as 65001;\n  neighbor 10.79.0.1 as 65100;\n  direct;\n  \
        ipv4 { import all; export filter { if net = 192.168.80.0/24 then bgp_path.prepend(65100); accept; }; };\n}\n";
    let bird = Bird::start(&b, dir.path(), "bird", config);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.79.0.1\"\nlisten = \"10.79.0.1:179\"\n\
         [[peers]]\naddress = \"10.79.0.2\"\nasn = 65001\nlocal_asn = 65100\nallow_local_as = 1\n\
         [[originate]]\nprefix = \"192.168.81.0/24\"\n",
    );
    for prefix in ["192.168.79.0/24", "192.168.80.0/24"] {
        wait_for(LONG, prefix, || brindle.has_route(prefix).then_some(()));
    }
    let paths: Vec<Vec<u64>> = brindle.best_routes().into_iter().map(|(_, _, path)| path).collect();
    assert!(paths.contains(&vec![65001, 65100]), "the path holding our AS came in: {paths:?}");
    let shown = wait_for(LONG, "our route at BIRD", || {
        let shown = bird.cli("show route 192.168.81.0/24 all");
        shown.contains("192.168.81.0/24").then_some(shown)
    });
    assert!(shown.contains("BGP.as_path: 65100\n"), "{shown}");
}
