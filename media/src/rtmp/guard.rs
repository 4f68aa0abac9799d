//! A shadow RTMP chunk-stream parser that vets bytes before `rml_rtmp` sees them.
//!
//! `rml_rtmp` 0.8's `ChunkDeserializer` trusts its peer in ways a public ingest port cannot:
//!
//! - any chunk size up to 2³¹ and any message length up to 16 MiB are buffered;
//! - it keeps one partial-message buffer for all chunk streams, so a chunk of another chunk stream arriving
//!   in the middle of a message corrupts it (and can underflow `length - current_payload_length`, which
//!   ends in a capacity-overflow panic);
//! - AMF0 values are decoded recursively, so a command of deeply nested objects (4 bytes per level)
//!   overflows the thread's stack — an abort of the whole process that `catch_unwind` cannot stop.
//!
//! [`ChunkGuard`] follows the same framing as `rml_rtmp` (header formats, extended timestamps, chunk
//! size changes) while only counting payload bytes, and refuses: a chunk size outside `1..=max`, a message
//! longer than the limit, interleaved chunk streams (OBS, ffmpeg and librtmp never interleave: each message
//! is written whole), an AMF message that is too large or nested too deeply. What it accepts, `rml_rtmp`
//! parses with bounded memory and stack.

use std::collections::HashMap;

/// Limits enforced on the publisher's chunk stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest chunk size the peer may set (SetChunkSize).
    pub max_chunk_size: u32,
    /// Largest message (e.g. one video frame) that may be buffered.
    pub max_message_size: usize,
    /// Largest AMF command/data message.
    pub max_amf_size: usize,
    /// Deepest nesting of AMF objects/arrays.
    pub max_amf_depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("chunk on stream {csid} continues no earlier chunk")]
    NoPreviousChunk { csid: u32 },
    #[error("chunk stream {csid} interleaved into an unfinished message on stream {partial}")]
    Interleaved { csid: u32, partial: u32 },
    #[error("new message header on chunk stream {csid} before its previous message ended")]
    UnfinishedMessage { csid: u32 },
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    MessageTooLarge { len: usize, limit: usize },
    #[error("chunk size {size} outside 1..={limit}")]
    BadChunkSize { size: u64, limit: u32 },
    #[error("AMF message nested deeper than {0}")]
    AmfTooDeep(usize),
    #[error("chunk payload with no message in progress")]
    PayloadWithoutMessage,
}

const TYPE_SET_CHUNK_SIZE: u8 = 1;
const TYPE_AMF3_DATA: u8 = 15;
const TYPE_AMF3_COMMAND: u8 = 17;
const TYPE_AMF0_DATA: u8 = 18;
const TYPE_AMF0_COMMAND: u8 = 20;
const EXTENDED_TIMESTAMP: u32 = 0x00ff_ffff;
const MAX_HEADER: usize = 3 + 11 + 4;

fn is_amf(type_id: u8) -> bool {
    matches!(type_id, TYPE_AMF3_DATA | TYPE_AMF3_COMMAND | TYPE_AMF0_DATA | TYPE_AMF0_COMMAND)
}

#[derive(Debug, Clone, Copy)]
struct PrevHeader {
    msg_len: u32,
    type_id: u8,
    /// The 24-bit timestamp field as last written (0xFFFFFF: extended timestamps follow).
    ts_field: u32,
}

#[derive(Debug)]
struct Partial {
    csid: u32,
    type_id: u8,
    remaining: usize,
    /// Collected for the message types the guard must look into.
    body: Option<Vec<u8>>,
}

/// See the module docs.
#[derive(Debug)]
pub struct ChunkGuard {
    limits: Limits,
    chunk_size: usize,
    /// Bytes of a header that arrived split across inputs.
    header: Vec<u8>,
    /// Payload bytes left in the current chunk.
    chunk_left: usize,
    prev: HashMap<u32, PrevHeader>,
    partial: Option<Partial>,
}

struct Header {
    len: usize,
    fmt: u8,
    csid: u32,
    ts_field: Option<u32>,
    msg_len: Option<u32>,
    type_id: Option<u8>,
}

impl ChunkGuard {
    pub fn new(limits: Limits) -> Self {
        ChunkGuard {
            limits,
            chunk_size: 128,
            header: Vec::with_capacity(MAX_HEADER),
            chunk_left: 0,
            prev: HashMap::new(),
            partial: None,
        }
    }

    /// Bytes of unfinished messages currently held (what `rml_rtmp` holds too).
    pub fn pending_bytes(&self) -> usize {
        self.partial.as_ref().and_then(|p| p.body.as_ref().map(|b| b.len())).unwrap_or(0) + self.header.len()
    }

    /// Vets the next bytes of the chunk stream (everything after the handshake, in order), up to the end
    /// of the first message that completes in `data`. Returns how many bytes were vetted (all of `data` if
    /// no message completes), so the caller can hand `rml_rtmp` one message at a time.
    pub fn scan(&mut self, mut data: &[u8]) -> Result<usize, GuardError> {
        let total = data.len();
        loop {
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(data.len());
                if n == 0 {
                    return Ok(total);
                }
                let Some(partial) = self.partial.as_mut() else {
                    // Unreachable by construction (chunk_left > 0 only inside a message); fail the
                    // connection rather than the process if that ever breaks.
                    self.chunk_left = 0;
                    return Err(GuardError::PayloadWithoutMessage);
                };
                if let Some(body) = partial.body.as_mut() {
                    body.extend_from_slice(&data[..n]);
                }
                partial.remaining -= n;
                self.chunk_left -= n;
                data = &data[n..];
                if self.chunk_left == 0 && partial.remaining == 0 {
                    self.finish_message()?;
                    return Ok(total - data.len());
                }
                continue;
            }
            if data.is_empty() {
                return Ok(total);
            }
            let had = self.header.len();
            let take = (MAX_HEADER - had).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            match self.parse_header()? {
                None => {
                    // Not enough bytes yet: all of `data` fit in the header buffer (it is < MAX_HEADER).
                    return Ok(total);
                }
                Some(h) => {
                    data = &data[h.len - had..];
                    self.header.clear();
                    if self.apply_header(h)? {
                        return Ok(total - data.len());
                    }
                }
            }
        }
    }

    /// [`Self::scan`] over all of `data`.
    pub fn scan_all(&mut self, mut data: &[u8]) -> Result<(), GuardError> {
        while !data.is_empty() {
            let n = self.scan(data)?;
            data = &data[n..];
        }
        Ok(())
    }

    fn parse_header(&self) -> Result<Option<Header>, GuardError> {
        let b = &self.header;
        let Some(&b0) = b.first() else { return Ok(None) };
        let fmt = b0 >> 6;
        let (csid, mut at) = match b0 & 0x3f {
            0 => match b.get(1) {
                Some(&x) => (x as u32 + 64, 2),
                None => return Ok(None),
            },
            1 => match b.get(1..3) {
                Some(x) => (x[1] as u32 * 256 + x[0] as u32 + 64, 3),
                None => return Ok(None),
            },
            x => (x as u32, 1),
        };
        let prev = self.prev.get(&csid).copied();
        if fmt != 0 && prev.is_none() {
            return Err(GuardError::NoPreviousChunk { csid });
        }
        let msg_header_len = [11, 7, 3, 0][fmt as usize];
        let Some(mh) = b.get(at..at + msg_header_len) else { return Ok(None) };
        let u24 = |i: usize| u32::from_be_bytes([0, mh[i], mh[i + 1], mh[i + 2]]);
        let ts_field = (fmt < 3).then(|| u24(0));
        let msg_len = (fmt < 2).then(|| u24(3));
        let type_id = (fmt < 2).then(|| mh[6]);
        at += msg_header_len;
        let effective_ts_field = ts_field.or(prev.map(|p| p.ts_field)).unwrap_or(0);
        if effective_ts_field >= EXTENDED_TIMESTAMP {
            if b.len() < at + 4 {
                return Ok(None);
            }
            at += 4;
        }
        Ok(Some(Header { len: at, fmt, csid, ts_field, msg_len, type_id }))
    }

    /// Returns true if the header completed a (zero-length) message.
    fn apply_header(&mut self, h: Header) -> Result<bool, GuardError> {
        let prev = self.prev.get(&h.csid).copied().unwrap_or(PrevHeader { msg_len: 0, type_id: 0, ts_field: 0 });
        let updated = PrevHeader {
            msg_len: h.msg_len.unwrap_or(prev.msg_len),
            type_id: h.type_id.unwrap_or(prev.type_id),
            ts_field: h.ts_field.unwrap_or(prev.ts_field),
        };
        self.prev.insert(h.csid, updated);

        if let Some(partial) = &self.partial {
            if partial.csid != h.csid {
                return Err(GuardError::Interleaved { csid: h.csid, partial: partial.csid });
            }
            if h.fmt != 3 {
                return Err(GuardError::UnfinishedMessage { csid: h.csid });
            }
            self.chunk_left = partial.remaining.min(self.chunk_size);
            return Ok(false);
        }

        let len = updated.msg_len as usize;
        let limit = if is_amf(updated.type_id) {
            self.limits.max_amf_size.min(self.limits.max_message_size)
        } else {
            self.limits.max_message_size
        };
        if len > limit {
            return Err(GuardError::MessageTooLarge { len, limit });
        }
        let collect = updated.type_id == TYPE_SET_CHUNK_SIZE || is_amf(updated.type_id);
        self.partial = Some(Partial {
            csid: h.csid,
            type_id: updated.type_id,
            remaining: len,
            body: collect.then(|| Vec::with_capacity(len)),
        });
        self.chunk_left = len.min(self.chunk_size);
        if len == 0 {
            self.finish_message()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn finish_message(&mut self) -> Result<(), GuardError> {
        let Some(msg) = self.partial.take() else { return Ok(()) };
        let body = msg.body.unwrap_or_default();
        match msg.type_id {
            TYPE_SET_CHUNK_SIZE => {
                // Too short: rml_rtmp fails to read it and the session ends with its error.
                if let Some(b) = body.get(..4) {
                    let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    if size == 0 || size > self.limits.max_chunk_size {
                        return Err(GuardError::BadChunkSize { size: size as u64, limit: self.limits.max_chunk_size });
                    }
                    self.chunk_size = size as usize;
                }
            }
            TYPE_AMF3_COMMAND => {
                // rml_rtmp drops a leading 0 (AMF3 marker of a "fake" AMF3 command) and reads AMF0.
                let amf = if body.first() == Some(&0) { &body[1..] } else { &body[..] };
                check_amf_depth(amf, self.limits.max_amf_depth)?;
            }
            TYPE_AMF3_DATA | TYPE_AMF0_DATA | TYPE_AMF0_COMMAND => {
                check_amf_depth(&body, self.limits.max_amf_depth)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Containers open while walking AMF0.
enum Frame {
    Object,
    StrictArray { left: u32 },
}

enum Value {
    /// End of input or the object-end marker: the reader returns "no value".
    End,
    Scalar,
    Open(Frame),
}

/// Walks AMF0 the way `rml_amf0` 0.3 reads it, without recursion, and fails if containers nest deeper than
/// `max_depth`. Where `rml_amf0` would stop with an error the walk stops too (it recurses no deeper).
pub fn check_amf_depth(data: &[u8], max_depth: usize) -> Result<(), GuardError> {
    let mut r = AmfReader { data, pos: 0 };
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let step = match stack.last_mut() {
            None => match r.value() {
                Some(Value::End) | None => return Ok(()),
                Some(v) => v,
            },
            Some(Frame::Object) => {
                let Some(label_len) = r.u16() else { return Ok(()) };
                if label_len == 0 {
                    match r.u8() {
                        Some(0x09) => {
                            stack.pop();
                            continue;
                        }
                        _ => return Ok(()),
                    }
                }
                if !r.string(label_len as usize) {
                    return Ok(());
                }
                match r.value() {
                    None | Some(Value::End) => return Ok(()),
                    Some(v) => v,
                }
            }
            Some(Frame::StrictArray { left }) => {
                if *left == 0 {
                    stack.pop();
                    continue;
                }
                *left -= 1;
                match r.value() {
                    None => return Ok(()),
                    Some(Value::End) => {
                        stack.pop();
                        continue;
                    }
                    Some(v) => v,
                }
            }
        };
        if let Value::Open(frame) = step {
            stack.push(frame);
            if stack.len() > max_depth {
                return Err(GuardError::AmfTooDeep(max_depth));
            }
        }
    }
}

struct AmfReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl AmfReader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A string of `len` bytes, read like `Read::read` (a short read is not an error) then checked as
    /// UTF-8. False where rml_amf0 fails.
    fn string(&mut self, len: usize) -> bool {
        let end = self.pos.saturating_add(len).min(self.data.len());
        let ok = std::str::from_utf8(&self.data[self.pos..end]).is_ok();
        self.pos = end;
        ok
    }

    /// One value; None where rml_amf0 fails.
    fn value(&mut self) -> Option<Value> {
        let Some(marker) = self.u8() else { return Some(Value::End) };
        Some(match marker {
            0x09 => Value::End,
            0x00 => {
                self.take(8)?;
                Value::Scalar
            }
            0x01 => {
                self.u8()?;
                Value::Scalar
            }
            0x05 | 0x06 => Value::Scalar,
            0x02 => {
                let len = self.u16()?;
                if !self.string(len as usize) {
                    return None;
                }
                Value::Scalar
            }
            0x03 => Value::Open(Frame::Object),
            0x08 => {
                self.u32()?;
                Value::Open(Frame::Object)
            }
            0x0a => Value::Open(Frame::StrictArray { left: self.u32()? }),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { max_chunk_size: 65536, max_message_size: 1 << 20, max_amf_size: 64 << 10, max_amf_depth: 32 };

    /// Type-0 chunk header.
    fn fmt0(csid: u8, ts: u32, len: u32, type_id: u8, stream: u32) -> Vec<u8> {
        let mut v = vec![csid];
        v.extend_from_slice(&ts.min(EXTENDED_TIMESTAMP).to_be_bytes()[1..]);
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(type_id);
        v.extend_from_slice(&stream.to_le_bytes());
        if ts >= EXTENDED_TIMESTAMP {
            v.extend_from_slice(&ts.to_be_bytes());
        }
        v
    }

    /// Chunks a message the way OBS/ffmpeg write it.
    fn message(csid: u8, ts: u32, type_id: u8, body: &[u8], chunk: usize) -> Vec<u8> {
        let mut v = fmt0(csid, ts, body.len() as u32, type_id, 1);
        for (i, piece) in body.chunks(chunk).enumerate() {
            if i > 0 {
                v.push(0xc0 | csid);
                if ts >= EXTENDED_TIMESTAMP {
                    v.extend_from_slice(&ts.to_be_bytes());
                }
            }
            v.extend_from_slice(piece);
        }
        v
    }

    #[test]
    fn accepts_normal_traffic_byte_by_byte() {
        let mut stream = message(2, 0, 1, &4096u32.to_be_bytes(), 128);
        stream.extend(message(6, 40, 9, &[7u8; 10_000], 4096));
        stream.extend(message(4, 0xffff_fff0, 8, &[1u8; 300], 4096)); // extended timestamp
        stream.extend(message(3, 0, 20, &[0x02, 0, 4, b'p', b'l', b'a', b'y'], 4096));
        let mut whole = ChunkGuard::new(LIMITS);
        whole.scan_all(&stream).unwrap();
        let mut bytewise = ChunkGuard::new(LIMITS);
        for b in &stream {
            bytewise.scan_all(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(bytewise.chunk_size, 4096);
        assert_eq!(bytewise.pending_bytes(), 0);
    }

    #[test]
    fn refuses_bad_chunk_sizes_and_huge_messages() {
        let mut g = ChunkGuard::new(LIMITS);
        assert_eq!(
            g.scan_all(&message(2, 0, 1, &0x7fff_ffffu32.to_be_bytes(), 128)),
            Err(GuardError::BadChunkSize { size: 0x7fff_ffff, limit: 65536 })
        );
        let mut g = ChunkGuard::new(LIMITS);
        assert!(g.scan_all(&message(2, 0, 1, &0u32.to_be_bytes(), 128)).is_err());
        let mut g = ChunkGuard::new(LIMITS);
        assert_eq!(
            g.scan_all(&fmt0(6, 0, 0xff_ffff, 9, 1)),
            Err(GuardError::MessageTooLarge { len: 0xff_ffff, limit: 1 << 20 })
        );
        let mut g = ChunkGuard::new(LIMITS);
        assert!(matches!(g.scan_all(&fmt0(3, 0, 70_000, 20, 0)), Err(GuardError::MessageTooLarge { .. })));
    }

    #[test]
    fn refuses_interleaving_and_orphan_chunks() {
        let mut g = ChunkGuard::new(LIMITS);
        let mut v = fmt0(6, 0, 300, 9, 1);
        v.extend_from_slice(&[0; 128]);
        v.extend(message(4, 0, 8, &[1, 2], 128));
        assert_eq!(g.scan_all(&v), Err(GuardError::Interleaved { csid: 4, partial: 6 }));
        let mut g = ChunkGuard::new(LIMITS);
        assert_eq!(g.scan_all(&[0xc5]), Err(GuardError::NoPreviousChunk { csid: 5 }));
        let mut g = ChunkGuard::new(LIMITS);
        let mut v = fmt0(6, 0, 300, 9, 1);
        v.extend_from_slice(&[0; 128]);
        v.extend_from_slice(&[0x86, 0, 0, 1]);
        assert_eq!(g.scan_all(&v), Err(GuardError::UnfinishedMessage { csid: 6 }));
    }

    #[test]
    fn refuses_deep_amf_but_not_real_commands() {
        // connect("live") as ffmpeg sends it, roughly: string, number, object { app: "live", nested ecma }.
        let mut cmd = vec![0x02, 0, 7];
        cmd.extend_from_slice(b"connect");
        cmd.push(0x00);
        cmd.extend_from_slice(&1f64.to_be_bytes());
        cmd.extend_from_slice(&[0x03, 0, 3, b'a', b'p', b'p', 0x02, 0, 4, b'l', b'i', b'v', b'e']);
        cmd.extend_from_slice(&[0, 1, b'x', 0x08, 0, 0, 0, 1, 0, 1, b'y', 0x0a, 0, 0, 0, 2, 0x05, 0x01, 1]);
        cmd.extend_from_slice(&[0, 0, 9, 0, 0, 9]);
        check_amf_depth(&cmd, 3).unwrap();
        assert_eq!(check_amf_depth(&cmd, 2), Err(GuardError::AmfTooDeep(2)));

        let mut deep = vec![0x02, 0, 1, b'c', 0x00];
        deep.extend_from_slice(&[0; 8]);
        for _ in 0..10_000 {
            deep.extend_from_slice(&[0x03, 0, 1, b'a']);
        }
        let mut g = ChunkGuard::new(LIMITS);
        assert_eq!(g.scan_all(&message(3, 0, 20, &deep, 128)), Err(GuardError::AmfTooDeep(32)));
        // Strict arrays nest too; AMF3-flagged commands with a leading 0 are read as AMF0.
        let mut arrays = vec![0u8];
        for _ in 0..100 {
            arrays.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        let mut g = ChunkGuard::new(LIMITS);
        assert_eq!(g.scan_all(&message(3, 0, 17, &arrays, 128)), Err(GuardError::AmfTooDeep(32)));
    }

    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 88172645463325252;
        for _ in 0..3000 {
            let mut g = ChunkGuard::new(LIMITS);
            let mut buf = Vec::new();
            for _ in 0..(x % 300) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = g.scan_all(&buf);
            let _ = check_amf_depth(&buf, 8);
        }
    }
}
