//! Cascading decisions, sans-IO: which node this node subscribes to for each room its viewers want, and
//! which nodes subscribed to the rooms published here.
//!
//! Why it is separate from the shell: the rules (subscribe once per room, follow the publisher when it
//! moves, drop a dead node's subscriptions, accept media only from the node we subscribed to) are where
//! cascading goes wrong, so they live here, driven by plain method calls and testable without sockets.
//!
//! Inputs come from three places:
//! - the room's home core ([`Cascade::room_state`]): does the room have a local publisher, and does it
//!   have viewers here without one (so media must come from elsewhere);
//! - membership ([`Cascade::reconcile`] with a lookup of the node hosting a room; [`Cascade::node_gone`]);
//! - links ([`Cascade::on_message`] for Subscribe/Unsubscribe/KeyframeRequest, [`Cascade::link_up`]).
//!
//! Outputs are [`Action`]s: messages to send on a link, and instructions for the room's home core — start
//! or stop ingesting the room from the cluster (an *external publisher*, like RTMP), start or stop exporting
//! the room's packets to the cluster (the cluster becomes one more "viewer core" of the room).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use sfumato_cluster::{
    ControlMsg, HostedRooms, KeyframeRequest, NodeId, Subscribe, TrackKind, TrackKinds, Unsubscribe,
};
use sfumato_media::room::RoomKey;

/// At most one upstream keyframe request per room this often (the publisher's node rate-limits its PLIs too).
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);

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
    /// The rooms published on this node changed: gossip them.
    Hosted(HostedRooms),
}

#[derive(Debug)]
struct Want {
    name: String,
    source: Option<NodeId>,
    last_keyframe: Option<Instant>,
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

/// See the module docs.
#[derive(Debug)]
pub struct Cascade {
    me: NodeId,
    /// Rooms with viewers here and no local publisher.
    wants: BTreeMap<RoomKey, Want>,
    /// Rooms with a local publisher.
    local: BTreeMap<RoomKey, String>,
    /// Our rooms other nodes subscribed to.
    exports: HashMap<RoomKey, Export>,
    actions: VecDeque<Action>,
}

impl Cascade {
    pub fn new(me: NodeId) -> Self {
        Self { me, wants: BTreeMap::new(), local: BTreeMap::new(), exports: HashMap::new(), actions: VecDeque::new() }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ---- from home cores ----------------------------------------------------------------------------

    /// The home core's view of a room changed. `host` finds the live node hosting a room's publisher.
    pub fn room_state(
        &mut self,
        room: RoomKey,
        name: &str,
        local_publisher: bool,
        wants_remote: bool,
        host: impl Fn(&str) -> Option<NodeId>,
    ) {
        let hosted_before = self.local.contains_key(&room);
        if local_publisher {
            self.local.insert(room, name.to_string());
        } else {
            self.local.remove(&room);
        }
        if hosted_before != local_publisher {
            self.actions.push_back(Action::Hosted(self.hosted()));
        }
        match (wants_remote && !local_publisher, self.wants.contains_key(&room)) {
            (true, false) => {
                self.wants.insert(room, Want { name: name.to_string(), source: None, last_keyframe: None });
                let found = host(name).filter(|n| *n != self.me);
                self.switch_source(room, found);
            }
            (false, true) => {
                self.switch_source(room, None);
                self.wants.remove(&room);
            }
            _ => {}
        }
    }

    /// A viewer of a cascaded room needs a keyframe: ask the source node (rate-limited).
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

    // ---- from membership ----------------------------------------------------------------------------

    /// Membership changed: follow every wanted room's publisher to wherever it is now.
    pub fn reconcile(&mut self, host: impl Fn(&str) -> Option<NodeId>) {
        let changes: Vec<(RoomKey, Option<NodeId>)> = self
            .wants
            .iter()
            .filter_map(|(room, w)| {
                let now = host(&w.name).filter(|n| *n != self.me);
                (now != w.source).then_some((*room, now))
            })
            .collect();
        for (room, source) in changes {
            self.switch_source(room, source);
        }
    }

    /// `node` is gone (link down, dead, or restarted): its subscriptions to our rooms end. Rooms we get from
    /// it keep their source until membership moves them ([`Self::reconcile`]); a link that comes back
    /// re-subscribes ([`Self::link_up`]).
    pub fn node_gone(&mut self, node: &NodeId) {
        let rooms: Vec<RoomKey> = self.exports.iter().filter(|(_, e)| e.nodes.contains_key(node)).map(|(r, _)| *r).collect();
        for room in rooms {
            if let Some(e) = self.exports.get_mut(&room) {
                e.nodes.remove(node);
                if e.nodes.is_empty() {
                    self.exports.remove(&room);
                    self.actions.push_back(Action::ExportStop { room });
                }
            }
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
    pub fn on_message(&mut self, from: &NodeId, msg: &ControlMsg) {
        match msg {
            ControlMsg::Subscribe(s) => {
                let room = RoomKey::of(&s.room);
                let export = self.exports.entry(room).or_insert_with(|| Export { name: s.room.clone(), nodes: BTreeMap::new() });
                let first = export.nodes.is_empty();
                let sub = export.nodes.entry(from.clone()).or_default();
                set_kind(&mut sub.kinds, s.track, true);
                if first {
                    self.actions.push_back(Action::ExportStart { room, name: s.room.clone() });
                }
                // The new subscriber's viewers start on a keyframe.
                self.actions.push_back(Action::Keyframe { room });
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
                }
            }
            ControlMsg::KeyframeRequest(k) => {
                let room = RoomKey::of(&k.room);
                if self.exports.get(&room).is_some_and(|e| e.nodes.contains_key(from)) {
                    self.actions.push_back(Action::Keyframe { room });
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

    /// Rooms published here (what membership gossips).
    pub fn hosted(&self) -> HostedRooms {
        self.local.values().map(|n| (n.clone(), TrackKinds { audio: true, video: true })).collect()
    }

    /// (room, source node) for every room wanted from elsewhere.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, Option<&NodeId>)> + '_ {
        self.wants.values().map(|w| (w.name.as_str(), w.source.as_ref()))
    }

    /// (room, subscribing node, its subscription) for every export.
    pub fn exports(&self) -> impl Iterator<Item = (&str, &NodeId, &Sub)> + '_ {
        self.exports.values().flat_map(|e| e.nodes.iter().map(move |(n, s)| (e.name.as_str(), n, s)))
    }

    // ---- internals ----------------------------------------------------------------------------------

    fn switch_source(&mut self, room: RoomKey, source: Option<NodeId>) {
        let Some(w) = self.wants.get_mut(&room) else { return };
        if w.source == source {
            return;
        }
        let old = std::mem::replace(&mut w.source, source.clone());
        let name = w.name.clone();
        w.last_keyframe = None;
        if let Some(old) = old {
            for track in [TrackKind::Audio, TrackKind::Video] {
                let msg = ControlMsg::Unsubscribe(Unsubscribe { room: name.clone(), track });
                self.actions.push_back(Action::Send { to: old.clone(), msg });
            }
            self.actions.push_back(Action::IngestStop { room });
        }
        if let Some(new) = source {
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
        c.room_state(r, "r", false, true, |_| None);
        assert!(drain(&mut c).is_empty());
        // Membership learns that a hosts it.
        c.reconcile(|_| Some(id("a")));
        let a = drain(&mut c);
        assert_eq!(subs_to(&a, "a"), 2, "audio + video: {a:?}");
        assert!(a.contains(&Action::IngestStart { room: r, name: "r".into(), from: id("a") }));
        assert!(c.accepts(&id("a"), r));
        assert!(!c.accepts(&id("x"), r));
        // The home core reports again (another viewer core joined): no second subscription.
        c.room_state(r, "r", false, true, |_| Some(id("a")));
        c.reconcile(|_| Some(id("a")));
        assert!(drain(&mut c).is_empty());
        // a dies, the publisher re-publishes on c.
        c.reconcile(|_| None);
        let a2 = drain(&mut c);
        assert_eq!(unsubs_to(&a2, "a"), 2);
        assert!(a2.contains(&Action::IngestStop { room: r }));
        assert!(!c.accepts(&id("a"), r));
        c.reconcile(|_| Some(id("c")));
        let a3 = drain(&mut c);
        assert_eq!(subs_to(&a3, "c"), 2);
        assert!(c.accepts(&id("c"), r));
        // Link to c flaps: subscriptions are re-sent.
        c.link_up(&id("c"));
        assert_eq!(subs_to(&drain(&mut c), "c"), 2);
        // The last viewer leaves.
        c.room_state(r, "r", false, false, |_| Some(id("c")));
        let a4 = drain(&mut c);
        assert_eq!(unsubs_to(&a4, "c"), 2);
        assert!(a4.contains(&Action::IngestStop { room: r }));
        assert_eq!(c.subscriptions().count(), 0);
    }

    #[test]
    fn local_publisher_wins_and_is_gossiped() {
        let mut c = Cascade::new(id("b"));
        let r = RoomKey::of("r");
        c.room_state(r, "r", false, true, |_| Some(id("a")));
        drain(&mut c);
        // The publisher moved here.
        c.room_state(r, "r", true, false, |_| Some(id("b")));
        let a = drain(&mut c);
        assert_eq!(unsubs_to(&a, "a"), 2);
        assert!(a.iter().any(|x| matches!(x, Action::Hosted(h) if h.contains_key("r"))));
        // Never subscribe to ourselves.
        let mut c = Cascade::new(id("b"));
        c.room_state(r, "r", false, true, |_| Some(id("b")));
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn exports_count_one_copy_per_node_and_end_with_the_last_subscriber() {
        let mut c = Cascade::new(id("a"));
        let r = RoomKey::of("r");
        c.room_state(r, "r", true, false, |_| None);
        drain(&mut c);
        for node in ["b", "c"] {
            for track in [TrackKind::Audio, TrackKind::Video] {
                c.on_message(&id(node), &ControlMsg::Subscribe(Subscribe { room: "r".into(), track, channel: 1 }));
            }
        }
        let a = drain(&mut c);
        assert_eq!(a.iter().filter(|x| matches!(x, Action::ExportStart { .. })).count(), 1, "{a:?}");
        let mut out = Vec::new();
        c.export_targets(r, TrackKind::Video, &mut out);
        assert_eq!(out, vec![id("b"), id("c")]);
        // b only wants audio now.
        c.on_message(&id("b"), &ControlMsg::Unsubscribe(Unsubscribe { room: "r".into(), track: TrackKind::Video }));
        c.export_targets(r, TrackKind::Video, &mut out);
        assert_eq!(out, vec![id("c")]);
        // Keyframe requests only from subscribers.
        drain(&mut c);
        c.on_message(&id("z"), &ControlMsg::KeyframeRequest(KeyframeRequest { room: "r".into() }));
        assert!(drain(&mut c).is_empty());
        c.on_message(&id("c"), &ControlMsg::KeyframeRequest(KeyframeRequest { room: "r".into() }));
        assert_eq!(drain(&mut c), vec![Action::Keyframe { room: r }]);
        // c dies; b unsubscribes audio: export ends once.
        c.node_gone(&id("c"));
        assert!(drain(&mut c).is_empty());
        c.on_message(&id("b"), &ControlMsg::Unsubscribe(Unsubscribe { room: "r".into(), track: TrackKind::Audio }));
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
        c.room_state(r, "r", false, true, |_| Some(id("a")));
        drain(&mut c);
        c.keyframe_wanted(r, t);
        c.keyframe_wanted(r, t + Duration::from_millis(100));
        c.keyframe_wanted(r, t + Duration::from_millis(400));
        let a = drain(&mut c);
        assert_eq!(a.iter().filter(|x| matches!(x, Action::Send { msg: ControlMsg::KeyframeRequest(_), .. })).count(), 2);
    }
}
