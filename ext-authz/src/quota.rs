//! Quotas in the Check: after a credential passed, its requests are counted
//! against the tenant's limits (per key or per end user, and per tenant).
//! The buckets live in this process, in a bounded TinyLFU cache (an evicted
//! bucket starts full again: it briefly admits more, never refuses what it
//! should not); their arithmetic is caas-rules' (rules/src/quota.rs).

use std::sync::Mutex;
use std::time::Instant;

use caas_core::context::AuthType;
use caas_rules::policy::Policy;
use caas_rules::quota::{Limits, Scope, Throttle, admit};

use crate::decision::Grant;

/// Buckets kept; the least useful are evicted one at a time, never all.
pub const DEFAULT_CAPACITY: u64 = 200_000;

pub struct Quotas {
    /// Bucket → its theoretical arrival time (GCRA), in `now()` nanoseconds.
    buckets: moka::sync::Cache<String, u64>,
    /// Held while one request's buckets are read and written, so a request
    /// is counted in all of them or in none. Only arithmetic runs under it.
    counting: Mutex<()>,
    /// The clock the buckets count in (monotonic nanoseconds since this).
    started: Instant,
}

impl Default for Quotas {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

/// The buckets a grant is counted in; none for a
/// dashboard or anonymous request.
/// Keys are counted on the API-key routes (api_key, and refresh when it
/// carries a key), end users on the end-user routes.
pub fn buckets(policy: Policy, grant: &Grant) -> Vec<(Scope, String)> {
    let ctx = &grant.context;
    let first = match (policy, ctx.auth_type) {
        (Policy::ApiKey | Policy::Refresh, AuthType::ApiKey) => (Scope::Key, format!("key\0{}", ctx.key_id)),
        (Policy::EndUser, AuthType::Jwt) => (Scope::User, format!("user\0{}\0{}", ctx.tenant_id, ctx.user_id)),
        _ => return Vec::new(),
    };
    vec![first, (Scope::Tenant, format!("tenant\0{}", ctx.tenant_id))]
}

impl Quotas {
    pub fn new(capacity: u64) -> Self {
        Self { buckets: moka::sync::Cache::new(capacity.max(1)), counting: Mutex::new(()), started: Instant::now() }
    }

    fn now(&self) -> u64 {
        // Starts one second in, so that a new bucket (0) holds a full burst.
        (self.started.elapsed().as_nanos() as u64).saturating_add(1_000_000_000)
    }

    /// Counts one request in every bucket, or in none if any is over its
    /// limit (a refused request uses up nothing).
    pub fn admit(&self, counted: &[(Scope, String)], limits: &Limits) -> Result<(), Throttle> {
        let now = self.now();
        let _counting = self.counting.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::with_capacity(counted.len());
        for (scope, key) in counted {
            let tat = self.buckets.get(key).unwrap_or(0);
            next.push(admit(tat, limits.get(*scope), *scope, now)?.tat);
        }
        for ((_, key), tat) in counted.iter().zip(next) {
            self.buckets.insert(key.clone(), tat);
        }
        Ok(())
    }
}
