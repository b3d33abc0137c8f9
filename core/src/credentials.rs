//! Credential use cases: registration, logins, sessions, refresh, logout,
//! signing out everywhere, password changes, banning an end user, API keys
//! and whitelists. Each one commits its change with its audit row
//! (one transaction, in the store) and then announces every credential it
//! changed on the bus, here and nowhere else: a forgotten announcement would
//! leave a revoked key or session valid in other processes' caches.
//! Transports (auth-api) only extract the request, call, and map the result.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::api_key;
use crate::context::{AuthType, RequestContext};
use crate::events::Event;
use crate::id::new_id;
use crate::jwt::{Audience, Claims};
use crate::loginguard::{Hashing, HashingError, KnownAddresses, Overloaded};
use crate::password;
use crate::ratelimit::{RateLimiter, RetryAfter};
use crate::refresh_token;
use crate::store::{
    AccountRecord, ApiKeyRecord, AuditAction, AuditEntry, ChangedKey, NewApiKey, NewSdkSession, RefreshOutcome,
    SessionActivity, SessionKind, SessionsOf, Store, StoreError, WhitelistKind,
};
use crate::validate::Validator;
use crate::whitelist::{InvalidEntry, IpWhitelist, OriginWhitelist};

/// Longest grace period of a rotated-out key.
pub const MAX_GRACE_SECONDS: u64 = 30 * 86_400;
/// Grace period when the caller names none.
pub const DEFAULT_GRACE_SECONDS: u64 = 86_400;
pub const MAX_CLIENT_NAME_CHARS: usize = 100;
pub const MAX_END_USER_NAME_CHARS: usize = 200;
pub const MAX_METADATA_BYTES: usize = 4096;
/// End-user ids under this prefix belong to the console's test sessions
/// (`create_test_session`); a client's backend cannot create them, so a test
/// user is never mistaken for a real one, and activity shows which is which.
pub const TEST_USER_PREFIX: &str = "test:";
/// Shortest first access token of a test session, in seconds.
pub const MIN_TEST_ACCESS_TTL: i64 = 20;
/// A dashboard session's `last_used_at` is written at most this often.
pub const TOUCH_EVERY_SECONDS: i64 = 60;
/// Sessions whose last use this process remembers writing (beyond it, a
/// forgotten session costs one conditional UPDATE that changes nothing).
const TOUCHED_CAPACITY: u64 = 100_000;

/// What went wrong, for the transport to turn into its own answer.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("name must be 1 to {MAX_CLIENT_NAME_CHARS} printable characters")]
    InvalidClientName,
    #[error("email is not a valid address")]
    InvalidEmail,
    /// The password breaks a rule; the message says which.
    #[error("{0}")]
    InvalidPassword(String),
    /// A password change's new password breaks a rule (400 on `new_password`).
    #[error("{0}")]
    InvalidNewPassword(String),
    /// A password change with the wrong current password (403; counted like
    /// a failed login, so it cannot be used to guess).
    #[error("current password is incorrect")]
    WrongCurrentPassword,
    #[error("grace_seconds must be at most {MAX_GRACE_SECONDS}")]
    GraceTooLong,
    #[error("user_id must be 1 to {} bytes without spaces or control characters", crate::chat::MAX_USER_ID_BYTES)]
    InvalidUserId,
    /// An API-key caller naming a user under `TEST_USER_PREFIX` (400 on `user_id`).
    #[error("user ids starting with \"{TEST_USER_PREFIX}\" are reserved for the console's test sessions")]
    ReservedUserId,
    /// A test session's `access_ttl_seconds` out of bounds (400); the
    /// upper bound, the configured access-token lifetime, is carried.
    #[error("access_ttl_seconds must be {MIN_TEST_ACCESS_TTL} to {0}")]
    InvalidTestAccessTtl(i64),
    #[error("name must be at most {MAX_END_USER_NAME_CHARS} printable characters")]
    InvalidEndUserName,
    #[error("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")]
    MetadataTooLarge,
    #[error("metadata must be a JSON object")]
    MetadataNotObject,
    #[error(transparent)]
    InvalidWhitelistEntry(#[from] InvalidEntry),
    /// Too many registrations or failed logins.
    #[error(transparent)]
    Throttled(#[from] RetryAfter),
    /// Unknown email or wrong password: deliberately not saying which.
    #[error("email or password is incorrect")]
    WrongPassword,
    /// The tenant has no active key with this id.
    #[error("no active API key with this id")]
    KeyNotFound,
    /// Malformed, unknown, expired, of a revoked session, or of another tenant.
    #[error("refresh token is invalid, expired or revoked")]
    InvalidRefreshToken,
    /// The token had been used before: its session is now revoked everywhere.
    #[error("this refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    /// Logout with neither a refresh token nor an access-token session.
    #[error("send a refresh_token, or call with an access token")]
    NoSessionNamed,
    /// Too many password checks in progress: refused at once, not queued.
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    /// Hashing a password failed, or its worker thread died.
    #[error("password hashing failed")]
    PasswordHashing,
    /// Registration with an address already in use, or the database failing.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, CredentialError>;

/// How long issued credentials live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub access: Duration,
    pub refresh: Duration,
}

/// Throttles on guessing and sign-up abuse, counted in the shared cache.
/// Per-address counters count caas-rules' `net::address_bucket` (an IPv6
/// /64), not the bare address.
pub struct Throttles {
    /// Per email, for addresses that never logged into it; per (email,
    /// address) for those that did (`known_addresses`).
    pub login_by_email: RateLimiter,
    pub login_by_ip: RateLimiter,
    pub registrations: RateLimiter,
    /// Test end-user sessions started from the console, per tenant.
    pub test_sessions: RateLimiter,
    pub known_addresses: KnownAddresses,
    /// Every password hash and check runs under this bound.
    pub hashing: Hashing,
}

impl From<HashingError> for CredentialError {
    fn from(error: HashingError) -> Self {
        match error {
            HashingError::Overloaded(overloaded) => CredentialError::Overloaded(overloaded),
            HashingError::Failed => CredentialError::PasswordHashing,
        }
    }
}

/// The attempts a login reserved before checking the password: the
/// address's, and the email's (or the email-at-this-address's when the
/// address is known for the email).
struct LoginReservation {
    bucket: String,
    email_subject: String,
    /// The address has logged into this account before.
    known: bool,
}

/// A key as issued: the only time the key itself exists outside the caller.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub id: String,
    pub key: String,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct Registration {
    pub client_id: String,
    pub name: String,
    pub email: String,
    pub key: IssuedKey,
}

/// A signed access token and its lifetime in seconds.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub token: String,
    pub expires_in: i64,
    pub session_id: String,
}

/// The tokens of an SDK session, as issued or refreshed.
#[derive(Debug, Clone)]
pub struct SdkTokens {
    pub access: AccessGrant,
    pub refresh_token: String,
    pub refresh_expires_in: i64,
    pub session_id: String,
    pub user_id: String,
}

#[derive(Debug, Clone)]
pub struct KeyRotation {
    pub key: IssuedKey,
    pub created_at: i64,
    /// The former primary, now secondary until its grace expiry.
    pub demoted: Option<ApiKeyRecord>,
    /// Keys revoked to keep at most two active.
    pub revoked: Vec<ApiKeyRecord>,
}

/// A new end-user session, as the client's backend asks for it.
#[derive(Debug, Clone)]
pub struct SdkSessionRequest {
    pub user_id: String,
    pub name: Option<String>,
    pub metadata: Option<Value>,
}

/// The credential use cases over the store, the validator (whose `publish`
/// evicts this process's caches before telling the others) and the throttles.
pub struct Credentials {
    store: Store,
    validator: Arc<Validator>,
    lifetimes: Lifetimes,
    throttles: Throttles,
    /// Dashboard session id → when this process last wrote its use.
    last_touched: moka::sync::Cache<String, i64>,
}

fn new_key() -> (NewApiKey, String) {
    let generated = api_key::generate();
    (NewApiKey { id: new_id("key"), hash: generated.hash, prefix: generated.display_prefix }, generated.key)
}

fn check_client_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MAX_CLIENT_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(CredentialError::InvalidClientName);
    }
    Ok(name.to_string())
}

/// Metadata is stored as its JSON text.
fn check_metadata(metadata: Option<Value>) -> Result<Option<String>> {
    match metadata {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => {
            let text = value.to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err(CredentialError::MetadataTooLarge);
            }
            Ok(Some(text))
        }
        Some(_) => Err(CredentialError::MetadataNotObject),
    }
}

/// An API-key caller may only act on its own tenant's sessions.
fn api_key_tenant(caller: Option<&RequestContext>) -> Option<&str> {
    caller.filter(|c| c.auth_type == AuthType::ApiKey).map(|c| c.tenant_id.as_str())
}

fn audit_by(caller: &RequestContext, actor: &str, action: AuditAction) -> AuditEntry {
    AuditEntry {
        client_id: Some(caller.tenant_id.clone()),
        actor: Some(actor.into()),
        action,
        ip: Some(caller.client_ip.clone()),
        detail: None,
    }
}

fn sessions_revoked(tenant_id: &str, session_ids: &[String]) -> Vec<Event> {
    session_ids.iter().map(|id| Event::session_revoked(tenant_id, id)).collect()
}

impl Credentials {
    pub fn new(store: Store, validator: Arc<Validator>, lifetimes: Lifetimes, throttles: Throttles) -> Self {
        Self { store, validator, lifetimes, throttles, last_touched: moka::sync::Cache::new(TOUCHED_CAPACITY) }
    }

    fn access_ttl(&self) -> i64 {
        self.lifetimes.access.as_secs() as i64
    }

    fn refresh_ttl(&self) -> i64 {
        self.lifetimes.refresh.as_secs() as i64
    }

    /// After the commit: evicts here at once, then tells every other process.
    async fn announce(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.validator.publish(event).await;
        }
    }

    fn issue(&self, audience: Audience, tenant_id: &str, subject: &str, session_id: &str, now: i64) -> AccessGrant {
        self.issue_for(self.access_ttl(), audience, tenant_id, subject, session_id, now)
    }

    /// An access token living `ttl` seconds.
    fn issue_for(
        &self,
        ttl: i64,
        audience: Audience,
        tenant_id: &str,
        subject: &str,
        session_id: &str,
        now: i64,
    ) -> AccessGrant {
        let jwt = self.validator.jwt();
        let claims = Claims {
            iss: jwt.issuer().to_string(),
            aud: audience.as_str().into(),
            sub: subject.into(),
            tid: tenant_id.into(),
            sid: session_id.into(),
            jti: new_id("jti"),
            iat: now,
            exp: now + ttl,
            nbf: None,
        };
        AccessGrant { token: jwt.issue(&claims), expires_in: ttl, session_id: session_id.into() }
    }

    fn sdk_tokens(&self, tenant_id: &str, user_id: &str, session_id: &str, refresh: String, now: i64) -> SdkTokens {
        SdkTokens {
            access: self.issue(Audience::Sdk, tenant_id, user_id, session_id, now),
            refresh_token: refresh,
            refresh_expires_in: self.refresh_ttl(),
            session_id: session_id.into(),
            user_id: user_id.into(),
        }
    }

    /// A client (tenant) with its dashboard account and first (primary) key.
    /// Throttled per address before anything else, as the cheapest refusal;
    /// the attempt is counted before the password is hashed, so parallel
    /// sign-ups cannot run more hashes than the limit.
    pub async fn register(
        &self,
        name: &str,
        email: &str,
        password: String,
        ip: &str,
        now: i64,
    ) -> Result<Registration> {
        let bucket = caas_rules::net::address_bucket_of(ip);
        self.throttles.registrations.hit(&bucket).await?;
        let name = check_client_name(name)?;
        let email = password::normalize_email(email).ok_or(CredentialError::InvalidEmail)?;
        password::check_password_rules(&password).map_err(CredentialError::InvalidPassword)?;
        let hash = match self.throttles.hashing.hash(password).await {
            Ok(hash) => hash,
            Err(error) => {
                // Nothing was attempted: the reservation is given back.
                self.throttles.registrations.release(&bucket).await;
                return Err(error.into());
            }
        };
        let (client_id, account_id) = (new_id("cl"), new_id("acc"));
        let (key, raw_key) = new_key();
        self.store.register_client(&client_id, &name, &account_id, &email, &hash, &key, Some(ip), now).await?;
        // A brand-new hash can only sit in a negative cache; evict it anyway
        // so that every created key is announced like every other change.
        self.announce([Event::key_changed(&client_id, &key.id, &key.hash)]).await;
        tracing::info!(client_id, "client registered");
        Ok(Registration { client_id, name, email, key: IssuedKey { id: key.id, key: raw_key, prefix: key.prefix } })
    }

    /// Dashboard login: a dashboard session and its access token. The
    /// attempt is reserved in the counters before the password is hashed
    /// (reserve, then settle), so N parallel guesses run at most the limit's
    /// worth of hashes; a failure keeps its reservation, anything else gives
    /// it back.
    pub async fn login(&self, email: &str, password: String, ip: &str, now: i64) -> Result<AccessGrant> {
        let email = password::normalize_email(email).ok_or(CredentialError::InvalidEmail)?;
        if password.len() > password::MAX_PASSWORD_BYTES {
            return Err(CredentialError::InvalidPassword("password is too long".into()));
        }
        let reservation = self.reserve_login(&email, ip).await?;
        let checked = self.check_password(&email, password, reservation.known).await;
        match checked {
            Ok((Some(account), true)) => {
                self.throttles.login_by_email.reset(&reservation.email_subject).await;
                self.throttles.login_by_ip.release(&reservation.bucket).await;
                self.throttles.known_addresses.remember(&email, &reservation.bucket).await;
                self.create_dashboard_session(&account, ip, now).await
            }
            Ok((account, _)) => Err(self.login_failed(account.as_ref(), &email, ip, now).await),
            Err(error) => {
                self.release_login(&reservation).await;
                Err(error)
            }
        }
    }

    /// Counts the attempt per address, then per email (or per email at this
    /// address, when the address has logged into it before): the owner is
    /// never locked out by failures from elsewhere.
    async fn reserve_login(&self, email: &str, ip: &str) -> Result<LoginReservation> {
        let bucket = caas_rules::net::address_bucket_of(ip);
        self.throttles.login_by_ip.hit(&bucket).await?;
        let known = self.throttles.known_addresses.contains(email, &bucket).await;
        let email_subject = if known { format!("{email}\n{bucket}") } else { email.to_string() };
        if let Err(limit) = self.throttles.login_by_email.hit(&email_subject).await {
            // Refused before any check: not a failure of this address.
            self.throttles.login_by_ip.release(&bucket).await;
            return Err(limit.into());
        }
        Ok(LoginReservation { bucket, email_subject, known })
    }

    async fn release_login(&self, reservation: &LoginReservation) {
        self.throttles.login_by_email.release(&reservation.email_subject).await;
        self.throttles.login_by_ip.release(&reservation.bucket).await;
    }

    /// The account (if any) and whether the password is its own. Unknown
    /// emails are verified against a dummy hash: same time, same answer.
    /// A known address may use the hashing slot kept for owners.
    async fn check_password(
        &self,
        email: &str,
        password: String,
        known: bool,
    ) -> Result<(Option<AccountRecord>, bool)> {
        let account = self.store.account_by_email(email).await?;
        let stored = account.as_ref().map(|a| a.password_hash.clone());
        let valid = self.throttles.hashing.verify(password, stored, known).await?;
        Ok((account, valid))
    }

    /// Audits a failure, whose attempt stays counted (best effort: the
    /// caller gets the same refusal whether or not the row was written).
    async fn login_failed(&self, account: Option<&AccountRecord>, email: &str, ip: &str, now: i64) -> CredentialError {
        let entry = AuditEntry {
            client_id: account.map(|a| a.client_id.clone()),
            actor: account.map(|a| a.id.clone()),
            action: AuditAction::ClientLoginFailed,
            ip: Some(ip.into()),
            detail: Some(serde_json::json!({ "email": email })),
        };
        if let Err(error) = self.store.audit(&entry, now).await {
            tracing::error!(%error, "could not write audit entry for a failed login");
        }
        tracing::info!(ip, "dashboard login failed");
        CredentialError::WrongPassword
    }

    /// A session for a dashboard account whose password was just checked.
    pub async fn create_dashboard_session(&self, account: &AccountRecord, ip: &str, now: i64) -> Result<AccessGrant> {
        let session_id = new_id("ses");
        let audit = AuditEntry {
            client_id: Some(account.client_id.clone()),
            actor: Some(account.id.clone()),
            action: AuditAction::ClientLogin,
            ip: Some(ip.into()),
            detail: None,
        };
        self.store
            .create_dashboard_session(
                &session_id,
                &account.client_id,
                &account.id,
                now + self.access_ttl(),
                &audit,
                now,
            )
            .await?;
        self.validator.metrics().session_creations.get_or_create(&[("kind", SessionKind::Dashboard.as_str())]).inc();
        Ok(self.issue(Audience::Dashboard, &account.client_id, &account.id, &session_id, now))
    }

    /// An end user's session, by the client's backend (an API-key caller).
    pub async fn create_sdk_session(
        &self,
        caller: &RequestContext,
        request: SdkSessionRequest,
        now: i64,
    ) -> Result<SdkTokens> {
        if !crate::chat::is_valid_user_id(&request.user_id) {
            return Err(CredentialError::InvalidUserId);
        }
        if request.user_id.starts_with(TEST_USER_PREFIX) {
            return Err(CredentialError::ReservedUserId);
        }
        if request
            .name
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_END_USER_NAME_CHARS || n.chars().any(char::is_control))
        {
            return Err(CredentialError::InvalidEndUserName);
        }
        let metadata = check_metadata(request.metadata)?;
        let (refresh, refresh_hash) = refresh_token::generate();
        let new = NewSdkSession {
            session_id: new_id("ses"),
            client_id: caller.tenant_id.clone(),
            user_id: request.user_id,
            name: request.name,
            metadata,
            refresh_hash,
            refresh_expires_at: now + self.refresh_ttl(),
        };
        let audit = audit_by(caller, &caller.key_id, AuditAction::SessionCreated);
        self.store.create_sdk_session(&new, &audit, now).await?;
        self.validator.metrics().session_creations.get_or_create(&[("kind", SessionKind::Sdk.as_str())]).inc();
        Ok(self.sdk_tokens(&new.client_id, &new.user_id, &new.session_id, refresh, now))
    }

    /// A session for the test end user `TEST_USER_PREFIX + name` of the
    /// caller's tenant (a dashboard caller), so the console's "try it" page
    /// chats as an end user without a browser ever holding an API key.
    /// Throttled per tenant, audited as `session.test_created` by the
    /// dashboard account, and the user's metadata says `{"test": true}`.
    /// Otherwise an ordinary end-user session: refresh, logout and bans apply.
    /// `access_ttl` (seconds, from `MIN_TEST_ACCESS_TTL` up to the configured
    /// lifetime) shortens its first access token, so a tenant can watch a
    /// refresh happen; refreshed tokens get the configured lifetime.
    pub async fn create_test_session(
        &self,
        caller: &RequestContext,
        name: &str,
        access_ttl: Option<i64>,
        now: i64,
    ) -> Result<SdkTokens> {
        if caller.auth_type != AuthType::Dashboard {
            return Err(CredentialError::NoSessionNamed);
        }
        let ttl = access_ttl.unwrap_or(self.access_ttl());
        if !(MIN_TEST_ACCESS_TTL..=self.access_ttl()).contains(&ttl) {
            return Err(CredentialError::InvalidTestAccessTtl(self.access_ttl()));
        }
        let user_id = format!("{TEST_USER_PREFIX}{name}");
        if name.is_empty() || !crate::chat::is_valid_user_id(&user_id) {
            return Err(CredentialError::InvalidUserId);
        }
        self.throttles.test_sessions.hit(&caller.tenant_id).await?;
        let (refresh, refresh_hash) = refresh_token::generate();
        let new = NewSdkSession {
            session_id: new_id("ses"),
            client_id: caller.tenant_id.clone(),
            user_id,
            name: Some(name.to_string()),
            metadata: Some(serde_json::json!({ "test": true }).to_string()),
            refresh_hash,
            refresh_expires_at: now + self.refresh_ttl(),
        };
        let mut audit = audit_by(caller, &caller.user_id, AuditAction::TestSessionCreated);
        audit.detail = Some(serde_json::json!({ "test": true }));
        self.store.create_sdk_session(&new, &audit, now).await?;
        self.validator.metrics().session_creations.get_or_create(&[("kind", SessionKind::Sdk.as_str())]).inc();
        Ok(SdkTokens {
            access: self.issue_for(ttl, Audience::Sdk, &new.client_id, &new.user_id, &new.session_id, now),
            refresh_token: refresh,
            refresh_expires_in: self.refresh_ttl(),
            session_id: new.session_id,
            user_id: new.user_id,
        })
    }

    /// Uses a refresh token once. A reused one revokes its session, which is
    /// announced before the refusal is returned.
    pub async fn refresh(&self, token: &str, caller: Option<&RequestContext>, ip: &str, now: i64) -> Result<SdkTokens> {
        let presented = refresh_token::parse(token).ok_or(CredentialError::InvalidRefreshToken)?;
        let (next, next_hash) = refresh_token::generate();
        let expires_at = now + self.refresh_ttl();
        let outcome = self
            .store
            .rotate_refresh_token(&presented, &next_hash, expires_at, api_key_tenant(caller), Some(ip), now)
            .await?;
        match outcome {
            RefreshOutcome::Rotated(session) => {
                Ok(self.sdk_tokens(&session.client_id, &session.subject, &session.id, next, now))
            }
            RefreshOutcome::Reused(session) => {
                tracing::warn!(
                    tenant_id = session.client_id,
                    session_id = session.id,
                    ip,
                    "refresh token reused: session family revoked"
                );
                self.announce([Event::session_revoked(&session.client_id, &session.id)]).await;
                Err(CredentialError::RefreshTokenReused)
            }
            RefreshOutcome::Invalid => Err(CredentialError::InvalidRefreshToken),
        }
    }

    /// Revokes a session: the one a refresh token belongs to, else the
    /// caller's own (an access token's context).
    pub async fn logout(
        &self,
        refresh_token: Option<&str>,
        caller: Option<&RequestContext>,
        ip: &str,
        now: i64,
    ) -> Result<()> {
        let (tenant_id, session_id, subject) = match (refresh_token, caller) {
            (Some(token), _) => {
                let hash = refresh_token::parse(token).ok_or(CredentialError::InvalidRefreshToken)?;
                let session =
                    self.store.session_by_refresh_token(&hash).await?.ok_or(CredentialError::InvalidRefreshToken)?;
                if api_key_tenant(caller).is_some_and(|tenant| tenant != session.client_id) {
                    return Err(CredentialError::InvalidRefreshToken);
                }
                (session.client_id, session.id, session.subject)
            }
            (None, Some(ctx))
                if matches!(ctx.auth_type, AuthType::Jwt | AuthType::Dashboard) && !ctx.session_id.is_empty() =>
            {
                (ctx.tenant_id.clone(), ctx.session_id.clone(), ctx.user_id.clone())
            }
            _ => return Err(CredentialError::NoSessionNamed),
        };
        let audit = AuditEntry {
            client_id: Some(tenant_id.clone()),
            actor: Some(subject),
            action: AuditAction::SessionLogout,
            ip: Some(ip.into()),
            detail: None,
        };
        self.store.revoke_session(&session_id, "logout", &audit, now).await?;
        // Announced even if it was already revoked: a missed event is worse than a repeated one.
        self.announce([Event::session_revoked(&tenant_id, &session_id)]).await;
        tracing::info!(tenant_id, session_id, "session logged out");
        Ok(())
    }

    /// Signs the caller's dashboard account out everywhere: every one of its
    /// dashboard sessions, the caller's own included. How many were ended.
    pub async fn logout_all(&self, caller: &RequestContext, now: i64) -> Result<usize> {
        let tenant = caller.tenant_id.as_str();
        let of = SessionsOf { client_id: tenant, subject: &caller.user_id, kind: SessionKind::Dashboard, keep: None };
        let audit = audit_by(caller, &caller.user_id, AuditAction::SessionLogoutAll);
        let revoked = self.store.revoke_sessions(of, "logout_all", &audit, now).await?;
        self.announce(sessions_revoked(tenant, &revoked)).await;
        tracing::info!(tenant_id = tenant, revoked = revoked.len(), "dashboard account signed out everywhere");
        Ok(revoked.len())
    }

    /// Changes the caller's dashboard password. The current password is
    /// checked like a login (counted per address and per email before it is
    /// hashed, under the hashing bound), so this route cannot be used to
    /// guess; the new one must pass the registration rules. Every other
    /// dashboard session of the account ends; the caller's stays. How many
    /// sessions were ended.
    pub async fn change_password(
        &self,
        caller: &RequestContext,
        current: String,
        new: String,
        now: i64,
    ) -> Result<usize> {
        password::check_password_rules(&new).map_err(CredentialError::InvalidNewPassword)?;
        if current.len() > password::MAX_PASSWORD_BYTES {
            // No stored password is this long: wrong without a hash.
            return Err(CredentialError::WrongCurrentPassword);
        }
        let tenant = caller.tenant_id.as_str();
        let account =
            self.store.account(tenant, &caller.user_id).await?.ok_or(CredentialError::WrongCurrentPassword)?;
        let reservation = self.reserve_login(&account.email, &caller.client_ip).await?;
        let valid = match self
            .throttles
            .hashing
            .verify(current, Some(account.password_hash.clone()), reservation.known)
            .await
        {
            Ok(valid) => valid,
            Err(error) => {
                self.release_login(&reservation).await;
                return Err(error.into());
            }
        };
        if !valid {
            // The attempt stays counted; the row is best effort, like a failed login's.
            let entry = audit_by(caller, &caller.user_id, AuditAction::ClientPasswordChangeFailed);
            if let Err(error) = self.store.audit(&entry, now).await {
                tracing::error!(%error, "could not write audit entry for a failed password change");
            }
            tracing::info!(tenant_id = tenant, "password change with a wrong current password");
            return Err(CredentialError::WrongCurrentPassword);
        }
        self.throttles.login_by_email.reset(&reservation.email_subject).await;
        self.throttles.login_by_ip.release(&reservation.bucket).await;
        let new_hash = self.throttles.hashing.hash(new).await?;
        let keep = SessionsOf {
            client_id: tenant,
            subject: &account.id,
            kind: SessionKind::Dashboard,
            keep: Some(&caller.session_id),
        };
        let audit = audit_by(caller, &caller.user_id, AuditAction::ClientPasswordChanged);
        let revoked = self
            .store
            .change_password(&account.id, &account.password_hash, &new_hash, keep, &audit, now)
            .await?
            // Changed by a concurrent request since it was verified.
            .ok_or(CredentialError::WrongCurrentPassword)?;
        self.announce(sessions_revoked(tenant, &revoked)).await;
        tracing::info!(tenant_id = tenant, revoked = revoked.len(), "dashboard password changed");
        Ok(revoked.len())
    }

    /// The live dashboard sessions of the caller's account.
    pub async fn dashboard_sessions(&self, caller: &RequestContext, now: i64) -> Result<Vec<SessionActivity>> {
        Ok(self.store.active_sessions(&caller.tenant_id, &caller.user_id, SessionKind::Dashboard, now).await?)
    }

    /// Records that the caller's dashboard session was used (time and
    /// address), off the request path and at most once a minute per session:
    /// remembered here, and the store's condition holds across processes.
    pub fn touch_dashboard_session(&self, caller: &RequestContext, now: i64) {
        if caller.auth_type != AuthType::Dashboard || caller.session_id.is_empty() {
            return;
        }
        if self.last_touched.get(&caller.session_id).is_some_and(|at| now - at < TOUCH_EVERY_SECONDS) {
            return;
        }
        self.last_touched.insert(caller.session_id.clone(), now);
        let store = self.store.clone();
        let (session_id, ip) = (caller.session_id.clone(), caller.client_ip.clone());
        tokio::spawn(async move {
            if let Err(error) = store.touch_session(&session_id, &ip, now, TOUCH_EVERY_SECONDS).await {
                tracing::debug!(%error, "could not record dashboard session use");
            }
        });
    }

    /// Bans an end user of the caller's tenant (an API-key caller): every
    /// live session of theirs is revoked in one transaction, audited once
    /// with the count, and announced, so every gateway refuses their tokens
    /// and every socket node closes their sockets. Idempotent: a repeat
    /// revokes nothing. How many sessions were ended.
    pub async fn revoke_end_user(&self, caller: &RequestContext, user_id: &str, now: i64) -> Result<usize> {
        if !crate::chat::is_valid_user_id(user_id) {
            return Err(CredentialError::InvalidUserId);
        }
        // Only ever the caller's own tenant: the API key decides it, not the request.
        let tenant = api_key_tenant(Some(caller)).ok_or(CredentialError::NoSessionNamed)?;
        let of = SessionsOf { client_id: tenant, subject: user_id, kind: SessionKind::Sdk, keep: None };
        let mut audit = audit_by(caller, &caller.key_id, AuditAction::EndUserRevoked);
        audit.detail = Some(serde_json::json!({ "user_id": user_id }));
        let revoked = self.store.revoke_sessions(of, "end_user_revoked", &audit, now).await?;
        self.announce(sessions_revoked(tenant, &revoked)).await;
        tracing::info!(tenant_id = tenant, revoked = revoked.len(), "end user's sessions revoked");
        Ok(revoked.len())
    }

    /// A new primary key; the old primary stays valid for the grace period.
    pub async fn rotate_api_key(
        &self,
        caller: &RequestContext,
        grace_seconds: Option<u64>,
        now: i64,
    ) -> Result<KeyRotation> {
        let grace = grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
        if grace > MAX_GRACE_SECONDS {
            return Err(CredentialError::GraceTooLong);
        }
        let (key, raw_key) = new_key();
        let tenant = caller.tenant_id.as_str();
        let audit = audit_by(caller, &caller.user_id, AuditAction::ApiKeyRotated);
        let rotation = self.store.rotate_api_key(tenant, &key, grace as i64, &audit, now).await?;
        let changed = rotation.demoted.iter().chain(&rotation.revoked);
        let events: Vec<Event> = changed
            .map(|c| Event::key_changed(tenant, &c.key.id, &c.hash))
            .chain([Event::key_changed(tenant, &key.id, &key.hash)])
            .collect();
        self.announce(events).await;
        tracing::info!(tenant_id = tenant, key_id = key.id, "API key rotated");
        let records = |keys: Vec<ChangedKey>| keys.into_iter().map(|c| c.key).collect::<Vec<_>>();
        Ok(KeyRotation {
            key: IssuedKey { id: key.id, key: raw_key, prefix: key.prefix },
            created_at: rotation.new_key.created_at,
            demoted: rotation.demoted.map(|c| c.key),
            revoked: records(rotation.revoked),
        })
    }

    /// Revokes one of the caller's tenant's keys at once.
    pub async fn revoke_api_key(&self, caller: &RequestContext, key_id: &str, now: i64) -> Result<()> {
        let tenant = caller.tenant_id.as_str();
        // No stored id holds NUL, and PostgreSQL would refuse the query (a 503).
        if key_id.contains('\0') {
            return Err(CredentialError::KeyNotFound);
        }
        let audit = audit_by(caller, &caller.user_id, AuditAction::ApiKeyRevoked);
        let revoked =
            self.store.revoke_api_key(tenant, key_id, &audit, now).await?.ok_or(CredentialError::KeyNotFound)?;
        self.announce([Event::key_changed(tenant, key_id, &revoked.hash)]).await;
        tracing::info!(tenant_id = tenant, key_id, "API key revoked");
        Ok(())
    }

    /// Replaces the whole IP whitelist, or nothing; returns it normalised.
    pub async fn replace_ip_whitelist(
        &self,
        caller: &RequestContext,
        cidrs: &[String],
        now: i64,
    ) -> Result<Vec<String>> {
        let entries = IpWhitelist::parse(cidrs)?.entries();
        self.replace_whitelist(caller, WhitelistKind::Ip, &entries, now).await?;
        Ok(entries)
    }

    /// Replaces the whole Origin whitelist, or nothing; returns it normalised.
    pub async fn replace_origin_whitelist(
        &self,
        caller: &RequestContext,
        origins: &[String],
        now: i64,
    ) -> Result<Vec<String>> {
        let entries = OriginWhitelist::parse(origins)?.entries().to_vec();
        self.replace_whitelist(caller, WhitelistKind::Origin, &entries, now).await?;
        Ok(entries)
    }

    async fn replace_whitelist(
        &self,
        caller: &RequestContext,
        kind: WhitelistKind,
        entries: &[String],
        now: i64,
    ) -> Result<()> {
        let tenant = caller.tenant_id.as_str();
        let action = match kind {
            WhitelistKind::Ip => AuditAction::IpWhitelistUpdated,
            WhitelistKind::Origin => AuditAction::OriginWhitelistUpdated,
        };
        let audit = audit_by(caller, &caller.user_id, action);
        let version = self.store.replace_whitelist(kind, tenant, entries, &audit, now).await?;
        // Overwrites the shared copy, then announces the change.
        self.validator.whitelist_written(kind, tenant, entries, version).await;
        tracing::info!(tenant_id = tenant, ?kind, entries = entries.len(), "whitelist replaced");
        Ok(())
    }
}
