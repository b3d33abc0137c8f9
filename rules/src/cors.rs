//! CORS preflights: what one is and what it is answered with, by ext-authz
//! (ext-authz/src/response.rs) or by the in-proxy filter (edge-wasm/), the
//! same headers from the same code. A preflight opens nothing: the request
//! that follows is checked in full, its Origin against the tenant's whitelist.

/// The request headers a browser may send (echoed only where asked).
pub const ALLOW_HEADERS: &str = "authorization, content-type, x-request-id";
pub const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
/// How long a browser may keep the answer (seconds).
pub const MAX_AGE: &str = "600";

/// An `OPTIONS` with an `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(method: &str, origin: Option<&str>, request_method: Option<&str>) -> bool {
    method == "OPTIONS" && origin.is_some() && request_method.is_some()
}

/// The answer's headers (status 204) to a preflight from `origin` that asked
/// for `requested` headers: of those, only the ones accepted are echoed,
/// never whatever was asked; all of them when it asked for none.
pub fn preflight_headers(origin: &str, requested: Option<&str>) -> [(&'static str, String); 5] {
    let allow_headers = requested.map_or(ALLOW_HEADERS.to_string(), |asked| {
        asked
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| ALLOW_HEADERS.split(", ").any(|allowed| allowed == h))
            .collect::<Vec<_>>()
            .join(", ")
    });
    [
        ("access-control-allow-origin", origin.to_string()),
        ("access-control-allow-methods", ALLOW_METHODS.to_string()),
        ("access-control-allow-headers", allow_headers),
        ("access-control-max-age", MAX_AGE.to_string()),
        ("vary", "Origin".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preflight_echoes_only_accepted_headers() {
        assert!(is_preflight("OPTIONS", Some("https://a.example"), Some("POST")));
        assert!(!is_preflight("OPTIONS", None, Some("POST")));
        assert!(!is_preflight("OPTIONS", Some("https://a.example"), None));
        assert!(!is_preflight("POST", Some("https://a.example"), Some("POST")));
        let headers = preflight_headers("https://a.example", Some("Authorization, X-Evil,content-type"));
        assert_eq!(headers[0], ("access-control-allow-origin", "https://a.example".to_string()));
        assert_eq!(headers[2], ("access-control-allow-headers", "authorization, content-type".to_string()));
        assert_eq!(preflight_headers("https://a.example", None)[2].1, ALLOW_HEADERS);
    }
}
