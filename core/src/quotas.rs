//! The quota use case: a tenant sets its rate limits (rules/src/quota.rs).
//! Like every credential change (core/src/credentials.rs) it commits with its
//! audit row and then announces the change, so every gateway drops its
//! cached limits at once.

use crate::context::RequestContext;
use crate::events::Event;
use crate::store::{AuditAction, AuditEntry, RateLimitsChange, Store, StoreError};
use crate::validate::Validator;
pub use caas_rules::quota::{DEFAULT_LIMITS, InvalidLimit, Limit, Limits, MAX_LIMITS, Scope};

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// A limit outside its bounds: 400 naming the field.
    #[error(transparent)]
    Invalid(#[from] InvalidLimit),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The caller's tenant's limits as they apply (the defaults if never set).
pub async fn rate_limits(store: &Store, caller: &RequestContext) -> Result<Limits, StoreError> {
    Ok(store.rate_limits(&caller.tenant_id).await?.unwrap_or(DEFAULT_LIMITS))
}

/// Sets every limit of the caller's tenant, or nothing.
pub async fn set_rate_limits(
    store: &Store,
    validator: &Validator,
    caller: &RequestContext,
    limits: Limits,
    now: i64,
) -> Result<RateLimitsChange, QuotaError> {
    limits.check()?;
    let tenant = caller.tenant_id.as_str();
    let audit = AuditEntry {
        client_id: Some(tenant.into()),
        actor: Some(caller.user_id.clone()),
        action: AuditAction::RateLimitsUpdated,
        ip: Some(caller.client_ip.clone()),
        detail: None,
    };
    let change = store.set_rate_limits(tenant, &limits, &audit, now).await?;
    validator.publish(Event::rate_limits_changed(tenant)).await;
    tracing::info!(tenant_id = tenant, ?limits, "rate limits updated");
    Ok(change)
}
