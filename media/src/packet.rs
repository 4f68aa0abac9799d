//! The unit of forwarding: one RTP packet from a publisher, shared immutably by every core that fans it out.

use std::sync::Arc;
use std::time::Instant;

pub use str0m::format::PayloadParams;
use str0m::rtp::{ExtensionValues, VideoOrientation};

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
    /// The publisher's header extensions that mean something to a viewer.
    pub ext: ForwardedExt,
}

/// The header extension values a viewer needs from the publisher's packet: the rotation to display the
/// video with (a phone that sends unrotated frames plus `urn:3gpp:video-orientation` would otherwise play
/// sideways) and the audio level (browsers' `getSynchronizationSources()`, active-speaker displays).
///
/// The other extensions are per hop (transport-cc, abs-send-time, MID/RID): str0m writes its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardedExt {
    /// dBov as str0m gives it: 0 (loudest) down to -127 (silence), RFC 6464.
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<VideoOrientation>,
}

impl ForwardedExt {
    /// The forwarded subset of a received packet's extensions.
    pub fn of(v: &ExtensionValues) -> Self {
        Self { audio_level: v.audio_level, voice_activity: v.voice_activity, video_orientation: v.video_orientation }
    }

    /// The values to write on a viewer's packet (str0m writes those the viewer negotiated).
    pub fn values(&self) -> ExtensionValues {
        ExtensionValues {
            audio_level: self.audio_level,
            voice_activity: self.voice_activity,
            video_orientation: self.video_orientation,
            ..Default::default()
        }
    }
}

impl ForwardedPacket {
    pub fn kind(&self) -> TrackKind {
        self.codec.kind()
    }
}
