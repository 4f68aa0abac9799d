//! The unit of forwarding: one RTP packet from a publisher, shared immutably by every core that fans it out.

use std::sync::Arc;
use std::time::Instant;

pub use str0m::format::PayloadParams;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Audio,
    Video,
}

/// Codecs sfumato forwards. H.264 is matched by profile with the viewer when writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
}

impl Codec {
    pub fn kind(self) -> TrackKind {
        match self {
            Codec::Opus => TrackKind::Audio,
            _ => TrackKind::Video,
        }
    }
}

/// One publisher RTP packet after SRTP decryption. Crosses cores by value; its payload is one shared
/// allocation, so fan-out copies no media bytes.
#[derive(Debug, Clone)]
pub struct ForwardedPacket {
    pub codec: Codec,
    /// The publisher's negotiated format (payload type, fmtp) — matched against each viewer's.
    pub params: PayloadParams,
    /// Identifies one publishing session of a room; changes on re-publish so viewers re-base seq/timestamps.
    pub source: u64,
    /// Publisher's extended (rollover-counted) sequence number.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// First packet of a keyframe (decoders can start here).
    pub keyframe_start: bool,
    pub clock_rate: u32,
    /// When the server received it (for latency accounting).
    pub received_at: Instant,
    /// str0m's decrypted payload, shared (not copied) by every viewer.
    pub payload: Arc<[u8]>,
}

impl ForwardedPacket {
    pub fn kind(&self) -> TrackKind {
        self.codec.kind()
    }
}
