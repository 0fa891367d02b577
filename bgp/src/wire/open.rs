//! OPEN (RFC 4271 §4.2) and its capabilities (RFC 5492): multiprotocol (RFC 4760), route
//! refresh (RFC 2918), graceful restart (RFC 4724), 4-octet AS (RFC 6793). Capabilities
//! brindle does not know are kept as they came, never an error.

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};
use nom::Parser;
use nom::bytes::complete::take;
use nom::number::complete::{be_u8, be_u16, be_u32};

use super::error::{DecodeError, open_error, subcode};
use super::prefix::Family;

/// The AS number a 2-octet field carries when the real one does not fit (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// Optional parameter type of capabilities (RFC 5492).
const PARAM_CAPABILITIES: u8 = 2;

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Protocol version: 4.
    pub version: u8,
    /// The 2-octet "My Autonomous System" field (AS_TRANS for 4-octet ASes).
    pub my_as: u16,
    /// Proposed hold time in seconds: 0 or at least 3.
    pub hold_time: u16,
    /// BGP Identifier.
    pub bgp_id: Ipv4Addr,
    /// Optional parameters, in the order received.
    pub params: Vec<OptionalParameter>,
}

/// One optional parameter of an OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionalParameter {
    /// A capabilities parameter (type 2), which may carry several capabilities.
    Capabilities(Vec<Capability>),
    /// Any other parameter type (deprecated authentication, ...), kept as received.
    Other {
        /// Parameter type.
        kind: u8,
        /// Parameter value.
        value: Vec<u8>,
    },
}

/// Per-family graceful restart state (RFC 4724 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestartFamily {
    /// The family.
    pub family: Family,
    /// Whether forwarding state was preserved across the restart (the F bit).
    pub forwarding_preserved: bool,
}

/// A capability (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capability {
    /// Multiprotocol extensions for one family (code 1).
    Multiprotocol(Family),
    /// Route refresh (code 2).
    RouteRefresh,
    /// Graceful restart (code 64).
    GracefulRestart {
        /// The sender has restarted (R bit).
        restarting: bool,
        /// The sender supports graceful notification (N bit, RFC 8538).
        notification: bool,
        /// Seconds the sender needs to come back.
        restart_time: u16,
        /// Families whose state the sender keeps.
        families: Vec<GracefulRestartFamily>,
    },
    /// 4-octet AS numbers, with the sender's AS (code 65).
    FourOctetAs(u32),
    /// A capability brindle does not implement, kept as received.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

impl Open {
    /// Every capability, across all capability parameters.
    pub fn capabilities(&self) -> impl Iterator<Item = &Capability> {
        self.params.iter().flat_map(|p| match p {
            OptionalParameter::Capabilities(caps) => caps.as_slice(),
            OptionalParameter::Other { .. } => &[],
        })
    }

    /// The sender's AS: from the 4-octet AS capability when present.
    pub fn asn(&self) -> u32 {
        self.capabilities()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }
}

fn short(what: &str) -> DecodeError {
    open_error(subcode::OPEN_UNSPECIFIC, Vec::new(), format!("OPEN: {what} is cut short"))
}

/// Parses an OPEN body (the message after the 19-octet header).
pub(crate) fn parse_open(body: &[u8]) -> Result<Open, DecodeError> {
    let (rest, (version, my_as, hold_time, bgp_id, params_len)) =
        (be_u8::<_, ()>, be_u16, be_u16, be_u32, be_u8).parse(body).map_err(|_| short("the fixed part"))?;
    if version != 4 {
        return Err(open_error(
            subcode::UNSUPPORTED_VERSION,
            4u16.to_be_bytes(),
            format!("BGP version {version}, only 4 is supported"),
        ));
    }
    if hold_time == 1 || hold_time == 2 {
        return Err(open_error(
            subcode::UNACCEPTABLE_HOLD_TIME,
            Vec::new(),
            format!("hold time {hold_time} s (must be 0 or at least 3)"),
        ));
    }
    if bgp_id == 0 {
        return Err(open_error(subcode::BAD_BGP_IDENTIFIER, Vec::new(), "BGP identifier 0.0.0.0"));
    }
    if rest.len() != usize::from(params_len) {
        return Err(open_error(
            subcode::OPEN_UNSPECIFIC,
            Vec::new(),
            format!("optional parameters length {params_len} but {} octets follow", rest.len()),
        ));
    }
    let mut params = Vec::new();
    let mut input = rest;
    while !input.is_empty() {
        let (rest, (kind, len)) =
            (be_u8::<_, ()>, be_u8).parse(input).map_err(|_| short("an optional parameter header"))?;
        let (rest, value) = take::<_, _, ()>(len).parse(rest).map_err(|_| short("an optional parameter"))?;
        params.push(match kind {
            PARAM_CAPABILITIES => OptionalParameter::Capabilities(parse_capabilities(value)?),
            _ => OptionalParameter::Other { kind, value: value.to_vec() },
        });
        input = rest;
    }
    Ok(Open { version, my_as, hold_time, bgp_id: Ipv4Addr::from(bgp_id), params })
}

fn malformed_capability(code: u8, value: &[u8], why: &str) -> DecodeError {
    let mut data = vec![code, value.len() as u8];
    data.extend_from_slice(value);
    open_error(subcode::OPEN_UNSPECIFIC, data, format!("capability {code}: {why}"))
}

fn parse_capabilities(mut input: &[u8]) -> Result<Vec<Capability>, DecodeError> {
    let mut caps = Vec::new();
    while !input.is_empty() {
        let (rest, (code, len)) = (be_u8::<_, ()>, be_u8).parse(input).map_err(|_| short("a capability header"))?;
        let (rest, value) = take::<_, _, ()>(len).parse(rest).map_err(|_| short("a capability"))?;
        caps.push(parse_capability(code, value)?);
        input = rest;
    }
    Ok(caps)
}

fn parse_capability(code: u8, value: &[u8]) -> Result<Capability, DecodeError> {
    let bad = |why: &str| malformed_capability(code, value, why);
    Ok(match code {
        1 => {
            let (_, (afi, _reserved, safi)) = (be_u16::<_, ()>, be_u8, be_u8)
                .parse(value)
                .ok()
                .filter(|_| value.len() == 4)
                .ok_or_else(|| bad("multiprotocol capability must be 4 octets"))?;
            Capability::Multiprotocol(Family { afi, safi })
        }
        2 if value.is_empty() => Capability::RouteRefresh,
        2 => return Err(bad("route refresh capability must be empty")),
        64 => {
            if value.len() < 2 || !(value.len() - 2).is_multiple_of(4) {
                return Err(bad("graceful restart capability must be 2 + 4n octets"));
            }
            let head = u16::from_be_bytes([value[0], value[1]]);
            let families = value[2..]
                .chunks_exact(4)
                .map(|c| GracefulRestartFamily {
                    family: Family { afi: u16::from_be_bytes([c[0], c[1]]), safi: c[2] },
                    forwarding_preserved: c[3] & 0x80 != 0,
                })
                .collect();
            Capability::GracefulRestart {
                restarting: head & 0x8000 != 0,
                notification: head & 0x4000 != 0,
                restart_time: head & 0x0fff,
                families,
            }
        }
        65 => {
            let asn: [u8; 4] = value.try_into().map_err(|_| bad("4-octet AS capability must be 4 octets"))?;
            Capability::FourOctetAs(u32::from_be_bytes(asn))
        }
        _ => Capability::Unknown { code, value: value.to_vec() },
    })
}

/// Appends one capability (code, length, value).
pub(crate) fn put_capability(cap: &Capability, out: &mut BytesMut) {
    match cap {
        Capability::Multiprotocol(family) => {
            out.put_slice(&[1, 4]);
            out.put_u16(family.afi);
            out.put_u8(0);
            out.put_u8(family.safi);
        }
        Capability::RouteRefresh => out.put_slice(&[2, 0]),
        Capability::GracefulRestart { restarting, notification, restart_time, families } => {
            out.put_u8(64);
            out.put_u8((2 + 4 * families.len()) as u8);
            let head = (u16::from(*restarting) << 15) | (u16::from(*notification) << 14) | (restart_time & 0x0fff);
            out.put_u16(head);
            for f in families {
                out.put_u16(f.family.afi);
                out.put_u8(f.family.safi);
                out.put_u8(if f.forwarding_preserved { 0x80 } else { 0 });
            }
        }
        Capability::FourOctetAs(asn) => {
            out.put_slice(&[65, 4]);
            out.put_u32(*asn);
        }
        Capability::Unknown { code, value } => {
            out.put_u8(*code);
            out.put_u8(value.len() as u8);
            out.put_slice(value);
        }
    }
}

/// Appends an OPEN body.
pub(crate) fn put_open(open: &Open, out: &mut BytesMut) {
    out.put_u8(open.version);
    out.put_u16(open.my_as);
    out.put_u16(open.hold_time);
    out.put_slice(&open.bgp_id.octets());
    let mut params = BytesMut::new();
    for p in &open.params {
        match p {
            OptionalParameter::Capabilities(caps) => {
                let mut value = BytesMut::new();
                caps.iter().for_each(|c| put_capability(c, &mut value));
                params.put_u8(PARAM_CAPABILITIES);
                params.put_u8(value.len() as u8);
                params.put_slice(&value);
            }
            OptionalParameter::Other { kind, value } => {
                params.put_u8(*kind);
                params.put_u8(value.len() as u8);
                params.put_slice(value);
            }
        }
    }
    out.put_u8(params.len() as u8);
    out.put_slice(&params);
}
