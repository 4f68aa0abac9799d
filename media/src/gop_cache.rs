//! The current group of pictures of a room fed by a source that can't be asked for a keyframe (RTMP).
//!
//! A WebRTC publisher answers a new viewer's PLI with a fresh keyframe; an RTMP encoder can't be asked, so a
//! viewer joining mid-GOP would see nothing until the encoder's next keyframe (seconds with `-g 250`). The
//! room's home core therefore keeps every video packet it forwarded since the last keyframe start and
//! replays them — oldest first — to each viewer that connects, before any live packet reaches it.
//!
//! Bounded: at most [`GopLimits::max_bytes`] payload bytes and [`GopLimits::max_packets`] packets. A GOP that
//! grows beyond either is dropped entirely (a partial GOP can't be decoded without its keyframe) and
//! nothing is cached until the next keyframe. Audio is never cached: a viewer's audio starts live.
//!
//! [`GopCache::replay`] compresses the replayed frames' timestamps towards the newest one: played out in
//! real time, a GOP sent in one burst would leave the viewer as far behind live as the GOP is old; compressed,
//! the decoder runs through it at once and continues live. The newest frame keeps its real timestamp, so the
//! viewer's sequence/timestamp rewriter maps the live packets that follow without a jump.

use std::time::Instant;

use crate::packet::{ForwardedPacket, TrackKind};

/// How much one room's cache may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GopLimits {
    pub max_bytes: usize,
    pub max_packets: usize,
}

impl Default for GopLimits {
    /// 4 MiB and 4096 packets: a 10 s GOP at ~3 Mbit/s.
    fn default() -> Self {
        Self::from_bytes(4 << 20)
    }
}

impl GopLimits {
    /// `max_bytes`, and one packet per KiB of it (RTP video packets are ~1.2 KB; the bound keeps a stream of
    /// tiny packets from costing more in packet headers than in payload). 0 caches nothing.
    pub fn from_bytes(max_bytes: usize) -> Self {
        Self { max_bytes, max_packets: max_bytes / 1024 }
    }
}

/// What [`GopCache::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// A keyframe start: the previous GOP was dropped and a new one begins.
    Started,
    Appended,
    /// Audio, or video before the first keyframe / after an overflow.
    Ignored,
    /// The GOP outgrew the limits and was dropped; nothing is cached until the next keyframe.
    Overflowed,
}

/// One room's current GOP.
#[derive(Debug, Default)]
pub struct GopCache {
    limits: GopLimits,
    /// The source the cached packets belong to; a new source empties the cache.
    source: Option<u64>,
    packets: Vec<ForwardedPacket>,
    bytes: usize,
}

impl GopCache {
    pub fn new(limits: GopLimits) -> Self {
        Self { limits, source: None, packets: Vec::new(), bytes: 0 }
    }

    /// Offers one forwarded packet, in forwarding order.
    pub fn push(&mut self, packet: &ForwardedPacket) -> Pushed {
        if packet.kind() != TrackKind::Video || self.limits.max_bytes == 0 {
            return Pushed::Ignored;
        }
        if self.source != Some(packet.source) {
            self.clear();
            self.source = Some(packet.source);
        }
        if packet.keyframe_start {
            self.clear();
            self.append(packet);
            return if self.over_limits() { self.overflow() } else { Pushed::Started };
        }
        if self.packets.is_empty() {
            return Pushed::Ignored;
        }
        self.append(packet);
        if self.over_limits() {
            return self.overflow();
        }
        Pushed::Appended
    }

    /// The cached packets, oldest first; the first one (if any) is a keyframe start.
    pub fn packets(&self) -> &[ForwardedPacket] {
        &self.packets
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops everything (the publisher left).
    pub fn clear(&mut self) {
        self.packets.clear();
        self.bytes = 0;
    }

    /// Copies of the cached packets to send to one new viewer, oldest first, stamped `now` (they leave the
    /// server now) with frame timestamps compressed so the whole GOP spans at most one tick per frame before
    /// the newest frame (which keeps its timestamp). Packets of one frame keep sharing a timestamp.
    pub fn replay(&self, now: Instant) -> Vec<ForwardedPacket> {
        let Some(newest) = self.packets.last().map(|p| p.timestamp) else { return Vec::new() };
        // Frames after each packet's frame, counted from the end.
        let mut out = Vec::with_capacity(self.packets.len());
        let mut frames_after: u32 = 0;
        let mut frame_ts = newest;
        for p in self.packets.iter().rev() {
            if p.timestamp != frame_ts {
                frames_after = frames_after.saturating_add(1);
                frame_ts = p.timestamp;
            }
            let real_delta = newest.wrapping_sub(p.timestamp);
            let mut c = p.clone();
            c.timestamp = newest.wrapping_sub(real_delta.min(frames_after));
            c.received_at = now;
            out.push(c);
        }
        out.reverse();
        out
    }

    fn append(&mut self, packet: &ForwardedPacket) {
        self.bytes += packet.payload.len();
        self.packets.push(packet.clone());
    }

    fn over_limits(&self) -> bool {
        self.bytes > self.limits.max_bytes || self.packets.len() > self.limits.max_packets
    }

    fn overflow(&mut self) -> Pushed {
        self.clear();
        // Release the capacity too: a runaway GOP shouldn't keep megabytes of pointers per room.
        self.packets.shrink_to(64);
        Pushed::Overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Codec, PayloadParams};
    use std::sync::Arc;
    use str0m::format::CodecConfig;
    use str0m::media::Pt;

    fn params() -> PayloadParams {
        let mut c = CodecConfig::empty();
        c.add_h264(Pt::from(102), None, true, 0x42e01f);
        c.params()[0]
    }

    fn pkt(codec: Codec, source: u64, seq: u64, ts: u32, key: bool, len: usize) -> ForwardedPacket {
        ForwardedPacket {
            codec,
            params: params(),
            source,
            seq,
            timestamp: ts,
            marker: false,
            keyframe_start: key,
            clock_rate: 90_000,
            received_at: Instant::now(),
            payload: Arc::from(vec![0u8; len]),
            ext: Default::default(),
        }
    }

    fn video(seq: u64, ts: u32, key: bool) -> ForwardedPacket {
        pkt(Codec::H264, 1, seq, ts, key, 100)
    }

    #[test]
    fn waits_for_a_keyframe_then_keeps_the_gop() {
        let mut c = GopCache::default();
        assert_eq!(c.push(&video(1, 0, false)), Pushed::Ignored);
        assert_eq!(c.push(&video(2, 3000, true)), Pushed::Started);
        assert_eq!(c.push(&video(3, 3000, false)), Pushed::Appended);
        assert_eq!(c.push(&video(4, 6000, false)), Pushed::Appended);
        assert_eq!(c.packets().iter().map(|p| p.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(c.bytes(), 300);
        // The next keyframe replaces the GOP.
        assert_eq!(c.push(&video(5, 9000, true)), Pushed::Started);
        assert_eq!(c.len(), 1);
        assert!(c.packets()[0].keyframe_start);
    }

    #[test]
    fn limits_from_bytes_and_zero_disables() {
        assert_eq!(GopLimits::default(), GopLimits { max_bytes: 4 << 20, max_packets: 4096 });
        let mut c = GopCache::new(GopLimits::from_bytes(0));
        assert_eq!(c.push(&video(1, 0, true)), Pushed::Ignored, "no overflow counted: the cache is off");
        assert!(c.is_empty());
    }

    #[test]
    fn audio_is_never_cached() {
        let mut c = GopCache::default();
        c.push(&video(1, 0, true));
        assert_eq!(c.push(&pkt(Codec::Opus, 1, 1, 0, false, 50)), Pushed::Ignored);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn overflow_drops_everything_until_the_next_keyframe() {
        let mut c = GopCache::new(GopLimits { max_bytes: 250, max_packets: 100 });
        c.push(&video(1, 0, true));
        c.push(&video(2, 3000, false));
        assert_eq!(c.push(&video(3, 6000, false)), Pushed::Overflowed);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.push(&video(4, 9000, false)), Pushed::Ignored);
        assert_eq!(c.push(&video(5, 12000, true)), Pushed::Started);
        assert_eq!(c.len(), 1);

        let mut c = GopCache::new(GopLimits { max_bytes: 1 << 20, max_packets: 2 });
        c.push(&video(1, 0, true));
        c.push(&video(2, 0, false));
        assert_eq!(c.push(&video(3, 0, false)), Pushed::Overflowed);
        // A keyframe bigger than the limit is not kept either.
        let mut c = GopCache::new(GopLimits { max_bytes: 10, max_packets: 2 });
        assert_eq!(c.push(&video(1, 0, true)), Pushed::Overflowed);
    }

    #[test]
    fn new_source_starts_over() {
        let mut c = GopCache::default();
        c.push(&video(1, 0, true));
        c.push(&video(2, 3000, false));
        // A re-publish: its delta frames can't follow the old keyframe.
        assert_eq!(c.push(&pkt(Codec::H264, 2, 7, 500, false, 100)), Pushed::Ignored);
        assert!(c.is_empty());
        assert_eq!(c.push(&pkt(Codec::H264, 2, 8, 3500, true, 100)), Pushed::Started);
        assert_eq!(c.packets()[0].source, 2);
    }

    #[test]
    fn replay_is_oldest_first_with_compressed_timestamps() {
        let mut c = GopCache::default();
        // Three frames, 40 ms apart; the first two have two packets each.
        for (seq, ts, key) in [(10, 1000, true), (11, 1000, false), (12, 4600, false), (13, 4600, false), (14, 8200, false)] {
            c.push(&video(seq, ts, key));
        }
        let later = Instant::now();
        let r = c.replay(later);
        assert_eq!(r.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![10, 11, 12, 13, 14]);
        assert_eq!(r.iter().map(|p| p.timestamp).collect::<Vec<_>>(), vec![8198, 8198, 8199, 8199, 8200]);
        assert!(r[0].keyframe_start && r.iter().skip(1).all(|p| !p.keyframe_start));
        assert!(r.iter().all(|p| p.received_at == later));
        // The cache itself is untouched.
        assert_eq!(c.packets()[0].timestamp, 1000);
        assert!(GopCache::default().replay(later).is_empty());
    }

    #[test]
    fn replay_handles_timestamp_wrap_and_close_frames() {
        let mut c = GopCache::default();
        // Timestamps wrap through u32::MAX.
        for (seq, ts, key) in [(1, u32::MAX - 5, true), (2, u32::MAX, false), (3, 2, false)] {
            c.push(&video(seq, ts, key));
        }
        let r = c.replay(Instant::now());
        assert_eq!(r.iter().map(|p| p.timestamp).collect::<Vec<_>>(), vec![0, 1, 2]);
        // Frames already closer together than one tick per frame keep their timestamps.
        let mut c = GopCache::default();
        for (seq, ts, key) in [(1, 8998, true), (2, 8999, false), (3, 9000, false)] {
            c.push(&video(seq, ts, key));
        }
        assert_eq!(c.replay(Instant::now()).iter().map(|p| p.timestamp).collect::<Vec<_>>(), vec![8998, 8999, 9000]);
    }
}
