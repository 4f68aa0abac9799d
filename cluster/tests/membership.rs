//! Membership state machines exchanging gossip in memory (through the real wire encoding), fake clock.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sfumato_cluster::{
    decode_control, ControlFrame, ControlMsg, GossipEntry, GossipMsg, Load, MemberStatus,
    CarriedRoom, Membership, MembershipEvent, MembershipOutput, NodeAddrs, NodeId, NodeInfo,
};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn info(name: &str, port: u16, incarnation: u64) -> NodeInfo {
    NodeInfo {
        id: NodeId::new(name).unwrap(),
        incarnation,
        zone: if port.is_multiple_of(2) {
            "eu".into()
        } else {
            "us".into()
        },
        addrs: NodeAddrs {
            quic: addr(port),
            http: addr(port + 1000),
            media: vec![],
        },
        load: Load::default(),
        rooms: BTreeMap::new(),
    }
}

struct MNode {
    m: Membership,
    id: NodeId,
    addr: SocketAddr,
    stopped: bool,
    /// Addresses membership asked to keep linked (the link layer redials them).
    keep: HashSet<SocketAddr>,
    events: Vec<(Instant, MembershipEvent)>,
    sent_msgs: Vec<GossipMsg>,
}

struct MNet {
    now: Instant,
    nodes: Vec<MNode>,
    links: HashSet<(usize, usize)>,
}

impl MNet {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            now,
            nodes: vec![],
            links: HashSet::new(),
        }
    }

    fn add(&mut self, name: &str, port: u16, incarnation: u64, seeds: &[u16]) -> usize {
        let me = info(name, port, incarnation);
        let m = Membership::new(me.clone(), seeds.iter().map(|p| addr(*p)).collect());
        let node = MNode {
            m,
            id: me.id,
            addr: me.addrs.quic,
            stopped: false,
            keep: HashSet::new(),
            events: vec![],
            sent_msgs: vec![],
        };
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        let now = self.now;
        self.nodes[i].m.handle_timeout(now);
        i
    }

    fn stop(&mut self, i: usize) {
        self.nodes[i].stopped = true;
        self.links.retain(|(a, b)| *a != i && *b != i);
    }

    fn restart(&mut self, i: usize, incarnation: u64, seeds: &[u16]) {
        let old = &self.nodes[i];
        let (name, port) = (old.id.as_str().to_string(), old.addr.port());
        let me = info(&name, port, incarnation);
        self.nodes[i] = MNode {
            m: Membership::new(me.clone(), seeds.iter().map(|p| addr(*p)).collect()),
            id: me.id,
            addr: me.addrs.quic,
            stopped: false,
            keep: HashSet::new(),
            events: vec![],
            sent_msgs: vec![],
        };
        let now = self.now;
        self.nodes[i].m.handle_timeout(now);
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            // The link layer: (re)link every kept address whose node runs.
            for i in 0..self.nodes.len() {
                if self.nodes[i].stopped {
                    continue;
                }
                let keep: Vec<SocketAddr> = self.nodes[i].keep.iter().copied().collect();
                for a in keep {
                    let Some(j) = self.nodes.iter().position(|n| n.addr == a) else {
                        continue;
                    };
                    if j == i || self.nodes[j].stopped || self.linked(i, j) {
                        continue;
                    }
                    self.links.insert((i.min(j), i.max(j)));
                    let (now, idi, idj) =
                        (self.now, self.nodes[i].id.clone(), self.nodes[j].id.clone());
                    self.nodes[i].m.handle_link_up(now, &idj);
                    self.nodes[j].m.handle_link_up(now, &idi);
                    moved = true;
                }
            }
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].m.poll_output() {
                    moved = true;
                    if self.nodes[i].stopped {
                        continue;
                    }
                    match out {
                        MembershipOutput::Send { to, msg } => {
                            let Some(j) = self.nodes.iter().position(|n| n.id == to && !n.stopped)
                            else {
                                continue;
                            };
                            if !self.linked(i, j) {
                                continue;
                            }
                            // Through the real encoding, as on a link.
                            let frame =
                                ControlFrame::encode(&ControlMsg::Gossip(msg.clone())).unwrap();
                            let Ok(ControlMsg::Gossip(decoded)) =
                                decode_control(&frame.as_bytes()[4..])
                            else {
                                panic!("gossip did not round-trip")
                            };
                            assert_eq!(decoded, msg);
                            self.nodes[i].sent_msgs.push(msg);
                            let (now, from) = (self.now, self.nodes[i].id.clone());
                            self.nodes[j].m.handle_message(now, &from, decoded);
                        }
                        MembershipOutput::Connect(a) => {
                            self.nodes[i].keep.insert(a);
                        }
                        MembershipOutput::Disconnect(a) => {
                            self.nodes[i].keep.remove(&a);
                        }
                        MembershipOutput::Event(e) => {
                            let now = self.now;
                            self.nodes[i].events.push((now, e));
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("gossip did not settle");
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.pump();
        loop {
            let next = self
                .nodes
                .iter()
                .filter(|n| !n.stopped)
                .filter_map(|n| n.m.poll_timeout())
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in self.nodes.iter_mut().filter(|n| !n.stopped) {
                        if n.m.poll_timeout().is_some_and(|t| t <= now) {
                            n.m.handle_timeout(now);
                        }
                    }
                    self.pump();
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
    }

    fn status(&self, at: usize, of: &str) -> Option<MemberStatus> {
        self.nodes[at]
            .m
            .member(&NodeId::new(of).unwrap())
            .map(|m| m.status)
    }

    fn first_event(&self, at: usize, f: impl Fn(&MembershipEvent) -> bool) -> Option<Instant> {
        self.nodes[at]
            .events
            .iter()
            .find(|(_, e)| f(e))
            .map(|(t, _)| *t)
    }
}

fn three_from_one_seed() -> MNet {
    let mut net = MNet::new();
    net.add("a", 7000, 1, &[]);
    net.add("b", 7002, 1, &[7000]);
    net.add("c", 7004, 1, &[7000]);
    net
}

fn is_dead(e: &MembershipEvent, who: &str) -> bool {
    matches!(e, MembershipEvent::NodeDead { id, .. } if id.as_str() == who)
}

#[test]
fn three_nodes_converge_from_one_seed() {
    let mut net = three_from_one_seed();
    net.run_for(Duration::from_secs(1));
    for (i, others) in [(0, ["b", "c"]), (1, ["a", "c"]), (2, ["a", "b"])] {
        for o in others {
            assert_eq!(
                net.status(i, o),
                Some(MemberStatus::Alive),
                "node {i} about {o}"
            );
        }
        assert_eq!(net.nodes[i].m.members().count(), 2);
    }
    // b learned c from a's gossip, with c's facts, and linked to it directly (full mesh).
    let c = net.nodes[1].m.member(&NodeId::new("c").unwrap()).unwrap();
    assert_eq!(c.info.addrs.quic, addr(7004));
    assert_eq!(c.info.zone, "eu");
    assert!(net.linked(1, 2));
    // Nobody is declared anything after a long quiet run.
    net.run_for(Duration::from_secs(30));
    for i in 0..3 {
        assert!(
            net.nodes[i]
                .events
                .iter()
                .all(|(_, e)| matches!(e, MembershipEvent::NodeJoined { .. })),
            "{:?}",
            net.nodes[i].events
        );
    }
    // Steady state is cheap: zone/addresses/rooms are not resent every round.
    let late: Vec<&GossipMsg> = net.nodes[0].sent_msgs.iter().rev().take(10).collect();
    assert!(late
        .iter()
        .all(|m| m.entries.iter().all(|e| e.data.is_none())));
}

#[test]
fn silent_node_becomes_suspect_then_dead_in_bounded_time() {
    let mut net = three_from_one_seed();
    net.run_for(Duration::from_secs(2));
    let t0 = net.now;
    net.stop(2);
    net.run_for(Duration::from_secs(10));
    for i in 0..2 {
        let suspect = net
            .first_event(
                i,
                |e| matches!(e, MembershipEvent::NodeSuspect { id } if id.as_str() == "c"),
            )
            .unwrap();
        let dead = net.first_event(i, |e| is_dead(e, "c")).unwrap();
        // Defaults: suspect 2 s after the last heartbeat progress, dead 2 s later (one 500 ms round slack).
        assert!(
            suspect - t0 >= Duration::from_millis(1500)
                && suspect - t0 <= Duration::from_millis(2600),
            "{:?}",
            suspect - t0
        );
        assert!(
            dead - t0 >= Duration::from_millis(3500) && dead - t0 <= Duration::from_millis(4600),
            "{:?}",
            dead - t0
        );
        assert_eq!(net.status(i, "c"), Some(MemberStatus::Dead));
        // The live nodes still trust each other.
        assert_eq!(
            net.status(i, if i == 0 { "b" } else { "a" }),
            Some(MemberStatus::Alive)
        );
        assert!(!net.nodes[i]
            .events
            .iter()
            .any(|(_, e)| matches!(e, MembershipEvent::NodeSuspect { id } if id.as_str() != "c")));
    }
    // A tombstone does not linger forever.
    net.run_for(Duration::from_secs(61));
    assert_eq!(net.status(0, "c"), None);
}

#[test]
fn node_unreachable_from_one_peer_is_not_declared_dead() {
    let mut net = three_from_one_seed();
    net.run_for(Duration::from_secs(2));
    // Cut the a–c link only (and keep it cut): c's heartbeats still reach a through b.
    net.links.remove(&(0, 2));
    net.nodes[0].keep.remove(&addr(7004));
    net.nodes[2].keep.clear();
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.status(0, "c"), Some(MemberStatus::Alive));
    assert!(net.first_event(0, |e| is_dead(e, "c")).is_none());
}

#[test]
fn restarted_node_replaces_its_old_incarnation() {
    let mut net = three_from_one_seed();
    net.run_for(Duration::from_secs(2));
    net.stop(2);
    net.run_for(Duration::from_secs(1));
    // Same id, new process: higher incarnation, bootstraps from b this time.
    net.restart(2, 2, &[7002]);
    net.run_for(Duration::from_secs(1));
    for i in 0..2 {
        assert!(net.nodes[i].events.iter().any(|(_, e)| matches!(e,
            MembershipEvent::NodeJoined { id, incarnation: 2, replaced: Some(1) } if id.as_str() == "c")),
            "{:?}", net.nodes[i].events);
        let c = net.nodes[i].m.member(&NodeId::new("c").unwrap()).unwrap();
        assert_eq!((c.info.incarnation, c.status), (2, MemberStatus::Alive));
    }
    net.run_for(Duration::from_secs(10));
    for i in 0..2 {
        assert!(
            net.first_event(i, |e| is_dead(e, "c")).is_none(),
            "the new c was never declared dead"
        );
        assert_eq!(
            net.nodes[i]
                .m
                .members()
                .filter(|m| m.info.id.as_str() == "c")
                .count(),
            1,
            "no stale c"
        );
    }
    // Old-incarnation gossip arriving late is ignored.
    let stale = GossipEntry {
        id: NodeId::new("c").unwrap(),
        incarnation: 1,
        heartbeat: 1_000_000,
        left: false,
        load: Load::default(),
        version: 99,
        data: None,
    };
    let now = net.now;
    net.nodes[0].m.handle_message(
        now,
        &NodeId::new("b").unwrap(),
        GossipMsg {
            entries: vec![stale],
            pull: vec![],
        },
    );
    assert_eq!(
        net.nodes[0]
            .m
            .member(&NodeId::new("c").unwrap())
            .unwrap()
            .info
            .incarnation,
        2
    );
}

#[test]
fn carried_rooms_and_load_are_gossiped() {
    let mut net = three_from_one_seed();
    net.run_for(Duration::from_secs(1));
    let rooms = BTreeMap::from([(
        "lobby".to_string(),
        CarriedRoom {
            publisher: true,
            h264_profile_level_id: Some(0x42c01e),
        },
    )]);
    net.nodes[1].m.set_rooms(rooms);
    // c pulls the room from b: it carries it, but does not host its publisher.
    net.nodes[2].m.set_rooms(BTreeMap::from([("lobby".to_string(), CarriedRoom::default())]));
    net.nodes[1].m.update_self_load(Load {
        cpu_permille: 420,
        sessions: 17,
        bandwidth_bps: 5_000_000,
    });
    net.run_for(Duration::from_secs(1));
    for i in [0, 2] {
        let host = net.nodes[i].m.node_hosting("lobby").expect("room found");
        assert_eq!(host.id.as_str(), "b");
        assert_eq!(host.rooms["lobby"].h264_profile_level_id, Some(0x42c01e));
        assert_eq!(host.load.sessions, 17);
        assert!(net.nodes[i].m.node_hosting("nowhere").is_none());
        assert!(net.nodes[i]
            .events
            .iter()
            .any(|(_, e)| matches!(e, MembershipEvent::NodeUpdated { id } if id.as_str() == "b")));
    }
    assert_eq!(
        net.nodes[1].m.node_hosting("lobby").unwrap().id.as_str(),
        "b",
        "own rooms count too"
    );
    let c_seen_by_a = net.nodes[0].m.member(&NodeId::new("c").unwrap()).expect("c known");
    assert_eq!(c_seen_by_a.info.rooms.get("lobby"), Some(&CarriedRoom::default()));
    net.nodes[1].m.set_rooms(BTreeMap::new());
    net.run_for(Duration::from_secs(1));
    assert!(net.nodes[0].m.node_hosting("lobby").is_none(), "c carries lobby but does not publish it");
    // A host that died no longer hosts.
    net.nodes[2].m.set_rooms(BTreeMap::from([(
        "r2".to_string(),
        CarriedRoom {
            publisher: true,
            h264_profile_level_id: None,
        },
    )]));
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.nodes[0].m.node_hosting("r2").unwrap().id.as_str(), "c");
    net.stop(2);
    net.run_for(Duration::from_secs(6));
    assert!(net.nodes[0].m.node_hosting("r2").is_none());
}

#[test]
fn graceful_leave_is_final() {
    let mut net = three_from_one_seed();
    net.run_for(Duration::from_secs(1));
    net.nodes[1].m.leave();
    net.run_for(Duration::from_millis(10));
    net.stop(1);
    for i in [0, 2] {
        assert!(net
            .first_event(
                i,
                |e| matches!(e, MembershipEvent::NodeLeft { id, .. } if id.as_str() == "b")
            )
            .is_some());
        assert_eq!(net.status(i, "b"), Some(MemberStatus::Left));
    }
    net.run_for(Duration::from_secs(10));
    assert!(net.first_event(0, |e| is_dead(e, "b")).is_none());
    assert_eq!(net.status(0, "b"), Some(MemberStatus::Left));
}

#[test]
fn unknown_node_without_data_is_pulled() {
    let now = Instant::now();
    let mut a = Membership::new(info("a", 7000, 1), vec![]);
    a.handle_timeout(now);
    while a.poll_output().is_some() {}
    let b = NodeId::new("b").unwrap();
    let entry = GossipEntry {
        id: NodeId::new("x").unwrap(),
        incarnation: 5,
        heartbeat: 9,
        left: false,
        load: Load::default(),
        version: 3,
        data: None,
    };
    a.handle_message(
        now,
        &b,
        GossipMsg {
            entries: vec![entry],
            pull: vec![NodeId::new("a").unwrap()],
        },
    );
    let outs: Vec<MembershipOutput> = std::iter::from_fn(|| a.poll_output()).collect();
    assert!(
        outs.iter().any(
            |o| matches!(o, MembershipOutput::Send { to, msg } if *to == b
        && msg.pull.iter().any(|p| p.as_str() == "x"))
        ),
        "{outs:?}"
    );
    // And a answers b's pull with its full entry.
    assert!(
        outs.iter()
            .any(|o| matches!(o, MembershipOutput::Send { msg, .. }
        if msg.entries.iter().any(|e| e.id.as_str() == "a" && e.data.is_some()))),
        "{outs:?}"
    );
    assert_eq!(a.members().count(), 0, "no member without data");
}
