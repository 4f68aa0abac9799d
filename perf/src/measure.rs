//! Adding up one measured window over many viewers (of one or many publishers).
//!
//! Why it exists: `fanout`, `rooms` and `floor` judge a window the same way — unique probe counters in
//! `[start, end)` per viewer, duplicates and reordering as deltas over the window, one merged latency
//! histogram — and must produce identical figures for identical traffic. Pure data, unit-tested.

use hdrhistogram::Histogram;

use crate::stats::{cdf_points, new_histogram, LatencySummary, RunResult, ViewerStats};

/// Duplicates and reordered packets a viewer has counted so far (all kinds); take it when the window
/// opens and pass it to [`Tally::viewer`].
pub fn dup_reorder(st: &ViewerStats) -> (u64, u64) {
    (st.kinds.iter().map(|k| k.duplicates()).sum(), st.kinds.iter().map(|k| k.reordered()).sum())
}

/// One viewer's window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewerWindow {
    pub video_received: u64,
    pub audio_received: u64,
    pub loss_ratio: f64,
}

/// The sum over viewers.
#[derive(Debug, Clone)]
pub struct Tally {
    pub connected: usize,
    pub received: u64,
    pub expected: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub over_1pct: usize,
    pub latency_us: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self { connected: 0, received: 0, expected: 0, duplicates: 0, reordered: 0, over_1pct: 0, latency_us: new_histogram() }
    }
}

impl Tally {
    /// Accounts one viewer whose publisher sent `sent` window packets. Viewers that never `joined`
    /// (no video) get their own figures but are left out of the sums, as in the fan-out README.
    pub fn viewer(&mut self, joined: bool, st: &ViewerStats, sent: u64, before: (u64, u64)) -> ViewerWindow {
        let vr = st.kinds[0].window_received;
        let ar = st.kinds[1].window_received;
        let loss = RunResult::compute_loss(vr + ar, sent);
        if joined {
            let (d, r) = dup_reorder(st);
            self.connected += 1;
            self.received += vr + ar;
            self.expected += sent;
            self.duplicates += d.saturating_sub(before.0);
            self.reordered += r.saturating_sub(before.1);
            if loss > 0.01 {
                self.over_1pct += 1;
            }
            // Same bounds everywhere, so `add` cannot fail.
            let _ = self.latency_us.add(&st.latency_us);
        }
        ViewerWindow { video_received: vr, audio_received: ar, loss_ratio: loss }
    }

    /// Writes the sums into `r` (viewers_connected, latency, received/expected, loss, dup, reorder).
    pub fn fill(&self, r: &mut RunResult) {
        r.viewers_connected = self.connected;
        r.latency_us = LatencySummary::of(&self.latency_us);
        let cdf = cdf_points(&self.latency_us);
        if !cdf.is_empty() {
            r.extra.insert("latency_cdf_us".into(), serde_json::json!(cdf));
        }
        r.packets_received = self.received;
        r.packets_expected = self.expected;
        r.loss_ratio = RunResult::compute_loss(self.received, self.expected);
        r.duplicates = self.duplicates;
        r.reordered = self.reordered;
        r.viewers_over_1pct_loss = self.over_1pct;
    }
}

/// Marginal server memory per viewer: (RSS at the window's end − RSS before viewers joined) / viewers.
pub fn rss_per_viewer(before: Option<u64>, after: Option<u64>, viewers: usize) -> Option<f64> {
    let (b, a) = before.zip(after)?;
    (viewers > 0).then(|| (a as f64 - b as f64) / viewers as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Kind, Probe};
    use crate::stats::Window;

    fn viewer_with(counters: &[u64], lat_ns: u64) -> ViewerStats {
        let mut v = ViewerStats::default();
        v.open_window(Kind::Video, Window { stream_id: 1, start: 0, end: 10 });
        for (i, &c) in counters.iter().enumerate() {
            let p = Probe { kind: Kind::Video, keyframe: i == 0, frame_start: true, stream_id: 1, counter: c, sent_ns: 0 };
            v.record(&p, lat_ns, c as u16, 0);
        }
        v
    }

    #[test]
    fn sums_joined_viewers_only() {
        let mut t = Tally::default();
        let full = viewer_with(&(0..10).collect::<Vec<_>>(), 1_000_000);
        let lossy = viewer_with(&[0, 1, 2, 2, 5, 4, 6, 7, 8], 3_000_000); // 3 missing, 1 dup, 1 reordered
        let absent = ViewerStats::default();
        assert_eq!(t.viewer(true, &full, 10, (0, 0)).loss_ratio, 0.0);
        let w = t.viewer(true, &lossy, 10, (0, 0));
        assert_eq!(w.video_received, 8);
        assert!((w.loss_ratio - 0.2).abs() < 1e-9);
        assert_eq!(t.viewer(false, &absent, 10, (0, 0)).loss_ratio, 1.0);
        let mut r = RunResult::default();
        t.fill(&mut r);
        assert_eq!((r.viewers_connected, r.packets_received, r.packets_expected), (2, 18, 20));
        assert_eq!((r.duplicates, r.reordered, r.viewers_over_1pct_loss), (1, 1, 1));
        assert!((r.loss_ratio - 0.1).abs() < 1e-9);
        assert_eq!(r.latency_us.count, 10 + 8, "duplicates are not latency samples");
        assert_eq!(r.latency_us.max / 1000, 3);
        // Deltas over the window: counts from before it are subtracted.
        let mut t2 = Tally::default();
        t2.viewer(true, &lossy, 10, (1, 0));
        assert_eq!((t2.duplicates, t2.reordered), (0, 1));
    }

    #[test]
    fn rss_per_viewer_is_marginal() {
        assert_eq!(rss_per_viewer(Some(1000), Some(3000), 4), Some(500.0));
        assert_eq!(rss_per_viewer(None, Some(3000), 4), None);
        assert_eq!(rss_per_viewer(Some(1000), Some(3000), 0), None);
    }
}
