//! End-user sessions: created by a client's backend (API key), refreshed by
//! the end user (refresh token, rotated on every use), ended by logout.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use caas_core::context::{AuthType, RequestContext};
use caas_core::events::Event;
use caas_core::id::{new_id, unix_now};
use caas_core::jwt::{Audience, Claims};
use caas_core::refresh_token;
use caas_core::store::{AuditAction, AuditEntry, NewSdkSession, RefreshOutcome};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use caas_http::{ApiError, ApiJson, ApiKeyCaller, ClientIp, ErrorBody, OptionalCaller, OptionalJson};

use crate::AppState;
use crate::schema::SessionTokens;

use caas_core::chat::MAX_USER_ID_BYTES;
const MAX_METADATA_BYTES: usize = 4096;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    user_id: String,
    name: Option<String>,
    /// A JSON object of at most 4 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    refresh_token: Option<String>,
}

fn check_user_id(user_id: &str) -> Result<(), ApiError> {
    if !caas_core::chat::is_valid_user_id(user_id) {
        return Err(ApiError::invalid(
            "invalid_user_id",
            "user_id",
            format!("user_id must be 1 to {MAX_USER_ID_BYTES} bytes without spaces or control characters"),
        ));
    }
    Ok(())
}

/// Issues the access token for an SDK session and the response body.
fn tokens(
    state: &AppState,
    tenant_id: &str,
    user_id: &str,
    session_id: &str,
    refresh: &str,
    now: i64,
) -> SessionTokens {
    let ttl = state.settings().access_ttl.as_secs() as i64;
    let claims = Claims {
        iss: state.validator().jwt().issuer().to_string(),
        aud: Audience::Sdk.as_str().into(),
        sub: user_id.into(),
        tid: tenant_id.into(),
        sid: session_id.into(),
        jti: new_id("jti"),
        iat: now,
        exp: now + ttl,
        nbf: None,
    };
    SessionTokens {
        access_token: state.validator().jwt().issue(&claims),
        refresh_token: refresh.into(),
        token_type: "Bearer",
        expires_in: ttl,
        refresh_expires_in: state.settings().refresh_ttl.as_secs() as i64,
        session_id: session_id.into(),
        user_id: user_id.into(),
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
    check_user_id(&body.user_id)?;
    if body.name.as_ref().is_some_and(|n| n.chars().count() > 200 || n.chars().any(char::is_control)) {
        return Err(ApiError::invalid("invalid_name", "name", "name must be at most 200 printable characters"));
    }
    let metadata = match body.metadata {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) => {
            let text = value.to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err(ApiError::invalid(
                    "invalid_metadata",
                    "metadata",
                    format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
                ));
            }
            Some(text)
        }
        Some(_) => {
            return Err(ApiError::invalid("invalid_metadata", "metadata", "metadata must be a JSON object"));
        }
    };
    let now = unix_now();
    let (refresh, refresh_hash) = refresh_token::generate();
    let new = NewSdkSession {
        session_id: new_id("ses"),
        client_id: caller.tenant_id.clone(),
        user_id: body.user_id,
        name: body.name,
        metadata,
        refresh_hash,
        refresh_expires_at: now + state.settings().refresh_ttl.as_secs() as i64,
    };
    let entry = AuditEntry {
        client_id: Some(caller.tenant_id.clone()),
        actor: Some(caller.key_id.clone()),
        action: AuditAction::SessionCreated,
        ip: Some(caller.client_ip.clone()),
        detail: None,
    };
    state.store().create_sdk_session(&new, &entry, now).await?;
    state.metrics().session_creations.get_or_create(&[("kind", "sdk")]).inc();
    Ok((StatusCode::CREATED, Json(tokens(&state, &new.client_id, &new.user_id, &new.session_id, &refresh, now))))
}

/// An API-key caller may only act on its own tenant's sessions.
fn expected_tenant(caller: &Option<RequestContext>) -> Option<&str> {
    caller.as_ref().filter(|c| c.auth_type == AuthType::ApiKey).map(|c| c.tenant_id.as_str())
}

fn invalid_refresh() -> ApiError {
    ApiError::unauthorized("invalid_refresh_token", "refresh token is invalid, expired or revoked")
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
    let presented = refresh_token::parse(&body.refresh_token).ok_or_else(invalid_refresh)?;
    let now = unix_now();
    let (next, next_hash) = refresh_token::generate();
    let expires_at = now + state.settings().refresh_ttl.as_secs() as i64;
    let outcome = state
        .store()
        .rotate_refresh_token(&presented, &next_hash, expires_at, expected_tenant(&caller), Some(&ip), now)
        .await?;
    match outcome {
        RefreshOutcome::Rotated(session) => {
            Ok(Json(tokens(&state, &session.client_id, &session.subject, &session.id, &next, now)))
        }
        RefreshOutcome::Reused(session) => {
            tracing::warn!(
                tenant_id = session.client_id,
                session_id = session.id,
                ip,
                "refresh token reused: session family revoked"
            );
            state
                .validator()
                .publish(Event::SessionRevoked { tenant_id: session.client_id, session_id: session.id })
                .await;
            Err(ApiError::unauthorized(
                "refresh_token_reused",
                "this refresh token was already used; the session has been revoked",
            ))
        }
        RefreshOutcome::Invalid => Err(invalid_refresh()),
    }
}

/// Revokes a session: by refresh token, or the caller's own (access token context).
#[utoipa::path(post, path = "/logout", tag = "sdk", request_body = Option<LogoutRequest>,
    responses((status = 204, description = "Revoked everywhere within a second"), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Nothing identifies a session", body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    OptionalCaller(caller): OptionalCaller,
    ClientIp(ip): ClientIp,
    OptionalJson(body): OptionalJson<LogoutRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let session = match (&body.refresh_token, &caller) {
        (Some(token), _) => {
            let hash = refresh_token::parse(token).ok_or_else(invalid_refresh)?;
            let session = state.store().session_by_refresh_token(&hash).await?.ok_or_else(invalid_refresh)?;
            if expected_tenant(&caller).is_some_and(|tenant| tenant != session.client_id) {
                return Err(invalid_refresh());
            }
            (session.client_id, session.id, session.subject)
        }
        (None, Some(ctx))
            if matches!(ctx.auth_type, AuthType::Jwt | AuthType::Dashboard) && !ctx.session_id.is_empty() =>
        {
            (ctx.tenant_id.clone(), ctx.session_id.clone(), ctx.user_id.clone())
        }
        _ => {
            return Err(ApiError::unauthorized(
                "missing_credentials",
                "send a refresh_token, or call with an access token",
            ));
        }
    };
    let (tenant_id, session_id, subject) = session;
    let entry = AuditEntry {
        client_id: Some(tenant_id.clone()),
        actor: Some(subject),
        action: AuditAction::SessionLogout,
        ip: Some(ip),
        detail: None,
    };
    state.store().revoke_session(&session_id, "logout", &entry, unix_now()).await?;
    state
        .validator()
        .publish(Event::SessionRevoked { tenant_id: tenant_id.clone(), session_id: session_id.clone() })
        .await;
    tracing::info!(tenant_id, session_id, "session logged out");
    Ok(StatusCode::NO_CONTENT)
}
