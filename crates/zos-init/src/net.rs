//! The guest's network: interfaces found by MAC, addressed and routed with the classic
//! ioctls (no netlink library: zos-init stays small), then `/etc/resolv.conf` and
//! `/etc/hosts` written inside the container's root (through its writable layer).

use crate::sys;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use zos_init::{GuestInterface, GuestNetwork};

/// How long a NIC gets to appear after its driver loads.
const NIC_WAIT: Duration = Duration::from_secs(5);

/// Configures every interface, then the resolver and hosts files.
pub fn configure(net: &GuestNetwork, hostname: &str) -> Result<(), String> {
    for iface in &net.interfaces {
        let name = wait_for_mac(&iface.mac)?;
        configure_one(&name, iface)
            .map_err(|e| format!("configuring {name} ({}): {e}", iface.mac))?;
    }
    if !net.dns.is_empty() {
        let text: String = net
            .dns
            .iter()
            .map(|ip| format!("nameserver {ip}\n"))
            .collect();
        replace_file("/etc/resolv.conf", &text)?;
    }
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(own) = net.interfaces.first() {
        if !hostname.is_empty() {
            hosts.push_str(&format!("{}\t{hostname}\n", own.address));
        }
    }
    for entry in &net.hosts {
        hosts.push_str(&format!("{}\t{}\n", entry.ip, entry.names.join(" ")));
    }
    replace_file("/etc/hosts", &hosts)
}

/// Writes `path` afresh: a symlink there (e.g. to systemd-resolved's stub file, absent in
/// a container) is replaced by a file rather than followed.
fn replace_file(path: &str, text: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all("/etc");
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => {
            std::fs::remove_file(path).map_err(|e| format!("replacing {path}: {e}"))?
        }
        _ => {}
    }
    std::fs::write(path, text).map_err(|e| format!("writing {path}: {e}"))
}

/// The name of the interface with MAC `mac`, waiting for it to show up in sysfs.
fn wait_for_mac(mac: &str) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let entries = std::fs::read_dir("/sys/class/net")
            .map_err(|e| format!("listing /sys/class/net: {e}"))?;
        for entry in entries.flatten() {
            let found = std::fs::read_to_string(entry.path().join("address"))
                .is_ok_and(|a| a.trim().eq_ignore_ascii_case(mac));
            if found {
                return Ok(entry.file_name().to_string_lossy().into_owned());
            }
        }
        if start.elapsed() > NIC_WAIT {
            return Err(format!("no network interface with MAC {mac} appeared"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn configure_one(name: &str, iface: &GuestInterface) -> io::Result<()> {
    let sock = sys::inet_socket()?;
    let fd = sock.as_raw_fd();
    let mut req = sys::ifreq(name);
    req.ifr_ifru.ifru_mtu = iface.mtu as libc::c_int;
    sys::ifreq_ioctl(fd, libc::SIOCSIFMTU, &mut req)?;
    let mut req = sys::ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr(iface.address);
    sys::ifreq_ioctl(fd, libc::SIOCSIFADDR, &mut req)?;
    let mut req = sys::ifreq(name);
    req.ifr_ifru.ifru_netmask = sockaddr(mask(iface.prefix));
    sys::ifreq_ioctl(fd, libc::SIOCSIFNETMASK, &mut req)?;
    sys::link_up(name)?;
    if let Some(a) = iface.address6 {
        add_address6(name, a, 64)?;
    }
    if let Some(gw) = iface.gateway {
        add_route(fd, Ipv4Addr::UNSPECIFIED, 0, gw)?;
    }
    for r in &iface.routes {
        add_route(fd, r.to, r.prefix, r.via)?;
    }
    Ok(())
}

/// Gives interface `name` the IPv6 address `addr/prefix` (classic ioctl on an IPv6 socket).
fn add_address6(name: &str, addr: std::net::Ipv6Addr, prefix: u32) -> io::Result<()> {
    let sock = sys::socket_of(libc::AF_INET6)?;
    let mut req = sys::ifreq(name);
    sys::ifreq_ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req)?;
    // SAFETY: SIOCGIFINDEX filled the index in the union.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    let req6 = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: prefix,
        ifr6_ifindex: index,
    };
    // SAFETY: `req6` is a valid in6_ifreq; SIOCSIFADDR on an IPv6 socket only reads it.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req6) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::new(
                e.kind(),
                format!("address {addr}/{prefix}: {e}"),
            ));
        }
    }
    Ok(())
}

/// The netmask of a prefix length.
fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// Adds the route `to/prefix` via `gw` (one that exists is fine).
fn add_route(fd: std::os::fd::RawFd, to: Ipv4Addr, prefix: u8, gw: Ipv4Addr) -> io::Result<()> {
    // SAFETY: rtentry is plain data, valid when zeroed.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(to);
    route.rt_genmask = sockaddr(mask(prefix));
    route.rt_gateway = sockaddr(gw);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: `route` is a valid rtentry; SIOCADDRT only reads it.
    let ret = unsafe { libc::ioctl(fd, libc::SIOCADDRT, &route) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::new(
                e.kind(),
                format!("route to {to}/{prefix} via {gw}: {e}"),
            ));
        }
    }
    Ok(())
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; the kernel reads
    // a sockaddr_in when sa_family is AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}
