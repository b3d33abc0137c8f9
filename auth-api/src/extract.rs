//! auth-api's own caller: services calling the internal endpoints.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use caas_http::ApiError;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::AppState;

/// A caller of the internal endpoints: `authorization: Service <SERVICE_SECRET>`.
pub struct ServiceCaller;

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Service "))
            .unwrap_or_default();
        // Digests first so the comparison is constant-time in length too.
        let presented = Sha256::digest(presented.as_bytes());
        let mut valid = subtle::Choice::from(0);
        for secret in state.service_secrets() {
            valid |= Sha256::digest(secret.expose().as_bytes()).ct_eq(&presented);
        }
        if bool::from(valid) {
            Ok(ServiceCaller)
        } else {
            Err(ApiError::unauthorized("invalid_service_token", "a valid service token is required")
                .with_service_challenge())
        }
    }
}
