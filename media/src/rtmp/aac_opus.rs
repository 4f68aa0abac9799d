//! AAC-LC (from RTMP) → Opus (for WebRTC): decode, resample to 48 kHz, encode 20 ms frames.
//!
//! - Decoding: `symphonia-codec-aac` (pure Rust, AAC-LC only: HE-AAC/SBR, PS and > 2 channels are
//!   refused at configuration time with [`AudioError::Unsupported`]).
//! - Resampling: [`Resampler`] (exact rational ratio, any AAC rate → 48 kHz).
//! - Encoding: libopus through the `opus` crate, 960 samples per channel per packet, the channel count of
//!   the source (mono or stereo).
//!
//! Timestamps (48 kHz RTP clock) start at the first RTMP timestamp × 48 (the video track uses × 90, so
//! both share the RTMP time origin) and are continuous: each packet is 960 after the previous one. When the RTMP
//! timestamps show a gap in the input (the encoder dropped audio, or paused), the RTP timestamp jumps by
//! the gap rounded to whole frames; it never goes backwards (a backwards jump of the input is absorbed).
//! A frame that fails to decode is replaced by silence of the same length, so the timeline holds; the
//! failure is counted ([`AacToOpus::decode_errors`]). The decoder runs under `catch_unwind`: a panic on
//! malformed input is a decode error and the decoder is rebuilt.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use symphonia_codec_aac::AacDecoder;
use symphonia_core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia_core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia_core::packet::PacketRef;
use symphonia_core::units::{Duration, Timestamp};

use super::flv::AacConfig;
use super::resample::Resampler;
use super::RtpOut;

/// RTP clock rate of Opus.
pub const AUDIO_CLOCK_RATE: u32 = 48_000;
/// Samples per channel in one Opus packet (20 ms at 48 kHz).
pub const OPUS_FRAME: usize = 960;
/// Samples per channel in one AAC-LC frame.
const AAC_FRAME: usize = 1024;
/// An input gap shorter than this (timestamp jitter, ms rounding) is not a gap.
const GAP_THRESHOLD_MS: f64 = 60.0;
/// An input timestamp this far behind the expected one re-anchors the input clock (encoder restart).
const BACKWARDS_RESYNC_MS: f64 = 1000.0;
/// Largest Opus packet we accept from the encoder (libopus recommends 4000 bytes).
const MAX_OPUS_PACKET: usize = 4000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    #[error("opus encoder: {0}")]
    Opus(String),
}

/// Default Opus bitrate: 64 kbit/s mono, 128 kbit/s stereo (music-grade).
pub fn default_bitrate(channels: usize) -> i32 {
    64_000 * channels as i32
}

/// One AAC track → Opus packets. See the module docs.
pub struct AacToOpus {
    config: AacConfig,
    decoder: AacDecoder,
    channels: usize,
    resampler: Resampler,
    encoder: opus::Encoder,
    /// Interleaved 48 kHz samples waiting to fill a 20 ms frame.
    pcm: Vec<f32>,
    decoded: Vec<f32>,
    opus_buf: Vec<u8>,
    /// RTP timestamp of the first sample in `pcm`.
    next_ts: u32,
    next_seq: u64,
    /// Input clock: last RTMP timestamp, its unwrapped value, and where the next frame is expected (ms).
    last_in: Option<(u32, i64)>,
    expected_ms: f64,
    /// The RTP timeline was set (by the first input, or by `continue_from`).
    anchored: bool,
    decode_errors: u64,
    gaps: u64,
}

impl std::fmt::Debug for AacToOpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AacToOpus")
            .field("config", &self.config)
            .field("next_ts", &self.next_ts)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

fn new_decoder(config: &AacConfig) -> Result<AacDecoder, AudioError> {
    let mut params = AudioCodecParameters::new();
    params.for_codec(CODEC_ID_AAC).with_extra_data(config.raw.clone().into_boxed_slice());
    catch_unwind(|| AacDecoder::try_new(&params, &AudioDecoderOptions::default()))
        .map_err(|_| AudioError::Unsupported("AAC decoder panicked on the AudioSpecificConfig".into()))?
        .map_err(|e| AudioError::Unsupported(format!("AAC config {:02x?}: {e}", config.raw)))
}

impl AacToOpus {
    /// Sets up for one AudioSpecificConfig, with the default bitrate.
    pub fn new(config: &AacConfig) -> Result<Self, AudioError> {
        let channels = config.channel_config as usize;
        Self::with_bitrate(config, default_bitrate(channels.clamp(1, 2)))
    }

    pub fn with_bitrate(config: &AacConfig, bitrate: i32) -> Result<Self, AudioError> {
        if config.object_type != 2 {
            let name = match config.object_type {
                5 => "HE-AAC (SBR)",
                29 => "HE-AACv2 (PS)",
                1 => "AAC Main",
                _ => "this AAC object type",
            };
            return Err(AudioError::Unsupported(format!(
                "{name} (object type {}); set the encoder to AAC-LC",
                config.object_type
            )));
        }
        let channels = config.channel_config as usize;
        if !(1..=2).contains(&channels) {
            return Err(AudioError::Unsupported(format!(
                "AAC channel configuration {}; only mono and stereo are supported",
                config.channel_config
            )));
        }
        if !(7350..=96000).contains(&config.sample_rate) {
            return Err(AudioError::Unsupported(format!("AAC sample rate {} Hz", config.sample_rate)));
        }
        let decoder = new_decoder(config)?;
        let resampler = Resampler::new(config.sample_rate, AUDIO_CLOCK_RATE, channels)
            .ok_or_else(|| AudioError::Unsupported(format!("AAC sample rate {} Hz", config.sample_rate)))?;
        let ch = if channels == 2 { opus::Channels::Stereo } else { opus::Channels::Mono };
        let mut encoder = opus::Encoder::new(AUDIO_CLOCK_RATE, ch, opus::Application::Audio)
            .map_err(|e| AudioError::Opus(e.to_string()))?;
        encoder.set_bitrate(opus::Bitrate::Bits(bitrate)).map_err(|e| AudioError::Opus(e.to_string()))?;
        Ok(AacToOpus {
            config: config.clone(),
            decoder,
            channels,
            resampler,
            encoder,
            pcm: Vec::with_capacity(OPUS_FRAME * channels * 3),
            decoded: Vec::with_capacity(AAC_FRAME * channels),
            opus_buf: vec![0; MAX_OPUS_PACKET],
            next_ts: 0,
            next_seq: 0,
            last_in: None,
            expected_ms: 0.0,
            anchored: false,
            decode_errors: 0,
            gaps: 0,
        })
    }

    /// Continues the RTP timeline of a previous converter (same track, new AAC config).
    pub fn continue_from(&mut self, next_ts: u32, next_seq: u64) {
        self.next_ts = next_ts;
        self.next_seq = next_seq;
        self.anchored = true;
    }

    /// libopus complexity 0..=10 (default 10; 5 costs about half the CPU for a small quality loss).
    pub fn set_complexity(&mut self, complexity: i32) -> Result<(), AudioError> {
        self.encoder.set_complexity(complexity.clamp(0, 10)).map_err(|e| AudioError::Opus(e.to_string()))
    }

    pub fn config(&self) -> &AacConfig {
        &self.config
    }

    /// Channels of the Opus stream (1 or 2).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// RTP timestamp and sequence number the next packet will get.
    pub fn next_rtp(&self) -> (u32, u64) {
        (self.next_ts, self.next_seq)
    }

    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Input gaps that moved the RTP timestamp forward.
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// Duration of one AAC frame in ms.
    fn frame_ms(&self) -> f64 {
        AAC_FRAME as f64 * 1000.0 / self.config.sample_rate as f64
    }

    /// One raw AAC frame with its RTMP timestamp (ms). Appends the finished Opus packets to `out`.
    pub fn push(&mut self, timestamp_ms: u32, aac: &[u8], out: &mut Vec<RtpOut>) -> Result<(), AudioError> {
        let now = match self.last_in {
            None => 0,
            Some((last, ext)) => ext.wrapping_add(timestamp_ms.wrapping_sub(last) as i32 as i64),
        };
        let first = self.last_in.is_none();
        self.last_in = Some((timestamp_ms, now));
        let now = now as f64;
        if first {
            self.expected_ms = now;
            if !self.anchored {
                // RTP = RTMP ms × 48: the same time origin as the video track (RTMP ms × 90).
                self.next_ts = (timestamp_ms as u64 * (AUDIO_CLOCK_RATE as u64 / 1000)) as u32;
                self.anchored = true;
            }
        }
        let gap_ms = now - self.expected_ms;
        if gap_ms > GAP_THRESHOLD_MS {
            self.skip_gap(gap_ms, out)?;
            self.expected_ms = now;
        } else if gap_ms < -BACKWARDS_RESYNC_MS {
            self.expected_ms = now;
        }
        self.expected_ms += self.frame_ms();

        self.decode(aac);
        let decoded = std::mem::take(&mut self.decoded);
        self.resampler.process(&decoded, &mut self.pcm);
        self.decoded = decoded;
        self.encode_ready(out)
    }

    /// Decodes into `self.decoded` (interleaved); silence of one frame on failure.
    fn decode(&mut self, aac: &[u8]) {
        self.decoded.clear();
        let packet = PacketRef::new(0, Timestamp::new(0), Duration::new(AAC_FRAME as u64), aac);
        let decoder = &mut self.decoder;
        let decoded = &mut self.decoded;
        let channels = self.channels;
        let result = catch_unwind(AssertUnwindSafe(|| match decoder.decode_ref(&packet) {
            Ok(buf) if buf.num_planes() == channels => {
                buf.copy_to_vec_interleaved::<f32>(decoded);
                true
            }
            _ => false,
        }));
        match result {
            Ok(true) => {}
            Ok(false) => {
                self.decode_errors += 1;
                self.decoded.clear();
                self.decoded.resize(AAC_FRAME * self.channels, 0.0);
            }
            Err(_) => {
                self.decode_errors += 1;
                // The decoder's state is unknown after a panic: rebuild it (the config was accepted before).
                if let Ok(d) = new_decoder(&self.config) {
                    self.decoder = d;
                }
                self.decoded.clear();
                self.decoded.resize(AAC_FRAME * self.channels, 0.0);
            }
        }
    }

    /// The input jumped `gap_ms` ahead: flush the partial frame (padded with silence), then move the
    /// timestamp so that the next sample lands where the input says, to the nearest frame.
    fn skip_gap(&mut self, gap_ms: f64, out: &mut Vec<RtpOut>) -> Result<(), AudioError> {
        self.gaps += 1;
        let pending = self.pcm.len() / self.channels;
        let mut advance = gap_ms * AUDIO_CLOCK_RATE as f64 / 1000.0;
        if pending > 0 {
            advance += pending as f64;
            self.pcm.resize(OPUS_FRAME * self.channels, 0.0);
            self.encode_ready(out)?;
            advance -= OPUS_FRAME as f64;
        }
        let frames = (advance / OPUS_FRAME as f64).round().max(0.0);
        // Absurd gaps wrap the 32-bit RTP clock like any other timestamp.
        let samples = (frames as u64).wrapping_mul(OPUS_FRAME as u64);
        self.next_ts = self.next_ts.wrapping_add(samples as u32);
        Ok(())
    }

    fn encode_ready(&mut self, out: &mut Vec<RtpOut>) -> Result<(), AudioError> {
        let frame = OPUS_FRAME * self.channels;
        let mut at = 0;
        while self.pcm.len() - at >= frame {
            let n = self
                .encoder
                .encode_float(&self.pcm[at..at + frame], &mut self.opus_buf)
                .map_err(|e| AudioError::Opus(e.to_string()))?;
            out.push(RtpOut {
                payload: Arc::from(&self.opus_buf[..n]),
                timestamp: self.next_ts,
                marker: false,
                keyframe_start: false,
                seq: self.next_seq,
            });
            self.next_ts = self.next_ts.wrapping_add(OPUS_FRAME as u32);
            self.next_seq = self.next_seq.wrapping_add(1);
            at += frame;
        }
        self.pcm.drain(..at);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rtmp::flv::parse_audio_specific_config;

    pub(crate) const MONO_44100: &[u8] = include_bytes!("../../tests/fixtures/sine440_44100_mono.aac");
    pub(crate) const STEREO_48000: &[u8] = include_bytes!("../../tests/fixtures/sine440_48000_stereo.aac");
    pub(crate) const MONO_22050: &[u8] = include_bytes!("../../tests/fixtures/sine440_22050_mono.aac");

    /// Splits an ADTS stream into (AudioSpecificConfig, raw frames).
    pub(crate) fn adts_frames(data: &[u8]) -> (AacConfig, Vec<&[u8]>) {
        let mut frames = Vec::new();
        let mut asc = None;
        let mut at = 0;
        while at + 7 <= data.len() {
            let h = &data[at..];
            assert_eq!((h[0], h[1] & 0xf6), (0xff, 0xf0), "ADTS sync at {at}");
            let protection_absent = h[1] & 1 == 1;
            let profile = (h[2] >> 6) + 1;
            let freq = (h[2] >> 2) & 0x0f;
            let chan = ((h[2] & 1) << 2) | (h[3] >> 6);
            let len = (((h[3] & 3) as usize) << 11) | ((h[4] as usize) << 3) | (h[5] as usize >> 5);
            let header = if protection_absent { 7 } else { 9 };
            frames.push(&data[at + header..at + len]);
            let cfg = ((profile as u16) << 11) | ((freq as u16) << 7) | ((chan as u16) << 3);
            asc.get_or_insert(cfg.to_be_bytes());
            at += len;
        }
        (parse_audio_specific_config(&asc.unwrap()).unwrap(), frames)
    }

    /// Converts a fixture with RTMP-style ms timestamps; returns the packets.
    fn convert(data: &[u8]) -> (AacToOpus, Vec<RtpOut>) {
        let (cfg, frames) = adts_frames(data);
        let mut c = AacToOpus::new(&cfg).unwrap();
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let ts = (i as u64 * 1024 * 1000 / cfg.sample_rate as u64) as u32;
            c.push(ts, f, &mut out).unwrap();
        }
        (c, out)
    }

    /// Decodes Opus packets back to PCM (first channel).
    pub(crate) fn decode_opus(pkts: &[RtpOut], channels: usize) -> Vec<f32> {
        let ch = if channels == 2 { opus::Channels::Stereo } else { opus::Channels::Mono };
        let mut dec = opus::Decoder::new(48000, ch).unwrap();
        let mut pcm = Vec::new();
        let mut buf = vec![0f32; 5760 * channels];
        for p in pkts {
            let n = dec.decode_float(&p.payload, &mut buf, false).unwrap();
            assert_eq!(n, OPUS_FRAME);
            pcm.extend(buf[..n * channels].iter().step_by(channels));
        }
        pcm
    }

    /// Zero crossings per second of the steady part.
    pub(crate) fn zero_crossing_hz(pcm: &[f32]) -> f64 {
        let steady = &pcm[pcm.len() / 5..pcm.len() * 4 / 5];
        let crossings = steady.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        crossings as f64 / 2.0 / (steady.len() as f64 / 48000.0)
    }

    fn rms(pcm: &[f32]) -> f64 {
        (pcm.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    #[test]
    fn tone_survives_for_each_fixture() {
        for (name, data, channels) in
            [("44.1k mono", MONO_44100, 1), ("48k stereo", STEREO_48000, 2), ("22.05k mono", MONO_22050, 1)]
        {
            let (c, pkts) = convert(data);
            assert_eq!(c.channels(), channels);
            assert_eq!(c.decode_errors(), 0, "{name}");
            assert_eq!(c.gaps(), 0, "{name}");
            // ~1 s of audio (+ the encoder's priming frame): about 50 packets of 20 ms.
            assert!((48..=53).contains(&pkts.len()), "{name}: {} packets", pkts.len());
            for (i, p) in pkts.iter().enumerate() {
                assert_eq!(p.timestamp, (i * OPUS_FRAME) as u32, "{name}");
                assert_eq!(p.seq, i as u64);
                assert!(!p.marker && !p.keyframe_start);
            }
            let pcm = decode_opus(&pkts, channels);
            let hz = zero_crossing_hz(&pcm);
            assert!((hz - 440.0).abs() < 5.0, "{name}: {hz} Hz");
            // ffmpeg's sine source is at 1/8 full scale: RMS ≈ 0.125 / sqrt(2).
            let level = rms(&pcm[pcm.len() / 5..pcm.len() * 4 / 5]);
            assert!((0.07..0.11).contains(&level), "{name}: rms {level}");
        }
    }

    #[test]
    fn gap_advances_timestamp_by_whole_frames_and_never_backwards() {
        let (cfg, frames) = adts_frames(MONO_44100);
        let mut c = AacToOpus::new(&cfg).unwrap();
        let mut out = Vec::new();
        let mut ts = 0u32;
        for f in &frames[..20] {
            c.push(ts, f, &mut out).unwrap();
            ts += 23;
        }
        let before = out.len();
        let last_ts = out.last().unwrap().timestamp;
        // 500 ms of silence from the encoder.
        ts += 500;
        for f in &frames[20..30] {
            c.push(ts, f, &mut out).unwrap();
            ts += 23;
        }
        assert_eq!(c.gaps(), 1);
        let jumps: Vec<u32> =
            out[before - 1..].windows(2).map(|w| w[1].timestamp.wrapping_sub(w[0].timestamp)).collect();
        assert!(jumps.iter().all(|j| j % OPUS_FRAME as u32 == 0));
        let big: Vec<u32> = jumps.iter().copied().filter(|&j| j > OPUS_FRAME as u32).collect();
        assert_eq!(big.len(), 1, "{jumps:?}");
        // The jump covers the 500 ms gap to within a frame.
        let jump_ms = (big[0] - OPUS_FRAME as u32) as f64 / 48.0;
        assert!((jump_ms - 500.0).abs() <= 20.0, "jump {jump_ms} ms");
        assert!(out.last().unwrap().timestamp > last_ts);

        // The encoder's clock goes back by 10 s: output stays contiguous.
        let n = out.len();
        ts = ts.wrapping_sub(10_000); // wraps below 0, like an RTMP clock would
        for f in &frames[30..40] {
            c.push(ts, f, &mut out).unwrap();
            ts += 23;
        }
        assert!(out[n - 1..].windows(2).all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == OPUS_FRAME as u32));
        assert_eq!(c.gaps(), 1);
    }

    #[test]
    fn absurd_timestamps_do_not_panic() {
        let (cfg, frames) = adts_frames(MONO_44100);
        let mut c = AacToOpus::new(&cfg).unwrap();
        let mut out = Vec::new();
        for (i, ts) in [0u32, u32::MAX, 0x7fff_ffff, 0x8000_0000, 5, u32::MAX - 1, 0].iter().enumerate() {
            c.push(*ts, frames[i], &mut out).unwrap();
        }
        let ts: Vec<u32> = out.iter().map(|p| p.timestamp).collect();
        assert!(ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) as i32 > 0), "{ts:?}");
    }

    #[test]
    fn garbage_frames_become_silence() {
        let (cfg, frames) = adts_frames(MONO_44100);
        let mut c = AacToOpus::new(&cfg).unwrap();
        let mut out = Vec::new();
        let mut x = 12345u64;
        for i in 0..200u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let junk: Vec<u8> = (0..(x % 300)).map(|k| (x >> (k % 56)) as u8).collect();
            c.push(i * 23, &junk, &mut out).unwrap();
            c.push(i * 23 + 23, frames[(i % 40) as usize], &mut out).unwrap();
        }
        assert!(c.decode_errors() > 0);
        assert!(out.windows(2).all(|w| w[1].timestamp.wrapping_sub(w[0].timestamp) == OPUS_FRAME as u32));
    }

    #[test]
    fn unsupported_configs_are_refused() {
        let he = AacConfig { object_type: 5, sample_rate: 44100, channel_config: 2, raw: vec![0x2a, 0x10] };
        let e = AacToOpus::new(&he).unwrap_err();
        assert!(e.to_string().contains("HE-AAC"), "{e}");
        let six = AacConfig { object_type: 2, sample_rate: 48000, channel_config: 6, raw: vec![0x11, 0xb0] };
        assert!(AacToOpus::new(&six).unwrap_err().to_string().contains("channel configuration 6"));
        let odd =
            AacConfig { object_type: 2, sample_rate: 1000, channel_config: 1, raw: vec![0x17, 0x80, 0, 0x7d, 0x08] };
        assert!(AacToOpus::new(&odd).is_err());
    }

    /// This thread's CPU time (ns on CPU, from /proc/thread-self/schedstat): unaffected by other load.
    fn thread_cpu() -> std::time::Duration {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        std::time::Duration::from_nanos(s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// CPU cost: `cargo test --release -p sfumato-media -- --ignored --nocapture aac_to_opus_cpu`.
    #[test]
    #[ignore = "measurement"]
    fn aac_to_opus_cpu() {
        for (name, data, complexity) in [
            ("44.1k mono", MONO_44100, 10),
            ("48k stereo", STEREO_48000, 10),
            ("22.05k mono", MONO_22050, 10),
            ("44.1k mono, complexity 5", MONO_44100, 5),
            ("48k stereo, complexity 5", STEREO_48000, 5),
        ] {
            let (cfg, frames) = adts_frames(data);
            let mut c = AacToOpus::new(&cfg).unwrap();
            c.set_complexity(complexity).unwrap();
            let mut out = Vec::new();
            let reps = 60;
            let start = thread_cpu();
            let mut ts = 0f64;
            for _ in 0..reps {
                for f in &frames {
                    c.push(ts as u32, f, &mut out).unwrap();
                    ts += 1_024_000.0 / cfg.sample_rate as f64;
                }
                out.clear();
            }
            let elapsed = thread_cpu() - start;
            let audio_secs = reps as f64 * frames.len() as f64 * 1024.0 / cfg.sample_rate as f64;
            println!(
                "{name}: {:.2} ms CPU per second of audio ({:.1} s of audio in {:?} of thread CPU time)",
                elapsed.as_secs_f64() * 1000.0 / audio_secs,
                audio_secs,
                elapsed
            );
            // Breakdown: decode + resample only.
            let mut r = Resampler::new(cfg.sample_rate, 48000, c.channels()).unwrap();
            let mut d = new_decoder(&cfg).unwrap();
            let start = thread_cpu();
            let mut pcm = Vec::new();
            let mut res = Vec::new();
            for _ in 0..reps {
                for f in &frames {
                    let p = PacketRef::new(0, Timestamp::new(0), Duration::new(1024), f);
                    d.decode_ref(&p).unwrap().copy_to_vec_interleaved::<f32>(&mut pcm);
                    r.process(&pcm, &mut res);
                    res.clear();
                }
            }
            println!(
                "  of which decode+resample: {:.2} ms",
                (thread_cpu() - start).as_secs_f64() * 1000.0 / audio_secs
            );
        }
    }
}
