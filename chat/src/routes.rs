//! `/v1/conversations` and `/v1/messages`, for the end user in the context.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use caas_core::chat::ChatError;
use caas_core::id::unix_now;
use caas_http::{ApiError, ApiJson, EndUser};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;

/// The one place chat errors become HTTP.
fn chat_error(error: ChatError) -> ApiError {
    match error {
        ChatError::NotFound => ApiError::not_found("conversation_not_found", "no such conversation"),
        ChatError::Invalid { field, message } => ApiError::invalid("invalid_field", field, message),
        ChatError::TooLarge => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "message body is larger than 16 KiB")
        }
        ChatError::Store(error) => error.into(),
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "query string is not valid"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConversation {
    member_ids: Vec<String>,
    title: Option<String>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationPage {
    cursor: Option<String>,
    limit: Option<i64>,
}

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
    Ok(Json(json!({ "conversations": conversations, "next_cursor": next_cursor })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    conversation_id: String,
    body: String,
    client_msg_id: String,
}

/// 201 with the stored message; a retry (same `client_msg_id`) gets 200 and
/// the message stored the first time.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagePage {
    conversation_id: String,
    before: Option<String>,
    limit: Option<i64>,
}

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
    Ok(Json(json!({ "messages": messages, "next_before": next_before })))
}
