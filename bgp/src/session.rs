//! One tokio task per peer: the TCP connection, framing, and timers around a sans-IO [`Fsm`].
//!
//! ```text
//!            ToSession (send, incoming connection, stop)
//!   speaker ───────────────────────────────────────────▶ session task ◀──▶ TCP peer
//!      ▲                                                    │
//!      └─────────── FromSession (state, established, update, down) ┘
//! ```
//!
//! Collisions (RFC 4271 §6.8): only with a connection still open (one the peer closed is
//! noticed first); before the peer's OPEN is known the side with the higher address keeps the
//! connection it opened; once it is known, the side with the higher BGP identifier does; an
//! Established session keeps its connection, unless the peer does graceful restart, when a new
//! connection means it restarted (RFC 4724 §4.2).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::fsm::{self, Action, Event, Fsm, Negotiated, State, Survivor};
use crate::receive::Receiver;
use crate::wire::error::subcode;
use crate::wire::{self, Codec, DecodeError, Family, Message, Notification, Update};

/// What the speaker tells a session.
#[derive(Debug)]
pub(crate) enum ToSession {
    /// Send these messages, encoded for the session (only while Established); an update
    /// group's peers share one buffer.
    Send(Bytes),
    /// The peer connected to our listener.
    Incoming(TcpStream),
    /// Shut down with this reason and end the task.
    Stop(String),
    /// End the session with a Cease of this subcode and data, and take the peer back after
    /// `restart_after` (a prefix limit passed).
    Cease { subcode: u8, data: Vec<u8>, reason: String, restart_after: Duration },
    /// The forwarding path to the peer failed (BFD): end the session at once.
    PathDown { reason: String, graceful: bool },
}

/// What a session tells the speaker.
#[derive(Debug)]
pub(crate) enum FromSession {
    /// The state changed.
    State(State, Option<String>),
    /// Established, with what was agreed and our address on the connection.
    Established(Negotiated, IpAddr),
    /// UPDATEs arrived (all that were buffered, in order).
    Updates(Vec<Update>),
    /// The peer asks for our routes of a family again.
    RouteRefresh(Family),
    /// The session left Established.
    Down { reason: String, keep_routes: bool },
}

/// How much a read asks the kernel for, at least.
const READ_CHUNK: usize = 64 * 1024;

/// How long a closed connection keeps reading what the peer still sends, waiting for it to
/// close its side too.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// The most UPDATEs handed to the speaker at once.
const MAX_BATCH: usize = 256;

/// How to run one session.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// The address to connect from, if fixed.
    pub local: Option<IpAddr>,
    /// The TCP MD5 password.
    pub password: Option<String>,
    /// GTSM: the peer's distance in hops.
    pub ttl_security: Option<u8>,
    /// The state machine's settings.
    pub fsm: fsm::Config,
}

struct Connection {
    receiver: Receiver,
    writer: OwnedWriteHalf,
    buffer: BytesMut,
    /// The last UPDATE's decoded attributes, reused when the next carries the same bytes.
    attributes: wire::update::AttributeCache,
    local: SocketAddr,
    outgoing: bool,
}

enum ReadError {
    Closed(String),
    Decode(DecodeError),
}

impl Connection {
    fn new(stream: TcpStream, outgoing: bool) -> io::Result<Self> {
        let local = stream.local_addr()?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        Ok(Connection {
            receiver: Receiver::new(reader),
            writer,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            attributes: wire::update::AttributeCache::default(),
            local,
            outgoing,
        })
    }

    /// The next message if it is already in the buffer, whole.
    fn buffered(&mut self, codec: &Codec) -> Option<Result<Message, DecodeError>> {
        match wire::frame_length(&self.buffer) {
            Err(e) => Some(Err(e)),
            Ok(Some(len)) if self.buffer.len() >= len => {
                // Decoded in place, then skipped: splitting the frame off would make the
                // buffer shared and cost two atomic operations per message.
                let message = wire::decode_cached(&self.buffer[..len], codec, &mut self.attributes);
                self.buffer.advance(len);
                Some(message)
            }
            Ok(_) => None,
        }
    }

    /// Reads one message. Cancel-safe: partial data stays in the buffer.
    async fn read(&mut self, codec: &Codec) -> Result<Message, ReadError> {
        loop {
            if let Some(message) = self.buffered(codec) {
                return message.map_err(ReadError::Decode);
            }
            // Keep room for a large read: a full BytesMut would read 64 octets at a time.
            if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 4 {
                self.buffer.reserve(READ_CHUNK);
            }
            match self.receiver.read(&mut self.buffer).await {
                Ok(0) => return Err(ReadError::Closed("the peer closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Closed(describe(&e, false))),
            }
        }
    }

    /// Closes the connection without losing what was sent last, a NOTIFICATION above all:
    /// our side is shut for writing, then what the peer still sends is read and dropped until
    /// it closes its side too, or [`CLOSE_DRAIN`] passes. A socket closed with unread data
    /// sends a reset instead of a FIN, and a peer that sees the reset first (BIRD) reports the
    /// connection lost and never reads the NOTIFICATION queued before it.
    async fn close(mut self) {
        let _ = self.writer.shutdown().await;
        let drain = async {
            loop {
                self.buffer.clear();
                if self.buffer.capacity() < READ_CHUNK / 4 {
                    self.buffer.reserve(READ_CHUNK);
                }
                if matches!(self.receiver.read(&mut self.buffer).await, Ok(0) | Err(_)) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
    }

    async fn send(&mut self, messages: &[Message], codec: &Codec) -> io::Result<()> {
        let mut out = BytesMut::new();
        for m in messages {
            wire::encode(m, codec, &mut out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        self.writer.write_all(&out).await
    }
}

fn describe(e: &io::Error, md5: bool) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut if md5 => "connection timed out (a TCP MD5 password mismatch looks like this)".into(),
        io::ErrorKind::TimedOut => "connection timed out".into(),
        io::ErrorKind::ConnectionReset => "connection reset by the peer".into(),
        _ => e.to_string(),
    }
}

async fn connect(params: &SessionParams, timeout: Duration) -> io::Result<TcpStream> {
    let socket = if params.remote.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(password) = &params.password {
        crate::md5::set_md5(&socket, params.remote.ip(), Some(password))?;
    }
    if let Some(hops) = params.ttl_security {
        crate::gtsm::protect(&socket, params.remote.is_ipv6(), hops)?;
    }
    if let Some(local) = params.local {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    match tokio::time::timeout(timeout, socket.connect(params.remote)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Starts a session task. It runs until told to stop or the speaker goes away.
pub(crate) fn spawn(
    params: SessionParams,
    to_speaker: mpsc::Sender<(IpAddr, FromSession)>,
) -> (mpsc::Sender<ToSession>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    (tx, tokio::spawn(run(params, rx, to_speaker)))
}

struct Session {
    params: SessionParams,
    fsm: Fsm,
    conn: Option<Connection>,
    codec: Codec,
    to_speaker: mpsc::Sender<(IpAddr, FromSession)>,
    reported: (State, Option<String>),
    /// UPDATEs received and not yet handed to the speaker: one hand-over per batch.
    updates: Vec<Update>,
}

async fn run(
    params: SessionParams,
    mut rx: mpsc::Receiver<ToSession>,
    to_speaker: mpsc::Sender<(IpAddr, FromSession)>,
) {
    let fsm = Fsm::new(params.fsm.clone());
    let ebgp = !params.fsm.is_ibgp();
    let mut s = Session {
        params,
        fsm,
        conn: None,
        codec: Codec { four_octet_as: false, ebgp },
        to_speaker,
        reported: (State::Idle, None),
        updates: Vec::new(),
    };
    let mut connecting: Option<std::pin::Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>> = None;
    let actions = s.fsm.handle(Event::Start, Instant::now().into_std());
    s.apply(actions, &mut connecting).await;
    // One timer, moved only when the deadline moves: re-arming it per message is costly.
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = s.fsm.next_deadline().map(Instant::from_std);
        if let Some(d) = deadline
            && armed != Some(d)
        {
            timer.as_mut().reset(d);
            armed = Some(d);
        }
        let event = tokio::select! {
            command = rx.recv() => match command {
                None => Some(Event::Stop { reason: "speaker shut down".into() }),
                Some(ToSession::Stop(reason)) => {
                    let actions = s.fsm.handle(Event::Stop { reason }, Instant::now().into_std());
                    s.apply(actions, &mut connecting).await;
                    return;
                }
                Some(ToSession::Send(encoded)) => {
                    if s.fsm.state() == State::Established
                        && let Some(conn) = s.conn.as_mut()
                        && let Err(e) = conn.writer.write_all(&encoded).await
                    {
                        Some(Event::TcpFailed { reason: describe(&e, false) })
                    } else {
                        None
                    }
                }
                Some(ToSession::Incoming(stream)) => s.incoming(stream, &mut connecting).await,
                Some(ToSession::Cease { subcode, data, reason, restart_after }) => {
                    Some(Event::Cease { subcode, data, reason, restart_after })
                }
                Some(ToSession::PathDown { reason, graceful }) => Some(Event::PathDown { reason, graceful }),
            },
            _ = &mut timer, if deadline.is_some_and(|d| armed == Some(d)) => {
                armed = None;
                let actions = s.fsm.on_timer(Instant::now().into_std());
                s.apply(actions, &mut connecting).await;
                None
            }
            result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match result.and_then(|stream| Connection::new(stream, true)) {
                    Ok(conn) => {
                        s.conn = Some(conn);
                        Some(Event::TcpConnected)
                    }
                    Err(e) => Some(Event::TcpFailed { reason: describe(&e, s.params.password.is_some()) }),
                }
            }
            message = async { s.conn.as_mut().expect("guarded").read(&s.codec).await }, if s.conn.is_some() => {
                Some(s.read_event(message))
            }
        };
        if let Some(event) = event {
            let now = Instant::now().into_std();
            let actions = s.fsm.handle(event, now);
            s.apply(actions, &mut connecting).await;
            // Messages already buffered are handled now, so their UPDATEs reach the speaker
            // in one hand-over.
            while s.updates.len() < MAX_BATCH
                && let Some(conn) = s.conn.as_mut()
                && let Some(next) = conn.buffered(&s.codec)
            {
                let event = s.received(next);
                let actions = s.fsm.handle(event, now);
                s.apply(actions, &mut connecting).await;
            }
            s.flush_updates().await;
        }
        s.report_state().await;
        if rx.is_closed() && s.fsm.state() == State::Idle {
            return;
        }
    }
}

impl Session {
    /// The event for a message read from the connection (or the reason it could not be decoded).
    fn received(&self, message: Result<Message, DecodeError>) -> Event {
        match message {
            Ok(m) => {
                tracing::debug!(peer = %self.params.remote, kind = m.kind(), "received");
                Event::Message(m)
            }
            Err(e) => Event::DecodeFailed(e),
        }
    }

    /// The event for what a read of the connection brought; a closed connection is dropped.
    fn read_event(&mut self, read: Result<Message, ReadError>) -> Event {
        match read {
            Ok(m) => self.received(Ok(m)),
            Err(ReadError::Decode(e)) => self.received(Err(e)),
            Err(ReadError::Closed(reason)) => {
                self.conn = None;
                Event::TcpFailed { reason }
            }
        }
    }

    /// Hands a message to the speaker, after the UPDATEs received before it.
    async fn tell(&mut self, message: FromSession) {
        self.flush_updates().await;
        let _ = self.to_speaker.send((self.params.remote.ip(), message)).await;
    }

    async fn flush_updates(&mut self) {
        if !self.updates.is_empty() {
            let updates = std::mem::take(&mut self.updates);
            let _ = self.to_speaker.send((self.params.remote.ip(), FromSession::Updates(updates))).await;
        }
    }

    async fn report_state(&mut self) {
        let now = (self.fsm.state(), self.fsm.last_error().map(str::to_owned));
        if now != self.reported {
            match (&now.0, &now.1) {
                (State::Established, _) => tracing::info!(peer = %self.params.remote, "session established"),
                (state, Some(reason)) => tracing::info!(peer = %self.params.remote, ?state, %reason, "session state"),
                (state, None) => tracing::debug!(peer = %self.params.remote, ?state, "session state"),
            }
            self.reported = now.clone();
            self.tell(FromSession::State(now.0, now.1)).await;
        }
    }

    async fn apply(
        &mut self,
        actions: Vec<Action>,
        connecting: &mut Option<std::pin::Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>>,
    ) {
        let mut pending = actions;
        while !pending.is_empty() {
            let mut follow_up = Vec::new();
            for action in pending {
                match action {
                    Action::Connect => {
                        let params = self.params.clone();
                        // Give up a little before the retry timer would restart the attempt,
                        // so a connection that never answers is reported as such.
                        let timeout = params.fsm.connect_retry * 4 / 5;
                        *connecting = Some(Box::pin(async move { connect(&params, timeout).await }));
                    }
                    Action::Disconnect => {
                        *connecting = None;
                        if let Some(conn) = self.conn.take() {
                            tokio::spawn(conn.close());
                        }
                    }
                    Action::Send(message) => {
                        if let Message::Notification(n) = &message {
                            tracing::info!(peer = %self.params.remote, notification = ?n, "NOTIFICATION sent");
                        } else {
                            tracing::debug!(peer = %self.params.remote, kind = message.kind(), "sent");
                        }
                        if let Some(conn) = self.conn.as_mut()
                            && let Err(e) = conn.send(std::slice::from_ref(&message), &self.codec).await
                        {
                            self.conn = None;
                            follow_up.extend(
                                self.fsm.handle(
                                    Event::TcpFailed { reason: describe(&e, false) },
                                    Instant::now().into_std(),
                                ),
                            );
                        }
                    }
                    Action::Established(negotiated) => {
                        self.codec.four_octet_as = negotiated.four_octet_as;
                        let local = self.conn.as_ref().map_or(self.params.remote.ip(), |c| c.local.ip());
                        self.report_state().await;
                        self.tell(FromSession::Established(negotiated, local)).await;
                    }
                    Action::Update(update) => self.updates.push(update),
                    Action::RouteRefresh(refresh) => self.tell(FromSession::RouteRefresh(refresh.family)).await,
                    Action::Down { reason, keep_routes } => self.tell(FromSession::Down { reason, keep_routes }).await,
                }
            }
            pending = follow_up;
        }
    }

    /// Handles what the current connection already holds without waiting: messages read but
    /// not yet handled, and the peer's close.
    async fn settle(
        &mut self,
        connecting: &mut Option<std::pin::Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>>,
    ) {
        while let Some(conn) = self.conn.as_mut() {
            // A zero timeout polls the read once: ready now, or not at all.
            let Ok(read) = tokio::time::timeout(Duration::ZERO, conn.read(&self.codec)).await else { break };
            let event = self.read_event(read);
            let actions = self.fsm.handle(event, Instant::now().into_std());
            self.apply(actions, connecting).await;
        }
        self.flush_updates().await;
    }

    /// The peer connected to us: adopt the connection, or resolve a collision.
    async fn incoming(
        &mut self,
        stream: TcpStream,
        connecting: &mut Option<std::pin::Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>>,
    ) -> Option<Event> {
        // GTSM on an accepted connection: from its first segment after the handshake on.
        if let Some(hops) = self.params.ttl_security
            && let Err(e) = crate::gtsm::protect(&stream, self.params.remote.is_ipv6(), hops)
        {
            tracing::warn!(peer = %self.params.remote, error = %e, "cannot set GTSM on the peer's connection: refused");
            return None;
        }
        let Ok(new) = Connection::new(stream, false) else { return None };
        let peer = self.params.remote;
        let reject = |mut conn: Connection, codec: Codec, state: State| async move {
            let which = if conn.outgoing { "ours" } else { "the peer's" };
            // Idle means the peer is held down (an error wait, a prefix limit's pause): that is
            // a refusal, not a collision.
            let subcode = if state == State::Idle {
                tracing::info!(%peer, "the peer is held down: refusing its connection with Cease 6/5");
                subcode::CONNECTION_REJECTED
            } else {
                tracing::info!(%peer, ?state, "connection collision: closing {which} with Cease 6/7");
                subcode::CONNECTION_COLLISION
            };
            let cease = Message::Notification(Notification::cease(subcode, ""));
            let _ = conn.send(&[cease], &codec).await;
        };
        // Only a connection that is still open collides: one the peer has closed (its FIN, or
        // what it sent before, not read yet) is handled first.
        self.settle(connecting).await;
        let graceful = self.fsm.negotiated().is_some_and(|n| n.peer_restart.is_some());
        if self.fsm.state() == State::Established && graceful {
            // RFC 4724 §4.2: a graceful-restart peer connecting again while its session is up
            // has restarted without closing it (a power cycle). The old session ends with its
            // routes kept as stale, and the new connection carries the new one, as BIRD does.
            let reason = "the peer connected again while established: it restarted".to_owned();
            let actions = self.fsm.handle(Event::TcpFailed { reason }, Instant::now().into_std());
            self.apply(actions, connecting).await;
        }
        match self.fsm.state() {
            State::Connect | State::Active => {
                *connecting = None;
                self.conn = Some(new);
                Some(Event::TcpConnected)
            }
            State::OpenSent | State::OpenConfirm => {
                let current = self.conn.as_ref()?;
                let keep_current = match self.fsm.negotiated() {
                    Some(n) => {
                        let survivor = fsm::resolve_collision(self.fsm.config().router_id, n.peer_id);
                        (survivor == Survivor::Outgoing) == current.outgoing
                    }
                    // The peer's identifier is not known yet: the higher address keeps the
                    // connection it opened.
                    None => (current.local.ip() > self.params.remote.ip()) == current.outgoing,
                };
                if keep_current {
                    reject(new, self.codec, self.fsm.state()).await;
                    None
                } else {
                    if let Some(old) = self.conn.replace(new) {
                        reject(old, self.codec, self.fsm.state()).await;
                    }
                    Some(Event::ConnectionReplaced)
                }
            }
            State::Idle | State::Established => {
                reject(new, self.codec, self.fsm.state()).await;
                None
            }
        }
    }
}
