//! caas-rules: the rules of CAAS as pure functions. What a well-formed API
//! key, refresh token and access token are; how the gateway's context is
//! signed and verified; what a tenant's IP and Origin whitelists allow; which
//! address a request came from; what each route requires and how each refusal
//! is spelled.
//!
//! It must stay pure: no tokio, sqlx, redis, axum or tonic, no clock and no
//! randomness it is not handed (`now` and `rng` are parameters). That is what
//! lets the same rules run in every service and inside Envoy (wasm32-wasip1;
//! the test command builds it for that target).

pub mod api_key;
pub mod context;
pub mod cors;
pub mod denial;
pub mod jwt;
pub mod names;
pub mod net;
pub mod policy;
pub mod quota;
pub mod refresh_token;
pub mod request;
pub mod secret;
pub mod session;
pub mod trace;
pub mod whitelist;
