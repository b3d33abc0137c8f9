//! Quotas in the filter: requests ext-authz counted ahead of time in an end
//! user's or an API key's buckets (`POST /edge/v1/lease`,
//! ext-authz/src/edge.rs), spent one per request the filter allows. With
//! nothing left the request goes to ext_authz, which counts it as always;
//! what the filter stops holding unspent it gives back (docs/DESIGN.md,
//! "Quotas: leased from ext-authz's own buckets").

use std::collections::HashMap;

use serde::Deserialize;

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
/// Holders with a lease (or waiting for one) held at once; past it the
/// table is emptied (what they held is given back; their requests go to
/// ext_authz until leased again).
pub const MAX_LEASED: usize = 10_000;
/// Leases asked for (and given back, and keys said used) in one call
/// (ext-authz's bound: edge.rs `MAX_LEASES`).
pub const LEASES_PER_CALL: usize = 256;
/// A key's use is told to ext-authz at most this often (ms): it records a
/// key's last use once a minute.
pub const USE_REPORT_MS: u64 = 60_000;

/// Whose requests a lease counts: an end user's or an API key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Key,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::User, Kind::Key];

    /// The field that names the holder in a lease call.
    fn field(self) -> &'static str {
        match self {
            Kind::User => "user_id",
            Kind::Key => "key_id",
        }
    }
}

/// A holder as a lease call names it: its kind, tenant id and own id.
pub type Holder = (Kind, String, String);

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
struct LeaseAnswer {
    granted: Vec<u32>,
}

/// By tenant, then holder id: looked up with borrowed ids, so spending
/// allocates nothing.
type Table = HashMap<String, HashMap<String, Lease>>;

#[derive(Default)]
pub struct Leases {
    /// One table per `Kind` (an end user's id and a key's never meet).
    tables: [Table; 2],
    /// Leased requests no longer held (limits changed, resync, a full
    /// table), to give back at the next tick.
    giving: Vec<(Holder, u32)>,
    /// Keys allowed with: when each was last told to ext-authz (ms).
    reported: HashMap<String, u64>,
    /// Keys to tell ext-authz were used.
    used: Vec<String>,
}

fn json_of(holder: (Kind, &str, &str)) -> serde_json::Map<String, serde_json::Value> {
    let (kind, tenant_id, id) = holder;
    let mut fields = serde_json::Map::new();
    fields.insert("tenant_id".into(), tenant_id.into());
    fields.insert(kind.field().into(), id.into());
    fields
}

impl Leases {
    fn table(&mut self, kind: Kind) -> &mut Table {
        &mut self.tables[kind as usize]
    }

    /// Spends one of the holder's leased requests; with none left, notes
    /// the demand (asked for at the next tick) and says no.
    pub fn spend(&mut self, kind: Kind, tenant_id: &str, id: &str, now_ms: u64) -> bool {
        let lease = match self.tables[kind as usize].get_mut(tenant_id).and_then(|held| held.get_mut(id)) {
            Some(lease) => lease,
            None => {
                if self.tables.iter().flat_map(HashMap::values).map(HashMap::len).sum::<usize>() >= MAX_LEASED {
                    self.release(None);
                }
                let held = self.table(kind).entry(tenant_id.to_string()).or_default();
                held.entry(id.to_string()).or_default()
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

    /// Notes that a request was allowed with `key_id`: told to ext-authz at
    /// the next tick, once per `USE_REPORT_MS`.
    pub fn key_used(&mut self, key_id: &str, now_ms: u64) {
        if self.reported.get(key_id).is_some_and(|at| now_ms.saturating_sub(*at) < USE_REPORT_MS) {
            return;
        }
        if self.reported.len() >= MAX_LEASED {
            self.reported.clear();
        }
        self.reported.insert(key_id.to_string(), now_ms);
        if self.used.len() < LEASES_PER_CALL {
            self.used.push(key_id.to_string());
        }
    }

    /// Stops holding the leases of `tenant_id` (all: `None`): what is left
    /// of them is given back at the next tick.
    pub fn release(&mut self, tenant_id: Option<&str>) {
        for kind in Kind::ALL {
            let table = &mut self.tables[kind as usize];
            let released: Vec<(String, HashMap<String, Lease>)> = match tenant_id {
                Some(tenant_id) => table.remove_entry(tenant_id).into_iter().collect(),
                None => table.drain().collect(),
            };
            for (tenant_id, held) in released {
                for (id, lease) in held {
                    if lease.left > 0 {
                        self.giving.push(((kind, tenant_id.clone(), id), lease.left));
                    }
                }
            }
        }
    }

    /// The body of the next `POST /edge/v1/lease`, and the holders to hand
    /// back to `apply` with its answer. Asks for each holder that found
    /// nothing left, or that would run out before the next tick at its last
    /// tick's pace, twice that pace. Gives back what is left of a lease
    /// lapsed (`LEASE_MS`) or idle (`IDLE_MS`), and of those released; a
    /// call that fails loses them (the quota then refuses early, never
    /// late). Says which keys were used. Forgets holders with nothing held
    /// or wanted.
    pub fn asks(&mut self, now_ms: u64) -> Option<(Vec<Holder>, Vec<u8>)> {
        let sending = self.giving.len().min(LEASES_PER_CALL);
        let mut returned: Vec<serde_json::Value> = self
            .giving
            .drain(..sending)
            .map(|((kind, tenant_id, id), n)| {
                let mut fields = json_of((kind, &tenant_id, &id));
                fields.insert("n".into(), n.into());
                fields.into()
            })
            .collect();
        let mut asked = Vec::new();
        let mut asks = Vec::new();
        for kind in Kind::ALL {
            let table = &mut self.tables[kind as usize];
            for (tenant_id, held) in table.iter_mut() {
                held.retain(|id, l| {
                    let lapsed = now_ms.saturating_sub(l.granted_at) >= LEASE_MS;
                    let idle = now_ms.saturating_sub(l.spent_at) >= IDLE_MS;
                    if l.left > 0 && !l.asked && (lapsed || idle) && returned.len() < LEASES_PER_CALL {
                        let mut fields = json_of((kind, tenant_id, id));
                        fields.insert("n".into(), l.left.into());
                        returned.push(fields.into());
                        l.left = 0;
                    }
                    l.asked || l.wanted || l.used > 0 || l.left > 0
                });
            }
            table.retain(|_, held| !held.is_empty());
            for (tenant_id, held) in table.iter_mut() {
                for (id, lease) in held {
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
                    let mut fields = json_of((kind, tenant_id, id));
                    fields.insert("want".into(), want.into());
                    asks.push(serde_json::Value::from(fields));
                    asked.push((kind, tenant_id.clone(), id.clone()));
                    lease.asked = true;
                    lease.wanted = false;
                    lease.used = 0;
                }
            }
        }
        let used = std::mem::take(&mut self.used);
        if asked.is_empty() && returned.is_empty() && used.is_empty() {
            return None;
        }
        let body = serde_json::json!({ "leases": asks, "returned": returned, "used": used });
        Some((asked, body.to_string().into_bytes()))
    }

    /// Applies ext-authz's answer to the asks for `asked` (`None`: no
    /// answer; they are asked again when wanted). What is left of the
    /// previous grant, if still fresh, joins the new one (an ask is sent
    /// only when it is about to run out, so little is carried over).
    pub fn apply(&mut self, asked: &[Holder], body: Option<&[u8]>, now_ms: u64) {
        let granted = body.and_then(|b| serde_json::from_slice::<LeaseAnswer>(b).ok()).map(|a| a.granted);
        for (i, (kind, tenant_id, id)) in asked.iter().enumerate() {
            let Some(lease) = self.table(*kind).get_mut(tenant_id).and_then(|held| held.get_mut(id)) else {
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
}
