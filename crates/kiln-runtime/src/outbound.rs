//! The outbound policy of workers: which hosts `fetch()` may reach, and which of them may
//! resolve to private addresses.
//!
//! Every request is checked twice. The URL's host must match an entry of the node's
//! `[workers] outbound_hosts` or `outbound_private_hosts`. Then each address that the host
//! resolves to is classified. A non-public address (loopback, RFC 1918, link-local, the cloud
//! metadata address and similar) is allowed only when the host matches
//! `outbound_private_hosts`. The client connects only to the addresses that passed, so a DNS
//! answer that changes between the check and the connection cannot reach another address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Config key that lists the hosts workers may fetch from.
pub const ALLOWED_HOSTS_KEY: &str = "[workers] outbound_hosts";
/// Config key that lists the hosts that may resolve to private addresses.
pub const PRIVATE_HOSTS_KEY: &str = "[workers] outbound_private_hosts";

/// The host part of a [`HostPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternHost {
    /// `*`: every host.
    Any,
    /// `*.example.com`, stored as `.example.com`: every subdomain, but not the domain itself.
    Suffix(String),
    /// An exact host name, lowercase and without a trailing dot.
    Name(String),
    /// An IPv4 or IPv6 literal.
    Address(IpAddr),
}

/// One entry of an outbound host list: `example.com`, `*.example.com`, `*`, an IP literal
/// (IPv6 in brackets), each with an optional `:port`. Without a port, every port matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: PatternHost,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses one list entry. The error names the entry and what is invalid in it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty entry matches no host".into());
        }
        if text.contains("://") || text.contains('/') {
            return Err(format!(
                "{text:?} is not a host: write the host name without a scheme or path, e.g. \"api.example.com\""
            ));
        }
        let (host, port) = split_port(text)?;
        let host = if host == "*" {
            PatternHost::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            match parse_host(suffix)? {
                Host::Domain(domain) => PatternHost::Suffix(format!(".{domain}")),
                _ => {
                    return Err(format!(
                        "{text:?}: a wildcard needs a domain after \"*.\", not an address"
                    ))
                }
            }
        } else if host.contains('*') {
            return Err(format!(
                "{text:?}: \"*\" is allowed only alone or as the first label (\"*.example.com\")"
            ));
        } else {
            match parse_host(host)? {
                Host::Domain(domain) => PatternHost::Name(domain),
                Host::Ipv4(address) => PatternHost::Address(IpAddr::V4(address)),
                Host::Ipv6(address) => PatternHost::Address(IpAddr::V6(address)),
            }
        };
        Ok(HostPattern { host, port })
    }

    /// Returns whether the pattern matches `host` on `port`.
    pub fn matches(&self, host: &Host<&str>, port: u16) -> bool {
        if self.port.is_some_and(|allowed| allowed != port) {
            return false;
        }
        match (&self.host, host) {
            (PatternHost::Any, _) => true,
            (PatternHost::Suffix(suffix), Host::Domain(domain)) => {
                let domain = normalize_domain(domain);
                domain.len() > suffix.len() && domain.ends_with(suffix.as_str())
            }
            (PatternHost::Name(name), Host::Domain(domain)) => normalize_domain(domain) == *name,
            (PatternHost::Address(address), Host::Ipv4(ip)) => *address == IpAddr::V4(*ip),
            (PatternHost::Address(address), Host::Ipv6(ip)) => *address == IpAddr::V6(*ip),
            _ => false,
        }
    }
}

/// Splits `host[:port]` and `[v6][:port]`.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if text.starts_with('[') {
        let end = text
            .find(']')
            .ok_or_else(|| format!("{text:?}: the IPv6 address has no closing \"]\""))?;
        let rest = &text[end + 1..];
        if rest.is_empty() {
            (&text[..=end], None)
        } else {
            let port = rest
                .strip_prefix(':')
                .ok_or_else(|| format!("{text:?}: expected \":PORT\" after the IPv6 address"))?;
            (&text[..=end], Some(port))
        }
    } else {
        match text.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(format!(
                    "{text:?}: write an IPv6 address in brackets, e.g. \"[::1]:8080\""
                ))
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(number) if number > 0 => Some(number),
            _ => {
                return Err(format!(
                    "{text:?}: the port must be a number from 1 to 65535"
                ))
            }
        },
    };
    Ok((host, port))
}

fn parse_host(text: &str) -> Result<Host<String>, String> {
    let host =
        Host::parse(text).map_err(|error| format!("{text:?} is not a valid host: {error}"))?;
    Ok(match host {
        Host::Domain(domain) => Host::Domain(normalize_domain(&domain)),
        other => other,
    })
}

/// Lowercases a host name and drops the trailing dot of a fully qualified name.
fn normalize_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// Returns the kind of a non-public address, or `None` for a public unicast address.
///
/// IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`
/// and 6to4 `2002::/16`) are classified by the IPv4 address inside, because the network may
/// translate them into it.
pub fn non_public_kind(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(address) => ipv4_kind(address),
        IpAddr::V6(address) => ipv6_kind(address),
    }
}

fn ipv4_kind(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    if address == Ipv4Addr::new(169, 254, 169, 254) {
        return Some("cloud metadata");
    }
    match (a, b, c) {
        // 0.0.0.0/8: Linux connects 0.0.0.0 to the local host.
        (0, _, _) => Some("unspecified"),
        (127, _, _) => Some("loopback"),
        (10, _, _) | (192, 168, _) => Some("private (RFC 1918)"),
        (172, 16..=31, _) => Some("private (RFC 1918)"),
        (169, 254, _) => Some("link-local"),
        // Carrier-grade NAT space, which some clouds also use for internal services.
        (100, 64..=127, _) => Some("shared (RFC 6598)"),
        (192, 0, 0) => Some("IETF protocol assignment (RFC 6890)"),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Some("documentation (RFC 5737)"),
        (192, 88, 99) => Some("6to4 relay (RFC 7526)"),
        // Benchmarking space, which networks also use for internal addresses.
        (198, 18..=19, _) => Some("benchmarking (RFC 2544)"),
        (224..=239, _, _) => Some("multicast"),
        (240..=255, _, _) => Some("reserved"),
        _ => None,
    }
}

fn ipv6_kind(address: Ipv6Addr) -> Option<&'static str> {
    if address.is_unspecified() {
        return Some("unspecified");
    }
    if address.is_loopback() {
        return Some("loopback");
    }
    if let Some(embedded) = embedded_ipv4(address) {
        return ipv4_kind(embedded);
    }
    let first = address.segments()[0];
    match first {
        0xfe80..=0xfebf => Some("link-local"),
        0xfec0..=0xfeff => Some("site-local"),
        0xfc00..=0xfdff => Some("unique-local"),
        0xff00..=0xffff => Some("multicast"),
        _ => None,
    }
}

/// Returns the IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`), IPv4-translated
/// (`::ffff:0:0:0/96`), IPv4-compatible (`::/96`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`) or
/// 6to4 (`2002::/16`) address.
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = address.segments();
    let octets = address.octets();
    let low = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    if let Some(mapped) = address.to_ipv4_mapped() {
        return Some(mapped);
    }
    if segments[..6] == [0; 6] {
        return Some(low);
    }
    if segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(low);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..3] == [0x64, 0xff9b, 1] {
        return Some(low);
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

/// The node's outbound policy. The default rejects every request.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Vec<HostPattern>,
    private: Vec<HostPattern>,
}

impl OutboundPolicy {
    /// Builds the policy from the two config lists. The error names the key and the entry.
    pub fn new(allowed_hosts: &[String], private_hosts: &[String]) -> Result<Self, String> {
        let parse = |key: &str, entries: &[String]| -> Result<Vec<HostPattern>, String> {
            entries
                .iter()
                .map(|entry| {
                    HostPattern::parse(entry)
                        .map_err(|error| format!("invalid entry in {key}: {error}"))
                })
                .collect()
        };
        Ok(OutboundPolicy {
            allowed: parse(ALLOWED_HOSTS_KEY, allowed_hosts)?,
            private: parse(PRIVATE_HOSTS_KEY, private_hosts)?,
        })
    }

    /// Checks the scheme and host of `url`, resolves the host and returns the addresses that
    /// the request may connect to. The error is the message of the `TypeError` that `fetch()`
    /// rejects with.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, String> {
        let target = Target::of(url)?;
        let private_allowed = self.check_host(&target)?;
        let addresses: Vec<SocketAddr> = match target.host {
            Host::Ipv4(address) => vec![SocketAddr::new(IpAddr::V4(address), target.port)],
            Host::Ipv6(address) => vec![SocketAddr::new(IpAddr::V6(address), target.port)],
            Host::Domain(name) => tokio::net::lookup_host((name, target.port))
                .await
                .map_err(|error| {
                    format!(
                        "fetch() to {} failed: the host name {name} could not be resolved: {error}",
                        target.display
                    )
                })?
                .collect(),
        };
        if private_allowed {
            return Ok(addresses);
        }
        let (public, rejected): (Vec<SocketAddr>, Vec<SocketAddr>) = addresses
            .into_iter()
            .partition(|address| non_public_kind(address.ip()).is_none());
        match rejected.first() {
            Some(first) if public.is_empty() => Err(private_rejection(&target, first.ip())),
            _ => Ok(public),
        }
    }

    /// Returns whether the host may resolve to private addresses, or the rejection when the
    /// host is in neither list.
    fn check_host(&self, target: &Target<'_>) -> Result<bool, String> {
        let matches = |patterns: &[HostPattern]| {
            patterns
                .iter()
                .any(|pattern| pattern.matches(&target.host, target.port))
        };
        if matches(&self.private) {
            return Ok(true);
        }
        if matches(&self.allowed) {
            return Ok(false);
        }
        // An address literal that is not public needs the private list; any other host needs
        // the allowed list first.
        let literal = match target.host {
            Host::Ipv4(address) => Some(IpAddr::V4(address)),
            Host::Ipv6(address) => Some(IpAddr::V6(address)),
            Host::Domain(_) => None,
        };
        let key = match literal.and_then(non_public_kind) {
            Some(_) => PRIVATE_HOSTS_KEY,
            None => ALLOWED_HOSTS_KEY,
        };
        Err(format!(
            "fetch() to {} was rejected: the node allows no outbound requests to this host. \
             Add \"{}\" to {key} in the node's kiln.toml to allow it",
            target.display, target.pattern
        ))
    }
}

/// The host and port that a URL connects to, and how messages show them.
struct Target<'a> {
    host: Host<&'a str>,
    port: u16,
    /// `host:port`.
    display: String,
    /// The list entry that would allow this host: `host`, or `host:port` for a port other
    /// than the scheme's default.
    pattern: String,
}

impl<'a> Target<'a> {
    fn of(url: &'a Url) -> Result<Self, String> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "fetch() supports only http: and https: URLs, not {scheme}: ({url})"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "fetch() rejects URLs with credentials, as the Fetch standard does: remove the \
                 user name and password from the URL of {} and send an Authorization header",
                url.host_str().unwrap_or("the request")
            ));
        }
        let host = url
            .host()
            .ok_or_else(|| format!("fetch() failed: the URL {url} has no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("fetch() failed: the URL {url} has no port"))?;
        let name = match &host {
            Host::Ipv6(address) => format!("[{address}]"),
            other => other.to_string(),
        };
        let pattern = match url.port() {
            Some(port) => format!("{name}:{port}"),
            None => name.clone(),
        };
        Ok(Target {
            host,
            port,
            display: format!("{name}:{port}"),
            pattern,
        })
    }
}

fn private_rejection(target: &Target<'_>, address: IpAddr) -> String {
    let kind = non_public_kind(address).unwrap_or("private");
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u', 'I']) {
        "an"
    } else {
        "a"
    };
    let resolution = match target.host {
        Host::Domain(name) => format!("{name} resolves to {address}, {article} {kind} address"),
        _ => format!("{address} is {article} {kind} address"),
    };
    format!(
        "fetch() to {} was rejected: {resolution}. Add \"{}\" to {PRIVATE_HOSTS_KEY} in the \
         node's kiln.toml to allow private addresses for this host",
        target.display, target.pattern
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> IpAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn private_addresses_are_classified() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private (RFC 1918)"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.0.1", "private (RFC 1918)"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("100.64.0.1", "shared (RFC 6598)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd00:ec2::254", "unique-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::10.0.0.1", "private (RFC 1918)"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("2002:c0a8:0101::1", "private (RFC 1918)"),
            ("ff02::1", "multicast"),
            ("192.0.0.1", "IETF protocol assignment (RFC 6890)"),
            ("192.0.2.10", "documentation (RFC 5737)"),
            ("198.51.100.7", "documentation (RFC 5737)"),
            ("203.0.113.9", "documentation (RFC 5737)"),
            ("192.88.99.1", "6to4 relay (RFC 7526)"),
            ("198.18.0.1", "benchmarking (RFC 2544)"),
            ("198.19.255.254", "benchmarking (RFC 2544)"),
            ("::ffff:0:7f00:1", "loopback"),
            ("64:ff9b:1::a00:1", "private (RFC 1918)"),
        ];
        for (text, kind) in cases {
            assert_eq!(non_public_kind(address(text)), Some(kind), "{text}");
        }
    }

    #[test]
    fn public_addresses_are_not_classified() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(non_public_kind(address(text)), None, "{text}");
        }
    }

    fn url_host(url: &Url) -> (Host<&str>, u16) {
        (
            url.host().expect("host"),
            url.port_or_known_default().expect("port"),
        )
    }

    fn matches(pattern: &str, url: &str) -> bool {
        let pattern = HostPattern::parse(pattern).expect("valid pattern");
        let url = Url::parse(url).expect("valid URL");
        let (host, port) = url_host(&url);
        pattern.matches(&host, port)
    }

    #[test]
    fn exact_host_matches_any_port() {
        assert!(matches("api.example.com", "https://api.example.com/v1"));
        assert!(matches("api.example.com", "http://API.Example.com:8080/"));
        assert!(matches("api.example.com", "http://api.example.com./"));
        assert!(!matches("api.example.com", "https://example.com/"));
        assert!(!matches(
            "api.example.com",
            "https://api.example.com.evil.test/"
        ));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        assert!(matches("*.example.com", "https://a.example.com/"));
        assert!(matches("*.example.com", "https://a.b.example.com/"));
        assert!(!matches("*.example.com", "https://example.com/"));
        assert!(!matches("*.example.com", "https://badexample.com/"));
        assert!(!matches("*.example.com", "https://10.0.0.1/"));
    }

    #[test]
    fn port_restricts_the_match() {
        assert!(matches("localhost:8080", "http://localhost:8080/"));
        assert!(!matches("localhost:8080", "http://localhost:8081/"));
        assert!(!matches("localhost:8080", "http://localhost/"));
        assert!(matches("example.com:443", "https://example.com/"));
        assert!(matches("*:8080", "http://anything.test:8080/"));
        assert!(!matches("*:8080", "http://anything.test/"));
    }

    #[test]
    fn star_matches_every_host() {
        assert!(matches("*", "https://example.com/"));
        assert!(matches("*", "http://127.0.0.1:9/"));
        assert!(matches("*", "http://[::1]/"));
    }

    #[test]
    fn address_patterns_match_literals() {
        assert!(matches("127.0.0.1", "http://127.0.0.1:3000/"));
        assert!(matches("127.0.0.1:3000", "http://127.0.0.1:3000/"));
        // The WHATWG URL parser reads 2130706433 as 127.0.0.1.
        assert!(matches("127.0.0.1", "http://2130706433/"));
        assert!(matches("[::1]:3000", "http://[::1]:3000/"));
        assert!(matches("[::1]", "http://[0:0::1]/"));
        assert!(!matches("127.0.0.1", "http://localhost/"));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for pattern in [
            "",
            "https://example.com",
            "example.com/path",
            "*example.com",
            "a.*.example.com",
            "*.10.0.0.1",
            "example.com:0",
            "example.com:70000",
            "example.com:http",
            "::1",
            "[::1",
            "[::1]8080",
        ] {
            assert!(HostPattern::parse(pattern).is_err(), "{pattern:?}");
        }
    }

    fn policy(allowed: &[&str], private: &[&str]) -> OutboundPolicy {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        OutboundPolicy::new(&owned(allowed), &owned(private)).expect("valid policy")
    }

    fn resolve(policy: &OutboundPolicy, url: &str) -> Result<Vec<SocketAddr>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(policy.resolve(&Url::parse(url).expect("valid URL")))
    }

    #[test]
    fn default_policy_rejects_every_host() {
        let error = resolve(&OutboundPolicy::default(), "https://example.com/").unwrap_err();
        assert!(error.contains("example.com:443"), "{error}");
        assert!(error.contains(ALLOWED_HOSTS_KEY), "{error}");
    }

    #[test]
    fn allowed_host_rejects_private_address() {
        let policy = policy(&["*"], &[]);
        let error = resolve(&policy, "http://169.254.169.254/latest/").unwrap_err();
        assert!(error.contains("cloud metadata"), "{error}");
        assert!(error.contains(PRIVATE_HOSTS_KEY), "{error}");
        let error = resolve(&policy, "http://[::ffff:7f00:1]:8080/").unwrap_err();
        assert!(error.contains("loopback"), "{error}");
    }

    #[test]
    fn allowed_name_resolving_to_loopback_is_rejected() {
        let error = resolve(&policy(&["localhost"], &[]), "http://localhost:9/").unwrap_err();
        assert!(error.contains("localhost resolves to"), "{error}");
        assert!(error.contains("\"localhost:9\""), "{error}");
        assert!(error.contains(PRIVATE_HOSTS_KEY), "{error}");
    }

    #[test]
    fn private_allowance_admits_loopback() {
        let policy = policy(&[], &["localhost:9"]);
        let addresses = resolve(&policy, "http://localhost:9/").expect("allowed");
        assert!(!addresses.is_empty());
        assert!(addresses.iter().all(|address| address.ip().is_loopback()));
        assert!(addresses.iter().all(|address| address.port() == 9));
        let error = resolve(&policy, "http://localhost:10/").unwrap_err();
        assert!(error.contains(ALLOWED_HOSTS_KEY), "{error}");
    }

    #[test]
    fn non_http_schemes_are_rejected() {
        let policy = policy(&["*"], &["*"]);
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "data:text/plain,hi",
        ] {
            let error = resolve(&policy, url).unwrap_err();
            assert!(error.contains("only http: and https:"), "{url}: {error}");
        }
    }

    #[test]
    fn invalid_entry_names_the_key() {
        let error = OutboundPolicy::new(&[], &["https://x".into()]).unwrap_err();
        assert!(error.contains(PRIVATE_HOSTS_KEY), "{error}");
    }
}
