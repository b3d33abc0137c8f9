//! Fixed-window counters for throttling (login failures, registrations).
//! Counts live in the shared cache so every node sees them; if Redis is
//! down, an in-process window takes over rather than letting everything by.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::cache::{Cache, MemoryCache};

/// Refused until this many seconds have passed: surfaces as 429 + `retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many attempts; retry after {0} s")]
pub struct RetryAfter(pub u64);

pub struct RateLimiter {
    name: &'static str,
    limit: u64,
    window: Duration,
    shared: Arc<dyn Cache>,
    fallback: MemoryCache,
}

impl RateLimiter {
    pub fn new(name: &'static str, limit: u64, window: Duration, shared: Arc<dyn Cache>) -> Self {
        Self { name, limit, window, shared, fallback: MemoryCache::new() }
    }

    /// Keys are hashed: no email address or IP is stored in Redis.
    fn key(&self, subject: &str) -> String {
        let digest = Sha256::digest(subject.as_bytes());
        format!("rl:{}:{}", self.name, hex::encode(&digest[..12]))
    }

    /// Counts one attempt; `Err` once the limit is exceeded. Atomic (one
    /// INCR), so it can reserve an attempt before the work it limits.
    pub async fn hit(&self, subject: &str) -> Result<(), RetryAfter> {
        let key = self.key(subject);
        let (count, left) = match self.shared.increment(&key, self.window).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, limiter = self.name, "rate limit falling back to in-process counter");
                self.fallback.increment(&key, self.window).await.unwrap_or((0, 0))
            }
        };
        if count > self.limit {
            // The key, never the subject: it may be an email address.
            tracing::warn!(limiter = self.name, key, count, limit = self.limit, "throttled");
            return Err(RetryAfter(left.max(1)));
        }
        Ok(())
    }

    /// Gives back one attempt `hit` counted: a reservation that turned out
    /// not to be a failure (a success, or refused before any check ran).
    pub async fn release(&self, subject: &str) {
        let key = self.key(subject);
        if self.shared.decrement(&key).await.is_err() {
            let _ = self.fallback.decrement(&key).await;
        }
    }

    /// `Err` if the limit is already reached, without counting.
    pub async fn check(&self, subject: &str) -> Result<(), RetryAfter> {
        let key = self.key(subject);
        let (count, left) = match self.shared.counter(&key).await {
            Ok(v) => v,
            Err(_) => self.fallback.counter(&key).await.unwrap_or((0, 0)),
        };
        if count >= self.limit { Err(RetryAfter(left.max(1))) } else { Ok(()) }
    }

    pub async fn reset(&self, subject: &str) {
        let key = self.key(subject);
        let _ = self.shared.delete(&key).await;
        let _ = self.fallback.delete(&key).await;
    }
}
