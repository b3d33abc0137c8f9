//! Shadow mode (`USE_AUTH_SERVICE=false`): decide, log and count, but allow,
//! while services migrate to the signed context.

use crate::decision::{Decision, Reason};

/// The decision as shadow mode applies it.
pub fn apply(decision: Decision) -> Decision {
    match decision {
        // Services that have not moved to the signed context still validate
        // the credential themselves (a socket's `?token=` included).
        Decision::Allow { mut grant, .. } => {
            grant.strip_query.clear();
            Decision::Allow { grant, strip_credentials: false }
        }
        // A route without a policy is a gateway misconfiguration, refused in
        // either mode.
        Decision::Deny { reason: Reason::PolicyMissing, .. } => decision,
        // Let through without any context: downstream keeps validating.
        Decision::Deny { reason, tenant_id, .. } => Decision::ShadowDeny { reason, tenant_id },
        Decision::ShadowDeny { .. } | Decision::Preflight { .. } => decision,
    }
}
