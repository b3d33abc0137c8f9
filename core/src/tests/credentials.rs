//! Every credential use case that changes a credential announces exactly the
//! events that evict it (and writes its audit row), on every store.

use std::sync::Arc;
use std::time::Duration;

use crate::api_key;
use crate::cache::{Cache, MemoryCache};
use crate::context::{AuthType, RequestContext};
use crate::credentials::{CredentialError, Credentials, Lifetimes, SdkSessionRequest, SdkTokens, Throttles};
use crate::events::Event;
use crate::jwt::JwtKeys;
use crate::metrics::AuthMetrics;
use crate::ratelimit::RateLimiter;
use crate::secret::Secret;
use crate::store::{AuditAction, AuditEntry, SessionKind, SessionsOf, Store};
use crate::testing::RecordingBus;
use crate::validate::{Validator, ValidatorSettings};

const NOW: i64 = 1_700_000_000;
const IP: &str = "203.0.113.7";
const PASSWORD: &str = "correct horse battery staple";

struct Fixture {
    credentials: Credentials,
    bus: Arc<RecordingBus>,
    store: Store,
    _validator: Arc<Validator>,
    /// How far `take` has read the change feed.
    feed_cursor: std::sync::atomic::AtomicI64,
}

impl Fixture {
    /// What was published since the last call, after checking that the
    /// durable change feed recorded exactly the same (core/src/feed.rs
    /// delivers those when a bus message is lost).
    async fn take(&self) -> Vec<Event> {
        use std::sync::atomic::Ordering;
        let published = self.bus.take();
        let recorded = self.store.changes_after(self.feed_cursor.load(Ordering::SeqCst), 1000).await.unwrap();
        if let Some(last) = recorded.last() {
            self.feed_cursor.store(last.seq, Ordering::SeqCst);
        }
        let recorded: Vec<Event> = recorded.into_iter().map(|c| c.event).collect();
        assert_eq!(published, recorded, "the change feed records what is published");
        published
    }
}

fn fixture(store: Store) -> Fixture {
    fixture_limited(store, 1000)
}

/// `failures` failed logins (or password checks) allowed per email and address.
fn fixture_limited(store: Store, failures: u64) -> Fixture {
    let cache: Arc<dyn Cache> = Arc::new(MemoryCache::new());
    let bus = Arc::new(RecordingBus::new());
    let jwt = JwtKeys::new("caas", &Secret::new("j".repeat(32)), None);
    let validator = Validator::start(
        store.clone(),
        cache.clone(),
        bus.clone(),
        jwt,
        ValidatorSettings::default(),
        Arc::new(AuthMetrics::default()),
    );
    let limiter = |name| RateLimiter::new(name, failures, Duration::from_secs(60), cache.clone());
    let throttles = Throttles {
        login_by_email: limiter("login-email"),
        login_by_ip: limiter("login-ip"),
        registrations: limiter("register-ip"),
        test_sessions: limiter("test-session"),
        known_addresses: crate::loginguard::KnownAddresses::new(cache.clone()),
        hashing: crate::loginguard::Hashing::new(4),
    };
    let lifetimes = Lifetimes { access: Duration::from_secs(900), refresh: Duration::from_secs(86_400) };
    let credentials = Credentials::new(store.clone(), validator.clone(), lifetimes, throttles);
    Fixture { credentials, bus, store, _validator: validator, feed_cursor: Default::default() }
}

/// A dashboard caller of `tenant`.
pub(super) fn dashboard(tenant: &str) -> RequestContext {
    RequestContext {
        tenant_id: tenant.into(),
        user_id: "acc_tester".into(),
        session_id: "ses_dashboard".into(),
        auth_type: AuthType::Dashboard,
        key_id: String::new(),
        client_ip: IP.into(),
        request_id: "req".into(),
        token_expires_at: None,
    }
}

fn api_key_caller(tenant: &str) -> RequestContext {
    RequestContext {
        auth_type: AuthType::ApiKey,
        user_id: String::new(),
        session_id: String::new(),
        key_id: "key_backend".into(),
        ..dashboard(tenant)
    }
}

fn key_changed(tenant: &str, key_id: &str, key_hash: &str) -> Event {
    Event::ApiKeyChanged { tenant_id: tenant.into(), key_id: key_id.into(), key_hash: key_hash.into() }
}

async fn last_action(f: &Fixture, tenant: &str) -> String {
    f.store.audit_log(tenant, 1).await.unwrap()[0].action.clone()
}

/// A registered tenant; returns its id, first key id and first key hash.
async fn registered(f: &Fixture, email: &str) -> (String, String, String) {
    let registration = f.credentials.register("Acme", email, PASSWORD.into(), IP, NOW).await.unwrap();
    let hash = api_key::hash_key(&registration.key.key);
    let tenant = registration.client_id;
    assert_eq!(f.take().await, [key_changed(&tenant, &registration.key.id, &hash)]);
    assert_eq!(last_action(f, &tenant).await, "client.registered");
    (tenant, registration.key.id, hash)
}

async fn sdk_session(f: &Fixture, tenant: &str, user: &str) -> SdkTokens {
    let request = SdkSessionRequest { user_id: user.into(), name: None, metadata: None };
    let tokens = f.credentials.create_sdk_session(&api_key_caller(tenant), request, NOW).await.unwrap();
    // A new session has nothing cached to evict.
    assert!(f.take().await.is_empty());
    assert_eq!(last_action(f, tenant).await, "session.created");
    tokens
}

async fn register_and_login_announce_the_new_key_only(store: Store) {
    let f = fixture(store);
    let (tenant, _, _) = registered(&f, "ada@example.com").await;
    let grant = f.credentials.login("ada@example.com", PASSWORD.into(), IP, NOW).await.unwrap();
    assert!(!grant.token.is_empty());
    assert!(f.take().await.is_empty());
    assert_eq!(last_action(&f, &tenant).await, "client.login");
    let wrong = f.credentials.login("ada@example.com", "not the password!".into(), IP, NOW).await;
    assert!(matches!(wrong, Err(CredentialError::WrongPassword)), "{wrong:?}");
    assert_eq!(last_action(&f, &tenant).await, "client.login_failed");
}

async fn rotation_announces_demoted_revoked_and_new_keys(store: Store) {
    let f = fixture(store);
    let (tenant, first_id, first_hash) = registered(&f, "rot@example.com").await;
    let caller = dashboard(&tenant);

    let second = f.credentials.rotate_api_key(&caller, Some(60), NOW).await.unwrap();
    let second_hash = api_key::hash_key(&second.key.key);
    assert_eq!(
        f.take().await,
        [key_changed(&tenant, &first_id, &first_hash), key_changed(&tenant, &second.key.id, &second_hash)]
    );
    assert_eq!(last_action(&f, &tenant).await, "api_key.rotated");

    // The next rotation demotes the second key and revokes the first.
    let third = f.credentials.rotate_api_key(&caller, None, NOW + 1).await.unwrap();
    assert_eq!(third.revoked.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [first_id.as_str()]);
    assert_eq!(
        f.take().await,
        [
            key_changed(&tenant, &second.key.id, &second_hash),
            key_changed(&tenant, &first_id, &first_hash),
            key_changed(&tenant, &third.key.id, &api_key::hash_key(&third.key.key)),
        ]
    );

    // Refused before anything changes: nothing to announce.
    let too_long = f.credentials.rotate_api_key(&caller, Some(31 * 86_400), NOW + 2).await;
    assert!(matches!(too_long, Err(CredentialError::GraceTooLong)), "{too_long:?}");
    assert!(f.take().await.is_empty());
}

async fn revoking_a_key_announces_it(store: Store) {
    let f = fixture(store);
    let (tenant, key_id, hash) = registered(&f, "rev@example.com").await;
    let (other, _, _) = registered(&f, "other@example.com").await;

    let foreign = f.credentials.revoke_api_key(&dashboard(&other), &key_id, NOW).await;
    assert!(matches!(foreign, Err(CredentialError::KeyNotFound)), "{foreign:?}");
    assert!(f.take().await.is_empty());

    f.credentials.revoke_api_key(&dashboard(&tenant), &key_id, NOW).await.unwrap();
    assert_eq!(f.take().await, [key_changed(&tenant, &key_id, &hash)]);
    assert_eq!(last_action(&f, &tenant).await, "api_key.revoked");
}

async fn logout_announces_the_session(store: Store) {
    let f = fixture(store);
    let (tenant, _, _) = registered(&f, "out@example.com").await;
    let revoked = |session_id: &str| Event::SessionRevoked { tenant_id: tenant.clone(), session_id: session_id.into() };

    // By refresh token.
    let tokens = sdk_session(&f, &tenant, "user-1").await;
    f.credentials.logout(Some(&tokens.refresh_token), None, IP, NOW + 1).await.unwrap();
    assert_eq!(f.take().await, [revoked(&tokens.session_id)]);
    assert_eq!(last_action(&f, &tenant).await, "session.logout");

    // The caller's own session, from its access-token context.
    let tokens = sdk_session(&f, &tenant, "user-2").await;
    let own = RequestContext {
        auth_type: AuthType::Jwt,
        user_id: "user-2".into(),
        session_id: tokens.session_id.clone(),
        ..dashboard(&tenant)
    };
    f.credentials.logout(None, Some(&own), IP, NOW + 2).await.unwrap();
    assert_eq!(f.take().await, [revoked(&tokens.session_id)]);

    let nothing = f.credentials.logout(None, Some(&api_key_caller(&tenant)), IP, NOW + 3).await;
    assert!(matches!(nothing, Err(CredentialError::NoSessionNamed)), "{nothing:?}");
    assert!(f.take().await.is_empty());
}

async fn refresh_reuse_revokes_and_announces_the_session(store: Store) {
    let f = fixture(store);
    let (tenant, _, _) = registered(&f, "reuse@example.com").await;
    let first = sdk_session(&f, &tenant, "user-1").await;

    let second = f.credentials.refresh(&first.refresh_token, None, IP, NOW + 1).await.unwrap();
    assert_eq!(second.session_id, first.session_id);
    // A rotation changes no cached credential.
    assert!(f.take().await.is_empty());
    assert_eq!(last_action(&f, &tenant).await, "session.refreshed");

    let reused = f.credentials.refresh(&first.refresh_token, None, IP, NOW + 2).await;
    assert!(matches!(reused, Err(CredentialError::RefreshTokenReused)), "{reused:?}");
    assert_eq!(f.take().await, [Event::SessionRevoked { tenant_id: tenant.clone(), session_id: first.session_id }]);
    assert_eq!(last_action(&f, &tenant).await, "session.refresh_token_reused");

    let after = f.credentials.refresh(&second.refresh_token, None, IP, NOW + 3).await;
    assert!(matches!(after, Err(CredentialError::InvalidRefreshToken)), "{after:?}");
    assert!(f.take().await.is_empty());
}

async fn whitelist_replacements_announce_their_kind(store: Store) {
    let f = fixture(store);
    let (tenant, _, _) = registered(&f, "wl@example.com").await;
    let caller = dashboard(&tenant);

    let cidrs = f.credentials.replace_ip_whitelist(&caller, &["10.0.0.0/8".into()], NOW).await.unwrap();
    assert_eq!(cidrs, ["10.0.0.0/8"]);
    assert_eq!(f.take().await, [Event::IpWhitelistChanged { tenant_id: tenant.clone(), version: 1 }]);
    assert_eq!(last_action(&f, &tenant).await, "ip_whitelist.updated");

    let origins =
        f.credentials.replace_origin_whitelist(&caller, &["https://app.example.com".into()], NOW).await.unwrap();
    assert_eq!(origins, ["https://app.example.com"]);
    assert_eq!(f.take().await, [Event::OriginWhitelistChanged { tenant_id: tenant.clone(), version: 1 }]);
    assert_eq!(last_action(&f, &tenant).await, "origin_whitelist.updated");

    let invalid = f.credentials.replace_ip_whitelist(&caller, &["not a cidr".into()], NOW).await;
    assert!(matches!(invalid, Err(CredentialError::InvalidWhitelistEntry(_))), "{invalid:?}");
    assert!(f.take().await.is_empty());
}

/// The dashboard context of a login's session (as ext-authz builds it).
async fn signed_in(f: &Fixture, email: &str, password: &str, now: i64) -> RequestContext {
    let grant = f.credentials.login(email, password.into(), IP, now).await.unwrap();
    let account = f.store.account_by_email(email).await.unwrap().unwrap();
    RequestContext {
        tenant_id: account.client_id,
        user_id: account.id,
        session_id: grant.session_id,
        ..dashboard("unused")
    }
}

async fn is_revoked(f: &Fixture, session_id: &str) -> bool {
    f.store.session(session_id).await.unwrap().unwrap().revoked_at.is_some()
}

fn revoked_events(tenant: &str, sessions: &[&str]) -> Vec<Event> {
    let mut sessions = sessions.to_vec();
    sessions.sort();
    sessions.iter().map(|id| Event::SessionRevoked { tenant_id: tenant.into(), session_id: (*id).into() }).collect()
}

async fn last_detail(f: &Fixture, tenant: &str) -> serde_json::Value {
    let record = f.store.audit_log(tenant, 1).await.unwrap().remove(0);
    serde_json::from_str(record.detail.as_deref().unwrap_or("null")).unwrap()
}

async fn logout_all_announces_every_dashboard_session_of_the_account_only(store: Store) {
    let f = fixture(store);
    let (tenant, _, _) = registered(&f, "all@example.com").await;
    let (other, _, _) = registered(&f, "all-other@example.com").await;
    let one = signed_in(&f, "all@example.com", PASSWORD, NOW).await;
    let two = signed_in(&f, "all@example.com", PASSWORD, NOW + 1).await;
    let three = signed_in(&f, "all@example.com", PASSWORD, NOW + 2).await;
    let foreign = signed_in(&f, "all-other@example.com", PASSWORD, NOW).await;
    let end_user = sdk_session(&f, &tenant, "user-1").await;
    f.take().await;

    let revoked = f.credentials.logout_all(&two, NOW + 3).await.unwrap();
    assert_eq!(revoked, 3);
    let ids = [one.session_id.as_str(), two.session_id.as_str(), three.session_id.as_str()];
    assert_eq!(f.take().await, revoked_events(&tenant, &ids));
    assert_eq!(last_action(&f, &tenant).await, "session.logout_all");
    assert_eq!(last_detail(&f, &tenant).await["revoked"], 3);
    for id in ids {
        assert!(is_revoked(&f, id).await, "{id}");
    }
    // Another tenant's dashboard and this tenant's end users are untouched.
    assert!(!is_revoked(&f, &foreign.session_id).await);
    assert!(!is_revoked(&f, &end_user.session_id).await);
    assert!(f.store.audit_log(&other, 1).await.unwrap()[0].action == "client.login");

    // A repeat revokes nothing and announces nothing.
    assert_eq!(f.credentials.logout_all(&two, NOW + 4).await.unwrap(), 0);
    assert!(f.take().await.is_empty());
}

async fn password_change_needs_the_current_password_and_keeps_only_this_session(store: Store) {
    const NEW: &str = "a brand new passphrase";
    let f = fixture(store);
    let (tenant, _, _) = registered(&f, "pw@example.com").await;
    let this = signed_in(&f, "pw@example.com", PASSWORD, NOW).await;
    let other = signed_in(&f, "pw@example.com", PASSWORD, NOW + 1).await;
    let foreign = {
        registered(&f, "pw-other@example.com").await;
        signed_in(&f, "pw-other@example.com", PASSWORD, NOW).await
    };
    f.take().await;

    // Refusals change nothing and announce nothing.
    let weak = f.credentials.change_password(&this, PASSWORD.into(), "short".into(), NOW + 2).await;
    assert!(matches!(weak, Err(CredentialError::InvalidNewPassword(_))), "{weak:?}");
    let wrong = f.credentials.change_password(&this, "not the password!".into(), NEW.into(), NOW + 2).await;
    assert!(matches!(wrong, Err(CredentialError::WrongCurrentPassword)), "{wrong:?}");
    assert_eq!(last_action(&f, &tenant).await, "client.password_change_failed");
    assert!(f.take().await.is_empty());
    assert!(!is_revoked(&f, &other.session_id).await);

    let revoked = f.credentials.change_password(&this, PASSWORD.into(), NEW.into(), NOW + 3).await.unwrap();
    assert_eq!(revoked, 1);
    assert_eq!(f.take().await, revoked_events(&tenant, &[&other.session_id]));
    assert_eq!(last_action(&f, &tenant).await, "client.password_changed");
    assert!(is_revoked(&f, &other.session_id).await);
    assert!(!is_revoked(&f, &this.session_id).await, "the caller's own session stays");
    assert!(!is_revoked(&f, &foreign.session_id).await, "another tenant's session stays");
    let old = f.credentials.login("pw@example.com", PASSWORD.into(), IP, NOW + 4).await;
    assert!(matches!(old, Err(CredentialError::WrongPassword)), "{old:?}");
    f.credentials.login("pw@example.com", NEW.into(), IP, NOW + 4).await.unwrap();
    let again = f.credentials.change_password(&this, PASSWORD.into(), "yet another passphrase".into(), NOW + 5).await;
    assert!(matches!(again, Err(CredentialError::WrongCurrentPassword)), "{again:?}");
    // The store's update is conditional on the hash the password was checked
    // against: a change verified against a hash no longer stored never wins.
    let sessions = SessionsOf { client_id: &tenant, subject: &this.user_id, kind: SessionKind::Dashboard, keep: None };
    let audit = AuditEntry::new(AuditAction::ClientPasswordChanged);
    let stale = f.store.change_password(&this.user_id, "a-stale-hash", "x", sessions, &audit, NOW + 5).await.unwrap();
    assert_eq!(stale, None);
    assert!(!is_revoked(&f, &this.session_id).await);
    assert!(f.take().await.is_empty());

    // Wrong current passwords count like failed logins: past the limit the
    // route is throttled before any hash, so it cannot be used to guess.
    let limited = fixture_limited(f.store.clone(), 2);
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        match limited.credentials.change_password(&this, "guess guess guess".into(), NEW.into(), NOW + 6).await {
            Err(CredentialError::Throttled(_)) => outcomes.push("throttled"),
            Err(CredentialError::WrongCurrentPassword) => outcomes.push("wrong"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(outcomes, ["wrong", "wrong", "throttled", "throttled"]);
    assert!(limited.bus.take().is_empty());
}

async fn dashboard_sessions_list_their_use_and_address(store: Store) {
    let f = fixture(store);
    let (tenant, _, _) = registered(&f, "list@example.com").await;
    let one = signed_in(&f, "list@example.com", PASSWORD, NOW).await;
    let two = signed_in(&f, "list@example.com", PASSWORD, NOW + 5).await;
    registered(&f, "list-other@example.com").await;
    signed_in(&f, "list-other@example.com", PASSWORD, NOW).await;

    let listed = f.credentials.dashboard_sessions(&one, NOW + 10).await.unwrap();
    let seen: Vec<_> = listed.iter().map(|s| (s.id.as_str(), s.last_used_at, s.ip.as_deref())).collect();
    assert_eq!(
        seen,
        [(two.session_id.as_str(), Some(NOW + 5), Some(IP)), (one.session_id.as_str(), Some(NOW), Some(IP))]
    );

    // Uses are written at most once a minute per session.
    assert!(!f.store.touch_session(&one.session_id, "198.51.100.1", NOW + 30, 60).await.unwrap());
    assert!(f.store.touch_session(&one.session_id, "198.51.100.1", NOW + 60, 60).await.unwrap());
    assert!(!f.store.touch_session(&one.session_id, "198.51.100.2", NOW + 61, 60).await.unwrap());
    let listed = f.credentials.dashboard_sessions(&one, NOW + 61).await.unwrap();
    assert_eq!(listed[0].id, one.session_id);
    assert_eq!((listed[0].last_used_at, listed[0].ip.as_deref()), (Some(NOW + 60), Some("198.51.100.1")));

    // Revoked sessions are not listed.
    f.credentials.logout(None, Some(&two), IP, NOW + 62).await.unwrap();
    let listed = f.credentials.dashboard_sessions(&one, NOW + 62).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [one.session_id.as_str()]);
    assert_eq!(last_action(&f, &tenant).await, "session.logout");
}

async fn revoking_an_end_user_ends_their_sessions_in_the_callers_tenant_only(store: Store) {
    let f = fixture(store);
    let (tenant, _, _) = registered(&f, "ban@example.com").await;
    let (other, _, _) = registered(&f, "ban-other@example.com").await;
    let first = sdk_session(&f, &tenant, "bob").await;
    let second = sdk_session(&f, &tenant, "bob").await;
    let alice = sdk_session(&f, &tenant, "alice").await;
    let other_bob = sdk_session(&f, &other, "bob").await;
    let caller = api_key_caller(&tenant);

    for bad in ["", "has space", &"u".repeat(129), "tab\there"] {
        let refused = f.credentials.revoke_end_user(&caller, bad, NOW + 1).await;
        assert!(matches!(refused, Err(CredentialError::InvalidUserId)), "{bad:?}: {refused:?}");
    }
    assert!(f.take().await.is_empty());

    let revoked = f.credentials.revoke_end_user(&caller, "bob", NOW + 1).await.unwrap();
    assert_eq!(revoked, 2);
    assert_eq!(f.take().await, revoked_events(&tenant, &[&first.session_id, &second.session_id]));
    assert_eq!(last_action(&f, &tenant).await, "end_user.revoked");
    let detail = last_detail(&f, &tenant).await;
    assert_eq!((detail["user_id"].as_str(), detail["revoked"].as_u64()), (Some("bob"), Some(2)));
    let refreshed = f.credentials.refresh(&second.refresh_token, None, IP, NOW + 2).await;
    assert!(matches!(refreshed, Err(CredentialError::InvalidRefreshToken)), "{refreshed:?}");
    assert!(!is_revoked(&f, &alice.session_id).await);
    assert!(!is_revoked(&f, &other_bob.session_id).await, "the same user id in another tenant stays");

    // Idempotent: answered, audited, nothing revoked or announced.
    assert_eq!(f.credentials.revoke_end_user(&caller, "bob", NOW + 3).await.unwrap(), 0);
    assert!(f.take().await.is_empty());
    assert_eq!(last_detail(&f, &tenant).await["revoked"], 0);
    // Only an API-key caller names a tenant for this.
    let refused = f.credentials.revoke_end_user(&dashboard(&other), "bob", NOW + 3).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(f.take().await.is_empty());
    assert!(!is_revoked(&f, &other_bob.session_id).await);
}

crate::store_conformance!(
    logout_all_announces_every_dashboard_session_of_the_account_only,
    password_change_needs_the_current_password_and_keeps_only_this_session,
    dashboard_sessions_list_their_use_and_address,
    revoking_an_end_user_ends_their_sessions_in_the_callers_tenant_only,
    register_and_login_announce_the_new_key_only,
    rotation_announces_demoted_revoked_and_new_keys,
    revoking_a_key_announces_it,
    logout_announces_the_session,
    refresh_reuse_revokes_and_announces_the_session,
    whitelist_replacements_announce_their_kind,
);

/// Stored and serialized strings of the fixed sets never change.
#[test]
fn fixed_sets_keep_their_strings() {
    use crate::store::KeyRole;
    let roles: Vec<_> = KeyRole::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(roles, ["primary", "secondary"]);
    let kinds: Vec<_> = SessionKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(kinds, ["sdk", "dashboard"]);
    let actions: Vec<_> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "client.registered",
            "client.login",
            "client.login_failed",
            "api_key.rotated",
            "api_key.revoked",
            "ip_whitelist.updated",
            "origin_whitelist.updated",
            "session.created",
            "session.refreshed",
            "session.refresh_token_reused",
            "session.logout",
            "rate_limits.updated",
            "session.logout_all",
            "client.password_changed",
            "client.password_change_failed",
            "end_user.revoked",
            "session.test_created",
        ]
    );
    for action in AuditAction::ALL {
        assert_eq!(action.as_str().parse::<AuditAction>().unwrap(), *action);
    }
    for role in KeyRole::ALL {
        assert_eq!(serde_json::to_string(role).unwrap(), format!("\"{}\"", role.as_str()));
        assert_eq!(serde_json::from_str::<KeyRole>(&serde_json::to_string(role).unwrap()).unwrap(), *role);
    }
    for kind in SessionKind::ALL {
        assert_eq!(kind.as_str().parse::<SessionKind>().unwrap(), *kind);
    }
    assert!("owner".parse::<KeyRole>().is_err());
}
