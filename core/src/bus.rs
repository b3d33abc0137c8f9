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
    /// Hands a message to this process's subscribers only (the change feed,
    /// core/src/feed.rs, delivers what it reads this way).
    fn deliver_locally(&self, message: BusMessage);
    /// Whether events from other processes reach this one right now. When
    /// false, caches must not be trusted past the point they could be stale.
    fn is_connected(&self) -> bool;
    fn kind(&self) -> &'static str;
}

/// In-process broadcast.
pub struct LocalBus {
    tx: broadcast::Sender<BusMessage>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self { tx: broadcast::channel(BUFFER).0 }
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
        let _ = self.tx.send(BusMessage::Event(Arc::new(event)));
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.tx.subscribe()
    }

    fn deliver_locally(&self, message: BusMessage) {
        let _ = self.tx.send(message);
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
    tx: broadcast::Sender<BusMessage>,
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
        let tx = broadcast::channel(BUFFER).0;
        let node = crate::id::new_id("node");
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(subscribe_loop(client, tx.clone(), node.clone(), connected.clone()));
        Ok(Self { tx, node, publisher, connected, task })
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

async fn subscribe_loop(
    client: redis::Client,
    tx: broadcast::Sender<BusMessage>,
    node: String,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match subscribe_once(&client, &tx, &node, &connected).await {
            Ok(()) => tracing::warn!("event bus subscription ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "event bus subscription failed; caches will be bypassed until it is back")
            }
        }
        if connected.swap(false, Ordering::SeqCst) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn subscribe_once(
    client: &redis::Client,
    tx: &broadcast::Sender<BusMessage>,
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
    let _ = tx.send(BusMessage::Resync);
    tracing::info!("event bus subscribed to Redis channel {CHANNEL}");
    let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                match serde_json::from_slice::<Envelope>(message.get_payload_bytes()) {
                    Ok(envelope) if envelope.node == node => {}
                    Ok(envelope) => { let _ = tx.send(BusMessage::Event(Arc::new(envelope.event))); }
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
        let _ = self.tx.send(BusMessage::Event(Arc::new(event)));
        let _: i64 = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(payload)
            .query_async(&mut self.publisher.clone())
            .await
            .map_err(|e| BusError(e.to_string()))?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.tx.subscribe()
    }

    fn deliver_locally(&self, message: BusMessage) {
        let _ = self.tx.send(message);
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
