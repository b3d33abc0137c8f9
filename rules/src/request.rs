//! How a credential is read from a request: the rules every edge that reads
//! requests shares (ext-authz, the socket service, an in-proxy filter), over
//! header values it looks up its own way. Header names are lower-case, as
//! HTTP/2 and Envoy present them.

use crate::api_key::KEY_PREFIX;
use crate::denial::Denial;
use crate::jwt::{MAX_TOKEN_LEN, TokenError};

/// `Authorization: Bearer <token>` (or `Service <secret>` on internal routes).
pub const AUTHORIZATION: &str = "authorization";
/// Where an API key travels.
pub const API_KEY: &str = "x-api-key";
/// Subprotocol prefix a WebSocket client uses to carry its token
/// (`caas.bearer.<jwt>`): browsers cannot set headers on an upgrade.
pub const BEARER_SUBPROTOCOL: &str = "caas.bearer.";
/// The query parameter a WebSocket client may carry its token in instead.
pub const TOKEN_PARAM: &str = "token";

/// The path without its query or fragment, for logs and route matching (a
/// query can hold a credential).
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

/// The query string of a request path (empty when it has none).
pub fn query_of(path: &str) -> &str {
    path.split_once('?').map_or("", |(_, query)| query)
}

/// `path` as Envoy rewrites it when an ext_authz answer asks it to remove
/// the query parameters `names` (its `QueryParamsMulti`): the query is read
/// as `&`-separated parameters, not decoded, a final empty one dropped, a
/// parameter without `=` taking an empty value; they are grouped by name,
/// names in byte order and each name's values in their order; the named
/// ones are dropped and the rest written back as `?name=value&…` (no `?`
/// when none is left). So the filter, which removes a socket's `token`
/// itself, hands on the very path ext_authz's answer would have.
pub fn without_query_params(path: &str, names: &[&str]) -> String {
    let Some((before, query)) = path.split_once('?') else { return path.to_string() };
    let mut parameters: Vec<&str> = query.split('&').collect();
    if query.is_empty() || query.ends_with('&') {
        parameters.pop();
    }
    let mut by_name: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for parameter in parameters {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        by_name.entry(name).or_default().push(value);
    }
    let mut out = before.to_string();
    let mut separator = '?';
    for (name, values) in by_name.iter().filter(|(name, _)| !names.contains(name)) {
        for value in values {
            out.push(separator);
            out.push_str(name);
            out.push('=');
            out.push_str(value);
            separator = '&';
        }
    }
    out
}

/// The `Authorization` value's bearer token. Two headers arrive joined by a
/// comma, which no token contains: refused as malformed.
pub fn bearer(authorization: Option<&str>) -> Result<&str, Denial> {
    let value = authorization.ok_or(Denial::MissingCredentials)?;
    let (scheme, token) = value.split_once(' ').ok_or(Denial::Token(TokenError::Malformed))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denial::Token(TokenError::Malformed));
    }
    well_formed_token(token)
}

/// Length only: the JWT parser's strict base64url decoding refuses every
/// other byte (a comma from joined duplicate headers, spaces, padding).
pub fn well_formed_token(token: &str) -> Result<&str, Denial> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Denial::Token(TokenError::Malformed));
    }
    Ok(token)
}

/// Whether an `Upgrade` value asks for a WebSocket.
pub fn is_websocket_upgrade(upgrade: Option<&str>) -> bool {
    upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
}

/// The tokens of `caas.bearer.<jwt>` entries in a `Sec-WebSocket-Protocol` value.
pub fn subprotocol_tokens(protocols: &str) -> impl Iterator<Item = &str> {
    protocols.split(',').filter_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL))
}

/// The values of `token=` parameters in a query string.
pub fn query_tokens(query: &str) -> impl Iterator<Item = &str> {
    query.split('&').filter_map(|pair| pair.strip_prefix(TOKEN_PARAM)?.strip_prefix('='))
}

crate::names! {
    /// Where an end user's token was found.
    pub enum TokenSource {
        Authorization = "authorization",
        Subprotocol = "subprotocol",
        /// The `token` query parameter: strip it before forwarding.
        Query = "query",
    }
}

/// An end user's token: the Authorization header, else (WebSocket upgrades
/// only) the `caas.bearer.<jwt>` subprotocol or the `token` query parameter.
/// More than one token in the same place is refused as malformed.
pub fn end_user_token<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    path: &'a str,
) -> Result<(&'a str, TokenSource), Denial> {
    if let Some(authorization) = header(AUTHORIZATION) {
        return bearer(Some(authorization)).map(|t| (t, TokenSource::Authorization));
    }
    if !is_websocket_upgrade(header("upgrade")) {
        return Err(Denial::MissingCredentials);
    }
    if let Some(protocols) = header("sec-websocket-protocol") {
        let mut tokens = subprotocol_tokens(protocols);
        if let Some(token) = tokens.next() {
            if tokens.next().is_some() {
                return Err(Denial::Token(TokenError::Malformed));
            }
            return well_formed_token(token).map(|t| (t, TokenSource::Subprotocol));
        }
    }
    let mut tokens = query_tokens(query_of(path));
    match (tokens.next(), tokens.next()) {
        (Some(token), None) => well_formed_token(token).map(|t| (t, TokenSource::Query)),
        (Some(_), Some(_)) => Err(Denial::Token(TokenError::Malformed)),
        (None, _) => Err(Denial::MissingCredentials),
    }
}

/// An API key (or any `caas_` credential) in the query string, where logs
/// and referrers keep it.
pub fn credential_in_query(path: &str) -> bool {
    let Some((_, query)) = path.split_once('?') else { return false };
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = name.to_ascii_lowercase();
        matches!(name.as_str(), "api_key" | "apikey" | "api-key" | "x-api-key" | "key" | "refresh_token")
            || value.starts_with(KEY_PREFIX)
            || value.starts_with("caas%5F")
            || value.starts_with("caas%5f")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn query_parameters_are_removed_as_envoy_removes_them() {
        let strip = |path| without_query_params(path, &[TOKEN_PARAM]);
        assert_eq!(strip("/v1/ws?token=t"), "/v1/ws");
        assert_eq!(strip("/v1/ws"), "/v1/ws");
        assert_eq!(strip("/v1/ws?"), "/v1/ws");
        // The rest is sorted by name, each name's values kept in order.
        assert_eq!(strip("/v1/ws?z=1&token=t&a=2&z=0"), "/v1/ws?a=2&z=1&z=0");
        // Not decoded; a bare name gets `=`; empty parameters are names too,
        // but not a final one.
        assert_eq!(strip("/v1/ws?b%20c&&token=t&"), "/v1/ws?=&b%20c=");
        // Every `token`, bare or not; `tokens` is another name.
        assert_eq!(strip("/v1/ws?token&token=t&tokens=x"), "/v1/ws?tokens=x");
        assert_eq!(strip("/v1/ws?&"), "/v1/ws?=");
        assert_eq!(strip("/v1/ws?a==b"), "/v1/ws?a==b");
    }

    #[test]
    fn end_user_tokens_come_from_one_place_only() {
        let ws = ("upgrade", "websocket");
        assert_eq!(
            end_user_token(headers(&[("authorization", "Bearer a")]), "/x?token=q"),
            Ok(("a", TokenSource::Authorization))
        );
        assert_eq!(end_user_token(headers(&[]), "/x?token=q"), Err(Denial::MissingCredentials));
        assert_eq!(end_user_token(headers(&[ws]), "/x?a=1&token=q"), Ok(("q", TokenSource::Query)));
        assert_eq!(end_user_token(headers(&[ws]), "/x?tokens=q"), Err(Denial::MissingCredentials));
        assert_eq!(
            end_user_token(headers(&[ws, ("sec-websocket-protocol", "caas.v1, caas.bearer.p")]), "/x?token=q"),
            Ok(("p", TokenSource::Subprotocol))
        );
        let malformed = Err(Denial::Token(TokenError::Malformed));
        assert_eq!(end_user_token(headers(&[ws]), "/x?token=a&token=b"), malformed);
        assert_eq!(
            end_user_token(headers(&[ws, ("sec-websocket-protocol", "caas.bearer.a,caas.bearer.b")]), "/x"),
            malformed
        );
        assert_eq!(end_user_token(headers(&[ws]), "/x?token="), malformed);
        assert_eq!(end_user_token(headers(&[("authorization", "Basic a")]), "/x"), malformed);
        assert_eq!(
            end_user_token(headers(&[("authorization", "bearer a,b")]), "/x"),
            Ok(("a,b", TokenSource::Authorization))
        );
    }

    #[test]
    fn credentials_in_the_query_are_spotted() {
        for path in
            ["/x?api_key=1", "/x?a=1&KEY=2", "/x?q=caas_abc", "/x?q=caas%5Fabc", "/x?q=caas%5fabc", "/x?refresh_token"]
        {
            assert!(credential_in_query(path), "{path}");
        }
        for path in ["/x", "/x?token=abc", "/x?q=caas", "/x?q=caas%5", "/x?q=caas%E2%82%AC", "/x?q=xcaas_"] {
            assert!(!credential_in_query(path), "{path}");
        }
        assert_eq!(path_only("/a/b?c=d#e"), "/a/b");
        assert_eq!(query_of("/a?b=c?d"), "b=c?d");
    }
}
