//! Reading a session's byte stream, with fewer wake-ups while a burst lasts.
//!
//! A peer sending its table arrives a segment or two at a time, and waking for each costs
//! more than the routes in it: the wake-up, the read, and the acknowledgement the read sends.
//! While reads keep bringing at least [`BURST`] octets, the socket's receive low-water mark
//! (`SO_RCVLOWAT`) is raised so the kernel wakes the session only once [`LOW_WATER`] octets
//! are waiting. A read inside a burst waits at most [`BURST_WAIT`] (the deadline survives a
//! cancelled read, as inside `select!`), then lowers the mark again; lowering it wakes the
//! reader for whatever is waiting (Linux 4.18 and later). A read bringing less than
//! [`BURST`] ends the burst too, so a quiet session (keepalives, single UPDATEs) is woken for
//! every message as before, and inside a burst a message waits about [`BURST_WAIT`] at most
//! (plus the timer's one-millisecond resolution).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::Instant;

/// A read bringing at least this much starts (or continues) a burst.
const BURST: usize = 1024;
/// How much must be waiting before the kernel wakes a session inside a burst.
const LOW_WATER: usize = 16 * 1024;
/// The longest a read inside a burst waits for [`LOW_WATER`] octets.
const BURST_WAIT: Duration = Duration::from_millis(1);

/// The reading half of a session's connection.
#[derive(Debug)]
pub(crate) struct Receiver {
    reader: OwnedReadHalf,
    /// Whether the low-water mark is raised.
    burst: bool,
    /// When the current wait inside a burst gives up (kept across cancelled reads).
    wait_until: Option<Instant>,
    /// Whether the kernel refused to lower the mark (said once).
    refused: bool,
}

impl Receiver {
    pub fn new(reader: OwnedReadHalf) -> Self {
        Receiver { reader, burst: false, wait_until: None, refused: false }
    }

    /// Reads what has arrived into `buffer`'s spare room; 0 means the peer closed the
    /// connection. Cancel-safe: nothing read is lost, and a burst's wait keeps its deadline.
    pub async fn read(&mut self, buffer: &mut BytesMut) -> io::Result<usize> {
        loop {
            if !self.burst {
                let read = self.reader.read_buf(buffer).await?;
                if read >= BURST {
                    self.set_burst(true);
                }
                return Ok(read);
            }
            let deadline = *self.wait_until.get_or_insert_with(|| Instant::now() + BURST_WAIT);
            let waited = tokio::time::timeout_at(deadline, self.reader.read_buf(buffer)).await;
            self.wait_until = None;
            match waited {
                Ok(read) => {
                    let read = read?;
                    if read > 0 && read < BURST {
                        self.set_burst(false);
                    }
                    return Ok(read);
                }
                // Less than LOW_WATER came in time: lower the mark, which makes what did
                // come readable.
                Err(_) => self.set_burst(false),
            }
        }
    }

    /// Raises or lowers the mark. If the kernel refuses, the mode stays as it was: a raised
    /// mark keeps its bounded waits (a poll every millisecond while idle, said once).
    fn set_burst(&mut self, burst: bool) {
        match set_low_water(self.reader.as_ref(), if burst { LOW_WATER } else { 1 }) {
            Ok(()) => self.burst = burst,
            Err(e) if !burst && !self.refused => {
                self.refused = true;
                tracing::warn!(error = %e, "cannot lower the receive low-water mark: polling the socket every millisecond");
            }
            Err(e) => tracing::debug!(error = %e, burst, "cannot change the receive low-water mark"),
        }
    }
}

/// Sets the socket's receive low-water mark.
fn set_low_water(socket: &impl AsRawFd, octets: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(octets).unwrap_or(libc::c_int::MAX);
    #[allow(unsafe_code)]
    // SAFETY: the pointer and length describe `value`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
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

    /// The socket's receive low-water mark, as the kernel has it.
    fn low_water(receiver: &Receiver) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        #[allow(unsafe_code)]
        // SAFETY: the pointers describe `value` and `len`, which outlive the call.
        let rc = unsafe {
            libc::getsockopt(
                receiver.reader.as_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        value
    }

    /// Reads until `want` octets are in `buffer`, failing after five seconds. With `cancel`,
    /// each read races a task yield, as a session's read races its other work in `select!`,
    /// and is dropped whenever the yield wins.
    async fn read_until(receiver: &mut Receiver, buffer: &mut BytesMut, want: usize, cancel: bool) {
        let reading = async {
            while buffer.len() < want {
                buffer.reserve(64 * 1024);
                tokio::select! {
                    read = receiver.read(buffer) => assert_ne!(read.unwrap(), 0, "closed early"),
                    _ = tokio::task::yield_now(), if cancel => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reading).await.expect("the octets arrive");
    }

    /// A receiver inside a burst, having read `4 * BURST` octets.
    async fn bursting() -> (Receiver, TcpStream, BytesMut) {
        let (mut receiver, mut sender) = connected().await;
        let mut buffer = BytesMut::new();
        sender.write_all(&[1; 4 * BURST]).await.unwrap();
        read_until(&mut receiver, &mut buffer, 4 * BURST, false).await;
        assert!(receiver.burst, "a read of {} octets starts a burst", buffer.len());
        assert_eq!(low_water(&receiver), LOW_WATER as libc::c_int);
        (receiver, sender, buffer)
    }

    #[tokio::test]
    async fn a_message_after_a_burst_arrives_and_ends_the_burst() {
        let (mut receiver, mut sender, mut buffer) = bursting().await;
        // A keepalive's worth, far below the mark: without the bounded wait it would sit in
        // the socket.
        sender.write_all(&[2; 19]).await.unwrap();
        read_until(&mut receiver, &mut buffer, 4 * BURST + 19, false).await;
        assert_eq!(&buffer[4 * BURST..], &[2; 19]);
        assert!(!receiver.burst);
        assert_eq!(low_water(&receiver), 1);
        sender.write_all(&[3; 19]).await.unwrap();
        read_until(&mut receiver, &mut buffer, 4 * BURST + 38, false).await;
    }

    #[tokio::test]
    async fn cancelled_reads_keep_the_bursts_deadline() {
        let (mut receiver, mut sender, mut buffer) = bursting().await;
        sender.write_all(&[2; 19]).await.unwrap();
        read_until(&mut receiver, &mut buffer, 4 * BURST + 19, true).await;
        assert_eq!(low_water(&receiver), 1);
    }

    #[tokio::test]
    async fn a_closed_connection_reads_zero_inside_a_burst() {
        let (mut receiver, sender, mut buffer) = bursting().await;
        drop(sender);
        buffer.reserve(1024);
        let read = tokio::time::timeout(Duration::from_secs(5), receiver.read(&mut buffer)).await.unwrap().unwrap();
        assert_eq!(read, 0);
    }
}
