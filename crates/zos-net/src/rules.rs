//! The nftables rules, generated here and nowhere else, applied with `nft -f -` (one atomic
//! transaction per call).
//!
//! Two tables named [`TABLE`] hold everything zos adds: `inet zos` (published ports as DNAT
//! maps, masquerade of the local subnet) and `bridge zos` (anti-spoof: a frame from a tap
//! must carry that tap's MAC and IPv4 address, ARP included; other protocols are dropped).
//! The chains' rules are written afresh in one transaction at each plug (idempotent, so
//! rules are never doubled and a newer zos brings them up to date); a VM is only elements in
//! the sets and maps, so adding and removing one never touches a rule, and
//! `nft delete table inet zos` / `nft delete table bridge zos` remove all of it.

use crate::{local, Error, Interface, PortMap, Result};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The name of zos's tables (one `inet`, one `bridge`).
pub const TABLE: &str = "zos";
/// Every tap zos makes starts with this (the filters match taps by it).
pub const TAP_PREFIX: &str = "zt";

/// A base chain: its name, its header (type, hook, priority, policy) and its rules.
struct Chain {
    name: &'static str,
    header: &'static str,
    rules: Vec<String>,
}

/// One table zos owns: its family, sets and maps, base chains.
struct Table {
    family: &'static str,
    sets: &'static [&'static str],
    chains: Vec<Chain>,
}

/// The prefix of the host ends of private networks' uplinks (see [`crate::private`]).
pub const UPLINK_PREFIX: &str = "zup";

const NAT_PREROUTING: &str = "type nat hook prerouting priority dstnat; policy accept;";
const NAT_POSTROUTING: &str = "type nat hook postrouting priority srcnat; policy accept;";
const FILTER_FORWARD: &str = "type filter hook forward priority filter; policy accept;";
const FILTER_INPUT: &str = "type filter hook input priority filter; policy accept;";

/// The `bridge` table: a frame from a tap must carry its tap's MAC and IPv4 address, ARP
/// included, and be IPv4 or ARP. The same on the host's local bridge and in every network.
fn bridge_table() -> Table {
    let tap = format!("\"{TAP_PREFIX}*\"");
    Table {
        family: "bridge",
        sets: &[
            "set macs { type ifname . ether_addr; }",
            "set ips { type ifname . ipv4_addr; }",
            "set ips6 { type ifname . ipv6_addr; }",
        ],
        chains: vec![Chain {
            name: "prerouting",
            header: "type filter hook prerouting priority -300; policy accept;",
            rules: vec![
                format!("iifname {tap} iifname . ether saddr != @macs drop"),
                format!("iifname {tap} ether type ip iifname . ip saddr != @ips drop"),
                format!("iifname {tap} ether type arp iifname . arp saddr ip != @ips drop"),
                format!("iifname {tap} ether type arp iifname . arp saddr ether != @macs drop"),
                // IPv6 from its link-local or ULA address only (no DAD probes from `::`,
                // which only makes duplicate detection pass).
                format!("iifname {tap} ether type ip6 iifname . ip6 saddr != @ips6 drop"),
                format!("iifname {tap} ether type != {{ ip, arp, ip6 }} drop"),
            ],
        }],
    }
}

/// The host's tables: NAT and published ports of the local network, and what keeps private
/// networks apart (from each other, from the local network and from the host itself).
fn host_tables() -> Vec<Table> {
    let subnet = local::cidr();
    let uplinks = format!("\"{UPLINK_PREFIX}*\"");
    let links = crate::private::LINKS_CIDR;
    let bridge = local::BRIDGE;
    let dnat = vec![
        "fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip"
            .to_string(),
        "fib daddr type local dnat ip to meta l4proto . th dport map @ports_any".to_string(),
    ];
    let inet = Table {
        family: "inet",
        sets: &[
            "map ports_any { type inet_proto . inet_service : ipv4_addr . inet_service; }",
            "map ports_ip { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }",
        ],
        chains: vec![
            Chain {
                name: "prerouting",
                header: NAT_PREROUTING,
                rules: dnat.clone(),
            },
            Chain {
                name: "output",
                header: "type nat hook output priority -100; policy accept;",
                rules: dnat,
            },
            Chain {
                name: "postrouting",
                header: NAT_POSTROUTING,
                rules: vec![
                    // Egress: the guests' traffic leaves with the host's address.
                    format!("ip saddr {subnet} ip daddr != {subnet} masquerade"),
                    // A guest reaching another's published port through a host address:
                    // the answer must come back through the host to be un-DNATed.
                    format!("ct status dnat ip saddr {subnet} ip daddr {subnet} masquerade"),
                    // 127.0.0.1:PORT forwarded to a guest, which cannot answer loopback.
                    format!("oifname \"{bridge}\" ip saddr 127.0.0.0/8 masquerade"),
                    format!("oifname {uplinks} ip saddr 127.0.0.0/8 masquerade"),
                    // Private networks' egress, already NATed to their uplink address.
                    format!("ip saddr {links} oifname != {uplinks} masquerade"),
                ],
            },
            Chain {
                name: "forward",
                header: FILTER_FORWARD,
                rules: vec![
                    // Published ports are open to all, machines of other networks included.
                    "ct status dnat accept".to_string(),
                    // Otherwise networks never reach each other, nor the local network,
                    // through the host.
                    format!("iifname {uplinks} oifname {uplinks} drop"),
                    format!("iifname {uplinks} oifname \"{bridge}\" drop"),
                    format!("iifname \"{bridge}\" oifname {uplinks} drop"),
                ],
            },
            Chain {
                name: "input",
                header: FILTER_INPUT,
                rules: vec![
                    // Machines of private networks do not reach the host's own addresses.
                    format!("iifname {uplinks} ct state established,related accept"),
                    format!("iifname {uplinks} drop"),
                ],
            },
        ],
    };
    vec![inet, bridge_table()]
}

/// The tables inside a private network's namespace: the subnet masqueraded to the uplink
/// (so networks with the same range never meet on the host), egress refused when the
/// network has none, and the namespace itself closed to its machines but for DNS and ICMP.
fn network_tables(net: &crate::private::PrivateNet) -> Vec<Table> {
    let br = crate::private::BRIDGE;
    let up = crate::private::UPLINK;
    let subnet = net.cidr();
    let mut forward = Vec::new();
    if !net.egress {
        forward.push(format!(
            "iifname \"{br}\" oifname \"{up}\" ct state new drop"
        ));
    }
    let mut input = vec![
        "ct state established,related accept".to_string(),
        "iifname \"lo\" accept".to_string(),
        format!("iifname \"{br}\" meta l4proto {{ icmp, ipv6-icmp }} accept"),
        format!("iifname \"{br}\" meta l4proto {{ tcp, udp }} th dport 53 accept"),
    ];
    if let Some(wg) = &net.wireguard {
        // The network's WireGuard, forwarded here by the host.
        input.push(format!(
            "iifname \"{up}\" udp dport {} accept",
            wg.listen_port
        ));
    }
    input.push("drop".to_string());
    let inet = Table {
        family: "inet",
        sets: &["map ports { type inet_proto . inet_service : ipv4_addr . inet_service; }"],
        chains: vec![
            Chain {
                name: "prerouting",
                header: NAT_PREROUTING,
                // Published ports, sent here by the host (see `forward_elements`).
                rules: vec![format!(
                    "iifname \"{up}\" dnat ip to meta l4proto . th dport map @ports"
                )],
            },
            Chain {
                name: "postrouting",
                header: NAT_POSTROUTING,
                rules: vec![format!("oifname \"{up}\" ip saddr {subnet} masquerade")],
            },
            Chain {
                name: "forward",
                header: FILTER_FORWARD,
                rules: forward,
            },
            Chain {
                name: "input",
                header: FILTER_INPUT,
                rules: input,
            },
        ],
    };
    vec![inet, bridge_table()]
}

/// The script that makes `tables` what this version wants, idempotently: tables, sets and
/// chains are declared (nft's declarations add only what is missing, and keep the elements
/// of what exists), each chain is flushed and its rules written again, all in one
/// transaction. So the running VMs keep their elements, and a zos with other rules brings
/// the chains up to date.
fn script(tables: &[Table]) -> String {
    let mut out = String::new();
    for t in tables {
        let family = t.family;
        out.push_str(&format!("table {family} {TABLE} {{\n"));
        for set in t.sets {
            out.push_str(&format!("  {set}\n"));
        }
        for c in &t.chains {
            out.push_str(&format!("  chain {} {{ {} }}\n", c.name, c.header));
        }
        out.push_str("}\n");
        for c in &t.chains {
            out.push_str(&format!("flush chain {family} {TABLE} {}\n", c.name));
            for rule in &c.rules {
                out.push_str(&format!("add rule {family} {TABLE} {} {rule}\n", c.name));
            }
        }
    }
    out
}

/// Brings the host's tables up to date (see `script`), under the host-wide rules lock.
pub fn ensure_host() -> Result<()> {
    let _lock = crate::lock::exclusive("rules.lock")?;
    nft(&script(&host_tables()))
}

/// Writes a private network's tables; run inside its namespace.
pub(crate) fn apply_network(net: &crate::private::PrivateNet) -> Result<()> {
    nft(&script(&network_tables(net)))
}

/// The elements one interface adds where it lives (the host for the local network, its
/// namespace for a private one): (set or map, element), each as nft writes it.
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
    // Only a guest with a ULA speaks IPv6: its link-local address (for neighbour
    // discovery) and its ULA.
    if let Some(ula) = iface.ula {
        for addr in iface.link_local().into_iter().chain([ula]) {
            out.push((
                format!("bridge {TABLE} ips6"),
                format!("\"{tap}\" . {addr}"),
            ));
        }
    }
    for p in &iface.ports {
        let to = format!("{} . {}", iface.ip, p.guest_port);
        out.push(match iface.netns {
            // In a namespace, what its uplink receives on the host port.
            Some(_) => (
                format!("inet {TABLE} ports"),
                format!("{} . {} : {to}", p.proto.as_str(), p.host_port),
            ),
            None => host_port_element(p, &to),
        });
    }
    out
}

/// The elements on the host for ports of a private network: each host port sent on to its
/// network's uplink address (`ns_addr`), the same port, where [`elements`] takes it on to
/// the machine (or where the network's WireGuard listens).
fn forward_elements(ports: &[PortMap], ns_addr: Ipv4Addr) -> Vec<(String, String)> {
    ports
        .iter()
        .map(|p| host_port_element(p, &format!("{ns_addr} . {}", p.host_port)))
        .collect()
}

/// A host port's element in the host's maps, sending it to `to` (`ADDRESS . PORT`).
fn host_port_element(p: &PortMap, to: &str) -> (String, String) {
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

/// Adds `elements` after `base` (the tables' script, or nothing) in one `nft` transaction,
/// under a host-wide lock so two managers never interleave. Elements an earlier run left
/// that disagree make it fail: the elements are removed and it is tried once more.
fn add_elements(base: String, elements: &[(String, String)], needles: &[String]) -> Result<()> {
    let _lock = crate::lock::exclusive("rules.lock")?;
    let mut script = base;
    for (set, e) in elements {
        script.push_str(&format!("add element {set} {{ {e} }}\n"));
    }
    if nft(&script).is_ok() {
        return Ok(());
    }
    remove_elements(elements, needles);
    nft(&script)
}

/// Removes `elements`; those already gone are skipped (each is its own transaction, so one
/// missing does not keep the others). When the ruleset names none of `needles`, there is
/// nothing to remove and one listing is all it costs: this runs before every start.
fn remove_elements(elements: &[(String, String)], needles: &[String]) {
    let listed = Command::new("nft").args(["list", "ruleset"]).output();
    if let Ok(out) = listed {
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && !needles.iter().any(|n| text.contains(n.as_str())) {
            return;
        }
    }
    for (set, e) in elements {
        let _ = nft(&format!("delete element {set} {{ {} }}\n", key(e)));
    }
}

/// What names an interface in the ruleset: its tap and its address.
fn needles(iface: &Interface) -> Vec<String> {
    vec![iface.tap.clone(), iface.ip.to_string()]
}

/// Adds an interface's elements where it lives (its MAC and address on its tap, its
/// published ports). On the local network the host's tables are brought up to date in the
/// same transaction (see `script`); a private network's were written when the network was
/// made (see [`crate::private::ensure`]), and this runs inside its namespace.
pub fn add(iface: &Interface) -> Result<()> {
    let base = match iface.netns {
        Some(_) => String::new(),
        None => script(&host_tables()),
    };
    add_elements(base, &elements(iface), &needles(iface))
}

/// Removes what [`add`] added.
pub fn remove(iface: &Interface) {
    remove_elements(&elements(iface), &needles(iface));
}

/// Sends host ports of a private network to its uplink address `ns_addr` (on the host,
/// with its tables brought up to date).
pub fn add_forwards(ports: &[PortMap], ns_addr: Ipv4Addr) -> Result<()> {
    let elements = forward_elements(ports, ns_addr);
    if elements.is_empty() {
        return Ok(());
    }
    add_elements(
        script(&host_tables()),
        &elements,
        &forward_needles(ports, ns_addr),
    )
}

/// Removes what [`add_forwards`] added.
pub fn remove_forwards(ports: &[PortMap], ns_addr: Ipv4Addr) {
    let elements = forward_elements(ports, ns_addr);
    if !elements.is_empty() {
        remove_elements(&elements, &forward_needles(ports, ns_addr));
    }
}

fn forward_needles(ports: &[PortMap], ns_addr: Ipv4Addr) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("{ns_addr} . {}", p.host_port))
        .collect()
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
