//! A raw BGP peer for driving `brindle-bgp run` through exact message sequences: one passive
//! iBGP peer on loopback inside a namespace of its own.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use brindle_bgp::attrs::PathAttrs;
use brindle_bgp::fsm;
use brindle_bgp::wire::{self, Codec, Message, Update};
use bytes::BytesMut;

use super::{Brindle, Netns};

pub const CODEC: Codec = Codec { four_octet_as: true, ebgp: false };
/// The speaker listens here; the peer connects from 127.0.0.1, the source loopback gives.
pub const SPEAKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
pub const PEER: &str = "127.0.0.1";
pub const ROUTE: &str = "10.1.0.0/24";

/// The speaker in a namespace of its own, with `PEER` as its one passive iBGP peer (`extra`:
/// more of that peer's settings, TOML lines).
pub fn speaker(dir: &std::path::Path, extra: &str) -> (Netns, Brindle) {
    let ns = Netns::new("reco");
    let config = format!(
        "asn = 64512\nrouter_id = \"10.0.0.1\"\nlisten = \"{SPEAKER}:179\"\n\
         [[peers]]\naddress = \"{PEER}\"\nasn = 64512\npassive = true\n{extra}"
    );
    let brindle = Brindle::start(&ns, dir, "speaker", &config);
    (ns, brindle)
}

/// One connection of the raw peer.
pub struct Peer {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Peer {
    /// Connects from `PEER` inside `ns` and sends our OPEN (offering graceful restart or not)
    /// and a KEEPALIVE.
    pub fn connect(ns: &Netns, graceful: bool) -> Peer {
        let stream = ns.run(|| TcpStream::connect((SPEAKER, 179)).expect("connecting to the speaker"));
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut config = fsm::Config::new(64512, 64512, Ipv4Addr::new(10, 0, 0, 2));
        config.graceful_restart = graceful.then_some(120);
        let mut peer = Peer { stream, buffer: Vec::new() };
        peer.send(&[Message::Open(config.open()), Message::Keepalive]);
        peer
    }

    pub fn send(&mut self, messages: &[Message]) {
        let mut out = BytesMut::new();
        for m in messages {
            wire::encode(m, &CODEC, &mut out).unwrap();
        }
        self.stream.write_all(&out).unwrap();
    }

    /// The next message, or `None` when the speaker closed the connection; a speaker silent
    /// for 10 s fails the test.
    pub fn next(&mut self) -> Option<Message> {
        loop {
            if let Ok(Some(len)) = wire::frame_length(&self.buffer)
                && self.buffer.len() >= len
            {
                let frame: Vec<u8> = self.buffer.drain(..len).collect();
                return Some(wire::decode(&frame, &CODEC).unwrap());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    panic!("nothing from the speaker in 10 s")
                }
                Err(_) => return None,
            }
        }
    }

    /// The speaker's next NOTIFICATION, passing over other messages; a connection closed
    /// without one fails the test.
    pub fn notification(&mut self) -> wire::Notification {
        loop {
            match self.next() {
                Some(Message::Notification(n)) => return n,
                Some(_) => {}
                None => panic!("closed without a NOTIFICATION"),
            }
        }
    }

    /// Waits for the speaker's OPEN and KEEPALIVE: the session is up on this connection. A
    /// NOTIFICATION instead is returned as the error.
    pub fn established(&mut self) -> Result<(), wire::Notification> {
        let mut opened = false;
        loop {
            match self.next() {
                Some(Message::Open(_)) => opened = true,
                Some(Message::Keepalive) if opened => return Ok(()),
                Some(Message::Notification(n)) => return Err(n),
                Some(_) => {}
                None => panic!("the speaker closed the connection without a NOTIFICATION"),
            }
        }
    }

    /// Announces `ROUTE`.
    pub fn announce(&mut self) {
        self.announce_all(&[ROUTE.parse().unwrap()]);
    }

    /// Announces `prefixes` in one UPDATE.
    pub fn announce_all(&mut self, prefixes: &[ipnetwork::IpNetwork]) {
        let attributes = PathAttrs { local_pref: Some(100), ..PathAttrs::local(Some("192.0.2.1".parse().unwrap())) }
            .to_attributes(true, true);
        let update = Update {
            withdrawn: Vec::new(),
            attributes: attributes.into(),
            nlri: prefixes.to_vec(),
            errors: Vec::new(),
        };
        self.send(&[Message::Update(update)]);
    }
}

pub fn wait_established(brindle: &Brindle, with_route: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(brindle.peer(PEER).0 == "Established" && brindle.has_route(ROUTE) == with_route) {
        assert!(
            Instant::now() < deadline,
            "the session is {:?}, the routes {:?} (want {ROUTE}: {with_route}): {}",
            brindle.peer(PEER),
            brindle.best_routes(),
            brindle.process.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
