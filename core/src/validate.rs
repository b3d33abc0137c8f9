//! The validation rules every gateway and service applies, with their caches:
//! API key (+ IP whitelist), access token (+ revocation, + Origin whitelist).
//! auth-api's internal endpoints and ext-authz call these same functions.
//!
//! Caching: an in-process cache in front of the database (and, for the
//! whitelists, the shared cache). Bus events evict entries; a revoked session
//! is *pinned* as revoked, so that neither a stale read racing the event nor a
//! database outage can bring it back. Entries are refreshed after `fresh_for`;
//! if the database is down then, the stale entry keeps serving (up to
//! `stale_for`). While the bus is disconnected no entry counts as fresh, since
//! an eviction could have been missed.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api_key;
use crate::bus::{BusMessage, EventBus};
use crate::cache::Cache;
use crate::events::Event;
use crate::jwt::{Audience, Claims, JwtKeys};
use crate::metrics::AuthMetrics;
use crate::store::{SessionKind, Store, StoreError, VersionedWhitelist, WhitelistKind};
use crate::whitelist::{IpWhitelist, OriginWhitelist};
pub use caas_rules::denial::{Denial, DenialClass, Rejection};
use caas_rules::quota::{DEFAULT_LIMITS, Limits};

#[derive(Debug, Clone)]
pub struct ValidatorSettings {
    /// How long a cached answer is used without asking the database again.
    pub fresh_for: Duration,
    /// How long an unknown key or session is remembered as unknown.
    pub negative_for: Duration,
    /// How long a cached answer may still serve while the database is down.
    pub stale_for: Duration,
    /// Time to live of whitelists in the shared cache.
    pub shared_ttl: Duration,
    /// How long a revocation stays pinned in memory (longer than any access token).
    pub pin_for: Duration,
    pub ip_whitelist_enabled: bool,
    pub origin_validation_enabled: bool,
    /// Largest number of known entries per in-process cache (least useful evicted first).
    pub capacity: usize,
    /// Largest number of unknown keys or sessions remembered per cache.
    pub negative_capacity: usize,
}

impl Default for ValidatorSettings {
    fn default() -> Self {
        Self {
            fresh_for: Duration::from_secs(60),
            negative_for: Duration::from_secs(10),
            stale_for: Duration::from_secs(3600),
            shared_ttl: Duration::from_secs(300),
            pin_for: Duration::from_secs(2 * 3600),
            ip_whitelist_enabled: true,
            origin_validation_enabled: true,
            capacity: 200_000,
            negative_capacity: 50_000,
        }
    }
}

/// A valid API key's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    pub tenant_id: String,
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    tenant_id: String,
    expires_at: Option<i64>,
    revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionEntry {
    tenant_id: String,
    subject: String,
    /// `None` only for a pinned revocation, which matches nothing.
    kind: Option<SessionKind>,
    revoked: bool,
}

impl SessionEntry {
    fn revoked() -> Self {
        Self { tenant_id: String::new(), subject: String::new(), kind: None, revoked: true }
    }

    fn view(&self) -> caas_rules::session::SessionView<'_> {
        caas_rules::session::SessionView {
            tenant_id: &self.tenant_id,
            subject: &self.subject,
            audience: self.kind.map(|kind| match kind {
                SessionKind::Sdk => Audience::Sdk,
                SessionKind::Dashboard => Audience::Dashboard,
            }),
            revoked: self.revoked,
        }
    }
}

/// A session as the in-proxy filter's feed serves it (ext-authz's `/edge/v1/session`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgeSession {
    pub tenant_id: String,
    pub subject: String,
    /// The audience whose tokens it backs; `None` for a pinned revocation.
    pub audience: Option<Audience>,
    pub revoked: bool,
}

/// An API key's record as the in-proxy filter's feed serves it
/// (ext-authz's `/edge/v1/keys`), with what its tenant's IP whitelist holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgeKey {
    pub key_id: String,
    pub tenant_id: String,
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

enum Lookup<V> {
    Fresh(V),
    Stale(V, Duration),
    Miss,
}

#[derive(Clone)]
struct Slot<V> {
    value: V,
    fetched: Instant,
    fresh_for: Duration,
    /// `LocalCache::resyncs` when stored: a later resync makes it stale.
    resync: u64,
}

/// A revocation: never evicted or overwritten before `until`.
struct Pin<V> {
    value: V,
    pinned_at: Instant,
    until: Instant,
}

/// A cached value that may be the answer "unknown" (`None`): those live in
/// their own, smaller cache, so that a flood of made-up keys can only push
/// out other unknowns, never an honest tenant's entry.
trait CacheValue: Clone + Send + Sync + 'static {
    fn is_unknown(&self) -> bool;
}

impl<T: Clone + Send + Sync + 'static> CacheValue for Option<T> {
    fn is_unknown(&self) -> bool {
        self.is_none()
    }
}

impl CacheValue for Limits {
    fn is_unknown(&self) -> bool {
        false
    }
}

impl<T: Send + Sync + 'static> CacheValue for Arc<T> {
    fn is_unknown(&self) -> bool {
        false
    }
}

/// In-process cache with an epoch: every eviction bumps it, and a load that
/// started before a bump is not stored, so a stale read cannot undo an event.
/// Known and unknown answers sit in two bounded TinyLFU caches (moka), which
/// evict one entry at a time, never all. Pins sit apart, where no size bound
/// reaches them.
struct LocalCache<V> {
    name: &'static str,
    /// Position in `metrics::CACHES`.
    index: usize,
    known: moka::sync::Cache<String, Slot<V>>,
    unknown: moka::sync::Cache<String, Slot<V>>,
    pins: RwLock<HashMap<String, Pin<V>>>,
    /// Held by every write, so an epoch check and the insert it guards are
    /// one step against an eviction.
    writes: Mutex<()>,
    epoch: AtomicU64,
    /// Bumped by `mark_all_stale`: entries stored before are not fresh.
    resyncs: AtomicU64,
    /// Above this many pins, expired ones are dropped (live ones never are).
    pin_capacity: usize,
}

impl<V: CacheValue> LocalCache<V> {
    fn new(index: usize, settings: &ValidatorSettings) -> Self {
        let name = crate::metrics::CACHES[index];
        let known = moka::sync::Cache::builder()
            .max_capacity(settings.capacity as u64)
            .time_to_live(settings.stale_for.max(settings.fresh_for))
            .build();
        // Unknowns are kept only while fresh: a short memory, by design.
        let unknown = moka::sync::Cache::builder()
            .max_capacity(settings.negative_capacity as u64)
            .time_to_live(settings.negative_for.max(Duration::from_millis(1)))
            .build();
        Self {
            name,
            index,
            known,
            unknown,
            pins: RwLock::new(HashMap::new()),
            writes: Mutex::new(()),
            epoch: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            pin_capacity: settings.capacity,
        }
    }

    fn lookup(&self, key: &str, now: Instant, trust: bool) -> Lookup<V> {
        if let Some(pinned) = self.pinned(key, now) {
            return pinned;
        }
        let Some(slot) = self.known.get(key).or_else(|| self.unknown.get(key)) else {
            return Lookup::Miss;
        };
        let age = now.saturating_duration_since(slot.fetched);
        let current = slot.resync == self.resyncs.load(Ordering::SeqCst);
        if trust && current && age < slot.fresh_for {
            Lookup::Fresh(slot.value)
        } else {
            Lookup::Stale(slot.value, age)
        }
    }

    /// A live pin answers fresh; an expired one only as a stale entry would.
    fn pinned(&self, key: &str, now: Instant) -> Option<Lookup<V>> {
        let pins = self.pins.read().unwrap_or_else(|e| e.into_inner());
        let pin = pins.get(key)?;
        Some(if pin.until > now {
            Lookup::Fresh(pin.value.clone())
        } else {
            Lookup::Stale(pin.value.clone(), now.saturating_duration_since(pin.pinned_at))
        })
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn store(&self, key: &str, value: V, fresh_for: Duration, started_at_epoch: u64) {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch.load(Ordering::SeqCst) != started_at_epoch {
            return;
        }
        let now = Instant::now();
        if self.pins.read().unwrap_or_else(|e| e.into_inner()).get(key).is_some_and(|pin| pin.until > now) {
            return;
        }
        let unknown = value.is_unknown();
        let slot = Slot { value, fetched: now, fresh_for, resync: self.resyncs.load(Ordering::SeqCst) };
        // One key lives in one of the two caches: the newest answer wins.
        if unknown {
            self.known.invalidate(key);
            self.unknown.insert(key.to_string(), slot);
        } else {
            self.unknown.invalidate(key);
            self.known.insert(key.to_string(), slot);
        }
    }

    fn pin(&self, key: &str, value: V, for_: Duration) {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        let mut pins = self.pins.write().unwrap_or_else(|e| e.into_inner());
        if pins.len() >= self.pin_capacity {
            pins.retain(|_, pin| pin.until > now);
        }
        pins.insert(key.to_string(), Pin { value, pinned_at: now, until: now + for_ });
        self.known.invalidate(key);
        self.unknown.invalidate(key);
    }

    fn evict(&self, key: &str) {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.known.invalidate(key);
        self.unknown.invalidate(key);
        let now = Instant::now();
        let mut pins = self.pins.write().unwrap_or_else(|e| e.into_inner());
        if pins.get(key).is_some_and(|pin| pin.until <= now) {
            pins.remove(key);
        }
    }

    /// Every unpinned entry becomes stale: asked for again before use, but
    /// still there to serve if the database is down.
    fn mark_all_stale(&self) {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.resyncs.fetch_add(1, Ordering::SeqCst);
    }
}

const TOUCHED_CAPACITY: u64 = 100_000;

pub struct Validator {
    store: Store,
    shared: Arc<dyn Cache>,
    bus: Arc<dyn EventBus>,
    jwt: JwtKeys,
    settings: ValidatorSettings,
    metrics: Arc<AuthMetrics>,
    keys: LocalCache<Option<KeyEntry>>,
    sessions: LocalCache<Option<SessionEntry>>,
    ip_lists: LocalCache<Arc<IpWhitelist>>,
    origin_lists: LocalCache<Arc<OriginWhitelist>>,
    rate_limits: LocalCache<Limits>,
    /// Key id → when its use was last recorded (bounded; evicting one only
    /// means an extra `last_used_at` write).
    last_touched: moka::sync::Cache<String, i64>,
    /// Shared-cache key of a whitelist → the newest version an event named:
    /// a shared copy older than that is stale (written before a change whose
    /// writer could not update it) and is refreshed from the database. Kept
    /// as long as such a copy can live (`shared_ttl`).
    whitelist_floors: moka::sync::Cache<String, i64>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Validator {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// Shared-cache key of a tenant's whitelist.
pub fn whitelist_cache_key(kind: WhitelistKind, tenant_id: &str) -> String {
    match kind {
        WhitelistKind::Ip => format!("ip:whitelist:{tenant_id}"),
        WhitelistKind::Origin => format!("origin:whitelist:{tenant_id}"),
    }
}

impl Validator {
    /// Builds the validator and starts applying bus events to its caches.
    /// Must be called inside a Tokio runtime.
    pub fn start(
        store: Store,
        shared: Arc<dyn Cache>,
        bus: Arc<dyn EventBus>,
        jwt: JwtKeys,
        settings: ValidatorSettings,
        metrics: Arc<AuthMetrics>,
    ) -> Arc<Self> {
        let validator = Arc::new(Self {
            store,
            shared,
            bus,
            jwt,
            metrics,
            keys: LocalCache::new(0, &settings),
            sessions: LocalCache::new(1, &settings),
            ip_lists: LocalCache::new(2, &settings),
            origin_lists: LocalCache::new(3, &settings),
            rate_limits: LocalCache::new(4, &settings),
            last_touched: moka::sync::Cache::new(TOUCHED_CAPACITY),
            whitelist_floors: moka::sync::Cache::builder()
                .max_capacity(settings.capacity as u64)
                .time_to_live(settings.shared_ttl + Duration::from_secs(60))
                .build(),
            settings,
            listener: Mutex::new(None),
        });
        let mut events = validator.bus.subscribe();
        let weak = Arc::downgrade(&validator);
        let task = tokio::spawn(async move {
            loop {
                let message = match events.recv().await {
                    Ok(message) => message,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "validator lagged behind the event bus; every cached entry will be re-read"
                        );
                        BusMessage::Resync
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(validator) = weak.upgrade() else {
                    return;
                };
                validator.apply(&message);
            }
        });
        *validator.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        validator
    }

    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    pub fn metrics(&self) -> &Arc<AuthMetrics> {
        &self.metrics
    }

    /// The shared cache (Redis, or in-process without REDIS_URL).
    pub fn shared_cache(&self) -> &Arc<dyn Cache> {
        &self.shared
    }

    pub fn settings(&self) -> &ValidatorSettings {
        &self.settings
    }

    /// Applies one bus message to the caches.
    pub fn apply(&self, message: &BusMessage) {
        match message {
            // `is_connected` is false from now on: no cached entry is fresh.
            BusMessage::Disconnected => {}
            BusMessage::Resync => {
                self.keys.mark_all_stale();
                self.sessions.mark_all_stale();
                self.ip_lists.mark_all_stale();
                self.origin_lists.mark_all_stale();
                self.rate_limits.mark_all_stale();
            }
            BusMessage::Event(event) => match event.as_ref() {
                Event::ApiKeyChanged { key_hash, .. } => self.keys.evict(key_hash),
                Event::IpWhitelistChanged { tenant_id, version } => {
                    self.raise_floor(WhitelistKind::Ip, tenant_id, *version);
                    self.ip_lists.evict(tenant_id);
                }
                Event::OriginWhitelistChanged { tenant_id, version } => {
                    self.raise_floor(WhitelistKind::Origin, tenant_id, *version);
                    self.origin_lists.evict(tenant_id);
                }
                Event::SessionRevoked { session_id, .. } => {
                    self.sessions.pin(session_id, Some(SessionEntry::revoked()), self.settings.pin_for);
                }
                Event::RateLimitsChanged { tenant_id } => self.rate_limits.evict(tenant_id),
                Event::MessageCreated { .. } => {}
            },
        }
    }

    fn raise_floor(&self, kind: WhitelistKind, tenant_id: &str, version: i64) {
        let key = whitelist_cache_key(kind, tenant_id);
        self.whitelist_floors
            .entry(key)
            .and_upsert_with(|floor| floor.map_or(version, |floor| floor.into_value().max(version)));
    }

    /// API key from the `x-api-key` header, then the caller's IP against the
    /// key's tenant whitelist.
    pub async fn validate_api_key(&self, presented: &str, ip: IpAddr, now: i64) -> Result<KeyIdentity, Rejection> {
        let started = Instant::now();
        let result = self.api_key_inner(presented, ip, now).await;
        let outcome = match &result {
            Ok(_) => "valid",
            Err(rejection) => rejection.denial.code(),
        };
        match &result {
            Ok(_) => self.metrics.hot.valid_api_key.inc(),
            Err(_) => self.metrics.api_key_validations.get_or_create(&[("result", outcome)]).inc(),
        };
        self.metrics.hot.api_key_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn api_key_inner(&self, presented: &str, ip: IpAddr, now: i64) -> Result<KeyIdentity, Rejection> {
        let hash = api_key::parse(presented).map_err(|_| Denial::InvalidApiKey)?;
        let entry = self.key_entry(&hash).await?.ok_or(Denial::InvalidApiKey)?;
        if entry.revoked {
            return Err(Denial::ApiKeyRevoked.for_tenant(&entry.tenant_id));
        }
        if entry.expires_at.is_some_and(|at| at <= now) {
            return Err(Denial::ApiKeyExpired.for_tenant(&entry.tenant_id));
        }
        self.check_ip(&entry.tenant_id, ip).await.map_err(|d| d.for_tenant(&entry.tenant_id))?;
        self.touch(&entry.id, now);
        Ok(KeyIdentity { tenant_id: entry.tenant_id, key_id: entry.id })
    }

    /// An access token for `audience`: signature, claims, revocation, then
    /// the Origin (when the request has one) against the tenant's whitelist.
    pub async fn validate_token(
        &self,
        token: &str,
        audience: Audience,
        origin: Option<&str>,
        now: i64,
    ) -> Result<Claims, Rejection> {
        let started = Instant::now();
        let result = self.token_inner(token, audience, origin, now).await;
        let outcome = match &result {
            Ok(_) => "valid",
            Err(rejection) => rejection.denial.code(),
        };
        match (&result, audience) {
            (Ok(_), Audience::Sdk) => self.metrics.hot.valid_sdk_token.inc(),
            (Ok(_), Audience::Dashboard) => self.metrics.hot.valid_dashboard_token.inc(),
            (Err(_), _) => self
                .metrics
                .token_validations
                .get_or_create(&[("audience", audience.as_str()), ("result", outcome)])
                .inc(),
        };
        self.metrics.hot.jwt_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn token_inner(
        &self,
        token: &str,
        audience: Audience,
        origin: Option<&str>,
        now: i64,
    ) -> Result<Claims, Rejection> {
        let claims = self.jwt.verify(token, audience, now)?;
        self.check_session(&claims, audience).await.map_err(|d| d.for_tenant(&claims.tid))?;
        if let Some(origin) = origin {
            self.check_origin(&claims.tid, origin).await.map_err(|d| d.for_tenant(&claims.tid))?;
        }
        Ok(claims)
    }

    /// The session behind a verified token is live, and is the one the token
    /// names (judged by caas-rules' `session::check`).
    pub async fn check_session(&self, claims: &Claims, audience: Audience) -> Result<(), Denial> {
        let entry = self.session(&claims.sid).await?;
        caas_rules::session::check(claims, audience, entry.as_ref().map(SessionEntry::view).as_ref())
    }

    /// A session as this validator knows it (through its caches, as a Check
    /// would see it), for the in-proxy filter's feed: `None` when unknown.
    pub async fn session_record(&self, session_id: &str) -> Result<Option<EdgeSession>, Denial> {
        Ok(self.session(session_id).await?.map(|entry| EdgeSession {
            tenant_id: entry.tenant_id,
            subject: entry.subject,
            audience: entry.kind.map(|kind| match kind {
                SessionKind::Sdk => Audience::Sdk,
                SessionKind::Dashboard => Audience::Dashboard,
            }),
            revoked: entry.revoked,
        }))
    }

    /// How long a looked-up record stays fresh: `negative_for` when there
    /// was none.
    fn record_ttl<T>(&self, entry: &Option<T>) -> Duration {
        if entry.is_some() { self.settings.fresh_for } else { self.settings.negative_for }
    }

    /// The key stored under `hash`, through the caches (as a Check sees it).
    async fn key_entry(&self, hash: &str) -> Result<Option<KeyEntry>, Denial> {
        self.fetch(
            &self.keys,
            hash,
            |entry| self.record_ttl(entry),
            || async {
                self.metrics.db_reads.inc();
                Ok(self.store.api_key_by_hash(hash).await?.map(|record| KeyEntry {
                    revoked: record.revoked_at.is_some(),
                    id: record.id,
                    tenant_id: record.client_id,
                    expires_at: record.expires_at,
                }))
            },
        )
        .await
    }

    /// A key as a Check would find it now, for the in-proxy filter's feed,
    /// from the cache only: `None` unless a Check read it recently (the
    /// filter asks after forwarding the key's first request, whose Check
    /// reads it), `Some(None)` when no key has this hash. So the filter's
    /// lookups never read the database: a flood of made-up keys costs what
    /// it costs without the fast path.
    pub fn key_record_cached(&self, hash: &str) -> Option<Option<EdgeKey>> {
        let Lookup::Fresh(entry) = self.keys.lookup(hash, Instant::now(), self.bus.is_connected()) else {
            return None;
        };
        Some(entry.map(|entry| EdgeKey {
            key_id: entry.id,
            tenant_id: entry.tenant_id,
            expires_at: entry.expires_at,
            revoked: entry.revoked,
        }))
    }

    /// The entries of a tenant's IP whitelist as a Check applies them, for
    /// the in-proxy filter; `None` when IP whitelists are not enforced.
    pub async fn ip_whitelist_entries(&self, tenant_id: &str) -> Result<Option<Vec<String>>, Denial> {
        if !self.settings.ip_whitelist_enabled {
            return Ok(None);
        }
        Ok(Some(self.ip_whitelist(tenant_id).await?.entries()))
    }

    /// Records that a key was used (at most once a minute per key): the
    /// filter's leases say so for the requests it allows.
    pub fn key_used(&self, key_id: &str, now: i64) {
        self.touch(key_id, now);
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionEntry>, Denial> {
        self.fetch(
            &self.sessions,
            session_id,
            |entry| self.record_ttl(entry),
            || async {
                self.metrics.db_reads.inc();
                Ok(self.store.session(session_id).await?.map(|s| SessionEntry {
                    revoked: s.revoked_at.is_some(),
                    tenant_id: s.client_id,
                    subject: s.subject,
                    kind: Some(s.kind),
                }))
            },
        )
        .await
    }

    pub async fn check_ip(&self, tenant_id: &str, ip: IpAddr) -> Result<(), Denial> {
        if !self.settings.ip_whitelist_enabled {
            return Ok(());
        }
        let list = self.ip_whitelist(tenant_id).await?;
        if list.contains(ip) { Ok(()) } else { Err(Denial::IpNotAllowed) }
    }

    async fn ip_whitelist(&self, tenant_id: &str) -> Result<Arc<IpWhitelist>, Denial> {
        self.whitelist(&self.ip_lists, WhitelistKind::Ip, tenant_id, |e| IpWhitelist::parse(e).ok().map(Arc::new)).await
    }

    pub async fn check_origin(&self, tenant_id: &str, origin: &str) -> Result<(), Denial> {
        if !self.settings.origin_validation_enabled {
            return Ok(());
        }
        let list = self.origin_whitelist(tenant_id).await?;
        if list.allows(origin) { Ok(()) } else { Err(Denial::OriginNotAllowed) }
    }

    async fn origin_whitelist(&self, tenant_id: &str) -> Result<Arc<OriginWhitelist>, Denial> {
        self.whitelist(&self.origin_lists, WhitelistKind::Origin, tenant_id, |e| {
            OriginWhitelist::parse(e).ok().map(Arc::new)
        })
        .await
    }

    /// The entries of a tenant's Origin whitelist as a Check applies them,
    /// for the in-proxy filter; `None` when Origins are not checked.
    pub async fn origin_whitelist_entries(&self, tenant_id: &str) -> Result<Option<Vec<String>>, Denial> {
        if !self.settings.origin_validation_enabled {
            return Ok(None);
        }
        Ok(Some(self.origin_whitelist(tenant_id).await?.entries().to_vec()))
    }

    async fn whitelist<V: Send + Sync + 'static>(
        &self,
        cache: &LocalCache<Arc<V>>,
        kind: WhitelistKind,
        tenant_id: &str,
        parse: impl Fn(&[String]) -> Option<Arc<V>>,
    ) -> Result<Arc<V>, Denial> {
        self.fetch(
            cache,
            tenant_id,
            |_| self.settings.fresh_for,
            || async {
                let shared_key = whitelist_cache_key(kind, tenant_id);
                let floor = self.whitelist_floors.get(&shared_key).unwrap_or(0);
                let mut stale_shared = false;
                if let Ok(Some(json)) = self.shared.get(&shared_key).await
                    && let Some(copy) = SharedWhitelist::from_json(&json)
                {
                    if copy.version >= floor
                        && let Some(list) = parse(&copy.entries)
                    {
                        return Ok(list);
                    }
                    stale_shared = true;
                    self.metrics.stale_shared_whitelists.inc();
                    tracing::warn!(
                        tenant_id,
                        ?kind,
                        shared = copy.version,
                        expected = floor,
                        "shared whitelist copy is older than its last change; reading the database"
                    );
                }
                self.metrics.db_reads.inc();
                let VersionedWhitelist { entries, version } = self.store.versioned_whitelist(kind, tenant_id).await?;
                // Entries were validated when written; one that no longer parses
                // (a rule got stricter) must not widen access: treat it as empty.
                let list = parse(&entries).unwrap_or_else(|| {
                    tracing::error!(tenant_id, ?kind, "stored whitelist no longer parses; treating it as empty");
                    parse(&[]).unwrap_or_else(|| unreachable!("an empty whitelist always parses"))
                });
                let json = SharedWhitelist { version, entries }.to_json();
                // Readers fill an empty slot or replace a copy known stale;
                // writers overwrite (see `whitelist_written`).
                let _ = if stale_shared {
                    self.shared.set(&shared_key, &json, self.settings.shared_ttl).await
                } else {
                    self.shared.set_if_absent(&shared_key, &json, self.settings.shared_ttl).await.map(|_| ())
                };
                Ok(list)
            },
        )
        .await
    }

    async fn fetch<V, Fut>(
        &self,
        cache: &LocalCache<V>,
        key: &str,
        fresh_for: impl Fn(&V) -> Duration,
        load: impl FnOnce() -> Fut,
    ) -> Result<V, Denial>
    where
        V: CacheValue,
        Fut: Future<Output = Result<V, StoreError>>,
    {
        let now = Instant::now();
        let stale = match cache.lookup(key, now, self.bus.is_connected()) {
            Lookup::Fresh(value) => {
                self.metrics.hot.cache_hits[cache.index].inc();
                return Ok(value);
            }
            Lookup::Stale(value, age) => Some((value, age)),
            Lookup::Miss => None,
        };
        self.metrics.hot.cache_misses[cache.index].inc();
        let epoch = cache.epoch();
        match load().await {
            Ok(value) => {
                let ttl = fresh_for(&value);
                cache.store(key, value.clone(), ttl, epoch);
                Ok(value)
            }
            Err(error) => match stale {
                Some((value, age)) if age < self.settings.stale_for => {
                    tracing::warn!(%error, cache = cache.name, "database unavailable; serving cached entry");
                    Ok(value)
                }
                _ => {
                    tracing::error!(%error, cache = cache.name, "database unavailable and nothing cached; denying");
                    Err(Denial::Unavailable)
                }
            },
        }
    }

    /// The tenant's quotas (rules/src/quota.rs). With the database down and
    /// nothing cached, the defaults: a quota must not turn an outage of the
    /// store into refusals of requests the other checks let through.
    pub async fn rate_limits(&self, tenant_id: &str) -> Limits {
        let loaded = self
            .fetch(
                &self.rate_limits,
                tenant_id,
                |_| self.settings.fresh_for,
                || async {
                    self.metrics.db_reads.inc();
                    Ok(self.store.rate_limits(tenant_id).await?.unwrap_or(DEFAULT_LIMITS))
                },
            )
            .await;
        loaded.unwrap_or(DEFAULT_LIMITS)
    }

    /// Records `last_used_at` at most once a minute per key, off the request path.
    fn touch(&self, key_id: &str, now: i64) {
        if self.last_touched.get(key_id).is_some_and(|at| now - at < 60) {
            return;
        }
        self.last_touched.insert(key_id.to_string(), now);
        let store = self.store.clone();
        let key_id = key_id.to_string();
        tokio::spawn(async move {
            if let Err(error) = store.touch_api_key(&key_id, now).await {
                tracing::debug!(%error, "could not record API key use");
            }
        });
    }

    /// Publishes a credential change. A failure means other processes may
    /// keep a stale entry until `fresh_for` passes; it is logged loudly.
    /// This process's caches change before the call returns.
    pub async fn publish(&self, event: Event) {
        let event = Arc::new(event);
        self.apply(&BusMessage::Event(event.clone()));
        if let Err(error) = self.bus.publish(Event::clone(&event)).await {
            tracing::error!(%error, "could not publish credential change to other processes");
        }
    }

    /// After a whitelist is written (at `version`): overwrite the shared
    /// copy, then tell every process to drop its parsed copy. If the shared
    /// copy cannot be written, the event's version marks the old one stale.
    pub async fn whitelist_written(&self, kind: WhitelistKind, tenant_id: &str, entries: &[String], version: i64) {
        let key = whitelist_cache_key(kind, tenant_id);
        let json = SharedWhitelist { version, entries: entries.to_vec() }.to_json();
        if let Err(error) = self.shared.set(&key, &json, self.settings.shared_ttl).await {
            tracing::warn!(%error, "could not update shared whitelist cache; readers will find its copy stale");
        }
        self.publish(Event::whitelist_changed(kind, tenant_id, version)).await;
    }
}

/// A whitelist's copy in the shared cache, with the version it was read or
/// written at. (A bare JSON array, as older versions wrote, is version 0.)
#[derive(Debug, Serialize, Deserialize)]
struct SharedWhitelist {
    version: i64,
    entries: Vec<String>,
}

impl SharedWhitelist {
    fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str(json)
            .ok()
            .or_else(|| serde_json::from_str(json).ok().map(|entries| SharedWhitelist { version: 0, entries }))
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> LocalCache<Option<u32>> {
        let settings = ValidatorSettings { capacity, negative_capacity: capacity, ..ValidatorSettings::default() };
        LocalCache::new(0, &settings)
    }

    fn fresh(cache: &LocalCache<Option<u32>>, key: &str) -> Option<Option<u32>> {
        match cache.lookup(key, Instant::now(), true) {
            Lookup::Fresh(value) => Some(value),
            _ => None,
        }
    }

    #[test]
    fn bounded_by_eviction_never_by_flushing_and_pins_stay() {
        let cache = cache(100);
        cache.pin("revoked", None, Duration::from_secs(60));
        cache.store("hot", Some(1), Duration::from_secs(60), cache.epoch());
        for _ in 0..20 {
            assert_eq!(fresh(&cache, "hot"), Some(Some(1)));
        }
        for i in 0..5_000 {
            cache.store(&format!("k{i}"), Some(i), Duration::from_secs(60), cache.epoch());
            cache.store(&format!("u{i}"), None, Duration::from_secs(60), cache.epoch());
        }
        cache.known.run_pending_tasks();
        cache.unknown.run_pending_tasks();
        assert!(cache.known.entry_count() <= 100 && cache.unknown.entry_count() <= 100);
        assert_eq!(fresh(&cache, "hot"), Some(Some(1)), "a frequently used entry survives the flood");
        assert_eq!(fresh(&cache, "revoked"), Some(None));
        // A pin is neither overwritten nor evicted.
        cache.store("revoked", Some(7), Duration::from_secs(60), cache.epoch());
        cache.evict("revoked");
        assert_eq!(fresh(&cache, "revoked"), Some(None));
    }

    #[test]
    fn a_load_racing_an_eviction_is_dropped_and_resync_makes_all_stale() {
        let cache = cache(100);
        let started = cache.epoch();
        cache.evict("k");
        cache.store("k", Some(1), Duration::from_secs(60), started);
        assert!(matches!(cache.lookup("k", Instant::now(), true), Lookup::Miss));
        cache.store("k", Some(1), Duration::from_secs(60), cache.epoch());
        cache.store("u", None, Duration::from_secs(60), cache.epoch());
        cache.mark_all_stale();
        assert!(matches!(cache.lookup("k", Instant::now(), true), Lookup::Stale(Some(1), _)));
        assert!(matches!(cache.lookup("u", Instant::now(), true), Lookup::Stale(None, _)));
        // A known answer replaces an unknown one, and the other way round.
        cache.store("u", Some(2), Duration::from_secs(60), cache.epoch());
        assert_eq!(fresh(&cache, "u"), Some(Some(2)));
        cache.store("u", None, Duration::from_secs(60), cache.epoch());
        assert_eq!(fresh(&cache, "u"), Some(None));
    }
}
