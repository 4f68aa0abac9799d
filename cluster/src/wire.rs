//! What travels on a link's control stream, and how it is framed.
//!
//! A frame is a 4-byte big-endian length, then that many bytes: one version byte ([`WIRE_VERSION`]) and
//! a postcard-encoded message. The first frame each side sends is an [`AuthFrame`]; every later frame is a
//! [`ControlMsg`]. Decoding is total: any byte string yields a message or a [`WireError`], never a panic,
//! and frames are capped at [`MAX_FRAME_LEN`].
//!
//! Besides membership gossip, the enum already carries the messages that cascading and gateway proxying
//! will need, so that their encoding is fixed (and tested) before their handling exists.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::gossip::GossipMsg;
use crate::node::{Hello, TrackKind, MAX_MEDIA_ADDRS, MAX_ROOM_NAME_LEN, MAX_ZONE_LEN};

/// Version byte at the start of every frame payload.
pub const WIRE_VERSION: u8 = 2;
/// Largest frame payload (version byte + message), in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// Longest SDP (or other signalling body) a proxied request may carry; the HTTP API caps bodies at 64 KiB.
pub const MAX_SIGNAL_BODY_LEN: usize = 128 * 1024;
/// Longest short string field (tokens, resource ids, header values) in signalling messages.
pub const MAX_SIGNAL_FIELD_LEN: usize = 4096;

/// Why bytes could not be turned into a message (or a message into bytes).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unsupported wire version {0}")]
    Version(u8),
    #[error("malformed message: {0}")]
    Decode(postcard::Error),
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// First frame on each side's control stream: who I am, and proof that I know the cluster secret
/// (see [`crate::auth`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFrame {
    pub hello: Hello,
    pub proof: [u8; 32],
}

/// Messages between authenticated nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMsg {
    /// Membership gossip ([`crate::membership`]).
    Gossip(GossipMsg),
    /// "Send me one copy of this track": the receiver of this message is the source node.
    Subscribe(Subscribe),
    /// The subscriber's last viewer of the track left.
    Unsubscribe(Unsubscribe),
    /// A viewer on the subscribing node needs a keyframe.
    KeyframeRequest(KeyframeRequest),
    /// A gateway forwards a WHIP/WHEP (or follow-up) request to the node that will own the session.
    SignalRequest(SignalRequest),
    /// The owning node's answer to a [`SignalRequest`].
    SignalReply(SignalReply),
    /// The subscribing node's lowest viewer bandwidth estimate for a room (new variants go last: postcard
    /// encodes the variant index, so the existing ones keep their encoding).
    BitrateHint(BitrateHint),
}

/// Cascading subscription request (handling not implemented yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    pub room: String,
    pub track: TrackKind,
    /// Chosen by the subscriber; the source tags this track's datagrams with it.
    pub channel: u32,
}

/// Ends a [`Subscribe`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    pub room: String,
    pub track: TrackKind,
}

/// Asks the source node to ask its publisher for a keyframe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyframeRequest {
    pub room: String,
}

/// A subscribing node's lowest bandwidth estimate (bits/s) over its viewers of `room` and the nodes it
/// relays the room to; the source node asks its publisher for at most that (REMB).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitrateHint {
    pub room: String,
    pub bps: u64,
}

/// What a proxied signalling request is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalKind {
    /// `POST /whip/...` with an SDP offer.
    WhipOffer,
    /// `POST /whep/...` with an SDP offer.
    WhepOffer,
    /// `PATCH` of an existing resource (trickle ICE).
    Patch { resource: String },
    /// `DELETE` of an existing resource.
    Delete { resource: String },
}

/// A signalling request proxied over a link (handling not implemented yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// Chosen by the gateway; echoed in the reply.
    pub id: u64,
    pub kind: SignalKind,
    pub room: String,
    /// Peer name from the token, if any.
    pub peer: Option<String>,
    /// The already-verified bearer token, if any, so the owner can re-check claims.
    pub token: Option<String>,
    pub content_type: String,
    /// SDP offer or trickle-ICE fragment.
    pub body: String,
}

/// The owner's answer to a [`SignalRequest`], mirroring the HTTP response the gateway will give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReply {
    pub id: u64,
    /// HTTP status (201, 204, 400, 404, 409, ...).
    pub status: u16,
    pub location: Option<String>,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

/// A [`ControlMsg`] already encoded as a frame: encode once, send to many links (cloning is cheap).
#[derive(Clone, Debug)]
pub struct ControlFrame(pub(crate) Bytes);

impl ControlFrame {
    pub fn encode(msg: &ControlMsg) -> Result<Self, WireError> {
        encode_frame(msg).map(Self)
    }

    /// The frame's bytes, length prefix included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

/// Checks the semantic limits the type system does not express.
pub(crate) trait Validate {
    fn validate(&self) -> Result<(), WireError>;
}

fn check_len(s: &str, max: usize, what: &'static str) -> Result<(), WireError> {
    if s.len() > max {
        Err(WireError::Invalid(what))
    } else {
        Ok(())
    }
}

fn check_room(room: &str) -> Result<(), WireError> {
    if room.is_empty() || room.len() > MAX_ROOM_NAME_LEN {
        Err(WireError::Invalid("bad room name"))
    } else {
        Ok(())
    }
}

impl Validate for AuthFrame {
    fn validate(&self) -> Result<(), WireError> {
        check_len(&self.hello.zone, MAX_ZONE_LEN, "zone too long")?;
        if self.hello.addrs.media.len() > MAX_MEDIA_ADDRS {
            return Err(WireError::Invalid("too many media addresses"));
        }
        Ok(())
    }
}

impl Validate for ControlMsg {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            ControlMsg::Gossip(g) => g.validate(),
            ControlMsg::Subscribe(s) => check_room(&s.room),
            ControlMsg::Unsubscribe(u) => check_room(&u.room),
            ControlMsg::KeyframeRequest(k) => check_room(&k.room),
            ControlMsg::BitrateHint(b) => check_room(&b.room),
            ControlMsg::SignalRequest(r) => {
                check_room(&r.room)?;
                if let SignalKind::Patch { resource } | SignalKind::Delete { resource } = &r.kind {
                    check_len(resource, MAX_SIGNAL_FIELD_LEN, "resource too long")?;
                }
                check_len(
                    r.peer.as_deref().unwrap_or(""),
                    MAX_SIGNAL_FIELD_LEN,
                    "peer too long",
                )?;
                check_len(
                    r.token.as_deref().unwrap_or(""),
                    MAX_SIGNAL_FIELD_LEN,
                    "token too long",
                )?;
                check_len(
                    &r.content_type,
                    MAX_SIGNAL_FIELD_LEN,
                    "content type too long",
                )?;
                check_len(&r.body, MAX_SIGNAL_BODY_LEN, "body too long")
            }
            ControlMsg::SignalReply(r) => {
                for field in [&r.location, &r.etag, &r.content_type]
                    .into_iter()
                    .flatten()
                {
                    check_len(field, MAX_SIGNAL_FIELD_LEN, "reply field too long")?;
                }
                check_len(&r.body, MAX_SIGNAL_BODY_LEN, "body too long")
            }
        }
    }
}

/// Encodes `msg` as a complete frame (length prefix, version byte, body).
pub(crate) fn encode_frame<T: Serialize>(msg: &T) -> Result<Bytes, WireError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0, 0, 0, 0, WIRE_VERSION]);
    let mut out = postcard::to_extend(msg, out).map_err(WireError::Encode)?;
    let len = out.len() - FRAME_HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // `len` fits in u32: it is at most MAX_FRAME_LEN.
    out[..FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(Bytes::from(out))
}

/// Decodes one frame payload (without its length prefix).
pub(crate) fn decode_payload<T: DeserializeOwned + Validate>(
    payload: &[u8],
) -> Result<T, WireError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let (&version, body) = payload.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    msg.validate()?;
    Ok(msg)
}

/// Decodes a [`ControlMsg`] frame payload (the bytes after the length prefix).
pub fn decode_control(payload: &[u8]) -> Result<ControlMsg, WireError> {
    decode_payload(payload)
}

/// Encodes an [`AuthFrame`] as a complete frame.
pub fn encode_auth(frame: &AuthFrame) -> Result<Bytes, WireError> {
    encode_frame(frame)
}

/// Decodes an [`AuthFrame`] frame payload.
pub fn decode_auth(payload: &[u8]) -> Result<AuthFrame, WireError> {
    decode_payload(payload)
}
