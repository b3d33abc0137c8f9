//! caas: the operator's command. `caas up` runs the whole stack in one
//! process on the embedded default (SQLite, in-process bus) with Envoy as a
//! child; `caas migrate` applies migrations; `caas envoy-config` renders the
//! gateway configuration for other deployments.

pub mod command;
pub mod envoy;
pub mod stack;

#[cfg(test)]
mod tests;
