//! Client (tenant) onboarding: registration, dashboard login, profile, API
//! keys and whitelists.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use caas_core::api_key;
use caas_core::events::Event;
use caas_core::id::{new_id, unix_now};
use caas_core::jwt::{Audience, Claims};
use caas_core::password;
use caas_core::store::{ApiKeyRecord, AuditAction, AuditEntry, NewApiKey, WhitelistKind};
use caas_core::whitelist::{IpWhitelist, OriginWhitelist};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use caas_http::{ApiError, ApiJson, ClientIp, DashboardCaller, ErrorBody, OptionalJson};

use crate::AppState;
use crate::schema::{AccessToken, IssuedKey, KeyList, KeyView, PreviousKey, Profile, Registered, RotatedKey};

const MAX_GRACE_SECONDS: u64 = 30 * 86_400;

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    name: String,
    email: String,
    password: String,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    password: String,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(key: ApiKeyRecord) -> Self {
        Self {
            id: key.id,
            prefix: key.prefix,
            role: key.role.as_str().into(),
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
        }
    }
}

fn audit(client_id: &str, actor: &str, action: AuditAction, ip: &str) -> AuditEntry {
    AuditEntry {
        client_id: Some(client_id.into()),
        actor: Some(actor.into()),
        action,
        ip: Some(ip.into()),
        detail: None,
    }
}

fn check_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("invalid_name", "name", "name must be 1 to 100 printable characters"));
    }
    Ok(name.to_string())
}

fn new_key() -> (NewApiKey, String) {
    let generated = api_key::generate();
    (NewApiKey { id: new_id("key"), hash: generated.hash, prefix: generated.display_prefix }, generated.key)
}

/// Runs CPU-heavy password work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| ApiError::internal())
}

/// Registers a client (tenant) with its dashboard account and first API key.
#[utoipa::path(post, path = "/client/register", tag = "client", request_body = RegisterRequest,
    responses((status = 201, description = "Registered; the API key is shown this once", body = Registered), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 409, description = "Email taken", body = ErrorBody), (status = 429, description = "Too many registrations", body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    state.registrations().hit(&ip).await?;
    let name = check_name(&body.name)?;
    let email = password::normalize_email(&body.email)
        .ok_or_else(|| ApiError::invalid("invalid_email", "email", "email is not a valid address"))?;
    password::check_password_rules(&body.password).map_err(|m| ApiError::invalid("invalid_password", "password", m))?;
    let plain = body.password;
    let hash = blocking(move || password::hash_password(&plain)).await?.map_err(|_| ApiError::internal())?;
    let (client_id, account_id) = (new_id("cl"), new_id("acc"));
    let (key, raw_key) = new_key();
    state.store().register_client(&client_id, &name, &account_id, &email, &hash, &key, Some(&ip), unix_now()).await?;
    tracing::info!(client_id, "client registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            client_id,
            name,
            email,
            api_key: IssuedKey { id: key.id, key: raw_key, prefix: key.prefix, role: "primary".into() },
        }),
    ))
}

/// Dashboard login.
#[utoipa::path(post, path = "/client/login", tag = "client", request_body = LoginRequest,
    responses((status = 200, description = "A dashboard token", body = AccessToken), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 401, description = "Email or password is incorrect", body = ErrorBody), (status = 429, description = "Throttled", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let email = password::normalize_email(&body.email)
        .ok_or_else(|| ApiError::invalid("invalid_email", "email", "email is not a valid address"))?;
    if body.password.len() > password::MAX_PASSWORD_BYTES {
        return Err(ApiError::invalid("invalid_password", "password", "password is too long"));
    }
    state.login_by_email().check(&email).await?;
    state.login_by_ip().check(&ip).await?;
    let account = state.store().account_by_email(&email).await?;
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let plain = body.password;
    // Unknown emails are verified against a dummy hash: same time, same answer.
    let valid = blocking(move || password::verify_password(&plain, stored.as_deref())).await?;
    let now = unix_now();
    let account = match account {
        Some(account) if valid => account,
        other => {
            let _ = state.login_by_email().hit(&email).await;
            let _ = state.login_by_ip().hit(&ip).await;
            let entry = AuditEntry {
                client_id: other.as_ref().map(|a| a.client_id.clone()),
                actor: other.as_ref().map(|a| a.id.clone()),
                action: AuditAction::ClientLoginFailed,
                ip: Some(ip.clone()),
                detail: Some(serde_json::json!({ "email": email })),
            };
            if let Err(error) = state.store().audit(&entry, now).await {
                tracing::error!(%error, "could not write audit entry for a failed login");
            }
            tracing::info!(ip, "dashboard login failed");
            return Err(ApiError::unauthorized("invalid_credentials", "email or password is incorrect"));
        }
    };
    state.login_by_email().reset(&email).await;
    let ttl = state.settings().access_ttl.as_secs() as i64;
    let session_id = new_id("ses");
    state
        .store()
        .create_dashboard_session(
            &session_id,
            &account.client_id,
            &account.id,
            now + ttl,
            &audit(&account.client_id, &account.id, AuditAction::ClientLogin, &ip),
            now,
        )
        .await?;
    state.metrics().session_creations.get_or_create(&[("kind", "dashboard")]).inc();
    let claims = Claims {
        iss: state.validator().jwt().issuer().to_string(),
        aud: Audience::Dashboard.as_str().into(),
        sub: account.id,
        tid: account.client_id,
        sid: session_id,
        jti: new_id("jti"),
        iat: now,
        exp: now + ttl,
        nbf: None,
    };
    Ok(Json(AccessToken {
        access_token: state.validator().jwt().issue(&claims),
        token_type: "Bearer",
        expires_in: ttl,
    }))
}

/// The client, its keys (never the key material) and whitelists.
#[utoipa::path(get, path = "/client/profile", tag = "client", responses((status = 200, body = Profile), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn profile(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = caller.tenant_id.as_str();
    let client = state
        .store()
        .client(tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("client_not_found", "client not found"))?;
    let keys: Vec<KeyView> =
        state.store().active_api_keys(tenant, unix_now()).await?.into_iter().map(KeyView::from).collect();
    let cidrs = state.store().whitelist(WhitelistKind::Ip, tenant).await?;
    let origins = state.store().whitelist(WhitelistKind::Origin, tenant).await?;
    Ok(Json(Profile {
        client_id: client.id,
        name: client.name,
        email: client.email,
        created_at: client.created_at,
        api_keys: keys,
        ip_whitelist: cidrs,
        origin_whitelist: origins,
    }))
}

/// Active API keys.
#[utoipa::path(get, path = "/client/api-keys", tag = "client", responses((status = 200, body = KeyList), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn list_keys(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
) -> Result<impl IntoResponse, ApiError> {
    let keys: Vec<KeyView> =
        state.store().active_api_keys(&caller.tenant_id, unix_now()).await?.into_iter().map(KeyView::from).collect();
    Ok(Json(KeyList { api_keys: keys }))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    grace_seconds: Option<u64>,
}

/// A new primary key; the old primary stays valid for `grace_seconds`.
#[utoipa::path(post, path = "/client/api-keys/rotate", tag = "client", request_body = Option<RotateRequest>,
    responses((status = 201, description = "The new key, shown this once", body = RotatedKey), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
    OptionalJson(body): OptionalJson<RotateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let grace = body.grace_seconds.unwrap_or(86_400);
    if grace > MAX_GRACE_SECONDS {
        return Err(ApiError::invalid(
            "invalid_grace_seconds",
            "grace_seconds",
            format!("grace_seconds must be at most {MAX_GRACE_SECONDS}"),
        ));
    }
    let (key, raw_key) = new_key();
    let tenant = caller.tenant_id.as_str();
    let entry = audit(tenant, &caller.user_id, AuditAction::ApiKeyRotated, &caller.client_ip);
    let rotation = state.store().rotate_api_key(tenant, &key, grace as i64, &entry, unix_now()).await?;
    for changed in rotation.demoted.iter().chain(&rotation.revoked) {
        state
            .validator()
            .publish(Event::ApiKeyChanged {
                tenant_id: tenant.into(),
                key_id: changed.key.id.clone(),
                key_hash: changed.hash.clone(),
            })
            .await;
    }
    state
        .validator()
        .publish(Event::ApiKeyChanged { tenant_id: tenant.into(), key_id: key.id.clone(), key_hash: key.hash.clone() })
        .await;
    tracing::info!(tenant_id = tenant, key_id = key.id, "API key rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            id: key.id,
            key: raw_key,
            prefix: key.prefix,
            role: "primary",
            created_at: rotation.new_key.created_at,
            previous_key: rotation.demoted.map(|k| PreviousKey {
                id: k.key.id,
                role: k.key.role.as_str().into(),
                expires_at: k.key.expires_at,
            }),
            revoked_key_ids: rotation.revoked.iter().map(|k| k.key.id.clone()).collect(),
        }),
    ))
}

/// Revokes a key at once.
#[utoipa::path(delete, path = "/client/api-keys/{id}", tag = "client", params(("id" = String, Path, description = "The key's id")),
    responses((status = 204, description = "Revoked"), (status = 401, description = "No valid dashboard context", body = ErrorBody), (status = 404, description = "No such active key", body = ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
    Path(key_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = caller.tenant_id.as_str();
    let entry = audit(tenant, &caller.user_id, AuditAction::ApiKeyRevoked, &caller.client_ip);
    let revoked = state.store().revoke_api_key(tenant, &key_id, &entry, unix_now()).await?;
    let Some(revoked) = revoked else {
        return Err(ApiError::not_found("api_key_not_found", "no active API key with this id"));
    };
    state
        .validator()
        .publish(Event::ApiKeyChanged { tenant_id: tenant.into(), key_id: key_id.clone(), key_hash: revoked.hash })
        .await;
    tracing::info!(tenant_id = tenant, key_id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpWhitelistBody {
    cidrs: Vec<String>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OriginWhitelistBody {
    origins: Vec<String>,
}

#[utoipa::path(get, path = "/client/ip-whitelist", tag = "client", responses((status = 200, body = IpWhitelistBody), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn get_ip_whitelist(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(IpWhitelistBody { cidrs: state.store().whitelist(WhitelistKind::Ip, &caller.tenant_id).await? }))
}

/// Replaces the whole list, or nothing.
#[utoipa::path(put, path = "/client/ip-whitelist", tag = "client", request_body = IpWhitelistBody,
    responses((status = 200, description = "The normalised list", body = IpWhitelistBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn put_ip_whitelist(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
    ApiJson(body): ApiJson<IpWhitelistBody>,
) -> Result<impl IntoResponse, ApiError> {
    let entries = IpWhitelist::parse(&body.cidrs)?.entries();
    write_whitelist(&state, &caller, WhitelistKind::Ip, &entries).await?;
    Ok(Json(IpWhitelistBody { cidrs: entries }))
}

#[utoipa::path(get, path = "/client/origin-whitelist", tag = "client", responses((status = 200, body = OriginWhitelistBody), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn get_origin_whitelist(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(OriginWhitelistBody { origins: state.store().whitelist(WhitelistKind::Origin, &caller.tenant_id).await? }))
}

/// Replaces the whole list, or nothing.
#[utoipa::path(put, path = "/client/origin-whitelist", tag = "client", request_body = OriginWhitelistBody,
    responses((status = 200, description = "The normalised list", body = OriginWhitelistBody), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn put_origin_whitelist(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
    ApiJson(body): ApiJson<OriginWhitelistBody>,
) -> Result<impl IntoResponse, ApiError> {
    let entries = OriginWhitelist::parse(&body.origins)?.entries().to_vec();
    write_whitelist(&state, &caller, WhitelistKind::Origin, &entries).await?;
    Ok(Json(OriginWhitelistBody { origins: entries }))
}

async fn write_whitelist(
    state: &AppState,
    caller: &caas_core::context::RequestContext,
    kind: WhitelistKind,
    entries: &[String],
) -> Result<(), ApiError> {
    let tenant = caller.tenant_id.as_str();
    let action = match kind {
        WhitelistKind::Ip => AuditAction::IpWhitelistUpdated,
        WhitelistKind::Origin => AuditAction::OriginWhitelistUpdated,
    };
    state
        .store()
        .replace_whitelist(
            kind,
            tenant,
            entries,
            &audit(tenant, &caller.user_id, action, &caller.client_ip),
            unix_now(),
        )
        .await?;
    state.validator().whitelist_written(kind, tenant, entries).await;
    tracing::info!(tenant_id = tenant, ?kind, entries = entries.len(), "whitelist replaced");
    Ok(())
}
