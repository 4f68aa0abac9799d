//! Session and room events, handed from the cores to a connector thread that ships them out (NATS, HTTP hook).
//!
//! Cores call [`EventBus::emit`], which never blocks: a bounded queue sits between them and the connector,
//! and a full queue drops the event and counts it (`dropped`). The connector lives on its own thread so a
//! slow or absent broker never touches a core.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;

pub mod connector;
pub mod hook;
pub mod nats;

/// One event, serialized as the JSON body published to `sfumato.events.<kind>`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRecord {
    /// `room.created`, `room.destroyed`, `peer.joined`, `peer.left`, `track.started`, `track.stopped`,
    /// `session.stats`.
    pub kind: &'static str,
    pub node: String,
    pub room: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Kind-specific fields (role, track kind and codec, stats counters, close reason…).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl EventRecord {
    pub fn subject(&self) -> String {
        format!("sfumato.events.{}", self.kind)
    }
}

/// The cores' side of the event queue. Cheap to clone; `emit` never blocks.
#[derive(Clone)]
pub struct EventBus {
    tx: Option<SyncSender<EventRecord>>,
    dropped: Arc<AtomicU64>,
    /// Events queued (the connector counts those it took: the difference is the queue's depth).
    accepted: Arc<AtomicU64>,
    pub node: Arc<str>,
}

impl EventBus {
    /// A bus whose events go nowhere (no connector configured).
    pub fn disabled(node: &str) -> Self {
        Self { tx: None, dropped: Arc::default(), accepted: Arc::default(), node: node.into() }
    }

    /// A bus with room for `capacity` queued events, and the receiver the connector drains.
    pub fn bounded(node: &str, capacity: usize) -> (Self, Receiver<EventRecord>) {
        let (tx, rx) = sync_channel(capacity);
        (Self { tx: Some(tx), dropped: Arc::default(), accepted: Arc::default(), node: node.into() }, rx)
    }

    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn emit(&self, ev: EventRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(ev) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events dropped because the queue was full or the connector was gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The bus's counters, for the connector's statistics (they outlive every clone of the bus).
    pub fn counters(&self) -> BusCounters {
        BusCounters { accepted: self.accepted.clone(), dropped: self.dropped.clone() }
    }
}

/// An [`EventBus`]'s counters without its sender (holding one would keep the queue open).
#[derive(Debug, Clone, Default)]
pub struct BusCounters {
    /// Events queued for the connector.
    pub accepted: Arc<AtomicU64>,
    /// Events dropped because the queue was full or the connector gone.
    pub dropped: Arc<AtomicU64>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &'static str) -> EventRecord {
        EventRecord { kind, node: "n".into(), room: "r".into(), peer: None, session: None, ts_ms: 1, data: serde_json::Value::Null }
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let (bus, rx) = EventBus::bounded("n", 2);
        for _ in 0..5 {
            bus.emit(ev("peer.joined"));
        }
        assert_eq!(bus.dropped(), 3);
        assert_eq!(bus.counters().accepted.load(Ordering::Relaxed), 2);
        assert_eq!(rx.try_iter().count(), 2);
        let off = EventBus::disabled("n");
        off.emit(ev("peer.left"));
        assert_eq!(off.dropped(), 0);
    }

    #[test]
    fn json_shape_and_subject() {
        let e = ev("room.created");
        assert_eq!(e.subject(), "sfumato.events.room.created");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "room.created");
        assert!(v.get("peer").is_none());
    }
}
