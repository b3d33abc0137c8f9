//! Which address a request came from.

use std::net::IpAddr;

/// The client address: the TCP peer, unless `trusted_hops` > 0, in which
/// case it is the entry `trusted_hops` places left of the last one in
/// X-Forwarded-For (as Envoy with `use_remote_address: true` appends the peer
/// itself, the last entry is the peer). Never the leftmost entry, which the
/// client writes. `None` when the header is too short to say: fail closed.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted_hops: usize) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return Some(peer);
    }
    let entries: Vec<&str> = forwarded_for?.split(',').map(str::trim).collect();
    let index = entries.len().checked_sub(1 + trusted_hops)?;
    entries[index].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_unless_hops_are_trusted() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let xff = Some("6.6.6.6, 203.0.113.7, 10.0.0.9");
        assert_eq!(client_ip(peer, xff, 0), Some(peer));
        assert_eq!(client_ip(peer, xff, 1), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(client_ip(peer, xff, 2), Some("6.6.6.6".parse().unwrap()));
        assert_eq!(client_ip(peer, xff, 3), None);
        assert_eq!(client_ip(peer, None, 1), None);
        assert_eq!(client_ip(peer, Some("junk, 10.0.0.9"), 1), None);
    }
}
