//! Receive-side accounting for media that carries no probe (e.g. the `rtmp` scenario's ffmpeg stream).
//!
//! Why it exists: real encoder output has no send time or counter inside, so loss comes from the RTP
//! sequence numbers the SFU wrote for this viewer (contiguous per viewer: a gap is a loss), pacing from
//! the arrival times, and timing quality from the RTP timestamp against the arrival clock: the RFC 3550
//! interarrival jitter, and the *frame delay variation* — each frame's (arrival − media time), relative
//! to the earliest frame of the window. No end-to-end latency: the source clock is not ours. Pure data,
//! unit-tested.

use hdrhistogram::Histogram;

use crate::probe::Kind;
use crate::stats::{new_histogram, Arrival, SeqTracker};

/// An inter-arrival gap at least this long counts as a stall.
pub const STALL_NS: u64 = 100_000_000;

/// One kind's window.
#[derive(Debug, Clone, Default)]
pub struct RawWindow {
    pub open: bool,
    /// Extended RTP sequence numbers seen in the window.
    pub seq: SeqTracker,
    pub packets: u64,
    /// Largest time between two consecutive arrivals (ns).
    pub max_gap_ns: u64,
    /// Gaps ≥ [`STALL_NS`].
    pub stalls: u64,
    last_arrival_ns: Option<u64>,
    /// RFC 3550 interarrival jitter, in µs (J += (|D| − J) / 16).
    pub jitter_us: f64,
    last_transit_us: Option<f64>,
    /// Per frame (first packet of each new RTP timestamp): arrival − media time, µs, any origin.
    pub frame_delay_us: Vec<i64>,
    last_ts: Option<u64>,
}

impl RawWindow {
    fn record(&mut self, seq: u64, media_us: i64, arrival_ns: u64, ts: u64) {
        let arrival_us = (arrival_ns / 1000) as i64;
        if let Some(last) = self.last_arrival_ns {
            let gap = arrival_ns.saturating_sub(last);
            self.max_gap_ns = self.max_gap_ns.max(gap);
            if gap >= STALL_NS {
                self.stalls += 1;
            }
        }
        self.last_arrival_ns = Some(arrival_ns);
        self.packets += 1;
        if self.seq.record(seq) == Arrival::Duplicate {
            return;
        }
        let transit = (arrival_us - media_us) as f64;
        if let Some(prev) = self.last_transit_us {
            self.jitter_us += ((transit - prev).abs() - self.jitter_us) / 16.0;
        }
        self.last_transit_us = Some(transit);
        if self.last_ts != Some(ts) {
            self.last_ts = Some(ts);
            self.frame_delay_us.push(arrival_us - media_us);
        }
    }

    /// Frame delay variation: each frame's delay minus the smallest of the window, µs (≥ 0).
    pub fn delay_variation_us(&self) -> impl Iterator<Item = u64> + '_ {
        let min = self.frame_delay_us.iter().copied().min().unwrap_or(0);
        self.frame_delay_us.iter().map(move |d| (d - min) as u64)
    }

    /// Window loss by sequence numbers: 1 − unique / (highest − lowest + 1).
    pub fn loss_ratio(&self) -> f64 {
        let expected = self.seq.expected();
        if expected == 0 {
            return 0.0;
        }
        self.seq.lost() as f64 / expected as f64
    }
}

/// Everything a viewer accounts per kind for probe-less media.
#[derive(Debug, Clone, Default)]
pub struct RawKindStats {
    pub packets: u64,
    /// Arrival of the first packet (ns since the probe epoch).
    pub first_arrival_ns: Option<u64>,
    pub window: RawWindow,
}

/// Per-viewer probe-less statistics, indexed by [`Kind::index`].
#[derive(Debug, Clone, Default)]
pub struct RawRtpStats {
    pub kinds: [RawKindStats; 2],
}

impl RawRtpStats {
    /// Video if the RTP clock is 90 kHz, audio otherwise.
    pub fn kind_of(clock_hz: u32) -> Kind {
        if clock_hz == 90_000 {
            Kind::Video
        } else {
            Kind::Audio
        }
    }

    /// Accounts one packet: extended sequence number, extended RTP timestamp and its clock, arrival.
    pub fn record(&mut self, seq: u64, ts: u64, clock_hz: u32, arrival_ns: u64) {
        let k = &mut self.kinds[Self::kind_of(clock_hz).index()];
        k.packets += 1;
        k.first_arrival_ns.get_or_insert(arrival_ns.max(1));
        if k.window.open {
            let media_us = (ts as u128 * 1_000_000 / clock_hz.max(1) as u128) as i64;
            k.window.record(seq, media_us, arrival_ns, ts);
        }
    }

    /// Starts a fresh window for every kind.
    pub fn open_window(&mut self) {
        for k in &mut self.kinds {
            k.window = RawWindow { open: true, ..RawWindow::default() };
        }
    }

    pub fn close_window(&mut self) {
        for k in &mut self.kinds {
            k.window.open = false;
        }
    }
}

/// Adds a window's frame delay variation to a histogram (µs, clamped to ≥ 1).
pub fn add_delay_variation(h: &mut Histogram<u64>, w: &RawWindow) {
    for v in w.delay_variation_us() {
        let _ = h.record(v.clamp(1, 60_000_000));
    }
}

/// A fresh histogram for [`add_delay_variation`].
pub fn delay_histogram() -> Histogram<u64> {
    new_histogram()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn window_counts_loss_gaps_and_jitter() {
        let mut s = RawRtpStats::default();
        s.record(1, 0, 90_000, MS); // before the window: counted in packets, not in the window
        s.open_window();
        // 30 fps frames, 2 packets each, on time except frame 3 which is 10 ms late; seq 8 lost.
        let mut seq = 2;
        for f in 0..6u64 {
            let arrival = 100 * MS + f * 33_333_333 + if f == 3 { 10 * MS } else { 0 };
            let ts = f * 3000;
            for p in 0..2 {
                if seq != 8 {
                    s.record(seq, ts, 90_000, arrival + p * 100_000);
                }
                seq += 1;
            }
        }
        s.close_window();
        s.record(seq, 99_999, 90_000, 900 * MS);
        let v = &s.kinds[Kind::Video.index()];
        assert_eq!(v.packets, 13);
        assert_eq!(v.first_arrival_ns, Some(MS));
        let w = &v.window;
        assert_eq!(w.packets, 11);
        assert_eq!((w.seq.expected(), w.seq.lost()), (12, 1));
        assert!((w.loss_ratio() - 1.0 / 12.0).abs() < 1e-9);
        assert_eq!(w.frame_delay_us.len(), 6);
        let dv: Vec<u64> = w.delay_variation_us().collect();
        // Frame 3 is 10 ms late (its first packet was lost, so its second, 0.1 ms later, counts).
        assert!(dv.iter().max().is_some_and(|&m| (10_000..=10_101).contains(&m)), "{dv:?}");
        assert!(dv.iter().filter(|&&d| d > 1).count() == 1, "the others are on time (±rounding): {dv:?}");
        assert!(w.jitter_us > 0.0 && w.jitter_us < 10_000.0);
        assert!(w.max_gap_ns >= 33 * MS && w.max_gap_ns < 44 * MS, "{}", w.max_gap_ns);
        assert_eq!(w.stalls, 0);
        let mut h = delay_histogram();
        add_delay_variation(&mut h, w);
        assert_eq!(h.len(), 6);
    }

    #[test]
    fn audio_by_clock_and_stalls() {
        let mut s = RawRtpStats::default();
        s.open_window();
        s.record(10, 0, 48_000, 0);
        s.record(11, 960, 48_000, 150 * MS);
        s.record(11, 960, 48_000, 151 * MS); // duplicate: no jitter, no loss change
        let a = &s.kinds[Kind::Audio.index()].window;
        assert_eq!((a.packets, a.stalls, a.seq.duplicates), (3, 1, 1));
        assert_eq!(a.loss_ratio(), 0.0);
        assert!((a.jitter_us - (130_000.0 / 16.0)).abs() < 1.0, "|D| = 150 ms − 20 ms: {}", a.jitter_us);
        assert_eq!(s.kinds[Kind::Video.index()].packets, 0);
    }
}
