//! The `cascade` scenario: one publisher on node A of a `sfumato media` cluster, viewers on A itself
//! (0 hops) and on other nodes B (and C) that cascade the room from A over their QUIC link (1 hop), all in
//! one measured window.
//!
//! Why it exists: the cluster issue asks for "cascading added latency per hop (p50/p99) and link
//! throughput". Every peer runs in this process on the same driver threads, so the probe latency of A's
//! viewers and of B's viewers is measured with one clock over the same packets: the difference is what
//! the hop A → QUIC → B adds. The link's throughput comes from A's `/healthz` `cluster` counters
//! (`cascade_packets_out`, per-node `exports[].packets`), and each node's CPU from `/proc` (one pid each).
//!
//! A node's hop count is read from the cluster itself: each node's `/healthz` `cluster.subscriptions`
//! names the node it pulls the room from, so hops(A) = 0 and hops(N) = 1 + hops(upstream of N). With
//! nodes subscribing directly to the hosting node (full mesh) every other node is 1 hop and C is a second
//! subscriber (one copy per subscribing node); where a node pulls through its zone's relay, its viewers
//! form a 2-hop group and the result has a second per-hop difference.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::client::PublisherConfig;
use crate::harness::{Harness, HarnessError, MeasureWindow, Session};
use crate::http_client::HttpClient;
use crate::measure::{dup_reorder, Tally};
use crate::probe::Kind;
use crate::server_probe::{machine_busy_ns, sample_proc, self_cpu_ns, ProcSample, ServerCounters};
use crate::stats::{cdf_points, JoinSummary, LatencySummary, RunResult};

/// Bytes of the cascade datagram header before the payload (`control/src/cascade_wire.rs`).
pub const CASCADE_HEADER_BYTES: usize = 36;

#[derive(Debug, Clone)]
pub struct CascadeConfig {
    /// HTTP base URLs: A (the publisher's node) first, then the subscribing nodes.
    pub targets: Vec<String>,
    /// One pid per target (or empty): each node's CPU and RSS from /proc.
    pub server_pids: Vec<u32>,
    pub room: String,
    /// Viewers on each subscribing node (B, C).
    pub viewers: usize,
    /// Viewers on A (the 0-hop reference group).
    pub viewers_a: usize,
    pub publisher: PublisherConfig,
    pub duration: Duration,
    pub warmup: Duration,
    pub connect_timeout: Duration,
    pub threads: usize,
    pub progress: bool,
}

/// One node of the run.
struct Node {
    target: String,
    http: HttpClient,
    pid: Option<u32>,
    id: String,
}

/// A node's figures over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeResult {
    pub node_id: String,
    pub target: String,
    /// Hops from the publisher: 0 for A, 1 for a node cascading from A.
    pub hops: u32,
    /// Viewers POSTed to this node's /whep, and those it kept (not proxied elsewhere by its gateway).
    pub viewers_requested: usize,
    pub viewers_owned: usize,
    pub viewers_connected: usize,
    pub latency_us: LatencySummary,
    pub loss_ratio: f64,
    pub cpu_percent: Option<f64>,
    /// CPU / `stats.rtp_packets_forwarded` delta (packets written to this node's viewers).
    pub cpu_ns_per_packet: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub run_delay_percent: Option<f64>,
    pub packets_forwarded: Option<u64>,
    pub ring_full_drops: Option<u64>,
    pub cascade_packets_out: Option<u64>,
    pub cascade_packets_in: Option<u64>,
    pub cascade_dropped: Option<u64>,
    /// The node's own `/healthz` `forward_latency_us` at the window's end (since the node started).
    pub forward_latency_us: Value,
}

/// Viewers grouped by hop count.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupResult {
    pub hops: u32,
    pub nodes: Vec<String>,
    pub viewers_connected: usize,
    pub latency_us: LatencySummary,
    pub loss_ratio: f64,
    pub join_ms: Option<JoinSummary>,
}

/// What one hop adds: hop-1 percentile − hop-0 percentile, µs (negative = noise).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct AddedLatency {
    /// The groups compared: `hops` − (`hops` − 1).
    pub hops: u32,
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
}

pub fn added_latency(hop0: &LatencySummary, hop1: &LatencySummary) -> Option<AddedLatency> {
    if hop0.count == 0 || hop1.count == 0 {
        return None;
    }
    let d = |a: u64, b: u64| b as i64 - a as i64;
    Some(AddedLatency { hops: 1, p50: d(hop0.p50, hop1.p50), p90: d(hop0.p90, hop1.p90), p99: d(hop0.p99, hop1.p99) })
}

/// Cascade packets sent to one subscribing node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkNode {
    pub node: String,
    pub packets: u64,
    pub packets_per_s: f64,
}

/// The links' throughput over the window, from A's (and the subscribers') `/healthz` `cluster` counters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkResult {
    /// A's `cascade_packets_out` delta: datagrams sent, one per packet per subscribing node.
    pub packets_out: u64,
    pub packets_per_s: f64,
    /// `packets_out` / packets the publisher sent in the window: ≈ the number of subscribing nodes.
    pub copies_per_packet: Option<f64>,
    /// Per subscribing node, from A's `exports[].packets` (a snapshot republished every 500 ms).
    pub per_node: Vec<LinkNode>,
    /// Σ subscribers' `cascade_packets_in` delta.
    pub packets_in: u64,
    /// A's and the subscribers' `cascade_dropped` delta.
    pub dropped: u64,
    /// Estimated bytes per datagram: 36-byte cascade header + the publisher's mean payload. Lower
    /// bound: without the postcard payload params, QUIC, UDP and IP headers (no byte counter exists).
    pub est_bytes_per_packet: f64,
    pub est_bytes_per_s: f64,
    pub est_kbit_per_s: f64,
}

fn counter(v: &Value, name: &str) -> u64 {
    v["cluster"][name].as_u64().unwrap_or(0)
}

fn export_packets(v: &Value, room: &str) -> BTreeMap<String, u64> {
    v["cluster"]["exports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["room"] == room)
                .filter_map(|e| Some((e["node"].as_str()?.to_string(), e["packets"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Link figures from A's `/healthz` before/after, the subscribers' before/after pairs, the window's length,
/// and what the publisher sent in it (packets, payload bytes).
pub fn link_figures(a0: &Value, a1: &Value, remotes: &[(&Value, &Value)], room: &str, secs: f64, sent: u64, payload_bytes: u64) -> LinkResult {
    let d = |x: &Value, y: &Value, n: &str| counter(y, n).saturating_sub(counter(x, n));
    let packets_out = d(a0, a1, "cascade_packets_out");
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let e0 = export_packets(a0, room);
    let per_node = export_packets(a1, room)
        .into_iter()
        .map(|(node, p)| {
            let packets = p.saturating_sub(e0.get(&node).copied().unwrap_or(0));
            LinkNode { node, packets, packets_per_s: per_s(packets) }
        })
        .collect();
    let est_bytes_per_packet = if sent > 0 { CASCADE_HEADER_BYTES as f64 + payload_bytes as f64 / sent as f64 } else { 0.0 };
    let est_bytes_per_s = per_s(packets_out) * est_bytes_per_packet;
    LinkResult {
        packets_out,
        packets_per_s: per_s(packets_out),
        copies_per_packet: (sent > 0).then(|| packets_out as f64 / sent as f64),
        per_node,
        packets_in: remotes.iter().map(|(x, y)| d(x, y, "cascade_packets_in")).sum(),
        dropped: d(a0, a1, "cascade_dropped") + remotes.iter().map(|(x, y)| d(x, y, "cascade_dropped")).sum::<u64>(),
        est_bytes_per_packet,
        est_bytes_per_s,
        est_kbit_per_s: est_bytes_per_s * 8.0 / 1000.0,
    }
}

/// The node that owns a WHEP session: a gateway that proxied it returns `/whep/conn/{node}/{id}`; a
/// session it kept is `/whep/conn/{id}`.
pub fn owner_of(location: &str, gateway: &str) -> String {
    let path = location.split("://").nth(1).map(|r| r.find('/').map(|i| &r[i..]).unwrap_or("")).unwrap_or(location);
    let rest = path.split_once("/conn/").map(|(_, r)| r).unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if parts.len() >= 2 {
        parts[0].to_string()
    } else {
        gateway.to_string()
    }
}

/// One sample of every node at one instant: /proc first (all nodes), then each `/healthz`.
struct Sample {
    at: Instant,
    procs: Vec<Option<ProcSample>>,
    healthz: Vec<Value>,
    self_cpu_ns: Option<u64>,
    machine_busy_ns: Option<u64>,
    healthz_ms: f64,
}

impl Sample {
    fn take(nodes: &[Node]) -> Self {
        let at = Instant::now();
        let procs = nodes.iter().map(|n| n.pid.and_then(sample_proc)).collect();
        let self_cpu_ns = self_cpu_ns();
        let machine_busy_ns = machine_busy_ns();
        let healthz = nodes.iter().map(|n| n.http.get_json("/healthz").unwrap_or(Value::Null)).collect();
        Self { at, procs, healthz, self_cpu_ns, machine_busy_ns, healthz_ms: at.elapsed().as_secs_f64() * 1e3 }
    }
}

/// Each node's hop count from `a` for `room`: 0 for `a`, else 1 + that of the node its `/healthz`
/// `cluster.subscriptions` says it pulls the room from (1 when it names none: directly from `a`, as far as
/// we can tell). A loop or a chain longer than the node count is cut at that length.
pub fn hops_from(views: &[(String, &Value)], a: &str, room: &str) -> BTreeMap<String, u32> {
    let upstream = |id: &str| -> Option<String> {
        let (_, v) = views.iter().find(|(n, _)| n == id)?;
        v["cluster"]["subscriptions"].as_array()?.iter().find(|s| s["room"] == room)?["from"].as_str().map(str::to_string)
    };
    views
        .iter()
        .map(|(id, _)| {
            let mut hops = 0u32;
            let mut at = id.clone();
            while at != a && (hops as usize) < views.len() {
                hops += 1;
                match upstream(&at) {
                    Some(next) => at = next,
                    None => break,
                }
            }
            (id.clone(), hops)
        })
        .collect()
}

/// The node's id in its `/healthz` (`cluster.node_id`), or an error if it is not a cluster node.
fn node_id(http: &HttpClient, target: &str) -> Result<String, HarnessError> {
    let v = http.get_json("/healthz")?;
    v["cluster"]["node_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| HarnessError::Timeout(Duration::ZERO, format!("{target}/healthz to show a `cluster` section (start `sfumato media`, not standalone)")))
}

/// Whether `remote`'s view lists `host` alive, hosting `room` (None = just alive).
fn sees(remote: &Value, host: &str, room: Option<&str>) -> bool {
    remote["cluster"]["nodes"].as_array().is_some_and(|ns| {
        ns.iter().any(|n| {
            n["id"] == host && n["status"] == "alive" && room.is_none_or(|r| n["rooms"].as_array().is_some_and(|rs| rs.iter().any(|x| x == r)))
        })
    })
}

pub fn run(cfg: &CascadeConfig) -> Result<RunResult, HarnessError> {
    let t0 = Instant::now();
    assert!(cfg.targets.len() >= 2, "cascade needs at least two nodes");
    let h = Harness::new(&cfg.targets[0], cfg.threads)?;
    let mut nodes = Vec::new();
    for (i, t) in cfg.targets.iter().enumerate() {
        let http = HttpClient::new(t, Duration::from_secs(10))?;
        let id = node_id(&http, t)?;
        nodes.push(Node { target: t.clone(), http, pid: cfg.server_pids.get(i).copied(), id });
    }
    let a_id = nodes[0].id.clone();
    // Every subscribing node knows A before the publisher starts.
    Harness::wait_for(cfg.connect_timeout, "every node to see the publisher's node alive", || {
        nodes[1..].iter().all(|n| n.http.get_json("/healthz").is_ok_and(|v| sees(&v, &a_id, None)))
    })?;
    let publisher = h.publish(&cfg.room, cfg.publisher)?;
    let res = run_with(cfg, &h, &nodes, &publisher, t0);
    let _ = h.delete(&publisher);
    res
}

fn run_with(cfg: &CascadeConfig, h: &Harness, nodes: &[Node], publisher: &Session, t0: Instant) -> Result<RunResult, HarnessError> {
    let a_id = nodes[0].id.clone();
    Harness::wait_for(cfg.connect_timeout, "the publisher to connect", || publisher.peer.connected())?;
    // Gossip (every 500 ms) tells the other nodes that A hosts the room; a viewer arriving before that
    // would be placed and subscribed late, and its join time would include the wait.
    Harness::wait_for(cfg.connect_timeout, "every node to see the room hosted on the publisher's node", || {
        nodes[1..].iter().all(|n| n.http.get_json("/healthz").is_ok_and(|v| sees(&v, &a_id, Some(&cfg.room))))
    })?;
    if cfg.progress {
        eprintln!("[{:6.1}s] publisher on {a_id}; {} node(s) see the room", t0.elapsed().as_secs_f64(), nodes.len() - 1);
    }

    // Join interleaved (A, B, C, A, B, C, ...) so no group is systematically first on the driver threads.
    let wanted: Vec<usize> = std::iter::once(cfg.viewers_a).chain(std::iter::repeat_n(cfg.viewers, nodes.len() - 1)).collect();
    let mut viewers: Vec<(usize, Session)> = Vec::new();
    let mut errors = 0usize;
    for i in 0..wanted.iter().copied().max().unwrap_or(0) {
        for (n, node) in nodes.iter().enumerate() {
            if i >= wanted[n] {
                continue;
            }
            match h.view_via(&node.http, &cfg.room) {
                Ok(s) => viewers.push((n, s)),
                Err(e) => {
                    errors += 1;
                    if errors <= 5 {
                        eprintln!("viewer {i} on {}: {e}", node.id);
                    }
                }
            }
        }
    }
    let deadline = Instant::now() + cfg.connect_timeout;
    while Instant::now() < deadline && !viewers.iter().all(|(_, v)| v.peer.first_video().is_some() || v.peer.dead()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Which node owns each viewer (a gateway may proxy a viewer elsewhere), and its hop count.
    let owners: Vec<String> = viewers.iter().map(|(n, v)| owner_of(&v.location, &nodes[*n].id)).collect();
    let misplaced = viewers.iter().zip(&owners).filter(|((n, _), o)| **o != nodes[*n].id).count();
    if misplaced > 0 {
        eprintln!("sfumato-perf: {misplaced} viewer(s) were placed on another node than the one they POSTed to (counted where they live)");
    }
    if cfg.progress {
        let joined = viewers.iter().filter(|(_, v)| v.peer.first_video().is_some()).count();
        eprintln!("[{:6.1}s] viewers {joined}/{} got video", t0.elapsed().as_secs_f64(), viewers.len());
    }
    std::thread::sleep(cfg.warmup);

    // Measured window.
    let before: Vec<(u64, u64)> = viewers.iter().map(|(_, v)| dup_reorder(&v.peer.stats())).collect();
    let s0 = Sample::take(nodes);
    let only: Vec<Session> = viewers.iter().map(|(_, v)| v.clone()).collect();
    let mut window = MeasureWindow::open(publisher, &only);
    let end = Instant::now() + cfg.duration;
    while Instant::now() < end {
        std::thread::sleep(end.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        if cfg.progress {
            eprintln!("[{:6.1}s] measure  tx {} packets", t0.elapsed().as_secs_f64(), publisher.peer.sent(Kind::Video) + publisher.peer.sent(Kind::Audio));
        }
    }
    window.close(publisher, &only);
    let s1 = Sample::take(nodes);
    let secs = s1.at.saturating_duration_since(s0.at).as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));

    let sent = window.sent(Kind::Video) + window.sent(Kind::Audio);
    let (ppf, video_bytes) = cfg.publisher.frame_shape();
    let payload_bytes = window.sent(Kind::Video) * video_bytes as u64 + window.sent(Kind::Audio) * cfg.publisher.audio_payload_bytes as u64;
    let views: Vec<(String, &Value)> = nodes.iter().zip(&s1.healthz).map(|(n, v)| (n.id.clone(), v)).collect();
    let hop_map = hops_from(&views, &a_id, &cfg.room);
    let hop_of = |owner: &str| if owner == a_id { 0 } else { hop_map.get(owner).copied().unwrap_or(1).max(1) };
    let max_hop = hop_map.values().copied().max().unwrap_or(1).max(1) as usize;
    let mut all = Tally::default();
    let mut by_hop: Vec<Tally> = (0..=max_hop).map(|_| Tally::default()).collect();
    let mut by_node: Vec<Tally> = nodes.iter().map(|_| Tally::default()).collect();
    let mut joins: Vec<Vec<f64>> = vec![Vec::new(); max_hop + 1];
    let mut owned = vec![0usize; nodes.len()];
    for (((_, v), b), owner) in viewers.iter().zip(&before).zip(&owners) {
        let joined = v.peer.first_video().is_some();
        let st = v.peer.stats();
        let hop = hop_of(owner) as usize;
        all.viewer(joined, &st, sent, *b);
        by_hop[hop].viewer(joined, &st, sent, *b);
        if let Some(k) = nodes.iter().position(|n| n.id == *owner) {
            by_node[k].viewer(joined, &st, sent, *b);
            owned[k] += 1;
        }
        if let Some(j) = v.join_time() {
            joins[hop].push(j.as_secs_f64() * 1e3);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |ns: u64| if secs > 0.0 { 100.0 * ns as f64 / (secs * 1e9) } else { 0.0 };
    let mut node_results = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        let (h0, h1) = (&s0.healthz[k], &s1.healthz[k]);
        let c = |v: &Value| (!v.is_null()).then(|| ServerCounters::from_healthz(v));
        let counters = c(h0).zip(c(h1));
        let cpu = s0.procs[k].zip(s1.procs[k]).map(|(x, y)| y.cpu_ns.saturating_sub(x.cpu_ns));
        let forwarded = counters.map(|(x, y)| y.rtp_packets_forwarded.saturating_sub(x.rtp_packets_forwarded));
        let cl = |name: &str| (!h1["cluster"].is_null()).then(|| counter(h1, name).saturating_sub(counter(h0, name)));
        let mut r = RunResult::default();
        by_node[k].fill(&mut r);
        node_results.push(NodeResult {
            node_id: n.id.clone(),
            target: n.target.clone(),
            hops: hop_of(&n.id),
            viewers_requested: wanted[k],
            viewers_owned: owned[k],
            viewers_connected: r.viewers_connected,
            latency_us: r.latency_us,
            loss_ratio: r.loss_ratio,
            cpu_percent: cpu.map(pct),
            cpu_ns_per_packet: cpu.zip(forwarded).and_then(|(c, f)| (f > 0).then(|| c as f64 / f as f64)),
            rss_bytes: s1.procs[k].map(|p| p.rss_bytes),
            run_delay_percent: s0.procs[k].and_then(|p| p.run_delay_ns).zip(s1.procs[k].and_then(|p| p.run_delay_ns)).map(|(x, y)| pct(y.saturating_sub(x))),
            packets_forwarded: forwarded,
            ring_full_drops: counters.map(|(x, y)| y.ring_full_drops.saturating_sub(x.ring_full_drops)),
            cascade_packets_out: cl("cascade_packets_out"),
            cascade_packets_in: cl("cascade_packets_in"),
            cascade_dropped: cl("cascade_dropped"),
            forward_latency_us: h1["forward_latency_us"].clone(),
        });
    }
    let groups: Vec<GroupResult> = (0..=max_hop)
        .map(|hop| {
            let mut r = RunResult::default();
            by_hop[hop].fill(&mut r);
            GroupResult {
                hops: hop as u32,
                nodes: node_results.iter().filter(|n| n.hops == hop as u32).map(|n| n.node_id.clone()).collect(),
                viewers_connected: r.viewers_connected,
                latency_us: r.latency_us,
                loss_ratio: r.loss_ratio,
                join_ms: JoinSummary::of(&joins[hop]),
            }
        })
        .collect();
    let remotes: Vec<(&Value, &Value)> = (1..nodes.len()).map(|k| (&s0.healthz[k], &s1.healthz[k])).collect();
    let link = link_figures(&s0.healthz[0], &s1.healthz[0], &remotes, &cfg.room, secs, sent, payload_bytes);

    let join_ms: Vec<f64> = viewers.iter().filter_map(|(_, v)| v.join_time()).map(ms).collect();
    let post_ms: Vec<f64> = viewers.iter().map(|(_, v)| ms(v.post_duration)).collect();
    let connect_ms: Vec<f64> = viewers.iter().filter_map(|(_, v)| v.connect_time()).map(ms).collect();
    let mut result = RunResult {
        scenario: "cascade".into(),
        target: nodes[0].target.clone(),
        room: cfg.room.clone(),
        viewers_requested: wanted.iter().sum(),
        threads: h.threads(),
        bitrate_bps: cfg.publisher.bitrate_bps,
        fps: cfg.publisher.fps,
        packets_per_frame: ppf,
        video_payload_bytes: video_bytes,
        join_ms: JoinSummary::of(&join_ms),
        post_ms: JoinSummary::of(&post_ms),
        connect_ms: JoinSummary::of(&connect_ms),
        packets_sent: sent,
        duration_s: secs,
        ..RunResult::default()
    };
    all.fill(&mut result);
    // The headline latency is the cascaded viewers' (1 hop): what `compare` tracks between runs.
    result.latency_us = groups[1].latency_us;
    result.extra.insert("latency_cdf_us".into(), serde_json::json!(cdf_points(&by_hop[1].latency_us)));
    let sum = |f: &dyn Fn(&NodeResult) -> Option<u64>| node_results.iter().map(f).collect::<Option<Vec<u64>>>().map(|v| v.iter().sum::<u64>());
    let cpu_total: Option<u64> = (0..nodes.len()).map(|k| s0.procs[k].zip(s1.procs[k]).map(|(x, y)| y.cpu_ns.saturating_sub(x.cpu_ns))).sum();
    result.server_cpu_percent = cpu_total.map(pct);
    result.server_packets_forwarded = sum(&|n| n.packets_forwarded);
    result.server_cpu_ns_per_packet = cpu_total.zip(result.server_packets_forwarded).and_then(|(c, f)| (f > 0).then(|| c as f64 / f as f64));
    result.server_rss_bytes = sum(&|n| n.rss_bytes);
    result.server_ring_full_drops = sum(&|n| n.ring_full_drops);
    let harness = s0.self_cpu_ns.zip(s1.self_cpu_ns).map(|(x, y)| y.saturating_sub(x));
    result.harness_cpu_percent = harness.map(pct);
    result.other_cpu_percent = s0
        .machine_busy_ns
        .zip(s1.machine_busy_ns)
        .zip(harness)
        .map(|((x, y), h)| pct(y.saturating_sub(x).saturating_sub(h).saturating_sub(cpu_total.unwrap_or(0))));
    result.server_run_delay_percent = node_results.iter().map(|n| n.run_delay_percent).sum();
    result.healthz_max_ms = s0.healthz_ms.max(s1.healthz_ms);
    let added = added_latency(&groups[0].latency_us, &groups[1].latency_us);
    result.extra.insert("hop_added_latency_us".into(), serde_json::json!(added));
    let per_hop: Vec<AddedLatency> = (1..groups.len())
        .filter_map(|k| added_latency(&groups[k - 1].latency_us, &groups[k].latency_us).map(|a| AddedLatency { hops: k as u32, ..a }))
        .collect();
    result.extra.insert("per_hop_added_latency_us".into(), serde_json::json!(per_hop));
    result.extra.insert("groups".into(), serde_json::json!(groups));
    result.extra.insert("nodes".into(), serde_json::json!(node_results));
    result.extra.insert("link".into(), serde_json::json!(link));
    result.extra.insert("viewers_misplaced".into(), serde_json::json!(misplaced));
    result.extra.insert("viewers_refused".into(), serde_json::json!(errors));

    for ((n, v), _) in viewers.iter().zip(&owners) {
        if let Err(e) = h.delete_via(&nodes[*n].http, v) {
            eprintln!("DELETE {}: {e}", v.location);
        }
    }
    Ok(result)
}

/// The human summary printed to stdout.
pub fn summary(r: &RunResult) -> String {
    let mut s = String::new();
    let f = |v: &Value, d: usize| v.as_f64().map(|x| format!("{x:.d$}")).unwrap_or_else(|| "n/a".into());
    s.push_str(&format!(
        "cascade {} room {}: {}/{} viewers connected; publisher {} kbit/s, {} fps × {} packets of {} B + 20 ms audio\n",
        r.target,
        r.room,
        r.viewers_connected,
        r.viewers_requested,
        r.bitrate_bps / 1000,
        r.fps,
        r.packets_per_frame,
        r.video_payload_bytes
    ));
    for g in r.extra.get("groups").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
        s.push_str(&format!(
            "  {} hop(s) ({}): {} viewers, latency p50 {} µs  p90 {} µs  p99 {} µs  max {} µs, loss {:.4}%, join p50 {} ms\n",
            g["hops"],
            g["nodes"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
            g["viewers_connected"],
            g["latency_us"]["p50"],
            g["latency_us"]["p90"],
            g["latency_us"]["p99"],
            g["latency_us"]["max"],
            g["loss_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            f(&g["join_ms"]["p50"], 0),
        ));
    }
    for a in r.extra.get("per_hop_added_latency_us").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
        s.push_str(&format!("  added by hop {}: p50 {} µs  p90 {} µs  p99 {} µs\n", a["hops"], a["p50"], a["p90"], a["p99"]));
    }
    if let Some(l) = r.extra.get("link") {
        s.push_str(&format!(
            "  link: {} packets/s out of the publisher's node ({} copies per packet), ~{} kbit/s (estimated), in {} packets, dropped {}\n",
            f(&l["packets_per_s"], 0),
            f(&l["copies_per_packet"], 2),
            f(&l["est_kbit_per_s"], 0),
            l["packets_in"],
            l["dropped"]
        ));
    }
    for n in r.extra.get("nodes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
        s.push_str(&format!(
            "  node {} ({} hop): {} viewers, CPU {}%, {} ns per forwarded packet, forwarded {}, cascade out {} in {}, waited for a CPU {}%\n",
            n["node_id"].as_str().unwrap_or("?"),
            n["hops"],
            n["viewers_owned"],
            f(&n["cpu_percent"], 1),
            f(&n["cpu_ns_per_packet"], 0),
            n["packets_forwarded"],
            n["cascade_packets_out"],
            n["cascade_packets_in"],
            f(&n["run_delay_percent"], 1)
        ));
    }
    if let Some(c) = r.harness_cpu_percent {
        s.push_str(&format!("  harness CPU {c:.1}% (of one core)"));
        if let Some(o) = r.other_cpu_percent {
            s.push_str(&format!(", other processes {o:.1}%{}", if o > 10.0 { "  (machine busy: numbers are noisy)" } else { "" }));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lat(p50: u64, p99: u64) -> LatencySummary {
        LatencySummary { count: 10, p50, p90: p50 + 10, p99, p999: p99, max: p99 }
    }

    #[test]
    fn added_latency_is_the_difference() {
        assert_eq!(added_latency(&lat(400, 1200), &lat(650, 2000)), Some(AddedLatency { hops: 1, p50: 250, p90: 250, p99: 800 }));
        assert_eq!(added_latency(&lat(400, 1200), &lat(380, 1100)).map(|a| (a.p50, a.p99)), Some((-20, -100)));
        assert_eq!(added_latency(&LatencySummary::default(), &lat(1, 1)), None);
    }

    #[test]
    fn link_from_cluster_counters() {
        let a0 = json!({"cluster": {"cascade_packets_out": 100, "cascade_dropped": 1,
            "exports": [{"room": "r", "node": "b", "packets": 50}, {"room": "r", "node": "c", "packets": 50}, {"room": "x", "node": "b", "packets": 7}]}});
        let a1 = json!({"cluster": {"cascade_packets_out": 2100, "cascade_dropped": 1,
            "exports": [{"room": "r", "node": "b", "packets": 1050}, {"room": "r", "node": "c", "packets": 1040}]}});
        let b0 = json!({"cluster": {"cascade_packets_in": 10, "cascade_dropped": 0}});
        let b1 = json!({"cluster": {"cascade_packets_in": 1010, "cascade_dropped": 2}});
        // 1000 packets sent in 10 s, 1064 payload bytes each on average.
        let l = link_figures(&a0, &a1, &[(&b0, &b1)], "r", 10.0, 1000, 1_064_000);
        assert_eq!((l.packets_out, l.packets_in, l.dropped), (2000, 1000, 2));
        assert_eq!(l.packets_per_s, 200.0);
        assert_eq!(l.copies_per_packet, Some(2.0));
        assert_eq!(l.per_node, vec![
            LinkNode { node: "b".into(), packets: 1000, packets_per_s: 100.0 },
            LinkNode { node: "c".into(), packets: 990, packets_per_s: 99.0 },
        ]);
        assert_eq!(l.est_bytes_per_packet, 1100.0);
        assert_eq!(l.est_bytes_per_s, 220_000.0);
        assert_eq!(l.est_kbit_per_s, 1760.0);
        // A standalone server (no cluster section): zeros, no panic.
        let l = link_figures(&json!({}), &json!({}), &[], "r", 0.0, 0, 0);
        assert_eq!((l.packets_out, l.packets_per_s, l.copies_per_packet), (0, 0.0, None));
    }

    #[test]
    fn owner_from_location() {
        assert_eq!(owner_of("/whep/conn/abc123", "b"), "b");
        assert_eq!(owner_of("/whep/conn/a/abc123", "b"), "a");
        assert_eq!(owner_of("http://127.0.0.1:3001/whep/conn/c/x", "b"), "c");
        assert_eq!(owner_of("http://127.0.0.1:3001/whep/conn/x", "b"), "b");
    }

    #[test]
    fn hops_follow_subscriptions() {
        let sub = |from: &str| json!({"cluster": {"subscriptions": [{"room": "x", "from": "a"}, {"room": "r", "from": from}]}});
        let (a, b, c, d) = (json!({"cluster": {"subscriptions": []}}), sub("a"), sub("b"), json!({"cluster": {}}));
        let views = vec![("a".to_string(), &a), ("b".to_string(), &b), ("c".to_string(), &c), ("d".to_string(), &d)];
        let h = hops_from(&views, "a", "r");
        assert_eq!((h["a"], h["b"], h["c"], h["d"]), (0, 1, 2, 1), "c pulls through b; d names nothing: 1");
        // A loop (b ← c ← b) is cut at the node count.
        let (b2, c2) = (sub("c"), sub("b"));
        let h = hops_from(&[("a".to_string(), &a), ("b".to_string(), &b2), ("c".to_string(), &c2)], "a", "r");
        assert_eq!(h["b"], 3);
    }

    #[test]
    fn sees_a_hosting_node() {
        let v = json!({"cluster": {"nodes": [{"id": "a", "status": "alive", "rooms": ["r"]}, {"id": "c", "status": "dead", "rooms": []}]}});
        assert!(sees(&v, "a", None) && sees(&v, "a", Some("r")));
        assert!(!sees(&v, "a", Some("q")) && !sees(&v, "c", None) && !sees(&json!(null), "a", None));
    }
}
