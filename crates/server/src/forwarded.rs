//! The client address behind reverse proxies: `trusted_proxies`, and the forwarding
//! header those proxies write (`X-Forwarded-For`, or RFC 7239 `Forwarded`).
//!
//! A forwarding header is a list of addresses each hop appended, the nearest last. Only
//! the entries appended by proxies we trust are facts; everything to their left may have
//! come from the client. So the list is read right to left from the TCP peer, and the
//! first address that is not a trusted proxy is the client.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IP network such as `10.0.0.0/8` or `fd00::/8`; a bare address is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && masked(ip, self.prefix) == self.network
    }
}

fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask))
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an IP network such as 10.0.0.0/8 or fd00::/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("{text:?}: the prefix length must be a number from 0 to {max}"))?,
        };
        let base = masked(network, prefix);
        if base != network {
            return Err(format!("{text:?} has address bits set beyond the prefix: did you mean {base}/{prefix}?"));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The header the trusted proxies write the client address into. Only one is read: a
/// proxy passes on the other one as the client sent it, so it proves nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy `option forwardfor`,
    /// most ingresses and cloud load balancers).
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// One hop of a forwarding header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// An address.
    Addr(IpAddr),
    /// `unknown`, an obfuscated identifier (`_hidden`), or a `Forwarded` element without
    /// `for`: the hop exists but its address is not told.
    Unknown,
    /// Not a node at all.
    Invalid,
}

/// The client's address. The peer, unless the peer is in `trusted`: then `header`'s
/// hops (`value`, every line of the header joined with commas) right to left, skipping
/// trusted ones, up to the first untrusted address. A hop that hides its address stops
/// the walk at the last address known (the proxy that wrote it); a header that does not
/// parse, or an invalid hop on the way, leaves the peer.
pub fn client_addr(peer: IpAddr, trusted: &[Cidr], header: ForwardedHeader, value: Option<&str>) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(value) = value else { return peer };
    let hops = match header {
        ForwardedHeader::XForwardedFor => x_forwarded_for(value),
        ForwardedHeader::Forwarded => match forwarded(value) {
            Some(hops) => hops,
            None => return peer,
        },
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Hop::Addr(ip) => {
                client = ip.to_canonical();
                if !is_trusted(client) {
                    return client;
                }
            }
            Hop::Unknown => return client,
            Hop::Invalid => return peer,
        }
    }
    client
}

/// `X-Forwarded-For`: comma-separated nodes (empty list elements are ignored).
fn x_forwarded_for(value: &str) -> Vec<Hop> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(node).collect()
}

/// RFC 7239 `Forwarded`: the `for=` of each element, left to right; `None` when the
/// header is not well formed (an open quote, a pair without `=`, `for` twice in one
/// element).
fn forwarded(value: &str) -> Option<Vec<Hop>> {
    let mut hops = Vec::new();
    for element in split_outside_quotes(value, ',')? {
        let mut found = None;
        let mut empty = true;
        for pair in split_outside_quotes(element, ';')? {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            empty = false;
            let (name, raw) = pair.split_once('=')?;
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return None;
            }
            let value = unquote(raw)?;
            if name.eq_ignore_ascii_case("for") {
                if found.is_some() {
                    return None;
                }
                found = Some(node(&value));
            }
        }
        if !empty {
            hops.push(found.unwrap_or(Hop::Unknown));
        }
    }
    Some(hops)
}

/// Splits on `separator` where it is not inside a quoted string; `None` for an open quote.
fn split_outside_quotes(text: &str, separator: char) -> Option<Vec<&str>> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// A pair's value: a token, or a quoted string with its escapes undone.
fn unquote(raw: &str) -> Option<String> {
    match raw.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => return None,
                    c => out.push(c),
                }
            }
            Some(out)
        }
        None if !raw.is_empty() && raw.bytes().all(is_tchar) => Some(raw.to_owned()),
        None => None,
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A node: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, a bare IPv6
/// address (which some proxies write), `unknown` or `_obfuscated`, each with an optional
/// port (a number or `_obfuscated`).
fn node(text: &str) -> Hop {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Hop::Addr(ip);
    }
    let (name, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) => (v6, None),
            Some((v6, after)) => match after.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return Hop::Invalid,
            },
            None => return Hop::Invalid,
        },
        None => match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        },
    };
    if !port.is_none_or(|p| p.parse::<u16>().is_ok() || is_obfuscated(p)) {
        return Hop::Invalid;
    }
    if text.starts_with('[') {
        return name.parse::<Ipv6Addr>().map_or(Hop::Invalid, |ip| Hop::Addr(IpAddr::V6(ip)));
    }
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Hop::Addr(IpAddr::V4(ip));
    }
    if name.eq_ignore_ascii_case("unknown") || is_obfuscated(name) { Hop::Unknown } else { Hop::Invalid }
}

/// RFC 7239's obfuscated identifiers: `_` then letters, digits, `.`, `_` or `-`.
fn is_obfuscated(text: &str) -> bool {
    text.strip_prefix('_')
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(peer: &str, trusted: &[&str], value: &str) -> IpAddr {
        client_addr(ip(peer), &nets(trusted), ForwardedHeader::XForwardedFor, Some(value))
    }

    fn fwd(peer: &str, trusted: &[&str], value: &str) -> IpAddr {
        client_addr(ip(peer), &nets(trusted), ForwardedHeader::Forwarded, Some(value))
    }

    #[test]
    fn networks_parse_and_match_by_prefix() {
        let lan: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(lan.contains(ip("10.1.2.3")) && !lan.contains(ip("11.0.0.1")));
        assert!(lan.contains(ip("::ffff:10.9.9.9")), "an IPv4-mapped peer (dual-stack socket) is IPv4");
        assert!(!lan.contains(ip("::a00:1")), "families do not mix");
        let host: Cidr = " 192.0.2.7 ".parse().unwrap();
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    }

    #[test]
    fn a_bad_network_is_refused_with_a_reason() {
        for (bad, says) in [
            ("10.0.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("proxy.internal", "not an IP network"),
            ("10.0.0/8", "not an IP network"),
            ("", "not an IP network"),
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() {
        assert_eq!(xff("198.51.100.1", &[], "203.0.113.9"), ip("198.51.100.1"));
        assert_eq!(fwd("198.51.100.1", &[], "for=203.0.113.9"), ip("198.51.100.1"));
        assert_eq!(xff("198.51.100.1", &["10.0.0.0/8"], "203.0.113.9"), ip("198.51.100.1"), "untrusted peer");
        assert_eq!(
            client_addr(ip("10.0.0.2"), &nets(&["10.0.0.0/8"]), ForwardedHeader::Forwarded, None),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_nearest_untrusted_hop_is_the_client() {
        assert_eq!(xff("10.0.0.2", &["10.0.0.0/8"], "203.0.113.9"), ip("203.0.113.9"));
        // Two trusted proxies in a chain: both skipped.
        assert_eq!(xff("10.0.0.2", &["10.0.0.0/8"], "203.0.113.9, 10.0.0.7"), ip("203.0.113.9"));
        assert_eq!(xff("::1", &["::1", "fd00::/8"], "2001:db8::5,fd00::1"), ip("2001:db8::5"));
        assert_eq!(fwd("10.0.0.2", &["10.0.0.0/8"], "for=203.0.113.9;proto=https, for=10.0.0.7"), ip("203.0.113.9"));
        // Every hop trusted: the leftmost is as far as anyone knows.
        assert_eq!(xff("10.0.0.2", &["10.0.0.0/8"], "10.3.3.3, 10.0.0.7"), ip("10.3.3.3"));
        // No header at all: the proxy itself made the request.
        assert_eq!(xff("10.0.0.2", &["10.0.0.0/8"], ""), ip("10.0.0.2"));
    }

    #[test]
    fn what_the_client_wrote_left_of_the_proxies_entry_is_ignored() {
        // nginx appends the real address to whatever X-Forwarded-For the client sent.
        assert_eq!(xff("10.0.0.2", &["10.0.0.0/8"], "1.1.1.1, 198.51.100.23"), ip("198.51.100.23"));
        assert_eq!(xff("10.0.0.2", &["10.0.0.0/8"], "not an address, 198.51.100.23"), ip("198.51.100.23"));
        // A client claiming to be a trusted proxy itself only names its own address.
        assert_eq!(xff("10.0.0.2", &["10.0.0.0/8"], "1.1.1.1, 10.0.0.9, 198.51.100.23"), ip("198.51.100.23"));
        assert_eq!(
            fwd("10.0.0.2", &["10.0.0.0/8"], "for=1.1.1.1, for=\"x, y\", for=198.51.100.23"),
            ip("198.51.100.23")
        );
    }

    #[test]
    fn ports_brackets_quotes_and_case_are_understood() {
        let t = &["10.0.0.0/8"];
        assert_eq!(xff("10.0.0.2", t, "203.0.113.9:51234"), ip("203.0.113.9"));
        assert_eq!(xff("10.0.0.2", t, "[2001:db8::17]:4711"), ip("2001:db8::17"));
        assert_eq!(xff("10.0.0.2", t, "[2001:db8::17]"), ip("2001:db8::17"));
        assert_eq!(fwd("10.0.0.2", t, "for=\"[2001:db8:cafe::17]:4711\""), ip("2001:db8:cafe::17"));
        assert_eq!(fwd("10.0.0.2", t, "For=\"192.0.2.43:47011\";Proto=https;by=10.0.0.2"), ip("192.0.2.43"));
        assert_eq!(fwd("10.0.0.2", t, "proto=https;for=\"192.0.2.43:_abc\""), ip("192.0.2.43"));
        assert_eq!(fwd("10.0.0.2", t, "for=192.0.2.43 , for=\"10.0.0.7\""), ip("192.0.2.43"));
        assert_eq!(xff("10.0.0.2", t, "::ffff:203.0.113.9"), ip("203.0.113.9"), "IPv4-mapped is IPv4");
    }

    #[test]
    fn a_hop_that_hides_its_address_stops_at_the_last_one_known() {
        let t = &["10.0.0.0/8"];
        assert_eq!(fwd("10.0.0.2", t, "for=198.51.100.1, for=unknown"), ip("10.0.0.2"));
        assert_eq!(fwd("10.0.0.2", t, "for=198.51.100.1, for=_hidden, for=10.0.0.7"), ip("10.0.0.7"));
        assert_eq!(fwd("10.0.0.2", t, "for=198.51.100.1, proto=https"), ip("10.0.0.2"), "an element without for");
        assert_eq!(fwd("10.0.0.2", t, "for=\"_hidden:_port\""), ip("10.0.0.2"));
        assert_eq!(xff("10.0.0.2", t, "198.51.100.1, unknown"), ip("10.0.0.2"));
    }

    #[test]
    fn a_malformed_header_leaves_the_peer() {
        let t = &["10.0.0.0/8"];
        for bad in [
            "for=\"198.51.100.1",
            "for=198.51.100.1;for=198.51.100.2",
            "for",
            "f r=1.2.3.4",
            "for=\"198.51.100.1\"x",
            "for=[2001:db8::1]",
            "for=\"[2001:db8::1\"",
            "for=\"[2001:db8::1]x\"",
            "for=\"198.51.100.1:99999\"",
            "for=proxy.internal",
            "for=\"\"",
            "for=192.0.2.43:80",
        ] {
            assert_eq!(fwd("10.0.0.2", t, bad), ip("10.0.0.2"), "{bad}");
        }
        for bad in ["proxy.internal", "198.51.100.1:port", "[::1", "1.2.3.4.5"] {
            assert_eq!(xff("10.0.0.2", t, &format!("203.0.113.9, {bad}")), ip("10.0.0.2"), "{bad}");
        }
    }

    #[test]
    fn the_forwarded_grammar_handles_quotes_escapes_and_empty_elements() {
        assert_eq!(split_outside_quotes("a=\"x,y\",b", ',').unwrap(), ["a=\"x,y\"", "b"]);
        assert_eq!(split_outside_quotes("a=\"x\\\",y\",b", ',').unwrap(), ["a=\"x\\\",y\"", "b"]);
        assert!(split_outside_quotes("a=\"x", ',').is_none());
        assert_eq!(unquote("\"a\\\"b\"").unwrap(), "a\"b");
        assert_eq!(forwarded(" , for=192.0.2.1,,").unwrap(), [Hop::Addr(ip("192.0.2.1"))]);
        assert_eq!(forwarded("").unwrap(), []);
    }
}
