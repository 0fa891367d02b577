//! Byte fixtures, a comment per field: each parses, and emits back to the same bytes; and a
//! corpus of malformed messages, each with the exact NOTIFICATION or RFC 7606 action.

use super::attribute::type_code as tc;
use super::*;

/// Wraps a body in a header of the given type.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// An UPDATE body from its three parts.
fn update_body(withdrawn: &[u8], attributes: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    b.extend_from_slice(attributes);
    b.extend_from_slice(nlri);
    b
}

const FOUR: Codec = Codec { four_octet_as: true, ebgp: false };
const TWO: Codec = Codec { four_octet_as: false, ebgp: false };

fn round_trip(bytes: &[u8], codec: &Codec) -> Message {
    let parsed = decode(bytes, codec).unwrap_or_else(|e| panic!("{e}"));
    let mut out = BytesMut::new();
    encode(&parsed, codec, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "emit(parse(x)) == x for {parsed:?}");
    parsed
}

/// ORIGIN IGP, AS_PATH [64513], NEXT_HOP 10.99.0.2, LOCAL_PREF 100 (4-octet AS).
const IBGP_ATTRS: &[u8] = &[
    0x40, 1, 1, 0, // ORIGIN: well-known transitive, len 1, IGP
    0x40, 2, 6, 2, 1, 0, 0, 0xfc, 0x01, // AS_PATH: AS_SEQUENCE of 1: 64513
    0x40, 3, 4, 10, 99, 0, 2, // NEXT_HOP 10.99.0.2
    0x40, 5, 4, 0, 0, 0, 100, // LOCAL_PREF 100
];

#[test]
fn open_as_bird_sends_it() {
    let body = [
        4, // version
        0xfc, 0x00, // my AS 64512
        0, 240, // hold time 240
        10, 99, 0, 1,  // BGP identifier
        28, // optional parameters length
        2, 26, // capabilities parameter, 26 octets
        1, 4, 0, 1, 0, 1, // multiprotocol IPv4 unicast
        1, 4, 0, 2, 0, 1, // multiprotocol IPv6 unicast
        2, 0, // route refresh
        64, 2, 0x40, 120, // graceful restart: N bit, restart time 120, no families
        65, 4, 0, 0, 0xfc, 0, // 4-octet AS 64512
        70, 0, // enhanced route refresh (not implemented: kept as unknown)
    ];
    let Message::Open(open) = round_trip(&message(1, &body), &FOUR) else { panic!("not an OPEN") };
    assert_eq!((open.version, open.hold_time, open.asn()), (4, 240, 64512));
    let caps: Vec<_> = open.capabilities().cloned().collect();
    assert_eq!(caps[0], Capability::Multiprotocol(Family::IPV4_UNICAST));
    assert_eq!(caps[2], Capability::RouteRefresh);
    assert_eq!(
        caps[3],
        Capability::GracefulRestart { restarting: false, notification: true, restart_time: 120, families: vec![] }
    );
    assert_eq!(caps[5], Capability::Unknown { code: 70, value: vec![] });
}

#[test]
fn open_with_a_4_octet_as_uses_as_trans() {
    let body = [
        4, 0x5b, 0xa0, // AS_TRANS 23456
        0, 90, 192, 0, 2, 1, //
        8, 2, 6, 65, 4, 0, 3, 0x0d, 0x40, // 4-octet AS 200000
    ];
    let Message::Open(open) = round_trip(&message(1, &body), &FOUR) else { panic!() };
    assert_eq!(open.asn(), 200_000);
}

#[test]
fn updates_with_attribute_bytes_seen_before_share_one_decoded_list() {
    let mut cache = update::AttributeCache::default();
    let decode_update = |bytes: &[u8], codec: &Codec, cache: &mut update::AttributeCache| {
        let Message::Update(u) = decode_cached(bytes, codec, cache).unwrap() else { panic!() };
        u
    };
    let a = decode_update(&message(2, &update_body(&[], IBGP_ATTRS, &[24, 10, 1, 1])), &FOUR, &mut cache);
    let b = decode_update(&message(2, &update_body(&[], IBGP_ATTRS, &[24, 10, 1, 2])), &FOUR, &mut cache);
    assert!(std::sync::Arc::ptr_eq(&a.attributes, &b.attributes), "decoded once, shared");
    assert_eq!(b.nlri[0].to_string(), "10.1.2.0/24");
    // Other bytes, or the same bytes under another codec, are decoded afresh.
    let mut other = IBGP_ATTRS.to_vec();
    *other.last_mut().unwrap() = 200;
    let c = decode_update(&message(2, &update_body(&[], &other, &[24, 10, 1, 3])), &FOUR, &mut cache);
    assert!(!std::sync::Arc::ptr_eq(&b.attributes, &c.attributes));
    assert_eq!(c.attribute(tc::LOCAL_PREF).unwrap().value, Value::LocalPref(200));
    // Senders interleave attribute sets: an earlier one is still remembered.
    let again = decode_update(&message(2, &update_body(&[], IBGP_ATTRS, &[24, 10, 1, 5])), &FOUR, &mut cache);
    assert!(std::sync::Arc::ptr_eq(&a.attributes, &again.attributes));
    let d = decode_update(&message(2, &update_body(&[], &other, &[24, 10, 1, 4])), &TWO, &mut cache);
    assert!(!std::sync::Arc::ptr_eq(&c.attributes, &d.attributes));
    let fresh = decode(&message(2, &update_body(&[], &other, &[24, 10, 1, 4])), &TWO).unwrap();
    assert_eq!(Message::Update(d), fresh, "a cached decode equals a fresh one");
}

#[test]
fn update_with_every_attribute_round_trips() {
    let mut attrs = IBGP_ATTRS.to_vec();
    attrs.extend_from_slice(&[
        0x80, 4, 4, 0, 0, 0, 5, // MED 5
        0x40, 6, 0, // ATOMIC_AGGREGATE
        0xc0, 7, 8, 0, 0, 0xfc, 1, 10, 99, 0, 2, // AGGREGATOR AS64513 10.99.0.2
        0xc0, 8, 8, 0xfc, 0, 0, 1, 0xff, 0xff, 0xff, 0x01, // COMMUNITIES 64512:1 NO_EXPORT
        0x80, 9, 4, 10, 99, 0, 3, // ORIGINATOR_ID
        0x80, 10, 8, 10, 0, 0, 1, 10, 0, 0, 2, // CLUSTER_LIST
        0xc0, 16, 8, 0, 2, 0xfc, 0, 0, 0, 0, 7, // EXTENDED_COMMUNITIES (raw)
        0xc0, 32, 12, 0, 0, 0xfc, 0, 0, 0, 0, 1, 0, 0, 0, 2, // LARGE_COMMUNITY 64512:1:2
        0xe0, 99, 3, 1, 2, 3, // unknown optional transitive, partial
    ]);
    let bytes = message(2, &update_body(&[16, 10, 9], &attrs, &[26, 10, 244, 0, 64, 32, 10, 244, 1, 1]));
    let Message::Update(update) = round_trip(&bytes, &FOUR) else { panic!() };
    assert!(update.errors.is_empty(), "{:?}", update.errors);
    assert_eq!(update.withdrawn[0].to_string(), "10.9.0.0/16");
    assert_eq!(update.nlri.len(), 2);
    assert_eq!(update.attribute(tc::COMMUNITIES).unwrap().value, Value::Communities(vec![0xfc00_0001, 0xffff_ff01]));
    assert_eq!(update.attribute(99).unwrap().value, Value::Raw(vec![1, 2, 3]));
}

#[test]
fn ipv6_update_and_its_end_of_rib() {
    let mut attrs = vec![
        0x40, 1, 1, 0, // ORIGIN
        0x40, 2, 0, // AS_PATH empty (iBGP origination)
        0x80, 14, 54, // MP_REACH_NLRI, 54 octets
        0, 2, 1,  // IPv6 unicast
        32, // next hop: global + link-local
    ];
    attrs.extend_from_slice(&[0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    attrs.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    attrs.extend_from_slice(&[0, 122, 0xfd, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40]); // reserved, fd00:0:10::40/122
    let Message::Update(update) = round_trip(&message(2, &update_body(&[], &attrs, &[])), &FOUR) else { panic!() };
    let reach = update.mp_reach().unwrap();
    assert_eq!(reach.nlri[0].to_string(), "fd00:0:10::40/122");
    assert_eq!(reach.next_hops().len(), 2);
    assert_eq!(update.end_of_rib(), None);

    let eor = message(2, &update_body(&[], &[0x80, 15, 3, 0, 2, 1], &[]));
    let Message::Update(marker) = round_trip(&eor, &FOUR) else { panic!() };
    assert_eq!(marker.end_of_rib(), Some(Family::IPV6_UNICAST));
    assert_eq!(Update::end_of_rib_marker(Family::IPV6_UNICAST), marker);
    let Message::Update(v4) = round_trip(&message(2, &[0, 0, 0, 0]), &FOUR) else { panic!() };
    assert_eq!(v4.end_of_rib(), Some(Family::IPV4_UNICAST));
}

#[test]
fn two_octet_sessions_carry_2_octet_paths() {
    let attrs = [
        0x40, 1, 1, 2, // ORIGIN incomplete
        0x40, 2, 4, 2, 1, 0x5b, 0xa0, // AS_PATH [23456] (AS_TRANS)
        0x40, 3, 4, 192, 0, 2, 1, //
        0xc0, 17, 6, 2, 1, 0, 3, 0x0d, 0x40, // AS4_PATH [200000]
    ];
    let Message::Update(update) = round_trip(&message(2, &update_body(&[], &attrs, &[8, 10])), &TWO) else { panic!() };
    assert_eq!(update.attribute(tc::AS_PATH).unwrap().value, Value::AsPath(AsPath::sequence(vec![23456])));
    assert_eq!(update.attribute(tc::AS4_PATH).unwrap().value, Value::As4Path(AsPath::sequence(vec![200_000])));
}

#[test]
fn short_messages_round_trip() {
    round_trip(&message(4, &[]), &FOUR);
    let Message::Notification(n) = round_trip(&message(3, &[6, 2, 4, b'b', b'y', b'e', b'!']), &FOUR) else { panic!() };
    assert_eq!(n.shutdown_reason().as_deref(), Some("bye!"));
    assert_eq!(n.describe(), "Cease / Administrative Shutdown");
    let Message::RouteRefresh(r) = round_trip(&message(5, &[0, 2, 0, 1]), &FOUR) else { panic!() };
    assert_eq!(r, RouteRefresh { family: Family::IPV6_UNICAST, subtype: 0 });
}

#[test]
fn cease_reason_is_cut_on_a_character_boundary() {
    let n = Notification::cease(2, &"é".repeat(200));
    assert_eq!(n.data[0], 254);
    assert_eq!(n.shutdown_reason().unwrap().chars().count(), 127);
}

#[test]
fn oversized_messages_are_refused_not_sent() {
    let nlri = (0..1100u32)
        .map(|i| ipnetwork::IpNetwork::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24).unwrap())
        .collect();
    let update = Update { nlri, ..Update::default() };
    let mut out = BytesMut::from(&b"kept"[..]);
    assert!(encode(&Message::Update(update), &FOUR, &mut out).is_err());
    assert_eq!(&out[..], b"kept");
}

/// What decoding a malformed message must do.
#[derive(Debug)]
enum Expect {
    /// Reset the session with this NOTIFICATION code/subcode (and data, when given).
    Reset(u8, u8, Option<&'static [u8]>),
    /// Deliver the UPDATE with its routes treated as withdrawn.
    Withdraw(u8),
    /// Deliver the UPDATE without this attribute.
    Discard(u8),
}

#[test]
fn malformed_corpus() {
    use Expect::*;
    let nlri: &[u8] = &[24, 10, 1, 2];
    let with = |extra: &[u8]| {
        let mut a = IBGP_ATTRS.to_vec();
        a.extend_from_slice(extra);
        message(2, &update_body(&[], &a, nlri))
    };
    let without = |code: u8| {
        let mut a = Vec::new();
        let mut rest = IBGP_ATTRS;
        while !rest.is_empty() {
            let len = 3 + usize::from(rest[2]);
            if rest[1] != code {
                a.extend_from_slice(&rest[..len]);
            }
            rest = &rest[len..];
        }
        message(2, &update_body(&[], &a, nlri))
    };
    let replace = |code: u8, attr: &[u8]| {
        let mut m = without(code);
        let mut a = attr.to_vec();
        let body = &m[HEADER_LEN..];
        let attrs_len = usize::from(u16::from_be_bytes([body[2], body[3]]));
        a.extend_from_slice(&body[4..4 + attrs_len]);
        m = message(2, &update_body(&[], &a, nlri));
        m
    };
    let mut bad_marker = message(4, &[]);
    bad_marker[3] = 0;
    let mut long_header = message(4, &[]);
    long_header[16..18].copy_from_slice(&4097u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("marker not all ones", bad_marker, Reset(1, 1, None)),
        ("length over 4096", long_header, Reset(1, 2, Some(&[0x10, 0x01]))),
        ("unknown message type", message(9, &[]), Reset(1, 3, Some(&[9]))),
        ("KEEPALIVE with a body", message(4, &[0]), Reset(1, 2, Some(&[0, 20]))),
        ("OPEN too short", message(1, &[4, 0, 1]), Reset(1, 2, None)),
        ("NOTIFICATION too short", message(3, &[6]), Reset(1, 2, None)),
        ("ROUTE-REFRESH of 5 octets", message(5, &[0, 1, 0, 1, 0]), Reset(7, 1, None)),
        ("OPEN version 3", message(1, &[3, 0, 1, 0, 90, 1, 1, 1, 1, 0]), Reset(2, 1, Some(&[0, 4]))),
        ("OPEN hold time 2", message(1, &[4, 0, 1, 0, 2, 1, 1, 1, 1, 0]), Reset(2, 6, None)),
        ("OPEN identifier 0", message(1, &[4, 0, 1, 0, 90, 0, 0, 0, 0, 0]), Reset(2, 3, None)),
        ("OPEN parameters overrun", message(1, &[4, 0, 1, 0, 90, 1, 1, 1, 1, 4, 2, 9, 1, 0]), Reset(2, 0, None)),
        (
            "multiprotocol capability of 3 octets",
            message(1, &[4, 0, 1, 0, 90, 1, 1, 1, 1, 5, 2, 3, 1, 1, 0]),
            Reset(2, 0, None),
        ),
        ("withdrawn length overruns", message(2, &[0, 9, 0, 0]), Reset(3, 1, None)),
        ("attribute length overruns the message", message(2, &[0, 0, 0, 9, 0x40, 1]), Reset(3, 1, None)),
        ("NLRI prefix /33", message(2, &update_body(&[], IBGP_ATTRS, &[33, 1, 2, 3, 4, 5])), Reset(3, 10, None)),
        ("withdrawn prefix cut short", message(2, &update_body(&[24, 10], &[], &[])), Reset(3, 10, None)),
        ("unrecognized well-known attribute", with(&[0x40, 99, 1, 0]), Reset(3, 2, Some(&[0x40, 99, 1, 0]))),
        ("MP_REACH twice", with(&[0x80, 14, 5, 0, 2, 1, 0, 0, 0x80, 14, 5, 0, 2, 1, 0, 0]), Reset(3, 1, None)),
        ("MP_REACH too short", with(&[0x80, 14, 2, 0, 2]), Reset(3, 9, None)),
        ("MP_REACH next hop overruns", with(&[0x80, 14, 6, 0, 2, 1, 16, 0, 0]), Reset(3, 9, None)),
        (
            "MP_REACH NLRI /129",
            with(&[0x80, 14, 23, 0, 2, 1, 16, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 129, 0]),
            Reset(3, 10, None),
        ),
        ("ORIGIN value 3", replace(tc::ORIGIN, &[0x40, 1, 1, 3]), Withdraw(tc::ORIGIN)),
        ("ORIGIN of 2 octets", replace(tc::ORIGIN, &[0x40, 1, 2, 0, 0]), Withdraw(tc::ORIGIN)),
        ("ORIGIN flagged optional", replace(tc::ORIGIN, &[0xc0, 1, 1, 0]), Withdraw(tc::ORIGIN)),
        ("AS_PATH segment type 5", replace(tc::AS_PATH, &[0x40, 2, 6, 5, 1, 0, 0, 0, 1]), Withdraw(tc::AS_PATH)),
        ("AS_PATH empty segment", replace(tc::AS_PATH, &[0x40, 2, 2, 2, 0]), Withdraw(tc::AS_PATH)),
        ("AS_PATH segment overruns", replace(tc::AS_PATH, &[0x40, 2, 6, 2, 2, 0, 0, 0, 1]), Withdraw(tc::AS_PATH)),
        ("NEXT_HOP of 3 octets", replace(tc::NEXT_HOP, &[0x40, 3, 3, 10, 0, 0]), Withdraw(tc::NEXT_HOP)),
        ("NEXT_HOP 0.0.0.0", replace(tc::NEXT_HOP, &[0x40, 3, 4, 0, 0, 0, 0]), Withdraw(tc::NEXT_HOP)),
        ("NEXT_HOP multicast", replace(tc::NEXT_HOP, &[0x40, 3, 4, 224, 0, 0, 5]), Withdraw(tc::NEXT_HOP)),
        ("NEXT_HOP missing", without(tc::NEXT_HOP), Withdraw(tc::NEXT_HOP)),
        ("ORIGIN missing", without(tc::ORIGIN), Withdraw(tc::ORIGIN)),
        ("MED of 2 octets", with(&[0x80, 4, 2, 0, 0]), Withdraw(tc::MED)),
        ("LOCAL_PREF of 5 octets", replace(tc::LOCAL_PREF, &[0x40, 5, 5, 0, 0, 0, 0, 1]), Withdraw(tc::LOCAL_PREF)),
        ("COMMUNITIES of 6 octets", with(&[0xc0, 8, 6, 0, 0, 0, 0, 0, 0]), Withdraw(tc::COMMUNITIES)),
        ("CLUSTER_LIST of 5 octets", with(&[0x80, 10, 5, 0, 0, 0, 0, 0]), Withdraw(tc::CLUSTER_LIST)),
        ("ORIGINATOR_ID of 8 octets", with(&[0x80, 9, 8, 0, 0, 0, 0, 0, 0, 0, 0]), Withdraw(tc::ORIGINATOR_ID)),
        ("LARGE_COMMUNITY of 8 octets", with(&[0xc0, 32, 8, 0, 0, 0, 0, 0, 0, 0, 0]), Withdraw(tc::LARGE_COMMUNITIES)),
        (
            "EXTENDED_COMMUNITIES of 7 octets",
            with(&[0xc0, 16, 7, 0, 0, 0, 0, 0, 0, 0]),
            Withdraw(tc::EXTENDED_COMMUNITIES),
        ),
        (
            "MP_REACH IPv6 with a 4-octet next hop",
            with(&[0x80, 14, 9, 0, 2, 1, 4, 10, 0, 0, 1, 0]),
            Withdraw(tc::MP_REACH_NLRI),
        ),
        ("attribute list overrun", message(2, &update_body(&[], &[0x40, 1, 1, 0, 0x40, 2, 9, 2], nlri)), Withdraw(0)),
        ("ATOMIC_AGGREGATE with a value", with(&[0x40, 6, 1, 0]), Discard(tc::ATOMIC_AGGREGATE)),
        ("AGGREGATOR of 7 octets", with(&[0xc0, 7, 7, 0, 0, 0, 1, 1, 1, 1]), Discard(tc::AGGREGATOR)),
        ("AS4_PATH malformed", with(&[0xc0, 17, 3, 2, 1, 0]), Discard(tc::AS4_PATH)),
        ("AS4_AGGREGATOR of 6 octets", with(&[0xc0, 18, 6, 0, 1, 1, 1, 1, 1]), Discard(tc::AS4_AGGREGATOR)),
        ("MED twice", with(&[0x80, 4, 4, 0, 0, 0, 1, 0x80, 4, 4, 0, 0, 0, 2]), Discard(tc::MED)),
    ];
    for (name, bytes, expect) in cases {
        let outcome = decode(&bytes, &FOUR);
        match (&expect, &outcome) {
            (Reset(code, sub, data), Err(e)) => {
                assert_eq!((e.code, e.subcode), (*code, *sub), "{name}: {e}");
                if let Some(data) = data {
                    assert_eq!(&e.data[..], *data, "{name}: NOTIFICATION data");
                }
            }
            (Withdraw(code), Ok(Message::Update(u))) => {
                assert!(u.treat_as_withdraw(), "{name}: {:?}", u.errors);
                assert!(
                    u.errors.iter().any(|e| e.type_code == *code && e.action == Action::TreatAsWithdraw),
                    "{name}: {:?}",
                    u.errors
                );
            }
            (Discard(code), Ok(Message::Update(u))) => {
                assert!(!u.treat_as_withdraw(), "{name}: {:?}", u.errors);
                assert!(
                    u.errors.iter().any(|e| e.type_code == *code && e.action == Action::AttributeDiscard),
                    "{name}"
                );
                let kept = u.attributes.iter().filter(|a| a.type_code == *code).count();
                assert!(kept <= 1, "{name}: the attribute is gone (or only its first copy stays)");
                assert_eq!(u.nlri.len(), 1, "{name}: the routes stay");
            }
            _ => panic!("{name}: expected {expect:?}, got {outcome:?}"),
        }
    }
}

#[test]
fn ebgp_drops_ibgp_only_attributes_quietly() {
    let mut attrs = IBGP_ATTRS.to_vec();
    attrs.extend_from_slice(&[0x80, 9, 4, 1, 2, 3, 4]);
    let bytes = message(2, &update_body(&[], &attrs, &[24, 10, 1, 2]));
    let Ok(Message::Update(u)) = decode(&bytes, &Codec { four_octet_as: true, ebgp: true }) else { panic!() };
    assert!(u.errors.is_empty());
    assert!(u.attribute(tc::LOCAL_PREF).is_none() && u.attribute(tc::ORIGINATOR_ID).is_none());
}

#[test]
fn frame_length_waits_for_a_whole_header() {
    let m = message(4, &[]);
    assert_eq!(frame_length(&m[..18]), Ok(None));
    assert_eq!(frame_length(&m), Ok(Some(19)));
}
