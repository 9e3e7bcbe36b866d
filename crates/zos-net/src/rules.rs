//! The nftables rules, generated here and nowhere else, applied with `nft -f -` (one atomic
//! transaction per call).
//!
//! Two tables named [`TABLE`] hold everything zos adds: `inet zos` (published ports as DNAT
//! maps, masquerade of the local subnet) and `bridge zos` (anti-spoof: a frame from a tap
//! must carry that tap's MAC and IPv4 address, ARP included; other protocols are dropped).
//! The chains are fixed and made once; a VM is only elements in their sets and maps, so
//! adding and removing a VM never touches a rule, and `nft delete table inet zos` /
//! `nft delete table bridge zos` remove all of it.

use crate::{local, Error, Interface, PortMap, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// The name of zos's tables (one `inet`, one `bridge`).
pub const TABLE: &str = "zos";
/// Every tap zos makes starts with this (the filters match taps by it).
pub const TAP_PREFIX: &str = "zt";

/// A base table, whole: `inet` (NAT) or `bridge` (the taps' filters).
fn base(family: &str) -> String {
    let subnet = local::cidr();
    let bridge = local::BRIDGE;
    let tap = format!("{TAP_PREFIX}*");
    if family == "inet" {
        return format!(
            r#"table inet {TABLE} {{
  map ports_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  map ports_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip
    fib daddr type local dnat ip to meta l4proto . th dport map @ports_any
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip
    fib daddr type local dnat ip to meta l4proto . th dport map @ports_any
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} ip daddr != {subnet} masquerade
    oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade
  }}
}}
"#
        );
    }
    format!(
        r#"table bridge {TABLE} {{
  set macs {{ type ifname . ether_addr; }}
  set ips {{ type ifname . ipv4_addr; }}
  chain prerouting {{
    type filter hook prerouting priority -300; policy accept;
    iifname "{tap}" iifname . ether saddr != @macs drop
    iifname "{tap}" ether type ip iifname . ip saddr != @ips drop
    iifname "{tap}" ether type arp iifname . arp saddr ip != @ips drop
    iifname "{tap}" ether type arp iifname . arp saddr ether != @macs drop
    iifname "{tap}" ether type != {{ ip, arp }} drop
  }}
}}
"#
    )
}

/// The elements one interface adds: (set or map, element), each as nft writes it.
fn elements(iface: &Interface) -> Vec<(String, String)> {
    let tap = &iface.tap;
    let mut out = vec![
        (
            format!("bridge {TABLE} macs"),
            format!("\"{tap}\" . {}", iface.mac),
        ),
        (
            format!("bridge {TABLE} ips"),
            format!("\"{tap}\" . {}", iface.ip),
        ),
    ];
    for p in &iface.ports {
        out.push(port_element(p, iface));
    }
    out
}

fn port_element(p: &PortMap, iface: &Interface) -> (String, String) {
    let to = format!("{} . {}", iface.ip, p.guest_port);
    let proto = p.proto.as_str();
    match p.host_ip {
        Some(ip) => (
            format!("inet {TABLE} ports_ip"),
            format!("{ip} . {proto} . {} : {to}", p.host_port),
        ),
        None => (
            format!("inet {TABLE} ports_any"),
            format!("{proto} . {} : {to}", p.host_port),
        ),
    }
}

/// The key of an element (a map element without its value), which is what deletes take.
fn key(element: &str) -> &str {
    element.split(" : ").next().unwrap_or(element)
}

/// Runs `nft -f -` with `script`.
fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("running nft (install nftables with scripts/setup)", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::io("writing rules to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for nft", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Nft(format!(
            "{} (rules: {})",
            String::from_utf8_lossy(&out.stderr).trim(),
            script.trim()
        )))
    }
}

/// Whether `nft list table FAMILY zos` finds the table.
fn table_exists(family: &str) -> Result<bool> {
    let status = Command::new("nft")
        .args(["list", "table", family, TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| Error::io("running nft (install nftables with scripts/setup)", e))?;
    Ok(status.success())
}

/// Makes whichever base table is missing (under a host-wide lock, so two managers never
/// make one twice). One that exists is kept with its elements: the VMs running now need them.
pub fn ensure_base() -> Result<()> {
    let _lock = crate::lock::exclusive("rules.lock")?;
    let mut script = String::new();
    for family in ["inet", "bridge"] {
        if !table_exists(family)? {
            script.push_str(&base(family));
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    nft(&script)
}

/// Adds an interface's elements (its MAC and address on its tap, its published ports).
/// Elements left by an earlier run of the same interface are replaced.
pub fn add(iface: &Interface) -> Result<()> {
    remove(iface);
    let script: String = elements(iface)
        .iter()
        .map(|(set, e)| format!("add element {set} {{ {e} }}\n"))
        .collect();
    nft(&script)
}

/// Removes an interface's elements; those already gone are skipped (each is its own
/// transaction, so one missing does not keep the others).
pub fn remove(iface: &Interface) {
    for (set, e) in elements(iface) {
        let _ = nft(&format!("delete element {set} {{ {} }}\n", key(&e)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_name_the_tap_and_ports() {
        let mut iface = crate::lease::tests_interface();
        iface.ports = vec![
            PortMap::parse("8080:80").unwrap(),
            PortMap::parse("127.0.0.1:5353:53/udp").unwrap(),
        ];
        let els = elements(&iface);
        assert_eq!(els[0].1, "\"zt0a4d0005\" . 02:5a:0a:4d:00:05");
        assert_eq!(els[2].1, "tcp . 8080 : 10.77.0.5 . 80");
        assert_eq!(key(&els[3].1), "127.0.0.1 . udp . 5353");
    }
}
