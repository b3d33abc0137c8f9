//! The tenant console: static pages served at `/console/` (built into the
//! binary, so `caas up` and the container need no Node.js or network), the
//! browser client module `caas-client.js`, and the two dashboard routes
//! only the console needs: the tenant's activity (audit log, paginated) and
//! test end-user sessions for its "try it" page, so a browser never holds an
//! API key.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caas_core::id::unix_now;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use utoipa::{IntoParams, ToSchema};

use caas_http::{ApiError, ApiJson, DashboardCaller, ErrorBody};

use crate::AppState;
use crate::errors::api_error;
use crate::schema::{ActivityEntry, ActivityPage, SessionTokens};

/// Where the console is served, through the gateway and on auth-api alike.
pub const PREFIX: &str = "/console/";

/// Only this origin's scripts, styles, images and connections (the
/// gateway's own API and WebSocket): no inline code, CDN or external font.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'";

/// One file of the console: its name under `/console/`, type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// Loadable by pages of any origin (the client module and its types,
    /// which tenants' apps import): public code, no credentials involved.
    shared: bool,
}

const ASSETS: [Asset; 5] = [
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../console/index.html"),
        shared: false,
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../console/console.css"),
        shared: false,
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/console.js"),
        shared: false,
    },
    Asset {
        name: "caas-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/caas-client.js"),
        shared: true,
    },
    Asset {
        name: "caas-client.d.ts",
        content_type: "application/typescript; charset=utf-8",
        body: include_str!("../console/caas-client.d.ts"),
        shared: true,
    },
];

/// A strong validator from the content: a deploy changes it, a reload
/// without a change costs a 304.
fn etag(body: &str) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body.as_bytes())[..12]))
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::not_found("not_found", "no such route").into_response();
    };
    let tag = etag(asset.body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    let static_value = HeaderValue::from_static;
    headers.insert(header::CONTENT_TYPE, static_value(asset.content_type));
    // Names are stable (a documented path), so revalidate every use; the
    // ETag keeps that to a 304.
    headers.insert(header::CACHE_CONTROL, static_value("no-cache"));
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, tag);
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, static_value(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, static_value("nosniff"));
    headers.insert(header::REFERRER_POLICY, static_value("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, static_value("DENY"));
    if asset.shared {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, static_value("*"));
        headers.insert("cross-origin-resource-policy", static_value("cross-origin"));
    } else {
        headers.insert("cross-origin-resource-policy", static_value("same-origin"));
    }
    response
}

/// `GET /console/`: the console's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("", &headers)
}

/// `GET /console/{file}`: its scripts, styles and the client module.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

/// Largest page of activity.
pub const MAX_ACTIVITY_PAGE: i64 = 100;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActivityQuery {
    /// Entries per page, 1 to 100 (default 50).
    limit: Option<i64>,
    /// Entries older than this one (the previous page's `next_before`).
    before: Option<i64>,
}

/// The tenant's audit log, newest first, a page at a time.
#[utoipa::path(get, path = "/client/audit-log", tag = "client", params(ActivityQuery),
    responses((status = 200, body = ActivityPage), (status = 400, description = "`invalid_limit`", body = ErrorBody), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn activity(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
    query: Result<Query<ActivityQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::invalid("invalid_query", "query", "unknown or malformed parameter"))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_ACTIVITY_PAGE).contains(&limit) {
        return Err(ApiError::invalid("invalid_limit", "limit", format!("limit must be 1 to {MAX_ACTIVITY_PAGE}")));
    }
    // One more than asked says whether another page exists.
    let mut rows = state.store().audit_page(&caller.tenant_id, query.before, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_before = if more { rows.last().map(|r| r.id) } else { None };
    let entries = rows
        .into_iter()
        .map(|r| ActivityEntry {
            id: r.id,
            action: r.action,
            actor: r.actor,
            ip: r.ip,
            detail: r.detail.and_then(|d| serde_json::from_str(&d).ok()),
            created_at: r.created_at,
        })
        .collect();
    Ok(Json(ActivityPage { entries, next_before }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSessionRequest {
    /// The test user's name; their id is `test:<name>`.
    name: String,
    /// Lifetime of the first access token, 20 s up to the configured one
    /// (default): short, to watch a refresh happen.
    access_ttl_seconds: Option<i64>,
}

/// A session for a test end user (`test:<name>`) of the caller's tenant,
/// for the console's "try it" page: rate-limited per tenant, audited
/// (`session.test_created`). Used like any end-user session.
#[utoipa::path(post, path = "/client/test-sessions", tag = "client", request_body = TestSessionRequest,
    responses((status = 201, body = SessionTokens), (status = 400, description = "`invalid_user_id`, `invalid_access_ttl`", body = ErrorBody),
        (status = 401, description = "No valid dashboard context", body = ErrorBody), (status = 429, description = "Too many test sessions for this tenant", body = ErrorBody)))]
pub async fn create_test_session(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
    ApiJson(body): ApiJson<TestSessionRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let tokens = state
        .credentials()
        .create_test_session(&caller, &body.name, body.access_ttl_seconds, unix_now())
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(crate::sdk::session_tokens(tokens))))
}
