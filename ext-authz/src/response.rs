//! The one place a decision becomes a CheckResponse.
//!
//! A denial is a normal answer: an OK gRPC reply carrying a denied HTTP
//! response. Only a failure to answer at all is a gRPC error, and then
//! Envoy's `failure_mode_allow: false` and `status_on_error: 503` decide:
//! fail closed.

use caas_core::context::{CONTEXT_HEADERS, ContextSigner, REQUEST_ID};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;

use crate::check::{Decision, Incoming, Reason, UpstreamTrace};

const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAVAILABLE: i32 = 14;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// Headers a browser may send on a CORS request to us.
const CORS_ALLOW_HEADERS: &str = "authorization, content-type, x-request-id";
const CORS_ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";

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
    match decision {
        Decision::Allow { context, strip_credentials, cors_origin, strip_query } => {
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
            match context {
                Some(context) => {
                    for (name, value) in signer.headers(context, req.method, now) {
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
                // Shadow mode let a denied request through: no context at all.
                None => remove.extend(CONTEXT_HEADERS.iter().filter(|h| present(h)).map(|h| h.to_string())),
            }
            // Any other x-caas-* a client sent never reaches a service.
            for name in req.headers.keys() {
                if name.starts_with("x-caas-") && !remove.contains(name) && !CONTEXT_HEADERS.contains(&name.as_str()) {
                    remove.push(name.clone());
                }
            }
            if *strip_credentials {
                remove.extend(["authorization", "x-api-key"].into_iter().filter(|h| present(h)).map(String::from));
            }
            let mut response_headers = Vec::new();
            if let Some(origin) = cors_origin {
                response_headers.push(header("access-control-allow-origin", origin.clone()));
                response_headers.push(header("vary", "Origin"));
            }
            let ok = OkHttpResponse {
                headers,
                headers_to_remove: remove,
                response_headers_to_add: response_headers,
                query_parameters_to_remove: strip_query.clone(),
                ..Default::default()
            };
            CheckResponse {
                status: Some(Status { code: GRPC_OK, ..Default::default() }),
                http_response: Some(HttpResponse::OkResponse(ok)),
                ..Default::default()
            }
        }
        Decision::Preflight { origin } => {
            let allow_headers =
                req.header("access-control-request-headers").map_or(CORS_ALLOW_HEADERS.to_string(), |asked| {
                    // Echo only what we accept; never widen to whatever was asked.
                    asked
                        .split(',')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| CORS_ALLOW_HEADERS.split(", ").any(|allowed| allowed == h))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
            let denied = DeniedHttpResponse {
                status: Some(HttpStatus { code: 204 }),
                headers: vec![
                    header("access-control-allow-origin", origin.clone()),
                    header("access-control-allow-methods", CORS_ALLOW_METHODS),
                    header("access-control-allow-headers", allow_headers),
                    header("access-control-max-age", "600"),
                    header("vary", "Origin"),
                ],
                body: String::new(),
            };
            CheckResponse {
                // Not OK, so Envoy answers with the response above and never
                // forwards the preflight: it opens no route.
                status: Some(Status { code: GRPC_PERMISSION_DENIED, ..Default::default() }),
                http_response: Some(HttpResponse::DeniedResponse(denied)),
                ..Default::default()
            }
        }
        Decision::Deny { reason, origin, .. } => denied(*reason, origin.as_deref(), &req.request_id),
    }
}

fn denied(reason: Reason, origin: Option<&str>, request_id: &str) -> CheckResponse {
    let status = reason.status();
    let body = serde_json::json!({ "error": { "code": reason.code(), "message": reason.message(), "request_id": request_id } });
    let mut headers = vec![header("content-type", "application/json"), header("x-request-id", request_id)];
    if status == 401 {
        headers.push(header("www-authenticate", format!(r#"Bearer realm="caas", error="{}""#, reason.code())));
        // Let a browser app read a 401 (to refresh its token); the body
        // holds nothing the caller does not already know.
        if let Some(origin) = origin {
            headers.push(header("access-control-allow-origin", origin));
            headers.push(header("vary", "Origin"));
        }
    }
    let grpc = match status {
        401 => GRPC_UNAUTHENTICATED,
        503 => GRPC_UNAVAILABLE,
        _ => GRPC_PERMISSION_DENIED,
    };
    CheckResponse {
        status: Some(Status { code: grpc, message: reason.code().to_string(), ..Default::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: status as i32 }),
            headers,
            body: body.to_string(),
        })),
        ..Default::default()
    }
}
