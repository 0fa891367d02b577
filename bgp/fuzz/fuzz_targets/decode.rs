//! Feeds arbitrary bytes to the message decoder under every session context. Whatever
//! decodes must encode again without error, and decode to the same message.
#![no_main]

use brindle_bgp::wire::{self, Codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (four_octet_as, ebgp) in [(true, false), (false, false), (true, true)] {
        let codec = Codec { four_octet_as, ebgp };
        let _ = wire::frame_length(data);
        if let Ok(message) = wire::decode(data, &codec) {
            let mut out = bytes::BytesMut::new();
            if wire::encode(&message, &codec, &mut out).is_ok() {
                let again = wire::decode(&out, &codec).expect("what we encode decodes");
                let mut twice = bytes::BytesMut::new();
                wire::encode(&again, &codec, &mut twice).expect("and encodes again");
                assert_eq!(out, twice, "encoding is stable");
            }
        }
    }
});
