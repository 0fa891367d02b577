//! Receiving a table, in prefixes per second: the UPDATE stream of a full-table sender (250
//! attribute sets, the prefix-length mix of `bench/bgp-receive.sh`) decoded as a session
//! decodes it and applied to an empty RIB. The sender packs UPDATEs as BIRD does while its
//! table loads: a few prefixes each (2.4 on average in `bench/bgp-receive.sh`; 1 to 4 here),
//! so the cost per UPDATE counts as much as the cost per prefix. This is the speaker's share
//! of the receive benchmark without the sockets; it counts the same work under
//! `valgrind --tool=callgrind` run to run.

use std::net::{IpAddr, Ipv4Addr};

use brindle_bgp::rib::{PeerConfig, PeerSession, PrefixFilter, Rib};
use brindle_bgp::wire::update::AttributeCache;
use brindle_bgp::wire::{self, AsPath, Attribute, Codec, Family, Message, Origin, Update, Value};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnetwork::IpNetwork;

const PREFIXES: u32 = 200_000;
const SETS: u32 = 250;
const CODEC: Codec = Codec { four_octet_as: true, ebgp: false };
/// UPDATEs handed over together (one 64 KiB read holds several hundred this small).
const BATCH: usize = 512;

/// The attribute set `set` of the sender: a community, a MED and an AS path of its own.
fn attributes(set: u32) -> Vec<Attribute> {
    vec![
        Attribute::new(Value::Origin(Origin::Igp)),
        Attribute::new(Value::AsPath(AsPath::sequence(vec![65000 + set % 50]))),
        Attribute::new(Value::NextHop(Ipv4Addr::new(10, 77, 0, 1))),
        Attribute::new(Value::Med(set % 7)),
        Attribute::new(Value::LocalPref(100)),
        Attribute::new(Value::Communities(vec![(64512 << 16) | set])),
    ]
}

/// Route `i`: one /24 slot each from 16.0.0.0, 60% /24, 20% /23, 10% /22, 10% /20.
fn prefix(i: u32) -> IpNetwork {
    let len = match i % 10 {
        0..=5 => 24,
        6 | 7 => 23,
        8 => 22,
        _ => 20,
    };
    let base = (16 << 24) + (i << 8);
    IpNetwork::new(Ipv4Addr::from(base & (u32::MAX << (32 - len))).into(), len).expect("valid")
}

/// The sender's messages, each encoded: per attribute set, UPDATEs of 1, 2, 3, 4, 1, ...
/// prefixes.
fn stream() -> Vec<Vec<u8>> {
    let per_set = PREFIXES.div_ceil(SETS);
    let mut frames = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for set in 0..SETS {
        let mut update = Update { attributes: attributes(set).into(), ..Update::default() };
        let prefixes = (set * per_set..((set + 1) * per_set).min(PREFIXES)).map(prefix).filter(|p| seen.insert(*p));
        for p in prefixes {
            update.nlri.push(p);
            if update.nlri.len() > frames.len() % 4 {
                frames.push(encoded(&update));
                update.nlri.clear();
            }
        }
        if !update.nlri.is_empty() {
            frames.push(encoded(&update));
        }
    }
    frames
}

fn encoded(update: &Update) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::encode(&Message::Update(update.clone()), &CODEC, &mut out).expect("fits");
    out.to_vec()
}

/// Decodes every frame with one session's attribute cache and applies it to a fresh RIB.
fn receive(frames: &[Vec<u8>]) -> Rib {
    let mut rib = Rib::new(64512, Ipv4Addr::new(10, 77, 0, 2), None);
    let peer = rib.add_peer(PeerConfig {
        address: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)),
        peer_as: 64512,
        rr_client: false,
        import: PrefixFilter::default(),
        export: PrefixFilter::default(),
        keep_next_hop: false,
        local_as: None,
        allow_local_as: 0,
    });
    rib.peer_up(
        peer,
        PeerSession {
            router_id: Ipv4Addr::new(10, 77, 0, 1),
            local_v4: Some(Ipv4Addr::new(10, 77, 0, 2)),
            local_v6: None,
            families: vec![Family::IPV4_UNICAST],
            four_octet_as: true,
        },
    );
    let mut cache = AttributeCache::default();
    let mut changes = Vec::new();
    // As the session and the speaker do: the UPDATEs of one read are decoded, their table
    // entries looked up together, then applied, and their changes go out together.
    for batch in frames.chunks(BATCH) {
        let updates: Vec<Update> = batch
            .iter()
            .map(|frame| match wire::decode_cached(frame, &CODEC, &mut cache) {
                Ok(Message::Update(update)) => update,
                other => panic!("the stream holds UPDATEs only, not {other:?}"),
            })
            .collect();
        updates.iter().for_each(|u| rib.prefetch(u));
        for update in &updates {
            rib.update(peer, update, &mut changes);
        }
        // Nothing to export here (the one peer is the sender), as in the receive benchmark.
        std::hint::black_box(rib.exports(&changes));
        changes.clear();
    }
    rib
}

fn table(c: &mut Criterion) {
    let frames = stream();
    let held = receive(&frames).len();
    let mut group = c.benchmark_group("receive");
    group.sample_size(10);
    group.throughput(Throughput::Elements(held as u64));
    group.bench_function("table", |b| b.iter(|| receive(&frames)));
    group.finish();
}

criterion_group!(benches, table);
criterion_main!(benches);
