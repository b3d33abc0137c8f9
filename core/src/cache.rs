//! A shared cache: Redis when `REDIS_URL` is set, in-process otherwise.
//! Values are strings (JSON); every entry has a time to live. Callers treat
//! errors as a miss: the database stays the source of truth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Redis could not be reached or answered badly. Logged, never shown.
#[derive(Debug, thiserror::Error)]
#[error("cache unavailable: {0}")]
pub struct CacheError(String);

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        CacheError(e.to_string())
    }
}

#[async_trait]
pub trait Cache: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError>;
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError>;
    /// Sets only when absent; true when it was set. Readers that fill the
    /// cache use this so they never overwrite a newer value a writer put.
    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, CacheError>;
    async fn delete(&self, key: &str) -> Result<(), CacheError>;
    /// Adds one to a counter that lives `window` from its first hit;
    /// returns the new count and the seconds until the window ends.
    async fn increment(&self, key: &str, window: Duration) -> Result<(u64, u64), CacheError>;
    /// Takes one off a live counter (never below zero, never creating one):
    /// gives back a reservation `increment` made.
    async fn decrement(&self, key: &str) -> Result<(), CacheError>;
    /// The counter's value and seconds left, without changing it.
    async fn counter(&self, key: &str) -> Result<(u64, u64), CacheError>;
    /// Adds `member` to the set at `key`, whose time to live becomes `ttl`.
    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), CacheError>;
    async fn set_remove(&self, key: &str, member: &str) -> Result<(), CacheError>;
    async fn set_members(&self, key: &str) -> Result<Vec<String>, CacheError>;
    /// Shared quotas' one round trip: adds each count to its counter (which
    /// then lives `ttl`) and returns the new totals, in order; marks `member`
    /// alive in `group` for `ttl` and returns how many members are alive.
    /// A count may be negative: requests counted earlier and given back.
    async fn add_counts(
        &self,
        group: &str,
        member: &str,
        counts: &[(String, i64)],
        ttl: Duration,
    ) -> Result<(Vec<i64>, u64), CacheError>;
    async fn ping(&self) -> Result<(), CacheError>;
    /// `redis` or `memory`, for logs and health.
    fn kind(&self) -> &'static str;
}

/// In-process cache: correct only when every user of it is in this process.
#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (String, Instant)>>,
    sets: Mutex<HashMap<String, (std::collections::HashSet<String>, Instant)>>,
    /// Group → member → alive until.
    members: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl MemoryCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (String, Instant)>, Instant) -> T) -> T {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (_, expiry)| *expiry > now);
        }
        f(&mut map, now)
    }
}

fn live(entry: Option<&(String, Instant)>, now: Instant) -> Option<&(String, Instant)> {
    entry.filter(|(_, expiry)| *expiry > now)
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        Ok(self.with(|map, now| live(map.get(key), now).map(|(v, _)| v.clone())))
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        self.with(|map, now| map.insert(key.to_string(), (value.to_string(), now + ttl)));
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, CacheError> {
        Ok(self.with(|map, now| {
            if live(map.get(key), now).is_some() {
                return false;
            }
            map.insert(key.to_string(), (value.to_string(), now + ttl));
            true
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.with(|map, _| map.remove(key));
        Ok(())
    }

    async fn increment(&self, key: &str, window: Duration) -> Result<(u64, u64), CacheError> {
        Ok(self.with(|map, now| {
            let (count, expiry) = match live(map.get(key), now) {
                Some((v, expiry)) => (v.parse::<u64>().unwrap_or(0) + 1, *expiry),
                None => (1, now + window),
            };
            map.insert(key.to_string(), (count.to_string(), expiry));
            (count, seconds_left(expiry, now))
        }))
    }

    async fn decrement(&self, key: &str) -> Result<(), CacheError> {
        self.with(|map, now| {
            if let Some((value, expiry)) = live(map.get(key), now).cloned() {
                let count = value.parse::<u64>().unwrap_or(0).saturating_sub(1);
                map.insert(key.to_string(), (count.to_string(), expiry));
            }
        });
        Ok(())
    }

    async fn counter(&self, key: &str) -> Result<(u64, u64), CacheError> {
        Ok(self.with(|map, now| match live(map.get(key), now) {
            Some((v, expiry)) => (v.parse().unwrap_or(0), seconds_left(*expiry, now)),
            None => (0, 0),
        }))
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), CacheError> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if sets.len() > 100_000 {
            sets.retain(|_, (_, expiry)| *expiry > now);
        }
        let entry = sets.entry(key.to_string()).or_insert_with(|| (Default::default(), now));
        if entry.1 <= now {
            entry.0.clear();
        }
        entry.0.insert(member.to_string());
        entry.1 = now + ttl;
        Ok(())
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<(), CacheError> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((members, _)) = sets.get_mut(key) {
            members.remove(member);
            if members.is_empty() {
                sets.remove(key);
            }
        }
        Ok(())
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, CacheError> {
        let sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        Ok(sets
            .get(key)
            .filter(|(_, expiry)| *expiry > Instant::now())
            .map(|(m, _)| m.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn add_counts(
        &self,
        group: &str,
        member: &str,
        counts: &[(String, i64)],
        ttl: Duration,
    ) -> Result<(Vec<i64>, u64), CacheError> {
        let totals = self.with(|map, now| {
            counts
                .iter()
                .map(|(key, n)| {
                    let total = live(map.get(key), now).and_then(|(v, _)| v.parse::<i64>().ok()).unwrap_or(0) + n;
                    map.insert(key.clone(), (total.to_string(), now + ttl));
                    total
                })
                .collect()
        });
        let mut groups = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let alive = groups.entry(group.to_string()).or_default();
        alive.insert(member.to_string(), now + ttl);
        alive.retain(|_, until| *until > now);
        Ok((totals, alive.len() as u64))
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

fn seconds_left(expiry: Instant, now: Instant) -> u64 {
    expiry.saturating_duration_since(now).as_secs_f64().ceil() as u64
}

/// Redis-backed cache. Operations time out quickly so that a Redis outage
/// degrades to database reads instead of stalling requests.
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
}

impl RedisCache {
    /// Connects lazily: a Redis that is down at start is retried, not fatal.
    pub fn new(url: &str) -> Result<Self, CacheError> {
        Self::from_client(redis::Client::open(url)?)
    }

    /// On a client already set up (for `rediss://`, with the CAs to trust:
    /// `StorageArgs` builds it).
    pub fn from_client(client: redis::Client) -> Result<Self, CacheError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(Self { conn: ConnectionManager::new_lazy_with_config(client, config)? })
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        Ok(self.conn.clone().get(key).await?)
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        let () = self.conn.clone().set_ex(key, value, ttl.as_secs().max(1)).await?;
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, CacheError> {
        let reply: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.is_some())
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let _: i64 = self.conn.clone().del(key).await?;
        Ok(())
    }

    async fn increment(&self, key: &str, window: Duration) -> Result<(u64, u64), CacheError> {
        // EXPIRE NX starts the window on the first hit only (Redis >= 7).
        let (count, ttl): (u64, i64) = redis::pipe()
            .atomic()
            .incr(key, 1)
            .cmd("EXPIRE")
            .arg(key)
            .arg(window.as_secs().max(1))
            .arg("NX")
            .ignore()
            .ttl(key)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((count, ttl.max(0) as u64))
    }

    async fn decrement(&self, key: &str) -> Result<(), CacheError> {
        // A script, so that the window's expiry is kept and a counter that
        // expired meanwhile is not recreated without one.
        const SCRIPT: &str = "if (tonumber(redis.call('GET', KEYS[1])) or 0) > 0 then \
                              return redis.call('DECR', KEYS[1]) end return 0";
        let _: i64 = redis::cmd("EVAL").arg(SCRIPT).arg(1).arg(key).query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn counter(&self, key: &str) -> Result<(u64, u64), CacheError> {
        let (count, ttl): (Option<u64>, i64) =
            redis::pipe().get(key).ttl(key).query_async(&mut self.conn.clone()).await?;
        Ok((count.unwrap_or(0), ttl.max(0) as u64))
    }

    async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), CacheError> {
        let () = redis::pipe()
            .atomic()
            .sadd(key, member)
            .ignore()
            .expire(key, ttl.as_secs().max(1) as i64)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn set_remove(&self, key: &str, member: &str) -> Result<(), CacheError> {
        let _: i64 = self.conn.clone().srem(key, member).await?;
        Ok(())
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, CacheError> {
        Ok(self.conn.clone().smembers(key).await?)
    }

    async fn add_counts(
        &self,
        group: &str,
        member: &str,
        counts: &[(String, i64)],
        ttl: Duration,
    ) -> Result<(Vec<i64>, u64), CacheError> {
        // One pipeline, not a transaction: each INCRBY is atomic on its own,
        // which is all a caller needs to tell its adds from everyone else's.
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut pipe = redis::pipe();
        for (key, n) in counts {
            pipe.incr(key, *n).cmd("PEXPIRE").arg(key).arg(ttl_ms).ignore();
        }
        // Each member's score is when it stops being alive.
        pipe.zadd(group, member, now_ms.saturating_add(ttl_ms))
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(group)
            .arg("-inf")
            .arg(format!("({now_ms}"))
            .ignore()
            .zcard(group)
            .cmd("PEXPIRE")
            .arg(group)
            .arg(ttl_ms)
            .ignore();
        let mut totals: Vec<i64> = pipe.query_async(&mut self.conn.clone()).await?;
        let alive = totals.pop().ok_or_else(|| CacheError("empty pipeline reply".into()))?.max(0) as u64;
        if totals.len() != counts.len() {
            return Err(CacheError("pipeline reply of the wrong length".into()));
        }
        Ok((totals, alive))
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
