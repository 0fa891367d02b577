//! The BGP session state machine of RFC 4271 §8, sans-IO.
//!
//! [`Fsm::handle`] takes an [`Event`] and the current time and returns the [`Action`]s an I/O
//! driver must carry out (connect, send, close, deliver). The machine owns its timers only as
//! deadlines: the driver asks [`Fsm::next_deadline`] when to call [`Fsm::on_timer`]. No
//! sockets, no clocks, no tokio here, so every transition is a unit test.
//!
//! Beyond the RFC's core: automatic restart after an error with an exponential "error wait"
//! (BIRD's `error wait time 5,30`; a peer that ended the session itself is let back in at once,
//! only our own connection attempts wait), administrative shutdown with a reason (RFC 9003), required
//! capabilities refused with Unsupported Capability (RFC 5492), and the graceful restart
//! decision of whether a peer's routes are kept when its session drops (RFC 4724, RFC 8538).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::wire::error::{code, subcode};
use crate::wire::open::AS_TRANS;
use crate::wire::{
    Capability, DecodeError, Family, GracefulRestartFamily, Message, Notification, Open, OptionalParameter,
    RouteRefresh, Update,
};

/// The states of RFC 4271 §8.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not trying.
    Idle,
    /// Waiting for an outgoing TCP connection.
    Connect,
    /// Waiting for the peer to connect.
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for a KEEPALIVE.
    OpenConfirm,
    /// Up: routes flow.
    Established,
}

/// What this side offers and expects of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our AS.
    pub local_as: u32,
    /// The AS the peer must have.
    pub peer_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The hold time we propose (0 or at least 3 seconds).
    pub hold_time: u16,
    /// Seconds between our KEEPALIVEs (`None`: a third of the negotiated hold time, never
    /// more than that).
    pub keepalive_time: Option<u16>,
    /// Never connect; only accept.
    pub passive: bool,
    /// The families we offer.
    pub families: Vec<Family>,
    /// Graceful restart: our restart time in seconds, or `None` to not offer it.
    pub graceful_restart: Option<u16>,
    /// We are coming back from a restart (the R bit).
    pub restarting: bool,
    /// Our forwarding state survived the restart (the F bit of each family).
    pub forwarding_preserved: bool,
    /// The longest pause between connection attempts. A refused attempt is retried sooner
    /// at first (after [`FIRST_CONNECT_RETRY`], doubling up to this), so a peer that starts a
    /// moment after us is reached at once.
    pub connect_retry: Duration,
    /// The first pause before restarting after an error; doubles up to `error_wait_max`.
    pub error_wait_min: Duration,
    /// The longest pause before restarting after an error.
    pub error_wait_max: Duration,
    /// Keep a graceful peer's routes when its hold timer expires (RFC 8538's reading: the
    /// peer may be restarting). `false` treats a silent peer as dead: its routes go at once,
    /// which is what a cluster wants from a node that vanished; a restarting peer closes its
    /// connection instead, and keeps its routes.
    pub hold_expiry_keeps_routes: bool,
}

impl Config {
    /// Defaults for a session between `local_as` and `peer_as`.
    pub fn new(local_as: u32, peer_as: u32, router_id: Ipv4Addr) -> Self {
        Config {
            local_as,
            peer_as,
            router_id,
            hold_time: 90,
            keepalive_time: None,
            passive: false,
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            graceful_restart: Some(120),
            restarting: false,
            forwarding_preserved: false,
            connect_retry: Duration::from_secs(5),
            error_wait_min: Duration::from_secs(5),
            error_wait_max: Duration::from_secs(30),
            hold_expiry_keeps_routes: true,
        }
    }

    /// Whether the session is internal (same AS).
    pub fn is_ibgp(&self) -> bool {
        self.local_as == self.peer_as
    }

    /// The OPEN this configuration sends.
    pub fn open(&self) -> Open {
        let mut caps: Vec<Capability> = self.families.iter().map(|f| Capability::Multiprotocol(*f)).collect();
        caps.push(Capability::RouteRefresh);
        if let Some(restart_time) = self.graceful_restart {
            caps.push(Capability::GracefulRestart {
                restarting: self.restarting,
                notification: true,
                restart_time: restart_time.min(0x0fff),
                families: self
                    .families
                    .iter()
                    .map(|f| GracefulRestartFamily { family: *f, forwarding_preserved: self.forwarding_preserved })
                    .collect(),
            });
        }
        caps.push(Capability::FourOctetAs(self.local_as));
        Open {
            version: 4,
            my_as: u16::try_from(self.local_as).unwrap_or(AS_TRANS),
            hold_time: self.hold_time,
            bgp_id: self.router_id,
            params: vec![OptionalParameter::Capabilities(caps)],
        }
    }
}

/// The peer's graceful restart offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRestart {
    /// The peer restarted (R bit): it will send End-of-RIB.
    pub restarting: bool,
    /// The peer supports graceful NOTIFICATION handling (N bit, RFC 8538).
    pub notification: bool,
    /// Seconds the peer needs to come back.
    pub restart_time: u16,
    /// Families the peer keeps forwarding state for across a restart.
    pub families: Vec<GracefulRestartFamily>,
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's AS.
    pub peer_as: u32,
    /// The peer's BGP identifier.
    pub peer_id: Ipv4Addr,
    /// The hold time in force (the smaller proposal).
    pub hold_time: u16,
    /// Both sides speak 4-octet AS.
    pub four_octet_as: bool,
    /// Families both sides offered.
    pub families: Vec<Family>,
    /// Both sides support ROUTE-REFRESH.
    pub route_refresh: bool,
    /// The peer's graceful restart offer, if it made one and we offered too.
    pub peer_restart: Option<PeerRestart>,
    /// The peer's capabilities as it sent them.
    pub peer_capabilities: Vec<Capability>,
}

/// Something that happened to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Begin: connect (or wait, if passive).
    Start,
    /// Stop administratively, telling the peer why.
    Stop {
        /// Sent as the shutdown communication.
        reason: String,
    },
    /// A TCP connection to the peer is up (ours or theirs).
    TcpConnected,
    /// The TCP connection failed or closed.
    TcpFailed {
        /// What the socket said (connection refused, reset ...).
        reason: String,
    },
    /// A message arrived.
    Message(Message),
    /// A message could not be decoded.
    DecodeFailed(DecodeError),
    /// End the session with a Cease (RFC 4486) of this subcode and data, drop the peer's
    /// routes whatever graceful restart says, and start again after `restart_after`.
    Cease {
        /// The Cease subcode.
        subcode: u8,
        /// The NOTIFICATION's data.
        data: Vec<u8>,
        /// Why, in words.
        reason: String,
        /// The pause before the session may start again.
        restart_after: Duration,
    },
    /// The forwarding path to the peer failed (BFD went down, RFC 5882 §10.2): the session ends
    /// without a NOTIFICATION (it could not arrive), the peer's routes go unless `graceful`
    /// (then they are kept as under graceful restart, if negotiated), and the peer is taken
    /// back as soon as it connects.
    PathDown {
        /// Why, in words.
        reason: String,
        /// Keep the routes as stale if graceful restart was negotiated.
        graceful: bool,
    },
    /// Collision resolution (RFC 4271 §6.8) replaced the connection before Established: start
    /// the OPEN exchange again on the new one.
    ConnectionReplaced,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection.
    Disconnect,
    /// Send a message.
    Send(Message),
    /// The session is up.
    Established(Negotiated),
    /// An UPDATE arrived in Established.
    Update(Update),
    /// The peer asks for our routes again.
    RouteRefresh(RouteRefresh),
    /// The session left Established.
    Down {
        /// Why, in words.
        reason: String,
        /// Keep the peer's routes as stale (graceful restart) instead of withdrawing them.
        keep_routes: bool,
    },
}

/// The first pause after a refused connection; it doubles with each refusal up to
/// [`Config::connect_retry`].
pub const FIRST_CONNECT_RETRY: Duration = Duration::from_secs(1);

/// The hold time used between connecting and receiving the peer's OPEN (RFC 4271 §8: "large").
const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// One peer's session state machine.
#[derive(Debug, Clone)]
pub struct Fsm {
    config: Config,
    state: State,
    negotiated: Option<Negotiated>,
    connect_retry_at: Option<Instant>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    restart_at: Option<Instant>,
    connect_wait: Duration,
    error_wait: Duration,
    last_error: Option<String>,
    stopped: bool,
}

impl Fsm {
    /// A machine in Idle.
    pub fn new(config: Config) -> Self {
        let error_wait = config.error_wait_min;
        let connect_wait = FIRST_CONNECT_RETRY.min(config.connect_retry);
        Fsm {
            config,
            state: State::Idle,
            negotiated: None,
            connect_retry_at: None,
            hold_at: None,
            keepalive_at: None,
            restart_at: None,
            connect_wait,
            error_wait,
            last_error: None,
            stopped: true,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What was agreed, while the session is past OpenSent.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The last reason the session failed, in words.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When [`Fsm::on_timer`] must next be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.connect_retry_at, self.hold_at, self.keepalive_at, self.restart_at].into_iter().flatten().min()
    }

    /// Handles one event at time `now`.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Start => self.start(now),
            Event::Stop { reason } => {
                self.stopped = true;
                self.restart_at = None;
                let mut actions = Vec::new();
                if matches!(self.state, State::OpenSent | State::OpenConfirm | State::Established) {
                    actions.push(Action::Send(Message::Notification(Notification::cease(
                        subcode::ADMINISTRATIVE_SHUTDOWN,
                        &reason,
                    ))));
                }
                let was_up = self.state == State::Established;
                self.last_error = Some(format!("administratively shut down: {reason}"));
                self.enter_idle(&mut actions);
                if was_up {
                    actions.push(Action::Down {
                        reason: format!("administratively shut down: {reason}"),
                        keep_routes: false,
                    });
                }
                actions
            }
            Event::TcpConnected => match self.state {
                State::Connect | State::Active => {
                    self.connect_retry_at = None;
                    self.hold_at = Some(now + OPEN_HOLD_TIME);
                    self.state = State::OpenSent;
                    vec![Action::Send(Message::Open(self.config.open()))]
                }
                // A connection we did not ask for: refuse it.
                _ => vec![Action::Disconnect],
            },
            Event::TcpFailed { reason } => match self.state {
                State::Idle => Vec::new(),
                State::Connect | State::OpenSent => {
                    self.last_error = Some(reason);
                    self.hold_at = None;
                    self.keepalive_at = None;
                    self.state = State::Active;
                    self.connect_retry_at = Some(now + self.connect_wait);
                    self.connect_wait = (self.connect_wait * 2).min(self.config.connect_retry);
                    vec![Action::Disconnect]
                }
                State::Active => {
                    self.last_error = Some(reason);
                    Vec::new()
                }
                State::OpenConfirm | State::Established => self.peer_ended(reason, false, now),
            },
            Event::Message(message) => self.message(message, now),
            Event::ConnectionReplaced => match self.state {
                State::OpenSent | State::OpenConfirm => {
                    self.negotiated = None;
                    self.keepalive_at = None;
                    self.hold_at = Some(now + OPEN_HOLD_TIME);
                    self.state = State::OpenSent;
                    vec![Action::Send(Message::Open(self.config.open()))]
                }
                _ => Vec::new(),
            },
            Event::Cease { subcode, data, reason, restart_after } => {
                if !matches!(self.state, State::OpenSent | State::OpenConfirm | State::Established) {
                    return Vec::new();
                }
                let notification = Notification { code: code::CEASE, subcode, data };
                let mut actions = vec![Action::Send(Message::Notification(notification))];
                actions.extend(self.fail(reason, true, now));
                drop_routes(&mut actions);
                if !self.stopped {
                    self.restart_at = Some(now + restart_after);
                }
                actions
            }
            Event::PathDown { reason, graceful } => {
                if !matches!(self.state, State::OpenSent | State::OpenConfirm | State::Established) {
                    return Vec::new();
                }
                let mut actions = self.peer_ended(reason, false, now);
                if !graceful {
                    drop_routes(&mut actions);
                }
                actions
            }
            Event::DecodeFailed(error) => {
                let mut actions = vec![Action::Send(Message::Notification(Notification::from_error(&error)))];
                let reason = format!("sent NOTIFICATION: {error}");
                actions.extend(self.fail(reason, true, now));
                actions
            }
        }
    }

    /// Handles every deadline that has passed by `now`.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let due = |at: Option<Instant>| at.is_some_and(|t| t <= now);
        if due(self.restart_at) {
            self.restart_at = None;
            return self.start(now);
        }
        if due(self.hold_at) {
            let mut actions = vec![Action::Send(Message::Notification(Notification {
                code: code::HOLD_TIMER_EXPIRED,
                subcode: 0,
                data: Vec::new(),
            }))];
            actions.extend(self.fail("hold timer expired".into(), false, now));
            if !self.config.hold_expiry_keeps_routes {
                drop_routes(&mut actions);
            }
            return actions;
        }
        let mut actions = Vec::new();
        if due(self.keepalive_at) {
            actions.push(Action::Send(Message::Keepalive));
            self.keepalive_at = self.keepalive_interval().map(|i| now + i);
        }
        if due(self.connect_retry_at) {
            self.connect_retry_at = Some(now + self.config.connect_retry);
            if !self.config.passive && matches!(self.state, State::Connect | State::Active) {
                self.state = State::Connect;
                actions.push(Action::Disconnect);
                actions.push(Action::Connect);
            }
        }
        actions
    }

    fn start(&mut self, now: Instant) -> Vec<Action> {
        self.stopped = false;
        if self.state != State::Idle {
            return Vec::new();
        }
        self.connect_retry_at = Some(now + self.config.connect_retry);
        if self.config.passive {
            self.state = State::Active;
            Vec::new()
        } else {
            self.state = State::Connect;
            vec![Action::Connect]
        }
    }

    fn keepalive_interval(&self) -> Option<Duration> {
        let hold = self.negotiated.as_ref()?.hold_time;
        let third = (hold > 0).then(|| Duration::from_secs(u64::from(hold)) / 3)?;
        Some(self.config.keepalive_time.map_or(third, |k| Duration::from_secs(u64::from(k)).min(third)))
    }

    fn hold_interval(&self) -> Option<Duration> {
        let hold = self.negotiated.as_ref()?.hold_time;
        (hold > 0).then(|| Duration::from_secs(u64::from(hold)))
    }

    /// Back to Idle, timers off, connection closed.
    fn enter_idle(&mut self, actions: &mut Vec<Action>) {
        if self.state != State::Idle {
            actions.push(Action::Disconnect);
        }
        self.state = State::Idle;
        self.connect_retry_at = None;
        self.hold_at = None;
        self.keepalive_at = None;
    }

    /// The session failed: close, report, and schedule a restart after the error wait.
    /// `notified` says a NOTIFICATION went either way (which ends graceful restart unless
    /// both sides set the N bit, RFC 8538).
    fn fail(&mut self, reason: String, notified: bool, now: Instant) -> Vec<Action> {
        let was_up = self.state == State::Established;
        let mut actions = Vec::new();
        self.enter_idle(&mut actions);
        if was_up {
            let restart = self.negotiated.as_ref().and_then(|n| n.peer_restart.as_ref());
            let keep_routes = restart.is_some_and(|r| !notified || r.notification);
            actions.push(Action::Down { reason: reason.clone(), keep_routes });
            self.error_wait = self.config.error_wait_min;
        }
        self.last_error = Some(reason);
        if !self.stopped {
            self.restart_at = Some(now + self.error_wait);
            self.error_wait = (self.error_wait * 2).min(self.config.error_wait_max);
        }
        actions
    }

    /// The peer ended the session: it closed the connection or sent a NOTIFICATION. As
    /// [`Fsm::fail`], but the peer may come straight back (a restart, a reconfiguration): its
    /// next connection is accepted at once (Active), while our own attempts to connect wait
    /// out the error wait. After an error of ours the session stays Idle for that wait.
    fn peer_ended(&mut self, reason: String, notified: bool, now: Instant) -> Vec<Action> {
        let actions = self.fail(reason, notified, now);
        if let Some(retry) = self.restart_at.take() {
            self.state = State::Active;
            self.connect_retry_at = Some(retry);
        }
        actions
    }

    fn refuse(&mut self, notification: Notification, reason: String, now: Instant) -> Vec<Action> {
        let mut actions = vec![Action::Send(Message::Notification(notification))];
        actions.extend(self.fail(reason, true, now));
        actions
    }

    fn message(&mut self, message: Message, now: Instant) -> Vec<Action> {
        if let Message::Notification(n) = &message {
            let mut reason = format!("peer sent NOTIFICATION {}", n.describe());
            if let Some(text) = n.shutdown_reason().filter(|t| !t.is_empty()) {
                reason.push_str(&format!(": {text}"));
            }
            let hard = n.code == code::CEASE && n.subcode == 9;
            let mut actions = self.peer_ended(reason, true, now);
            if hard {
                // A Hard Reset ends graceful restart (RFC 8538 §3).
                drop_routes(&mut actions);
            }
            return actions;
        }
        let unexpected = |state_subcode: u8, what: &str| {
            Notification { code: code::FSM, subcode: state_subcode, data: Vec::new() }.describe()
                + &format!(" ({what})")
        };
        match (self.state, message) {
            (State::OpenSent, Message::Open(open)) => match self.negotiate(&open) {
                Ok(negotiated) => {
                    self.negotiated = Some(negotiated);
                    self.state = State::OpenConfirm;
                    self.hold_at = self.hold_interval().map(|i| now + i);
                    self.keepalive_at = self.keepalive_interval().map(|i| now + i);
                    vec![Action::Send(Message::Keepalive)]
                }
                Err((notification, reason)) => self.refuse(notification, reason, now),
            },
            (State::OpenConfirm, Message::Keepalive) => {
                self.state = State::Established;
                self.hold_at = self.hold_interval().map(|i| now + i);
                self.error_wait = self.config.error_wait_min;
                self.connect_wait = FIRST_CONNECT_RETRY.min(self.config.connect_retry);
                self.last_error = None;
                vec![Action::Established(self.negotiated.clone().expect("negotiated in OpenSent"))]
            }
            (State::Established, Message::Keepalive) => {
                self.hold_at = self.hold_interval().map(|i| now + i);
                Vec::new()
            }
            (State::Established, Message::Update(update)) => {
                self.hold_at = self.hold_interval().map(|i| now + i);
                vec![Action::Update(update)]
            }
            (State::Established, Message::RouteRefresh(refresh)) => {
                self.hold_at = self.hold_interval().map(|i| now + i);
                vec![Action::RouteRefresh(refresh)]
            }
            (State::OpenSent, other) => {
                let n = Notification { code: code::FSM, subcode: 1, data: Vec::new() };
                self.refuse(n, unexpected(1, &format!("{other:?}")), now)
            }
            (State::OpenConfirm, other) => {
                let n = Notification { code: code::FSM, subcode: 2, data: Vec::new() };
                self.refuse(n, unexpected(2, &format!("{other:?}")), now)
            }
            (State::Established, Message::Open(_)) => {
                let n = Notification { code: code::FSM, subcode: 3, data: Vec::new() };
                self.refuse(n, unexpected(3, "a second OPEN"), now)
            }
            // Nothing should arrive without a connection in these states: ignore it.
            (State::Idle | State::Connect | State::Active, _) => Vec::new(),
            (State::Established, _) => Vec::new(),
        }
    }

    /// Checks the peer's OPEN against our configuration and agrees the session parameters.
    fn negotiate(&self, open: &Open) -> Result<Negotiated, (Notification, String)> {
        let refuse = |subcode: u8, data: Vec<u8>, reason: String| {
            Err((Notification { code: code::OPEN_MESSAGE, subcode, data }, reason))
        };
        let caps: Vec<Capability> = open.capabilities().cloned().collect();
        let four_octet = caps.iter().any(|c| matches!(c, Capability::FourOctetAs(_)));
        let peer_as = open.asn();
        if peer_as != self.config.peer_as {
            let data = u16::try_from(self.config.peer_as).unwrap_or(AS_TRANS).to_be_bytes().to_vec();
            return refuse(
                subcode::BAD_PEER_AS,
                data,
                format!("AS mismatch: peer says AS {peer_as}, configured AS {}", self.config.peer_as),
            );
        }
        if self.config.peer_as > u32::from(u16::MAX) && !four_octet {
            let mut data = Vec::new();
            let mut buf = bytes::BytesMut::new();
            crate::wire::open::put_capability(&Capability::FourOctetAs(self.config.peer_as), &mut buf);
            data.extend_from_slice(&buf);
            return refuse(
                subcode::UNSUPPORTED_CAPABILITY,
                data,
                "the peer's AS needs 4-octet AS numbers, which it does not offer".into(),
            );
        }
        if self.config.is_ibgp() && open.bgp_id == self.config.router_id {
            return refuse(
                subcode::BAD_BGP_IDENTIFIER,
                Vec::new(),
                format!("the peer has our own router ID {}", open.bgp_id),
            );
        }
        let offered: Vec<Family> = caps
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        // A peer without multiprotocol capabilities speaks IPv4 unicast only (RFC 4760 §8).
        let peer_families = if offered.is_empty() { vec![Family::IPV4_UNICAST] } else { offered };
        let families: Vec<Family> =
            self.config.families.iter().copied().filter(|f| peer_families.contains(f)).collect();
        if families.is_empty() {
            let mut buf = bytes::BytesMut::new();
            for f in &self.config.families {
                crate::wire::open::put_capability(&Capability::Multiprotocol(*f), &mut buf);
            }
            return refuse(subcode::UNSUPPORTED_CAPABILITY, buf.to_vec(), "no address family in common".into());
        }
        let peer_restart = caps.iter().find_map(|c| match c {
            Capability::GracefulRestart { restarting, notification, restart_time, families } => Some(PeerRestart {
                restarting: *restarting,
                notification: *notification,
                restart_time: *restart_time,
                families: families.clone(),
            }),
            _ => None,
        });
        Ok(Negotiated {
            peer_as,
            peer_id: open.bgp_id,
            hold_time: self.config.hold_time.min(open.hold_time),
            four_octet_as: four_octet,
            families,
            route_refresh: caps.contains(&Capability::RouteRefresh),
            peer_restart: peer_restart.filter(|_| self.config.graceful_restart.is_some()),
            peer_capabilities: caps,
        })
    }
}

/// Which connection survives a collision (RFC 4271 §6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Survivor {
    /// The connection we opened.
    Outgoing,
    /// The connection the peer opened.
    Incoming,
}

/// Resolves a collision between our connection and the peer's: the side with the higher BGP
/// identifier keeps the connection it opened.
pub fn resolve_collision(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> Survivor {
    if local_id > remote_id { Survivor::Outgoing } else { Survivor::Incoming }
}

/// Makes a session's end drop the peer's routes, whatever graceful restart would keep.
fn drop_routes(actions: &mut [Action]) {
    for action in actions {
        if let Action::Down { keep_routes, .. } = action {
            *keep_routes = false;
        }
    }
}

#[cfg(test)]
mod tests;
