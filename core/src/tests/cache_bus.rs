use std::sync::Arc;
use std::time::Duration;

use crate::bus::{BusMessage, EventBus, LocalBus, RedisBus};
use crate::cache::{Cache, MemoryCache, RedisCache};
use crate::events::Event;

fn unique(prefix: &str) -> String {
    crate::id::new_id(prefix)
}

pub(super) async fn cache_conformance(cache: Arc<dyn Cache>) {
    let key = unique("test:cache");
    assert_eq!(cache.get(&key).await.unwrap(), None);
    cache.set(&key, "one", Duration::from_secs(30)).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("one"));
    assert!(!cache.set_if_absent(&key, "two", Duration::from_secs(30)).await.unwrap());
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("one"));
    cache.delete(&key).await.unwrap();
    assert!(cache.set_if_absent(&key, "three", Duration::from_secs(30)).await.unwrap());
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("three"));

    let short = unique("test:short");
    cache.set(&short, "x", Duration::from_secs(1)).await.unwrap();
    assert!(
        crate::testing::eventually(Duration::from_secs(3), || async { cache.get(&short).await.unwrap().is_none() })
            .await
    );

    let counter = unique("test:counter");
    assert_eq!(cache.counter(&counter).await.unwrap().0, 0);
    let (n, left) = cache.increment(&counter, Duration::from_secs(60)).await.unwrap();
    assert_eq!(n, 1);
    assert!((59..=60).contains(&left), "{left}");
    assert_eq!(cache.increment(&counter, Duration::from_secs(60)).await.unwrap().0, 2);
    assert_eq!(cache.counter(&counter).await.unwrap().0, 2);
    // A reservation given back: the count drops, the window stays.
    cache.decrement(&counter).await.unwrap();
    let (n, left) = cache.counter(&counter).await.unwrap();
    assert_eq!(n, 1);
    assert!((58..=60).contains(&left), "{left}");
    let absent = unique("test:absent");
    cache.decrement(&absent).await.unwrap();
    assert_eq!(cache.counter(&absent).await.unwrap(), (0, 0));
    assert_eq!(cache.increment(&absent, Duration::from_secs(60)).await.unwrap().0, 1);
    let set = unique("test:set");
    cache.set_add(&set, "a", Duration::from_secs(30)).await.unwrap();
    cache.set_add(&set, "b", Duration::from_secs(30)).await.unwrap();
    cache.set_add(&set, "a", Duration::from_secs(30)).await.unwrap();
    let mut members = cache.set_members(&set).await.unwrap();
    members.sort();
    assert_eq!(members, ["a", "b"]);
    cache.set_remove(&set, "a").await.unwrap();
    assert_eq!(cache.set_members(&set).await.unwrap(), ["b"]);
    assert!(cache.set_members(&unique("test:none")).await.unwrap().is_empty());

    // Shared quotas: adds return totals over every adder; members are counted.
    let (group, one, two) = (unique("test:group"), unique("test:q1"), unique("test:q2"));
    let ttl = Duration::from_secs(30);
    let (totals, alive) = cache.add_counts(&group, "a", &[(one.clone(), 3), (two.clone(), 0)], ttl).await.unwrap();
    assert_eq!((totals, alive), (vec![3, 0], 1));
    let (totals, alive) = cache.add_counts(&group, "b", &[(one.clone(), 2)], ttl).await.unwrap();
    assert_eq!((totals, alive), (vec![5], 2));
    assert_eq!(cache.add_counts(&group, "a", &[], ttl).await.unwrap(), (vec![], 2));
    // Requests given back subtract.
    let (totals, _) = cache.add_counts(&group, "a", &[(one.clone(), -4)], ttl).await.unwrap();
    assert_eq!(totals, vec![1]);
    let short = unique("test:group");
    cache.add_counts(&short, "gone", &[], Duration::from_millis(100)).await.unwrap();
    let alone = || async { cache.add_counts(&short, "here", &[], ttl).await.unwrap().1 == 1 };
    assert!(crate::testing::eventually(Duration::from_secs(3), alone).await, "an expired member is not counted");
    cache.ping().await.unwrap();
}

pub(super) async fn bus_conformance(a: Arc<dyn EventBus>, b: Arc<dyn EventBus>) {
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();
    let event = Event::SessionRevoked { tenant_id: unique("cl"), session_id: unique("ses") };
    a.publish(event.clone()).await.unwrap();
    for rx in [&mut on_a, &mut on_b] {
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match rx.recv().await.unwrap() {
                    BusMessage::Event(e) if *e == event => return true,
                    _ => continue,
                }
            }
        })
        .await;
        assert_eq!(got, Ok(true));
    }
    // Delivered exactly once to the publisher (not again via Redis).
    let again = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let BusMessage::Event(e) = on_a.recv().await.unwrap()
                && *e == event
            {
                return;
            }
        }
    })
    .await;
    assert!(again.is_err(), "publisher saw its own event twice");
}

#[tokio::test]
async fn memory_cache() {
    cache_conformance(Arc::new(MemoryCache::new())).await;
}

#[tokio::test]
async fn redis_cache() {
    let Some(url) = crate::testing::redis_url().await else {
        return;
    };
    cache_conformance(Arc::new(RedisCache::new(&url).unwrap())).await;
}

#[tokio::test]
async fn local_bus() {
    let bus: Arc<dyn EventBus> = Arc::new(LocalBus::new());
    bus_conformance(bus.clone(), bus).await;
}

#[tokio::test]
async fn redis_bus_between_two_processes() {
    let Some(url) = crate::testing::redis_url().await else {
        return;
    };
    let a = RedisBus::start(&url).unwrap();
    let b = RedisBus::start(&url).unwrap();
    assert!(a.wait_connected(Duration::from_secs(5)).await && b.wait_connected(Duration::from_secs(5)).await);
    bus_conformance(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang() {
    let cache = RedisCache::new("redis://127.0.0.1:1").unwrap();
    let started = std::time::Instant::now();
    assert!(cache.get("x").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    let bus = RedisBus::start("redis://127.0.0.1:1").unwrap();
    assert!(!bus.wait_connected(Duration::from_millis(300)).await);
    // Local delivery still happens when Redis is down.
    let mut rx = bus.subscribe();
    assert!(bus.publish(Event::IpWhitelistChanged { tenant_id: "t".into(), version: 1 }).await.is_err());
    assert!(matches!(rx.recv().await.unwrap(), BusMessage::Event(_)));
}
