//! Quotas: stored per tenant on every store, set with an audit row and an
//! event, and the validator's cached copy dropped by that event.

use std::sync::Arc;

use crate::cache::{Cache, MemoryCache};
use crate::events::Event;
use crate::jwt::JwtKeys;
use crate::metrics::AuthMetrics;
use crate::quotas::{DEFAULT_LIMITS, Limit, Limits, QuotaError, set_rate_limits};
use crate::secret::Secret;
use crate::store::{AuditAction, AuditEntry, RateLimitsChange, Store};
use crate::testing::RecordingBus;
use crate::validate::{Validator, ValidatorSettings};

const NOW: i64 = 1_700_000_000;

fn limits(key_rate: u32) -> Limits {
    Limits { per_key: Limit { rate: key_rate, burst: key_rate * 2 }, ..DEFAULT_LIMITS }
}

async fn limits_are_stored_per_tenant_with_their_audit_row(store: Store) {
    let (tenant, ..) = super::store::register(&store, "quota@example.com").await;
    let (other, ..) = super::store::register(&store, "other@example.com").await;
    assert_eq!(store.rate_limits(&tenant).await.unwrap(), None);
    let audit = AuditEntry::new(AuditAction::RateLimitsUpdated);
    let audit = AuditEntry { client_id: Some(tenant.clone()), ..audit };

    let first = store.set_rate_limits(&tenant, &limits(10), &audit, NOW).await.unwrap();
    assert_eq!(first, RateLimitsChange { before: None, after: limits(10) });
    let second = store.set_rate_limits(&tenant, &limits(20), &audit, NOW + 1).await.unwrap();
    assert_eq!(second, RateLimitsChange { before: Some(limits(10)), after: limits(20) });
    assert_eq!(store.rate_limits(&tenant).await.unwrap(), Some(limits(20)));
    assert_eq!(store.rate_limits(&other).await.unwrap(), None);

    let log = store.audit_log(&tenant, 1).await.unwrap();
    assert_eq!(log[0].action, "rate_limits.updated");
    let detail: serde_json::Value = serde_json::from_str(log[0].detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["before"]["per_key"]["rate"], 10);
    assert_eq!(detail["after"]["per_key"]["burst"], 40);
}

async fn setting_limits_announces_them_and_evicts_the_cached_copy(store: Store) {
    let cache: Arc<dyn Cache> = Arc::new(MemoryCache::new());
    let bus = Arc::new(RecordingBus::new());
    let jwt = JwtKeys::new("caas", &Secret::new("j".repeat(32)), None);
    let validator = Validator::start(
        store.clone(),
        cache,
        bus.clone(),
        jwt,
        ValidatorSettings::default(),
        Arc::new(AuthMetrics::default()),
    );
    let (tenant, ..) = super::store::register(&store, "evict@example.com").await;
    assert_eq!(validator.rate_limits(&tenant).await, DEFAULT_LIMITS);

    set_rate_limits(&store, &validator, &super::credentials::dashboard(&tenant), limits(5), NOW).await.unwrap();
    assert_eq!(bus.take(), [Event::RateLimitsChanged { tenant_id: tenant.clone() }]);
    // The cached defaults were dropped by the event: the new limits apply at once.
    assert_eq!(validator.rate_limits(&tenant).await, limits(5));
    assert_eq!(store.audit_log(&tenant, 1).await.unwrap()[0].action, "rate_limits.updated");

    let over = Limits { per_user: Limit { rate: 10, burst: 9 }, ..DEFAULT_LIMITS };
    let refused = set_rate_limits(&store, &validator, &super::credentials::dashboard(&tenant), over, NOW).await;
    assert!(matches!(&refused, Err(QuotaError::Invalid(e)) if e.field == "per_user.burst"), "{refused:?}");
    assert!(bus.take().is_empty());
    assert_eq!(validator.rate_limits(&tenant).await, limits(5));
}

crate::store_conformance!(
    limits_are_stored_per_tenant_with_their_audit_row,
    setting_limits_announces_them_and_evicts_the_cached_copy,
);
