//! Client (tenant) onboarding: registration, dashboard login, sign-out,
//! password change and session list, profile, API keys and whitelists.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use caas_core::id::unix_now;
use caas_core::store::{ApiKeyRecord, KeyRole, WhitelistKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use caas_http::{ApiError, ApiJson, ClientIp, DashboardCaller, ErrorBody, OptionalJson};

use crate::AppState;
use crate::errors::api_error;
use crate::schema::{
    AccessToken, IssuedKey, KeyList, KeyView, PreviousKey, Profile, Registered, RevokedSessions, RotatedKey,
    SessionList, SessionView,
};

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 1 to 100 printable characters (trimmed).
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: String,
    #[schema(min_length = 3, max_length = 254, pattern = "^[^@\\s]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63})+$")]
    email: String,
    /// At least 12 characters, at most 1,024 bytes.
    #[schema(min_length = 12, max_length = 1024)]
    password: String,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(min_length = 3, max_length = 254, pattern = "^[^@\\s]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63})+$")]
    email: String,
    #[schema(max_length = 1024)]
    password: String,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(max_length = 1024)]
    current_password: String,
    /// Same rules as at registration.
    #[schema(min_length = 12, max_length = 1024)]
    new_password: String,
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

/// Registers a client (tenant) with its dashboard account and first API key.
#[utoipa::path(post, path = "/client/register", tag = "client", request_body = RegisterRequest,
    responses((status = 201, description = "Registered; the API key is shown this once", body = Registered), (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 409, description = "Email taken", body = ErrorBody), (status = 429, description = "Too many registrations", body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let registered = state
        .credentials()
        .register(&body.name, &body.email, body.password, &ip, unix_now())
        .await
        .map_err(api_error)?;
    let key = registered.key;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            client_id: registered.client_id,
            name: registered.name,
            email: registered.email,
            api_key: IssuedKey { id: key.id, key: key.key, prefix: key.prefix, role: KeyRole::Primary.as_str().into() },
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
    let grant = state.credentials().login(&body.email, body.password, &ip, unix_now()).await.map_err(api_error)?;
    Ok(Json(AccessToken { access_token: grant.token, token_type: "Bearer", expires_in: grant.expires_in }))
}

/// Records each dashboard request's session use (at most once a minute per
/// session, off the request path) for the session list.
pub(crate) async fn record_dashboard_use(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Ok(Some(caller)) = caas_http::context_of(request.extensions()) {
        state.credentials().touch_dashboard_session(&caller, unix_now());
    }
    next.run(request).await
}

/// Ends the caller's dashboard session, everywhere within a second.
#[utoipa::path(post, path = "/client/logout", tag = "client", operation_id = "client_logout",
    responses((status = 204, description = "Signed out"), (status = 401, description = "No valid dashboard context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
) -> Result<impl IntoResponse, ApiError> {
    state.credentials().logout(None, Some(&caller), &caller.client_ip, unix_now()).await.map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every dashboard session of the caller's account, its own included.
#[utoipa::path(post, path = "/client/logout-all", tag = "client",
    responses((status = 200, description = "Signed out everywhere within a second", body = RevokedSessions), (status = 401, description = "No valid dashboard context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody)))]
pub async fn logout_all(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
) -> Result<impl IntoResponse, ApiError> {
    let revoked = state.credentials().logout_all(&caller, unix_now()).await.map_err(api_error)?;
    Ok(Json(RevokedSessions { revoked_sessions: revoked }))
}

/// Changes the account's password; every other dashboard session ends, this one stays.
#[utoipa::path(put, path = "/client/password", tag = "client", request_body = PasswordChange,
    responses((status = 200, description = "Changed; other sessions revoked within a second", body = RevokedSessions), (status = 400, description = "Invalid input (`invalid_password` names `new_password`)", body = ErrorBody),
        (status = 401, description = "No valid dashboard context", body = ErrorBody), (status = 403, description = "`invalid_current_password`, or another credential type", body = ErrorBody),
        (status = 429, description = "Too many failed attempts (counted with logins)", body = ErrorBody), (status = 503, description = "`overloaded`: every password hashing slot busy", body = ErrorBody)))]
pub async fn change_password(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<impl IntoResponse, ApiError> {
    let revoked = state
        .credentials()
        .change_password(&caller, body.current_password, body.new_password, unix_now())
        .await
        .map_err(api_error)?;
    Ok(Json(RevokedSessions { revoked_sessions: revoked }))
}

/// The account's live dashboard sessions, most recently used first.
#[utoipa::path(get, path = "/client/sessions", tag = "client",
    responses((status = 200, body = SessionList), (status = 401, description = "No valid dashboard context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
) -> Result<impl IntoResponse, ApiError> {
    let sessions = state.credentials().dashboard_sessions(&caller, unix_now()).await.map_err(api_error)?;
    let sessions = sessions
        .into_iter()
        .map(|s| SessionView {
            current: s.id == caller.session_id,
            id: s.id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            ip: s.ip,
            expires_at: s.expires_at,
        })
        .collect();
    Ok(Json(SessionList { sessions }))
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
    /// How long the old primary stays valid (default one day, at most 30 days).
    #[schema(minimum = 0, maximum = 2_592_000)]
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
    let rotation =
        state.credentials().rotate_api_key(&caller, body.grace_seconds, unix_now()).await.map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            id: rotation.key.id,
            key: rotation.key.key,
            prefix: rotation.key.prefix,
            role: KeyRole::Primary.as_str(),
            created_at: rotation.created_at,
            previous_key: rotation.demoted.map(|k| PreviousKey {
                id: k.id,
                role: k.role.as_str().into(),
                expires_at: k.expires_at,
            }),
            revoked_key_ids: rotation.revoked.into_iter().map(|k| k.id).collect(),
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
    state.credentials().revoke_api_key(&caller, &key_id, unix_now()).await.map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpWhitelistBody {
    /// Empty: no address restriction.
    #[schema(schema_with = crate::schema::cidr_list)]
    cidrs: Vec<String>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OriginWhitelistBody {
    /// Empty: no Origin restriction.
    #[schema(schema_with = crate::schema::origin_list)]
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
    let cidrs = state.credentials().replace_ip_whitelist(&caller, &body.cidrs, unix_now()).await.map_err(api_error)?;
    Ok(Json(IpWhitelistBody { cidrs }))
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
    let origins =
        state.credentials().replace_origin_whitelist(&caller, &body.origins, unix_now()).await.map_err(api_error)?;
    Ok(Json(OriginWhitelistBody { origins }))
}
