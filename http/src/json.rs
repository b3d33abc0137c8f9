//! JSON request bodies: malformed, mistyped or oversized bodies get our codes.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::ApiError;

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
}

fn unsupported() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "expected content-type: application/json",
    )
}

/// A JSON body.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A JSON body that may be absent (no content-type and no bytes): then
/// `T::default()`. A body that is present must be valid JSON.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
            return ApiJson::from_request(req, state).await.map(|ApiJson(v)| OptionalJson(v));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|_| too_large())?;
        if bytes.is_empty() { Ok(OptionalJson(T::default())) } else { Err(unsupported()) }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => unsupported(),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "request body is not valid JSON")
        }
        JsonRejection::JsonDataError(error) => {
            // serde's text may quote the offending value (a password, say):
            // keep the field path and the kind of problem, drop the value.
            let text = error.body_text();
            let detail = text.split_once("target type: ").map_or(text.as_str(), |(_, rest)| rest);
            // serde prefixes a problem inside the body with its path
            // (`per_key.rate: invalid type…`); one at the top level
            // (`invalid type: null, expected struct …`) has none, and its
            // own `: ` is not a path.
            let (path, problem) = match detail.split_once(": ") {
                Some((path, problem)) if is_field_path(path) => (Some(path), problem),
                _ => (None, detail),
            };
            let message = if problem.starts_with("unknown field") || problem.starts_with("missing field") {
                problem.split(" at line").next().unwrap_or(problem).to_string()
            } else if let Some(path) = path {
                format!("field `{path}` has the wrong type or value")
            } else {
                "request body must be a JSON object with the documented fields".to_string()
            };
            let mut api = ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message);
            api.field = path.map(str::to_string);
            api
        }
        JsonRejection::BytesRejection(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        other => ApiError::new(other.status(), "invalid_body", "request body could not be read"),
    }
}

/// A serde field path: `name`, `per_key.rate`, `cidrs[2]`; not `[0]` (the
/// body itself is an array) nor prose.
fn is_field_path(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
}
