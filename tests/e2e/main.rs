//! End-to-end tests: real Envoy in front of the real services, on
//! PostgreSQL and Redis, spoken to over HTTP from several loopback addresses
//! (all of 127/8 is this machine). One binary; modules by flow.

// A test binary: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod attacks;
mod caas_up;
mod console;
mod docs;
mod end_user;
mod failure;
mod fast_path;
mod lifecycle;
mod login_abuse;
mod metrics;
mod onboarding;
mod openapi;
mod quotas;
mod realtime;
mod ws;
