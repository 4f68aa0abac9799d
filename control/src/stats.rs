//! Counters each core keeps for itself (plain integers: only its own thread touches them) and the
//! node-wide sum the HTTP API reports.

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct CoreStats {
    pub sessions: u64,
    pub publishers: u64,
    pub viewers: u64,
    pub rooms: u64,
    pub sessions_created: u64,
    pub sessions_closed: u64,
    pub udp_datagrams_in: u64,
    pub udp_datagrams_out: u64,
    pub udp_send_errors: u64,
    /// Datagrams from unknown peers or not parseable (garbage, truncated STUN, stray DTLS).
    pub udp_unroutable: u64,
    /// Datagrams a session refused (bad SRTP, malformed RTP from a known peer).
    pub udp_rejected: u64,
    pub rtp_packets_in: u64,
    pub rtp_packets_forwarded: u64,
    /// Forwarded packets not written to a viewer (not connected yet, waiting for keyframe, codec mismatch).
    pub rtp_packets_skipped: u64,
    pub ring_full_drops: u64,
    pub keyframe_requests: u64,
    /// Events lost because the queue to the events connector was full (node-wide; reported by core 0 only).
    pub events_queue_dropped: u64,
    /// RTMP connections open on this core (gauge).
    pub rtmp_sessions: u64,
    /// Bytes received on RTMP connections.
    pub rtmp_bytes_in: u64,
    /// RTMP publishes refused (bad stream key/token, room busy) or ended by the server (unsupported stream).
    pub rtmp_rejected: u64,
    /// Server-added latency of forwarded packets: from the publisher datagram's arrival (after recv) to the
    /// viewer datagram's `sendmmsg` returning, in microseconds.
    #[serde(skip)]
    pub forward_latency_us: Option<Histogram<u64>>,
}

/// Percentiles of a latency histogram, for JSON.
#[derive(Debug, Clone, Serialize)]
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

/// A histogram for 1 µs .. 60 s with 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

impl CoreStats {
    pub fn add(&mut self, o: &CoreStats) {
        self.sessions += o.sessions;
        self.publishers += o.publishers;
        self.viewers += o.viewers;
        self.rooms += o.rooms;
        self.sessions_created += o.sessions_created;
        self.sessions_closed += o.sessions_closed;
        self.udp_datagrams_in += o.udp_datagrams_in;
        self.udp_datagrams_out += o.udp_datagrams_out;
        self.udp_send_errors += o.udp_send_errors;
        self.udp_unroutable += o.udp_unroutable;
        self.udp_rejected += o.udp_rejected;
        self.rtp_packets_in += o.rtp_packets_in;
        self.rtp_packets_forwarded += o.rtp_packets_forwarded;
        self.rtp_packets_skipped += o.rtp_packets_skipped;
        self.ring_full_drops += o.ring_full_drops;
        self.keyframe_requests += o.keyframe_requests;
        self.events_queue_dropped += o.events_queue_dropped;
        self.rtmp_sessions += o.rtmp_sessions;
        self.rtmp_bytes_in += o.rtmp_bytes_in;
        self.rtmp_rejected += o.rtmp_rejected;
        if let Some(h) = &o.forward_latency_us {
            let mine = self.forward_latency_us.get_or_insert_with(new_latency_histogram);
            let _ = mine.add(h);
        }
    }
}
