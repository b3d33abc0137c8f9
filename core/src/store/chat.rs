//! Chat storage: conversations, their members and their messages. Every
//! query names the tenant (`client_id`); which tenant and user to ask for is
//! decided by the chat rules (core/src/chat.rs).

use crate::message::Message;

use super::{Result, Store};

/// A conversation's own row; its members are read with `members_of`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConversationRecord {
    pub id: String,
    pub title: Option<String>,
    pub created_by: String,
    pub created_at: i64,
}

impl Store {
    /// The conversation and all its members, in one transaction.
    pub async fn insert_conversation(
        &self,
        tenant_id: &str,
        conversation: &ConversationRecord,
        members: &[String],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO conversations (id, client_id, title, created_by, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&conversation.id)
        .bind(tenant_id)
        .bind(conversation.title.as_deref())
        .bind(&conversation.created_by)
        .bind(conversation.created_at)
        .execute(&mut *tx)
        .await?;
        for member in members {
            sqlx::query("INSERT INTO conversation_members (conversation_id, client_id, user_id, joined_at) VALUES ($1, $2, $3, $4)")
                .bind(&conversation.id)
                .bind(tenant_id)
                .bind(member)
                .bind(conversation.created_at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user's conversations, newest first; `before` is the last id of the
    /// previous page, or empty for the first page.
    pub async fn conversations_of(
        &self,
        tenant_id: &str,
        user_id: &str,
        before: &str,
        limit: i64,
    ) -> Result<Vec<ConversationRecord>> {
        Ok(sqlx::query_as(
            "SELECT c.id, c.title, c.created_by, c.created_at FROM conversations c \
             JOIN conversation_members m ON m.conversation_id = c.id \
             WHERE m.client_id = $1 AND m.user_id = $2 AND c.client_id = $1 AND ($3 = '' OR c.id < $3) \
             ORDER BY c.id DESC LIMIT $4",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// `(conversation_id, user_id)` of every member of these conversations,
    /// in the order they joined. None asked, none read: `IN ()` is not SQL.
    pub async fn members_of(&self, tenant_id: &str, conversation_ids: &[&str]) -> Result<Vec<(String, String)>> {
        if conversation_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (2..conversation_ids.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT conversation_id, user_id FROM conversation_members WHERE client_id = $1 AND conversation_id IN ({}) ORDER BY joined_at, user_id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as(&sql).bind(tenant_id);
        for id in conversation_ids {
            query = query.bind(*id);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    pub async fn is_member(&self, tenant_id: &str, conversation_id: &str, user_id: &str) -> Result<bool> {
        let found = sqlx::query(
            "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND client_id = $2 AND user_id = $3",
        )
        .bind(conversation_id)
        .bind(tenant_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Stores `message` unless its sender already sent one with the same
    /// `client_msg_id` in this conversation: then that earlier message is
    /// returned instead. The flag says whether this call stored it.
    pub async fn insert_message(&self, tenant_id: &str, message: &Message) -> Result<(Message, bool)> {
        let inserted: Option<Message> = sqlx::query_as(
            "INSERT INTO messages (id, client_id, conversation_id, sender_id, body, client_msg_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (conversation_id, sender_id, client_msg_id) DO NOTHING \
             RETURNING id, conversation_id, sender_id, body, client_msg_id, created_at",
        )
        .bind(&message.id)
        .bind(tenant_id)
        .bind(&message.conversation_id)
        .bind(&message.sender_id)
        .bind(&message.body)
        .bind(&message.client_msg_id)
        .bind(message.created_at)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(message) = inserted {
            return Ok((message, true));
        }
        let existing: Message = sqlx::query_as(
            "SELECT id, conversation_id, sender_id, body, client_msg_id, created_at FROM messages \
             WHERE conversation_id = $1 AND sender_id = $2 AND client_msg_id = $3",
        )
        .bind(&message.conversation_id)
        .bind(&message.sender_id)
        .bind(&message.client_msg_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((existing, false))
    }

    /// A page of a conversation's messages, newest first; `before` is the
    /// oldest id already seen, or empty for the first page.
    pub async fn messages(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        before: &str,
        limit: i64,
    ) -> Result<Vec<Message>> {
        Ok(sqlx::query_as(
            "SELECT id, conversation_id, sender_id, body, client_msg_id, created_at FROM messages \
             WHERE conversation_id = $1 AND client_id = $2 AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(conversation_id)
        .bind(tenant_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
