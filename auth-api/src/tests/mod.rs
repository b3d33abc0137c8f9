//! Handler tests: `app(state).oneshot(request)`, real SQLite (and PostgreSQL
//! where concurrency matters), contexts signed with core's signer.

mod abuse;
mod clients;
mod console;
mod harness;
mod internal;
mod lifecycle;
mod quotas;
mod sessions;
