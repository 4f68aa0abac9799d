//! RTMP ingest: every core accepts on `--rtmp-port` (SO_REUSEPORT); each connection is a local task on the
//! core that accepted it, driving the sans-IO [`RtmpSession`] + [`RtmpToRtp`] from `sfumato_media::rtmp`.
//!
//! On `PublishRequested` the stream key names the room (dev mode) or is an `rtmp` token whose claims name
//! it (secure mode; dev mode accepts a valid token too). The room's home core registers the publisher in
//! its `RoomRouter` (one per room; a second is refused) and fans its packets out exactly like a WebRTC
//! publisher's: packets travel there on the media ring when the connection lives on another core.
//! RTMP can't be asked for a keyframe: the home core keeps the current GOP and replays it to each viewer
//! that connects (`core_rtmp.rs`). With `--rtmp-replace` a second publisher on a live key takes over and
//! the first connection is closed; by default it is refused.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use sfumato_media::packet::{Codec, ForwardedExt, ForwardedPacket, PayloadParams};
use sfumato_media::room::RoomKey;
use sfumato_media::webrtc::h264_params;
use sfumato_media::rtmp::{
    BFramePolicy, RtmpConfig, RtmpOutput, RtmpSession, RtmpToRtp, RtpOut, AUDIO_CLOCK_RATE, VIDEO_CLOCK_RATE,
};
use str0m::format::CodecConfig;

use crate::auth::{unix_now, TokenKind};
use crate::core_shell::CoreShell;
use crate::messages::OfferError;

/// A connection must ask to publish within this time.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(10);
/// A publishing connection that sends nothing for this long is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
const READ_BUF: usize = 64 * 1024;

pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    Ok(TcpListener::bind(addr)?)
}

pub async fn serve(shell: Rc<CoreShell>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let shell = shell.clone();
                glommio::spawn_local(async move { connection(shell, stream).await }).detach();
            }
            Err(e) => {
                tracing::warn!(core = shell.core(), error = %e, "RTMP accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(shell: Rc<CoreShell>, mut stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    shell.state.borrow_mut().stats.rtmp_sessions += 1;
    let mut conn = Conn { shell: shell.clone(), publishing: None, published: false, video_params: None };
    let reason = conn.run(&mut stream).await;
    let published = conn.published;
    if let Some((room, source)) = conn.publishing.take() {
        shell.rtmp_unpublish(room, source).await;
        // A take-over notice that arrived after the connection ended.
        shell.state.borrow_mut().rtmp_take_replaced(room, source);
    }
    let _ = stream.close().await;
    {
        let mut st = shell.state.borrow_mut();
        st.stats.rtmp_sessions = st.stats.rtmp_sessions.saturating_sub(1);
    }
    if published {
        tracing::info!(core = shell.core(), ?peer, reason = %reason, "RTMP connection closed");
    } else {
        // Scanners, port probes, refused publishers: not worth an info line each.
        tracing::debug!(core = shell.core(), ?peer, reason = %reason, "RTMP connection closed");
    }
}

struct Conn {
    shell: Rc<CoreShell>,
    /// Room and source id once the publish was accepted.
    publishing: Option<(RoomKey, u64)>,
    /// Whether a publish was ever accepted on this connection (for logging).
    published: bool,
    /// H.264 params for the stream's current profile-level-id.
    video_params: Option<(u32, PayloadParams)>,
}

impl Conn {
    /// Runs the connection until it ends; returns why.
    async fn run(&mut self, stream: &mut TcpStream) -> String {
        let mut rtmp = RtmpSession::new(RtmpConfig::default());
        let mut media = RtmpToRtp::new(BFramePolicy::Refuse);
        let mut buf = vec![0u8; READ_BUF];
        let mut rtp: Vec<RtpOut> = Vec::new();
        let mut fwd: Vec<ForwardedPacket> = Vec::new();
        let started = Instant::now();
        loop {
            let wait = match self.publishing {
                Some(_) => IDLE_LIMIT,
                None => PUBLISH_DEADLINE.saturating_sub(started.elapsed()),
            };
            let read = if wait.is_zero() {
                Err(())
            } else {
                glommio::timer::timeout(wait, async { Ok(stream.read(&mut buf).await) }).await.map_err(|_| ())
            };
            // Every FLV message this read completes counts as received now: the packets made from it carry
            // it as `received_at`, and `rtmp_forward_latency_us` is measured from it (so it includes the
            // H.264 packetization and the AAC → Opus transcode).
            let read_at = Instant::now();
            match read {
                Err(()) => {
                    let what = if self.publishing.is_some() { "idle for 30 s" } else { "no publish request within 10 s" };
                    // Slowloris / dead publisher: closed by the server, so counted like any refusal.
                    self.shell.state.borrow_mut().stats.rtmp_rejected += 1;
                    rtmp.close(what);
                }
                Ok(Ok(0)) => rtmp.handle_eof(),
                Ok(Ok(n)) => {
                    self.shell.state.borrow_mut().stats.rtmp_bytes_in += n as u64;
                    if let Err(e) = rtmp.handle_input(&buf[..n]) {
                        // Garbage, oversized chunks, protocol violations: the session closes with this reason.
                        self.shell.state.borrow_mut().stats.rtmp_rejected += 1;
                        tracing::info!(core = self.shell.core(), error = %e, "RTMP input refused; closing");
                    }
                }
                Ok(Err(e)) => return format!("read error: {e}"),
            }
            if let Some((room, source)) = self.publishing {
                if self.shell.state.borrow_mut().rtmp_take_replaced(room, source) {
                    // The home core already unregistered this publisher (`--rtmp-replace`).
                    self.publishing = None;
                    fwd.clear();
                    tracing::info!(core = self.shell.core(), source, "RTMP publish taken over by a new connection; closing");
                    rtmp.close("replaced by a new publisher");
                }
            }
            while let Some(out) = rtmp.poll_output() {
                match out {
                    RtmpOutput::Send(bytes) => {
                        if let Err(e) = stream.write_all(&bytes).await {
                            return format!("write error: {e}");
                        }
                    }
                    RtmpOutput::PublishRequested { app, stream_key } => match self.authorize(&stream_key) {
                        Err(reason) => {
                            self.shell.state.borrow_mut().stats.rtmp_rejected += 1;
                            tracing::info!(core = self.shell.core(), app, reason, "RTMP publish refused");
                            let _ = rtmp.reject_publish(reason);
                        }
                        Ok(room) => match self.shell.rtmp_publish(&room).await {
                            Ok(source) => {
                                self.publishing = Some((RoomKey::of(&room), source));
                                self.published = true;
                                tracing::info!(core = self.shell.core(), app, room, "RTMP publish accepted");
                                let _ = rtmp.accept_publish();
                            }
                            Err(e) => {
                                self.shell.state.borrow_mut().stats.rtmp_rejected += 1;
                                let reason = match e {
                                    OfferError::RoomBusy => "room already has a publisher".to_string(),
                                    OfferError::BadOffer(r) | OfferError::Unavailable(r) => r,
                                };
                                tracing::info!(core = self.shell.core(), app, room, reason, "RTMP publish refused");
                                let _ = rtmp.reject_publish(&reason);
                            }
                        },
                    },
                    RtmpOutput::Video(frame) => match media.push_video(&frame, &mut rtp) {
                        Ok(()) => {
                            if let (Some((_, source)), Some(plid)) = (self.publishing, media.video_profile_level_id()) {
                                let params = self.video_params(plid);
                                fwd.extend(rtp.drain(..).map(|o| packet(o, Codec::H264, &params, source, VIDEO_CLOCK_RATE, read_at)));
                            }
                            rtp.clear();
                        }
                        Err(e) if e.is_fatal() => {
                            self.shell.state.borrow_mut().stats.rtmp_rejected += 1;
                            tracing::warn!(core = self.shell.core(), error = %e, "RTMP video unsupported; closing");
                            rtmp.close(&e.to_string());
                            rtp.clear();
                        }
                        Err(e) => {
                            tracing::debug!(core = self.shell.core(), error = %e, "damaged RTMP video tag skipped");
                            rtp.clear();
                        }
                    },
                    RtmpOutput::Audio(frame) => match media.push_audio(&frame, &mut rtp) {
                        Ok(()) => {
                            if let Some((_, source)) = self.publishing {
                                let params = opus_params();
                                fwd.extend(rtp.drain(..).map(|o| packet(o, Codec::Opus, &params, source, AUDIO_CLOCK_RATE, read_at)));
                            }
                            rtp.clear();
                        }
                        Err(e) if e.is_fatal() => {
                            self.shell.state.borrow_mut().stats.rtmp_rejected += 1;
                            tracing::warn!(core = self.shell.core(), error = %e, "RTMP audio unsupported; closing");
                            rtmp.close(&e.to_string());
                            rtp.clear();
                        }
                        Err(e) => {
                            tracing::debug!(core = self.shell.core(), error = %e, "damaged RTMP audio tag skipped");
                            rtp.clear();
                        }
                    },
                    RtmpOutput::Metadata(_) => {}
                    RtmpOutput::Finished => {
                        if let Some((room, source)) = self.publishing.take() {
                            if !fwd.is_empty() {
                                self.shell.rtmp_forward(room, &mut fwd).await;
                            }
                            self.shell.rtmp_unpublish(room, source).await;
                        }
                    }
                    RtmpOutput::Closed { reason } => {
                        if let Some((room, _)) = self.publishing {
                            if !fwd.is_empty() {
                                self.shell.rtmp_forward(room, &mut fwd).await;
                            }
                        }
                        return reason;
                    }
                }
            }
            if let Some((room, _)) = self.publishing {
                if !fwd.is_empty() {
                    self.shell.rtmp_forward(room, &mut fwd).await;
                }
            } else {
                fwd.clear();
            }
        }
    }

    /// The room a stream key may publish to.
    fn authorize(&self, stream_key: &str) -> Result<String, &'static str> {
        let auth = &self.shell.auth;
        match auth.verify(Some(stream_key), TokenKind::Rtmp, None, unix_now()) {
            Ok(claims) if valid_room(&claims.room) => Ok(claims.room),
            Ok(_) => Err("token names an invalid room"),
            Err(_) if auth.is_insecure() => {
                if valid_room(stream_key) {
                    Ok(stream_key.to_string())
                } else {
                    Err("stream key is not a valid room name")
                }
            }
            Err(_) => Err("stream key is not a valid rtmp token"),
        }
    }

    fn video_params(&mut self, plid: u32) -> PayloadParams {
        match &self.video_params {
            Some((p, params)) if *p == plid => *params,
            _ => {
                let params = h264_params(plid);
                if plid >> 16 != 0x42 {
                    tracing::warn!(
                        core = self.shell.core(),
                        profile_level_id = %format!("{plid:06x}"),
                        "RTMP H.264 is not (constrained) baseline: viewers that don't offer this profile get no video \
                         (Chromium offers Main, not High; aiortc only Baseline)"
                    );
                }
                self.video_params = Some((plid, params));
                params
            }
        }
    }
}

fn packet(o: RtpOut, codec: Codec, params: &PayloadParams, source: u64, clock_rate: u32, read_at: Instant) -> ForwardedPacket {
    ForwardedPacket {
        codec,
        params: *params,
        source,
        seq: o.seq,
        timestamp: o.timestamp,
        marker: o.marker,
        keyframe_start: o.keyframe_start,
        clock_rate,
        received_at: read_at,
        payload: o.payload,
        ext: ForwardedExt::default(),
    }
}

/// Opus as str0m's defaults configure it (48 kHz, 2 channels, in-band FEC).
fn opus_params() -> PayloadParams {
    let mut c = CodecConfig::empty();
    c.enable_opus(true, false);
    c.params()[0]
}

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 128
        && room.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_h264_mode1_and_opus() {
        let v = h264_params(0x42c01f);
        assert_eq!(v.spec().codec, str0m::format::Codec::H264);
        assert_eq!(v.spec().format.packetization_mode, Some(1));
        assert_eq!(v.spec().format.profile_level_id, Some(0x42c01f));
        assert_eq!(v.spec().clock_rate.get(), 90_000);
        let a = opus_params();
        assert_eq!(a.spec().codec, str0m::format::Codec::Opus);
        assert_eq!(a.spec().clock_rate.get(), 48_000);
    }

    #[test]
    fn room_names() {
        assert!(valid_room("live-1"));
        assert!(!valid_room("a/b"));
        assert!(!valid_room(""));
    }
}
