//! Property tests of the codec: every well-formed UPDATE survives encode then decode, and no
//! input at all makes the decoder panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use brindle_bgp::wire::{
    self, AsPath, Attribute, Codec, Family, LargeCommunity, Message, MpReach, Origin, Segment, SegmentKind, Update,
    Value,
};
use bytes::BytesMut;
use ipnetwork::IpNetwork;
use proptest::prelude::*;

fn v4_prefix() -> impl Strategy<Value = IpNetwork> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, len)| {
        let net = IpNetwork::new(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap();
        IpNetwork::new(net.network(), len).unwrap()
    })
}

fn v6_prefix() -> impl Strategy<Value = IpNetwork> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, len)| {
        let net = IpNetwork::new(IpAddr::V6(Ipv6Addr::from(a)), len).unwrap();
        IpNetwork::new(net.network(), len).unwrap()
    })
}

fn as_path(four_octet: bool) -> impl Strategy<Value = AsPath> {
    let asn = if four_octet { any::<u32>().boxed() } else { (0u32..=65535).boxed() };
    prop::collection::vec(
        (prop_oneof![Just(SegmentKind::Sequence), Just(SegmentKind::Set)], prop::collection::vec(asn, 1..6)),
        0..3,
    )
    .prop_map(|segments| AsPath { segments: segments.into_iter().map(|(kind, asns)| Segment { kind, asns }).collect() })
}

fn unicast_next_hop() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..=223, any::<[u8; 3]>())
        .prop_filter("not loopback", |(a, _)| *a != 127)
        .prop_map(|(a, r)| Ipv4Addr::new(a, r[0], r[1], r[2]))
}

fn update(four_octet: bool) -> impl Strategy<Value = Update> {
    (
        prop::collection::vec(v4_prefix(), 0..20),
        prop::collection::vec(v4_prefix(), 1..20),
        as_path(four_octet),
        unicast_next_hop(),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        prop::collection::vec(any::<u32>(), 0..4),
        prop::collection::vec(any::<(u32, u32, u32)>(), 0..3),
        prop::option::of(prop::collection::vec(v6_prefix(), 1..10)),
    )
        .prop_map(|(withdrawn, nlri, path, hop, med, local_pref, communities, large, v6)| {
            let mut attributes = vec![
                Attribute::new(Value::Origin(Origin::Igp)),
                Attribute::new(Value::AsPath(path)),
                Attribute::new(Value::NextHop(hop)),
            ];
            if let Some(m) = med {
                attributes.push(Attribute::new(Value::Med(m)));
            }
            if let Some(l) = local_pref {
                attributes.push(Attribute::new(Value::LocalPref(l)));
            }
            if !communities.is_empty() {
                attributes.push(Attribute::new(Value::Communities(communities)));
            }
            if !large.is_empty() {
                let large = large
                    .into_iter()
                    .map(|(global, local1, local2)| LargeCommunity { global, local1, local2 })
                    .collect();
                attributes.push(Attribute::new(Value::LargeCommunities(large)));
            }
            if let Some(v6) = v6 {
                let hop: IpAddr = "fd00::1".parse().unwrap();
                attributes.push(Attribute::new(Value::MpReach(MpReach::new(Family::IPV6_UNICAST, &[hop], v6))));
            }
            Update { withdrawn, attributes: attributes.into(), nlri, errors: Vec::new() }
        })
}

fn round_trip(update: Update, four_octet: bool) -> Result<(), TestCaseError> {
    let codec = Codec { four_octet_as: four_octet, ebgp: false };
    let message = Message::Update(update);
    let mut bytes = BytesMut::new();
    if wire::encode(&message, &codec, &mut bytes).is_err() {
        return Ok(()); // too large for one message: not a wire form
    }
    let decoded = wire::decode(&bytes, &codec).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decoded, &message);
    let mut again = BytesMut::new();
    wire::encode(&decoded, &codec, &mut again).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(again, bytes);
    Ok(())
}

proptest! {
    #[test]
    fn updates_round_trip_on_4_octet_sessions(update in update(true)) {
        round_trip(update, true)?;
    }

    #[test]
    fn updates_round_trip_on_2_octet_sessions(update in update(false)) {
        round_trip(update, false)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), four in any::<bool>(), ebgp in any::<bool>()) {
        let _ = wire::decode(&bytes, &Codec { four_octet_as: four, ebgp });
        let _ = wire::frame_length(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(kind in 1u8..=5, body in prop::collection::vec(any::<u8>(), 0..600), four in any::<bool>()) {
        let mut frame = vec![0xff; 16];
        frame.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        frame.push(kind);
        frame.extend_from_slice(&body);
        let _ = wire::decode(&frame, &Codec { four_octet_as: four, ebgp: false });
    }

    #[test]
    fn arbitrary_attribute_lists_never_panic(attrs in prop::collection::vec(any::<u8>(), 0..400), nlri in prop::collection::vec(any::<u8>(), 0..40)) {
        let mut body = vec![0, 0];
        body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(&attrs);
        body.extend_from_slice(&nlri);
        let mut frame = vec![0xff; 16];
        frame.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        frame.push(2);
        frame.extend_from_slice(&body);
        if frame.len() <= 4096 {
            let _ = wire::decode(&frame, &Codec { four_octet_as: true, ebgp: false });
        }
    }
}
