//! SDK and dashboard sessions, and the rotation of SDK refresh tokens.

use sqlx::{Any, Row as _, Transaction};

use super::audit::{AuditAction, AuditEntry, insert_audit};
use super::changes::record_changes;
use super::{Result, Store};
use crate::events::Event;

caas_rules::names! {
    /// Who a session belongs to: an end user (SDK) or a client's dashboard account.
    pub enum SessionKind {
        Sdk = "sdk",
        Dashboard = "dashboard",
    }
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

const SESSION_COLUMNS: &str = "id, client_id, subject, kind, created_at, expires_at, revoked_at";

impl Store {
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
        record_changes(&mut tx, [Event::session_revoked(&session.client_id, &session.id)], now).await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Reused(SessionRecord { revoked_at: session.revoked_at.or(Some(now)), ..session }))
    }

    /// Deletes at most `batch` sessions that expired before `before`, with
    /// their refresh tokens, and at most `batch` refresh tokens that did;
    /// how many of each. One short transaction: call again while it deletes
    /// a full batch.
    pub async fn purge_expired_sessions(&self, before: i64, batch: i64) -> Result<(u64, u64)> {
        let mut tx = self.pool.begin().await?;
        let expired = "SELECT id FROM sessions WHERE expires_at < $1 ORDER BY expires_at LIMIT $2";
        let mut tokens = sqlx::query(&format!("DELETE FROM refresh_tokens WHERE session_id IN ({expired})"))
            .bind(before)
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let sessions = sqlx::query(&format!("DELETE FROM sessions WHERE id IN ({expired})"))
            .bind(before)
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tokens += sqlx::query(
            "DELETE FROM refresh_tokens WHERE token_hash IN \
             (SELECT token_hash FROM refresh_tokens WHERE expires_at < $1 ORDER BY expires_at LIMIT $2)",
        )
        .bind(before)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((sessions, tokens))
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
            if let Some(session) = &session {
                record_changes(&mut tx, [Event::session_revoked(&session.client_id, session_id)], now).await?;
            }
        }
        tx.commit().await?;
        Ok(session)
    }
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
