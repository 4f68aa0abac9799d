//! FLV tag bodies as RTMP carries them: the payload of a video message (type 9) is an FLV `VIDEODATA`
//! body, the payload of an audio message (type 8) an FLV `AUDIODATA` body.
//!
//! Only what sfumato forwards is understood: H.264 (AVC, codec id 7) video and AAC (sound format 10)
//! audio. Everything else is a clear [`FlvError::Unsupported`] so the caller can close the publisher with
//! a reason a person can act on ("set the encoder to H.264"). Every read is bounds-checked: input comes
//! straight from the network.
//!
//! ```text
//! VIDEODATA (legacy):  [frame type:4 | codec id:4] [AVCPacketType:8] [CompositionTime:SI24] [data..]
//!   AVCPacketType 0 -> AVCDecoderConfigurationRecord (SPS/PPS, NALU length size)
//!                 1 -> NAL units, each prefixed by a big-endian length of `length_size` bytes
//!                 2 -> end of sequence
//! AUDIODATA:           [sound format:4 | rate:2 | size:1 | type:1] [AACPacketType:8] [data..]
//!   AACPacketType 0 -> AudioSpecificConfig (ISO 14496-3 §1.6.2.1)
//!                 1 -> one raw AAC frame (no ADTS header)
//! ```

/// What can go wrong reading an FLV body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    /// Shorter than its own headers or length fields say.
    #[error("truncated FLV {0}")]
    Truncated(&'static str),
    /// Well-formed but not something sfumato can forward.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Structurally wrong (bad version, zero-length NAL unit, reserved value).
    #[error("invalid FLV {0}")]
    Invalid(&'static str),
}

impl FlvError {
    /// Unsupported input will not get better with the next tag: the publisher should be closed.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FlvError::Unsupported(_))
    }
}

/// H.264 decoder configuration (AVCDecoderConfigurationRecord, ISO 14496-15 §5.2.4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile_indication: u8,
    pub profile_compatibility: u8,
    pub level_indication: u8,
    /// Size in bytes (1, 2 or 4) of the length prefix of each NAL unit in NALU packets.
    pub nalu_length_size: u8,
    /// Sequence parameter sets, each a whole NAL unit (header byte included).
    pub sps: Vec<Vec<u8>>,
    /// Picture parameter sets, each a whole NAL unit.
    pub pps: Vec<Vec<u8>>,
}

/// One parsed video tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag<'a> {
    /// Sequence header: new SPS/PPS.
    AvcConfig(AvcConfig),
    /// One access unit. Split `data` with [`split_nalus`] and the config's `nalu_length_size`.
    AvcNalus {
        /// FLV frame type 1 (the encoder says: key frame).
        keyframe: bool,
        /// Signed composition time offset in ms: pts = dts + composition_time.
        composition_time: i32,
        data: &'a [u8],
    },
    /// AVC end of sequence (the stream is about to stop or re-configure).
    EndOfSequence,
    /// Frame type 5: a video info/command frame, carries no picture.
    Command,
}

/// AAC configuration (AudioSpecificConfig).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacConfig {
    /// Audio object type: 2 = AAC-LC, 5 = SBR (HE-AAC), 29 = PS (HE-AACv2).
    pub object_type: u8,
    pub sample_rate: u32,
    /// 1..=7 per ISO 14496-3 table 1.19; 0 = defined in a program config element.
    pub channel_config: u8,
    /// The config bytes as received (the AAC decoder wants them verbatim).
    pub raw: Vec<u8>,
}

/// One parsed audio tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag<'a> {
    AacConfig(AacConfig),
    /// One raw AAC access unit (1024 samples per channel for AAC-LC).
    AacFrame(&'a [u8]),
}

const FRAME_TYPE_KEY: u8 = 1;
const FRAME_TYPE_COMMAND: u8 = 5;
const CODEC_AVC: u8 = 7;
const SOUND_FORMAT_AAC: u8 = 10;

fn video_codec_name(id: u8) -> &'static str {
    match id {
        1 => "JPEG",
        2 => "Sorenson H.263",
        3 => "Screen video",
        4 => "On2 VP6",
        5 => "On2 VP6 with alpha",
        6 => "Screen video v2",
        12 => "HEVC (non-standard FLV codec id 12)",
        13 => "AV1 (non-standard FLV codec id 13)",
        _ => "unknown",
    }
}

fn sound_format_name(id: u8) -> &'static str {
    match id {
        0 => "linear PCM (platform endian)",
        1 => "ADPCM",
        2 => "MP3",
        3 => "linear PCM (little endian)",
        4..=6 => "Nellymoser",
        7 => "G.711 A-law",
        8 => "G.711 mu-law",
        9 => "enhanced RTMP audio (ExHeader)",
        11 => "Speex",
        14 => "MP3 8 kHz",
        15 => "device-specific sound",
        _ => "unknown",
    }
}

/// Parses the body of an RTMP video message.
pub fn parse_video(body: &[u8]) -> Result<VideoTag<'_>, FlvError> {
    let &b0 = body.first().ok_or(FlvError::Truncated("video tag header"))?;
    if b0 & 0x80 != 0 {
        // Enhanced RTMP (v1/v2): IsExHeader, then a FourCC naming the codec.
        let fourcc = body.get(1..5).map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_else(|| "?".into());
        return Err(FlvError::Unsupported(format!(
            "enhanced-RTMP video (FourCC '{fourcc}'); publish H.264 (AVC) instead"
        )));
    }
    let frame_type = b0 >> 4;
    let codec = b0 & 0x0f;
    if codec != CODEC_AVC {
        return Err(FlvError::Unsupported(format!(
            "video codec {} (FLV codec id {codec}); only H.264 (AVC) is supported",
            video_codec_name(codec)
        )));
    }
    if frame_type == FRAME_TYPE_COMMAND {
        return Ok(VideoTag::Command);
    }
    if body.len() < 5 {
        return Err(FlvError::Truncated("AVC video packet header"));
    }
    let packet_type = body[1];
    let cts = i24(body[2], body[3], body[4]);
    let data = &body[5..];
    match packet_type {
        0 => parse_avc_config(data).map(VideoTag::AvcConfig),
        1 => Ok(VideoTag::AvcNalus { keyframe: frame_type == FRAME_TYPE_KEY, composition_time: cts, data }),
        2 => Ok(VideoTag::EndOfSequence),
        _ => Err(FlvError::Invalid("AVC packet type")),
    }
}

/// Sign-extends a big-endian 24-bit value.
fn i24(a: u8, b: u8, c: u8) -> i32 {
    (i32::from_be_bytes([a, b, c, 0])) >> 8
}

/// Parses an AVCDecoderConfigurationRecord.
pub fn parse_avc_config(d: &[u8]) -> Result<AvcConfig, FlvError> {
    if d.len() < 6 {
        return Err(FlvError::Truncated("AVCDecoderConfigurationRecord"));
    }
    if d[0] != 1 {
        return Err(FlvError::Invalid("AVCDecoderConfigurationRecord version"));
    }
    let nalu_length_size = (d[4] & 0x03) + 1;
    let mut at = 5;
    let num_sps = (d[at] & 0x1f) as usize;
    at += 1;
    let mut sps = Vec::with_capacity(num_sps);
    for _ in 0..num_sps {
        sps.push(read_u16_prefixed(d, &mut at, "SPS")?.to_vec());
    }
    let &num_pps = d.get(at).ok_or(FlvError::Truncated("PPS count"))?;
    at += 1;
    let mut pps = Vec::with_capacity(num_pps as usize);
    for _ in 0..num_pps {
        pps.push(read_u16_prefixed(d, &mut at, "PPS")?.to_vec());
    }
    // High-profile extension fields (chroma format, bit depth, SPS extensions) may follow: not needed.
    Ok(AvcConfig {
        profile_indication: d[1],
        profile_compatibility: d[2],
        level_indication: d[3],
        nalu_length_size,
        sps,
        pps,
    })
}

fn read_u16_prefixed<'a>(d: &'a [u8], at: &mut usize, what: &'static str) -> Result<&'a [u8], FlvError> {
    let len_bytes = d.get(*at..*at + 2).ok_or(FlvError::Truncated(what))?;
    let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
    let start = *at + 2;
    let unit = d.get(start..start + len).ok_or(FlvError::Truncated(what))?;
    if unit.is_empty() {
        return Err(FlvError::Invalid("empty parameter set"));
    }
    *at = start + len;
    Ok(unit)
}

/// Splits length-prefixed NAL units (AVCC format) into `out` (cleared first). Zero-length units are
/// skipped; a length running past the end is an error.
pub fn split_nalus<'a>(data: &'a [u8], length_size: u8, out: &mut Vec<&'a [u8]>) -> Result<(), FlvError> {
    out.clear();
    let ls = length_size as usize;
    if !(1..=4).contains(&ls) {
        return Err(FlvError::Invalid("NALU length size"));
    }
    let mut at = 0usize;
    while at < data.len() {
        let prefix = data.get(at..at + ls).ok_or(FlvError::Truncated("NALU length"))?;
        let len = prefix.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        let start = at + ls;
        let end = start.checked_add(len).ok_or(FlvError::Truncated("NAL unit"))?;
        let unit = data.get(start..end).ok_or(FlvError::Truncated("NAL unit"))?;
        if !unit.is_empty() {
            out.push(unit);
        }
        at = end;
    }
    Ok(())
}

/// Parses the body of an RTMP audio message.
pub fn parse_audio(body: &[u8]) -> Result<AudioTag<'_>, FlvError> {
    let &b0 = body.first().ok_or(FlvError::Truncated("audio tag header"))?;
    let format = b0 >> 4;
    if format != SOUND_FORMAT_AAC {
        return Err(FlvError::Unsupported(format!(
            "audio format {} (FLV sound format {format}); only AAC is supported",
            sound_format_name(format)
        )));
    }
    let &packet_type = body.get(1).ok_or(FlvError::Truncated("AAC packet type"))?;
    let data = &body[2..];
    match packet_type {
        0 => parse_audio_specific_config(data).map(AudioTag::AacConfig),
        1 => Ok(AudioTag::AacFrame(data)),
        _ => Err(FlvError::Invalid("AAC packet type")),
    }
}

/// Sampling frequencies by index (ISO 14496-3 table 1.18).
pub const AAC_SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// Parses an AudioSpecificConfig (object type, sampling frequency, channel configuration).
pub fn parse_audio_specific_config(d: &[u8]) -> Result<AacConfig, FlvError> {
    let mut r = BitReader::new(d);
    let mut object_type = r.read(5).ok_or(FlvError::Truncated("AudioSpecificConfig"))?;
    if object_type == 31 {
        object_type = 32 + r.read(6).ok_or(FlvError::Truncated("AudioSpecificConfig"))?;
    }
    let freq_index = r.read(4).ok_or(FlvError::Truncated("AudioSpecificConfig"))?;
    let sample_rate = match freq_index {
        15 => r.read(24).ok_or(FlvError::Truncated("AudioSpecificConfig"))?,
        i => *AAC_SAMPLE_RATES.get(i as usize).ok_or(FlvError::Invalid("AAC sampling frequency index"))?,
    };
    if sample_rate == 0 {
        return Err(FlvError::Invalid("AAC sample rate 0"));
    }
    let channel_config = r.read(4).ok_or(FlvError::Truncated("AudioSpecificConfig"))? as u8;
    Ok(AacConfig { object_type: object_type as u8, sample_rate, channel_config, raw: d.to_vec() })
}

/// Minimal MSB-first bit reader.
struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, bit: 0 }
    }

    /// Reads `n` ≤ 32 bits, or None past the end.
    fn read(&mut self, n: u32) -> Option<u32> {
        let mut v: u32 = 0;
        for _ in 0..n {
            let byte = *self.data.get(self.bit / 8)?;
            let b = (byte >> (7 - (self.bit % 8))) & 1;
            v = (v << 1) | b as u32;
            self.bit += 1;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real sequence header (ffmpeg/libx264, 160x120, High profile, level 1.1).
    pub(crate) fn sample_avc_config_body() -> Vec<u8> {
        let sps = [0x67, 0x64, 0x00, 0x0b, 0xac, 0xd9, 0x42, 0x8d, 0xf8, 0x84, 0x00];
        let pps = [0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
        let mut b = vec![0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x0b, 0xff, 0xe1];
        b.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        b.extend_from_slice(&sps);
        b.push(1);
        b.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        b.extend_from_slice(&pps);
        b
    }

    #[test]
    fn avc_sequence_header() {
        let body = sample_avc_config_body();
        let VideoTag::AvcConfig(c) = parse_video(&body).unwrap() else { panic!("not a config") };
        assert_eq!(c.nalu_length_size, 4);
        assert_eq!((c.profile_indication, c.level_indication), (0x64, 0x0b));
        assert_eq!(c.sps.len(), 1);
        assert_eq!(c.sps[0][0] & 0x1f, 7);
        assert_eq!(c.pps.len(), 1);
        assert_eq!(c.pps[0][0] & 0x1f, 8);
    }

    #[test]
    fn avc_nalus_with_negative_composition_time() {
        // Frame type 2 (inter), AVC, NALU packet, cts = -40 ms, two NAL units with 4-byte lengths.
        let cts = (-40i32).to_be_bytes();
        let mut body = vec![0x27, 0x01, cts[1], cts[2], cts[3]];
        body.extend_from_slice(&[0, 0, 0, 3, 0x41, 0xaa, 0xbb, 0, 0, 0, 2, 0x01, 0xcc]);
        let VideoTag::AvcNalus { keyframe, composition_time, data } = parse_video(&body).unwrap() else {
            panic!("not nalus")
        };
        assert!(!keyframe);
        assert_eq!(composition_time, -40);
        let mut nalus = Vec::new();
        split_nalus(data, 4, &mut nalus).unwrap();
        assert_eq!(nalus, vec![&[0x41, 0xaa, 0xbb][..], &[0x01, 0xcc][..]]);
        // A length past the end is an error, not a panic.
        assert_eq!(split_nalus(&[0, 0, 0, 9, 1], 4, &mut nalus), Err(FlvError::Truncated("NAL unit")));
        assert_eq!(split_nalus(&[0, 0], 4, &mut nalus), Err(FlvError::Truncated("NALU length")));
        assert!(split_nalus(&[0xff; 8], 4, &mut nalus).is_err());
        // Two-byte lengths and an empty unit (skipped).
        split_nalus(&[0, 0, 0, 1, 0x65], 2, &mut nalus).unwrap();
        assert_eq!(nalus, vec![&[0x65][..]]);
    }

    #[test]
    fn keyframe_flag_and_other_packet_types() {
        let body = [0x17, 0x01, 0, 0, 0, 0, 0, 0, 1, 0x65];
        assert!(matches!(parse_video(&body), Ok(VideoTag::AvcNalus { keyframe: true, composition_time: 0, .. })));
        assert_eq!(parse_video(&[0x17, 0x02, 0, 0, 0]), Ok(VideoTag::EndOfSequence));
        assert_eq!(parse_video(&[0x57, 0x00]), Ok(VideoTag::Command));
        assert_eq!(parse_video(&[0x17, 0x07, 0, 0, 0]), Err(FlvError::Invalid("AVC packet type")));
    }

    #[test]
    fn non_avc_video_is_unsupported() {
        let e = parse_video(&[0x22, 0x00]).unwrap_err();
        assert!(e.is_fatal());
        assert!(e.to_string().contains("Sorenson H.263"), "{e}");
        let e = parse_video(&[0x14, 0x00]).unwrap_err();
        assert!(e.to_string().contains("VP6"), "{e}");
        let e = parse_video(b"\x90hvc1rest").unwrap_err();
        assert!(e.to_string().contains("hvc1"), "{e}");
    }

    #[test]
    fn truncated_video_is_an_error() {
        assert_eq!(parse_video(&[]), Err(FlvError::Truncated("video tag header")));
        assert_eq!(parse_video(&[0x17, 0x01, 0]), Err(FlvError::Truncated("AVC video packet header")));
        let full = sample_avc_config_body();
        for cut in 5..full.len() {
            assert!(parse_video(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn aac_config_and_frames() {
        // AAC-LC, 44.1 kHz (index 4), stereo: 0x12 0x10.
        let AudioTag::AacConfig(c) = parse_audio(&[0xaf, 0x00, 0x12, 0x10]).unwrap() else { panic!("not a config") };
        assert_eq!((c.object_type, c.sample_rate, c.channel_config), (2, 44100, 2));
        assert_eq!(c.raw, vec![0x12, 0x10]);
        // AAC-LC, 48 kHz (index 3), mono: 0x11 0x88.
        let c = parse_audio_specific_config(&[0x11, 0x88]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channel_config), (2, 48000, 1));
        // Explicit frequency (index 15).
        let c = parse_audio_specific_config(&[0x17, 0x80, 0x3e, 0x80, 0x10]).unwrap();
        assert_eq!(c.sample_rate, 0x7d00);
        assert_eq!(parse_audio(&[0xaf, 0x01, 1, 2, 3]), Ok(AudioTag::AacFrame(&[1, 2, 3][..])));
        assert_eq!(parse_audio(&[0xaf]), Err(FlvError::Truncated("AAC packet type")));
        assert!(parse_audio_specific_config(&[0x12]).is_err());
        assert!(parse_audio_specific_config(&[0x16, 0x90]).is_err(), "reserved frequency index 13");
    }

    #[test]
    fn mp3_and_others_are_unsupported() {
        let e = parse_audio(&[0x2f, 0x00]).unwrap_err();
        assert!(e.is_fatal());
        assert!(e.to_string().contains("MP3"), "{e}");
        assert!(parse_audio(&[0xbf]).unwrap_err().to_string().contains("Speex"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            let mut nalus = Vec::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            let _ = parse_video(&bytes);
            let _ = parse_audio(&bytes);
            let _ = parse_avc_config(&bytes);
            let _ = parse_audio_specific_config(&bytes);
            let _ = split_nalus(&bytes, (x % 5) as u8, &mut nalus);
        }
    }
}
