//! Quotas in the Check: after a credential passed, its requests are counted
//! against the tenant's limits (per key or per end user, and per tenant).
//! The buckets live in this process (a bounded map); their arithmetic is
//! caas-rules' (rules/src/quota.rs).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use caas_core::context::AuthType;
use caas_rules::policy::Policy;
use caas_rules::quota::{Limits, Scope, Throttle, admit};

use crate::decision::Grant;

/// Buckets kept before the map is pruned: a full bucket is the same as none,
/// so pruning drops only those; if every one is busy, all go (briefly
/// admitting more, never refusing a request it should not).
pub const DEFAULT_CAPACITY: usize = 200_000;

pub struct Quotas {
    buckets: Mutex<HashMap<String, u64>>,
    capacity: usize,
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
    pub fn new(capacity: usize) -> Self {
        Self { buckets: Mutex::new(HashMap::new()), capacity: capacity.max(1), started: Instant::now() }
    }

    fn now(&self) -> u64 {
        // Starts one second in, so that a new bucket (0) holds a full burst.
        (self.started.elapsed().as_nanos() as u64).saturating_add(1_000_000_000)
    }

    /// Counts one request in every bucket, or in none if any is over its
    /// limit (a refused request uses up nothing).
    pub fn admit(&self, counted: &[(Scope, String)], limits: &Limits) -> Result<(), Throttle> {
        let now = self.now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::with_capacity(counted.len());
        for (scope, key) in counted {
            let tat = buckets.get(key).copied().unwrap_or(0);
            next.push(admit(tat, limits.get(*scope), *scope, now)?.tat);
        }
        if buckets.len() + counted.len() > self.capacity {
            buckets.retain(|_, tat| *tat > now);
            if buckets.len() + counted.len() > self.capacity {
                tracing::warn!(capacity = self.capacity, "rate limit buckets full; starting over");
                buckets.clear();
            }
        }
        for ((_, key), tat) in counted.iter().zip(next) {
            match buckets.get_mut(key) {
                Some(slot) => *slot = tat,
                None => {
                    buckets.insert(key.clone(), tat);
                }
            }
        }
        Ok(())
    }
}
