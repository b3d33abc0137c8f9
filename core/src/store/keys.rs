//! API keys: records, rotation, revocation and last use.

use sqlx::{Any, Transaction};

use super::audit::{AuditEntry, insert_audit};
use super::changes::record_changes;
use super::{Result, Store};
use crate::events::Event;

caas_rules::names! {
    /// An API key's place in rotation: at most one primary and one secondary.
    pub enum KeyRole {
        Primary = "primary",
        /// The former primary, until its grace expiry.
        Secondary = "secondary",
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

impl Store {
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
        let changed: Vec<Event> = demoted
            .iter()
            .chain(&revoked)
            .map(|c| Event::key_changed(client_id, &c.key.id, &c.hash))
            .chain([Event::key_changed(client_id, &key.id, &key.hash)])
            .collect();
        record_changes(&mut tx, &changed, now).await?;
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
        if let Some(revoked) = &revoked {
            let mut audit = audit.clone();
            audit.detail = Some(serde_json::json!({ "key_id": key_id }));
            insert_audit(&mut tx, &audit, now).await?;
            record_changes(&mut tx, &[Event::key_changed(client_id, key_id, &revoked.hash)], now).await?;
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
}

pub(super) async fn insert_key(
    tx: &mut Transaction<'_, Any>,
    client_id: &str,
    key: &NewApiKey,
    now: i64,
) -> Result<ApiKeyRecord> {
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
