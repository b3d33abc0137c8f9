//! The one place where auth-api turns failures into HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caas_core::context::ContextError;
use caas_core::ratelimit::RetryAfter;
use caas_core::store::StoreError;
use caas_core::validate::{Denial, DenialClass};
use caas_core::whitelist::InvalidEntry;
use serde_json::json;

/// An error response: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: std::borrow::Cow<'static, str>,
    pub message: String,
    pub field: Option<String>,
    retry_after: Option<u64>,
    challenge: &'static str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: std::borrow::Cow::Borrowed(code),
            message: message.into(),
            field: None,
            retry_after: None,
            challenge: r#"Bearer realm="caas""#,
        }
    }

    /// A code decided elsewhere (e.g. relayed from auth-api).
    pub fn relayed(status: StatusCode, code: String, message: impl Into<String>) -> Self {
        Self { code: std::borrow::Cow::Owned(code), ..Self::new(status, "", message) }
    }

    /// 400 naming the field that is wrong.
    pub fn invalid(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(StatusCode::BAD_REQUEST, code, message) }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "a dependency is unavailable; retry shortly")
    }

    /// 503 `overloaded`: a bounded resource is full; retry after `seconds`.
    pub fn overloaded(seconds: u64, message: impl Into<String>) -> Self {
        Self { retry_after: Some(seconds), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message) }
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error")
    }

    /// The `www-authenticate` challenge for internal (service-token) routes.
    pub fn with_service_challenge(mut self) -> Self {
        self.challenge = r#"Service realm="caas-internal""#;
        self
    }
}

/// The error code of a response, kept in its extensions for the request's
/// log line (`observe`), so every refusal is logged with its reason.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub std::borrow::Cow<'static, str>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(field) = &self.field {
            body["error"]["field"] = json!(field);
        }
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(self.challenge));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::EmailTaken => {
                ApiError::new(StatusCode::CONFLICT, "email_taken", "an account with this email already exists")
            }
            StoreError::Unavailable(source) => {
                tracing::error!(error = %source, "database error");
                ApiError::unavailable()
            }
            StoreError::Setup(message) => {
                tracing::error!(%message, "database setup error");
                ApiError::internal()
            }
        }
    }
}

impl From<Denial> for ApiError {
    fn from(denial: Denial) -> Self {
        let status = match denial.class() {
            DenialClass::Unauthenticated => StatusCode::UNAUTHORIZED,
            DenialClass::Forbidden => StatusCode::FORBIDDEN,
            DenialClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, denial.code(), denial.to_string())
    }
}

impl From<caas_core::validate::Rejection> for ApiError {
    fn from(rejection: caas_core::validate::Rejection) -> Self {
        rejection.denial.into()
    }
}

impl From<ContextError> for ApiError {
    fn from(error: ContextError) -> Self {
        if error == ContextError::BadSignature {
            tracing::warn!("request with a forged or foreign gateway context signature");
        }
        ApiError::unauthorized(error.code(), error.to_string())
    }
}

impl From<RetryAfter> for ApiError {
    fn from(limit: RetryAfter) -> Self {
        ApiError {
            retry_after: Some(limit.0),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many attempts; retry after {} s", limit.0),
            )
        }
    }
}

impl From<InvalidEntry> for ApiError {
    fn from(entry: InvalidEntry) -> Self {
        ApiError::invalid(entry.code(), entry.field.clone(), entry.to_string())
    }
}

/// The error body every service sends (for OpenAPI documents).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// snake_case reason, e.g. `invalid_cidr`, `session_revoked`.
    pub code: String,
    pub message: String,
    /// The offending input, on 400s.
    pub field: Option<String>,
}
