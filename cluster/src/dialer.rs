//! Which addresses we want a link to, and when to dial them again.
//!
//! The shell (or membership) says "keep a link to this address"; the [`Dialer`] remembers that and, with an
//! exponential [`Backoff`] per address (reset when a link authenticates), says when the next attempt is
//! due. [`crate::LinkEndpoint`] owns one and dials on its own from `handle_timeout`, so the shell only has
//! to honour `poll_timeout`. A target also counts as linked when the peer dialed us first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::link::PeerId;

/// Exponential backoff: `initial`, doubling up to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The delay to wait now; the following call returns twice as much (capped).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Where one target stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// Dial at (or after) this instant.
    Waiting { at: Instant },
    /// A connection attempt is under way.
    Dialing(PeerId),
    /// An authenticated link covers this address (dialed by us or by the peer).
    Linked(PeerId),
}

#[derive(Debug)]
struct Target {
    state: TargetState,
    backoff: Backoff,
}

/// Targets to keep linked, with per-target backoff.
#[derive(Debug)]
pub struct Dialer {
    targets: HashMap<SocketAddr, Target>,
    initial: Duration,
    max: Duration,
}

impl Dialer {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            targets: HashMap::new(),
            initial,
            max,
        }
    }

    /// Starts keeping `addr` linked (dial due at once); no-op if already kept.
    pub fn keep(&mut self, now: Instant, addr: SocketAddr) {
        let backoff = Backoff::new(self.initial, self.max);
        self.targets.entry(addr).or_insert(Target {
            state: TargetState::Waiting { at: now },
            backoff,
        });
    }

    /// Stops redialing `addr` (an existing link is left alone).
    pub fn forget(&mut self, addr: SocketAddr) -> bool {
        self.targets.remove(&addr).is_some()
    }

    pub fn state(&self, addr: SocketAddr) -> Option<TargetState> {
        self.targets.get(&addr).map(|t| t.state)
    }

    pub fn targets(&self) -> impl Iterator<Item = (SocketAddr, TargetState)> + '_ {
        self.targets.iter().map(|(a, t)| (*a, t.state))
    }

    /// Targets whose next attempt is due.
    pub fn due(&self, now: Instant) -> Vec<SocketAddr> {
        self.targets
            .iter()
            .filter(|(_, t)| matches!(t.state, TargetState::Waiting { at } if at <= now))
            .map(|(a, _)| *a)
            .collect()
    }

    pub fn dialing(&mut self, addr: SocketAddr, peer: PeerId) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = TargetState::Dialing(peer);
        }
    }

    /// An authenticated link now covers `addr`: reset its backoff.
    pub fn linked(&mut self, addr: SocketAddr, peer: PeerId) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = TargetState::Linked(peer);
            t.backoff.reset();
        }
    }

    /// A dial could not even start: retry after the backoff.
    pub fn failed(&mut self, now: Instant, addr: SocketAddr) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = TargetState::Waiting {
                at: now + t.backoff.next_delay(),
            };
        }
    }

    /// Connection `peer` ended (failed dial or lost link): its targets wait for their backoff. Returns them.
    pub fn lost(&mut self, now: Instant, peer: PeerId) -> Vec<SocketAddr> {
        let mut affected = Vec::new();
        for (addr, t) in self.targets.iter_mut() {
            if matches!(t.state, TargetState::Dialing(p) | TargetState::Linked(p) if p == peer) {
                t.state = TargetState::Waiting {
                    at: now + t.backoff.next_delay(),
                };
                affected.push(*addr);
            }
        }
        affected
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|t| match t.state {
                TargetState::Waiting { at } => Some(at),
                _ => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(8));
        let seq: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seq, [250, 500, 1000, 2000, 4000, 8000, 8000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn lost_link_waits_for_backoff() {
        let now = Instant::now();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut d = Dialer::new(Duration::from_millis(250), Duration::from_secs(8));
        d.keep(now, addr);
        assert_eq!(d.due(now), vec![addr]);
        d.dialing(addr, PeerId(1));
        assert!(d.due(now).is_empty());
        assert_eq!(d.lost(now, PeerId(1)), vec![addr]);
        assert!(d.due(now).is_empty());
        assert_eq!(d.poll_timeout(), Some(now + Duration::from_millis(250)));
        d.dialing(addr, PeerId(2));
        d.lost(now, PeerId(2));
        assert_eq!(d.poll_timeout(), Some(now + Duration::from_millis(500)));
        d.linked(addr, PeerId(3));
        d.lost(now, PeerId(3));
        assert_eq!(d.poll_timeout(), Some(now + Duration::from_millis(250)));
    }
}
