//! What a route requires, as declared by Envoy per route
//! (`typed_per_filter_config` → `check_settings.context_extensions.policy`).

crate::names! {
    /// The credential a route needs.
    pub enum Policy {
        /// No credential (registration, login); the caller's IP is still vouched for.
        Public = "public",
        /// A dashboard token (aud `caas-dashboard`).
        Dashboard = "dashboard",
        /// An API key in `x-api-key`, from an IP in the tenant's whitelist.
        ApiKey = "api_key",
        /// The credential is a refresh token in the body (checked by auth-api);
        /// an API key (with its IP) or an end user's access token, when one is
        /// also sent, is checked here.
        Refresh = "refresh",
        /// An end user's token (aud `caas-sdk`) and, when present, its Origin.
        EndUser = "end_user",
    }
}

impl Policy {
    pub fn parse(name: &str) -> Option<Self> {
        name.parse().ok()
    }

    /// Routes a browser may call (and so preflight).
    pub fn browser_facing(self) -> bool {
        !matches!(self, Policy::ApiKey)
    }

    /// Routes on which a credential can be refused: every one but a public
    /// route, which takes none.
    pub fn takes_credentials(self) -> bool {
        !matches!(self, Policy::Public)
    }
}

/// How a path is matched, as Envoy matches routes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// Path → policy, for meshes whose routes cannot carry a per-route policy
/// (Istio's `envoyExtAuthzGrpc` provider, Envoy Gateway's `extAuth`). Used
/// only when a request arrives without one; the first matching rule wins;
/// a path no rule matches has no policy and is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTable {
    rules: Vec<(PathMatch, Policy)>,
}

/// The routes of envoy/envoy.yaml, for deployments that cannot declare them
/// per route. Keep the two in step (a test checks they agree).
pub const BUILTIN_TABLE: &str = "\
exact  /v1/client/register  public
exact  /v1/client/login     public
prefix /v1/client/          dashboard
exact  /v1/sdk/session      api_key
prefix /v1/sdk/users/       api_key
exact  /v1/sdk/refresh      refresh
exact  /v1/sdk/logout       refresh
exact  /v1/ws               end_user
prefix /v1/conversations    end_user
prefix /v1/messages         end_user
prefix /console/            public
";

impl PolicyTable {
    /// Lines of `exact|prefix <path> <policy>`; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [kind, path, policy] = fields[..] else {
                return Err(format!("line {}: expected `exact|prefix <path> <policy>`", number + 1));
            };
            if !path.starts_with('/') {
                return Err(format!("line {}: path must start with /", number + 1));
            }
            let policy =
                Policy::parse(policy).ok_or_else(|| format!("line {}: unknown policy '{policy}'", number + 1))?;
            let matcher = match kind {
                "exact" => PathMatch::Exact(path.to_string()),
                "prefix" => PathMatch::Prefix(path.to_string()),
                _ => return Err(format!("line {}: '{kind}' is not exact or prefix", number + 1)),
            };
            rules.push((matcher, policy));
        }
        Ok(Self { rules })
    }

    pub fn builtin() -> Self {
        Self::parse(BUILTIN_TABLE).unwrap_or(Self { rules: Vec::new() })
    }

    /// The policy of a request path (its query ignored). `check` refuses a
    /// path that is not `canonical` before it asks: a mesh may route
    /// `/v1/ws/../client/keys` by another spelling than the one matched here.
    pub fn lookup(&self, path: &str) -> Option<Policy> {
        let path = crate::request::path_only(path);
        self.rules.iter().find_map(|(matcher, policy)| match matcher {
            PathMatch::Exact(p) if p == path => Some(*policy),
            PathMatch::Prefix(p) if path.starts_with(p.as_str()) => Some(*policy),
            _ => None,
        })
    }
}

/// No `.` or `..` segment (escaped dots included), no empty segment (`//`),
/// no backslash, and no escaped slash or backslash that a later hop could
/// decode into a separator. An escaped dot inside a segment is fine.
/// On every Check: no allocation.
pub fn canonical(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') || path.contains("//") {
        return false;
    }
    // Bytes, not `str` slices: a path may hold any UTF-8 after the `%`.
    let escaped =
        |rest: &str, hex: &str| rest.as_bytes().get(1..3).is_some_and(|h| h.eq_ignore_ascii_case(hex.as_bytes()));
    // `%` is rare in our paths: the common case is one scan and no segment work.
    if !path.contains('%') {
        return !path.split('/').any(|segment| segment == "." || segment == "..");
    }
    if path.match_indices('%').any(|(i, _)| escaped(&path[i..], "2f") || escaped(&path[i..], "5c")) {
        return false;
    }
    !path.split('/').any(|segment| {
        // A segment of one or two dots, each `.` or `%2e`.
        let mut rest = segment;
        let mut dots = 0;
        while !rest.is_empty() && dots < 3 {
            if let Some(after) = rest.strip_prefix('.') {
                rest = after;
            } else if rest.starts_with('%') && escaped(rest, "2e") {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        rest.is_empty() && (1..=2).contains(&dots)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_maps_every_public_route() {
        let table = PolicyTable::builtin();
        for (path, policy) in [
            ("/v1/client/register", Some(Policy::Public)),
            ("/v1/client/login", Some(Policy::Public)),
            ("/v1/client/profile", Some(Policy::Dashboard)),
            ("/v1/client/api-keys/key_1", Some(Policy::Dashboard)),
            ("/v1/client/ip-whitelist", Some(Policy::Dashboard)),
            ("/v1/client/rate-limits", Some(Policy::Dashboard)),
            ("/v1/sdk/session", Some(Policy::ApiKey)),
            ("/v1/sdk/users/user-1/revoke", Some(Policy::ApiKey)),
            ("/v1/client/logout-all", Some(Policy::Dashboard)),
            ("/v1/client/password", Some(Policy::Dashboard)),
            ("/v1/client/sessions", Some(Policy::Dashboard)),
            ("/v1/sdk/refresh", Some(Policy::Refresh)),
            ("/v1/sdk/logout", Some(Policy::Refresh)),
            ("/v1/ws?token=x", Some(Policy::EndUser)),
            ("/v1/conversations", Some(Policy::EndUser)),
            ("/v1/messages?conversation_id=c", Some(Policy::EndUser)),
            ("/console/", Some(Policy::Public)),
            ("/console/caas-client.js", Some(Policy::Public)),
            ("/console", None),
            ("/v1/sdk/session/extra", None),
            ("/api/v1/auth/internal/validate", None),
            ("/", None),
            ("/v1/client", None),
        ] {
            assert_eq!(table.lookup(path), policy, "{path}");
        }
    }

    #[test]
    fn paths_with_another_spelling_are_not_canonical() {
        for path in [
            "/v1/conversations/c_1/messages",
            "/v1/a.b/..c/x",
            "/v1/conversations/a%2Eb/%2e%2e%2e/.../%41",
            "/",
            "/x/%2",
            "/x/%€/é",
        ] {
            assert!(canonical(path), "{path}");
        }
        for path in [
            "/v1/ws/../client/keys",
            "/v1/ws/..",
            "/v1/./client/keys",
            "/v1//client/keys",
            "/v1/ws\\..\\client",
            "/v1/ws/%2e%2e/client",
            "/v1/ws/%2E%2e/client",
            "/v1/ws/.%2e/client",
            "/v1/ws/%2e",
            "/v1/ws/..%2Fclient",
            "/v1/ws/..%5cclient",
            "v1/ws",
            "",
        ] {
            assert!(!canonical(path), "{path}");
        }
    }

    #[test]
    fn tables_parse_with_errors_named_by_line() {
        let table = PolicyTable::parse("# comment\nprefix /a public # trailing\nexact /a/b dashboard\n").unwrap();
        assert_eq!(table.lookup("/a/b"), Some(Policy::Public), "first match wins");
        for (bad, needle) in [
            ("exact /a", "line 1"),
            ("suffix /a public", "not exact or prefix"),
            ("exact a public", "start with /"),
            ("\nexact /a root", "line 2: unknown policy"),
        ] {
            let err = PolicyTable::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn builtin_table_agrees_with_envoy_yaml() {
        // Every route of the gateway config that declares a policy appears in
        // the table with that policy (so mesh and gateway deployments agree).
        let yaml = include_str!("../../envoy/envoy.yaml");
        let table = PolicyTable::builtin();
        let mut anchors = std::collections::HashMap::new();
        let mut checked = 0;
        for block in yaml.split("- match:").skip(1) {
            let first = block.lines().next().unwrap_or_default();
            let path = first.split(['{', '}', ',']).find_map(|part| {
                let part = part.trim();
                part.strip_prefix("path: ").or_else(|| part.strip_prefix("prefix: ")).map(str::trim)
            });
            let Some(path) = path else { continue };
            let declared = block
                .lines()
                .find_map(|l| l.split("policy: ").nth(1))
                .map(|p| p.trim_end_matches(['}', ' ']).trim().to_string());
            let anchor =
                block.lines().find_map(|l| l.split("typed_per_filter_config: &").nth(1)).map(|a| a.trim().to_string());
            let alias =
                block.lines().find_map(|l| l.split("typed_per_filter_config: *").nth(1)).map(|a| a.trim().to_string());
            let policy = match (declared, alias) {
                (Some(p), _) => {
                    if let Some(anchor) = anchor {
                        anchors.insert(anchor, p.clone());
                    }
                    Some(p)
                }
                (None, Some(alias)) => anchors.get(&alias).cloned(),
                _ => None,
            };
            if let Some(policy) = policy {
                assert_eq!(table.lookup(path).map(Policy::as_str), Some(policy.as_str()), "{path}");
                checked += 1;
            }
        }
        assert!(checked >= 9, "only {checked} routes checked");
    }
}
