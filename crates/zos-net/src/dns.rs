//! The resolvers a guest is given: the host's own, read from its resolv.conf.
//!
//! A loopback resolver (systemd-resolved's 127.0.0.53, a local dnsmasq) cannot be reached
//! from a guest; then the upstreams systemd-resolved lists in
//! `/run/systemd/resolve/resolv.conf` are used, and with none of those the guest gets no
//! resolver (names do not resolve; addresses still work).

use std::net::IpAddr;
use std::path::Path;

/// The host's non-loopback resolvers (IPv4 only: guests have no IPv6 route yet).
pub fn host_resolvers() -> Vec<IpAddr> {
    for file in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
        let found = nameservers(Path::new(file));
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

fn nameservers(file: &Path) -> Vec<IpAddr> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    parse(&text)
}

fn parse(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_resolvers_are_skipped() {
        let got =
            super::parse("# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver fe80::1\n");
        assert_eq!(got, vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]);
    }
}
