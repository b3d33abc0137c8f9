//! IP and origin whitelists: ordered entries, replaced as a whole.

use super::audit::{AuditEntry, insert_audit};
use super::changes::record_changes;
use super::{Result, Store};
use crate::events::Event;

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

    /// What `whitelist_versions.kind` holds.
    fn name(self) -> &'static str {
        match self {
            WhitelistKind::Ip => "ip",
            WhitelistKind::Origin => "origin",
        }
    }
}

/// A whitelist with the version it was read at (0: never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedWhitelist {
    pub entries: Vec<String>,
    pub version: i64,
}

impl Store {
    pub async fn whitelist(&self, kind: WhitelistKind, client_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(&format!("SELECT entry FROM {} WHERE client_id = $1 ORDER BY position", kind.table()))
            .bind(client_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Entries and version read in one transaction, so they belong together.
    pub async fn versioned_whitelist(&self, kind: WhitelistKind, client_id: &str) -> Result<VersionedWhitelist> {
        let mut tx = self.pool.begin().await?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM whitelist_versions WHERE client_id = $1 AND kind = $2")
                .bind(client_id)
                .bind(kind.name())
                .fetch_optional(&mut *tx)
                .await?;
        let entries =
            sqlx::query_scalar(&format!("SELECT entry FROM {} WHERE client_id = $1 ORDER BY position", kind.table()))
                .bind(client_id)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(VersionedWhitelist { entries, version: version.unwrap_or(0) })
    }

    /// Replaces every entry at once (entries are already validated); the
    /// whitelist's new version.
    pub async fn replace_whitelist(
        &self,
        kind: WhitelistKind,
        client_id: &str,
        entries: &[String],
        audit: &AuditEntry,
        now: i64,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        // Raising the version first also locks the tenant's row of it, so
        // concurrent replaces of one whitelist run one after another.
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO whitelist_versions (client_id, kind, version) VALUES ($1, $2, 1) \
             ON CONFLICT (client_id, kind) DO UPDATE SET version = whitelist_versions.version + 1 RETURNING version",
        )
        .bind(client_id)
        .bind(kind.name())
        .fetch_one(&mut *tx)
        .await?;
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
        record_changes(&mut tx, &[Event::whitelist_changed(kind, client_id, version)], now).await?;
        tx.commit().await?;
        Ok(version)
    }
}
