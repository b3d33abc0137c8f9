//! What a route requires, as declared by Envoy per route
//! (`typed_per_filter_config` → `check_settings.context_extensions.policy`).

/// The credential a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No credential (registration, login); the caller's IP is still vouched for.
    Public,
    /// A dashboard token (aud `caas-dashboard`).
    Dashboard,
    /// An API key in `x-api-key`, from an IP in the tenant's whitelist.
    ApiKey,
    /// The credential is a refresh token in the body (checked by auth-api);
    /// an API key (with its IP) or an end user's access token, when one is
    /// also sent, is checked here.
    Refresh,
    /// An end user's token (aud `caas-sdk`) and, when present, its Origin.
    EndUser,
}

impl Policy {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "public" => Policy::Public,
            "dashboard" => Policy::Dashboard,
            "api_key" => Policy::ApiKey,
            "refresh" => Policy::Refresh,
            "end_user" => Policy::EndUser,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Public => "public",
            Policy::Dashboard => "dashboard",
            Policy::ApiKey => "api_key",
            Policy::Refresh => "refresh",
            Policy::EndUser => "end_user",
        }
    }

    /// Routes a browser may call (and so preflight).
    pub fn browser_facing(self) -> bool {
        !matches!(self, Policy::ApiKey)
    }
}
