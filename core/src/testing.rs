//! Test fixtures shared by every crate's tests (feature `testing`): real
//! PostgreSQL and Redis when they are reachable. Outside CI a missing service
//! skips the test with a message; with `CI=true` it fails loudly, so CI can
//! never pass without having run them.

use std::future::Future;
use std::time::Duration;

use crate::bus::LocalBus;
use crate::cache::MemoryCache;
use crate::config::{Backends, ServiceSecretArgs, StorageArgs};
use crate::secret::Secret;
use crate::store::Store;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub(crate) fn missing(service: &str, url: &str, error: &dyn std::fmt::Display) {
    if in_ci() {
        panic!(
            "CI=true but {service} at {url} is not usable: {error}. Start it (see README) — these tests must not be skipped in CI."
        );
    }
    eprintln!("SKIPPED: {service} at {url} is not usable ({error}); set CI=true to make this a failure");
}

pub fn postgres_base_url() -> String {
    std::env::var("CAAS_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_test_url() -> String {
    std::env::var("CAAS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A migrated in-memory SQLite store.
pub async fn sqlite_store() -> Store {
    let store = Store::connect("sqlite::memory:", 1).await.unwrap_or_else(|e| panic!("sqlite: {e}"));
    store.migrate().await.unwrap_or_else(|e| panic!("sqlite migrate: {e}"));
    store
}

/// A PostgreSQL database URL scoped to a fresh schema of its own, or `None`
/// (outside CI) when PostgreSQL is not reachable. The schema is dropped when
/// the returned guard is.
pub async fn postgres_url() -> Option<(String, SchemaGuard)> {
    use sqlx::Connection as _;
    let base = postgres_base_url();
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(conn) => conn,
        Err(e) => {
            missing("PostgreSQL", &base, &e);
            return None;
        }
    };
    let schema = crate::id::new_id("caas_t").to_ascii_lowercase();
    if let Err(e) = sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await {
        missing("PostgreSQL", &base, &e);
        return None;
    }
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    Some((url, SchemaGuard { base, schema }))
}

/// A migrated PostgreSQL store in a schema of its own.
pub async fn postgres_store() -> Option<(Store, SchemaGuard)> {
    let (url, guard) = postgres_url().await?;
    let store = Store::connect(&url, 4).await.unwrap_or_else(|e| panic!("postgres: {e}"));
    store.migrate().await.unwrap_or_else(|e| panic!("postgres migrate: {e}"));
    Some((store, guard))
}

/// Drops the test schema (from a thread of its own: Drop cannot await).
pub struct SchemaGuard {
    base: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                use sqlx::Connection as _;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
                    // Never hang a test run on a lock some leftover connection holds.
                    let _ = sqlx::query("SET lock_timeout = '5s'").execute(&mut conn).await;
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// The Redis URL, or `None` (outside CI) when Redis is not reachable.
pub async fn redis_url() -> Option<String> {
    let url = redis_test_url();
    let client = match redis::Client::open(url.as_str()) {
        Ok(client) => client,
        Err(e) => {
            missing("Redis", &url, &e);
            return None;
        }
    };
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Some(url),
        Ok(Err(e)) => {
            missing("Redis", &url, &e);
            None
        }
        Err(e) => {
            missing("Redis", &url, &e);
            None
        }
    }
}

/// An event bus that remembers what was published, in order, and otherwise
/// behaves like `LocalBus`: to prove a use case announced its change.
#[derive(Default)]
pub struct RecordingBus {
    local: crate::bus::LocalBus,
    published: std::sync::Mutex<Vec<crate::events::Event>>,
}

impl RecordingBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything published since the last call.
    pub fn take(&self) -> Vec<crate::events::Event> {
        std::mem::take(&mut *self.published.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl crate::bus::EventBus for RecordingBus {
    async fn publish(&self, event: crate::events::Event) -> Result<(), crate::bus::BusError> {
        self.published.lock().unwrap_or_else(|e| e.into_inner()).push(event.clone());
        self.local.publish(event).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::bus::BusMessage> {
        self.local.subscribe()
    }

    fn deliver_from_feed(&self, event: crate::events::Event) -> bool {
        self.local.deliver_from_feed(event)
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "recording"
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one async test body against SQLite and against PostgreSQL:
/// `store_conformance!(body_fn, ...)` where `async fn body_fn(store: Store)`.
#[macro_export]
macro_rules! store_conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::testing::sqlite_store().await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((store, _guard)) = $crate::testing::postgres_store().await else { return };
                    super::$name(store.clone()).await;
                    // Connections are closed before the schema is dropped.
                    store.close().await;
                }
            )*
        }
    };
}

/// In-process cache and bus over `store`: all one test process needs.
pub fn local_backends(store: Store) -> Backends {
    Backends {
        store,
        cache: std::sync::Arc::new(MemoryCache::new()),
        bus: std::sync::Arc::new(LocalBus::new()),
        feed: None,
    }
}

/// Storage arguments of a service built on `local_backends`: never connected.
pub fn unused_storage() -> StorageArgs {
    StorageArgs {
        database_url: "sqlite::memory:".into(),
        database_max_connections: 1,
        redis_url: None,
        change_feed_interval: std::time::Duration::from_secs(1),
        redis_ca_file: None,
    }
}

pub fn service_args(current: &str, previous: Option<&str>) -> ServiceSecretArgs {
    ServiceSecretArgs { service_secret: Some(Secret::new(current)), service_secret_previous: previous.map(Secret::new) }
}
