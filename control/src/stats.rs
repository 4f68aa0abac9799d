//! Counters each core keeps for itself (plain integers: only its own thread touches them) and the
//! node-wide sum the HTTP API reports.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Bytes of the media sockets' datagrams received / sent (UDP payload: STUN, DTLS, SRTP, SRTCP).
    pub udp_bytes_in: u64,
    pub udp_bytes_out: u64,
    pub udp_send_errors: u64,
    /// Datagrams from unknown peers or not parseable (garbage, truncated STUN, stray DTLS).
    pub udp_unroutable: u64,
    /// Datagrams a session refused (bad SRTP, malformed RTP from a known peer).
    pub udp_rejected: u64,
    /// Of `udp_datagrams_in`, those taken from the RTCP lanes (`net/src/rtcp_lane.rs`): RTCP the kernel set
    /// aside for the core to read when it was awake anyway.
    pub udp_rtcp_lane_in: u64,
    pub rtp_packets_in: u64,
    pub rtp_packets_forwarded: u64,
    /// RTP payload bytes written to viewers (before SRTP; one count per viewer written to).
    pub rtp_bytes_forwarded: u64,
    /// Forwarded packets not written to a viewer (not connected yet, waiting for keyframe, codec mismatch).
    pub rtp_packets_skipped: u64,
    pub ring_full_drops: u64,
    pub keyframe_requests: u64,
    /// PLI/FIR received from viewers.
    pub keyframe_requests_received: u64,
    /// REMB messages sent to WebRTC publishers (the lowest bandwidth estimate of the room's viewers).
    pub bitrate_hints_sent: u64,
    /// NACKs received from viewers (answered from the retransmission buffer).
    pub nacks_received: u64,
    /// Packets sent again to viewers for their NACKs by the direct send path (RTX or the packet itself).
    pub rtp_retransmitted: u64,
    /// Retransmissions viewers' NACKs asked for beyond their budget (300 a second each), not sent.
    pub rtp_retransmissions_refused: u64,
    /// NACKs sent to publishers for lost packets.
    pub nacks_sent: u64,
    /// ICE restarts done through PATCH.
    pub ice_restarts: u64,
    /// Events lost because the queue to the events connector was full (node-wide; reported by core 0 only).
    pub events_queue_dropped: u64,
    /// RTMP connections open on this core (gauge).
    pub rtmp_sessions: u64,
    /// Bytes received on RTMP connections.
    pub rtmp_bytes_in: u64,
    /// RTMP publishes refused (bad stream key/token, room busy) or ended by the server (unsupported stream).
    pub rtmp_rejected: u64,
    /// RTMP publishers taken over by a new connection on the same key (`--rtmp-replace`).
    pub rtmp_replaced: u64,
    /// Cached GOPs replayed to viewers joining an RTMP room, and the packets written by those replays.
    pub rtmp_gop_replays: u64,
    pub rtmp_gop_replay_packets: u64,
    /// GOPs that outgrew the cache (not cached until the next keyframe).
    pub rtmp_gop_overflows: u64,
    /// Server-added latency of forwarded packets: from the publisher datagram's arrival (after recv) to the
    /// viewer datagram's `sendmmsg` returning, in microseconds. WebRTC and cascaded publishers, and GOP
    /// replays (from the replay); RTMP packets have their own histogram below.
    #[serde(skip)]
    pub forward_latency_us: Option<Histogram<u64>>,
    /// The same for packets of an RTMP publisher: from the read on the RTMP connection's core that
    /// completed the FLV message (so including H.264 packetization / AAC → Opus, and the hop to the room's
    /// home core) to the viewer datagram's `sendmmsg` returning, in microseconds.
    #[serde(skip)]
    pub rtmp_forward_latency_us: Option<Histogram<u64>>,
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
        self.udp_bytes_in += o.udp_bytes_in;
        self.udp_bytes_out += o.udp_bytes_out;
        self.udp_send_errors += o.udp_send_errors;
        self.udp_unroutable += o.udp_unroutable;
        self.udp_rejected += o.udp_rejected;
        self.udp_rtcp_lane_in += o.udp_rtcp_lane_in;
        self.rtp_packets_in += o.rtp_packets_in;
        self.rtp_packets_forwarded += o.rtp_packets_forwarded;
        self.rtp_bytes_forwarded += o.rtp_bytes_forwarded;
        self.rtp_packets_skipped += o.rtp_packets_skipped;
        self.ring_full_drops += o.ring_full_drops;
        self.keyframe_requests += o.keyframe_requests;
        self.keyframe_requests_received += o.keyframe_requests_received;
        self.bitrate_hints_sent += o.bitrate_hints_sent;
        self.nacks_received += o.nacks_received;
        self.rtp_retransmitted += o.rtp_retransmitted;
        self.rtp_retransmissions_refused += o.rtp_retransmissions_refused;
        self.nacks_sent += o.nacks_sent;
        self.ice_restarts += o.ice_restarts;
        self.events_queue_dropped += o.events_queue_dropped;
        self.rtmp_sessions += o.rtmp_sessions;
        self.rtmp_bytes_in += o.rtmp_bytes_in;
        self.rtmp_rejected += o.rtmp_rejected;
        self.rtmp_replaced += o.rtmp_replaced;
        self.rtmp_gop_replays += o.rtmp_gop_replays;
        self.rtmp_gop_replay_packets += o.rtmp_gop_replay_packets;
        self.rtmp_gop_overflows += o.rtmp_gop_overflows;
        for (mine, theirs) in [
            (&mut self.forward_latency_us, &o.forward_latency_us),
            (&mut self.rtmp_forward_latency_us, &o.rtmp_forward_latency_us),
        ] {
            if let Some(h) = theirs {
                let _ = mine.get_or_insert_with(new_latency_histogram).add(h);
            }
        }
    }
}

// ------------------------------------------------------------------------- /metrics ---

/// Per-core counters that are gauges (current values); every other `CoreStats` field is a counter.
const GAUGES: &[&str] = &["sessions", "publishers", "viewers", "rooms", "rtmp_sessions"];

/// HELP text of the per-core metrics; a field missing here gets a generic one.
const HELP: &[(&str, &str)] = &[
    ("sessions", "WebRTC sessions open on the core"),
    ("publishers", "WebRTC publishers open on the core"),
    ("viewers", "WebRTC viewers open on the core"),
    ("rooms", "Rooms whose home is the core"),
    ("sessions_created", "WebRTC sessions created"),
    ("sessions_closed", "WebRTC sessions closed"),
    ("udp_datagrams_in", "UDP datagrams received"),
    ("udp_datagrams_out", "UDP datagrams sent"),
    ("udp_bytes_in", "Bytes of UDP datagrams received on the media sockets"),
    ("udp_bytes_out", "Bytes of UDP datagrams sent from the media sockets"),
    ("udp_send_errors", "UDP datagrams that could not be sent"),
    ("udp_unroutable", "UDP datagrams dropped: unknown peer or unparseable"),
    ("udp_rejected", "UDP datagrams a session refused (bad SRTP, malformed RTP)"),
    ("udp_rtcp_lane_in", "UDP datagrams (RTCP) read from the RTCP lanes when the core was awake anyway (also in udp_datagrams_in)"),
    ("rtp_packets_in", "RTP packets received from publishers"),
    ("rtp_packets_forwarded", "RTP packets written to viewers"),
    ("rtp_bytes_forwarded", "RTP payload bytes written to viewers (before SRTP)"),
    ("rtp_packets_skipped", "Forwarded RTP packets not written to a viewer (not connected, waiting for keyframe, codec mismatch)"),
    ("ring_full_drops", "Packets dropped because an inter-core media ring was full"),
    ("keyframe_requests", "Keyframe requests (PLI) sent to publishers"),
    ("keyframe_requests_received", "Keyframe requests (PLI/FIR) received from viewers"),
    ("bitrate_hints_sent", "REMB bitrate limits sent to publishers (lowest viewer bandwidth estimate of the room)"),
    ("nacks_received", "NACKs received from viewers (answered from the retransmission buffer)"),
    ("rtp_retransmitted", "Packets sent again to viewers for their NACKs (direct send path: RTX, or the packet itself)"),
    ("rtp_retransmissions_refused", "Retransmissions viewers' NACKs asked for beyond their budget (300/s, bursts of 150 per viewer), not sent"),
    ("nacks_sent", "NACKs sent to publishers for lost packets"),
    ("ice_restarts", "ICE restarts done through a WHIP/WHEP PATCH"),
    ("events_queue_dropped", "Events lost because the queue to the events connector was full"),
    ("rtmp_sessions", "RTMP connections open on the core"),
    ("rtmp_bytes_in", "Bytes received on RTMP connections"),
    ("rtmp_rejected", "RTMP publishes refused or ended by the server"),
    ("rtmp_replaced", "RTMP publishers taken over by a new publisher on the same key (--rtmp-replace)"),
    ("rtmp_gop_replays", "Cached GOPs replayed to viewers joining an RTMP room"),
    ("rtmp_gop_replay_packets", "RTP packets written to viewers by GOP replays"),
    ("rtmp_gop_overflows", "RTMP GOPs too large for the cache (not cached until the next keyframe)"),
];

/// Prometheus text for the per-core stats: `sfumato_<field>{core="N"}`, counters suffixed `_total`.
pub fn render_core_stats(per_core: &[CoreStats], out: &mut String) {
    let serialized: Vec<serde_json::Value> =
        per_core.iter().map(|s| serde_json::to_value(s).unwrap_or_default()).collect();
    let Some(serde_json::Value::Object(first)) = serialized.first() else { return };
    for field in first.keys() {
        let gauge = GAUGES.contains(&field.as_str());
        let name = if gauge { format!("sfumato_{field}") } else { format!("sfumato_{field}_total") };
        let help = HELP.iter().find(|(f, _)| f == field).map_or("Per-core counter (see /healthz)", |(_, h)| h);
        header(out, &name, help, if gauge { "gauge" } else { "counter" });
        for (core, v) in serialized.iter().enumerate() {
            if let Some(n) = v.get(field).and_then(|x| x.as_u64()) {
                out.push_str(&format!("{name}{{core=\"{core}\"}} {n}\n"));
            }
        }
    }
}

/// Upper bounds (µs) of the latency histograms' buckets in /metrics (`le`, rendered in seconds).
const LATENCY_BUCKETS_US: [u64; 15] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000];

/// The per-core latency histograms, as Prometheus histograms: (metric name, HELP, the field).
type LatencyField = fn(&CoreStats) -> Option<&Histogram<u64>>;
const LATENCIES: &[(&str, &str, LatencyField)] = &[
    (
        "sfumato_forward_latency_seconds",
        "Server-added latency of forwarded WebRTC packets: publisher datagram received to viewer datagram sent",
        |s| s.forward_latency_us.as_ref(),
    ),
    (
        "sfumato_rtmp_forward_latency_seconds",
        "Latency of RTMP publishers' packets: FLV message read to viewer datagram sent (incl. packetization, AAC to Opus)",
        |s| s.rtmp_forward_latency_us.as_ref(),
    ),
];

/// Prometheus histograms of the per-core latency histograms (`sfumato_*_latency_seconds{core="N",le=…}`,
/// `_sum`, `_count`), cumulative since start. Buckets are counted from the hdrhistogram at its resolution
/// (3 significant digits); `_sum` adds each recorded value at the top of its hdrhistogram bucket.
pub fn render_latency(per_core: &[CoreStats], out: &mut String) {
    for (name, help, field) in LATENCIES {
        header(out, name, help, "histogram");
        for (core, s) in per_core.iter().enumerate() {
            let mut buckets = [0u64; LATENCY_BUCKETS_US.len()];
            let (mut count, mut sum_us) = (0u64, 0u128);
            if let Some(h) = field(s) {
                for v in h.iter_recorded() {
                    let (value, n) = (v.value_iterated_to(), v.count_at_value());
                    count += n;
                    sum_us += value as u128 * n as u128;
                    if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&le| value <= le) {
                        buckets[i] += n;
                    }
                }
            }
            let mut cumulative = 0;
            for (le, n) in LATENCY_BUCKETS_US.iter().zip(buckets) {
                cumulative += n;
                let le = *le as f64 / 1e6;
                out.push_str(&format!("{name}_bucket{{core=\"{core}\",le=\"{le}\"}} {cumulative}\n"));
            }
            out.push_str(&format!("{name}_bucket{{core=\"{core}\",le=\"+Inf\"}} {count}\n"));
            out.push_str(&format!("{name}_sum{{core=\"{core}\"}} {}\n", sum_us as f64 / 1e6));
            out.push_str(&format!("{name}_count{{core=\"{core}\"}} {count}\n"));
        }
    }
}

pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// Route groups of HTTP requests, by the first path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Whip,
    Whep,
    Token,
    Healthz,
    Metrics,
    OpenApi,
    Demo,
    Other,
}

impl Route {
    const ALL: [Route; 8] =
        [Route::Whip, Route::Whep, Route::Token, Route::Healthz, Route::Metrics, Route::OpenApi, Route::Demo, Route::Other];

    pub fn of(first_segment: &str) -> Self {
        match first_segment {
            "whip" => Route::Whip,
            "whep" => Route::Whep,
            "token" => Route::Token,
            "healthz" => Route::Healthz,
            "metrics" => Route::Metrics,
            "openapi.json" => Route::OpenApi,
            "" => Route::Demo,
            _ => Route::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Whip => "whip",
            Route::Whep => "whep",
            Route::Token => "token",
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
            Route::OpenApi => "openapi",
            Route::Demo => "demo",
            Route::Other => "other",
        }
    }
}

/// Why a request's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Expired,
    WrongKind,
    WrongRoom,
    /// DELETE/PATCH with a token other than the one that created the session.
    NotOwner,
    /// `POST /token/...` without the cluster secret.
    BadSecret,
}

impl AuthFailure {
    const ALL: [AuthFailure; 7] = [
        AuthFailure::Missing,
        AuthFailure::Invalid,
        AuthFailure::Expired,
        AuthFailure::WrongKind,
        AuthFailure::WrongRoom,
        AuthFailure::NotOwner,
        AuthFailure::BadSecret,
    ];

    pub fn of(e: &crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Missing => AuthFailure::Missing,
            AuthError::Invalid => AuthFailure::Invalid,
            AuthError::Expired => AuthFailure::Expired,
            AuthError::WrongKind(_) => AuthFailure::WrongKind,
            AuthError::WrongRoom => AuthFailure::WrongRoom,
        }
    }

    fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::WrongKind => "wrong_kind",
            AuthFailure::WrongRoom => "wrong_room",
            AuthFailure::NotOwner => "not_owner",
            AuthFailure::BadSecret => "bad_secret",
        }
    }
}

/// Status codes counted individually; anything else lands in the last slot, `status="other"`.
const STATUSES: [u16; 13] = [200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 415, 500, 503];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// One core's HTTP counters, on cache lines of their own. Only that core's HTTP tasks write them
/// (uncontended relaxed atomics); `/metrics` on any core reads and sums them.
#[repr(align(128))]
struct CoreHttpCounters {
    requests: [[AtomicU64; STATUS_SLOTS]; Route::ALL.len()],
    auth_failures: [AtomicU64; AuthFailure::ALL.len()],
}

impl CoreHttpCounters {
    fn new() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            auth_failures: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// HTTP request and authentication-failure counters of every core.
pub struct HttpMetrics {
    cores: Box<[CoreHttpCounters]>,
}

impl HttpMetrics {
    pub fn new(cores: usize) -> Self {
        Self { cores: (0..cores.max(1)).map(|_| CoreHttpCounters::new()).collect() }
    }

    fn core(&self, core: usize) -> &CoreHttpCounters {
        &self.cores[core.min(self.cores.len() - 1)]
    }

    pub fn request(&self, core: usize, route: Route, status: u16) {
        let slot = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len());
        self.core(core).requests[route as usize][slot].fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failure(&self, core: usize, reason: AuthFailure) {
        self.core(core).auth_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, get: impl Fn(&CoreHttpCounters) -> &AtomicU64) -> u64 {
        self.cores.iter().map(|c| get(c).load(Ordering::Relaxed)).sum()
    }

    /// `sfumato_http_requests_total{route,status}` and `sfumato_auth_failures_total{reason}`, summed over
    /// cores; label sets never seen are left out (every auth reason is always listed).
    pub fn render(&self, out: &mut String) {
        header(out, "sfumato_http_requests_total", "HTTP requests answered, by route group and status code", "counter");
        for route in Route::ALL {
            for slot in 0..STATUS_SLOTS {
                let n = self.sum(|c| &c.requests[route as usize][slot]);
                if n > 0 {
                    let status = STATUSES.get(slot).map_or_else(|| "other".to_string(), u16::to_string);
                    out.push_str(&format!("sfumato_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}\n", route.label()));
                }
            }
        }
        header(out, "sfumato_auth_failures_total", "Requests refused for their credentials, by reason", "counter");
        for reason in AuthFailure::ALL {
            let n = self.sum(|c| &c.auth_failures[reason as usize]);
            out.push_str(&format!("sfumato_auth_failures_total{{reason=\"{}\"}} {n}\n", reason.label()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_counters_sum_over_cores() {
        let m = HttpMetrics::new(2);
        m.request(0, Route::Whip, 201);
        m.request(1, Route::Whip, 201);
        m.request(1, Route::Other, 404);
        m.request(0, Route::Token, 418);
        m.auth_failure(1, AuthFailure::Expired);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("# TYPE sfumato_http_requests_total counter\n"), "{out}");
        assert!(out.contains("sfumato_http_requests_total{route=\"whip\",status=\"201\"} 2\n"), "{out}");
        assert!(out.contains("sfumato_http_requests_total{route=\"other\",status=\"404\"} 1\n"), "{out}");
        assert!(out.contains("sfumato_http_requests_total{route=\"token\",status=\"other\"} 1\n"), "{out}");
        assert!(out.contains("sfumato_auth_failures_total{reason=\"expired\"} 1\n"), "{out}");
        assert!(out.contains("sfumato_auth_failures_total{reason=\"missing\"} 0\n"), "{out}");
        assert!(!out.contains("status=\"200\""), "{out}");
    }

    #[test]
    fn core_stats_follow_prometheus_naming() {
        let stats = CoreStats { sessions: 3, udp_datagrams_in: 7, ..Default::default() };
        let mut out = String::new();
        render_core_stats(&[stats, CoreStats::default()], &mut out);
        assert!(out.contains("# TYPE sfumato_sessions gauge\nsfumato_sessions{core=\"0\"} 3\nsfumato_sessions{core=\"1\"} 0\n"), "{out}");
        assert!(out.contains("# TYPE sfumato_udp_datagrams_in_total counter\n"), "{out}");
        assert!(out.contains("sfumato_udp_datagrams_in_total{core=\"0\"} 7\n"), "{out}");
        // every metric has HELP and TYPE, every counter ends in _total
        for line in out.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = line.split(' ').collect();
            assert!(out.contains(&format!("# HELP {} ", parts[2])), "{line}");
            assert_eq!(parts[3] == "counter", parts[2].ends_with("_total"), "{line}");
        }
        for field in serde_json::to_value(CoreStats::default()).unwrap().as_object().unwrap().keys() {
            assert!(HELP.iter().any(|(f, _)| f == field), "no HELP text for CoreStats::{field}");
        }
    }

    #[test]
    fn latency_histograms_are_cumulative_prometheus_histograms() {
        let mut h = new_latency_histogram();
        for us in [40, 90, 90, 3_000, 7_000_000] {
            h.record(us).unwrap();
        }
        let mut rtmp = new_latency_histogram();
        rtmp.record(20_000).unwrap();
        let stats = CoreStats { forward_latency_us: Some(h), rtmp_forward_latency_us: Some(rtmp), ..Default::default() };
        let mut out = String::new();
        render_latency(&[stats, CoreStats::default()], &mut out);
        let name = "sfumato_forward_latency_seconds";
        assert!(out.contains(&format!("# HELP {name} ")), "{out}");
        assert!(out.contains(&format!("# TYPE {name} histogram\n")), "{out}");
        for (le, n) in [("0.00005", 1), ("0.0001", 3), ("0.001", 3), ("0.005", 4), ("5", 4), ("+Inf", 5)] {
            assert!(out.contains(&format!("{name}_bucket{{core=\"0\",le=\"{le}\"}} {n}\n")), "le={le}: {out}");
        }
        assert!(out.contains(&format!("{name}_count{{core=\"0\"}} 5\n")), "{out}");
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_sum{{core=\"0\"}} ")))
            .and_then(|v| v.parse().ok())
            .expect("a _sum line");
        assert!((sum - 7.003220).abs() < 0.01, "{sum}");
        // a core that recorded nothing has empty buckets, not missing lines
        assert!(out.contains(&format!("{name}_bucket{{core=\"1\",le=\"+Inf\"}} 0\n")), "{out}");
        let rtmp = "sfumato_rtmp_forward_latency_seconds";
        assert!(out.contains(&format!("{rtmp}_bucket{{core=\"0\",le=\"0.01\"}} 0\n")), "{out}");
        assert!(out.contains(&format!("{rtmp}_bucket{{core=\"0\",le=\"0.025\"}} 1\n")), "{out}");
        // node-wide sums merge the histograms
        let mut total = CoreStats::default();
        let mut one = CoreStats::default();
        one.rtmp_forward_latency_us = Some(new_latency_histogram());
        if let Some(h) = one.rtmp_forward_latency_us.as_mut() {
            h.record(5).unwrap();
        }
        total.add(&one);
        total.add(&one);
        assert_eq!(total.rtmp_forward_latency_us.map(|h| h.len()), Some(2));
    }
}
