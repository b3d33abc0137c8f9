//! `/v1/conversations` and `/v1/messages`, for the end user in the context.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use caas_core::chat::ChatError;
use caas_core::chat::Conversation;
use caas_core::id::unix_now;
use caas_core::message::Message;
use caas_http::{ApiError, ApiJson, EndUser, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct ConversationList {
    /// Newest first.
    conversations: Vec<Conversation>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageList {
    /// Newest first.
    messages: Vec<Message>,
    /// Pass as `before` for older messages; null on the last page.
    next_before: Option<String>,
}

/// The one place chat errors become HTTP.
fn chat_error(error: ChatError) -> ApiError {
    let code = error.code();
    match error {
        ChatError::NotFound => ApiError::not_found(code, "no such conversation"),
        ChatError::Invalid { field, message } => ApiError::invalid(code, field, message),
        ChatError::TooLarge => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, "message body is larger than 16 KiB"),
        ChatError::Store(error) => error.into(),
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "query string is not valid"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    /// The other members (the caller is always one): at most 100 user ids.
    #[schema(schema_with = user_ids)]
    member_ids: Vec<String>,
    /// At most 200 printable characters.
    #[schema(max_length = 200, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    title: Option<String>,
}

/// `member_ids`: what `Chat::create_conversation` accepts.
fn user_ids() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let id = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(caas_core::chat::MAX_USER_ID_BYTES))
        .pattern(Some(r"^[^\s\x00-\x1f\x7f-\x9f]+$"))
        .description(Some("An end user's id: 1 to 128 bytes, no spaces or control characters"));
    ArrayBuilder::new().items(id).max_items(Some(caas_core::chat::MAX_MEMBERS)).build()
}

/// A conversation of the caller and `member_ids`.
#[utoipa::path(post, path = "/v1/conversations", tag = "chat", request_body = NewConversation,
    responses((status = 201, body = Conversation), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No valid end-user context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody)))]
pub async fn create_conversation(
    State(state): State<AppState>,
    EndUser(caller): EndUser,
    ApiJson(body): ApiJson<NewConversation>,
) -> Result<impl IntoResponse, ApiError> {
    let conversation = state
        .chat()
        .create_conversation(&caller.tenant_id, &caller.user_id, &body.member_ids, body.title.as_deref(), unix_now())
        .await
        .map_err(chat_error)?;
    state.metrics().conversations_created.inc();
    Ok((StatusCode::CREATED, Json(conversation)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConversationPage {
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// The caller's conversations, newest first.
#[utoipa::path(get, path = "/v1/conversations", tag = "chat", params(ConversationPage),
    responses((status = 200, body = ConversationList), (status = 400, description = "Invalid query", body = ErrorBody), (status = 401, description = "No valid end-user context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody)))]
pub async fn list_conversations(
    State(state): State<AppState>,
    EndUser(caller): EndUser,
    page: Result<Query<ConversationPage>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let page = query(page)?;
    let conversations = state
        .chat()
        .conversations(&caller.tenant_id, &caller.user_id, page.cursor.as_deref(), page.limit)
        .await
        .map_err(chat_error)?;
    let next_cursor = (conversations.len() as i64 == page.limit.unwrap_or(50))
        .then(|| conversations.last().map(|c| c.id.clone()))
        .flatten();
    Ok(Json(ConversationList { conversations, next_cursor }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    #[schema(min_length = 1)]
    conversation_id: String,
    /// Not blank, at most 16 KiB (413 above).
    #[schema(min_length = 1, pattern = "\\S")]
    body: String,
    /// The sender's idempotency key: 1 to 64 bytes.
    #[schema(min_length = 1, max_length = 64)]
    client_msg_id: String,
}

/// 201 with the stored message; a retry (same `client_msg_id`) gets 200 and
/// the message stored the first time.
/// Posts a message; a retry with the same `client_msg_id` stores nothing twice.
#[utoipa::path(post, path = "/v1/messages", tag = "chat", request_body = NewMessage,
    responses((status = 201, description = "Stored and delivered", body = Message), (status = 200, description = "A retry: the message stored the first time", body = Message),
        (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "No valid end-user context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody),
        (status = 404, description = "Not a conversation of the caller's", body = ErrorBody), (status = 413, description = "Body over 16 KiB", body = ErrorBody)))]
pub async fn post_message(
    State(state): State<AppState>,
    EndUser(caller): EndUser,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<impl IntoResponse, ApiError> {
    let (message, created) = state
        .chat()
        .post(&caller.tenant_id, &caller.user_id, &body.conversation_id, &body.body, &body.client_msg_id, unix_now())
        .await
        .map_err(chat_error)?;
    if created {
        state.metrics().messages_posted.inc();
    }
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(message)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MessagePage {
    #[param(min_length = 1)]
    conversation_id: String,
    /// `next_before` of the previous page.
    before: Option<String>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A page of a conversation's messages, newest first; members only.
#[utoipa::path(get, path = "/v1/messages", tag = "chat", params(MessagePage),
    responses((status = 200, body = MessageList), (status = 400, description = "Invalid query", body = ErrorBody), (status = 401, description = "No valid end-user context", body = ErrorBody), (status = 403, description = "Another credential type", body = ErrorBody),
        (status = 404, description = "Not a conversation of the caller's", body = ErrorBody)))]
pub async fn list_messages(
    State(state): State<AppState>,
    EndUser(caller): EndUser,
    page: Result<Query<MessagePage>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let page = query(page)?;
    let messages = state
        .chat()
        .messages(&caller.tenant_id, &caller.user_id, &page.conversation_id, page.before.as_deref(), page.limit)
        .await
        .map_err(chat_error)?;
    let next_before =
        (messages.len() as i64 == page.limit.unwrap_or(50)).then(|| messages.last().map(|m| m.id.clone())).flatten();
    Ok(Json(MessageList { messages, next_before }))
}
