//! Chat: conversations, members and messages, scoped to a tenant. The chat
//! service (REST) and the socket service both post through `Chat`, so a
//! message is stored and announced on the bus the same way from either.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::EventBus;
use crate::events::Event;
use crate::id::new_id;
use crate::message::Message;
use crate::store::{ConversationRecord, Store, StoreError};

/// Largest message body, in bytes: larger is refused as too large.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
pub const MAX_MEMBERS: usize = 100;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;
pub const MAX_USER_ID_BYTES: usize = 128;
pub const MAX_PAGE: i64 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conversation {
    pub id: String,
    pub title: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub member_ids: Vec<String>,
}

impl Conversation {
    fn new(record: ConversationRecord, member_ids: Vec<String>) -> Self {
        let ConversationRecord { id, title, created_by, created_at } = record;
        Self { id, title, created_by, created_at, member_ids }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// No such conversation in the caller's tenant, or the caller is not a
    /// member: 404 either way, so nothing about other tenants (or other
    /// people's conversations) leaks.
    #[error("conversation not found")]
    NotFound,
    /// 400 naming the field.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// The message body is over 16 KiB: 413.
    #[error("message body is larger than 16 KiB")]
    TooLarge,
    /// 503: any database error, unique violations included; chat's store
    /// methods report each as `StoreError::Unavailable`.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChatError {
    /// The error code every edge (chat's REST routes, socket frames) answers
    /// with. chat answers a storage failure with the store error's own
    /// response (http/src/error.rs); this is its code for a socket frame.
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::NotFound => "conversation_not_found",
            ChatError::Invalid { .. } => "invalid_field",
            ChatError::TooLarge => "payload_too_large",
            ChatError::Store(_) => "service_unavailable",
        }
    }
}

/// An end user's id as clients name them: 1–128 bytes, no spaces or control
/// characters.
pub fn is_valid_user_id(user_id: &str) -> bool {
    !user_id.is_empty()
        && user_id.len() <= MAX_USER_ID_BYTES
        && !user_id.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn invalid(field: &'static str, message: impl Into<String>) -> ChatError {
    ChatError::Invalid { field, message: message.into() }
}

fn check_cursor(field: &'static str, cursor: Option<&str>) -> Result<String, ChatError> {
    match cursor {
        None => Ok(String::new()),
        Some(c) if !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            Ok(c.to_string())
        }
        Some(_) => Err(invalid(field, "not a valid cursor")),
    }
}

fn check_limit(limit: Option<i64>) -> Result<i64, ChatError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(invalid("limit", format!("limit must be between 1 and {MAX_PAGE}"))),
    }
}

/// The chat rules over the store and the bus.
#[derive(Clone)]
pub struct Chat {
    store: Store,
    bus: Arc<dyn EventBus>,
}

impl Chat {
    pub fn new(store: Store, bus: Arc<dyn EventBus>) -> Self {
        Self { store, bus }
    }

    /// A conversation of the creator and `member_ids` (the creator is always a member).
    pub async fn create_conversation(
        &self,
        tenant_id: &str,
        creator: &str,
        member_ids: &[String],
        title: Option<&str>,
        now: i64,
    ) -> Result<Conversation, ChatError> {
        let mut members = vec![creator.to_string()];
        for (i, member) in member_ids.iter().enumerate() {
            if !is_valid_user_id(member) {
                return Err(invalid("member_ids", format!("member_ids[{i}] is not a valid user id")));
            }
            if !members.contains(member) {
                members.push(member.clone());
            }
        }
        if members.len() > MAX_MEMBERS {
            return Err(invalid("member_ids", format!("at most {MAX_MEMBERS} members")));
        }
        let title = title.map(str::trim).filter(|t| !t.is_empty());
        if title.is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS || t.chars().any(char::is_control)) {
            return Err(invalid("title", format!("title must be at most {MAX_TITLE_CHARS} printable characters")));
        }
        let record = ConversationRecord {
            id: new_id("conv"),
            title: title.map(str::to_string),
            created_by: creator.to_string(),
            created_at: now,
        };
        self.store.insert_conversation(tenant_id, &record, &members).await?;
        Ok(Conversation::new(record, members))
    }

    /// The user's conversations, newest first; `before` is the last id of the previous page.
    pub async fn conversations(
        &self,
        tenant_id: &str,
        user_id: &str,
        before: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Vec<Conversation>, ChatError> {
        let before = check_cursor("cursor", before)?;
        let limit = check_limit(limit)?;
        let records = self.store.conversations_of(tenant_id, user_id, &before, limit).await?;
        let mut conversations: Vec<Conversation> =
            records.into_iter().map(|record| Conversation::new(record, Vec::new())).collect();
        let ids: Vec<&str> = conversations.iter().map(|c| c.id.as_str()).collect();
        let members = self.store.members_of(tenant_id, &ids).await?;
        for (conversation, user) in members {
            if let Some(c) = conversations.iter_mut().find(|c| c.id == conversation) {
                c.member_ids.push(user);
            }
        }
        Ok(conversations)
    }

    pub async fn is_member(&self, tenant_id: &str, conversation_id: &str, user_id: &str) -> Result<bool, ChatError> {
        // No stored id holds NUL, and PostgreSQL would refuse the query (a 503).
        if conversation_id.contains('\0') {
            return Ok(false);
        }
        Ok(self.store.is_member(tenant_id, conversation_id, user_id).await?)
    }

    /// Stores a message (idempotent on the sender's `client_msg_id`) and, the
    /// first time only, announces it on the bus. Returns it and whether it is new.
    pub async fn post(
        &self,
        tenant_id: &str,
        sender_id: &str,
        conversation_id: &str,
        body: &str,
        client_msg_id: &str,
        now: i64,
    ) -> Result<(Message, bool), ChatError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(ChatError::TooLarge);
        }
        if body.trim().is_empty() {
            return Err(invalid("body", "body must not be empty"));
        }
        // PostgreSQL text cannot hold NUL: refused here, not as a 503 from the store.
        if body.contains('\0') {
            return Err(invalid("body", "body must not contain NUL characters"));
        }
        if client_msg_id.is_empty()
            || client_msg_id.len() > MAX_CLIENT_MSG_ID_BYTES
            || client_msg_id.chars().any(|c| c.is_control())
        {
            return Err(invalid(
                "client_msg_id",
                format!("client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_BYTES} bytes"),
            ));
        }
        if !self.is_member(tenant_id, conversation_id, sender_id).await? {
            return Err(ChatError::NotFound);
        }
        let message = Message {
            id: new_id("msg"),
            conversation_id: conversation_id.to_string(),
            sender_id: sender_id.to_string(),
            body: body.to_string(),
            client_msg_id: client_msg_id.to_string(),
            created_at: now,
        };
        let (message, created) = self.store.insert_message(tenant_id, &message).await?;
        if !created {
            return Ok((message, false));
        }
        // Announced only once committed, and only the first time.
        let event = Event::MessageCreated { tenant_id: tenant_id.to_string(), message: message.clone() };
        if let Err(error) = self.bus.publish(event).await {
            // Stored (acknowledged) but not announced to other nodes: their
            // subscribers see it on their next fetch. Logged, not failed.
            tracing::error!(%error, conversation_id, "message stored but not published to other nodes");
        }
        Ok((message, true))
    }

    /// A page of messages, newest first; `before` is the oldest id already seen.
    pub async fn messages(
        &self,
        tenant_id: &str,
        user_id: &str,
        conversation_id: &str,
        before: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Vec<Message>, ChatError> {
        let before = check_cursor("before", before)?;
        let limit = check_limit(limit)?;
        if !self.is_member(tenant_id, conversation_id, user_id).await? {
            return Err(ChatError::NotFound);
        }
        Ok(self.store.messages(tenant_id, conversation_id, &before, limit).await?)
    }
}
