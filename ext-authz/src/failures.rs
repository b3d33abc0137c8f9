//! Failed credential checks counted per client address bucket
//! (`caas_rules::net::address_bucket`): past the limit within a window, the
//! address is refused before any credential lookup, so made-up API keys
//! (well-formed ones cost nothing to forge: rules/src/api_key.rs) cannot buy
//! a database read each.
//!
//! An address that was refused in one window starts the next one a single
//! failure short of the limit: a flood that goes on gets one more lookup
//! (plus those already in flight) per window instead of `limit` more, so
//! its database reads stay under one per thousand forged requests at any
//! rate above a few per second (BENCHMARKS.md, "Forged API keys from one
//! address"). A window that ends under the limit leaves nothing behind.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caas_rules::net::address_bucket;
use ipnet::IpNet;

/// One bucket's fixed window: when it began and the failures in it.
struct Window {
    started: Instant,
    failures: AtomicU32,
}

pub struct FailureLimiter {
    /// Failures allowed per window; 0 turns the limiter off.
    limit: u32,
    window: Duration,
    /// Bounded (TinyLFU): addresses failing often are the ones it keeps.
    buckets: moka::sync::Cache<IpNet, Arc<Window>>,
    /// The buckets refused now, and until when: what the in-proxy filter
    /// must not allow either (ext-authz/src/edge.rs). Bounded: past
    /// `MAX_LISTED`, `refusing` says "too many to list".
    refusing: Mutex<HashMap<IpNet, Instant>>,
}

/// Refused buckets listed for the in-proxy filter, at most.
pub const MAX_LISTED: usize = 1_000;

impl FailureLimiter {
    pub fn new(limit: u32, window: Duration, capacity: u64) -> Self {
        let window = window.max(Duration::from_secs(1));
        // Kept a window beyond its end, so the next one knows it was refused.
        let buckets = moka::sync::Cache::builder().max_capacity(capacity).time_to_live(window * 2).build();
        Self { limit, window, buckets, refusing: Mutex::new(HashMap::new()) }
    }

    /// The address buckets refused at `now`; `None` when more than
    /// `MAX_LISTED` are (the filter then leaves every request to ext_authz).
    pub fn refusing(&self, now: Instant) -> Option<Vec<IpNet>> {
        let mut refusing = self.refusing.lock().unwrap_or_else(|e| e.into_inner());
        refusing.retain(|_, ends| now < *ends);
        (refusing.len() <= MAX_LISTED).then(|| refusing.keys().copied().collect())
    }

    /// Seconds left (at least 1) while `ip`'s bucket is over the limit.
    pub fn refused_for(&self, ip: IpAddr, now: Instant) -> Option<u32> {
        if self.limit == 0 {
            return None;
        }
        let window = self.buckets.get(&address_bucket(ip))?;
        let ends = window.started + self.window;
        if now >= ends || window.failures.load(Ordering::Relaxed) < self.limit {
            return None;
        }
        let left = ends.saturating_duration_since(now).as_secs_f64().ceil();
        Some((left as u32).max(1))
    }

    /// Counts one failure; returns the bucket when this one reached the
    /// limit (so the start of limiting is logged once per window).
    pub fn record(&self, ip: IpAddr, now: Instant) -> Option<IpNet> {
        if self.limit == 0 {
            return None;
        }
        let bucket = address_bucket(ip);
        let fresh = |failures| Arc::new(Window { started: now, failures: AtomicU32::new(failures) });
        let mut window = self.buckets.get_with(bucket, || fresh(0));
        if now >= window.started + self.window {
            // Refused last window: one more failure refuses it again.
            let carried = if window.failures.load(Ordering::Relaxed) >= self.limit { self.limit - 1 } else { 0 };
            window = fresh(carried);
            self.buckets.insert(bucket, window.clone());
        }
        let failures = window.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures != self.limit {
            return None;
        }
        let mut refusing = self.refusing.lock().unwrap_or_else(|e| e.into_inner());
        // One past the bound is enough to say "too many"; more is not kept.
        if refusing.len() <= MAX_LISTED || refusing.contains_key(&bucket) {
            refusing.insert(bucket, window.started + self.window);
        }
        Some(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_after_the_threshold_for_the_rest_of_the_window() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60), 100);
        let start = Instant::now();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(limiter.record(ip, start), None);
        assert_eq!(limiter.record(ip, start), None);
        assert_eq!(limiter.refused_for(ip, start), None);
        assert_eq!(limiter.record(ip, start).map(|b| b.to_string()), Some("203.0.113.7/32".into()));
        assert_eq!(limiter.refused_for(ip, start), Some(60));
        assert_eq!(limiter.refused_for(ip, start + Duration::from_millis(59_500)), Some(1));
        assert_eq!(limiter.refused_for(ip, start + Duration::from_secs(60)), None);
        // Another address starts afresh.
        assert_eq!(limiter.refused_for("203.0.113.8".parse().unwrap(), start), None);
        // Listed for the in-proxy filter while refused, then no more.
        let listed = |at| limiter.refusing(at).unwrap().iter().map(|b| b.to_string()).collect::<Vec<_>>();
        assert_eq!(listed(start), ["203.0.113.7/32"]);
        assert!(listed(start + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn too_many_refused_addresses_to_list_say_so() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(60), 10_000);
        let now = Instant::now();
        for i in 0..=MAX_LISTED as u32 {
            limiter.record(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), now);
        }
        assert_eq!(limiter.refusing(now), None);
        assert_eq!(limiter.refusing(now + Duration::from_secs(61)), Some(Vec::new()));
    }

    #[test]
    fn an_address_refused_last_window_gets_one_failure_in_the_next() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60), 100);
        let start = Instant::now();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            limiter.record(ip, start);
        }
        assert!(limiter.refused_for(ip, start).is_some());
        // The window ends: the address may try once, and is refused again
        // after that one failure (and says so, once).
        let next = start + Duration::from_secs(61);
        assert_eq!(limiter.refused_for(ip, next), None);
        assert_eq!(limiter.record(ip, next).map(|b| b.to_string()), Some("203.0.113.7/32".into()));
        assert_eq!(limiter.refused_for(ip, next), Some(60));
        // A window that ended under the limit carries nothing.
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        limiter.record(other, start);
        limiter.record(other, start);
        for _ in 0..2 {
            assert_eq!(limiter.record(other, next), None);
        }
        assert_eq!(limiter.refused_for(other, next), None);
    }

    #[test]
    fn an_ipv6_64_is_one_bucket_and_zero_turns_it_off() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60), 100);
        let now = Instant::now();
        limiter.record("2001:db8::1".parse().unwrap(), now);
        limiter.record("2001:db8::2".parse().unwrap(), now);
        assert!(limiter.refused_for("2001:db8::ffff".parse().unwrap(), now).is_some());
        assert!(limiter.refused_for("2001:db8:0:1::1".parse().unwrap(), now).is_none());
        let off = FailureLimiter::new(0, Duration::from_secs(60), 100);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..10 {
            off.record(ip, now);
        }
        assert_eq!(off.refused_for(ip, now), None);
    }
}
