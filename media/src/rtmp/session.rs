//! One server-side RTMP connection as a sans-IO state machine around `rml_rtmp` 0.8.
//!
//! The shell owns the TCP stream. It passes every byte it reads to [`RtmpSession::handle_input`], then
//! drains [`RtmpSession::poll_output`] until `None`:
//!
//! - [`RtmpOutput::Send`]: write these bytes to the stream, in order (RTMP chunk headers are compressed
//!   against earlier chunks, so nothing may be dropped or reordered);
//! - [`RtmpOutput::PublishRequested`]: decide (stream key lookup, auth) and call
//!   [`RtmpSession::accept_publish`] or [`RtmpSession::reject_publish`] — now or later; input arriving
//!   meanwhile is held (up to [`RtmpConfig::max_message_size`]) and processed on accept;
//! - [`RtmpOutput::Video`] / [`RtmpOutput::Audio`] / [`RtmpOutput::Metadata`]: media of the accepted publish;
//! - [`RtmpOutput::Finished`]: the publisher stopped (deleteStream/closeStream, or the stream ended);
//! - [`RtmpOutput::Closed`]: write any `Send` before it, then close the socket. Always the last output,
//!   emitted exactly once, whatever the cause (error, rejection, [`RtmpSession::close`], end of stream).
//!
//! Guarantees: no input can make it panic (`rml_rtmp` is called under `catch_unwind`, and what `rml_rtmp`
//! cannot take safely is refused first by [`ChunkGuard`]); memory per connection is bounded by
//! [`RtmpConfig::max_message_size`] plus one chunk; unknown AMF commands (`FCPublish`, `releaseStream`,
//! ...) and messages are ignored. Only the application name in [`RtmpConfig::app`] may connect, one
//! publish per connection, no playback. The session keeps no clock: the shell enforces idle and
//! time-to-publish timeouts. (`rml_rtmp` itself reads `SystemTime` for the timestamps of its own replies.)

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};

use super::guard::{ChunkGuard, GuardError, Limits};

/// At most this many bytes go to `rml_rtmp` per call, however large the shell's read was.
const FEED_SLICE: usize = 64 * 1024;

/// Session limits and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpConfig {
    /// The only RTMP application name accepted (`rtmp://host/<app>/<stream key>`).
    pub app: String,
    /// Largest message (a video frame: keyframes of high-bitrate streams can exceed 1 MiB).
    pub max_message_size: usize,
    /// Largest chunk size the client may set (OBS and ffmpeg use 4096).
    pub max_chunk_size: u32,
    /// Largest AMF command or data message (connect, publish, onMetaData).
    pub max_amf_size: usize,
    /// Deepest nesting of AMF objects/arrays (real clients use 2–3).
    pub max_amf_depth: usize,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            app: "live".into(),
            max_message_size: 4 << 20,
            max_chunk_size: 65536,
            max_amf_size: 64 << 10,
            max_amf_depth: 32,
        }
    }
}

/// One video message: an FLV `VIDEODATA` body (see [`super::flv::parse_video`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrame {
    /// RTMP timestamp in ms (the decode time), as sent: wraps at 2³², may jump.
    pub timestamp: u32,
    pub data: Bytes,
}

/// One audio message: an FLV `AUDIODATA` body (see [`super::flv::parse_audio`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    /// RTMP timestamp in ms, as sent.
    pub timestamp: u32,
    pub data: Bytes,
}

/// `onMetaData` as the encoder describes its stream (informational: trust the codec configs instead).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamMetadata {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub video_codec_id: Option<u32>,
    pub frame_rate: Option<f32>,
    pub video_bitrate_kbps: Option<u32>,
    pub audio_codec_id: Option<u32>,
    pub audio_bitrate_kbps: Option<u32>,
    pub audio_sample_rate: Option<u32>,
    pub audio_channels: Option<u32>,
    pub encoder: Option<String>,
}

/// What the shell must do next; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub enum RtmpOutput {
    Send(Vec<u8>),
    PublishRequested { app: String, stream_key: String },
    Video(VideoFrame),
    Audio(AudioFrame),
    Metadata(StreamMetadata),
    Finished,
    Closed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtmpError {
    #[error("session is closed")]
    Closed,
    #[error("RTMP handshake failed: {0}")]
    Handshake(String),
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
    #[error("RTMP input refused: {0}")]
    Refused(#[from] GuardError),
    #[error("rml_rtmp panicked in {0} (malformed input); session closed")]
    Panic(&'static str),
    #[error("no publish request is waiting for a decision")]
    NoPendingPublish,
}

enum State {
    Handshaking(Box<Handshake>),
    Active(Box<ServerSession>),
    Closed,
}

/// See the module docs.
pub struct RtmpSession {
    config: RtmpConfig,
    state: State,
    guard: ChunkGuard,
    out: VecDeque<RtmpOutput>,
    app: Option<String>,
    pending_publish: Option<u32>,
    publishing: bool,
    /// Input that arrived while a publish decision was pending.
    held: Vec<u8>,
}

/// Runs `f` under `catch_unwind`; a panic becomes `RtmpError::Panic(what)`.
fn guarded<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, RtmpError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| RtmpError::Panic(what))
}

/// The application part of a tcUrl path as clients send it: "live", "live/", "live?token=x" → "live".
fn normalize_app(app: &str) -> &str {
    let app = app.split('?').next().unwrap_or("");
    app.trim_end_matches('/')
}

impl RtmpSession {
    pub fn new(config: RtmpConfig) -> Self {
        let limits = Limits {
            max_chunk_size: config.max_chunk_size,
            max_message_size: config.max_message_size,
            max_amf_size: config.max_amf_size,
            max_amf_depth: config.max_amf_depth,
        };
        RtmpSession {
            config,
            state: State::Handshaking(Box::new(Handshake::new(PeerType::Server))),
            guard: ChunkGuard::new(limits),
            out: VecDeque::new(),
            app: None,
            pending_publish: None,
            publishing: false,
            held: Vec::new(),
        }
    }

    /// True once [`RtmpOutput::Closed`] has been queued.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True between an accepted publish and its end.
    pub fn is_publishing(&self) -> bool {
        self.publishing
    }

    /// Next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<RtmpOutput> {
        self.out.pop_front()
    }

    /// Bytes read from the TCP stream, in order. An error is fatal: the session has queued
    /// [`RtmpOutput::Closed`] with the reason, and takes no more input.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), RtmpError> {
        if self.is_closed() {
            return Err(RtmpError::Closed);
        }
        for slice in bytes.chunks(FEED_SLICE) {
            if let Err(e) = self.feed(slice) {
                self.fail(&e);
                return Err(e);
            }
            if self.is_closed() {
                break;
            }
        }
        Ok(())
    }

    /// The peer closed its side of the connection.
    pub fn handle_eof(&mut self) {
        if !self.is_closed() {
            self.close("peer closed the connection");
        }
    }

    /// Ends the session (e.g. the stream turned out to be unplayable): queues [`RtmpOutput::Finished`] if
    /// publishing, then [`RtmpOutput::Closed`]. No effect on a closed session.
    pub fn close(&mut self, reason: &str) {
        if self.is_closed() {
            return;
        }
        if self.publishing {
            self.publishing = false;
            self.out.push_back(RtmpOutput::Finished);
        }
        self.state = State::Closed;
        self.out.push_back(RtmpOutput::Closed { reason: reason.to_string() });
    }

    /// Accepts the waiting publish request: the client gets `NetStream.Publish.Start` and media follows.
    pub fn accept_publish(&mut self) -> Result<(), RtmpError> {
        let id = self.pending_publish.take().ok_or(RtmpError::NoPendingPublish)?;
        let State::Active(server) = &mut self.state else { return Err(RtmpError::Closed) };
        let res = match guarded("accept_request", || server.accept_request(id)) {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => {
                let e = RtmpError::Protocol(e.to_string());
                self.fail(&e);
                return Err(e);
            }
            Err(e) => {
                self.fail(&e);
                return Err(e);
            }
        };
        self.publishing = true;
        let held = std::mem::take(&mut self.held);
        let result = self.handle_results(res).and_then(|()| self.feed_messages(&held));
        if let Err(e) = result {
            self.fail(&e);
            return Err(e);
        }
        Ok(())
    }

    /// Rejects the waiting publish request with `reason` (sent to the client as the status description),
    /// then closes the session.
    pub fn reject_publish(&mut self, reason: &str) -> Result<(), RtmpError> {
        let id = self.pending_publish.take().ok_or(RtmpError::NoPendingPublish)?;
        self.reject(id, "NetStream.Publish.BadName", reason);
        self.close(&format!("publish rejected: {reason}"));
        Ok(())
    }

    /// Queues the rejection of request `id`; failures are ignored (the session closes right after anyway).
    fn reject(&mut self, id: u32, code: &str, description: &str) {
        let State::Active(server) = &mut self.state else { return };
        if let Ok(Ok(results)) = guarded("reject_request", || server.reject_request(id, code, description)) {
            for r in results {
                if let ServerSessionResult::OutboundResponse(p) = r {
                    self.send(p.bytes);
                }
            }
        }
    }

    fn fail(&mut self, e: &RtmpError) {
        self.close(&e.to_string());
    }

    /// Queues bytes to write, merged with a `Send` already at the back of the queue.
    fn send(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if let Some(RtmpOutput::Send(last)) = self.out.back_mut() {
            last.extend_from_slice(&bytes);
        } else {
            self.out.push_back(RtmpOutput::Send(bytes));
        }
    }

    fn feed(&mut self, slice: &[u8]) -> Result<(), RtmpError> {
        match &mut self.state {
            State::Closed => Err(RtmpError::Closed),
            State::Handshaking(hs) => {
                let res = guarded("handshake", || hs.process_bytes(slice))?
                    .map_err(|e| RtmpError::Handshake(e.to_string()))?;
                match res {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        self.send(response_bytes);
                        Ok(())
                    }
                    HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                        self.send(response_bytes);
                        let (server, initial) =
                            guarded("ServerSession::new", || ServerSession::new(ServerSessionConfig::new()))?
                                .map_err(|e| RtmpError::Protocol(e.to_string()))?;
                        self.state = State::Active(Box::new(server));
                        self.handle_results(initial)?;
                        if remaining_bytes.is_empty() {
                            Ok(())
                        } else {
                            self.feed(&remaining_bytes)
                        }
                    }
                }
            }
            State::Active(_) => self.feed_messages(slice),
        }
    }

    /// Hands `rml_rtmp` one vetted message at a time and reacts to each before the next: `rml_rtmp`
    /// processes everything it is given in one go, so a client that pipelines connect + createStream +
    /// publish in one segment would otherwise have createStream handled before its connect was accepted.
    /// While a publish decision is pending, further input is held (bounded) and replayed after the accept.
    fn feed_messages(&mut self, mut data: &[u8]) -> Result<(), RtmpError> {
        while !data.is_empty() && !self.is_closed() {
            if self.pending_publish.is_some() {
                if self.held.len() + data.len() > self.config.max_message_size {
                    return Err(RtmpError::Protocol(format!(
                        "more than {} bytes sent before the publish was accepted",
                        self.config.max_message_size
                    )));
                }
                self.held.extend_from_slice(data);
                return Ok(());
            }
            let n = self.guard.scan(data)?;
            let (part, rest) = data.split_at(n);
            data = rest;
            let State::Active(server) = &mut self.state else { return Err(RtmpError::Closed) };
            let results = guarded("handle_input", || server.handle_input(part))?
                .map_err(|e| RtmpError::Protocol(e.to_string()))?;
            self.handle_results(results)?;
        }
        Ok(())
    }

    fn handle_results(&mut self, results: Vec<ServerSessionResult>) -> Result<(), RtmpError> {
        for r in results {
            if self.is_closed() {
                break;
            }
            match r {
                ServerSessionResult::OutboundResponse(p) => self.send(p.bytes),
                ServerSessionResult::RaisedEvent(ev) => self.handle_event(ev)?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn handle_event(&mut self, ev: ServerSessionEvent) -> Result<(), RtmpError> {
        match ev {
            ServerSessionEvent::ConnectionRequested { request_id, app_name } => {
                let app = normalize_app(&app_name);
                if app != self.config.app || self.app.is_some() {
                    let reason =
                        format!("unknown RTMP application '{app_name}' (use /{}/<stream key>)", self.config.app);
                    self.reject(request_id, "NetConnection.Connect.Rejected", &reason);
                    self.close(&reason);
                    return Ok(());
                }
                self.app = Some(app.to_string());
                let State::Active(server) = &mut self.state else { return Err(RtmpError::Closed) };
                let results = guarded("accept_request", || server.accept_request(request_id))?
                    .map_err(|e| RtmpError::Protocol(e.to_string()))?;
                self.handle_results(results)?;
            }
            ServerSessionEvent::PublishStreamRequested { request_id, app_name: _, stream_key, mode: _ } => {
                if self.publishing || self.pending_publish.is_some() {
                    self.reject(request_id, "NetStream.Publish.BadName", "one publish per connection");
                } else {
                    self.pending_publish = Some(request_id);
                    let app = self.app.clone().unwrap_or_default();
                    self.out.push_back(RtmpOutput::PublishRequested { app, stream_key });
                }
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                self.reject(request_id, "NetStream.Play.Failed", "playback over RTMP is not supported");
            }
            ServerSessionEvent::PublishStreamFinished { .. } if self.publishing => {
                self.publishing = false;
                self.out.push_back(RtmpOutput::Finished);
            }
            ServerSessionEvent::StreamMetadataChanged { metadata: m, .. } => {
                self.out.push_back(RtmpOutput::Metadata(StreamMetadata {
                    width: m.video_width,
                    height: m.video_height,
                    video_codec_id: m.video_codec_id,
                    frame_rate: m.video_frame_rate,
                    video_bitrate_kbps: m.video_bitrate_kbps,
                    audio_codec_id: m.audio_codec_id,
                    audio_bitrate_kbps: m.audio_bitrate_kbps,
                    audio_sample_rate: m.audio_sample_rate,
                    audio_channels: m.audio_channels,
                    encoder: m.encoder,
                }));
            }
            ServerSessionEvent::VideoDataReceived { data, timestamp, .. } if self.publishing => {
                self.out.push_back(RtmpOutput::Video(VideoFrame { timestamp: timestamp.value, data }));
            }
            ServerSessionEvent::AudioDataReceived { data, timestamp, .. } if self.publishing => {
                self.out.push_back(RtmpOutput::Audio(AudioFrame { timestamp: timestamp.value, data }));
            }
            // Media outside a publish, releaseStream, FCPublish, FCUnpublish, _checkbw, acks, pings...: nothing to do.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every byte ffmpeg 5.1 sent publishing 2 s of 160x120 H.264 (libx264 ultrafast: Constrained Baseline,
    /// GOP 15) and 44.1 kHz mono AAC to rtmp://127.0.0.1/live/testkey. Regenerate with
    /// `cargo test --release -p sfumato-media -- --ignored capture_ffmpeg_fixture`.
    pub(crate) const FFMPEG_PUBLISH: &[u8] = include_bytes!("../../tests/fixtures/rtmp_publish_ffmpeg.bin");

    /// Deterministic xorshift64.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Drives a session like the shell does: feed `input` in pieces of random size, accept the publish
    /// when asked, collect every output.
    pub(crate) fn drive(input: &[u8], rng: &mut Rng, accept: bool) -> (Vec<RtmpOutput>, Option<RtmpError>) {
        let mut s = RtmpSession::new(RtmpConfig::default());
        let mut outs = Vec::new();
        let mut err = None;
        let mut at = 0;
        while at < input.len() && !s.is_closed() {
            let n = 1 + rng.below(4096);
            let end = (at + n).min(input.len());
            if let Err(e) = s.handle_input(&input[at..end]) {
                err.get_or_insert(e);
            }
            at = end;
            while let Some(o) = s.poll_output() {
                if matches!(o, RtmpOutput::PublishRequested { .. }) {
                    // Errors close the session (a Closed output follows); the fuzz test checks that.
                    let r = if accept { s.accept_publish() } else { s.reject_publish("stream key unknown") };
                    if let Err(e) = r {
                        err.get_or_insert(e);
                    }
                }
                outs.push(o);
            }
        }
        s.handle_eof();
        outs.extend(std::iter::from_fn(|| s.poll_output()));
        (outs, err)
    }

    #[test]
    fn replayed_ffmpeg_publish() {
        let (outs, err) = drive(FFMPEG_PUBLISH, &mut Rng(7), true);
        assert_eq!(err, None);
        let publish: Vec<_> = outs.iter().filter(|o| matches!(o, RtmpOutput::PublishRequested { .. })).collect();
        assert_eq!(publish, vec![&RtmpOutput::PublishRequested { app: "live".into(), stream_key: "testkey".into() }]);
        let videos = outs.iter().filter(|o| matches!(o, RtmpOutput::Video(_))).count();
        let audios = outs.iter().filter(|o| matches!(o, RtmpOutput::Audio(_))).count();
        // 2 s at 15 fps (+ sequence header); 2 s of 1024-sample AAC frames at 44.1 kHz (+ config).
        assert!((30..=32).contains(&videos), "{videos} video messages");
        assert!((86..=90).contains(&audios), "{audios} audio messages");
        assert!(outs.iter().any(|o| matches!(o, RtmpOutput::Metadata(m) if m.width == Some(160))));
        assert!(outs.iter().any(|o| matches!(o, RtmpOutput::Send(_))));
        // ffmpeg ends with deleteStream: Finished, then the EOF closes the session.
        let n = outs.len();
        assert_eq!(outs[n - 2], RtmpOutput::Finished);
        assert!(matches!(&outs[n - 1], RtmpOutput::Closed { .. }));
        assert_eq!(outs.iter().filter(|o| matches!(o, RtmpOutput::Closed { .. })).count(), 1);
        // Same result fed byte by byte.
        let mut s = RtmpSession::new(RtmpConfig::default());
        let mut videos_bytewise = 0;
        for b in FFMPEG_PUBLISH {
            s.handle_input(std::slice::from_ref(b)).unwrap();
            while let Some(o) = s.poll_output() {
                match o {
                    RtmpOutput::PublishRequested { .. } => s.accept_publish().unwrap(),
                    RtmpOutput::Video(_) => videos_bytewise += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(videos_bytewise, videos);
    }

    #[test]
    fn rejected_publish_sends_error_then_closes() {
        let (outs, err) = drive(FFMPEG_PUBLISH, &mut Rng(3), false);
        assert_eq!(err, None);
        assert!(!outs.iter().any(|o| matches!(o, RtmpOutput::Video(_) | RtmpOutput::Finished)));
        let closed = outs.iter().position(|o| matches!(o, RtmpOutput::Closed { .. })).unwrap();
        assert_eq!(closed, outs.len() - 1);
        assert!(matches!(&outs[closed - 1], RtmpOutput::Send(b) if b.windows(7).any(|w| w == b"BadName")));
        assert!(matches!(&outs[closed], RtmpOutput::Closed { reason } if reason.contains("stream key unknown")));
    }

    /// Replaces the app name "live" in the connect command by another 4-letter name.
    fn with_app(name: &[u8; 4]) -> Vec<u8> {
        let mut v = FFMPEG_PUBLISH.to_vec();
        let pat = [0x00, 0x03, b'a', b'p', b'p', 0x02, 0x00, 0x04];
        let at = v.windows(pat.len()).position(|w| w == pat).expect("connect app in fixture") + pat.len();
        v[at..at + 4].copy_from_slice(name);
        v
    }

    #[test]
    fn wrong_app_is_rejected_at_connect() {
        let (outs, _) = drive(&with_app(b"evil"), &mut Rng(5), true);
        assert!(!outs.iter().any(|o| matches!(o, RtmpOutput::PublishRequested { .. })));
        let last = outs.last().unwrap();
        assert!(matches!(last, RtmpOutput::Closed { reason } if reason.contains("'evil'")), "{last:?}");
        assert!(outs.iter().any(|o| matches!(o, RtmpOutput::Send(b) if b.windows(8).any(|w| w == b"Rejected"))));
    }

    #[test]
    fn app_name_normalization() {
        assert_eq!(normalize_app("live"), "live");
        assert_eq!(normalize_app("live/"), "live");
        assert_eq!(normalize_app("live?token=1"), "live");
        assert_eq!(normalize_app(""), "");
    }

    #[test]
    fn bad_handshake_version_closes() {
        let mut s = RtmpSession::new(RtmpConfig::default());
        let e = s.handle_input(&[6; 1537]).unwrap_err();
        assert!(matches!(e, RtmpError::Handshake(_)), "{e:?}");
        let outs: Vec<_> = std::iter::from_fn(|| s.poll_output()).collect();
        assert!(matches!(outs.last(), Some(RtmpOutput::Closed { .. })));
        assert_eq!(s.handle_input(&[0]), Err(RtmpError::Closed));
        assert_eq!(s.accept_publish(), Err(RtmpError::NoPendingPublish));
    }

    /// Offset where the chunk stream starts in the fixture (after C0, C1, C2).
    const CHUNKS_AT: usize = 1 + 1536 + 1536;

    #[test]
    fn absurd_chunk_size_and_message_length_are_refused() {
        // SetChunkSize(2^31 - 1) right after the handshake.
        let mut v = FFMPEG_PUBLISH[..CHUNKS_AT].to_vec();
        v.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
        let (outs, err) = drive(&v, &mut Rng(1), true);
        assert!(matches!(err, Some(RtmpError::Refused(GuardError::BadChunkSize { .. }))), "{err:?}");
        assert!(matches!(outs.last(), Some(RtmpOutput::Closed { reason }) if reason.contains("chunk size")));
        // A 16 MiB video message header.
        let mut v = FFMPEG_PUBLISH[..CHUNKS_AT].to_vec();
        v.extend_from_slice(&[0x06, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0]);
        let (_, err) = drive(&v, &mut Rng(1), true);
        assert!(matches!(err, Some(RtmpError::Refused(GuardError::MessageTooLarge { .. }))), "{err:?}");
    }

    #[test]
    fn amf_command_with_too_few_values_does_not_panic() {
        // An AMF0 command that is a lone string: rml_rtmp 0.8 panics on it (drain(..3)).
        let mut v = FFMPEG_PUBLISH[..CHUNKS_AT].to_vec();
        v.extend_from_slice(&[0x03, 0, 0, 0, 0, 0, 5, 20, 0, 0, 0, 0, 0x02, 0, 2, b'h', b'i']);
        let (outs, err) = drive(&v, &mut Rng(1), true);
        assert_eq!(err, Some(RtmpError::Panic("handle_input")));
        assert!(matches!(outs.last(), Some(RtmpOutput::Closed { .. })));
    }

    #[test]
    fn deep_amf_nesting_is_refused_before_rml_recurses() {
        let mut body = vec![0x02, 0, 1, b'c', 0x00];
        body.extend_from_slice(&[0; 8]);
        for _ in 0..15_000 {
            body.extend_from_slice(&[0x03, 0, 1, b'a']);
        }
        let mut v = FFMPEG_PUBLISH[..CHUNKS_AT].to_vec();
        v.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 1, 0, 0]); // chunk size 65536
        v.extend_from_slice(&[0x03, 0, 0, 0]);
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&[20, 0, 0, 0, 0]);
        v.extend_from_slice(&body);
        let (_, err) = drive(&v, &mut Rng(1), true);
        assert!(matches!(err, Some(RtmpError::Refused(GuardError::AmfTooDeep(32)))), "{err:?}");
    }

    #[test]
    fn huge_single_input_is_fed_in_slices() {
        // 10 MiB of zeros after the handshake: parsed as empty chunk-stream-0 headers / refused, no blow-up.
        let mut v = FFMPEG_PUBLISH[..CHUNKS_AT].to_vec();
        v.resize(CHUNKS_AT + (10 << 20), 0);
        let mut s = RtmpSession::new(RtmpConfig::default());
        let _ = s.handle_input(&v);
        assert!(std::iter::from_fn(|| s.poll_output()).count() > 0);
    }

    /// Random and mutated inputs: no panic escapes, Closed is last and unique, nothing is emitted after it.
    #[test]
    fn fuzz_never_panics() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let prefix_len = FFMPEG_PUBLISH.len().min(24 * 1024);
        let check = |outs: &[RtmpOutput]| {
            let closed = outs.iter().filter(|o| matches!(o, RtmpOutput::Closed { .. })).count();
            assert_eq!(closed, 1);
            assert!(matches!(outs.last(), Some(RtmpOutput::Closed { .. })));
        };
        let mut conv = crate::rtmp::ingest::RtmpToRtp::new(crate::rtmp::BFramePolicy::PassThroughPts);
        let mut rtp = Vec::new();
        for i in 0..3000 {
            let input: Vec<u8> = match i % 4 {
                // Pure noise (mostly fails the handshake version byte).
                0 => (0..rng.below(5000)).map(|_| rng.next() as u8).collect(),
                // A valid handshake followed by noise.
                1 => {
                    let mut v = FFMPEG_PUBLISH[..CHUNKS_AT].to_vec();
                    v.extend((0..rng.below(5000)).map(|_| rng.next() as u8));
                    v
                }
                // The real stream with a few mutated bytes in the chunk stream.
                _ => {
                    let mut v = FFMPEG_PUBLISH[..prefix_len].to_vec();
                    for _ in 0..1 + rng.below(8) {
                        let at = CHUNKS_AT + rng.below(v.len() - CHUNKS_AT);
                        match rng.below(4) {
                            0 => v[at] = rng.next() as u8,
                            1 => v[at] ^= 1 << rng.below(8),
                            2 => v.insert(at, rng.next() as u8),
                            _ => {
                                v.remove(at);
                            }
                        }
                    }
                    v
                }
            };
            let (outs, _) = drive(&input, &mut rng, true);
            check(&outs);
            // Whatever media survived also goes through the FLV/H.264/AAC converters.
            for o in &outs {
                rtp.clear();
                match o {
                    RtmpOutput::Video(f) => {
                        let _ = conv.push_video(f, &mut rtp);
                    }
                    RtmpOutput::Audio(f) => {
                        let _ = conv.push_audio(f, &mut rtp);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Publishes with the real ffmpeg to a loopback listener driven by RtmpSession.
    pub(crate) fn ffmpeg_publish(extra_video_args: &[&str], seconds: &str) -> Option<(Vec<u8>, Vec<RtmpOutput>)> {
        use std::io::{Read, Write};
        use std::net::TcpListener;
        use std::process::{Command, Stdio};
        use std::time::Duration;

        if Command::new("ffmpeg").arg("-version").stdout(Stdio::null()).status().is_err() {
            eprintln!("ffmpeg not found: skipping");
            return None;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("rtmp://127.0.0.1:{port}/live/testkey");
        let mut args: Vec<&str> = vec!["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"];
        args.extend(["testsrc=size=160x120:rate=15", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
        args.extend(["-t", seconds, "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p"]);
        args.extend(extra_video_args);
        args.extend(["-c:a", "aac", "-b:a", "64k", "-ac", "1", "-f", "flv", &url]);
        let mut child = Command::new("ffmpeg").args(&args).stdin(Stdio::null()).spawn().unwrap();
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut s = RtmpSession::new(RtmpConfig::default());
        let mut recorded = Vec::new();
        let mut outs = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        'io: loop {
            let n = tcp.read(&mut buf).unwrap_or(0);
            if n == 0 {
                s.handle_eof();
            } else {
                recorded.extend_from_slice(&buf[..n]);
                let _ = s.handle_input(&buf[..n]);
            }
            while let Some(o) = s.poll_output() {
                match &o {
                    RtmpOutput::Send(b) => tcp.write_all(b).unwrap(),
                    RtmpOutput::PublishRequested { .. } => s.accept_publish().unwrap(),
                    RtmpOutput::Closed { .. } => {
                        outs.push(o);
                        break 'io;
                    }
                    _ => {}
                }
                outs.push(o);
            }
        }
        drop(tcp);
        let _ = child.wait();
        Some((recorded, outs))
    }

    #[test]
    fn live_ffmpeg_publish() {
        let Some((_, outs)) = ffmpeg_publish(&["-bf", "0"], "1") else { return };
        assert!(outs
            .iter()
            .any(|o| matches!(o, RtmpOutput::PublishRequested { stream_key, .. } if stream_key == "testkey")));
        let videos = outs.iter().filter(|o| matches!(o, RtmpOutput::Video(_))).count();
        assert!(videos >= 15, "{videos} video messages");
        assert!(outs.iter().any(|o| matches!(o, RtmpOutput::Finished)));
    }

    #[test]
    #[ignore = "regenerates media/tests/fixtures/rtmp_publish_ffmpeg.bin"]
    fn capture_ffmpeg_fixture() {
        let (recorded, _) = ffmpeg_publish(&["-bf", "0"], "2").expect("ffmpeg required");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rtmp_publish_ffmpeg.bin");
        std::fs::write(path, recorded).unwrap();
    }
}
