//! IP and origin whitelists: ordered entries, replaced as a whole.

use super::audit::{AuditEntry, insert_audit};
use super::{Result, Store};

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

impl Store {
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
}
