//! API keys in the filter: the records it has looked up by hash
//! (`POST /edge/v1/keys`, ext-authz/src/edge.rs) and their tenants' IP
//! whitelists, kept current by the feed's changes.
//!
//! Staleness fails closed, as for sessions: a key or whitelist change drops
//! what the filter held, and for `HOLD_MS` after it the filter leaves that
//! key (or the tenant's keys) to ext_authz and takes no lookup answered
//! before the change (lists.rs); a resync drops everything.

use std::collections::HashMap;

use caas_rules::whitelist::IpWhitelist;
use serde::Deserialize;

use crate::lists::{Changes, ListMiss, TenantLists, WhitelistAnswer, ask_once};

/// Keys (by hash) held; past it the table is emptied (each miss goes to
/// ext_authz and is looked up again).
pub const MAX_KEYS: usize = 100_000;
/// Key lookups waiting to be sent; more are dropped (their requests still
/// go to ext_authz, and the next one asks again).
pub const MAX_PENDING: usize = 256;
/// Hashes asked for in one call (ext-authz's bound: edge.rs `MAX_KEY_LOOKUPS`).
pub const PER_CALL: usize = 32;

/// `POST /edge/v1/keys` as the filter reads it.
#[derive(Debug, Deserialize)]
pub struct KeysAnswer {
    pub epoch: String,
    pub cursor: u64,
    pub keys: Vec<KeyAnswer>,
}

#[derive(Debug, Deserialize)]
pub struct KeyAnswer {
    pub hash: String,
    /// ext-authz has not read this key lately (it reads keys only for
    /// Checks): nothing is known, the next request asks again.
    #[serde(default)]
    pub pending: bool,
    /// `None`: no key has this hash.
    #[serde(default)]
    pub key: Option<KeyRecord>,
    /// The key's tenant's IP whitelist; absent for an unknown key.
    #[serde(default)]
    pub ip_whitelist: Option<WhitelistAnswer>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

/// Why a key is not the filter's to allow now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// Not looked up yet (it is being), or changed moments ago.
    Unknown,
    /// No such key: ext-authz refuses it.
    Refused,
}

#[derive(Default)]
pub struct ApiKeys {
    /// By hash; `None`: no such key.
    records: HashMap<String, Option<KeyRecord>>,
    ip_lists: TenantLists<IpWhitelist>,
    keys_changed: Changes,
    pending: Vec<String>,
}

impl ApiKeys {
    pub fn clear(&mut self) {
        *self = ApiKeys::default();
    }

    /// A key was created, demoted or revoked (`ApiKeyChanged`).
    pub fn key_changed(&mut self, hash: String, cursor: u64, now_ms: u64) {
        self.records.remove(&hash);
        if !self.keys_changed.record(hash, cursor, now_ms) {
            self.records.clear();
        }
    }

    /// A tenant's IP whitelist changed (`IpWhitelistChanged`).
    pub fn list_changed(&mut self, tenant_id: String, cursor: u64, now_ms: u64) {
        self.ip_lists.changed(tenant_id, cursor, now_ms);
    }

    /// Takes a lookup's answer arriving at `now_ms`, unless it may predate
    /// a change the filter has heard of (`floor`: a resync).
    pub fn apply(&mut self, answer: KeysAnswer, floor: u64, now_ms: u64) {
        if answer.cursor < floor {
            return;
        }
        for key in answer.keys {
            if key.pending || self.keys_changed.stale(&key.hash, answer.cursor, now_ms) {
                continue;
            }
            if let (Some(record), Some(list)) = (&key.key, key.ip_whitelist) {
                self.ip_lists.apply(&record.tenant_id, (answer.cursor, now_ms), list, IpWhitelist::parse);
            }
            if self.records.len() >= MAX_KEYS {
                self.records.clear();
            }
            self.records.insert(key.hash, key.key);
        }
    }

    /// The key stored under `hash` and its tenant's whitelist (`None`: not
    /// enforced), if both are known and neither changed within `HOLD_MS`.
    /// What is not known is asked for at the next tick.
    pub fn lookup(&mut self, hash: &str, now_ms: u64) -> Result<(&KeyRecord, Option<&IpWhitelist>), KeyMiss> {
        if self.keys_changed.holds(hash, now_ms) {
            return Err(KeyMiss::Unknown);
        }
        // One lookup per table (the fields are borrowed apart).
        match self.records.get(hash) {
            Some(None) => Err(KeyMiss::Refused),
            Some(Some(record)) => match self.ip_lists.get(&record.tenant_id, now_ms) {
                Ok(list) => Ok((record, list)),
                // Changed moments ago: looked up once the hold is over.
                Err(ListMiss::Held) => Err(KeyMiss::Unknown),
                Err(ListMiss::Unknown) => Err(want(&mut self.pending, hash)),
            },
            None => Err(want(&mut self.pending, hash)),
        }
    }

    /// Whether `tenant_id`'s IP whitelist, as `lookup` just found it,
    /// admits `ip` (no list: every address); a list not held admits none.
    pub fn admits(&self, tenant_id: &str, ip: std::net::IpAddr, now_ms: u64) -> bool {
        match self.ip_lists.get(tenant_id, now_ms) {
            Ok(list) => list.is_none_or(|list| list.contains(ip)),
            Err(_) => false,
        }
    }

    /// The body of the next `POST /edge/v1/keys`, if any key is wanted.
    pub fn lookups(&mut self) -> Option<Vec<u8>> {
        if self.pending.is_empty() {
            return None;
        }
        let sending = self.pending.len().min(PER_CALL);
        let hashes: Vec<String> = self.pending.drain(..sending).collect();
        Some(serde_json::json!({ "hashes": hashes }).to_string().into_bytes())
    }
}

/// Asks for `hash` at the next tick; says it is not known yet.
fn want(pending: &mut Vec<String>, hash: &str) -> KeyMiss {
    ask_once(pending, hash, MAX_PENDING);
    KeyMiss::Unknown
}
