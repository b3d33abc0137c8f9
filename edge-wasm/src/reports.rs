//! What the filter tells ext-authz of its decisions, in bounded batches off
//! the request's path:
//!
//! - its refusals (`DenialReport`), always: ext-authz logs each as it logs
//!   a Check's refusal and counts it in the same metrics
//!   (`POST /edge/v1/denials`), so its log and `gateway_auth_failures_total`
//!   stay complete whoever answered;
//! - its decisions as spans, when ext-authz exports spans (its material's
//!   `trace_export`): each allow (and each preflight it answers) continues
//!   the caller's trace (or starts one) with a span of its own, as a Check
//!   does (ext-authz/src/trace.rs), and ext-authz exports them as its own
//!   (`POST /edge/v1/spans`). A trace then shows the gateway's decision
//!   whichever of the two made it, and the service's span has it as parent;
//! - how many allows and preflights it made on each policy's routes, and
//!   how many requests it left to ext_authz by reason (`Tally`), always:
//!   ext-authz counts the former in `gateway_requests_total` with its own
//!   (`POST /edge/v1/decisions`), so that metric, and the refusal ratio
//!   over it (deploy/monitoring/alerts.yml), see every decision whoever
//!   made it, and both in `gateway_edge_decisions_total` and
//!   `gateway_edge_forwarded_total`, where an operator sees what the fast
//!   path does without scraping Envoy.

use std::hash::{BuildHasher, Hasher};

use caas_rules::policy::Policy;
use serde::Serialize;

use crate::decide::Miss;

/// Reports held for the next batch, of each kind; past it, new ones are
/// dropped (and counted).
pub const MAX_HELD: usize = 2_048;
/// Reports sent in one call (ext-authz's `MAX_SPANS`, `MAX_DENIALS`).
pub const MAX_BATCH: usize = 512;

/// One decision, as ext-authz reads it (ext-authz/src/edge.rs, `EdgeSpan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeSpan {
    pub trace_id: String,
    /// Empty: the trace began here.
    pub parent_span_id: String,
    pub span_id: String,
    pub policy: &'static str,
    pub decision: Decision,
    /// Empty for a preflight.
    pub tenant_id: String,
    pub request_id: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

/// What the filter decided (a Check's `caas.decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Preflight,
}

impl Decision {
    const ALL: [Decision; 2] = [Decision::Allow, Decision::Preflight];
}

/// The filter's allows and preflights on each policy's routes, and the
/// requests it left to ext_authz by reason, not yet taken by ext-authz.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    decided: [[u64; Decision::ALL.len()]; Policy::ALL.len()],
    forwarded: [u64; Miss::ALL.len()],
}

#[derive(Serialize)]
struct Count {
    policy: &'static str,
    decision: Decision,
    count: u64,
}

#[derive(Serialize)]
struct Forwarded {
    reason: &'static str,
    count: u64,
}

impl Tally {
    pub fn add(&mut self, policy: Policy, decision: Decision) {
        let n = &mut self.decided[policy.index()][decision as usize];
        *n = n.saturating_add(1);
    }

    pub fn forwarded(&mut self, miss: Miss) {
        let n = &mut self.forwarded[miss.index()];
        *n = n.saturating_add(1);
    }

    /// Every count so far, as the body of a call, and the counts it carries
    /// (`restore` them if the call is not answered 200); none when there is
    /// nothing to count.
    pub fn batch(&mut self) -> Option<(Vec<u8>, Tally)> {
        let taken = std::mem::take(self);
        let mut decisions = Vec::new();
        for (policy, counts) in Policy::ALL.iter().zip(&taken.decided) {
            for (decision, &count) in Decision::ALL.iter().zip(counts) {
                if count > 0 {
                    decisions.push(Count { policy: policy.as_str(), decision: *decision, count });
                }
            }
        }
        let forwarded: Vec<Forwarded> = Miss::ALL
            .iter()
            .zip(taken.forwarded)
            .filter(|(_, count)| *count > 0)
            .map(|(miss, count)| Forwarded { reason: miss.as_str(), count })
            .collect();
        if decisions.is_empty() && forwarded.is_empty() {
            return None;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "decisions": decisions, "forwarded": forwarded })).ok()?;
        Some((body, taken))
    }

    /// How many decisions and forwards it holds.
    pub fn total(&self) -> u64 {
        let decided = self.decided.iter().flatten().fold(0u64, |n, m| n.saturating_add(*m));
        self.forwarded.iter().fold(decided, |n, m| n.saturating_add(*m))
    }

    /// Counts a call did not deliver, kept for the next one.
    pub fn restore(&mut self, taken: Tally) {
        for (ours, theirs) in self.decided.iter_mut().zip(taken.decided) {
            for (n, m) in ours.iter_mut().zip(theirs) {
                *n = n.saturating_add(m);
            }
        }
        for (n, m) in self.forwarded.iter_mut().zip(taken.forwarded) {
            *n = n.saturating_add(m);
        }
    }
}

/// Ids for new traces and spans: unique, not secret (a span id names a
/// span, it grants nothing). SplitMix64 from a seed the host's randomness
/// gives (std's `RandomState`: WASI `random_get` in Envoy).
pub struct Ids(u64);

impl Default for Ids {
    fn default() -> Self {
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write_u8(0);
        Ids(seed.finish())
    }
}

impl rand_core::RngCore for Ids {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// A refusal the filter answered (ext-authz/src/edge.rs, `EdgeDenial`): the
/// fields of ext-authz's own log line for a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DenialReport {
    pub policy: &'static str,
    /// The refusal's code (caas_rules::denial).
    pub reason: &'static str,
    pub status: u16,
    pub tenant_id: String,
    pub request_id: String,
    /// The caller's, if it sent a valid `traceparent`.
    pub trace_id: String,
    /// Without the query.
    pub path: String,
    pub method: String,
}

/// Spans waiting to be sent.
pub type Spans = Outbox<EdgeSpan>;
/// Refusals waiting to be reported.
pub type Denials = Outbox<DenialReport>;

/// Reports of one kind waiting to be sent.
pub struct Outbox<T> {
    held: Vec<T>,
    /// Dropped since the last `take_dropped` (the buffer was full, or a
    /// batch could not be sent).
    dropped: u64,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox { held: Vec::new(), dropped: 0 }
    }
}

impl<T: Serialize> Outbox<T> {
    pub fn push(&mut self, report: T) {
        if self.held.len() >= MAX_HELD {
            self.dropped += 1;
        } else {
            self.held.push(report);
        }
    }

    /// The next batch's body (`{"<field>": […]}`) and its size, if any is held.
    pub fn batch(&mut self, field: &str) -> Option<(Vec<u8>, usize)> {
        if self.held.is_empty() {
            return None;
        }
        let n = self.held.len().min(MAX_BATCH);
        let batch: Vec<T> = self.held.drain(..n).collect();
        let mut body = serde_json::Map::new();
        body.insert(field.to_string(), serde_json::to_value(&batch).ok()?);
        let body = serde_json::to_vec(&body).ok()?;
        Some((body, n))
    }

    /// A batch that was not taken (`n` spans) counts as dropped.
    pub fn lost(&mut self, n: usize) {
        self.dropped += n as u64;
    }

    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub fn clear(&mut self) {
        self.held.clear();
    }
}
