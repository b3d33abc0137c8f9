//! Retention: rows that no longer decide anything are deleted on a timer.
//! Sessions and their refresh tokens go a day after they expire (by then no
//! token of theirs can pass and a replayed refresh token is refused as
//! unknown); audit rows go after the retention an operator sets.

use std::time::Duration;

use caas_runtime::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::store::{Store, StoreError};

/// A session or refresh token is kept this long past its expiry.
pub const EXPIRED_KEPT_FOR: Duration = Duration::from_secs(86_400);
/// The change feed (core/src/feed.rs) keeps a week: far longer than any
/// reader is behind, even one whose database link was down for days.
pub const CHANGES_KEPT_FOR: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long audit rows are kept.
    pub audit_for: Duration,
    /// How often the purge runs.
    pub every: Duration,
}

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub sessions: u64,
    pub refresh_tokens: u64,
    pub audit_rows: u64,
    pub changes: u64,
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Rows deleted per statement: each delete is one short transaction, so
/// the purge never holds locks long, however far behind it is.
pub const BATCH: i64 = 1000;

/// The purge's work, by table (`caas_retention_purged_rows_total`).
pub struct RetentionMetrics {
    purged: Family<Labels, Counter>,
    failures: Counter,
}

impl Default for RetentionMetrics {
    fn default() -> Self {
        let purged: Family<Labels, Counter> = Family::default();
        for table in TABLES {
            let _ = purged.get_or_create(&[("table", table)]);
        }
        Self { purged, failures: Counter::default() }
    }
}

const TABLES: [&str; 4] = ["sessions", "refresh_tokens", "audit_log", "changes"];

impl RetentionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "caas_retention_purged_rows",
            "Rows deleted by the retention job, by table",
            self.purged.clone(),
        );
        registry.register("caas_retention_failures", "Retention runs that failed", self.failures.clone());
    }

    fn count(&self, purged: &Purged) {
        let counts = [purged.sessions, purged.refresh_tokens, purged.audit_rows, purged.changes];
        for (table, count) in TABLES.into_iter().zip(counts) {
            self.purged.get_or_create(&[("table", table)]).inc_by(count);
        }
    }
}

/// Deletes by `delete(batch)` until a batch comes back short; the total.
async fn in_batches<F, Fut>(mut delete: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let deleted = delete().await?;
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
        // Let other work at the database between batches.
        tokio::task::yield_now().await;
    }
}

impl Retention {
    /// Deletes what is past its retention at `now`, in batches.
    pub async fn purge(&self, store: &Store, now: i64) -> Result<Purged, StoreError> {
        let expired_before = now - seconds(EXPIRED_KEPT_FOR);
        let mut purged = Purged::default();
        loop {
            let (sessions, tokens) = store.purge_expired_sessions(expired_before, BATCH).await?;
            purged.sessions += sessions;
            purged.refresh_tokens += tokens;
            if sessions < BATCH as u64 && tokens < BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let audit_before = now.saturating_sub(seconds(self.audit_for));
        purged.audit_rows = in_batches(|| store.purge_audit(audit_before, BATCH)).await?;
        let changes_before = now - seconds(CHANGES_KEPT_FOR);
        purged.changes = in_batches(|| store.purge_changes(changes_before, BATCH)).await?;
        Ok(purged)
    }

    /// Purges every `every`, first one `every` after start, until dropped.
    /// Several replicas may run it: the deletes are idempotent.
    pub async fn run(self, store: Store, metrics: std::sync::Arc<RetentionMetrics>) {
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            match self.purge(&store, crate::id::unix_now()).await {
                Ok(purged) if purged == Purged::default() => {}
                Ok(purged) => {
                    metrics.count(&purged);
                    let Purged { sessions, refresh_tokens, audit_rows, changes } = purged;
                    tracing::info!(sessions, refresh_tokens, audit_rows, changes, "purged rows past their retention");
                }
                Err(error) => {
                    metrics.failures.inc();
                    tracing::warn!(%error, "could not purge rows past their retention; will retry");
                }
            }
        }
    }
}
