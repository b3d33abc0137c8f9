//! The event bus: how a credential change in one process reaches the caches
//! of every other. Redis pub/sub across processes when `REDIS_URL` is set; an
//! in-process broadcast otherwise (correct only under `caas up`).
//!
//! Publishing always delivers to this process first, so a local revocation
//! never depends on Redis being up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::cache::RedisCache;
use crate::events::Event;

const CHANNEL: &str = "caas:events";
const BUFFER: usize = 4096;

#[derive(Debug, Clone)]
pub enum BusMessage {
    Event(Arc<Event>),
    /// Events may have been missed (the shared bus reconnected, or this
    /// subscriber lagged): drop every cached credential decision.
    Resync,
    /// The shared bus lost its subscription: events from other processes
    /// stop arriving until it is back (and a `Resync` follows). Sent once,
    /// when `is_connected` turns false, so that a subscriber which tells
    /// others what it knows (ext-authz's feed, ext-authz/src/edge.rs) can
    /// say at once that it no longer knows.
    Disconnected,
}

#[derive(Debug, thiserror::Error)]
#[error("event bus unavailable: {0}")]
pub struct BusError(String);

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Delivers locally, then to other processes. `Err` means other
    /// processes may not have seen it; the local delivery still happened.
    async fn publish(&self, event: Event) -> Result<(), BusError>;
    fn subscribe(&self) -> broadcast::Receiver<BusMessage>;
    /// Hands a change read from the durable feed (core/src/feed.rs) to this
    /// process's subscribers, unless the bus already delivered that same
    /// change here (then it returns false): each change evicts once, not
    /// once per path.
    fn deliver_from_feed(&self, event: Event) -> bool;
    /// Whether events from other processes reach this one right now. When
    /// false, caches must not be trusted past the point they could be stale.
    fn is_connected(&self) -> bool;
    fn kind(&self) -> &'static str;
}

/// How long a change delivered over the bus is remembered, so that the
/// feed (which reads it about a period later) does not deliver it again.
const RECENT_FOR: Duration = Duration::from_secs(60);
/// Changes remembered at most; past it, the oldest are forgotten (which only
/// costs a second eviction of theirs).
const RECENT_CAPACITY: usize = 10_000;

/// Credential changes delivered to this process's subscribers lately, with
/// how many times each: two identical changes (a key created, then revoked)
/// are two deliveries, and the feed skips only as many as came.
#[derive(Default)]
struct Recent(std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>);

impl Recent {
    fn key(event: &Event) -> Option<String> {
        // Messages are not credential changes and never come from the feed.
        if matches!(event, Event::MessageCreated { .. }) {
            return None;
        }
        serde_json::to_string(event).ok()
    }

    fn saw(&self, event: &Event) {
        let Some(key) = Self::key(event) else { return };
        let now = std::time::Instant::now();
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= RECENT_CAPACITY {
            recent.retain(|_, (_, at)| now.duration_since(*at) < RECENT_FOR);
            if recent.len() >= RECENT_CAPACITY {
                let oldest = recent.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    recent.remove(&oldest);
                }
            }
        }
        let entry = recent.entry(key).or_insert((0, now));
        *entry = (entry.0 + 1, now);
    }

    /// Whether `event` was delivered lately and not yet matched by the feed.
    fn take(&self, event: &Event) -> bool {
        let Some(key) = Self::key(event) else { return false };
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match recent.get_mut(&key) {
            Some((count, at)) if *count > 0 && at.elapsed() < RECENT_FOR => {
                *count -= 1;
                if *count == 0 {
                    recent.remove(&key);
                }
                true
            }
            _ => false,
        }
    }
}

/// This process's subscribers, and what they were handed lately.
#[derive(Clone)]
struct Deliveries {
    tx: broadcast::Sender<BusMessage>,
    recent: Arc<Recent>,
}

impl Deliveries {
    fn new() -> Self {
        Self { tx: broadcast::channel(BUFFER).0, recent: Arc::default() }
    }

    fn event(&self, event: Event) {
        self.recent.saw(&event);
        let _ = self.tx.send(BusMessage::Event(Arc::new(event)));
    }

    fn feed_event(&self, event: Event) -> bool {
        if self.recent.take(&event) {
            return false;
        }
        let _ = self.tx.send(BusMessage::Event(Arc::new(event)));
        true
    }
}

/// In-process broadcast.
pub struct LocalBus {
    deliveries: Deliveries,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self { deliveries: Deliveries::new() }
    }
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        self.deliveries.event(event);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.deliveries.tx.subscribe()
    }

    fn deliver_from_feed(&self, event: Event) -> bool {
        self.deliveries.feed_event(event)
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The publishing process, so it can skip its own (already delivered) events.
    node: String,
    event: Event,
}

/// Redis pub/sub. A background task holds the subscription and reconnects;
/// after every (re)connect it broadcasts `Resync`.
pub struct RedisBus {
    deliveries: Deliveries,
    node: String,
    publisher: ConnectionManager,
    connected: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RedisBus {
    /// Must be called inside a Tokio runtime; does not wait for Redis.
    pub fn start(url: &str) -> Result<Self, BusError> {
        Self::start_on(redis::Client::open(url).map_err(|e| BusError(e.to_string()))?)
    }

    /// On a client already set up (for `rediss://`, with the CAs to trust).
    pub fn start_on(client: redis::Client) -> Result<Self, BusError> {
        let publisher = RedisCache::from_client(client.clone()).map_err(|e| BusError(e.to_string()))?.connection();
        let deliveries = Deliveries::new();
        let node = crate::id::new_id("node");
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(subscribe_loop(client, deliveries.clone(), node.clone(), connected.clone()));
        Ok(Self { deliveries, node, publisher, connected, task })
    }

    /// Waits until the subscription is live (tests, and start-up ordering).
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.is_connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

async fn subscribe_loop(client: redis::Client, deliveries: Deliveries, node: String, connected: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match subscribe_once(&client, &deliveries, &node, &connected).await {
            Ok(()) => tracing::warn!("event bus subscription ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "event bus subscription failed; caches will be bypassed until it is back")
            }
        }
        if connected.swap(false, Ordering::SeqCst) {
            let _ = deliveries.tx.send(BusMessage::Disconnected);
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn subscribe_once(
    client: &redis::Client,
    deliveries: &Deliveries,
    node: &str,
    connected: &AtomicBool,
) -> Result<(), redis::RedisError> {
    let pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    let (mut sink, mut stream) = pubsub.split();
    sink.subscribe(CHANNEL).await?;
    connected.store(true, Ordering::SeqCst);
    // Anything published while we were away is lost: start from empty caches.
    let _ = deliveries.tx.send(BusMessage::Resync);
    tracing::info!("event bus subscribed to Redis channel {CHANNEL}");
    let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                match serde_json::from_slice::<Envelope>(message.get_payload_bytes()) {
                    Ok(envelope) if envelope.node == node => {}
                    Ok(envelope) => deliveries.event(envelope.event),
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed event on {CHANNEL}"),
                }
            }
            _ = heartbeat.tick() => {
                // A silent peer (no RST) would otherwise leave us deaf.
                tokio::time::timeout(Duration::from_secs(2), sink.ping::<redis::Value>())
                    .await
                    .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
            }
        }
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        let payload = serde_json::to_string(&Envelope { node: self.node.clone(), event: event.clone() })
            .map_err(|e| BusError(e.to_string()))?;
        self.deliveries.event(event);
        let _: i64 = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(payload)
            .query_async(&mut self.publisher.clone())
            .await
            .map_err(|e| BusError(e.to_string()))?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.deliveries.tx.subscribe()
    }

    fn deliver_from_feed(&self, event: Event) -> bool {
        self.deliveries.feed_event(event)
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_feed_delivers_only_what_the_bus_did_not() {
        let bus = LocalBus::new();
        let mut seen = bus.subscribe();
        let created = Event::key_changed("t", "k", "h");
        // A key created, then revoked: two identical events, both over the bus.
        bus.publish(created.clone()).await.unwrap();
        bus.publish(created.clone()).await.unwrap();
        assert!(!bus.deliver_from_feed(created.clone()) && !bus.deliver_from_feed(created.clone()));
        // A third change whose bus message was lost: the feed delivers it.
        assert!(bus.deliver_from_feed(created.clone()));
        let mut delivered = 0;
        while let Ok(BusMessage::Event(_)) = seen.try_recv() {
            delivered += 1;
        }
        assert_eq!(delivered, 3, "each change once");
        // Messages are never remembered (the feed never carries them).
        let revoked = Event::session_revoked("t", "s");
        assert!(bus.deliver_from_feed(revoked));
    }
}
