//! Who is connecting. Through the gateway the upgrade carries verified
//! signed context; otherwise the token is validated once by auth-api's
//! internal endpoint (with the service token). The socket service never
//! verifies tokens itself.

use std::time::Duration;

use axum::http::HeaderMap;
use caas_core::context::{AuthType, ContextError, RequestContext};
use caas_core::secret::Secret;
use caas_rules::request::{AUTHORIZATION, query_tokens, subprotocol_tokens};
use serde::Deserialize;

caas_rules::names! {
    /// The refusal codes counted by name (`socket_auth_failures{reason}`);
    /// any other code (auth-api may relay more) is counted as `other`, so
    /// the label stays a closed set.
    pub enum AuthFailure {
        MissingCredentials = "missing_credentials",
        MalformedToken = "malformed_token",
        BadSignature = "bad_signature",
        TokenExpired = "token_expired",
        TokenNotYetValid = "token_not_yet_valid",
        WrongAudience = "wrong_audience",
        AlgorithmNotAllowed = "algorithm_not_allowed",
        SessionRevoked = "session_revoked",
        OriginNotAllowed = "origin_not_allowed",
        InvalidContext = "invalid_context",
        WrongCredentialType = "wrong_credential_type",
        ServiceUnavailable = "service_unavailable",
    }
}

impl AuthFailure {
    /// The metric label of a refusal code.
    pub fn label(code: &str) -> &'static str {
        code.parse().map_or("other", AuthFailure::as_str)
    }
}

/// An authenticated end user, and when the token that vouched for them expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant_id: String,
    pub user_id: String,
    pub session_id: String,
    pub expires_at: i64,
}

/// Why an upgrade (or a refresh) was refused; mapped to an HTTP status before
/// the 101, or to an `error` frame after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, code: &str, message: &str) -> Self {
        Self { status, code: code.into(), message: message.into() }
    }

    /// A refusal of the socket service's own.
    pub fn of(status: u16, failure: AuthFailure, message: &str) -> Self {
        Self::new(status, failure.as_str(), message)
    }

    fn unavailable() -> Self {
        Self::of(503, AuthFailure::ServiceUnavailable, "authentication is unavailable; retry shortly")
    }
}

/// From the gateway's verified context, when the upgrade came through it.
pub fn from_context(context: Result<Option<RequestContext>, ContextError>) -> Option<Result<Identity, Refusal>> {
    let context = match context {
        Ok(Some(context)) => context,
        Ok(None) => return None,
        Err(error) => return Some(Err(Refusal::new(401, error.code(), &error.to_string()))),
    };
    if context.auth_type != AuthType::Jwt || context.user_id.is_empty() || context.tenant_id.is_empty() {
        return Some(Err(Refusal::of(
            403,
            AuthFailure::WrongCredentialType,
            "sockets need an end user's access token",
        )));
    }
    let Some(expires_at) = context.token_expires_at else {
        return Some(Err(Refusal::of(401, AuthFailure::InvalidContext, "gateway context has no token expiry")));
    };
    Some(Ok(Identity {
        tenant_id: context.tenant_id,
        user_id: context.user_id,
        session_id: context.session_id,
        expires_at,
    }))
}

/// The token of a direct upgrade: `caas.bearer.<jwt>` subprotocol, then
/// `Authorization: Bearer`, then `?token=` (never logged: request logs omit
/// the query).
pub fn token_of<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let from_protocol = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| subprotocol_tokens(v).next());
    let from_header =
        || headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let from_query = || query_tokens(query?).next();
    from_protocol.or_else(from_header).or_else(from_query).filter(|t| !t.is_empty())
}

#[derive(Deserialize)]
struct Validated {
    tenant_id: String,
    user_id: String,
    session_id: String,
    expires_at: i64,
}

/// Calls auth-api's internal validation endpoint.
#[derive(Clone)]
pub struct TokenValidator {
    http: reqwest::Client,
    url: String,
    service_secret: Secret,
}

impl TokenValidator {
    pub fn new(auth_service_url: &str, service_secret: Secret) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap_or_default();
        let url = format!("{}/api/v1/auth/internal/validate", auth_service_url.trim_end_matches('/'));
        Self { http, url, service_secret }
    }

    /// `traceparent` (the caller's) is passed on, so auth-api's log lines join the trace.
    pub async fn validate(
        &self,
        token: &str,
        origin: Option<&str>,
        traceparent: Option<&axum::http::HeaderValue>,
    ) -> Result<Identity, Refusal> {
        let body = serde_json::json!({ "token": token, "origin": origin });
        let mut request =
            self.http.post(&self.url).header("authorization", format!("Service {}", self.service_secret.expose()));
        if let Some(traceparent) = traceparent.and_then(|v| v.to_str().ok()) {
            request = request.header("traceparent", traceparent);
        }
        let response = request.json(&body).send().await.map_err(|error| {
            tracing::error!(%error, "auth-api unreachable while validating a socket token");
            Refusal::unavailable()
        })?;
        let status = response.status().as_u16();
        let reply: serde_json::Value = response.json().await.unwrap_or_default();
        match status {
            200 => {
                let valid: Validated = serde_json::from_value(reply).map_err(|_| Refusal::unavailable())?;
                Ok(Identity {
                    tenant_id: valid.tenant_id,
                    user_id: valid.user_id,
                    session_id: valid.session_id,
                    expires_at: valid.expires_at,
                })
            }
            401 | 403 => Err(Refusal {
                status,
                code: reply["error"]["code"].as_str().unwrap_or("unauthorized").to_string(),
                message: reply["error"]["message"].as_str().unwrap_or("not allowed").to_string(),
            }),
            _ => {
                tracing::error!(status, "auth-api answered the socket's validation with an error");
                Err(Refusal::unavailable())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_subprotocol_header_or_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(token_of(&headers, Some("a=1&token=q")), Some("q"));
        headers.insert("authorization", "Bearer h".parse().unwrap());
        assert_eq!(token_of(&headers, Some("token=q")), Some("h"));
        headers.insert("sec-websocket-protocol", "caas.v1, caas.bearer.p".parse().unwrap());
        assert_eq!(token_of(&headers, Some("token=q")), Some("p"));
        assert_eq!(token_of(&HeaderMap::new(), Some("token=")), None);
        assert_eq!(token_of(&HeaderMap::new(), None), None);
    }

    #[test]
    fn failure_labels_are_a_closed_set() {
        let labels: Vec<&str> = AuthFailure::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            labels,
            [
                "missing_credentials",
                "malformed_token",
                "bad_signature",
                "token_expired",
                "token_not_yet_valid",
                "wrong_audience",
                "algorithm_not_allowed",
                "session_revoked",
                "origin_not_allowed",
                "invalid_context",
                "wrong_credential_type",
                "service_unavailable",
            ]
        );
        assert_eq!(AuthFailure::label("token_expired"), "token_expired");
        assert_eq!(AuthFailure::label("wrong_issuer"), "other");
        assert_eq!(AuthFailure::label("missing_context"), "other");
    }
}
