//! Gateway placement, sans-IO: which node of the cluster a new WHIP/WHEP session should live on.
//!
//! Any media node is a gateway. It decides with what gossip told it (zones, loads, which node hosts which
//! room's publisher) and either keeps the session or proxies the offer to the chosen node. Rules:
//!
//! - Nodes over the load threshold (sessions or CPU) get no new sessions.
//! - Publisher: the node already hosting the room, if any (it answers 409 when the room is busy); else the
//!   least-loaded node in the client's zone, else anywhere.
//! - Viewer: a node in the client's zone hosting the room's publisher (no cascade hop); else one in the zone
//!   that already pulls the room (its stream arrives there anyway: no new subscription, no new copy on the
//!   links); else the least-loaded node in the zone; else the least-loaded node anywhere.
//! - "Least loaded" keeps the session on the gateway itself when it is within [`PlacementPolicy::slack`]
//!   sessions (and 10 % CPU) of the best: proxying costs a signalling round trip, and a small imbalance is
//!   not worth it (it also keeps placement stable while loads are gossiped every 500 ms).

use sfumato_cluster::{Load, NodeId};

/// Thresholds and preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementPolicy {
    /// A node with this many sessions or more gets no new ones (0: no limit).
    pub max_sessions: u32,
    /// A node using this much CPU (‰ of all its cores) or more gets no new sessions.
    pub max_cpu_permille: u16,
    /// The gateway keeps a session when its own session count is within this of the best node's.
    pub slack: u32,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        Self { max_sessions: 0, max_cpu_permille: 900, slack: 8 }
    }
}

/// CPU difference (‰) the gateway tolerates when keeping a session.
const CPU_SLACK: u16 = 100;

/// One node as placement sees it (the gateway included, with `is_self`).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: NodeId,
    pub zone: String,
    pub load: Load,
    /// Hosts the room's publisher.
    pub hosts_room: bool,
    /// Pulls the room from another node (for its viewers, or as its zone's relay).
    pub pulls_room: bool,
    pub is_self: bool,
}

/// Who creates the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceRole {
    Publisher,
    Viewer,
}

impl PlacementPolicy {
    fn eligible(&self, c: &Candidate) -> bool {
        (self.max_sessions == 0 || c.load.sessions < self.max_sessions) && c.load.cpu_permille < self.max_cpu_permille
    }

    /// The node for a new session in `zone`, or `None` when every node is over the threshold.
    pub fn place<'a>(&self, role: PlaceRole, zone: &str, nodes: &'a [Candidate]) -> Option<&'a Candidate> {
        if role == PlaceRole::Publisher {
            if let Some(host) = nodes.iter().find(|c| c.hosts_room) {
                return Some(host);
            }
        }
        let eligible: Vec<&Candidate> = nodes.iter().filter(|c| self.eligible(c)).collect();
        let in_zone: Vec<&Candidate> = eligible.iter().copied().filter(|c| c.zone == zone).collect();
        if role == PlaceRole::Viewer {
            for carries in [|c: &Candidate| c.hosts_room, |c: &Candidate| c.pulls_room] {
                let carriers: Vec<&Candidate> = in_zone.iter().copied().filter(|c| carries(c)).collect();
                if let Some(c) = self.least_loaded(&carriers) {
                    return Some(c);
                }
            }
        }
        self.least_loaded(&in_zone).or_else(|| self.least_loaded(&eligible))
    }

    fn least_loaded<'a>(&self, nodes: &[&'a Candidate]) -> Option<&'a Candidate> {
        let best = nodes
            .iter()
            .copied()
            .min_by_key(|c| (c.load.sessions, c.load.cpu_permille, !c.is_self, c.id.clone()))?;
        let me = nodes.iter().copied().find(|c| c.is_self);
        match me {
            Some(me)
                if me.load.sessions <= best.load.sessions.saturating_add(self.slack)
                    && me.load.cpu_permille <= best.load.cpu_permille.saturating_add(CPU_SLACK) =>
            {
                Some(me)
            }
            _ => Some(best),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, zone: &str, sessions: u32, cpu: u16, hosts: bool, me: bool) -> Candidate {
        Candidate {
            id: NodeId::new(id).unwrap(),
            zone: zone.into(),
            load: Load { cpu_permille: cpu, sessions, bandwidth_bps: 0 },
            hosts_room: hosts,
            pulls_room: false,
            is_self: me,
        }
    }

    fn pick(p: &PlacementPolicy, role: PlaceRole, zone: &str, nodes: &[Candidate]) -> Option<String> {
        p.place(role, zone, nodes).map(|c| c.id.to_string())
    }

    #[test]
    fn publisher_goes_to_the_host_else_least_loaded_in_zone() {
        let p = PlacementPolicy { slack: 0, ..Default::default() };
        let nodes = vec![node("a", "z1", 5, 0, false, true), node("b", "z1", 1, 0, false, false), node("c", "z2", 0, 0, false, false)];
        assert_eq!(pick(&p, PlaceRole::Publisher, "z1", &nodes).as_deref(), Some("b"));
        assert_eq!(pick(&p, PlaceRole::Publisher, "z2", &nodes).as_deref(), Some("c"));
        // Unknown zone: anywhere.
        assert_eq!(pick(&p, PlaceRole::Publisher, "z9", &nodes).as_deref(), Some("c"));
        // Hosted on c: always c (it answers 409 if busy), even from another zone and over the threshold.
        let mut hosted = nodes.clone();
        hosted[2].hosts_room = true;
        hosted[2].load.cpu_permille = 999;
        assert_eq!(pick(&p, PlaceRole::Publisher, "z1", &hosted).as_deref(), Some("c"));
    }

    #[test]
    fn viewer_prefers_the_host_in_zone_then_least_loaded_with_slack_for_self() {
        let p = PlacementPolicy::default();
        let nodes = vec![node("a", "z1", 0, 0, true, false), node("b", "z2", 3, 0, false, true), node("c", "z2", 0, 0, false, false)];
        // Host a is in zone z1: viewer from z1 goes there.
        assert_eq!(pick(&p, PlaceRole::Viewer, "z1", &nodes).as_deref(), Some("a"));
        // Gateway b in z2, within slack of c: stays on b (cascade from a).
        assert_eq!(pick(&p, PlaceRole::Viewer, "z2", &nodes).as_deref(), Some("b"));
        // Beyond the slack: c.
        let mut busy = nodes.clone();
        busy[1].load.sessions = 20;
        assert_eq!(pick(&p, PlaceRole::Viewer, "z2", &busy).as_deref(), Some("c"));
        // CPU beyond the slack too.
        let mut hot = nodes.clone();
        hot[1].load.cpu_permille = 500;
        assert_eq!(pick(&p, PlaceRole::Viewer, "z2", &hot).as_deref(), Some("c"));
    }

    #[test]
    fn viewer_prefers_a_node_already_pulling_the_room() {
        let p = PlacementPolicy::default();
        // Publisher on a (z1); in z2, c already pulls the room, b (the gateway) and d don't.
        let mut nodes = vec![
            node("a", "z1", 0, 0, true, false),
            node("b", "z2", 0, 0, false, true),
            node("c", "z2", 5, 0, false, false),
            node("d", "z2", 0, 0, false, false),
        ];
        nodes[2].pulls_room = true;
        assert_eq!(pick(&p, PlaceRole::Viewer, "z2", &nodes).as_deref(), Some("c"));
        // The publisher's node in the zone still comes first.
        assert_eq!(pick(&p, PlaceRole::Viewer, "z1", &nodes).as_deref(), Some("a"));
        // A puller over the load threshold is skipped like any node.
        let strict = PlacementPolicy { max_sessions: 5, ..Default::default() };
        assert_eq!(pick(&strict, PlaceRole::Viewer, "z2", &nodes).as_deref(), Some("b"));
        // Publishers ignore pullers (a room pulled from a gone publisher): least-loaded node of the zone.
        nodes[0].hosts_room = false;
        assert_eq!(pick(&p, PlaceRole::Publisher, "z2", &nodes).as_deref(), Some("b"));
    }

    #[test]
    fn overloaded_nodes_get_nothing() {
        let p = PlacementPolicy { max_sessions: 10, max_cpu_permille: 800, slack: 8 };
        let nodes = vec![node("a", "z1", 10, 0, true, true), node("b", "z1", 2, 850, false, false), node("c", "z2", 9, 0, false, false)];
        // a (host, at the session limit) and b (CPU) are out: the viewer leaves its zone.
        assert_eq!(pick(&p, PlaceRole::Viewer, "z1", &nodes).as_deref(), Some("c"));
        let all_busy = vec![node("a", "z1", 10, 0, false, true)];
        assert_eq!(pick(&p, PlaceRole::Viewer, "z1", &all_busy), None);
        assert_eq!(pick(&p, PlaceRole::Publisher, "z1", &all_busy), None);
    }
}
