//! What every core may know about the cluster without asking core 0: a snapshot of membership (nodes,
//! zones, loads, hosted rooms) for gateway placement and `/healthz`, plus counters for `/metrics`.
//!
//! Core 0 republishes the snapshot every load tick (500 ms) and whenever membership changes; HTTP handlers on
//! any core read it. The mutex only guards swapping an `Arc` — never held on the packet path — and the
//! counters are atomics written by core 0 alone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sfumato_cluster::{Load, NodeId};

use crate::placement::{Candidate, PlaceRole, PlacementPolicy};

/// One node in the snapshot (this node included, first).
#[derive(Debug, Clone, Serialize)]
pub struct ViewNode {
    pub id: NodeId,
    pub zone: String,
    /// alive, suspect, dead, left.
    pub status: &'static str,
    pub incarnation: u64,
    pub load: Load,
    /// Rooms whose publisher this node hosts.
    pub rooms: Vec<String>,
    /// Rooms this node pulls from another node (for its viewers, or as its zone's relay).
    pub pulls: Vec<String>,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub is_self: bool,
}

/// A cascade subscription of this node: media of `room` comes from `from` (the publisher's node, or this
/// zone's relay for the room).
#[derive(Debug, Clone, Serialize)]
pub struct ViewSubscription {
    pub room: String,
    pub from: Option<NodeId>,
    /// Other nodes pull the room from this one (it is their zone's relay for it).
    pub relaying: bool,
    /// Viewers on this node watch it.
    pub viewers: bool,
}

/// A node subscribed to one of our rooms, with the packets sent to it.
#[derive(Debug, Clone, Serialize)]
pub struct ViewExport {
    pub room: String,
    pub node: NodeId,
    pub packets: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<ViewNode>,
    pub links_up: usize,
    pub subscriptions: Vec<ViewSubscription>,
    pub exports: Vec<ViewExport>,
    /// H.264 `profile-level-id` of rooms as gossiped, the publisher's node's word first.
    #[serde(skip)]
    pub h264: std::collections::HashMap<String, u32>,
}

/// Counters of the cluster shell (core 0 writes, anyone reads).
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Datagrams of exported rooms sent (one per packet per subscribing node).
    pub cascade_packets_out: AtomicU64,
    /// Cascade datagrams received and handed to a home core.
    pub cascade_packets_in: AtomicU64,
    /// Cascade packets not sent (link not up, datagram too large, ring full) or not wanted on arrival.
    pub cascade_dropped: AtomicU64,
    /// Connections refused because a side's proof of the cluster secret was wrong (or missing).
    pub auth_refused: AtomicU64,
    /// Signalling requests proxied to another node (as gateway).
    pub signals_proxied: AtomicU64,
    /// Signalling requests served for another node's gateway.
    pub signals_served: AtomicU64,
    /// Bitrate hints (lowest viewer bandwidth estimate of a cascaded room) sent to the upstream node.
    pub cascade_bitrate_hints: AtomicU64,
}

impl ClusterCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Shared by the cores of one node.
pub struct ClusterShared {
    pub me: NodeId,
    pub zone: String,
    pub policy: PlacementPolicy,
    pub counters: ClusterCounters,
    view: Mutex<Arc<ClusterView>>,
}

impl ClusterShared {
    pub fn new(me: NodeId, zone: String, policy: PlacementPolicy) -> Self {
        Self { me, zone, policy, counters: ClusterCounters::default(), view: Mutex::new(Arc::new(ClusterView::default())) }
    }

    pub fn view(&self) -> Arc<ClusterView> {
        match self.view.lock() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn publish(&self, view: ClusterView) {
        let view = Arc::new(view);
        match self.view.lock() {
            Ok(mut v) => *v = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }

    /// The H.264 `profile-level-id` of `room`'s video as the cluster gossips it (None: unknown, or not H.264).
    pub fn room_h264(&self, room: &str) -> Option<u32> {
        self.view().h264.get(room).copied()
    }

    /// The node a new session of `room` should live on (`None`: every node is over the load threshold).
    /// `zone` is the client's hint (X-Sfumato-Zone), else this gateway's zone.
    pub fn place(&self, role: PlaceRole, room: &str, zone: Option<&str>) -> Option<NodeId> {
        let view = self.view();
        let mut nodes: Vec<Candidate> = view
            .nodes
            .iter()
            .filter(|n| n.status == "alive")
            .map(|n| Candidate {
                id: n.id.clone(),
                zone: n.zone.clone(),
                load: n.load,
                hosts_room: n.rooms.iter().any(|r| r == room),
                pulls_room: n.pulls.iter().any(|r| r == room),
                is_self: n.is_self,
            })
            .collect();
        if !nodes.iter().any(|c| c.is_self) {
            // Before the first snapshot: this node alone.
            nodes.push(Candidate { id: self.me.clone(), zone: self.zone.clone(), load: Load::default(), hosts_room: false, pulls_room: false, is_self: true });
        }
        self.policy.place(role, zone.unwrap_or(&self.zone), &nodes).map(|c| c.id.clone())
    }

    /// The `cluster` object of `/healthz`.
    pub fn health_json(&self) -> serde_json::Value {
        let view = self.view();
        let c = &self.counters;
        let members_alive = view.nodes.iter().filter(|n| !n.is_self && n.status == "alive").count();
        serde_json::json!({
            "node_id": self.me,
            "zone": self.zone,
            "links_up": view.links_up,
            "members_alive": members_alive,
            "nodes": view.nodes,
            "subscriptions": view.subscriptions,
            "exports": view.exports,
            "h264_profiles": view.h264.iter().map(|(room, p)| (room.clone(), serde_json::Value::from(format!("{p:06x}")))).collect::<serde_json::Map<_, _>>(),
            "cascade_packets_out": c.cascade_packets_out.load(Ordering::Relaxed),
            "cascade_packets_in": c.cascade_packets_in.load(Ordering::Relaxed),
            "cascade_dropped": c.cascade_dropped.load(Ordering::Relaxed),
            "auth_refused": c.auth_refused.load(Ordering::Relaxed),
            "signals_proxied": c.signals_proxied.load(Ordering::Relaxed),
            "signals_served": c.signals_served.load(Ordering::Relaxed),
            "cascade_bitrate_hints": c.cascade_bitrate_hints.load(Ordering::Relaxed),
        })
    }

    /// Prometheus text for the cluster.
    pub fn render_metrics(&self, out: &mut String) {
        let view = self.view();
        let c = &self.counters;
        let members_alive = view.nodes.iter().filter(|n| !n.is_self && n.status == "alive").count();
        let mut gauge = |name: &str, help: &str, v: u64| {
            out.push_str(&format!("# HELP sfumato_{name} {help}\n# TYPE sfumato_{name} gauge\nsfumato_{name} {v}\n"));
        };
        gauge("cluster_links_up", "Authenticated QUIC links to other nodes", view.links_up as u64);
        gauge("cluster_members", "Other nodes membership considers alive", members_alive as u64);
        gauge("cascade_subscriptions", "Rooms this node receives from another node", view.subscriptions.len() as u64);
        gauge("cascade_exports", "(room, node) pairs this node sends a room to", view.exports.len() as u64);
        let counters: [(&str, &str, &AtomicU64); 7] = [
            ("cascade_packets_out", "Cascade datagrams sent (one per packet per subscribing node)", &c.cascade_packets_out),
            ("cascade_packets_in", "Cascade datagrams received and forwarded to viewers' home core", &c.cascade_packets_in),
            ("cascade_dropped", "Cascade packets not sent or not wanted", &c.cascade_dropped),
            ("cluster_auth_refused", "Cluster connections refused: wrong cluster secret", &c.auth_refused),
            ("cluster_signals_proxied", "WHIP/WHEP requests proxied to another node", &c.signals_proxied),
            ("cluster_signals_served", "WHIP/WHEP requests served for another node's gateway", &c.signals_served),
            ("cascade_bitrate_hints", "Bitrate hints (lowest viewer bandwidth estimate) sent to the upstream node", &c.cascade_bitrate_hints),
        ];
        for (name, help, v) in counters {
            let v = v.load(Ordering::Relaxed);
            out.push_str(&format!("# HELP sfumato_{name}_total {help}\n# TYPE sfumato_{name}_total counter\nsfumato_{name}_total {v}\n"));
        }
        let name = "sfumato_cascade_export_packets_total";
        out.push_str(&format!("# HELP {name} Packets sent per exported room and subscribing node\n# TYPE {name} counter\n"));
        for e in &view.exports {
            out.push_str(&format!("{name}{{room=\"{}\",node=\"{}\"}} {}\n", e.room, e.node, e.packets));
        }
    }
}

/// CPU use of this process over all of its cores, in ‰ of `cores` CPUs, from /proc/self/stat.
pub struct CpuMeter {
    last: Option<(u64, std::time::Instant)>,
    ticks_per_s: u64,
    cores: usize,
}

impl CpuMeter {
    pub fn new(cores: usize) -> Self {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self { last: None, ticks_per_s: if t > 0 { t as u64 } else { 100 }, cores: cores.max(1) }
    }

    /// ‰ since the previous call (0 on the first).
    pub fn sample(&mut self, now: std::time::Instant) -> u16 {
        let Some(ticks) = process_cpu_ticks() else { return 0 };
        let prev = self.last.replace((ticks, now));
        let Some((t0, at)) = prev else { return 0 };
        let secs = now.saturating_duration_since(at).as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        let used = ticks.saturating_sub(t0) as f64 / self.ticks_per_s as f64;
        ((used / secs / self.cores as f64) * 1000.0).clamp(0.0, 1000.0) as u16
    }
}

/// utime + stime of this process, in clock ticks.
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_meter_reads_proc() {
        assert!(process_cpu_ticks().is_some());
        let mut m = CpuMeter::new(1);
        let t = std::time::Instant::now();
        assert_eq!(m.sample(t), 0);
        let _ = m.sample(t + std::time::Duration::from_millis(100));
    }

    #[test]
    fn placement_uses_the_snapshot() {
        let me = NodeId::new("a").unwrap();
        let shared = ClusterShared::new(me.clone(), "z1".into(), PlacementPolicy::default());
        // No snapshot yet: this node.
        assert_eq!(shared.place(PlaceRole::Viewer, "r", None), Some(me.clone()));
        let node = |id: &str, zone: &str, rooms: Vec<String>, me: bool, status: &'static str| ViewNode {
            id: NodeId::new(id).unwrap(),
            zone: zone.into(),
            status,
            incarnation: 1,
            load: Load::default(),
            rooms,
            pulls: vec![],
            http: "127.0.0.1:1".parse().unwrap(),
            quic: "127.0.0.1:2".parse().unwrap(),
            is_self: me,
        };
        shared.publish(ClusterView {
            nodes: vec![
                node("a", "z1", vec![], true, "alive"),
                node("b", "z2", vec!["r".into()], false, "alive"),
                node("c", "z2", vec![], false, "dead"),
            ],
            ..Default::default()
        });
        assert_eq!(shared.place(PlaceRole::Publisher, "r", None).map(|n| n.to_string()).as_deref(), Some("b"));
        assert_eq!(shared.place(PlaceRole::Viewer, "r", None).map(|n| n.to_string()).as_deref(), Some("a"));
        assert_eq!(shared.place(PlaceRole::Viewer, "r", Some("z2")).map(|n| n.to_string()).as_deref(), Some("b"));
        assert_eq!(shared.place(PlaceRole::Publisher, "q", Some("z2")).map(|n| n.to_string()).as_deref(), Some("b"));
        let mut m = String::new();
        shared.render_metrics(&mut m);
        assert!(m.contains("sfumato_cluster_members 1"), "{m}");
        assert!(shared.health_json()["nodes"].as_array().is_some_and(|n| n.len() == 3));
        // The gossiped H.264 profile of a room.
        assert_eq!(shared.room_h264("r"), None);
        shared.publish(ClusterView { h264: [("r".to_string(), 0x4d401f)].into(), ..Default::default() });
        assert_eq!(shared.room_h264("r"), Some(0x4d401f));
    }
}
