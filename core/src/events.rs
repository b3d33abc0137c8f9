//! Events on the bus: every credential change (so that every process holding
//! a cache of that credential can evict it) and every new chat message (so
//! that every socket node can deliver it).

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::store::WhitelistKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A key was created, demoted to secondary, or revoked.
    ApiKeyChanged { tenant_id: String, key_id: String, key_hash: String },
    /// `version` is the whitelist's after the change (0 from a version of
    /// CAAS that did not send one): a shared-cache copy older than it is stale.
    IpWhitelistChanged {
        tenant_id: String,
        #[serde(default)]
        version: i64,
    },
    OriginWhitelistChanged {
        tenant_id: String,
        #[serde(default)]
        version: i64,
    },
    /// Logout, refresh-token reuse, or an operator: deny at once, everywhere.
    SessionRevoked { tenant_id: String, session_id: String },
    /// A tenant's quotas were set: every gateway drops its cached copy.
    RateLimitsChanged { tenant_id: String },
    /// A message was stored: socket nodes deliver it to their subscribers.
    MessageCreated { tenant_id: String, message: Message },
}

/// The events of each kind of change, built in one place: the store records
/// them in the change's transaction (core/src/store/changes.rs) and the use
/// case publishes the same ones after the commit (core/src/credentials.rs).
impl Event {
    pub fn key_changed(tenant_id: &str, key_id: &str, key_hash: &str) -> Self {
        Event::ApiKeyChanged { tenant_id: tenant_id.into(), key_id: key_id.into(), key_hash: key_hash.into() }
    }

    pub fn session_revoked(tenant_id: &str, session_id: &str) -> Self {
        Event::SessionRevoked { tenant_id: tenant_id.into(), session_id: session_id.into() }
    }

    pub fn whitelist_changed(kind: WhitelistKind, tenant_id: &str, version: i64) -> Self {
        let tenant_id = tenant_id.to_string();
        match kind {
            WhitelistKind::Ip => Event::IpWhitelistChanged { tenant_id, version },
            WhitelistKind::Origin => Event::OriginWhitelistChanged { tenant_id, version },
        }
    }

    pub fn rate_limits_changed(tenant_id: &str) -> Self {
        Event::RateLimitsChanged { tenant_id: tenant_id.into() }
    }
}
