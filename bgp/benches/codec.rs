//! UPDATE decoding and encoding, in prefixes per second: full UPDATEs of /24s with a typical
//! iBGP attribute set, the shape a full table arrives in.

use std::net::Ipv4Addr;

use brindle_bgp::wire::{self, AsPath, Attribute, Codec, Message, Origin, Update, Value};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnetwork::IpNetwork;

fn full_update() -> Update {
    let attributes = vec![
        Attribute::new(Value::Origin(Origin::Igp)),
        Attribute::new(Value::AsPath(AsPath::sequence(vec![65001, 65002, 65003]))),
        Attribute::new(Value::NextHop(Ipv4Addr::new(10, 0, 0, 1))),
        Attribute::new(Value::Med(10)),
        Attribute::new(Value::LocalPref(100)),
        Attribute::new(Value::Communities(vec![0xfc00_0001, 0xfc00_0002])),
    ];
    let mut update = Update { attributes: attributes.into(), ..Update::default() };
    let codec = Codec { four_octet_as: true, ebgp: false };
    // As many /24s as fit in one message.
    for i in 0u32.. {
        let prefix = IpNetwork::new(Ipv4Addr::from(0x1000_0000 + (i << 8)).into(), 24).unwrap();
        update.nlri.push(prefix);
        let mut out = BytesMut::new();
        if wire::encode(&Message::Update(update.clone()), &codec, &mut out).is_err() {
            update.nlri.pop();
            break;
        }
    }
    update
}

fn codec(c: &mut Criterion) {
    let codec = Codec { four_octet_as: true, ebgp: false };
    let update = full_update();
    let prefixes = update.nlri.len() as u64;
    let message = Message::Update(update);
    let mut bytes = BytesMut::new();
    wire::encode(&message, &codec, &mut bytes).unwrap();
    let mut group = c.benchmark_group("update");
    group.throughput(Throughput::Elements(prefixes));
    group.bench_function("decode", |b| b.iter(|| wire::decode(&bytes, &codec).unwrap()));
    group.bench_function("encode", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(4096);
            wire::encode(&message, &codec, &mut out).unwrap();
            out
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
