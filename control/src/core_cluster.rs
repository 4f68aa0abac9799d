//! What a room's home core does beyond its own sessions: *external publishers* and the cluster.
//!
//! An external publisher is media that enters a room from somewhere other than a WebRTC session of this
//! core — an RTMP connection (on any core of this node) or the cluster (cascading: the room's publisher is on
//! another node). Both register a pseudo session as the room's publisher in the [`RoomRouter`], so their
//! packets fan out exactly like a WebRTC publisher's. A local publisher (WebRTC or RTMP) replaces a
//! cascaded one: the room is then published here.
//!
//! Cluster side (only when the node runs `sfumato media`):
//! - the home core tells core 0 whenever a room's state changes ([`ClusterCtl::RoomState`]): local
//!   publisher or not, viewers here without a local publisher or not — core 0's `Cascade` decides the rest;
//! - an exported room (some node subscribed) has the pseudo core `cores` among its viewer cores, so
//!   `fan_out` hands each packet to the cluster once, whatever the number of subscribing nodes.
//!
//! This is a child module of `core_state` (it uses `CoreState`'s private fields); it keeps the cluster
//! out of the single-node code paths.

use std::collections::HashMap;
use std::time::Instant;

use sfumato_cluster::NodeId;
use sfumato_media::packet::ForwardedPacket;
use sfumato_media::room::{RoomError, RoomKey, SessionId};

use super::CoreState;
use crate::cluster_msg::ClusterCtl;
use crate::events::{now_ms, EventRecord};
use crate::messages::OfferError;

/// Where an external publisher's media comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalKind {
    Rtmp,
    /// Cascaded from the node hosting the room's publisher.
    Cascade { from: NodeId },
}

impl ExternalKind {
    fn transport(&self) -> &'static str {
        match self {
            ExternalKind::Rtmp => "rtmp",
            ExternalKind::Cascade { .. } => "cascade",
        }
    }
}

/// A registered external publisher of a room homed on this core.
pub(super) struct External {
    id: SessionId,
    /// The source id viewers see (the router's; cascades get a fresh one when the remote source changes).
    source: u64,
    kind: ExternalKind,
    /// Cascade: the hosting node's source id last seen.
    remote_source: Option<u64>,
}

impl External {
    pub(super) fn is_cascade(&self) -> bool {
        matches!(self.kind, ExternalKind::Cascade { .. })
    }

    pub(super) fn is_rtmp(&self) -> bool {
        self.kind == ExternalKind::Rtmp
    }
}

/// The home core's cluster bookkeeping.
#[derive(Default)]
pub struct CoreCluster {
    /// `sfumato media`: report room states to core 0.
    pub enabled: bool,
    /// Messages for core 0 (drained by the shell).
    pub out: Vec<ClusterCtl>,
    /// Packets of exported rooms for core 0 (drained by the shell).
    pub cascade_out: Vec<(RoomKey, ForwardedPacket)>,
    /// Last state reported per room.
    synced: HashMap<RoomKey, Synced>,
    /// Counter for fresh cascade source ids.
    next_source: u64,
}

/// What core 0 was last told about a room ([`ClusterCtl::RoomState`]).
struct Synced {
    name: String,
    local: bool,
    wants: bool,
    h264: Option<u32>,
}

impl CoreState {
    /// The pseudo core index that stands for "the cluster" among a room's viewer cores.
    pub(super) fn cluster_core(&self) -> usize {
        self.cores
    }

    // ---- external publishers ----------------------------------------------------------------------------

    /// Registers an external publisher for `room`, which must be homed on this core. Returns its source id.
    pub fn external_publish_start(&mut self, room: &str, kind: ExternalKind) -> Result<u64, OfferError> {
        let key = RoomKey::of(room);
        let home = key.home_core(self.cores);
        if home != self.core {
            return Err(OfferError::Unavailable(format!(
                "{} publish routed to core {} not home {}",
                kind.transport(),
                self.core,
                home
            )));
        }
        if kind == ExternalKind::Rtmp {
            self.yield_cascade(key);
        }
        if self.router.publisher(key).is_some() {
            return Err(OfferError::RoomBusy);
        }
        self.next_session += 1;
        let id = SessionId::new(self.core, self.next_session);
        let mut changes = Vec::new();
        let source = self.router.publish(key, room, id, &mut changes).map_err(|e| match e {
            RoomError::AlreadyPublished => OfferError::RoomBusy,
        })?;
        let mut data = serde_json::json!({ "role": "publisher", "transport": kind.transport() });
        if let ExternalKind::Cascade { from } = &kind {
            data["from_node"] = serde_json::Value::String(from.to_string());
        }
        tracing::info!(core = self.core, session = id.0, room, transport = kind.transport(), "external publisher registered");
        self.external.insert(key, External { id, source, kind, remote_source: None });
        self.stats.publishers += 1;
        self.room_changes(&changes);
        self.emit_external(room, id, "peer.joined", data);
        self.cluster_sync(key);
        Ok(source)
    }

    /// A packet from a room's external publisher: fanned out like a WebRTC publisher's.
    pub fn external_packet(&mut self, room: RoomKey, mut packet: ForwardedPacket, now: Instant) {
        let Some(e) = self.external.get_mut(&room) else { return };
        match e.kind {
            ExternalKind::Rtmp if e.source != packet.source => return, // late packet of a publisher that is gone
            ExternalKind::Rtmp => {}
            ExternalKind::Cascade { .. } => {
                // The hosting node's publisher re-published: viewers must re-base on a new source id.
                if e.remote_source != Some(packet.source) {
                    if e.remote_source.is_some() {
                        self.cluster.next_source += 1;
                        e.source = (1 << 63) | ((self.core as u64 & 0xff) << 48) | self.cluster.next_source;
                    }
                    e.remote_source = Some(packet.source);
                }
                packet.source = e.source;
            }
        }
        self.stats.rtp_packets_in += 1;
        self.fan_out(room, packet, now);
    }

    /// Unregisters the external publisher of `room` (only if its source is `source`, when given).
    pub fn external_publish_stop(&mut self, room: RoomKey, source: Option<u64>) {
        let Some(e) = self.external.get(&room) else { return };
        if source.is_some_and(|s| s != e.source) {
            return;
        }
        let Some(e) = self.external.remove(&room) else { return };
        let name = self.router.name(room).unwrap_or("").to_string();
        let mut changes = Vec::new();
        self.router.unpublish(room, e.id, &mut changes);
        self.stats.publishers = self.stats.publishers.saturating_sub(1);
        self.emit_external(&name, e.id, "peer.left", serde_json::json!({ "role": "publisher", "transport": e.kind.transport() }));
        self.room_changes(&changes);
        tracing::info!(core = self.core, session = e.id.0, room = %name, transport = e.kind.transport(), "external publisher unregistered");
        self.cluster_sync(room);
    }

    /// A local publisher arrives for a room fed by the cluster: the cascade steps aside.
    pub(super) fn yield_cascade(&mut self, room: RoomKey) {
        if self.external.get(&room).is_some_and(External::is_cascade) {
            self.external_publish_stop(room, None);
        }
    }

    fn emit_external(&self, room: &str, id: SessionId, kind: &'static str, data: serde_json::Value) {
        self.events.emit(EventRecord {
            kind,
            node: self.events.node.to_string(),
            room: room.to_string(),
            peer: None,
            session: Some(format!("{:016x}", id.0)),
            ts_ms: now_ms(),
            data,
        });
    }

    // ---- cluster ------------------------------------------------------------------------------------------

    /// Applies an instruction from core 0 for a room homed here.
    pub fn on_cluster(&mut self, msg: ClusterCtl, now: Instant) {
        match msg {
            ClusterCtl::IngestStart { room, name, from } => {
                if let Err(e) = self.external_publish_start(&name, ExternalKind::Cascade { from }) {
                    tracing::debug!(core = self.core, room = %name, error = ?e, "cascade not registered (room published here)");
                }
                let _ = room;
            }
            ClusterCtl::IngestStop { room } => {
                if self.external.get(&room).is_some_and(External::is_cascade) {
                    self.external_publish_stop(room, None);
                }
            }
            ClusterCtl::ExportStart { room, name } => {
                let mut changes = Vec::new();
                let core = self.cluster_core();
                self.router.add_viewer_core(room, &name, core, &mut changes);
                self.room_changes(&changes);
                self.cluster_sync(room);
            }
            ClusterCtl::ExportStop { room } => {
                let mut changes = Vec::new();
                let core = self.cluster_core();
                self.router.remove_viewer_core(room, core, &mut changes);
                self.room_changes(&changes);
                self.cluster_sync(room);
            }
            ClusterCtl::Keyframe { room } => {
                self.on_control(crate::messages::ControlMsg::KeyframeRequest { room }, now);
            }
            ClusterCtl::Bitrate { room, bps, from } => {
                self.bitrate_hint(room, super::bitrate::HintFrom::Node(from.to_string()), bps, now);
            }
            // Handled by core 0's cluster shell or the waiting HTTP handler, never by a core's state.
            ClusterCtl::RoomState { .. }
            | ClusterCtl::KeyframeUp { .. }
            | ClusterCtl::BitrateUp { .. }
            | ClusterCtl::Signal { .. }
            | ClusterCtl::SignalDone { .. } => {}
        }
    }

    /// Reports the room's state to core 0 if it changed (no-op outside cluster mode or off the home core).
    pub(super) fn cluster_sync(&mut self, room: RoomKey) {
        if !self.cluster.enabled || room.home_core(self.cores) != self.core {
            return;
        }
        let cascade = self.external.get(&room).is_some_and(External::is_cascade);
        let local = self.router.publisher(room).is_some() && !cascade;
        let cluster_core = self.cluster_core();
        let viewers = self.router.viewer_cores(room).iter().any(|&c| c != cluster_core);
        let wants = viewers && !local;
        // Known for rooms whose packets pass here (a local publisher's, or pulled for local viewers).
        let h264 = self.router.video_format(room).filter(|_| local || wants);
        let h264 = h264.as_ref().and_then(sfumato_media::webrtc::h264_profile_level_id);
        let prev = self.cluster.synced.get(&room);
        if prev.map_or((false, false, None), |s| (s.local, s.wants, s.h264)) == (local, wants, h264) {
            return;
        }
        let name = match (self.router.name(room), prev) {
            (Some(n), _) => n.to_string(),
            (None, Some(s)) => s.name.clone(),
            (None, None) => return,
        };
        if local || wants {
            self.cluster.synced.insert(room, Synced { name: name.clone(), local, wants, h264 });
        } else {
            self.cluster.synced.remove(&room);
        }
        self.cluster.out.push(ClusterCtl::RoomState { room, name, local_publisher: local, wants_remote: wants, h264 });
    }

    /// A keyframe request for `room` reached its home core: true if an external publisher took care of it
    /// (RTMP can't be asked — viewers wait for the next keyframe; a cascade asks the hosting node).
    pub(super) fn external_keyframe(&mut self, room: RoomKey) -> bool {
        match self.external.get(&room) {
            Some(e) if e.is_rtmp() => true,
            Some(_) => {
                self.cluster.out.push(ClusterCtl::KeyframeUp { room });
                true
            }
            None => false,
        }
    }
}
