//! caas-edge-wasm: the in-proxy fast path. A proxy-wasm HTTP filter that
//! Envoy runs after stripping client-sent context headers and before
//! ext_authz. It allows an end user's request (route policy `end_user`) and
//! an API key's (`api_key`) the way ext-authz would, with caas-rules' code:
//! the token's signature, issuer, audience, times and `kid`, its session,
//! and the Origin; the key's hash, record and its tenant's IP whitelist; each
//! looked up from ext-authz and kept current through ext-authz's feed; the
//! quotas, leased from ext-authz's buckets; the signed context headers. When
//! it allows, it marks the request with filter state (`wasm.caas_edge`),
//! which only a filter can write, and the ext_authz filter, wrapped in a
//! matcher on that state, is skipped. A CORS preflight on a route browsers
//! may call, and the refusal of a credential it verified (expired, revoked,
//! a refused Origin or address: never a guess), it answers itself, as
//! ext-authz would, and reports the refusal for ext-authz's log and metrics.
//! Everything else goes on to ext_authz unchanged (docs/DESIGN.md, "The
//! in-proxy fast path").
//!
//! `state`, `api_keys`, `lease`, `reports` and `decide` are pure and tested on the host; `filter` is the
//! Envoy glue, built for wasm32-wasip1 only.

pub mod api_keys;
pub mod decide;
pub mod lease;
pub mod lists;
pub mod reports;
pub mod state;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(test)]
mod tests;
