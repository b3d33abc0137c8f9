//! Each connection's context in the shared cache: `socket:conn:{id}` (its
//! tenant, user, session, node and expiry; time to live = token expiry) and a
//! per-user index `socket:user:{tenant}:{user}`, so any node can see who is
//! connected where. Best effort: the node's own registry is authoritative
//! for its connections, so a cache outage never drops a socket.

use std::sync::Arc;
use std::time::Duration;

use caas_core::cache::Cache;
use caas_core::id::unix_now;

use crate::auth::Identity;

pub struct Presence {
    cache: Arc<dyn Cache>,
    node: String,
}

impl Presence {
    pub fn new(cache: Arc<dyn Cache>, node: String) -> Self {
        Self { cache, node }
    }

    pub fn connection_key(id: &str) -> String {
        format!("socket:conn:{id}")
    }

    pub fn user_key(tenant_id: &str, user_id: &str) -> String {
        format!("socket:user:{tenant_id}:{user_id}")
    }

    pub async fn save(&self, id: &str, identity: &Identity) {
        let ttl = Duration::from_secs(identity.expires_at.saturating_sub(unix_now()).max(1) as u64);
        let value = serde_json::json!({
            "tenant_id": identity.tenant_id,
            "user_id": identity.user_id,
            "session_id": identity.session_id,
            "node": self.node,
            "expires_at": identity.expires_at,
        })
        .to_string();
        if let Err(error) = self.cache.set(&Self::connection_key(id), &value, ttl).await {
            tracing::debug!(%error, "could not store socket context");
        }
        if let Err(error) = self.cache.set_add(&Self::user_key(&identity.tenant_id, &identity.user_id), id, ttl).await {
            tracing::debug!(%error, "could not index socket by user");
        }
    }

    pub async fn remove(&self, id: &str, identity: &Identity) {
        let _ = self.cache.delete(&Self::connection_key(id)).await;
        let _ = self.cache.set_remove(&Self::user_key(&identity.tenant_id, &identity.user_id), id).await;
    }
}
