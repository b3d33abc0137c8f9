//! Request extractors: JSON bodies with our error codes, and the caller as
//! vouched for by the gateway's signed context (never bare headers).

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use caas_core::context::{AuthType, ContextError, RequestContext};
use caas_core::id::unix_now;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::AppState;
use crate::error::ApiError;

/// A JSON body; malformed, mistyped or oversized bodies get our error codes.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A JSON body that may be absent (no content-type and no bytes): then
/// `T::default()`. A body that is present must be valid JSON.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
            return ApiJson::from_request(req, state).await.map(|ApiJson(v)| OptionalJson(v));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is larger than 64 KiB")
        })?;
        if bytes.is_empty() {
            Ok(OptionalJson(T::default()))
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected content-type: application/json",
            ))
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected content-type: application/json",
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "request body is not valid JSON")
        }
        JsonRejection::JsonDataError(error) => {
            // serde's text may quote the offending value (a password, say):
            // keep the field path and the kind of problem, drop the value.
            let text = error.body_text();
            let detail = text.split_once("target type: ").map_or(text.as_str(), |(_, rest)| rest);
            let (path, problem) = detail.split_once(": ").unwrap_or(("", detail));
            let message = if problem.starts_with("unknown field") || problem.starts_with("missing field") {
                problem.split(" at line").next().unwrap_or(problem).to_string()
            } else if path.is_empty() || path == "." {
                "request body does not have the expected shape".to_string()
            } else {
                format!("field `{path}` has the wrong type or value")
            };
            let mut api = ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message);
            if !path.is_empty() && path != "." && !path.contains(' ') {
                api.field = Some(path.to_string());
            }
            api
        }
        JsonRejection::BytesRejection(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is larger than 64 KiB")
        }
        other => ApiError::new(other.status(), "invalid_body", "request body could not be read"),
    }
}

/// The result of verifying the gateway's signed context, done once per
/// request by the `observe` middleware and kept in the request extensions.
#[derive(Clone)]
pub struct VerifiedContext(pub Result<Option<RequestContext>, ContextError>);

impl VerifiedContext {
    pub fn of(headers: &axum::http::HeaderMap, method: &str, state: &AppState) -> Self {
        let verified =
            state.verifier().verify(|name| headers.get(name).and_then(|v| v.to_str().ok()), method, unix_now());
        VerifiedContext(match verified {
            Ok(context) => Ok(Some(context)),
            Err(ContextError::Missing) => Ok(None),
            Err(error) => Err(error),
        })
    }
}

/// The gateway's signed context, if the request carries one. A context that
/// is present but invalid is an error, never silently ignored.
pub fn signed_context(parts: &Parts, state: &AppState) -> Result<Option<RequestContext>, ContextError> {
    match parts.extensions.get::<VerifiedContext>() {
        Some(verified) => verified.0.clone(),
        None => VerifiedContext::of(&parts.headers, parts.method.as_str(), state).0,
    }
}

fn require(parts: &Parts, state: &AppState, auth_types: &[AuthType]) -> Result<RequestContext, ApiError> {
    let context = signed_context(parts, state)?.ok_or(ContextError::Missing)?;
    if !auth_types.contains(&context.auth_type) || context.tenant_id.is_empty() {
        return Err(ApiError::forbidden("wrong_credential_type", "this route needs a different kind of credential"));
    }
    Ok(context)
}

/// A dashboard user of a client (tenant).
pub struct DashboardCaller(pub RequestContext);

impl FromRequestParts<AppState> for DashboardCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        require(parts, state, &[AuthType::Dashboard]).map(DashboardCaller)
    }
}

/// A client's backend, authenticated by API key from a whitelisted IP.
pub struct ApiKeyCaller(pub RequestContext);

impl FromRequestParts<AppState> for ApiKeyCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        require(parts, state, &[AuthType::ApiKey]).map(ApiKeyCaller)
    }
}

/// Whatever the gateway vouched for, if anything (public routes).
pub struct OptionalCaller(pub Option<RequestContext>);

impl FromRequestParts<AppState> for OptionalCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(OptionalCaller(signed_context(parts, state)?))
    }
}

/// The client address: from the signed context behind the gateway, else the
/// TCP peer. Never from X-Forwarded-For, which a client can write.
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(context) = signed_context(parts, state)?
            && !context.client_ip.is_empty()
        {
            return Ok(ClientIp(context.client_ip));
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string());
        Ok(ClientIp(peer.unwrap_or_else(|| "unknown".into())))
    }
}

/// A caller of the internal endpoints: `authorization: Service <SERVICE_SECRET>`.
pub struct ServiceCaller;

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Service "))
            .unwrap_or_default();
        // Digests first so the comparison is constant-time in length too.
        let presented = Sha256::digest(presented.as_bytes());
        let mut valid = subtle::Choice::from(0);
        for secret in state.service_secrets() {
            valid |= Sha256::digest(secret.expose().as_bytes()).ct_eq(&presented);
        }
        if bool::from(valid) {
            Ok(ServiceCaller)
        } else {
            Err(ApiError::unauthorized("invalid_service_token", "a valid service token is required")
                .with_service_challenge())
        }
    }
}
