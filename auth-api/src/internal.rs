//! Internal validation endpoints, for services that receive requests without
//! the gateway's context (e.g. a socket upgrade that did not come through
//! Envoy). Protected by the service token; never routed by Envoy.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use caas_core::id::unix_now;
use caas_core::jwt::Audience;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use caas_http::{ApiError, ApiJson};

use crate::extract::ServiceCaller;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateTokenRequest {
    token: String,
    origin: Option<String>,
    /// `caas-sdk` (default) or `caas-dashboard`.
    audience: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateKeyRequest {
    api_key: String,
    ip: String,
}

pub async fn validate_token(
    _: ServiceCaller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ValidateTokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let audience = match body.audience.as_deref() {
        None | Some("caas-sdk") => Audience::Sdk,
        Some("caas-dashboard") => Audience::Dashboard,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_audience",
                "audience",
                "audience must be caas-sdk or caas-dashboard",
            ));
        }
    };
    let claims = state.validator().validate_token(&body.token, audience, body.origin.as_deref(), unix_now()).await?;
    let auth_type = if audience == Audience::Sdk { "jwt" } else { "dashboard" };
    Ok(Json(json!({
        "valid": true,
        "tenant_id": claims.tid,
        "user_id": claims.sub,
        "session_id": claims.sid,
        "auth_type": auth_type,
        "expires_at": claims.exp,
    })))
}

pub async fn validate_api_key(
    _: ServiceCaller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ValidateKeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let ip: IpAddr = body
        .ip
        .trim()
        .parse()
        .map_err(|_| ApiError::invalid("invalid_ip", "ip", "ip is not an IPv4 or IPv6 address"))?;
    let identity = state.validator().validate_api_key(&body.api_key, ip, unix_now()).await?;
    Ok(Json(
        json!({ "valid": true, "tenant_id": identity.tenant_id, "key_id": identity.key_id, "auth_type": "api_key" }),
    ))
}
