//! The audit log: who did what, from where.

use super::{Result, Store};

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
        RateLimitsUpdated = "rate_limits.updated",
        SessionLogoutAll = "session.logout_all",
        ClientPasswordChanged = "client.password_changed",
        ClientPasswordChangeFailed = "client.password_change_failed",
        EndUserRevoked = "end_user.revoked",
        /// The console's "try it" page started a session for a test end user.
        TestSessionCreated = "session.test_created",
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
    /// Increasing: the cursor of `audit_page`.
    pub id: i64,
    pub client_id: Option<String>,
    pub actor: Option<String>,
    pub action: String,
    pub ip: Option<String>,
    pub detail: Option<String>,
    pub created_at: i64,
}

impl Store {
    /// An audit entry that goes with no other change (e.g. a failed login).
    pub async fn audit(&self, entry: &AuditEntry, now: i64) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, entry, now).await
    }

    /// Deletes at most `batch` audit rows written before `before`; how many.
    pub async fn purge_audit(&self, before: i64, batch: i64) -> Result<u64> {
        let result = sqlx::query(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
        )
        .bind(before)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Newest first.
    pub async fn audit_log(&self, client_id: &str, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(sqlx::query_as("SELECT id, client_id, actor, action, ip, detail, created_at FROM audit_log WHERE client_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(client_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Newest first, at most `limit` rows older than the row `before` (all
    /// when `None`): one page of the tenant's activity. Uses the
    /// `audit_log_client (client_id, id)` index.
    pub async fn audit_page(&self, client_id: &str, before: Option<i64>, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, client_id, actor, action, ip, detail, created_at FROM audit_log \
             WHERE client_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(client_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

pub(super) async fn insert_audit(conn: &mut sqlx::AnyConnection, entry: &AuditEntry, now: i64) -> Result<()> {
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
