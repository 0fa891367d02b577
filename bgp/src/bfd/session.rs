//! One BFD session in asynchronous mode (RFC 5880 §6.8), sans IO: packets and time go in,
//! packets to send, deadlines and state changes come out.

use std::time::{Duration, Instant};

use super::packet::Control;
use super::{Diagnostic, State};

/// The slowest a session sends while it is not Up (RFC 5880 §6.8.3: at least one second).
const IDLE_TX: Duration = Duration::from_secs(1);

/// A session's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How often we want to send once Up.
    pub desired_min_tx: Duration,
    /// How often we can take the peer's packets.
    pub required_min_rx: Duration,
    /// Missed packets before the path is declared down.
    pub detect_mult: u8,
}

impl Default for Config {
    /// 300 ms both ways, three missed: FRR's defaults, a failure seen in 900 ms.
    fn default() -> Self {
        Config {
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
        }
    }
}

impl Config {
    /// The given settings, each left out taken from [`Config::default`].
    pub fn or_defaults(
        desired_min_tx: Option<Duration>,
        required_min_rx: Option<Duration>,
        detect_mult: Option<u8>,
    ) -> Self {
        let defaults = Config::default();
        Config {
            desired_min_tx: desired_min_tx.unwrap_or(defaults.desired_min_tx),
            required_min_rx: required_min_rx.unwrap_or(defaults.required_min_rx),
            detect_mult: detect_mult.unwrap_or(defaults.detect_mult),
        }
    }
}

/// A state change, reported by [`Session::receive`] and [`Session::on_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The state before.
    pub from: State,
    /// The state now.
    pub to: State,
    /// Why, when the session went down.
    pub diagnostic: Diagnostic,
    /// The peer's state as last heard: AdminDown means the peer took the session down on
    /// purpose, which its clients must not take for a failure (RFC 5882 §3.2).
    pub remote: State,
}

/// The session's variables (RFC 5880 §6.8.1) and its two timers.
#[derive(Debug)]
pub struct Session {
    config: Config,
    local_discriminator: u32,
    state: State,
    diagnostic: Diagnostic,
    remote_discriminator: u32,
    remote_state: State,
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    remote_detect_mult: u8,
    /// The Desired Min TX we advertise and use (one second while not Up).
    desired_min_tx: Duration,
    /// A Poll Sequence is running: packets carry P until the peer answers with F.
    polling: bool,
    /// The peer polled: the next packet carries F, and goes at once.
    answer_final: bool,
    next_transmit: Option<Instant>,
    detect_at: Option<Instant>,
    rng: fastrand::Rng,
}

/// A session's state for people and tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Our state.
    pub state: State,
    /// Why it last went down.
    pub diagnostic: Diagnostic,
    /// The peer's state, as last heard.
    pub remote_state: State,
    /// The interval we send at now (before jitter).
    pub transmit_interval: Duration,
    /// How long without a packet before the path is declared down.
    pub detection_time: Duration,
}

impl Session {
    /// A session in Down, with our discriminator (non-zero, unique on this system) and a seed
    /// for the transmission jitter. It starts sending at `now`.
    pub fn new(config: Config, local_discriminator: u32, seed: u64, now: Instant) -> Session {
        Session {
            config,
            local_discriminator,
            state: State::Down,
            diagnostic: Diagnostic::None,
            remote_discriminator: 0,
            remote_state: State::Down,
            // RFC 5880 §6.8.1: one microsecond until the peer says otherwise.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_min_tx: IDLE_TX,
            remote_detect_mult: config.detect_mult,
            desired_min_tx: config.desired_min_tx.max(IDLE_TX),
            polling: false,
            answer_final: false,
            next_transmit: Some(now),
            detect_at: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Our state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our discriminator.
    pub fn local_discriminator(&self) -> u32 {
        self.local_discriminator
    }

    /// What the session looks like now.
    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            diagnostic: self.diagnostic,
            remote_state: self.remote_state,
            transmit_interval: self.transmit_interval(),
            detection_time: self.detection_time(),
        }
    }

    /// The earliest time [`Session::on_timer`] or [`Session::transmit`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.next_transmit, self.detect_at].into_iter().flatten().min()
    }

    /// A packet from the peer (already checked by [`Control::decode`] and matched to this
    /// session), at `now` (RFC 5880 §6.8.6).
    pub fn receive(&mut self, packet: &Control, now: Instant) -> Option<Change> {
        self.remote_discriminator = packet.my_discriminator;
        self.remote_state = packet.state;
        self.remote_min_rx = packet.required_min_rx;
        self.remote_desired_min_tx = packet.desired_min_tx;
        self.remote_detect_mult = packet.detect_mult;
        if packet.final_ {
            self.polling = false;
        }
        if packet.poll {
            self.answer_final = true;
            self.next_transmit = Some(now);
        }
        if self.state == State::AdminDown {
            return None;
        }
        self.detect_at = Some(now + self.detection_time());
        let to = match (self.state, packet.state) {
            (State::Down, State::AdminDown) => None,
            (_, State::AdminDown) | (State::Up, State::Down) => Some((State::Down, Diagnostic::NeighborSignaledDown)),
            (State::Down, State::Down) => Some((State::Init, Diagnostic::None)),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => Some((State::Up, Diagnostic::None)),
            _ => None,
        };
        to.map(|(to, diagnostic)| self.enter(to, diagnostic, now))
    }

    /// Handles the detection timer at `now`: no packet for the detection time takes an Init or
    /// Up session Down.
    pub fn on_timer(&mut self, now: Instant) -> Option<Change> {
        if self.detect_at.is_none_or(|at| at > now) {
            return None;
        }
        self.detect_at = None;
        // RFC 5880 §6.8.1: the peer's discriminator is forgotten when the detection time passes.
        self.remote_discriminator = 0;
        self.remote_state = State::Down;
        matches!(self.state, State::Init | State::Up)
            .then(|| self.enter(State::Down, Diagnostic::ControlDetectionTimeExpired, now))
    }

    /// The packet to send at `now`, if one is due; the next is scheduled with RFC 5880
    /// §6.8.7's jitter (75 to 100 % of the interval, up to 90 % with a multiplier of 1).
    pub fn transmit(&mut self, now: Instant) -> Option<Control> {
        if self.next_transmit.is_none_or(|at| at > now) {
            return None;
        }
        // A peer that asks for no packets (Required Min RX 0) gets none but Finals.
        let periodic = !self.remote_min_rx.is_zero();
        let packet = (periodic || self.answer_final).then(|| self.packet());
        self.answer_final = false;
        let interval = self.transmit_interval();
        let top = if self.config.detect_mult == 1 { 90 } else { 100 };
        let percent = self.rng.u32(75..=top);
        self.next_transmit = Some(now + interval * percent / 100);
        packet
    }

    /// The AdminDown packet to send when the session is removed (RFC 5880 §6.8.16), so the
    /// peer sees a decision, not a failure.
    pub fn admin_down(&mut self) -> Control {
        self.state = State::AdminDown;
        self.diagnostic = Diagnostic::AdministrativelyDown;
        self.packet()
    }

    fn packet(&self) -> Control {
        Control {
            diagnostic: self.diagnostic,
            state: self.state,
            poll: self.polling && !self.answer_final,
            final_: self.answer_final,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.config.detect_mult,
            my_discriminator: self.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx: self.desired_min_tx,
            required_min_rx: self.config.required_min_rx,
            required_min_echo_rx: Duration::ZERO,
        }
    }

    fn transmit_interval(&self) -> Duration {
        self.desired_min_tx.max(self.remote_min_rx)
    }

    /// RFC 5880 §6.8.4, asynchronous mode: the peer's multiplier times the slower of what we
    /// can take and what it sends at.
    fn detection_time(&self) -> Duration {
        self.config.required_min_rx.max(self.remote_desired_min_tx) * u32::from(self.remote_detect_mult)
    }

    fn enter(&mut self, to: State, diagnostic: Diagnostic, now: Instant) -> Change {
        let from = self.state;
        self.state = to;
        if to == State::Down {
            self.diagnostic = diagnostic;
            self.detect_at = None;
        } else if to == State::Up {
            // Up: the configured rate, announced with a Poll Sequence (§6.8.3).
            if self.desired_min_tx != self.config.desired_min_tx {
                self.desired_min_tx = self.config.desired_min_tx;
                self.polling = true;
            }
        }
        if from == State::Up {
            self.desired_min_tx = self.config.desired_min_tx.max(IDLE_TX);
            self.polling = false;
        }
        // The peer learns of a change at once, not at the next interval.
        self.next_transmit = Some(now);
        Change { from, to, diagnostic: self.diagnostic, remote: self.remote_state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Config = Config {
        desired_min_tx: Duration::from_millis(100),
        required_min_rx: Duration::from_millis(100),
        detect_mult: 3,
    };

    /// Runs two sessions against each other for `duration`, delivering every packet at once.
    fn exchange(a: &mut Session, b: &mut Session, start: Instant, duration: Duration) -> Instant {
        fn step(from: &mut Session, to: &mut Session, now: Instant) {
            from.on_timer(now);
            if let Some(p) = from.transmit(now) {
                to.receive(&Control::decode(&p.encode()).unwrap(), now);
            }
        }
        let mut now = start;
        while now < start + duration {
            step(a, b, now);
            step(b, a, now);
            now += Duration::from_millis(10);
        }
        now
    }

    #[test]
    fn two_sessions_come_up_by_the_three_way_handshake_and_speed_up_with_a_poll() {
        let start = Instant::now();
        let mut a = Session::new(FAST, 1, 1, start);
        let mut b = Session::new(FAST, 2, 2, start);
        let first = a.transmit(start).unwrap();
        assert_eq!((first.state, first.your_discriminator), (State::Down, 0));
        assert_eq!(first.desired_min_tx, IDLE_TX, "one second until Up");
        assert_eq!(b.receive(&first, start).map(|c| c.to), Some(State::Init));
        let init = b.transmit(start).unwrap();
        assert_eq!((init.state, init.your_discriminator), (State::Init, 1));
        assert_eq!(a.receive(&init, start).map(|c| c.to), Some(State::Up));
        let up = a.transmit(start).unwrap();
        assert!(up.poll, "the faster rate is announced with a Poll");
        assert_eq!(up.desired_min_tx, FAST.desired_min_tx);
        assert_eq!(b.receive(&up, start).map(|c| c.to), Some(State::Up));
        let answer = b.transmit(start).unwrap();
        assert!(answer.final_ && !answer.poll);
        a.receive(&answer, start);
        exchange(&mut a, &mut b, start, Duration::from_secs(3));
        assert_eq!((a.state(), b.state()), (State::Up, State::Up));
        assert_eq!(a.status().transmit_interval, Duration::from_millis(100));
        assert_eq!(a.status().detection_time, Duration::from_millis(300));
    }

    #[test]
    fn silence_for_the_detection_time_takes_the_session_down() {
        let start = Instant::now();
        let (mut a, mut b) = (Session::new(FAST, 1, 1, start), Session::new(FAST, 2, 2, start));
        let now = exchange(&mut a, &mut b, start, Duration::from_secs(3));
        assert_eq!(a.state(), State::Up);
        // b goes silent: a sees it within 3 x 100 ms of b's last packet.
        assert_eq!(a.on_timer(now + Duration::from_millis(200)), None);
        let change = a.on_timer(now + Duration::from_millis(300)).expect("down");
        assert_eq!((change.from, change.to), (State::Up, State::Down));
        assert_eq!(change.diagnostic, Diagnostic::ControlDetectionTimeExpired);
        let next = a.transmit(now + Duration::from_millis(300)).unwrap();
        assert_eq!((next.state, next.your_discriminator, next.desired_min_tx), (State::Down, 0, IDLE_TX));
    }

    #[test]
    fn a_peer_saying_down_or_admin_down_takes_the_session_down_and_it_comes_back() {
        let start = Instant::now();
        let (mut a, mut b) = (Session::new(FAST, 1, 1, start), Session::new(FAST, 2, 2, start));
        let now = exchange(&mut a, &mut b, start, Duration::from_secs(3));
        let admin = b.admin_down();
        let change = a.receive(&admin, now).unwrap();
        assert_eq!((change.to, change.diagnostic), (State::Down, Diagnostic::NeighborSignaledDown));
        assert_eq!(change.remote, State::AdminDown, "a decision, not a failure");
        assert_eq!(a.receive(&admin, now), None, "AdminDown does not bring Down up");
        let mut c = Session::new(FAST, 3, 3, now);
        exchange(&mut a, &mut c, now, Duration::from_secs(3));
        assert_eq!((a.state(), c.state()), (State::Up, State::Up), "a restarted peer is taken back");
    }

    #[test]
    fn packets_go_at_the_slower_rate_with_jitter() {
        let start = Instant::now();
        let slow = Config { required_min_rx: Duration::from_millis(500), ..FAST };
        let (mut a, mut b) = (Session::new(FAST, 1, 1, start), Session::new(slow, 2, 2, start));
        let now = exchange(&mut a, &mut b, start, Duration::from_secs(5));
        assert_eq!(a.status().transmit_interval, Duration::from_millis(500), "b takes one each 500 ms");
        let mut sent = Vec::new();
        let mut t = now;
        while sent.len() < 50 {
            if a.transmit(t).is_some() {
                sent.push(t);
            }
            t += Duration::from_millis(1);
        }
        let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g >= Duration::from_millis(375) && *g <= Duration::from_millis(501)), "{gaps:?}");
        assert!(gaps.iter().any(|g| *g < Duration::from_millis(450)), "jittered: {gaps:?}");
    }
}
