//! A stored chat message. Its own module because both `chat` (which stores
//! it) and `events` (which carries it to socket nodes over the bus) need it,
//! and `chat` itself posts on the bus: kept in `chat` it made
//! bus → events → chat → bus a circle.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    pub body: String,
    pub client_msg_id: String,
    pub created_at: i64,
}
