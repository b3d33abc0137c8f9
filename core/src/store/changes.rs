//! The change feed: every credential change, written in the same transaction
//! as the change, numbered in commit order (nearly: see core/src/feed.rs for
//! PostgreSQL's out-of-order commits). The bus makes a change fast; this
//! table makes it durable, so a lost bus message can only delay it.

use crate::events::Event;

use super::{Result, Store};

/// One change as read back from the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub event: Event,
}

impl Store {
    /// The newest change's number (0 when there is none): where a reader
    /// that starts with empty caches begins.
    pub async fn latest_change(&self) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes").fetch_one(&self.pool).await?;
        Ok(seq.unwrap_or(0))
    }

    /// The number just before the first change recorded at or after `since`
    /// (the newest number when there is none): where a reader that wants
    /// the changes since then begins.
    pub async fn change_before(&self, since: i64) -> Result<i64> {
        let first: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM changes WHERE created_at >= $1")
            .bind(since)
            .fetch_one(&self.pool)
            .await?;
        match first {
            Some(first) => Ok(first - 1),
            None => self.latest_change().await,
        }
    }

    /// Changes numbered above `after`, oldest first, at most `limit`. A row
    /// this version cannot read (written by a newer one) is skipped, loudly.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, event FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(seq, json)| match serde_json::from_str(&json) {
                Ok(event) => Some(Change { seq, event }),
                Err(error) => {
                    tracing::error!(seq, %error, "unreadable change in the feed; skipped");
                    None
                }
            })
            .collect())
    }

    /// Deletes at most `batch` changes recorded before `before`; how many.
    pub async fn purge_changes(&self, before: i64, batch: i64) -> Result<u64> {
        let result = sqlx::query(
            "DELETE FROM changes WHERE seq IN (SELECT seq FROM changes WHERE created_at < $1 ORDER BY seq LIMIT $2)",
        )
        .bind(before)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}

/// Records `events` in the transaction that makes them true.
pub(super) async fn record_changes(conn: &mut sqlx::AnyConnection, events: &[Event], now: i64) -> Result<()> {
    for event in events {
        let json = serde_json::to_string(event).map_err(|e| super::StoreError::Setup(e.to_string()))?;
        sqlx::query("INSERT INTO changes (event, created_at) VALUES ($1, $2)")
            .bind(json)
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
