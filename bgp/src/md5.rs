//! TCP MD5 signatures (RFC 2385) through the kernel's `TCP_MD5SIG` socket option: set on a
//! connecting socket for its peer, and on the listening socket once per peer address.
//!
//! The unsafe code here is one `setsockopt` call with the kernel's `struct tcp_md5sig`, which
//! the libc crate does not define for Linux.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

const TCP_MD5SIG: libc::c_int = 14;
const TCP_MD5SIG_MAXKEYLEN: usize = 80;

/// `struct tcp_md5sig` of `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; TCP_MD5SIG_MAXKEYLEN],
}

/// Signs (or, with `None`, stops signing) the socket's segments to and from `peer`.
pub fn set_md5(socket: &impl AsRawFd, peer: IpAddr, password: Option<&str>) -> io::Result<()> {
    let key = password.unwrap_or("").as_bytes();
    if key.len() > TCP_MD5SIG_MAXKEYLEN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "TCP MD5 password longer than 80 octets"));
    }
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut sig = TcpMd5Sig {
        addr: unsafe { std::mem::zeroed() },
        flags: 0,
        prefix_len: 0,
        key_len: key.len() as u16,
        ifindex: 0,
        key: [0; TCP_MD5SIG_MAXKEYLEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    let storage = &mut sig.addr as *mut libc::sockaddr_storage;
    match SocketAddr::new(peer, 0) {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(storage as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(storage as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
        }
    }
    // SAFETY: the pointer and length describe `sig`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_MD5SIG,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
