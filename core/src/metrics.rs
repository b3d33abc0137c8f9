//! Prometheus metrics of the auth rules (names from docs/DESIGN.md, "Metrics"). Each service
//! registers these with its own, then renders the registry on `/metrics`.
//! They stay in core because the validator counts into them; the shared
//! plumbing (labels, buckets, rendering) is caas-runtime's `metrics`.

use std::sync::atomic::AtomicU64;

use caas_runtime::metrics::{Labels, Labels2, latency_histogram};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct AuthMetrics {
    /// By audience and result (`valid` or the refusal code).
    pub token_validations: Family<Labels2, Counter>,
    pub token_validation_seconds: Family<Labels, Histogram>,
    pub session_creations: Family<Labels, Counter>,
    pub api_key_validations: Family<Labels, Counter>,
    pub cache_hits: Family<Labels, Counter>,
    pub cache_misses: Family<Labels, Counter>,
    /// Database reads made by validation (cache misses that reached it).
    pub db_reads: Counter,
    /// Shared-cache whitelist copies found older than their last change.
    pub stale_shared_whitelists: Counter,
    cache_hit_rate: Gauge<f64, AtomicU64>,
    /// Series of the allow path, resolved once: a family lookup takes a lock
    /// and hashes the labels on every increment.
    pub hot: HotSeries,
}

/// The caches the validator keeps, in the order of `HotSeries::hits`.
pub const CACHES: [&str; 5] = ["api_key", "session", "ip_whitelist", "origin_whitelist", "rate_limits"];

pub struct HotSeries {
    pub valid_sdk_token: Counter,
    pub valid_dashboard_token: Counter,
    pub valid_api_key: Counter,
    pub jwt_seconds: Histogram,
    pub api_key_seconds: Histogram,
    pub cache_hits: [Counter; CACHES.len()],
    pub cache_misses: [Counter; CACHES.len()],
}

impl Default for AuthMetrics {
    fn default() -> Self {
        let token_validations: Family<Labels2, Counter> = Family::default();
        let token_validation_seconds: Family<Labels, Histogram> = Family::new_with_constructor(latency_histogram);
        let api_key_validations: Family<Labels, Counter> = Family::default();
        let cache_hits: Family<Labels, Counter> = Family::default();
        let cache_misses: Family<Labels, Counter> = Family::default();
        // One statement per series: a lookup's read guard lives to the end of
        // its statement, and the next new series needs the write lock.
        let resolve = |family: &Family<Labels, Counter>, labels: Labels| family.get_or_create(&labels).clone();
        let valid_sdk_token = token_validations.get_or_create(&[("audience", "caas-sdk"), ("result", "valid")]).clone();
        let valid_dashboard_token =
            token_validations.get_or_create(&[("audience", "caas-dashboard"), ("result", "valid")]).clone();
        let valid_api_key = resolve(&api_key_validations, [("result", "valid")]);
        let jwt_seconds = token_validation_seconds.get_or_create(&[("kind", "jwt")]).clone();
        let api_key_seconds = token_validation_seconds.get_or_create(&[("kind", "api_key")]).clone();
        let hot = HotSeries {
            valid_sdk_token,
            valid_dashboard_token,
            valid_api_key,
            jwt_seconds,
            api_key_seconds,
            cache_hits: CACHES.map(|c| resolve(&cache_hits, [("cache", c)])),
            cache_misses: CACHES.map(|c| resolve(&cache_misses, [("cache", c)])),
        };
        Self {
            token_validations,
            token_validation_seconds,
            session_creations: Family::default(),
            api_key_validations,
            cache_hits,
            cache_misses,
            db_reads: Counter::default(),
            stale_shared_whitelists: Counter::default(),
            cache_hit_rate: Gauge::default(),
            hot,
        }
    }
}

impl AuthMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Series that exist from the start, so dashboards and alerts see 0, not nothing.
        for kind in ["sdk", "dashboard"] {
            let _ = self.session_creations.get_or_create(&[("kind", kind)]);
        }
        registry.register(
            "auth_token_validations",
            "Credential validations by audience and result",
            self.token_validations.clone(),
        );
        registry.register(
            "auth_token_validation_duration_seconds",
            "Time to validate a credential, by kind",
            self.token_validation_seconds.clone(),
        );
        registry.register("auth_session_creations", "Sessions created, by kind", self.session_creations.clone());
        registry.register(
            "auth_api_key_validations",
            "API key validations by result",
            self.api_key_validations.clone(),
        );
        registry.register("auth_cache_hits", "Validation cache hits, by cache", self.cache_hits.clone());
        registry.register("auth_cache_misses", "Validation cache misses, by cache", self.cache_misses.clone());
        registry.register("auth_db_reads", "Database reads made while validating", self.db_reads.clone());
        registry.register(
            "auth_stale_shared_whitelists",
            "Shared-cache whitelist copies found older than their last change (refreshed from the database)",
            self.stale_shared_whitelists.clone(),
        );
        registry.register(
            "auth_cache_hit_rate",
            "Validation cache hits / lookups since start",
            self.cache_hit_rate.clone(),
        );
    }

    /// Recomputes derived gauges; call before rendering.
    pub fn refresh(&self) {
        let hits = self.hot.cache_hits.iter().map(Counter::get).sum::<u64>() as f64;
        let total = hits + self.hot.cache_misses.iter().map(Counter::get).sum::<u64>() as f64;
        self.cache_hit_rate.set(if total > 0.0 { hits / total } else { 1.0 });
    }
}
