//! What keeps password checking affordable under hostile traffic: a bound
//! on how many Argon2 computations run at once (each takes ~19 MiB and a
//! core for tens of milliseconds), and the addresses each account has logged
//! in from, so that strangers' failures cannot lock its owner out.

use std::sync::Arc;
use std::time::Duration;

use caas_runtime::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::cache::Cache;
use crate::password::{self, HashMemory};

/// The hashing bound is full: surfaces as 503 `overloaded` + `retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress; retry after {0} s")]
pub struct Overloaded(pub u64);

/// Why a password computation gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashingError {
    Overloaded(Overloaded),
    /// The hasher failed, or its worker thread died.
    Failed,
}

/// Work for a hashing thread, which lends it the Argon2 memory it keeps.
type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

/// Runs every password hash and check, at most `limit` at once, and counts
/// them (`auth_password_checks_total`, by outcome).
#[derive(Clone)]
pub struct Hashing {
    permits: Arc<Semaphore>,
    /// One more slot, only for logins from an address that has logged into
    /// that account before: a burst of strangers' guesses fills `permits`,
    /// and the owner must still get in.
    owners: Arc<Semaphore>,
    /// `limit` + 1 dedicated threads, each keeping one Argon2 buffer
    /// (`HashMemory`) for every check it runs: memory is bounded by the
    /// threads, where Tokio's blocking pool (up to 512 threads) was not, and
    /// no check allocates ~19 MiB for the allocator to hold on to.
    jobs: std::sync::mpsc::SyncSender<Job>,
    checks: Family<Labels, Counter>,
}

impl Hashing {
    /// `limit` of 0 is taken as 1; one more slot is kept for known
    /// addresses. The threads end when the last clone is dropped.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        let threads = limit + 1;
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(threads);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name("password-hash".into()).spawn(move || {
                let mut memory = HashMemory::default();
                loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(&mut memory),
                        Err(_) => return,
                    }
                }
            });
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start a password hashing thread");
            }
        }
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            owners: Arc::new(Semaphore::new(1)),
            jobs,
            checks: Family::default(),
        }
    }

    /// One per core: more at once only adds memory and latency.
    pub fn default_limit() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    pub fn register(&self, registry: &mut Registry) {
        for outcome in ["match", "mismatch", "hashed"] {
            let _ = self.checks.get_or_create(&[("outcome", outcome)]);
        }
        registry.register("auth_password_checks", "Password hashes computed, by outcome", self.checks.clone());
    }

    /// How many checks have run with this outcome (for tests and benches).
    pub fn count(&self, outcome: &'static str) -> u64 {
        self.checks.get_or_create(&[("outcome", outcome)]).get()
    }

    /// Runs `work` on a hashing thread if a permit is free, else refuses at
    /// once: waiting would queue without bound. The permit moves into the
    /// job, so a cancelled request still holds it until its hash ends; with
    /// one permit per thread a job never waits for a thread.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
        owner: bool,
    ) -> Result<T, HashingError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if owner => match self.owners.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => return Err(self.refuse()),
            },
            Err(_) => return Err(self.refuse()),
        };
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let result = work(memory);
            // Freed before the answer is sent: the caller may hash again at once.
            drop(permit);
            let _ = done.send(result);
        });
        self.jobs.send(job).map_err(|_| HashingError::Failed)?;
        result.await.map_err(|_| HashingError::Failed)
    }

    fn refuse(&self) -> HashingError {
        tracing::warn!("password hashing bound full: refused");
        HashingError::Overloaded(Overloaded(1))
    }

    /// `password::verify_password` under the bound; `owner` (an address
    /// that logged into the account before) may also take the owners' slot.
    pub async fn verify(&self, password: String, stored: Option<String>, owner: bool) -> Result<bool, HashingError> {
        let valid =
            self.run(move |memory| password::verify_password(&password, stored.as_deref(), memory), owner).await?;
        self.checks.get_or_create(&[("outcome", if valid { "match" } else { "mismatch" })]).inc();
        Ok(valid)
    }

    /// `password::hash_password` under the bound.
    pub async fn hash(&self, password: String) -> Result<String, HashingError> {
        let hash = self
            .run(move |memory| password::hash_password(&password, memory), false)
            .await?
            .map_err(|_| HashingError::Failed)?;
        self.checks.get_or_create(&[("outcome", "hashed")]).inc();
        Ok(hash)
    }
}

/// Address buckets (caas-rules' `net::address_bucket`) each account has
/// logged in from, as markers in the shared cache: every node sees them,
/// they expire on their own, and no table is needed. Keyed by a hash of
/// (email, bucket), so the cache holds neither. Losing them (Redis flushed
/// or down) only puts the owner back under the per-email limit.
pub struct KnownAddresses {
    cache: Arc<dyn Cache>,
    ttl: Duration,
}

/// A successful login keeps its address known this long.
pub const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(90 * 86_400);

impl KnownAddresses {
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        Self { cache, ttl: KNOWN_ADDRESS_TTL }
    }

    fn key(email: &str, bucket: &str) -> String {
        let mut digest = Sha256::new();
        digest.update(email.as_bytes());
        digest.update([0]);
        digest.update(bucket.as_bytes());
        format!("known-addr:{}", hex::encode(&digest.finalize()[..16]))
    }

    /// False when the cache cannot say: the stricter answer.
    pub async fn contains(&self, email: &str, bucket: &str) -> bool {
        matches!(self.cache.get(&Self::key(email, bucket)).await, Ok(Some(_)))
    }

    /// After a successful login; renews the marker's lifetime.
    pub async fn remember(&self, email: &str, bucket: &str) {
        if let Err(error) = self.cache.set(&Self::key(email, bucket), "1", self.ttl).await {
            tracing::warn!(%error, "could not remember a login address");
        }
    }
}
