//! W3C trace context (`traceparent`): read from requests so every log line
//! and exported span of a request carries the caller's trace id.

use rand::RngCore as _;

/// A parsed `traceparent`: `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_span_id: String,
    pub sampled: bool,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceParent {
    /// `None` for anything not a valid version-00 traceparent (ignored, as
    /// the W3C recommendation says, rather than refused).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (Some(version), Some(trace_id), Some(span_id), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if version != "00" || parts.next().is_some() || !is_hex(trace_id, 32) || !is_hex(span_id, 16) {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok().filter(|_| flags.len() == 2)?;
        Some(Self { trace_id: trace_id.to_string(), parent_span_id: span_id.to_string(), sampled: flags & 1 == 1 })
    }

    /// The `traceparent` for a call made from span `span_id` of this trace.
    pub fn child(&self, span_id: &str) -> String {
        format!("00-{}-{span_id}-{}", self.trace_id, if self.sampled { "01" } else { "00" })
    }

    /// A new trace, for requests that arrive without one.
    pub fn new_root() -> Self {
        Self { trace_id: random_hex(16), parent_span_id: String::new(), sampled: true }
    }
}

/// A new span id (16 hex digits).
pub fn new_span_id() -> String {
    random_hex(8)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_or_are_ignored() {
        let parsed = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(parsed.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_span_id, "00f067aa0ba902b7");
        assert!(parsed.sampled);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        assert_eq!(TraceParent::new_root().trace_id.len(), 32);
        assert_eq!(new_span_id().len(), 16);
    }
}
