use std::sync::Arc;

use crate::api_key;
use crate::refresh_token;
use crate::store::*;

const NOW: i64 = 1_700_000_000;

fn new_key() -> (NewApiKey, String) {
    let generated = api_key::generate();
    (NewApiKey { id: crate::id::new_id("key"), hash: generated.hash, prefix: generated.display_prefix }, generated.key)
}

pub(crate) async fn register(store: &Store, email: &str) -> (String, String, NewApiKey, String) {
    let client_id = crate::id::new_id("cl");
    let account_id = crate::id::new_id("acc");
    let (key, raw) = new_key();
    store
        .register_client(&client_id, "Acme", &account_id, email, "$argon2id$fake", &key, Some("127.0.0.1"), NOW)
        .await
        .unwrap();
    (client_id, account_id, key, raw)
}

fn audit(client_id: &str, action: &str) -> AuditEntry {
    AuditEntry {
        client_id: Some(client_id.into()),
        actor: Some("tester".into()),
        action: action.parse().unwrap(),
        ip: Some("127.0.0.1".into()),
        detail: None,
    }
}

async fn registration_is_atomic_and_emails_unique(store: Store) {
    let (client_id, account_id, key, _) = register(&store, "ada@example.com").await;
    let client = store.client(&client_id).await.unwrap().unwrap();
    assert_eq!((client.name.as_str(), client.email.as_str()), ("Acme", "ada@example.com"));
    let account = store.account_by_email("ada@example.com").await.unwrap().unwrap();
    assert_eq!((account.id, account.client_id.clone()), (account_id, client_id.clone()));

    let other = crate::id::new_id("cl");
    let (key2, _) = new_key();
    let err = store
        .register_client(&other, "Again", &crate::id::new_id("acc"), "ada@example.com", "h", &key2, None, NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EmailTaken), "{err:?}");
    // Nothing of the failed registration was written.
    assert!(store.client(&other).await.unwrap().is_none());
    assert!(store.api_key_by_hash(&key2.hash).await.unwrap().is_none());

    let record = store.api_key_by_hash(&key.hash).await.unwrap().unwrap();
    assert_eq!((record.role.as_str(), record.client_id.as_str()), ("primary", client_id.as_str()));
    let log = store.audit_log(&client_id, 10).await.unwrap();
    assert_eq!(log[0].action, "client.registered");
    assert_eq!(log[0].ip.as_deref(), Some("127.0.0.1"));
}

async fn key_rotation_keeps_at_most_two_keys(store: Store) {
    let (client_id, _, first, _) = register(&store, "rot@example.com").await;
    let (second, _) = new_key();
    let rotation =
        store.rotate_api_key(&client_id, &second, 3600, &audit(&client_id, "api_key.rotated"), NOW).await.unwrap();
    assert_eq!(rotation.new_key.role.as_str(), "primary");
    let demoted = rotation.demoted.unwrap();
    assert_eq!(
        (demoted.key.id.as_str(), demoted.key.role.as_str(), demoted.key.expires_at),
        (first.id.as_str(), "secondary", Some(NOW + 3600))
    );
    assert_eq!(demoted.hash, first.hash);
    assert!(rotation.revoked.is_empty());
    assert_eq!(store.active_api_keys(&client_id, NOW).await.unwrap().len(), 2);
    // Past the grace expiry only the new key is active.
    let later = store.active_api_keys(&client_id, NOW + 3600).await.unwrap();
    assert_eq!(later.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [second.id.as_str()]);

    // Rotating again revokes the old secondary at once.
    let (third, _) = new_key();
    let rotation =
        store.rotate_api_key(&client_id, &third, 60, &audit(&client_id, "api_key.rotated"), NOW + 10).await.unwrap();
    assert_eq!(rotation.revoked.iter().map(|k| k.key.id.as_str()).collect::<Vec<_>>(), [first.id.as_str()]);
    assert_eq!(rotation.revoked.iter().map(|k| k.hash.as_str()).collect::<Vec<_>>(), [first.hash.as_str()]);
    let active = store.active_api_keys(&client_id, NOW + 10).await.unwrap();
    assert_eq!(active.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [third.id.as_str(), second.id.as_str()]);
    assert!(store.api_key_by_hash(&first.hash).await.unwrap().unwrap().revoked_at.is_some());
}

async fn concurrent_rotations_never_leave_three_keys(store: Store) {
    let (client_id, _, _, _) = register(&store, "race@example.com").await;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (store, client_id) = (store.clone(), client_id.clone());
            tokio::spawn(async move {
                let (key, _) = new_key();
                store.rotate_api_key(&client_id, &key, 3600, &audit(&client_id, "api_key.rotated"), NOW).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let active = store.active_api_keys(&client_id, NOW).await.unwrap();
    assert_eq!(active.len(), 2, "{active:?}");
    assert_eq!(active.iter().filter(|k| k.role.as_str() == "primary").count(), 1);
}

async fn revoking_a_key_is_scoped_to_its_tenant(store: Store) {
    let (a, _, key_a, _) = register(&store, "a@example.com").await;
    let (b, _, _, _) = register(&store, "b@example.com").await;
    assert!(store.revoke_api_key(&b, &key_a.id, &audit(&b, "api_key.revoked"), NOW).await.unwrap().is_none());
    assert!(store.api_key_by_hash(&key_a.hash).await.unwrap().unwrap().revoked_at.is_none());
    let revoked = store.revoke_api_key(&a, &key_a.id, &audit(&a, "api_key.revoked"), NOW).await.unwrap().unwrap();
    assert_eq!(revoked.key.revoked_at, Some(NOW));
    // The change returns the hash caches know the key by.
    assert_eq!(revoked.hash, key_a.hash);
    assert!(store.revoke_api_key(&a, &key_a.id, &audit(&a, "api_key.revoked"), NOW).await.unwrap().is_none());
    assert!(store.active_api_keys(&a, NOW).await.unwrap().is_empty());
    assert_eq!(store.audit_log(&a, 1).await.unwrap()[0].action, "api_key.revoked");
}

async fn whitelists_are_replaced_whole(store: Store) {
    let (client_id, _, _, _) = register(&store, "wl@example.com").await;
    let entries = vec!["10.0.0.0/8".to_string(), "127.0.0.1/32".to_string()];
    store
        .replace_whitelist(WhitelistKind::Ip, &client_id, &entries, &audit(&client_id, "ip_whitelist.updated"), NOW)
        .await
        .unwrap();
    assert_eq!(store.whitelist(WhitelistKind::Ip, &client_id).await.unwrap(), entries);
    assert!(store.whitelist(WhitelistKind::Origin, &client_id).await.unwrap().is_empty());
    let origins = vec!["https://b.example".to_string(), "https://a.example".to_string()];
    store
        .replace_whitelist(
            WhitelistKind::Origin,
            &client_id,
            &origins,
            &audit(&client_id, "origin_whitelist.updated"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(store.whitelist(WhitelistKind::Origin, &client_id).await.unwrap(), origins, "order is kept");
    store
        .replace_whitelist(WhitelistKind::Ip, &client_id, &[], &audit(&client_id, "ip_whitelist.updated"), NOW)
        .await
        .unwrap();
    assert!(store.whitelist(WhitelistKind::Ip, &client_id).await.unwrap().is_empty());
}

async fn new_session(store: &Store, client_id: &str, user: &str) -> (String, String) {
    let (token, hash) = refresh_token::generate();
    let session_id = crate::id::new_id("ses");
    let new = NewSdkSession {
        session_id: session_id.clone(),
        client_id: client_id.into(),
        user_id: user.into(),
        name: Some("Ada".into()),
        metadata: None,
        refresh_hash: hash,
        refresh_expires_at: NOW + 3600,
    };
    store.create_sdk_session(&new, &audit(client_id, "session.created"), NOW).await.unwrap();
    (session_id, token)
}

async fn refresh_rotates_and_detects_reuse(store: Store) {
    let (client_id, _, _, _) = register(&store, "rt@example.com").await;
    let (session_id, token) = new_session(&store, &client_id, "user-1").await;
    let hash = refresh_token::parse(&token).unwrap();
    let (next, next_hash) = refresh_token::generate();
    match store.rotate_refresh_token(&hash, &next_hash, NOW + 7200, None, None, NOW + 1).await.unwrap() {
        RefreshOutcome::Rotated(session) => {
            assert_eq!((session.id.as_str(), session.expires_at), (session_id.as_str(), NOW + 7200))
        }
        other => panic!("{other:?}"),
    }
    // The next token works once.
    let (_, third_hash) = refresh_token::generate();
    let next_parsed = refresh_token::parse(&next).unwrap();
    assert!(matches!(
        store.rotate_refresh_token(&next_parsed, &third_hash, NOW + 7200, None, None, NOW + 2).await.unwrap(),
        RefreshOutcome::Rotated(_)
    ));
    // Presenting the first one again is reuse: the whole family dies.
    let (_, unused) = refresh_token::generate();
    assert!(matches!(
        store.rotate_refresh_token(&hash, &unused, NOW + 7200, None, None, NOW + 3).await.unwrap(),
        RefreshOutcome::Reused(_)
    ));
    let session = store.session(&session_id).await.unwrap().unwrap();
    assert_eq!(session.revoked_at, Some(NOW + 3));
    // Even the newest token of the family is now refused.
    let (_, more) = refresh_token::generate();
    assert_eq!(
        store.rotate_refresh_token(&third_hash, &more, NOW + 7200, None, None, NOW + 4).await.unwrap(),
        RefreshOutcome::Invalid
    );
    let actions: Vec<String> = store.audit_log(&client_id, 10).await.unwrap().into_iter().map(|r| r.action).collect();
    assert!(actions.contains(&"session.refresh_token_reused".to_string()), "{actions:?}");
}

async fn refresh_refuses_unknown_expired_and_foreign_tokens(store: Store) {
    let (a, _, _, _) = register(&store, "ra@example.com").await;
    let (b, _, _, _) = register(&store, "rb@example.com").await;
    let (_, token) = new_session(&store, &a, "user-1").await;
    let hash = refresh_token::parse(&token).unwrap();
    let (_, next) = refresh_token::generate();
    let (_, unknown) = refresh_token::generate();
    assert_eq!(
        store.rotate_refresh_token(&unknown, &next, NOW + 7200, None, None, NOW).await.unwrap(),
        RefreshOutcome::Invalid
    );
    // Another tenant's caller cannot use it, and the attempt does not consume it.
    assert_eq!(
        store.rotate_refresh_token(&hash, &next, NOW + 7200, Some(&b), None, NOW).await.unwrap(),
        RefreshOutcome::Invalid
    );
    // Expired.
    assert_eq!(
        store.rotate_refresh_token(&hash, &next, NOW + 9000, None, None, NOW + 3600).await.unwrap(),
        RefreshOutcome::Invalid
    );
    assert!(matches!(
        store.rotate_refresh_token(&hash, &next, NOW + 7200, Some(&a), None, NOW + 10).await.unwrap(),
        RefreshOutcome::Rotated(_)
    ));
}

async fn concurrent_refresh_has_one_winner(store: Store) {
    let (client_id, _, _, _) = register(&store, "cr@example.com").await;
    let (session_id, token) = new_session(&store, &client_id, "user-1").await;
    let hash = refresh_token::parse(&token).unwrap();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, hash) = (store.clone(), hash.clone());
            tokio::spawn(async move {
                let (_, next) = refresh_token::generate();
                store.rotate_refresh_token(&hash, &next, NOW + 7200, None, None, NOW + 1).await.unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| matches!(o, RefreshOutcome::Rotated(_))).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, RefreshOutcome::Rotated(_) | RefreshOutcome::Reused(_))));
    // The losers were reuse: the family is revoked (RFC 9700 §4.14.2).
    assert!(store.session(&session_id).await.unwrap().unwrap().revoked_at.is_some());
}

async fn sessions_revoke_and_upsert_end_users(store: Store) {
    let (client_id, account_id, _, _) = register(&store, "ss@example.com").await;
    let (s1, token) = new_session(&store, &client_id, "user-1").await;
    let (s2, _) = new_session(&store, &client_id, "user-1").await;
    assert_ne!(s1, s2);
    let by_token = store.session_by_refresh_token(&refresh_token::parse(&token).unwrap()).await.unwrap().unwrap();
    assert_eq!(by_token.id, s1);
    let revoked =
        store.revoke_session(&s1, "logout", &audit(&client_id, "session.logout"), NOW + 5).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW + 5));
    // Idempotent: the first revocation time stays.
    let again =
        store.revoke_session(&s1, "logout", &audit(&client_id, "session.logout"), NOW + 9).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(NOW + 5));
    assert!(
        store
            .revoke_session("ses_missing", "logout", &audit(&client_id, "session.logout"), NOW)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.session(&s2).await.unwrap().unwrap().is_active(NOW));

    store
        .create_dashboard_session(
            "ses_dash",
            &client_id,
            &account_id,
            NOW + 900,
            &audit(&client_id, "client.login"),
            NOW,
        )
        .await
        .unwrap();
    let dash = store.session("ses_dash").await.unwrap().unwrap();
    assert_eq!((dash.kind.as_str(), dash.subject.as_str()), ("dashboard", account_id.as_str()));
}

async fn api_key_use_is_recorded(store: Store) {
    let (client_id, _, key, _) = register(&store, "use@example.com").await;
    store.touch_api_key(&key.id, NOW + 42).await.unwrap();
    let keys = store.active_api_keys(&client_id, NOW).await.unwrap();
    assert_eq!(keys[0].last_used_at, Some(NOW + 42));
    assert_eq!(store.api_key_hash(&key.id).await.unwrap(), Some(key.hash));
}

async fn expired_sessions_and_old_audit_rows_are_purged(store: Store) {
    use crate::retention::{EXPIRED_KEPT_FOR, Purged, Retention};
    let (client_id, _, _, _) = register(&store, "purge@example.com").await;
    let (short_id, _) = new_session(&store, &client_id, "user-1").await;
    let (_, long_hash) = refresh_token::generate();
    let long = NewSdkSession {
        session_id: crate::id::new_id("ses"),
        client_id: client_id.clone(),
        user_id: "user-2".into(),
        name: None,
        metadata: None,
        refresh_hash: long_hash,
        refresh_expires_at: NOW + 30 * 86_400,
    };
    store.create_sdk_session(&long, &audit(&client_id, "session.created"), NOW).await.unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let retention = Retention { audit_for: day, every: day };
    let kept = EXPIRED_KEPT_FOR.as_secs() as i64;

    // Within a day of the short session's expiry, and audit rows kept for a week: nothing goes.
    let week = Retention { audit_for: day * 7, every: day };
    assert_eq!(week.purge(&store, NOW + 3600 + kept - 10).await.unwrap(), Purged::default());
    assert!(store.session(&short_id).await.unwrap().is_some());

    // Each delete takes a bounded batch.
    assert_eq!(store.purge_audit(NOW + 1, 1).await.unwrap(), 1);
    assert_eq!(store.purge_changes(NOW + 1, 1).await.unwrap(), 1);
    let purged = retention.purge(&store, NOW + 3600 + kept + 10).await.unwrap();
    assert_eq!((purged.sessions, purged.refresh_tokens), (1, 1));
    assert!(purged.audit_rows >= 2, "{purged:?}");
    assert!(store.session(&short_id).await.unwrap().is_none());
    assert!(store.session(&long.session_id).await.unwrap().is_some(), "a live session is kept");
    assert!(store.audit_log(&client_id, 10).await.unwrap().is_empty());
    assert_eq!(retention.purge(&store, NOW + 3600 + kept + 10).await.unwrap(), Purged::default());
    // The change feed keeps its week.
    store.revoke_session(&long.session_id, "logout", &audit(&client_id, "session.logout"), NOW).await.unwrap();
    let feed_kept = crate::retention::CHANGES_KEPT_FOR.as_secs() as i64;
    assert_eq!(retention.purge(&store, NOW + feed_kept).await.unwrap().changes, 0);
    assert!(retention.purge(&store, NOW + feed_kept + 1).await.unwrap().changes >= 1);
    assert!(store.changes_after(0, 10).await.unwrap().is_empty());
}

/// The console's activity pages: newest first, one tenant's rows, a cursor
/// that neither skips nor repeats a row.
async fn audit_pages_walk_a_tenants_log_newest_first(store: Store) {
    let (client_id, _, _, _) = register(&store, "pages@example.com").await;
    let (other, _, _, _) = register(&store, "other-pages@example.com").await;
    for action in ["api_key.rotated", "api_key.revoked", "ip_whitelist.updated", "origin_whitelist.updated"] {
        store.audit(&audit(&client_id, action), NOW).await.unwrap();
        store.audit(&audit(&other, "client.login"), NOW).await.unwrap();
    }
    let first = store.audit_page(&client_id, None, 2).await.unwrap();
    let actions: Vec<&str> = first.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["origin_whitelist.updated", "ip_whitelist.updated"]);
    let second = store.audit_page(&client_id, Some(first[1].id), 2).await.unwrap();
    let actions: Vec<&str> = second.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["api_key.revoked", "api_key.rotated"]);
    let last = store.audit_page(&client_id, Some(second[1].id), 2).await.unwrap();
    let actions: Vec<&str> = last.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["client.registered"]);
    assert!(store.audit_page(&client_id, Some(last[0].id), 2).await.unwrap().is_empty());
    assert_eq!(store.audit_log(&client_id, 1).await.unwrap()[0].id, first[0].id);
}

crate::store_conformance!(
    audit_pages_walk_a_tenants_log_newest_first,
    expired_sessions_and_old_audit_rows_are_purged,
    registration_is_atomic_and_emails_unique,
    key_rotation_keeps_at_most_two_keys,
    concurrent_rotations_never_leave_three_keys,
    revoking_a_key_is_scoped_to_its_tenant,
    whitelists_are_replaced_whole,
    refresh_rotates_and_detects_reuse,
    refresh_refuses_unknown_expired_and_foreign_tokens,
    concurrent_refresh_has_one_winner,
    sessions_revoke_and_upsert_end_users,
    api_key_use_is_recorded,
);

#[tokio::test]
async fn sqlite_file_and_folder_are_created() {
    let dir = std::env::temp_dir().join(crate::id::new_id("caas-db"));
    let url = format!("sqlite://{}/nested/caas.db", dir.display());
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(dir.join("nested/caas.db").exists());
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn unreachable_database_is_unavailable_not_a_panic() {
    let err = Store::connect("postgres://nobody@127.0.0.1:1/none", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Setup(_)), "{err:?}");
    assert!(Store::connect("mysql://x", 1).await.is_err());
}
