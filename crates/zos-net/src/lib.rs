//! Networks for zos VMs on one host.
//!
//! Three kinds of network share one set of parts: the local network every `zos run` VM
//! joins ([`local`]: one bridge holding the gateway on the host), an owner's private
//! networks ([`private`]: each in a network namespace of its own, with its resolver
//! ([`resolver`]) and WireGuard link ([`wireguard`])), and public addresses ([`public`]: a
//! bridged host interface). A VM interface ([`Interface`]) is a tap on one of their bridges,
//! handed to QEMU as an open descriptor ([`plug()`]), held by nftables to its own MAC and
//! address. Every rule zos makes lives in tables named [`rules::TABLE`] (`inet zos` for NAT
//! and filters, `bridge zos` for the per-tap filters), on the host and in each network's
//! namespace, so they can be listed and removed whole.
//!
//! The other modules: [`lease`] (addresses, host ports, uplinks and public addresses, under
//! a lock, surviving restarts), [`ports`] (published port syntax and the host check),
//! [`link`] (links, addresses and routes over netlink), [`netns`] (named namespaces),
//! [`tap`] (tap devices), [`dns`] (the local guests' resolvers).

pub mod dns;
pub mod lease;
pub mod link;
pub mod local;
mod lock;
pub mod netns;
pub mod plug;
pub mod ports;
pub mod private;
pub mod public;
pub mod resolver;
pub mod rules;
pub mod tap;
pub mod wireguard;

pub use lease::{allocate, release};
pub use plug::{plug, unplug};
pub use ports::{PortMap, Proto};

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// One VM interface on a network: everything needed to plug it on the host and configure it
/// in the guest. Made by [`allocate`], kept in the VM's spec, so a restarted VM keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    /// The bridge the tap joins.
    pub bridge: String,
    /// The tap's name on the host (at most 15 bytes).
    pub tap: String,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// Prefix length of the network.
    pub prefix: u8,
    /// The gateway (the bridge's own address).
    pub gateway: Ipv4Addr,
    /// MTU of the link.
    pub mtu: u32,
    /// Host ports forwarded to the guest.
    #[serde(default)]
    pub ports: Vec<PortMap>,
    /// The network namespace its bridge lives in (a private network, see [`private`]);
    /// `None`: the host's own (the local network, a public bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Its IPv6 ULA (a /64 whose `::1` is the gateway), on private networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ula: Option<std::net::Ipv6Addr>,
    /// Whether the guest's default route goes through its gateway.
    #[serde(default = "default_route")]
    pub default_route: bool,
    /// Networks the guest reaches through its gateway besides (a private network's whole
    /// range, when the default route goes elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ipnet::Ipv4Net>,
}

fn default_route() -> bool {
    true
}

impl Interface {
    /// The IPv6 link-local address the guest's kernel gives it (EUI-64 of its MAC).
    pub fn link_local(&self) -> Option<std::net::Ipv6Addr> {
        let mac: Vec<u8> = self
            .mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<std::result::Result<_, _>>()
            .ok()?;
        let [a, b, c, d, e, f] = <[u8; 6]>::try_from(mac).ok()?;
        Some(std::net::Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            a ^ 2,
            b,
            c,
            0xff,
            0xfe,
            d,
            e,
            f,
        ]))
    }
}

/// What can go wrong setting up networks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on what.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{what}: {detail}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        detail: String,
    },
    /// `nft` refused the rules or could not be run.
    #[error("nftables: {0}")]
    Nft(String),
    /// Bad input, or a resource already taken: the message says what to change.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Writes `1` to a sysctl file unless it already holds it. Files under `/proc/sys/net` are
/// those of the namespace of the thread that opens them.
pub(crate) fn sysctl(path: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| Error::io(format!("setting {path} to 1"), e))
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
