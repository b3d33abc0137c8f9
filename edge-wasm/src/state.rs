//! What the filter knows, and how ext-authz's feed (ext-authz/src/edge.rs)
//! keeps it current: the verification material, the sessions it has looked
//! up, the revocations it has heard of, and when the feed last confirmed
//! that nothing else changed.
//!
//! Every rule of staleness fails closed: the filter decides only while the
//! last confirmation is younger than `CURRENCY` (and ext-authz said it was
//! itself current); a resync drops every session; a session read before a
//! revocation the filter has since heard of stays revoked.

use std::collections::{HashMap, HashSet};

use caas_rules::context::ContextSigner;
use caas_rules::jwt::{Audience, JwtKeys};
use caas_rules::quota::{DEFAULT_LIMITS, Limits};
use caas_rules::secret::Secret;
use serde::Deserialize;

/// Past this since the last confirmed poll was sent, the filter decides
/// nothing (milliseconds).
pub const CURRENCY_MS: u64 = 1_000;
/// Sessions held; past it the table is emptied (each miss goes to ext_authz
/// and is looked up again).
pub const MAX_SESSIONS: usize = 100_000;
/// Revocations remembered beyond the session table (a session read before
/// its revocation was heard of must not come back as live).
pub const MAX_REVOKED: usize = 100_000;
/// Session lookups waiting to be sent at once; more are dropped (their
/// requests still go to ext_authz, and the next one asks again).
pub const MAX_PENDING: usize = 256;

#[derive(Debug, Deserialize)]
pub struct Material {
    pub issuer: String,
    pub jwt_secret: String,
    pub jwt_secret_previous: Option<String>,
    pub service_secret: String,
    pub trusted_proxy_hops: usize,
    /// Whether ext-authz counts quotas (QUOTAS_ENABLED); absent: it does.
    #[serde(default = "counted")]
    pub quotas: bool,
}

fn counted() -> bool {
    true
}

/// `GET /edge/v1/changes` as the filter reads it.
#[derive(Debug, Deserialize)]
pub struct Changes {
    pub epoch: String,
    pub cursor: u64,
    pub current: bool,
    pub resync: bool,
    #[serde(default)]
    pub material: Option<Material>,
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// The changes the filter acts on; the rest (keys, whitelists) concern
/// requests it leaves to ext_authz.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    SessionRevoked {
        session_id: String,
    },
    RateLimitsChanged {
        tenant_id: String,
    },
    #[serde(other)]
    Other,
}

/// `GET /edge/v1/session/{id}` as the filter reads it.
#[derive(Debug, Deserialize)]
pub struct SessionAnswer {
    pub epoch: String,
    pub cursor: u64,
    pub session: Option<SessionRecord>,
    pub limits: Option<Limits>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionRecord {
    pub tenant_id: String,
    pub subject: String,
    pub audience: Option<Audience>,
    pub revoked: bool,
}

/// A looked-up session and its tenant's quotas.
#[derive(Debug, Clone)]
pub struct Known {
    pub record: Option<SessionRecord>,
    pub limits: Limits,
}

/// The verifier and signer built from the material.
pub struct Keys {
    pub jwt: JwtKeys,
    pub signer: ContextSigner,
    pub trusted_proxy_hops: usize,
    pub quotas: bool,
}

#[derive(Default)]
pub struct State {
    pub keys: Option<Keys>,
    epoch: String,
    cursor: u64,
    /// Lookups answered with a cursor below this predate a resync: dropped.
    floor: u64,
    /// When (ms, the filter's clock) the poll behind the last confirmation
    /// was sent; `None`: never confirmed, or ext-authz said it was behind.
    confirmed_at: Option<u64>,
    sessions: HashMap<String, Known>,
    revoked: HashSet<String>,
    pending: Vec<String>,
}

impl State {
    /// Whether the filter may decide at `now_ms`.
    pub fn current(&self, now_ms: u64) -> bool {
        self.keys.is_some() && self.confirmed_at.is_some_and(|at| now_ms.saturating_sub(at) < CURRENCY_MS)
    }

    /// Milliseconds since the last confirmation (the feed lag), if any.
    pub fn lag_ms(&self, now_ms: u64) -> Option<u64> {
        self.confirmed_at.map(|at| now_ms.saturating_sub(at))
    }

    /// The query of the next poll.
    pub fn poll_query(&self) -> String {
        format!("epoch={}&since={}", self.epoch, self.cursor)
    }

    /// Applies a changes answer to a poll sent at `sent_ms`. A malformed
    /// answer leaves the state as it was (and currency lapses on its own).
    pub fn apply_changes(&mut self, body: &[u8], sent_ms: u64) -> Result<(), serde_json::Error> {
        let answer: Changes = serde_json::from_slice(body)?;
        if answer.resync {
            // Everything learnt under the old numbering may be missing a change.
            self.sessions.clear();
            self.revoked.clear();
            self.pending.clear();
            self.keys = answer.material.map(|m| Keys {
                jwt: JwtKeys::new(
                    m.issuer,
                    &Secret::new(m.jwt_secret),
                    m.jwt_secret_previous.map(Secret::new).as_ref(),
                ),
                signer: ContextSigner::new(&Secret::new(m.service_secret)),
                trusted_proxy_hops: m.trusted_proxy_hops,
                quotas: m.quotas,
            });
            self.epoch = answer.epoch;
            self.floor = answer.cursor;
        } else if answer.epoch != self.epoch {
            return Ok(());
        }
        for change in answer.changes {
            match change {
                Change::SessionRevoked { session_id } => {
                    self.sessions.remove(&session_id);
                    if self.revoked.len() >= MAX_REVOKED {
                        // Forgetting revocations is only safe with the
                        // sessions they could protect against forgotten too.
                        self.revoked.clear();
                        self.sessions.clear();
                        self.floor = answer.cursor;
                    }
                    self.revoked.insert(session_id);
                }
                Change::RateLimitsChanged { tenant_id } => {
                    self.sessions.retain(|_, k| k.record.as_ref().is_none_or(|r| r.tenant_id != tenant_id))
                }
                Change::Other => {}
            }
        }
        self.cursor = answer.cursor;
        self.confirmed_at = answer.current.then_some(sent_ms);
        Ok(())
    }

    /// Applies a session lookup's answer.
    pub fn apply_session(&mut self, id: &str, body: &[u8]) -> Result<(), serde_json::Error> {
        let answer: SessionAnswer = serde_json::from_slice(body)?;
        if answer.epoch != self.epoch || answer.cursor < self.floor {
            return Ok(());
        }
        if self.sessions.len() >= MAX_SESSIONS {
            self.sessions.clear();
        }
        let limits = answer.limits.unwrap_or(DEFAULT_LIMITS);
        self.sessions.insert(id.to_string(), Known { record: answer.session, limits });
        Ok(())
    }

    /// The session as known, unless a revocation was heard of since.
    pub fn session(&self, id: &str) -> Option<&Known> {
        if self.revoked.contains(id) {
            return None;
        }
        self.sessions.get(id)
    }

    pub fn revoked(&self, id: &str) -> bool {
        self.revoked.contains(id)
    }

    /// Asks for `id` at the next tick.
    pub fn want(&mut self, id: &str) {
        if self.pending.len() < MAX_PENDING && !self.pending.iter().any(|p| p == id) {
            self.pending.push(id.to_string());
        }
    }

    pub fn take_pending(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending)
    }
}
