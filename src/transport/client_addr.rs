//! The client's address: the peer of the TCP connection, unless that peer is a trusted proxy
//! (`trusted_proxies`), in which case the address the proxy names in `X-Forwarded-For`,
//! `X-Real-IP` or `Forwarded` (RFC 7239).
//!
//! Those headers are whatever the sender wrote, so they count only from a trusted peer, and even
//! then a chain is read from the right (the hop nearest to us) leftwards, skipping trusted
//! proxies: the first address that is not one is the client. Anything a client prepended stays to
//! the left of what the proxy appended, and is never reached. A proxy must set or append to the
//! header it uses, and remove the others (the headers are read in the order above, the first
//! present decides); `deploy/nginx.conf` does.

use std::net::{IpAddr, Ipv4Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Longest chain of hops read from one request's headers (more are ignored, leftmost first).
const MAX_HOPS: usize = 32;

/// The address of the client behind `peer`, per the headers of its request.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let Some(chain) = forwarded_chain(headers) else {
        return peer;
    };
    // From the nearest hop outwards: the first address that is not a trusted proxy is the
    // client. An unreadable hop ends the walk: what is beyond it cannot be trusted, so the last
    // trusted hop before it answers.
    let mut client = peer;
    for hop in chain.iter().rev() {
        let Some(address) = hop else {
            return client;
        };
        client = canonical(*address);
        if !is_trusted(client, trusted) {
            return client;
        }
    }
    client
}

/// Whether `address` is in one of the trusted networks.
pub fn is_trusted(address: IpAddr, trusted: &[IpNet]) -> bool {
    let address = canonical(address);
    trusted.iter().any(|net| net.contains(&address))
}

/// IPv4 addresses mapped into IPv6 (`::ffff:10.0.0.1`, as a dual-stack socket reports them) are
/// compared and shown as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(IpAddr::V6(v6), |v4: Ipv4Addr| IpAddr::V4(v4)),
        v4 => v4,
    }
}

/// The hops the first present header lists, leftmost (farthest) first; `None` for a hop that is
/// not an address (`unknown`, an obfuscated name, garbage). `None` overall without any header.
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            // A value that is not visible ASCII is one unreadable hop.
            .map(|v| v.to_str().unwrap_or("\u{0}").to_string())
            .collect()
    };
    let xff = values("x-forwarded-for");
    if !xff.is_empty() {
        return Some(bounded(
            xff.iter()
                .flat_map(|line| line.split(','))
                .map(|hop| parse_hop(hop.trim())),
        ));
    }
    let real = values("x-real-ip");
    if let Some(last) = real.last() {
        return Some(vec![parse_hop(last.trim())]);
    }
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return Some(bounded(
            forwarded
                .iter()
                .flat_map(|line| line.split(','))
                .map(forwarded_for),
        ));
    }
    None
}

/// The last [`MAX_HOPS`] hops: the nearest ones are those that matter.
fn bounded(hops: impl Iterator<Item = Option<IpAddr>>) -> Vec<Option<IpAddr>> {
    let mut all: Vec<Option<IpAddr>> = Vec::new();
    for hop in hops {
        if all.len() == MAX_HOPS {
            all.remove(0);
        }
        all.push(hop);
    }
    all
}

/// The `for=` parameter of one `Forwarded` element (`for=192.0.2.60;proto=http;by=…`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| value.trim())
    })?;
    parse_hop(value.trim_matches('"'))
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (address, _) = rest.split_once(']')?;
        return address.parse().ok();
    }
    let (address, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    address.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn headers_of_an_untrusted_peer_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
        ]);
        assert_eq!(client_ip(ip("198.51.100.7"), &h, &[]), ip("198.51.100.7"));
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("198.51.100.7"), &h, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client wrote "198.51.100.1" itself; the proxy appended what it saw.
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // Only trusted hops: the farthest one.
        let h = headers(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.3"));
    }

    #[test]
    fn real_ip_and_rfc_7239() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&[("x-real-ip", "127.0.0.9")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.9"));
        let h = headers(&[(
            "forwarded",
            r#"for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https;by=127.0.0.1"#,
        )]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", "for=192.0.2.60:8080;proto=http")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("192.0.2.60"));
        // X-Forwarded-For wins over the others.
        let h = headers(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("forwarded", "for=192.0.2.2"),
        ]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("192.0.2.1"));
    }

    #[test]
    fn unreadable_hops_stop_at_the_last_trusted_one() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.2"));
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
        let h = headers(&[("x-real-ip", "")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
        let long = vec!["203.0.113.1"; 1000].join(",");
        let h = headers(&[("x-forwarded-for", long.as_str())]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.1"));
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&[("x-real-ip", "::ffff:192.0.2.5")]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted),
            ip("192.0.2.5")
        );
    }
}
