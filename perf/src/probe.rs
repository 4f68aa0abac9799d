//! The synthetic media payloads the harness sends and recognises.
//!
//! Why it exists: the SFU rewrites RTP sequence numbers per viewer and may start a viewer mid-stream, so
//! loss, duplication, reordering and end-to-end latency are measured from fields *inside* the payload.
//! The bytes must also look like real media to the server: the video payload starts like a VP8 RTP
//! payload (RFC 7741 descriptor `0x10` = S bit + partition 0 on a frame's first packet, then the VP8
//! payload header whose lowest bit is 0 on keyframes), the audio payload starts with an Opus TOC byte.
//!
//! Layout (big-endian), [`HEADER_LEN`] bytes, then zero padding to the requested size:
//!
//! | off | len | field                                               |
//! |-----|-----|-----------------------------------------------------|
//! | 0   | 2   | codec prefix (VP8 descriptor + header, or Opus TOC) |
//! | 2   | 4   | magic `SFPR`                                        |
//! | 6   | 1   | kind: 1 video, 2 audio                              |
//! | 7   | 1   | flags: bit0 keyframe, bit1 first packet of a frame  |
//! | 8   | 4   | stream id (one per publisher)                       |
//! | 12  | 8   | per-stream, per-kind packet counter                 |
//! | 20  | 8   | send time, ns since the shared [`epoch`]            |

use std::sync::OnceLock;
use std::time::Instant;

pub const MAGIC: [u8; 4] = *b"SFPR";
pub const HEADER_LEN: usize = 28;

/// VP8 descriptor byte on a frame's first packet: S=1, PID=0, no extensions.
pub const VP8_START: u8 = 0x10;
/// Opus TOC: config 31 (CELT FB 20 ms), mono, one frame.
pub const OPUS_TOC: u8 = 0xf8;

const FLAG_KEY: u8 = 0x01;
const FLAG_START: u8 = 0x02;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Video,
    Audio,
}

impl Kind {
    pub fn index(self) -> usize {
        match self {
            Kind::Video => 0,
            Kind::Audio => 1,
        }
    }
}

/// The process-wide time origin for `sent_ns`. Publisher and viewers in one process share it, so
/// `now - sent` is a one-clock latency.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to `t` (0 if `t` is earlier).
pub fn ns_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// The decoded probe fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: Kind,
    pub keyframe: bool,
    pub frame_start: bool,
    pub stream_id: u32,
    pub counter: u64,
    pub sent_ns: u64,
}

impl Probe {
    /// A keyframe's first packet: where a viewer can start decoding.
    pub fn is_keyframe_start(&self) -> bool {
        self.kind == Kind::Video && self.keyframe && self.frame_start
    }
}

/// Writes a probe payload of `size` bytes (at least [`HEADER_LEN`]) into `out` (cleared first).
pub fn write(out: &mut Vec<u8>, p: &Probe, size: usize) {
    out.clear();
    let (b0, b1) = match p.kind {
        // Continuation packets carry S=0; the VP8 payload header byte is repeated (harmless for the SFU).
        Kind::Video => (if p.frame_start { VP8_START } else { 0x00 }, if p.keyframe { 0x00 } else { 0x01 }),
        Kind::Audio => (OPUS_TOC, 0xff),
    };
    out.extend_from_slice(&[b0, b1]);
    out.extend_from_slice(&MAGIC);
    out.push(match p.kind {
        Kind::Video => 1,
        Kind::Audio => 2,
    });
    out.push((if p.keyframe { FLAG_KEY } else { 0 }) | (if p.frame_start { FLAG_START } else { 0 }));
    out.extend_from_slice(&p.stream_id.to_be_bytes());
    out.extend_from_slice(&p.counter.to_be_bytes());
    out.extend_from_slice(&p.sent_ns.to_be_bytes());
    out.resize(size.max(HEADER_LEN), 0);
}

/// Allocating convenience wrapper around [`write`].
pub fn encode(p: &Probe, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(HEADER_LEN));
    write(&mut v, p, size);
    v
}

/// Parses a payload written by [`write`]; `None` for anything else (short, wrong magic, unknown kind).
pub fn parse(b: &[u8]) -> Option<Probe> {
    let h = b.get(..HEADER_LEN)?;
    if h[2..6] != MAGIC {
        return None;
    }
    let kind = match h[6] {
        1 => Kind::Video,
        2 => Kind::Audio,
        _ => return None,
    };
    // Received bytes: read with fallible conversions, never a panic.
    let u64_at = |o: usize| Some(u64::from_be_bytes(h.get(o..o + 8)?.try_into().ok()?));
    let p = Probe {
        kind,
        keyframe: h[7] & FLAG_KEY != 0,
        frame_start: h[7] & FLAG_START != 0,
        stream_id: u32::from_be_bytes(h.get(8..12)?.try_into().ok()?),
        counter: u64_at(12)?,
        sent_ns: u64_at(20)?,
    };
    // The codec prefix must agree with the flags, or the server would judge keyframes differently.
    if kind == Kind::Video && ((h[0] == VP8_START) != p.frame_start || (h[1] & 1 == 0) != p.keyframe) {
        return None;
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind, key: bool, start: bool) -> Probe {
        Probe { kind, keyframe: key, frame_start: start, stream_id: 7, counter: u64::MAX - 3, sent_ns: 123_456_789 }
    }

    #[test]
    fn roundtrip_and_codec_prefix() {
        for (kind, key, start) in [(Kind::Video, true, true), (Kind::Video, false, true), (Kind::Video, true, false), (Kind::Audio, false, false)] {
            let p = sample(kind, key, start);
            let b = encode(&p, 1000);
            assert_eq!(b.len(), 1000);
            assert_eq!(parse(&b), Some(p));
        }
        let key = encode(&sample(Kind::Video, true, true), 50);
        assert_eq!(&key[..2], &[0x10, 0x00], "what the server's VP8 keyframe check looks for");
        let delta = encode(&sample(Kind::Video, false, true), 50);
        assert_eq!(&delta[..2], &[0x10, 0x01]);
        assert_eq!(encode(&sample(Kind::Audio, false, false), 10).len(), HEADER_LEN, "never shorter than the header");
    }

    #[test]
    fn rejects_garbage() {
        let b = encode(&sample(Kind::Video, true, true), 100);
        for n in 0..HEADER_LEN {
            assert_eq!(parse(&b[..n]), None);
        }
        let mut bad = b.clone();
        bad[3] ^= 1;
        assert_eq!(parse(&bad), None);
        let mut bad = b.clone();
        bad[6] = 9;
        assert_eq!(parse(&bad), None);
        let mut bad = b;
        bad[1] = 0x01; // prefix says delta, flags say key
        assert_eq!(parse(&bad), None);
    }
}
