//! One QUIC connection of the link endpoint and where it stands (handshake → auth → up → closed), with
//! its control-stream send queue.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Buf, Bytes};
use quinn_proto::{Connection, StreamId, WriteError};

use super::PeerId;
use crate::auth::Role;
use crate::frame::FrameDecoder;
use crate::node::{Hello, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Handshake,
    Auth { deadline: Instant },
    Up,
    Closed,
}

pub(super) struct Conn {
    pub(super) id: PeerId,
    pub(super) conn: Connection,
    pub(super) role: Role,
    pub(super) dial_target: Option<SocketAddr>,
    pub(super) phase: Phase,
    pub(super) hello: Option<Hello>,
    pub(super) tx: Option<StreamId>,
    pub(super) rx: Option<StreamId>,
    pub(super) decoder: FrameDecoder,
    pub(super) pending: VecDeque<Bytes>,
    pub(super) pending_bytes: usize,
}

pub(super) enum FlushError {
    Stream(String),
}

impl Conn {
    /// Writes queued control bytes into the send stream, as far as flow control allows.
    pub(super) fn flush(&mut self) -> Result<(), FlushError> {
        let Some(id) = self.tx else { return Ok(()) };
        while let Some(front) = self.pending.front_mut() {
            let mut chunk = [front.clone()];
            match self.conn.send_stream(id).write_chunks(&mut chunk) {
                Ok(written) => {
                    self.pending_bytes -= written.bytes;
                    if written.bytes >= front.len() {
                        self.pending.pop_front();
                    } else {
                        front.advance(written.bytes);
                        if written.bytes == 0 {
                            break;
                        }
                    }
                }
                Err(WriteError::Blocked) => break,
                Err(e) => return Err(FlushError::Stream(e.to_string())),
            }
        }
        Ok(())
    }

    pub(super) fn node_id(&self) -> Option<&NodeId> {
        self.hello.as_ref().map(|h| &h.node_id)
    }

    pub(super) fn covers(&self, addr: SocketAddr) -> bool {
        self.phase == Phase::Up
            && (self.conn.remote_address() == addr
                || self.hello.as_ref().is_some_and(|h| h.addrs.quic == addr))
    }
}
