//! JSON Web Tokens, HS256 only. The algorithm is pinned: a token whose header
//! names anything else (`none`, HS512, RS256) is refused before any key is
//! touched. `kid` selects the current or the previous secret (rotation).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted; anything longer is refused unparsed.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECONDS: i64 = 5;

/// Who a token is for. A token for one audience never passes for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Dashboard users of a client (tenant).
    Dashboard,
    /// End users of a client, via the SDK.
    Sdk,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Dashboard => "caas-dashboard",
            Audience::Sdk => "caas-sdk",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// End-user id (SDK) or account id (dashboard).
    pub sub: String,
    /// Tenant (client) id.
    pub tid: String,
    /// Session id: what logout revokes.
    pub sid: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// Why a token was refused. All surface as 401 with the code of `code()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token is too long")]
    TooLong,
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience is wrong for this route")]
    WrongAudience,
    #[error("token issuer is not trusted")]
    WrongIssuer,
}

impl TokenError {
    pub fn code(self) -> &'static str {
        match self {
            TokenError::Malformed | TokenError::TooLong => "malformed_token",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
        }
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    alg: &'a str,
    #[serde(borrow)]
    kid: Option<&'a str>,
    #[serde(default, borrow)]
    typ: Option<&'a str>,
}

#[derive(Clone)]
struct SigningKey {
    kid: String,
    /// Keyed once; cloning a keyed HMAC skips re-deriving the pads per token.
    mac: HmacSha256,
    /// The header this key signs with, already base64url-encoded.
    encoded_header: String,
}

impl SigningKey {
    fn new(secret: &Secret) -> Self {
        // The kid names the key without revealing it: a digest prefix.
        let kid = hex::encode(&Sha256::digest(secret.expose().as_bytes())[..8]);
        let mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#);
        Self { encoded_header: URL_SAFE_NO_PAD.encode(header), kid, mac }
    }
}

/// Issues and verifies tokens. Only the auth service holds one.
#[derive(Clone)]
pub struct JwtKeys {
    issuer: String,
    current: SigningKey,
    previous: Option<SigningKey>,
}

impl JwtKeys {
    pub fn new(issuer: impl Into<String>, current: &Secret, previous: Option<&Secret>) -> Self {
        Self { issuer: issuer.into(), current: SigningKey::new(current), previous: previous.map(SigningKey::new) }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid` new tokens carry.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    pub fn issue(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(self.current.encoded_header.len() + payload.len() * 4 / 3 + 48);
        token.push_str(&self.current.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let mut mac = self.current.mac.clone();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Verifies signature, algorithm, issuer, audience and time. Revocation is
    /// the caller's next step (see `validate`): a token alone cannot say it.
    pub fn verify(&self, token: &str, audience: Audience, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json = URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| TokenError::Malformed)?;
        let header: Header<'_> = serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        if header.typ.is_some_and(|typ| typ != "JWT") {
            return Err(TokenError::Malformed);
        }
        let key = match header.kid {
            Some(kid) if kid == self.current.kid => &self.current,
            Some(kid) => match &self.previous {
                Some(previous) if previous.kid == kid => previous,
                _ => return Err(TokenError::BadSignature),
            },
            None => return Err(TokenError::BadSignature),
        };
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| TokenError::Malformed)?;
        let mut mac = key.mac.clone();
        mac.update(header_b64.as_bytes());
        mac.update(b".");
        mac.update(payload_b64.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;

        let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if claims.aud != audience.as_str() {
            return Err(TokenError::WrongAudience);
        }
        if now >= claims.exp + LEEWAY_SECONDS {
            return Err(TokenError::Expired);
        }
        let not_before = claims.nbf.unwrap_or(claims.iat);
        if now + LEEWAY_SECONDS < not_before {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new("caas", &Secret::new("a".repeat(32)), None)
    }

    fn claims(aud: Audience, now: i64) -> Claims {
        Claims {
            iss: "caas".into(),
            aud: aud.as_str().into(),
            sub: "user-1".into(),
            tid: "cl_1".into(),
            sid: "ses_1".into(),
            jti: "j1".into(),
            iat: now,
            exp: now + 900,
            nbf: None,
        }
    }

    fn forge(header: &str, payload: &Claims, secret: &[u8], sign: bool) -> String {
        let head = URL_SAFE_NO_PAD.encode(header);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap());
        let signing_input = format!("{head}.{body}");
        if !sign {
            return format!("{signing_input}.");
        }
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn round_trip() {
        let keys = keys();
        let c = claims(Audience::Sdk, 1_000);
        let token = keys.issue(&c);
        assert_eq!(keys.verify(&token, Audience::Sdk, 1_001), Ok(c));
    }

    #[test]
    fn wrong_audience_expired_and_not_yet_valid() {
        let keys = keys();
        let token = keys.issue(&claims(Audience::Dashboard, 1_000));
        assert_eq!(keys.verify(&token, Audience::Sdk, 1_000), Err(TokenError::WrongAudience));
        assert_eq!(keys.verify(&token, Audience::Dashboard, 1_000 + 900 + LEEWAY_SECONDS), Err(TokenError::Expired));
        assert_eq!(keys.verify(&token, Audience::Dashboard, 1_000 - 60), Err(TokenError::NotYetValid));
        let mut future = claims(Audience::Sdk, 1_000);
        future.nbf = Some(2_000);
        assert_eq!(keys.verify(&keys.issue(&future), Audience::Sdk, 1_500), Err(TokenError::NotYetValid));
    }

    #[test]
    fn algorithm_is_pinned() {
        let keys = keys();
        let c = claims(Audience::Sdk, 1_000);
        let kid = keys.current_kid().to_string();
        let none = forge(&format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#), &c, b"", false);
        assert_eq!(keys.verify(&none, Audience::Sdk, 1_000), Err(TokenError::AlgorithmNotAllowed));
        let hs512 = forge(&format!(r#"{{"alg":"HS512","kid":"{kid}"}}"#), &c, &[b'a'; 32], true);
        assert_eq!(keys.verify(&hs512, Audience::Sdk, 1_000), Err(TokenError::AlgorithmNotAllowed));
        let lower = forge(&format!(r#"{{"alg":"hs256","kid":"{kid}"}}"#), &c, &[b'a'; 32], true);
        assert_eq!(keys.verify(&lower, Audience::Sdk, 1_000), Err(TokenError::AlgorithmNotAllowed));
    }

    #[test]
    fn tampered_unsigned_and_foreign_tokens_fail() {
        let keys = keys();
        let token = keys.issue(&claims(Audience::Sdk, 1_000));
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut other = claims(Audience::Sdk, 1_000);
        other.tid = "cl_other".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        assert_eq!(keys.verify(&parts.join("."), Audience::Sdk, 1_000), Err(TokenError::BadSignature));
        let foreign = JwtKeys::new("caas", &Secret::new("b".repeat(32)), None);
        assert_eq!(foreign.verify(&token, Audience::Sdk, 1_000), Err(TokenError::BadSignature));
        let no_kid = forge(r#"{"alg":"HS256"}"#, &claims(Audience::Sdk, 1_000), &[b'a'; 32], true);
        assert_eq!(keys.verify(&no_kid, Audience::Sdk, 1_000), Err(TokenError::BadSignature));
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(keys.verify(junk, Audience::Sdk, 1_000).is_err(), "{junk}");
        }
    }

    #[test]
    fn wrong_issuer_fails() {
        let keys = keys();
        let other = JwtKeys::new("someone-else", &Secret::new("a".repeat(32)), None);
        let token = other.issue(&Claims { iss: "someone-else".into(), ..claims(Audience::Sdk, 1_000) });
        assert_eq!(keys.verify(&token, Audience::Sdk, 1_000), Err(TokenError::WrongIssuer));
    }

    #[test]
    fn previous_secret_verifies_during_rotation() {
        let old = Secret::new("o".repeat(32));
        let new = Secret::new("n".repeat(32));
        let before = JwtKeys::new("caas", &old, None);
        let token = before.issue(&claims(Audience::Sdk, 1_000));
        let during = JwtKeys::new("caas", &new, Some(&old));
        assert!(during.verify(&token, Audience::Sdk, 1_000).is_ok());
        let after = JwtKeys::new("caas", &new, None);
        assert_eq!(after.verify(&token, Audience::Sdk, 1_000), Err(TokenError::BadSignature));
        let fresh = during.issue(&claims(Audience::Sdk, 1_000));
        assert!(after.verify(&fresh, Audience::Sdk, 1_000).is_ok());
    }
}
