//! Tenant whitelists: CIDRs for API-key callers, Origins for browsers.
//! Entries are parsed and normalised once, when written, into matchers that
//! are cached; a request only pays for a few comparisons.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

/// Most entries a whitelist may hold.
pub const MAX_ENTRIES: usize = 100;

crate::names! {
    /// Which whitelist an entry is for, named as the request field that
    /// holds its entries.
    pub enum WhitelistField {
        Cidrs = "cidrs",
        Origins = "origins",
    }
}

/// An entry that could not be accepted; `message` names it and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidEntry {
    pub list: WhitelistField,
    /// e.g. `cidrs[2]`: surfaces in the 400 so the caller can find it.
    pub field: String,
    pub message: String,
}

impl InvalidEntry {
    /// The error code of the 400.
    pub fn code(&self) -> &'static str {
        match self.list {
            WhitelistField::Cidrs => "invalid_cidr",
            WhitelistField::Origins => "invalid_origin",
        }
    }

    fn whole(list: WhitelistField, message: String) -> Self {
        Self { list, field: list.as_str().to_string(), message }
    }

    fn entry(list: WhitelistField, index: usize, message: String) -> Self {
        Self { list, field: format!("{}[{index}]", list.as_str()), message }
    }
}

/// Parsed CIDRs. Empty means nothing is allowed: a tenant must opt in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpWhitelist {
    nets: Vec<IpNet>,
}

impl IpWhitelist {
    /// All entries or none: the first invalid one is named.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, InvalidEntry> {
        if entries.len() > MAX_ENTRIES {
            return Err(InvalidEntry::whole(WhitelistField::Cidrs, format!("at most {MAX_ENTRIES} entries")));
        }
        let mut nets = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let net =
                parse_cidr(entry.as_ref()).map_err(|message| InvalidEntry::entry(WhitelistField::Cidrs, i, message))?;
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        Ok(Self { nets })
    }

    /// Canonical text of each entry, as stored.
    pub fn entries(&self) -> Vec<String> {
        self.nets.iter().map(ToString::to_string).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4 address it carries.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_cidr(raw: &str) -> Result<IpNet, String> {
    let text = raw.trim();
    if text.is_empty() || text.len() > 64 {
        return Err(format!("'{}' is not a valid IPv4/IPv6 CIDR", truncate(raw)));
    }
    let net = if text.contains('/') {
        text.parse::<IpNet>().map_err(|_| format!("'{}' is not a valid IPv4/IPv6 CIDR", truncate(raw)))?
    } else {
        let ip: IpAddr =
            text.parse().map_err(|_| format!("'{}' is not a valid IPv4/IPv6 address or CIDR", truncate(raw)))?;
        IpNet::from(canonical_ip(ip))
    };
    if net.trunc() != net {
        return Err(format!("'{text}' has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A parsed origin `scheme://host[:port]`, lowercase, default port dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn render(&self, wildcard: bool) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let star = if wildcard { "*." } else { "" };
        match self.port {
            Some(port) => format!("{scheme}://{star}{}:{port}", self.host),
            None => format!("{scheme}://{star}{}", self.host),
        }
    }
}

/// Parses `scheme://host[:port]`; `allow_wildcard` permits a leading `*.`.
fn parse_origin(raw: &str, allow_wildcard: bool) -> Result<(Origin, bool), String> {
    let lower = raw.to_ascii_lowercase();
    let (https, rest) = if let Some(rest) = lower.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err("must start with http:// or https://".into());
    };
    if rest.contains(['/', '?', '#', '@', ' ']) || rest.is_empty() {
        return Err("must be scheme://host[:port] with no path, query or credentials".into());
    }
    let (host, port) = split_host_port(rest)?;
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(suffix) if allow_wildcard => (true, suffix),
        Some(_) => return Err("wildcards are not allowed here".into()),
        None => (false, host),
    };
    if !valid_host(host) {
        return Err(format!("'{host}' is not a valid host"));
    }
    if wildcard && (host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() || !host.contains('.')) {
        return Err("a wildcard needs a domain with at least two labels after '*.', e.g. https://*.example.com".into());
    }
    let default_port = if https { 443 } else { 80 };
    let port = port.filter(|&p| p != default_port);
    Ok((Origin { https, host: host.to_string(), port }, wildcard))
}

fn split_host_port(rest: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']').ok_or("unterminated IPv6 literal")?;
        let (host, tail) = rest.split_at(end + 1);
        match tail.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if tail.is_empty() => (host, None),
            None => return Err("unexpected text after IPv6 literal".into()),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let port = match port {
        Some(p) => {
            let n: u16 = p.parse().map_err(|_| format!("'{p}' is not a valid port"))?;
            if n == 0 || p.starts_with('0') {
                return Err(format!("'{p}' is not a valid port"));
            }
            Some(n)
        }
        None => None,
    };
    Ok((host, port))
}

fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// Exact origins and anchored `*.` subdomain wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginWhitelist {
    exact: HashSet<Origin>,
    /// Origin whose host is the suffix after `*.`.
    wildcards: Vec<Origin>,
    entries: Vec<String>,
}

impl OriginWhitelist {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, InvalidEntry> {
        if entries.len() > MAX_ENTRIES {
            return Err(InvalidEntry::whole(WhitelistField::Origins, format!("at most {MAX_ENTRIES} entries")));
        }
        let mut list = Self::default();
        for (i, entry) in entries.iter().enumerate() {
            let raw = entry.as_ref().trim();
            let invalid = |message: String| {
                InvalidEntry::entry(WhitelistField::Origins, i, format!("'{}' {message}", truncate(raw)))
            };
            if raw.len() > 300 {
                return Err(invalid("is too long".into()));
            }
            let (origin, wildcard) =
                parse_origin(raw, true).map_err(|m| invalid(format!("is not a valid origin: {m}")))?;
            let text = origin.render(wildcard);
            if list.entries.contains(&text) {
                continue;
            }
            list.entries.push(text);
            if wildcard {
                list.wildcards.push(origin);
            } else {
                list.exact.insert(origin);
            }
        }
        Ok(list)
    }

    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Whether a browser's `Origin` header value is allowed. `null` and
    /// anything unparsable never are.
    pub fn allows(&self, presented: &str) -> bool {
        let Ok((origin, _)) = parse_origin(presented, false) else {
            return false;
        };
        if self.exact.contains(&origin) {
            return true;
        }
        self.wildcards.iter().any(|w| {
            w.https == origin.https
                && w.port == origin.port
                && origin.host.len() > w.host.len() + 1
                && origin.host.ends_with(&w.host)
                && origin.host.as_bytes()[origin.host.len() - w.host.len() - 1] == b'.'
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_v4_v6_and_bare_addresses() {
        let list = IpWhitelist::parse(&["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]).unwrap();
        assert_eq!(list.entries(), vec!["10.0.0.0/8", "2001:db8::/32", "127.0.0.1/32"]);
        assert!(list.contains("10.200.1.2".parse().unwrap()));
        assert!(list.contains("2001:db8::1".parse().unwrap()));
        assert!(list.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(list.contains("127.0.0.1".parse().unwrap()));
        assert!(!list.contains("127.0.0.2".parse().unwrap()));
        assert!(!list.contains("11.0.0.1".parse().unwrap()));
        assert!(!IpWhitelist::default().contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn invalid_cidrs_are_named() {
        let err = IpWhitelist::parse(&["10.0.0.0/8", "10.0.0.1/33"]).unwrap_err();
        assert_eq!(err.field, "cidrs[1]");
        for bad in ["", "foo", "10.0.0.0/", "300.1.1.1", "10.0.0.0/8/8", "1.2.3.4 /8", "::g/64"] {
            assert!(IpWhitelist::parse(&[bad]).is_err(), "{bad}");
        }
        let err = IpWhitelist::parse(&["10.1.2.3/8"]).unwrap_err();
        assert!(err.message.contains("10.0.0.0/8"), "{err}");
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("10.0.{}.{}/32", i / 256, i % 256)).collect();
        assert!(IpWhitelist::parse(&many).is_err());
    }

    #[test]
    fn exact_origins_normalise_case_and_default_ports() {
        let list =
            OriginWhitelist::parse(&["https://App.Example.com", "http://localhost:3000", "https://x.io:443"]).unwrap();
        assert_eq!(list.entries(), ["https://app.example.com", "http://localhost:3000", "https://x.io"]);
        assert!(list.allows("https://app.example.com"));
        assert!(list.allows("https://app.example.com:443"));
        assert!(list.allows("http://localhost:3000"));
        assert!(list.allows("https://x.io"));
        assert!(!list.allows("http://app.example.com"));
        assert!(!list.allows("https://app.example.com:8443"));
        assert!(!list.allows("http://localhost:3001"));
        assert!(!list.allows("https://app.example.com.evil.com"));
        assert!(!list.allows("null"));
        assert!(!list.allows("https://app.example.com/"));
    }

    #[test]
    fn wildcards_are_anchored_subdomains() {
        let list = OriginWhitelist::parse(&["https://*.example.com"]).unwrap();
        assert!(list.allows("https://a.example.com"));
        assert!(list.allows("https://a.b.example.com"));
        assert!(!list.allows("https://example.com"));
        assert!(!list.allows("https://evilexample.com"));
        assert!(!list.allows("https://a.example.com.evil.io"));
        assert!(!list.allows("http://a.example.com"));
        assert!(!list.allows("https://a.example.com:8443"));
        assert!(!list.allows("https://*.example.com"));
    }

    #[test]
    fn invalid_origins_are_named() {
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://*.com",
            "https://*",
            "https://a.*.example.com",
            "https://exa mple.com",
            "https://-bad.com",
            "https://",
            "https://[::1",
        ] {
            let err = OriginWhitelist::parse(&["https://ok.com", bad]).unwrap_err();
            assert_eq!(err.field, "origins[1]", "{bad}");
        }
        assert!(OriginWhitelist::parse(&["http://[::1]:8080", "http://127.0.0.1:5173"]).is_ok());
    }
}
