//! [`RtmpToRtp`]: the media half of an RTMP publisher — FLV video/audio bodies in, RTP payloads out.
//!
//! Video: AVC sequence headers update the SPS/PPS; access units go through [`H264Packetizer`] untouched.
//! Audio: the AudioSpecificConfig (re)creates the [`AacToOpus`] converter (keeping its RTP timeline);
//! raw AAC frames come out as Opus packets. Audio before its config is dropped and counted.

use super::aac_opus::{AacToOpus, AudioError};
use super::flv::{self, AacConfig, AudioTag, FlvError, VideoTag};
use super::h264_rtp::{BFramePolicy, H264Error, H264Packetizer};
use super::session::{AudioFrame, VideoFrame};
use super::RtpOut;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Flv(#[from] FlvError),
    #[error(transparent)]
    H264(#[from] H264Error),
    #[error(transparent)]
    Audio(#[from] AudioError),
}

impl IngestError {
    /// The stream cannot be forwarded (wrong codec, B-frames, HE-AAC...): close the session with this
    /// error as the reason. Non-fatal errors are a damaged tag: count it and carry on.
    pub fn is_fatal(&self) -> bool {
        match self {
            IngestError::Flv(e) => e.is_fatal(),
            IngestError::H264(_) => true,
            IngestError::Audio(_) => true,
        }
    }
}

/// Counters for stats/logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStats {
    pub video_frames: u64,
    pub audio_frames: u64,
    /// Audio frames dropped because no AudioSpecificConfig had arrived.
    pub audio_without_config: u64,
    pub aac_decode_errors: u64,
}

/// One publisher's FLV → RTP conversion. See the module docs.
#[derive(Debug)]
pub struct RtmpToRtp {
    video: H264Packetizer,
    nalu_length_size: u8,
    audio: Option<AacToOpus>,
    stats: IngestStats,
}

impl RtmpToRtp {
    pub fn new(policy: BFramePolicy) -> Self {
        RtmpToRtp {
            video: H264Packetizer::new(policy),
            nalu_length_size: 4,
            audio: None,
            stats: IngestStats::default(),
        }
    }

    /// `profile-level-id` of the current SPS (None until the AVC sequence header arrived).
    pub fn video_profile_level_id(&self) -> Option<u32> {
        self.video.profile_level_id()
    }

    /// Opus channel count (None until the AAC config arrived).
    pub fn audio_channels(&self) -> Option<usize> {
        self.audio.as_ref().map(|a| a.channels())
    }

    pub fn stats(&self) -> IngestStats {
        let mut s = self.stats;
        s.aac_decode_errors = self.audio.as_ref().map_or(0, |a| a.decode_errors());
        s
    }

    /// One video message. Appends the RTP payloads (90 kHz) of the access unit to `out`.
    pub fn push_video(&mut self, frame: &VideoFrame, out: &mut Vec<RtpOut>) -> Result<(), IngestError> {
        match flv::parse_video(&frame.data)? {
            VideoTag::AvcConfig(cfg) => {
                self.nalu_length_size = cfg.nalu_length_size;
                self.video.set_parameter_sets(cfg.sps, cfg.pps);
            }
            VideoTag::AvcNalus { composition_time, data, .. } => {
                let mut nalus: Vec<&[u8]> = Vec::with_capacity(8);
                flv::split_nalus(data, self.nalu_length_size, &mut nalus)?;
                self.video.packetize(frame.timestamp, composition_time, &nalus, out)?;
                self.stats.video_frames += 1;
            }
            VideoTag::EndOfSequence | VideoTag::Command => {}
        }
        Ok(())
    }

    /// One audio message. Appends the Opus RTP payloads (48 kHz) that became ready to `out`.
    pub fn push_audio(&mut self, frame: &AudioFrame, out: &mut Vec<RtpOut>) -> Result<(), IngestError> {
        match flv::parse_audio(&frame.data)? {
            AudioTag::AacConfig(cfg) => self.set_audio_config(cfg)?,
            AudioTag::AacFrame(aac) => match self.audio.as_mut() {
                Some(a) => {
                    a.push(frame.timestamp, aac, out)?;
                    self.stats.audio_frames += 1;
                }
                None => self.stats.audio_without_config += 1,
            },
        }
        Ok(())
    }

    fn set_audio_config(&mut self, cfg: AacConfig) -> Result<(), IngestError> {
        if self.audio.as_ref().is_some_and(|a| a.config() == &cfg) {
            return Ok(()); // Encoders repeat the config; keep the decoder state.
        }
        let mut next = AacToOpus::new(&cfg)?;
        if let Some(prev) = &self.audio {
            let (ts, seq) = prev.next_rtp();
            next.continue_from(ts, seq);
        }
        self.audio = Some(next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::aac_opus::tests::{decode_opus, zero_crossing_hz};
    use crate::rtmp::session::tests::{drive, Rng, FFMPEG_PUBLISH};
    use crate::rtmp::session::RtmpOutput;

    fn convert_fixture(policy: BFramePolicy) -> (RtmpToRtp, Vec<RtpOut>, Vec<RtpOut>) {
        let (outs, err) = drive(FFMPEG_PUBLISH, &mut Rng(11), true);
        assert_eq!(err, None);
        let mut conv = RtmpToRtp::new(policy);
        let (mut video, mut audio) = (Vec::new(), Vec::new());
        for o in &outs {
            match o {
                RtmpOutput::Video(f) => conv.push_video(f, &mut video).unwrap(),
                RtmpOutput::Audio(f) => conv.push_audio(f, &mut audio).unwrap(),
                _ => {}
            }
        }
        (conv, video, audio)
    }

    #[test]
    fn ffmpeg_publish_becomes_h264_and_opus_rtp() {
        let (conv, video, audio) = convert_fixture(BFramePolicy::Refuse);
        // libx264 -preset ultrafast: Constrained Baseline, level 1.0.
        assert_eq!(conv.video_profile_level_id(), Some(0x42c00a));
        assert_eq!(conv.audio_channels(), Some(1));
        let stats = conv.stats();
        assert_eq!(stats.video_frames, 30);
        assert_eq!(stats.audio_without_config, 0);
        assert_eq!(stats.aac_decode_errors, 0);

        // Two GOPs of 15 frames: two keyframe starts, first packet is one.
        assert!(video[0].keyframe_start);
        assert_eq!(video.iter().filter(|p| p.keyframe_start).count(), 2);
        assert_eq!(video.iter().filter(|p| p.marker).count(), 30);
        assert!(video.iter().all(|p| p.payload.len() <= super::super::h264_rtp::DEFAULT_MTU));
        for p in video.iter().filter(|p| p.keyframe_start) {
            assert!(crate::keyframe::is_keyframe_start(crate::packet::Codec::H264, &p.payload));
        }
        // 15 fps: 6000 ticks of 90 kHz between frames (ms-rounded RTMP timestamps: 66/67 ms).
        let frame_ts: Vec<u32> = video.iter().filter(|p| p.marker).map(|p| p.timestamp).collect();
        for w in frame_ts.windows(2) {
            let d = w[1].wrapping_sub(w[0]);
            assert!((5940..=6030).contains(&d), "{d}");
        }
        // Sequence numbers run without holes.
        assert!(video.windows(2).all(|w| w[1].seq == w[0].seq + 1));

        // 2 s of audio: ~100 Opus packets, 440 Hz intact.
        assert!((95..=103).contains(&audio.len()), "{} opus packets", audio.len());
        assert!(audio.windows(2).all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == 960));
        let hz = zero_crossing_hz(&decode_opus(&audio, 1));
        assert!((hz - 440.0).abs() < 5.0, "{hz} Hz");
    }

    #[test]
    fn audio_before_config_is_counted_and_unsupported_codecs_are_fatal() {
        let mut conv = RtmpToRtp::new(BFramePolicy::Refuse);
        let mut out = Vec::new();
        conv.push_audio(&AudioFrame { timestamp: 0, data: vec![0xaf, 0x01, 1, 2].into() }, &mut out).unwrap();
        assert_eq!(conv.stats().audio_without_config, 1);
        let e = conv.push_audio(&AudioFrame { timestamp: 0, data: vec![0x2f, 0x01].into() }, &mut out).unwrap_err();
        assert!(e.is_fatal() && e.to_string().contains("MP3"));
        let e = conv.push_video(&VideoFrame { timestamp: 0, data: vec![0x12, 0x00].into() }, &mut out).unwrap_err();
        assert!(e.is_fatal());
        let e =
            conv.push_video(&VideoFrame { timestamp: 0, data: vec![0x27, 0x01, 0, 0, 0, 0, 0, 0, 9].into() }, &mut out);
        assert!(!e.unwrap_err().is_fatal(), "truncated NAL is not fatal");
        let e = conv.push_video(
            &VideoFrame { timestamp: 0, data: vec![0x27, 0x01, 0, 0, 40, 0, 0, 0, 1, 0x41].into() },
            &mut out,
        );
        assert!(matches!(e, Err(IngestError::H264(H264Error::BFramesUnsupported { cts_ms: 40 }))));
        assert!(out.is_empty());
    }

    #[test]
    fn repeated_or_changed_audio_config_keeps_the_timeline() {
        let mut conv = RtmpToRtp::new(BFramePolicy::Refuse);
        let mut out = Vec::new();
        let cfg = |b: [u8; 2]| AudioFrame { timestamp: 0, data: vec![0xaf, 0x00, b[0], b[1]].into() };
        conv.push_audio(&cfg([0x12, 0x08]), &mut out).unwrap(); // 44.1k mono
        for i in 0..30u32 {
            conv.push_audio(&AudioFrame { timestamp: i * 23, data: vec![0xaf, 0x01, 0x00, 0x00].into() }, &mut out)
                .unwrap();
        }
        conv.push_audio(&cfg([0x12, 0x08]), &mut out).unwrap();
        conv.push_audio(&cfg([0x11, 0x90]), &mut out).unwrap(); // 48k stereo
        assert_eq!(conv.audio_channels(), Some(2));
        let n = out.len();
        for i in 30..60u32 {
            conv.push_audio(&AudioFrame { timestamp: i * 21, data: vec![0xaf, 0x01, 0x00, 0x00].into() }, &mut out)
                .unwrap();
        }
        assert!(out.len() > n);
        assert!(out.windows(2).all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == 960));
        assert!(out.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    }

    #[test]
    fn b_frame_stream_from_ffmpeg_is_refused() {
        let Some((_, outs)) = crate::rtmp::session::tests::ffmpeg_publish(&["-bf", "2"], "1") else { return };
        let mut conv = RtmpToRtp::new(BFramePolicy::Refuse);
        let mut out = Vec::new();
        let err = outs
            .iter()
            .filter_map(|o| match o {
                RtmpOutput::Video(f) => conv.push_video(f, &mut out).err(),
                _ => None,
            })
            .next();
        assert!(matches!(err, Some(IngestError::H264(H264Error::BFramesUnsupported { .. }))), "{err:?}");
        assert!(err.unwrap().is_fatal());
    }
}
