//! Proof of the cluster secret, bound to one TLS session.
//!
//! Link certificates are self-signed and accepted by anyone, so TLS alone only gives an encrypted channel
//! to *somebody*. Each side then sends `HMAC-SHA256(secret, role label || exporter)`, where `exporter` is
//! keying material exported from this very TLS session (RFC 5705/8446 exporter). The proof is useless on
//! any other session (a man in the middle has two sessions with different exporters), and the role label
//! stops a peer from reflecting our own proof back at us. The HMAC comes from aws-lc-rs, the crypto
//! library rustls already uses here; verification is constant-time.

use std::fmt;

use aws_lc_rs::hmac;
use quinn_proto::crypto::Session;

/// Exporter label (TLS exporter labels conventionally start with "EXPORTER").
const EXPORTER_LABEL: &[u8] = b"EXPORTER-sfumato-cluster-auth-v1";
const EXPORTER_LEN: usize = 32;

/// Which end of the QUIC connection a proof is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that called `connect`.
    Dialer,
    /// The side that accepted.
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"sfumato-cluster-v1 dialer",
            Role::Acceptor => b"sfumato-cluster-v1 acceptor",
        }
    }

    pub fn opposite(self) -> Role {
        match self {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        }
    }
}

/// Why a proof could not be made or was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("TLS session cannot export keying material")]
    Exporter,
    #[error("proof does not match the cluster secret")]
    BadProof,
}

/// The shared cluster secret, held as an HMAC key (never printed).
#[derive(Clone)]
pub struct ClusterSecret(hmac::Key);

impl ClusterSecret {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn message(role: Role, session: &dyn Session) -> Result<Vec<u8>, AuthError> {
        let mut ekm = [0u8; EXPORTER_LEN];
        session
            .export_keying_material(&mut ekm, EXPORTER_LABEL, b"")
            .map_err(|_| AuthError::Exporter)?;
        let mut msg = Vec::with_capacity(role.label().len() + EXPORTER_LEN);
        msg.extend_from_slice(role.label());
        msg.extend_from_slice(&ekm);
        Ok(msg)
    }

    /// Our proof, sent by the side playing `role`.
    pub fn prove(&self, role: Role, session: &dyn Session) -> Result<[u8; 32], AuthError> {
        let tag = hmac::sign(&self.0, &Self::message(role, session)?);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks the proof the side playing `role` sent on this session.
    pub fn verify(
        &self,
        role: Role,
        session: &dyn Session,
        proof: &[u8; 32],
    ) -> Result<(), AuthError> {
        hmac::verify(&self.0, &Self::message(role, session)?, proof)
            .map_err(|_| AuthError::BadProof)
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}
