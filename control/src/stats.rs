//! Counters each core keeps for itself (plain integers: only its own thread touches them) and the
//! node-wide sum the HTTP API reports.

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
    }
}
