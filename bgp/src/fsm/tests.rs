use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::*;
use crate::wire::DecodeError;

const ME: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

fn config() -> Config {
    Config::new(64512, 64512, ME)
}

fn peer_open(asn: u32, hold: u16) -> Open {
    let mut c = Config::new(asn, 64512, PEER);
    c.hold_time = hold;
    c.open()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn sent(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn notification(actions: &[Action]) -> (u8, u8) {
    match sent(actions).as_slice() {
        [Message::Notification(n)] => (n.code, n.subcode),
        other => panic!("expected one NOTIFICATION, sent {other:?}"),
    }
}

fn established(t0: Instant) -> Fsm {
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    fsm.handle(Event::Message(Message::Open(peer_open(64512, 30))), t0);
    let actions = fsm.handle(Event::Message(Message::Keepalive), t0);
    assert!(matches!(actions.as_slice(), [Action::Established(_)]), "{actions:?}");
    fsm
}

#[test]
fn start_connects_and_enters_connect() {
    let mut fsm = Fsm::new(config());
    assert_eq!(fsm.handle(Event::Start, Instant::now()), vec![Action::Connect]);
    assert_eq!(fsm.state(), State::Connect);
}

#[test]
fn passive_start_waits_in_active_and_never_connects() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(Config { passive: true, ..config() });
    assert!(fsm.handle(Event::Start, t0).is_empty());
    assert_eq!(fsm.state(), State::Active);
    assert!(fsm.on_timer(t0 + secs(60)).is_empty(), "connect retry does not dial for a passive peer");
}

#[test]
fn connected_sends_open_and_enters_open_sent() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    let actions = fsm.handle(Event::TcpConnected, t0);
    assert_eq!(fsm.state(), State::OpenSent);
    let [Message::Open(open)] = sent(&actions)[..] else { panic!("{actions:?}") };
    assert_eq!((open.my_as, open.hold_time, open.bgp_id), (64512, 90, ME));
    assert!(open.capabilities().any(|c| *c == Capability::FourOctetAs(64512)));
}

#[test]
fn valid_open_sends_keepalive_and_negotiates_the_smaller_hold_time() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    let actions = fsm.handle(Event::Message(Message::Open(peer_open(64512, 30))), t0);
    assert_eq!(sent(&actions), [&Message::Keepalive]);
    assert_eq!(fsm.state(), State::OpenConfirm);
    let n = fsm.negotiated().unwrap();
    assert_eq!((n.hold_time, n.peer_id, n.four_octet_as, n.route_refresh), (30, PEER, true, true));
    assert_eq!(n.families, [Family::IPV4_UNICAST, Family::IPV6_UNICAST]);
    assert_eq!(fsm.next_deadline(), Some(t0 + secs(10)), "keepalive every third of the hold time");
}

#[test]
fn keepalive_in_open_confirm_establishes() {
    let fsm = established(Instant::now());
    assert_eq!(fsm.state(), State::Established);
    assert_eq!(fsm.last_error(), None);
}

#[test]
fn keepalives_go_out_every_third_of_the_hold_time_and_incoming_ones_refresh_hold() {
    let t0 = Instant::now();
    let mut fsm = established(t0);
    assert_eq!(sent(&fsm.on_timer(t0 + secs(10))), [&Message::Keepalive]);
    assert!(fsm.handle(Event::Message(Message::Keepalive), t0 + secs(25)).is_empty());
    assert!(
        fsm.on_timer(t0 + secs(31)).iter().all(|a| matches!(a, Action::Send(Message::Keepalive))),
        "hold was refreshed at 25 s"
    );
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn a_configured_keepalive_time_is_used_up_to_a_third_of_the_hold_time() {
    let t0 = Instant::now();
    for (keepalive, expected) in [(Some(2), 2), (Some(60), 10), (None, 10)] {
        let mut fsm = Fsm::new(Config { keepalive_time: keepalive, ..config() });
        fsm.handle(Event::Start, t0);
        fsm.handle(Event::TcpConnected, t0);
        fsm.handle(Event::Message(Message::Open(peer_open(64512, 30))), t0);
        fsm.handle(Event::Message(Message::Keepalive), t0);
        assert!(fsm.on_timer(t0 + secs(expected - 1)).is_empty(), "{keepalive:?}");
        assert_eq!(sent(&fsm.on_timer(t0 + secs(expected))), [&Message::Keepalive], "{keepalive:?}");
    }
}

#[test]
fn hold_timer_expiry_notifies_and_keeps_routes_of_a_graceful_peer() {
    let t0 = Instant::now();
    let mut fsm = established(t0);
    let actions = fsm.on_timer(t0 + secs(30));
    assert_eq!(notification(&actions), (4, 0));
    assert!(actions.contains(&Action::Down { reason: "hold timer expired".into(), keep_routes: true }), "{actions:?}");
    assert_eq!(fsm.state(), State::Idle);
    assert_eq!(fsm.last_error(), Some("hold timer expired"));
}

#[test]
fn a_silent_peer_can_be_taken_for_dead_even_when_graceful() {
    let t0 = Instant::now();
    let mut config = config();
    config.hold_expiry_keeps_routes = false;
    let mut fsm = Fsm::new(config);
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    fsm.handle(Event::Message(Message::Open(peer_open(64512, 30))), t0);
    fsm.handle(Event::Message(Message::Keepalive), t0);
    let actions = fsm.on_timer(t0 + secs(30));
    assert_eq!(notification(&actions), (4, 0));
    assert!(actions.contains(&Action::Down { reason: "hold timer expired".into(), keep_routes: false }), "{actions:?}");
    // A connection the peer closes (a restart) still keeps them.
    let mut fsm = established(t0);
    let actions = fsm.handle(Event::TcpFailed { reason: "connection closed".into() }, t0);
    assert!(actions.contains(&Action::Down { reason: "connection closed".into(), keep_routes: true }), "{actions:?}");
}

#[test]
fn a_dead_path_ends_the_session_quietly_and_drops_the_routes_unless_graceful() {
    let t0 = Instant::now();
    let down = |graceful: bool| Event::PathDown { reason: "BFD session down".into(), graceful };
    let mut fsm = established(t0);
    let actions = fsm.handle(down(false), t0);
    assert!(sent(&actions).is_empty(), "no NOTIFICATION over a dead path: {actions:?}");
    assert!(actions.contains(&Action::Disconnect));
    assert!(actions.contains(&Action::Down { reason: "BFD session down".into(), keep_routes: false }), "{actions:?}");
    assert_eq!(fsm.state(), State::Active, "the peer is taken back as soon as it connects");
    let mut fsm = established(t0);
    let actions = fsm.handle(down(true), t0);
    assert!(actions.contains(&Action::Down { reason: "BFD session down".into(), keep_routes: true }), "{actions:?}");
    assert!(fsm.handle(down(false), t0).is_empty(), "nothing to end twice");
}

#[test]
fn a_peer_without_graceful_restart_loses_its_routes() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    let mut open = peer_open(64512, 30);
    open.params = vec![OptionalParameter::Capabilities(vec![Capability::FourOctetAs(64512)])];
    fsm.handle(Event::Message(Message::Open(open)), t0);
    fsm.handle(Event::Message(Message::Keepalive), t0);
    assert_eq!(fsm.negotiated().unwrap().families, [Family::IPV4_UNICAST], "no MP capability means IPv4 only");
    let actions = fsm.handle(Event::TcpFailed { reason: "connection reset".into() }, t0);
    assert!(actions.contains(&Action::Down { reason: "connection reset".into(), keep_routes: false }));
}

#[test]
fn as_mismatch_is_refused_with_bad_peer_as() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    let actions = fsm.handle(Event::Message(Message::Open(peer_open(64999, 90))), t0);
    assert_eq!(notification(&actions), (2, 2));
    assert_eq!(fsm.state(), State::Idle);
    assert_eq!(fsm.last_error(), Some("AS mismatch: peer says AS 64999, configured AS 64512"));
}

#[test]
fn a_4_octet_peer_that_does_not_offer_4_octet_as_gets_unsupported_capability() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(Config::new(64512, 200_000, ME));
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    let open = Open { version: 4, my_as: AS_TRANS, hold_time: 90, bgp_id: PEER, params: vec![] };
    let actions = fsm.handle(Event::Message(Message::Open(open)), t0);
    // Bad Peer AS first: without the capability the peer's AS reads as AS_TRANS.
    assert_eq!(notification(&actions), (2, 2));

    let mut fsm = Fsm::new(Config::new(64512, 200_000, ME));
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    let mut open = peer_open(200_000, 90);
    open.params = vec![OptionalParameter::Capabilities(vec![
        Capability::Multiprotocol(Family { afi: 25, safi: 70 }),
        Capability::FourOctetAs(200_000),
    ])];
    let actions = fsm.handle(Event::Message(Message::Open(open)), t0);
    assert_eq!(notification(&actions), (2, 7), "no family in common");
    let [Message::Notification(n)] = sent(&actions)[..] else { panic!() };
    assert_eq!(&n.data[..6], &[1, 4, 0, 1, 0, 1], "the data names the capability we need");
}

#[test]
fn stop_sends_cease_with_the_reason_and_withdraws() {
    let t0 = Instant::now();
    let mut fsm = established(t0);
    let actions = fsm.handle(Event::Stop { reason: "node drained".into() }, t0);
    let [Message::Notification(n)] = sent(&actions)[..] else { panic!("{actions:?}") };
    assert_eq!(n.shutdown_reason().as_deref(), Some("node drained"));
    assert!(actions.iter().any(|a| matches!(a, Action::Down { keep_routes: false, .. })));
    assert_eq!(fsm.state(), State::Idle);
    assert_eq!(fsm.next_deadline(), None, "a stopped session does not restart itself");
}

#[test]
fn peer_notification_ends_the_session_with_its_reason() {
    let t0 = Instant::now();
    let mut fsm = established(t0);
    let cease = Notification::cease(2, "maintenance");
    let actions = fsm.handle(Event::Message(Message::Notification(cease)), t0);
    assert!(sent(&actions).is_empty(), "no NOTIFICATION answers a NOTIFICATION");
    assert_eq!(fsm.last_error(), Some("peer sent NOTIFICATION Cease / Administrative Shutdown: maintenance"));
    assert!(
        actions.iter().any(|a| matches!(a, Action::Down { keep_routes: true, .. })),
        "both sides set the N bit: routes stay"
    );
}

#[test]
fn a_hard_reset_drops_routes_even_with_graceful_restart() {
    let t0 = Instant::now();
    let mut fsm = established(t0);
    let hard = Notification { code: 6, subcode: 9, data: vec![] };
    let actions = fsm.handle(Event::Message(Message::Notification(hard)), t0);
    assert!(actions.iter().any(|a| matches!(a, Action::Down { keep_routes: false, .. })));
}

#[test]
fn messages_out_of_order_are_fsm_errors() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    assert_eq!(notification(&fsm.handle(Event::Message(Message::Keepalive), t0)), (5, 1));

    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    fsm.handle(Event::Message(Message::Open(peer_open(64512, 90))), t0);
    assert_eq!(notification(&fsm.handle(Event::Message(Message::Update(Update::default())), t0)), (5, 2));

    let mut fsm = established(t0);
    assert_eq!(notification(&fsm.handle(Event::Message(Message::Open(peer_open(64512, 90))), t0)), (5, 3));
}

#[test]
fn updates_and_refreshes_are_delivered_in_established() {
    let t0 = Instant::now();
    let mut fsm = established(t0);
    assert_eq!(
        fsm.handle(Event::Message(Message::Update(Update::default())), t0),
        vec![Action::Update(Update::default())]
    );
    let refresh = RouteRefresh { family: Family::IPV4_UNICAST, subtype: 0 };
    assert_eq!(fsm.handle(Event::Message(Message::RouteRefresh(refresh)), t0), vec![Action::RouteRefresh(refresh)]);
}

#[test]
fn a_decode_error_sends_its_notification() {
    let t0 = Instant::now();
    let mut fsm = established(t0);
    let error = DecodeError::new(3, 11, vec![], "bad path");
    let actions = fsm.handle(Event::DecodeFailed(error), t0);
    assert_eq!(notification(&actions), (3, 11));
    assert!(
        actions.iter().any(|a| matches!(a, Action::Down { keep_routes: true, .. })),
        "RFC 8538: N bit on both sides"
    );
}

#[test]
fn connect_retry_redials_and_errors_back_off_up_to_the_maximum() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    // A refused connection is retried after 1 s, then 2, 4, and at most every 5 s.
    let mut now = t0;
    let mut retries = Vec::new();
    for _ in 0..5 {
        fsm.handle(Event::TcpFailed { reason: "connection refused".into() }, now);
        assert_eq!(fsm.state(), State::Active);
        assert_eq!(fsm.last_error(), Some("connection refused"));
        let retry = fsm.next_deadline().unwrap();
        retries.push((retry - now).as_secs());
        now = retry;
        let actions = fsm.on_timer(now);
        assert!(actions.contains(&Action::Connect), "{actions:?}");
        assert_eq!(fsm.state(), State::Connect);
    }
    assert_eq!(retries, [1, 2, 4, 5, 5]);

    // Each failed OPEN exchange doubles the wait before the next start: 5, 10, 20, 30, 30 s.
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..5 {
        fsm.handle(Event::TcpConnected, now);
        fsm.handle(Event::Message(Message::Open(peer_open(64999, 90))), now);
        let restart = fsm.next_deadline().unwrap();
        waits.push((restart - now).as_secs());
        now = restart;
        assert_eq!(fsm.on_timer(now), vec![Action::Connect]);
    }
    assert_eq!(waits, [5, 10, 20, 30, 30]);
}

#[test]
fn collisions_keep_the_connection_of_the_higher_identifier() {
    assert_eq!(resolve_collision(PEER, ME), Survivor::Outgoing);
    assert_eq!(resolve_collision(ME, PEER), Survivor::Incoming);
}

#[test]
fn a_replaced_connection_restarts_the_open_exchange() {
    let t0 = Instant::now();
    let mut fsm = Fsm::new(config());
    fsm.handle(Event::Start, t0);
    fsm.handle(Event::TcpConnected, t0);
    fsm.handle(Event::Message(Message::Open(peer_open(64512, 90))), t0);
    assert_eq!(fsm.state(), State::OpenConfirm);
    let actions = fsm.handle(Event::ConnectionReplaced, t0);
    assert!(matches!(sent(&actions)[..], [Message::Open(_)]));
    assert_eq!(fsm.state(), State::OpenSent);
    assert!(fsm.negotiated().is_none());
}

#[test]
fn a_peer_that_closed_its_session_is_let_back_in_at_once_and_only_our_dialling_waits() {
    for passive in [false, true] {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(Config { passive, ..config() });
        fsm.handle(Event::Start, t0);
        fsm.handle(Event::TcpConnected, t0);
        fsm.handle(Event::Message(Message::Open(peer_open(64512, 30))), t0);
        fsm.handle(Event::Message(Message::Keepalive), t0);
        assert_eq!(fsm.state(), State::Established);
        let actions = fsm.handle(Event::TcpFailed { reason: "the peer closed the connection".into() }, t0);
        assert!(actions.contains(&Action::Down { reason: "the peer closed the connection".into(), keep_routes: true }));
        assert_eq!(fsm.state(), State::Active, "passive {passive}: waiting for the peer");
        // Our own attempt waits out the error wait; the peer's connection is taken at once.
        assert_eq!(fsm.next_deadline(), Some(t0 + secs(5)));
        assert!(fsm.on_timer(t0 + secs(4)).is_empty());
        let actions = fsm.handle(Event::TcpConnected, t0 + secs(1));
        assert!(matches!(sent(&actions)[..], [Message::Open(_)]), "{actions:?}");
        assert_eq!(fsm.state(), State::OpenSent);
    }

    // The same after the peer's NOTIFICATION.
    let t0 = Instant::now();
    let mut fsm = established(t0);
    let cease = Notification::cease(subcode::ADMINISTRATIVE_RESET, "");
    fsm.handle(Event::Message(Message::Notification(cease)), t0);
    assert_eq!(fsm.state(), State::Active);
    assert!(fsm.on_timer(t0 + secs(5)).contains(&Action::Connect), "then we dial again");
}

#[test]
fn after_an_error_of_ours_the_session_waits_in_idle() {
    let t0 = Instant::now();
    let mut fsm = established(t0);
    fsm.handle(Event::DecodeFailed(DecodeError::new(3, 11, vec![], "bad path")), t0);
    assert_eq!(fsm.state(), State::Idle);
    assert_eq!(fsm.handle(Event::TcpConnected, t0 + secs(1)), vec![Action::Disconnect], "refused while idle");
    assert_eq!(fsm.on_timer(t0 + secs(5)), vec![Action::Connect]);
}
