//! Is this RTP payload the start of a keyframe? Per-codec parsing of the payload descriptor.
//!
//! Used to start a new viewer (or a viewer after a re-publish) on a decodable picture and to know when a
//! requested keyframe arrived. Input comes from the network: every index is checked.

use crate::packet::Codec;

pub fn is_keyframe_start(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Opus => false,
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::Av1 => av1(payload),
    }
}

/// RFC 7741 §4.2: descriptor, then the VP8 payload header whose lowest bit P is 0 on key frames.
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start_of_partition = b0 & 0x10 != 0;
    let partition_id = b0 & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(at) else { return false };
        at += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits (M flag).
            let Some(&pid) = p.get(at) else { return false };
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID/Y/KEYIDX
        }
    }
    matches!(p.get(at), Some(h) if h & 0x01 == 0)
}

/// RFC 9628 §4.2: P (inter-picture predicted) clear and B (start of frame) set.
fn vp9(p: &[u8]) -> bool {
    matches!(p.first(), Some(b) if b & 0x40 == 0 && b & 0x08 != 0)
}

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;

fn h264_key_nal(ty: u8) -> bool {
    ty == H264_IDR || ty == H264_SPS
}

/// RFC 6184: single NAL, STAP-A (24) or the first fragment of an FU-A (28).
fn h264(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        24 => {
            let mut at = 1;
            while at + 2 < p.len() {
                let size = u16::from_be_bytes([p[at], p[at + 1]]) as usize;
                if size == 0 {
                    return false;
                }
                if h264_key_nal(p[at + 2] & 0x1f) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        28 => matches!(p.get(1), Some(fu) if fu & 0x80 != 0 && h264_key_nal(fu & 0x1f)),
        ty => h264_key_nal(ty),
    }
}

/// AV1 RTP spec §4.4: N (first packet of a coded video sequence) in the aggregation header.
fn av1(p: &[u8]) -> bool {
    matches!(p.first(), Some(b) if b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_and_delta() {
        // X=1, S=1, PID=0; I=1 with 15-bit picture id; then payload header with P=0.
        assert!(is_keyframe_start(Codec::Vp8, &[0x90, 0x80, 0x81, 0x23, 0x10]));
        assert!(!is_keyframe_start(Codec::Vp8, &[0x90, 0x80, 0x81, 0x23, 0x11]));
        // Not the start of partition 0.
        assert!(!is_keyframe_start(Codec::Vp8, &[0x80, 0x80, 0x81, 0x23, 0x10]));
        // Truncated.
        assert!(!is_keyframe_start(Codec::Vp8, &[0x90, 0x80, 0x81]));
        assert!(!is_keyframe_start(Codec::Vp8, &[]));
    }

    #[test]
    fn h264_forms() {
        assert!(is_keyframe_start(Codec::H264, &[0x65, 0x88]));
        assert!(is_keyframe_start(Codec::H264, &[0x67, 0x42]));
        assert!(!is_keyframe_start(Codec::H264, &[0x41, 0x9a]));
        // STAP-A with SPS inside.
        assert!(is_keyframe_start(Codec::H264, &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]));
        // STAP-A with a lying size must not overrun.
        assert!(!is_keyframe_start(Codec::H264, &[0x78, 0xff, 0xff]));
        // FU-A start of an IDR vs middle fragment.
        assert!(is_keyframe_start(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe_start(Codec::H264, &[0x7c, 0x05, 0x00]));
    }

    #[test]
    fn vp9_and_av1() {
        assert!(is_keyframe_start(Codec::Vp9, &[0x08]));
        assert!(!is_keyframe_start(Codec::Vp9, &[0x48]));
        assert!(is_keyframe_start(Codec::Av1, &[0x18]));
        assert!(!is_keyframe_start(Codec::Av1, &[0x10]));
        assert!(!is_keyframe_start(Codec::Opus, &[0xff]));
    }
}
