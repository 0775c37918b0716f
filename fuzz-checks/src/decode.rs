//! The wire decoders: the envelope as a whole ([`envelope_decode`]) and each layer's message
//! decoder reached past the frame checks ([`membership_decode`], [`hydfs_decode`],
//! [`rainstorm_decode`]): the fuzzer's bytes become a layer's message inside a frame with a
//! valid header, a fixed sender, that layer's [`Body`] variant and a correct CRC32C trailer.
//!
//! Checked: decoding returns a value or a typed error, never panics; behind a valid frame the
//! only error is [`WireError::Malformed`]; whatever decodes re-encodes (to the size
//! [`payload_size`] predicts) and decodes to the same value.

use rainstorm_core::replay::FrameSeq;
use rainstorm_core::wire::{
    canonical_bytes, payload_size, Body, ClusterKey, Codec, WireError, MAX_DATAGRAM_BYTES,
    MAX_STREAM_FRAME_BYTES,
};
use rainstorm_core::{Lane, MemberId, NodeAddr};
use std::net::SocketAddr;

/// `envelope_decode`: any bytes as a whole frame, plain and keyed.
pub fn envelope_decode(data: &[u8]) {
    let plain = Codec::plain();
    for limit in [MAX_DATAGRAM_BYTES, MAX_STREAM_FRAME_BYTES] {
        if let Ok(envelope) = plain.decode(data, limit) {
            let again = plain.encode(&envelope, limit).expect("a decoded envelope re-encodes");
            assert_eq!(plain.decode(&again, limit).expect("re-encoded frame decodes"), envelope);
        }
    }
    let keyed = Codec::keyed(ClusterKey::from_passphrase("fuzz"), vec![]);
    if let Ok(envelope) = keyed.decode(data, MAX_DATAGRAM_BYTES) {
        let again = keyed.encode(&envelope, MAX_DATAGRAM_BYTES).expect("a decoded envelope re-encodes");
        assert_eq!(keyed.decode(&again, MAX_DATAGRAM_BYTES), Ok(envelope));
    }
}

/// A protocol layer: one variant of [`Body`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Membership,
    Hydfs,
    Rainstorm,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Membership, Layer::Hydfs, Layer::Rainstorm];

    /// The index of the layer's [`Body`] variant, which the encoding writes (a variable-length
    /// `u32`, one byte) between the frame number and the message.
    pub fn tag(self) -> u32 {
        match self {
            Layer::Membership => 0,
            Layer::Hydfs => 1,
            Layer::Rainstorm => 2,
        }
    }

    pub fn of(body: &Body) -> Layer {
        match body {
            Body::Membership(_) => Layer::Membership,
            Body::Hydfs(_) => Layer::Hydfs,
            Body::Rainstorm(_) => Layer::Rainstorm,
        }
    }
}

/// The sender of the frames the layer targets build.
pub fn sender() -> MemberId {
    MemberId::new(SocketAddr::from(([127, 0, 0, 1], 7001)), 1_000)
}

/// The node the frames the layer targets build are addressed to.
pub fn receiver() -> NodeAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000))
}

/// A plain frame on the control lane from `from` to [`receiver`] (frame number 1) whose body is
/// `layer`'s variant holding `message`, bytes as given.
pub fn layer_frame(layer: Layer, from: MemberId, message: &[u8]) -> Vec<u8> {
    layer_frame_with(&Codec::plain(), layer, (from, receiver()), Lane::Control, FrameSeq(1), message)
}

/// A frame from `from` to `to` on `lane`, numbered `seq` and framed by `codec` (signed under its
/// current key, if any), whose body is `layer`'s variant holding `message`, bytes as given.
pub fn layer_frame_with(
    codec: &Codec,
    layer: Layer,
    (from, to): (MemberId, NodeAddr),
    lane: Lane,
    seq: FrameSeq,
    message: &[u8],
) -> Vec<u8> {
    let mut payload = canonical_bytes(&from);
    payload.extend_from_slice(&canonical_bytes(&to));
    payload.extend_from_slice(&canonical_bytes(&seq));
    payload.extend_from_slice(&canonical_bytes(&layer.tag()));
    payload.extend_from_slice(message);
    codec.frame_raw(lane, &payload)
}

/// The encoding of the message inside `body`: what a layer target's input is.
pub fn message_bytes(body: &Body) -> Vec<u8> {
    match body {
        Body::Membership(m) => canonical_bytes(m),
        Body::Hydfs(m) => canonical_bytes(m),
        Body::Rainstorm(m) => canonical_bytes(m),
    }
}

/// `membership_decode`.
pub fn membership_decode(data: &[u8]) {
    layer_decode(Layer::Membership, data);
}

/// `hydfs_decode`.
pub fn hydfs_decode(data: &[u8]) {
    layer_decode(Layer::Hydfs, data);
}

/// `rainstorm_decode`.
pub fn rainstorm_decode(data: &[u8]) {
    layer_decode(Layer::Rainstorm, data);
}

fn layer_decode(layer: Layer, data: &[u8]) {
    let frame = layer_frame(layer, sender(), data);
    let plain = Codec::plain();
    let decoded = plain.decode(&frame, MAX_STREAM_FRAME_BYTES);
    // Decoded from its own buffer (a large frame checked apart, whose bulk field becomes a view
    // of the frame), the frame gives the same answer.
    let verified =
        plain.verify(frame.clone(), MAX_STREAM_FRAME_BYTES).expect("a valid frame passes its checks");
    assert_eq!(
        plain.decode_verified(&verified, MAX_STREAM_FRAME_BYTES),
        decoded,
        "decoded from its own buffer"
    );
    if frame.len() <= MAX_DATAGRAM_BYTES {
        assert_eq!(plain.decode(&frame, MAX_DATAGRAM_BYTES), decoded, "the limit changed the result");
    }
    let envelope = match decoded {
        Ok(envelope) => envelope,
        Err(WireError::Malformed(reason)) => {
            assert!(!reason.is_empty(), "a malformed payload is explained");
            return;
        }
        Err(e) => panic!("a valid frame was rejected before its payload: {e}"),
    };
    assert_eq!((envelope.from, envelope.to), (sender(), receiver()));
    assert_eq!(Layer::of(&envelope.body), layer);
    let again = plain.encode(&envelope, MAX_STREAM_FRAME_BYTES).expect("a decoded envelope re-encodes");
    assert_eq!(again.len(), payload_size(&envelope) + plain.overhead());
    assert_eq!(again, layer_frame(layer, sender(), &message_bytes(&envelope.body)));
    assert_eq!(plain.decode(&again, MAX_STREAM_FRAME_BYTES), Ok(envelope), "a re-encoded message decodes");
}
