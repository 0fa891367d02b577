//! Bidirectional Forwarding Detection for BGP peers: RFC 5880 in asynchronous mode over
//! single-hop UDP (RFC 5881), so a dead link ends a session in a fraction of a second instead
//! of a hold time.
//!
//! ```text
//!  speaker ──set(peers)──▶ engine task ──UDP 49152-65535 → 3784, TTL 255──▶ peer
//!     ▲                       │  ▲
//!     └── (peer, Change) ◀────┘  └── UDP 3784, TTL 255 only ◀── peer
//! ```
//!
//! [`packet`] is the codec and [`session`] the sans-IO state machine; the engine here owns the
//! sockets and the clock. Packets are matched to sessions by Your Discriminator, or by source
//! address while the peer does not know ours yet. Not supported: authentication, Demand mode,
//! the Echo function (we never ask for them; a peer asking for Demand is sent packets anyway).

pub mod packet;
pub mod session;

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self as sock, sockopt};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use session::{Change, Config, Status};

/// The port BFD Control packets go to (RFC 5881 §4).
pub const CONTROL_PORT: u16 = 3784;

/// The source ports of single-hop sessions (RFC 5881 §4).
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// The TTL (hop limit) single-hop packets are sent with, and the only one accepted (RFC 5881
/// §5, the Generalized TTL Security Mechanism).
const TTL: u8 = 255;

/// A session's state (RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Administratively down.
    AdminDown = 0,
    /// Down.
    Down = 1,
    /// The peer is heard; waiting for it to hear us.
    Init = 2,
    /// Up: both hear each other.
    Up = 3,
}

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        })
    }
}

/// Why a session last went down (RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Diagnostic {
    /// No diagnostic.
    None = 0,
    /// Control Detection Time Expired.
    ControlDetectionTimeExpired = 1,
    /// Echo Function Failed.
    EchoFailed = 2,
    /// Neighbor Signaled Session Down.
    NeighborSignaledDown = 3,
    /// Forwarding Plane Reset.
    ForwardingPlaneReset = 4,
    /// Path Down.
    PathDown = 5,
    /// Concatenated Path Down.
    ConcatenatedPathDown = 6,
    /// Administratively Down.
    AdministrativelyDown = 7,
    /// Reverse Concatenated Path Down.
    ReverseConcatenatedPathDown = 8,
    /// A value the RFC reserves.
    Reserved = 31,
}

impl Diagnostic {
    fn from_bits(bits: u8) -> Diagnostic {
        match bits {
            0 => Diagnostic::None,
            1 => Diagnostic::ControlDetectionTimeExpired,
            2 => Diagnostic::EchoFailed,
            3 => Diagnostic::NeighborSignaledDown,
            4 => Diagnostic::ForwardingPlaneReset,
            5 => Diagnostic::PathDown,
            6 => Diagnostic::ConcatenatedPathDown,
            7 => Diagnostic::AdministrativelyDown,
            8 => Diagnostic::ReverseConcatenatedPathDown,
            _ => Diagnostic::Reserved,
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Diagnostic::None => "no diagnostic",
            Diagnostic::ControlDetectionTimeExpired => "control detection time expired",
            Diagnostic::EchoFailed => "echo function failed",
            Diagnostic::NeighborSignaledDown => "neighbor signaled session down",
            Diagnostic::ForwardingPlaneReset => "forwarding plane reset",
            Diagnostic::PathDown => "path down",
            Diagnostic::ConcatenatedPathDown => "concatenated path down",
            Diagnostic::AdministrativelyDown => "administratively down",
            Diagnostic::ReverseConcatenatedPathDown => "reverse concatenated path down",
            Diagnostic::Reserved => "reserved diagnostic",
        })
    }
}

/// A peer to run a session with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its address (directly connected: single hop).
    pub address: IpAddr,
    /// Our address to send from (default: the kernel's choice for the peer).
    pub local: Option<IpAddr>,
    /// The session's timing.
    pub config: Config,
}

enum Command {
    Set(Vec<Peer>),
    Status(oneshot::Sender<HashMap<IpAddr, Status>>),
}

/// A handle to the task that runs every BFD session of a speaker. Dropping it ends the task,
/// which tells every peer AdminDown first.
pub struct Engine {
    commands: mpsc::Sender<Command>,
}

impl Engine {
    /// Opens the Control port (IPv4, and IPv6 where the system has it) and starts the task;
    /// every state change of a session is sent to `changes`.
    pub fn start(changes: mpsc::Sender<(IpAddr, Change)>) -> std::io::Result<Engine> {
        let v4 = listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, CONTROL_PORT)))?;
        let v6 = match listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, CONTROL_PORT))) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::info!(error = %e, "BFD for IPv6 peers is unavailable");
                None
            }
        };
        let (commands, rx) = mpsc::channel(16);
        let task = Task { sessions: HashMap::new(), next_discriminator: fastrand::u32(1..u32::MAX / 2), changes };
        tokio::spawn(task.run(rx, v4, v6));
        Ok(Engine { commands })
    }

    /// Runs sessions with exactly these peers: new ones start in Down, removed ones are told
    /// AdminDown, and one whose settings changed starts again.
    pub async fn set(&self, peers: Vec<Peer>) {
        let _ = self.commands.send(Command::Set(peers)).await;
    }

    /// Every session's status, by peer address.
    pub async fn status(&self) -> HashMap<IpAddr, Status> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Status(tx)).await.is_err() {
            return HashMap::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct Running {
    peer: Peer,
    session: session::Session,
    socket: Option<UdpSocket>,
}

struct Task {
    sessions: HashMap<IpAddr, Running>,
    next_discriminator: u32,
    changes: mpsc::Sender<(IpAddr, Change)>,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, v4: UdpSocket, v6: Option<UdpSocket>) {
        loop {
            let deadline = self.sessions.values().filter_map(|r| r.session.next_deadline()).min();
            tokio::select! {
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Set(peers)) => self.set(peers).await,
                    Some(Command::Status(reply)) => {
                        let status = self.sessions.iter().map(|(a, r)| (*a, r.session.status())).collect();
                        let _ = reply.send(status);
                    }
                },
                received = receive(&v4) => self.received(received).await,
                received = async { receive(v6.as_ref().expect("guarded")).await }, if v6.is_some() => {
                    self.received(received).await;
                }
                () = sleep_until(deadline), if deadline.is_some() => {}
            }
            self.tick().await;
        }
        self.set(Vec::new()).await;
    }

    /// Runs the timers and sends what is due.
    async fn tick(&mut self) {
        let now = Instant::now().into_std();
        let mut changes = Vec::new();
        for (address, running) in &mut self.sessions {
            if let Some(change) = running.session.on_timer(now) {
                changes.push((*address, change));
            }
            if let Some(packet) = running.session.transmit(now) {
                send(running, &packet).await;
            }
        }
        for change in changes {
            self.report(change).await;
        }
    }

    async fn report(&self, (address, change): (IpAddr, Change)) {
        tracing::info!(peer = %address, from = %change.from, to = %change.to, diagnostic = %change.diagnostic, "BFD session");
        let _ = self.changes.send((address, change)).await;
    }

    async fn set(&mut self, peers: Vec<Peer>) {
        let wanted: HashMap<IpAddr, Peer> = peers.into_iter().map(|p| (p.address, p)).collect();
        let gone: Vec<IpAddr> =
            self.sessions.iter().filter(|(a, r)| wanted.get(a) != Some(&r.peer)).map(|(a, _)| *a).collect();
        for address in gone {
            if let Some(mut running) = self.sessions.remove(&address) {
                let packet = running.session.admin_down();
                send(&running, &packet).await;
            }
        }
        let now = Instant::now().into_std();
        for (address, peer) in wanted {
            if self.sessions.contains_key(&address) {
                continue;
            }
            let socket = match sender(&peer) {
                Ok(socket) => Some(socket),
                Err(e) => {
                    tracing::warn!(peer = %address, error = %e, "cannot open a BFD socket; the session stays Down");
                    None
                }
            };
            let discriminator = self.next_discriminator;
            self.next_discriminator = self.next_discriminator.wrapping_add(1).max(1);
            let session = session::Session::new(peer.config, discriminator, fastrand::u64(..), now);
            self.sessions.insert(address, Running { peer, session, socket });
        }
    }

    async fn received(&mut self, received: std::io::Result<(Vec<u8>, IpAddr, Option<u8>)>) {
        let (data, from, ttl) = match received {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "BFD receive failed");
                return;
            }
        };
        if ttl != Some(TTL) {
            tracing::debug!(%from, ?ttl, "BFD packet dropped: not sent with TTL 255 (RFC 5881 §5)");
            return;
        }
        let packet = match packet::Control::decode(&data) {
            Ok(packet) => packet,
            Err(why) => {
                tracing::debug!(%from, %why, "BFD packet discarded");
                return;
            }
        };
        let running = if packet.your_discriminator != 0 {
            self.sessions.values_mut().find(|r| r.session.local_discriminator() == packet.your_discriminator)
        } else {
            self.sessions.get_mut(&from)
        };
        // Single hop: the session's peer and no one else.
        let Some(running) = running.filter(|r| r.peer.address == from) else {
            tracing::debug!(%from, discriminator = packet.your_discriminator, "BFD packet for no session");
            return;
        };
        let change = running.session.receive(&packet, Instant::now().into_std());
        if let Some(change) = change {
            self.report((from, change)).await;
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(Instant::from_std(deadline)).await;
    }
}

async fn send(running: &Running, packet: &packet::Control) {
    let Some(socket) = &running.socket else { return };
    let to = SocketAddr::new(running.peer.address, CONTROL_PORT);
    if let Err(e) = socket.send_to(&packet.encode(), to).await {
        // A link that is down has no route: the session notices by its own timer.
        tracing::trace!(peer = %running.peer.address, error = %e, "BFD send failed");
    }
}

fn family(address: &SocketAddr) -> sock::AddressFamily {
    if address.is_ipv4() { sock::AddressFamily::Inet } else { sock::AddressFamily::Inet6 }
}

fn udp_socket(address: &SocketAddr) -> nix::Result<OwnedFd> {
    sock::socket(
        family(address),
        sock::SockType::Datagram,
        sock::SockFlag::SOCK_NONBLOCK | sock::SockFlag::SOCK_CLOEXEC,
        None,
    )
}

fn into_tokio(fd: OwnedFd) -> std::io::Result<UdpSocket> {
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// The socket on the Control port, with the TTL of each packet delivered alongside it.
fn listen(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let fd = udp_socket(&address)?;
    if address.is_ipv4() {
        sock::setsockopt(&fd, sockopt::Ipv4RecvTtl, &true)?;
    } else {
        sock::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        sock::setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)?;
    }
    sock::bind(fd.as_raw_fd(), &sock::SockaddrStorage::from(address))?;
    into_tokio(fd)
}

/// A session's sending socket: TTL 255, from a source port of RFC 5881's range.
fn sender(peer: &Peer) -> std::io::Result<UdpSocket> {
    let unspecified =
        if peer.address.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    let local = peer.local.unwrap_or(unspecified);
    let fd = udp_socket(&SocketAddr::new(local, 0))?;
    if local.is_ipv4() {
        sock::setsockopt(&fd, sockopt::Ipv4Ttl, &i32::from(TTL))?;
    } else {
        sock::setsockopt(&fd, sockopt::Ipv6Ttl, &i32::from(TTL))?;
    }
    let mut last = std::io::Error::from(std::io::ErrorKind::AddrInUse);
    for _ in 0..64 {
        let port = fastrand::u16(SOURCE_PORTS);
        match sock::bind(fd.as_raw_fd(), &sock::SockaddrStorage::from(SocketAddr::new(local, port))) {
            Ok(()) => return into_tokio(fd),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// The next packet on a Control-port socket: its bytes, its source, and the TTL it came with.
async fn receive(socket: &UdpSocket) -> std::io::Result<(Vec<u8>, IpAddr, Option<u8>)> {
    socket
        .async_io(Interest::READABLE, || {
            let mut buffer = [0u8; 128];
            let mut control = nix::cmsg_space!(libc::c_int);
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let message = sock::recvmsg::<sock::SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                sock::MsgFlags::empty(),
            )?;
            let mut ttl = None;
            for cmsg in message.cmsgs()? {
                match cmsg {
                    sock::ControlMessageOwned::Ipv4Ttl(t) => ttl = u8::try_from(t).ok(),
                    sock::ControlMessageOwned::Ipv6HopLimit(t) => ttl = u8::try_from(t).ok(),
                    _ => {}
                }
            }
            let from = message.address.and_then(|a: sock::SockaddrStorage| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip()).to_canonical()))
            });
            let length = message.bytes;
            let from = from.ok_or_else(|| std::io::Error::other("a packet without a source address"))?;
            Ok((buffer[..length].to_vec(), from, ttl))
        })
        .await
}
