//! The one place a decision becomes a CheckResponse.
//!
//! A denial is a normal answer: an OK gRPC reply carrying a denied HTTP
//! response. Only a failure to answer at all is a gRPC error, and then
//! Envoy's `failure_mode_allow: false` and `status_on_error: 503` decide:
//! fail closed.

use caas_core::context::{CONTEXT_HEADERS, ContextSigner, REQUEST_ID};
use caas_rules::request::{API_KEY, AUTHORIZATION};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;

use crate::decision::{Decision, Grant, Reason};
use crate::incoming::Incoming;
use crate::trace::UpstreamTrace;

fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.into(), ..Default::default() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// `trace`, when spans are exported: the Check's `traceparent`, passed on so
/// the service's span is its child.
pub fn build(
    decision: &Decision,
    req: &Incoming<'_>,
    signer: &ContextSigner,
    now: i64,
    trace: Option<UpstreamTrace>,
) -> CheckResponse {
    let answer = decision.answer();
    let (http_response, message) = match decision {
        Decision::Allow { grant, strip_credentials } => {
            (allowed(Some(grant), *strip_credentials, req, signer, now, trace), String::new())
        }
        // Shadow mode let a denied request through: no context at all.
        Decision::ShadowDeny { .. } => (allowed(None, false, req, signer, now, trace), String::new()),
        Decision::Preflight { origin } => (preflight(origin, req), String::new()),
        Decision::Deny { reason, origin, .. } => {
            (denied(*reason, answer.status, origin.as_deref(), &req.request_id), reason.code().to_string())
        }
    };
    CheckResponse {
        status: Some(Status { code: answer.grpc, message, ..Default::default() }),
        http_response: Some(http_response),
        ..Default::default()
    }
}

fn allowed(
    grant: Option<&Grant>,
    strip_credentials: bool,
    req: &Incoming<'_>,
    signer: &ContextSigner,
    now: i64,
    trace: Option<UpstreamTrace>,
) -> HttpResponse {
    // Every header set or removed costs Envoy work on every request
    // (measured: ~2 µs each; BENCHMARKS.md), so ask only for what
    // changes the request.
    let present = |name: &str| req.headers.contains_key(name);
    let mut headers = Vec::with_capacity(8);
    let mut remove: Vec<String> = Vec::new();
    if let Some(trace) = trace {
        headers.push(header("traceparent", trace.traceparent));
        if trace.drop_tracestate && present("tracestate") {
            remove.push("tracestate".to_string());
        }
    }
    match grant {
        Some(grant) => {
            for (name, value) in signer.headers(&grant.context, req.method, now) {
                if value.is_empty() {
                    // Envoy drops an empty value instead of overwriting,
                    // so a client's own copy is removed instead.
                    if present(name) {
                        remove.push(name.to_string());
                    }
                } else if name == REQUEST_ID && req.header(REQUEST_ID) == Some(value.as_str()) {
                    // Envoy's own id, already on the request (and signed).
                } else {
                    headers.push(header(name, value));
                }
            }
        }
        None => remove.extend(CONTEXT_HEADERS.iter().filter(|h| present(h)).map(|h| h.to_string())),
    }
    // Any other x-caas-* a client sent never reaches a service.
    for name in req.headers.keys() {
        if name.starts_with("x-caas-") && !remove.contains(name) && !CONTEXT_HEADERS.contains(&name.as_str()) {
            remove.push(name.clone());
        }
    }
    if strip_credentials {
        remove.extend([AUTHORIZATION, API_KEY].into_iter().filter(|h| present(h)).map(String::from));
    }
    let mut response_headers = Vec::new();
    if let Some(origin) = grant.and_then(|g| g.cors_origin.as_ref()) {
        response_headers.push(header("access-control-allow-origin", origin.clone()));
        response_headers.push(header("vary", "Origin"));
    }
    HttpResponse::OkResponse(OkHttpResponse {
        headers,
        headers_to_remove: remove,
        response_headers_to_add: response_headers,
        query_parameters_to_remove: grant.map(|g| g.strip_query.clone()).unwrap_or_default(),
        ..Default::default()
    })
}

/// Answered by Envoy itself (the status is not OK): a preflight never
/// reaches a service.
fn preflight(origin: &str, req: &Incoming<'_>) -> HttpResponse {
    let headers = caas_rules::cors::preflight_headers(origin, req.header("access-control-request-headers"));
    HttpResponse::DeniedResponse(DeniedHttpResponse {
        status: Some(HttpStatus { code: 204 }),
        headers: headers.into_iter().map(|(name, value)| header(name, value)).collect(),
        body: String::new(),
    })
}

fn denied(reason: Reason, status: u16, origin: Option<&str>, request_id: &str) -> HttpResponse {
    let (headers, body) = caas_rules::denial::answered(reason, status, origin, request_id);
    HttpResponse::DeniedResponse(DeniedHttpResponse {
        status: Some(HttpStatus { code: i32::from(status) }),
        headers: headers.into_iter().map(|(name, value)| header(name, value)).collect(),
        body,
    })
}
