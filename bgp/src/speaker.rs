//! The public handle: a speaker task that owns the [`Rib`], runs one session task per peer,
//! accepts incoming connections, and answers for status and routes.
//!
//! ```text
//!  Speaker (handle) ──Command──▶ speaker task ──ToSession──▶ session tasks ◀──▶ peers
//!        ▲                        │    ▲                          │
//!        └──── RouteEvent ◀───────┘    └──────FromSession─────────┘
//!                                  listener ──incoming TCP──▶ the peer's session
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use ipnetwork::IpNetwork;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::attrs::PathAttrs;
use crate::bfd;
use crate::fsm::{self, Negotiated, State};
use crate::rib::{BestChange, Export, PeerConfig, PeerId, PeerSession, PrefixFilter, Rib};
use crate::session::{self, FromSession, SessionParams, ToSession};
use crate::wire::attribute::put_attribute;
use crate::wire::error::subcode;
use crate::wire::{Attribute, Codec, Family, Message, MpReach, MpUnreach, RouteRefresh, Update, Value};

/// Best-route events buffered for subscribers. A subscriber that falls further behind must
/// re-read the whole table, which while a full table arrives costs far more than the events.
const ROUTE_EVENTS: usize = 1 << 16;

/// Best-route events the speaker publishes before it yields, so that subscribers sharing its
/// thread (a current-thread runtime) drain them before the buffer overflows: a full table
/// arrives in UPDATEs of hundreds of prefixes, and a turn of the speaker's task may take in a
/// hundred of them.
const EVENTS_BETWEEN_YIELDS: usize = ROUTE_EVENTS / 4;

/// The speaker's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Our AS.
    pub asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Where to accept connections, one listener each (none: never; every peer must be
    /// active). A node with IPv4 and IPv6 peers listens on an address of each family.
    pub listen: Vec<SocketAddr>,
    /// The route reflection cluster ID (defaults to the router ID).
    pub cluster_id: Option<Ipv4Addr>,
    /// Graceful restart time offered to peers, in seconds (`None`: not offered).
    pub graceful_restart: Option<u16>,
    /// Tell peers our forwarding state survived a restart (set when the kernel routes stay).
    pub forwarding_preserved: bool,
    /// Keep a graceful peer's routes when its hold timer expires (see
    /// [`fsm::Config::hold_expiry_keeps_routes`]).
    pub hold_expiry_keeps_routes: bool,
    /// The most equal-cost paths whose next hops a [`RouteEvent::Best`] carries (1: the best
    /// alone; BIRD's `merge paths`, FRR's `maximum-paths`).
    pub max_paths: usize,
}

/// One peer, declaratively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's port.
    pub port: u16,
    /// The peer's AS.
    pub asn: u32,
    /// Only accept, never connect.
    pub passive: bool,
    /// TCP MD5 password.
    pub password: Option<String>,
    /// The peer is our route reflector client.
    pub rr_client: bool,
    /// Hold time to propose.
    pub hold_time: u16,
    /// Seconds between our KEEPALIVEs (default: a third of the negotiated hold time).
    pub keepalive_time: Option<u16>,
    /// GTSM (RFC 5082): the peer is this many hops away; segments from further are dropped.
    pub ttl_security: Option<u8>,
    /// Our AS toward this peer, when not the speaker's (Calico's localASNumber).
    pub local_as: Option<u32>,
    /// How often our AS may appear in a received AS_PATH (allowas-in; 0: never).
    pub allow_local_as: u8,
    /// The address to connect from.
    pub local_address: Option<IpAddr>,
    /// Which received prefixes to accept.
    pub import: PrefixFilter,
    /// Which prefixes to send.
    pub export: PrefixFilter,
    /// Send learned routes to this external peer with their own next hop.
    pub keep_original_next_hop: bool,
    /// The longest this peer's routes are kept while it restarts, whatever it asks for.
    pub max_restart_time: Option<u16>,
    /// The address families offered (multiprotocol capabilities).
    pub families: Vec<Family>,
    /// The most prefixes the peer may have in the RIB (BIRD's `import limit`, FRR's
    /// `maximum-prefix`), and what passing it does.
    pub prefix_limit: Option<PrefixLimit>,
    /// A BFD session with the peer, whose failure ends the BGP session at once.
    pub bfd: Option<BfdSpec>,
}

/// A peer's BFD session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BfdSpec {
    /// Its timing.
    pub timing: bfd::Config,
    /// When BFD goes down, keep the peer's routes as stale if graceful restart was negotiated
    /// (BIRD's `bfd graceful`); by default they go at once.
    pub graceful: bool,
}

/// A peer's prefix limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLimit {
    /// The most prefixes (both families together).
    pub max: u32,
    /// What passing it does.
    pub action: LimitAction,
}

/// What a peer passing its prefix limit causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    /// A warning, once each time the limit is passed; the routes are kept.
    Warn,
    /// The session ends with Cease 6/1 (RFC 4486: the family and the limit in its data), the
    /// peer's routes are dropped, and it is taken back after this pause.
    Restart(Duration),
}

impl PeerSpec {
    /// Whether `other` differs from this spec only in what a running session can take without
    /// a reset: its filters and next-hop keeping (which change what it is sent and what is
    /// kept from it, nothing the other peers are sent of its routes), its prefix limit and its
    /// BFD session.
    pub fn differs_softly(&self, other: &PeerSpec) -> bool {
        let mut same = other.clone();
        same.import.clone_from(&self.import);
        same.export.clone_from(&self.export);
        same.keep_original_next_hop = self.keep_original_next_hop;
        same.prefix_limit = self.prefix_limit;
        same.bfd = self.bfd;
        same == *self
    }

    /// What the RIB needs to know of the peer.
    pub fn rib_config(&self) -> PeerConfig {
        PeerConfig {
            address: self.address,
            peer_as: self.asn,
            rr_client: self.rr_client,
            import: self.import.clone(),
            export: self.export.clone(),
            keep_next_hop: self.keep_original_next_hop,
            local_as: self.local_as,
            allow_local_as: self.allow_local_as,
        }
    }

    /// A peer with the defaults (port 179, hold time 90, active, IPv4 and IPv6 unicast,
    /// everything imported and exported).
    pub fn new(address: IpAddr, asn: u32) -> Self {
        PeerSpec {
            address,
            port: 179,
            asn,
            passive: false,
            password: None,
            rr_client: false,
            hold_time: 90,
            keepalive_time: None,
            ttl_security: None,
            local_as: None,
            allow_local_as: 0,
            local_address: None,
            import: PrefixFilter::default(),
            export: PrefixFilter::default(),
            keep_original_next_hop: false,
            max_restart_time: None,
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            prefix_limit: None,
            bfd: None,
        }
    }
}

/// A peer's status, for people and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's AS.
    pub asn: u32,
    /// The session state.
    pub state: State,
    /// When it entered that state.
    pub since: SystemTime,
    /// Why the session last failed, in words.
    pub last_error: Option<String>,
    /// Prefixes received from the peer.
    pub prefixes_received: usize,
    /// Prefixes accepted from the peer.
    pub prefixes_accepted: usize,
    /// Prefixes advertised to the peer.
    pub prefixes_advertised: usize,
    /// What was negotiated, while the session is up.
    pub negotiated: Option<Negotiated>,
    /// The BFD session, if the peer has one (`None` in it: BFD could not start here).
    pub bfd: Option<Option<bfd::Status>>,
}

/// One path in the RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The prefix.
    pub prefix: IpNetwork,
    /// The path's attributes.
    pub attrs: Arc<PathAttrs>,
    /// Who sent it (`None`: originated here).
    pub peer: Option<IpAddr>,
    /// Whether it is the best path.
    pub best: bool,
    /// Kept from a restarting peer.
    pub stale: bool,
}

/// A change of best route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// The prefix's best path is now this one.
    Best {
        /// The prefix.
        prefix: IpNetwork,
        /// Its attributes (the next hop among them).
        attrs: Arc<PathAttrs>,
        /// Who sent it (`None`: originated here).
        peer: Option<IpAddr>,
        /// With multipath, the next hops of every equal-cost path (the best's first), when
        /// there are several; otherwise empty.
        multipath: Vec<IpAddr>,
    },
    /// No path to the prefix is left.
    Unreachable(IpNetwork),
}

/// A speaker failure.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// A TCP MD5 password could not be installed.
    #[error("cannot set the TCP MD5 password for {0}: {1}")]
    Md5(IpAddr, std::io::Error),
    /// The speaker task is gone.
    #[error("the speaker has stopped")]
    Stopped,
}

enum Command {
    SetPeers(Vec<PeerSpec>, oneshot::Sender<Result<(), SpeakerError>>),
    Originate(IpNetwork, PathAttrs),
    Withdraw(IpNetwork),
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Routes(oneshot::Sender<Vec<RouteInfo>>),
    Shutdown(String, oneshot::Sender<()>),
}

/// A handle to a running speaker. Cheap to clone.
#[derive(Clone)]
pub struct Speaker {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<RouteEvent>,
}

impl Speaker {
    /// Starts the speaker (and its listeners, if configured).
    pub async fn start(config: SpeakerConfig) -> Result<Speaker, SpeakerError> {
        let mut listeners = Vec::with_capacity(config.listen.len());
        for &addr in &config.listen {
            listeners.push(TcpListener::bind(addr).await.map_err(|e| SpeakerError::Listen(addr, e))?);
        }
        let (commands, rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(ROUTE_EVENTS);
        let (from_sessions, sessions_rx) = mpsc::channel(1024);
        let (bfd_changes, bfd_rx) = mpsc::channel(64);
        let mut rib = Rib::new(config.asn, config.router_id, config.cluster_id);
        rib.set_multipath(config.max_paths > 1);
        let core = Core {
            rib,
            config,
            peers: HashMap::new(),
            events: events.clone(),
            from_sessions,
            started: SystemTime::now(),
            published_unyielded: 0,
            bfd: None,
            bfd_changes,
        };
        tokio::spawn(core.run(rx, sessions_rx, bfd_rx, Listeners(listeners)));
        Ok(Speaker { commands, events })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| SpeakerError::Stopped)?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Replaces the whole peer list: new peers start, removed ones are shut down, and only
    /// peers whose settings changed are restarted.
    pub async fn set_peers(&self, peers: Vec<PeerSpec>) -> Result<(), SpeakerError> {
        self.ask(|tx| Command::SetPeers(peers, tx)).await?
    }

    /// Originates a prefix (replacing an earlier origination of it).
    pub async fn originate(&self, prefix: IpNetwork, attrs: PathAttrs) -> Result<(), SpeakerError> {
        self.commands.send(Command::Originate(prefix, attrs)).await.map_err(|_| SpeakerError::Stopped)
    }

    /// Stops originating a prefix.
    pub async fn withdraw(&self, prefix: IpNetwork) -> Result<(), SpeakerError> {
        self.commands.send(Command::Withdraw(prefix)).await.map_err(|_| SpeakerError::Stopped)
    }

    /// Every peer's status.
    pub async fn status(&self) -> Result<Vec<PeerStatus>, SpeakerError> {
        self.ask(Command::Status).await
    }

    /// Every path in the RIB.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, SpeakerError> {
        self.ask(Command::Routes).await
    }

    /// Best-route changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RouteEvent> {
        self.events.subscribe()
    }

    /// Tells every peer why we go (Cease, Administrative Shutdown) and stops.
    pub async fn shutdown(&self, reason: &str) -> Result<(), SpeakerError> {
        self.ask(|tx| Command::Shutdown(reason.to_owned(), tx)).await
    }
}

struct PeerEntry {
    spec: PeerSpec,
    id: PeerId,
    session: mpsc::Sender<ToSession>,
    task: JoinHandle<()>,
    state: State,
    since: SystemTime,
    last_error: Option<String>,
    negotiated: Option<Negotiated>,
    stale_until: Option<Instant>,
    /// The prefix limit was passed (said once until the peer is back under it).
    over_limit: bool,
}

struct Core {
    config: SpeakerConfig,
    rib: Rib,
    peers: HashMap<IpAddr, PeerEntry>,
    events: broadcast::Sender<RouteEvent>,
    from_sessions: mpsc::Sender<(IpAddr, FromSession)>,
    started: SystemTime,
    /// Events published since the task last yielded.
    published_unyielded: usize,
    /// The BFD sessions' task, started when a peer first asks for BFD.
    bfd: Option<bfd::Engine>,
    bfd_changes: mpsc::Sender<(IpAddr, bfd::Change)>,
}

/// The listening sockets.
struct Listeners(Vec<TcpListener>);

impl Listeners {
    /// The next connection on any of them.
    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| {
            for listener in &self.0 {
                if let std::task::Poll::Ready(accepted) = listener.poll_accept(cx) {
                    return std::task::Poll::Ready(accepted);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Makes the listeners of `peer`'s family send with TTL 255, as GTSM peers require of
    /// everything they receive, the handshake's SYN-ACK included (inherited by what they accept).
    fn send_with_ttl_255(&self, peer: IpAddr) -> std::io::Result<()> {
        use nix::sys::socket::{setsockopt, sockopt};
        for listener in &self.0 {
            match listener.local_addr()? {
                SocketAddr::V4(_) if peer.is_ipv4() => setsockopt(listener, sockopt::Ipv4Ttl, &255)?,
                SocketAddr::V6(_) if peer.is_ipv6() => setsockopt(listener, sockopt::Ipv6Ttl, &255)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets (or with `None` removes) the TCP MD5 key for `peer` on every listener of its
    /// family, so its connections are signed and checked.
    fn set_md5(&self, peer: IpAddr, password: Option<&str>) -> std::io::Result<()> {
        for listener in &self.0 {
            if listener.local_addr()?.is_ipv4() == peer.is_ipv4() {
                crate::md5::set_md5(listener, peer, password)?;
            }
        }
        Ok(())
    }
}

impl Core {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut sessions: mpsc::Receiver<(IpAddr, FromSession)>,
        mut bfd_changes: mpsc::Receiver<(IpAddr, bfd::Change)>,
        listeners: Listeners,
    ) {
        loop {
            let stale_deadline = self.peers.values().filter_map(|p| p.stale_until).min();
            tokio::select! {
                command = commands.recv() => match command {
                    None => return self.shutdown("speaker handle dropped").await,
                    Some(Command::Shutdown(reason, done)) => {
                        self.shutdown(&reason).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.command(command, &listeners).await,
                },
                Some((peer, event)) = sessions.recv() => self.session_event(peer, event).await,
                Some((peer, change)) = bfd_changes.recv() => self.bfd_change(peer, change).await,
                accepted = listeners.accept(), if !listeners.0.is_empty() => {
                    if let Ok((stream, remote)) = accepted {
                        match self.peers.get(&remote.ip().to_canonical()) {
                            Some(peer) => {
                                let _ = peer.session.send(ToSession::Incoming(stream)).await;
                            }
                            None => tracing::debug!(%remote, "connection from an unknown address refused"),
                        }
                    }
                }
                _ = sleep_until(stale_deadline), if stale_deadline.is_some() => self.sweep_expired().await,
            }
        }
    }

    async fn shutdown(&mut self, reason: &str) {
        for peer in self.peers.values() {
            let _ = peer.session.send(ToSession::Stop(reason.to_owned())).await;
        }
        for (_, peer) in self.peers.drain() {
            let _ = tokio::time::timeout(Duration::from_secs(2), peer.task).await;
        }
    }

    async fn command(&mut self, command: Command, listeners: &Listeners) {
        match command {
            Command::SetPeers(specs, done) => {
                let _ = done.send(self.set_peers(specs, listeners).await);
            }
            Command::Originate(prefix, attrs) => {
                let changes = self.rib.originate(prefix, attrs);
                self.propagate(changes).await;
            }
            Command::Withdraw(prefix) => {
                let changes = self.rib.withdraw_local(prefix);
                self.propagate(changes).await;
            }
            Command::Status(reply) => {
                let bfd = match &self.bfd {
                    Some(engine) => engine.status().await,
                    None => HashMap::new(),
                };
                let mut status: Vec<PeerStatus> = self
                    .peers
                    .values()
                    .map(|p| {
                        let counts = self.rib.counts(p.id);
                        PeerStatus {
                            address: p.spec.address,
                            asn: p.spec.asn,
                            state: p.state,
                            since: p.since,
                            last_error: p.last_error.clone(),
                            prefixes_received: counts.received,
                            prefixes_accepted: counts.accepted,
                            prefixes_advertised: counts.advertised,
                            negotiated: p.negotiated.clone(),
                            bfd: p.spec.bfd.map(|_| bfd.get(&p.spec.address).copied()),
                        }
                    })
                    .collect();
                status.sort_by_key(|s| s.address);
                let _ = reply.send(status);
            }
            Command::Routes(reply) => {
                let by_id: HashMap<PeerId, IpAddr> = self.peers.values().map(|p| (p.id, p.spec.address)).collect();
                let mut routes: Vec<RouteInfo> = self
                    .rib
                    .routes()
                    .flat_map(|(prefix, paths)| {
                        let by_id = &by_id;
                        paths.iter().enumerate().map(move |(i, p)| RouteInfo {
                            prefix,
                            attrs: Arc::clone(&p.attrs),
                            peer: by_id.get(&p.peer).copied(),
                            best: i == 0,
                            stale: p.stale,
                        })
                    })
                    .collect();
                routes.sort_by(|a, b| {
                    (a.prefix.is_ipv6(), a.prefix.network(), a.prefix.prefix(), !a.best).cmp(&(
                        b.prefix.is_ipv6(),
                        b.prefix.network(),
                        b.prefix.prefix(),
                        !b.best,
                    ))
                });
                let _ = reply.send(routes);
            }
            Command::Shutdown(..) => {}
        }
    }

    async fn set_peers(&mut self, specs: Vec<PeerSpec>, listeners: &Listeners) -> Result<(), SpeakerError> {
        let wanted: HashMap<IpAddr, PeerSpec> = specs.into_iter().map(|s| (s.address, s)).collect();
        // A change of filters only is applied to the running session.
        let soft: Vec<PeerSpec> = self
            .peers
            .iter()
            .filter_map(|(a, p)| wanted.get(a).filter(|w| **w != p.spec && p.spec.differs_softly(w)))
            .cloned()
            .collect();
        for spec in soft {
            self.reconfigure(spec).await;
        }
        let gone: Vec<IpAddr> =
            self.peers.iter().filter(|(a, p)| wanted.get(a) != Some(&p.spec)).map(|(a, _)| *a).collect();
        for address in gone {
            if let Some(peer) = self.peers.remove(&address) {
                let _ = peer.session.send(ToSession::Stop("peer de-configured".into())).await;
                if peer.spec.password.is_some() {
                    let _ = listeners.set_md5(address, None);
                }
                let changes = self.rib.remove_peer(peer.id);
                self.propagate(changes).await;
            }
        }
        for (address, spec) in wanted {
            if self.peers.contains_key(&address) {
                continue;
            }
            if let Some(password) = &spec.password {
                listeners.set_md5(address, Some(password)).map_err(|e| SpeakerError::Md5(address, e))?;
            }
            if spec.ttl_security.is_some()
                && let Err(e) = listeners.send_with_ttl_255(address)
            {
                tracing::warn!(peer = %address, error = %e, "cannot raise the listener's TTL to 255 for GTSM");
            }
            let id = self.rib.add_peer(spec.rib_config());
            let local_as = spec.local_as.unwrap_or(self.config.asn);
            let mut fsm_config = fsm::Config::new(local_as, spec.asn, self.config.router_id);
            fsm_config.hold_time = spec.hold_time;
            fsm_config.keepalive_time = spec.keepalive_time;
            fsm_config.passive = spec.passive;
            fsm_config.graceful_restart = self.config.graceful_restart;
            fsm_config.restarting = self.config.graceful_restart.is_some() && self.recently_started();
            fsm_config.forwarding_preserved = self.config.forwarding_preserved;
            fsm_config.hold_expiry_keeps_routes = self.config.hold_expiry_keeps_routes;
            fsm_config.families = spec.families.clone();
            let params = SessionParams {
                remote: SocketAddr::new(address, spec.port),
                local: spec.local_address,
                password: spec.password.clone(),
                ttl_security: spec.ttl_security,
                fsm: fsm_config,
            };
            let (session, task) = session::spawn(params, self.from_sessions.clone());
            self.peers.insert(
                address,
                PeerEntry {
                    spec,
                    id,
                    session,
                    task,
                    state: State::Idle,
                    since: SystemTime::now(),
                    last_error: None,
                    negotiated: None,
                    stale_until: None,
                    over_limit: false,
                },
            );
        }
        self.sync_bfd().await;
        Ok(())
    }

    /// Gives the BFD task the peers that ask for BFD, starting it for the first.
    async fn sync_bfd(&mut self) {
        let peers: Vec<bfd::Peer> = self
            .peers
            .values()
            .filter_map(|p| {
                let spec = p.spec.bfd?;
                Some(bfd::Peer { address: p.spec.address, local: p.spec.local_address, config: spec.timing })
            })
            .collect();
        if self.bfd.is_none() && !peers.is_empty() {
            match bfd::Engine::start(self.bfd_changes.clone()) {
                Ok(engine) => self.bfd = Some(engine),
                Err(e) => {
                    let port = bfd::CONTROL_PORT;
                    tracing::warn!(error = %e, "BFD cannot start (is UDP port {port} taken?): its peers run without it");
                    return;
                }
            }
        }
        if let Some(engine) = &self.bfd {
            engine.set(peers).await;
        }
    }

    /// A BFD session changed: leaving Up by failure ends the peer's BGP session at once. A
    /// peer's AdminDown is its decision, not a failure (RFC 5882 §3.2), and is left alone.
    async fn bfd_change(&mut self, address: IpAddr, change: bfd::Change) {
        let Some(peer) = self.peers.get(&address) else { return };
        let Some(spec) = peer.spec.bfd else { return };
        if change.from == bfd::State::Up && change.to == bfd::State::Down && change.remote != bfd::State::AdminDown {
            let reason = format!("BFD session down: {}", change.diagnostic);
            tracing::warn!(peer = %address, "{reason}: ending the BGP session");
            let _ = peer.session.send(ToSession::PathDown { reason, graceful: spec.graceful }).await;
        }
    }

    /// Soft reconfiguration of a peer whose spec differs from `spec` in filters or next-hop
    /// keeping only: the session stays up. A wider import filter needs the routes the old
    /// one refused: the peer is asked to send them again (ROUTE-REFRESH), or, if it cannot be,
    /// its session is reset (left to the caller: the spec stays different).
    async fn reconfigure(&mut self, spec: PeerSpec) {
        let Some(peer) = self.peers.get(&spec.address) else { return };
        let established = peer.state == State::Established;
        let refresh = peer.negotiated.as_ref().filter(|n| n.route_refresh).map(|n| n.families.clone());
        if spec.import != peer.spec.import && established && refresh.is_none() {
            return;
        }
        let (id, session) = (peer.id, peer.session.clone());
        let four = peer.negotiated.as_ref().is_some_and(|n| n.four_octet_as);
        let import_changed = spec.import != peer.spec.import;
        let config = spec.rib_config();
        tracing::info!(peer = %spec.address, "peer reconfigured without a reset");
        if let Some(entry) = self.peers.get_mut(&spec.address) {
            entry.spec = spec;
        }
        let (changes, exports) = self.rib.reconfigure(id, config);
        self.propagate_except(changes, Some(id)).await;
        let codec = Codec { four_octet_as: four, ebgp: false };
        let mut messages = pack(last_per_prefix(exports), &codec);
        if import_changed {
            let families = refresh.unwrap_or_default();
            messages
                .extend(families.into_iter().map(|family| Message::RouteRefresh(RouteRefresh { family, subtype: 0 })));
        }
        if !messages.is_empty() {
            let _ = session.send(ToSession::Send(encode_all(&messages, &codec))).await;
        }
    }

    /// Within the first minutes after start, sessions announce the restart (R bit), so peers
    /// keep our routes until our End-of-RIB.
    fn recently_started(&self) -> bool {
        self.started
            .elapsed()
            .is_ok_and(|e| e < Duration::from_secs(u64::from(self.config.graceful_restart.unwrap_or(0))))
    }

    async fn session_event(&mut self, address: IpAddr, event: FromSession) {
        let Some(peer) = self.peers.get_mut(&address) else { return };
        let id = peer.id;
        match event {
            FromSession::State(state, error) => {
                if state != peer.state {
                    peer.since = SystemTime::now();
                }
                peer.state = state;
                if error.is_some() {
                    peer.last_error = error;
                }
            }
            FromSession::Established(negotiated, local) => {
                peer.state = State::Established;
                peer.since = SystemTime::now();
                peer.last_error = None;
                let session = PeerSession {
                    router_id: negotiated.peer_id,
                    local_v4: match local {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    },
                    local_v6: match local {
                        IpAddr::V6(a) => Some(a),
                        IpAddr::V4(_) => None,
                    },
                    families: negotiated.families.clone(),
                    four_octet_as: negotiated.four_octet_as,
                };
                peer.negotiated = Some(negotiated.clone());
                let sender = peer.session.clone();
                let exports = self.rib.peer_up(id, session);
                let codec = Codec { four_octet_as: negotiated.four_octet_as, ebgp: false };
                let mut messages = pack(exports, &codec);
                messages.extend(negotiated.families.iter().map(|f| Message::Update(Update::end_of_rib_marker(*f))));
                let _ = sender.send(ToSession::Send(encode_all(&messages, &codec))).await;
            }
            FromSession::Updates(updates) => {
                // The changes of the whole batch go out together: one round of exports for
                // the many small UPDATEs a sender spreads a table over.
                let mut changes = Vec::new();
                let limit = peer.spec.prefix_limit;
                updates.iter().for_each(|u| self.rib.prefetch(u));
                for update in updates {
                    match update.end_of_rib() {
                        Some(family) => {
                            if (family == Family::IPV4_UNICAST || family == Family::IPV6_UNICAST)
                                && let Some(peer) = self.peers.get_mut(&address)
                            {
                                peer.stale_until = None;
                            }
                            changes.extend(self.rib.sweep_stale(id, Some(family)));
                        }
                        None => {
                            self.rib.update(id, &update, &mut changes);
                            if let Some(limit) = limit
                                && self.over_limit(address, limit, &update).await
                            {
                                // The session is ending and its routes go: nothing more of
                                // this batch is taken in.
                                break;
                            }
                        }
                    }
                }
                self.propagate(changes).await;
            }
            FromSession::RouteRefresh(family) => {
                let four = peer.negotiated.as_ref().is_some_and(|n| n.four_octet_as);
                let sender = peer.session.clone();
                let mut exports = self.rib.refresh(id);
                exports.retain(|e| matches!(e, Export::Announce(p, _) if Family::of(p) == family));
                let codec = Codec { four_octet_as: four, ebgp: false };
                let mut messages = pack(exports, &codec);
                messages.push(Message::Update(Update::end_of_rib_marker(family)));
                let _ = sender.send(ToSession::Send(encode_all(&messages, &codec))).await;
            }
            FromSession::Down { reason, keep_routes } => {
                peer.last_error = Some(reason);
                peer.over_limit = false;
                let asked = peer.negotiated.as_ref().and_then(|n| n.peer_restart.as_ref()).map(|r| r.restart_time);
                let restart_time = match (asked, peer.spec.max_restart_time) {
                    (Some(asked), Some(max)) => Some(asked.min(max)),
                    (asked, max) => asked.or(max),
                };
                peer.negotiated = None;
                if keep_routes {
                    peer.stale_until =
                        Some(Instant::now() + Duration::from_secs(u64::from(restart_time.unwrap_or(120))));
                }
                let changes = self.rib.peer_down(id, keep_routes);
                self.propagate(changes).await;
            }
        }
    }

    /// Checks the peer's prefix count against its limit after `update`: warns once when it
    /// is passed, or ends the session with Cease 6/1. Returns whether the session is ending.
    async fn over_limit(&mut self, address: IpAddr, limit: PrefixLimit, update: &Update) -> bool {
        let Some(peer) = self.peers.get_mut(&address) else { return false };
        let held = self.rib.counts(peer.id).received;
        if held <= limit.max as usize {
            peer.over_limit = false;
            return false;
        }
        let first = !std::mem::replace(&mut peer.over_limit, true);
        match limit.action {
            LimitAction::Warn => {
                if first {
                    tracing::warn!(peer = %address, held, limit = limit.max, "the peer passed its prefix limit");
                }
                false
            }
            LimitAction::Restart(pause) => {
                if !first {
                    return true;
                }
                let family = update.mp_reach().map_or(Family::IPV4_UNICAST, |m| m.family);
                let mut data = Vec::with_capacity(7);
                data.extend_from_slice(&family.afi.to_be_bytes());
                data.push(family.safi);
                data.extend_from_slice(&limit.max.to_be_bytes());
                let reason = format!("the peer passed its limit of {} prefixes", limit.max);
                tracing::warn!(peer = %address, held, limit = limit.max, ?pause, "{reason}: Cease 6/1");
                let cease = ToSession::Cease { subcode: subcode::MAX_PREFIXES, data, reason, restart_after: pause };
                let _ = peer.session.send(cease).await;
                true
            }
        }
    }

    async fn sweep_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .peers
            .values_mut()
            .filter(|p| p.stale_until.is_some_and(|t| t <= now))
            .map(|p| {
                p.stale_until = None;
                p.id
            })
            .collect();
        for id in expired {
            let changes = self.rib.sweep_stale(id, None);
            self.propagate(changes).await;
        }
    }

    /// Tells subscribers about best-path changes.
    fn publish(&self, changes: &[BestChange]) {
        let by_id: HashMap<PeerId, IpAddr> = self.peers.values().map(|p| (p.id, p.spec.address)).collect();
        for change in changes {
            let event = match &change.new {
                Some(best) => RouteEvent::Best {
                    prefix: change.prefix,
                    attrs: Arc::clone(&best.attrs),
                    peer: by_id.get(&best.peer).copied(),
                    // A prefix that was new (no best before) has one path: no set to read,
                    // which keeps a full table's arrival free of a second lookup per prefix.
                    multipath: match self.config.max_paths {
                        _ if change.old.is_none() => Vec::new(),
                        0 | 1 => Vec::new(),
                        max => {
                            Some(self.rib.multipath(&change.prefix, max)).filter(|h| h.len() > 1).unwrap_or_default()
                        }
                    },
                },
                None => RouteEvent::Unreachable(change.prefix),
            };
            let _ = self.events.send(event);
        }
    }

    /// Sends best-path changes to the peers and to subscribers.
    async fn propagate(&mut self, changes: Vec<BestChange>) {
        self.propagate_except(changes, None).await;
    }

    /// [`Core::propagate`], sending nothing to `except` (a peer whose exports were worked out
    /// whole).
    async fn propagate_except(&mut self, changes: Vec<BestChange>, except: Option<PeerId>) {
        if changes.is_empty() {
            return;
        }
        if self.events.receiver_count() > 0 {
            self.publish(&changes);
            self.published_unyielded += changes.len();
            if self.published_unyielded >= EVENTS_BETWEEN_YIELDS {
                self.published_unyielded = 0;
                tokio::task::yield_now().await;
            }
        }
        let batches = self.rib.exports_except(&changes, except);
        if batches.is_empty() {
            return;
        }
        let sessions: HashMap<PeerId, (&mpsc::Sender<ToSession>, bool)> = self
            .peers
            .values()
            .map(|p| (p.id, (&p.session, p.negotiated.as_ref().is_some_and(|n| n.four_octet_as))))
            .collect();
        for batch in batches {
            // The peers of a batch are alike, down to their AS number size: one encoding
            // serves them all.
            let Some(&(_, four)) = batch.peers.first().and_then(|id| sessions.get(id)) else { continue };
            let codec = Codec { four_octet_as: four, ebgp: false };
            let encoded = encode_all(&pack(last_per_prefix(batch.exports), &codec), &codec);
            for id in &batch.peers {
                if let Some((session, _)) = sessions.get(id) {
                    let _ = session.send(ToSession::Send(encoded.clone())).await;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `messages` encoded one after the other. Packing made every UPDATE fit; one that did not
/// would be a defect, and is left out with an error in the log rather than sent malformed.
fn encode_all(messages: &[Message], codec: &Codec) -> Bytes {
    let mut out = BytesMut::new();
    for m in messages {
        if let Err(e) = crate::wire::encode(m, codec, &mut out) {
            tracing::error!(error = %e, kind = m.kind(), "a message too long to send was left out");
        }
    }
    out.freeze()
}

/// The room left for NLRI in an UPDATE after the header, the two length fields and `attributes`.
fn room(attributes: &[Attribute], codec: &Codec) -> usize {
    let mut buf = BytesMut::new();
    attributes.iter().for_each(|a| put_attribute(a, codec, &mut buf));
    crate::wire::MAX_MESSAGE_LEN.saturating_sub(crate::wire::HEADER_LEN + 4 + buf.len())
}

/// Splits `prefixes` into runs whose encoded size fits in `room` octets.
fn chunks(prefixes: &[IpNetwork], room: usize) -> Vec<Vec<IpNetwork>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut used = 0;
    for p in prefixes {
        let size = crate::wire::prefix::prefix_len_on_wire(p);
        if used + size > room && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            used = 0;
        }
        current.push(*p);
        used += size;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The last export of each prefix, in their order: a batch of received UPDATEs can change
/// one prefix more than once, and [`pack`] does not keep the order of what it is given.
fn last_per_prefix(exports: Vec<Export>) -> Vec<Export> {
    let prefix = |e: &Export| match e {
        Export::Announce(p, _) | Export::Withdraw(p) => *p,
    };
    let last: HashMap<IpNetwork, usize> = exports.iter().enumerate().map(|(i, e)| (prefix(e), i)).collect();
    exports.into_iter().enumerate().filter(|(i, e)| last.get(&prefix(e)) == Some(i)).map(|(_, e)| e).collect()
}

/// Packs exports (each prefix at most once) into as few UPDATEs as fit: withdrawals
/// together, announcements grouped by their (shared) attributes.
fn pack(exports: Vec<Export>, codec: &Codec) -> Vec<Message> {
    let mut withdrawn_v4 = Vec::new();
    let mut withdrawn_v6 = Vec::new();
    let mut groups: Vec<(Arc<PathAttrs>, bool, Vec<IpNetwork>)> = Vec::new();
    let mut index: HashMap<(usize, bool), usize> = HashMap::new();
    for export in exports {
        match export {
            Export::Withdraw(p) if p.is_ipv4() => withdrawn_v4.push(p),
            Export::Withdraw(p) => withdrawn_v6.push(p),
            Export::Announce(p, attrs) => {
                let key = (Arc::as_ptr(&attrs) as usize, p.is_ipv6());
                let at = *index.entry(key).or_insert_with(|| {
                    groups.push((Arc::clone(&attrs), p.is_ipv6(), Vec::new()));
                    groups.len() - 1
                });
                groups[at].2.push(p);
            }
        }
    }
    let mut messages = Vec::new();
    for run in chunks(&withdrawn_v4, room(&[], codec)) {
        messages.push(Message::Update(Update { withdrawn: run, ..Update::default() }));
    }
    // MP_UNREACH_NLRI: a 4-octet extended-length header and AFI/SAFI.
    for run in chunks(&withdrawn_v6, room(&[], codec).saturating_sub(7)) {
        let unreach = MpUnreach { family: Family::IPV6_UNICAST, withdrawn: run, raw_withdrawn: Vec::new() };
        messages.push(Message::Update(Update {
            attributes: vec![Attribute::new(Value::MpUnreach(unreach))].into(),
            ..Update::default()
        }));
    }
    for (attrs, ipv6, prefixes) in groups {
        if ipv6 {
            let base = attrs.to_attributes(false, codec.four_octet_as);
            let mut hops: Vec<IpAddr> = attrs.next_hop.into_iter().collect();
            hops.extend(attrs.link_local_next_hop.map(IpAddr::V6));
            // MP_REACH_NLRI: header 4, AFI/SAFI 3, next hop length 1 + 16 or 32, reserved 1.
            let overhead = 4 + 3 + 1 + 16 * hops.len() + 1;
            for run in chunks(&prefixes, room(&base, codec).saturating_sub(overhead)) {
                let mut attributes =
                    vec![Attribute::new(Value::MpReach(MpReach::new(Family::IPV6_UNICAST, &hops, run)))];
                attributes.extend(base.iter().cloned());
                messages.push(Message::Update(Update { attributes: attributes.into(), ..Update::default() }));
            }
        } else {
            let attributes: std::sync::Arc<[Attribute]> = attrs.to_attributes(true, codec.four_octet_as).into();
            for run in chunks(&prefixes, room(&attributes, codec)) {
                messages.push(Message::Update(Update {
                    attributes: std::sync::Arc::clone(&attributes),
                    nlri: run,
                    ..Update::default()
                }));
            }
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_sends_only_the_last_export_of_a_prefix() {
        let (a, b) = (
            Arc::new(PathAttrs::local(Some("10.0.0.1".parse().unwrap()))),
            Arc::new(PathAttrs::local(Some("10.0.0.2".parse().unwrap()))),
        );
        let (x, y): (IpNetwork, IpNetwork) = ("10.1.0.0/16".parse().unwrap(), "10.2.0.0/16".parse().unwrap());
        // x announced then withdrawn, y announced with a then with b, in one batch: packing
        // puts withdrawals first, so sending all four would leave x announced and y with a.
        let exports = vec![
            Export::Announce(x, Arc::clone(&a)),
            Export::Announce(y, Arc::clone(&a)),
            Export::Withdraw(x),
            Export::Announce(y, Arc::clone(&b)),
        ];
        let messages = pack(last_per_prefix(exports), &Codec { four_octet_as: true, ebgp: false });
        let updates: Vec<&Update> =
            messages.iter().map(|m| if let Message::Update(u) = m { u } else { panic!() }).collect();
        assert_eq!(updates.len(), 2, "{updates:?}");
        assert_eq!((updates[0].withdrawn.as_slice(), updates[0].nlri.as_slice()), (&[x][..], &[][..]));
        assert_eq!(updates[1].nlri, [y]);
        assert_eq!(
            updates[1].attribute(crate::wire::attribute::type_code::NEXT_HOP).map(|a| &a.value),
            Some(&Value::NextHop("10.0.0.2".parse().unwrap()))
        );
    }

    #[test]
    fn packing_fills_updates_without_exceeding_the_limit() {
        let attrs = Arc::new(PathAttrs::local(Some("10.0.0.1".parse().unwrap())));
        let exports: Vec<Export> =
            (0..3000u32)
                .map(|i| {
                    Export::Announce(
                        IpNetwork::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24).unwrap(),
                        Arc::clone(&attrs),
                    )
                })
                .chain((0..1000u32).map(|i| {
                    Export::Withdraw(IpNetwork::new(Ipv4Addr::from(0x0b00_0000 + (i << 8)).into(), 24).unwrap())
                }))
                .collect();
        let codec = Codec { four_octet_as: true, ebgp: false };
        let messages = pack(exports, &codec);
        let mut announced = 0;
        let mut withdrawn = 0;
        for m in &messages {
            let mut buf = BytesMut::new();
            crate::wire::encode(m, &codec, &mut buf).expect("every UPDATE fits");
            let Message::Update(u) = m else { panic!() };
            announced += u.nlri.len();
            withdrawn += u.withdrawn.len();
        }
        assert_eq!((announced, withdrawn), (3000, 1000));
        assert!(messages.len() <= 5, "{} UPDATEs for 4000 /24s: they should be full", messages.len());
    }
}
