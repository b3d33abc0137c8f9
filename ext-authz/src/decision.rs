//! What the gateway decided, and how each decision is answered: its HTTP
//! status and gRPC code side by side. `check` produces it, `response` turns
//! it into a CheckResponse.

use caas_core::context::RequestContext;
pub use caas_rules::denial::{Reason, Refused};

/// google.rpc.Code values the answers use.
pub const GRPC_OK: i32 = 0;
pub const GRPC_PERMISSION_DENIED: i32 = 7;
pub const GRPC_RESOURCE_EXHAUSTED: i32 = 8;
pub const GRPC_UNAVAILABLE: i32 = 14;
pub const GRPC_UNAUTHENTICATED: i32 = 16;

/// What a policy grants an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub context: RequestContext,
    /// An Origin the tenant allows: echoed in CORS response headers.
    pub cors_origin: Option<String>,
    /// Query parameters to drop before forwarding (a WebSocket `token`).
    pub strip_query: Vec<String>,
}

impl Grant {
    pub fn new(context: RequestContext) -> Self {
        Self { context, cors_origin: None, strip_query: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        grant: Grant,
        /// Remove `authorization` and `x-api-key` before forwarding.
        strip_credentials: bool,
    },
    /// Shadow mode: would be denied for `reason`, let through without context.
    ShadowDeny {
        reason: Reason,
        tenant_id: Option<String>,
    },
    Preflight {
        origin: String,
    },
    Deny {
        reason: Reason,
        tenant_id: Option<String>,
        /// The request's Origin, so a browser can read why it was refused.
        origin: Option<String>,
    },
}

/// The HTTP status a decision is answered with, and the gRPC code with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub grpc: i32,
}

impl Decision {
    pub fn answer(&self) -> Answer {
        match self {
            Decision::Allow { .. } | Decision::ShadowDeny { .. } => Answer { status: 200, grpc: GRPC_OK },
            // Not OK, so Envoy answers with our 204 and never forwards the
            // preflight: it opens no route.
            Decision::Preflight { .. } => Answer { status: 204, grpc: GRPC_PERMISSION_DENIED },
            Decision::Deny { reason, .. } => {
                let refused = reason.answer();
                Answer { status: refused.status(), grpc: grpc_code(refused) }
            }
        }
    }
}

fn grpc_code(refused: Refused) -> i32 {
    match refused {
        Refused::Unauthenticated => GRPC_UNAUTHENTICATED,
        Refused::Unavailable => GRPC_UNAVAILABLE,
        Refused::TooManyRequests => GRPC_RESOURCE_EXHAUSTED,
        Refused::BadRequest | Refused::Forbidden | Refused::Internal => GRPC_PERMISSION_DENIED,
    }
}

pub fn deny(reason: Reason, tenant_id: Option<String>, origin: Option<&str>) -> Decision {
    Decision::Deny { reason, tenant_id, origin: origin.map(str::to_string) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caas_core::validate::Denial;

    #[test]
    fn each_refusal_is_answered_with_its_status_and_grpc_code() {
        for (reason, status, grpc) in [
            (Reason::CredentialInQuery, 400, GRPC_PERMISSION_DENIED),
            (Reason::Denied(Denial::MissingCredentials), 401, GRPC_UNAUTHENTICATED),
            (Reason::Denied(Denial::IpNotAllowed), 403, GRPC_PERMISSION_DENIED),
            (Reason::PreflightNotAllowed, 403, GRPC_PERMISSION_DENIED),
            (Reason::PolicyMissing, 500, GRPC_PERMISSION_DENIED),
            (
                Reason::RateLimited(caas_rules::quota::Throttle {
                    scope: caas_rules::quota::Scope::Tenant,
                    limit: caas_rules::quota::DEFAULT_LIMITS.per_tenant,
                    retry_after: 1,
                }),
                429,
                GRPC_RESOURCE_EXHAUSTED,
            ),
            (Reason::Denied(Denial::Unavailable), 503, GRPC_UNAVAILABLE),
            (Reason::DeadlineExceeded, 503, GRPC_UNAVAILABLE),
            (Reason::TooManyFailures { retry_after: 30 }, 429, GRPC_RESOURCE_EXHAUSTED),
        ] {
            assert_eq!(deny(reason, None, None).answer(), Answer { status, grpc }, "{reason:?}");
        }
        let shadow = Decision::ShadowDeny { reason: Reason::PolicyMissing, tenant_id: None };
        assert_eq!(shadow.answer(), Answer { status: 200, grpc: GRPC_OK });
        let preflight = Decision::Preflight { origin: "https://a.example".into() };
        assert_eq!(preflight.answer(), Answer { status: 204, grpc: GRPC_PERMISSION_DENIED });
    }
}
