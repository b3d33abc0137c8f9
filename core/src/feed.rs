//! Following the change feed (core/src/store/changes.rs): every process that
//! caches credentials or holds sockets reads the changes committed since its
//! cursor, on a short period, and delivers them to its own subscribers as if
//! they had come over the bus. The bus is the fast path; this is the one
//! that cannot lose a change: a revocation whose bus message was lost (the
//! publisher's link to Redis cut, a subscriber reconnecting) still reaches
//! every process within one period of its commit, as long as that process
//! reaches the database. Delivering a change twice is harmless: every
//! change's effect (evict, pin, close) is idempotent.
//!
//! PostgreSQL numbers rows when they are inserted, not when they commit, so
//! a change may become visible after a higher-numbered one. The cursor
//! therefore stops below the first gap and rereads from there; a gap still
//! open after `GAP_WAIT` (the transaction rolled back) is passed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::bus::EventBus;
use crate::store::{Change, Store};

/// How long a gap in the numbering may stay open before it is passed: far
/// longer than any credential change's transaction.
const GAP_WAIT: Duration = Duration::from_secs(10);
/// Rows read per query; a longer backlog is read in several.
const BATCH: i64 = 500;

#[derive(Default)]
pub struct FeedMetrics {
    /// Changes the feed delivered because the bus had not (lost messages).
    pub delivered: Counter,
    /// Reads of the feed that failed (database unreachable).
    pub failures: Counter,
    /// 1 while the last read succeeded.
    pub current: Gauge,
}

impl FeedMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "caas_change_feed_delivered",
            "Credential changes delivered by the durable change feed because the bus had not",
            self.delivered.clone(),
        );
        registry.register("caas_change_feed_failures", "Reads of the change feed that failed", self.failures.clone());
        registry.register(
            "caas_change_feed_current",
            "1 while the change feed is being read, 0 while it cannot be",
            self.current.clone(),
        );
    }
}

/// The follower's task; dropping the last handle stops it.
pub struct ChangeFeed {
    pub metrics: Arc<FeedMetrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChangeFeed {
    /// Follows the feed every `interval`, starting with the changes of the
    /// last `replay` (so a process that starts while a whitelist's shared
    /// copy is stale, or a revoked session's token is still live, knows of
    /// it). Must be called inside a Tokio runtime.
    pub fn start(store: Store, bus: Arc<dyn EventBus>, interval: Duration, replay: Duration) -> Self {
        let metrics = Arc::new(FeedMetrics::default());
        let task = tokio::spawn(follow(store, bus, interval, replay, metrics.clone()));
        Self { metrics, task }
    }
}

/// Which numbers have been delivered: all up to `cursor`, and `seen` above it.
#[derive(Debug, Default)]
struct Cursor {
    cursor: i64,
    seen: BTreeSet<i64>,
    /// Since when the number after `cursor` has been missing while higher ones were seen.
    gap_since: Option<Instant>,
}

impl Cursor {
    fn at(cursor: i64) -> Self {
        Self { cursor, ..Self::default() }
    }

    /// Whether `seq` is new (to deliver); records it.
    fn take(&mut self, seq: i64) -> bool {
        seq > self.cursor && self.seen.insert(seq)
    }

    /// Moves the cursor over every contiguous number seen, and over a gap
    /// that has stayed open for `GAP_WAIT`.
    fn advance(&mut self, now: Instant) {
        loop {
            while self.seen.remove(&(self.cursor + 1)) {
                self.cursor += 1;
            }
            let Some(&next) = self.seen.first() else {
                self.gap_since = None;
                return;
            };
            match self.gap_since {
                None => {
                    self.gap_since = Some(now);
                    return;
                }
                Some(since) if now.duration_since(since) >= GAP_WAIT => {
                    self.cursor = next - 1;
                    self.gap_since = None;
                }
                Some(_) => return,
            }
        }
    }
}

async fn follow(store: Store, bus: Arc<dyn EventBus>, interval: Duration, replay: Duration, metrics: Arc<FeedMetrics>) {
    let mut position: Option<Cursor> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let result = match position.as_mut() {
            None => start_position(&store, replay).await.map(|start| {
                position = Some(Cursor::at(start));
            }),
            Some(cursor) => read(&store, &*bus, cursor, &metrics).await,
        };
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!("change feed readable again; caught up");
                    failing = false;
                }
                metrics.current.set(1);
            }
            Err(error) => {
                metrics.failures.inc();
                metrics.current.set(0);
                if !failing {
                    tracing::warn!(%error, "cannot read the change feed; retrying every {interval:?}");
                    failing = true;
                }
            }
        }
    }
}

/// The number before the first change of the last `replay`, else the newest.
async fn start_position(store: &Store, replay: Duration) -> Result<i64, crate::store::StoreError> {
    let since = crate::id::unix_now() - replay.as_secs() as i64;
    store.change_before(since).await
}

async fn read(
    store: &Store,
    bus: &dyn EventBus,
    position: &mut Cursor,
    metrics: &FeedMetrics,
) -> Result<(), crate::store::StoreError> {
    // Page through everything above the cursor (gaps included, which is
    // where a late commit shows up), then move the cursor.
    let mut after = position.cursor;
    loop {
        let changes = store.changes_after(after, BATCH).await?;
        let full = changes.len() as i64 == BATCH;
        for Change { seq, event } in changes {
            after = seq;
            if position.take(seq) && bus.deliver_from_feed(event) {
                // The bus had not brought it: the feed is what delivered it.
                metrics.delivered.inc();
            }
        }
        if !full {
            break;
        }
    }
    position.advance(Instant::now());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_waits_at_a_gap_and_passes_it_late() {
        let start = Instant::now();
        let mut c = Cursor::at(10);
        assert!(c.take(11) && c.take(13));
        assert!(!c.take(11), "delivered once");
        assert!(!c.take(9), "below the cursor");
        c.advance(start);
        assert_eq!(c.cursor, 11, "stops below the gap at 12");
        // 12 commits late: delivered, and the cursor moves past 13.
        assert!(c.take(12));
        c.advance(start + Duration::from_secs(1));
        assert_eq!((c.cursor, c.seen.len()), (13, 0));
        // A gap that never fills (a rolled-back insert) is passed after GAP_WAIT.
        assert!(c.take(15));
        c.advance(start);
        assert_eq!(c.cursor, 13);
        c.advance(start + GAP_WAIT / 2);
        assert_eq!(c.cursor, 13);
        c.advance(start + GAP_WAIT);
        assert_eq!((c.cursor, c.seen.len()), (15, 0));
    }
}
