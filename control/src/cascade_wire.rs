//! The QUIC datagram that carries one publisher RTP packet from the node hosting a room to a node that
//! subscribed to it (cascading).
//!
//! Why a hand-rolled header: it is on the packet path (one encode per packet, shared by every subscribing
//! node; one decode per packet on the receiver), so the fixed fields are plain big-endian integers and only
//! the payload format (str0m's `PayloadParams`, which viewers match their own codecs against) is postcard,
//! cached per room so it is encoded once per format change, not per packet.
//!
//! ```text
//! 0      version (2)
//! 1      flags: bit 0 marker, bit 1 keyframe start, bit 2 audio level present, bit 3 voice activity
//!        present, bit 4 voice activity, bit 5 video orientation present
//! 2..4   length P of the encoded params (u16)
//! 4..12  room key (RoomKey, the same SipHash of the name on every node)
//! 12..20 source (the publisher's id on the hosting node; changes on re-publish)
//! 20..28 extended sequence number
//! 28..32 RTP timestamp
//! 32..36 clock rate
//! 36     audio level (its magnitude in dBov, 0..=127, as RFC 6464 writes it; 0 when absent)
//! 37     video orientation (the CVO rotation bits, 0..=3; 0 when absent)
//! 38..38+P  postcard(PayloadParams)
//! ...    payload
//! ```
//! Version 1 (no extension bytes: params at 36) is still decoded, so a node that is upgraded first keeps
//! receiving from those that are not yet; it does not understand version 2.
//! The room key, not the subscriber's channel id, names the stream: the header is then identical for every
//! subscribing node and the datagram is built once (the payload is copied once, into it) and shared.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sfumato_media::packet::{ForwardedExt, ForwardedPacket, PayloadParams};
use sfumato_media::room::RoomKey;
use str0m::rtp::VideoOrientation;

pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 38;
/// The header of version 1 (before the extension bytes).
const V1_HEADER_LEN: usize = 36;
/// Params longer than this are refused (str0m's encode is a few dozen bytes).
const MAX_PARAMS_LEN: usize = 512;

/// Why a datagram was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CascadeWireError {
    #[error("datagram of {0} bytes is shorter than the header")]
    Short(usize),
    #[error("unsupported cascade datagram version {0}")]
    Version(u8),
    #[error("payload params of {0} bytes do not fit")]
    ParamsLength(usize),
    #[error("payload params do not decode")]
    Params,
    #[error("codec not forwarded by sfumato")]
    Codec,
    #[error("payload params do not encode")]
    Encode,
}

/// Encodes packets, remembering the last params encoding of each room.
#[derive(Default)]
pub struct Encoder {
    cache: std::collections::HashMap<RoomKey, (PayloadParams, Vec<u8>)>,
}

impl Encoder {
    /// One datagram for `packet` (the payload is copied once, into it).
    pub fn encode(&mut self, room: RoomKey, packet: &ForwardedPacket) -> Result<Bytes, CascadeWireError> {
        let fresh = !matches!(self.cache.get(&room), Some((p, _)) if *p == packet.params);
        if fresh {
            let enc = postcard::to_allocvec(&packet.params).map_err(|_| CascadeWireError::Encode)?;
            if enc.len() > MAX_PARAMS_LEN {
                return Err(CascadeWireError::ParamsLength(enc.len()));
            }
            self.cache.insert(room, (packet.params, enc));
        }
        let params: &[u8] = self.cache.get(&room).map(|(_, e)| e.as_slice()).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + params.len() + packet.payload.len());
        let ext = &packet.ext;
        let flags = u8::from(packet.marker)
            | (u8::from(packet.keyframe_start) << 1)
            | (u8::from(ext.audio_level.is_some()) << 2)
            | (u8::from(ext.voice_activity.is_some()) << 3)
            | (u8::from(ext.voice_activity == Some(true)) << 4)
            | (u8::from(ext.video_orientation.is_some()) << 5);
        out.push(VERSION);
        out.push(flags);
        out.extend_from_slice(&(params.len() as u16).to_be_bytes());
        out.extend_from_slice(&room.0.to_be_bytes());
        out.extend_from_slice(&packet.source.to_be_bytes());
        out.extend_from_slice(&packet.seq.to_be_bytes());
        out.extend_from_slice(&packet.timestamp.to_be_bytes());
        out.extend_from_slice(&packet.clock_rate.to_be_bytes());
        out.push(ext.audio_level.map_or(0, |l| l.unsigned_abs().min(127)));
        out.push(ext.video_orientation.map_or(0, |o| o as u8));
        out.extend_from_slice(params);
        out.extend_from_slice(&packet.payload);
        Ok(Bytes::from(out))
    }

    /// Forgets a room's cached params (its export ended).
    pub fn forget(&mut self, room: RoomKey) {
        self.cache.remove(&room);
    }
}

/// The room key of a datagram, without decoding the rest (to drop unwanted ones cheaply).
pub fn room_of(data: &[u8]) -> Option<RoomKey> {
    let b: [u8; 8] = data.get(4..12)?.try_into().ok()?;
    Some(RoomKey(u64::from_be_bytes(b)))
}

/// Decodes a datagram into the room key and a packet stamped `received_at = now`.
pub fn decode(data: &[u8], now: Instant) -> Result<(RoomKey, ForwardedPacket), CascadeWireError> {
    let Some(&version) = data.first() else { return Err(CascadeWireError::Short(0)) };
    let header_len = match version {
        VERSION => HEADER_LEN,
        1 => V1_HEADER_LEN,
        v => return Err(CascadeWireError::Version(v)),
    };
    if data.len() < header_len {
        return Err(CascadeWireError::Short(data.len()));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&data[i..i + 4]);
        u32::from_be_bytes(b)
    };
    let flags = data[1];
    let plen = u16::from_be_bytes([data[2], data[3]]) as usize;
    if plen > MAX_PARAMS_LEN || header_len + plen > data.len() {
        return Err(CascadeWireError::ParamsLength(plen));
    }
    let params: PayloadParams =
        postcard::from_bytes(&data[header_len..header_len + plen]).map_err(|_| CascadeWireError::Params)?;
    let ext = if version == 1 {
        ForwardedExt::default()
    } else {
        ForwardedExt {
            // str0m's convention: 0 dBov down to -127; seven bits on the wire, so a forged byte stays in range.
            audio_level: (flags & 4 != 0).then_some(-((data[36] & 0x7f) as i8)),
            voice_activity: (flags & 8 != 0).then_some(flags & 16 != 0),
            video_orientation: (flags & 32 != 0).then(|| orientation(data[37])),
        }
    };
    let codec = sfumato_media::webrtc::codec_of(&params).ok_or(CascadeWireError::Codec)?;
    let packet = ForwardedPacket {
        codec,
        params,
        source: u64_at(12),
        seq: u64_at(20),
        timestamp: u32_at(28),
        marker: flags & 1 != 0,
        keyframe_start: flags & 2 != 0,
        clock_rate: u32_at(32).max(1),
        received_at: now,
        payload: Arc::from(&data[header_len + plen..]),
        ext,
    };
    Ok((RoomKey(u64_at(4)), packet))
}

/// The CVO rotation bits (the values of `VideoOrientation`), the low two of `b`.
fn orientation(b: u8) -> VideoOrientation {
    match b & 3 {
        0 => VideoOrientation::Deg0,
        1 => VideoOrientation::Deg270,
        2 => VideoOrientation::Deg180,
        _ => VideoOrientation::Deg90,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfumato_media::packet::Codec;
    use str0m::format::CodecConfig;

    fn vp8_params() -> PayloadParams {
        let c = CodecConfig::new_with_defaults();
        c.params().iter().copied().find(|p| p.spec().codec == str0m::format::Codec::Vp8).expect("vp8 in defaults")
    }

    fn packet(payload: &[u8]) -> ForwardedPacket {
        ForwardedPacket {
            codec: Codec::Vp8,
            params: vp8_params(),
            source: 0x0100_0000_0000_0007,
            seq: 70_000,
            timestamp: 0xdead_beef,
            marker: true,
            keyframe_start: true,
            clock_rate: 90_000,
            received_at: Instant::now(),
            payload: Arc::from(payload),
            ext: ForwardedExt::default(),
        }
    }

    #[test]
    fn round_trip() {
        let mut enc = Encoder::default();
        let room = RoomKey::of("r");
        let p = packet(b"hello vp8");
        let bytes = enc.encode(room, &p).unwrap();
        assert_eq!(room_of(&bytes), Some(room));
        let (r, q) = decode(&bytes, Instant::now()).unwrap();
        assert_eq!(r, room);
        assert_eq!((q.codec, q.source, q.seq, q.timestamp, q.marker, q.keyframe_start, q.clock_rate),
                   (Codec::Vp8, p.source, p.seq, p.timestamp, true, true, 90_000));
        assert_eq!(q.params, p.params);
        assert_eq!(&*q.payload, b"hello vp8");
        // cached params: second encode is identical
        assert_eq!(enc.encode(room, &p).unwrap(), bytes);
    }

    #[test]
    fn extensions_round_trip() {
        let mut enc = Encoder::default();
        let room = RoomKey::of("r");
        let orientations = [VideoOrientation::Deg0, VideoOrientation::Deg90, VideoOrientation::Deg180, VideoOrientation::Deg270];
        for (i, o) in orientations.into_iter().enumerate() {
            let mut p = packet(b"ext");
            p.ext = ForwardedExt { audio_level: Some(i as i8 * -40), voice_activity: Some(i % 2 == 0), video_orientation: Some(o) };
            let (_, q) = decode(&enc.encode(room, &p).unwrap(), Instant::now()).unwrap();
            assert_eq!(q.ext, p.ext);
            assert_eq!(&*q.payload, b"ext");
        }
        let p = packet(b"none");
        let (_, q) = decode(&enc.encode(room, &p).unwrap(), Instant::now()).unwrap();
        assert_eq!(q.ext, ForwardedExt::default());
        let mut p = packet(b"silent");
        p.ext.voice_activity = Some(false);
        let (_, q) = decode(&enc.encode(room, &p).unwrap(), Instant::now()).unwrap();
        assert_eq!(q.ext.voice_activity, Some(false));
    }

    #[test]
    fn version_1_is_still_decoded() {
        let mut enc = Encoder::default();
        let mut p = packet(b"old node");
        p.ext.audio_level = Some(-30);
        let v2 = enc.encode(RoomKey(7), &p).unwrap();
        // The same datagram as a version-1 node writes it: no extension bytes, no extension flags.
        let mut v1 = vec![1, v2[1] & 0b11];
        v1.extend_from_slice(&v2[2..V1_HEADER_LEN]);
        v1.extend_from_slice(&v2[HEADER_LEN..]);
        let (room, q) = decode(&v1, Instant::now()).unwrap();
        assert_eq!(room, RoomKey(7));
        assert_eq!((q.seq, q.marker, q.keyframe_start), (p.seq, true, true));
        assert_eq!(q.params, p.params);
        assert_eq!(&*q.payload, b"old node");
        assert_eq!(q.ext, ForwardedExt::default());
    }

    #[test]
    fn junk_is_refused_without_panicking() {
        assert_eq!(decode(&[1, 2, 3], Instant::now()).err(), Some(CascadeWireError::Short(3)));
        assert_eq!(decode(&[], Instant::now()).err(), Some(CascadeWireError::Short(0)));
        let mut enc = Encoder::default();
        let good = enc.encode(RoomKey(1), &packet(b"x")).unwrap().to_vec();
        let mut bad = good.clone();
        bad[0] = 9;
        assert_eq!(decode(&bad, Instant::now()).err(), Some(CascadeWireError::Version(9)));
        let mut bad = good.clone();
        bad[2] = 0xff;
        assert!(decode(&bad, Instant::now()).is_err());
        let mut bad = good.clone();
        bad[HEADER_LEN] ^= 0xff;
        let _ = decode(&bad, Instant::now()); // any result, no panic
        for cut in 0..good.len() {
            let _ = decode(&good[..cut], Instant::now());
        }
    }
}
