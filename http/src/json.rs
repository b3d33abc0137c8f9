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
            let (path, problem) = detail.split_once(": ").unwrap_or(("", detail));
            let message = if problem.starts_with("unknown field") || problem.starts_with("missing field") {
                problem.split(" at line").next().unwrap_or(problem).to_string()
            } else if path.is_empty() || path == "." {
                "request body does not have the expected shape".to_string()
            } else {
                format!("field `{path}` has the wrong type or value")
            };
            let mut api = ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message);
            if !path.is_empty() && path != "." && !path.contains(' ') {
                api.field = Some(path.to_string());
            }
            api
        }
        JsonRejection::BytesRejection(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        other => ApiError::new(other.status(), "invalid_body", "request body could not be read"),
    }
}
