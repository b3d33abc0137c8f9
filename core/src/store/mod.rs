//! Storage: one implementation over SQLite (the embedded default) and
//! PostgreSQL, through sqlx's `Any` driver. The SQL is dialect-neutral (`$n`
//! placeholders, text ids, integer Unix-second times, `RETURNING` and
//! `ON CONFLICT`, which both support); only the migrations differ per dialect.
//! Every change of more than one row, with its audit entry, is one transaction.
//!
//! One file per aggregate, each with its records and its queries: clients
//! (and dashboard accounts), keys, whitelists, quotas, sessions, audit and chat.

use std::str::FromStr as _;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor as _};

mod audit;
mod changes;
mod chat;
mod clients;
mod keys;
mod quotas;
mod sessions;
mod whitelists;

pub use audit::{AuditAction, AuditEntry, AuditRecord};
pub use changes::Change;
pub use chat::ConversationRecord;
pub use clients::{AccountRecord, ClientRecord};
pub use keys::{ApiKeyRecord, ChangedKey, KeyRole, NewApiKey, Rotation};
pub use quotas::RateLimitsChange;
pub use sessions::{NewSdkSession, RefreshOutcome, SessionActivity, SessionKind, SessionRecord, SessionsOf};
pub use whitelists::{VersionedWhitelist, WhitelistKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Registration with an address already in use: 409 `email_taken`.
    #[error("email address is already registered")]
    EmailTaken,
    /// The database is unreachable or failing: 503, details only in logs.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database URL or migrations are wrong: fatal at start.
    #[error("database setup failed: {0}")]
    Setup(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e)
    }
}

type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }
}

/// A stored or serialized value outside its fixed set.
pub use caas_rules::names::Unknown as UnknownValue;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dialect", &self.dialect).finish_non_exhaustive()
    }
}

static DRIVERS: Once = Once::new();

/// A new SQLite file and any folders it needs are made readable by their
/// owner only (0600, 0700): the file holds emails, password hashes and
/// messages. Existing files and folders are left as their owner set them.
fn create_private_file(path: &std::path::Path) -> Result<()> {
    let setup = |e: std::io::Error| StoreError::Setup(format!("cannot create {}: {e}", path.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(setup)?;
    }
    if !path.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path).map_err(setup)?;
    }
    Ok(())
}

impl Store {
    /// Opens the database (creating a SQLite file and its folder if missing).
    /// Does not migrate: call `migrate` (services do at start).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let dialect = Dialect::of_url(url)
            .ok_or_else(|| StoreError::Setup("DATABASE_URL must start with sqlite:// or postgres://".into()))?;
        let mut url = url.to_string();
        if dialect == Dialect::Sqlite && !url.contains(":memory:") {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            create_private_file(std::path::Path::new(path))?;
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
        }
        let options =
            AnyConnectOptions::from_str(&url).map_err(|e| StoreError::Setup(format!("invalid DATABASE_URL: {e}")))?;
        let pool = AnyPoolOptions::new()
            // SQLite allows one writer; one connection avoids lock-upgrade
            // deadlocks and lets `sqlite::memory:` be one database.
            .max_connections(if dialect == Dialect::Sqlite { 1 } else { max_connections.max(1) })
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        conn.execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Setup(format!("cannot open database: {e}")))?;
        Ok(Self { pool, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        migrator.run(&self.pool).await.map_err(|e| StoreError::Setup(format!("migration failed: {e}")))
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn a_new_sqlite_database_is_private_to_its_owner() {
        let dir = std::env::temp_dir().join(format!("caas-private-{}", crate::id::new_id("t")));
        let file = dir.join("nested").join("caas.db");
        let store = super::Store::connect(&format!("sqlite://{}", file.display()), 1).await.unwrap();
        store.migrate().await.unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("nested")), 0o700);
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
