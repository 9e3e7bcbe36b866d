//! The default local network every `zos run` container joins unless `--network none`.
//!
//! 10.77.0.0/16 on the bridge `zos0`, gateway 10.77.0.1 (the bridge's own address). The
//! range is private (RFC 1918) and away from the ranges Docker (172.17/16) and Podman
//! (10.88/16) take by default, so zos can run beside them.

use std::net::Ipv4Addr;

/// The bridge's name.
pub const BRIDGE: &str = "zos0";
/// The network address.
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
/// Its prefix length.
pub const PREFIX: u8 = 16;
/// The gateway: the bridge's address.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The links' MTU.
pub const MTU: u32 = 1500;

/// The subnet as `a.b.c.d/len`, for rules and messages.
pub fn cidr() -> String {
    format!("{SUBNET}/{PREFIX}")
}

/// Whether `ip` is in the local subnet.
pub fn contains(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - PREFIX);
    u32::from(ip) & mask == u32::from(SUBNET)
}

/// The MAC of a guest address: locally administered (`02:`), then `5a`, then the four
/// address bytes, so it is unique wherever the address is.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:5a:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_and_macs() {
        assert!(contains(Ipv4Addr::new(10, 77, 200, 3)));
        assert!(!contains(Ipv4Addr::new(10, 78, 0, 3)));
        assert_eq!(mac_for(Ipv4Addr::new(10, 77, 1, 2)), "02:5a:0a:4d:01:02");
    }
}
