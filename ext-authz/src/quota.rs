//! Quotas in the Check: after a credential passed, its requests are counted
//! against the tenant's limits (per key or per end user, and per tenant).
//! Their arithmetic is caas-rules' (rules/src/quota.rs).
//!
//! Each bucket lives in this process, in a bounded TinyLFU cache (an evicted
//! bucket starts full again: it briefly admits more, never refuses what it
//! should not), so the Check never waits for the network. A Check reads the
//! cache once per bucket and writes only the bucket's own counters: the
//! cache itself is written when a bucket is first used, not per request. With Redis, the
//! instances share each bucket: a reconciler adds what this instance
//! admitted since its last round to the bucket's counter in Redis, in one
//! pipelined round trip every `QUOTA_SYNC_INTERVAL`, and charges the
//! local bucket with what the other instances admitted meanwhile (the
//! counter's growth beyond our own adds). Every admission thus reaches every
//! instance's bucket within one round; what can pass the limit is what the
//! instances admit before they hear of each other (docs/DESIGN.md,
//! "Quotas"). With Redis unreachable each instance enforces its share of
//! each limit (the limit divided by the instances last seen alive) alone,
//! and says so once on entering and once on leaving that mode.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use caas_core::cache::Cache;
use caas_core::context::AuthType;
use caas_rules::policy::Policy;
use caas_rules::quota::{Limit, Limits, Scope, Throttle, admit};
use prometheus_client::metrics::gauge::Gauge;

use crate::decision::Grant;

/// Buckets kept; the least useful are evicted one at a time, never all.
pub const DEFAULT_CAPACITY: u64 = 200_000;

/// A bucket not used here for this long stops being reconciled (its next
/// request starts from the local state, which may have missed others' use).
const TRACKED_FOR: u64 = 2 * NANOS;
/// Buckets reconciled at once; past it, a new bucket is counted locally only.
const MAX_TRACKED: usize = 100_000;
/// How long a counter, and an instance's presence, live in Redis after the
/// last add: beyond `TRACKED_FOR`, so a counter some instance still tracks
/// is refreshed every round and never restarts under it; an instance not
/// heard of for this long no longer counts among those that share a limit.
const SHARED_TTL: Duration = Duration::from_secs(5);
/// How often an idle instance still says it is alive.
const IDLE_HEARTBEAT: u64 = NANOS;
/// A reconcile round that takes longer than this counts as Redis being down.
const ROUND_TIMEOUT: Duration = Duration::from_millis(500);
/// The sorted set of live instances (members: instance ids).
const INSTANCES_KEY: &str = "caas:quota:instances";

const NANOS: u64 = 1_000_000_000;

pub struct Quotas {
    inner: Arc<Inner>,
}

struct Inner {
    /// Bucket name → its state.
    buckets: moka::sync::Cache<String, Arc<Bucket>>,
    /// Held while one request's buckets are read and written, so a request
    /// is counted in all of them or in none; with sharing on, it also holds
    /// the buckets used recently, which the reconciler tells Redis about.
    /// Only arithmetic and map updates run under it.
    counting: Mutex<HashMap<String, Arc<Bucket>>>,
    /// The clock the buckets count in (monotonic nanoseconds since this).
    started: Instant,
    /// `None`: this process is the only one counting (no Redis).
    sharing: Option<Sharing>,
}

struct Sharing {
    cache: Arc<dyn Cache>,
    /// This instance's id among the live instances.
    member: String,
    /// Redis unreachable: each limit is divided by `instances`.
    alone: AtomicBool,
    /// Instances alive at the last round that reached Redis (at least 1).
    instances: AtomicU64,
    /// When this instance last said it is alive (`now()` nanoseconds).
    last_round: AtomicU64,
    gauges: QuotaGauges,
}

/// What the quotas tell operators (ext-authz/src/metrics.rs).
#[derive(Clone, Default)]
pub struct QuotaGauges {
    /// 1 while shared through Redis, 0 while this instance counts alone.
    pub shared: Gauge,
    /// The instances sharing each limit, as of the last round that reached
    /// Redis: while Redis is unreachable, each limit is divided by it.
    pub instances: Gauge,
}

/// One bucket: its GCRA state and, with sharing on, its bookkeeping with
/// Redis. Written only under `Inner::counting`: the atomics let the cache
/// and the reconciler hold the same bucket, not lock-free updates.
struct Bucket {
    /// The theoretical arrival time (GCRA), in `now()` nanoseconds; 0: full.
    tat: AtomicU64,
    /// Its rate at the last admission (what one other admission costs here).
    rate: AtomicU32,
    /// Admitted here, less what was given back here, and not yet added to
    /// the shared counter.
    pending: AtomicI64,
    /// The shared counter's total after our last add; `NOT_SEEN` until the
    /// first round (what happened before it is not charged).
    seen: AtomicI64,
    /// Last admission here (`now()` nanoseconds).
    used: AtomicU64,
    /// Among the buckets the reconciler tells Redis about.
    tracked: AtomicBool,
}

const NOT_SEEN: i64 = i64::MIN;

impl Bucket {
    fn new() -> Self {
        Self {
            tat: AtomicU64::new(0),
            rate: AtomicU32::new(1),
            pending: AtomicI64::new(0),
            seen: AtomicI64::new(NOT_SEEN),
            used: AtomicU64::new(0),
            tracked: AtomicBool::new(false),
        }
    }
}

/// One bucket's part of a reconcile round: what this instance admitted,
/// less what was given back, since the last round.
struct Sent {
    bucket: Arc<Bucket>,
    admitted: i64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, None, QuotaGauges::default())
    }
}

/// The buckets a grant is counted in; none for a
/// dashboard or anonymous request.
/// Keys are counted on the API-key routes (api_key, and refresh when it
/// carries a key), end users on the end-user routes.
pub fn buckets(policy: Policy, grant: &Grant) -> Vec<(Scope, String)> {
    let ctx = &grant.context;
    match (policy, ctx.auth_type) {
        (Policy::ApiKey | Policy::Refresh, AuthType::ApiKey) => {
            holder_buckets(&ctx.tenant_id, Holder::Key(&ctx.key_id))
        }
        (Policy::EndUser, AuthType::Jwt) => holder_buckets(&ctx.tenant_id, Holder::User(&ctx.user_id)),
        _ => Vec::new(),
    }
}

/// Whose requests are counted: an end user's or an API key's (a lease for
/// the in-proxy filter names one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder<'a> {
    User(&'a str),
    Key(&'a str),
}

/// The buckets a holder's requests are counted in: its own, then the tenant's.
pub fn holder_buckets(tenant_id: &str, holder: Holder<'_>) -> Vec<(Scope, String)> {
    let own = match holder {
        Holder::User(user_id) => (Scope::User, format!("user:{tenant_id}:{user_id}")),
        Holder::Key(key_id) => (Scope::Key, format!("key:{key_id}")),
    };
    vec![own, tenant_bucket(tenant_id)]
}

fn tenant_bucket(tenant_id: &str) -> (Scope, String) {
    (Scope::Tenant, format!("tenant:{tenant_id}"))
}

/// The limits a lease is counted against: each burst halved, so that what
/// a lease takes leaves at least half the burst to Checks (a burst of 1
/// halves to 0: such a bucket is never leased).
fn lease_limits(limits: &Limits) -> Limits {
    let half = |limit: Limit| Limit { rate: limit.rate, burst: limit.burst / 2 };
    Limits { per_key: half(limits.per_key), per_user: half(limits.per_user), per_tenant: half(limits.per_tenant) }
}

/// One instance's part of a limit (at least one request, burst at least rate).
fn share(limit: Limit, instances: u64) -> Limit {
    let part = |n: u32| (u64::from(n) / instances.max(1)).max(1) as u32;
    Limit { rate: part(limit.rate), burst: part(limit.burst) }
}

impl Quotas {
    /// `shared`: the cache the instances share (Redis); `None` counts in this
    /// process only. Call `reconcile_every` to start sharing.
    pub fn new(capacity: u64, shared: Option<Arc<dyn Cache>>, gauges: QuotaGauges) -> Self {
        let sharing = shared.map(|cache| Sharing {
            cache,
            member: caas_core::id::new_id("authz"),
            alone: AtomicBool::new(false),
            instances: AtomicU64::new(1),
            last_round: AtomicU64::new(0),
            gauges,
        });
        let inner = Inner {
            buckets: moka::sync::Cache::new(capacity.max(1)),
            counting: Mutex::new(HashMap::new()),
            started: Instant::now(),
            sharing,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Starts the reconciler (a task that ends with these quotas). Must be
    /// called inside a Tokio runtime; does nothing without a shared cache.
    pub fn reconcile_every(&self, interval: Duration) {
        if self.inner.sharing.is_none() {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(reconcile(inner, interval));
    }

    /// Counts one request in every bucket, or in none if any is over its
    /// limit (a refused request uses up nothing). Never waits for Redis.
    pub fn admit(&self, counted: &[(Scope, String)], limits: &Limits) -> Result<(), Throttle> {
        self.inner.admit(counted, limits, 1).map(|_| ())
    }

    /// Counts up to `want` requests at once, each as `admit` would, and
    /// returns how many fitted: the in-proxy filter's lease (ext-authz/src/edge.rs),
    /// which it spends on requests it then allows without a Check. A lease
    /// can only make the quota refuse early, never admit more than the
    /// limit; so that it does not make it refuse early either, leases come
    /// only from the upper half of each burst (`lease_limits`): the last
    /// half of a bucket is always counted by Checks, one request at a time,
    /// and a lease held unspent somewhere cannot leave a bucket empty.
    pub fn lease(&self, counted: &[(Scope, String)], limits: &Limits, want: u32) -> u32 {
        let limits = lease_limits(limits);
        if want == 0 || counted.iter().any(|(scope, _)| limits.get(*scope).burst == 0) {
            return 0;
        }
        self.inner.admit(counted, &limits, want).unwrap_or(0)
    }

    /// Un-counts `n` requests leased and not spent (the filter gives back
    /// what it stops holding): each bucket gets them back, here and, through
    /// the shared counter, on every instance. A bucket no longer held here
    /// (evicted: it started full again) has nothing to give back to.
    pub fn give_back(&self, counted: &[(Scope, String)], limits: &Limits, n: u32) {
        if n > 0 {
            self.inner.refund(counted, limits, n);
        }
    }

    /// One reconcile round (the reconciler's; tests call it directly).
    #[cfg(test)]
    pub async fn reconcile_once(&self) {
        self.inner.round().await;
    }

    /// Whether this instance is enforcing its share alone (Redis unreachable).
    #[cfg(test)]
    pub fn alone(&self) -> bool {
        self.inner.sharing.as_ref().is_some_and(|s| s.alone.load(Ordering::Relaxed))
    }
}

impl Inner {
    fn now(&self) -> u64 {
        // Starts one second in, so that a new bucket (0) holds a full burst.
        (self.started.elapsed().as_nanos() as u64).saturating_add(NANOS)
    }

    /// Counts up to `want` (at least 1) requests in every bucket, each in
    /// all of them or in none, under one lock; returns how many fitted, or
    /// the first bucket's refusal when not even one did.
    fn admit(&self, counted: &[(Scope, String)], limits: &Limits, want: u32) -> Result<u32, Throttle> {
        let now = self.now();
        let divisor = self.divisor();
        // Found (or made) before the lock: one cache read per bucket.
        let found: Vec<Arc<Bucket>> = counted
            .iter()
            .map(|(_, key)| self.buckets.get_with_by_ref(key.as_str(), || Arc::new(Bucket::new())))
            .collect();
        let mut tracked = self.counting.lock().unwrap_or_else(|e| e.into_inner());
        let mut tats: Vec<u64> = found.iter().map(|b| b.tat.load(Ordering::Relaxed)).collect();
        let mut next = Vec::with_capacity(tats.len());
        let mut admitted = 0;
        'requests: while admitted < want {
            next.clear();
            for ((scope, _), tat) in counted.iter().zip(&tats) {
                let limit = limits.get(*scope);
                match admit(*tat, share(limit, divisor), *scope, now) {
                    Ok(fits) => next.push(fits.tat),
                    Err(_) if admitted > 0 => break 'requests,
                    // Refused by this instance's share: the headers still state
                    // the tenant's limit (the share is an outage measure, not a policy).
                    Err(throttle) => return Err(Throttle { limit, ..throttle }),
                }
            }
            std::mem::swap(&mut tats, &mut next);
            admitted += 1;
        }
        for (((scope, key), bucket), tat) in counted.iter().zip(&found).zip(tats) {
            bucket.tat.store(tat, Ordering::Relaxed);
            if self.sharing.is_none() {
                continue;
            }
            bucket.pending.fetch_add(i64::from(admitted), Ordering::Relaxed);
            bucket.rate.store(limits.get(*scope).rate, Ordering::Relaxed);
            bucket.used.store(now, Ordering::Relaxed);
            if !bucket.tracked.load(Ordering::Relaxed) && tracked.len() < MAX_TRACKED {
                bucket.tracked.store(true, Ordering::Relaxed);
                tracked.insert(key.clone(), bucket.clone());
            }
        }
        Ok(admitted)
    }

    /// Moves each bucket's time back by `n` requests (never past full), under
    /// the counting lock; with sharing on, the others hear of it as a
    /// negative add.
    fn refund(&self, counted: &[(Scope, String)], limits: &Limits, n: u32) {
        let divisor = self.divisor();
        let found: Vec<Option<Arc<Bucket>>> = counted.iter().map(|(_, key)| self.buckets.get(key.as_str())).collect();
        let mut tracked = self.counting.lock().unwrap_or_else(|e| e.into_inner());
        for ((scope, key), bucket) in counted.iter().zip(&found) {
            let Some(bucket) = bucket else { continue };
            let limit = share(limits.get(*scope), divisor);
            let back = u64::from(n).saturating_mul(NANOS / u64::from(limit.rate.max(1)));
            let _ = bucket.tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| Some(tat.saturating_sub(back)));
            if self.sharing.is_none() {
                continue;
            }
            bucket.pending.fetch_sub(i64::from(n), Ordering::Relaxed);
            if !bucket.tracked.load(Ordering::Relaxed) && tracked.len() < MAX_TRACKED {
                bucket.tracked.store(true, Ordering::Relaxed);
                tracked.insert(key.clone(), bucket.clone());
            }
        }
    }

    /// What each limit is divided by now: the live instances while Redis is
    /// unreachable, else 1.
    fn divisor(&self) -> u64 {
        match &self.sharing {
            Some(s) if s.alone.load(Ordering::Relaxed) => s.instances.load(Ordering::Relaxed),
            _ => 1,
        }
    }

    /// Adds our admissions to the shared counters and charges the local
    /// buckets with everyone else's; on failure, counts alone.
    async fn round(&self) {
        let Some(sharing) = &self.sharing else { return };
        let now = self.now();
        let (batch, counters): (Vec<Sent>, Vec<(String, i64)>) = {
            let mut tracked = self.counting.lock().unwrap_or_else(|e| e.into_inner());
            tracked.retain(|_, b| {
                let keep = b.pending.load(Ordering::Relaxed) != 0
                    || now.saturating_sub(b.used.load(Ordering::Relaxed)) < TRACKED_FOR;
                if !keep {
                    b.tracked.store(false, Ordering::Relaxed);
                }
                keep
            });
            tracked
                .iter()
                .map(|(key, b)| {
                    let admitted = b.pending.swap(0, Ordering::Relaxed);
                    (Sent { bucket: b.clone(), admitted }, (format!("caas:quota:{key}"), admitted))
                })
                .unzip()
        };
        if batch.is_empty() && now.saturating_sub(sharing.last_round.load(Ordering::Relaxed)) < IDLE_HEARTBEAT {
            return;
        }
        let added = sharing.cache.add_counts(INSTANCES_KEY, &sharing.member, &counters, SHARED_TTL);
        let outcome = match tokio::time::timeout(ROUND_TIMEOUT, added).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {ROUND_TIMEOUT:?}")),
        };
        match outcome {
            Ok((totals, alive)) if totals.len() == batch.len() => {
                sharing.last_round.store(now, Ordering::Relaxed);
                self.charge(&batch, &totals);
                // Ourselves at least, though an expired entry may say less.
                let instances = alive.max(1);
                sharing.instances.store(instances, Ordering::Relaxed);
                sharing.gauges.instances.set(instances as i64);
                if sharing.alone.swap(false, Ordering::Relaxed) {
                    tracing::warn!(instances, "Redis reachable again: quotas are shared between instances again");
                }
                sharing.gauges.shared.set(1);
            }
            Ok(_) => self.count_alone(sharing, "Redis answered a quota round with the wrong number of totals"),
            Err(error) => self.count_alone(sharing, &error),
        }
    }

    /// Charges each bucket with what the other instances admitted since
    /// our previous add (the counter's growth beyond our own adds), or
    /// credits it with what they gave back (its fall).
    fn charge(&self, batch: &[Sent], totals: &[i64]) {
        let now = self.now();
        let _counting = self.counting.lock().unwrap_or_else(|e| e.into_inner());
        for (sent, total) in batch.iter().zip(totals) {
            let bucket = &sent.bucket;
            // A counter restarts only if Redis lost it (one a tracked bucket
            // uses is refreshed every round): it then reads as a fall, and
            // the bucket starts full, as an evicted bucket does.
            let seen = bucket.seen.swap(*total, Ordering::Relaxed);
            let others = if seen == NOT_SEEN { 0 } else { total.saturating_sub(seen.saturating_add(sent.admitted)) };
            let interval = NANOS / u64::from(bucket.rate.load(Ordering::Relaxed).max(1));
            let moved = others.unsigned_abs().saturating_mul(interval);
            let tat = bucket.tat.load(Ordering::Relaxed);
            if others > 0 {
                bucket.tat.store(tat.max(now).saturating_add(moved), Ordering::Relaxed);
            } else if others < 0 {
                bucket.tat.store(tat.saturating_sub(moved), Ordering::Relaxed);
            }
        }
    }

    /// Redis unreachable: what was not added is dropped (the others never
    /// see it), and the counters are read afresh once it answers again.
    fn count_alone(&self, sharing: &Sharing, error: &str) {
        let tracked = self.counting.lock().unwrap_or_else(|e| e.into_inner());
        for bucket in tracked.values() {
            bucket.seen.store(NOT_SEEN, Ordering::Relaxed);
        }
        drop(tracked);
        sharing.gauges.shared.set(0);
        if !sharing.alone.swap(true, Ordering::Relaxed) {
            let instances = sharing.instances.load(Ordering::Relaxed);
            tracing::warn!(
                %error,
                instances,
                "Redis unreachable: each quota is now enforced by this instance alone, at 1/{instances} of the \
                 tenant's limit (its share among the instances last seen), until Redis answers again"
            );
        }
    }
}

async fn reconcile(inner: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.round().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_an_instance_takes_its_share_of_a_limit_and_never_nothing() {
        assert_eq!(share(Limit { rate: 10, burst: 20 }, 2), Limit { rate: 5, burst: 10 });
        assert_eq!(share(Limit { rate: 10, burst: 20 }, 1), Limit { rate: 10, burst: 20 });
        assert_eq!(share(Limit { rate: 1, burst: 1 }, 3), Limit { rate: 1, burst: 1 });
        assert_eq!(share(Limit { rate: 7, burst: 7 }, 0), Limit { rate: 7, burst: 7 });
    }
}
