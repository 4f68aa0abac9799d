//! Bitrate feedback from viewers back to a room's publisher (sans-IO).
//!
//! Every viewer session reports its bandwidth estimate (str0m's TWCC estimate, or the REMB its client sent).
//! Each core keeps, per room, the minimum over its local viewers ([`MinOf`]) and sends it to the room's home
//! core as `ControlMsg::BitrateHint` when it changed meaningfully, at most once per [`HINT_INTERVAL`]
//! ([`Throttle`]). The home core keeps one value per reporting core (and per subscribing node, for rooms we
//! export to other nodes), each expiring after [`HINT_EXPIRY`], and asks a WebRTC publisher for the minimum
//! with REMB — again at most once per [`HINT_INTERVAL`]. A cascaded room's home core hands the minimum to
//! core 0, which sends it upstream. Nothing here runs per packet: estimates arrive a few times per second.

use std::time::{Duration, Instant};

/// At most one hint (core → home core, node → upstream node) and one REMB per room this often.
pub const HINT_INTERVAL: Duration = Duration::from_secs(1);
/// A reported value is forgotten when not refreshed for this long (a core or node that stopped reporting).
pub const HINT_EXPIRY: Duration = Duration::from_secs(5);
/// A value is re-sent early (after [`HINT_INTERVAL`]) only when it moved by more than this fraction;
/// otherwise it is refreshed every [`REFRESH_INTERVAL`] so the receiver's copy does not expire.
pub const SIGNIFICANT_CHANGE: f64 = 0.10;
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// The minimum of values reported by several reporters (viewer sessions, cores, nodes), each of which
/// expires when not refreshed.
#[derive(Debug, Clone)]
pub struct MinOf<K> {
    entries: Vec<(K, u64, Instant)>,
}

impl<K> Default for MinOf<K> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<K: PartialEq> MinOf<K> {
    pub fn set(&mut self, key: K, bps: u64, now: Instant) {
        match self.entries.iter_mut().find(|(k, _, _)| *k == key) {
            Some(e) => (e.1, e.2) = (bps, now),
            None => self.entries.push((key, bps, now)),
        }
    }

    /// Forgets `key` (a viewer that left, a core without viewers). Returns whether it was there.
    pub fn remove(&mut self, key: &K) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _, _)| k != key);
        self.entries.len() != before
    }

    /// Drops the values older than [`HINT_EXPIRY`] and returns the minimum of the rest.
    pub fn min(&mut self, now: Instant) -> Option<u64> {
        self.entries.retain(|(_, _, t)| now.saturating_duration_since(*t) < HINT_EXPIRY);
        self.entries.iter().map(|(_, b, _)| *b).min()
    }

    /// The minimum of every value, however old (local viewers: a steady estimate is not re-reported by
    /// str0m, and a viewer's value goes when the viewer does).
    pub fn min_any(&self) -> Option<u64> {
        self.entries.iter().map(|(_, b, _)| *b).min()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Decides when a value is worth sending on: not within [`HINT_INTERVAL`] of the last send, and then only
/// if it changed by more than [`SIGNIFICANT_CHANGE`] or the last send is [`REFRESH_INTERVAL`] old.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throttle {
    last: Option<(u64, Instant)>,
}

impl Throttle {
    pub fn should_send(&mut self, bps: u64, now: Instant) -> bool {
        let send = match self.last {
            None => true,
            Some((last, t)) => {
                let age = now.saturating_duration_since(t);
                age >= HINT_INTERVAL && (changed(last, bps) || age >= REFRESH_INTERVAL)
            }
        };
        if send {
            self.last = Some((bps, now));
        }
        send
    }

    /// A value differs from the last sent one meaningfully but is held back by the interval.
    pub fn pending(&self, bps: u64) -> bool {
        self.last.is_some_and(|(last, _)| changed(last, bps))
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// More than [`SIGNIFICANT_CHANGE`] apart.
pub fn changed(old: u64, new: u64) -> bool {
    let (old, new) = (old as f64, new as f64);
    (new - old).abs() > old.max(1.0) * SIGNIFICANT_CHANGE
}

/// Where a home core's per-room value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintFrom {
    /// A core of this node (its local viewers' minimum).
    Core(usize),
    /// A node subscribed to this room (the minimum of its viewers and its own subscribers).
    Node(String),
}

/// One room's bitrate feedback on one core: the local viewers' minimum going to the home core and, on the
/// home core, the reporters' minimum going to the publisher.
#[derive(Debug, Default)]
pub struct RoomBitrate {
    /// This core's viewers of the room (session id → latest estimate; removed when the viewer leaves).
    pub viewers: MinOf<u64>,
    /// Local minimum → home core.
    pub to_home: Throttle,
    /// Home core: every core's (and subscribing node's) minimum.
    pub reporters: MinOf<HintFrom>,
    /// Home core: minimum → publisher (REMB) or upstream (cascaded room).
    pub to_publisher: Throttle,
}

impl RoomBitrate {
    pub fn is_idle(&self) -> bool {
        self.viewers.is_empty() && self.reporters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn min_of_takes_the_minimum_and_forgets_left_and_stale_reporters() {
        let t = Instant::now();
        let mut m = MinOf::default();
        assert_eq!(m.min(t), None);
        m.set(1u64, 800_000, t);
        m.set(2, 300_000, t);
        assert_eq!(m.min(t), Some(300_000));
        // A refresh replaces the reporter's value.
        m.set(2, 900_000, t + ms(100));
        assert_eq!(m.min(t + ms(100)), Some(800_000));
        // A viewer that left drops out.
        assert!(m.remove(&1));
        assert!(!m.remove(&1));
        assert_eq!(m.min(t + ms(200)), Some(900_000));
        // Not refreshed for HINT_EXPIRY: gone.
        m.set(3, 500_000, t + ms(4000));
        assert_eq!(m.min(t + HINT_EXPIRY + ms(100)), Some(500_000));
        assert_eq!(m.min(t + ms(4000) + HINT_EXPIRY), None);
        assert!(m.is_empty());
        // Without expiry (local viewers): the latest value of each, however old.
        m.set(4, 700_000, t);
        m.set(5, 600_000, t);
        assert_eq!(m.min_any(), Some(600_000));
        m.remove(&5);
        assert_eq!(m.min_any(), Some(700_000));
    }

    #[test]
    fn throttle_sends_first_then_at_most_once_per_interval_on_change_or_refresh() {
        let t = Instant::now();
        let mut th = Throttle::default();
        assert!(th.should_send(1_000_000, t));
        // Within the interval: never, even on a big change.
        assert!(!th.should_send(300_000, t + ms(500)));
        assert!(th.pending(300_000));
        // After the interval: a big change goes, a small one does not.
        assert!(!th.should_send(1_050_000, t + ms(1100)));
        assert!(!th.pending(1_050_000));
        assert!(th.should_send(300_000, t + ms(1100)));
        // Unchanged: refreshed every REFRESH_INTERVAL.
        assert!(!th.should_send(310_000, t + ms(2500)));
        assert!(th.should_send(310_000, t + ms(1100) + REFRESH_INTERVAL));
        th.reset();
        assert!(th.should_send(310_000, t + ms(3200)));
    }

    #[test]
    fn significant_change_is_relative() {
        assert!(!changed(1_000_000, 1_099_999));
        assert!(changed(1_000_000, 1_100_001));
        assert!(changed(1_000_000, 899_999));
        assert!(changed(0, 5));
    }

    #[test]
    fn home_core_minimum_over_cores_and_nodes() {
        let t = Instant::now();
        let mut r = RoomBitrate::default();
        r.reporters.set(HintFrom::Core(1), 2_000_000, t);
        r.reporters.set(HintFrom::Node("b".into()), 700_000, t);
        r.reporters.set(HintFrom::Core(0), 1_500_000, t);
        assert_eq!(r.reporters.min(t), Some(700_000));
        assert!(r.reporters.remove(&HintFrom::Node("b".into())));
        assert_eq!(r.reporters.min(t), Some(1_500_000));
        assert!(!r.is_idle());
    }
}
