//! RTMP ingest: OBS/ffmpeg publish H.264 + AAC to `rtmp://host:1935/live/<stream key>`, WebRTC viewers
//! watch over WHEP. Video is forwarded untouched (re-packetized into RTP), audio is transcoded AAC → Opus.
//!
//! Everything here is sans-IO like the rest of this crate: no socket, no clock, no executor. The per-core
//! shell owns the TCP connection and moves bytes and packets.
//!
//! - [`session`]: [`RtmpSession`] — handshake, connect/publish negotiation and message parsing around
//!   `rml_rtmp`, hardened by [`guard`] (limits, no interleaving, bounded AMF nesting) and `catch_unwind`.
//! - [`flv`]: the FLV video/audio tag bodies RTMP carries (AVC config/NALUs, AAC config/frames).
//! - [`h264_rtp`]: [`H264Packetizer`] — RFC 6184 mode 1 (single NAL / FU-A, SPS+PPS STAP-A before IDRs),
//!   90 kHz timestamps, the B-frame policy, `profile-level-id`.
//! - [`aac_opus`]: [`AacToOpus`] — AAC-LC decode (symphonia), [`resample`] to 48 kHz, Opus 20 ms frames
//!   (libopus), continuous 48 kHz timestamps.
//! - [`ingest`]: [`RtmpToRtp`] — ties the three converters to the session's media outputs.
//!
//! # Intended flow (per TCP connection, on the core that accepted it)
//!
//! ```no_run
//! use sfumato_media::rtmp::{BFramePolicy, RtmpConfig, RtmpOutput, RtmpSession, RtmpToRtp, RtpOut};
//! # fn read(_: &mut [u8]) -> usize { 0 }
//! # fn write(_: &[u8]) {}
//! # fn stream_key_ok(_: &str) -> bool { true }
//! # fn forward_video(_: RtpOut) {}
//! # fn forward_audio(_: RtpOut) {}
//!
//! let mut rtmp = RtmpSession::new(RtmpConfig::default());
//! let mut media = RtmpToRtp::new(BFramePolicy::Refuse);
//! let mut rtp = Vec::new();
//! let mut buf = vec![0u8; 64 * 1024];
//! 'conn: loop {
//!     match read(&mut buf) {
//!         0 => rtmp.handle_eof(),
//!         n => {
//!             // An error is already turned into a queued `Closed { reason }`; log it if you like.
//!             let _ = rtmp.handle_input(&buf[..n]);
//!         }
//!     }
//!     while let Some(out) = rtmp.poll_output() {
//!         match out {
//!             RtmpOutput::Send(bytes) => write(&bytes),
//!             RtmpOutput::PublishRequested { app: _, stream_key } => {
//!                 if stream_key_ok(&stream_key) {
//!                     rtmp.accept_publish().ok(); // register the room publisher here
//!                 } else {
//!                     rtmp.reject_publish("unknown stream key").ok();
//!                 }
//!             }
//!             RtmpOutput::Video(frame) => match media.push_video(&frame, &mut rtp) {
//!                 Ok(()) => rtp.drain(..).for_each(forward_video), // 90 kHz, H.264
//!                 Err(e) if e.is_fatal() => rtmp.close(&e.to_string()),
//!                 Err(_) => rtp.clear(), // damaged tag: count and go on
//!             },
//!             RtmpOutput::Audio(frame) => match media.push_audio(&frame, &mut rtp) {
//!                 Ok(()) => rtp.drain(..).for_each(forward_audio), // 48 kHz, Opus
//!                 Err(e) if e.is_fatal() => rtmp.close(&e.to_string()),
//!                 Err(_) => rtp.clear(),
//!             },
//!             RtmpOutput::Metadata(_) => {}
//!             RtmpOutput::Finished => { /* unregister the room publisher */ }
//!             RtmpOutput::Closed { reason: _ } => break 'conn, // after writing earlier Sends
//!         }
//!     }
//! }
//! ```

pub mod aac_opus;
pub mod flv;
pub mod guard;
pub mod h264_rtp;
pub mod ingest;
pub mod resample;
pub mod session;

use std::sync::Arc;

pub use aac_opus::{AacToOpus, AudioError, AUDIO_CLOCK_RATE, OPUS_FRAME};
pub use h264_rtp::{profile_level_id, BFramePolicy, H264Error, H264Packetizer, VIDEO_CLOCK_RATE};
pub use ingest::{IngestError, IngestStats, RtmpToRtp};
pub use session::{AudioFrame, RtmpConfig, RtmpError, RtmpOutput, RtmpSession, StreamMetadata, VideoFrame};

/// One RTP payload ready to become a [`crate::packet::ForwardedPacket`]: the shell adds codec, payload
/// params (H.264 with the stream's `profile-level-id`, packetization-mode=1; or Opus), source id,
/// `clock_rate` ([`VIDEO_CLOCK_RATE`] / [`AUDIO_CLOCK_RATE`]) and `received_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpOut {
    pub payload: Arc<[u8]>,
    /// RTP timestamp in the track's clock rate.
    pub timestamp: u32,
    /// Last packet of a video access unit (always false for audio).
    pub marker: bool,
    /// First packet of an IDR access unit.
    pub keyframe_start: bool,
    /// Per-track sequence number, from 0, without holes.
    pub seq: u64,
}
