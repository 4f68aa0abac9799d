//! Reassembly of length-prefixed frames from the chunks a QUIC stream delivers.
//!
//! Stream chunks have arbitrary boundaries; this buffers them and hands out whole frame payloads as
//! `Bytes` slices of one growing buffer (no allocation per frame once the buffer has grown). A length
//! prefix above the limit is an error at once, so a peer cannot make us buffer more than one frame.

use bytes::{Buf, Bytes, BytesMut};

use crate::wire::{WireError, FRAME_HEADER_LEN};

pub(crate) struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame payload, `Ok(None)` if more bytes are needed.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        let Some(header) = self.buf.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; FRAME_HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(WireError::Empty);
        }
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_across_chunks() {
        let mut d = FrameDecoder::new(16);
        let stream = [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1, b'z'];
        for b in stream {
            d.push(&[b]);
        }
        assert_eq!(d.next_frame().unwrap().unwrap(), &b"abc"[..]);
        assert_eq!(d.next_frame().unwrap().unwrap(), &b"z"[..]);
        assert!(d.next_frame().unwrap().is_none());
    }

    #[test]
    fn rejects_oversized_and_empty() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 17]);
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
    }
}
