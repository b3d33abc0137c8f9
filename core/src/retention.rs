//! Retention: rows that no longer decide anything are deleted on a timer.
//! Sessions and their refresh tokens go a day after they expire (by then no
//! token of theirs can pass and a replayed refresh token is refused as
//! unknown); audit rows go after the retention an operator sets.

use std::time::Duration;

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

impl Retention {
    /// Deletes what is past its retention at `now`.
    pub async fn purge(&self, store: &Store, now: i64) -> Result<Purged, StoreError> {
        let (sessions, refresh_tokens) = store.purge_expired_sessions(now - seconds(EXPIRED_KEPT_FOR)).await?;
        let audit_rows = store.purge_audit(now.saturating_sub(seconds(self.audit_for))).await?;
        let changes = store.purge_changes(now - seconds(CHANGES_KEPT_FOR)).await?;
        Ok(Purged { sessions, refresh_tokens, audit_rows, changes })
    }

    /// Purges every `every`, first one `every` after start, until dropped.
    /// Several replicas may run it: the deletes are idempotent.
    pub async fn run(self, store: Store) {
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            match self.purge(&store, crate::id::unix_now()).await {
                Ok(purged) if purged == Purged::default() => {}
                Ok(Purged { sessions, refresh_tokens, audit_rows, changes }) => {
                    tracing::info!(sessions, refresh_tokens, audit_rows, changes, "purged rows past their retention");
                }
                Err(error) => tracing::warn!(%error, "could not purge rows past their retention; will retry"),
            }
        }
    }
}
