//! TLS and QUIC configuration for links: a self-signed certificate made at startup, rustls on the
//! aws-lc-rs provider, TLS 1.3 only, and a certificate verifier that accepts any certificate.
//!
//! Accepting any certificate is deliberate: identity is proven afterwards with the cluster secret
//! ([`crate::auth`]), bound to the session's exporter. The verifier still checks the handshake signature,
//! so the peer really holds the key of the certificate it presented.

use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{ClientConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::link::{LinkConfig, LinkError};

/// ALPN protocol id of cluster links.
pub const ALPN: &[u8] = b"sfumato-cluster/1";
/// Server name used when dialing (certificates are not checked against it).
pub const SERVER_NAME: &str = "sfumato-cluster";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn transport(cfg: &LinkConfig) -> Result<Arc<TransportConfig>, LinkError> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(cfg.idle_timeout)
        .map_err(|_| LinkError::Config("idle timeout out of range"))?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(cfg.keep_alive))
        // One control stream per direction, opened by each side; no bidirectional streams.
        .max_concurrent_uni_streams(VarInt::from_u32(1))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(cfg.datagram_buffer))
        .datagram_send_buffer_size(cfg.datagram_buffer);
    Ok(Arc::new(t))
}

/// Builds the server and client configs, generating a fresh self-signed certificate.
pub(crate) fn configs(cfg: &LinkConfig) -> Result<(Arc<ServerConfig>, ClientConfig), LinkError> {
    let provider = provider();
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| LinkError::Tls(format!("certificate generation: {e}")))?;
    let cert_der: CertificateDer<'static> = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server_crypto =
        QuicServerConfig::try_from(server).map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut server_config = ServerConfig::with_crypto(Arc::new(server_crypto));
    let transport = transport(cfg)?;
    server_config.transport_config(transport.clone());

    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client_crypto =
        QuicClientConfig::try_from(client).map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut client_config = ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(transport);

    Ok((Arc::new(server_config), client_config))
}
