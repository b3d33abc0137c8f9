//! End-user sessions: created by a client's backend (API key), refreshed by
//! the end user (refresh token, rotated on every use), ended by logout, or
//! all of one end user's at once by the client's backend (a ban).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use caas_core::credentials::{CredentialError, SdkSessionRequest, SdkTokens};
use caas_core::id::unix_now;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use caas_http::{ApiError, ApiJson, ApiKeyCaller, ClientIp, ErrorBody, OptionalCaller, OptionalJson};

use crate::AppState;
use crate::errors::api_error;
use crate::schema::{SessionTokens, UserRevoked};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The end user's id in the client's system: 1 to 128 bytes, no spaces or control characters.
    #[schema(min_length = 1, max_length = 128, pattern = "^[^\\s\\x00-\\x1f\\x7f-\\x9f]+$")]
    user_id: String,
    /// At most 200 printable characters.
    #[schema(max_length = 200, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    name: Option<String>,
    /// A JSON object of at most 4 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// As issued: `caas_rt_` and 43 base64url characters (any other shape is `invalid_refresh_token`).
    #[schema(pattern = "^caas_rt_[A-Za-z0-9_-]{43}$")]
    refresh_token: String,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// The session's refresh token; without it, the session of the access token's context.
    #[schema(pattern = "^caas_rt_[A-Za-z0-9_-]{43}$")]
    refresh_token: Option<String>,
}

pub(crate) fn session_tokens(tokens: SdkTokens) -> SessionTokens {
    SessionTokens {
        access_token: tokens.access.token,
        refresh_token: tokens.refresh_token,
        token_type: "Bearer",
        expires_in: tokens.access.expires_in,
        refresh_expires_in: tokens.refresh_expires_in,
        session_id: tokens.session_id,
        user_id: tokens.user_id,
    }
}

/// An end user's session, by the client's backend (API key from a whitelisted address).
#[utoipa::path(post, path = "/sdk/session", tag = "sdk", request_body = SessionRequest,
    responses((status = 201, body = SessionTokens), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "No valid API-key context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody)))]
pub async fn create_session(
    State(state): State<AppState>,
    ApiKeyCaller(caller): ApiKeyCaller,
    ApiJson(body): ApiJson<SessionRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let request = SdkSessionRequest { user_id: body.user_id, name: body.name, metadata: body.metadata };
    let tokens = state.credentials().create_sdk_session(&caller, request, unix_now()).await.map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(session_tokens(tokens))))
}

/// Uses a refresh token once: new access and refresh tokens. Reusing one revokes its session.
#[utoipa::path(post, path = "/refresh", tag = "sdk", request_body = RefreshRequest,
    responses((status = 200, body = SessionTokens), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "invalid_refresh_token, or refresh_token_reused (the session is now revoked)", body = ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    OptionalCaller(caller): OptionalCaller,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let tokens =
        state.credentials().refresh(&body.refresh_token, caller.as_ref(), &ip, unix_now()).await.map_err(api_error)?;
    Ok(Json(session_tokens(tokens)))
}

/// Revokes a session: by refresh token, or the caller's own (access token context).
#[utoipa::path(post, path = "/logout", tag = "sdk", operation_id = "sdk_logout", request_body = Option<LogoutRequest>,
    responses((status = 204, description = "Revoked everywhere within a second"), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Nothing identifies a session", body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    OptionalCaller(caller): OptionalCaller,
    ClientIp(ip): ClientIp,
    OptionalJson(body): OptionalJson<LogoutRequest>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .credentials()
        .logout(body.refresh_token.as_deref(), caller.as_ref(), &ip, unix_now())
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bans an end user of the caller's tenant: every session of theirs is
/// revoked, their tokens refused by every gateway and their sockets closed
/// (4003) within a second. Idempotent.
#[utoipa::path(post, path = "/sdk/users/{user_id}/revoke", tag = "sdk",
    params(("user_id" = String, Path, min_length = 1, max_length = 128, description = "The end user's id in the caller's tenant (percent-encoded)")),
    responses((status = 200, description = "Revoked everywhere within a second (0 sessions on a repeat)", body = UserRevoked), (status = 400, description = "`invalid_user_id`", body = ErrorBody),
        (status = 401, description = "No valid API-key context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody)))]
pub async fn revoke_user(
    State(state): State<AppState>,
    ApiKeyCaller(caller): ApiKeyCaller,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    // A path segment that does not decode (invalid UTF-8) is a bad id too, in our error shape.
    let Path(user_id) = user_id.map_err(|_| api_error(CredentialError::InvalidUserId))?;
    let revoked = state.credentials().revoke_end_user(&caller, &user_id, unix_now()).await.map_err(api_error)?;
    Ok(Json(UserRevoked { user_id, revoked_sessions: revoked }))
}
