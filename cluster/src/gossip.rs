//! The messages membership nodes exchange (carried inside [`crate::wire::ControlMsg::Gossip`]).
//!
//! Each entry always carries the small, fast-changing part (incarnation, heartbeat, load) and carries the
//! larger part ([`NodeData`]: zone, addresses, hosted rooms) only when the sender believes the receiver has
//! not seen that `version` yet. A receiver that gets a heartbeat for a node it has no data for asks for it
//! with `pull`.

use serde::{Deserialize, Serialize};

use crate::node::{
    CarriedRooms, Load, NodeAddrs, NodeId, MAX_CARRIED_ROOMS, MAX_MEDIA_ADDRS, MAX_ROOM_NAME_LEN,
    MAX_ZONE_LEN,
};
use crate::wire::WireError;

/// Most entries (nodes) one gossip message may carry.
pub const MAX_GOSSIP_ENTRIES: usize = 1024;

/// One gossip exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMsg {
    pub entries: Vec<GossipEntry>,
    /// Nodes the sender wants full [`NodeData`] for.
    pub pull: Vec<NodeId>,
}

/// What the sender knows about one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipEntry {
    pub id: NodeId,
    pub incarnation: u64,
    /// Bumped by the node itself every gossip round; its progress is the liveness signal.
    pub heartbeat: u64,
    /// The node announced a graceful leave (final for this incarnation).
    pub left: bool,
    pub load: Load,
    /// Bumped by the node whenever its [`NodeData`] changes.
    pub version: u64,
    pub data: Option<NodeData>,
}

/// The slow-changing part of a node's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeData {
    pub zone: String,
    pub addrs: NodeAddrs,
    pub rooms: CarriedRooms,
}

impl GossipMsg {
    pub(crate) fn validate(&self) -> Result<(), WireError> {
        if self.entries.len() > MAX_GOSSIP_ENTRIES || self.pull.len() > MAX_GOSSIP_ENTRIES {
            return Err(WireError::Invalid("too many gossip entries"));
        }
        for data in self.entries.iter().filter_map(|e| e.data.as_ref()) {
            data.validate()?;
        }
        Ok(())
    }
}

impl NodeData {
    pub(crate) fn validate(&self) -> Result<(), WireError> {
        if self.zone.len() > MAX_ZONE_LEN {
            return Err(WireError::Invalid("zone too long"));
        }
        if self.addrs.media.len() > MAX_MEDIA_ADDRS {
            return Err(WireError::Invalid("too many media addresses"));
        }
        if self.rooms.len() > MAX_CARRIED_ROOMS {
            return Err(WireError::Invalid("too many rooms"));
        }
        if self
            .rooms
            .keys()
            .any(|r| r.is_empty() || r.len() > MAX_ROOM_NAME_LEN)
        {
            return Err(WireError::Invalid("bad room name"));
        }
        Ok(())
    }
}
