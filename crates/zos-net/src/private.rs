//! Private networks: one owner's subnet on this host, in a network namespace of its own.
//!
//! ```text
//!   host                              namespace of the network
//!   zup<N> 100.127.x.y+1/30 ◄─veth─►  up0 100.127.x.y+2/30, default route to the host
//!                                      br0 = gateway (subnet .1) ── zt… taps of the VMs
//! ```
//!
//! Inside the namespace, the subnet is masqueraded to `up0`'s address, so two networks with
//! the same range (two owners may pick the same) never meet on the host, and the host routes
//! only its /30s. The host's tables keep uplinks from reaching each other, the local
//! network or the host's own addresses; the namespace's tables refuse egress when the
//! network has none, and keep its machines off the namespace itself but for DNS and ICMP.
//! The `bridge` table in the namespace holds each tap to its MAC and address, as on the
//! local network.
//!
//! An uplink's number `N` (its /30 in [`LINKS_CIDR`]) is leased host-wide by namespace name
//! ([`crate::lease::link_for`]); removing the namespace removes everything else inside it.

use crate::{
    lease, link, netns, rules, sysctl, wireguard, Error, Interface, PortMap, Proto, Result,
};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

/// The bridge inside a network's namespace; it holds the gateway address.
pub const BRIDGE: &str = "br0";
/// The namespace's end of its uplink.
pub const UPLINK: &str = "up0";
/// The uplinks' addresses: a /30 each from the shared address space of RFC 6598, which no
/// one routes on the internet and private networks rarely use.
pub const LINKS_CIDR: &str = "100.127.0.0/16";
const LINKS: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 0);
/// How many uplinks fit in [`LINKS_CIDR`].
pub const MAX_NETWORKS: u16 = 1 << 14;
/// Links' MTU.
pub const MTU: u32 = 1500;

/// A private network as the caller wants it on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateNet {
    /// Its namespace's name (unique on the host).
    pub netns: String,
    /// The gateway: the subnet's address the bridge holds.
    pub gateway: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// Whether its machines may reach the outside (masqueraded by the host).
    pub egress: bool,
    /// Its WireGuard link to other hosts and users, if it has one.
    pub wireguard: Option<wireguard::Link>,
    /// The gateway's IPv6 ULA (`…::1` of the network's /64), if it has one; machines get
    /// the same /64 with their IPv4 address's last byte.
    pub ula_gateway: Option<std::net::Ipv6Addr>,
}

impl PrivateNet {
    /// The subnet as `a.b.c.d/len`.
    pub fn cidr(&self) -> String {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        format!(
            "{}/{}",
            Ipv4Addr::from(u32::from(self.gateway) & mask),
            self.prefix
        )
    }

    /// The interface a machine with address `ip` has on this network (the MAC and tap
    /// follow from the address, unique within the network).
    pub fn interface(&self, ip: Ipv4Addr) -> Interface {
        Interface {
            bridge: BRIDGE.to_string(),
            tap: crate::lease::tap_name(ip),
            mac: crate::local::mac_for(ip),
            ip,
            prefix: self.prefix,
            gateway: self.gateway,
            mtu: MTU,
            ports: Vec::new(),
            netns: Some(self.netns.clone()),
            ula: self.ula_gateway.map(|gw| {
                let mut b = gw.octets();
                b[15] = ip.octets()[3];
                std::net::Ipv6Addr::from(b)
            }),
            default_route: true,
            routes: Vec::new(),
        }
    }
}

/// The host's and the namespace's addresses of uplink `index`.
fn uplink_addresses(index: u16) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(LINKS) + 4 * u32::from(index);
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// The host's end of uplink `index`.
pub fn uplink_name(index: u16) -> String {
    format!("{}{index}", rules::UPLINK_PREFIX)
}

/// Makes the network as `net` says, keeping what exists: namespace, uplink, bridge,
/// forwarding, and the rules on both sides (rewritten, so a change of `egress` applies).
pub fn ensure(net: &PrivateNet) -> Result<()> {
    netns::ensure(&net.netns)?;
    let index = lease::link_for(&net.netns, MAX_NETWORKS)?;
    let (host_addr, ns_addr) = uplink_addresses(index);
    let host_end = uplink_name(index);
    // Made here and moved in: a name unique on the host while it is here.
    let peer = format!("zpeer{index}");
    let ns = std::fs::File::open(netns::path(&net.netns))
        .map_err(|e| Error::io(format!("opening namespace {}", net.netns), e))?;
    link::ensure_veth(&host_end, &peer, ns.as_raw_fd())?;
    link::ensure_address(&host_end, host_addr.into(), 30)?;
    sysctl("/proc/sys/net/ipv4/ip_forward")?;
    // So a port published on 127.0.0.1 can be forwarded into the network.
    sysctl(&format!(
        "/proc/sys/net/ipv4/conf/{host_end}/route_localnet"
    ))?;
    rules::ensure_host()?;
    netns::enter(&net.netns, || {
        if link::exists(&peer)? {
            link::rename(&peer, UPLINK)?;
        }
        link::ensure_address(UPLINK, ns_addr.into(), 30)?;
        link::ensure_bridge(BRIDGE, net.gateway, net.prefix)?;
        if let Some(ula) = net.ula_gateway {
            link::ensure_address(BRIDGE, ula.into(), 64)?;
        }
        link::default_route(host_addr)?;
        // Per namespace: the opener's namespace decides which one this file is.
        sysctl("/proc/sys/net/ipv4/ip_forward")?;
        rules::apply_network(net)
    })?;
    ensure_wireguard(net, index, ns_addr)
}

/// The file recording which host port a network's WireGuard link was forwarded from, so the
/// forward can be taken back once the link goes.
fn wireguard_port_file(index: u16) -> std::path::PathBuf {
    lease::state_dir()
        .join("wireguard")
        .join(format!("{}.port", wireguard::device_name(index)))
}

/// The host's forward of a WireGuard listen port to the namespace.
fn wireguard_forward(port: u16) -> PortMap {
    PortMap {
        host_ip: None,
        host_port: port,
        guest_port: port,
        proto: Proto::Udp,
    }
}

/// Brings the network's WireGuard link to what `net` says: made and forwarded from the
/// host, or removed with its forward.
fn ensure_wireguard(net: &PrivateNet, index: u16, ns_addr: Ipv4Addr) -> Result<()> {
    let file = wireguard_port_file(index);
    let old: Option<u16> = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let new = net.wireguard.as_ref().map(|l| l.listen_port);
    if let Some(port) = old.filter(|p| Some(*p) != new) {
        rules::remove_forwards(&[wireguard_forward(port)], ns_addr);
    }
    let Some(link) = &net.wireguard else {
        let _ = std::fs::remove_file(&file);
        return wireguard::remove(&net.netns, index);
    };
    wireguard::ensure(&net.netns, index, link)?;
    rules::add_forwards(&[wireguard_forward(link.listen_port)], ns_addr)?;
    std::fs::write(&file, link.listen_port.to_string())
        .map_err(|e| Error::io(format!("writing {}", file.display()), e))
}

/// The address of the namespace's end of the uplink of the network in `netns`, where the
/// host sends the network's published ports.
pub fn uplink_address(netns: &str) -> Result<Ipv4Addr> {
    let index = lease::link_of(netns)?.ok_or_else(|| {
        Error::Invalid(format!(
            "network {netns} has no uplink: the network is not up"
        ))
    })?;
    Ok(uplink_addresses(index).1)
}

/// Removes the network in namespace `name` and gives back its uplink number: its resolver,
/// its WireGuard link and that link's forward, the uplink (both ends), then the namespace
/// with everything in it. Nothing to do
/// when it is gone.
pub fn remove(name: &str) -> Result<()> {
    crate::resolver::stop(name);
    if let Some(index) = lease::link_of(name)? {
        let file = wireguard_port_file(index);
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            rules::remove_forwards(&[wireguard_forward(port)], uplink_addresses(index).1);
            let _ = std::fs::remove_file(&file);
        }
        wireguard::remove(name, index)?;
        // The uplink now: a namespace goes in the background, a while after its last user.
        link::remove(&uplink_name(index))?;
    }
    netns::remove(name)?;
    lease::release_link(name)
}

/// The namespaces of networks whose name starts with `prefix` (the caller's naming).
pub fn names(prefix: &str) -> Result<Vec<String>> {
    netns::names(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplinks_take_a_slash_30_each() {
        assert_eq!(
            uplink_addresses(0),
            (Ipv4Addr::new(100, 127, 0, 1), Ipv4Addr::new(100, 127, 0, 2))
        );
        assert_eq!(
            uplink_addresses(MAX_NETWORKS - 1),
            (
                Ipv4Addr::new(100, 127, 255, 253),
                Ipv4Addr::new(100, 127, 255, 254)
            )
        );
        assert!(uplink_name(MAX_NETWORKS - 1).len() < libc::IFNAMSIZ);
        let net = PrivateNet {
            netns: "n".into(),
            gateway: Ipv4Addr::new(10, 20, 1, 1),
            prefix: 24,
            egress: true,
            wireguard: None,
            ula_gateway: Some("fd00:1:2:1::1".parse().unwrap()),
        };
        assert_eq!(net.cidr(), "10.20.1.0/24");
        let iface = net.interface(Ipv4Addr::new(10, 20, 1, 5));
        assert_eq!(iface.netns.as_deref(), Some("n"));
        assert_eq!(iface.gateway, net.gateway);
        assert_eq!(iface.ula, Some("fd00:1:2:1::5".parse().unwrap()));
    }
}
