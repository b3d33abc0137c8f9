//! A tenant's quotas (rate limits), read and set from the dashboard; the
//! gateway enforces them (ext-authz, rules/src/quota.rs).

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use caas_core::id::unix_now;
use caas_core::quotas::{self, Limit, Limits, MAX_LIMITS, QuotaError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use caas_http::{ApiError, ApiJson, DashboardCaller, ErrorBody};

use crate::AppState;

/// One scope's limit. Numbers are taken as sent, so that a negative or zero
/// one is refused naming its field rather than as unreadable JSON.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    /// Requests per second, sustained.
    #[schema(minimum = 1)]
    rate: i64,
    /// Requests that may arrive at once after a quiet spell (at least `rate`).
    #[schema(minimum = 1)]
    burst: i64,
}

/// Every limit of the tenant, set as a whole.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsBody {
    per_key: LimitBody,
    per_user: LimitBody,
    per_tenant: LimitBody,
}

/// The limits in force, and the most each may be set to.
#[derive(Serialize, ToSchema)]
pub struct RateLimitsView {
    per_key: LimitBody,
    per_user: LimitBody,
    per_tenant: LimitBody,
    maximums: RateLimitsBody,
}

impl From<Limit> for LimitBody {
    fn from(limit: Limit) -> Self {
        Self { rate: limit.rate.into(), burst: limit.burst.into() }
    }
}

impl From<Limits> for RateLimitsView {
    fn from(limits: Limits) -> Self {
        Self {
            per_key: limits.per_key.into(),
            per_user: limits.per_user.into(),
            per_tenant: limits.per_tenant.into(),
            maximums: RateLimitsBody {
                per_key: MAX_LIMITS.per_key.into(),
                per_user: MAX_LIMITS.per_user.into(),
                per_tenant: MAX_LIMITS.per_tenant.into(),
            },
        }
    }
}

fn quota_error(error: QuotaError) -> ApiError {
    match error {
        QuotaError::Invalid(invalid) => {
            ApiError::invalid("invalid_rate_limit", invalid.field.clone(), invalid.to_string())
        }
        QuotaError::Store(error) => error.into(),
    }
}

#[utoipa::path(get, path = "/client/rate-limits", tag = "client", responses((status = 200, description = "The limits in force (the defaults until set)", body = RateLimitsView), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn get_rate_limits(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(RateLimitsView::from(quotas::rate_limits(state.store(), &caller).await?)))
}

/// Sets every limit at once, or nothing; gateways apply it within a second.
#[utoipa::path(put, path = "/client/rate-limits", tag = "client", request_body = RateLimitsBody,
    responses((status = 200, description = "The limits now in force", body = RateLimitsView), (status = 400, description = "A limit out of bounds; `field` names it", body = ErrorBody), (status = 401, description = "No valid dashboard context", body = ErrorBody)))]
pub async fn put_rate_limits(
    State(state): State<AppState>,
    DashboardCaller(caller): DashboardCaller,
    ApiJson(body): ApiJson<RateLimitsBody>,
) -> Result<impl IntoResponse, ApiError> {
    let raw = [body.per_key, body.per_user, body.per_tenant].map(|l| (l.rate, l.burst));
    let limits = Limits::checked(raw).map_err(|e| quota_error(e.into()))?;
    let change = quotas::set_rate_limits(state.store(), state.validator(), &caller, limits, unix_now())
        .await
        .map_err(quota_error)?;
    Ok(Json(RateLimitsView::from(change.after)))
}
