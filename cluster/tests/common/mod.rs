//! In-memory network for driving `LinkEndpoint`s with a fake clock.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sfumato_cluster::{Hello, LinkConfig, LinkEndpoint, LinkEvent, NodeAddrs, NodeId};

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn hello(name: &str, port: u16, incarnation: u64) -> Hello {
    Hello {
        node_id: NodeId::new(name).unwrap(),
        incarnation,
        zone: "z1".into(),
        addrs: NodeAddrs {
            quic: addr(port),
            http: addr(port + 1000),
            media: vec![addr(port + 2000)],
        },
    }
}

pub struct SimNode {
    pub addr: SocketAddr,
    pub ep: LinkEndpoint,
    /// Every event with the fake time it was polled at.
    pub events: Vec<(Instant, LinkEvent)>,
    /// Silent nodes receive nothing, send nothing and see no time pass (a frozen or killed process).
    pub silent: bool,
}

pub struct Net {
    pub start: Instant,
    pub now: Instant,
    pub nodes: Vec<SimNode>,
    /// Datagrams delivered, per destination.
    pub delivered: HashMap<SocketAddr, usize>,
}

impl Net {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            now,
            nodes: Vec::new(),
            delivered: HashMap::new(),
        }
    }

    pub fn add(&mut self, name: &str, port: u16, secret: &str) -> usize {
        self.add_with(LinkConfig::new(secret, hello(name, port, 1)))
    }

    pub fn add_with(&mut self, cfg: LinkConfig) -> usize {
        let addr = cfg.hello.addrs.quic;
        self.add_at(addr, cfg)
    }

    /// A node whose socket address differs from the one it advertises.
    pub fn add_at(&mut self, addr: SocketAddr, cfg: LinkConfig) -> usize {
        let ep = LinkEndpoint::new(self.now, cfg).unwrap();
        self.nodes.push(SimNode {
            addr,
            ep,
            events: Vec::new(),
            silent: false,
        });
        self.nodes.len() - 1
    }

    /// Replaces node `i` with a fresh process (new endpoint, same address).
    pub fn restart(&mut self, i: usize, cfg: LinkConfig) {
        let ep = LinkEndpoint::new(self.now, cfg).unwrap();
        self.nodes[i].ep = ep;
        self.nodes[i].silent = false;
        self.nodes[i].events.clear();
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn index_of(&self, a: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == a)
    }

    /// Delivers datagrams until none are left; collects events.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].ep.poll_transmit() {
                    moved = true;
                    if self.nodes[i].silent {
                        continue;
                    }
                    let Some(j) = self.index_of(t.dest) else {
                        continue;
                    };
                    if self.nodes[j].silent {
                        continue;
                    }
                    *self.delivered.entry(t.dest).or_default() += 1;
                    let from = self.nodes[i].addr;
                    self.nodes[j]
                        .ep
                        .handle_datagram(self.now, from, BytesMut::from(&t.bytes[..]));
                }
            }
            for n in &mut self.nodes {
                while let Some(e) = n.ep.poll_event() {
                    n.events.push((self.now, e));
                }
            }
            if !moved {
                return;
            }
        }
        panic!("network did not settle");
    }

    /// Runs the fake clock forward to `until`, firing timeouts on the way.
    pub fn run_until(&mut self, until: Instant) {
        self.settle();
        loop {
            let next = self
                .nodes
                .iter_mut()
                .filter(|n| !n.silent)
                .filter_map(|n| n.ep.poll_timeout())
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in self.nodes.iter_mut().filter(|n| !n.silent) {
                        if n.ep.poll_timeout().is_some_and(|t| t <= now) {
                            n.ep.handle_timeout(now);
                        }
                    }
                    self.settle();
                }
                _ => {
                    self.now = self.now.max(until);
                    return;
                }
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs until `pred` holds (checked after each step) or `limit` passes; returns whether it held.
    pub fn run_until_pred(&mut self, limit: Duration, mut pred: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if pred(self) {
                return true;
            }
            self.run_for(Duration::from_millis(10));
        }
        pred(self)
    }

    pub fn ups(&self, i: usize) -> Vec<(Instant, NodeId)> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|(t, e)| match e {
                LinkEvent::Up { node_id, .. } => Some((*t, node_id.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, i: usize, f: impl Fn(&LinkEvent) -> bool) -> usize {
        self.nodes[i].events.iter().filter(|(_, e)| f(e)).count()
    }
}

/// Captures `tracing` output of a test.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
