//! Signed request context: what the gateway tells downstream services about a
//! request it allowed. ext-authz signs it; every service verifies it locally
//! (one HMAC, no network) and never looks at a token itself.
//!
//! The signature covers every context header plus the method, in a canonical
//! form where each value is length-prefixed, so no value can be crafted to
//! shift bytes into its neighbour. The path is not covered: Envoy rewrites it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

pub const TENANT_ID: &str = "x-caas-tenant-id";
pub const USER_ID: &str = "x-caas-user-id";
pub const SESSION_ID: &str = "x-caas-session-id";
pub const AUTH_TYPE: &str = "x-caas-auth-type";
pub const KEY_ID: &str = "x-caas-key-id";
/// The client address the gateway decided on (TCP peer or trusted XFF hop),
/// on routes whose service uses it (auth-api throttles and audits by
/// address); a signed address is the only one a client cannot forge.
pub const CLIENT_IP: &str = "x-caas-client-ip";
pub const REQUEST_ID: &str = "x-request-id";
/// When the access token behind the context expires (Unix seconds); set on
/// WebSocket upgrades only, where the connection outlives the request and
/// must close when its token does.
pub const TOKEN_EXPIRES_AT: &str = "x-caas-token-expires-at";
pub const CONTEXT_TS: &str = "x-caas-context-ts";
pub const CONTEXT_SIG: &str = "x-caas-context-sig";
/// Every `x-caas-*` header the gateway may set; all others are removed.
pub const CONTEXT_HEADERS: [&str; 9] =
    [TENANT_ID, USER_ID, SESSION_ID, AUTH_TYPE, KEY_ID, CLIENT_IP, TOKEN_EXPIRES_AT, CONTEXT_TS, CONTEXT_SIG];
/// A context older than this is refused.
pub const MAX_CONTEXT_AGE_SECONDS: i64 = 60;

crate::names! {
    /// How the caller was authenticated (`x-caas-auth-type`).
    pub enum AuthType {
        /// An end user's access token (aud `caas-sdk`).
        Jwt = "jwt",
        /// A client's backend, by API key from a whitelisted IP.
        ApiKey = "api_key",
        /// A client's dashboard user (aud `caas-dashboard`).
        Dashboard = "dashboard",
        /// A public route: nobody is authenticated, only the IP is vouched for.
        Anonymous = "anonymous",
    }
}

impl AuthType {
    pub fn parse(value: &str) -> Option<Self> {
        value.parse().ok()
    }
}

/// Who is calling, as vouched for by the gateway. Empty strings mean "none".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub tenant_id: String,
    pub user_id: String,
    pub session_id: String,
    pub auth_type: AuthType,
    pub key_id: String,
    pub client_ip: String,
    pub request_id: String,
    /// Expiry of the access token, on WebSocket upgrades.
    pub token_expires_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// No signed context: surfaces as 401 `missing_context`.
    #[error("request carries no gateway context")]
    Missing,
    /// Surfaces as 401 `invalid_context`.
    #[error("gateway context is malformed")]
    Malformed,
    /// Surfaces as 401 `invalid_context`; log it: someone forged headers.
    #[error("gateway context signature is invalid")]
    BadSignature,
    /// Surfaces as 401 `context_expired`.
    #[error("gateway context is too old")]
    Expired,
}

impl ContextError {
    pub fn code(self) -> &'static str {
        match self {
            ContextError::Missing => "missing_context",
            ContextError::Malformed | ContextError::BadSignature => "invalid_context",
            ContextError::Expired => "context_expired",
        }
    }
}

fn canonical_update(mac: &mut HmacSha256, ctx: &RequestContext, method: &str, ts: i64) {
    let ts = ts.to_string();
    let expires = ctx.token_expires_at.map(|at| at.to_string()).unwrap_or_default();
    for field in [
        "caas-context-v1",
        method,
        &ctx.tenant_id,
        &ctx.user_id,
        &ctx.session_id,
        ctx.auth_type.as_str(),
        &ctx.key_id,
        &ctx.client_ip,
        &ctx.request_id,
        &expires,
        &ts,
    ] {
        mac.update(&(field.len() as u32).to_be_bytes());
        mac.update(field.as_bytes());
    }
}

fn keyed(secret: &Secret) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

/// Signs context (held by ext-authz only).
#[derive(Clone)]
pub struct ContextSigner {
    mac: HmacSha256,
}

impl ContextSigner {
    pub fn new(service_secret: &Secret) -> Self {
        Self { mac: keyed(service_secret) }
    }

    /// HMAC-SHA256 of the canonical form, base64url (43 characters: every
    /// byte of a context header is work for Envoy on every request).
    pub fn sign(&self, ctx: &RequestContext, method: &str, ts: i64) -> String {
        let mut mac = self.mac.clone();
        canonical_update(&mut mac, ctx, method, ts);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The headers to inject, signature included, in a fixed order. Fields
    /// that are empty are still listed so that the sender overwrites them.
    pub fn headers(&self, ctx: &RequestContext, method: &str, ts: i64) -> [(&'static str, String); 10] {
        let signature = self.sign(ctx, method, ts);
        [
            (TENANT_ID, ctx.tenant_id.clone()),
            (USER_ID, ctx.user_id.clone()),
            (SESSION_ID, ctx.session_id.clone()),
            (AUTH_TYPE, ctx.auth_type.as_str().to_string()),
            (KEY_ID, ctx.key_id.clone()),
            (CLIENT_IP, ctx.client_ip.clone()),
            (REQUEST_ID, ctx.request_id.clone()),
            (TOKEN_EXPIRES_AT, ctx.token_expires_at.map(|at| at.to_string()).unwrap_or_default()),
            (CONTEXT_TS, ts.to_string()),
            (CONTEXT_SIG, signature),
        ]
    }
}

/// Verifies context (held by every downstream service).
#[derive(Clone)]
pub struct ContextVerifier {
    macs: Vec<HmacSha256>,
}

impl ContextVerifier {
    /// `previous` is also accepted, for SERVICE_SECRET rotation.
    pub fn new(service_secret: &Secret, previous: Option<&Secret>) -> Self {
        let mut macs = vec![keyed(service_secret)];
        macs.extend(previous.map(keyed));
        Self { macs }
    }

    /// `header` returns a header's value by lowercase name. A context whose
    /// signature is missing, wrong or older than 60 s is refused.
    pub fn verify<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        method: &str,
        now: i64,
    ) -> Result<RequestContext, ContextError> {
        let (Some(signature), Some(ts)) = (header(CONTEXT_SIG), header(CONTEXT_TS)) else {
            return Err(ContextError::Missing);
        };
        let ts: i64 = ts.parse().map_err(|_| ContextError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| ContextError::Malformed)?;
        let auth_type = header(AUTH_TYPE).and_then(AuthType::parse).ok_or(ContextError::Malformed)?;
        let field = |name| header(name).unwrap_or_default().to_string();
        let ctx = RequestContext {
            tenant_id: field(TENANT_ID),
            user_id: field(USER_ID),
            session_id: field(SESSION_ID),
            auth_type,
            key_id: field(KEY_ID),
            client_ip: field(CLIENT_IP),
            request_id: field(REQUEST_ID),
            token_expires_at: match header(TOKEN_EXPIRES_AT).unwrap_or_default() {
                "" => None,
                at => Some(at.parse().map_err(|_| ContextError::Malformed)?),
            },
        };
        let valid = self.macs.iter().any(|mac| {
            let mut mac = mac.clone();
            canonical_update(&mut mac, &ctx, method, ts);
            mac.verify_slice(&signature).is_ok()
        });
        if !valid {
            return Err(ContextError::BadSignature);
        }
        // Checked after the signature so a forger learns nothing from timing.
        if (now - ts).abs() > MAX_CONTEXT_AGE_SECONDS {
            return Err(ContextError::Expired);
        }
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ctx() -> RequestContext {
        RequestContext {
            tenant_id: "cl_1".into(),
            user_id: "u1".into(),
            session_id: "ses_1".into(),
            auth_type: AuthType::Jwt,
            key_id: String::new(),
            client_ip: "127.0.0.1".into(),
            request_id: "req-1".into(),
            token_expires_at: None,
        }
    }

    fn headers(signer: &ContextSigner, ctx: &RequestContext, ts: i64) -> HashMap<&'static str, String> {
        signer.headers(ctx, "POST", ts).into_iter().collect()
    }

    fn verify(
        verifier: &ContextVerifier,
        h: &HashMap<&'static str, String>,
        method: &str,
        now: i64,
    ) -> Result<RequestContext, ContextError> {
        verifier.verify(|name| h.get(name).map(String::as_str), method, now)
    }

    #[test]
    fn signed_context_verifies() {
        let secret = Secret::new("s".repeat(32));
        let h = headers(&ContextSigner::new(&secret), &ctx(), 1_000);
        assert_eq!(verify(&ContextVerifier::new(&secret, None), &h, "POST", 1_030), Ok(ctx()));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let secret = Secret::new("s".repeat(32));
        let verifier = ContextVerifier::new(&secret, None);
        let h = headers(&ContextSigner::new(&secret), &ctx(), 1_000);
        assert_eq!(verify(&verifier, &h, "GET", 1_000), Err(ContextError::BadSignature));
        for name in [TENANT_ID, USER_ID, SESSION_ID, KEY_ID, CLIENT_IP, REQUEST_ID, TOKEN_EXPIRES_AT, CONTEXT_TS] {
            let mut forged = h.clone();
            forged.insert(name, "999".into());
            assert_eq!(verify(&verifier, &forged, "POST", 1_000), Err(ContextError::BadSignature), "{name}");
        }
        let mut forged = h.clone();
        forged.insert(AUTH_TYPE, "api_key".into());
        assert_eq!(verify(&verifier, &forged, "POST", 1_000), Err(ContextError::BadSignature));
        // Moving bytes between neighbours does not keep the signature valid.
        let mut shifted = h.clone();
        shifted.insert(TENANT_ID, "cl_1u".into());
        shifted.insert(USER_ID, "1".into());
        assert_eq!(verify(&verifier, &shifted, "POST", 1_000), Err(ContextError::BadSignature));
    }

    #[test]
    fn old_missing_and_foreign_contexts_are_refused() {
        let secret = Secret::new("s".repeat(32));
        let verifier = ContextVerifier::new(&secret, None);
        let h = headers(&ContextSigner::new(&secret), &ctx(), 1_000);
        assert_eq!(verify(&verifier, &h, "POST", 1_061), Err(ContextError::Expired));
        assert_eq!(verify(&verifier, &h, "POST", 939), Err(ContextError::Expired));
        assert_eq!(verify(&verifier, &HashMap::new(), "POST", 1_000), Err(ContextError::Missing));
        let mut bare = h.clone();
        bare.remove(CONTEXT_SIG);
        assert_eq!(verify(&verifier, &bare, "POST", 1_000), Err(ContextError::Missing));
        let other = headers(&ContextSigner::new(&Secret::new("t".repeat(32))), &ctx(), 1_000);
        assert_eq!(verify(&verifier, &other, "POST", 1_000), Err(ContextError::BadSignature));
        let mut junk = h.clone();
        junk.insert(CONTEXT_SIG, "!!".into());
        assert_eq!(verify(&verifier, &junk, "POST", 1_000), Err(ContextError::Malformed));
    }

    #[test]
    fn previous_secret_is_accepted_during_rotation() {
        let old = Secret::new("o".repeat(32));
        let new = Secret::new("n".repeat(32));
        let h = headers(&ContextSigner::new(&old), &ctx(), 1_000);
        assert!(verify(&ContextVerifier::new(&new, Some(&old)), &h, "POST", 1_000).is_ok());
        assert!(verify(&ContextVerifier::new(&new, None), &h, "POST", 1_000).is_err());
    }
}
