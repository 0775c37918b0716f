//! The wire format: one versioned envelope for every layer's messages.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "RS"
//! 2       1     format version ([`WIRE_VERSION`], currently 17)
//! 3       1     flags: bit 0 set = trailer is a keyed BLAKE3 tag, clear = CRC32C
//! 4       1     lane: 0 control, 1 data, 2 bulk (always 0 on datagrams)
//! 5       4     payload length, little endian
//! 9       4     bulk length b, little endian: the payload's last b bytes are a bulk field's
//! 13      len   payload: the bincode-encoded [`Envelope`] (variable-length integers)
//! 13+len  4|32  trailer: CRC32C over bytes [0, 13+len), or the keyed BLAKE3 tag
//! ```
//!
//! The tag is keyed BLAKE3 under the cluster key over the frame's bytes before the trailer;
//! when b > 0, over the bytes before the bulk field and then the (unkeyed) BLAKE3 hash of the
//! field's b bytes instead of the bytes themselves. Every byte is covered either way, and b
//! is, being in the header; a sender that knows the hash of a large field already (the same
//! part sent to each of three replicas) tags its frame without hashing the field again
//! ([`Bulk::digest`]).
//!
//! The lane sits in the header, outside the payload, so that a driver can route a received
//! frame to its lane's queue ([`frame_lane`]) without decoding it; the trailer covers it like
//! every other header byte.
//!
//! Invariants kept here:
//! * decoding any byte string returns a value or a typed [`WireError`], never panics, and never
//!   allocates more than the frame limit it was given;
//! * a frame never exceeds the limit its channel sets ([`MAX_DATAGRAM_BYTES`] for UDP);
//! * with a cluster key, a frame without a valid tag under one of the accepted keys is rejected;
//!   without one, a tagged frame is rejected (a node never silently ignores authentication);
//! * every envelope carries its sender's per-(channel, lane) [`FrameSeq`] and its lane, inside
//!   the authenticated bytes, so a receiver can refuse replays ([`crate::replay`]), and the
//!   address it was sent to, so a frame replayed to another node is refused there;
//! * a decoded envelope's lane is the one its header names (an unknown lane byte is refused);
//! * a tag covers every byte before it: a bulk field's through its hash, over exactly the bytes
//!   the header's bulk length counts at the payload's end, a length past the payload being
//!   refused before anything is hashed; a decoded bulk field comes with the hash the check
//!   computed only when it is exactly those bytes;
//! * no payload is decoded before its frame's trailer is checked: [`Codec::decode`] checks it
//!   first, and [`Codec::decode_verified`] takes only a [`VerifiedFrame`], which only
//!   [`Codec::verify`] makes (a driver checks large frames that way, off the node's thread);
//! * a frame is the same bytes however it is sealed: in one buffer ([`Frame::seal`]), or in the
//!   pieces it is held in, with a large read chunk's or part's bytes in their own buffer
//!   ([`Frame::seal_apart`]); the header always counts exactly the payload (asserted when a
//!   frame is sealed).

use crate::bulk::{Bulk, BulkDigest};
use crate::hydfs::message::{PartBytes, ReadChunk};
use crate::hydfs::HydfsMsg;
use crate::id::{MemberId, NodeAddr};
use crate::membership::MembershipMsg;
use crate::node::Lane;
use crate::rainstorm::RainstormMsg;
use crate::replay::FrameSeq;
use bincode::Options;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The largest datagram any node sends or accepts (fits an Ethernet MTU with IP/UDP headers).
pub const MAX_DATAGRAM_BYTES: usize = 1400;
/// The default limit for one stream frame (TCP request/response).
pub const MAX_STREAM_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// The current envelope format version.
///
/// Version 2 added the frame sequence number (replay protection) and RainStorm's task counts;
/// version 3 HyDFS part metadata with line ends (`PartMeta::newlines`, `ends_with_newline`);
/// version 4 HyDFS deletes (`Delete`, `Remove`) and read-your-writes grouped by file (`Needs`);
/// version 5 the lane byte in the header, with frame numbers counted per (channel, lane);
/// version 6 the destination address inside the authenticated bytes ([`Envelope::to`]);
/// version 7 variable-length integers, HyDFS inventory asks naming the inventory the asker
/// kept ([`crate::hydfs::InventoryList`]), pings naming only their target's join time,
/// membership's join refusal `Superseded` (a joiner takes an id after the one it names,
/// [`crate::membership::JoinRefusal`]) and Lifeguard (the accuser in `Update::Suspect`,
/// `MembershipMsg::Nack`); version 8 the tombstones of the name in HyDFS `DescribeReply`
/// (`deleted`), so that a node that restarts with a copy of a deleted file drops it before
/// reconciling it with a later file of the same name; version 9 the tag: keyed BLAKE3 instead
/// of HMAC-SHA256 (a MAC under the same 256-bit key, computed about 3.6 times as fast: HMAC of
/// every frame was the largest cost of a large transfer); version 10 HyDFS seals (a write kind,
/// `WriteKind::Seal`, and the refusal `Sealed`); version 11 leader failover (a job plan names
/// the member the job was submitted to, `JobPlan::origin`, and a job notice its log generation);
/// version 12 a source's pace across attempts (`RainstormMsg::Control::paced_ms`); version 13
/// the members an answering node lists, in HyDFS `StatReply` (`members`: a create's
/// coordinator waits until it lists them all, so a node that joined knowing only some members
/// cannot take a name one of the others holds); version 14 whether a HyDFS `Describe` is a
/// client's (`client`: held back, like a read, by a copy recovered at start and not compared
/// yet; anti-entropy's describes are what compare it); version 15 appends bound to the file
/// they were issued against (`WriteRequest::of`, `RemoteAppend::of`); version 16 the HyDFS
/// refusal `FileFull` (an append that would take its file's description past
/// `max_file_meta_bytes`); version 17 the bulk length in the header, with a bulk field covered
/// by the tag through its hash.
pub const WIRE_VERSION: u8 = 17;

const MAGIC: [u8; 2] = *b"RS";
/// The length of a frame's header: magic, version, flags, lane, payload length, bulk length.
pub const HEADER_BYTES: usize = 13;
const LANE_OFFSET: usize = 4;
const LENGTH_OFFSET: usize = 5;
const BULK_LENGTH_OFFSET: usize = 9;
const CRC_BYTES: usize = 4;
/// The length of a keyed frame's trailer (its tag), the frame's last bytes.
pub const TAG_BYTES: usize = 32;
const FLAG_AUTHENTICATED: u8 = 0b0000_0001;

/// Every message on the wire: who sent it, on which lane, and what it says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: MemberId,
    /// The address the sender sent it to. Inside the authenticated bytes, so that a frame
    /// captured on its way to one node is refused by every other ([`crate::node`] checks it
    /// under a cluster key).
    pub to: NodeAddr,
    /// The lane it travels on. Written to the frame header, not to the payload (so
    /// [`payload_size`] and [`canonical_bytes`] leave it out); [`Codec::decode`] sets it from
    /// the header.
    #[serde(skip)]
    pub lane: Lane,
    /// The sender's count of frames sent on this frame's channel and lane.
    pub seq: FrameSeq,
    pub body: Body,
}

/// One variant per protocol layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    Membership(MembershipMsg),
    Hydfs(HydfsMsg),
    Rainstorm(RainstormMsg),
}

impl Body {
    /// Moves out the message's bulk bytes, if it has a bulk field of at least
    /// [`BULK_APART_BYTES`]: a read chunk's bytes, a fetched part's. Each is the last field of
    /// its message, so its bytes end the encoded payload; the field is left empty.
    fn take_bulk(&mut self) -> Option<Bulk> {
        let bytes = self.bulk_mut()?;
        (bytes.len() >= BULK_APART_BYTES).then(|| bytes.take())
    }

    /// The length of the message's bulk field (0 without one).
    fn bulk_len(&self) -> usize {
        match self {
            Body::Hydfs(HydfsMsg::ReadReply { result: Ok(ReadChunk { bytes, .. }), .. })
            | Body::Hydfs(HydfsMsg::FetchReply { result: Ok(PartBytes { bytes, .. }), .. }) => bytes.len(),
            _ => 0,
        }
    }

    /// The message's bulk field, if it has one: a read chunk's bytes, a fetched part's. These
    /// are the only [`Bulk`] fields of any message, which [`decode_payload`] relies on to
    /// resolve every one.
    fn bulk_mut(&mut self) -> Option<&mut Bulk> {
        match self {
            Body::Hydfs(HydfsMsg::ReadReply { result: Ok(ReadChunk { bytes, .. }), .. })
            | Body::Hydfs(HydfsMsg::FetchReply { result: Ok(PartBytes { bytes, .. }), .. }) => Some(bytes),
            _ => None,
        }
    }

    /// The lane this message travels on (see [`Lane`]): membership on `Control`, and each layer
    /// classifies its own messages ([`HydfsMsg::lane`], [`RainstormMsg::lane`]).
    pub fn lane(&self) -> Lane {
        match self {
            Body::Membership(_) => Lane::Control,
            Body::Hydfs(msg) => msg.lane(),
            Body::Rainstorm(msg) => msg.lane(),
        }
    }
}

/// The lane a frame's header names, read without a key and without decoding: what a driver
/// routes received stream frames by. `None` when the header is not a current RainStorm header
/// or names no lane (the node will refuse such a frame).
pub fn frame_lane(frame: &[u8]) -> Option<Lane> {
    if frame.len() < HEADER_BYTES || frame[0..2] != MAGIC || frame[2] != WIRE_VERSION {
        return None;
    }
    Lane::from_index(usize::from(frame[LANE_OFFSET]))
}

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes is shorter than the {min}-byte minimum")]
    Truncated { len: usize, min: usize },
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("bad magic bytes (not a RainStorm frame)")]
    BadMagic,
    #[error("unsupported wire version {found} (this node speaks {WIRE_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("unknown lane {0}")]
    UnknownLane(u8),
    #[error("length field says {declared} payload bytes but the frame holds {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("bulk length field says {bulk} bytes, more than the {declared}-byte payload")]
    BulkTooLong { bulk: usize, declared: usize },
    #[error("checksum mismatch (corrupt frame)")]
    BadChecksum,
    #[error("frame is not authenticated but this node requires the cluster key")]
    Unauthenticated,
    #[error("frame is authenticated but this node has no cluster key")]
    UnexpectedTag,
    #[error("authentication tag does not match any accepted cluster key")]
    BadTag,
    #[error("malformed payload: {0}")]
    Malformed(String),
}

impl WireError {
    /// A short name of the cause, for counters (`frames_rejected.<cause>`).
    pub fn cause(&self) -> &'static str {
        match self {
            WireError::Truncated { .. } => "truncated",
            WireError::TooLarge { .. } => "oversized",
            WireError::BadMagic => "bad_magic",
            WireError::UnsupportedVersion { .. } => "bad_version",
            WireError::UnknownFlags(_) => "bad_flags",
            WireError::UnknownLane(_) => "bad_lane",
            WireError::LengthMismatch { .. } | WireError::BulkTooLong { .. } => "bad_length",
            WireError::BadChecksum => "bad_checksum",
            WireError::Unauthenticated => "unauthenticated",
            WireError::UnexpectedTag => "unexpected_tag",
            WireError::BadTag => "bad_tag",
            WireError::Malformed(_) => "malformed",
        }
    }
}

/// A 256-bit shared secret that authenticates every frame of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// Derives a key from a passphrase (SHA-256 of its bytes).
    pub fn from_passphrase(passphrase: &str) -> ClusterKey {
        ClusterKey(Sha256::digest(passphrase.as_bytes()).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// A short public name of the key (the first 4 bytes of SHA-256 of it, in hex), so that
    /// operators can compare keys across nodes without showing them.
    pub fn fingerprint(&self) -> String {
        Sha256::digest(self.0).iter().take(4).map(|b| format!("{b:02x}")).collect()
    }

    /// The frame tag: BLAKE3 in its keyed mode (a MAC with a 256-bit key) over `bytes`.
    fn tag(&self, bytes: &[u8]) -> blake3::Hash {
        self.tag_pieces(&[bytes])
    }

    /// [`ClusterKey::tag`] over the concatenation of `pieces`, without joining them.
    fn tag_pieces(&self, pieces: &[&[u8]]) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        for piece in pieces {
            hasher.update(piece);
        }
        hasher.finalize()
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// The bincode options of every encoding in RainStorm (variable-length integers: a value under
/// 251 takes one byte, so ids, counts, lengths and enum tags stay small; little endian;
/// a size limit, no trailing bytes).
pub(crate) fn bincode_options(limit: usize) -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .with_limit(limit as u64)
        .reject_trailing_bytes()
}

/// The exact number of payload bytes `value` takes on the wire. Sizes add up: the encoding of a
/// struct is the concatenation of its fields, which is what lets membership fill a datagram.
pub fn payload_size<T: Serialize>(value: &T) -> usize {
    bincode_options(usize::MAX).serialized_size(value).map(|n| n as usize).unwrap_or(usize::MAX)
}

/// The canonical bytes of `value` (the payload encoding), e.g. to hash a view.
pub fn canonical_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    bincode_options(usize::MAX).serialize(value).unwrap_or_default()
}

/// A message's bulk field (a read chunk's or a fetched part's bytes) of at least this many bytes
/// stays in its own buffer when the message is encoded ([`Codec::encode_unsealed`]): the frame
/// is written from the pieces, never copied whole.
pub const BULK_APART_BYTES: usize = 256 * 1024;

/// An encoded frame still without its trailer (its CRC32C, or its keyed BLAKE3 tag), from
/// [`Codec::encode_unsealed`]. [`Frame::seal`] computes the trailer and returns the frame as it
/// goes on the wire, [`Frame::seal_apart`] the same bytes in the pieces they are held in.
/// Sealing is apart from encoding so that a driver can tag a large frame on another thread than
/// the node's: in a 1 MiB-chunk `get`, the tags were about a fifth of the serving node's CPU.
///
/// A message's bulk field, when it has one of at least [`BULK_APART_BYTES`], is the last field
/// of its payload (`Body::take_bulk`); the frame keeps those bytes in the buffer the message
/// held them in (`bulk`), after the rest of the frame (`bytes`, which ends with the field's
/// length).
///
/// Invariant: `bytes` then `bulk` are a whole frame but for the trailer (the header's length
/// field counts exactly the payload after it), which [`Frame::len`] counts.
#[must_use = "a frame is sent once sealed"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Vec<u8>,
    bulk: Bulk,
    trailer: Trailer,
}

/// A sealed frame in the pieces it is held in ([`Frame::seal_apart`]): written one after the
/// other, they are the frame [`Frame::seal`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedFrame {
    head: Vec<u8>,
    bulk: Bulk,
    trailer: [u8; TAG_BYTES],
    trailer_len: usize,
}

impl SealedFrame {
    /// The frame's length.
    pub fn len(&self) -> usize {
        self.head.len() + self.bulk.len() + self.trailer_len
    }

    /// Never: a frame has at least its header and trailer.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The frame's bytes, in order.
    pub fn pieces(&self) -> [&[u8]; 3] {
        [&self.head, &self.bulk, &self.trailer[..self.trailer_len]]
    }
}

/// What closes a frame: a CRC32C, or the keyed tag under the key it names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Trailer {
    Crc,
    /// The signing key, shared with the codec rather than copied into every frame.
    Tag(Arc<ClusterKey>),
}

impl Trailer {
    fn bytes(&self) -> usize {
        match self {
            Trailer::Crc => CRC_BYTES,
            Trailer::Tag(_) => TAG_BYTES,
        }
    }

    /// This trailer over a frame held as `head` (its header and payload up to the bulk field)
    /// and `bulk` (the field's bytes, which the header counts), and how many of the returned
    /// bytes it takes. The tag covers `bulk` through its hash (see the module header).
    fn over(&self, head: &[u8], bulk: &Bulk) -> ([u8; TAG_BYTES], usize) {
        let mut out = [0u8; TAG_BYTES];
        match self {
            Trailer::Crc => {
                let crc = crc32c::crc32c_append(crc32c::crc32c(head), bulk);
                out[..CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
                (out, CRC_BYTES)
            }
            Trailer::Tag(key) if bulk.is_empty() => {
                out.copy_from_slice(key.tag(head).as_bytes());
                (out, TAG_BYTES)
            }
            Trailer::Tag(key) => {
                out.copy_from_slice(key.tag_pieces(&[head, &bulk.digest()]).as_bytes());
                (out, TAG_BYTES)
            }
        }
    }
}

impl Frame {
    /// The frame's length once sealed.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.bulk.len() + self.trailer.bytes()
    }

    /// Never: a frame has at least its header and trailer.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Computes the trailer and returns the frame as sent, in one buffer (a bulk field kept
    /// apart is copied in).
    pub fn seal(self) -> Vec<u8> {
        self.debug_check();
        let len = self.len();
        let (trailer, trailer_len) = self.trailer.over(&self.bytes, &self.bulk);
        let Frame { mut bytes, bulk, .. } = self;
        bytes.reserve_exact(len - bytes.len());
        bytes.extend_from_slice(&bulk);
        bytes.extend_from_slice(&trailer[..trailer_len]);
        debug_assert_eq!(bytes.len(), len);
        bytes
    }

    /// Computes the trailer and returns the frame in the pieces it is held in: nothing is
    /// copied.
    pub fn seal_apart(self) -> SealedFrame {
        self.debug_check();
        let (trailer, trailer_len) = self.trailer.over(&self.bytes, &self.bulk);
        let sealed = SealedFrame { head: self.bytes, bulk: self.bulk, trailer, trailer_len };
        debug_assert_eq!(sealed.len(), sealed.head.len() + sealed.bulk.len() + self.trailer.bytes());
        sealed
    }

    /// The invariant of the type: the header counts exactly the payload that follows it, and
    /// exactly the bulk bytes held apart.
    fn debug_check(&self) {
        debug_assert!(
            self.bytes.len() >= HEADER_BYTES
                && header_field(&self.bytes, LENGTH_OFFSET)
                    == self.bytes.len() + self.bulk.len() - HEADER_BYTES
                && header_field(&self.bytes, BULK_LENGTH_OFFSET) == self.bulk.len(),
            "an unsealed frame is its header, the payload the header counts, and the bulk bytes it counts"
        );
    }
}

/// Encodes and decodes envelopes under zero, one or several accepted cluster keys.
///
/// With keys, frames are signed with the first (the current key) and accepted under any of them,
/// which lets a cluster roll a new key out without a flag day.
#[derive(Clone, Debug, Default)]
pub struct Codec {
    /// Shared with the frames being sealed (so the secret is not copied into each).
    keys: Vec<Arc<ClusterKey>>,
}

impl Codec {
    /// A codec without authentication (CRC32C trailers).
    pub fn plain() -> Codec {
        Codec { keys: Vec::new() }
    }

    /// A codec that signs with `current` and also accepts frames signed with `also_accepted`.
    pub fn keyed(current: ClusterKey, also_accepted: Vec<ClusterKey>) -> Codec {
        let mut keys = vec![Arc::new(current)];
        keys.extend(also_accepted.into_iter().map(Arc::new));
        Codec { keys }
    }

    pub fn is_authenticated(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Which keys sign and are accepted, by fingerprint.
    pub fn describe_keys(&self) -> String {
        match self.keys.split_first() {
            None => "no cluster key".into(),
            Some((current, [])) => format!("signing with {}", current.fingerprint()),
            Some((current, rest)) => format!(
                "signing with {}, also accepting {}",
                current.fingerprint(),
                rest.iter().map(|k| k.fingerprint()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Header plus trailer bytes that every frame adds to its payload.
    pub fn overhead(&self) -> usize {
        HEADER_BYTES + self.trailer_bytes()
    }

    fn trailer_bytes(&self) -> usize {
        if self.keys.is_empty() {
            CRC_BYTES
        } else {
            TAG_BYTES
        }
    }

    /// Encodes `envelope` into one frame of at most `limit` bytes: the frame
    /// [`Codec::encode_unsealed`] makes, sealed in one buffer.
    pub fn encode(&self, envelope: &Envelope, limit: usize) -> Result<Vec<u8>, WireError> {
        if envelope.body.bulk_len() >= BULK_APART_BYTES {
            // Cloned to lay out the bulk field apart (the clone shares its bytes).
            return self.encode_unsealed(envelope.clone(), limit).map(Frame::seal);
        }
        self.encode_whole(envelope, limit).map(Frame::seal)
    }

    /// Encodes `envelope` into one frame of at most `limit` bytes, all but its trailer:
    /// [`Frame::seal`] computes that, on whichever thread the caller chooses. A bulk field of
    /// at least [`BULK_APART_BYTES`] is moved into the frame, not copied ([`Frame`]).
    pub fn encode_unsealed(&self, mut envelope: Envelope, limit: usize) -> Result<Frame, WireError> {
        let Some(bulk) = envelope.body.take_bulk() else { return self.encode_whole(&envelope, limit) };
        let options = || bincode_options(usize::MAX);
        let malformed = |e: bincode::Error| WireError::Malformed(e.to_string());
        // Emptied, the bulk field is encoded as its length, 0, in one byte: the payload's last.
        let rest = options().serialized_size(&envelope).map_err(malformed)? as usize;
        let bulk_len = options().serialize(&(bulk.len() as u64)).map_err(malformed)?;
        let payload_len = rest - 1 + bulk_len.len() + bulk.len();
        let len = HEADER_BYTES + payload_len + self.trailer_bytes();
        if len > limit {
            return Err(WireError::TooLarge { len, limit });
        }
        let mut bytes = Vec::with_capacity(HEADER_BYTES + rest - 1 + bulk_len.len());
        self.put_header(&mut bytes, envelope.lane, payload_len, bulk.len());
        options().serialize_into(&mut bytes, &envelope).map_err(malformed)?;
        debug_assert_eq!(bytes.last(), Some(&0), "an emptied bulk field ends the payload");
        bytes.pop();
        bytes.extend_from_slice(&bulk_len);
        let frame = Frame { bytes, bulk, trailer: self.trailer() };
        debug_assert_eq!(frame.len(), len);
        Ok(frame)
    }

    /// [`Codec::encode_unsealed`] into one buffer.
    fn encode_whole(&self, envelope: &Envelope, limit: usize) -> Result<Frame, WireError> {
        let payload_len = bincode_options(usize::MAX)
            .serialized_size(envelope)
            .map_err(|e| WireError::Malformed(e.to_string()))? as usize;
        let len = HEADER_BYTES + payload_len + self.trailer_bytes();
        if len > limit {
            return Err(WireError::TooLarge { len, limit });
        }
        // The payload is serialized straight into the frame (no second copy of a large body),
        // which has room for its trailer already.
        let mut bytes = Vec::with_capacity(len);
        self.put_header(&mut bytes, envelope.lane, payload_len, 0);
        bincode_options(usize::MAX)
            .serialize_into(&mut bytes, envelope)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        let frame = Frame { bytes, bulk: Bulk::default(), trailer: self.trailer() };
        debug_assert_eq!(frame.len(), len);
        Ok(frame)
    }

    /// Appends a frame header: magic, version, this codec's flags, `lane`, the payload length,
    /// the length of the bulk field that ends the payload (0 for none).
    fn put_header(&self, bytes: &mut Vec<u8>, lane: Lane, payload_len: usize, bulk_len: usize) {
        debug_assert!(bulk_len <= payload_len);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(WIRE_VERSION);
        bytes.push(if self.keys.is_empty() { 0 } else { FLAG_AUTHENTICATED });
        bytes.push(lane.index() as u8);
        bytes.extend_from_slice(&(payload_len as u32).to_le_bytes());
        bytes.extend_from_slice(&(bulk_len as u32).to_le_bytes());
    }

    /// A frame on `lane` around `payload` taken as it is, valid or not as an [`Envelope`], with
    /// this codec's header flags and trailer (CRC32C, or the tag under the current key): the
    /// frame checks pass, so [`Codec::decode`] hands `payload` to the payload decoder. For tests
    /// and fuzzing; nodes frame envelopes with [`Codec::encode`].
    pub fn frame_raw(&self, lane: Lane, payload: &[u8]) -> Vec<u8> {
        self.frame_raw_unsealed(lane, payload).seal()
    }

    /// [`Codec::frame_raw`] before its trailer (see [`Codec::encode_unsealed`]).
    pub fn frame_raw_unsealed(&self, lane: Lane, payload: &[u8]) -> Frame {
        let trailer = self.trailer();
        let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len() + trailer.bytes());
        self.put_header(&mut bytes, lane, payload.len(), 0);
        bytes.extend_from_slice(payload);
        Frame { bytes, bulk: Bulk::default(), trailer }
    }

    /// The trailer this codec puts on frames: the tag under the current key, or a CRC32C.
    fn trailer(&self) -> Trailer {
        match self.keys.first() {
            None => Trailer::Crc,
            Some(key) => Trailer::Tag(Arc::clone(key)),
        }
    }

    /// The checks of a frame's header and size that need no key and no hashing: what a driver
    /// can run on every datagram as it arrives, to drop garbage before it queues. Returns the
    /// payload length the header declares and the lane the header names.
    pub fn precheck(&self, frame: &[u8], limit: usize) -> Result<(usize, Lane), WireError> {
        if frame.len() > limit {
            return Err(WireError::TooLarge { len: frame.len(), limit });
        }
        let min = HEADER_BYTES + CRC_BYTES;
        if frame.len() < min {
            return Err(WireError::Truncated { len: frame.len(), min });
        }
        if frame[0..2] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if frame[2] != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion { found: frame[2] });
        }
        let flags = frame[3];
        if flags & !FLAG_AUTHENTICATED != 0 {
            return Err(WireError::UnknownFlags(flags));
        }
        let authenticated = flags & FLAG_AUTHENTICATED != 0;
        match (authenticated, self.keys.is_empty()) {
            (false, false) => return Err(WireError::Unauthenticated),
            (true, true) => return Err(WireError::UnexpectedTag),
            _ => {}
        }
        let lane = Lane::from_index(usize::from(frame[LANE_OFFSET]))
            .ok_or(WireError::UnknownLane(frame[LANE_OFFSET]))?;
        let trailer = if authenticated { TAG_BYTES } else { CRC_BYTES };
        let declared = header_field(frame, LENGTH_OFFSET);
        let actual = frame.len().saturating_sub(HEADER_BYTES + trailer);
        if frame.len() < HEADER_BYTES + trailer || declared != actual {
            return Err(WireError::LengthMismatch { declared, actual });
        }
        let bulk = header_field(frame, BULK_LENGTH_OFFSET);
        if bulk > declared {
            return Err(WireError::BulkTooLong { bulk, declared });
        }
        Ok((declared, lane))
    }

    /// Decodes one frame of at most `limit` bytes. Never panics on any input.
    pub fn decode(&self, frame: &[u8], limit: usize) -> Result<Envelope, WireError> {
        let (declared, lane, bulk_digest) = self.check(frame, limit)?;
        decode_payload(frame, declared, lane, limit, None, bulk_digest)
    }

    /// The checks of [`Codec::decode`] but the payload's: header, size and trailer (the CRC32C,
    /// or the keyed tag under one of the accepted keys). What a driver runs on a large frame on
    /// a thread of its own, so that the node's thread is not where it is hashed; the node then
    /// decodes it with [`Codec::decode_verified`].
    ///
    /// The frame is kept as it came: decoding it takes its bulk field, if it has one, as a view
    /// of this buffer ([`Bulk`]), not a copy.
    pub fn verify(&self, frame: impl Into<Bytes>, limit: usize) -> Result<VerifiedFrame, WireError> {
        let frame = frame.into();
        let (_, _, bulk_digest) = self.check(&frame, limit)?;
        Ok(VerifiedFrame { bytes: frame, bulk_digest })
    }

    /// Decodes a frame [`Codec::verify`] passed, without hashing it again. Its header is checked
    /// again against this codec (a keyed codec still refuses a frame verified by its CRC32C),
    /// but its tag is not: a frame verified under a key that this codec no longer accepts (the
    /// keys were reloaded in between) is taken, as it would have been had it come a moment
    /// earlier.
    pub fn decode_verified(&self, frame: &VerifiedFrame, limit: usize) -> Result<Envelope, WireError> {
        let (declared, lane) = self.precheck(&frame.bytes, limit)?;
        decode_payload(&frame.bytes, declared, lane, limit, Some(&frame.bytes), frame.bulk_digest)
    }

    /// [`Codec::precheck`], then the trailer: the payload length and lane the header declares,
    /// and the hash of the bulk field the tag was checked through, if it was.
    fn check(&self, frame: &[u8], limit: usize) -> Result<(usize, Lane, Option<[u8; 32]>), WireError> {
        let (declared, lane) = self.precheck(frame, limit)?;
        let authenticated = frame[3] & FLAG_AUTHENTICATED != 0;
        let (body, tail) = frame.split_at(HEADER_BYTES + declared);
        if authenticated {
            // `blake3::Hash` compares in constant time.
            let Ok(tail) = <[u8; TAG_BYTES]>::try_from(tail) else { return Err(WireError::BadTag) };
            let theirs = blake3::Hash::from_bytes(tail);
            // The bulk field, if any, is covered through its hash (checked in `precheck`: it
            // lies within the payload).
            let (head, bulk) = body.split_at(body.len() - header_field(frame, BULK_LENGTH_OFFSET));
            if bulk.is_empty() {
                if !self.keys.iter().any(|key| key.tag(head) == theirs) {
                    return Err(WireError::BadTag);
                }
                return Ok((declared, lane, None));
            }
            let digest = blake3::hash(bulk);
            if !self.keys.iter().any(|key| key.tag_pieces(&[head, digest.as_bytes()]) == theirs) {
                return Err(WireError::BadTag);
            }
            return Ok((declared, lane, Some(*digest.as_bytes())));
        } else {
            let crc = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
            if crc32c::crc32c(body) != crc {
                return Err(WireError::BadChecksum);
            }
        }
        Ok((declared, lane, None))
    }
}

/// The little-endian `u32` header field at `offset` of `frame`, which holds a whole header.
fn header_field(frame: &[u8], offset: usize) -> usize {
    let field = &frame[offset..offset + 4];
    u32::from_le_bytes([field[0], field[1], field[2], field[3]]) as usize
}

/// The envelope in `frame`, whose header declared `declared` payload bytes on `lane`. Its bulk
/// field, if it has one, is a view of `owner` (the buffer `frame` is) when given, else a copy;
/// it comes with its hash when the tag was checked through it (`bulk_digest`) and it is exactly
/// the bytes the header counted as the bulk field.
fn decode_payload(
    frame: &[u8],
    declared: usize,
    lane: Lane,
    limit: usize,
    owner: Option<&Bytes>,
    bulk_digest: Option<[u8; 32]>,
) -> Result<Envelope, WireError> {
    debug_assert!(owner.is_none_or(|o| o.as_ptr() == frame.as_ptr() && o.len() == frame.len()));
    let payload = &frame[HEADER_BYTES..HEADER_BYTES + declared];
    let mut envelope: Envelope =
        bincode_options(limit).deserialize(payload).map_err(|e| WireError::Malformed(e.to_string()))?;
    if let Some(bulk) = envelope.body.bulk_mut() {
        let hashed = &payload[declared - header_field(frame, BULK_LENGTH_OFFSET)..];
        let digest = bulk_digest.filter(|_| bulk.is_located_at(hashed));
        bulk.resolve(payload, owner).map_err(WireError::Malformed)?;
        if let Some(digest) = digest {
            *bulk = bulk.take().with_digest(BulkDigest::known(digest));
        }
    }
    Ok(Envelope { lane, ..envelope })
}

/// A frame whose header, size and trailer [`Codec::verify`] checked: only that function makes
/// one, so a node that takes it ([`crate::node::Node::handle_verified_frame`]) knows it was
/// checked, wherever that ran.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifiedFrame {
    bytes: Bytes,
    /// The hash of the frame's bulk field, computed to check its tag (keyed frames with one).
    bulk_digest: Option<[u8; 32]>,
}

impl VerifiedFrame {
    /// The frame's bytes, as they arrived.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never: a verified frame has at least its header and trailer.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{MembershipMsg, ProbeSeq};
    use proptest::prelude::*;

    fn sample() -> Envelope {
        Envelope {
            from: MemberId::new("127.0.0.1:7000".parse().unwrap(), 42),
            to: "127.0.0.1:7001".parse().unwrap(),
            lane: Lane::Control,
            seq: FrameSeq(1),
            body: Body::Membership(MembershipMsg::Ack { seq: ProbeSeq(7), updates: vec![] }),
        }
    }

    #[test]
    fn round_trips_plain_and_keyed() {
        for codec in [Codec::plain(), Codec::keyed(ClusterKey::from_passphrase("k"), vec![])] {
            let frame = codec.encode(&sample(), MAX_DATAGRAM_BYTES).unwrap();
            assert_eq!(codec.decode(&frame, MAX_DATAGRAM_BYTES).unwrap(), sample());
        }
    }

    /// Checking a frame apart ([`Codec::verify`]) then decoding it ([`Codec::decode_verified`])
    /// is [`Codec::decode`]: the same envelope, the same refusals; and a frame checked by its
    /// CRC32C is still refused by a codec that requires the key.
    #[test]
    fn a_frame_checked_apart_decodes_as_decode_does() {
        let keyed = Codec::keyed(ClusterKey::from_passphrase("k"), vec![]);
        for codec in [Codec::plain(), keyed.clone()] {
            let frame = codec.encode(&sample(), 1 << 20).unwrap();
            let verified = codec.verify(frame.clone(), 1 << 20).unwrap();
            assert_eq!(verified.bytes(), &frame[..]);
            assert_eq!(codec.decode_verified(&verified, 1 << 20), codec.decode(&frame, 1 << 20));
            let mut corrupt = frame.clone();
            corrupt[HEADER_BYTES + 3] ^= 1;
            let refused = codec.decode(&corrupt, 1 << 20).unwrap_err();
            assert!(matches!(refused, WireError::BadTag | WireError::BadChecksum), "{refused:?}");
            assert_eq!(codec.verify(corrupt, 1 << 20).unwrap_err(), refused);
            assert_eq!(
                codec.verify(frame.clone(), frame.len() - 1).unwrap_err(),
                codec.decode(&frame, frame.len() - 1).unwrap_err()
            );
        }
        let plain =
            Codec::plain().verify(Codec::plain().encode(&sample(), 1 << 20).unwrap(), 1 << 20).unwrap();
        assert_eq!(keyed.decode_verified(&plain, 1 << 20), Err(WireError::Unauthenticated));
    }

    /// Sealing apart from encoding makes the frame encoding makes, keyed or not, and its length
    /// is known before it is sealed.
    #[test]
    fn an_unsealed_frame_seals_into_the_encoded_frame() {
        let keyed = Codec::keyed(ClusterKey::from_passphrase("k"), vec![ClusterKey::from_passphrase("old")]);
        for codec in [Codec::plain(), keyed] {
            let env = sample();
            let unsealed = codec.encode_unsealed(env.clone(), 1 << 20).unwrap();
            let len = unsealed.len();
            let frame = unsealed.seal();
            assert_eq!(frame, codec.encode(&env, 1 << 20).unwrap());
            assert_eq!(frame.len(), len);
            assert_eq!(codec.decode(&frame, 1 << 20).unwrap(), env);
            let raw = codec.frame_raw_unsealed(Lane::Bulk, b"payload");
            assert_eq!(
                (raw.len(), raw.seal()),
                (codec.overhead() + 7, codec.frame_raw(Lane::Bulk, b"payload"))
            );
        }
    }

    fn bulk_envelopes(len: usize) -> Vec<Envelope> {
        use crate::hydfs::message::{PartBytes, ReadChunk, Refusal};
        use crate::hydfs::{PartMeta, Stamp};
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let from = MemberId::new("127.0.0.1:7000".parse().unwrap(), 42);
        let stamp = Stamp { ts: 5, client: from, seq: 9 };
        let chunk = ReadChunk {
            view: 3,
            total_len: 1 << 40,
            writes: vec![stamp],
            offset: 77,
            bytes: bytes.clone().into(),
        };
        let bodies = [
            HydfsMsg::ReadReply { req: 300, result: Ok(chunk) },
            HydfsMsg::FetchReply {
                req: 1 << 33,
                result: Ok(PartBytes { meta: PartMeta::of(&bytes), bytes: bytes.into() }),
            },
            HydfsMsg::FetchReply { req: 4, result: Err(Refusal::Corrupt) },
        ];
        bodies
            .into_iter()
            .map(|msg| Envelope {
                from,
                to: "127.0.0.1:7001".parse().unwrap(),
                lane: msg.lane(),
                seq: FrameSeq(1 << 20),
                body: Body::Hydfs(msg),
            })
            .collect()
    }

    /// A chunk's or a part's bytes of at least `BULK_APART_BYTES` stay in their own buffer, and
    /// the frame, sealed whole or in its pieces, is the one the message encodes to in one
    /// buffer: the bulk field really ends the payload. Smaller ones are encoded whole.
    #[test]
    fn a_large_bulk_field_stays_apart_and_the_frame_is_the_same() {
        let keyed = Codec::keyed(ClusterKey::from_passphrase("k"), vec![]);
        for codec in [Codec::plain(), keyed] {
            for len in [0, 1000, BULK_APART_BYTES - 1, BULK_APART_BYTES, 300 * 1024, 1 << 20] {
                for env in bulk_envelopes(len) {
                    let whole = codec.encode(&env, 4 << 20).unwrap();
                    let frame = codec.encode_unsealed(env.clone(), 4 << 20).unwrap();
                    let apart = len >= BULK_APART_BYTES
                        && !matches!(env.body, Body::Hydfs(HydfsMsg::FetchReply { result: Err(_), .. }));
                    assert_eq!(frame.bulk.len(), if apart { len } else { 0 }, "{len} bytes");
                    assert_eq!(frame.len(), whole.len());
                    let sealed = frame.clone().seal_apart();
                    assert_eq!(
                        (sealed.len(), sealed.pieces().concat()),
                        (whole.len(), whole.clone()),
                        "{len}"
                    );
                    assert_eq!(frame.seal(), whole);
                    assert_eq!(codec.decode(&whole, 4 << 20).unwrap(), env);
                }
            }
            // The limit counts the whole frame, bulk included.
            let env = bulk_envelopes(1 << 20).swap_remove(1);
            let whole = codec.encode(&env, 4 << 20).unwrap().len();
            assert!(matches!(codec.encode_unsealed(env, whole - 1), Err(WireError::TooLarge { .. })));
        }
    }

    /// A large bulk field is covered by the tag through its hash: a sender that knows the hash
    /// already makes the frame it would have made by hashing, every byte is still covered, and
    /// the header's bulk length is checked (a changed one is refused, a length past the payload
    /// without hashing).
    #[test]
    fn a_bulk_field_is_tagged_through_its_hash() {
        use crate::bulk::BulkDigest;
        let key = ClusterKey::from_passphrase("k");
        let codec = Codec::keyed(key.clone(), vec![ClusterKey::from_passphrase("old")]);
        let env = bulk_envelopes(1 << 20).swap_remove(1);
        let frame = codec.encode(&env, 4 << 20).unwrap();
        let bulk_len = header_field(&frame, BULK_LENGTH_OFFSET);
        assert_eq!(bulk_len, 1 << 20);
        let (body, tag) = frame.split_at(frame.len() - TAG_BYTES);
        let (head, bulk) = body.split_at(body.len() - bulk_len);
        assert_eq!(tag, key.tag_pieces(&[head, blake3::hash(bulk).as_bytes()]).as_bytes());
        assert_ne!(tag, key.tag(body).as_bytes(), "not a tag over the bytes themselves");

        // The slot filled by the first frame tags the second without hashing: the same frame.
        let slot = BulkDigest::default();
        let mut with_slot = env.clone();
        let part = with_slot.body.bulk_mut().unwrap();
        *part = part.take().with_digest(slot.clone());
        assert_eq!(codec.encode_unsealed(with_slot.clone(), 4 << 20).unwrap().seal(), frame);
        assert!(slot.is_known());
        let sealed = codec.encode_unsealed(with_slot, 4 << 20).unwrap().seal_apart();
        assert_eq!(sealed.pieces().concat(), frame);
        assert_eq!(codec.decode(&frame, 4 << 20).unwrap(), env);

        // The receiver hashed the field to check the tag: the field comes with its hash, for
        // whoever sends the same bytes on.
        let field = |env: Envelope| match env.body {
            Body::Hydfs(HydfsMsg::FetchReply { result: Ok(PartBytes { bytes, .. }), .. }) => bytes,
            other => panic!("not a part: {other:?}"),
        };
        let verified = codec.verify(frame.clone(), 4 << 20).unwrap();
        for got in [
            field(codec.decode_verified(&verified, 4 << 20).unwrap()),
            field(codec.decode(&frame, 4 << 20).unwrap()),
        ] {
            assert!(got.digest_known());
            assert_eq!(got.digest(), *blake3::hash(bulk).as_bytes());
        }
        let plain = Codec::plain().encode(&env, 4 << 20).unwrap();
        assert!(
            !field(Codec::plain().decode(&plain, 4 << 20).unwrap()).digest_known(),
            "a CRC hashes nothing"
        );

        // Every byte is covered: the field's, the rest of the payload's, the bulk length's.
        for at in [HEADER_BYTES + 2, frame.len() - TAG_BYTES - bulk_len, frame.len() - TAG_BYTES - 1] {
            let mut changed = frame.clone();
            changed[at] ^= 1;
            assert_eq!(codec.decode(&changed, 4 << 20), Err(WireError::BadTag), "byte {at}");
        }
        for bulk in [0, bulk_len - 1, bulk_len + 1] {
            let mut changed = frame.clone();
            changed[BULK_LENGTH_OFFSET..BULK_LENGTH_OFFSET + 4].copy_from_slice(&(bulk as u32).to_le_bytes());
            assert_eq!(codec.decode(&changed, 4 << 20), Err(WireError::BadTag), "bulk length {bulk}");
        }
        let declared = header_field(&frame, LENGTH_OFFSET);
        let mut past = frame.clone();
        past[BULK_LENGTH_OFFSET..BULK_LENGTH_OFFSET + 4]
            .copy_from_slice(&(declared as u32 + 1).to_le_bytes());
        assert_eq!(
            codec.decode(&past, 4 << 20),
            Err(WireError::BulkTooLong { bulk: declared + 1, declared })
        );
        let mut plain = Codec::plain().encode(&env, 4 << 20).unwrap();
        plain[BULK_LENGTH_OFFSET..BULK_LENGTH_OFFSET + 4]
            .copy_from_slice(&(declared as u32 + 1).to_le_bytes());
        assert_eq!(
            Codec::plain().decode(&plain, 4 << 20),
            Err(WireError::BulkTooLong { bulk: declared + 1, declared })
        );
    }

    /// Decoding a frame the receiver holds ([`Codec::verify`], then [`Codec::decode_verified`])
    /// takes its bulk field as a view of the frame's buffer, whatever its size; decoding a
    /// borrowed frame ([`Codec::decode`]) copies it. Either way the message is the one sent,
    /// and its bytes outlive the frame they came in.
    #[test]
    fn a_received_bulk_field_is_a_view_of_its_frame_not_a_copy() {
        let keyed = Codec::keyed(ClusterKey::from_passphrase("k"), vec![]);
        for codec in [Codec::plain(), keyed] {
            for len in [0, 1000, 1 << 20] {
                for env in bulk_envelopes(len) {
                    let frame = Bytes::from(codec.encode(&env, 4 << 20).unwrap());
                    let (start, end) = (frame.as_ptr() as usize, frame.as_ptr() as usize + frame.len());
                    let inside = |b: &Bulk| (start..end).contains(&(b.as_ptr() as usize));
                    let verified = codec.verify(frame.clone(), 4 << 20).unwrap();
                    let mut viewed = codec.decode_verified(&verified, 4 << 20).unwrap();
                    let mut copied = codec.decode(&frame, 4 << 20).unwrap();
                    drop((verified, frame));
                    assert_eq!((&viewed, &copied), (&env, &env), "{len} bytes");
                    match (viewed.body.bulk_mut(), copied.body.bulk_mut()) {
                        (Some(v), Some(c)) if len > 0 => assert!(inside(v) && !inside(c), "{len} bytes"),
                        (Some(_), Some(_)) => {}
                        (None, None) => assert!(matches!(
                            env.body,
                            Body::Hydfs(HydfsMsg::FetchReply { result: Err(_), .. })
                        )),
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let codec = Codec::plain();
        let frame = codec.encode(&sample(), MAX_DATAGRAM_BYTES).unwrap();
        for i in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(codec.decode(&bad, MAX_DATAGRAM_BYTES).is_err(), "bit {i} flipped was accepted");
        }
    }

    #[test]
    fn keys_must_match_and_rotation_accepts_old_key() {
        let old = ClusterKey::from_passphrase("old");
        let new = ClusterKey::from_passphrase("new");
        let signer_old = Codec::keyed(old.clone(), vec![]);
        let frame = signer_old.encode(&sample(), MAX_DATAGRAM_BYTES).unwrap();
        assert_eq!(
            Codec::keyed(new.clone(), vec![]).decode(&frame, MAX_DATAGRAM_BYTES),
            Err(WireError::BadTag)
        );
        assert!(Codec::keyed(new, vec![old]).decode(&frame, MAX_DATAGRAM_BYTES).is_ok());
        assert_eq!(Codec::plain().decode(&frame, MAX_DATAGRAM_BYTES), Err(WireError::UnexpectedTag));
        let plain = Codec::plain().encode(&sample(), MAX_DATAGRAM_BYTES).unwrap();
        assert_eq!(signer_old.decode(&plain, MAX_DATAGRAM_BYTES), Err(WireError::Unauthenticated));
    }

    #[test]
    fn a_framed_payload_is_the_plain_encoding_of_its_envelope() {
        let env = sample();
        let frame = Codec::plain().frame_raw(Lane::Control, &canonical_bytes(&env));
        assert_eq!(frame, Codec::plain().encode(&env, MAX_DATAGRAM_BYTES).unwrap());
        assert_eq!(Codec::plain().decode(&frame, MAX_DATAGRAM_BYTES), Ok(env));
        let junk = Codec::plain().frame_raw(Lane::Control, b"\xff\xff");
        assert!(matches!(Codec::plain().decode(&junk, MAX_DATAGRAM_BYTES), Err(WireError::Malformed(_))));
    }

    #[test]
    fn the_lane_travels_in_the_header_under_the_trailer() {
        for codec in [Codec::plain(), Codec::keyed(ClusterKey::from_passphrase("k"), vec![])] {
            for lane in Lane::ALL {
                let env = Envelope { lane, ..sample() };
                let frame = codec.encode(&env, MAX_DATAGRAM_BYTES).unwrap();
                assert_eq!(frame_lane(&frame), Some(lane));
                assert_eq!(codec.precheck(&frame, MAX_DATAGRAM_BYTES).map(|(_, l)| l), Ok(lane));
                assert_eq!(codec.decode(&frame, MAX_DATAGRAM_BYTES).unwrap(), env);
                // The payload does not hold the lane: two lanes, one payload.
                assert_eq!(frame.len(), payload_size(&env) + codec.overhead());
                // Moving a frame to another lane breaks its trailer.
                let mut moved = frame.clone();
                moved[LANE_OFFSET] = ((lane.index() + 1) % Lane::ALL.len()) as u8;
                let refused = codec.decode(&moved, MAX_DATAGRAM_BYTES).unwrap_err();
                assert!(matches!(refused, WireError::BadChecksum | WireError::BadTag), "{refused:?}");
            }
        }
        let mut unknown = Codec::plain().frame_raw(Lane::Control, &canonical_bytes(&sample()));
        unknown[LANE_OFFSET] = 3;
        assert_eq!(frame_lane(&unknown), None);
        assert_eq!(Codec::plain().decode(&unknown, MAX_DATAGRAM_BYTES), Err(WireError::UnknownLane(3)));
        let mut old = Codec::plain().encode(&sample(), MAX_DATAGRAM_BYTES).unwrap();
        old[2] = WIRE_VERSION - 1;
        assert_eq!(frame_lane(&old), None, "an older version's header names no lane");
        assert_eq!(frame_lane(b"RS"), None);
    }

    #[test]
    fn each_message_kind_has_its_lane() {
        use crate::hydfs::{HydfsMsg, PartBytes, PartMeta, Refusal};
        let ack = Body::Membership(MembershipMsg::Ack { seq: ProbeSeq(7), updates: vec![] });
        assert_eq!(ack.lane(), Lane::Control);
        let part = PartBytes { meta: PartMeta::of(&[1, 2]), bytes: vec![1, 2].into() };
        let chunk = HydfsMsg::FetchReply { req: 1, result: Ok(part) };
        assert_eq!(Body::Hydfs(chunk).lane(), Lane::Bulk);
        let refused = HydfsMsg::FetchReply { req: 1, result: Err(Refusal::NotFound) };
        assert_eq!(Body::Hydfs(refused).lane(), Lane::Control);
        assert_eq!(Body::Hydfs(HydfsMsg::Inventory { req: 1, known: None }).lane(), Lane::Control);
        use crate::rainstorm::message::{Batch, LinkMsg};
        use crate::rainstorm::{JobId, RainstormMsg, TaskId};
        let link = |msg| RainstormMsg::Link {
            job: JobId { n: 1, tag: 2 },
            attempt: 1,
            from: TaskId { stage: 1, index: 0 },
            to: TaskId { stage: 2, index: 0 },
            msg,
        };
        // Barriers and the end are numbered among the tuples of their link: the same lane.
        for batch in [Batch::Tuples(Vec::new().into()), Batch::Barrier(3), Batch::End] {
            assert_eq!(Body::Rainstorm(link(LinkMsg::Batch { seq: 1, batch })).lane(), Lane::Data);
        }
        let ack = link(LinkMsg::Ack { upto: 1 });
        assert_eq!(Body::Rainstorm(ack).lane(), Lane::Control);
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let codec = Codec::plain();
        let frame = codec.encode(&sample(), MAX_DATAGRAM_BYTES).unwrap();
        assert!(matches!(codec.encode(&sample(), 10), Err(WireError::TooLarge { .. })));
        assert!(matches!(codec.decode(&frame, 10), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn payload_size_matches_encoding() {
        let env = sample();
        let frame = Codec::plain().encode(&env, MAX_DATAGRAM_BYTES).unwrap();
        assert_eq!(frame.len(), payload_size(&env) + Codec::plain().overhead());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Codec::plain().decode(&bytes, MAX_DATAGRAM_BYTES);
            let _ = Codec::keyed(ClusterKey::from_passphrase("x"), vec![]).decode(&bytes, MAX_DATAGRAM_BYTES);
        }

        #[test]
        fn valid_header_with_arbitrary_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let mut frame = vec![b'R', b'S', WIRE_VERSION, 0, 0];
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(&payload);
            let crc = crc32c::crc32c(&frame);
            frame.extend_from_slice(&crc.to_le_bytes());
            let _ = Codec::plain().decode(&frame, MAX_DATAGRAM_BYTES);
        }
    }
}
