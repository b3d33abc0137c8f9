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

/// A live session as its owner sees it in a list.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionActivity {
    pub id: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// At sign-in, then at most once per `touch_session` interval.
    pub last_used_at: Option<i64>,
    /// The client address of the sign-in, then of the last recorded use.
    pub ip: Option<String>,
}

/// Which of a subject's sessions a bulk revocation ends.
#[derive(Debug, Clone, Copy)]
pub struct SessionsOf<'a> {
    pub client_id: &'a str,
    pub subject: &'a str,
    pub kind: SessionKind,
    /// Left alone (the caller's own session, on a password change).
    pub keep: Option<&'a str>,
}

/// A revoked session stays revocable while any of its tokens could still be
/// accepted: JWTs get 5 s of leeway past `exp`, so a session that expired
/// less than this long ago is revoked (and announced) too.
const EXPIRED_YET_REVOCABLE_SECONDS: i64 = 60;

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
            None,
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
        // The session and user, beside whatever the caller recorded (a test session's flag).
        let mut audit = audit.clone();
        let mut detail = match audit.detail.take() {
            Some(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        detail.insert("session_id".into(), new.session_id.clone().into());
        detail.insert("user_id".into(), new.user_id.clone().into());
        audit.detail = Some(serde_json::Value::Object(detail));
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A dashboard session, used now from the audit entry's address.
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
        let ip = audit.ip.as_deref();
        insert_session(&mut tx, session_id, client_id, account_id, SessionKind::Dashboard, expires_at, ip, now).await?;
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
        record_changes(&mut tx, &[Event::session_revoked(&session.client_id, &session.id)], now).await?;
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
                record_changes(&mut tx, &[Event::session_revoked(&session.client_id, session_id)], now).await?;
            }
        }
        tx.commit().await?;
        Ok(session)
    }

    /// The live sessions of one subject of one kind in one tenant, most
    /// recently used first.
    pub async fn active_sessions(
        &self,
        client_id: &str,
        subject: &str,
        kind: SessionKind,
        now: i64,
    ) -> Result<Vec<SessionActivity>> {
        Ok(sqlx::query_as(
            "SELECT id, created_at, expires_at, last_used_at, ip FROM sessions \
             WHERE client_id = $1 AND subject = $2 AND kind = $3 AND revoked_at IS NULL AND expires_at > $4 \
             ORDER BY COALESCE(last_used_at, created_at) DESC, id",
        )
        .bind(client_id)
        .bind(subject)
        .bind(kind.as_str())
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records a use of a session unless one was recorded within `every`
    /// seconds (the condition keeps concurrent touches to one write). True
    /// if this call wrote.
    pub async fn touch_session(&self, session_id: &str, ip: &str, now: i64, every: i64) -> Result<bool> {
        let changed = sqlx::query(
            "UPDATE sessions SET last_used_at = $1, ip = $2 \
             WHERE id = $3 AND revoked_at IS NULL AND (last_used_at IS NULL OR last_used_at <= $4)",
        )
        .bind(now)
        .bind(ip)
        .bind(session_id)
        .bind(now - every)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    /// Revokes every live session `of` names, with one audit row carrying
    /// the count, in one transaction (idempotent: a repeat revokes nothing
    /// and still writes its audit row). Returns the revoked session ids.
    pub async fn revoke_sessions(
        &self,
        of: SessionsOf<'_>,
        reason: &str,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let revoked = revoke_sessions_in(&mut tx, of, reason, now).await?;
        let mut audit = audit.clone();
        let mut detail = audit.detail.take().unwrap_or_else(|| serde_json::json!({}));
        detail["revoked"] = revoked.len().into();
        detail["reason"] = reason.into();
        audit.detail = Some(detail);
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Replaces a dashboard account's password hash and revokes the account's
    /// other dashboard sessions, with the audit row, in one transaction.
    /// The update is conditional on `current_hash`, the hash the caller
    /// verified the current password against: of two concurrent changes
    /// only one succeeds, and the other gets `None` (nothing changed), so
    /// a password verified against a hash no longer stored never wins.
    /// Returns the revoked session ids.
    pub async fn change_password(
        &self,
        account_id: &str,
        current_hash: &str,
        new_hash: &str,
        sessions: SessionsOf<'_>,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<Option<Vec<String>>> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE client_accounts SET password_hash = $1 WHERE id = $2 AND client_id = $3 AND password_hash = $4",
        )
        .bind(new_hash)
        .bind(account_id)
        .bind(sessions.client_id)
        .bind(current_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let revoked = revoke_sessions_in(&mut tx, sessions, "password_changed", now).await?;
        let mut audit = audit.clone();
        audit.detail = Some(serde_json::json!({ "revoked": revoked.len() }));
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_session(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    client_id: &str,
    subject: &str,
    kind: SessionKind,
    expires_at: i64,
    ip: Option<&str>,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id, client_id, subject, kind, created_at, expires_at, last_used_at, ip) \
         VALUES ($1, $2, $3, $4, $5, $6, $5, $7)",
    )
    .bind(id)
    .bind(client_id)
    .bind(subject)
    .bind(kind.as_str())
    .bind(now)
    .bind(expires_at)
    .bind(ip)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes the sessions `of` names inside `tx`; the ids revoked, so the
/// caller can announce one `SessionRevoked` for each. The conditional update
/// makes it idempotent: a session already revoked is not returned again.
async fn revoke_sessions_in(
    tx: &mut Transaction<'_, Any>,
    of: SessionsOf<'_>,
    reason: &str,
    now: i64,
) -> Result<Vec<String>> {
    let mut ids: Vec<String> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE client_id = $3 AND subject = $4 AND kind = $5 AND revoked_at IS NULL AND expires_at > $6 \
         AND id <> $7 RETURNING id",
    )
    .bind(now)
    .bind(reason)
    .bind(of.client_id)
    .bind(of.subject)
    .bind(of.kind.as_str())
    .bind(now - EXPIRED_YET_REVOCABLE_SECONDS)
    // No session id is empty: binding "" keeps one statement for both cases.
    .bind(of.keep.unwrap_or_default())
    .fetch_all(&mut **tx)
    .await?;
    ids.sort();
    let revoked: Vec<Event> = ids.iter().map(|id| Event::session_revoked(of.client_id, id)).collect();
    record_changes(tx, &revoked, now).await?;
    Ok(ids)
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
