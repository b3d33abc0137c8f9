//! A tenant's quotas (rate limits): one row, absent until first set.

use caas_rules::quota::{Limit, Limits};

use super::audit::{AuditEntry, insert_audit};
use super::changes::record_changes;
use super::{Result, Store};
use crate::events::Event;

/// A write of a tenant's limits: what they were (`None`: the defaults) and are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitsChange {
    pub before: Option<Limits>,
    pub after: Limits,
}

#[derive(sqlx::FromRow)]
struct Row {
    key_rate: i64,
    key_burst: i64,
    user_rate: i64,
    user_burst: i64,
    tenant_rate: i64,
    tenant_burst: i64,
}

impl Row {
    /// Rows were checked when written; clamping keeps a hand-edited one sane.
    fn limits(&self) -> Limits {
        let limit = |rate: i64, burst: i64| Limit {
            rate: rate.clamp(1, i64::from(u32::MAX)) as u32,
            burst: burst.clamp(1, i64::from(u32::MAX)) as u32,
        };
        Limits {
            per_key: limit(self.key_rate, self.key_burst),
            per_user: limit(self.user_rate, self.user_burst),
            per_tenant: limit(self.tenant_rate, self.tenant_burst),
        }
    }
}

const SELECT: &str = "SELECT key_rate, key_burst, user_rate, user_burst, tenant_rate, tenant_burst FROM rate_limits WHERE client_id = $1";

impl Store {
    /// The tenant's own limits; `None` when it never set any (the defaults apply).
    pub async fn rate_limits(&self, client_id: &str) -> Result<Option<Limits>> {
        let row: Option<Row> = sqlx::query_as(SELECT).bind(client_id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.limits()))
    }

    /// Sets every limit of the tenant at once (already checked), with its audit row.
    pub async fn set_rate_limits(
        &self,
        client_id: &str,
        limits: &Limits,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<RateLimitsChange> {
        let mut tx = self.pool.begin().await?;
        let before: Option<Row> = sqlx::query_as(SELECT).bind(client_id).fetch_optional(&mut *tx).await?;
        let before = before.map(|r| r.limits());
        let (k, u, t) = (limits.per_key, limits.per_user, limits.per_tenant);
        sqlx::query(
            "INSERT INTO rate_limits (client_id, key_rate, key_burst, user_rate, user_burst, tenant_rate, tenant_burst, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (client_id) DO UPDATE SET \
             key_rate = excluded.key_rate, key_burst = excluded.key_burst, user_rate = excluded.user_rate, \
             user_burst = excluded.user_burst, tenant_rate = excluded.tenant_rate, \
             tenant_burst = excluded.tenant_burst, updated_at = excluded.updated_at",
        )
        .bind(client_id)
        .bind(i64::from(k.rate))
        .bind(i64::from(k.burst))
        .bind(i64::from(u.rate))
        .bind(i64::from(u.burst))
        .bind(i64::from(t.rate))
        .bind(i64::from(t.burst))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut audit = audit.clone();
        audit.detail = Some(serde_json::json!({ "before": before, "after": limits }));
        insert_audit(&mut tx, &audit, now).await?;
        record_changes(&mut tx, &[Event::rate_limits_changed(client_id)], now).await?;
        tx.commit().await?;
        Ok(RateLimitsChange { before, after: *limits })
    }
}
