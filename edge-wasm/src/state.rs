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
use caas_rules::jwt::{self, Audience, Claims, JwtKeys, TokenError};
use caas_rules::policy::PolicyTable;
use caas_rules::quota::Limits;
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
/// A lease is spent within this (ms from its grant) or given back: what
/// holding it can add to a burst is bounded by the lease's size (twice a
/// tick's demand), not by its age.
pub const LEASE_MS: u64 = 10_000;
/// A lease nothing was spent from for this long (ms) is given back, so that
/// requests a worker holds idle return to the bucket for the others.
pub const IDLE_MS: u64 = 1_000;
/// Requests asked for in one lease, at most and at least.
pub const MAX_LEASE: u32 = 1_000;
pub const MIN_LEASE: u32 = 4;
/// End users with a lease (or waiting for one) held at once; past it the
/// table is emptied (what they held is given back; their requests go to
/// ext_authz until leased again).
pub const MAX_LEASED: usize = 10_000;
/// Tokens whose signature, issuer and audience were verified, kept; past
/// it the table is emptied (each is verified again on its next use).
pub const MAX_VERIFIED: usize = 10_000;
/// Leases asked for in one call (ext-authz's bound: edge.rs `MAX_LEASES`).
pub const LEASES_PER_CALL: usize = 256;

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
    /// ext-authz's POLICY_TABLE, for routes that declare no policy.
    #[serde(default)]
    pub policy_table: Option<String>,
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
    /// Address buckets ext-authz refuses for failed credentials; `None`
    /// (null or absent): too many to list.
    #[serde(default)]
    pub refused: Option<Vec<String>>,
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

/// A looked-up session.
#[derive(Debug, Clone)]
pub struct Known {
    pub record: Option<SessionRecord>,
}

/// An end user's requests counted ahead of time in its quotas by ext-authz
/// (`POST /edge/v1/lease`), for the filter to spend.
#[derive(Debug, Default, Clone)]
pub struct Lease {
    /// Requests left to allow.
    pub left: u32,
    /// Allowed, or wanted and not leased, since the last ask (the demand).
    pub used: u32,
    /// When the last grant arrived (ms).
    pub granted_at: u64,
    /// When one was last spent, or the lease granted (ms).
    pub spent_at: u64,
    /// A request found nothing left: ask at the next tick.
    pub wanted: bool,
    /// An ask is in flight.
    pub asked: bool,
}

/// `POST /edge/v1/lease`'s answer as the filter reads it.
#[derive(Debug, Deserialize)]
pub struct LeaseAnswer {
    pub granted: Vec<u32>,
}

/// The verifier and signer built from the material.
pub struct Keys {
    pub jwt: JwtKeys,
    pub signer: ContextSigner,
    pub trusted_proxy_hops: usize,
    pub quotas: bool,
    /// `None`: a route without a policy is not the filter's (ext-authz
    /// refuses it, or the table could not be read here: ext-authz decides).
    pub policy_table: Option<PolicyTable>,
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
    /// By tenant, then end user: looked up by borrowed ids, so spending
    /// allocates nothing.
    leases: HashMap<String, HashMap<String, Lease>>,
    /// Leased requests no longer held (limits changed, resync), to give
    /// back at the next tick.
    giving: Vec<(EndUser, u32)>,
    /// Address buckets ext-authz refuses (failed credentials); `None`: too
    /// many to list, or not said: nothing with an address is decided.
    refused: Option<HashSet<ipnet::IpNet>>,
    /// End users' tokens verified under the current material, by the token
    /// itself: a token is the same bytes each time its holder sends it, and
    /// verifying it again (base64, HMAC, JSON) is most of a decision's cost
    /// in V8. Only the signature, issuer and audience are taken from here;
    /// the times are checked on every use, revocation is the session's.
    verified: HashMap<String, Claims>,
}

/// An end user, as a lease ask names it (tenant id, user id).
pub type EndUser = (String, String);

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
            self.release_leases(None);
            self.verified.clear();
            self.keys = answer.material.map(|m| Keys {
                jwt: JwtKeys::new(
                    m.issuer,
                    &Secret::new(m.jwt_secret),
                    m.jwt_secret_previous.map(Secret::new).as_ref(),
                ),
                signer: ContextSigner::new(&Secret::new(m.service_secret)),
                trusted_proxy_hops: m.trusted_proxy_hops,
                quotas: m.quotas,
                policy_table: m.policy_table.and_then(|text| PolicyTable::parse(&text).ok()),
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
                    // Leased under the old limits: not spent under the new.
                    self.release_leases(Some(&tenant_id));
                }
                Change::Other => {}
            }
        }
        // Text that is not a bucket makes the list unusable: fail closed.
        self.refused = answer
            .refused
            .map(|list| list.iter().map(|b| b.parse::<ipnet::IpNet>()).collect::<Result<HashSet<_>, _>>())
            .and_then(Result::ok);
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
        self.sessions.insert(id.to_string(), Known { record: answer.session });
        Ok(())
    }

    /// Spends one of the end user's leased requests; with none left, notes
    /// the demand (asked for at the next tick) and says no.
    pub fn spend(&mut self, tenant_id: &str, user_id: &str, now_ms: u64) -> bool {
        let lease = match self.leases.get_mut(tenant_id).and_then(|users| users.get_mut(user_id)) {
            Some(lease) => lease,
            None => {
                if self.leases.values().map(HashMap::len).sum::<usize>() >= MAX_LEASED {
                    self.release_leases(None);
                }
                let users = self.leases.entry(tenant_id.to_string()).or_default();
                users.entry(user_id.to_string()).or_default()
            }
        };
        lease.used = lease.used.saturating_add(1);
        // A lapsed lease is not spent: the tick gives it back.
        if lease.left == 0 || now_ms.saturating_sub(lease.granted_at) >= LEASE_MS {
            lease.wanted = true;
            return false;
        }
        lease.left -= 1;
        lease.spent_at = now_ms;
        true
    }

    /// Stops holding the leases of `tenant_id` (all: `None`): what is left
    /// of them is given back at the next tick.
    fn release_leases(&mut self, tenant_id: Option<&str>) {
        let released: Vec<(String, HashMap<String, Lease>)> = match tenant_id {
            Some(tenant_id) => self.leases.remove_entry(tenant_id).into_iter().collect(),
            None => self.leases.drain().collect(),
        };
        for (tenant_id, users) in released {
            for (user_id, lease) in users {
                if lease.left > 0 {
                    self.giving.push(((tenant_id.clone(), user_id), lease.left));
                }
            }
        }
    }

    /// The leases to ask for now and those given back (the body of
    /// `POST /edge/v1/lease`), and the end users to hand back to
    /// `apply_leases` with its answer. Asks for each end user that found
    /// nothing left, or that would run out before the next tick at its last
    /// tick's pace, twice that pace. Gives back what is left of a lease
    /// lapsed (`LEASE_MS`) or idle (`IDLE_MS`), and of those released; a
    /// call that fails loses them (the quota then refuses early, never late).
    /// Forgets end users with nothing held or wanted.
    pub fn lease_asks(&mut self, now_ms: u64) -> Option<(Vec<EndUser>, Vec<u8>)> {
        let sending = self.giving.len().min(LEASES_PER_CALL);
        let mut returned: Vec<serde_json::Value> = self
            .giving
            .drain(..sending)
            .map(|((tenant_id, user_id), n)| serde_json::json!({ "tenant_id": tenant_id, "user_id": user_id, "n": n }))
            .collect();
        for (tenant_id, users) in &mut self.leases {
            users.retain(|user_id, l| {
                let lapsed = now_ms.saturating_sub(l.granted_at) >= LEASE_MS;
                let idle = now_ms.saturating_sub(l.spent_at) >= IDLE_MS;
                if l.left > 0 && !l.asked && (lapsed || idle) && returned.len() < LEASES_PER_CALL {
                    returned.push(serde_json::json!({ "tenant_id": tenant_id, "user_id": user_id, "n": l.left }));
                    l.left = 0;
                }
                l.asked || l.wanted || l.used > 0 || l.left > 0
            });
        }
        self.leases.retain(|_, users| !users.is_empty());
        let mut asked = Vec::new();
        let mut asks = Vec::new();
        for (tenant_id, users) in &mut self.leases {
            for (user_id, lease) in users {
                if asked.len() >= LEASES_PER_CALL {
                    break;
                }
                let fresh = now_ms.saturating_sub(lease.granted_at) < LEASE_MS;
                let running_out = lease.used > 0 && (!fresh || lease.left <= lease.used);
                if lease.asked || !(lease.wanted || running_out) {
                    lease.used = 0;
                    continue;
                }
                let want = lease.used.saturating_mul(2).clamp(MIN_LEASE, MAX_LEASE);
                asks.push(serde_json::json!({ "tenant_id": tenant_id, "user_id": user_id, "want": want }));
                asked.push((tenant_id.clone(), user_id.clone()));
                lease.asked = true;
                lease.wanted = false;
                lease.used = 0;
            }
        }
        if asked.is_empty() && returned.is_empty() {
            return None;
        }
        Some((asked, serde_json::json!({ "leases": asks, "returned": returned }).to_string().into_bytes()))
    }

    /// Applies ext-authz's answer to the asks for `asked` (`None`: no
    /// answer; they are asked again when wanted). What is left of the
    /// previous grant, if still fresh, joins the new one (an ask is sent
    /// only when it is about to run out, so little is carried over).
    pub fn apply_leases(&mut self, asked: &[EndUser], body: Option<&[u8]>, now_ms: u64) {
        let granted = body.and_then(|b| serde_json::from_slice::<LeaseAnswer>(b).ok()).map(|a| a.granted);
        for (i, (tenant_id, user_id)) in asked.iter().enumerate() {
            let Some(lease) = self.leases.get_mut(tenant_id).and_then(|users| users.get_mut(user_id)) else {
                continue;
            };
            lease.asked = false;
            match granted.as_ref().and_then(|g| g.get(i)) {
                Some(n) => {
                    let left = if now_ms.saturating_sub(lease.granted_at) < LEASE_MS { lease.left } else { 0 };
                    lease.left = left.saturating_add(*n);
                    lease.granted_at = now_ms;
                    lease.spent_at = now_ms;
                }
                // The demand stands: asked again at the next tick.
                None => lease.wanted = true,
            }
        }
    }

    /// The session as known, unless a revocation was heard of since.
    pub fn session(&self, id: &str) -> Option<&Known> {
        if self.revoked.contains(id) {
            return None;
        }
        self.sessions.get(id)
    }

    /// An end user's token (audience `caas-sdk`) verified as `JwtKeys::verify`
    /// does, once per token; its times at every call.
    pub fn verify_sdk(&mut self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if let Some(claims) = self.verified.get(token) {
            jwt::check_time(claims, now)?;
            return Ok(claims.clone());
        }
        let keys = self.keys.as_ref().ok_or(TokenError::BadSignature)?;
        let claims = keys.jwt.verify(token, Audience::Sdk, now)?;
        if self.verified.len() >= MAX_VERIFIED {
            self.verified.clear();
        }
        self.verified.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    /// Whether ext-authz refuses `ip` for failed credentials (or may: the
    /// list was too long or not given).
    pub fn address_refused(&self, ip: std::net::IpAddr) -> bool {
        self.refused.as_ref().is_none_or(|refused| refused.contains(&caas_rules::net::address_bucket(ip)))
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
