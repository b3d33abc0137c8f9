//! Internal validation endpoints, for services that receive requests without
//! the gateway's context (e.g. a socket upgrade that did not come through
//! Envoy). Protected by the service token; never routed by Envoy.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use caas_core::context::AuthType;
use caas_core::id::unix_now;
use caas_core::jwt::Audience;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use caas_http::{ApiError, ApiJson, ErrorBody};

use crate::extract::ServiceCaller;
use crate::schema::{ValidatedKey, ValidatedToken};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateTokenRequest {
    token: String,
    /// The request's `Origin`, checked against the tenant's whitelist.
    origin: Option<String>,
    /// `caas-sdk` (default) or `caas-dashboard`.
    #[schema(schema_with = crate::schema::audience)]
    audience: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateKeyRequest {
    api_key: String,
    #[schema(schema_with = crate::schema::ip_address)]
    ip: String,
}

/// Validates an access token (and Origin) for services outside the gateway.
#[utoipa::path(post, path = "/internal/validate", tag = "internal", request_body = ValidateTokenRequest,
    security(("service_token" = [])),
    responses((status = 200, body = ValidatedToken), (status = 400, description = "`invalid_audience`", body = ErrorBody), (status = 401, description = "Missing or wrong service token, or the credential is refused (code says why)", body = ErrorBody), (status = 403, description = "origin_not_allowed", body = ErrorBody)))]
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
    let auth_type = match audience {
        Audience::Sdk => AuthType::Jwt,
        Audience::Dashboard => AuthType::Dashboard,
    };
    Ok(Json(ValidatedToken {
        valid: true,
        tenant_id: claims.tid,
        user_id: claims.sub,
        session_id: claims.sid,
        auth_type: auth_type.as_str(),
        expires_at: claims.exp,
    }))
}

/// Validates an API key from an address, for services outside the gateway.
#[utoipa::path(post, path = "/internal/validate-api-key", tag = "internal", request_body = ValidateKeyRequest,
    security(("service_token" = [])),
    responses((status = 200, body = ValidatedKey), (status = 400, description = "`invalid_ip`: not an IPv4 or IPv6 address", body = ErrorBody), (status = 401, description = "Missing or wrong service token, or the credential is refused (code says why)", body = ErrorBody), (status = 403, description = "ip_not_allowed", body = ErrorBody)))]
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
    Ok(Json(ValidatedKey {
        valid: true,
        tenant_id: identity.tenant_id,
        key_id: identity.key_id,
        auth_type: AuthType::ApiKey.as_str(),
    }))
}
