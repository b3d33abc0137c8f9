//! Tenants' whitelists as the filter holds them (IP for API keys, Origin for
//! end users), each from a lookup answer and dropped by the feed's change.
//!
//! A change drops the tenant's list; for `HOLD_MS` after it the list is not
//! used (the tenant's requests go to ext_authz), and a lookup answered with
//! a cursor before the change is not taken: ext-authz's own caches hear of
//! a change on the same bus as its feed, and a lookup in between could read
//! the old list.

use std::collections::HashMap;

use serde::Deserialize;

/// After a change, how long (ms) what it concerns is left to ext_authz.
pub const HOLD_MS: u64 = 2_000;
/// Lists held; past it, all are dropped.
pub const MAX_TENANTS: usize = 100_000;
/// Changes remembered; past it, they are forgotten with what they protect.
pub const MAX_CHANGES: usize = 100_000;

/// A whitelist in a lookup answer.
#[derive(Debug, Deserialize)]
pub struct WhitelistAnswer {
    /// Whether ext-authz checks it at all (IP_WHITELIST_ENABLED,
    /// ORIGIN_VALIDATION_ENABLED); `false` lets everything through.
    pub enforced: bool,
    pub entries: Vec<String>,
}

/// What a change is remembered by: the feed's cursor and when it was heard.
#[derive(Debug, Clone, Copy)]
struct Changed {
    cursor: u64,
    at_ms: u64,
}

/// The changes heard of, by what they concern (a key's hash, a tenant).
#[derive(Default)]
pub struct Changes(HashMap<String, Changed>);

impl Changes {
    /// Remembers a change; `false` when too many were remembered and all
    /// were forgotten: the caller then drops everything they protected.
    pub fn record(&mut self, id: String, cursor: u64, now_ms: u64) -> bool {
        let kept = self.0.len() < MAX_CHANGES;
        if !kept {
            self.0.clear();
        }
        self.0.insert(id, Changed { cursor, at_ms: now_ms });
        kept
    }

    /// Whether what `id` concerns is still left to ext_authz at `now_ms`.
    pub fn holds(&self, id: &str, now_ms: u64) -> bool {
        self.0.get(id).is_some_and(|c| now_ms.saturating_sub(c.at_ms) < HOLD_MS)
    }

    /// Whether an answer about `id` read at `cursor` and arriving at
    /// `now_ms` may predate its change: read before it, or answered while
    /// ext-authz's caches may not have heard of it yet (within the hold).
    pub fn stale(&self, id: &str, cursor: u64, now_ms: u64) -> bool {
        self.0.get(id).is_some_and(|c| cursor < c.cursor) || self.holds(id, now_ms)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Asks for `id` at the next tick: at most once, and while fewer than `max`
/// are waiting (more are dropped; their requests still go to ext_authz, and
/// the next one asks again).
pub fn ask_once(pending: &mut Vec<String>, id: &str, max: usize) {
    if pending.len() < max && !pending.iter().any(|p| p == id) {
        pending.push(id.to_string());
    }
}

/// Why a tenant's list is not used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMiss {
    /// Not looked up yet: the caller asks for it.
    Unknown,
    /// Changed within `HOLD_MS`: asked for once the hold is over.
    Held,
}

/// By tenant: `Some(list)` enforced, `None` not enforced.
pub struct TenantLists<T> {
    lists: HashMap<String, Option<T>>,
    changed: Changes,
}

impl<T> Default for TenantLists<T> {
    fn default() -> Self {
        Self { lists: HashMap::new(), changed: Changes::default() }
    }
}

impl<T> TenantLists<T> {
    pub fn clear(&mut self) {
        self.lists.clear();
        self.changed.clear();
    }

    /// The tenant's list changed (the feed's `…_whitelist_changed`).
    pub fn changed(&mut self, tenant_id: String, cursor: u64, now_ms: u64) {
        self.lists.remove(&tenant_id);
        if !self.changed.record(tenant_id, cursor, now_ms) {
            self.lists.clear();
        }
    }

    /// Takes a lookup's list read at `cursor`, parsed by `parse`, arriving
    /// at `now_ms`; one that may predate a change heard of (read before it,
    /// or answered within its hold), or one that does not parse (ext-authz
    /// would not apply it either), is not taken.
    pub fn apply<E>(
        &mut self,
        tenant_id: &str,
        (cursor, now_ms): (u64, u64),
        answer: WhitelistAnswer,
        parse: impl FnOnce(&[String]) -> Result<T, E>,
    ) {
        if self.changed.stale(tenant_id, cursor, now_ms) {
            return;
        }
        let list = match answer.enforced {
            true => match parse(&answer.entries) {
                Ok(list) => Some(list),
                Err(_) => return,
            },
            false => None,
        };
        if self.lists.len() >= MAX_TENANTS {
            self.lists.clear();
        }
        self.lists.insert(tenant_id.to_string(), list);
    }

    /// The tenant's list (`Ok(None)`: not enforced).
    pub fn get(&self, tenant_id: &str, now_ms: u64) -> Result<Option<&T>, ListMiss> {
        if self.changed.holds(tenant_id, now_ms) {
            return Err(ListMiss::Held);
        }
        self.lists.get(tenant_id).map(Option::as_ref).ok_or(ListMiss::Unknown)
    }
}
