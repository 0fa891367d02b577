//! UPDATE (RFC 4271 §4.3) with RFC 7606 revised error handling.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use bytes::{BufMut, BytesMut};
use ipnetwork::IpNetwork;

use super::attribute::{
    Attribute, Codec, MpReach, MpUnreach, Parsed, Value, flag, parse_attribute, put_attribute, type_code,
};
use super::error::{Action, AttributeError, DecodeError, subcode, update_error};
use super::prefix::{Family, parse_prefixes, put_prefix};

/// An UPDATE message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Withdrawn IPv4 routes.
    pub withdrawn: Vec<IpNetwork>,
    /// Path attributes in the order received (malformed ones that RFC 7606 discards removed).
    /// Shared: UPDATEs of one session with the same attribute bytes share one decoded list.
    pub attributes: Arc<[Attribute]>,
    /// Announced IPv4 routes.
    pub nlri: Vec<IpNetwork>,
    /// Malformed attributes handled without a session reset.
    pub errors: Vec<AttributeError>,
}

impl Update {
    /// Whether RFC 7606 says every route this UPDATE announces is to be taken as withdrawn.
    pub fn treat_as_withdraw(&self) -> bool {
        self.errors.iter().any(|e| e.action == Action::TreatAsWithdraw)
    }

    /// The first attribute of a type.
    pub fn attribute(&self, code: u8) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.type_code == code)
    }

    /// MP_REACH_NLRI, if present.
    pub fn mp_reach(&self) -> Option<&MpReach> {
        self.attributes.iter().find_map(|a| match &a.value {
            Value::MpReach(r) => Some(r),
            _ => None,
        })
    }

    /// MP_UNREACH_NLRI, if present.
    pub fn mp_unreach(&self) -> Option<&MpUnreach> {
        self.attributes.iter().find_map(|a| match &a.value {
            Value::MpUnreach(u) => Some(u),
            _ => None,
        })
    }

    /// The family this UPDATE marks End-of-RIB for (RFC 4724 §2): an empty UPDATE for IPv4
    /// unicast, or one holding only an empty MP_UNREACH_NLRI.
    pub fn end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        match &self.attributes[..] {
            [] => Some(Family::IPV4_UNICAST),
            [only] => match &only.value {
                Value::MpUnreach(u) if u.withdrawn.is_empty() && u.raw_withdrawn.is_empty() => Some(u.family),
                _ => None,
            },
            _ => None,
        }
    }

    /// The End-of-RIB marker for a family.
    pub fn end_of_rib_marker(family: Family) -> Update {
        if family == Family::IPV4_UNICAST {
            return Update::default();
        }
        let unreach = MpUnreach { family, withdrawn: Vec::new(), raw_withdrawn: Vec::new() };
        Update { attributes: vec![Attribute::new(Value::MpUnreach(unreach))].into(), ..Update::default() }
    }
}

fn read_u16(input: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*input.get(at)?, *input.get(at + 1)?]))
}

/// The attribute sections a session decoded recently, so an UPDATE whose attribute bytes were
/// seen before (a sender spreads each attribute set over many UPDATEs) reuses the decoded list
/// instead of decoding it again.
#[derive(Debug, Default)]
pub struct AttributeCache {
    codec: Codec,
    entries: FxHashMap<Vec<u8>, CachedAttributes>,
}

#[derive(Debug)]
struct CachedAttributes {
    attributes: Arc<[Attribute]>,
    errors: Vec<AttributeError>,
}

impl AttributeCache {
    /// How many attribute sections are remembered; past that the cache starts over.
    const CAPACITY: usize = 4096;

    fn parse(&mut self, bytes: &[u8], codec: &Codec) -> Result<(Arc<[Attribute]>, Vec<AttributeError>), DecodeError> {
        if self.codec != *codec {
            self.entries.clear();
            self.codec = *codec;
        }
        if let Some(hit) = self.entries.get(bytes) {
            return Ok((Arc::clone(&hit.attributes), hit.errors.clone()));
        }
        let (attributes, errors) = parse_attributes(bytes, codec)?;
        let attributes: Arc<[Attribute]> = attributes.into();
        if self.entries.len() >= Self::CAPACITY {
            self.entries.clear();
        }
        self.entries
            .insert(bytes.to_vec(), CachedAttributes { attributes: Arc::clone(&attributes), errors: errors.clone() });
        Ok((attributes, errors))
    }
}

/// Parses an UPDATE body.
pub(crate) fn parse_update(body: &[u8], codec: &Codec, cache: &mut AttributeCache) -> Result<Update, DecodeError> {
    let list_error = |why: String| update_error(subcode::MALFORMED_ATTRIBUTE_LIST, Vec::new(), why);
    let withdrawn_len =
        usize::from(read_u16(body, 0).ok_or_else(|| list_error("UPDATE shorter than 4 octets".into()))?);
    let withdrawn_bytes = body
        .get(2..2 + withdrawn_len)
        .ok_or_else(|| list_error(format!("withdrawn routes length {withdrawn_len} overruns the message")))?;
    let attrs_at = 2 + withdrawn_len;
    let attrs_len = usize::from(
        read_u16(body, attrs_at).ok_or_else(|| list_error("no room for the total path attribute length".into()))?,
    );
    let attrs_bytes = body
        .get(attrs_at + 2..attrs_at + 2 + attrs_len)
        .ok_or_else(|| list_error(format!("total path attribute length {attrs_len} overruns the message")))?;
    let nlri_bytes = &body[attrs_at + 2 + attrs_len..];

    let withdrawn = parse_prefixes(withdrawn_bytes, Family::IPV4_UNICAST)?;
    let nlri = parse_prefixes(nlri_bytes, Family::IPV4_UNICAST)?;
    let (attributes, mut errors) = cache.parse(attrs_bytes, codec)?;

    let announces = !nlri.is_empty() || attributes.iter().any(|a| matches!(a.value, Value::MpReach(_)));
    if announces {
        let present = |code| attributes.iter().any(|a| a.type_code == code);
        // NEXT_HOP only with IPv4 NLRI (MP_REACH_NLRI carries its own).
        let required = [type_code::ORIGIN, type_code::AS_PATH, type_code::NEXT_HOP];
        for code in required.into_iter().take(if nlri.is_empty() { 2 } else { 3 }) {
            if !present(code) && !errors.iter().any(|e| e.type_code == code) {
                errors.push(AttributeError {
                    type_code: code,
                    action: Action::TreatAsWithdraw,
                    subcode: subcode::MISSING_WELL_KNOWN,
                    reason: format!("well-known attribute {code} is missing"),
                });
            }
        }
    }
    Ok(Update { withdrawn, attributes, nlri, errors })
}

fn parse_attributes(mut input: &[u8], codec: &Codec) -> Result<(Vec<Attribute>, Vec<AttributeError>), DecodeError> {
    let mut attributes = Vec::new();
    let mut errors = Vec::new();
    let mut seen = [false; 256];
    while !input.is_empty() {
        let overrun = |why: String| AttributeError {
            type_code: 0,
            action: Action::TreatAsWithdraw,
            subcode: subcode::MALFORMED_ATTRIBUTE_LIST,
            reason: why,
        };
        let (Some(&flags), Some(&code)) = (input.first(), input.get(1)) else {
            errors.push(overrun("attribute header cut short".into()));
            break;
        };
        let (header, len) = if flags & flag::EXTENDED_LENGTH != 0 {
            (4, read_u16(input, 2).map(usize::from))
        } else {
            (3, input.get(2).map(|&l| usize::from(l)))
        };
        let Some(value) = len.and_then(|len| input.get(header..header + len)) else {
            // RFC 7606 §4: the rest of the list cannot be parsed, but the NLRI can be found.
            errors.push(overrun(format!("attribute {code} overruns the attribute list")));
            break;
        };
        input = &input[header + value.len()..];
        if std::mem::replace(&mut seen[usize::from(code)], true) {
            if code == type_code::MP_REACH_NLRI || code == type_code::MP_UNREACH_NLRI {
                return Err(update_error(
                    subcode::MALFORMED_ATTRIBUTE_LIST,
                    Vec::new(),
                    format!("attribute {code} appears twice"),
                ));
            }
            errors.push(AttributeError {
                type_code: code,
                action: Action::AttributeDiscard,
                subcode: subcode::MALFORMED_ATTRIBUTE_LIST,
                reason: format!("attribute {code} appears twice; the first is kept"),
            });
            continue;
        }
        match parse_attribute(flags, code, value, codec)? {
            Parsed::Keep(attribute) => attributes.push(attribute),
            Parsed::Handled(error, kept) => {
                errors.push(error);
                attributes.extend(kept);
            }
            Parsed::Ignore => {}
        }
    }
    Ok((attributes, errors))
}

/// Appends an UPDATE body.
pub(crate) fn put_update(update: &Update, codec: &Codec, out: &mut BytesMut) {
    let mut withdrawn = BytesMut::new();
    update.withdrawn.iter().for_each(|p| put_prefix(p, &mut withdrawn));
    out.put_u16(withdrawn.len() as u16);
    out.put_slice(&withdrawn);
    let mut attributes = BytesMut::new();
    update.attributes.iter().for_each(|a| put_attribute(a, codec, &mut attributes));
    out.put_u16(attributes.len() as u16);
    out.put_slice(&attributes);
    update.nlri.iter().for_each(|p| put_prefix(p, out));
}
