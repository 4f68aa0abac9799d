//! H.264 access units (as NAL units from FLV) → RTP payloads per RFC 6184, packetization-mode 1.
//!
//! - A NAL unit that fits the MTU goes as a single-NAL-unit packet, a larger one as FU-A fragments.
//! - Before each IDR access unit that does not carry its own SPS, the SPS and PPS from the last
//!   AVCDecoderConfigurationRecord are sent first, aggregated into one STAP-A when they fit.
//! - The marker bit is set on the last packet of the access unit; `keyframe_start` on the first packet of
//!   an IDR access unit (which is then a STAP-A/SPS, so `keyframe::is_keyframe_start` agrees).
//! - Access-unit delimiters and filler data are dropped; every other NAL unit is passed byte for byte.
//!
//! Timestamps: 90 kHz, from the RTMP timestamp (ms, the decode time) plus the composition time offset
//! (RTP = RTMP ms × 90, so audio and video RTP timestamps share the RTMP time origin).
//! RTMP timestamps are unwrapped by signed 32-bit differences, so a 2³² ms wrap or a jump in either
//! direction can neither panic nor overflow; RTP timestamps wrap modulo 2³² as RTP expects.
//!
//! B-frames: RTP over WebRTC expects presentation order = decode order. A stream whose composition
//! offsets are not zero has B-frames; [`BFramePolicy::Refuse`] (the default) turns the first such frame
//! into [`H264Error::BFramesUnsupported`] so the session can be closed with a clear reason.

use std::sync::Arc;

use super::RtpOut;

/// RTP payload budget (bytes) of one packet, leaving room for RTP header, extensions and SRTP.
pub const DEFAULT_MTU: usize = 1200;
/// RTP clock rate of H.264.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_AUD: u8 = 9;
const NAL_FILLER: u8 = 12;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// What to do with streams that use B-frames (composition time offset ≠ 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BFramePolicy {
    /// Refuse the stream: the first frame with a non-zero offset is an error.
    #[default]
    Refuse,
    /// Forward anyway, stamping each frame with its presentation time (pts = dts + cts). RTP timestamps then
    /// go back and forth; browsers decode this but may stutter. Experimental.
    PassThroughPts,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H264Error {
    #[error(
        "the stream uses B-frames (composition offset {cts_ms} ms), which WebRTC viewers cannot play; \
         disable B-frames in the encoder (x264: bframes=0 / tune zerolatency; NVENC: max B-frames 0)"
    )]
    BFramesUnsupported { cts_ms: i32 },
}

/// `profile-level-id` of an SPS NAL unit (header byte included): profile_idc, constraint flags and
/// level_idc, i.e. bytes 1..4, as the 24-bit value SDP carries in hex (`42e01f`). None if too short or not an SPS.
pub fn profile_level_id(sps: &[u8]) -> Option<u32> {
    if sps.len() < 4 || sps[0] & 0x1f != NAL_SPS {
        return None;
    }
    Some(u32::from_be_bytes([0, sps[1], sps[2], sps[3]]))
}

/// Packetizes the access units of one H.264 track. One per publisher; keeps the sequence number counter,
/// the timestamp unwrapping state and the last parameter sets.
#[derive(Debug)]
pub struct H264Packetizer {
    mtu: usize,
    policy: BFramePolicy,
    next_seq: u64,
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    /// Last RTMP timestamp seen and its unwrapped value (ms).
    last_dts: Option<(u32, i64)>,
}

impl H264Packetizer {
    pub fn new(policy: BFramePolicy) -> Self {
        Self::with_mtu(policy, DEFAULT_MTU)
    }

    /// `mtu` is the payload budget per packet; values below 16 are raised to 16.
    pub fn with_mtu(policy: BFramePolicy, mtu: usize) -> Self {
        H264Packetizer { mtu: mtu.max(16), policy, next_seq: 0, sps: Vec::new(), pps: Vec::new(), last_dts: None }
    }

    /// New SPS/PPS (from an AVCDecoderConfigurationRecord). Sent before each following IDR.
    pub fn set_parameter_sets(&mut self, sps: Vec<Vec<u8>>, pps: Vec<Vec<u8>>) {
        self.sps = sps;
        self.pps = pps;
    }

    /// `profile-level-id` of the current SPS, for the viewers' SDP.
    pub fn profile_level_id(&self) -> Option<u32> {
        self.sps.first().and_then(|s| profile_level_id(s))
    }

    /// Sequence number the next packet will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Unwraps an RTMP timestamp (ms) by signed difference to the previous one. The first one is taken as is,
    /// so video and audio RTP timestamps share the RTMP time origin.
    fn unwrap_dts(&mut self, dts: u32) -> i64 {
        let ext = match self.last_dts {
            None => dts as i64,
            Some((last, ext)) => ext.wrapping_add(dts.wrapping_sub(last) as i32 as i64),
        };
        self.last_dts = Some((dts, ext));
        ext
    }

    /// Packetizes one access unit: `nalus` in decode order, `dts_ms` the RTMP timestamp, `cts_ms` the FLV
    /// composition time offset. Appends the packets to `out`; nothing is appended on error.
    pub fn packetize(
        &mut self,
        dts_ms: u32,
        cts_ms: i32,
        nalus: &[&[u8]],
        out: &mut Vec<RtpOut>,
    ) -> Result<(), H264Error> {
        if cts_ms != 0 && self.policy == BFramePolicy::Refuse {
            return Err(H264Error::BFramesUnsupported { cts_ms });
        }
        let dts = self.unwrap_dts(dts_ms);
        let pts_ms = match self.policy {
            BFramePolicy::Refuse => dts,
            BFramePolicy::PassThroughPts => dts.wrapping_add(cts_ms as i64),
        };
        let timestamp = pts_ms.wrapping_mul(VIDEO_CLOCK_RATE as i64 / 1000) as u32;

        let keep = |n: &&&[u8]| !n.is_empty() && !matches!(n[0] & 0x1f, NAL_AUD | NAL_FILLER);
        let is_idr = nalus.iter().filter(keep).any(|n| n[0] & 0x1f == NAL_IDR);
        let has_sps = nalus.iter().filter(keep).any(|n| n[0] & 0x1f == NAL_SPS);
        let first = out.len();

        if is_idr && !has_sps && !self.sps.is_empty() {
            self.push_parameter_sets(timestamp, out);
        }
        for nalu in nalus.iter().filter(keep) {
            self.push_nalu(nalu, timestamp, out);
        }
        if out.len() > first {
            out[first].keyframe_start = is_idr;
            if let Some(last) = out.last_mut() {
                last.marker = true;
            }
        }
        Ok(())
    }

    fn push(&mut self, payload: Arc<[u8]>, timestamp: u32, out: &mut Vec<RtpOut>) {
        out.push(RtpOut { payload, timestamp, marker: false, keyframe_start: false, seq: self.next_seq });
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// SPS + PPS as one STAP-A if it fits, else one by one.
    fn push_parameter_sets(&mut self, timestamp: u32, out: &mut Vec<RtpOut>) {
        let sets: Vec<Vec<u8>> = self.sps.iter().chain(self.pps.iter()).filter(|s| !s.is_empty()).cloned().collect();
        let stap_len = 1 + sets.iter().map(|s| 2 + s.len()).sum::<usize>();
        let fits = sets.iter().all(|s| s.len() <= u16::MAX as usize) && stap_len <= self.mtu;
        if fits && sets.len() > 1 {
            let nri = sets.iter().map(|s| s[0] & 0x60).max().unwrap_or(0x60);
            let mut p = Vec::with_capacity(stap_len);
            p.push(nri | STAP_A);
            for s in &sets {
                p.extend_from_slice(&(s.len() as u16).to_be_bytes());
                p.extend_from_slice(s);
            }
            self.push(p.into(), timestamp, out);
        } else {
            for s in &sets {
                self.push_nalu(s, timestamp, out);
            }
        }
    }

    /// One NAL unit: single packet, or FU-A fragments (RFC 6184 §5.8).
    fn push_nalu(&mut self, nalu: &[u8], timestamp: u32, out: &mut Vec<RtpOut>) {
        if nalu.len() <= self.mtu {
            self.push(Arc::from(nalu), timestamp, out);
            return;
        }
        let header = nalu[0];
        let indicator = (header & 0xe0) | FU_A;
        let ty = header & 0x1f;
        let body = &nalu[1..];
        let room = self.mtu - 2;
        let count = body.len().div_ceil(room);
        for (i, piece) in body.chunks(room).enumerate() {
            let mut fu = ty;
            if i == 0 {
                fu |= 0x80;
            }
            if i + 1 == count {
                fu |= 0x40;
            }
            let mut p = Vec::with_capacity(2 + piece.len());
            p.push(indicator);
            p.push(fu);
            p.extend_from_slice(piece);
            self.push(p.into(), timestamp, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyframe::is_keyframe_start;
    use crate::packet::Codec;

    const SPS: &[u8] = &[0x67, 0x42, 0xe0, 0x1f, 0xda, 0x01, 0x40];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn packetizer() -> H264Packetizer {
        let mut p = H264Packetizer::new(BFramePolicy::Refuse);
        p.set_parameter_sets(vec![SPS.to_vec()], vec![PPS.to_vec()]);
        p
    }

    /// Reassembles NAL units from RTP payloads (single, STAP-A, FU-A), checking the FU-A framing.
    fn depacketize(pkts: &[RtpOut]) -> Vec<Vec<u8>> {
        let mut nalus = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in pkts {
            let b = &p.payload[..];
            match b[0] & 0x1f {
                STAP_A => {
                    let mut at = 1;
                    while at < b.len() {
                        let n = u16::from_be_bytes([b[at], b[at + 1]]) as usize;
                        nalus.push(b[at + 2..at + 2 + n].to_vec());
                        at += 2 + n;
                    }
                }
                FU_A => {
                    let (s, e) = (b[1] & 0x80 != 0, b[1] & 0x40 != 0);
                    if s {
                        assert!(fu.is_none());
                        fu = Some(vec![(b[0] & 0xe0) | (b[1] & 0x1f)]);
                    }
                    fu.as_mut().expect("FU-A without start").extend_from_slice(&b[2..]);
                    if e {
                        nalus.push(fu.take().unwrap());
                    }
                }
                _ => nalus.push(b.to_vec()),
            }
        }
        assert!(fu.is_none(), "unterminated FU-A");
        nalus
    }

    #[test]
    fn idr_gets_parameter_sets_as_stap_a_and_fragments() {
        let mut p = packetizer();
        let mut idr = vec![0x65];
        idr.extend((0..5000u32).map(|i| (i * 7) as u8));
        let sei = [0x06u8, 0x05, 0x01, 0x80];
        let aud = [0x09u8, 0xf0];
        let mut out = Vec::new();
        p.packetize(1000, 0, &[&aud, &sei, &idr], &mut out).unwrap();

        assert_eq!(out[0].payload[0] & 0x1f, STAP_A);
        assert!(out[0].keyframe_start);
        assert!(is_keyframe_start(Codec::H264, &out[0].payload));
        assert!(out[1..].iter().all(|p| !p.keyframe_start));
        assert!(out.iter().all(|p| p.payload.len() <= DEFAULT_MTU));
        assert!(out.last().unwrap().marker);
        assert_eq!(out.iter().filter(|p| p.marker).count(), 1);
        assert!(out.iter().all(|p| p.timestamp == 90_000));
        let seqs: Vec<u64> = out.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, (0..out.len() as u64).collect::<Vec<_>>());
        // AUD dropped, everything else byte-identical and in order.
        assert_eq!(depacketize(&out), vec![SPS.to_vec(), PPS.to_vec(), sei.to_vec(), idr.clone()]);
        // 1 STAP-A + SEI + ceil(4999 / 1198) = 5 FU-A.
        assert_eq!(out.len(), 1 + 1 + 5);
    }

    #[test]
    fn inline_sps_is_not_duplicated_and_p_frames_are_plain() {
        let mut p = packetizer();
        let mut out = Vec::new();
        p.packetize(0, 0, &[SPS, PPS, &[0x65, 1, 2]], &mut out).unwrap();
        assert_eq!(depacketize(&out), vec![SPS.to_vec(), PPS.to_vec(), vec![0x65, 1, 2]]);
        assert!(out[0].keyframe_start);

        out.clear();
        p.packetize(40, 0, &[&[0x41, 9, 9]], &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(!out[0].keyframe_start && out[0].marker);
        assert_eq!(out[0].timestamp, 40 * 90);
        assert_eq!(out[0].seq, 3);
    }

    #[test]
    fn b_frames_refused_by_default() {
        let mut p = packetizer();
        let mut out = Vec::new();
        p.packetize(0, 0, &[&[0x65, 1]], &mut out).unwrap();
        let err = p.packetize(40, 80, &[&[0x41, 1]], &mut out).unwrap_err();
        assert_eq!(err, H264Error::BFramesUnsupported { cts_ms: 80 });
        assert!(err.to_string().contains("B-frames"));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn b_frames_pass_through_with_pts() {
        let mut p = H264Packetizer::new(BFramePolicy::PassThroughPts);
        let mut out = Vec::new();
        p.packetize(100, 80, &[&[0x41, 1]], &mut out).unwrap();
        p.packetize(140, -40, &[&[0x01, 1]], &mut out).unwrap();
        assert_eq!(out[0].timestamp, 180 * 90);
        assert_eq!(out[1].timestamp, 100 * 90);
    }

    #[test]
    fn timestamps_unwrap_across_rtmp_wrap_and_absurd_jumps() {
        let mut p = packetizer();
        let mut out = Vec::new();
        p.packetize(u32::MAX - 10, 0, &[&[0x41]], &mut out).unwrap();
        p.packetize(29, 0, &[&[0x41]], &mut out).unwrap(); // wrapped: +40 ms
        assert_eq!(out[1].timestamp.wrapping_sub(out[0].timestamp), 40 * 90);
        for ts in [0x8000_0000u32, 0, u32::MAX, 0x7fff_ffff, 1] {
            p.packetize(ts, 0, &[&[0x41]], &mut out).unwrap();
        }
        let mut pt = H264Packetizer::new(BFramePolicy::PassThroughPts);
        pt.packetize(5, i32::MIN, &[&[0x41]], &mut out).unwrap();
        pt.packetize(0x8000_0000, i32::MAX, &[&[0x41]], &mut out).unwrap();
    }

    #[test]
    fn parameter_sets_too_big_for_stap_a_go_alone() {
        let mut p = H264Packetizer::with_mtu(BFramePolicy::Refuse, 100);
        let mut big_sps = SPS.to_vec();
        big_sps.resize(150, 0xaa);
        p.set_parameter_sets(vec![big_sps.clone()], vec![PPS.to_vec()]);
        let mut out = Vec::new();
        p.packetize(0, 0, &[&[0x65, 1, 2, 3]], &mut out).unwrap();
        assert!(out.iter().all(|p| p.payload.len() <= 100));
        assert_eq!(depacketize(&out), vec![big_sps, PPS.to_vec(), vec![0x65, 1, 2, 3]]);
        assert!(out[0].keyframe_start && is_keyframe_start(Codec::H264, &out[0].payload));
    }

    #[test]
    fn profile_level_id_from_sps() {
        assert_eq!(profile_level_id(SPS), Some(0x42e01f));
        assert_eq!(packetizer().profile_level_id(), Some(0x42e01f));
        assert_eq!(profile_level_id(&[0x67, 0x42]), None);
        assert_eq!(profile_level_id(PPS), None);
        assert_eq!(H264Packetizer::new(BFramePolicy::Refuse).profile_level_id(), None);
    }

    #[test]
    fn empty_and_dropped_only_access_units_emit_nothing() {
        let mut p = packetizer();
        let mut out = Vec::new();
        p.packetize(0, 0, &[], &mut out).unwrap();
        p.packetize(0, 0, &[&[], &[0x09, 0x10], &[0x0c, 0xff]], &mut out).unwrap();
        assert!(out.is_empty());
    }
}
