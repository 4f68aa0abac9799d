//! The SRTP keying material of each DTLS connection str0m makes, for the packets sfumato protects itself
//! ([`crate::srtp_send`]).
//!
//! Why a wrapper: str0m 0.25 derives its SRTP contexts from the DTLS exporter's output and keeps them
//! private. Its crypto provider is pluggable, though: [`crypto_provider`] is str0m's default with the DTLS
//! provider wrapped, and every DTLS instance it creates copies the `KeyingMaterial` output (profile, bytes,
//! client or server) into a [`KeySlot`] as str0m polls it past. An `Rtc` creates its DTLS instance while it
//! is built, so the slot of the `Rtc` just built on this thread is [`take_created`].

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::config::{CryptoProvider, DtlsCert};
use str0m::crypto::dtls::{DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion};
use str0m::crypto::CryptoError;

use crate::srtp_send::SrtpProfile;

/// What one DTLS handshake exported for DTLS-SRTP (RFC 5764 §4.2).
#[derive(Clone, PartialEq, Eq)]
pub struct ExportedKeys {
    /// `None`: a profile [`crate::srtp_send`] does not know.
    pub profile: Option<SrtpProfile>,
    /// Client master key, server master key, client salt, server salt.
    pub material: Vec<u8>,
    /// This side was the DTLS client.
    pub active: bool,
}

impl std::fmt::Debug for ExportedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("ExportedKeys").field("profile", &self.profile).field("len", &self.material.len()).field("active", &self.active).finish()
    }
}

/// Where one DTLS instance puts its keys; filled once, when the handshake completes.
pub type KeySlot = Arc<OnceLock<ExportedKeys>>;

thread_local! {
    /// The slot of the DTLS instance created last on this thread.
    static CREATED: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

/// The key slot of the `Rtc` built last on this thread with [`crypto_provider`] (taken: a second call says
/// `None` until another is built).
pub fn take_created() -> Option<KeySlot> {
    CREATED.with(|c| c.borrow_mut().take())
}

/// str0m's default crypto provider with the DTLS provider wrapped to capture keys (one per process).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = str0m::crypto::from_feature_flags();
            let inner = base.dtls_provider;
            let capturing: &'static CapturingDtls = Box::leak(Box::new(CapturingDtls { inner }));
            Arc::new(CryptoProvider { dtls_provider: capturing, ..base })
        })
        .clone()
}

#[derive(Debug)]
struct CapturingDtls {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for CapturingDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
        let slot = KeySlot::default();
        CREATED.with(|c| *c.borrow_mut() = Some(slot.clone()));
        Ok(Box::new(CapturingInstance { inner, slot }))
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

#[derive(Debug)]
struct CapturingInstance {
    inner: Box<dyn DtlsInstance>,
    slot: KeySlot,
}

impl DtlsInstance for CapturingInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(km, profile) = &out {
            let keys = ExportedKeys { profile: SrtpProfile::of(*profile), material: km.to_vec(), active: self.inner.is_active() };
            // A renegotiation can't change the keys of an existing SRTP session; the first ones stay.
            let _ = self.slot.set(keys);
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use str0m::format::Codec;
    use str0m::media::{Direction, MediaKind};
    use str0m::net::{Protocol, Receive};
    use str0m::rtp::{RtpWrite, SeqNo};
    use str0m::{Candidate, Event, Input, Output, Rtc};

    use super::*;
    use crate::srtp_send::SrtpSendContext;

    /// Polls `rtc` until it wants a timeout; returns its datagrams and whether it said Connected.
    fn drain(rtc: &mut Rtc, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) -> (Instant, bool) {
        let mut connected = false;
        loop {
            match rtc.poll_output().expect("poll") {
                Output::Timeout(t) => return (t, connected),
                Output::Transmit(t) => out.push((t.source, t.destination, t.contents.to_vec())),
                Output::Event(Event::Connected) => connected = true,
                Output::Event(_) => {}
            }
        }
    }

    /// Where an RTP packet's payload starts (fixed header, CSRCs, header extension).
    fn rtp_header_len(p: &[u8]) -> usize {
        let mut n = 12 + 4 * (p[0] & 0x0f) as usize;
        if p[0] & 0x10 != 0 {
            n += 4 + 4 * u16::from_be_bytes([p[n + 2], p[n + 3]]) as usize;
        }
        n
    }

    /// A real DTLS handshake between a str0m client and a str0m server built on [`crypto_provider`]: the
    /// captured keys protect a packet exactly as the server's str0m does.
    #[test]
    fn captured_keys_protect_like_str0m_after_a_real_handshake() {
        let mut now = Instant::now();
        let (client_addr, server_addr): (SocketAddr, SocketAddr) = ("127.0.0.1:41000".parse().unwrap(), "127.0.0.1:42000".parse().unwrap());

        let mut client = Rtc::builder().set_rtp_mode(true).build(now);
        client.add_local_candidate(Candidate::host(client_addr, "udp").unwrap());
        let mut change = client.sdp_api();
        let mid = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().expect("offer");

        let mut server = Rtc::builder().set_rtp_mode(true).set_ice_lite(true).set_crypto_provider(crypto_provider()).build(now);
        let slot = take_created().expect("the server's DTLS instance registered its slot");
        assert!(take_created().is_none(), "taken");
        server.add_local_candidate(Candidate::host(server_addr, "udp").unwrap());
        let answer = server.sdp_api().accept_offer(offer).expect("answer");
        client.sdp_api().accept_answer(pending, answer).expect("accept answer");

        let mut connected = (false, false);
        for _ in 0..500 {
            let mut wire = Vec::new();
            let (tc, cc) = drain(&mut client, &mut wire);
            let (ts, sc) = drain(&mut server, &mut wire);
            connected = (connected.0 || cc, connected.1 || sc);
            if connected == (true, true) && slot.get().is_some() {
                break;
            }
            for (from, to, data) in wire {
                let rtc = if to == server_addr { &mut server } else { &mut client };
                rtc.handle_input(Input::Receive(now, Receive::new(Protocol::Udp, from, to, &data).unwrap())).expect("input");
            }
            now = now.max(tc.min(ts)).min(now + Duration::from_millis(50));
            client.handle_input(Input::Timeout(now)).unwrap();
            server.handle_input(Input::Timeout(now)).unwrap();
        }
        assert_eq!(connected, (true, true), "handshake");
        let keys = slot.get().expect("keys captured").clone();
        assert!(!keys.active, "the ice-lite answerer with a=setup:passive is the DTLS server");
        let profile = keys.profile.expect("a known profile");

        // The server's str0m sends one packet; the same plaintext protected with the captured keys.
        let pt = server.codec_config().iter().find(|p| p.spec().codec == Codec::Vp8).expect("vp8").pt();
        let payload: Vec<u8> = (0..200).map(|i| (i * 7) as u8).collect();
        let seq = SeqNo::from(0x1_2345);
        server.direct_api().stream_tx_by_mid(mid, None).expect("send stream").write_rtp(
            RtpWrite::new(pt, seq, 90_000, now, std::sync::Arc::<[u8]>::from(&payload[..])).marker(true),
        );
        server.handle_input(Input::Timeout(now)).unwrap();
        let mut wire = Vec::new();
        drain(&mut server, &mut wire);
        let sent = wire.iter().map(|(_, _, d)| d).find(|d| d.len() > 12 && d[1] & 0x7f == *pt).expect("the RTP packet");

        let header_len = rtp_header_len(sent);
        let mut plain = sent[..header_len].to_vec();
        plain.extend_from_slice(&payload);
        let mut ctx = SrtpSendContext::new(&crypto_provider(), profile, &keys.material, keys.active).expect("context");
        let mut ours = Vec::new();
        ctx.protect_rtp(&plain, header_len, *seq, &mut ours).expect("protect");
        assert_eq!(&ours, sent, "{profile:?}: our SRTP differs from str0m's");
    }
}
