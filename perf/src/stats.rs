//! Receive-side accounting and the JSON result.
//!
//! Why it exists: loss, duplicates and reordering are judged from the probe counter (the SFU rewrites RTP
//! sequence numbers), latency goes into HDR histograms that merge across viewers, and the result of a
//! run is one serialisable struct so CI and the benchmark README can read the same numbers. Everything
//! here is pure data: it is unit-tested without sockets.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::probe::{Kind, Probe};

/// How far back (in counter values) duplicates are still recognised.
const DUP_WINDOW: u64 = 4096;

/// A latency histogram in microseconds, 1 µs .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// Loss/duplicate/reorder accounting for one stream of probe counters.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    first: u64,
    max: u64,
    started: bool,
    /// Bit i set = counter (max - i) seen, for i < DUP_WINDOW.
    seen: Box<[u64; (DUP_WINDOW / 64) as usize]>,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Older than the duplicate window: cannot be judged, not counted as unique.
    pub too_late: u64,
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self {
            first: 0,
            max: 0,
            started: false,
            seen: Box::new([0; (DUP_WINDOW / 64) as usize]),
            unique: 0,
            duplicates: 0,
            reordered: 0,
            too_late: 0,
        }
    }
}

/// What [`SeqTracker::record`] decided about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    New,
    Reordered,
    Duplicate,
    TooLate,
}

impl SeqTracker {
    fn bit(&self, back: u64) -> bool {
        self.seen[(back / 64) as usize] & (1 << (back % 64)) != 0
    }
    fn set(&mut self, back: u64) {
        self.seen[(back / 64) as usize] |= 1 << (back % 64);
    }
    /// Shifts the window so that bit 0 is the new max.
    fn advance(&mut self, by: u64) {
        if by >= DUP_WINDOW {
            self.seen.fill(0);
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        let n = self.seen.len();
        for i in (0..n).rev() {
            let lo = if i >= words { self.seen[i - words] } else { 0 };
            let lower = if bits > 0 && i > words { self.seen[i - words - 1] >> (64 - bits) } else { 0 };
            self.seen[i] = if bits > 0 { (lo << bits) | lower } else { lo };
        }
    }

    pub fn record(&mut self, counter: u64) -> Arrival {
        if !self.started {
            self.started = true;
            self.first = counter;
            self.max = counter;
            self.set(0);
            self.unique = 1;
            return Arrival::New;
        }
        if counter > self.max {
            self.advance(counter - self.max);
            self.max = counter;
            self.set(0);
            self.unique += 1;
            return Arrival::New;
        }
        let back = self.max - counter;
        if back >= DUP_WINDOW || counter < self.first {
            self.too_late += 1;
            return Arrival::TooLate;
        }
        if self.bit(back) {
            self.duplicates += 1;
            Arrival::Duplicate
        } else {
            self.set(back);
            self.unique += 1;
            self.reordered += 1;
            Arrival::Reordered
        }
    }

    pub fn started(&self) -> bool {
        self.started
    }
    /// Counter values from the first seen to the highest seen.
    pub fn expected(&self) -> u64 {
        if self.started {
            self.max - self.first + 1
        } else {
            0
        }
    }
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique)
    }
    pub fn max(&self) -> Option<u64> {
        self.started.then_some(self.max)
    }
}

/// A measurement window on one publisher stream: counters in `[start, end)` are expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub stream_id: u32,
    pub start: u64,
    pub end: u64,
}

/// RTP header continuity as the viewer saw it (the SFU's rewritten sequence numbers and timestamps).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RtpContinuity {
    #[serde(skip)]
    last: Option<(u16, u32)>,
    /// Largest forward sequence-number step between consecutive arrivals (1 = no gap).
    pub max_seq_jump: u16,
    /// Arrivals whose sequence number went backwards (late or repaired packets).
    pub seq_backwards: u64,
    /// Arrivals with a newer sequence number but an older RTP timestamp.
    pub ts_backwards: u64,
}

impl RtpContinuity {
    pub fn record(&mut self, seq: u16, ts: u32) {
        if let Some((ls, lt)) = self.last {
            let ds = seq.wrapping_sub(ls);
            if ds == 0 || ds >= 0x8000 {
                self.seq_backwards += 1;
                return;
            }
            self.max_seq_jump = self.max_seq_jump.max(ds);
            if (ts.wrapping_sub(lt) as i32) < 0 {
                self.ts_backwards += 1;
            }
        }
        self.last = Some((seq, ts));
    }
    pub fn last(&self) -> Option<(u16, u32)> {
        self.last
    }
}

/// A change of publisher stream seen by a viewer (e.g. after a re-publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StreamSwitch {
    pub kind: Kind,
    pub from_stream: u32,
    pub to_stream: u32,
    /// RTP (seq, timestamp) of the last packet of the old stream and the first of the new one.
    pub last_old: (u16, u32),
    pub first_new: (u16, u32),
}

impl StreamSwitch {
    /// Forward distance in sequence numbers across the switch (large = a jump the decoder would see as loss).
    pub fn seq_step(&self) -> u16 {
        self.first_new.0.wrapping_sub(self.last_old.0)
    }
    /// RTP timestamp step across the switch, signed.
    pub fn ts_step(&self) -> i32 {
        self.first_new.1.wrapping_sub(self.last_old.1) as i32
    }
}

/// Everything a viewer accounts for one media kind.
#[derive(Debug, Clone, Default)]
pub struct KindStats {
    pub stream_id: Option<u32>,
    pub tracker: SeqTracker,
    /// Totals of earlier streams (before a switch).
    pub prior_unique: u64,
    pub prior_lost: u64,
    pub prior_duplicates: u64,
    pub prior_reordered: u64,
    pub packets: u64,
    pub window: Option<Window>,
    pub window_received: u64,
    pub rtp: RtpContinuity,
}

impl KindStats {
    pub fn unique(&self) -> u64 {
        self.prior_unique + self.tracker.unique
    }
    pub fn lost(&self) -> u64 {
        self.prior_lost + self.tracker.lost()
    }
    pub fn duplicates(&self) -> u64 {
        self.prior_duplicates + self.tracker.duplicates
    }
    pub fn reordered(&self) -> u64 {
        self.prior_reordered + self.tracker.reordered
    }
}

/// The sender SSRC of a (S)RTCP datagram (RFC 5761: first byte 128..=191, packet type 192..=223; the
/// header stays clear in SRTCP), None for anything else.
pub fn rtcp_sender(datagram: &[u8]) -> Option<u32> {
    match datagram {
        [128..=191, 192..=223, _, _, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Per-viewer receive statistics. Lives behind a mutex shared by the driver thread and the controller.
#[derive(Debug, Clone)]
pub struct ViewerStats {
    pub kinds: [KindStats; 2],
    pub latency_us: Histogram<u64>,
    /// Probes seen (any kind) that did not parse.
    pub foreign_packets: u64,
    /// Whether a keyframe start was seen; video before it is not counted.
    pub got_keyframe: bool,
    pub switches: Vec<StreamSwitch>,
    /// Packets without a probe (real encoder output), by RTP sequence number and timestamp.
    pub raw: crate::raw_rtp::RawRtpStats,
    /// The forwarded header extensions seen.
    pub ext: ReceivedExt,
    /// The SSRCs RTP arrived from, and the sender SSRCs of the (S)RTCP packets received (read from their
    /// clear header, whether str0m uses them or not) with how many came from each.
    pub rtp_ssrcs: Vec<u32>,
    pub rtcp_senders: Vec<(u32, u64)>,
}

/// Header extension values a viewer received: how many packets carried each, and the last value.
#[derive(Debug, Default, Clone)]
pub struct ReceivedExt {
    pub audio_level_packets: u64,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation_packets: u64,
    pub video_orientation: Option<str0m::rtp::VideoOrientation>,
}

impl ReceivedExt {
    pub fn record(&mut self, v: &str0m::rtp::ExtensionValues) {
        if let Some(l) = v.audio_level {
            self.audio_level_packets += 1;
            self.audio_level = Some(l);
            self.voice_activity = v.voice_activity;
        }
        if let Some(o) = v.video_orientation {
            self.video_orientation_packets += 1;
            self.video_orientation = Some(o);
        }
    }
}

impl Default for ViewerStats {
    fn default() -> Self {
        Self {
            kinds: Default::default(),
            latency_us: new_histogram(),
            foreign_packets: 0,
            got_keyframe: false,
            switches: Vec::new(),
            raw: Default::default(),
            ext: Default::default(),
            rtp_ssrcs: Vec::new(),
            rtcp_senders: Vec::new(),
        }
    }
}

impl ViewerStats {
    /// Counts one (S)RTCP packet from `ssrc` (see [`rtcp_sender`]).
    pub fn record_rtcp(&mut self, ssrc: u32) {
        match self.rtcp_senders.iter_mut().find(|(s, _)| *s == ssrc) {
            Some((_, n)) => *n += 1,
            None => self.rtcp_senders.push((ssrc, 1)),
        }
    }

    /// Accounts one received packet. `now_ns` is the arrival time on the probe epoch.
    /// Returns true if this is the first counted video packet (the viewer has "joined").
    pub fn record(&mut self, p: &Probe, now_ns: u64, rtp_seq: u16, rtp_ts: u32) -> bool {
        let mut joined = false;
        if p.kind == Kind::Video && !self.got_keyframe {
            if !p.is_keyframe_start() {
                return false;
            }
            self.got_keyframe = true;
            joined = true;
        }
        let k = &mut self.kinds[p.kind.index()];
        k.packets += 1;
        match k.stream_id {
            Some(s) if s == p.stream_id => {}
            prev => {
                if let Some(from) = prev {
                    if let Some(last_old) = k.rtp.last() {
                        self.switches.push(StreamSwitch {
                            kind: p.kind,
                            from_stream: from,
                            to_stream: p.stream_id,
                            last_old,
                            first_new: (rtp_seq, rtp_ts),
                        });
                    }
                }
                let t = std::mem::take(&mut k.tracker);
                k.prior_unique += t.unique;
                k.prior_lost += t.lost();
                k.prior_duplicates += t.duplicates;
                k.prior_reordered += t.reordered;
                k.stream_id = Some(p.stream_id);
            }
        }
        k.rtp.record(rtp_seq, rtp_ts);
        let arrival = k.tracker.record(p.counter);
        if matches!(arrival, Arrival::New | Arrival::Reordered) {
            if let Some(w) = k.window {
                if w.stream_id == p.stream_id && p.counter >= w.start && p.counter < w.end {
                    k.window_received += 1;
                }
            }
        }
        if arrival != Arrival::Duplicate {
            let us = now_ns.saturating_sub(p.sent_ns) / 1000;
            let _ = self.latency_us.record(us.clamp(1, 60_000_000));
        }
        joined
    }

    /// Starts a measurement window for `kind`; resets the window count (and, for video, the latency histogram).
    pub fn open_window(&mut self, kind: Kind, w: Window) {
        let k = &mut self.kinds[kind.index()];
        k.window = Some(w);
        k.window_received = 0;
    }

    /// Sets the window end (counter of the first packet *not* in the window).
    pub fn close_window(&mut self, kind: Kind, end: u64) {
        if let Some(w) = &mut self.kinds[kind.index()].window {
            w.end = end;
        }
    }
}

/// Percentiles of a join-time sample (milliseconds).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct JoinSummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl JoinSummary {
    pub fn of(samples_ms: &[f64]) -> Option<Self> {
        if samples_ms.is_empty() {
            return None;
        }
        let mut v = samples_ms.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
        Some(Self { p50: q(0.5), p99: q(0.99), max: v[v.len() - 1] })
    }
}

/// Percentiles of a latency histogram (microseconds).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Quantiles at which [`cdf_points`] samples a latency histogram: dense in the tail.
pub const CDF_QUANTILES: &[f64] = &[
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
    0.9999, 1.0,
];

/// `[[quantile, value], ...]` of `h` at [`CDF_QUANTILES`] (empty for an empty histogram): the latency CDF
/// the plots draw, written as `latency_cdf_us` into results.
pub fn cdf_points(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES.iter().map(|&q| [q, if q >= 1.0 { h.max() } else { h.value_at_quantile(q) } as f64]).collect()
}

/// Merges histograms (e.g. one per viewer) into one.
pub fn merge<'a>(hs: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut out = new_histogram();
    for h in hs {
        // Same bounds everywhere, so `add` cannot fail.
        let _ = out.add(h);
    }
    out
}

/// The result of one run, as written by `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub target: String,
    pub room: String,
    pub viewers_requested: usize,
    pub viewers_connected: usize,
    pub threads: usize,
    pub bitrate_bps: u64,
    pub fps: u32,
    pub packets_per_frame: u32,
    pub video_payload_bytes: usize,
    /// WHEP POST → first video packet (a keyframe start).
    pub join_ms: Option<JoinSummary>,
    /// WHEP POST round trip alone.
    pub post_ms: Option<JoinSummary>,
    /// WHEP POST → ICE + DTLS connected.
    pub connect_ms: Option<JoinSummary>,
    pub latency_us: LatencySummary,
    /// Packets the publisher sent in the window (video + audio).
    pub packets_sent: u64,
    /// Unique packets of the window received, summed over viewers.
    pub packets_received: u64,
    /// `packets_sent` × connected viewers.
    pub packets_expected: u64,
    pub loss_ratio: f64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Viewers whose window loss is above 1 %.
    pub viewers_over_1pct_loss: usize,
    pub duration_s: f64,
    pub server_cpu_ns_per_packet: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// (RSS at the window's end − RSS before the viewers joined) / connected viewers.
    pub server_rss_bytes_per_viewer: Option<f64>,
    pub server_packets_forwarded: Option<u64>,
    pub server_ring_full_drops: Option<u64>,
    pub server_udp_send_errors: Option<u64>,
    pub harness_cpu_percent: Option<f64>,
    /// CPU used by other processes during the window (% of one core); if high, the numbers are noisy.
    pub other_cpu_percent: Option<f64>,
    /// Server threads' time runnable but not running (% of wall): the server was short of CPU.
    pub server_run_delay_percent: Option<f64>,
    /// Slowest GET /healthz at the window's edges (HTTP responsiveness under load).
    pub healthz_max_ms: f64,
    /// sfumato's own forwarding latency (UDP in → UDP out) from `/healthz` at the window's end, cumulative
    /// since the server started (joins included: a little pessimistic for the window alone).
    pub server_forward_latency_us: Option<crate::server_probe::ServerLatency>,
    /// Scenario-specific fields, written at the top level of the JSON.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RunResult {
    /// Receive loss over the window: `1 - received/expected`, 0 when nothing was expected.
    pub fn compute_loss(received: u64, expected: u64) -> f64 {
        if expected == 0 {
            return 0.0;
        }
        (1.0 - received as f64 / expected as f64).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtcp_sender_reads_the_clear_header() {
        assert_eq!(rtcp_sender(&[0x80, 200, 0, 6, 0xca, 0xfe, 0xba, 0xbe, 1, 2]), Some(0xcafe_babe));
        assert_eq!(rtcp_sender(&[0x81, 205, 0, 3, 0, 0, 0, 1]), Some(1));
        assert_eq!(rtcp_sender(&[0x80, 96, 0, 1, 0, 0, 0, 1, 9]), None, "RTP");
        assert_eq!(rtcp_sender(&[0x80, 200, 0, 6]), None, "short");
        assert_eq!(rtcp_sender(&[0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42]), None, "STUN");
    }

    fn probe(kind: Kind, stream_id: u32, counter: u64, key: bool) -> Probe {
        Probe { kind, keyframe: key, frame_start: true, stream_id, counter, sent_ns: 1_000_000 }
    }

    #[test]
    fn tracker_counts_loss_dups_reorder() {
        let mut t = SeqTracker::default();
        for c in [10, 11, 13, 12, 12, 14, 20] {
            t.record(c);
        }
        assert_eq!(t.expected(), 11);
        assert_eq!(t.unique, 6);
        assert_eq!(t.lost(), 5);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.reordered, 1);
        // Late fill of a gap: reordered, reduces loss.
        assert_eq!(t.record(15), Arrival::Reordered);
        assert_eq!(t.lost(), 4);
        assert_eq!(t.record(15), Arrival::Duplicate);
        // Before the first: can't be judged.
        assert_eq!(t.record(9), Arrival::TooLate);
    }

    #[test]
    fn tracker_window_shifts_across_words() {
        let mut t = SeqTracker::default();
        t.record(0);
        t.record(65);
        t.record(200);
        assert_eq!(t.record(65), Arrival::Duplicate);
        assert_eq!(t.record(0), Arrival::Duplicate);
        assert_eq!(t.record(64), Arrival::Reordered);
        t.record(199 + DUP_WINDOW);
        assert_eq!(t.record(200), Arrival::Duplicate, "oldest slot of the window");
        t.record(200 + DUP_WINDOW);
        assert_eq!(t.record(200), Arrival::TooLate, "just out of the window");
        assert_eq!(t.record(150), Arrival::TooLate);
        t.record(10 * DUP_WINDOW);
        assert_eq!(t.record(10 * DUP_WINDOW), Arrival::Duplicate);
        assert_eq!(t.record(10 * DUP_WINDOW - 1), Arrival::Reordered);
    }

    #[test]
    fn viewer_waits_for_keyframe_and_counts_window() {
        let mut v = ViewerStats::default();
        assert!(!v.record(&probe(Kind::Video, 1, 5, false), 2_000_000, 100, 9000));
        assert_eq!(v.kinds[0].packets, 0, "video before the first keyframe is not counted");
        assert!(v.record(&probe(Kind::Video, 1, 6, true), 2_000_000, 101, 9000));
        v.open_window(Kind::Video, Window { stream_id: 1, start: 7, end: u64::MAX });
        for c in [7, 8, 8] {
            v.record(&probe(Kind::Video, 1, c, false), 3_000_000, 100 + c as u16, 9000 + c as u32);
        }
        v.close_window(Kind::Video, 10);
        v.record(&probe(Kind::Video, 1, 10, false), 3_000_000, 111, 9020);
        v.record(&probe(Kind::Video, 1, 9, false), 3_000_000, 112, 9020);
        assert_eq!(v.kinds[0].window_received, 3, "7, 8 and late 9; not the dup, not 10");
        assert_eq!(v.kinds[0].duplicates(), 1);
        assert_eq!(v.kinds[0].reordered(), 1);
        assert_eq!(v.latency_us.max() / 1000, 2, "2 ms latency");
    }

    #[test]
    fn stream_switch_is_recorded() {
        let mut v = ViewerStats::default();
        v.record(&probe(Kind::Video, 1, 0, true), 0, 500, 1000);
        v.record(&probe(Kind::Video, 1, 1, false), 0, 501, 4000);
        v.record(&probe(Kind::Video, 2, 0, true), 0, 502, 7000);
        v.record(&probe(Kind::Video, 2, 2, false), 0, 503, 10000);
        assert_eq!(v.switches.len(), 1);
        let s = v.switches[0];
        assert_eq!((s.from_stream, s.to_stream, s.seq_step(), s.ts_step()), (1, 2, 1, 3000));
        assert_eq!(v.kinds[0].unique(), 4);
        assert_eq!(v.kinds[0].lost(), 1);
        assert_eq!(v.kinds[0].rtp.max_seq_jump, 1);
    }

    #[test]
    fn continuity_and_summaries() {
        let mut c = RtpContinuity::default();
        c.record(65534, 10);
        c.record(1, 20); // wraps, step 3
        c.record(0, 5); // late
        c.record(2, 5); // newer seq, older ts
        assert_eq!((c.max_seq_jump, c.seq_backwards, c.ts_backwards), (3, 1, 1));

        let mut a = new_histogram();
        let mut b = new_histogram();
        a.record(100).unwrap();
        b.record(300).unwrap();
        let m = merge([&a, &b]);
        assert_eq!(m.len(), 2);
        assert_eq!(LatencySummary::of(&m).max, 300);
        assert_eq!(LatencySummary::of(&new_histogram()), LatencySummary::default());
        let j = JoinSummary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((j.p50, j.max), (3.0, 5.0));
        assert!(JoinSummary::of(&[]).is_none());
        let cdf = cdf_points(&m);
        assert_eq!(cdf.len(), CDF_QUANTILES.len());
        assert_eq!((cdf[0][1], cdf[cdf.len() - 1][1]), (100.0, 300.0));
        assert!(cdf.windows(2).all(|w| w[0][1] <= w[1][1]), "monotonic");
        assert!(cdf_points(&new_histogram()).is_empty());
        assert!((RunResult::compute_loss(99, 100) - 0.01).abs() < 1e-9);
        assert_eq!(RunResult::compute_loss(0, 0), 0.0);
    }
}
