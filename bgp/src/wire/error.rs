//! Decode errors, each carrying what RFC 4271 §6 and RFC 7606 say to do about it.
//!
//! A [`DecodeError`] ends the session: it is the NOTIFICATION to send. An [`AttributeError`]
//! does not: the UPDATE is still delivered, with the attribute discarded or its routes
//! treated as withdrawn, as RFC 7606 prescribes for that attribute.

use std::fmt;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 7313).
pub mod code {
    /// Message Header Error.
    pub const MESSAGE_HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN_MESSAGE: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE_MESSAGE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
}

/// NOTIFICATION error subcodes, per code.
pub mod subcode {
    /// Message Header Error: Connection Not Synchronized.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    /// Message Header Error: Bad Message Length.
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    /// Message Header Error: Bad Message Type.
    pub const BAD_MESSAGE_TYPE: u8 = 3;

    /// OPEN Message Error: no more specific subcode applies.
    pub const OPEN_UNSPECIFIC: u8 = 0;
    /// OPEN Message Error: Unsupported Version Number.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    /// OPEN Message Error: Bad Peer AS.
    pub const BAD_PEER_AS: u8 = 2;
    /// OPEN Message Error: Bad BGP Identifier.
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    /// OPEN Message Error: Unsupported Optional Parameter.
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    /// OPEN Message Error: Unacceptable Hold Time.
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    /// OPEN Message Error: Unsupported Capability (RFC 5492).
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;

    /// UPDATE Message Error: Malformed Attribute List.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    /// UPDATE Message Error: Unrecognized Well-known Attribute.
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    /// UPDATE Message Error: Missing Well-known Attribute.
    pub const MISSING_WELL_KNOWN: u8 = 3;
    /// UPDATE Message Error: Attribute Flags Error.
    pub const ATTRIBUTE_FLAGS: u8 = 4;
    /// UPDATE Message Error: Attribute Length Error.
    pub const ATTRIBUTE_LENGTH: u8 = 5;
    /// UPDATE Message Error: Invalid ORIGIN Attribute.
    pub const INVALID_ORIGIN: u8 = 6;
    /// UPDATE Message Error: Invalid NEXT_HOP Attribute.
    pub const INVALID_NEXT_HOP: u8 = 8;
    /// UPDATE Message Error: Optional Attribute Error.
    pub const OPTIONAL_ATTRIBUTE: u8 = 9;
    /// UPDATE Message Error: Invalid Network Field.
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    /// UPDATE Message Error: Malformed AS_PATH.
    pub const MALFORMED_AS_PATH: u8 = 11;

    /// ROUTE-REFRESH Message Error: Invalid Message Length (RFC 7313).
    pub const INVALID_ROUTE_REFRESH_LENGTH: u8 = 1;

    /// Cease: Maximum Number of Prefixes Reached (RFC 4486).
    pub const MAX_PREFIXES: u8 = 1;
    /// Cease: Administrative Shutdown (RFC 4486).
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    /// Cease: Peer De-configured.
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Cease: Administrative Reset.
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    /// Cease: Connection Rejected (RFC 4486): the speaker takes no connection from this peer
    /// now (it is held down).
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Cease: Connection Collision Resolution.
    pub const CONNECTION_COLLISION: u8 = 7;
}

/// A message that cannot be accepted: the session must be reset with this NOTIFICATION.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    /// The NOTIFICATION error code.
    pub code: u8,
    /// The NOTIFICATION error subcode.
    pub subcode: u8,
    /// The NOTIFICATION data field the RFC asks for.
    pub data: Vec<u8>,
    /// What was wrong, for people.
    pub reason: String,
}

impl DecodeError {
    /// An error with NOTIFICATION `code`/`subcode`, `data`, and a reason for the log.
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>, reason: impl Into<String>) -> Self {
        DecodeError { code, subcode, data: data.into(), reason: reason.into() }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (NOTIFICATION {}/{})", self.reason, self.code, self.subcode)
    }
}

/// What RFC 7606 says to do with a malformed attribute that does not reset the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Drop the attribute and use the rest of the UPDATE.
    AttributeDiscard,
    /// Treat every route the UPDATE announces as withdrawn.
    TreatAsWithdraw,
}

/// A malformed attribute handled without resetting the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeError {
    /// The attribute type code.
    pub type_code: u8,
    /// What was done about it.
    pub action: Action,
    /// The UPDATE Message Error subcode RFC 4271 would have sent.
    pub subcode: u8,
    /// What was wrong, for people.
    pub reason: String,
}

impl fmt::Display for AttributeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attribute {}: {} ({:?})", self.type_code, self.reason, self.action)
    }
}

/// Shorthand for the Message Header errors.
pub(crate) fn header_error(subcode: u8, data: impl Into<Vec<u8>>, reason: impl Into<String>) -> DecodeError {
    DecodeError::new(code::MESSAGE_HEADER, subcode, data, reason)
}

/// Shorthand for the OPEN Message errors.
pub(crate) fn open_error(subcode: u8, data: impl Into<Vec<u8>>, reason: impl Into<String>) -> DecodeError {
    DecodeError::new(code::OPEN_MESSAGE, subcode, data, reason)
}

/// Shorthand for the UPDATE Message errors that reset the session.
pub(crate) fn update_error(subcode: u8, data: impl Into<Vec<u8>>, reason: impl Into<String>) -> DecodeError {
    DecodeError::new(code::UPDATE_MESSAGE, subcode, data, reason)
}
