//! Clients and their dashboard accounts.

use super::audit::{AuditAction, AuditEntry, insert_audit};
use super::changes::record_changes;
use super::keys::{NewApiKey, insert_key};
use super::{Result, Store, StoreError};
use crate::events::Event;

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

impl Store {
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
        record_changes(&mut tx, &[Event::key_changed(client_id, &key.id, &key.hash)], now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn account_by_email(&self, email: &str) -> Result<Option<AccountRecord>> {
        Ok(sqlx::query_as("SELECT id, client_id, email, password_hash FROM client_accounts WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A dashboard account of a tenant.
    pub async fn account(&self, client_id: &str, account_id: &str) -> Result<Option<AccountRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, client_id, email, password_hash FROM client_accounts WHERE id = $1 AND client_id = $2",
        )
        .bind(account_id)
        .bind(client_id)
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
}
