//! A viewer's media written and encrypted by sfumato itself (the direct send path), not by str0m.
//!
//! Why: a forwarded packet given to str0m (`write_rtp`) goes through its send queue, a pacer snapshot that
//! needs a timeout round, its RTX cache and two output copies before the SRTP it would cost anyway; that was
//! the largest part of the server's own CPU per forwarded packet (docs/architecture.md, "Where the CPU of a
//! forwarded packet goes"). Here the packet is built once — header, the viewer's header extensions, payload —
//! and protected in place with the session's captured SRTP keys ([`crate::dtls_keys`], [`crate::srtp_send`]).
//!
//! The media goes out on SSRCs of our own, which the SDP answer names instead of str0m's (str0m keeps
//! sending sender reports for its unused streams, and RTP/SRTCP of two writers on one SSRC would reuse
//! IVs). So everything str0m does per send stream is done here for ours: sender reports with SDES CNAME
//! ([`DirectSend::poll_reports`]), NACK answered from a ring of sent packets (RTX when negotiated, else the
//! packet again), PLI/FIR, REMB and receiver reports read from the viewer's RTCP
//! ([`DirectSend::handle_rtcp`], which str0m decrypts and hands over as raw packets). str0m still runs
//! ICE, DTLS and the session's own RTCP.
//!
//! Sans-IO: datagrams go to a `Vec<Vec<u8>>` the session drains; time is passed in.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::media::Mid;
use str0m::rtp::rtcp::{ReceptionReport, Rtcp};

use crate::datagram_buffers;
use crate::packet::ForwardedExt;
use crate::srtp_send::{SrtpError, SrtpSendContext};

/// Sent video packets kept for retransmission (per track; a power of two dividing 65536).
const RING: usize = 512;
/// The same packet is not resent again within this long (a NACK repeated before the first resend arrived).
const RESEND_GAP: Duration = Duration::from_millis(20);
/// Retransmissions one viewer may have per second, and at once: its NACKs can't make the core send more
/// than this (one NACK can name all 512 ring entries, and again every [`RESEND_GAP`]). A 10 Mbit/s stream
/// losing 20 % needs ~200 a second.
const RESEND_RATE: f64 = 300.0;
const RESEND_BURST: f64 = 150.0;
/// Sender report interval per track (libwebrtc's for video; audio is the same here, it is cheap).
pub const SR_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes a datagram needs beyond its payload: header with extensions (≤ 48), RTX's 2, the SRTP tag (≤ 16;
/// the counter-mode profile also wants spare room while encrypting).
const PACKET_SPARE: usize = 96;
/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The viewer's header extension ids (from the SDP answer); `None` = not negotiated, not written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExtIds {
    pub mid: Option<u8>,
    pub abs_send_time: Option<u8>,
    pub audio_level: Option<u8>,
    pub video_orientation: Option<u8>,
}

impl ExtIds {
    /// Reads `a=extmap` lines of an SDP (str0m's answer: one map for the bundle).
    pub fn from_sdp(sdp: &str) -> Self {
        let mut ids = Self::default();
        for line in sdp.lines() {
            let Some(rest) = line.trim().strip_prefix("a=extmap:") else { continue };
            let mut parts = rest.split_whitespace();
            let (Some(id), Some(uri)) = (parts.next(), parts.next()) else { continue };
            // "id" or "id/direction"
            let Ok(id) = id.split('/').next().unwrap_or_default().parse::<u8>() else { continue };
            if !(1..=14).contains(&id) {
                continue; // one-byte header only
            }
            match uri {
                "urn:ietf:params:rtp-hdrext:sdes:mid" => ids.mid = Some(id),
                "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time" => ids.abs_send_time = Some(id),
                "urn:ietf:params:rtp-hdrext:ssrc-audio-level" => ids.audio_level = Some(id),
                "urn:3gpp:video-orientation" => ids.video_orientation = Some(id),
                _ => {}
            }
        }
        ids
    }
}

/// One outgoing track: our SSRCs and what its sender reports and retransmissions need.
#[derive(Debug)]
pub struct DirectTrack {
    pub mid: Mid,
    pub ssrc: u32,
    /// RTX stream SSRC (named in the answer's FID group); used when the payload type has an RTX type.
    pub rtx_ssrc: Option<u32>,
    pub cname: String,
    packets: u32,
    octets: u32,
    /// RTP timestamp, when it was sent, clock rate: the newest packet (for the sender report's RTP time).
    last: Option<(u32, Instant, u32)>,
    /// Extended sequence number of that packet: a reordered older one doesn't move `last`.
    last_seq: u64,
    /// Extended sequence number of the next RTX packet.
    rtx_seq: u64,
    /// Video: the last [`RING`] packets by sequence number.
    ring: Vec<Option<Sent>>,
    next_sr: Instant,
    /// Middle 32 bits of the last SR's NTP time (receiver reports echo it: RTT).
    last_sr: Option<u32>,
}

#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    pt: u8,
    rtx_pt: Option<u8>,
    ts: u32,
    marker: bool,
    ext: ForwardedExt,
    /// The wall-clock time its abs-send-time was taken from: sent again on the same index, the packet must be
    /// byte-identical (AES-GCM: one nonce, one plaintext and AAD; a new abs-send-time would change the AAD).
    unix: Duration,
    payload: Arc<[u8]>,
    resent_at: Option<Instant>,
}

impl DirectTrack {
    pub fn new(mid: Mid, ssrc: u32, rtx_ssrc: Option<u32>, cname: String, video: bool, now: Instant) -> Self {
        Self {
            mid,
            ssrc,
            rtx_ssrc,
            cname,
            packets: 0,
            octets: 0,
            last: None,
            last_seq: 0,
            rtx_seq: u64::from(ssrc >> 17), // a random start below 2^15, like a fresh stream's
            ring: if video { vec![None; RING] } else { Vec::new() },
            next_sr: now + SR_INTERVAL,
            last_sr: None,
        }
    }
}

/// One packet to write: what the forwarding path decided for this viewer.
#[derive(Debug, Clone, Copy)]
pub struct DirectWrite<'a> {
    pub pt: u8,
    /// The viewer's RTX payload type for `pt`, if negotiated.
    pub rtx_pt: Option<u8>,
    /// Extended (rollover-counted) sequence number on this track.
    pub seq: u64,
    pub timestamp: u32,
    pub clock_rate: u32,
    pub marker: bool,
    pub ext: ForwardedExt,
    pub payload: &'a Arc<[u8]>,
}

/// What the viewer's RTCP asked for, beyond retransmissions (which are queued as datagrams).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RtcpOutcome {
    pub nacks: u64,
    pub keyframe_requests: u64,
    /// The viewer's REMB for our streams, bits/s.
    pub remb_bps: Option<u64>,
    pub rtt: Option<Duration>,
    /// Fraction lost (0..1) from a receiver report about one of our streams.
    pub loss: Option<f32>,
    pub retransmitted: u64,
    /// Retransmissions the viewer asked for (of packets that could be sent) beyond its budget
    /// ([`RESEND_RATE`]), not sent.
    pub retransmissions_refused: u64,
}

/// A viewer's retransmission budget: a token bucket refilled at [`RESEND_RATE`] up to [`RESEND_BURST`].
#[derive(Debug)]
struct ResendBudget {
    tokens: f64,
    refilled: Instant,
}

impl ResendBudget {
    fn new(now: Instant) -> Self {
        Self { tokens: RESEND_BURST, refilled: now }
    }

    /// Takes one retransmission if the budget has it.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        self.tokens = (self.tokens + elapsed * RESEND_RATE).min(RESEND_BURST);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// What [`DirectSend::resend`] did with one NACKed sequence number.
enum Resend {
    Sent,
    /// Not in the ring (too old, never sent) or resent less than [`RESEND_GAP`] ago.
    Unavailable,
    /// Over the viewer's retransmission budget.
    OverBudget,
}

/// The direct send state of one viewer session.
pub struct DirectSend {
    srtp: SrtpSendContext,
    ext: ExtIds,
    pub tracks: Vec<DirectTrack>,
    /// Wall clock at `epoch` (abs-send-time and sender report NTP times without a clock call per packet).
    epoch: (Instant, SystemTime),
    /// A sender report before protection (and, in tests, the last RTP packet's plaintext).
    plain: Vec<u8>,
    resend_budget: ResendBudget,
}

impl std::fmt::Debug for DirectSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectSend").field("srtp", &self.srtp).field("ext", &self.ext).field("tracks", &self.tracks).finish()
    }
}

impl DirectSend {
    pub fn new(srtp: SrtpSendContext, ext: ExtIds, tracks: Vec<DirectTrack>, now: Instant) -> Self {
        Self {
            srtp,
            ext,
            tracks,
            epoch: (now, SystemTime::now()),
            plain: Vec::with_capacity(1500),
            resend_budget: ResendBudget::new(now),
        }
    }

    /// The track sending on `mid`.
    pub fn track_index(&self, mid: Mid) -> Option<usize> {
        self.tracks.iter().position(|t| t.mid == mid)
    }

    /// Builds and protects one media packet on track `i` into `out`.
    pub fn write(&mut self, i: usize, w: &DirectWrite<'_>, now: Instant, out: &mut Vec<Vec<u8>>) -> Result<(), SrtpError> {
        let unix = self.unix_at(now);
        let Some(track) = self.tracks.get_mut(i) else { return Ok(()) };
        // A second packet on an index still in the ring would reuse its keystream (and the NACK answer would
        // be ambiguous): refuse it. The publisher side forwards one stream per kind (`ssrc_lock.rs`), so
        // this only guards against a bug upstream.
        if let Some(Some(prev)) = track.ring.get(w.seq as usize % RING) {
            if prev.seq == w.seq {
                return Err(SrtpError::IndexReused { index: w.seq });
            }
        }
        let exts = HeaderExts::new(&self.ext, unix, Some(&w.ext));
        let mid = self.ext.mid.map(|id| (id, track.mid));
        let mut data = datagram_buffers::take(w.payload.len() + PACKET_SPARE);
        write_packet(&mut data, w.pt, w.marker, w.seq as u16, w.timestamp, track.ssrc, mid, exts.as_slice(), &[], w.payload);
        #[cfg(test)]
        self.plain.clone_from(&data);
        let header_len = data.len() - w.payload.len();
        self.srtp.protect_rtp_in_place(&mut data, header_len, w.seq)?;
        out.push(data);
        track.packets = track.packets.wrapping_add(1);
        track.octets = track.octets.wrapping_add(w.payload.len() as u32);
        if track.last.is_none() || w.seq >= track.last_seq {
            track.last = Some((w.timestamp, now, w.clock_rate.max(1)));
            track.last_seq = w.seq;
        }
        if !track.ring.is_empty() {
            track.ring[w.seq as usize % RING] = Some(Sent {
                seq: w.seq,
                pt: w.pt,
                rtx_pt: w.rtx_pt,
                ts: w.timestamp,
                marker: w.marker,
                ext: w.ext,
                unix,
                payload: w.payload.clone(),
                resent_at: None,
            });
        }
        Ok(())
    }

    /// Acts on one RTCP packet the viewer sent (decrypted by str0m): retransmissions go to `out`.
    pub fn handle_rtcp(&mut self, rtcp: &Rtcp, now: Instant, out: &mut Vec<Vec<u8>>) -> RtcpOutcome {
        let mut o = RtcpOutcome::default();
        match rtcp {
            Rtcp::Nack(nack) => {
                let Some(i) = self.tracks.iter().position(|t| t.ssrc == *nack.ssrc) else { return o };
                o.nacks = 1;
                for e in nack.reports.iter() {
                    let lost = std::iter::once(e.pid).chain((0..16).filter(|b| e.blp & (1 << b) != 0).map(|b| e.pid.wrapping_add(b + 1)));
                    for seq in lost {
                        match self.resend(i, seq, now, out) {
                            Resend::Sent => o.retransmitted += 1,
                            Resend::OverBudget => o.retransmissions_refused += 1,
                            Resend::Unavailable => {}
                        }
                    }
                }
            }
            Rtcp::Pli(pli) if self.ours(*pli.ssrc) => o.keyframe_requests = 1,
            Rtcp::Fir(fir) if fir.reports.iter().any(|f| self.ours(*f.ssrc)) => o.keyframe_requests = 1,
            Rtcp::Remb(remb) if remb.ssrcs.iter().any(|s| self.ours(*s)) => o.remb_bps = Some(remb.bitrate.max(0.0) as u64),
            Rtcp::ReceiverReport(rr) => self.reception_reports(rr.reports.iter(), now, &mut o),
            // A viewer that also sends media puts its reception reports into its own sender reports.
            Rtcp::SenderReport(sr) => self.reception_reports(sr.reports.iter(), now, &mut o),
            _ => {}
        }
        o
    }

    /// Loss and RTT from reception reports about our streams.
    fn reception_reports<'a>(&self, reports: impl Iterator<Item = &'a ReceptionReport>, now: Instant, o: &mut RtcpOutcome) {
        let ntp_mid_now = ntp_middle(self.unix_at(now));
        for r in reports {
            let Some(t) = self.tracks.iter().find(|t| t.ssrc == *r.ssrc) else { continue };
            o.loss = Some(f32::from(r.fraction_lost) / 256.0);
            if r.last_sr_time != 0 && t.last_sr == Some(r.last_sr_time) {
                let units = ntp_mid_now.wrapping_sub(r.last_sr_time).wrapping_sub(r.last_sr_delay);
                if units < 0x8000_0000 {
                    o.rtt = Some(Duration::from_micros(u64::from(units) * 1_000_000 / 65_536));
                }
            }
        }
    }

    /// Sends packet `seq16` of track `i` again if it is still in the ring, wasn't just resent, and the
    /// viewer's budget allows.
    fn resend(&mut self, i: usize, seq16: u16, now: Instant, out: &mut Vec<Vec<u8>>) -> Resend {
        let unix = self.unix_at(now);
        let track = &mut self.tracks[i];
        let Some(Some(sent)) = track.ring.get_mut(seq16 as usize % RING) else { return Resend::Unavailable };
        if sent.seq as u16 != seq16 || sent.resent_at.is_some_and(|t| now.saturating_duration_since(t) < RESEND_GAP) {
            return Resend::Unavailable;
        }
        if !self.resend_budget.take(now) {
            return Resend::OverBudget;
        }
        sent.resent_at = Some(now);
        let sent = sent.clone();
        let mid = self.ext.mid.map(|id| (id, track.mid));
        let (ssrc, seq, pt, osn) = match (sent.rtx_pt, track.rtx_ssrc) {
            (Some(rtx_pt), Some(rtx_ssrc)) => {
                let s = track.rtx_seq;
                track.rtx_seq += 1;
                (rtx_ssrc, s, rtx_pt, Some((sent.seq as u16).to_be_bytes()))
            }
            // No RTX negotiated: the same packet again (same index, so the same ciphertext).
            _ => (track.ssrc, sent.seq, sent.pt, None),
        };
        // RTX (a new index) carries no media-level extensions and the current abs-send-time; the packet sent
        // again on its own index is the same bytes as the first time.
        let exts = match osn {
            Some(_) => HeaderExts::new(&self.ext, unix, None),
            None => HeaderExts::new(&self.ext, sent.unix, Some(&sent.ext)),
        };
        let prefix: &[u8] = match &osn {
            Some(b) => b,
            None => &[],
        };
        let mut data = datagram_buffers::take(sent.payload.len() + PACKET_SPARE);
        write_packet(&mut data, pt, sent.marker, seq as u16, sent.ts, ssrc, mid, exts.as_slice(), prefix, &sent.payload);
        #[cfg(test)]
        self.plain.clone_from(&data);
        let header_len = data.len() - sent.payload.len() - prefix.len();
        if self.srtp.protect_rtp_in_place(&mut data, header_len, seq).is_err() {
            return Resend::Unavailable;
        }
        out.push(data);
        Resend::Sent
    }

    /// Sender reports (with SDES CNAME) of the tracks whose report is due.
    pub fn poll_reports(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let unix = self.unix_at(now);
        for i in 0..self.tracks.len() {
            let t = &mut self.tracks[i];
            if now < t.next_sr {
                continue;
            }
            t.next_sr = now + SR_INTERVAL;
            let Some((ts, at, rate)) = t.last else { continue }; // nothing sent yet: no RTP time to report
            let elapsed = now.saturating_duration_since(at);
            let rtp_now = ts.wrapping_add((elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u32);
            let (secs, frac) = ntp(unix);
            t.last_sr = Some(ntp_middle(unix));
            self.plain.clear();
            // SR: V=2, RC=0, PT=200, length 6 words - 1.
            self.plain.extend_from_slice(&[0x80, 200, 0, 6]);
            for v in [t.ssrc, secs as u32, frac, rtp_now, t.packets, t.octets] {
                self.plain.extend_from_slice(&v.to_be_bytes());
            }
            // SDES, one chunk: SSRC, CNAME item, end, padded to a word.
            let cname = &t.cname.as_bytes()[..t.cname.len().min(255)];
            let chunk = 4 + 2 + cname.len() + 1;
            let padded = chunk.div_ceil(4) * 4;
            self.plain.extend_from_slice(&[0x81, 202]);
            self.plain.extend_from_slice(&((padded / 4) as u16).to_be_bytes());
            self.plain.extend_from_slice(&t.ssrc.to_be_bytes());
            self.plain.extend_from_slice(&[1, cname.len() as u8]);
            self.plain.extend_from_slice(cname);
            self.plain.resize(self.plain.len() + padded - chunk + 1, 0);
            let mut data = Vec::with_capacity(self.plain.len() + 32);
            if self.srtp.protect_rtcp(&self.plain, &mut data).is_ok() {
                out.push(data);
            }
        }
    }

    /// When the next sender report is due.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.tracks.iter().map(|t| t.next_sr).min()
    }

    fn ours(&self, ssrc: u32) -> bool {
        self.tracks.iter().any(|t| t.ssrc == ssrc || t.rtx_ssrc == Some(ssrc))
    }

    fn unix_at(&self, now: Instant) -> Duration {
        let (i, s) = self.epoch;
        let wall = match now.checked_duration_since(i) {
            Some(d) => s + d,
            None => s - i.duration_since(now),
        };
        wall.duration_since(UNIX_EPOCH).unwrap_or_default()
    }
}

/// NTP seconds and fraction of a Unix time.
fn ntp(unix: Duration) -> (u64, u32) {
    let frac = ((u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    (unix.as_secs() + NTP_UNIX_OFFSET, frac)
}

/// The middle 32 bits of the NTP time (RFC 3550's LSR/DLSR unit: 1/65536 s).
fn ntp_middle(unix: Duration) -> u32 {
    let (secs, frac) = ntp(unix);
    ((secs as u32) << 16) | (frac >> 16)
}

/// abs-send-time: 6.18 fixed-point seconds, 24 bits (the NTP epoch is 64-second aligned with Unix').
fn abs_send_time(unix: Duration) -> [u8; 3] {
    let v = ((unix.as_secs() & 0x3f) << 18) | ((u64::from(unix.subsec_nanos()) << 18) / 1_000_000_000);
    let b = (v as u32).to_be_bytes();
    [b[1], b[2], b[3]]
}

/// A packet's one-byte header extensions besides the MID: (id, value, length).
struct HeaderExts {
    items: [(u8, [u8; 3], usize); 3],
    len: usize,
}

impl HeaderExts {
    /// abs-send-time, and with `forwarded` (media, not RTX) the publisher's audio level and video orientation;
    /// each only if the viewer negotiated it.
    fn new(ids: &ExtIds, unix: Duration, forwarded: Option<&ForwardedExt>) -> Self {
        let mut h = Self { items: [(0, [0; 3], 0); 3], len: 0 };
        let mut push = |id: Option<u8>, value: [u8; 3], len: usize| {
            if let Some(id) = id {
                h.items[h.len] = (id, value, len);
                h.len += 1;
            }
        };
        push(ids.abs_send_time, abs_send_time(unix), 3);
        if let Some(f) = forwarded {
            if let Some(level) = f.audio_level {
                let v = u8::from(f.voice_activity == Some(true)) << 7 | (level.unsigned_abs() & 0x7f);
                push(ids.audio_level, [v, 0, 0], 1);
            }
            if let Some(o) = f.video_orientation {
                push(ids.video_orientation, [o as u8, 0, 0], 1);
            }
        }
        h
    }

    fn as_slice(&self) -> &[(u8, [u8; 3], usize)] {
        &self.items[..self.len]
    }
}

/// An RTP packet in `buf` (cleared): fixed header, one-byte header extensions (the MID first), `prefix`
/// (RTX's original sequence number) and `payload`.
#[allow(clippy::too_many_arguments)]
fn write_packet(
    buf: &mut Vec<u8>,
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    mid: Option<(u8, Mid)>,
    exts: &[(u8, [u8; 3], usize)],
    prefix: &[u8],
    payload: &[u8],
) {
    buf.clear();
    let has_ext = mid.is_some() || !exts.is_empty();
    buf.push(0x80 | if has_ext { 0x10 } else { 0 });
    buf.push(u8::from(marker) << 7 | (pt & 0x7f));
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
    buf.extend_from_slice(&ssrc.to_be_bytes());
    if has_ext {
        buf.extend_from_slice(&[0xbe, 0xde, 0, 0]);
        let start = buf.len();
        if let Some((id, mid)) = mid {
            let m = mid.as_bytes();
            let m = &m[..m.len().clamp(1, 16)];
            buf.push(id << 4 | (m.len() as u8 - 1));
            buf.extend_from_slice(m);
        }
        for (id, data, len) in exts {
            buf.push(id << 4 | (*len as u8 - 1));
            buf.extend_from_slice(&data[..*len]);
        }
        let words = (buf.len() - start).div_ceil(4);
        buf.resize(start + words * 4, 0);
        buf[start - 2..start].copy_from_slice(&(words as u16).to_be_bytes());
    }
    buf.extend_from_slice(prefix);
    buf.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp_send::SrtpProfile;
    use str0m::media::MediaTime;
    use str0m::rtp::rtcp::{Nack, NackEntry, ReceiverReport, SenderInfo, SenderReport};
    use str0m::rtp::VideoOrientation;

    const EXT: ExtIds = ExtIds { mid: Some(4), abs_send_time: Some(2), audio_level: Some(1), video_orientation: Some(13) };

    fn sender(now: Instant, rtx: bool) -> DirectSend {
        let crypto = str0m::crypto::from_feature_flags();
        let p = SrtpProfile::AeadAes128Gcm;
        let srtp = SrtpSendContext::new(&crypto, p, &vec![7; p.keying_material_len()], false).unwrap();
        let video = DirectTrack::new(Mid::from("0"), 0x1111_1111, rtx.then_some(0x2222_2222), "cn".into(), true, now);
        let audio = DirectTrack::new(Mid::from("1"), 0x3333_3333, None, "cn".into(), false, now);
        DirectSend::new(srtp, EXT, vec![video, audio], now)
    }

    fn payload() -> Arc<[u8]> {
        Arc::from(&[0xab; 100][..])
    }

    fn video(seq: u64, payload: &Arc<[u8]>) -> DirectWrite<'_> {
        DirectWrite {
            pt: 96,
            rtx_pt: Some(97),
            seq,
            timestamp: 9000,
            clock_rate: 90_000,
            marker: true,
            ext: ForwardedExt { video_orientation: Some(VideoOrientation::Deg90), ..Default::default() },
            payload,
        }
    }

    /// (header length, [(id, data)]) of a packet written by `write_packet`.
    fn parse_exts(p: &[u8]) -> (usize, Vec<(u8, Vec<u8>)>) {
        assert_eq!(p[0] & 0x10, 0x10, "extension bit");
        assert_eq!(&p[12..14], &[0xbe, 0xde]);
        let words = u16::from_be_bytes([p[14], p[15]]) as usize;
        let (mut i, end) = (16, 16 + 4 * words);
        let mut out = Vec::new();
        while i < end && p[i] != 0 {
            let (id, len) = (p[i] >> 4, (p[i] & 0xf) as usize + 1);
            out.push((id, p[i + 1..i + 1 + len].to_vec()));
            i += 1 + len;
        }
        (end, out)
    }

    #[test]
    fn packets_carry_the_viewers_extensions() {
        let now = Instant::now();
        let mut d = sender(now, true);
        let (pl, mut out) = (payload(), Vec::new());
        d.write(0, &video(70_000, &pl), now, &mut out).unwrap();
        let p = &d.plain; // the plaintext just protected
        assert_eq!(p[1], 0x80 | 96, "marker + PT");
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), (70_000u64 as u16));
        assert_eq!(&p[8..12], &0x1111_1111u32.to_be_bytes());
        let (hl, exts) = parse_exts(p);
        assert_eq!(hl % 4, 0);
        assert_eq!(&p[hl..], &pl[..]);
        let ids: Vec<u8> = exts.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [4, 2, 13], "MID, abs-send-time, orientation (no audio level on video)");
        assert_eq!(exts[0].1, b"0");
        assert_eq!(exts[2].1, [VideoOrientation::Deg90 as u8]);
        // Protected: header in the clear, payload encrypted, GCM tag appended.
        assert_eq!(out[0].len(), p.len() + 16);
        assert_eq!(&out[0][..hl], &p[..hl]);
        assert_ne!(&out[0][hl..hl + 100], &pl[..]);

        let audio = DirectWrite {
            pt: 111,
            rtx_pt: None,
            seq: 5,
            timestamp: 960,
            clock_rate: 48_000,
            marker: false,
            ext: ForwardedExt { audio_level: Some(-30), voice_activity: Some(true), ..Default::default() },
            payload: &pl,
        };
        d.write(1, &audio, now, &mut out).unwrap();
        let (_, exts) = parse_exts(&d.plain);
        assert_eq!(exts.iter().find(|(id, _)| *id == 1).map(|(_, v)| v.clone()), Some(vec![0x80 | 30]));
    }

    #[test]
    fn ext_ids_come_from_the_answer() {
        let sdp = "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:2/sendonly http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
                   a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:13 urn:3gpp:video-orientation\r\na=extmap:15 urn:ietf:params:rtp-hdrext:sdes:mid\r\n";
        assert_eq!(ExtIds::from_sdp(sdp), EXT, "two-byte ids (15) are not ours to write");
        assert_eq!(ExtIds::from_sdp("v=0\r\n"), ExtIds::default());
    }

    fn nack(ssrc: u32, pid: u16, blp: u16) -> Rtcp {
        Rtcp::Nack(Nack { sender_ssrc: 1.into(), ssrc: ssrc.into(), reports: NackEntry { pid, blp }.into() })
    }

    #[test]
    fn nacks_are_answered_with_rtx_from_the_ring() {
        let now = Instant::now();
        let mut d = sender(now, true);
        let (pl, mut out) = (payload(), Vec::new());
        for seq in 100..110 {
            d.write(0, &video(seq, &pl), now, &mut out).unwrap();
        }
        out.clear();
        // 102, and 104 + 105 by the bitmask; 300 was never sent.
        let o = d.handle_rtcp(&nack(0x1111_1111, 102, 0b110), now, &mut out);
        assert_eq!((o.nacks, o.retransmitted, out.len()), (1, 3, 3));
        let p = &d.plain; // the last one: 105 as RTX
        assert_eq!(p[1] & 0x7f, 97, "RTX payload type");
        assert_eq!(&p[8..12], &0x2222_2222u32.to_be_bytes(), "RTX SSRC");
        let (hl, _) = parse_exts(p);
        assert_eq!(&p[hl..hl + 2], &105u16.to_be_bytes(), "original sequence number first");
        assert_eq!(&p[hl + 2..], &pl[..]);
        let rtx_seqs: Vec<u16> = out.iter().map(|d| u16::from_be_bytes([d[2], d[3]])).collect();
        assert_eq!(rtx_seqs, [rtx_seqs[0], rtx_seqs[0] + 1, rtx_seqs[0] + 2], "RTX has its own sequence");

        // A repeat within RESEND_GAP is not resent; after it, it is.
        out.clear();
        assert_eq!(d.handle_rtcp(&nack(0x1111_1111, 102, 0), now, &mut out).retransmitted, 0);
        assert_eq!(d.handle_rtcp(&nack(0x1111_1111, 102, 0), now + RESEND_GAP, &mut out).retransmitted, 1);
        // Unknown sequence numbers and other SSRCs: nothing.
        out.clear();
        assert_eq!(d.handle_rtcp(&nack(0x1111_1111, 300, 0), now, &mut out).retransmitted, 0);
        assert_eq!(d.handle_rtcp(&nack(0x9999, 102, 0), now, &mut out).nacks, 0);
        assert!(out.is_empty());
    }

    /// A viewer NACKing everything in the ring over and over gets at most the budget: the burst at once,
    /// then RESEND_RATE a second; the rest is refused and counted.
    #[test]
    fn retransmissions_are_budgeted_per_viewer() {
        let now = Instant::now();
        let mut d = sender(now, true);
        let (pl, mut out) = (payload(), Vec::new());
        for seq in 0..RING as u64 {
            d.write(0, &video(seq, &pl), now, &mut out).unwrap();
        }
        out.clear();
        // 32 NACKs × 17 packets: the whole ring; (sent, refused) in total.
        let mut all = |at: Instant, out: &mut Vec<Vec<u8>>| {
            (0..32u16).fold((0, 0), |(s, r), k| {
                let o = d.handle_rtcp(&nack(0x1111_1111, k * 17, 0xffff), at, out);
                (s + o.retransmitted, r + o.retransmissions_refused)
            })
        };
        assert_eq!(all(now, &mut out), (RESEND_BURST as u64, RING as u64 - RESEND_BURST as u64), "the 32 beyond the ring are not refused, just absent");
        // One second later (and past RESEND_GAP): the refill, capped at the burst.
        assert_eq!(all(now + Duration::from_secs(1), &mut out).0, RESEND_BURST as u64);
        // 100 ms later: 30 more.
        assert_eq!(all(now + Duration::from_millis(1100), &mut out).0, (RESEND_RATE / 10.0) as u64);
        assert_eq!(out.len() as u64, 2 * RESEND_BURST as u64 + (RESEND_RATE / 10.0) as u64);
    }

    /// A reordered older packet written after a newer one doesn't pull the sender report's RTP time back.
    #[test]
    fn sender_report_time_follows_the_newest_packet() {
        let now = Instant::now();
        let mut d = sender(now, true);
        let (pl, mut out) = (payload(), Vec::new());
        let mut at = |seq: u64, ts: u32, d: &mut DirectSend| {
            let mut w = video(seq, &pl);
            w.timestamp = ts;
            d.write(0, &w, now, &mut out).unwrap();
        };
        at(10, 9000, &mut d);
        at(12, 12000, &mut d);
        at(11, 10500, &mut d); // late
        assert_eq!(d.tracks[0].last.map(|l| l.0), Some(12000));
        at(13, 15000, &mut d);
        assert_eq!(d.tracks[0].last.map(|l| l.0), Some(15000));
    }

    #[test]
    fn an_index_is_never_written_twice() {
        let now = Instant::now();
        let mut d = sender(now, true);
        let (pl, mut out) = (payload(), Vec::new());
        d.write(0, &video(7, &pl), now, &mut out).unwrap();
        let other: Arc<[u8]> = Arc::from(&[0xcd; 100][..]);
        assert!(matches!(d.write(0, &video(7, &other), now, &mut out), Err(SrtpError::IndexReused { index: 7 })));
        assert_eq!(out.len(), 1);
        // Reordered but new indices are fine.
        d.write(0, &video(9, &pl), now, &mut out).unwrap();
        d.write(0, &video(8, &pl), now, &mut out).unwrap();
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn without_rtx_the_same_packet_goes_again() {
        let now = Instant::now();
        let mut d = sender(now, false);
        let (pl, mut out) = (payload(), Vec::new());
        d.write(0, &video(7, &pl), now, &mut out).unwrap();
        let first = out.pop().unwrap();
        let o = d.handle_rtcp(&nack(0x1111_1111, 7, 0), now + Duration::from_millis(30), &mut out);
        assert_eq!(o.retransmitted, 1);
        // Same index: byte for byte the same datagram, abs-send-time included (AES-GCM must never seal two
        // different header/payload pairs under one nonce).
        assert_eq!(out[0], first);
    }

    #[test]
    fn sender_reports_count_what_was_sent_and_give_rtt() {
        let now = Instant::now();
        let mut d = sender(now, true);
        let (pl, mut out) = (payload(), Vec::new());
        d.poll_reports(now + SR_INTERVAL, &mut out);
        assert!(out.is_empty(), "nothing sent yet: no report");
        for seq in 0..3 {
            d.write(0, &video(seq, &pl), now, &mut out).unwrap();
        }
        out.clear();
        let later = now + SR_INTERVAL * 2;
        d.poll_reports(later, &mut out);
        assert_eq!(out.len(), 1, "the video track's report; audio sent nothing");
        let p = &d.plain;
        assert_eq!(&p[..4], &[0x80, 200, 0, 6]);
        assert_eq!(&p[4..8], &0x1111_1111u32.to_be_bytes());
        let word = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        assert_eq!(word(16), 9000 + 2 * 90_000, "RTP time advanced with the clock since the last packet");
        assert_eq!((word(20), word(24)), (3, 300), "packets, octets");
        assert_eq!(&p[28..30], &[0x81, 202], "SDES follows");
        assert_eq!(out[0].len(), p.len() + 16 + 4, "GCM tag + SRTCP index");
        assert_eq!(d.next_timeout(), Some(later + SR_INTERVAL));

        // The receiver report echoes the SR's NTP middle 32 bits; 10 ms later with 5 ms of its own delay.
        let lsr = d.tracks[0].last_sr.unwrap();
        let rr = Rtcp::ReceiverReport(ReceiverReport {
            sender_ssrc: 1.into(),
            reports: ReceptionReport {
                ssrc: 0x1111_1111.into(),
                fraction_lost: 64,
                packets_lost: 1,
                max_seq: 2,
                jitter: 0,
                last_sr_time: lsr,
                last_sr_delay: 65_536 / 200,
            }
            .into(),
        });
        let o = d.handle_rtcp(&rr, later + Duration::from_millis(10), &mut out);
        assert_eq!(o.loss, Some(0.25));
        let rtt = o.rtt.expect("rtt");
        assert!(rtt > Duration::from_millis(4) && rtt < Duration::from_millis(6), "{rtt:?}");

        // A viewer that sends media too reports inside its own sender reports: read the same way.
        let Rtcp::ReceiverReport(rr) = rr else { unreachable!() };
        let sr = Rtcp::SenderReport(SenderReport {
            sender_info: SenderInfo {
                ssrc: 1.into(),
                ntp_time: SystemTime::now(),
                rtp_time: MediaTime::from_90khz(0),
                sender_packet_count: 0,
                sender_octet_count: 0,
            },
            reports: rr.reports,
        });
        let o = d.handle_rtcp(&sr, later + Duration::from_millis(20), &mut out);
        assert_eq!(o.loss, Some(0.25));
        let rtt = o.rtt.expect("rtt from a sender report's reception report");
        assert!(rtt > Duration::from_millis(14) && rtt < Duration::from_millis(16), "{rtt:?}");
    }
}
