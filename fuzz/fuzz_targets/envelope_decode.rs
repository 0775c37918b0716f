//! Any byte string given to the envelope decoder yields an envelope or a typed error, never a
//! panic; whatever decodes re-encodes to a frame that decodes to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rainstorm_core::wire::{ClusterKey, Codec, MAX_DATAGRAM_BYTES, MAX_STREAM_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    let plain = Codec::plain();
    for limit in [MAX_DATAGRAM_BYTES, MAX_STREAM_FRAME_BYTES] {
        if let Ok(envelope) = plain.decode(data, limit) {
            let again = plain.encode(&envelope, limit).expect("a decoded envelope re-encodes");
            assert_eq!(plain.decode(&again, limit).expect("re-encoded frame decodes"), envelope);
        }
    }
    let keyed = Codec::keyed(ClusterKey::from_passphrase("fuzz"), vec![]);
    let _ = keyed.decode(data, MAX_DATAGRAM_BYTES);
});
