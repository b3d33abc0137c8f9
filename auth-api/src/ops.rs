//! Health and metrics of auth-api.

use axum::extract::State;
use axum::response::Response;

use crate::AppState;

pub async fn health(State(state): State<AppState>) -> Response {
    caas_http::health(state.backends()).await
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics().refresh();
    caas_http::metrics(state.registry())
}
