//! Published ports: Docker's `-p` syntax, and the check that nothing on the host listens on
//! a port before it is forwarded.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

/// A transport protocol a port can be published for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The name nftables and users know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A host port forwarded to a guest port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct PortMap {
    /// The host address it is reachable on; `None`: every address of the host.
    #[serde(default)]
    pub host_ip: Option<Ipv4Addr>,
    /// The host port.
    pub host_port: u16,
    /// The guest port.
    pub guest_port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl PortMap {
    /// Parses Docker's `[IP:]HOST:GUEST[/tcp|/udp]`.
    pub fn parse(s: &str) -> Result<PortMap> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "port {s:?}: {why}; expected HOST:GUEST, IP:HOST:GUEST, optionally /tcp or /udp (e.g. 8080:80)"
            ))
        };
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Proto::Tcp),
            Some((spec, "udp")) => (spec, Proto::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Proto::Tcp),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host_ip, host, guest) = match parts.as_slice() {
            [host, guest] => (None, *host, *guest),
            [ip, host, guest] => {
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| bad("the host address must be an IPv4 address"))?;
                (
                    if ip.is_unspecified() { None } else { Some(ip) },
                    *host,
                    *guest,
                )
            }
            _ => return Err(bad("the host port and the guest port are both needed")),
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(&format!("{p:?} is not a port (1-65535)"))),
        };
        Ok(PortMap {
            host_ip,
            host_port: port(host)?,
            guest_port: port(guest)?,
            proto,
        })
    }

    /// Whether two mappings claim the same host port (same protocol, and addresses that
    /// overlap: "every address" overlaps all).
    pub fn clashes(&self, other: &PortMap) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// Refuses the mapping when a host process already has its port: a forwarded port would
    /// silently take that process's traffic.
    pub fn check_host_free(&self) -> Result<()> {
        let addr = SocketAddrV4::new(
            self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.host_port,
        );
        let taken = match self.proto {
            Proto::Tcp => TcpListener::bind(addr).err(),
            Proto::Udp => UdpSocket::bind(addr).err(),
        };
        match taken {
            None => Ok(()),
            Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::Invalid(format!(
                "host port {self} is already in use by a process on this host: pick another host port"
            ))),
            Some(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                Err(Error::Invalid(format!(
                    "host port {self}: {} is not an address of this host",
                    addr.ip()
                )))
            }
            Some(e) => Err(Error::io(format!("checking host port {self}"), e)),
        }
    }
}

impl std::fmt::Display for PortMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}->{}/{}",
            self.host_port,
            self.guest_port,
            self.proto.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_syntax() {
        let p = PortMap::parse("8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.guest_port, p.proto),
            (None, 8080, 80, Proto::Tcp)
        );
        let p = PortMap::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.proto, Proto::Udp);
        for bad in ["80", "0:80", "8080:70000", "x:1:2", "1:2/sctp", "1:2:3:4"] {
            assert!(PortMap::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn clashes_by_proto_port_and_address() {
        let any = PortMap::parse("8080:80").unwrap();
        let lo = PortMap::parse("127.0.0.1:8080:81").unwrap();
        let udp = PortMap::parse("8080:80/udp").unwrap();
        assert!(any.clashes(&lo));
        assert!(!any.clashes(&udp));
        assert!(!lo.clashes(&PortMap::parse("127.0.0.2:8080:81").unwrap()));
    }
}
