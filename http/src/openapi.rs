//! The answers every route of a CAAS HTTP service can give besides its own,
//! declared in its OpenAPI document in one place so that no route forgets
//! them: a JSON body that is missing, unreadable, too large or not JSON, and
//! a dependency being down.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

fn error(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

fn declare(operation: &mut Operation, status: &str, description: &str) {
    operation.responses.responses.entry(status.to_string()).or_insert_with(|| error(description));
}

/// Adds to every operation of `openapi` the statuses the shared edge
/// (`ApiJson`, `OptionalJson`, the body limit, the store) can answer; a
/// route's own declaration of the same status is kept.
pub fn declare_shared_answers(openapi: &mut OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            if operation.request_body.is_some() {
                declare(operation, "400", "`invalid_json`, or `invalid_body` naming the field that has the wrong type");
                declare(operation, "413", "`payload_too_large`: the body is over the service's limit");
                declare(
                    operation,
                    "415",
                    "`unsupported_media_type`: a body sent without content-type application/json",
                );
            }
            declare(operation, "503", "`service_unavailable`: the database is down; retry shortly");
        }
    }
}
