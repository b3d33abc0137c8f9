//! JSON Web Tokens, HS256 only, signed and verified by `jsonwebtoken`. The
//! algorithm is pinned: a token whose header names anything else (`none`,
//! HS512, RS256) is refused before any key is touched. `kid` selects the
//! current or the previous secret (rotation). Time is the caller's `now`:
//! `jsonwebtoken`'s own clock checks are off and ours apply, with the same
//! leeway, so a token's validity never depends on where the rule runs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::secret::Secret;

/// Longest token accepted; anything longer is refused unparsed.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECONDS: i64 = 5;

crate::names! {
    /// Who a token is for (its `aud`). A token for one audience never passes
    /// for the other.
    pub enum Audience {
        /// Dashboard users of a client (tenant).
        Dashboard = "caas-dashboard",
        /// End users of a client, via the SDK.
        Sdk = "caas-sdk",
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

/// The time rules of a token whose signature, issuer and audience passed
/// (`JwtKeys::verify`'s last step; also for claims verified earlier and
/// kept, which must still be within their times when used again).
pub fn check_time(claims: &Claims, now: i64) -> Result<(), TokenError> {
    if now >= claims.exp + LEEWAY_SECONDS {
        return Err(TokenError::Expired);
    }
    let not_before = claims.nbf.unwrap_or(claims.iat);
    if now + LEEWAY_SECONDS < not_before {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
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

/// The header fields read before any key is chosen.
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
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The header new tokens carry (with this key's kid).
    header: jsonwebtoken::Header,
}

impl SigningKey {
    fn new(secret: &Secret) -> Self {
        let bytes = secret.expose().as_bytes();
        // The kid names the key without revealing it: a digest prefix.
        let kid = hex::encode(&Sha256::digest(bytes)[..8]);
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        Self { kid, encoding: EncodingKey::from_secret(bytes), decoding: DecodingKey::from_secret(bytes), header }
    }
}

/// Issues and verifies tokens (auth-api issues; ext-authz verifies).
#[derive(Clone)]
pub struct JwtKeys {
    issuer: String,
    current: SigningKey,
    previous: Option<SigningKey>,
    /// One per audience, indexed by `Audience::index`: HS256 only, issuer and
    /// audience checked by `jsonwebtoken`, its clock off (ours is `now`).
    validations: Vec<Validation>,
}

impl JwtKeys {
    pub fn new(issuer: impl Into<String>, current: &Secret, previous: Option<&Secret>) -> Self {
        let issuer = issuer.into();
        let validation_for = |audience: Audience| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.leeway = 0;
            validation.required_spec_claims.clear();
            validation.set_issuer(&[issuer.as_str()]);
            validation.set_audience(&[audience.as_str()]);
            validation
        };
        let validations = Audience::ALL.iter().map(|audience| validation_for(*audience)).collect();
        Self { issuer, current: SigningKey::new(current), previous: previous.map(SigningKey::new), validations }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid` new tokens carry.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    /// Signs `claims` with the current secret. Serializing these claims
    /// cannot fail; if it ever did, the empty token verifies nowhere.
    pub fn issue(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&self.current.header, claims, &self.current.encoding).unwrap_or_default()
    }

    /// Verifies signature, algorithm, issuer, audience and time. Revocation is
    /// the caller's next step: a token alone cannot say it.
    pub fn verify(&self, token: &str, audience: Audience, now: i64) -> Result<Claims, TokenError> {
        let claims = self.verify_signed(token, audience)?;
        check_time(&claims, now)?;
        Ok(claims)
    }

    /// `verify` but for the times (`check_time`): the header, the signature,
    /// the issuer and the audience. For a caller that keeps the claims of a
    /// token it verified and checks only its times on later uses (the
    /// in-proxy filter).
    pub fn verify_signed(&self, token: &str, audience: Audience) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let key = self.key_for(token)?;
        let validation = &self.validations[audience.index()];
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map_err(|error| match error.kind() {
                // verify_slice underneath compares in constant time.
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::AlgorithmNotAllowed,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                _ => TokenError::Malformed,
            })?
            .claims;
        Ok(claims)
    }

    /// Reads the header alone: the algorithm must be exactly HS256 and the
    /// `kid` must name the current or previous secret, before either is used.
    fn key_for(&self, token: &str) -> Result<&SigningKey, TokenError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
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
        match header.kid {
            Some(kid) if kid == self.current.kid => Ok(&self.current),
            Some(kid) => match &self.previous {
                Some(previous) if previous.kid == kid => Ok(previous),
                _ => Err(TokenError::BadSignature),
            },
            None => Err(TokenError::BadSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac as _};

    use super::*;

    type HmacSha256 = Hmac<Sha256>;

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
