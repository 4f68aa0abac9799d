//! Which node this node pulls a room from: the source itself, or its zone's relay for the room.
//!
//! Across zones a room travels once per (source zone, destination zone) pair: in each destination zone
//! one node — the room's *relay* — subscribes to the source node, and the zone's other nodes subscribe to
//! the relay. The choice must be the same on every node without talking about it, so it is a pure
//! function of the membership view: **rendezvous (highest-random-weight) hashing** of (room, node id) over
//! the live (alive or suspect) nodes of the zone, this node included.
//!
//! Why rendezvous hashing over every live node of the zone rather than "nodes carrying the room" or
//! "the least-loaded node":
//! - it needs only zones and liveness (the rooms a node pulls are gossiped too, but they follow its
//!   viewers, and a relay chosen from them would move with them);
//! - each node leaves out the zone peers it has no link to: a relay it can't reach can't deliver either,
//!   and processes that die take all their links down at once, so the zone re-ranks consistently;
//! - it does not move when viewers come and go, nor with load figures that change every gossip round and
//!   are seen half a second apart by different nodes — a moving relay means re-subscriptions and a
//!   keyframe for everybody in the zone;
//! - when a node joins or dies only the rooms it scores highest for move (1/n of them), and relay duty
//!   spreads evenly over the zone's nodes, room by room.
//!
//! The price: the relay may have no viewers of its own (one extra intra-zone hop for that room).
//!
//! **No loops.** A node in the source's zone subscribes to the source directly. Elsewhere a node
//! subscribes either to the source (it is the relay in its own view) or to the zone node it ranks highest,
//! which outranks it: inside a zone every subscription edge goes to a strictly higher (score, id), so
//! edges cannot close a cycle even when nodes' views of the zone differ. A cycle through another zone
//! needs nodes that disagree about where the publisher is; since a node only accepts media from its one
//! upstream, such a cycle carries no media and dissolves when the views converge.

use sfumato_cluster::NodeId;

/// Rendezvous weight of `node` for `room`: FNV-1a over `room`, a 0xff separator (never in UTF-8) and
/// the node id, finished with splitmix64. Stable across processes, versions and platforms (every node of
/// the cluster must compute the same value); `tests/e2e/test_cluster.py` mirrors it.
pub fn score(room: &str, node: &NodeId) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for b in room.bytes().chain(std::iter::once(0xff)).chain(node.as_str().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // splitmix64 finalizer: FNV's low bits mix poorly for short, similar ids.
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The relay for `room` among `candidates`: highest score, ties (never seen in practice) to the higher id.
pub fn relay<'a>(room: &str, candidates: impl IntoIterator<Item = &'a NodeId>) -> Option<&'a NodeId> {
    candidates.into_iter().max_by(|a, b| (score(room, a), *a).cmp(&(score(room, b), *b)))
}

/// Where node `me` (zone `my_zone`) gets `room`'s media from, given the node hosting its publisher
/// (`host`, in `host_zone`) and the other live nodes of `me`'s zone (`zone_peers`; `me` and duplicates
/// are ignored). `None` when `me` hosts the room.
pub fn upstream<'a>(
    me: &'a NodeId,
    my_zone: &str,
    room: &str,
    host: &'a NodeId,
    host_zone: &str,
    zone_peers: impl IntoIterator<Item = &'a NodeId>,
) -> Option<NodeId> {
    if host == me {
        return None;
    }
    if host_zone == my_zone {
        return Some(host.clone());
    }
    let chosen = relay(room, std::iter::once(me).chain(zone_peers.into_iter().filter(|n| *n != me && *n != host)));
    match chosen {
        Some(r) if r != me => Some(r.clone()),
        _ => Some(host.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn score_is_stable_and_spreads_rooms() {
        // Pinned values: a change here changes relay choice across versions (and the e2e test's mirror).
        assert_eq!(score("cast", &id("b")), 0x8b90_bf3f_a890_3d62);
        assert_eq!(score("cast", &id("d")), 0x6592_f58b_0d7b_bb31);
        assert_eq!(score("zone", &id("c")), 0xf494_2fb0_3c9c_7e15);
        assert_eq!(relay("zone", &[id("b"), id("c"), id("d")]), Some(&id("c")));
        assert_eq!(relay("zone", &[id("b"), id("d")]), Some(&id("d")));
        assert_ne!(score("cast", &id("b")), score("cast", &id("c")));
        assert_ne!(score("ab", &id("c")), score("a", &id("bc")), "separator keeps (room, node) apart");
        let nodes = [id("b"), id("c"), id("d")];
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for i in 0..3000 {
            let room = format!("room-{i}");
            let r = relay(&room, &nodes).unwrap().clone();
            *per_node.entry(r).or_default() += 1;
        }
        for (n, k) in &per_node {
            assert!((800..=1200).contains(k), "{n}: {k} of 3000 rooms");
        }
    }

    #[test]
    fn same_zone_goes_to_the_source_other_zones_through_one_relay() {
        let (a, b, c, d) = (id("a"), id("b"), id("c"), id("d"));
        let z2 = [b.clone(), c.clone(), d.clone()];
        // Source zone: directly to the source, whatever the room.
        assert_eq!(upstream(&b, "z1", "r", &a, "z1", &z2), Some(a.clone()));
        // The source itself pulls from nobody.
        assert_eq!(upstream(&a, "z1", "r", &a, "z1", &z2), None);
        // Zone z2: everyone agrees on one relay; it pulls from the source, the others from it.
        for room in ["cast", "fail", "x", "y", "z"] {
            let r = relay(room, &z2).unwrap().clone();
            for n in &z2 {
                let up = upstream(n, "z2", room, &a, "z1", &z2).unwrap();
                if *n == r {
                    assert_eq!(up, a, "{room}: relay {n} pulls from the source");
                } else {
                    assert_eq!(up, r, "{room}: {n} pulls from the relay");
                }
            }
        }
    }

    #[test]
    fn relay_death_repoints_only_its_rooms() {
        let (a, b, c, d) = (id("a"), id("b"), id("c"), id("d"));
        let all = [b.clone(), c.clone(), d.clone()];
        let rooms: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
        let before: Vec<NodeId> = rooms.iter().map(|r| relay(r, &all).unwrap().clone()).collect();
        // d dies: the rooms it relayed move to b or c, the others keep their relay.
        let alive = [b.clone(), c.clone()];
        for (room, old) in rooms.iter().zip(&before) {
            let new = relay(room, &alive).unwrap();
            if *old == d {
                assert_ne!(*new, d);
            } else {
                assert_eq!(new, old, "{room} moved although its relay lives");
            }
            // c's view without d: it pulls from the new relay (or from a if that is c).
            let up = upstream(&c, "z2", room, &a, "z1", &alive).unwrap();
            assert_eq!(up, if *new == c { a.clone() } else { new.clone() });
        }
        assert!(before.contains(&d));
    }

    /// Random, disagreeing views of zone z2 (each node sees itself and a random subset of the others):
    /// following upstream edges from any node always ends at the source, never in a cycle.
    #[test]
    fn no_loops_even_with_disagreeing_views() {
        let a = id("a");
        let zone: Vec<NodeId> = (0..7).map(|i| id(&format!("n{i}"))).collect();
        let mut seed: u64 = 0x1234_5678;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..500 {
            let room = format!("room-{round}");
            let mut up: BTreeMap<NodeId, NodeId> = BTreeMap::new();
            for n in &zone {
                let view: Vec<NodeId> = zone.iter().filter(|p| rand() % 3 != 0 || *p == n).cloned().collect();
                let u = upstream(n, "z2", &room, &a, "z1", &view).unwrap();
                if u != a {
                    assert!(zone.contains(&u));
                    assert!((score(&room, &u), &u) > (score(&room, n), n), "edge to a lower rank");
                }
                up.insert(n.clone(), u);
            }
            for start in &zone {
                let mut seen = BTreeSet::new();
                let mut at = start.clone();
                while at != a {
                    assert!(seen.insert(at.clone()), "loop from {start} in {room}: {up:?}");
                    at = up[&at].clone();
                }
            }
        }
    }
}
