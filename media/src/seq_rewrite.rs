//! Sequence number and timestamp rewriting for one viewer track.
//!
//! A viewer keeps one outgoing SSRC per track for its whole life. When the publisher changes (a re-publish,
//! or a new publisher after the viewer joined) the incoming sequence numbers and timestamps jump; the viewer's
//! decoder would stall or drop. [`SeqRewriter`] re-bases them so the output continues where it left off, with
//! the timestamp advanced by the wall-clock gap. It also holds video back until a keyframe so a decoder never
//! starts on a delta frame.

use std::time::Instant;

/// What to write for one incoming packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: u64,
    pub timestamp: u32,
}

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Video from a source we haven't seen a keyframe of yet.
    AwaitingKeyframe,
    /// Older than the re-base point of the current source (a late duplicate or retransmission).
    Stale,
}

#[derive(Debug)]
pub struct SeqRewriter {
    needs_keyframe: bool,
    source: Option<u64>,
    /// out = in + seq_offset (wrapping in u64 space).
    seq_offset: u64,
    /// out = in + ts_offset (wrapping in u32 space).
    ts_offset: u32,
    /// First incoming seq of the current source; older ones are stale.
    base_in_seq: u64,
    last_out: Option<(u64, u32, Instant)>,
}

impl SeqRewriter {
    /// `is_video` holds packets back until a keyframe start for every new source.
    pub fn new(is_video: bool) -> Self {
        Self { needs_keyframe: is_video, source: None, seq_offset: 0, ts_offset: 0, base_in_seq: 0, last_out: None }
    }

    /// Maps one incoming packet. `keyframe_start` tells if a decoder can start at it.
    pub fn rewrite(
        &mut self,
        source: u64,
        seq: u64,
        timestamp: u32,
        clock_rate: u32,
        keyframe_start: bool,
        now: Instant,
    ) -> Result<Rewritten, Skip> {
        if self.source != Some(source) {
            if self.needs_keyframe && !keyframe_start {
                return Err(Skip::AwaitingKeyframe);
            }
            self.rebase(source, seq, timestamp, clock_rate, now);
        } else if seq < self.base_in_seq {
            return Err(Skip::Stale);
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = timestamp.wrapping_add(self.ts_offset);
        match self.last_out {
            Some((s, _, _)) if out_seq <= s => {}
            _ => self.last_out = Some((out_seq, out_ts, now)),
        }
        Ok(Rewritten { seq: out_seq, timestamp: out_ts })
    }

    /// The source currently mapped (video: the one whose keyframe started the output), if any.
    pub fn source(&self) -> Option<u64> {
        self.source
    }

    fn rebase(&mut self, source: u64, seq: u64, timestamp: u32, clock_rate: u32, now: Instant) {
        self.source = Some(source);
        self.base_in_seq = seq;
        match self.last_out {
            None => {
                // Start below 65536: a fresh SRTP receiver assumes rollover counter 0, so forwarding the
                // publisher's extended sequence number (ROC > 0 after 65536 packets) would fail to decrypt.
                self.seq_offset = (seq & 0xffff).wrapping_sub(seq);
                self.ts_offset = 0;
            }
            Some((last_seq, last_ts, at)) => {
                let next_seq = last_seq + 1;
                self.seq_offset = next_seq.wrapping_sub(seq);
                let gap = now.saturating_duration_since(at);
                let ticks = ((gap.as_micros() as u64 * clock_rate as u64) / 1_000_000).max(1) as u32;
                self.ts_offset = last_ts.wrapping_add(ticks).wrapping_sub(timestamp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn passes_through_first_source() {
        let t = Instant::now();
        let mut r = SeqRewriter::new(false);
        assert_eq!(r.rewrite(1, 100, 5000, 48000, false, t), Ok(Rewritten { seq: 100, timestamp: 5000 }));
        assert_eq!(r.rewrite(1, 101, 5960, 48000, false, t), Ok(Rewritten { seq: 101, timestamp: 5960 }));
    }

    #[test]
    fn first_output_has_rollover_zero() {
        let t = Instant::now();
        let mut r = SeqRewriter::new(false);
        let a = r.rewrite(1, 3 * 65536 + 10, 0, 48000, false, t).unwrap();
        assert_eq!(a.seq, 10);
        assert_eq!(r.rewrite(1, 3 * 65536 + 11, 960, 48000, false, t).unwrap().seq, 11);
    }

    #[test]
    fn video_waits_for_keyframe() {
        let t = Instant::now();
        let mut r = SeqRewriter::new(true);
        assert_eq!(r.rewrite(1, 7, 0, 90000, false, t), Err(Skip::AwaitingKeyframe));
        assert!(r.rewrite(1, 8, 3000, 90000, true, t).is_ok());
        assert!(r.rewrite(1, 9, 3000, 90000, false, t).is_ok());
        assert_eq!(r.rewrite(1, 5, 0, 90000, false, t), Err(Skip::Stale));
    }

    #[test]
    fn republish_continues_sequence_and_advances_time() {
        let t0 = Instant::now();
        let mut r = SeqRewriter::new(true);
        r.rewrite(1, 1000, 90_000, 90000, true, t0).unwrap();
        let last = r.rewrite(1, 1001, 93_000, 90000, false, t0).unwrap();
        // New source with unrelated numbers 500 ms later; the delta frame before its keyframe is held back.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(r.rewrite(2, 7, 1_000_000, 90000, false, t1), Err(Skip::AwaitingKeyframe));
        let first = r.rewrite(2, 8, 1_000_000, 90000, true, t1).unwrap();
        assert_eq!(first.seq, last.seq + 1);
        assert_eq!(first.timestamp, last.timestamp.wrapping_add(45_000));
        let next = r.rewrite(2, 9, 1_003_000, 90000, false, t1).unwrap();
        assert_eq!(next.seq, first.seq + 1);
        assert_eq!(next.timestamp, first.timestamp + 3000);
    }

    #[test]
    fn timestamp_wraps() {
        let t0 = Instant::now();
        let mut r = SeqRewriter::new(false);
        r.rewrite(1, 1, u32::MAX - 10, 48000, false, t0).unwrap();
        let t1 = t0 + Duration::from_millis(20);
        let a = r.rewrite(2, 50, 20, 48000, false, t1).unwrap();
        assert_eq!(a.timestamp, (u32::MAX - 10).wrapping_add(960));
        assert_eq!(a.seq, 2);
    }
}
