//! Why a request is refused: the credential denials every edge shares
//! (`Denial`, with its class) and the gateway's own refusals (`Reason`), each
//! with its stable error code, HTTP status and message. ext-authz and any
//! in-proxy filter answer from these, so the two can never disagree.

use crate::jwt::TokenError;
use crate::quota::Throttle;

/// Why a request is refused. Each edge maps `class()` to its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No credential where one is required: unauthenticated.
    #[error("credentials are required")]
    MissingCredentials,
    /// Malformed, truncated or unknown API key: unauthenticated.
    #[error("API key is not valid")]
    InvalidApiKey,
    /// Unauthenticated.
    #[error("API key has been revoked")]
    ApiKeyRevoked,
    /// Rotated out and past its grace period: unauthenticated.
    #[error("API key has expired")]
    ApiKeyExpired,
    /// Unauthenticated, with the token error's own code.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// Logged out, reuse-detected, or unknown session: unauthenticated.
    #[error("session has been revoked")]
    SessionRevoked,
    /// Forbidden.
    #[error("client IP is not in the tenant's IP whitelist")]
    IpNotAllowed,
    /// Forbidden.
    #[error("origin is not in the tenant's origin whitelist")]
    OriginNotAllowed,
    /// The database is unreachable and nothing cached can answer: fail closed.
    #[error("credential store is unavailable")]
    Unavailable,
}

/// The refusals the in-proxy filter (edge-wasm/) answers itself, as ext-authz
/// would: each of a credential it verified, none a guess (ext-authz counts a
/// guess against the address, so guesses stay ext-authz's to answer). Its
/// reports are taken only for these (ext-authz/src/edge.rs, `denials`).
pub const EDGE_ANSWERS: [Denial; 9] = [
    Denial::Token(TokenError::Expired),
    Denial::Token(TokenError::NotYetValid),
    Denial::Token(TokenError::WrongAudience),
    Denial::Token(TokenError::WrongIssuer),
    Denial::SessionRevoked,
    Denial::OriginNotAllowed,
    Denial::ApiKeyRevoked,
    Denial::ApiKeyExpired,
    Denial::IpNotAllowed,
];

/// A denial and, when the credential got far enough to name one, its tenant
/// (for logs: an IP or Origin refusal is about a known tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub denial: Denial,
    pub tenant_id: Option<String>,
}

impl From<Denial> for Rejection {
    fn from(denial: Denial) -> Self {
        Rejection { denial, tenant_id: None }
    }
}

impl From<TokenError> for Rejection {
    fn from(error: TokenError) -> Self {
        Denial::Token(error).into()
    }
}

impl PartialEq<Denial> for Rejection {
    fn eq(&self, other: &Denial) -> bool {
        self.denial == *other
    }
}

impl Denial {
    pub fn for_tenant(self, tenant_id: &str) -> Rejection {
        Rejection { denial: self, tenant_id: Some(tenant_id.to_string()) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialClass {
    Unauthenticated,
    Forbidden,
    Unavailable,
}

impl Denial {
    pub fn code(self) -> &'static str {
        match self {
            Denial::MissingCredentials => "missing_credentials",
            Denial::InvalidApiKey => "invalid_api_key",
            Denial::ApiKeyRevoked => "api_key_revoked",
            Denial::ApiKeyExpired => "api_key_expired",
            Denial::Token(e) => e.code(),
            Denial::SessionRevoked => "session_revoked",
            Denial::IpNotAllowed => "ip_not_allowed",
            Denial::OriginNotAllowed => "origin_not_allowed",
            Denial::Unavailable => "service_unavailable",
        }
    }

    /// Whether this failure is one an attacker produces at will (a made-up,
    /// truncated or forged credential), so the gateway counts it against the
    /// client's address. Not counted: a missing credential (a browser's
    /// first try), an expired, not-yet-valid, revoked or wrongly aimed
    /// credential or a closed session (honest clients hit these at every
    /// rotation, logout, clock skew or misrouted call, and all of them need a
    /// credential that was really issued), whitelist refusals (a valid
    /// credential) and outages.
    pub fn is_guess(self) -> bool {
        match self {
            Denial::InvalidApiKey => true,
            Denial::Token(error) => matches!(
                error,
                TokenError::Malformed
                    | TokenError::TooLong
                    | TokenError::AlgorithmNotAllowed
                    | TokenError::BadSignature
            ),
            _ => false,
        }
    }

    pub fn class(self) -> DenialClass {
        match self {
            Denial::IpNotAllowed | Denial::OriginNotAllowed => DenialClass::Forbidden,
            Denial::Unavailable => DenialClass::Unavailable,
            _ => DenialClass::Unauthenticated,
        }
    }
}

/// Why a request was refused at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Denied(Denial),
    /// A credential in the URL, where logs and referrers keep it.
    CredentialInQuery,
    /// The route declares no (or an unknown) policy: a gateway misconfiguration.
    PolicyMissing,
    /// A path with `.`/`..`/empty segments or escaped separators, which a
    /// later hop could route differently from the policy chosen here.
    PathNotCanonical,
    /// TRUSTED_PROXY_HOPS says there are proxies, but X-Forwarded-For is too short.
    ClientIpUnknown,
    /// The internal deadline passed before a decision.
    DeadlineExceeded,
    /// A preflight for a route browsers must not call (API-key routes).
    PreflightNotAllowed,
    /// Too many made-up credentials from this address within the window:
    /// refused before any lookup, for `retry_after` more seconds.
    TooManyFailures {
        retry_after: u32,
    },
    /// A valid credential over one of its tenant's quotas (rules/src/quota.rs).
    RateLimited(Throttle),
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Denied(denial) => denial.code(),
            Reason::CredentialInQuery => "credential_in_query",
            Reason::PolicyMissing => "route_policy_missing",
            Reason::PathNotCanonical => "path_not_canonical",
            Reason::ClientIpUnknown => "client_ip_unknown",
            Reason::DeadlineExceeded => "auth_timeout",
            Reason::PreflightNotAllowed => "cors_not_allowed",
            Reason::TooManyFailures { .. } => "too_many_failures",
            Reason::RateLimited(_) => "rate_limited",
        }
    }

    /// How the refusal is answered (its HTTP status, and through ext-authz
    /// its gRPC code).
    pub fn answer(self) -> Refused {
        match self {
            Reason::Denied(denial) => match denial.class() {
                DenialClass::Unauthenticated => Refused::Unauthenticated,
                DenialClass::Forbidden => Refused::Forbidden,
                DenialClass::Unavailable => Refused::Unavailable,
            },
            Reason::CredentialInQuery | Reason::PathNotCanonical => Refused::BadRequest,
            Reason::PolicyMissing => Refused::Internal,
            Reason::ClientIpUnknown | Reason::PreflightNotAllowed => Refused::Forbidden,
            Reason::DeadlineExceeded => Refused::Unavailable,
            Reason::TooManyFailures { .. } => Refused::TooManyRequests,
            Reason::RateLimited(_) => Refused::TooManyRequests,
        }
    }

    pub fn status(self) -> u16 {
        self.answer().status()
    }

    pub fn message(self) -> String {
        match self {
            Reason::Denied(denial) => denial.to_string(),
            Reason::CredentialInQuery => "credentials must be sent in headers, never in the URL".into(),
            Reason::PolicyMissing => "this route is not configured for authorization".into(),
            Reason::PathNotCanonical => {
                "the path must not contain '.', '..' or empty segments or escaped separators".into()
            }
            Reason::ClientIpUnknown => "the client address could not be determined".into(),
            Reason::DeadlineExceeded => "authorization took too long; retry".into(),
            Reason::PreflightNotAllowed => "this route does not accept browser requests".into(),
            Reason::TooManyFailures { retry_after } => {
                format!("too many invalid credentials from this address; retry in {retry_after}s")
            }
            Reason::RateLimited(t) => format!(
                "{} rate limit exceeded ({} requests per second, burst {}); retry after {} s",
                t.scope.as_str(),
                t.limit.rate,
                t.limit.burst,
                t.retry_after
            ),
        }
    }
}

/// A refusal's answer as the client gets it, whoever answers it (ext-authz,
/// or the in-proxy filter): the headers and the JSON body, for `status`
/// (`reason.status()`).
/// A 401 carries `www-authenticate` and, for a request with an `Origin`,
/// CORS, so a browser app may read it (to refresh its token); the body
/// holds nothing the caller does not already know.
pub fn answered(
    reason: Reason,
    status: u16,
    origin: Option<&str>,
    request_id: &str,
) -> (Vec<(&'static str, String)>, String) {
    let body = serde_json::json!({ "error": { "code": reason.code(), "message": reason.message(), "request_id": request_id } });
    let mut headers = vec![("content-type", "application/json".to_string()), ("x-request-id", request_id.to_string())];
    if let Reason::TooManyFailures { retry_after } = reason {
        headers.push(("retry-after", retry_after.to_string()));
    }
    if status == 401 {
        headers.push(("www-authenticate", format!(r#"Bearer realm="caas", error="{}""#, reason.code())));
        if let Some(origin) = origin {
            headers.push(("access-control-allow-origin", origin.to_string()));
            headers.push(("vary", "Origin".to_string()));
        }
    }
    if let Reason::RateLimited(throttle) = reason {
        // `retry-after`, and the quota that refused in the IETF form
        // (draft-ietf-httpapi-ratelimit-headers): the policy named by its
        // scope, `q` requests per `w` seconds; nothing `r`emains for `t` seconds.
        let (scope, retry) = (throttle.scope.as_str(), throttle.retry_after);
        headers.push(("retry-after", retry.to_string()));
        headers.push(("ratelimit-policy", format!(r#""{scope}";q={};w=1"#, throttle.limit.rate)));
        headers.push(("ratelimit", format!(r#""{scope}";r=0;t={retry}"#)));
    }
    (headers, body.to_string())
}

crate::names! {
    /// The kinds of answer a refusal gets: each names its HTTP status here
    /// and its gRPC code in ext-authz (ext-authz/src/decision.rs), one match
    /// each, so no status is ever matched by number.
    pub enum Refused {
        /// 400: the request itself is unacceptable, whoever sends it.
        BadRequest = "bad_request",
        /// 401: no valid credential.
        Unauthenticated = "unauthenticated",
        /// 403: a valid credential, or a request, this route refuses.
        Forbidden = "forbidden",
        /// 429: too many made-up credentials from this address, or over a
        /// quota; `retry-after` says when to try again.
        TooManyRequests = "too_many_requests",
        /// 500: the gateway is misconfigured.
        Internal = "internal",
        /// 503: a dependency (or the deadline) failed: fail closed.
        Unavailable = "unavailable",
    }
}

impl Refused {
    pub fn status(self) -> u16 {
        match self {
            Refused::BadRequest => 400,
            Refused::Unauthenticated => 401,
            Refused::Forbidden => 403,
            Refused::TooManyRequests => 429,
            Refused::Internal => 500,
            Refused::Unavailable => 503,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter answers these itself, so none may be one ext-authz counts
    /// against the address, and each is a refusal a client can act on.
    #[test]
    fn the_refusals_the_filter_answers_are_never_guesses() {
        for denial in EDGE_ANSWERS {
            assert!(!denial.is_guess(), "{denial:?}");
            assert!(matches!(Reason::Denied(denial).status(), 401 | 403), "{denial:?}");
        }
    }
}
