use std::sync::Arc;
use std::time::Duration;

use super::store::register;
use crate::bus::{BusMessage, EventBus, LocalBus};
use crate::chat::{Chat, ChatError, MAX_BODY_BYTES};
use crate::events::Event;
use crate::store::Store;

const NOW: i64 = 1_700_000_000;

async fn conversations_are_scoped_to_members_and_tenants(store: Store) {
    let chat = Chat::new(store.clone(), Arc::new(LocalBus::new()));
    let (a, _, _, _) = register(&store, "ca@example.com").await;
    let (b, _, _, _) = register(&store, "cb@example.com").await;
    let created =
        chat.create_conversation(&a, "ann", &["bob".into(), "ann".into()], Some(" Team "), NOW).await.unwrap();
    assert_eq!(created.member_ids, ["ann", "bob"]);
    assert_eq!(created.title.as_deref(), Some("Team"));
    let second = chat.create_conversation(&a, "bob", &[], None, NOW).await.unwrap();

    let bobs = chat.conversations(&a, "bob", None, None).await.unwrap();
    assert_eq!(
        bobs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [second.id.as_str(), created.id.as_str()],
        "newest first"
    );
    assert_eq!(bobs[1].member_ids, ["ann", "bob"]);
    let page = chat.conversations(&a, "bob", Some(&second.id), Some(1)).await.unwrap();
    assert_eq!(page.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [created.id.as_str()]);
    assert!(chat.conversations(&a, "carol", None, None).await.unwrap().is_empty());
    // Same user id in another tenant: a different person, sees nothing.
    assert!(chat.conversations(&b, "bob", None, None).await.unwrap().is_empty());
    assert!(chat.is_member(&a, &created.id, "bob").await.unwrap());
    assert!(!chat.is_member(&b, &created.id, "bob").await.unwrap());

    for (members, title) in [(vec!["has space".to_string()], None), (vec![], Some("x".repeat(201)))] {
        let err = chat.create_conversation(&a, "ann", &members, title.as_deref(), NOW).await.unwrap_err();
        assert!(matches!(err, ChatError::Invalid { .. }), "{err:?}");
    }
    let crowd: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    assert!(matches!(
        chat.create_conversation(&a, "ann", &crowd, None, NOW).await,
        Err(ChatError::Invalid { field: "member_ids", .. })
    ));
    assert!(matches!(chat.conversations(&a, "bob", Some("bad cursor!"), None).await, Err(ChatError::Invalid { .. })));
    assert!(matches!(
        chat.conversations(&a, "bob", None, Some(0)).await,
        Err(ChatError::Invalid { field: "limit", .. })
    ));
}

async fn messages_are_idempotent_announced_once_and_members_only(store: Store) {
    let bus = Arc::new(LocalBus::new());
    let mut events = bus.subscribe();
    let chat = Chat::new(store.clone(), bus);
    let (a, _, _, _) = register(&store, "ma@example.com").await;
    let (b, _, _, _) = register(&store, "mb@example.com").await;
    let conversation = chat.create_conversation(&a, "ann", &["bob".into()], None, NOW).await.unwrap();
    let (first, created) = chat.post(&a, "ann", &conversation.id, "hello", "c-1", NOW).await.unwrap();
    assert!(created);
    // A retry returns the same message and stores nothing twice.
    let (again, created) = chat.post(&a, "ann", &conversation.id, "hello (retry)", "c-1", NOW + 1).await.unwrap();
    assert_eq!((again, created), (first.clone(), false));
    // The same client_msg_id from another sender is another message.
    let (from_bob, created) = chat.post(&a, "bob", &conversation.id, "hi", "c-1", NOW + 2).await.unwrap();
    assert!(created && from_bob.id != first.id);

    let announced = tokio::time::timeout(Duration::from_secs(1), async {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            if let BusMessage::Event(event) = events.recv().await.unwrap()
                && let Event::MessageCreated { tenant_id, message } = event.as_ref()
            {
                assert_eq!(tenant_id, &a);
                seen.push(message.id.clone());
            }
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(announced, [first.id.clone(), from_bob.id.clone()]);
    assert!(tokio::time::timeout(Duration::from_millis(100), events.recv()).await.is_err(), "the retry was announced");

    // Not a member, or another tenant's conversation: not found, nothing stored.
    assert!(matches!(chat.post(&a, "carol", &conversation.id, "x", "c-9", NOW).await, Err(ChatError::NotFound)));
    assert!(matches!(chat.post(&b, "ann", &conversation.id, "x", "c-9", NOW).await, Err(ChatError::NotFound)));
    assert!(matches!(chat.messages(&b, "bob", &conversation.id, None, None).await, Err(ChatError::NotFound)));
    assert!(matches!(chat.messages(&a, "carol", &conversation.id, None, None).await, Err(ChatError::NotFound)));
    assert!(matches!(
        chat.post(&a, "ann", &conversation.id, &"x".repeat(MAX_BODY_BYTES + 1), "c-big", NOW).await,
        Err(ChatError::TooLarge)
    ));
    assert!(chat.post(&a, "ann", &conversation.id, &"x".repeat(MAX_BODY_BYTES), "c-max", NOW).await.is_ok());
    assert!(matches!(
        chat.post(&a, "ann", &conversation.id, "  ", "c-empty", NOW).await,
        Err(ChatError::Invalid { field: "body", .. })
    ));
    assert!(matches!(
        chat.post(&a, "ann", &conversation.id, "x", "", NOW).await,
        Err(ChatError::Invalid { field: "client_msg_id", .. })
    ));
    // NUL (a fuzzer's find): PostgreSQL text cannot hold it, so it is a 400
    // or a conversation that does not exist, never a store error (503).
    assert!(matches!(
        chat.post(&a, "ann", &conversation.id, "a\0b", "c-nul", NOW).await,
        Err(ChatError::Invalid { field: "body", .. })
    ));
    assert!(matches!(chat.post(&a, "ann", "conv\0x", "hi", "c-nul", NOW).await, Err(ChatError::NotFound)));
    assert!(matches!(chat.messages(&a, "ann", "conv\0x", None, None).await, Err(ChatError::NotFound)));

    let page = chat.messages(&a, "bob", &conversation.id, None, Some(2)).await.unwrap();
    assert_eq!(page.len(), 2);
    assert!(page[0].id > page[1].id, "newest first");
    let older = chat.messages(&a, "bob", &conversation.id, Some(&page[1].id), Some(10)).await.unwrap();
    assert_eq!(older.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [first.id.as_str()]);
}

crate::store_conformance!(
    conversations_are_scoped_to_members_and_tenants,
    messages_are_idempotent_announced_once_and_members_only
);
