//! What a connection does between "TLS is up" and "link is up": the auth frame exchange, reading the
//! control stream, and keeping a single link per node when two exist.

use quinn_proto::{ConnectionHandle, Dir, Event, ReadError, StreamEvent};
use tracing::{debug, info, trace, warn};

use super::conn::{Conn, FlushError, Phase};
use super::{AuthFailure, CloseCode, LinkEndpoint, LinkEvent};
use crate::auth::Role;
use crate::node::{Hello, NodeId};
use crate::wire::{decode_auth, decode_control, encode_frame, AuthFrame};

impl LinkEndpoint {
    pub(super) fn on_event(&mut self, c: &mut Conn, ev: Event) {
        match ev {
            Event::Connected => self.on_connected(c),
            Event::ConnectionLost { reason } => self.on_lost(c, reason),
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(id) = c.conn.streams().accept(Dir::Uni) {
                    if c.rx.is_none() {
                        c.rx = Some(id);
                    } else {
                        self.close_conn(c, CloseCode::Protocol, "second control stream");
                        return;
                    }
                }
                self.read_control(c);
            }
            Event::Stream(StreamEvent::Readable { id }) if Some(id) == c.rx => self.read_control(c),
            Event::Stream(StreamEvent::Writable { .. }) => {
                if let Err(FlushError::Stream(e)) = c.flush() {
                    self.close_conn(c, CloseCode::Protocol, &format!("control stream: {e}"));
                }
            }
            Event::Stream(StreamEvent::Stopped { id, .. }) if Some(id) == c.tx => {
                self.close_conn(c, CloseCode::Protocol, "control stream stopped by peer");
            }
            Event::DatagramReceived => {
                while let Some(bytes) = c.conn.datagrams().recv() {
                    if c.phase == Phase::Up {
                        self.events
                            .push_back(LinkEvent::Datagram { peer: c.id, bytes });
                    } else {
                        self.dropped_unauthenticated += 1;
                        trace!(peer = %c.id, "dropping datagram before authentication");
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, c: &mut Conn) {
        if c.phase != Phase::Handshake {
            return;
        }
        c.phase = Phase::Auth {
            deadline: self.now + self.cfg.auth_timeout,
        };
        let proof = match self.secret.prove(c.role, c.conn.crypto_session()) {
            Ok(p) => p,
            Err(e) => {
                warn!(peer = %c.id, error = %e, "cannot compute cluster proof");
                self.close_conn(c, CloseCode::Protocol, "no exporter");
                return;
            }
        };
        let Some(tx) = c.conn.streams().open(Dir::Uni) else {
            self.close_conn(c, CloseCode::Protocol, "peer allows no control stream");
            return;
        };
        c.tx = Some(tx);
        let frame = match encode_frame(&AuthFrame {
            hello: self.cfg.hello.clone(),
            proof,
        }) {
            Ok(f) => f,
            Err(e) => {
                warn!(peer = %c.id, error = %e, "cannot encode hello");
                self.close_conn(c, CloseCode::Protocol, "hello encoding");
                return;
            }
        };
        c.pending_bytes += frame.len();
        c.pending.push_back(frame);
        if let Err(FlushError::Stream(e)) = c.flush() {
            self.close_conn(c, CloseCode::Protocol, &format!("control stream: {e}"));
            return;
        }
        // Frames that arrived before the handshake completed were left buffered.
        self.read_control(c);
    }

    fn read_control(&mut self, c: &mut Conn) {
        let Some(id) = c.rx else { return };
        if !matches!(c.phase, Phase::Auth { .. } | Phase::Up) {
            return;
        }
        let mut ended = None;
        {
            let mut stream = c.conn.recv_stream(id);
            let Ok(mut chunks) = stream.read(true) else {
                return;
            };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => c.decoder.push(&chunk.bytes),
                    Ok(None) => {
                        ended = Some("control stream finished by peer".to_string());
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(ReadError::Reset(code)) => {
                        ended = Some(format!("control stream reset by peer ({code})"));
                        break;
                    }
                }
            }
            // Flow-control credit goes out with the next transmit.
            let _ = chunks.finalize();
        }
        loop {
            if c.phase == Phase::Closed {
                return;
            }
            // Before authentication only the auth frame is looked at.
            let authenticating = matches!(c.phase, Phase::Auth { .. });
            match c.decoder.next_frame() {
                Ok(Some(payload)) => {
                    if authenticating {
                        self.on_auth_frame(c, &payload);
                    } else {
                        match decode_control(&payload) {
                            Ok(msg) => self
                                .events
                                .push_back(LinkEvent::Control { peer: c.id, msg }),
                            Err(e) => {
                                warn!(peer = %c.id, node = ?c.node_id(), error = %e, "bad control frame");
                                self.close_conn(c, CloseCode::Protocol, "bad control frame");
                                return;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(peer = %c.id, node = ?c.node_id(), error = %e, "bad control framing");
                    if authenticating {
                        self.fail_auth(c, None, AuthFailure::Malformed(e.to_string()));
                    } else {
                        self.close_conn(c, CloseCode::Protocol, "bad framing");
                    }
                    return;
                }
            }
        }
        if let Some(why) = ended {
            if c.phase != Phase::Closed {
                self.close_conn(c, CloseCode::Protocol, &why);
            }
        }
    }

    fn on_auth_frame(&mut self, c: &mut Conn, payload: &[u8]) {
        let frame = match decode_auth(payload) {
            Ok(f) => f,
            Err(e) => {
                self.fail_auth(c, None, AuthFailure::Malformed(e.to_string()));
                return;
            }
        };
        if self
            .secret
            .verify(c.role.opposite(), c.conn.crypto_session(), &frame.proof)
            .is_err()
        {
            self.fail_auth(c, Some(frame.hello.node_id), AuthFailure::BadProof);
            return;
        }
        let hello = frame.hello;
        if hello.node_id == self.cfg.hello.node_id {
            info!(peer = %c.id, addr = %c.conn.remote_address(), "cluster link to ourselves; not redialing it");
            if let Some(t) = c.dial_target {
                self.self_addrs.insert(t);
                self.dialer.forget(t);
            }
            self.close_conn(c, CloseCode::SelfLink, "self");
            return;
        }
        if !self.resolve_duplicates(c, &hello) {
            return;
        }
        c.phase = Phase::Up;
        let addr = c.conn.remote_address();
        for a in [Some(addr), Some(hello.addrs.quic), c.dial_target]
            .into_iter()
            .flatten()
        {
            self.dialer.linked(a, c.id);
        }
        info!(peer = %c.id, node = %hello.node_id, incarnation = hello.incarnation, zone = %hello.zone,
            addr = %addr, dialed = c.role == Role::Dialer, "cluster link up");
        c.hello = Some(hello.clone());
        self.events.push_back(LinkEvent::Up {
            peer: c.id,
            node_id: hello.node_id.clone(),
            hello,
            addr,
        });
    }

    /// Keeps one link per node. Returns whether `c` (just authenticated as `hello`) survives.
    fn resolve_duplicates(&mut self, c: &mut Conn, hello: &Hello) -> bool {
        let me = self.cfg.hello.node_id.clone();
        let dialer_of = |role: Role| {
            if role == Role::Dialer {
                &me
            } else {
                &hello.node_id
            }
        };
        let others: Vec<ConnectionHandle> = self
            .conns
            .iter()
            .filter(|(_, o)| o.phase == Phase::Up && o.node_id() == Some(&hello.node_id))
            .map(|(h, _)| *h)
            .collect();
        for h in others {
            let Some(mut o) = self.conns.remove(&h) else {
                continue;
            };
            let o_inc = o.hello.as_ref().map_or(0, |x| x.incarnation);
            let keep_new = if hello.incarnation != o_inc {
                hello.incarnation > o_inc
            } else {
                let (new_dialer, old_dialer) = (dialer_of(c.role), dialer_of(o.role));
                if new_dialer != old_dialer {
                    new_dialer < old_dialer
                } else {
                    true
                }
            };
            debug!(node = %hello.node_id, kept = %(if keep_new { c.id } else { o.id }),
                closed = %(if keep_new { o.id } else { c.id }), "duplicate cluster link");
            if keep_new {
                self.close_conn(&mut o, CloseCode::Duplicate, "duplicate");
                self.conns.insert(h, o);
                self.drive(h);
            } else {
                let survivor = o.id;
                self.conns.insert(h, o);
                self.close_conn(c, CloseCode::Duplicate, "duplicate");
                for a in [c.dial_target, Some(c.conn.remote_address())]
                    .into_iter()
                    .flatten()
                {
                    self.dialer.linked(a, survivor);
                }
                return false;
            }
        }
        true
    }

    pub(super) fn fail_auth(&mut self, c: &mut Conn, node_id: Option<NodeId>, reason: AuthFailure) {
        let addr = c.conn.remote_address();
        warn!(peer = %c.id, addr = %addr, claimed_node = ?node_id.as_ref().map(NodeId::as_str),
            reason = ?reason, "cluster link authentication failed");
        let code = if reason == AuthFailure::Timeout {
            CloseCode::AuthTimeout
        } else {
            CloseCode::AuthFailed
        };
        self.close_conn(c, code, "authentication failed");
        self.events.push_back(LinkEvent::AuthFailed {
            addr,
            node_id,
            reason,
        });
    }
}
