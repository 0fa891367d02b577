//! Reading a session's byte stream, with fewer wake-ups while a burst lasts.
//!
//! A peer sending its table arrives a segment or two at a time, and waking for each costs
//! more than the routes in it: the wake-up, the read, and the acknowledgement the read sends.
//! While reads keep bringing at least [`BURST`] octets, the socket's receive low-water mark
//! (`SO_RCVLOWAT`) is raised so the kernel wakes the session only once [`LOW_WATER`] octets
//! are waiting, and a read that waits longer than [`BURST_WAIT`] takes whatever has come. A
//! read bringing less ends the burst and restores the mark, so a quiet session (keepalives,
//! single UPDATEs) is woken for every message as before; inside a burst a message waits at
//! most [`BURST_WAIT`].
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

/// A read bringing at least this much starts (or continues) a burst.
pub(crate) const BURST: usize = 1024;
/// How much must be waiting before the kernel wakes a session inside a burst.
pub(crate) const LOW_WATER: usize = 16 * 1024;
/// The longest a read inside a burst waits for [`LOW_WATER`] octets.
pub(crate) const BURST_WAIT: Duration = Duration::from_millis(1);

/// The reading half of a session's connection.
#[derive(Debug)]
pub(crate) struct Receiver {
    reader: OwnedReadHalf,
    /// Whether the low-water mark is raised.
    burst: bool,
}

impl Receiver {
    pub fn new(reader: OwnedReadHalf) -> Self {
        Receiver { reader, burst: false }
    }

    /// Reads what has arrived into `buffer`'s spare room (which must not be empty); 0 means
    /// the peer closed the connection. Cancel-safe: nothing read is lost.
    pub async fn read(&mut self, buffer: &mut BytesMut) -> io::Result<usize> {
        loop {
            if !self.burst {
                let read = self.reader.read_buf(buffer).await?;
                if read >= BURST {
                    self.set_burst(true);
                }
                return Ok(read);
            }
            let read = match tokio::time::timeout(BURST_WAIT, self.reader.read_buf(buffer)).await {
                Ok(read) => Some(read?),
                // Fewer than LOW_WATER octets came in time: take those. The kernel does not
                // report the socket readable below the mark, so it is asked directly.
                Err(_) => receive_now(self.reader.as_ref().as_raw_fd(), buffer)?,
            };
            if read.is_none_or(|read| read > 0 && read < BURST) {
                self.set_burst(false);
            }
            if let Some(read) = read {
                return Ok(read);
            }
            // Nothing came: wait again, with the mark lowered.
        }
    }

    /// Raises or restores the mark. If the kernel refuses, the mark and the mode stay as they
    /// were: that only costs wake-ups, and a raised mark keeps its bounded wait.
    fn set_burst(&mut self, burst: bool) {
        match set_low_water(self.reader.as_ref().as_raw_fd(), if burst { LOW_WATER } else { 1 }) {
            Ok(()) => self.burst = burst,
            Err(e) => tracing::debug!(error = %e, burst, "cannot change the receive low-water mark"),
        }
    }
}

/// Sets the socket's receive low-water mark.
fn set_low_water(fd: RawFd, octets: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(octets).unwrap_or(libc::c_int::MAX);
    // SAFETY: the pointer and length describe `value`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Reads what is waiting on the socket into `buffer`'s spare room without waiting: `None`
/// when nothing is.
fn receive_now(fd: RawFd, buffer: &mut BytesMut) -> io::Result<Option<usize>> {
    let spare = buffer.spare_capacity_mut();
    // SAFETY: the kernel writes at most `spare.len()` octets at `spare`, which `buffer` owns.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
    let Ok(n) = usize::try_from(n) else {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    };
    // SAFETY: the kernel initialised the first `n` octets of the spare room.
    unsafe { buffer.advance_mut(n) };
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A receiver and the other end of its connection, over loopback.
    async fn connected() -> (Receiver, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        (Receiver::new(stream.into_split().0), sender)
    }

    /// Reads until `want` octets are in `buffer`, failing after five seconds.
    async fn read_until(receiver: &mut Receiver, buffer: &mut BytesMut, want: usize) {
        let reading = async {
            while buffer.len() < want {
                buffer.reserve(64 * 1024);
                assert_ne!(receiver.read(buffer).await.unwrap(), 0, "closed early");
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reading).await.expect("the octets arrive");
    }

    #[tokio::test]
    async fn a_message_after_a_burst_arrives_and_ends_the_burst() {
        let (mut receiver, mut sender) = connected().await;
        let mut buffer = BytesMut::new();
        sender.write_all(&[1; 4 * BURST]).await.unwrap();
        read_until(&mut receiver, &mut buffer, 4 * BURST).await;
        assert!(receiver.burst, "a read of {} octets starts a burst", buffer.len());
        // A keepalive's worth, far below the low-water mark: without the wait's end it would
        // sit in the socket.
        sender.write_all(&[2; 19]).await.unwrap();
        read_until(&mut receiver, &mut buffer, 4 * BURST + 19).await;
        assert_eq!(&buffer[4 * BURST..], &[2; 19]);
        assert!(!receiver.burst);
        sender.write_all(&[3; 19]).await.unwrap();
        read_until(&mut receiver, &mut buffer, 4 * BURST + 38).await;
    }

    #[tokio::test]
    async fn a_closed_connection_reads_zero_inside_a_burst() {
        let (mut receiver, mut sender) = connected().await;
        let mut buffer = BytesMut::new();
        sender.write_all(&[1; 4 * BURST]).await.unwrap();
        read_until(&mut receiver, &mut buffer, 4 * BURST).await;
        assert!(receiver.burst);
        drop(sender);
        buffer.reserve(1024);
        let read = tokio::time::timeout(Duration::from_secs(5), receiver.read(&mut buffer)).await.unwrap().unwrap();
        assert_eq!(read, 0);
    }
}
