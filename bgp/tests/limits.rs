//! A peer's prefix limit, driven by a raw socket peer against `brindle-bgp run`: past it the
//! session ends with Cease 6/1 carrying the family and the limit (RFC 4486), the peer's routes
//! go, and the peer is refused until the restart pause is over; a warn-only limit keeps the
//! session and the routes and says so in the log.

mod common;

use std::time::{Duration, Instant};

use brindle_bgp::wire::Message;
use common::raw::{Peer, speaker};
use common::wait_for;
use ipnetwork::IpNetwork;

/// `count` /24s from 10.1.`first`.0/24 on.
fn prefixes(first: u8, count: u8) -> Vec<IpNetwork> {
    (first..first + count).map(|i| format!("10.1.{i}.0/24").parse().unwrap()).collect()
}

#[test]
fn a_peer_past_its_limit_is_ceased_loses_its_routes_and_comes_back_after_the_pause() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, brindle) = speaker(dir.path(), "max_prefixes = 10\nmax_prefixes_restart = 2\n");
    let mut peer = Peer::connect(&ns, true);
    peer.established().unwrap();
    peer.announce_all(&prefixes(0, 8));
    wait_for(Duration::from_secs(10), "8 routes", || (brindle.best_routes().len() == 8).then_some(()));

    peer.announce_all(&prefixes(8, 5));
    let ceased = Instant::now();
    let notification = peer.notification();
    assert_eq!((notification.code, notification.subcode), (6, 1), "Cease, Maximum Number of Prefixes Reached");
    assert_eq!(notification.data, [0, 1, 1, 0, 0, 0, 10], "IPv4 unicast, limit 10");
    wait_for(Duration::from_secs(10), "the peer's routes to go", || brindle.best_routes().is_empty().then_some(()));

    // Refused during the pause (even with graceful restart), taken back after it.
    let early = Peer::connect(&ns, true).established().expect_err("taken back during the pause");
    assert_eq!((early.code, early.subcode), (6, 5), "Cease, Connection Rejected");
    let mut back = wait_for(Duration::from_secs(10), "the peer to be taken back", || {
        let mut peer = Peer::connect(&ns, true);
        peer.established().ok().map(|()| peer)
    });
    println!("taken back {:.1} s after the Cease (pause 2 s)", ceased.elapsed().as_secs_f64());
    back.announce_all(&prefixes(0, 10));
    wait_for(Duration::from_secs(10), "10 routes, at the limit", || (brindle.best_routes().len() == 10).then_some(()));
    assert!(brindle.process.log().contains("the peer passed its limit of 10 prefixes"), "{}", brindle.process.log());
}

#[test]
fn a_warn_only_limit_keeps_the_session_and_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, brindle) = speaker(dir.path(), "max_prefixes = 10\nmax_prefixes_warn_only = true\n");
    let mut peer = Peer::connect(&ns, true);
    peer.established().unwrap();
    peer.announce_all(&prefixes(0, 13));
    wait_for(Duration::from_secs(10), "13 routes", || (brindle.best_routes().len() == 13).then_some(()));
    assert_eq!(brindle.peer(common::raw::PEER).0, "Established");
    let log = brindle.process.log();
    assert_eq!(log.matches("the peer passed its prefix limit").count(), 1, "warned once: {log}");
}

/// A peer still sending when it is ceased (its End-of-RIB, keepalives) reads the NOTIFICATION
/// and then the end of the connection, a FIN: what it sends meanwhile is read and dropped, so
/// the speaker's socket never closes with unread data, which would answer with a reset that
/// makes a peer such as BIRD drop the connection before it reads why.
#[test]
fn a_ceased_peer_still_sending_gets_the_notification_and_a_fin_not_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, _brindle) = speaker(dir.path(), "max_prefixes = 10\nmax_prefixes_restart = 60\n");
    let mut peer = Peer::connect(&ns, true);
    peer.established().unwrap();
    peer.announce_all(&prefixes(0, 11));
    // Keep talking for a while after the limit, as a peer sending its table does.
    let mut keepalive = bytes::BytesMut::new();
    brindle_bgp::wire::encode(&Message::Keepalive, &common::raw::CODEC, &mut keepalive).unwrap();
    let talking = Instant::now();
    while talking.elapsed() < Duration::from_millis(500) {
        if let Err(e) = std::io::Write::write_all(&mut peer.stream, &keepalive) {
            panic!("the speaker stopped taking what the peer sent: {e}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let notification = peer.notification();
    assert_eq!((notification.code, notification.subcode), (6, 1));
    assert!(peer.next().is_none(), "nothing after the NOTIFICATION");
    assert!(peer.stream.take_error().unwrap().is_none(), "the connection ended with a FIN, not a reset");
}
