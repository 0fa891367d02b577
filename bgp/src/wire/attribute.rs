//! Path attributes (RFC 4271 §4.3, §5) and their error handling (RFC 7606 §7).
//!
//! Attributes keep the flags and the order they arrived with, so a parsed UPDATE encodes back
//! to the same bytes. Attributes brindle does not know are kept raw; the RIB decides which of
//! them travel on (optional transitive ones, with the Partial bit).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnetwork::IpNetwork;

use super::error::{Action, AttributeError, DecodeError, subcode, update_error};
use super::prefix::{Family, parse_prefixes, put_prefix};

/// Attribute flag bits.
pub mod flag {
    /// Optional (not well-known).
    pub const OPTIONAL: u8 = 0x80;
    /// Transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Partial: an optional transitive attribute some speaker on the path did not know.
    pub const PARTIAL: u8 = 0x20;
    /// Two-octet length.
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Attribute type codes.
pub mod type_code {
    /// ORIGIN.
    pub const ORIGIN: u8 = 1;
    /// AS_PATH.
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP.
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC.
    pub const MED: u8 = 4;
    /// LOCAL_PREF.
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE.
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR.
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH_NLRI: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// EXTENDED_COMMUNITIES (RFC 4360), carried raw.
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
    /// LARGE_COMMUNITY (RFC 8092).
    pub const LARGE_COMMUNITIES: u8 = 32;
}

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Learned from an interior protocol.
    Igp = 0,
    /// Learned via EGP.
    Egp = 1,
    /// Learned some other way.
    Incomplete = 2,
}

/// AS_PATH segment types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// AS_SET: unordered, counts as one hop.
    Set = 1,
    /// AS_SEQUENCE: ordered.
    Sequence = 2,
    /// AS_CONFED_SEQUENCE (RFC 5065): does not count.
    ConfedSequence = 3,
    /// AS_CONFED_SET (RFC 5065): does not count.
    ConfedSet = 4,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Set or sequence.
    pub kind: SegmentKind,
    /// The AS numbers.
    pub asns: Vec<u32>,
}

/// An AS_PATH (or AS4_PATH).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    /// The segments, nearest AS first.
    pub segments: Vec<Segment>,
}

impl AsPath {
    /// A path of one sequence.
    pub fn sequence(asns: impl Into<Vec<u32>>) -> Self {
        let asns = asns.into();
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath { segments: vec![Segment { kind: SegmentKind::Sequence, asns }] }
    }

    /// The path length the decision process uses (RFC 4271 §9.1.2.2): a set counts as one,
    /// confederation segments not at all.
    pub fn hop_count(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
                SegmentKind::ConfedSequence | SegmentKind::ConfedSet => 0,
            })
            .sum()
    }

    /// Whether `asn` appears anywhere in the path.
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// How many times `asn` appears in the path.
    pub fn count(&self, asn: u32) -> usize {
        self.segments.iter().map(|s| s.asns.iter().filter(|a| **a == asn).count()).sum()
    }

    /// The neighbouring AS: the first AS of a leading sequence.
    pub fn first_as(&self) -> Option<u32> {
        self.segments.first().filter(|s| s.kind == SegmentKind::Sequence).and_then(|s| s.asns.first().copied())
    }

    /// Every AS in order, sets flattened.
    pub fn asns(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments.iter().flat_map(|s| s.asns.iter().copied())
    }

    /// The path with `asn` prepended, as a speaker does when sending to an external peer.
    pub fn prepend(&self, asn: u32) -> AsPath {
        let mut segments = self.segments.clone();
        match segments.first_mut() {
            Some(s) if s.kind == SegmentKind::Sequence && s.asns.len() < 255 => s.asns.insert(0, asn),
            _ => segments.insert(0, Segment { kind: SegmentKind::Sequence, asns: vec![asn] }),
        }
        AsPath { segments }
    }
}

/// AGGREGATOR and AS4_AGGREGATOR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    /// The aggregating AS.
    pub asn: u32,
    /// The aggregating speaker.
    pub address: Ipv4Addr,
}

/// A large community (RFC 8092).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    /// Global administrator.
    pub global: u32,
    /// First local data part.
    pub local1: u32,
    /// Second local data part.
    pub local2: u32,
}

/// MP_REACH_NLRI: routes of another family with their next hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    /// The family.
    pub family: Family,
    /// The next hop as carried: 4 or 16 octets, or 32 (global and link-local IPv6).
    pub next_hop: Vec<u8>,
    /// The announced prefixes (of a family brindle knows).
    pub nlri: Vec<IpNetwork>,
    /// The NLRI of a family brindle does not know, kept raw.
    pub raw_nlri: Vec<u8>,
}

impl MpReach {
    /// Announces `nlri` with next hop `next_hops` (one address, or global + link-local).
    pub fn new(family: Family, next_hops: &[IpAddr], nlri: Vec<IpNetwork>) -> Self {
        let mut next_hop = Vec::new();
        for hop in next_hops {
            match hop {
                IpAddr::V4(a) => next_hop.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => next_hop.extend_from_slice(&a.octets()),
            }
        }
        MpReach { family, next_hop, nlri, raw_nlri: Vec::new() }
    }

    /// The next hop addresses.
    pub fn next_hops(&self) -> Vec<IpAddr> {
        match self.next_hop.len() {
            4 => vec![IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&self.next_hop[..]).unwrap_or_default()))],
            16 | 32 => self
                .next_hop
                .chunks_exact(16)
                .map(|c| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(c).unwrap_or_default())))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// MP_UNREACH_NLRI: withdrawn routes of another family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    /// The family.
    pub family: Family,
    /// The withdrawn prefixes.
    pub withdrawn: Vec<IpNetwork>,
    /// The withdrawn NLRI of a family brindle does not know, kept raw.
    pub raw_withdrawn: Vec<u8>,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Value {
    /// ORIGIN.
    Origin(Origin),
    /// AS_PATH.
    AsPath(AsPath),
    /// NEXT_HOP.
    NextHop(Ipv4Addr),
    /// MULTI_EXIT_DISC.
    Med(u32),
    /// LOCAL_PREF.
    LocalPref(u32),
    /// ATOMIC_AGGREGATE.
    AtomicAggregate,
    /// AGGREGATOR.
    Aggregator(Aggregator),
    /// COMMUNITIES.
    Communities(Vec<u32>),
    /// ORIGINATOR_ID.
    OriginatorId(Ipv4Addr),
    /// CLUSTER_LIST.
    ClusterList(Vec<Ipv4Addr>),
    /// MP_REACH_NLRI.
    MpReach(MpReach),
    /// MP_UNREACH_NLRI.
    MpUnreach(MpUnreach),
    /// AS4_PATH.
    As4Path(AsPath),
    /// AS4_AGGREGATOR.
    As4Aggregator(Aggregator),
    /// LARGE_COMMUNITY.
    LargeCommunities(Vec<LargeCommunity>),
    /// Anything else (EXTENDED_COMMUNITIES included), as received.
    Raw(Vec<u8>),
}

/// One path attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    /// The flags as they will be sent.
    pub flags: u8,
    /// The type code.
    pub type_code: u8,
    /// The value.
    pub value: Value,
}

impl Attribute {
    /// An attribute with the flags its type requires.
    pub fn new(value: Value) -> Self {
        let type_code = match &value {
            Value::Origin(_) => type_code::ORIGIN,
            Value::AsPath(_) => type_code::AS_PATH,
            Value::NextHop(_) => type_code::NEXT_HOP,
            Value::Med(_) => type_code::MED,
            Value::LocalPref(_) => type_code::LOCAL_PREF,
            Value::AtomicAggregate => type_code::ATOMIC_AGGREGATE,
            Value::Aggregator(_) => type_code::AGGREGATOR,
            Value::Communities(_) => type_code::COMMUNITIES,
            Value::OriginatorId(_) => type_code::ORIGINATOR_ID,
            Value::ClusterList(_) => type_code::CLUSTER_LIST,
            Value::MpReach(_) => type_code::MP_REACH_NLRI,
            Value::MpUnreach(_) => type_code::MP_UNREACH_NLRI,
            Value::As4Path(_) => type_code::AS4_PATH,
            Value::As4Aggregator(_) => type_code::AS4_AGGREGATOR,
            Value::LargeCommunities(_) => type_code::LARGE_COMMUNITIES,
            Value::Raw(_) => 0,
        };
        Attribute { flags: expected_flags(type_code).unwrap_or(flag::OPTIONAL | flag::TRANSITIVE), type_code, value }
    }
}

/// The Optional and Transitive bits a known attribute must carry.
pub fn expected_flags(type_code: u8) -> Option<u8> {
    use type_code::*;
    match type_code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => Some(flag::TRANSITIVE),
        AGGREGATOR | COMMUNITIES | EXTENDED_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR | LARGE_COMMUNITIES => {
            Some(flag::OPTIONAL | flag::TRANSITIVE)
        }
        MED | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH_NLRI | MP_UNREACH_NLRI => Some(flag::OPTIONAL),
        _ => None,
    }
}

/// What RFC 7606 §7 prescribes for a malformed attribute of this type.
fn action_for(type_code: u8) -> Option<Action> {
    use type_code::*;
    match type_code {
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => Some(Action::AttributeDiscard),
        MP_REACH_NLRI | MP_UNREACH_NLRI => None,
        _ => Some(Action::TreatAsWithdraw),
    }
}

/// The session context an attribute is decoded in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Codec {
    /// Both sides advertised 4-octet AS: AS_PATH and AGGREGATOR carry 4-octet numbers.
    pub four_octet_as: bool,
    /// The peer is external: LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST from it are discarded.
    pub ebgp: bool,
}

/// A malformed attribute, before the decision of what to do about it.
struct Malformed {
    subcode: u8,
    reason: String,
}

fn malformed(subcode: u8, reason: impl Into<String>) -> Malformed {
    Malformed { subcode, reason: reason.into() }
}

fn exact<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], Malformed> {
    value
        .try_into()
        .map_err(|_| malformed(subcode::ATTRIBUTE_LENGTH, format!("{what} must be {N} octets, got {}", value.len())))
}

fn parse_as_path(value: &[u8], four_octet: bool) -> Result<AsPath, Malformed> {
    let width = if four_octet { 4 } else { 2 };
    let mut segments = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let bad = |why: String| malformed(subcode::MALFORMED_AS_PATH, why);
        let [kind, count] = <[u8; 2]>::try_from(rest.get(..2).ok_or_else(|| bad("segment header cut short".into()))?)
            .map_err(|_| bad("segment header cut short".into()))?;
        let kind = match kind {
            1 => SegmentKind::Set,
            2 => SegmentKind::Sequence,
            3 => SegmentKind::ConfedSequence,
            4 => SegmentKind::ConfedSet,
            other => return Err(bad(format!("segment type {other}"))),
        };
        if count == 0 {
            return Err(bad("empty segment".into()));
        }
        let len = usize::from(count) * width;
        let body =
            rest.get(2..2 + len).ok_or_else(|| bad(format!("segment of {count} ASes overruns the attribute")))?;
        let asns = body
            .chunks_exact(width)
            .map(|c| {
                if four_octet {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u32::from(u16::from_be_bytes([c[0], c[1]]))
                }
            })
            .collect();
        segments.push(Segment { kind, asns });
        rest = &rest[2 + len..];
    }
    Ok(AsPath { segments })
}

fn put_as_path(path: &AsPath, four_octet: bool, out: &mut BytesMut) {
    for s in &path.segments {
        for chunk in s.asns.chunks(255) {
            out.put_u8(s.kind as u8);
            out.put_u8(chunk.len() as u8);
            for asn in chunk {
                if four_octet {
                    out.put_u32(*asn);
                } else {
                    out.put_u16(u16::try_from(*asn).unwrap_or(super::open::AS_TRANS));
                }
            }
        }
    }
}

fn parse_aggregator(value: &[u8], four_octet: bool) -> Result<Aggregator, Malformed> {
    let (asn, addr) = if four_octet {
        let b = exact::<8>(value, "AGGREGATOR")?;
        (u32::from_be_bytes([b[0], b[1], b[2], b[3]]), [b[4], b[5], b[6], b[7]])
    } else {
        let b = exact::<6>(value, "AGGREGATOR")?;
        (u32::from(u16::from_be_bytes([b[0], b[1]])), [b[2], b[3], b[4], b[5]])
    };
    Ok(Aggregator { asn, address: Ipv4Addr::from(addr) })
}

fn parse_u32s(value: &[u8], what: &str) -> Result<Vec<u32>, Malformed> {
    if value.is_empty() || !value.len().is_multiple_of(4) {
        return Err(malformed(
            subcode::OPTIONAL_ATTRIBUTE,
            format!("{what} length {} is not a positive multiple of 4", value.len()),
        ));
    }
    Ok(value.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn is_martian_next_hop(addr: Ipv4Addr) -> bool {
    addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() || addr.octets()[0] >= 240
}

fn parse_mp_reach(value: &[u8]) -> Result<(MpReach, Option<Malformed>), DecodeError> {
    let reset = |why: String| update_error(subcode::OPTIONAL_ATTRIBUTE, Vec::new(), format!("MP_REACH_NLRI: {why}"));
    if value.len() < 5 {
        return Err(reset(format!("{} octets is too short", value.len())));
    }
    let family = Family { afi: u16::from_be_bytes([value[0], value[1]]), safi: value[2] };
    let nh_len = usize::from(value[3]);
    let next_hop =
        value.get(4..4 + nh_len).ok_or_else(|| reset(format!("next hop of {nh_len} octets overruns the attribute")))?;
    let nlri_bytes = value.get(5 + nh_len..).ok_or_else(|| reset("no room for the reserved octet".into()))?;
    let mut problem = None;
    let (nlri, raw_nlri) = match family {
        Family::IPV4_UNICAST | Family::IPV6_UNICAST => {
            let lengths: &[usize] = if family == Family::IPV4_UNICAST { &[4, 16, 32] } else { &[16, 32] };
            if !lengths.contains(&nh_len) {
                problem = Some(malformed(subcode::OPTIONAL_ATTRIBUTE, format!("{family} next hop of {nh_len} octets")));
            }
            (parse_prefixes(nlri_bytes, family)?, Vec::new())
        }
        _ => (Vec::new(), nlri_bytes.to_vec()),
    };
    Ok((MpReach { family, next_hop: next_hop.to_vec(), nlri, raw_nlri }, problem))
}

fn parse_mp_unreach(value: &[u8]) -> Result<MpUnreach, DecodeError> {
    if value.len() < 3 {
        return Err(update_error(
            subcode::OPTIONAL_ATTRIBUTE,
            Vec::new(),
            format!("MP_UNREACH_NLRI: {} octets is too short", value.len()),
        ));
    }
    let family = Family { afi: u16::from_be_bytes([value[0], value[1]]), safi: value[2] };
    Ok(match family {
        Family::IPV4_UNICAST | Family::IPV6_UNICAST => {
            MpUnreach { family, withdrawn: parse_prefixes(&value[3..], family)?, raw_withdrawn: Vec::new() }
        }
        _ => MpUnreach { family, withdrawn: Vec::new(), raw_withdrawn: value[3..].to_vec() },
    })
}

/// The raw attribute (flags, type, length, value) for NOTIFICATION data.
fn raw_attribute(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut data = vec![flags, code];
    if flags & flag::EXTENDED_LENGTH != 0 {
        data.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        data.push(value.len() as u8);
    }
    data.extend_from_slice(value);
    data
}

/// The outcome of parsing one attribute.
pub(crate) enum Parsed {
    /// Keep it.
    Keep(Attribute),
    /// Malformed, handled per RFC 7606; the attribute is kept when its routes must still be
    /// known (to withdraw them).
    Handled(AttributeError, Option<Attribute>),
    /// Known to be irrelevant from this peer: dropped without an error (LOCAL_PREF from eBGP).
    Ignore,
}

/// Parses one attribute's value. `Err` resets the session.
pub(crate) fn parse_attribute(flags: u8, code: u8, value: &[u8], codec: &Codec) -> Result<Parsed, DecodeError> {
    use type_code::*;
    let handle = |m: Malformed| -> Result<Parsed, DecodeError> {
        match action_for(code) {
            Some(action) => Ok(Parsed::Handled(
                AttributeError { type_code: code, action, subcode: m.subcode, reason: m.reason },
                None,
            )),
            None => Err(update_error(
                m.subcode,
                raw_attribute(flags, code, value),
                format!("attribute {code}: {}", m.reason),
            )),
        }
    };
    let Some(expected) = expected_flags(code) else {
        if flags & flag::OPTIONAL == 0 {
            return Err(update_error(
                subcode::UNRECOGNIZED_WELL_KNOWN,
                raw_attribute(flags, code, value),
                format!("unrecognized well-known attribute {code}"),
            ));
        }
        return Ok(Parsed::Keep(Attribute { flags, type_code: code, value: Value::Raw(value.to_vec()) }));
    };
    if flags & (flag::OPTIONAL | flag::TRANSITIVE) != expected {
        return handle(malformed(
            subcode::ATTRIBUTE_FLAGS,
            format!("flags {flags:#04x} do not match the attribute's type"),
        ));
    }
    if codec.ebgp && matches!(code, LOCAL_PREF | ORIGINATOR_ID | CLUSTER_LIST) {
        return Ok(Parsed::Ignore);
    }
    let parsed = match code {
        ORIGIN => match exact::<1>(value, "ORIGIN") {
            Ok([0]) => Ok(Value::Origin(Origin::Igp)),
            Ok([1]) => Ok(Value::Origin(Origin::Egp)),
            Ok([2]) => Ok(Value::Origin(Origin::Incomplete)),
            Ok([other]) => Err(malformed(subcode::INVALID_ORIGIN, format!("ORIGIN value {other}"))),
            Err(e) => Err(e),
        },
        AS_PATH => parse_as_path(value, codec.four_octet_as).map(Value::AsPath),
        NEXT_HOP => exact::<4>(value, "NEXT_HOP").and_then(|b| {
            let addr = Ipv4Addr::from(b);
            if is_martian_next_hop(addr) {
                Err(malformed(subcode::INVALID_NEXT_HOP, format!("NEXT_HOP {addr} is not a unicast address")))
            } else {
                Ok(Value::NextHop(addr))
            }
        }),
        MED => exact::<4>(value, "MULTI_EXIT_DISC").map(|b| Value::Med(u32::from_be_bytes(b))),
        LOCAL_PREF => exact::<4>(value, "LOCAL_PREF").map(|b| Value::LocalPref(u32::from_be_bytes(b))),
        ATOMIC_AGGREGATE => exact::<0>(value, "ATOMIC_AGGREGATE").map(|_| Value::AtomicAggregate),
        AGGREGATOR => parse_aggregator(value, codec.four_octet_as).map(Value::Aggregator),
        COMMUNITIES => parse_u32s(value, "COMMUNITIES").map(Value::Communities),
        ORIGINATOR_ID => exact::<4>(value, "ORIGINATOR_ID").map(|b| Value::OriginatorId(Ipv4Addr::from(b))),
        CLUSTER_LIST => parse_u32s(value, "CLUSTER_LIST")
            .map(|ids| Value::ClusterList(ids.into_iter().map(Ipv4Addr::from).collect())),
        MP_REACH_NLRI => {
            let (reach, problem) = parse_mp_reach(value)?;
            let attribute = Attribute { flags, type_code: code, value: Value::MpReach(reach) };
            return Ok(match problem {
                // The routes can still be found, so they are withdrawn rather than the session reset.
                Some(m) => Parsed::Handled(
                    AttributeError {
                        type_code: code,
                        action: Action::TreatAsWithdraw,
                        subcode: m.subcode,
                        reason: m.reason,
                    },
                    Some(attribute),
                ),
                None => Parsed::Keep(attribute),
            });
        }
        MP_UNREACH_NLRI => Ok(Value::MpUnreach(parse_mp_unreach(value)?)),
        EXTENDED_COMMUNITIES => {
            if value.len().is_multiple_of(8) {
                Ok(Value::Raw(value.to_vec()))
            } else {
                Err(malformed(
                    subcode::OPTIONAL_ATTRIBUTE,
                    format!("EXTENDED_COMMUNITIES length {} is not a multiple of 8", value.len()),
                ))
            }
        }
        AS4_PATH => parse_as_path(value, true).map(Value::As4Path),
        AS4_AGGREGATOR => parse_aggregator(value, true).map(Value::As4Aggregator),
        LARGE_COMMUNITIES => {
            if value.is_empty() || !value.len().is_multiple_of(12) {
                Err(malformed(
                    subcode::OPTIONAL_ATTRIBUTE,
                    format!("LARGE_COMMUNITY length {} is not a positive multiple of 12", value.len()),
                ))
            } else {
                Ok(Value::LargeCommunities(
                    value
                        .chunks_exact(12)
                        .map(|c| LargeCommunity {
                            global: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                            local1: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                            local2: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                        })
                        .collect(),
                ))
            }
        }
        _ => Ok(Value::Raw(value.to_vec())),
    };
    match parsed {
        Ok(value) => Ok(Parsed::Keep(Attribute { flags, type_code: code, value })),
        Err(m) => handle(m),
    }
}

/// Appends one attribute. The Extended Length bit is kept when set and added when needed.
pub(crate) fn put_attribute(attribute: &Attribute, codec: &Codec, out: &mut BytesMut) {
    let mut value = BytesMut::new();
    match &attribute.value {
        Value::Origin(o) => value.put_u8(*o as u8),
        Value::AsPath(path) => put_as_path(path, codec.four_octet_as, &mut value),
        Value::NextHop(a) | Value::OriginatorId(a) => value.put_slice(&a.octets()),
        Value::Med(n) | Value::LocalPref(n) => value.put_u32(*n),
        Value::AtomicAggregate => {}
        Value::Aggregator(a) => {
            if codec.four_octet_as {
                value.put_u32(a.asn);
            } else {
                value.put_u16(u16::try_from(a.asn).unwrap_or(super::open::AS_TRANS));
            }
            value.put_slice(&a.address.octets());
        }
        Value::As4Aggregator(a) => {
            value.put_u32(a.asn);
            value.put_slice(&a.address.octets());
        }
        Value::Communities(list) => list.iter().for_each(|c| value.put_u32(*c)),
        Value::ClusterList(list) => list.iter().for_each(|id| value.put_slice(&id.octets())),
        Value::MpReach(r) => {
            value.put_u16(r.family.afi);
            value.put_u8(r.family.safi);
            value.put_u8(r.next_hop.len() as u8);
            value.put_slice(&r.next_hop);
            value.put_u8(0);
            r.nlri.iter().for_each(|p| put_prefix(p, &mut value));
            value.put_slice(&r.raw_nlri);
        }
        Value::MpUnreach(u) => {
            value.put_u16(u.family.afi);
            value.put_u8(u.family.safi);
            u.withdrawn.iter().for_each(|p| put_prefix(p, &mut value));
            value.put_slice(&u.raw_withdrawn);
        }
        Value::As4Path(path) => put_as_path(path, true, &mut value),
        Value::LargeCommunities(list) => list.iter().for_each(|c| {
            value.put_u32(c.global);
            value.put_u32(c.local1);
            value.put_u32(c.local2);
        }),
        Value::Raw(raw) => value.put_slice(raw),
    }
    let extended = attribute.flags & flag::EXTENDED_LENGTH != 0 || value.len() > 255;
    out.put_u8(if extended { attribute.flags | flag::EXTENDED_LENGTH } else { attribute.flags });
    out.put_u8(attribute.type_code);
    if extended {
        out.put_u16(value.len() as u16);
    } else {
        out.put_u8(value.len() as u8);
    }
    out.put_slice(&value);
}
