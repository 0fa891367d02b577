//! Messages captured from real BIRD 2 and GoBGP 3 sessions must parse cleanly and encode back
//! to the same bytes.
//!
//! `captured_fixtures_round_trip` checks the stored captures in `tests/fixtures/`. The live
//! tests take fresh captures: the test plays a minimal passive BGP peer on loopback, lets the
//! reference speaker connect and send its table, and checks every message it sent. Run them
//! with `BRINDLE_UPDATE_FIXTURES=1` to store what they captured as the new fixtures.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use brindle_bgp::fsm;
use brindle_bgp::wire::{self, Codec, Family, Message};
use bytes::BytesMut;

const CODEC: Codec = Codec { four_octet_as: true, ebgp: false };

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Splits a capture into messages.
fn frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Ok(Some(len)) = wire::frame_length(bytes) {
        if bytes.len() < len {
            break;
        }
        out.push(&bytes[..len]);
        bytes = &bytes[len..];
    }
    assert!(bytes.is_empty(), "trailing bytes in a capture");
    out
}

/// Every message parses without RFC 7606 complaints and encodes back to the same bytes.
fn check_round_trip(name: &str, capture: &[u8]) -> usize {
    let frames = frames(capture);
    for (i, frame) in frames.iter().enumerate() {
        let message = wire::decode(frame, &CODEC).unwrap_or_else(|e| panic!("{name} message {i}: {e}"));
        if let Message::Update(u) = &message {
            assert!(u.errors.is_empty(), "{name} message {i}: {:?}", u.errors);
        }
        let mut out = BytesMut::new();
        wire::encode(&message, &CODEC, &mut out).unwrap();
        assert_eq!(&out[..], *frame, "{name} message {i} did not survive the round trip: {message:?}");
    }
    frames.len()
}

#[test]
fn captured_fixtures_round_trip() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).expect("tests/fixtures") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bgp") {
            let bytes = std::fs::read(&path).unwrap();
            checked += check_round_trip(&path.display().to_string(), &bytes);
        }
    }
    assert!(checked >= 10, "only {checked} captured messages");
}

/// Accepts one connection on `listener`, completes the OPEN exchange, and records every
/// message the peer sends until it has sent End-of-RIB for IPv4 and IPv6.
fn capture(listener: TcpListener, log: &common::Process) -> Vec<u8> {
    listener.set_nonblocking(true).unwrap();
    let (mut stream, _) = common::wait_for(Duration::from_secs(20), "the reference speaker to connect", || {
        let accepted = listener.accept().ok();
        if accepted.is_none() && !log.log().is_empty() {
            eprintln!("{}", log.log());
        }
        accepted
    });
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut open = fsm::Config::new(64512, 64512, Ipv4Addr::new(127, 0, 0, 1));
    open.graceful_restart = Some(120);
    let mut out = BytesMut::new();
    wire::encode(&Message::Open(open.open()), &CODEC, &mut out).unwrap();
    wire::encode(&Message::Keepalive, &CODEC, &mut out).unwrap();
    stream.write_all(&out).unwrap();
    let mut captured = Vec::new();
    let mut buffer = Vec::new();
    let mut eor = (false, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(eor.0 && eor.1) && Instant::now() < deadline {
        let mut chunk = [0u8; 8192];
        let n = read_some(&mut stream, &mut chunk);
        buffer.extend_from_slice(&chunk[..n]);
        while let Ok(Some(len)) = wire::frame_length(&buffer) {
            if buffer.len() < len {
                break;
            }
            let frame: Vec<u8> = buffer.drain(..len).collect();
            if let Ok(Message::Update(u)) = wire::decode(&frame, &CODEC) {
                match u.end_of_rib() {
                    Some(Family::IPV4_UNICAST) => eor.0 = true,
                    Some(Family::IPV6_UNICAST) => eor.1 = true,
                    _ => {}
                }
            }
            if let Ok(Message::Keepalive) = wire::decode(&frame, &CODEC) {
                let mut k = BytesMut::new();
                wire::encode(&Message::Keepalive, &CODEC, &mut k).unwrap();
                let _ = stream.write_all(&k);
            }
            captured.extend_from_slice(&frame);
        }
    }
    assert!(eor.0 && eor.1, "no End-of-RIB for both families");
    captured
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> usize {
    stream.read(buf).expect("read from the reference speaker")
}

fn store(name: &str, capture: &[u8]) {
    if std::env::var_os("BRINDLE_UPDATE_FIXTURES").is_some() {
        std::fs::write(fixtures().join(name), capture).unwrap();
    }
}

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[test]
fn live_capture_from_bird() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, port) = listener();
    let local_port = listener_port_free();
    let config = format!(
        "router id 127.0.0.2;\nprotocol device {{}}\n\
         protocol static s4 {{ ipv4; route 192.168.0.0/24 blackhole {{ bgp_community.add((64512, 7)); bgp_large_community.add((64512, 1, 2)); bgp_med = 50; }}; \
         route 192.168.1.0/26 blackhole; route 10.0.0.0/8 blackhole {{ bgp_path.prepend(65010); bgp_origin = ORIGIN_INCOMPLETE; }}; }}\n\
         protocol static s6 {{ ipv6; route fd00:1::/64 blackhole; route fd00:2::/48 blackhole {{ bgp_community.add((64512, 9)); }}; }}\n\
         protocol bgp capture {{ local 127.0.0.2 port {local_port} as 64512; neighbor 127.0.0.1 port {port} as 64512; \
         graceful restart on; ipv4 {{ export all; import none; next hop address 192.0.2.2; }}; ipv6 {{ export all; import none; next hop address fd00::2; }}; }}\n"
    );
    let path = dir.path().join("bird.conf");
    std::fs::write(&path, config).unwrap();
    let mut cmd = std::process::Command::new("bird");
    cmd.arg("-f")
        .arg("-c")
        .arg(&path)
        .arg("-s")
        .arg(dir.path().join("bird.ctl"))
        .arg("-P")
        .arg(dir.path().join("bird.pid"));
    let bird = common::Process::spawn(cmd, dir.path().join("bird.log"));
    let captured = capture(listener, &bird);
    assert!(check_round_trip("BIRD", &captured) >= 5);
    store("bird-2.0.12.bgp", &captured);
}

#[test]
fn live_capture_from_gobgp() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, port) = listener();
    let api = listener_port_free();
    let config = format!(
        "[global.config]\n  as = 64512\n  router-id = \"127.0.0.3\"\n  port = -1\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"127.0.0.1\"\n    peer-as = 64512\n\
         [neighbors.transport.config]\n    remote-port = {port}\n    local-address = \"127.0.0.3\"\n\
         [neighbors.graceful-restart.config]\n    enabled = true\n\
         [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv4-unicast\"\n\
         [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv6-unicast\"\n"
    );
    let path = dir.path().join("gobgp.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = std::process::Command::new("gobgpd");
    cmd.arg("-f").arg(&path).args(["-p", "--pprof-disable", "--api-hosts"]).arg(format!("127.0.0.1:{api}"));
    let gobgp = common::Process::spawn(cmd, dir.path().join("gobgp.log"));
    let cli = |args: &[&str]| {
        common::wait_for(Duration::from_secs(10), "gobgp cli", || {
            let ok = std::process::Command::new("gobgp")
                .args(["-u", "127.0.0.1", "-p", &api.to_string()])
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(())
        })
    };
    cli(&[
        "global",
        "rib",
        "add",
        "192.168.50.0/24",
        "nexthop",
        "192.0.2.3",
        "community",
        "64512:5",
        "med",
        "20",
        "-a",
        "ipv4",
    ]);
    cli(&[
        "global",
        "rib",
        "add",
        "192.168.51.0/25",
        "nexthop",
        "192.0.2.3",
        "large-community",
        "64512:3:4",
        "-a",
        "ipv4",
    ]);
    cli(&["global", "rib", "add", "fd00:50::/64", "nexthop", "fd00::3", "-a", "ipv6"]);
    let captured = capture(listener, &gobgp);
    assert!(check_round_trip("GoBGP", &captured) >= 4);
    store("gobgp-3.10.bgp", &captured);
}

fn listener_port_free() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
