//! NLRI prefixes (RFC 4271 §4.3, RFC 4760 §5) and address families.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::error::{DecodeError, subcode, update_error};

/// An address family: AFI and SAFI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Family {
    /// Address Family Identifier.
    pub afi: u16,
    /// Subsequent Address Family Identifier.
    pub safi: u8,
}

impl Family {
    /// IPv4 unicast.
    pub const IPV4_UNICAST: Family = Family { afi: 1, safi: 1 };
    /// IPv6 unicast.
    pub const IPV6_UNICAST: Family = Family { afi: 2, safi: 1 };

    /// The family of a prefix (unicast).
    pub fn of(prefix: &IpNetwork) -> Family {
        if prefix.is_ipv4() { Family::IPV4_UNICAST } else { Family::IPV6_UNICAST }
    }

    /// The longest prefix of this family's addresses, if brindle knows the family.
    pub(crate) fn max_prefix_len(self) -> Option<u8> {
        match self {
            Family::IPV4_UNICAST => Some(32),
            Family::IPV6_UNICAST => Some(128),
            _ => None,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Family::IPV4_UNICAST => f.write_str("ipv4-unicast"),
            Family::IPV6_UNICAST => f.write_str("ipv6-unicast"),
            Family { afi, safi } => write!(f, "afi {afi}/safi {safi}"),
        }
    }
}

/// Parses a run of prefixes of `family` filling `input` exactly. A length beyond the family's
/// or a prefix cut short is an Invalid Network Field.
///
/// This is the decoder's hottest loop (a full table is a million prefixes), so it splits the
/// input with the standard library's checked `split_first` and `split_at_checked` rather than
/// nom's combinators: as safe (no index can panic), a third of the instructions.
pub fn parse_prefixes(mut input: &[u8], family: Family) -> Result<Vec<IpNetwork>, DecodeError> {
    let max = family.max_prefix_len().unwrap_or(0);
    let ipv6 = family == Family::IPV6_UNICAST;
    // Room for a table's typical /24s (four octets each) without growing; nothing allocated
    // for an empty run (most UPDATEs withdraw nothing).
    let mut prefixes = Vec::with_capacity(input.len().div_ceil(4));
    while let Some((&len, rest)) = input.split_first() {
        let bad = |why: String| update_error(subcode::INVALID_NETWORK_FIELD, Vec::new(), why);
        if len > max {
            return Err(bad(format!("{family} prefix length {len} is longer than {max}")));
        }
        let octets = usize::from(len).div_ceil(8);
        let (bytes, rest) = rest
            .split_at_checked(octets)
            .ok_or_else(|| bad(format!("{family} prefix /{len} needs {octets} octets, {} left", rest.len())))?;
        prefixes.push(if ipv6 { v6_prefix(bytes, len) } else { v4_prefix(bytes, len) });
        input = rest;
    }
    Ok(prefixes)
}

/// The mask of a `len`-bit prefix in the top bits of a u128 (an IPv4 mask is its top 32).
fn mask(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) }
}

/// An IPv4 prefix from its significant octets (at most four), bits past the length cleared.
fn v4_prefix(bytes: &[u8], len: u8) -> IpNetwork {
    let raw = match *bytes {
        [] => 0,
        [a] => u32::from_be_bytes([a, 0, 0, 0]),
        [a, b] => u32::from_be_bytes([a, b, 0, 0]),
        [a, b, c] => u32::from_be_bytes([a, b, c, 0]),
        [a, b, c, d, ..] => u32::from_be_bytes([a, b, c, d]),
    };
    let masked = raw & (mask(len) >> 96) as u32;
    IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(masked), len).expect("length was checked against the family"))
}

/// An IPv6 prefix from its significant octets (at most sixteen), bits past the length cleared.
fn v6_prefix(bytes: &[u8], len: u8) -> IpNetwork {
    let mut full = [0u8; 16];
    full[..bytes.len()].copy_from_slice(bytes);
    let masked = u128::from_be_bytes(full) & mask(len);
    IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(masked), len).expect("length was checked against the family"))
}

/// Appends one prefix in NLRI form: length, then its significant octets.
pub fn put_prefix(prefix: &IpNetwork, out: &mut BytesMut) {
    let len = prefix.prefix();
    out.put_u8(len);
    let octets = usize::from(len).div_ceil(8);
    match prefix.network() {
        IpAddr::V4(a) => out.put_slice(&a.octets()[..octets]),
        IpAddr::V6(a) => out.put_slice(&a.octets()[..octets]),
    }
}

/// The encoded size of one prefix.
pub fn prefix_len_on_wire(prefix: &IpNetwork) -> usize {
    1 + usize::from(prefix.prefix()).div_ceil(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip() {
        let bytes = [
            24, 10, 1, 2, // 10.1.2.0/24
            0, // 0.0.0.0/0
            32, 192, 168, 1, 1, // 192.168.1.1/32
            26, 10, 244, 0, 64, // 10.244.0.64/26
        ];
        let parsed = parse_prefixes(&bytes, Family::IPV4_UNICAST).unwrap();
        let text: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["10.1.2.0/24", "0.0.0.0/0", "192.168.1.1/32", "10.244.0.64/26"]);
        let mut out = BytesMut::new();
        parsed.iter().for_each(|p| put_prefix(p, &mut out));
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn ipv6_prefixes() {
        let bytes = [64, 0xfd, 0, 0, 0, 0, 0, 0, 1, 128, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let parsed = parse_prefixes(&bytes, Family::IPV6_UNICAST).unwrap();
        assert_eq!(parsed[0].to_string(), "fd00:0:0:1::/64");
        assert_eq!(parsed[1].to_string(), "fe80::1/128");
    }

    #[test]
    fn bad_prefixes_are_invalid_network_field() {
        for (bytes, family, needle) in [
            (&[33u8, 1, 2, 3, 4, 5][..], Family::IPV4_UNICAST, "length 33"),
            (&[24, 10, 1][..], Family::IPV4_UNICAST, "needs 3 octets, 2 left"),
            (&[129][..], Family::IPV6_UNICAST, "length 129"),
        ] {
            let err = parse_prefixes(bytes, family).unwrap_err();
            assert_eq!((err.code, err.subcode), (3, 10), "{needle}");
            assert!(err.reason.contains(needle), "{}", err.reason);
        }
    }

    #[test]
    fn host_bits_past_the_length_are_cleared() {
        let parsed = parse_prefixes(&[23, 10, 1, 3], Family::IPV4_UNICAST).unwrap();
        assert_eq!(parsed[0].to_string(), "10.1.2.0/23");
    }
}
