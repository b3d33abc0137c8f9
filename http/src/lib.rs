//! caas-http: what every CAAS HTTP service shares at its edge — the one
//! error type and its JSON shape, JSON bodies with our error codes, the
//! gateway context verified once per request, and the ops routes.
//!
//! It turns HTTP into caas-core calls and back; it holds no rule of its own.

mod context;
mod error;
mod json;
mod openapi;
mod ops;

pub use context::{
    ApiKeyCaller, ClientIp, DashboardCaller, EndUser, Observer, OptionalCaller, RequestIds, VerifiedContext,
    context_of, observe, require, signed_context, trace_of,
};
pub use error::{ApiError, ErrorBody, ErrorCode, ErrorDetail};
pub use json::{ApiJson, OptionalJson};
pub use openapi::declare_shared_answers;
pub use ops::{down, health, live, method_not_allowed, metrics, not_found};
