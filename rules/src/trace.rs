//! W3C trace context (`traceparent`): what a valid one is, and the one a
//! request carries on from the span that decided it. Ids are handed in
//! (`rand_core`): the services draw them from the OS (caas-runtime's
//! trace.rs), the in-proxy filter from its own generator.

use rand_core::RngCore;

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

/// A span id as the W3C spells one (16 lower-case hex digits, not all zero).
pub fn is_span_id(s: &str) -> bool {
    is_hex(s, 16)
}

/// A trace id as the W3C spells one (32 lower-case hex digits, not all zero).
pub fn is_trace_id(s: &str) -> bool {
    is_hex(s, 32)
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
        if version != "00" || parts.next().is_some() || !is_trace_id(trace_id) || !is_span_id(span_id) {
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
    pub fn new_root(rng: &mut impl RngCore) -> Self {
        Self { trace_id: random_hex(rng, 16), parent_span_id: String::new(), sampled: true }
    }
}

/// A new span id (16 hex digits).
pub fn new_span_id(rng: &mut impl RngCore) -> String {
    random_hex(rng, 8)
}

/// Never all zeros (an invalid id): a draw of zeros is drawn again.
fn random_hex(rng: &mut impl RngCore, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    loop {
        rng.fill_bytes(&mut buf);
        if buf.iter().any(|b| *b != 0) {
            return hex::encode(buf);
        }
    }
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
        assert_eq!(parsed.child("00f067aa0ba902b8"), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01");
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
    }

    #[test]
    fn new_ids_are_valid_and_never_zero() {
        /// Zeros first, then ones: the zeros are drawn again.
        struct Zeros(u32);
        impl RngCore for Zeros {
            fn next_u32(&mut self) -> u32 {
                self.next_u64() as u32
            }
            fn next_u64(&mut self) -> u64 {
                let mut b = [0u8; 8];
                self.fill_bytes(&mut b);
                u64::from_le_bytes(b)
            }
            fn fill_bytes(&mut self, dest: &mut [u8]) {
                self.0 += 1;
                dest.fill(if self.0 > 2 { 1 } else { 0 });
            }
            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
                self.fill_bytes(dest);
                Ok(())
            }
        }
        let mut rng = Zeros(0);
        let root = TraceParent::new_root(&mut rng);
        assert!(is_trace_id(&root.trace_id), "{root:?}");
        assert!(is_span_id(&new_span_id(&mut rng)));
    }
}
