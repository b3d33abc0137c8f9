//! What the in-proxy filter verifies and signs with (served by the feed,
//! ext-authz/src/edge.rs): apart, so that the Check's settings and the
//! feed both use it without depending on each other.

use caas_core::secret::Secret;

/// What the filter verifies and signs with: the same secrets ext-authz uses.
#[derive(Clone)]
pub struct EdgeMaterial {
    pub issuer: String,
    pub jwt_secret: Secret,
    pub jwt_secret_previous: Option<Secret>,
    pub service_secret: Secret,
    pub trusted_proxy_hops: usize,
    /// QUOTAS_ENABLED: the filter counts quotas only where ext-authz does.
    pub quotas: bool,
    /// POLICY_TABLE's text: a route without a declared policy (meshes) gets
    /// the table's, in the filter as in the Check.
    pub policy_table: Option<String>,
}
