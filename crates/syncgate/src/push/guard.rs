//! Which Web Push endpoints syncgate will POST to. A subscription endpoint is a URL the
//! device chose, so without a rule any device could make the server send requests into its
//! own network (SSRF: loopback, private ranges, cloud metadata at 169.254.169.254).
//!
//! Owns: the endpoint rule (`https://`, a host and no user name; not `localhost` and not a
//! non-public IP address, unless the host is in `push.providers.webpush.allow_hosts`, which
//! also allows `http://`), applied at registration and again before each send; and the
//! resolver of the Web Push client (`PublicOnly`), which drops non-public addresses a host
//! name resolves to, so that DNS cannot point a public-looking name inside the network.
//!
//! Must never: let an IP literal reach the client unchecked (the client's resolver is not
//! asked for literals), or resolve for an allowed host through `PublicOnly` (allowed hosts
//! are sent through the ordinary client).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

use crate::config::parse_allow_host;

/// `push.providers.webpush.allow_hosts`, parsed: hosts (with an optional port) that may be
/// private and may use `http://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowHosts(Vec<(String, Option<u16>)>);

/// No host allowed (Web Push not configured, or `allow_hosts` empty).
pub static NO_HOSTS: AllowHosts = AllowHosts(Vec::new());

impl AllowHosts {
    /// Parses the entries (the config check has refused malformed ones already).
    pub fn new(entries: &[String]) -> Result<Self, String> {
        entries.iter().map(|e| parse_allow_host(e)).collect::<Result<_, _>>().map(AllowHosts)
    }

    /// Whether the URL's host (and port, when the entry names one) is listed.
    pub fn allows(&self, url: &Url) -> bool {
        let (Some(host), port) = (url.host_str(), url.port_or_known_default()) else { return false };
        self.0.iter().any(|(h, p)| h.eq_ignore_ascii_case(host) && (p.is_none() || *p == port))
    }
}

/// Checks a subscription endpoint against the rule; the URL as the client will read it, or
/// why it is refused (a message for the device, naming `subscription.endpoint`).
pub fn check_endpoint(endpoint: &str, allow: &AllowHosts) -> Result<Url, String> {
    // The client parses with the same URL parser, so this sees the host it will connect to
    // (`https://0x7f.1/` is 127.0.0.1 to both).
    let url = Url::parse(endpoint).map_err(|_| "subscription.endpoint is not a URL".to_string())?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err("subscription.endpoint must be an https URL".into());
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err("subscription.endpoint must name a host".into());
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("subscription.endpoint must not carry a user name or password".into());
    }
    if allow.allows(&url) {
        return Ok(url);
    }
    if url.scheme() != "https" {
        return Err("subscription.endpoint must be an https URL (http:// only for a host in \
                    push.providers.webpush.allow_hosts)"
            .into());
    }
    // The parser writes an IP host in its usual form: IPv6 in brackets, IPv4 dotted (a name
    // cannot look like one: `0x7f.1` and `2130706433` are IPv4 to it).
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    let why = match ip {
        None if is_localhost(host) => Some("is localhost".to_string()),
        None => None,
        Some(ip) => (!is_public(ip)).then(|| format!("{ip} is not a public address")),
    };
    match why {
        Some(why) => Err(format!(
            "subscription.endpoint host {why}; a push service on a private network must be listed in \
             push.providers.webpush.allow_hosts"
        )),
        None => Ok(url),
    }
}

/// `localhost`, `localhost.` and names under `.localhost` (RFC 6761: loopback).
fn is_localhost(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

/// Whether an address may be the target of a push to a host not in `allow_hosts`: not
/// loopback, private (10/8, 172.16/12, 192.168/16), shared CGNAT (100.64/10), link-local
/// (169.254/16, fe80::/10), unique-local (fc00::/7), site-local (fec0::/10), "this network"
/// (0/8, `::`), multicast, reserved (240/4, broadcast included), nor one of these in an IPv6
/// form that carries an IPv4 address (`::ffff:a.b.c.d`, `::a.b.c.d`, NAT64 `64:ff9b::/96`).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(a == 0                               // 0.0.0.0/8, "this network" (0.0.0.0 reaches the host)
        || ip.is_loopback()                // 127/8
        || ip.is_private()                 // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local()              // 169.254/16, cloud metadata
        || (a == 100 && (b & 0xc0) == 64)  // 100.64/10, CGNAT
        || ip.is_multicast()               // 224/4
        || a >= 240) // 240/4 reserved, 255.255.255.255 broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // An IPv4 address inside: mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d` (so `::` and
    // `::1` read as 0.0.0.0 and 0.0.0.1, in 0/8) and NAT64 `64:ff9b::a.b.c.d` reach it.
    let mapped = s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0);
    if mapped || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_multicast()                // ff00::/8
        || (s[0] & 0xffc0) == 0xfe80   // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0   // site-local fec0::/10 (deprecated)
        || (s[0] & 0xfe00) == 0xfc00) // unique-local fc00::/7
}

/// A host name resolved only to addresses the rule refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} resolves only to non-public addresses ({addrs}); a push service on a private network must be listed in push.providers.webpush.allow_hosts")]
pub struct NonPublicAddress {
    pub name: String,
    pub addrs: String,
}

/// The public addresses among those a name resolved to; an error when there were some and
/// none is public.
pub fn public_addrs(
    name: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, NonPublicAddress> {
    let (kept, dropped): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs.into_iter().partition(|a| is_public(a.ip()));
    if kept.is_empty() && !dropped.is_empty() {
        let addrs = dropped.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
        return Err(NonPublicAddress { name: name.to_string(), addrs });
    }
    Ok(kept)
}

/// The Web Push client's resolver: the system's (getaddrinfo), keeping public addresses only.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let kept = public_addrs(&name, found)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The `PublicOnly` refusal inside a failed request, if that is why it failed.
pub fn refused_by_resolver(e: &reqwest::Error) -> Option<&NonPublicAddress> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(n) = c.downcast_ref::<NonPublicAddress>() {
            return Some(n);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(hosts: &[&str]) -> AllowHosts {
        AllowHosts::new(&hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn non_public_addresses_are_recognised_in_every_form() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must not be public");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "192.169.0.1",
            "142.250.74.10",
            "2001:4860:4860::8888",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "fe00::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} must be public");
        }
    }

    #[test]
    fn endpoints_are_https_public_hosts_unless_allowed() {
        let none = AllowHosts::default();
        assert!(check_endpoint("https://fcm.googleapis.com/fcm/send/abc", &none).is_ok());
        assert!(check_endpoint("https://[2a00:1450:4001::200e]/w", &none).is_ok());
        assert!(check_endpoint("https://8.8.8.8:8443/w", &none).is_ok());
        for (e, why) in [
            ("http://push.example.net/w", "https"),
            ("ftp://push.example.net/w", "https"),
            ("not a url", "not a URL"),
            ("https://user:pw@push.example.net/w", "user name"),
            ("https://user@push.example.net/w", "user name"),
            ("http://127.0.0.1/w", "https"),
            ("https://127.0.0.1:8443/w", "127.0.0.1 is not a public address"),
            ("https://10.0.0.1/w", "10.0.0.1"),
            ("https://169.254.169.254/latest/meta-data", "169.254.169.254"),
            ("https://[::1]/w", "::1"),
            ("https://[::ffff:7f00:1]/w", "not a public address"),
            ("https://[fd00::1]/w", "fd00::1"),
            ("https://localhost/w", "localhost"),
            ("https://LOCALHOST./w", "localhost"),
            ("https://a.localhost/w", "localhost"),
            // The URL parser reads these as 127.0.0.1, and so does the client.
            ("https://0x7f.1/w", "127.0.0.1"),
            ("https://2130706433/w", "127.0.0.1"),
            ("https://127.1/w", "127.0.0.1"),
        ] {
            let m = check_endpoint(e, &none).expect_err(e);
            assert!(m.contains(why), "{e}: {m}");
        }
        let m = check_endpoint("https://10.0.0.1/w", &none).unwrap_err();
        assert!(m.contains("push.providers.webpush.allow_hosts"), "{m}");

        let a = allow(&["127.0.0.1:8443", "10.0.0.1", "[::1]", "localhost", "push.corp.example"]);
        for e in [
            "https://127.0.0.1:8443/w",
            "http://127.0.0.1:8443/w",
            "https://10.0.0.1/w",
            "http://10.0.0.1:9000/w",
            "https://[::1]/w",
            "https://localhost/w",
            "http://push.corp.example/w",
        ] {
            assert!(check_endpoint(e, &a).is_ok(), "{e}");
        }
        // The port of a host:port entry must match; allow_hosts never allows a user name.
        assert!(check_endpoint("https://127.0.0.1:9/w", &a).is_err());
        assert!(check_endpoint("https://127.0.0.1/w", &a).is_err());
        assert!(check_endpoint("https://u@10.0.0.1/w", &a).is_err());
        assert!(check_endpoint("https://[::2]/w", &a).is_err());
        assert!(a.allows(&Url::parse("https://PUSH.corp.example:443/x").unwrap()));
        assert!(!a.allows(&Url::parse("https://push.corp.example.evil.net/x").unwrap()));
        assert!(allow(&["127.0.0.1:443"]).allows(&Url::parse("https://127.0.0.1/x").unwrap()), "default port");
    }

    #[test]
    fn resolved_addresses_are_filtered_to_public_ones() {
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let kept = public_addrs("push.example.net", [sa("127.0.0.1:0"), sa("8.8.8.8:0"), sa("[fd00::1]:0")]).unwrap();
        assert_eq!(kept, vec![sa("8.8.8.8:0")]);
        let e = public_addrs("evil.example", [sa("127.0.0.1:0"), sa("[::1]:0")]).unwrap_err();
        assert_eq!(e.name, "evil.example");
        assert!(e.to_string().contains("127.0.0.1, ::1"), "{e}");
        assert!(e.to_string().contains("allow_hosts"), "{e}");
        let e = public_addrs("meta.example", [sa("169.254.169.254:0")]).unwrap_err();
        assert!(e.to_string().contains("169.254.169.254"), "{e}");
        assert!(public_addrs("nothing.example", []).unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_of_loopback_and_the_client_reports_why() {
        // `localhost` resolves to loopback without any network; the resolver drops it.
        let err = match PublicOnly.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<NonPublicAddress>().is_some(), "{err}");
        // Through a client built with it, the failed request carries that refusal.
        let client = reqwest::Client::builder().dns_resolver(std::sync::Arc::new(PublicOnly)).build().unwrap();
        let e = client.get("http://localhost:9/w").send().await.unwrap_err();
        let n = refused_by_resolver(&e).unwrap_or_else(|| panic!("not the resolver's refusal: {e:?}"));
        assert_eq!(n.name, "localhost");
    }
}
