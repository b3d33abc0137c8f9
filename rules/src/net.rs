//! Which address a request came from, and which bucket it is counted in.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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

/// The bucket an address's failures are counted in: an IPv4 address on its
/// own, an IPv6 address by its /64 (one host commonly holds a whole /64, so
/// counting per address would give it 2^64 tries), and an IPv4-mapped IPv6
/// address as the IPv4 address it is.
pub fn address_bucket(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::from(v4)),
            None => {
                let prefix = u128::from(v6) & !(u128::MAX >> 64);
                IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::from(prefix), 64))
            }
        },
    }
}

/// `address_bucket` of an address in text, as a counter key (an IPv4
/// address without its `/32`); text that is not an address is its own
/// bucket (counted, never let through uncounted).
pub fn address_bucket_of(text: &str) -> String {
    match text.trim().parse::<IpAddr>() {
        Ok(ip) => match address_bucket(ip) {
            IpNet::V4(net) => net.addr().to_string(),
            v6 => v6.to_string(),
        },
        Err(_) => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_its_own_bucket_and_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(address_bucket_of("203.0.113.7"), "203.0.113.7");
        assert_eq!(address_bucket_of("::ffff:203.0.113.7"), "203.0.113.7");
        assert_ne!(address_bucket_of("203.0.113.7"), address_bucket_of("203.0.113.8"));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = address_bucket_of("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(address_bucket_of("2001:db8:1:2::1"), a);
        assert_eq!(address_bucket_of("2001:DB8:1:2:ffff:ffff:ffff:ffff"), a);
        assert_ne!(address_bucket_of("2001:db8:1:3::1"), a);
        assert_eq!(address_bucket_of("::1"), "::/64");
    }

    #[test]
    fn text_that_is_no_address_is_its_own_bucket() {
        assert_eq!(address_bucket_of("unknown"), "unknown");
    }

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

    #[test]
    fn failures_are_counted_per_ipv4_address_and_per_ipv6_64() {
        let bucket = |s: &str| address_bucket(s.parse().unwrap()).to_string();
        assert_eq!(bucket("203.0.113.7"), "203.0.113.7/32");
        assert_ne!(bucket("203.0.113.7"), bucket("203.0.113.8"));
        assert_eq!(bucket("::ffff:203.0.113.7"), "203.0.113.7/32");
        assert_eq!(bucket("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(bucket("2001:db8:1:2:ffff:ffff:ffff:ffff"), bucket("2001:db8:1:2::"));
        assert_ne!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:3::1"));
        assert_eq!(bucket("::1"), "::/64");
    }
}
