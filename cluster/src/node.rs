//! Who a node is: the identity and advertised facts shared by the link hello and by gossip.
//!
//! These types travel on the wire, so every string that a peer controls is bounded and checked on decode
//! (`NodeId` validates itself while deserializing; the rest is checked by [`crate::wire`]'s `validate`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;
/// Longest zone name, in bytes.
pub const MAX_ZONE_LEN: usize = 64;
/// Longest room name, in bytes (matches what the HTTP API accepts, with room to spare).
pub const MAX_ROOM_NAME_LEN: usize = 256;
/// Most media (WebRTC UDP) addresses one node may advertise.
pub const MAX_MEDIA_ADDRS: usize = 64;
/// Most rooms one node may advertise as carrying.
pub const MAX_CARRIED_ROOMS: usize = 20_000;

/// A node's stable name (`--node-id`): 1–64 bytes of `[A-Za-z0-9._-]`.
///
/// The name alone does not identify one process: a restarted node keeps its id and gets a higher
/// incarnation, so `(NodeId, incarnation)` is what tells an old process from its successor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// A string that is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id (1-{MAX_NODE_ID_LEN} bytes of [A-Za-z0-9._-]): {0:?}")]
pub struct InvalidNodeId(pub String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidNodeId> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_NODE_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(id))
        } else {
            Err(InvalidNodeId(id.chars().take(MAX_NODE_ID_LEN).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a node can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    /// The QUIC link endpoint (`--quic-port`), as other nodes should dial it.
    pub quic: SocketAddr,
    /// The HTTP API (WHIP/WHEP), for gateways that redirect rather than proxy.
    pub http: SocketAddr,
    /// WebRTC media sockets (informational; candidates come from the node's own SDP answer).
    pub media: Vec<SocketAddr>,
}

/// How busy a node is; gossiped with every heartbeat, so it stays small.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// CPU use over all of the node's cores, 0–1000 (‰).
    pub cpu_permille: u16,
    /// Live WebRTC/RTMP sessions.
    pub sessions: u32,
    /// Media bandwidth, bits per second, in + out.
    pub bandwidth_bps: u64,
}

/// Kinds of media track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TrackKind {
    Audio,
    Video,
}

/// Which track kinds a node's publisher in one room has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackKinds {
    pub audio: bool,
    pub video: bool,
}

impl TrackKinds {
    pub fn has(&self, kind: TrackKind) -> bool {
        match kind {
            TrackKind::Audio => self.audio,
            TrackKind::Video => self.video,
        }
    }
}

/// What a node's gossip says about one room it carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedRoom {
    /// The room's publisher is on this node. Otherwise the node pulls the room from another one, for its
    /// own viewers or as its zone's relay.
    pub publisher: bool,
    /// `profile-level-id` of the room's video when it is H.264: a viewer joining on another node is
    /// answered with it before that node has seen a packet of the room.
    pub h264_profile_level_id: Option<u32>,
}

/// Room name → what this node says about it: every room it publishes or pulls.
pub type CarriedRooms = BTreeMap<String, CarriedRoom>;

/// What a node says about itself when a link comes up (before any gossip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: NodeId,
    /// Grows with each restart (e.g. the start time in ms since the epoch).
    pub incarnation: u64,
    pub zone: String,
    pub addrs: NodeAddrs,
}

/// Everything gossip spreads about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    pub incarnation: u64,
    pub zone: String,
    pub addrs: NodeAddrs,
    pub load: Load,
    pub rooms: CarriedRooms,
}

impl NodeInfo {
    /// The link hello for this node.
    pub fn hello(&self) -> Hello {
        Hello {
            node_id: self.id.clone(),
            incarnation: self.incarnation,
            zone: self.zone.clone(),
            addrs: self.addrs.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_rules() {
        assert!(NodeId::new("node-a.zone_1").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a b").is_err());
        assert!(NodeId::new("x".repeat(65)).is_err());
        assert!(NodeId::new("é").is_err());
    }
}
