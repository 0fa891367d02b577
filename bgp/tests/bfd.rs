//! BFD (RFC 5880, single hop RFC 5881) between brindle-bgp and real BIRD 2 and FRR speakers
//! in network namespaces: a peer whose link goes silent is dropped within BFD's detection
//! time, while a peer with hold time only takes its hold time; the times are printed.

mod common;

use std::time::{Duration, Instant};

use common::{Bird, Brindle, Frr, Netns, bird_config, link, wait_for};

const LONG: Duration = Duration::from_secs(40);

/// BIRD's BFD protocol, 100 ms each way, three missed packets.
const BIRD_BFD: &str =
    "protocol bfd {\n  interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\n";

/// Drops everything in and out of the namespace: the link is up, and silent.
fn silence(ns: &Netns) {
    for chain in ["INPUT", "OUTPUT"] {
        ns.output("iptables", &["-I", chain, "-j", "DROP"]);
    }
}

fn unsilence(ns: &Netns) {
    for chain in ["INPUT", "OUTPUT"] {
        ns.output("iptables", &["-D", chain, "-j", "DROP"]);
    }
}

/// Polls every 10 ms until `done`; returns how long after `since` that was.
fn time_until(what: &str, since: Instant, done: impl Fn() -> bool) -> Duration {
    let deadline = since + LONG;
    while !done() {
        assert!(Instant::now() < deadline, "not {what} after {LONG:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    since.elapsed()
}

#[test]
fn a_silent_bfd_peer_is_dropped_within_the_detection_time_and_a_hold_time_peer_takes_its_hold_time() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (Netns::new("br"), Netns::new("bfd"), Netns::new("hold"));
    link(&a, &b, 74, 1, 2);
    link(&a, &c, 75, 1, 3);
    let with_bfd =
        bird_config(74, 2, 64512, &["192.168.74.0/24"], &[("p1", "10.74.0.1", 64512, "bfd on; error wait time 1, 5;")]);
    let _bfd_bird = Bird::start(&b, dir.path(), "bird-bfd", &format!("{BIRD_BFD}{with_bfd}"));
    let hold_only = bird_config(75, 3, 64512, &["192.168.75.0/24"], &[("p1", "10.75.0.1", 64512, "hold time 6;")]);
    let _hold_bird = Bird::start(&c, dir.path(), "bird-hold", &hold_only);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.74.0.1\"\nlisten = \"0.0.0.0:179\"\n\
         [[peers]]\naddress = \"10.74.0.2\"\nasn = 64512\nbfd = { min_tx = \"100ms\", min_rx = \"100ms\", multiplier = 3 }\n\
         [[peers]]\naddress = \"10.75.0.3\"\nasn = 64512\nhold_time = 6\n",
    );
    for prefix in ["192.168.74.0/24", "192.168.75.0/24"] {
        wait_for(LONG, prefix, || brindle.has_route(prefix).then_some(()));
    }
    wait_for(LONG, "BFD up with BIRD", || (brindle.bfd("10.74.0.2") == "Up").then_some(()));
    assert_eq!(brindle.bfd("10.75.0.3"), "", "no BFD where none is asked for");

    silence(&b);
    silence(&c);
    let cut = Instant::now();
    let by_bfd = time_until("the BFD peer's route gone", cut, || !brindle.has_route("192.168.74.0/24"));
    // Graceful restart keeps the other peer's routes as stale when its hold time expires.
    let by_hold = time_until("the hold-time peer down", cut, || brindle.peer("10.75.0.3").0 != "Established");
    println!(
        "silent link: the BFD peer's routes gone after {:.0} ms (detection time 300 ms), \
         the hold-time peer down after {:.1} s (hold time 6 s)",
        by_bfd.as_secs_f64() * 1000.0,
        by_hold.as_secs_f64()
    );
    let (state, error) = brindle.peer("10.74.0.2");
    assert_ne!(state, "Established");
    assert!(error.contains("BFD session down: control detection time expired"), "{error}");
    assert!(brindle.peer("10.75.0.3").1.contains("hold timer expired"), "{:?}", brindle.peer("10.75.0.3"));

    // The link speaks again: BFD comes back, then the session (BIRD waits out its error wait,
    // here 1 s) and the route.
    unsilence(&b);
    wait_for(LONG, "BFD up again", || (brindle.bfd("10.74.0.2") == "Up").then_some(()));
    wait_for(LONG, "the BFD peer's route back", || brindle.has_route("192.168.74.0/24").then_some(()));
}

/// FRR's bgpd with BFD on its session with brindle-bgp (a bfdd profile, 100 ms, three missed).
const FRR_BGPD: &str = "router bgp 64512\n bgp router-id 10.76.0.2\n no bgp network import-check\n \
    neighbor 10.76.0.1 remote-as 64512\n neighbor 10.76.0.1 bfd profile fast\n \
    address-family ipv4 unicast\n  network 192.168.76.0/24\n exit-address-family\n";
const FRR_BFDD: &str =
    "bfd\n profile fast\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!\n";

#[test]
fn frr_and_brindle_each_drop_the_other_within_the_detection_time_when_the_link_goes_silent() {
    let dir = tempfile::tempdir().unwrap();
    let (a, f) = (Netns::new("br"), Netns::new("frr"));
    link(&a, &f, 76, 1, 2);
    let frr = Frr::start(&f, dir.path(), "frr", FRR_BGPD, FRR_BFDD);
    let brindle = Brindle::start(
        &a,
        dir.path(),
        "brindle",
        "asn = 64512\nrouter_id = \"10.76.0.1\"\nlisten = \"10.76.0.1:179\"\n\
         [[peers]]\naddress = \"10.76.0.2\"\nasn = 64512\nbfd = { min_tx = \"100ms\", min_rx = \"100ms\" }\n\
         [[originate]]\nprefix = \"192.168.77.0/24\"\n",
    );
    wait_for(LONG, "FRR's route", || brindle.has_route("192.168.76.0/24").then_some(()));
    wait_for(LONG, "brindle's route at FRR", || frr.vtysh("show ip bgp").contains("192.168.77.0/24").then_some(()));
    wait_for(LONG, "BFD up both ways", || {
        (brindle.bfd("10.76.0.2") == "Up" && frr.vtysh("show bfd peers").contains("Status: up")).then_some(())
    });

    silence(&f);
    let cut = Instant::now();
    let by_brindle = time_until("FRR's route gone from brindle", cut, || !brindle.has_route("192.168.76.0/24"));
    let by_frr =
        time_until("brindle's route gone from FRR", cut, || !frr.vtysh("show ip bgp").contains("192.168.77.0/24"));
    println!(
        "silent link with FRR (detection time 300 ms): brindle dropped FRR's route after {:.0} ms, \
         FRR dropped brindle's after {:.0} ms",
        by_brindle.as_secs_f64() * 1000.0,
        by_frr.as_secs_f64() * 1000.0
    );
    assert!(brindle.peer("10.76.0.2").1.contains("BFD session down"), "{:?}", brindle.peer("10.76.0.2"));
    assert!(frr.vtysh("show bfd peers").contains("Status: down"), "{}", frr.vtysh("show bfd peers"));
}
