//! This node's connections: who they are, what they subscribe to, and how to
//! reach them. Fan-out serializes a message once and hands every subscriber
//! a cheap clone; a subscriber whose queue is full is closed, never waited for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

use crate::close::CloseReason;

pub type ConnId = u64;

/// A frame queued for a connection, with when its event reached this node.
pub struct Outbound {
    pub frame: Utf8Bytes,
    /// `node_micros()` at arrival (wraps after ~71 minutes; only differences matter).
    pub arrived: u32,
}

static EPOCH: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);

/// Microseconds on this node's clock, small enough to queue cheaply.
pub fn node_micros() -> u32 {
    EPOCH.elapsed().as_micros() as u32
}

/// A connection as the rest of the node sees it.
pub struct ConnHandle {
    pub id: ConnId,
    /// The id stored in Redis (`socket:conn:{key}`).
    pub key: String,
    pub tenant_id: String,
    pub user_id: String,
    outbound: mpsc::Sender<Outbound>,
    /// Set once: why the connection must close; its task is woken by `notify`.
    close: AtomicU16,
    pub notify: Notify,
}

impl ConnHandle {
    pub fn new(id: ConnId, key: String, tenant_id: String, user_id: String, outbound: mpsc::Sender<Outbound>) -> Self {
        Self { id, key, tenant_id, user_id, outbound, close: AtomicU16::new(0), notify: Notify::new() }
    }

    /// Asks the connection's task to close with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        if self.close.compare_exchange(0, reason_index(reason), Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            self.notify.notify_one();
        }
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        reason_of(self.close.load(Ordering::SeqCst))
    }

    /// Queues a frame; a full queue closes the connection as too slow.
    fn offer(&self, frame: &Utf8Bytes, arrived: u32) -> bool {
        match self.outbound.try_send(Outbound { frame: frame.clone(), arrived }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

fn reason_index(reason: CloseReason) -> u16 {
    reason.index() as u16 + 1
}

fn reason_of(index: u16) -> Option<CloseReason> {
    index.checked_sub(1).and_then(|i| CloseReason::ALL.get(i as usize)).copied()
}

#[derive(Default)]
struct Maps {
    conns: HashMap<ConnId, Arc<ConnHandle>>,
    by_conversation: HashMap<String, HashSet<ConnId>>,
    by_session: HashMap<String, HashSet<ConnId>>,
    subscriptions: HashMap<ConnId, HashSet<String>>,
    session_of: HashMap<ConnId, String>,
    /// Open connections per end user (`tenant/user`) and per tenant, for the caps.
    per_user: HashMap<String, usize>,
    per_tenant: HashMap<String, usize>,
}

/// Most connections one node holds per end user and per tenant.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionCaps {
    pub per_user: usize,
    pub per_tenant: usize,
}

fn user_key(handle: &ConnHandle) -> String {
    format!("{}/{}", handle.tenant_id, handle.user_id)
}

fn release(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

#[derive(Default)]
pub struct Registry {
    maps: RwLock<Maps>,
    next_id: AtomicU64,
}

impl Registry {
    pub fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection unless its user or tenant is at its cap;
    /// checked and counted under one lock, so concurrent upgrades cannot
    /// overshoot.
    pub fn add(&self, handle: Arc<ConnHandle>, session_id: &str, caps: ConnectionCaps) -> Result<(), CloseReason> {
        let mut maps = self.write();
        let user = user_key(&handle);
        if maps.per_user.get(&user).copied().unwrap_or(0) >= caps.per_user {
            return Err(CloseReason::UserConnectionLimit);
        }
        if maps.per_tenant.get(&handle.tenant_id).copied().unwrap_or(0) >= caps.per_tenant {
            return Err(CloseReason::TenantConnectionLimit);
        }
        *maps.per_user.entry(user).or_default() += 1;
        *maps.per_tenant.entry(handle.tenant_id.clone()).or_default() += 1;
        maps.by_session.entry(session_id.to_string()).or_default().insert(handle.id);
        maps.session_of.insert(handle.id, session_id.to_string());
        maps.conns.insert(handle.id, handle);
        Ok(())
    }

    pub fn remove(&self, id: ConnId) {
        let mut maps = self.write();
        if let Some(handle) = maps.conns.remove(&id) {
            release(&mut maps.per_user, &user_key(&handle));
            release(&mut maps.per_tenant, &handle.tenant_id);
        }
        if let Some(conversations) = maps.subscriptions.remove(&id) {
            for conversation in conversations {
                remove_from(&mut maps.by_conversation, &conversation, id);
            }
        }
        if let Some(session) = maps.session_of.remove(&id) {
            remove_from(&mut maps.by_session, &session, id);
        }
    }

    /// Subscribes; false if the connection already has `limit` subscriptions.
    pub fn subscribe(&self, id: ConnId, conversation_id: &str, limit: usize) -> bool {
        let mut maps = self.write();
        let subscriptions = maps.subscriptions.entry(id).or_default();
        if subscriptions.len() >= limit && !subscriptions.contains(conversation_id) {
            return false;
        }
        subscriptions.insert(conversation_id.to_string());
        maps.by_conversation.entry(conversation_id.to_string()).or_default().insert(id);
        true
    }

    pub fn unsubscribe(&self, id: ConnId, conversation_id: &str) {
        let mut maps = self.write();
        if let Some(subscriptions) = maps.subscriptions.get_mut(&id) {
            subscriptions.remove(conversation_id);
        }
        remove_from(&mut maps.by_conversation, conversation_id, id);
    }

    /// A refresh may move the connection to another session of the same user.
    pub fn move_session(&self, id: ConnId, session_id: &str) {
        let mut maps = self.write();
        if let Some(old) = maps.session_of.insert(id, session_id.to_string()) {
            remove_from(&mut maps.by_session, &old, id);
        }
        maps.by_session.entry(session_id.to_string()).or_default().insert(id);
    }

    /// Offers `frame` to every subscriber of the conversation in `tenant_id`;
    /// returns how many took it.
    pub fn deliver(&self, tenant_id: &str, conversation_id: &str, frame: &Utf8Bytes) -> u64 {
        let arrived = node_micros();
        let maps = self.read();
        let Some(subscribers) = maps.by_conversation.get(conversation_id) else { return 0 };
        let mut delivered = 0;
        for id in subscribers {
            // Conversation ids are unique, but a tenant never receives
            // another's message even if that ever failed to hold.
            if let Some(conn) = maps.conns.get(id).filter(|c| c.tenant_id == tenant_id)
                && conn.offer(frame, arrived)
            {
                delivered += 1;
            }
        }
        delivered
    }

    pub fn close_session(&self, session_id: &str, reason: CloseReason) -> usize {
        let maps = self.read();
        let ids = maps.by_session.get(session_id).map(|s| s.iter().copied().collect::<Vec<_>>()).unwrap_or_default();
        for id in &ids {
            if let Some(conn) = maps.conns.get(id) {
                conn.close(reason);
            }
        }
        ids.len()
    }

    pub fn close_all(&self, reason: CloseReason) {
        for conn in self.read().conns.values() {
            conn.close(reason);
        }
    }

    /// The distinct sessions of this node's connections.
    pub fn sessions(&self) -> Vec<String> {
        self.read().by_session.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_from(map: &mut HashMap<String, HashSet<ConnId>>, key: &str, id: ConnId) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(registry: &Registry, tenant: &str, queue: usize) -> (Arc<ConnHandle>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue);
        let id = registry.next_id();
        let handle = Arc::new(ConnHandle::new(id, format!("k{id}"), tenant.into(), "u".into(), tx));
        registry.add(handle.clone(), &format!("ses-{id}"), UNCAPPED).unwrap();
        (handle, rx)
    }

    const UNCAPPED: ConnectionCaps = ConnectionCaps { per_user: usize::MAX, per_tenant: usize::MAX };

    fn handle(registry: &Registry, tenant: &str, user: &str) -> Arc<ConnHandle> {
        let (tx, _rx) = mpsc::channel(1);
        let id = registry.next_id();
        Arc::new(ConnHandle::new(id, format!("k{id}"), tenant.into(), user.into(), tx))
    }

    #[test]
    fn caps_per_user_and_tenant_hold_and_free_on_close() {
        let registry = Registry::default();
        let caps = ConnectionCaps { per_user: 2, per_tenant: 3 };
        let a1 = handle(&registry, "t1", "alice");
        registry.add(a1.clone(), "s1", caps).unwrap();
        registry.add(handle(&registry, "t1", "alice"), "s1", caps).unwrap();
        assert_eq!(registry.add(handle(&registry, "t1", "alice"), "s1", caps), Err(CloseReason::UserConnectionLimit));
        // The same user id in another tenant is another user.
        registry.add(handle(&registry, "t2", "alice"), "s2", caps).unwrap();
        registry.add(handle(&registry, "t1", "bob"), "s3", caps).unwrap();
        assert_eq!(registry.add(handle(&registry, "t1", "carol"), "s4", caps), Err(CloseReason::TenantConnectionLimit));
        registry.remove(a1.id);
        registry.add(handle(&registry, "t1", "alice"), "s1", caps).unwrap();
        assert_eq!(CloseReason::UserConnectionLimit.code(), 4010);
        assert_eq!(CloseReason::TenantConnectionLimit.code(), 4011);
    }

    #[test]
    fn delivery_reaches_subscribers_of_the_tenant_only() {
        let registry = Registry::default();
        let (a, mut rx_a) = conn(&registry, "t1", 8);
        let (b, mut rx_b) = conn(&registry, "t2", 8);
        let (_c, mut rx_c) = conn(&registry, "t1", 8);
        assert!(registry.subscribe(a.id, "conv", 10));
        assert!(registry.subscribe(b.id, "conv", 10));
        let frame = Utf8Bytes::from("hello");
        assert_eq!(registry.deliver("t1", "conv", &frame), 1);
        assert_eq!(rx_a.try_recv().unwrap().frame, "hello");
        assert!(rx_b.try_recv().is_err(), "another tenant's subscriber got it");
        assert!(rx_c.try_recv().is_err(), "a non-subscriber got it");
        registry.unsubscribe(a.id, "conv");
        assert_eq!(registry.deliver("t1", "conv", &frame), 0);
    }

    #[test]
    fn a_full_queue_closes_the_slow_consumer() {
        let registry = Registry::default();
        let (a, _rx) = conn(&registry, "t1", 2);
        registry.subscribe(a.id, "conv", 10);
        let frame = Utf8Bytes::from("m");
        assert_eq!(registry.deliver("t1", "conv", &frame), 1);
        assert_eq!(registry.deliver("t1", "conv", &frame), 1);
        assert_eq!(registry.deliver("t1", "conv", &frame), 0);
        assert_eq!(a.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn sessions_close_and_removal_cleans_up() {
        let registry = Registry::default();
        let (a, _rx) = conn(&registry, "t1", 2);
        registry.subscribe(a.id, "conv", 10);
        registry.move_session(a.id, "ses-new");
        assert_eq!(registry.close_session(&format!("ses-{}", a.id), CloseReason::SessionRevoked), 0);
        assert_eq!(registry.close_session("ses-new", CloseReason::SessionRevoked), 1);
        assert_eq!(a.close_reason(), Some(CloseReason::SessionRevoked));
        a.close(CloseReason::Idle);
        assert_eq!(a.close_reason(), Some(CloseReason::SessionRevoked), "the first reason wins");
        registry.remove(a.id);
        assert!(registry.is_empty() && registry.sessions().is_empty());
        assert_eq!(registry.deliver("t1", "conv", &Utf8Bytes::from("m")), 0);
        assert!(!registry.subscribe(registry.next_id(), "x", 0));
    }
}
