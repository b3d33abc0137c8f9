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
use caas_rules::whitelist::OriginWhitelist;
use serde::Deserialize;

use crate::api_keys::{ApiKeys, KeysAnswer};
use crate::lease::Leases;
use crate::lists::{ListMiss, TenantLists, WhitelistAnswer, ask_once};
use crate::reports::{Denials, Ids, Spans, Tally};

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
/// Tokens whose signature, issuer and audience were verified, kept; past
/// it the table is emptied (each is verified again on its next use).
pub const MAX_VERIFIED: usize = 10_000;
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
    /// Whether ext-authz exports spans: the filter's allows are spans too
    /// (crate::spans).
    #[serde(default)]
    pub trace_export: bool,
    /// Whether ext-authz enforces its refusals (`USE_AUTH_SERVICE`); in
    /// shadow mode the filter answers none itself. Absent (an ext-authz
    /// that does not say, nor take the filter's reports): it answers none.
    #[serde(default)]
    pub enforce: bool,
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

/// The changes the filter acts on.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    SessionRevoked {
        session_id: String,
    },
    RateLimitsChanged {
        tenant_id: String,
    },
    ApiKeyChanged {
        key_hash: String,
    },
    IpWhitelistChanged {
        tenant_id: String,
    },
    OriginWhitelistChanged {
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
    /// The session's tenant's Origin whitelist.
    #[serde(default)]
    pub origin_whitelist: Option<WhitelistAnswer>,
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

/// The verifier and signer built from the material.
pub struct Keys {
    pub jwt: JwtKeys,
    pub signer: ContextSigner,
    pub trusted_proxy_hops: usize,
    pub quotas: bool,
    /// `None`: a route without a policy is not the filter's (ext-authz
    /// refuses it, or the table could not be read here: ext-authz decides).
    pub policy_table: Option<PolicyTable>,
    pub trace_export: bool,
    pub enforce: bool,
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
    /// Quotas leased from ext-authz, by end user and by key.
    pub leases: Leases,
    /// API keys looked up by hash, and their tenants' IP whitelists.
    pub api_keys: ApiKeys,
    /// Tenants' Origin whitelists, from session lookups.
    origins: TenantLists<OriginWhitelist>,
    /// Address buckets ext-authz refuses (failed credentials); `None`: too
    /// many to list, or not said: nothing with an address is decided.
    refused: Option<HashSet<ipnet::IpNet>>,
    /// End users' tokens verified under the current material, by the token
    /// itself: a token is the same bytes each time its holder sends it, and
    /// verifying it again (base64, HMAC, JSON) is most of a decision's cost
    /// in V8. Only the signature, issuer and audience are taken from here;
    /// the times are checked on every use, revocation is the session's.
    verified: HashMap<String, (Audience, Claims)>,
    /// Ids of the spans and traces the filter's allows begin.
    pub ids: Ids,
    /// The filter's decisions as spans, for ext-authz to export.
    pub spans: Spans,
    /// The refusals the filter answered, for ext-authz to log and count.
    pub denials: Denials,
    /// The allows and preflights the filter made, for ext-authz to count.
    pub decisions: Tally,
}

impl State {
    /// Whether the filter may decide at `now_ms`.
    pub fn current(&self, now_ms: u64) -> bool {
        self.keys.is_some() && self.confirmed_at.is_some_and(|at| now_ms.saturating_sub(at) < CURRENCY_MS)
    }

    /// Whether the feed's last confirmation answered a poll sent after
    /// `at_ms` (so ext-authz received it after whatever happened then).
    pub fn confirmed_after(&self, at_ms: u64) -> bool {
        self.confirmed_at.is_some_and(|sent| sent > at_ms)
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
            self.leases.release(None);
            self.verified.clear();
            self.api_keys.clear();
            self.origins.clear();
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
                trace_export: m.trace_export,
                enforce: m.enforce,
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
                    self.leases.release(Some(&tenant_id));
                }
                Change::ApiKeyChanged { key_hash } => self.api_keys.key_changed(key_hash, answer.cursor, sent_ms),
                Change::IpWhitelistChanged { tenant_id } => {
                    self.api_keys.list_changed(tenant_id, answer.cursor, sent_ms)
                }
                Change::OriginWhitelistChanged { tenant_id } => self.origins.changed(tenant_id, answer.cursor, sent_ms),
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

    /// Applies a session lookup's answer arriving at `now_ms`.
    pub fn apply_session(&mut self, id: &str, body: &[u8], now_ms: u64) -> Result<(), serde_json::Error> {
        let answer: SessionAnswer = serde_json::from_slice(body)?;
        if answer.epoch != self.epoch || answer.cursor < self.floor {
            return Ok(());
        }
        if let (Some(session), Some(list)) = (&answer.session, answer.origin_whitelist) {
            self.origins.apply(&session.tenant_id, (answer.cursor, now_ms), list, OriginWhitelist::parse);
        }
        if self.sessions.len() >= MAX_SESSIONS {
            self.sessions.clear();
        }
        self.sessions.insert(id.to_string(), Known { record: answer.session });
        Ok(())
    }

    /// Applies a key lookup's answer arriving at `now_ms`.
    pub fn apply_keys(&mut self, body: &[u8], now_ms: u64) -> Result<(), serde_json::Error> {
        let answer: KeysAnswer = serde_json::from_slice(body)?;
        if answer.epoch == self.epoch {
            self.api_keys.apply(answer, self.floor, now_ms);
        }
        Ok(())
    }

    /// The tenant's Origin whitelist (`Ok(None)`: Origins are not checked).
    pub fn origins(&self, tenant_id: &str, now_ms: u64) -> Result<Option<&OriginWhitelist>, ListMiss> {
        self.origins.get(tenant_id, now_ms)
    }

    /// The session as known, unless a revocation was heard of since.
    pub fn session(&self, id: &str) -> Option<&Known> {
        if self.revoked.contains(id) {
            return None;
        }
        self.sessions.get(id)
    }

    /// A token for `audience` verified as `JwtKeys::verify` does: its
    /// signature, issuer and audience once per token (`verify_signed`), its
    /// times at every call. A token kept for one audience is
    /// verified in full for another (and refused there).
    pub fn verify(&mut self, token: &str, audience: Audience, now: i64) -> Result<Claims, TokenError> {
        if let Some((kept, claims)) = self.verified.get(token)
            && *kept == audience
        {
            jwt::check_time(claims, now)?;
            return Ok(claims.clone());
        }
        let keys = self.keys.as_ref().ok_or(TokenError::BadSignature)?;
        // Kept once signed, issued and addressed right, expired or not: an
        // expired token replayed is refused on its times alone.
        let claims = keys.jwt.verify_signed(token, audience)?;
        if self.verified.len() >= MAX_VERIFIED {
            self.verified.clear();
        }
        self.verified.insert(token.to_string(), (audience, claims.clone()));
        jwt::check_time(&claims, now)?;
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
        ask_once(&mut self.pending, id, MAX_PENDING);
    }

    pub fn take_pending(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending)
    }
}
