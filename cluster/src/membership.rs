//! Who is in the cluster: heartbeat gossip with local failure detection (no node is special).
//!
//! Every `gossip_interval` a node bumps its own heartbeat and sends what it knows (itself and every live
//! member) to `fanout` random live members. A receiver keeps, per node, the highest `(incarnation,
//! heartbeat)` it has seen and the local time that heartbeat last grew. A node whose heartbeat has not
//! grown for `suspect_after` is *suspect*; after `dead_after` more it is *dead* (kept as a tombstone for
//! `tombstone_ttl`, so stale gossip cannot resurrect it; a genuinely newer heartbeat does). Because
//! heartbeats spread epidemically, a node is only declared dead when nobody has heard from it — one
//! broken link is not enough.
//!
//! A restarted node comes back with a higher incarnation (e.g. its start time in ms) and replaces its old
//! entry at once ([`MembershipEvent::NodeJoined`] with `replaced`). A graceful [`Membership::leave`] is
//! final for that incarnation.
//!
//! Seeds are only a bootstrap: the shell links to them ([`MembershipOutput::Connect`]) and, when a link
//! authenticates, calls [`Membership::handle_link_up`], which pushes our full view to that node; its
//! answer tells us about everyone else, whom we then link to as well (a full mesh: clusters are tens of
//! nodes, and cascading needs links between any two anyway).
//!
//! Messages carry zone/addresses/rooms ([`NodeData`]) only when the receiver has not been sent that
//! version over the current link; everything else is a few bytes per node.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::gossip::{GossipEntry, GossipMsg, NodeData, MAX_GOSSIP_ENTRIES};
use crate::node::{CarriedRooms, Load, NodeId, NodeInfo};
use crate::rng::Rng;

/// Timing of gossip and failure detection.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// How often to gossip (and bump our heartbeat). Default 500 ms.
    pub gossip_interval: Duration,
    /// Members contacted per round. Default 3.
    pub fanout: usize,
    /// No heartbeat progress for this long → suspect. Default 2 s.
    pub suspect_after: Duration,
    /// Suspect for this long more → dead. Default 2 s (so dead 4 s after the last heartbeat).
    pub dead_after: Duration,
    /// Dead/left entries are forgotten after this. Default 60 s.
    pub tombstone_ttl: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            gossip_interval: Duration::from_millis(500),
            fanout: 3,
            suspect_after: Duration::from_secs(2),
            dead_after: Duration::from_secs(2),
            tombstone_ttl: Duration::from_secs(60),
        }
    }
}

/// A member's liveness as judged locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStatus {
    Alive,
    Suspect,
    Dead,
    Left,
}

/// What we know about another node.
#[derive(Clone, Debug)]
pub struct Member {
    pub info: NodeInfo,
    pub status: MemberStatus,
    pub heartbeat: u64,
    version: u64,
    last_progress: Instant,
    status_since: Instant,
}

impl Member {
    /// Alive or suspect (still worth routing to, alive preferred).
    pub fn is_live(&self) -> bool {
        matches!(self.status, MemberStatus::Alive | MemberStatus::Suspect)
    }

    fn data(&self) -> NodeData {
        NodeData {
            zone: self.info.zone.clone(),
            addrs: self.info.addrs.clone(),
            rooms: self.info.rooms.clone(),
        }
    }

    /// When this member's status changes next if nothing is heard.
    fn deadline(&self, cfg: &MembershipConfig) -> Instant {
        match self.status {
            MemberStatus::Alive => self.last_progress + cfg.suspect_after,
            MemberStatus::Suspect => self.last_progress + cfg.suspect_after + cfg.dead_after,
            MemberStatus::Dead | MemberStatus::Left => self.status_since + cfg.tombstone_ttl,
        }
    }
}

/// Changes in cluster membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node appeared, came back from dead, or restarted (`replaced` = the incarnation it supersedes:
    /// everything tied to the old process is gone).
    NodeJoined {
        id: NodeId,
        incarnation: u64,
        replaced: Option<u64>,
    },
    /// A node's zone, addresses or hosted rooms changed, or it recovered from suspect.
    NodeUpdated { id: NodeId },
    /// No heartbeat progress for `suspect_after`.
    NodeSuspect { id: NodeId },
    /// No heartbeat progress for `suspect_after + dead_after`.
    NodeDead { id: NodeId, incarnation: u64 },
    /// The node announced it is leaving.
    NodeLeft { id: NodeId, incarnation: u64 },
}

/// What membership asks of the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipOutput {
    /// Send `msg` as [`crate::ControlMsg::Gossip`] on the link to `to` (drop it if there is none).
    Send {
        to: NodeId,
        msg: GossipMsg,
    },
    /// Keep a link to this address ([`crate::LinkEndpoint::keep_linked`]).
    Connect(SocketAddr),
    /// Stop redialing this address ([`crate::LinkEndpoint::forget`]); never emitted for seeds.
    Disconnect(SocketAddr),
    Event(MembershipEvent),
}

/// Gossip membership; see the module docs.
pub struct Membership {
    cfg: MembershipConfig,
    me: NodeInfo,
    heartbeat: u64,
    version: u64,
    left: bool,
    seeds: Vec<SocketAddr>,
    members: BTreeMap<NodeId, Member>,
    /// Per receiving node: entry id → (incarnation, version) whose data it was sent over the current link.
    sent: HashMap<NodeId, HashMap<NodeId, (u64, u64)>>,
    outputs: VecDeque<MembershipOutput>,
    next_gossip: Option<Instant>,
    rng: Rng,
}

impl Membership {
    /// Starts membership for this node. Call [`Self::handle_timeout`] once right away: the first call
    /// starts the gossip timer.
    pub fn new(self_info: NodeInfo, seeds: Vec<SocketAddr>) -> Self {
        Self::with_config(self_info, seeds, MembershipConfig::default())
    }

    pub fn with_config(self_info: NodeInfo, seeds: Vec<SocketAddr>, cfg: MembershipConfig) -> Self {
        let rng = Rng::from_bytes(&[
            self_info.id.as_str().as_bytes(),
            &self_info.incarnation.to_le_bytes(),
        ]);
        let outputs = seeds
            .iter()
            .map(|s| MembershipOutput::Connect(*s))
            .collect();
        Self {
            cfg,
            me: self_info,
            heartbeat: 0,
            version: 1,
            left: false,
            seeds,
            members: BTreeMap::new(),
            sent: HashMap::new(),
            outputs,
            next_gossip: None,
            rng,
        }
    }

    // ---- inputs -------------------------------------------------------------------------------------

    /// A gossip message from node `from` (the authenticated node id of the link it came on).
    pub fn handle_message(&mut self, now: Instant, from: &NodeId, msg: GossipMsg) {
        let mut pull = Vec::new();
        for entry in msg.entries {
            let id = entry.id.clone();
            if self.merge(now, entry) {
                pull.push(id);
            }
        }
        if !pull.is_empty() {
            debug!(from = %from, count = pull.len(), "pulling node data");
            self.outputs.push_back(MembershipOutput::Send {
                to: from.clone(),
                msg: GossipMsg {
                    entries: vec![],
                    pull,
                },
            });
        }
        if !msg.pull.is_empty() {
            let mut entries = Vec::new();
            for id in msg.pull.iter().take(MAX_GOSSIP_ENTRIES) {
                if *id == self.me.id {
                    entries.push(self.self_entry(true));
                } else if let Some(m) = self
                    .members
                    .get(id)
                    .filter(|m| m.status != MemberStatus::Dead)
                {
                    entries.push(member_entry(m, true));
                }
            }
            let sent = self.sent.entry(from.clone()).or_default();
            for e in &entries {
                sent.insert(e.id.clone(), (e.incarnation, e.version));
            }
            if !entries.is_empty() {
                self.outputs.push_back(MembershipOutput::Send {
                    to: from.clone(),
                    msg: GossipMsg {
                        entries,
                        pull: vec![],
                    },
                });
            }
        }
    }

    /// An authenticated link to `node` came up: send it our whole view now.
    pub fn handle_link_up(&mut self, now: Instant, node: &NodeId) {
        self.sent.remove(node);
        let _ = now;
        let msg = self.build_msg(node);
        self.outputs.push_back(MembershipOutput::Send {
            to: node.clone(),
            msg,
        });
    }

    /// Drives gossip rounds and failure detection. Call at `poll_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = match self.next_gossip {
            None => true,
            Some(t) => t <= now,
        };
        if due {
            self.next_gossip = Some(now + self.cfg.gossip_interval);
            if !self.left {
                self.heartbeat += 1;
                self.gossip_round();
            }
        }
        self.detect_failures(now);
    }

    /// Our load, gossiped with every heartbeat.
    pub fn update_self_load(&mut self, load: Load) {
        self.me.load = load;
    }

    /// The rooms this node carries: those it publishes and those it pulls from another node.
    pub fn set_rooms(&mut self, rooms: CarriedRooms) {
        if rooms != self.me.rooms {
            self.me.rooms = rooms;
            self.version += 1;
        }
    }

    /// Announces a graceful leave to every live member; no more gossip rounds after this.
    pub fn leave(&mut self) {
        self.left = true;
        let targets: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| m.is_live())
            .map(|m| m.info.id.clone())
            .collect();
        for to in targets {
            let msg = GossipMsg {
                entries: vec![self.self_entry(false)],
                pull: vec![],
            };
            self.outputs.push_back(MembershipOutput::Send { to, msg });
        }
    }

    // ---- outputs ------------------------------------------------------------------------------------

    pub fn poll_output(&mut self) -> Option<MembershipOutput> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` is due (`None` only before the first call).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.next_gossip?;
        Some(
            self.members
                .values()
                .map(|m| m.deadline(&self.cfg))
                .fold(next, Instant::min),
        )
    }

    // ---- queries ------------------------------------------------------------------------------------

    /// This node, as we gossip it.
    pub fn local(&self) -> &NodeInfo {
        &self.me
    }

    /// Other nodes we know of, including suspect, dead and left ones until their tombstone expires.
    pub fn members(&self) -> impl Iterator<Item = &Member> + '_ {
        self.members.values()
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// A live node (this one included) hosting a publisher for `room`; alive nodes before suspect ones.
    pub fn node_hosting(&self, room: &str) -> Option<&NodeInfo> {
        let publishes = |info: &NodeInfo| info.rooms.get(room).is_some_and(|r| r.publisher);
        if publishes(&self.me) && !self.left {
            return Some(&self.me);
        }
        let hosting = |status| {
            self.members
                .values()
                .find(move |m| m.status == status && publishes(&m.info))
                .map(|m| &m.info)
        };
        hosting(MemberStatus::Alive).or_else(|| hosting(MemberStatus::Suspect))
    }

    // ---- internals ----------------------------------------------------------------------------------

    fn self_entry(&self, with_data: bool) -> GossipEntry {
        GossipEntry {
            id: self.me.id.clone(),
            incarnation: self.me.incarnation,
            heartbeat: self.heartbeat,
            left: self.left,
            load: self.me.load,
            version: self.version,
            data: with_data.then(|| NodeData {
                zone: self.me.zone.clone(),
                addrs: self.me.addrs.clone(),
                rooms: self.me.rooms.clone(),
            }),
        }
    }

    /// Our view for `to`, with data only where `to` has not been sent that version.
    fn build_msg(&mut self, to: &NodeId) -> GossipMsg {
        let mut entries = Vec::with_capacity(self.members.len() + 1);
        let key = (self.me.incarnation, self.version);
        let with_data = self.sent.get(to).and_then(|sent| sent.get(&self.me.id)) != Some(&key);
        entries.push(self.self_entry(with_data));
        let sent = self.sent.entry(to.clone()).or_default();
        sent.insert(self.me.id.clone(), key);
        for m in self.members.values() {
            if entries.len() >= MAX_GOSSIP_ENTRIES {
                break;
            }
            if m.info.id == *to || m.status == MemberStatus::Dead {
                continue;
            }
            let key = (m.info.incarnation, m.version);
            let with_data = sent.get(&m.info.id) != Some(&key);
            sent.insert(m.info.id.clone(), key);
            entries.push(member_entry(m, with_data));
        }
        GossipMsg {
            entries,
            pull: vec![],
        }
    }

    fn gossip_round(&mut self) {
        let mut live: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| m.is_live())
            .map(|m| m.info.id.clone())
            .collect();
        let n = self.cfg.fanout.min(live.len());
        for i in 0..n {
            let j = i + self.rng.below(live.len() - i);
            live.swap(i, j);
        }
        live.truncate(n);
        for to in live {
            let msg = self.build_msg(&to);
            self.outputs.push_back(MembershipOutput::Send { to, msg });
        }
    }

    /// Applies one entry. Returns true if we need the node's data (pull).
    fn merge(&mut self, now: Instant, mut e: GossipEntry) -> bool {
        if e.id == self.me.id {
            if e.incarnation > self.me.incarnation {
                warn!(node = %e.id, ours = self.me.incarnation, theirs = e.incarnation,
                    "another process claims our node id with a newer incarnation");
            }
            return false;
        }
        let Some(m) = self.members.get_mut(&e.id) else {
            if e.left {
                return false;
            }
            let Some(data) = e.data.take() else {
                return true;
            };
            let addr = data.addrs.quic;
            info!(node = %e.id, incarnation = e.incarnation, zone = %data.zone, addr = %addr, "node joined");
            let id = e.id.clone();
            let incarnation = e.incarnation;
            self.members.insert(e.id.clone(), new_member(now, e, data));
            self.outputs.push_back(MembershipOutput::Connect(addr));
            self.event(MembershipEvent::NodeJoined {
                id,
                incarnation,
                replaced: None,
            });
            return false;
        };
        if e.incarnation < m.info.incarnation {
            return false;
        }
        if e.incarnation > m.info.incarnation {
            let Some(data) = e.data.take() else {
                return true;
            };
            let old = m.info.incarnation;
            let addr = data.addrs.quic;
            info!(node = %e.id, old_incarnation = old, incarnation = e.incarnation, "node restarted");
            let (id, incarnation, left) = (e.id.clone(), e.incarnation, e.left);
            *m = new_member(now, e, data);
            if left {
                m.status = MemberStatus::Left;
                self.event(MembershipEvent::NodeLeft { id, incarnation });
            } else {
                self.outputs.push_back(MembershipOutput::Connect(addr));
                self.event(MembershipEvent::NodeJoined {
                    id,
                    incarnation,
                    replaced: Some(old),
                });
            }
            return false;
        }
        // Same incarnation.
        if m.status == MemberStatus::Left {
            return false;
        }
        if e.left {
            m.status = MemberStatus::Left;
            m.status_since = now;
            info!(node = %e.id, "node left");
            let (addr, id, incarnation) = (m.info.addrs.quic, e.id, e.incarnation);
            self.disconnect(addr);
            self.event(MembershipEvent::NodeLeft { id, incarnation });
            return false;
        }
        let mut need_pull = false;
        let mut updated = false;
        let mut connect = None;
        if e.version > m.version {
            match e.data {
                Some(data) => {
                    if data.addrs.quic != m.info.addrs.quic {
                        connect = Some(data.addrs.quic);
                    }
                    m.info.zone = data.zone;
                    m.info.addrs = data.addrs;
                    m.info.rooms = data.rooms;
                    m.version = e.version;
                    updated = true;
                }
                None => need_pull = true,
            }
        }
        let mut rejoined = false;
        if e.heartbeat > m.heartbeat {
            m.heartbeat = e.heartbeat;
            m.info.load = e.load;
            m.last_progress = now;
            match m.status {
                MemberStatus::Suspect => {
                    m.status = MemberStatus::Alive;
                    m.status_since = now;
                    updated = true;
                }
                MemberStatus::Dead => {
                    m.status = MemberStatus::Alive;
                    m.status_since = now;
                    rejoined = true;
                    connect = Some(m.info.addrs.quic);
                }
                _ => {}
            }
        }
        let id = m.info.id.clone();
        let incarnation = m.info.incarnation;
        if let Some(addr) = connect {
            self.outputs.push_back(MembershipOutput::Connect(addr));
        }
        if rejoined {
            info!(node = %id, "dead node is alive again");
            self.event(MembershipEvent::NodeJoined {
                id,
                incarnation,
                replaced: None,
            });
        } else if updated {
            self.event(MembershipEvent::NodeUpdated { id });
        }
        need_pull
    }

    fn detect_failures(&mut self, now: Instant) {
        let mut removed = Vec::new();
        let mut out = Vec::new();
        for m in self.members.values_mut() {
            let quiet = now.saturating_duration_since(m.last_progress);
            match m.status {
                MemberStatus::Alive if quiet >= self.cfg.suspect_after => {
                    m.status = MemberStatus::Suspect;
                    m.status_since = now;
                    info!(node = %m.info.id, quiet_ms = quiet.as_millis() as u64, "node suspect");
                    out.push(MembershipOutput::Event(MembershipEvent::NodeSuspect {
                        id: m.info.id.clone(),
                    }));
                }
                MemberStatus::Suspect if quiet >= self.cfg.suspect_after + self.cfg.dead_after => {
                    m.status = MemberStatus::Dead;
                    m.status_since = now;
                    warn!(node = %m.info.id, incarnation = m.info.incarnation, quiet_ms = quiet.as_millis() as u64,
                        "node dead");
                    if !self.seeds.contains(&m.info.addrs.quic) {
                        out.push(MembershipOutput::Disconnect(m.info.addrs.quic));
                    }
                    out.push(MembershipOutput::Event(MembershipEvent::NodeDead {
                        id: m.info.id.clone(),
                        incarnation: m.info.incarnation,
                    }));
                }
                MemberStatus::Dead | MemberStatus::Left
                    if now.saturating_duration_since(m.status_since) >= self.cfg.tombstone_ttl =>
                {
                    removed.push(m.info.id.clone());
                }
                _ => {}
            }
        }
        for id in removed {
            debug!(node = %id, "forgetting node");
            self.members.remove(&id);
            self.sent.remove(&id);
            for s in self.sent.values_mut() {
                s.remove(&id);
            }
        }
        self.outputs.extend(out);
    }

    fn disconnect(&mut self, addr: SocketAddr) {
        if !self.seeds.contains(&addr) {
            self.outputs.push_back(MembershipOutput::Disconnect(addr));
        }
    }

    fn event(&mut self, e: MembershipEvent) {
        self.outputs.push_back(MembershipOutput::Event(e));
    }
}

fn member_entry(m: &Member, with_data: bool) -> GossipEntry {
    GossipEntry {
        id: m.info.id.clone(),
        incarnation: m.info.incarnation,
        heartbeat: m.heartbeat,
        left: m.status == MemberStatus::Left,
        load: m.info.load,
        version: m.version,
        data: with_data.then(|| m.data()),
    }
}

fn new_member(now: Instant, e: GossipEntry, data: NodeData) -> Member {
    Member {
        info: NodeInfo {
            id: e.id,
            incarnation: e.incarnation,
            zone: data.zone,
            addrs: data.addrs,
            load: e.load,
            rooms: data.rooms,
        },
        status: MemberStatus::Alive,
        heartbeat: e.heartbeat,
        version: e.version,
        last_progress: now,
        status_since: now,
    }
}
