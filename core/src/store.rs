//! Storage: one implementation over SQLite (the embedded default) and
//! PostgreSQL, through sqlx's `Any` driver. The SQL is dialect-neutral (`$n`
//! placeholders, text ids, integer Unix-second times, `RETURNING` and
//! `ON CONFLICT`, which both support); only the migrations differ per dialect.
//! Every change of more than one row, with its audit entry, is one transaction.

use std::str::FromStr as _;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor as _, Row as _, Transaction};

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

caas_rules::names! {
    /// An API key's place in rotation: at most one primary and one secondary.
    pub enum KeyRole {
        Primary = "primary",
        /// The former primary, until its grace expiry.
        Secondary = "secondary",
    }
}

caas_rules::names! {
    /// Who a session belongs to: an end user (SDK) or a client's dashboard account.
    pub enum SessionKind {
        Sdk = "sdk",
        Dashboard = "dashboard",
    }
}

caas_rules::names! {
    /// What an audit row records. The strings are what `audit_log.action` holds.
    pub enum AuditAction {
        ClientRegistered = "client.registered",
        ClientLogin = "client.login",
        ClientLoginFailed = "client.login_failed",
        ApiKeyRotated = "api_key.rotated",
        ApiKeyRevoked = "api_key.revoked",
        IpWhitelistUpdated = "ip_whitelist.updated",
        OriginWhitelistUpdated = "origin_whitelist.updated",
        SessionCreated = "session.created",
        SessionRefreshed = "session.refreshed",
        SessionRefreshTokenReused = "session.refresh_token_reused",
        SessionLogout = "session.logout",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClientRecord {
    pub id: String,
    pub name: String,
    pub email: String,
    pub created_at: i64,
}

#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccountRecord {
    pub id: String,
    pub client_id: String,
    pub email: String,
    pub password_hash: String,
}

impl std::fmt::Debug for AccountRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRecord")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub client_id: String,
    pub prefix: String,
    #[sqlx(try_from = "String")]
    pub role: KeyRole,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl ApiKeyRecord {
    /// Usable at `now`: not revoked, and not past its grace expiry.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// A key to store: its hash, never the key.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub hash: String,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub client_id: String,
    pub subject: String,
    #[sqlx(try_from = "String")]
    pub kind: SessionKind,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

impl SessionRecord {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhitelistKind {
    Ip,
    Origin,
}

impl WhitelistKind {
    fn table(self) -> &'static str {
        match self {
            WhitelistKind::Ip => "ip_whitelist",
            WhitelistKind::Origin => "origin_whitelist",
        }
    }
}

/// Who did what, from where: written in the same transaction as the change.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub client_id: Option<String>,
    pub actor: Option<String>,
    pub action: AuditAction,
    pub ip: Option<String>,
    pub detail: Option<serde_json::Value>,
}

impl AuditEntry {
    /// `action` by nobody in particular; set the other fields as known.
    pub fn new(action: AuditAction) -> Self {
        Self { client_id: None, actor: None, action, ip: None, detail: None }
    }
}

/// `action` stays a string: history may hold values from other versions.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct AuditRecord {
    pub client_id: Option<String>,
    pub actor: Option<String>,
    pub action: String,
    pub ip: Option<String>,
    pub detail: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewSdkSession {
    pub session_id: String,
    pub client_id: String,
    pub user_id: String,
    pub name: Option<String>,
    pub metadata: Option<String>,
    pub refresh_hash: String,
    pub refresh_expires_at: i64,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was live and is now used; a new one is stored.
    Rotated(SessionRecord),
    /// The token had been used before: the whole family is now revoked.
    Reused(SessionRecord),
    /// Unknown, expired, of a revoked or expired session, or of another tenant.
    Invalid,
}

/// A key a change touched, with the hash caches know it by: returned by the
/// change itself so that evicting it needs no read after the commit.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChangedKey {
    #[sqlx(flatten)]
    pub key: ApiKeyRecord,
    #[sqlx(rename = "key_hash")]
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct Rotation {
    pub new_key: ApiKeyRecord,
    /// The former primary, now secondary until its grace expiry.
    pub demoted: Option<ChangedKey>,
    /// The former secondary, revoked to keep at most two keys.
    pub revoked: Vec<ChangedKey>,
}

const KEY_COLUMNS: &str = "id, client_id, prefix, role, created_at, expires_at, revoked_at, last_used_at";
const SESSION_COLUMNS: &str = "id, client_id, subject, kind, created_at, expires_at, revoked_at";

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
            if let Some(parent) = std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", parent.display())))?;
            }
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

    /// For the other storage modules of this crate (chat).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
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

    // ---- clients -------------------------------------------------------

    /// Client, its dashboard account and its first (primary) key, at once.
    #[allow(clippy::too_many_arguments)]
    pub async fn register_client(
        &self,
        client_id: &str,
        name: &str,
        account_id: &str,
        email: &str,
        password_hash: &str,
        key: &NewApiKey,
        ip: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO clients (id, name, created_at, keys_changed_at) VALUES ($1, $2, $3, $3)")
            .bind(client_id)
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO client_accounts (id, client_id, email, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account_id)
        .bind(client_id)
        .bind(email)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(db)) = &inserted
            && db.is_unique_violation()
        {
            tx.rollback().await?;
            return Err(StoreError::EmailTaken);
        }
        inserted?;
        insert_key(&mut tx, client_id, key, now).await?;
        let audit = AuditEntry {
            client_id: Some(client_id.into()),
            actor: Some(account_id.into()),
            action: AuditAction::ClientRegistered,
            ip: ip.map(Into::into),
            detail: Some(serde_json::json!({ "key_id": key.id })),
        };
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn account_by_email(&self, email: &str) -> Result<Option<AccountRecord>> {
        Ok(sqlx::query_as("SELECT id, client_id, email, password_hash FROM client_accounts WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>> {
        Ok(sqlx::query_as(
            "SELECT c.id, c.name, a.email, c.created_at FROM clients c JOIN client_accounts a ON a.client_id = c.id WHERE c.id = $1 ORDER BY a.created_at LIMIT 1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    // ---- API keys ------------------------------------------------------

    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Keys usable at `now`, newest first.
    pub async fn active_api_keys(&self, client_id: &str, now: i64) -> Result<Vec<ApiKeyRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE client_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) ORDER BY created_at DESC, id DESC"
        ))
        .bind(client_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// New primary; the old primary becomes secondary until `now + grace`;
    /// an older secondary is revoked, so at most two keys are ever active.
    pub async fn rotate_api_key(
        &self,
        client_id: &str,
        key: &NewApiKey,
        grace_seconds: i64,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<Rotation> {
        let mut tx = self.pool.begin().await?;
        // Writing the client row first locks it (PostgreSQL) or the database
        // (SQLite): concurrent rotations of one tenant run one after another.
        sqlx::query("UPDATE clients SET keys_changed_at = $1 WHERE id = $2")
            .bind(now)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        let revoked: Vec<ChangedKey> = sqlx::query_as(&format!(
            "UPDATE api_keys SET revoked_at = $1 WHERE client_id = $2 AND role = 'secondary' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) RETURNING {KEY_COLUMNS}, key_hash"
        ))
        .bind(now)
        .bind(client_id)
        .fetch_all(&mut *tx)
        .await?;
        let grace_until = now + grace_seconds.max(0);
        let demoted: Option<ChangedKey> = sqlx::query_as(&format!(
            "UPDATE api_keys SET role = 'secondary', expires_at = CASE WHEN expires_at IS NULL OR expires_at > $1 THEN $1 ELSE expires_at END \
             WHERE client_id = $2 AND role = 'primary' AND revoked_at IS NULL RETURNING {KEY_COLUMNS}, key_hash"
        ))
        .bind(grace_until)
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        let new_key = insert_key(&mut tx, client_id, key, now).await?;
        let mut audit = audit.clone();
        audit.detail = Some(serde_json::json!({
            "new_key_id": key.id,
            "demoted_key_id": demoted.as_ref().map(|k| &k.key.id),
            "grace_until": demoted.as_ref().and_then(|k| k.key.expires_at),
            "revoked_key_ids": revoked.iter().map(|k| &k.key.id).collect::<Vec<_>>(),
        }));
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(Rotation { new_key, demoted, revoked })
    }

    /// Revokes one of the tenant's keys now. `None` if it has no such active key.
    pub async fn revoke_api_key(
        &self,
        client_id: &str,
        key_id: &str,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<Option<ChangedKey>> {
        let mut tx = self.pool.begin().await?;
        let revoked: Option<ChangedKey> = sqlx::query_as(&format!(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND client_id = $3 AND revoked_at IS NULL RETURNING {KEY_COLUMNS}, key_hash"
        ))
        .bind(now)
        .bind(key_id)
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        if revoked.is_some() {
            let mut audit = audit.clone();
            audit.detail = Some(serde_json::json!({ "key_id": key_id }));
            insert_audit(&mut tx, &audit, now).await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    /// The key's hash, to evict it from caches after a change.
    pub async fn api_key_hash(&self, key_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn touch_api_key(&self, key_id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- whitelists ----------------------------------------------------

    pub async fn whitelist(&self, kind: WhitelistKind, client_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(&format!("SELECT entry FROM {} WHERE client_id = $1 ORDER BY position", kind.table()))
            .bind(client_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Replaces every entry at once (entries are already validated).
    pub async fn replace_whitelist(
        &self,
        kind: WhitelistKind,
        client_id: &str,
        entries: &[String],
        audit: &AuditEntry,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("DELETE FROM {} WHERE client_id = $1", kind.table()))
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        for (position, entry) in entries.iter().enumerate() {
            sqlx::query(&format!(
                "INSERT INTO {} (client_id, position, entry, created_at) VALUES ($1, $2, $3, $4)",
                kind.table()
            ))
            .bind(client_id)
            .bind(position as i64)
            .bind(entry)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let mut audit = audit.clone();
        audit.detail = Some(serde_json::json!({ "entries": entries }));
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- sessions ------------------------------------------------------

    /// The end user (created on first sight), the session and its first
    /// refresh token.
    pub async fn create_sdk_session(&self, new: &NewSdkSession, audit: &AuditEntry, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO end_users (client_id, user_id, name, metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (client_id, user_id) DO UPDATE SET name = COALESCE(excluded.name, end_users.name), \
             metadata = COALESCE(excluded.metadata, end_users.metadata), updated_at = excluded.updated_at",
        )
        .bind(&new.client_id)
        .bind(&new.user_id)
        .bind(new.name.as_deref())
        .bind(new.metadata.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_session(
            &mut tx,
            &new.session_id,
            &new.client_id,
            &new.user_id,
            SessionKind::Sdk,
            new.refresh_expires_at,
            now,
        )
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&new.refresh_hash)
        .bind(&new.session_id)
        .bind(now)
        .bind(new.refresh_expires_at)
        .execute(&mut *tx)
        .await?;
        let mut audit = audit.clone();
        audit.detail = Some(serde_json::json!({ "session_id": new.session_id, "user_id": new.user_id }));
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_dashboard_session(
        &self,
        session_id: &str,
        client_id: &str,
        account_id: &str,
        expires_at: i64,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_session(&mut tx, session_id, client_id, account_id, SessionKind::Dashboard, expires_at, now).await?;
        let mut audit = audit.clone();
        audit.detail = Some(serde_json::json!({ "session_id": session_id }));
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        Ok(sqlx::query_as(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"))
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The session a refresh token belongs to, whatever the token's state.
    pub async fn session_by_refresh_token(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1)"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Uses a refresh token once. The conditional update is the race guard:
    /// of two concurrent uses exactly one sees the token unused; the other
    /// then finds it used, which is reuse, and revokes the family (RFC 9700
    /// §4.14.2). `expected_tenant` (from an API-key caller) must match.
    pub async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_hash: &str,
        new_expires_at: i64,
        expected_tenant: Option<&str>,
        ip: Option<&str>,
        now: i64,
    ) -> Result<RefreshOutcome> {
        let mut tx = self.pool.begin().await?;
        let claimed: Option<String> = sqlx::query_scalar(
            "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING session_id",
        )
        .bind(now)
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let tenant_ok = |session: &SessionRecord| expected_tenant.is_none_or(|t| t == session.client_id);

        if let Some(session_id) = claimed {
            let session = session_in(&mut tx, &session_id).await?;
            let Some(session) = session.filter(|s| s.is_active(now) && tenant_ok(s)) else {
                // Rolled back: the token stays as it was.
                tx.rollback().await?;
                return Ok(RefreshOutcome::Invalid);
            };
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(new_hash)
            .bind(&session.id)
            .bind(now)
            .bind(new_expires_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE sessions SET expires_at = $1 WHERE id = $2")
                .bind(new_expires_at)
                .bind(&session.id)
                .execute(&mut *tx)
                .await?;
            let audit = session_audit(&session, AuditAction::SessionRefreshed, ip);
            insert_audit(&mut tx, &audit, now).await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Rotated(SessionRecord { expires_at: new_expires_at, ..session }));
        }

        let used: Option<(String, Option<i64>)> =
            sqlx::query("SELECT session_id, used_at FROM refresh_tokens WHERE token_hash = $1")
                .bind(presented_hash)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| -> std::result::Result<_, sqlx::Error> { Ok((row.try_get(0)?, row.try_get(1)?)) })
                .transpose()?;
        let Some((session_id, Some(_used_at))) = used else {
            tx.rollback().await?;
            return Ok(RefreshOutcome::Invalid);
        };
        let Some(session) = session_in(&mut tx, &session_id).await?.filter(tenant_ok) else {
            tx.rollback().await?;
            return Ok(RefreshOutcome::Invalid);
        };
        sqlx::query("UPDATE sessions SET revoked_at = $1, revoked_reason = 'refresh_token_reused' WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(&session.id)
            .execute(&mut *tx)
            .await?;
        let audit = session_audit(&session, AuditAction::SessionRefreshTokenReused, ip);
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Reused(SessionRecord { revoked_at: session.revoked_at.or(Some(now)), ..session }))
    }

    /// Revokes a session (idempotent). `None` if there is no such session.
    pub async fn revoke_session(
        &self,
        session_id: &str,
        reason: &str,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<Option<SessionRecord>> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(session_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let session = session_in(&mut tx, session_id).await?;
        if changed > 0 {
            let mut audit = audit.clone();
            audit.detail = Some(serde_json::json!({ "session_id": session_id, "reason": reason }));
            insert_audit(&mut tx, &audit, now).await?;
        }
        tx.commit().await?;
        Ok(session)
    }

    // ---- audit ---------------------------------------------------------

    /// An audit entry that goes with no other change (e.g. a failed login).
    pub async fn audit(&self, entry: &AuditEntry, now: i64) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, entry, now).await
    }

    /// Newest first.
    pub async fn audit_log(&self, client_id: &str, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(sqlx::query_as("SELECT client_id, actor, action, ip, detail, created_at FROM audit_log WHERE client_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(client_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}

async fn insert_key(tx: &mut Transaction<'_, Any>, client_id: &str, key: &NewApiKey, now: i64) -> Result<ApiKeyRecord> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO api_keys (id, client_id, key_hash, prefix, role, created_at) VALUES ($1, $2, $3, $4, 'primary', $5) RETURNING {KEY_COLUMNS}"
    ))
    .bind(&key.id)
    .bind(client_id)
    .bind(&key.hash)
    .bind(&key.prefix)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?)
}

async fn insert_session(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    client_id: &str,
    subject: &str,
    kind: SessionKind,
    expires_at: i64,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id, client_id, subject, kind, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(client_id)
    .bind(subject)
    .bind(kind.as_str())
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn session_in(tx: &mut Transaction<'_, Any>, session_id: &str) -> Result<Option<SessionRecord>> {
    Ok(sqlx::query_as(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"))
        .bind(session_id)
        .fetch_optional(&mut **tx)
        .await?)
}

fn session_audit(session: &SessionRecord, action: AuditAction, ip: Option<&str>) -> AuditEntry {
    AuditEntry {
        client_id: Some(session.client_id.clone()),
        actor: Some(session.subject.clone()),
        action,
        ip: ip.map(Into::into),
        detail: Some(serde_json::json!({ "session_id": session.id })),
    }
}

async fn insert_audit(conn: &mut sqlx::AnyConnection, entry: &AuditEntry, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (client_id, actor, action, ip, detail, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(entry.client_id.as_deref())
    .bind(entry.actor.as_deref())
    .bind(entry.action.as_str())
    .bind(entry.ip.as_deref())
    .bind(entry.detail.as_ref().map(|d| d.to_string()))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
