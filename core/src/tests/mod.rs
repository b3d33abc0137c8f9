//! Conformance tests: each body runs on every backend (SQLite and PostgreSQL;
//! in-process and Redis cache and bus).

mod cache_bus;
mod chat;
mod credentials;
mod loginguard;
mod quotas;
mod store;
#[cfg(unix)]
mod tls;
mod validator;
