//! Cascading decisions, sans-IO: which node this node pulls each room from, and which nodes pull the
//! rooms it publishes or relays.
//!
//! Why it is separate from the shell: the rules (subscribe once per room, follow the publisher when it
//! moves, one copy per zone pair through a relay, keep relaying while someone downstream needs it, drop a
//! dead node's subscriptions, accept media only from the node we subscribed to) are where cascading goes
//! wrong, so they live here, driven by plain method calls and testable without sockets.
//!
//! Inputs come from three places:
//! - the room's home core ([`Cascade::room_state`]): does the room have a local publisher, and does it
//!   have viewers here without one (so media must come from elsewhere);
//! - membership, seen through a [`Directory`] (where to pull a room from: the source node, or this
//!   zone's relay for it — [`relay`]) — [`Cascade::reconcile`] after every change, [`Cascade::node_gone`];
//! - links ([`Cascade::on_message`] for Subscribe/Unsubscribe/KeyframeRequest, [`Cascade::link_up`]).
//!
//! A room is pulled from upstream while it has no local publisher and either local viewers or
//! downstream subscribers — the latter is what makes a node a *relay*: it keeps its upstream subscription
//! for the other nodes of its zone even when its own last viewer leaves. Media is re-exported the usual
//! way (the home core hands the cascaded publisher's packets to the cluster like a local publisher's), and
//! keyframe requests from downstream go on upstream (rate-limited) until they reach the source.
//!
//! Outputs are [`Action`]s: messages to send on a link, and instructions for the room's home core — start
//! or stop ingesting the room from the cluster (an *external publisher*, like RTMP), start or stop exporting
//! the room's packets to the cluster (the cluster becomes one more "viewer core" of the room).

pub mod relay;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use sfumato_cluster::{
    BitrateHint, CarriedRoom, CarriedRooms, ControlMsg, KeyframeRequest, NodeId, Subscribe, TrackKind, TrackKinds,
    Unsubscribe,
};
use sfumato_media::room::RoomKey;

/// At most one upstream keyframe request per room this often (the publisher's node rate-limits its PLIs too).
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);
/// At most one upstream bitrate hint per room this often (the home core already sends at most one per
/// second, on meaningful changes; this bounds the link whatever happens).
const BITRATE_INTERVAL: Duration = Duration::from_millis(900);

/// Where rooms come from, as membership sees it now.
pub trait Directory {
    /// The node to pull `room` from: the node hosting its publisher, or this zone's relay for it
    /// ([`relay::upstream`]). `None` when no live node hosts it (or this node does).
    fn upstream(&self, room: &str) -> Option<NodeId>;
}

impl<F: Fn(&str) -> Option<NodeId>> Directory for F {
    fn upstream(&self, room: &str) -> Option<NodeId> {
        self(room)
    }
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` on the link to `to` (dropped if there is none: the subscription is re-sent on link up).
    Send { to: NodeId, msg: ControlMsg },
    /// Home core: register the cluster as the room's (external) publisher; media comes from `from`.
    IngestStart { room: RoomKey, name: String, from: NodeId },
    /// Home core: the cascaded publisher is gone.
    IngestStop { room: RoomKey },
    /// Home core: hand the room's packets to the cluster (some node subscribed).
    ExportStart { room: RoomKey, name: String },
    /// Home core: no node subscribes to the room anymore.
    ExportStop { room: RoomKey },
    /// Home core: ask the room's publisher for a keyframe.
    Keyframe { room: RoomKey },
    /// Home core: node `from`, subscribed to the room, reports its lowest bandwidth estimate.
    Bitrate { room: RoomKey, bps: u64, from: NodeId },
    /// The rooms this node publishes or pulls, or their video format, changed: gossip them.
    Rooms(CarriedRooms),
}

/// A room pulled from another node.
#[derive(Debug)]
struct Want {
    name: String,
    source: Option<NodeId>,
    last_keyframe: Option<Instant>,
    last_bitrate: Option<Instant>,
}

/// One node's subscription to one of our rooms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sub {
    pub kinds: TrackKinds,
    /// Packets sent to this node for this room.
    pub packets: u64,
}

#[derive(Debug)]
struct Export {
    name: String,
    nodes: BTreeMap<NodeId, Sub>,
}

/// One row of [`Cascade::subscriptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pull<'a> {
    pub room: &'a str,
    /// The node we subscribed to (`None`: no live node hosts the room).
    pub from: Option<&'a NodeId>,
    /// Other nodes pull the room from us (we relay it).
    pub relaying: bool,
    /// Viewers here want it.
    pub viewers: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct Cascade {
    me: NodeId,
    /// Rooms with viewers here and no local publisher (as the home cores report them).
    viewers: BTreeMap<RoomKey, String>,
    /// Rooms pulled from another node: local viewers or downstream subscribers, no local publisher.
    wants: BTreeMap<RoomKey, Want>,
    /// Rooms with a local publisher.
    local: BTreeMap<RoomKey, String>,
    /// H.264 `profile-level-id` of the rooms (published or pulled) whose video is H.264, as their home
    /// cores saw it in the packets.
    h264: HashMap<RoomKey, u32>,
    /// `local`, `wants` or `h264` changed since the last [`Action::Rooms`].
    rooms_changed: bool,
    /// Our rooms (published or relayed) other nodes subscribed to.
    exports: HashMap<RoomKey, Export>,
    actions: VecDeque<Action>,
}

impl Cascade {
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            viewers: BTreeMap::new(),
            wants: BTreeMap::new(),
            local: BTreeMap::new(),
            h264: HashMap::new(),
            rooms_changed: false,
            exports: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// The next action; once the queue is empty, the carried rooms if they changed (one gossip update for
    /// a burst of changes).
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        if std::mem::take(&mut self.rooms_changed) {
            return Some(Action::Rooms(self.rooms()));
        }
        None
    }

    // ---- from home cores ----------------------------------------------------------------------------

    /// The home core's view of a room changed.
    /// `h264`: the `profile-level-id` of the room's video if it is H.264 (gossiped, so viewers joining on
    /// other nodes are answered with it).
    pub fn room_state(
        &mut self,
        room: RoomKey,
        name: &str,
        local_publisher: bool,
        wants_remote: bool,
        h264: Option<u32>,
        dir: &impl Directory,
    ) {
        let hosted_before = self.local.contains_key(&room);
        if local_publisher {
            self.local.insert(room, name.to_string());
        } else {
            self.local.remove(&room);
        }
        let h264_before = match h264 {
            Some(p) => self.h264.insert(room, p),
            None => self.h264.remove(&room),
        };
        if hosted_before != local_publisher || h264_before != h264 {
            self.rooms_changed = true;
        }
        if wants_remote && !local_publisher {
            self.viewers.insert(room, name.to_string());
        } else {
            self.viewers.remove(&room);
        }
        self.refresh(room, name, dir);
        if !self.local.contains_key(&room) && !self.wants.contains_key(&room) {
            self.h264.remove(&room);
        }
    }

    /// A viewer here (or a downstream node) of a cascaded room needs a keyframe: ask upstream
    /// (rate-limited per room, so N downstream requests make one).
    pub fn keyframe_wanted(&mut self, room: RoomKey, now: Instant) {
        let Some(w) = self.wants.get_mut(&room) else { return };
        let Some(source) = w.source.clone() else { return };
        if w.last_keyframe.is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_INTERVAL) {
            return;
        }
        w.last_keyframe = Some(now);
        let msg = ControlMsg::KeyframeRequest(KeyframeRequest { room: w.name.clone() });
        self.actions.push_back(Action::Send { to: source, msg });
    }

    /// The home core of a cascaded room reports the lowest bandwidth estimate of its viewers and of the
    /// nodes subscribed to us for it: send it upstream (rate-limited per room).
    pub fn bitrate_wanted(&mut self, room: RoomKey, bps: u64, now: Instant) {
        let Some(w) = self.wants.get_mut(&room) else { return };
        let Some(source) = w.source.clone() else { return };
        if w.last_bitrate.is_some_and(|t| now.saturating_duration_since(t) < BITRATE_INTERVAL) {
            return;
        }
        w.last_bitrate = Some(now);
        let msg = ControlMsg::BitrateHint(BitrateHint { room: w.name.clone(), bps });
        self.actions.push_back(Action::Send { to: source, msg });
    }

    // ---- from membership ----------------------------------------------------------------------------

    /// Membership changed: re-point every pulled room to where the directory says it comes from now (the
    /// publisher moved, the zone's relay died or another node now ranks first).
    pub fn reconcile(&mut self, dir: &impl Directory) {
        let changes: Vec<(RoomKey, Option<NodeId>)> = self
            .wants
            .iter()
            .filter_map(|(room, w)| {
                let now = dir.upstream(&w.name).filter(|n| *n != self.me);
                (now != w.source).then_some((*room, now))
            })
            .collect();
        for (room, source) in changes {
            self.switch_source(room, source);
        }
    }

    /// `node` is gone (link down, dead, or restarted): its subscriptions to our rooms end, and a room we
    /// relayed only for it is no longer pulled. Rooms we get from it keep their source until membership
    /// moves them ([`Self::reconcile`]); a link that comes back re-subscribes ([`Self::link_up`]).
    pub fn node_gone(&mut self, node: &NodeId, dir: &impl Directory) {
        let rooms: Vec<RoomKey> =
            self.exports.iter().filter(|(_, e)| e.nodes.contains_key(node)).map(|(r, _)| *r).collect();
        for room in rooms {
            let Some(e) = self.exports.get_mut(&room) else { continue };
            e.nodes.remove(node);
            let name = e.name.clone();
            if e.nodes.is_empty() {
                self.exports.remove(&room);
                self.actions.push_back(Action::ExportStop { room });
            }
            self.refresh(room, &name, dir);
        }
    }

    /// A link to `node` (re)authenticated: (re)send our subscriptions to it.
    pub fn link_up(&mut self, node: &NodeId) {
        let rooms: Vec<String> =
            self.wants.values().filter(|w| w.source.as_ref() == Some(node)).map(|w| w.name.clone()).collect();
        for name in rooms {
            self.subscribe_msgs(node, &name);
        }
    }

    // ---- from links ---------------------------------------------------------------------------------

    /// A cascading message from `from` (an authenticated node).
    pub fn on_message(&mut self, from: &NodeId, msg: &ControlMsg, now: Instant, dir: &impl Directory) {
        match msg {
            ControlMsg::Subscribe(s) => {
                let room = RoomKey::of(&s.room);
                if self.wants.get(&room).is_some_and(|w| w.source.as_ref() == Some(from)) {
                    // Views disagree for a moment (about the publisher's node); no media flows around such
                    // a cycle (each node accepts only its upstream's) and it ends when they converge.
                    tracing::debug!(room = %s.room, node = %from, "subscription from our own upstream");
                }
                let export =
                    self.exports.entry(room).or_insert_with(|| Export { name: s.room.clone(), nodes: BTreeMap::new() });
                let first = export.nodes.is_empty();
                let sub = export.nodes.entry(from.clone()).or_default();
                set_kind(&mut sub.kinds, s.track, true);
                if first {
                    self.actions.push_back(Action::ExportStart { room, name: s.room.clone() });
                }
                let pulled_before = self.wants.contains_key(&room);
                // Relay: pull the room for the subscriber if nobody here does yet.
                self.refresh(room, &s.room, dir);
                // The new subscriber's viewers start on a keyframe (a fresh upstream subscription brings one).
                if self.local.contains_key(&room) {
                    self.actions.push_back(Action::Keyframe { room });
                } else if pulled_before {
                    self.keyframe_wanted(room, now);
                }
            }
            ControlMsg::Unsubscribe(u) => {
                let room = RoomKey::of(&u.room);
                let Some(export) = self.exports.get_mut(&room) else { return };
                if let Some(sub) = export.nodes.get_mut(from) {
                    set_kind(&mut sub.kinds, u.track, false);
                    if !sub.kinds.audio && !sub.kinds.video {
                        export.nodes.remove(from);
                    }
                }
                if export.nodes.is_empty() {
                    self.exports.remove(&room);
                    self.actions.push_back(Action::ExportStop { room });
                    self.refresh(room, &u.room, dir);
                }
            }
            ControlMsg::BitrateHint(b) => {
                // Only from subscribers; the home core takes the minimum with its own viewers' and other
                // nodes' (a relay's home core sends the result on upstream).
                let room = RoomKey::of(&b.room);
                if self.exports.get(&room).is_some_and(|e| e.nodes.contains_key(from)) {
                    self.actions.push_back(Action::Bitrate { room, bps: b.bps, from: from.clone() });
                }
            }
            ControlMsg::KeyframeRequest(k) => {
                let room = RoomKey::of(&k.room);
                if !self.exports.get(&room).is_some_and(|e| e.nodes.contains_key(from)) {
                    return;
                }
                if self.local.contains_key(&room) {
                    self.actions.push_back(Action::Keyframe { room });
                } else {
                    // Relayed: on up the chain to the source.
                    self.keyframe_wanted(room, now);
                }
            }
            _ => {}
        }
    }

    /// Whether a media datagram of `room` from `from` is one we asked for.
    pub fn accepts(&self, from: &NodeId, room: RoomKey) -> bool {
        self.wants.get(&room).is_some_and(|w| w.source.as_ref() == Some(from))
    }

    /// Nodes to send a `kind` packet of `room` to; counts the packet for each.
    pub fn export_targets(&mut self, room: RoomKey, kind: TrackKind, out: &mut Vec<NodeId>) {
        out.clear();
        let Some(e) = self.exports.get_mut(&room) else { return };
        for (node, sub) in e.nodes.iter_mut() {
            if sub.kinds.has(kind) {
                sub.packets += 1;
                out.push(node.clone());
            }
        }
    }

    // ---- queries ------------------------------------------------------------------------------------

    /// Rooms published or pulled here, with their video format (what membership gossips).
    pub fn rooms(&self) -> CarriedRooms {
        let entry = |room: &RoomKey, publisher| CarriedRoom { publisher, h264_profile_level_id: self.h264.get(room).copied() };
        let local = self.local.iter().map(|(room, name)| (name.clone(), entry(room, true)));
        // A room is carried once it has somewhere to come from.
        let pulled = self.wants.iter().filter(|(_, w)| w.source.is_some()).map(|(room, w)| (w.name.clone(), entry(room, false)));
        pulled.chain(local).collect()
    }

    /// Every room pulled from elsewhere: from which node, and why.
    pub fn subscriptions(&self) -> impl Iterator<Item = Pull<'_>> + '_ {
        self.wants.iter().map(|(room, w)| Pull {
            room: w.name.as_str(),
            from: w.source.as_ref(),
            relaying: self.exports.contains_key(room),
            viewers: self.viewers.contains_key(room),
        })
    }

    /// (room, subscribing node, its subscription) for every export.
    pub fn exports(&self) -> impl Iterator<Item = (&str, &NodeId, &Sub)> + '_ {
        self.exports.values().flat_map(|e| e.nodes.iter().map(move |(n, s)| (e.name.as_str(), n, s)))
    }

    // ---- internals ----------------------------------------------------------------------------------

    /// Starts or stops pulling `room`: pulled while it has no local publisher and has viewers here or
    /// subscribers downstream.
    fn refresh(&mut self, room: RoomKey, name: &str, dir: &impl Directory) {
        let needed =
            !self.local.contains_key(&room) && (self.viewers.contains_key(&room) || self.exports.contains_key(&room));
        match (needed, self.wants.contains_key(&room)) {
            (true, false) => {
                self.wants.insert(room, Want { name: name.to_string(), source: None, last_keyframe: None, last_bitrate: None });
                let found = dir.upstream(name).filter(|n| *n != self.me);
                self.switch_source(room, found);
            }
            (false, true) => {
                self.rooms_changed = true;
                self.switch_source(room, None);
                self.wants.remove(&room);
                if !self.local.contains_key(&room) {
                    self.h264.remove(&room);
                }
            }
            _ => {}
        }
    }

    fn switch_source(&mut self, room: RoomKey, source: Option<NodeId>) {
        let Some(w) = self.wants.get_mut(&room) else { return };
        if w.source == source {
            return;
        }
        let old = std::mem::replace(&mut w.source, source.clone());
        let name = w.name.clone();
        self.rooms_changed = true;
        w.last_keyframe = None;
        w.last_bitrate = None;
        if let Some(old) = old {
            for track in [TrackKind::Audio, TrackKind::Video] {
                let msg = ControlMsg::Unsubscribe(Unsubscribe { room: name.clone(), track });
                self.actions.push_back(Action::Send { to: old.clone(), msg });
            }
            self.actions.push_back(Action::IngestStop { room });
        }
        if let Some(new) = source {
            tracing::debug!(room = %name, from = %new, "pulling room");
            self.subscribe_msgs(&new, &name);
            self.actions.push_back(Action::IngestStart { room, name, from: new });
        }
    }

    fn subscribe_msgs(&mut self, to: &NodeId, name: &str) {
        let channel = RoomKey::of(name).0 as u32;
        for track in [TrackKind::Audio, TrackKind::Video] {
            let msg = ControlMsg::Subscribe(Subscribe { room: name.to_string(), track, channel });
            self.actions.push_back(Action::Send { to: to.clone(), msg });
        }
    }
}

fn set_kind(kinds: &mut TrackKinds, kind: TrackKind, on: bool) {
    match kind {
        TrackKind::Audio => kinds.audio = on,
        TrackKind::Video => kinds.video = on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// A directory where every room comes from `node` (or from nowhere).
    fn at(node: Option<&str>) -> impl Fn(&str) -> Option<NodeId> {
        let node = node.map(id);
        move |_: &str| node.clone()
    }

    fn drain(c: &mut Cascade) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    fn subs_to(actions: &[Action], node: &str) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send { to, msg: ControlMsg::Subscribe(_) } if to.as_str() == node))
            .count()
    }

    fn unsubs_to(actions: &[Action], node: &str) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send { to, msg: ControlMsg::Unsubscribe(_) } if to.as_str() == node))
            .count()
    }

    #[test]
    fn viewers_subscribe_once_follow_the_publisher_and_unsubscribe() {
        let mut c = Cascade::new(id("b"));
        let r = RoomKey::of("r");
        // Viewers but no host known yet: nothing to subscribe to.
        c.room_state(r, "r", false, true, None, &at(None));
        assert!(drain(&mut c).is_empty());
        // Membership learns that a hosts it.
        c.reconcile(&at(Some("a")));
        let a = drain(&mut c);
        assert_eq!(subs_to(&a, "a"), 2, "audio + video: {a:?}");
        assert!(a.contains(&Action::IngestStart { room: r, name: "r".into(), from: id("a") }));
        assert!(c.accepts(&id("a"), r));
        assert!(!c.accepts(&id("x"), r));
        // The home core reports again (another viewer core joined): no second subscription.
        c.room_state(r, "r", false, true, None, &at(Some("a")));
        c.reconcile(&at(Some("a")));
        assert!(drain(&mut c).is_empty());
        // a dies, the publisher re-publishes on c.
        c.reconcile(&at(None));
        let a2 = drain(&mut c);
        assert_eq!(unsubs_to(&a2, "a"), 2);
        assert!(a2.contains(&Action::IngestStop { room: r }));
        assert!(!c.accepts(&id("a"), r));
        c.reconcile(&at(Some("c")));
        let a3 = drain(&mut c);
        assert_eq!(subs_to(&a3, "c"), 2);
        assert!(c.accepts(&id("c"), r));
        // Link to c flaps: subscriptions are re-sent.
        c.link_up(&id("c"));
        assert_eq!(subs_to(&drain(&mut c), "c"), 2);
        // The last viewer leaves.
        c.room_state(r, "r", false, false, None, &at(Some("c")));
        let a4 = drain(&mut c);
        assert_eq!(unsubs_to(&a4, "c"), 2);
        assert!(a4.contains(&Action::IngestStop { room: r }));
        assert_eq!(c.subscriptions().count(), 0);
    }

    #[test]
    fn local_publisher_wins_and_is_gossiped() {
        let mut c = Cascade::new(id("b"));
        let r = RoomKey::of("r");
        c.room_state(r, "r", false, true, None, &at(Some("a")));
        drain(&mut c);
        // The publisher moved here.
        c.room_state(r, "r", true, false, None, &at(Some("b")));
        let a = drain(&mut c);
        assert_eq!(unsubs_to(&a, "a"), 2);
        assert!(a.iter().any(|x| matches!(x, Action::Rooms(h) if h.get("r").is_some_and(|r| r.publisher))));
        // Never subscribe to ourselves.
        let mut c = Cascade::new(id("b"));
        c.room_state(r, "r", false, true, None, &at(Some("b")));
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn exports_count_one_copy_per_node_and_end_with_the_last_subscriber() {
        let mut c = Cascade::new(id("a"));
        let r = RoomKey::of("r");
        c.room_state(r, "r", true, false, None, &at(None));
        drain(&mut c);
        for node in ["b", "c"] {
            for track in [TrackKind::Audio, TrackKind::Video] {
                let msg = ControlMsg::Subscribe(Subscribe { room: "r".into(), track, channel: 1 });
                c.on_message(&id(node), &msg, Instant::now(), &at(None));
            }
        }
        let a = drain(&mut c);
        assert_eq!(a.iter().filter(|x| matches!(x, Action::ExportStart { .. })).count(), 1, "{a:?}");
        let mut out = Vec::new();
        c.export_targets(r, TrackKind::Video, &mut out);
        assert_eq!(out, vec![id("b"), id("c")]);
        // b only wants audio now.
        let msg = &ControlMsg::Unsubscribe(Unsubscribe { room: "r".into(), track: TrackKind::Video });
        c.on_message(&id("b"), &msg, Instant::now(), &at(None));
        c.export_targets(r, TrackKind::Video, &mut out);
        assert_eq!(out, vec![id("c")]);
        // Keyframe requests only from subscribers.
        drain(&mut c);
        let msg = &ControlMsg::KeyframeRequest(KeyframeRequest { room: "r".into() });
        c.on_message(&id("z"), &msg, Instant::now(), &at(None));
        assert!(drain(&mut c).is_empty());
        let msg = &ControlMsg::KeyframeRequest(KeyframeRequest { room: "r".into() });
        c.on_message(&id("c"), &msg, Instant::now(), &at(None));
        assert_eq!(drain(&mut c), vec![Action::Keyframe { room: r }]);
        // c dies; b unsubscribes audio: export ends once.
        c.node_gone(&id("c"), &at(None));
        assert!(drain(&mut c).is_empty());
        let msg = &ControlMsg::Unsubscribe(Unsubscribe { room: "r".into(), track: TrackKind::Audio });
        c.on_message(&id("b"), &msg, Instant::now(), &at(None));
        assert_eq!(drain(&mut c), vec![Action::ExportStop { room: r }]);
        let counts: Vec<u64> = c.exports().map(|(_, _, s)| s.packets).collect();
        assert!(counts.is_empty());
    }

    #[test]
    fn keyframe_requests_go_upstream_rate_limited() {
        let mut c = Cascade::new(id("b"));
        let r = RoomKey::of("r");
        let t = Instant::now();
        c.keyframe_wanted(r, t); // not wanted: ignored
        c.room_state(r, "r", false, true, None, &at(Some("a")));
        drain(&mut c);
        c.keyframe_wanted(r, t);
        c.keyframe_wanted(r, t + Duration::from_millis(100));
        c.keyframe_wanted(r, t + Duration::from_millis(400));
        let a = drain(&mut c);
        assert_eq!(a.iter().filter(|x| matches!(x, Action::Send { msg: ControlMsg::KeyframeRequest(_), .. })).count(), 2);
    }

    #[test]
    fn bitrate_hints_go_upstream_rate_limited_and_reach_the_home_core_only_from_subscribers() {
        // Downstream node b pulls r from a.
        let mut b = Cascade::new(id("b"));
        let r = RoomKey::of("r");
        let t = Instant::now();
        b.bitrate_wanted(r, 500_000, t); // not pulled: ignored
        assert!(drain(&mut b).is_empty());
        b.room_state(r, "r", false, true, None, &at(Some("a")));
        drain(&mut b);
        b.bitrate_wanted(r, 500_000, t);
        b.bitrate_wanted(r, 400_000, t + Duration::from_millis(300));
        b.bitrate_wanted(r, 400_000, t + Duration::from_millis(1000));
        let sent: Vec<_> = drain(&mut b)
            .into_iter()
            .filter_map(|x| match x {
                Action::Send { to, msg: ControlMsg::BitrateHint(h) } => Some((to, h.bps)),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![(id("a"), 500_000), (id("a"), 400_000)]);

        // Source node a: only a subscriber's hint reaches the home core.
        let mut a = Cascade::new(id("a"));
        a.room_state(r, "r", true, false, None, &at(None));
        let hint = ControlMsg::BitrateHint(BitrateHint { room: "r".into(), bps: 400_000 });
        a.on_message(&id("b"), &hint, t, &at(None));
        drain(&mut a);
        let msg = ControlMsg::Subscribe(Subscribe { room: "r".into(), track: TrackKind::Video, channel: 1 });
        a.on_message(&id("b"), &msg, t, &at(None));
        drain(&mut a);
        a.on_message(&id("b"), &hint, t, &at(None));
        a.on_message(&id("c"), &hint, t, &at(None));
        assert_eq!(drain(&mut a), vec![Action::Bitrate { room: r, bps: 400_000, from: id("b") }]);
    }

    // ---- several nodes: relays per zone ------------------------------------------------------------

    /// Membership as every node sees it (one shared view): zones, live nodes, the publisher's node.
    #[derive(Default)]
    struct World {
        zones: BTreeMap<NodeId, &'static str>,
        dead: std::collections::BTreeSet<NodeId>,
        host: Option<NodeId>,
    }

    struct Topo<'a> {
        world: &'a World,
        me: NodeId,
    }

    impl Directory for Topo<'_> {
        fn upstream(&self, room: &str) -> Option<NodeId> {
            let w = self.world;
            let host = w.host.as_ref().filter(|h| !w.dead.contains(*h))?;
            let my_zone = w.zones[&self.me];
            let peers = w.zones.iter().filter(|(n, z)| **z == my_zone && !w.dead.contains(*n)).map(|(n, _)| n);
            relay::upstream(&self.me, my_zone, room, host, w.zones[host], peers)
        }
    }

    /// Nodes running a `Cascade` each, with messages delivered between them until all are quiet.
    struct Net {
        world: World,
        nodes: BTreeMap<NodeId, Cascade>,
        /// Home-core instructions per node, in order.
        home: BTreeMap<NodeId, Vec<Action>>,
        now: Instant,
    }

    impl Net {
        fn new(zones: &[(&str, &'static str)]) -> Self {
            let mut world = World::default();
            let mut nodes = BTreeMap::new();
            for (n, z) in zones {
                world.zones.insert(id(n), *z);
                nodes.insert(id(n), Cascade::new(id(n)));
            }
            Self { world, nodes, home: BTreeMap::new(), now: Instant::now() }
        }

        fn with<R>(&mut self, n: &str, f: impl FnOnce(&mut Cascade, &Topo) -> R) -> R {
            let topo = Topo { world: &self.world, me: id(n) };
            let r = f(self.nodes.get_mut(&id(n)).unwrap(), &topo);
            self.run();
            r
        }

        fn run(&mut self) {
            for _ in 0..100 {
                let mut mail = Vec::new();
                for (me, c) in self.nodes.iter_mut() {
                    while let Some(a) = c.poll_action() {
                        match a {
                            Action::Send { to, msg } => mail.push((me.clone(), to, msg)),
                            Action::Rooms(_) => {}
                            other => self.home.entry(me.clone()).or_default().push(other),
                        }
                    }
                }
                if mail.is_empty() {
                    return;
                }
                for (from, to, msg) in mail {
                    if self.world.dead.contains(&to) || self.world.dead.contains(&from) {
                        continue;
                    }
                    let topo = Topo { world: &self.world, me: to.clone() };
                    if let Some(c) = self.nodes.get_mut(&to) {
                        c.on_message(&from, &msg, self.now, &topo);
                    }
                }
            }
            panic!("messages never settle");
        }

        /// Where `n` pulls `room` from.
        fn from(&self, n: &str, room: &str) -> Option<NodeId> {
            self.nodes[&id(n)].subscriptions().find(|p| p.room == room).and_then(|p| p.from.cloned())
        }

        /// Nodes `n` exports `room` to.
        fn to(&self, n: &str, room: &str) -> Vec<NodeId> {
            self.nodes[&id(n)].exports().filter(|(r, _, _)| *r == room).map(|(_, n, _)| n.clone()).collect()
        }

        fn kill(&mut self, n: &str) {
            self.world.dead.insert(id(n));
            let others: Vec<NodeId> = self.nodes.keys().filter(|k| !self.world.dead.contains(*k)).cloned().collect();
            for o in others {
                let topo = Topo { world: &self.world, me: o.clone() };
                let c = self.nodes.get_mut(&o).unwrap();
                c.node_gone(&id(n), &topo);
                c.reconcile(&topo);
            }
            self.run();
        }

        fn home_of(&mut self, n: &str) -> Vec<Action> {
            self.home.remove(&id(n)).unwrap_or_default()
        }
    }

    #[test]
    fn one_relay_per_zone_pair_keyframes_go_all_the_way_up_and_relays_repoint() {
        let mut net = Net::new(&[("a", "z1"), ("e", "z1"), ("b", "z2"), ("c", "z2"), ("d", "z2")]);
        let room = "cast";
        let r = RoomKey::of(room);
        net.world.host = Some(id("a"));
        net.with("a", |c, t| c.room_state(r, room, true, false, None, t));
        for n in ["e", "b", "c", "d"] {
            net.with(n, |c, t| c.room_state(r, room, false, true, None, t));
        }
        let z2 = [id("b"), id("c"), id("d")];
        let relay = relay::relay(room, &z2).unwrap().clone();
        let others: Vec<NodeId> = z2.iter().filter(|n| **n != relay).cloned().collect();
        // The source sends one copy into z2 (to the relay) and one to its own zone's e.
        assert_eq!(net.to("a", room), vec![relay.clone(), id("e")], "exports in id order; the relay is b, c or d");
        assert_eq!(net.from("e", room), Some(id("a")), "same zone: directly to the source");
        assert_eq!(net.from(relay.as_str(), room), Some(id("a")));
        assert_eq!(net.to(relay.as_str(), room), others);
        for o in &others {
            assert_eq!(net.from(o.as_str(), room), Some(relay.clone()));
            assert!(net.nodes[o].accepts(&relay, r) && !net.nodes[o].accepts(&id("a"), r));
            assert!(net.to(o.as_str(), room).is_empty());
        }
        // The relay registers the cascade as its publisher and exports it.
        let h = net.home_of(relay.as_str());
        assert!(h.contains(&Action::ExportStart { room: r, name: room.into() }), "{h:?}");
        assert!(h.contains(&Action::IngestStart { room: r, name: room.into(), from: id("a") }), "{h:?}");
        net.home_of("a");

        // A viewer behind the relay needs a keyframe: viewer node -> relay -> source's home core.
        net.now += Duration::from_secs(1);
        let now = net.now;
        net.with(others[0].as_str(), |c, _| c.keyframe_wanted(r, now));
        assert_eq!(net.home_of("a"), vec![Action::Keyframe { room: r }]);
        // The other viewer node asks too, right after: the relay sends one request up per 300 ms.
        net.with(others[1].as_str(), |c, _| c.keyframe_wanted(r, now));
        assert!(net.home_of("a").is_empty());
        net.now += Duration::from_millis(400);
        let now = net.now;
        net.with(others[1].as_str(), |c, _| c.keyframe_wanted(r, now));
        assert_eq!(net.home_of("a"), vec![Action::Keyframe { room: r }]);
        assert!(net.home_of(relay.as_str()).is_empty(), "a relay does not ask its own home core");

        // The relay's own viewers leave: it keeps pulling for the others.
        net.with(relay.as_str(), |c, t| c.room_state(r, room, false, false, None, t));
        assert_eq!(net.from(relay.as_str(), room), Some(id("a")));
        assert_eq!(net.to(relay.as_str(), room), others);
        assert!(!net.home_of(relay.as_str()).contains(&Action::IngestStop { room: r }));

        // kill -9 the relay: the survivors agree on a new one, which pulls from the source.
        net.kill(relay.as_str());
        let relay2 = relay::relay(room, &others).unwrap().clone();
        let last = others.iter().find(|n| **n != relay2).unwrap().clone();
        assert_eq!(net.from(relay2.as_str(), room), Some(id("a")));
        assert_eq!(net.from(last.as_str(), room), Some(relay2.clone()));
        assert_eq!(net.to(relay2.as_str(), room), vec![last.clone()]);
        assert_eq!(net.to("a", room), vec![relay2.clone(), id("e")]);
        let h = net.home_of(last.as_str());
        assert!(h.contains(&Action::IngestStart { room: r, name: room.into(), from: relay2.clone() }), "{h:?}");

        // The new relay's viewers leave, then the last node's: everything is torn down.
        net.with(relay2.as_str(), |c, t| c.room_state(r, room, false, false, None, t));
        assert_eq!(net.from(relay2.as_str(), room), Some(id("a")), "still relaying for {last}");
        net.with(last.as_str(), |c, t| c.room_state(r, room, false, false, None, t));
        assert_eq!(net.from(relay2.as_str(), room), None);
        assert!(net.nodes[&relay2].subscriptions().next().is_none());
        assert_eq!(net.to("a", room), vec![id("e")]);
        let h = net.home_of(relay2.as_str());
        assert!(h.contains(&Action::ExportStop { room: r }) && h.contains(&Action::IngestStop { room: r }), "{h:?}");
    }

    #[test]
    fn a_relay_never_pulls_from_its_own_zone_and_a_restarted_node_is_served_again() {
        let mut net = Net::new(&[("a", "z1"), ("b", "z2"), ("c", "z2")]);
        let room = "r";
        let r = RoomKey::of(room);
        net.world.host = Some(id("a"));
        net.with("a", |c, t| c.room_state(r, room, true, false, None, t));
        let z2 = [id("b"), id("c")];
        let relay = relay::relay(room, &z2).unwrap().clone();
        let other = z2.iter().find(|n| **n != relay).unwrap().clone();
        // Only the non-relay node has viewers: the relay pulls for it without any of its own.
        net.with(other.as_str(), |c, t| c.room_state(r, room, false, true, None, t));
        assert_eq!(net.from(other.as_str(), room), Some(relay.clone()));
        assert_eq!(net.from(relay.as_str(), room), Some(id("a")));
        let p = net.nodes[&relay].subscriptions().next().unwrap();
        assert!(p.relaying && !p.viewers);
        // The publisher moves into z2 (to the non-relay node): everyone in z2 goes to it directly.
        net.world.host = Some(other.clone());
        net.with("a", |c, t| c.room_state(r, room, false, false, None, t));
        net.with(other.as_str(), |c, t| c.room_state(r, room, true, false, None, t));
        net.with(relay.as_str(), |c, t| c.reconcile(t));
        assert_eq!(net.from(other.as_str(), room), None);
        assert!(net.nodes[&relay].subscriptions().next().is_none(), "nothing left to relay");
        // a (z1) gets viewers: it is z1's relay and pulls straight from the source zone.
        net.with("a", |c, t| c.room_state(r, room, false, true, None, t));
        assert_eq!(net.from("a", room), Some(other.clone()));
        // The relay restarts (link to it comes back): subscriptions to it are re-sent.
        net.world.host = Some(id("a"));
        net.with(other.as_str(), |c, t| c.room_state(r, room, false, true, None, t));
        net.with("a", |c, t| c.room_state(r, room, true, false, None, t));
        net.with(other.as_str(), |c, t| c.reconcile(t));
        assert_eq!(net.from(other.as_str(), room), Some(relay.clone()));
        net.nodes.insert(relay.clone(), Cascade::new(relay.clone())); // a new process: no state
        net.with(other.as_str(), |c, _| c.link_up(&relay));
        assert_eq!(net.from(relay.as_str(), room), Some(id("a")));
        assert_eq!(net.to(relay.as_str(), room), vec![other.clone()]);
    }
}
