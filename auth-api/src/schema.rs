//! Response bodies of auth-api, typed so the OpenAPI document describes
//! exactly what the handlers send.

use serde::Serialize;
use utoipa::ToSchema;

/// A key as issued: the only time the full key is ever returned.
#[derive(Serialize, ToSchema)]
pub struct IssuedKey {
    pub id: String,
    /// The key itself; store it now, it is never shown again.
    pub key: String,
    pub prefix: String,
    pub role: String,
}

#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub client_id: String,
    pub name: String,
    pub email: String,
    pub api_key: IssuedKey,
}

#[derive(Serialize, ToSchema)]
pub struct AccessToken {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: i64,
}

/// A key as listed: never the key itself.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub prefix: String,
    /// `primary` or `secondary`.
    pub role: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct Profile {
    pub client_id: String,
    pub name: String,
    pub email: String,
    pub created_at: i64,
    pub api_keys: Vec<KeyView>,
    pub ip_whitelist: Vec<String>,
    pub origin_whitelist: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub api_keys: Vec<KeyView>,
}

#[derive(Serialize, ToSchema)]
pub struct PreviousKey {
    pub id: String,
    pub role: String,
    /// End of its grace period.
    pub expires_at: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct RotatedKey {
    pub id: String,
    pub key: String,
    pub prefix: String,
    pub role: &'static str,
    pub created_at: i64,
    pub previous_key: Option<PreviousKey>,
    pub revoked_key_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_expires_in: i64,
    pub session_id: String,
    pub user_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct ValidatedToken {
    pub valid: bool,
    pub tenant_id: String,
    pub user_id: String,
    pub session_id: String,
    /// `jwt` (end user) or `dashboard`.
    pub auth_type: &'static str,
    pub expires_at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ValidatedKey {
    pub valid: bool,
    pub tenant_id: String,
    pub key_id: String,
    pub auth_type: &'static str,
}

/// How many sessions a sign-out, password change or ban ended.
#[derive(Serialize, ToSchema)]
pub struct RevokedSessions {
    /// Sessions revoked by this call (0 on a repeat: nothing was left).
    pub revoked_sessions: usize,
}

/// A live dashboard session of the caller's account.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub created_at: i64,
    /// Recorded at sign-in, then at most once a minute.
    pub last_used_at: Option<i64>,
    /// Client address of the sign-in, then of the last recorded use.
    pub ip: Option<String>,
    pub expires_at: i64,
    /// The session of the token that made this request.
    pub current: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// An end user banned: every session of theirs in the caller's tenant revoked.
#[derive(Serialize, ToSchema)]
pub struct UserRevoked {
    pub user_id: String,
    /// Sessions revoked by this call (0 on a repeat).
    pub revoked_sessions: usize,
}

/// `cidrs`: what `IpWhitelist::parse` accepts, as far as a schema can say.
pub(crate) fn cidr_list() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let entry = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(64))
        .pattern(Some(r"\S"))
        .description(Some(
            "An IPv4 or IPv6 address, or a CIDR whose host bits are zero (`10.0.0.0/8`, `2001:db8::/32`)",
        ));
    ArrayBuilder::new().items(entry).max_items(Some(caas_core::whitelist::MAX_ENTRIES)).build()
}

/// `origins`: what `OriginWhitelist::parse` accepts, as far as a schema can say.
pub(crate) fn origin_list() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let entry = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(8))
        .max_length(Some(300))
        .pattern(Some(r"^\s*[Hh][Tt][Tt][Pp][Ss]?://[^/?#@\s]+\s*$"))
        .description(Some(
            "`scheme://host[:port]` with http or https and no path, query or credentials; `https://*.example.com` matches its subdomains",
        ));
    ArrayBuilder::new().items(entry).max_items(Some(caas_core::whitelist::MAX_ENTRIES)).build()
}

/// `audience` of `/internal/validate`.
pub(crate) fn audience() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some([
            serde_json::json!("caas-sdk"),
            serde_json::json!("caas-dashboard"),
            serde_json::Value::Null,
        ]))
        .description(Some("`caas-sdk` (the default) or `caas-dashboard`"))
        .build()
}

/// `ip` of `/internal/validate-api-key`: an IPv4 or IPv6 address.
pub(crate) fn ip_address() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let format = |f| ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(f)));
    AnyOfBuilder::new()
        .item(format(KnownFormat::Ipv4))
        .item(format(KnownFormat::Ipv6))
        .description(Some("The caller's address, IPv4 or IPv6"))
        .build()
        .into()
}

/// One audit row, as the console's activity page lists it.
#[derive(Serialize, ToSchema)]
pub struct ActivityEntry {
    pub id: i64,
    /// `api_key.rotated`, `ip_whitelist.updated`, `client.login`, …
    pub action: String,
    /// The dashboard account, API key or end user that acted.
    pub actor: Option<String>,
    pub ip: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
    pub created_at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ActivityPage {
    /// Newest first.
    pub entries: Vec<ActivityEntry>,
    /// Pass as `before` for the next (older) page; null on the last.
    pub next_before: Option<i64>,
}
