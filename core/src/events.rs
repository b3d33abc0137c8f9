//! Events on the bus: every credential change (so that every process holding
//! a cache of that credential can evict it) and every new chat message (so
//! that every socket node can deliver it).

use serde::{Deserialize, Serialize};

use crate::message::Message;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A key was created, demoted to secondary, or revoked.
    ApiKeyChanged {
        tenant_id: String,
        key_id: String,
        key_hash: String,
    },
    IpWhitelistChanged {
        tenant_id: String,
    },
    OriginWhitelistChanged {
        tenant_id: String,
    },
    /// Logout, refresh-token reuse, or an operator: deny at once, everywhere.
    SessionRevoked {
        tenant_id: String,
        session_id: String,
    },
    /// A tenant's quotas were set: every gateway drops its cached copy.
    RateLimitsChanged {
        tenant_id: String,
    },
    /// A message was stored: socket nodes deliver it to their subscribers.
    MessageCreated {
        tenant_id: String,
        message: Message,
    },
}
