//! A CheckRequest, read once into what the decision needs.

use std::collections::HashMap;

use caas_core::id::new_id;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HashMap<String, String>,
    pub peer: Option<&'a str>,
    pub policy: Option<&'a str>,
    pub request_id: String,
}

impl<'a> Incoming<'a> {
    pub fn read(request: &'a CheckRequest, empty: &'a HashMap<String, String>) -> Self {
        let attributes = request.attributes.as_ref();
        let http = attributes.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let headers = http.map_or(empty, |h| &h.headers);
        let peer = attributes.and_then(|a| a.source.as_ref()).and_then(|s| s.address.as_ref()).and_then(|a| {
            match a.address.as_ref()? {
                Address::SocketAddress(socket) => Some(socket.address.as_str()),
                _ => None,
            }
        });
        let request_id = headers
            .get("x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .cloned()
            .or_else(|| http.map(|h| h.id.clone()).filter(|id| !id.is_empty()))
            .unwrap_or_else(|| new_id("req"));
        Self {
            method: http.map_or("", |h| h.method.as_str()),
            path: http.map_or("", |h| h.path.as_str()),
            headers,
            peer,
            policy: attributes.and_then(|a| a.context_extensions.get("policy")).map(String::as_str),
            request_id,
        }
    }

    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Header lookup for caas-rules' request readers (rules/src/request.rs).
    pub fn headers_fn(&self) -> impl Fn(&str) -> Option<&'a str> + use<'a> {
        let headers = self.headers;
        move |name| headers.get(name).map(String::as_str)
    }

    pub fn origin(&self) -> Option<&'a str> {
        self.header("origin")
    }
}
