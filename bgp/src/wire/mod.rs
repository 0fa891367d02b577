//! The BGP-4 message codec: nom parsers over exact-length slices, `bytes` encoders.
//!
//! No input makes it panic: every length is checked before it is used, and every failure is
//! either a [`DecodeError`] (the NOTIFICATION to send) or, inside an UPDATE, an
//! [`AttributeError`] handled as RFC 7606 says.

pub mod attribute;
pub mod error;
pub mod open;
pub mod prefix;
pub mod update;

use bytes::{BufMut, BytesMut};

pub use attribute::{
    Aggregator, AsPath, Attribute, Codec, LargeCommunity, MpReach, MpUnreach, Origin, Segment, SegmentKind, Value,
};
pub use error::{Action, AttributeError, DecodeError};
pub use open::{Capability, GracefulRestartFamily, Open, OptionalParameter};
pub use prefix::Family;
pub use update::Update;

use error::{code, header_error, subcode};

/// The length of the message header.
pub const HEADER_LEN: usize = 19;
/// The longest message (RFC 4271; extended messages are not offered).
pub const MAX_MESSAGE_LEN: usize = 4096;

const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;
const ROUTE_REFRESH: u8 = 5;

/// A BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH (RFC 2918, RFC 7313).
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// The message type's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }
}

/// A NOTIFICATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data.
    pub data: Vec<u8>,
}

impl Notification {
    /// A Cease with a shutdown communication (RFC 9003): the reason, cut to 255 octets on a
    /// character boundary.
    pub fn cease(subcode: u8, reason: &str) -> Self {
        let mut end = reason.len().min(255);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut data = vec![end as u8];
        data.extend_from_slice(&reason.as_bytes()[..end]);
        Notification { code: code::CEASE, subcode, data }
    }

    /// The shutdown communication of an Administrative Shutdown or Reset, if it has one.
    pub fn shutdown_reason(&self) -> Option<String> {
        let is_shutdown = self.code == code::CEASE
            && matches!(self.subcode, subcode::ADMINISTRATIVE_SHUTDOWN | subcode::ADMINISTRATIVE_RESET);
        let (&len, text) = self.data.split_first().filter(|_| is_shutdown)?;
        let text = text.get(..usize::from(len))?;
        std::str::from_utf8(text).ok().map(str::to_owned)
    }

    /// The NOTIFICATION for a decode error.
    pub fn from_error(error: &DecodeError) -> Self {
        Notification { code: error.code, subcode: error.subcode, data: error.data.clone() }
    }

    /// The error's name per the RFCs, e.g. "UPDATE Message Error / Malformed AS_PATH".
    pub fn describe(&self) -> String {
        let (name, sub): (&str, &[&str]) = match self.code {
            code::MESSAGE_HEADER => {
                ("Message Header Error", &["", "Connection Not Synchronized", "Bad Message Length", "Bad Message Type"])
            }
            code::OPEN_MESSAGE => (
                "OPEN Message Error",
                &[
                    "",
                    "Unsupported Version Number",
                    "Bad Peer AS",
                    "Bad BGP Identifier",
                    "Unsupported Optional Parameter",
                    "",
                    "Unacceptable Hold Time",
                    "Unsupported Capability",
                    "Role Mismatch",
                ],
            ),
            code::UPDATE_MESSAGE => (
                "UPDATE Message Error",
                &[
                    "",
                    "Malformed Attribute List",
                    "Unrecognized Well-known Attribute",
                    "Missing Well-known Attribute",
                    "Attribute Flags Error",
                    "Attribute Length Error",
                    "Invalid ORIGIN Attribute",
                    "",
                    "Invalid NEXT_HOP Attribute",
                    "Optional Attribute Error",
                    "Invalid Network Field",
                    "Malformed AS_PATH",
                ],
            ),
            code::HOLD_TIMER_EXPIRED => ("Hold Timer Expired", &[]),
            code::FSM => (
                "Finite State Machine Error",
                &[
                    "",
                    "Unexpected Message in OpenSent",
                    "Unexpected Message in OpenConfirm",
                    "Unexpected Message in Established",
                ],
            ),
            code::CEASE => (
                "Cease",
                &[
                    "",
                    "Maximum Number of Prefixes Reached",
                    "Administrative Shutdown",
                    "Peer De-configured",
                    "Administrative Reset",
                    "Connection Rejected",
                    "Other Configuration Change",
                    "Connection Collision Resolution",
                    "Out of Resources",
                    "Hard Reset",
                    "BFD Down",
                ],
            ),
            code::ROUTE_REFRESH => ("ROUTE-REFRESH Message Error", &["", "Invalid Message Length"]),
            _ => ("Unknown Error", &[]),
        };
        match sub.get(usize::from(self.subcode)).filter(|s| !s.is_empty()) {
            Some(s) => format!("{name} / {s}"),
            None if self.subcode == 0 => name.to_owned(),
            None => format!("{name} / subcode {}", self.subcode),
        }
    }
}

/// A ROUTE-REFRESH request (or an enhanced route refresh marker, RFC 7313).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// The family to refresh.
    pub family: Family,
    /// 0: a request; 1: Beginning of Route Refresh; 2: End of Route Refresh.
    pub subtype: u8,
}

/// Reads the header at the start of `buf`: `Ok(None)` when fewer than 19 octets have
/// arrived, otherwise the whole message's length (after checking marker and length).
pub fn frame_length(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(None) };
    if header[..16].iter().any(|&b| b != 0xff) {
        return Err(header_error(subcode::CONNECTION_NOT_SYNCHRONIZED, Vec::new(), "the marker is not all ones"));
    }
    let length = u16::from_be_bytes([header[16], header[17]]);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&usize::from(length)) {
        return Err(header_error(
            subcode::BAD_MESSAGE_LENGTH,
            length.to_be_bytes(),
            format!("message length {length}"),
        ));
    }
    Ok(Some(usize::from(length)))
}

/// Decodes exactly one message (header included) from `frame`.
pub fn decode(frame: &[u8], codec: &Codec) -> Result<Message, DecodeError> {
    decode_cached(frame, codec, &mut update::AttributeCache::default())
}

/// [`decode`] for a session: an UPDATE whose attribute bytes the session decoded recently
/// reuses that decoded list from `cache`.
pub fn decode_cached(frame: &[u8], codec: &Codec, cache: &mut update::AttributeCache) -> Result<Message, DecodeError> {
    let length = frame_length(frame)?.ok_or_else(|| {
        header_error(
            subcode::BAD_MESSAGE_LENGTH,
            Vec::new(),
            format!("{} octets is shorter than a header", frame.len()),
        )
    })?;
    if length != frame.len() {
        return Err(header_error(
            subcode::BAD_MESSAGE_LENGTH,
            (length as u16).to_be_bytes(),
            format!("header says {length} octets, the frame has {}", frame.len()),
        ));
    }
    let kind = frame[18];
    let body = &frame[HEADER_LEN..];
    let bad_length = |min: usize, exact: bool| {
        let wrong = if exact { length != min } else { length < min };
        wrong.then(|| {
            header_error(
                subcode::BAD_MESSAGE_LENGTH,
                (length as u16).to_be_bytes(),
                format!("message type {kind} of {length} octets"),
            )
        })
    };
    match kind {
        OPEN => {
            if let Some(e) = bad_length(29, false) {
                return Err(e);
            }
            open::parse_open(body).map(Message::Open)
        }
        UPDATE => {
            if let Some(e) = bad_length(23, false) {
                return Err(e);
            }
            update::parse_update(body, codec, cache).map(Message::Update)
        }
        NOTIFICATION => {
            if let Some(e) = bad_length(21, false) {
                return Err(e);
            }
            Ok(Message::Notification(Notification { code: body[0], subcode: body[1], data: body[2..].to_vec() }))
        }
        KEEPALIVE => match bad_length(HEADER_LEN, true) {
            Some(e) => Err(e),
            None => Ok(Message::Keepalive),
        },
        ROUTE_REFRESH => {
            if length != 23 {
                return Err(DecodeError::new(
                    code::ROUTE_REFRESH,
                    subcode::INVALID_ROUTE_REFRESH_LENGTH,
                    frame.to_vec(),
                    format!("ROUTE-REFRESH of {length} octets"),
                ));
            }
            let family = Family { afi: u16::from_be_bytes([body[0], body[1]]), safi: body[3] };
            Ok(Message::RouteRefresh(RouteRefresh { family, subtype: body[2] }))
        }
        other => Err(header_error(subcode::BAD_MESSAGE_TYPE, [other], format!("message type {other}"))),
    }
}

/// A message too large to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message of {0} octets exceeds the 4096-octet limit")]
pub struct TooLong(pub usize);

/// Encodes one message, header included, onto `out`.
pub fn encode(message: &Message, codec: &Codec, out: &mut BytesMut) -> Result<(), TooLong> {
    let start = out.len();
    out.put_slice(&[0xff; 16]);
    out.put_u16(0);
    let kind = match message {
        Message::Open(o) => {
            out.put_u8(OPEN);
            open::put_open(o, out);
            OPEN
        }
        Message::Update(u) => {
            out.put_u8(UPDATE);
            update::put_update(u, codec, out);
            UPDATE
        }
        Message::Notification(n) => {
            out.put_u8(NOTIFICATION);
            out.put_u8(n.code);
            out.put_u8(n.subcode);
            out.put_slice(&n.data);
            NOTIFICATION
        }
        Message::Keepalive => {
            out.put_u8(KEEPALIVE);
            KEEPALIVE
        }
        Message::RouteRefresh(r) => {
            out.put_u8(ROUTE_REFRESH);
            out.put_u16(r.family.afi);
            out.put_u8(r.subtype);
            out.put_u8(r.family.safi);
            ROUTE_REFRESH
        }
    };
    let length = out.len() - start;
    if length > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(TooLong(length));
    }
    out[start + 16..start + 18].copy_from_slice(&(length as u16).to_be_bytes());
    debug_assert_eq!(out[start + 18], kind);
    Ok(())
}

#[cfg(test)]
mod tests;
