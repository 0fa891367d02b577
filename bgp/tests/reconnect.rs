//! Peers that go away and come back, played by a raw socket against `brindle-bgp run` with one
//! passive iBGP peer, as a restarting router would: a peer that closed its connection, or sent
//! a NOTIFICATION of any class, is taken back at once (no collision with a connection that is
//! gone); a graceful-restart peer that
//! connects again while its session is still up has restarted (RFC 4724 §4.2) and gets the new
//! session with its routes kept; a peer without graceful restart colliding with a live session
//! is refused with Cease 6/7 (RFC 4271 §6.8); after a NOTIFICATION of ours the peer is refused
//! with Cease 6/5 during the error wait and taken back after it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use brindle_bgp::wire::{self, Message, Update};
use common::raw::{self, PEER, Peer, ROUTE, speaker};
use common::wait_for;

#[test]
fn a_peer_that_closed_its_connection_is_taken_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, brindle) = speaker(dir.path(), "");
    for graceful in [false, true] {
        let mut first = Peer::connect(&ns, graceful);
        first.established().unwrap();
        first.announce();
        raw::wait_established(&brindle, true);

        // FIN, and straight back.
        drop(first);
        let began = Instant::now();
        let mut second = Peer::connect(&ns, graceful);
        let answer = second.established();
        assert!(answer.is_ok(), "graceful {graceful}: the new connection was refused: {answer:?}");
        println!("graceful restart {graceful}: back up {:.3} s after closing", began.elapsed().as_secs_f64());
        raw::wait_established(&brindle, graceful);
        second.announce();
        raw::wait_established(&brindle, true);
        drop(second);
        wait_for(Duration::from_secs(10), "the session to go down", || {
            (brindle.peer(PEER).0 != "Established").then_some(())
        });
    }
}

#[test]
fn a_graceful_peer_connecting_while_established_has_restarted_and_keeps_its_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, brindle) = speaker(dir.path(), "");
    let mut before = Peer::connect(&ns, true);
    before.established().unwrap();
    before.announce();
    raw::wait_established(&brindle, true);

    // No FIN: the old connection stays open, as after a power cycle.
    let mut after = Peer::connect(&ns, true);
    assert!(after.established().is_ok(), "the restarted peer's connection was refused");
    assert!(brindle.has_route(ROUTE), "its routes are kept (stale) across the restart");
    // The old connection is closed (whatever the speaker had sent on it before).
    while let Some(message) = before.next() {
        assert!(!matches!(message, Message::Notification(_)), "closed quietly, not with {message:?}");
    }
    // End-of-RIB without the route: the stale route goes.
    after.send(&[Message::Update(Update::end_of_rib_marker(wire::Family::IPV4_UNICAST))]);
    raw::wait_established(&brindle, false);
}

#[test]
fn a_peer_without_graceful_restart_colliding_with_its_live_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, brindle) = speaker(dir.path(), "");
    let mut live = Peer::connect(&ns, false);
    live.established().unwrap();
    live.announce();
    raw::wait_established(&brindle, true);
    let refused = Peer::connect(&ns, false).established().expect_err("a collision with a live session");
    assert_eq!((refused.code, refused.subcode), (6, 7), "Cease, Connection Collision Resolution");
    raw::wait_established(&brindle, true);
}

#[test]
fn after_a_notification_of_ours_the_peer_is_taken_back_after_the_error_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, brindle) = speaker(dir.path(), "");
    let mut peer = Peer::connect(&ns, false);
    peer.established().unwrap();
    // A message with a bad length: NOTIFICATION 1/2 from the speaker.
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0, 5, 4]);
    peer.stream.write_all(&bad).unwrap();
    let notification = peer.notification();
    assert_eq!((notification.code, notification.subcode), (1, 2));
    let began = Instant::now();
    let early = Peer::connect(&ns, false).established().expect_err("taken back during the error wait");
    assert_eq!((early.code, early.subcode), (6, 5), "Cease, Connection Rejected");
    let _back = wait_for(Duration::from_secs(15), "the peer to be taken back", || {
        let mut peer = Peer::connect(&ns, false);
        peer.established().ok().map(|()| peer)
    });
    println!("taken back {:.1} s after the NOTIFICATION", began.elapsed().as_secs_f64());
    raw::wait_established(&brindle, false);
}

#[test]
fn a_peer_is_taken_back_at_once_after_each_notification_class_it_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, brindle) = speaker(dir.path(), "");
    // Header, OPEN, UPDATE, hold timer, FSM errors, and Cease (administrative shutdown, reset).
    for (code, subcode) in [(1, 1), (2, 2), (3, 1), (4, 0), (5, 1), (6, 2), (6, 4)] {
        let mut peer = Peer::connect(&ns, true);
        peer.established().unwrap();
        raw::wait_established(&brindle, false);
        peer.send(&[Message::Notification(wire::Notification { code, subcode, data: Vec::new() })]);
        drop(peer);
        let mut again = Peer::connect(&ns, true);
        let answer = again.established();
        assert!(answer.is_ok(), "after the peer's NOTIFICATION {code}/{subcode}: {answer:?}");
        raw::wait_established(&brindle, false);
    }
}
