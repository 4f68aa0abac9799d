//! How connections end: local closes, losses reported by QUIC, and the redials that follow.

use bytes::Bytes;
use quinn_proto::ConnectionError;
use tracing::{debug, info, warn};

use super::conn::{Conn, Phase};
use super::{AuthFailure, CloseCode, DownReason, LinkEndpoint, LinkEvent, PeerId};

impl LinkEndpoint {
    /// Closes `c` locally; reports `Down` if it was up, and schedules redials.
    pub(super) fn close_conn(&mut self, c: &mut Conn, code: CloseCode, reason: &str) {
        if c.phase == Phase::Closed {
            return;
        }
        let was_up = c.phase == Phase::Up;
        c.phase = Phase::Closed;
        c.conn.close(
            self.now,
            code.varint(),
            Bytes::copy_from_slice(reason.as_bytes()),
        );
        if was_up {
            if let Some(node_id) = c.node_id().cloned() {
                info!(peer = %c.id, node = %node_id, code = ?code, reason, "cluster link closed");
                self.events.push_back(LinkEvent::Down {
                    peer: c.id,
                    node_id,
                    reason: DownReason::Closed(code),
                });
            }
        }
        self.after_lost(c.id);
    }

    pub(super) fn on_lost(&mut self, c: &mut Conn, reason: ConnectionError) {
        let was = c.phase;
        c.phase = Phase::Closed;
        let addr = c.conn.remote_address();
        match was {
            Phase::Up => {
                let reason = down_reason(&reason);
                if let Some(node_id) = c.node_id().cloned() {
                    info!(peer = %c.id, node = %node_id, addr = %addr, reason = ?reason, "cluster link down");
                    self.events.push_back(LinkEvent::Down {
                        peer: c.id,
                        node_id,
                        reason,
                    });
                }
            }
            Phase::Handshake | Phase::Auth { .. } => {
                let code = match &reason {
                    ConnectionError::ApplicationClosed(ac) => {
                        CloseCode::from_code(ac.error_code.into_inner())
                    }
                    _ => None,
                };
                match code {
                    Some(CloseCode::AuthFailed) => {
                        warn!(peer = %c.id, addr = %addr, "cluster peer refused our proof (cluster secret mismatch?)");
                        self.events.push_back(LinkEvent::AuthFailed {
                            addr,
                            node_id: None,
                            reason: AuthFailure::RejectedByPeer,
                        });
                    }
                    Some(CloseCode::SelfLink) => {
                        if let Some(t) = c.dial_target {
                            info!(peer = %c.id, addr = %t, "cluster link to ourselves; not redialing it");
                            self.self_addrs.insert(t);
                            self.dialer.forget(t);
                        }
                    }
                    _ => {
                        debug!(peer = %c.id, addr = %addr, error = %reason, "cluster connection attempt failed")
                    }
                }
            }
            Phase::Closed => {}
        }
        self.after_lost(c.id);
    }

    /// Schedules redials for the targets `peer` covered, unless another link still covers them.
    pub(super) fn after_lost(&mut self, peer: PeerId) {
        for addr in self.dialer.lost(self.now, peer) {
            if let Some(other) = self.up_peer_covering(addr) {
                self.dialer.linked(addr, other);
            }
        }
    }
}

fn down_reason(e: &ConnectionError) -> DownReason {
    match e {
        ConnectionError::TimedOut => DownReason::TimedOut,
        ConnectionError::ApplicationClosed(ac) => DownReason::ClosedByPeer {
            code: ac.error_code.into_inner(),
            reason: String::from_utf8_lossy(&ac.reason).into_owned(),
        },
        ConnectionError::Reset => DownReason::Reset,
        ConnectionError::LocallyClosed => DownReason::Closed(CloseCode::Normal),
        other => DownReason::Transport(other.to_string()),
    }
}
