//! Links and membership together, the way a node's shell glues them (in memory, fake clock):
//! membership outputs drive the link endpoint, link events feed membership.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sfumato_cluster::{
    ControlMsg, LinkConfig, LinkEndpoint, LinkEvent, Load, MemberStatus, Membership,
    MembershipEvent, MembershipOutput, NodeAddrs, NodeId, NodeInfo, PeerId,
};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The glue a shell needs between the two state machines.
struct Node {
    addr: SocketAddr,
    link: LinkEndpoint,
    mem: Membership,
    peers: HashMap<PeerId, NodeId>,
    events: Vec<(Instant, MembershipEvent)>,
    link_events: Vec<(Instant, LinkEvent)>,
    silent: bool,
}

impl Node {
    fn new(
        now: Instant,
        name: &str,
        port: u16,
        incarnation: u64,
        secret: &str,
        seeds: &[u16],
    ) -> Self {
        let info = NodeInfo {
            id: NodeId::new(name).unwrap(),
            incarnation,
            zone: "z".into(),
            addrs: NodeAddrs {
                quic: addr(port),
                http: addr(port + 1),
                media: vec![],
            },
            load: Load::default(),
            rooms: BTreeMap::new(),
        };
        let link = LinkEndpoint::new(now, LinkConfig::new(secret, info.hello())).unwrap();
        let mut mem = Membership::new(info, seeds.iter().map(|p| addr(*p)).collect());
        mem.handle_timeout(now);
        Self {
            addr: addr(port),
            link,
            mem,
            peers: HashMap::new(),
            events: vec![],
            link_events: vec![],
            silent: false,
        }
    }

    /// Moves outputs between membership and links until both are quiet.
    fn glue(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(out) = self.mem.poll_output() {
                moved = true;
                match out {
                    MembershipOutput::Send { to, msg } => {
                        if let Some(peer) = self.link.peer_of(&to) {
                            // Backpressure or a link going down: gossip is periodic, dropping is fine.
                            let _ = self.link.send_control(peer, &ControlMsg::Gossip(msg));
                        }
                    }
                    MembershipOutput::Connect(a) => self.link.keep_linked(now, a),
                    MembershipOutput::Disconnect(a) => self.link.forget(a),
                    MembershipOutput::Event(e) => self.events.push((now, e)),
                }
            }
            while let Some(ev) = self.link.poll_event() {
                moved = true;
                match &ev {
                    LinkEvent::Up { peer, node_id, .. } => {
                        self.peers.insert(*peer, node_id.clone());
                        self.mem.handle_link_up(now, node_id);
                    }
                    LinkEvent::Control {
                        peer,
                        msg: ControlMsg::Gossip(g),
                    } => {
                        if let Some(node) = self.peers.get(peer) {
                            self.mem.handle_message(now, &node.clone(), g.clone());
                        }
                    }
                    LinkEvent::Down { peer, .. } => {
                        self.peers.remove(peer);
                    }
                    _ => {}
                }
                self.link_events.push((now, ev));
            }
            if !moved {
                return;
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        [self.link.poll_timeout(), self.mem.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn status_of(&self, who: &str) -> Option<MemberStatus> {
        self.mem
            .member(&NodeId::new(who).unwrap())
            .map(|m| m.status)
    }
}

struct Sim {
    now: Instant,
    nodes: Vec<Node>,
}

impl Sim {
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            let now = self.now;
            for n in &mut self.nodes {
                n.glue(now);
            }
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].link.poll_transmit() {
                    moved = true;
                    if self.nodes[i].silent {
                        continue;
                    }
                    let from = self.nodes[i].addr;
                    if let Some(j) = self
                        .nodes
                        .iter()
                        .position(|n| n.addr == t.dest && !n.silent)
                    {
                        self.nodes[j]
                            .link
                            .handle_datagram(now, from, BytesMut::from(&t.bytes[..]));
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("did not settle");
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.settle();
        loop {
            let next = self
                .nodes
                .iter_mut()
                .filter(|n| !n.silent)
                .filter_map(|n| n.poll_timeout())
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in self.nodes.iter_mut().filter(|n| !n.silent) {
                        if n.link.poll_timeout().is_some_and(|t| t <= now) {
                            n.link.handle_timeout(now);
                        }
                        if n.mem.poll_timeout().is_some_and(|t| t <= now) {
                            n.mem.handle_timeout(now);
                        }
                    }
                    self.settle();
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
    }
}

#[test]
fn cluster_forms_detects_failure_rejoins_and_refuses_impostor() {
    let now = Instant::now();
    let mut sim = Sim {
        now,
        nodes: vec![
            Node::new(now, "a", 4433, 1, "cluster-secret", &[]),
            Node::new(now, "b", 4443, 1, "cluster-secret", &[4433]),
            Node::new(now, "c", 4453, 1, "cluster-secret", &[4433]),
            Node::new(now, "mallory", 4463, 1, "guessed", &[4433, 4443]),
        ],
    };
    sim.run_for(Duration::from_secs(2));
    for (i, others) in [(0, ["b", "c"]), (1, ["a", "c"]), (2, ["a", "b"])] {
        for o in others {
            assert_eq!(
                sim.nodes[i].status_of(o),
                Some(MemberStatus::Alive),
                "node {i} about {o}"
            );
        }
        assert_eq!(
            sim.nodes[i].link.links().count(),
            2,
            "full mesh of authenticated links"
        );
        assert_eq!(
            sim.nodes[i].status_of("mallory"),
            None,
            "impostor never joins"
        );
    }
    assert_eq!(sim.nodes[3].mem.members().count(), 0);
    assert!(sim.nodes[0]
        .link_events
        .iter()
        .any(|(_, e)| matches!(e, LinkEvent::AuthFailed { .. })));

    // kill -9 c.
    let t0 = sim.now;
    sim.nodes[2].silent = true;
    sim.run_for(Duration::from_secs(8));
    for i in 0..2 {
        let n = &sim.nodes[i];
        let down = n.link_events.iter().find(|(t, e)| {
            *t > t0 && matches!(e, LinkEvent::Down { node_id, .. } if node_id.as_str() == "c")
        });
        let dead = n
            .events
            .iter()
            .find(|(_, e)| matches!(e, MembershipEvent::NodeDead { id, .. } if id.as_str() == "c"));
        let (down, dead) = (
            down.expect("link down").0 - t0,
            dead.expect("declared dead").0 - t0,
        );
        assert!(down <= Duration::from_secs(3), "link down after {down:?}");
        assert!(dead <= Duration::from_millis(4600), "dead after {dead:?}");
        assert_eq!(
            n.status_of("b").or(n.status_of("a")),
            Some(MemberStatus::Alive)
        );
    }

    // c restarts (new incarnation) and rejoins through its seed.
    let t1 = sim.now;
    sim.nodes[2] = Node::new(t1, "c", 4453, 2, "cluster-secret", &[4433]);
    sim.run_for(Duration::from_secs(3));
    for i in 0..2 {
        assert_eq!(sim.nodes[i].status_of("c"), Some(MemberStatus::Alive));
        assert_eq!(
            sim.nodes[i]
                .mem
                .member(&NodeId::new("c").unwrap())
                .unwrap()
                .info
                .incarnation,
            2
        );
        assert!(sim.nodes[i]
            .link
            .links()
            .any(|(_, h)| h.node_id.as_str() == "c" && h.incarnation == 2));
    }
    assert_eq!(sim.nodes[2].link.links().count(), 2);
}
