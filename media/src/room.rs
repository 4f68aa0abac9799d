//! Rooms: who publishes, and which cores have viewers.
//!
//! A room lives on its *home core* (`RoomKey::home_core`). The home core's [`RoomRouter`] knows the room's
//! publisher and the set of cores with at least one viewer, so each publisher packet is handed to every such
//! core exactly once. Each core keeps its own [`LocalViewers`] list and tells the home core when its first
//! viewer of a room arrives and when its last one leaves. Pure data structures: no sockets, no clocks.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::packet::{ForwardedPacket, PayloadParams, TrackKind};

/// Identity of a room, the same on every core (a fixed hash of its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(pub u64);

impl RoomKey {
    pub fn of(name: &str) -> Self {
        // SipHash with fixed keys: stable across cores and runs.
        let mut h = std::hash::DefaultHasher::new();
        name.hash(&mut h);
        RoomKey(h.finish())
    }

    pub fn home_core(self, cores: usize) -> usize {
        (self.0 % cores.max(1) as u64) as usize
    }
}

/// A WebRTC session, unique on the node; the owning core is encoded in the top byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Hasher for maps keyed by [`SessionId`]: ids are assigned by the core itself (a counter), never chosen by
/// a peer, so a multiplicative hash is safe and much cheaper than SipHash on the per-packet path.
#[derive(Default, Clone, Copy)]
pub struct SessionIdHasher(u64);

impl std::hash::Hasher for SessionIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 32;
    }
}

/// A `HashMap` keyed by [`SessionId`] with [`SessionIdHasher`].
pub type SessionMap<V> = HashMap<SessionId, V, std::hash::BuildHasherDefault<SessionIdHasher>>;

impl SessionId {
    pub fn new(core: usize, counter: u64) -> Self {
        SessionId(((core as u64 & 0xff) << 56) | (counter & 0x00ff_ffff_ffff_ffff))
    }

    pub fn core(self) -> usize {
        (self.0 >> 56) as usize
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoomError {
    #[error("room already has a publisher")]
    AlreadyPublished,
}

#[derive(Debug)]
struct RoomEntry {
    name: String,
    publisher: Option<(SessionId, u64)>,
    /// Cores (other than home) that have at least one viewer.
    viewer_cores: Vec<usize>,
    /// Format of the video the room carries now (from its packets), for new viewers' SDP answers.
    video: Option<PayloadParams>,
}

/// What changed in the room directory, for events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomChange {
    Created(RoomKey, String),
    Destroyed(RoomKey, String),
}

/// The room directory of one home core.
#[derive(Debug, Default)]
pub struct RoomRouter {
    rooms: HashMap<RoomKey, RoomEntry>,
    next_source: u64,
}

impl RoomRouter {
    pub fn new(core: usize) -> Self {
        // Sources are unique per node: core in the top byte.
        Self { rooms: HashMap::new(), next_source: (core as u64) << 56 }
    }

    fn entry(&mut self, key: RoomKey, name: &str, changes: &mut Vec<RoomChange>) -> &mut RoomEntry {
        self.rooms.entry(key).or_insert_with(|| {
            changes.push(RoomChange::Created(key, name.to_string()));
            RoomEntry { name: name.to_string(), publisher: None, viewer_cores: Vec::new(), video: None }
        })
    }

    /// Registers `session` as the room's publisher; returns its source id (new for every publish).
    pub fn publish(
        &mut self,
        key: RoomKey,
        name: &str,
        session: SessionId,
        changes: &mut Vec<RoomChange>,
    ) -> Result<u64, RoomError> {
        self.next_source += 1;
        let source = self.next_source;
        let room = self.entry(key, name, changes);
        if room.publisher.is_some() {
            self.destroy_if_idle(key, changes);
            return Err(RoomError::AlreadyPublished);
        }
        room.publisher = Some((session, source));
        Ok(source)
    }

    /// Removes the publisher if it is `session`.
    pub fn unpublish(&mut self, key: RoomKey, session: SessionId, changes: &mut Vec<RoomChange>) {
        if let Some(room) = self.rooms.get_mut(&key) {
            if matches!(room.publisher, Some((s, _)) if s == session) {
                room.publisher = None;
                room.video = None;
            }
        }
        self.destroy_if_idle(key, changes);
    }

    /// Core `core` now has viewers of the room (idempotent).
    pub fn add_viewer_core(&mut self, key: RoomKey, name: &str, core: usize, changes: &mut Vec<RoomChange>) {
        let room = self.entry(key, name, changes);
        if !room.viewer_cores.contains(&core) {
            room.viewer_cores.push(core);
            room.viewer_cores.sort_unstable();
        }
    }

    /// Core `core` has no viewers of the room anymore.
    pub fn remove_viewer_core(&mut self, key: RoomKey, core: usize, changes: &mut Vec<RoomChange>) {
        if let Some(room) = self.rooms.get_mut(&key) {
            room.viewer_cores.retain(|&c| c != core);
        }
        self.destroy_if_idle(key, changes);
    }

    fn destroy_if_idle(&mut self, key: RoomKey, changes: &mut Vec<RoomChange>) {
        if let Some(room) = self.rooms.get(&key) {
            if room.publisher.is_none() && room.viewer_cores.is_empty() {
                if let Some(room) = self.rooms.remove(&key) {
                    changes.push(RoomChange::Destroyed(key, room.name));
                }
            }
        }
    }

    /// The room's publisher session and source id.
    pub fn publisher(&self, key: RoomKey) -> Option<(SessionId, u64)> {
        self.rooms.get(&key).and_then(|r| r.publisher)
    }

    /// Cores the room's packets must be handed to (each once).
    pub fn viewer_cores(&self, key: RoomKey) -> &[usize] {
        self.rooms.get(&key).map(|r| r.viewer_cores.as_slice()).unwrap_or(&[])
    }

    /// [`viewer_cores`](Self::viewer_cores) for one of the room's packets, noting the format of its video
    /// on the way (a comparison per packet, not per viewer); `true` if that format changed.
    pub fn route(&mut self, key: RoomKey, packet: &ForwardedPacket) -> (&[usize], bool) {
        let Some(room) = self.rooms.get_mut(&key) else { return (&[], false) };
        let changed = packet.kind() == TrackKind::Video && room.video.is_none_or(|v| v != packet.params);
        if changed {
            room.video = Some(packet.params);
        }
        (&room.viewer_cores, changed)
    }

    /// The format of the room's current video (None before its first video packet and after its
    /// publisher left): what a new viewer's answer should offer.
    pub fn video_format(&self, key: RoomKey) -> Option<PayloadParams> {
        self.rooms.get(&key).and_then(|r| r.video)
    }

    pub fn name(&self, key: RoomKey) -> Option<&str> {
        self.rooms.get(&key).map(|r| r.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

/// The viewers one core serves, by room.
#[derive(Debug, Default)]
pub struct LocalViewers {
    rooms: HashMap<RoomKey, Vec<SessionId>>,
}

impl LocalViewers {
    /// Adds a viewer; returns `true` if it is this core's first viewer of the room.
    pub fn add(&mut self, key: RoomKey, session: SessionId) -> bool {
        let list = self.rooms.entry(key).or_default();
        let first = list.is_empty();
        if !list.contains(&session) {
            list.push(session);
        }
        first
    }

    /// Removes a viewer; returns `true` if it was this core's last viewer of the room.
    pub fn remove(&mut self, key: RoomKey, session: SessionId) -> bool {
        let Some(list) = self.rooms.get_mut(&key) else { return false };
        let before = list.len();
        list.retain(|&s| s != session);
        if list.is_empty() {
            self.rooms.remove(&key);
            return before > 0;
        }
        false
    }

    pub fn viewers(&self, key: RoomKey) -> &[SessionId] {
        self.rooms.get(&key).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn rooms(&self) -> impl Iterator<Item = RoomKey> + '_ {
        self.rooms.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_key_is_stable_and_spreads() {
        assert_eq!(RoomKey::of("a"), RoomKey::of("a"));
        let homes: std::collections::HashSet<_> =
            (0..64).map(|i| RoomKey::of(&format!("room{i}")).home_core(4)).collect();
        assert_eq!(homes.len(), 4);
    }

    #[test]
    fn session_id_encodes_core() {
        let s = SessionId::new(3, 42);
        assert_eq!(s.core(), 3);
        assert_ne!(SessionId::new(2, 42), s);
    }

    #[test]
    fn publish_view_and_destroy() {
        let k = RoomKey::of("r");
        let mut r = RoomRouter::new(0);
        let mut ch = Vec::new();
        let p = SessionId::new(0, 1);
        let src = r.publish(k, "r", p, &mut ch).unwrap();
        assert_eq!(ch, vec![RoomChange::Created(k, "r".into())]);
        assert_eq!(r.publish(k, "r", SessionId::new(0, 2), &mut ch), Err(RoomError::AlreadyPublished));
        r.add_viewer_core(k, "r", 1, &mut ch);
        r.add_viewer_core(k, "r", 1, &mut ch);
        r.add_viewer_core(k, "r", 0, &mut ch);
        assert_eq!(r.viewer_cores(k), &[0, 1]);
        r.unpublish(k, p, &mut ch);
        assert_eq!(r.publisher(k), None);
        // Re-publish gets a new source id.
        let src2 = r.publish(k, "r", p, &mut ch).unwrap();
        assert_ne!(src, src2);
        r.unpublish(k, p, &mut ch);
        r.remove_viewer_core(k, 1, &mut ch);
        assert_eq!(r.len(), 1);
        r.remove_viewer_core(k, 0, &mut ch);
        assert!(r.is_empty());
        assert_eq!(ch.last(), Some(&RoomChange::Destroyed(k, "r".into())));
    }

    fn packet(codec: crate::packet::Codec, params: PayloadParams) -> ForwardedPacket {
        ForwardedPacket {
            codec,
            params,
            source: 1,
            seq: 1,
            timestamp: 0,
            marker: false,
            keyframe_start: false,
            clock_rate: 90_000,
            received_at: std::time::Instant::now(),
            payload: std::sync::Arc::from(&b"x"[..]),
            ext: Default::default(),
        }
    }

    #[test]
    fn route_notes_the_current_video_format() {
        use crate::packet::Codec;
        use str0m::format::{CodecConfig, PayloadParams};
        let find = |codec| -> PayloadParams {
            let c = CodecConfig::new_with_defaults();
            c.params().iter().copied().find(|p| p.spec().codec == codec).unwrap()
        };
        let (vp8, opus) = (find(str0m::format::Codec::Vp8), find(str0m::format::Codec::Opus));
        let k = RoomKey::of("fmt");
        let mut r = RoomRouter::new(0);
        let mut ch = Vec::new();
        // No room yet: nothing to note, nowhere to route.
        assert_eq!(r.route(k, &packet(Codec::Vp8, vp8)), (&[][..], false));
        let p = SessionId::new(0, 1);
        r.publish(k, "fmt", p, &mut ch).unwrap();
        assert_eq!(r.video_format(k), None);
        assert!(!r.route(k, &packet(Codec::Opus, opus)).1);
        assert_eq!(r.video_format(k), None, "audio does not set the video format");
        assert!(r.route(k, &packet(Codec::Vp8, vp8)).1, "first video packet: changed");
        assert!(!r.route(k, &packet(Codec::Vp8, vp8)).1, "same format: unchanged");
        assert_eq!(r.video_format(k), Some(vp8));
        // The publisher leaves, a viewer core keeps the room: the old format is forgotten.
        r.add_viewer_core(k, "fmt", 0, &mut ch);
        r.unpublish(k, p, &mut ch);
        assert_eq!(r.video_format(k), None);
    }

    #[test]
    fn viewers_before_publisher_keep_room() {
        let k = RoomKey::of("early");
        let mut r = RoomRouter::new(1);
        let mut ch = Vec::new();
        r.add_viewer_core(k, "early", 1, &mut ch);
        assert_eq!(r.publisher(k), None);
        assert_eq!(r.len(), 1);
        let s = r.publish(k, "early", SessionId::new(1, 9), &mut ch).unwrap();
        assert_eq!(r.publisher(k), Some((SessionId::new(1, 9), s)));
    }

    #[test]
    fn local_viewers_first_and_last() {
        let k = RoomKey::of("x");
        let mut v = LocalViewers::default();
        assert!(v.add(k, SessionId(1)));
        assert!(!v.add(k, SessionId(2)));
        assert!(!v.remove(k, SessionId(1)));
        assert!(v.remove(k, SessionId(2)));
        assert!(!v.remove(k, SessionId(2)));
        assert!(v.viewers(k).is_empty());
    }
}
