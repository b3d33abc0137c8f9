//! Quotas (rate limits) per API key, per end user and per tenant: the
//! limits, their bounds, and the bucket arithmetic (GCRA, the token bucket
//! kept as one timestamp). Pure: the caller passes `now` and keeps the state.

use serde::{Deserialize, Serialize};

crate::names! {
    /// Whose requests a bucket counts. The text is the metric label and the
    /// name in the `RateLimit` response headers.
    pub enum Scope {
        /// One API key.
        Key = "key",
        /// One end user (tenant and user id).
        User = "user",
        /// Every request of a tenant, whatever its credential.
        Tenant = "tenant",
    }
}

/// Requests per second, and how many may arrive at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub rate: u32,
    pub burst: u32,
}

/// A tenant's limits, one per scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub per_key: Limit,
    pub per_user: Limit,
    pub per_tenant: Limit,
}

/// Until a tenant sets its own: high enough that no normal client (nor the
/// benchmarks in BENCHMARKS.md, which use one key) ever meets them.
pub const DEFAULT_LIMITS: Limits = Limits {
    per_key: Limit { rate: 1_000, burst: 2_000 },
    per_user: Limit { rate: 50, burst: 100 },
    per_tenant: Limit { rate: 5_000, burst: 10_000 },
};

/// The most a tenant may set, per scope: beyond this a quota protects nothing.
pub const MAX_LIMITS: Limits = Limits {
    per_key: Limit { rate: 10_000, burst: 20_000 },
    per_user: Limit { rate: 1_000, burst: 2_000 },
    per_tenant: Limit { rate: 50_000, burst: 100_000 },
};

/// A limit outside its bounds; `field` is its JSON path (`per_key.rate`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct InvalidLimit {
    pub field: String,
    pub problem: String,
}

impl Limits {
    pub fn get(&self, scope: Scope) -> Limit {
        match scope {
            Scope::Key => self.per_key,
            Scope::User => self.per_user,
            Scope::Tenant => self.per_tenant,
        }
    }

    /// Builds limits from raw numbers (as sent), checking each against its
    /// maximum: positive, at most the maximum, burst at least the rate.
    pub fn checked(raw: [(i64, i64); 3]) -> Result<Limits, InvalidLimit> {
        let [key, user, tenant] = raw;
        Ok(Limits {
            per_key: checked_limit("per_key", key, MAX_LIMITS.per_key)?,
            per_user: checked_limit("per_user", user, MAX_LIMITS.per_user)?,
            per_tenant: checked_limit("per_tenant", tenant, MAX_LIMITS.per_tenant)?,
        })
    }
}

impl Limits {
    /// The same bounds as `checked`, for limits built in code.
    pub fn check(&self) -> Result<(), InvalidLimit> {
        let raw = [self.per_key, self.per_user, self.per_tenant].map(|l| (i64::from(l.rate), i64::from(l.burst)));
        Limits::checked(raw).map(|_| ())
    }
}

fn checked_limit(scope: &str, (rate, burst): (i64, i64), max: Limit) -> Result<Limit, InvalidLimit> {
    let bounded = |name: &str, value: i64, max: u32| {
        if value < 1 || value > i64::from(max) {
            return Err(InvalidLimit {
                field: format!("{scope}.{name}"),
                problem: format!("must be an integer from 1 to {max}"),
            });
        }
        Ok(value as u32)
    };
    let rate = bounded("rate", rate, max.rate)?;
    let burst = bounded("burst", burst, max.burst)?;
    if burst < rate {
        return Err(InvalidLimit {
            field: format!("{scope}.burst"),
            problem: format!("must be at least the rate ({rate})"),
        });
    }
    Ok(Limit { rate, burst })
}

const NANOS: u64 = 1_000_000_000;

/// A request counted: the bucket's new state and what the headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The new theoretical arrival time, to keep (nanoseconds).
    pub tat: u64,
    /// Requests that could still arrive at once.
    pub remaining: u32,
}

/// A request refused: which bucket, its limit, and when one more fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub scope: Scope,
    pub limit: Limit,
    /// Whole seconds, at least 1 (what `retry-after` says).
    pub retry_after: u32,
}

/// GCRA: each request moves the bucket's theoretical arrival time (`tat`,
/// nanoseconds; 0 for a new bucket) on by one emission interval; a request
/// is admitted while that time is at most `burst` intervals ahead of `now`.
pub fn admit(tat: u64, limit: Limit, scope: Scope, now: u64) -> Result<Admitted, Throttle> {
    let interval = NANOS / u64::from(limit.rate.max(1));
    let tolerance = interval.saturating_mul(u64::from(limit.burst.max(1)));
    let next = tat.max(now).saturating_add(interval);
    let allowed_from = next.saturating_sub(tolerance);
    if now < allowed_from {
        let wait = allowed_from - now;
        let retry_after = wait.div_ceil(NANOS).clamp(1, u64::from(u32::MAX)) as u32;
        return Err(Throttle { scope, limit, retry_after });
    }
    let remaining = ((now - allowed_from) / interval.max(1)).min(u64::from(limit.burst)) as u32;
    Ok(Admitted { tat: next, remaining })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = NANOS;

    #[test]
    fn a_burst_is_admitted_then_the_rate() {
        let limit = Limit { rate: 2, burst: 3 };
        let now = 100 * SECOND;
        let mut tat = 0;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let admitted = admit(tat, limit, Scope::Key, now).unwrap();
            tat = admitted.tat;
            remaining.push(admitted.remaining);
        }
        assert_eq!(remaining, [2, 1, 0]);
        let refused = admit(tat, limit, Scope::Key, now).unwrap_err();
        assert_eq!(refused, Throttle { scope: Scope::Key, limit, retry_after: 1 });
        // Half a second later (one interval at 2/s) exactly one more fits.
        let later = now + SECOND / 2;
        tat = admit(tat, limit, Scope::Key, later).unwrap().tat;
        assert!(admit(tat, limit, Scope::Key, later).is_err());
        // After a quiet spell the whole burst is back.
        let quiet = later + 10 * SECOND;
        assert_eq!(admit(tat, limit, Scope::Key, quiet).unwrap().remaining, 2);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limit = Limit { rate: 1, burst: 1 };
        let tat = admit(0, limit, Scope::Tenant, SECOND).unwrap().tat;
        let refused = admit(tat, limit, Scope::Tenant, SECOND + SECOND / 10).unwrap_err();
        assert_eq!(refused.retry_after, 1);
        let slow = Limit { rate: 1, burst: 1 };
        let mut tat = 0;
        tat = admit(tat, slow, Scope::User, 0).map(|a| a.tat).unwrap_or(tat);
        assert!(admit(tat, slow, Scope::User, 0).is_err());
    }

    #[test]
    fn limits_are_checked_against_their_bounds() {
        let ok = Limits::checked([(10, 20), (1, 1), (100, 100)]).unwrap();
        assert_eq!(ok.get(Scope::User), Limit { rate: 1, burst: 1 });
        for (raw, field) in [
            ([(0, 20), (1, 1), (1, 1)], "per_key.rate"),
            ([(10, 20), (1, -1), (1, 1)], "per_user.burst"),
            ([(10, 9), (1, 1), (1, 1)], "per_key.burst"),
            ([(10, 20), (1, 1), (50_001, 100_000)], "per_tenant.rate"),
            ([(10, 20_001), (1, 1), (1, 1)], "per_key.burst"),
        ] {
            assert_eq!(Limits::checked(raw).unwrap_err().field, field, "{raw:?}");
        }
        let d = DEFAULT_LIMITS;
        let raw = [d.per_key, d.per_user, d.per_tenant].map(|l| (i64::from(l.rate), i64::from(l.burst)));
        assert_eq!(Limits::checked(raw), Ok(DEFAULT_LIMITS));
    }
}
