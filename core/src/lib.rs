//! caas-core: the rules of CAAS and the storage they run on — what a valid API
//! key, access token, session, whitelist and gateway context are; the
//! database, shared cache and event bus behind them; and the validator that
//! applies the rules with caching. Every service (auth-api, ext-authz, socket,
//! chat) calls into this crate and none re-implements a rule.
//!
//! It must not depend on any transport: no axum, tonic, hyper or tungstenite.
//! Each service is a thin edge that turns its protocol into calls here.

// The pure rules, re-exported where services have always found them; the
// few that need randomness get the OS's here.
pub mod api_key;
pub mod refresh_token;
pub mod secret;
pub use caas_rules::{context, denial, jwt, net, policy, whitelist};

pub mod bus;
pub mod cache;
pub mod chat;
pub mod config;
pub mod credentials;
pub mod events;
pub mod feed;
pub mod id;
pub mod loginguard;
pub mod message;
pub mod metrics;
pub mod password;
pub mod quotas;
pub mod ratelimit;
pub mod retention;
pub mod store;
pub mod validate;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;
