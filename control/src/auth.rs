//! Tokens: who may publish or watch which room.
//!
//! Compatible with atm0s-media-server's token API: HS256 JWTs signed with the cluster secret, claims
//! `{iss: kind, room, peer, exp}`. With the default secret `insecure` the node runs in dev mode: tokens are
//! optional on `/whip/{room}` and `/whep/{room}` (a loud warning says so at startup). Any other secret makes
//! every publish/watch need a valid token for that room and that kind.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The secret that means "dev mode".
pub const INSECURE_SECRET: &str = "insecure";
/// Longest token lifetime the API will sign (one week).
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Whip,
    Whep,
    Rtmp,
    Webrtc,
}

impl TokenKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "whip" => Some(Self::Whip),
            "whep" => Some(Self::Whep),
            "rtmp" => Some(Self::Rtmp),
            "webrtc" => Some(Self::Webrtc),
            _ => None,
        }
    }

    /// `webrtc` tokens (SDK sessions) may both publish and watch.
    fn allows(self, wanted: TokenKind) -> bool {
        self == wanted || (self == TokenKind::Webrtc && matches!(wanted, TokenKind::Whip | TokenKind::Whep))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: TokenKind,
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401
    #[error("a token is required (Authorization: Bearer <token>)")]
    Missing,
    /// 401
    #[error("token is invalid")]
    Invalid,
    /// 401
    #[error("token has expired")]
    Expired,
    /// 403
    #[error("token is for {0:?}, not this action")]
    WrongKind(TokenKind),
    /// 403
    #[error("token is for another room")]
    WrongRoom,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "TOKEN_MISSING",
            AuthError::Invalid => "TOKEN_INVALID",
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::WrongKind(_) => "TOKEN_WRONG_KIND",
            AuthError::WrongRoom => "TOKEN_WRONG_ROOM",
        }
    }

    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::WrongKind(_) | AuthError::WrongRoom)
    }
}

/// Signs and checks tokens with the cluster secret.
#[derive(Clone)]
pub struct Authority {
    secret: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Authority {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_string(),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// Dev mode: the default secret, tokens optional.
    pub fn is_insecure(&self) -> bool {
        self.secret == INSECURE_SECRET
    }

    /// Constant-time comparison of a presented app secret with ours.
    pub fn is_secret(&self, presented: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub fn issue(&self, kind: TokenKind, room: &str, peer: Option<&str>, ttl_secs: u64, now_secs: u64) -> Option<String> {
        let claims = Claims { iss: kind, room: room.to_string(), peer: peer.map(str::to_string), exp: now_secs + ttl_secs };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }

    /// Checks a token for `wanted` on `room` (`None` = any room: the room comes from the token).
    pub fn verify(&self, token: Option<&str>, wanted: TokenKind, room: Option<&str>, now_secs: u64) -> Result<Claims, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let mut validation = Validation::new(Algorithm::HS256);
        // We check expiry ourselves against `now_secs` (testable, no leeway surprises).
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        if claims.exp <= now_secs {
            return Err(AuthError::Expired);
        }
        if !claims.iss.allows(wanted) {
            return Err(AuthError::WrongKind(claims.iss));
        }
        if room.is_some_and(|r| r != claims.room) {
            return Err(AuthError::WrongRoom);
        }
        Ok(claims)
    }
}

/// A short, non-reversible fingerprint of a token, kept with the session so DELETE/PATCH can be limited to
/// the token that created it without storing the token.
pub fn fingerprint(token: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn token_matrix() {
        let a = Authority::new("s3cret");
        let t = a.issue(TokenKind::Whip, "room1", Some("alice"), 60, NOW).unwrap();
        let c = a.verify(Some(&t), TokenKind::Whip, Some("room1"), NOW).unwrap();
        assert_eq!(c.peer.as_deref(), Some("alice"));
        assert_eq!(a.verify(Some(&t), TokenKind::Whip, None, NOW).unwrap().room, "room1");
        assert_eq!(a.verify(Some(&t), TokenKind::Whip, Some("room2"), NOW), Err(AuthError::WrongRoom));
        assert_eq!(a.verify(Some(&t), TokenKind::Whep, Some("room1"), NOW), Err(AuthError::WrongKind(TokenKind::Whip)));
        assert_eq!(a.verify(Some(&t), TokenKind::Whip, Some("room1"), NOW + 60), Err(AuthError::Expired));
        assert_eq!(a.verify(None, TokenKind::Whip, Some("room1"), NOW), Err(AuthError::Missing));
        assert_eq!(a.verify(Some("garbage"), TokenKind::Whip, Some("room1"), NOW), Err(AuthError::Invalid));
        let forged = Authority::new("other").issue(TokenKind::Whip, "room1", None, 60, NOW).unwrap();
        assert_eq!(a.verify(Some(&forged), TokenKind::Whip, Some("room1"), NOW), Err(AuthError::Invalid));
        let sdk = a.issue(TokenKind::Webrtc, "room1", None, 60, NOW).unwrap();
        assert!(a.verify(Some(&sdk), TokenKind::Whep, Some("room1"), NOW).is_ok());
    }

    #[test]
    fn secret_comparison() {
        let a = Authority::new("abc");
        assert!(a.is_secret("abc"));
        assert!(!a.is_secret("abd"));
        assert!(!a.is_secret("ab"));
        assert!(!a.is_insecure());
        assert!(Authority::new(INSECURE_SECRET).is_insecure());
    }
}
