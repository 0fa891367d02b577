//! The Generalized TTL Security Mechanism (RFC 5082) on a session's TCP socket: we send with
//! TTL (hop limit) 255, and the kernel drops segments that arrive with less than 256 minus the
//! hops to the peer, so a packet from further away than the peer cannot reach the session.
//!
//! The unsafe code here is one `setsockopt` call for `IP_MINTTL` / `IPV6_MINHOPCOUNT`, which
//! nix does not wrap.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{setsockopt, sockopt};

/// The TTL every segment is sent with under GTSM.
const TTL: i32 = 255;

/// Turns GTSM on for `socket`, whose peer is `hops` hops away (1: directly connected).
pub fn protect(socket: &(impl AsFd + AsRawFd), ipv6: bool, hops: u8) -> io::Result<()> {
    let min = TTL + 1 - i32::from(hops.max(1));
    if ipv6 {
        setsockopt(socket, sockopt::Ipv6Ttl, &TTL)?;
        set_int(socket, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, min)
    } else {
        setsockopt(socket, sockopt::Ipv4Ttl, &TTL)?;
        set_int(socket, libc::IPPROTO_IP, libc::IP_MINTTL, min)
    }
}

fn set_int(socket: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: i32) -> io::Result<()> {
    let value: libc::c_int = value;
    // SAFETY: the pointer and length describe `value`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
