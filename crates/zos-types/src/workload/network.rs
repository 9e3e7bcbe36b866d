//! `network`: a private IPv4 network that zmachines of the same deployment join. The
//! owner picks an `ip_range` (a /16) shared by all nodes of the network, and this node's
//! `subnet` (a /24 inside it); the node serves the subnet's `.1` as the gateway.

use super::{Workload, WorkloadData, WorkloadName, WorkloadSpec};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The prefix length of a network's `ip_range`.
pub const RANGE_PREFIX: u8 = 16;
/// The prefix length of a node's `subnet`.
pub const SUBNET_PREFIX: u8 = 24;

/// A private network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The whole network's addresses: an IPv4 /16, e.g. `10.20.0.0/16`.
    pub ip_range: Ipv4Net,
    /// This node's part of it: a /24 inside `ip_range`, e.g. `10.20.1.0/24`.
    pub subnet: Ipv4Net,
    /// Whether machines on it may reach the outside through the node (masqueraded).
    #[serde(default = "default_egress")]
    pub egress: bool,
    /// WireGuard to other nodes' parts of the network and to users' machines: the node
    /// makes the network's key itself (see `NetworkResult::wireguard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuard>,
}

/// The network's WireGuard link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    /// The other ends: other nodes' subnets and users' machines.
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// One WireGuard peer of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The addresses behind it inside `ip_range` (another node's /24, a user's machine).
    pub subnet: Ipv4Net,
    /// Its WireGuard public key (base64, as `wg pubkey` prints it).
    pub public_key: String,
    /// What it may send from and is routed to; left out, its `subnet`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<Ipv4Net>,
    /// Where to reach it, `ADDRESS:PORT`; left out, it reaches this node first (a laptop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<std::net::SocketAddr>,
}

impl Peer {
    /// The addresses routed to it: `allowed_ips`, or its subnet.
    pub fn routed(&self) -> Vec<Ipv4Net> {
        if self.allowed_ips.is_empty() {
            vec![self.subnet]
        } else {
            self.allowed_ips.clone()
        }
    }
}

/// Decodes a WireGuard key (base64 of 32 bytes).
pub fn wireguard_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    bytes.try_into().ok()
}

fn default_egress() -> bool {
    true
}

impl Network {
    /// The gateway the node serves on the subnet: its `.1`.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    /// Whether `ip` may be given to a machine: inside the subnet, and neither the network
    /// address, the gateway nor the broadcast address.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip)
            && ip != self.subnet.network()
            && ip != self.gateway()
            && ip != self.subnet.broadcast()
    }

    /// Every address a machine may get, lowest first (the order free ones are handed out).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.subnet.hosts().filter(|ip| self.assignable(*ip))
    }

    /// The address given to a machine that asks for none: the lowest assignable one not in
    /// `taken`; `None` when the subnet is full.
    pub fn first_free(&self, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.hosts().find(|ip| !taken.contains(ip))
    }

    /// The network's IPv6 ULA /64 on this node: `fd` and 40 bits of SHA-256 of the owner and
    /// `ip_range` (so one network has one /48 on every node it spans, RFC 4193's random
    /// global ID made reproducible), then the subnet's third octet as subnet ID.
    pub fn ula_prefix(&self, owner: &crate::PublicKey) -> Ipv6Net {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"zos-ula-v1\n");
        h.update(owner.to_string().as_bytes());
        h.update(self.ip_range.to_string().as_bytes());
        let d = h.finalize();
        let mut bytes = [0u8; 16];
        bytes[0] = 0xfd;
        bytes[1..6].copy_from_slice(&d[..5]);
        bytes[7] = self.subnet.network().octets()[2];
        Ipv6Net::new(Ipv6Addr::from(bytes), 64).unwrap_or_default()
    }

    /// The ULA that goes with IPv4 address `ip` of the subnet: the same last byte in
    /// [`Network::ula_prefix`] (so the gateway, .1, is `…::1`).
    pub fn ula_of(&self, owner: &crate::PublicKey, ip: Ipv4Addr) -> Ipv6Addr {
        let mut bytes = self.ula_prefix(owner).network().octets();
        bytes[15] = ip.octets()[3];
        Ipv6Addr::from(bytes)
    }

    /// Whether this network's `ip_range` shares any address with `other`'s: one owner's
    /// networks on a node must not, or the routes between them would be ambiguous.
    pub fn overlaps(&self, other: &Network) -> bool {
        self.ip_range.contains(&other.ip_range.network())
            || other.ip_range.contains(&self.ip_range.network())
    }
}

impl WorkloadData for Network {
    fn problems(&self, deployment: &[Workload]) -> Vec<String> {
        let mut bad = Vec::new();
        // A machine may join several networks of its deployment: their ranges must not
        // share addresses, or its routes would be ambiguous.
        let overlapping = deployment.iter().filter_map(|w| match &w.spec {
            WorkloadSpec::Network(n) if !std::ptr::eq(n, self) && n.overlaps(self) => {
                Some(w.name.as_str())
            }
            _ => None,
        });
        for other in overlapping {
            bad.push(format!(
                "ip_range {} overlaps network {other:?}'s: give each network of a deployment \
                 its own range",
                self.ip_range
            ));
        }
        let range = self.ip_range;
        if range.prefix_len() != RANGE_PREFIX || range != range.trunc() {
            bad.push(format!(
                "ip_range {range} must be an IPv4 /{RANGE_PREFIX} network, e.g. 10.20.0.0/16"
            ));
        }
        let subnet = self.subnet;
        if subnet.prefix_len() != SUBNET_PREFIX || subnet != subnet.trunc() {
            bad.push(format!(
                "subnet {subnet} must be an IPv4 /{SUBNET_PREFIX} network, e.g. 10.20.1.0/24"
            ));
        } else if !range.contains(&subnet) {
            bad.push(format!("subnet {subnet} is not inside ip_range {range}"));
        }
        let peers = self.wireguard.as_ref().map_or(&[][..], |w| &w.peers[..]);
        for (i, p) in peers.iter().enumerate() {
            let place = format!("wireguard.peers[{i}]");
            if wireguard_key(&p.public_key).is_none() {
                bad.push(format!(
                    "{place}: public_key {:?} is not a WireGuard key (base64 of 32 bytes, as \
                     `wg pubkey` prints)",
                    p.public_key
                ));
            }
            if !range.contains(&p.subnet) {
                bad.push(format!(
                    "{place}: subnet {} is not inside ip_range {range}",
                    p.subnet
                ));
            }
            let mine = |n: &Ipv4Net| n.contains(&subnet.network()) || subnet.contains(&n.network());
            if p.routed().iter().any(mine) {
                bad.push(format!(
                    "{place}: its addresses overlap this node's subnet {subnet}"
                ));
            }
            let clash = peers[..i].iter().position(|q| {
                q.routed().iter().any(|a| {
                    p.routed()
                        .iter()
                        .any(|b| a.contains(&b.network()) || b.contains(&a.network()))
                })
            });
            if let Some(j) = clash {
                bad.push(format!(
                    "{place}: its addresses overlap those of wireguard.peers[{j}]"
                ));
            }
        }
        bad
    }
}

/// A zmachine's place on the networks of its deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineNetwork {
    /// The networks it joins, one interface each, in guest order (`eth0`, `eth1`, ...).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
}

impl MachineNetwork {
    /// Whether nothing is asked (the field is left out when serialized).
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
    }

    /// The rules for the interfaces; `deployment` holds the networks they name.
    pub(super) fn problems(&self, deployment: &[Workload]) -> Vec<String> {
        let mut bad = Vec::new();
        let mut joined = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let place = format!("network.interfaces[{i}]");
            let name = iface.network.as_str();
            if joined.contains(&name) {
                bad.push(format!("{place}: network {name:?} is joined twice"));
            }
            joined.push(name);
            let Some(net) = network_named(deployment, &iface.network) else {
                bad.push(format!(
                    "{place}: network {name:?} is not a network workload in this deployment"
                ));
                continue;
            };
            for alias in &iface.aliases {
                if !is_label(alias) {
                    bad.push(format!(
                        "{place}: alias {alias:?} must be one DNS label: 1 to 63 lowercase \
                         letters, digits and '-', not at either end"
                    ));
                } else if machine_on(deployment, &iface.network, alias) {
                    bad.push(format!(
                        "{place}: alias {alias:?} is the name of a machine on network {name:?}"
                    ));
                }
            }
            if let Some(ip) = iface.ip {
                if asked_by_machines(deployment, &iface.network, ip) > 1 {
                    bad.push(format!(
                        "{place}: ip {ip} on network {name:?} is asked by more than one zmachine"
                    ));
                }
                if !net.assignable(ip) {
                    bad.push(format!(
                        "{place}: ip {ip} must be inside subnet {} and not its .0, .1 (the gateway) or .255",
                        net.subnet
                    ));
                }
            }
        }
        bad
    }
}

/// Whether a zmachine of `deployment` on `network` resolves as `name` (its workload name,
/// `_` written `-`).
fn machine_on(deployment: &[Workload], network: &WorkloadName, name: &str) -> bool {
    deployment.iter().any(|w| match &w.spec {
        WorkloadSpec::Zmachine(m) => {
            w.name.as_str().replace('_', "-") == name
                && m.network.interfaces.iter().any(|i| &i.network == network)
        }
        _ => false,
    })
}

/// How many interfaces of the deployment's zmachines ask for `ip` on `network`.
fn asked_by_machines(deployment: &[Workload], network: &WorkloadName, ip: Ipv4Addr) -> usize {
    deployment
        .iter()
        .filter_map(|w| match &w.spec {
            WorkloadSpec::Zmachine(m) => Some(&m.network.interfaces),
            _ => None,
        })
        .flatten()
        .filter(|i| &i.network == network && i.ip == Some(ip))
        .count()
}

/// The network workload of `deployment` called `name`.
pub fn network_named<'a>(deployment: &'a [Workload], name: &WorkloadName) -> Option<&'a Network> {
    deployment.iter().find_map(|w| match &w.spec {
        WorkloadSpec::Network(n) if &w.name == name => Some(n),
        _ => None,
    })
}

/// The address of each interface of each zmachine of `deployment`, by (machine, network):
/// what it asks for; else what its stored result shows (so an address, once given, stays
/// across passes and restarts) if no one asks for it; else the lowest free one, machines
/// taken in deployment order. A machine whose subnet is full has no entry. Every call on
/// the same deployment gives the same answer, so machines converged one by one agree.
pub fn addresses(deployment: &[Workload]) -> BTreeMap<(String, String), Ipv4Addr> {
    let machines: Vec<(&Workload, &Interface)> = deployment
        .iter()
        .filter_map(|w| match &w.spec {
            WorkloadSpec::Zmachine(m) => Some((w, &m.network.interfaces)),
            _ => None,
        })
        .flat_map(|(w, ifaces)| ifaces.iter().map(move |i| (w, i)))
        .collect();
    let mut out = BTreeMap::new();
    let mut taken: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let key = |w: &Workload, i: &Interface| (w.name.to_string(), i.network.to_string());
    for (w, i) in &machines {
        if let Some(ip) = i.ip {
            taken.entry(i.network.as_str()).or_default().insert(ip);
            out.insert(key(w, i), ip);
        }
    }
    let mut unplaced = Vec::new();
    for (w, i) in machines.iter().filter(|(_, i)| i.ip.is_none()) {
        let Some(net) = network_named(deployment, &i.network) else {
            continue;
        };
        let kept = held_addresses(w)
            .into_iter()
            .find(|a| a.network == i.network)
            .map(|a| a.ip)
            .filter(|ip| net.assignable(*ip));
        let used = taken.entry(i.network.as_str()).or_default();
        match kept {
            Some(ip) if used.insert(ip) => {
                out.insert(key(w, i), ip);
            }
            _ => unplaced.push((*w, *i, net)),
        }
    }
    for (w, i, net) in unplaced {
        let used = taken.entry(i.network.as_str()).or_default();
        if let Some(ip) = net.first_free(used) {
            used.insert(ip);
            out.insert(key(w, i), ip);
        }
    }
    out
}

/// The addresses a zmachine's stored result lists (none if it has no result or lists none).
pub fn held_addresses(w: &Workload) -> Vec<MachineAddress> {
    w.result
        .as_ref()
        .and_then(|r| r.data.get("addresses"))
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default()
}

/// One interface of a zmachine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// The network workload, in the same deployment.
    pub network: WorkloadName,
    /// The address to take; left out, the node gives the lowest free one of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// More names the network's resolver answers with this address, besides the machine's
    /// own (and `NAME.DEPLOYMENT.internal` for each). Machines may share one: the resolver
    /// then answers with all of them, as a Kubernetes Service's name does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Whether `name` is one DNS label: 1 to 63 lowercase letters, digits and `-`, not at
/// either end.
fn is_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A network's result data: where machines find it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkResult {
    /// The node's address on the subnet, the machines' default route.
    pub gateway: Ipv4Addr,
    /// This node's subnet.
    pub subnet: Ipv4Net,
    /// The node's end of the network's WireGuard link, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuardEnd>,
}

/// A node's end of a network's WireGuard link: what its peers put in their configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireGuardEnd {
    /// The network's public key on this node (base64).
    pub public_key: String,
    /// The UDP port it listens on, on every address of the node.
    pub listen_port: u16,
    /// `ADDRESS:PORT` to reach it, when the node's config names its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// An address a zmachine got, as listed in its result data under `addresses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineAddress {
    /// The network workload.
    pub network: WorkloadName,
    /// The address, asked for or assigned.
    pub ip: Ipv4Addr,
    /// Its IPv6 ULA on the network (see [`Network::ula_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ula: Option<Ipv6Addr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;

    fn net(range: &str, subnet: &str) -> Network {
        serde_json::from_value(serde_json::json!({"ip_range": range, "subnet": subnet}))
            .expect("a network")
    }

    fn workload(name: &str, spec: WorkloadSpec) -> Workload {
        Workload {
            name: WorkloadName::try_from(name.to_string()).expect("a name"),
            version: 0,
            description: String::new(),
            metadata: String::new(),
            spec,
            result: None,
        }
    }

    fn iface(network: &str, ip: Option<&str>) -> Interface {
        Interface {
            network: WorkloadName::try_from(network.to_string()).expect("a name"),
            ip: ip.map(|s| s.parse().expect("an address")),
            aliases: Vec::new(),
        }
    }

    #[test]
    fn egress_defaults_on_and_gateway_is_dot_one() {
        let n = net("10.20.0.0/16", "10.20.3.0/24");
        assert!(n.egress);
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 20, 3, 1));
        assert!(n.problems(&[]).is_empty(), "{:?}", n.problems(&[]));
        let first: Vec<Ipv4Addr> = n.hosts().take(2).collect();
        assert_eq!(
            first,
            [Ipv4Addr::new(10, 20, 3, 2), Ipv4Addr::new(10, 20, 3, 3)]
        );
        assert_eq!(n.hosts().count(), 253);
    }

    #[test]
    fn free_addresses_are_handed_out_lowest_first() {
        let n = net("10.20.0.0/16", "10.20.1.0/24");
        let mut taken = BTreeSet::new();
        assert_eq!(n.first_free(&taken), Some(Ipv4Addr::new(10, 20, 1, 2)));
        taken.insert(Ipv4Addr::new(10, 20, 1, 2));
        taken.insert(Ipv4Addr::new(10, 20, 1, 4));
        assert_eq!(n.first_free(&taken), Some(Ipv4Addr::new(10, 20, 1, 3)));
        let full: BTreeSet<Ipv4Addr> = n.hosts().collect();
        assert_eq!(n.first_free(&full), None);
    }

    #[test]
    fn overlap_is_any_shared_address() {
        let a = net("10.20.0.0/16", "10.20.1.0/24");
        assert!(a.overlaps(&net("10.20.0.0/16", "10.20.2.0/24")));
        assert!(!a.overlaps(&net("10.21.0.0/16", "10.21.1.0/24")));
        let mut wide = a.clone();
        wide.ip_range = "10.0.0.0/8".parse().expect("a prefix");
        assert!(a.overlaps(&wide) && wide.overlaps(&a));
    }

    #[test]
    fn two_machines_asking_one_ip_are_both_told() {
        let machine = |ip: &str| {
            let mut m: crate::ZMachine =
                serde_json::from_str(r#"{"flist":"/a.fl"}"#).expect("a zmachine");
            m.network.interfaces.push(iface("lan", Some(ip)));
            WorkloadSpec::Zmachine(m)
        };
        let deployment = [
            workload(
                "lan",
                WorkloadSpec::Network(net("10.20.0.0/16", "10.20.1.0/24")),
            ),
            workload("a", machine("10.20.1.9")),
            workload("b", machine("10.20.1.9")),
        ];
        let p = deployment[1].spec.problems(&deployment);
        assert_eq!(
            p,
            ["network.interfaces[0]: ip 10.20.1.9 on network \"lan\" is asked by more than one zmachine"]
        );
        let mut apart = deployment.clone();
        apart[2].spec = machine("10.20.1.10");
        assert!(apart[1].spec.problems(&apart).is_empty());
    }

    #[test]
    fn addresses_are_asked_kept_or_the_lowest_free() {
        let machine = |ip: Option<&str>| {
            let mut m: crate::ZMachine =
                serde_json::from_str(r#"{"flist":"/a.fl"}"#).expect("a zmachine");
            m.network.interfaces.push(iface("lan", ip));
            WorkloadSpec::Zmachine(m)
        };
        let mut d = vec![
            workload(
                "lan",
                WorkloadSpec::Network(net("10.20.0.0/16", "10.20.1.0/24")),
            ),
            workload("a", machine(None)),
            workload("b", machine(Some("10.20.1.2"))),
            workload("c", machine(None)),
        ];
        let ip = |d: &[Workload], m: &str| addresses(d)[&(m.to_string(), "lan".to_string())];
        let at = |s: &str| s.parse::<Ipv4Addr>().expect("an address");
        // Asked wins; the others take the lowest free, in order.
        assert_eq!(ip(&d, "b"), at("10.20.1.2"));
        assert_eq!(ip(&d, "a"), at("10.20.1.3"));
        assert_eq!(ip(&d, "c"), at("10.20.1.4"));
        // A held address stays, even where a lower one is free.
        d[3].result = Some(crate::WorkloadResult {
            state: crate::ResultState::Ok,
            message: String::new(),
            data: serde_json::json!({"addresses": [{"network": "lan", "ip": "10.20.1.9"}]}),
            created: 0,
        });
        assert_eq!(ip(&d, "c"), at("10.20.1.9"));
        assert_eq!(ip(&d, "a"), at("10.20.1.3"));
    }

    #[test]
    fn aliases_are_labels_and_never_a_machines_name() {
        let machine = |aliases: &[&str]| {
            let mut m: crate::ZMachine =
                serde_json::from_str(r#"{"flist":"/a.fl"}"#).expect("a zmachine");
            let mut i = iface("lan", None);
            i.aliases = aliases.iter().map(|a| a.to_string()).collect();
            m.network.interfaces.push(i);
            WorkloadSpec::Zmachine(m)
        };
        let d = |a: &[&str], b: &[&str]| {
            vec![
                workload(
                    "lan",
                    WorkloadSpec::Network(net("10.20.0.0/16", "10.20.1.0/24")),
                ),
                workload("a", machine(a)),
                workload("b", machine(b)),
            ]
        };
        let problems = |d: &[Workload]| -> Vec<String> {
            d.iter()
                .flat_map(|w| match &w.spec {
                    WorkloadSpec::Zmachine(m) => m.network.problems(d),
                    _ => Vec::new(),
                })
                .collect()
        };
        // One name on two machines is what a Service is.
        assert!(problems(&d(&["web"], &["web"])).is_empty());
        let bad = problems(&d(&["Web", "-x", &"y".repeat(64)], &["a"]));
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert!(
            bad[0].contains("alias \"Web\" must be one DNS label"),
            "{bad:?}"
        );
        assert!(
            bad[3].contains("alias \"a\" is the name of a machine on network \"lan\""),
            "{bad:?}"
        );
    }

    #[test]
    fn ports_need_a_network_and_each_host_port_once() {
        let machine = |ports: serde_json::Value, joins: bool| {
            let mut m: crate::ZMachine =
                serde_json::from_value(serde_json::json!({"flist": "/a.fl", "ports": ports}))
                    .expect("a zmachine");
            if joins {
                m.network.interfaces.push(iface("lan", None));
            }
            WorkloadSpec::Zmachine(m)
        };
        let lan = workload(
            "lan",
            WorkloadSpec::Network(net("10.20.0.0/16", "10.20.1.0/24")),
        );
        let ok = [
            lan.clone(),
            workload(
                "a",
                machine(serde_json::json!([{"port": 80, "host_port": 8080}]), true),
            ),
            workload(
                "b",
                machine(serde_json::json!([{"port": 8080, "protocol": "udp"}]), true),
            ),
        ];
        assert!(
            ok[1].spec.problems(&ok).is_empty(),
            "{:?}",
            ok[1].spec.problems(&ok)
        );
        assert!(ok[2].spec.problems(&ok).is_empty());
        let clash = [
            lan,
            workload(
                "a",
                machine(serde_json::json!([{"port": 80, "host_port": 8080}]), true),
            ),
            workload("b", machine(serde_json::json!([{"port": 8080}]), false)),
        ];
        let p = clash[2].spec.problems(&clash);
        assert!(p.iter().any(|m| m.contains("join one")), "{p:?}");
        assert!(
            p.iter()
                .any(|m| m == "host port 8080/tcp is published twice in this deployment"),
            "{p:?}"
        );
        assert!(!clash[1].spec.problems(&clash).is_empty());
        let zero = [workload(
            "z",
            machine(serde_json::json!([{"port": 0}]), false),
        )];
        assert!(zero[0]
            .spec
            .problems(&zero)
            .iter()
            .any(|m| m.contains("1 to 65535")));
    }

    #[test]
    fn the_ula_is_one_48_per_network_and_owner_and_a_64_per_subnet() {
        let owner = crate::Keypair::from_seed(&[1; 32]).public();
        let other = crate::Keypair::from_seed(&[2; 32]).public();
        let a = net("10.20.0.0/16", "10.20.1.0/24");
        let b = net("10.20.0.0/16", "10.20.2.0/24");
        let pa = a.ula_prefix(&owner);
        assert_eq!(pa.prefix_len(), 64);
        assert_eq!(pa.network().octets()[0], 0xfd);
        // One /48 for the network on every node; its /64 per subnet.
        assert_eq!(
            pa.network().octets()[..6],
            b.ula_prefix(&owner).network().octets()[..6]
        );
        assert_ne!(pa, b.ula_prefix(&owner));
        assert_ne!(pa, a.ula_prefix(&other));
        let ula = a.ula_of(&owner, Ipv4Addr::new(10, 20, 1, 5));
        assert!(pa.contains(&ula));
        assert_eq!(ula.segments()[7], 5);
    }

    #[test]
    fn networks_of_one_deployment_must_not_overlap() {
        let d = [
            workload(
                "a",
                WorkloadSpec::Network(net("10.20.0.0/16", "10.20.1.0/24")),
            ),
            workload(
                "b",
                WorkloadSpec::Network(net("10.20.0.0/16", "10.20.2.0/24")),
            ),
            workload(
                "c",
                WorkloadSpec::Network(net("10.30.0.0/16", "10.30.2.0/24")),
            ),
        ];
        let p = d[0].spec.problems(&d);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("overlaps network \"b\""), "{p:?}");
        assert!(d[2].spec.problems(&d).is_empty());
    }

    #[test]
    fn ranges_of_the_wrong_size_or_outside_are_problems() {
        let p = net("10.20.0.0/8", "10.20.1.0/24").problems(&[]);
        assert!(
            p.iter().any(|m| m.contains("ip_range 10.20.0.0/8")),
            "{p:?}"
        );
        let p = net("10.20.1.0/16", "10.20.1.0/24").problems(&[]);
        assert!(
            p.iter().any(|m| m.contains("ip_range 10.20.1.0/16")),
            "{p:?}"
        );
        let p = net("10.20.0.0/16", "10.20.1.0/25").problems(&[]);
        assert!(p.iter().any(|m| m.contains("subnet 10.20.1.0/25")), "{p:?}");
        let p = net("10.20.0.0/16", "10.21.1.0/24").problems(&[]);
        assert!(p.iter().any(|m| m.contains("not inside ip_range")), "{p:?}");
    }

    #[test]
    fn wireguard_peers_need_good_keys_and_their_own_addresses() {
        let key = "yqtQfO+slSAdeu50WF6RCSrx6OXTk0FqEMYGOxn7lBY=";
        let with = |peers: serde_json::Value| -> Network {
            serde_json::from_value(serde_json::json!({"ip_range": "10.20.0.0/16",
                "subnet": "10.20.1.0/24", "wireguard": {"peers": peers}}))
            .expect("a network")
        };
        let good = with(serde_json::json!([
            {"subnet": "10.20.2.0/24", "public_key": key, "endpoint": "192.0.2.7:51820"},
            {"subnet": "10.20.200.0/24", "public_key": key}
        ]));
        assert!(good.problems(&[]).is_empty(), "{:?}", good.problems(&[]));
        let bad = with(serde_json::json!([
            {"subnet": "10.20.2.0/24", "public_key": "not-a-key"},
            {"subnet": "10.20.2.0/24", "public_key": key},
            {"subnet": "10.20.1.0/24", "public_key": key},
            {"subnet": "10.99.0.0/24", "public_key": key}
        ]));
        let p = bad.problems(&[]);
        for want in [
            "wireguard.peers[0]: public_key \"not-a-key\" is not a WireGuard key",
            "wireguard.peers[1]: its addresses overlap those of wireguard.peers[0]",
            "wireguard.peers[2]: its addresses overlap this node's subnet",
            "wireguard.peers[3]: subnet 10.99.0.0/24 is not inside ip_range",
        ] {
            assert!(p.iter().any(|m| m.starts_with(want)), "{want}: {p:?}");
        }
        let e = serde_json::from_value::<Network>(serde_json::json!({"ip_range": "10.20.0.0/16",
            "subnet": "10.20.1.0/24", "wireguard": {"peers": [{"subnet": "10.20.2.0/24",
            "public_key": key, "endpoint": "nowhere"}]}}))
        .expect_err("a bad endpoint");
        assert!(!e.to_string().is_empty());
        let e = serde_json::from_str::<Network>(r#"{"ip_range":"10.20.0.0","subnet":"x"}"#)
            .expect_err("not a prefix");
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn interfaces_name_networks_of_the_deployment_and_ips_in_their_subnet() {
        let deployment = [workload(
            "lan",
            WorkloadSpec::Network(net("10.20.0.0/16", "10.20.1.0/24")),
        )];
        let ok = MachineNetwork {
            interfaces: vec![iface("lan", Some("10.20.1.7"))],
        };
        assert!(ok.problems(&deployment).is_empty());
        let auto = MachineNetwork {
            interfaces: vec![iface("lan", None)],
        };
        assert!(auto.problems(&deployment).is_empty());

        let bad = MachineNetwork {
            interfaces: vec![
                iface("wan", None),
                iface("lan", Some("10.20.2.7")),
                iface("lan", Some("10.20.1.1")),
            ],
        };
        let p = bad.problems(&deployment);
        assert!(
            p[0].starts_with("network.interfaces[0]: network \"wan\" is not a network"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("network.interfaces[1]: ip 10.20.2.7"),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("joined twice")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("ip 10.20.1.1")), "{p:?}");
        for edge in ["10.20.1.0", "10.20.1.255"] {
            let m = MachineNetwork {
                interfaces: vec![iface("lan", Some(edge))],
            };
            assert_eq!(m.problems(&deployment).len(), 1, "{edge}");
        }
    }
}
