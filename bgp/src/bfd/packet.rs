//! The BFD Control packet (RFC 5880 §4.1): 24 octets, and the checks §6.8.6 asks of a
//! received one before it reaches a session.

use std::time::Duration;

use super::{Diagnostic, State};

/// The length of a Control packet without authentication.
pub const LENGTH: usize = 24;

const VERSION: u8 = 1;
const POLL: u8 = 0x20;
const FINAL: u8 = 0x10;
const CONTROL_PLANE_INDEPENDENT: u8 = 0x08;
const AUTHENTICATION: u8 = 0x04;
const DEMAND: u8 = 0x02;
const MULTIPOINT: u8 = 0x01;

/// A BFD Control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// Why the sender's session last left Up.
    pub diagnostic: Diagnostic,
    /// The sender's session state.
    pub state: State,
    /// The sender asks us to confirm a parameter change (Poll).
    pub poll: bool,
    /// The sender confirms our Poll (Final).
    pub final_: bool,
    /// The sender's BFD does not share fate with its control plane.
    pub control_plane_independent: bool,
    /// The sender wants Demand mode.
    pub demand: bool,
    /// Detection time multiplier.
    pub detect_mult: u8,
    /// The sender's discriminator.
    pub my_discriminator: u32,
    /// The discriminator the sender has for us (0: not known yet).
    pub your_discriminator: u32,
    /// The interval the sender wants to send at.
    pub desired_min_tx: Duration,
    /// The shortest interval the sender can receive at.
    pub required_min_rx: Duration,
    /// The shortest Echo interval the sender can receive at (0: none).
    pub required_min_echo_rx: Duration,
}

/// Why a received packet is discarded (RFC 5880 §6.8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    /// Shorter than a Control packet, or than its Length field.
    #[error("truncated: {0} octets")]
    Truncated(usize),
    /// Not version 1.
    #[error("version {0}, not 1")]
    Version(u8),
    /// The Length field is below the minimum.
    #[error("length field {0} below 24")]
    Length(u8),
    /// Detect Mult is zero.
    #[error("detect multiplier 0")]
    DetectMult,
    /// The Multipoint bit is set.
    #[error("multipoint bit set")]
    Multipoint,
    /// My Discriminator is zero.
    #[error("my discriminator 0")]
    MyDiscriminator,
    /// Your Discriminator is zero in a state other than Down or AdminDown.
    #[error("your discriminator 0 in state {0:?}")]
    YourDiscriminator(State),
    /// Authentication is present but none is configured.
    #[error("authenticated, and no authentication is configured")]
    Authentication,
}

impl Control {
    /// Encodes the packet (no authentication section).
    pub fn encode(&self) -> [u8; LENGTH] {
        let mut out = [0u8; LENGTH];
        out[0] = (VERSION << 5) | (self.diagnostic as u8 & 0x1f);
        let mut flags = (self.state as u8) << 6;
        for (set, bit) in [
            (self.poll, POLL),
            (self.final_, FINAL),
            (self.control_plane_independent, CONTROL_PLANE_INDEPENDENT),
            (self.demand, DEMAND),
        ] {
            if set {
                flags |= bit;
            }
        }
        out[1] = flags;
        out[2] = self.detect_mult;
        out[3] = LENGTH as u8;
        out[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        out[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        out[12..16].copy_from_slice(&micros(self.desired_min_tx).to_be_bytes());
        out[16..20].copy_from_slice(&micros(self.required_min_rx).to_be_bytes());
        out[20..24].copy_from_slice(&micros(self.required_min_echo_rx).to_be_bytes());
        out
    }

    /// Decodes a received packet, discarding it as §6.8.6 says.
    pub fn decode(data: &[u8]) -> Result<Control, Discard> {
        if data.len() < LENGTH {
            return Err(Discard::Truncated(data.len()));
        }
        let version = data[0] >> 5;
        if version != VERSION {
            return Err(Discard::Version(version));
        }
        let length = data[3];
        if usize::from(length) < LENGTH {
            return Err(Discard::Length(length));
        }
        if usize::from(length) > data.len() {
            return Err(Discard::Truncated(data.len()));
        }
        let flags = data[1];
        if flags & AUTHENTICATION != 0 {
            return Err(Discard::Authentication);
        }
        if flags & MULTIPOINT != 0 {
            return Err(Discard::Multipoint);
        }
        if data[2] == 0 {
            return Err(Discard::DetectMult);
        }
        let word = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let state = State::from_bits(flags >> 6);
        let packet = Control {
            diagnostic: Diagnostic::from_bits(data[0] & 0x1f),
            state,
            poll: flags & POLL != 0,
            final_: flags & FINAL != 0,
            control_plane_independent: flags & CONTROL_PLANE_INDEPENDENT != 0,
            demand: flags & DEMAND != 0,
            detect_mult: data[2],
            my_discriminator: word(4),
            your_discriminator: word(8),
            desired_min_tx: Duration::from_micros(u64::from(word(12))),
            required_min_rx: Duration::from_micros(u64::from(word(16))),
            required_min_echo_rx: Duration::from_micros(u64::from(word(20))),
        };
        if packet.my_discriminator == 0 {
            return Err(Discard::MyDiscriminator);
        }
        if packet.your_discriminator == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(Discard::YourDiscriminator(state));
        }
        Ok(packet)
    }
}

/// An interval in microseconds, as the packet carries it (saturating at the field's size).
fn micros(interval: Duration) -> u32 {
    u32::try_from(interval.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Control {
        Control {
            diagnostic: Diagnostic::NeighborSignaledDown,
            state: State::Init,
            poll: true,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 0x0102_0304,
            your_discriminator: 7,
            desired_min_tx: Duration::from_millis(100),
            required_min_rx: Duration::from_millis(300),
            required_min_echo_rx: Duration::ZERO,
        }
    }

    #[test]
    fn a_packet_round_trips_in_the_layout_of_the_rfc() {
        let bytes = sample().encode();
        assert_eq!(bytes[0], 0x20 | 3, "version 1, diagnostic 3");
        assert_eq!(bytes[1], 0x80 | 0x20, "state Init, Poll");
        assert_eq!(&bytes[2..4], &[3, 24]);
        assert_eq!(&bytes[4..8], &[1, 2, 3, 4]);
        assert_eq!(&bytes[12..16], &100_000u32.to_be_bytes(), "microseconds");
        assert_eq!(Control::decode(&bytes), Ok(sample()));
    }

    #[test]
    fn packets_the_rfc_discards_are_discarded_with_the_reason() {
        let good = sample().encode();
        let with = |at: usize, value: u8| {
            let mut b = good;
            b[at] = value;
            b
        };
        assert_eq!(Control::decode(&good[..20]), Err(Discard::Truncated(20)));
        assert_eq!(Control::decode(&with(0, 0x40)), Err(Discard::Version(2)));
        assert_eq!(Control::decode(&with(3, 20)), Err(Discard::Length(20)));
        assert_eq!(Control::decode(&with(3, 30)), Err(Discard::Truncated(24)));
        assert_eq!(Control::decode(&with(2, 0)), Err(Discard::DetectMult));
        assert_eq!(Control::decode(&with(1, 0x81)), Err(Discard::Multipoint));
        assert_eq!(Control::decode(&with(1, 0x84)), Err(Discard::Authentication));
        let mut no_mine = good;
        no_mine[4..8].fill(0);
        assert_eq!(Control::decode(&no_mine), Err(Discard::MyDiscriminator));
        let mut no_yours = good;
        no_yours[8..12].fill(0);
        assert_eq!(Control::decode(&no_yours), Err(Discard::YourDiscriminator(State::Init)));
        no_yours[1] = 0x40;
        assert!(Control::decode(&no_yours).is_ok(), "a Down packet may not know us yet");
    }
}
