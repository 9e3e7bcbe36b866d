//! The nftables rules, built here and nowhere else as typed objects of the `nftables` crate
//! and applied as nft's JSON (`nft -j -f -`, one atomic transaction per call).
//!
//! Two tables named [`TABLE`] hold everything zos adds: `inet zos` (published ports as DNAT
//! maps, masquerade of the local subnet) and `bridge zos` (anti-spoof: a frame from a tap
//! must carry that tap's MAC and IPv4 address, ARP included; other protocols are dropped).
//! The chains' rules are written afresh in one transaction at each plug (idempotent, so
//! rules are never doubled and a newer zos brings them up to date); a VM is only elements in
//! the sets and maps, so adding and removing one never touches a rule, and
//! `nft delete table inet zos` / `nft delete table bridge zos` remove all of it.
//!
//! One thing stays nft text: declaring the DNAT maps, whose values are concatenations
//! (`ipv4_addr . inet_service`): nft before 1.1.0 (Debian 12 has 1.0.6) reads such a map
//! in JSON as a plain set, so they are declared with `nft -f -` just before the transaction
//! (a declaration only adds what is missing: the elements stay).

use crate::{local, Error, Interface, PortMap, Result};
use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem, CT,
};
use nftables::schema::{self, FlushObject, NfCmd, NfListObject, SetType, SetTypeValue};
use nftables::stmt::{Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The name of zos's tables (one `inet`, one `bridge`).
pub const TABLE: &str = "zos";
/// Every tap zos makes starts with this (the filters match taps by it).
pub const TAP_PREFIX: &str = "zt";
/// The prefix of the host ends of private networks' uplinks (see [`crate::private`]).
pub const UPLINK_PREFIX: &str = "zup";

/// Chain priorities, as nft names them.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;
/// The bridge family's earliest usual priority (`dstnat` there), before anything else.
const BRIDGE_FIRST: i32 = -300;

/// One rule: its statements, in order.
type Rule = Vec<Statement<'static>>;

/// A base chain (policy accept): its name, type, hook, priority and rules.
struct Chain {
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
    rules: Vec<Rule>,
}

/// A named set, or a map when `value` is not empty: key and value types.
struct SetDecl {
    name: &'static str,
    key: &'static [SetType],
    value: &'static [SetType],
}

/// One table zos owns: its family, sets and maps, base chains.
struct Table {
    family: NfFamily,
    sets: Vec<SetDecl>,
    chains: Vec<Chain>,
}

/// A string (an interface name, an address, a symbol like `tcp`).
fn text(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

/// A number (a port).
fn number(n: u16) -> Expression<'static> {
    Expression::Number(n.into())
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// A header field, e.g. `ip saddr` or `th dport`.
fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

/// `a . b . c`; one part alone is itself.
fn concat(mut parts: Vec<Expression<'static>>) -> Expression<'static> {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    Expression::Named(NamedExpression::Concat(parts))
}

/// A network, `a.b.c.d/len`.
fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(text(net.network().to_string())),
        len: net.prefix_len().into(),
    }))
}

/// An anonymous set of symbols, `{ a, b }`.
fn anonymous(items: &[&'static str]) -> Expression<'static> {
    let items = items.iter().map(|i| SetItem::Element(text(*i))).collect();
    Expression::Named(NamedExpression::Set(items))
}

/// A reference to a named set or map, `@name`.
fn named(set: &str) -> Expression<'static> {
    text(format!("@{set}"))
}

fn compare(
    op: Operator,
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    compare(Operator::EQ, left, right)
}

fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    compare(Operator::NEQ, left, right)
}

/// A flags match (`ct state new`): any of `right`'s bits set.
fn has(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    compare(Operator::IN, left, right)
}

/// `iifname NAME` (a trailing `*` matches a prefix).
fn iif(name: &str) -> Statement<'static> {
    eq(meta(MetaKey::Iifname), text(name))
}

/// `oifname NAME`.
fn oif(name: &str) -> Statement<'static> {
    eq(meta(MetaKey::Oifname), text(name))
}

const ACCEPT: Statement<'static> = Statement::Accept(None);
const DROP: Statement<'static> = Statement::Drop(None);
const MASQUERADE: Statement<'static> = Statement::Masquerade(None);

/// `dnat ip to KEY map @MAP`: the map gives address and port together.
fn dnat_map(key: Vec<Expression<'static>>, map: &str) -> Statement<'static> {
    let lookup = nftables::expr::Map {
        key: concat(key),
        data: named(map),
    };
    Statement::DNAT(Some(NAT {
        addr: Some(Expression::Named(NamedExpression::Map(Box::new(lookup)))),
        family: Some(NATFamily::IP),
        port: None,
        flags: None,
    }))
}

/// `fib daddr type local`: sent to one of this host's own addresses.
fn to_local() -> Statement<'static> {
    let fib = Fib {
        result: FibResult::Type,
        flags: [FibFlag::Daddr].into(),
    };
    eq(Expression::Named(NamedExpression::Fib(fib)), text("local"))
}

/// `ct state established,related`.
fn replies() -> Statement<'static> {
    has(
        ct("state"),
        Expression::List(vec![text("established"), text("related")]),
    )
}

/// A network written `a.b.c.d/len`, which the code defines.
fn net(cidr: &str) -> Result<Ipv4Net> {
    cidr.parse()
        .map_err(|e| Error::Invalid(format!("network {cidr:?}: {e}")))
}

/// A published port: protocol and port (the key of `ports_any` and of a namespace's `ports`).
const PROTO_PORT: &[SetType] = &[SetType::InetProto, SetType::InetService];
/// Where a published port goes.
const ADDR_PORT: &[SetType] = &[SetType::Ipv4Addr, SetType::InetService];

/// The `bridge` table: a frame from a tap must carry its tap's MAC and IPv4 address, ARP
/// included, and be IPv4 or ARP. The same on the host's local bridge and in every network.
fn bridge_table() -> Table {
    let tap = format!("{TAP_PREFIX}*");
    let from_tap = || iif(&tap);
    let ifname = || meta(MetaKey::Iifname);
    let ether_type = || field("ether", "type");
    let spoofed =
        |source: Expression<'static>, set: &str| ne(concat(vec![ifname(), source]), named(set));
    let set = |name: &'static str, key: &'static [SetType]| SetDecl {
        name,
        key,
        value: &[],
    };
    Table {
        family: NfFamily::Bridge,
        sets: vec![
            set("macs", &[SetType::Ifname, SetType::EtherAddr]),
            set("ips", &[SetType::Ifname, SetType::Ipv4Addr]),
            set("ips6", &[SetType::Ifname, SetType::Ipv6Addr]),
        ],
        chains: vec![Chain {
            name: "prerouting",
            kind: NfChainType::Filter,
            hook: NfHook::Prerouting,
            prio: BRIDGE_FIRST,
            rules: vec![
                vec![from_tap(), spoofed(field("ether", "saddr"), "macs"), DROP],
                vec![
                    from_tap(),
                    eq(ether_type(), text("ip")),
                    spoofed(field("ip", "saddr"), "ips"),
                    DROP,
                ],
                vec![
                    from_tap(),
                    eq(ether_type(), text("arp")),
                    spoofed(field("arp", "saddr ip"), "ips"),
                    DROP,
                ],
                vec![
                    from_tap(),
                    eq(ether_type(), text("arp")),
                    spoofed(field("arp", "saddr ether"), "macs"),
                    DROP,
                ],
                // IPv6 from its link-local or ULA address only (no DAD probes from `::`,
                // which only makes duplicate detection pass).
                vec![
                    from_tap(),
                    eq(ether_type(), text("ip6")),
                    spoofed(field("ip6", "saddr"), "ips6"),
                    DROP,
                ],
                vec![
                    from_tap(),
                    ne(ether_type(), anonymous(&["ip", "arp", "ip6"])),
                    DROP,
                ],
            ],
        }],
    }
}

/// The host's tables: NAT and published ports of the local network, and what keeps private
/// networks apart (from each other, from the local network and from the host itself).
fn host_tables() -> Result<Vec<Table>> {
    let subnet = prefix(net(&local::cidr())?);
    let links = prefix(net(crate::private::LINKS_CIDR)?);
    let uplinks = format!("{UPLINK_PREFIX}*");
    let bridge = local::BRIDGE;
    let saddr = || field("ip", "saddr");
    let daddr = || field("ip", "daddr");
    let loopback = prefix(net("127.0.0.0/8")?);
    let l4 = || meta(MetaKey::L4proto);
    let dport = || field("th", "dport");
    let dnat = vec![
        vec![
            to_local(),
            dnat_map(vec![daddr(), l4(), dport()], "ports_ip"),
        ],
        vec![to_local(), dnat_map(vec![l4(), dport()], "ports_any")],
    ];
    let inet = Table {
        family: NfFamily::INet,
        sets: vec![
            SetDecl {
                name: "ports_any",
                key: PROTO_PORT,
                value: ADDR_PORT,
            },
            SetDecl {
                name: "ports_ip",
                key: &[SetType::Ipv4Addr, SetType::InetProto, SetType::InetService],
                value: ADDR_PORT,
            },
        ],
        chains: vec![
            Chain {
                name: "prerouting",
                kind: NfChainType::NAT,
                hook: NfHook::Prerouting,
                prio: DSTNAT,
                rules: dnat.clone(),
            },
            Chain {
                name: "output",
                kind: NfChainType::NAT,
                hook: NfHook::Output,
                prio: DSTNAT,
                rules: dnat,
            },
            Chain {
                name: "postrouting",
                kind: NfChainType::NAT,
                hook: NfHook::Postrouting,
                prio: SRCNAT,
                rules: vec![
                    // Egress: the guests' traffic leaves with the host's address.
                    vec![
                        eq(saddr(), subnet.clone()),
                        ne(daddr(), subnet.clone()),
                        MASQUERADE,
                    ],
                    // A guest reaching another's published port through a host address:
                    // the answer must come back through the host to be un-DNATed.
                    vec![
                        has(ct("status"), text("dnat")),
                        eq(saddr(), subnet.clone()),
                        eq(daddr(), subnet),
                        MASQUERADE,
                    ],
                    // 127.0.0.1:PORT forwarded to a guest, which cannot answer loopback.
                    vec![oif(bridge), eq(saddr(), loopback.clone()), MASQUERADE],
                    vec![oif(&uplinks), eq(saddr(), loopback.clone()), MASQUERADE],
                    // Private networks' egress, already NATed to their uplink address.
                    vec![
                        eq(saddr(), links),
                        ne(meta(MetaKey::Oifname), text(&uplinks)),
                        MASQUERADE,
                    ],
                ],
            },
            Chain {
                name: "forward",
                kind: NfChainType::Filter,
                hook: NfHook::Forward,
                prio: FILTER,
                rules: vec![
                    // Published ports are open to all, machines of other networks included.
                    vec![has(ct("status"), text("dnat")), ACCEPT],
                    // Otherwise networks never reach each other, nor the local network,
                    // through the host.
                    vec![iif(&uplinks), oif(&uplinks), DROP],
                    vec![iif(&uplinks), oif(bridge), DROP],
                    vec![iif(bridge), oif(&uplinks), DROP],
                ],
            },
            Chain {
                name: "input",
                kind: NfChainType::Filter,
                hook: NfHook::Input,
                prio: FILTER,
                rules: vec![
                    // Machines of private networks do not reach the host's own addresses.
                    vec![iif(&uplinks), replies(), ACCEPT],
                    vec![iif(&uplinks), DROP],
                ],
            },
        ],
    };
    Ok(vec![inet, bridge_table()])
}

/// The tables inside a private network's namespace: the subnet masqueraded to the uplink
/// (so networks with the same range never meet on the host), egress refused when the
/// network has none, and the namespace itself closed to its machines but for DNS and ICMP.
fn network_tables(network: &crate::private::PrivateNet) -> Result<Vec<Table>> {
    let br = crate::private::BRIDGE;
    let up = crate::private::UPLINK;
    let subnet = Ipv4Net::new(network.gateway, network.prefix)
        .map_err(|e| Error::Invalid(format!("network {}: {e}", network.cidr())))?
        .trunc();
    let mut forward = Vec::new();
    if !network.egress {
        forward.push(vec![iif(br), oif(up), has(ct("state"), text("new")), DROP]);
    }
    let l4 = || meta(MetaKey::L4proto);
    let mut input = vec![
        vec![replies(), ACCEPT],
        vec![iif("lo"), ACCEPT],
        vec![iif(br), eq(l4(), anonymous(&["icmp", "ipv6-icmp"])), ACCEPT],
        vec![
            iif(br),
            eq(l4(), anonymous(&["tcp", "udp"])),
            eq(field("th", "dport"), number(53)),
            ACCEPT,
        ],
    ];
    if let Some(wg) = &network.wireguard {
        // The network's WireGuard, forwarded here by the host.
        input.push(vec![
            iif(up),
            eq(field("udp", "dport"), number(wg.listen_port)),
            ACCEPT,
        ]);
    }
    input.push(vec![DROP]);
    let inet = Table {
        family: NfFamily::INet,
        sets: vec![SetDecl {
            name: "ports",
            key: PROTO_PORT,
            value: ADDR_PORT,
        }],
        chains: vec![
            Chain {
                name: "prerouting",
                kind: NfChainType::NAT,
                hook: NfHook::Prerouting,
                prio: DSTNAT,
                // Published ports, sent here by the host (see `forward_elements`).
                rules: vec![vec![
                    iif(up),
                    dnat_map(vec![l4(), field("th", "dport")], "ports"),
                ]],
            },
            Chain {
                name: "postrouting",
                kind: NfChainType::NAT,
                hook: NfHook::Postrouting,
                prio: SRCNAT,
                rules: vec![vec![
                    oif(up),
                    eq(field("ip", "saddr"), prefix(subnet)),
                    MASQUERADE,
                ]],
            },
            Chain {
                name: "forward",
                kind: NfChainType::Filter,
                hook: NfHook::Forward,
                prio: FILTER,
                rules: forward,
            },
            Chain {
                name: "input",
                kind: NfChainType::Filter,
                hook: NfHook::Input,
                prio: FILTER,
                rules: input,
            },
        ],
    };
    Ok(vec![inet, bridge_table()])
}

/// A family as nft writes it.
fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// A type as nft writes it.
fn type_name(t: SetType) -> &'static str {
    match t {
        SetType::Ipv4Addr => "ipv4_addr",
        SetType::Ipv6Addr => "ipv6_addr",
        SetType::EtherAddr => "ether_addr",
        SetType::InetProto => "inet_proto",
        SetType::InetService => "inet_service",
        SetType::Mark => "mark",
        SetType::Ifname => "ifname",
    }
}

/// `a . b` of types.
fn type_names(types: &[SetType]) -> String {
    let names: Vec<&str> = types.iter().map(|t| type_name(*t)).collect();
    names.join(" . ")
}

/// The declarations of `tables`' maps as an nft script (see the module doc for why they
/// are text); empty when there is none.
fn map_script(tables: &[Table]) -> String {
    let mut out = String::new();
    for t in tables {
        let maps: Vec<&SetDecl> = t.sets.iter().filter(|s| !s.value.is_empty()).collect();
        if maps.is_empty() {
            continue;
        }
        out.push_str(&format!("table {} {TABLE} {{\n", family_name(t.family)));
        for m in maps {
            out.push_str(&format!(
                "  map {} {{ type {} : {}; }}\n",
                m.name,
                type_names(m.key),
                type_names(m.value)
            ));
        }
        out.push_str("}\n");
    }
    out
}

/// Declares `tables`' maps (see the module doc), keeping those that exist as they are.
fn declare_maps(tables: &[Table]) -> Result<()> {
    let script = map_script(tables);
    if script.is_empty() {
        return Ok(());
    }
    run_nft(&["-f", "-"], &script, &format!("rules: {}", script.trim()))
}

fn set_type(types: &'static [SetType]) -> SetTypeValue<'static> {
    match types {
        [one] => SetTypeValue::Single(*one),
        many => SetTypeValue::Concatenated(many.into()),
    }
}

fn chain_object(family: NfFamily, c: &Chain) -> schema::Chain<'static> {
    schema::Chain {
        family,
        table: TABLE.into(),
        name: c.name.into(),
        _type: Some(c.kind),
        hook: Some(c.hook),
        prio: Some(c.prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }
}

/// Adds to `batch` what makes `tables` what this version wants, idempotently: tables, sets
/// and chains are declared (nft's declarations add only what is missing, and keep the
/// elements of what exists), each chain is flushed and its rules written again. So the
/// running VMs keep their elements, and a zos with other rules brings the chains up to
/// date. The maps must be declared already (see [`declare_maps`]).
fn declare(tables: &[Table], batch: &mut Batch<'static>) {
    for t in tables {
        let family = t.family;
        batch.add(NfListObject::Table(schema::Table {
            family,
            name: TABLE.into(),
            handle: None,
        }));
        for s in t.sets.iter().filter(|s| s.value.is_empty()) {
            batch.add(NfListObject::Set(Box::new(schema::Set {
                family,
                table: TABLE.into(),
                name: s.name.into(),
                set_type: set_type(s.key),
                ..Default::default()
            })));
        }
        for c in &t.chains {
            batch.add(NfListObject::Chain(chain_object(family, c)));
        }
        for c in &t.chains {
            let name = schema::Chain {
                family,
                table: TABLE.into(),
                name: c.name.into(),
                ..Default::default()
            };
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(name)));
            for rule in &c.rules {
                batch.add(NfListObject::Rule(schema::Rule {
                    family,
                    table: TABLE.into(),
                    chain: c.name.into(),
                    expr: rule.clone().into(),
                    ..Default::default()
                }));
            }
        }
    }
}

/// Brings `tables` up to date (see [`declare`]) in one transaction, the maps declared
/// just before.
fn apply_tables(tables: &[Table]) -> Result<()> {
    declare_maps(tables)?;
    let mut batch = Batch::new();
    declare(tables, &mut batch);
    apply(batch, &describe(tables, &[]))
}

/// Brings the host's tables up to date, under the host-wide rules lock.
pub fn ensure_host() -> Result<()> {
    let _lock = crate::lock::exclusive("rules.lock")?;
    apply_tables(&host_tables()?)
}

/// Writes a private network's tables; run inside its namespace.
pub(crate) fn apply_network(net: &crate::private::PrivateNet) -> Result<()> {
    apply_tables(&network_tables(net)?)
}

/// One element of one of zos's sets or maps.
#[derive(Debug, Clone, PartialEq)]
struct Element {
    family: NfFamily,
    set: &'static str,
    key: Vec<Expression<'static>>,
    /// A map element's value; empty in a set.
    value: Vec<Expression<'static>>,
}

impl Element {
    /// The element as nft's JSON takes it: with its value to add, its key alone to delete.
    fn object(&self, with_value: bool) -> NfListObject<'static> {
        let key = concat(self.key.clone());
        let item = if with_value && !self.value.is_empty() {
            Expression::List(vec![key, concat(self.value.clone())])
        } else {
            key
        };
        NfListObject::Element(schema::Element {
            family: self.family,
            table: TABLE.into(),
            name: self.set.into(),
            elem: vec![item].into(),
        })
    }
}

/// A part of an element as nft writes it.
fn show(e: &Expression) -> String {
    match e {
        Expression::String(s) => s.to_string(),
        Expression::Number(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn show_all(parts: &[Expression]) -> String {
    let shown: Vec<String> = parts.iter().map(show).collect();
    shown.join(" . ")
}

/// `inet zos ports_any { tcp . 8080 : 10.77.0.5 . 80 }`, as in `nft add element`.
impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let family = family_name(self.family);
        write!(
            f,
            "{family} {TABLE} {} {{ {}",
            self.set,
            show_all(&self.key)
        )?;
        if !self.value.is_empty() {
            write!(f, " : {}", show_all(&self.value))?;
        }
        f.write_str(" }")
    }
}

/// The elements one interface adds where it lives (the host for the local network, its
/// namespace for a private one).
fn elements(iface: &Interface) -> Vec<Element> {
    let tap = || text(&iface.tap);
    let bridge = |set, address: String| Element {
        family: NfFamily::Bridge,
        set,
        key: vec![tap(), text(address)],
        value: Vec::new(),
    };
    let mut out = vec![
        bridge("macs", iface.mac.clone()),
        bridge("ips", iface.ip.to_string()),
    ];
    // Only a guest with a ULA speaks IPv6: its link-local address (for neighbour
    // discovery) and its ULA.
    if let Some(ula) = iface.ula {
        for addr in iface.link_local().into_iter().chain([ula]) {
            out.push(bridge("ips6", addr.to_string()));
        }
    }
    for p in &iface.ports {
        let to = vec![text(iface.ip.to_string()), number(p.guest_port)];
        out.push(match iface.netns {
            // In a namespace, what its uplink receives on the host port.
            Some(_) => Element {
                family: NfFamily::INet,
                set: "ports",
                key: vec![text(p.proto.as_str()), number(p.host_port)],
                value: to,
            },
            None => host_port_element(p, to),
        });
    }
    out
}

/// The elements on the host for ports of a private network: each host port sent on to its
/// network's uplink address (`ns_addr`), the same port, where [`elements`] takes it on to
/// the machine (or where the network's WireGuard listens).
fn forward_elements(ports: &[PortMap], ns_addr: Ipv4Addr) -> Vec<Element> {
    ports
        .iter()
        .map(|p| host_port_element(p, vec![text(ns_addr.to_string()), number(p.host_port)]))
        .collect()
}

/// A host port's element in the host's maps, sending it to `to` (address, port).
fn host_port_element(p: &PortMap, to: Vec<Expression<'static>>) -> Element {
    let port = [text(p.proto.as_str()), number(p.host_port)];
    let (set, key) = match p.host_ip {
        Some(ip) => (
            "ports_ip",
            [vec![text(ip.to_string())], port.to_vec()].concat(),
        ),
        None => ("ports_any", port.to_vec()),
    };
    Element {
        family: NfFamily::INet,
        set,
        key,
        value: to,
    }
}

/// What a transaction does, for its error: the tables it writes, the elements it adds.
fn describe(tables: &[Table], elements: &[Element]) -> String {
    let mut parts = Vec::new();
    if !tables.is_empty() {
        let names: Vec<String> = tables
            .iter()
            .map(|t| format!("{} {TABLE}", family_name(t.family)))
            .collect();
        parts.push(format!("writing the tables {}", names.join(", ")));
    }
    if !elements.is_empty() {
        let shown: Vec<String> = elements.iter().map(Element::to_string).collect();
        parts.push(format!("adding the elements {}", shown.join(", ")));
    }
    parts.join(" and ")
}

/// Runs `nft ARGS` with `input` on its stdin; when nft fails, the error is its message and
/// `what` was being applied.
fn run_nft(args: &[&str], input: &str, what: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("running nft (install nftables with scripts/setup)", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| Error::io("writing rules to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for nft", e))?;
    if out.status.success() {
        return Ok(());
    }
    // nft's JSON errors point to no place in a file.
    let message = String::from_utf8_lossy(&out.stderr).replace("internal:0:0-0: ", "");
    Err(Error::Nft(format!("{} ({what})", message.trim())))
}

/// Applies `batch` in one transaction with `nft -j -f -`; its error says `what` failed.
///
/// Not `nftables::helper::apply_ruleset`: it lets nft's stderr through to ours, so the
/// error would lose nft's message.
fn apply(batch: Batch<'static>, what: &str) -> Result<()> {
    let json = serde_json::to_string(&batch.to_nftables())
        .map_err(|e| Error::Nft(format!("encoding rules as JSON ({what}): {e}")))?;
    run_nft(&["-j", "-f", "-"], &json, what)
}

/// Adds `elements` after `base` (tables to write, or none) in one transaction, under a
/// host-wide lock so two managers never interleave. Elements an earlier run left that
/// disagree make it fail: the elements are removed and it is tried once more.
fn add_elements(base: &[Table], elements: &[Element], needles: &[Vec<String>]) -> Result<()> {
    let _lock = crate::lock::exclusive("rules.lock")?;
    declare_maps(base)?;
    let mut batch = Batch::new();
    declare(base, &mut batch);
    for e in elements {
        batch.add(e.object(true));
    }
    let what = describe(base, elements);
    if apply(batch.clone(), &what).is_ok() {
        return Ok(());
    }
    remove_elements(elements, needles);
    apply(batch, &what)
}

/// Removes `elements`; those already gone are skipped (each is its own transaction, so one
/// missing does not keep the others). When no element of zos's sets and maps is named by
/// one of `needles`, there is nothing to remove and one listing is all it costs: this runs
/// before every start.
fn remove_elements(elements: &[Element], needles: &[Vec<String>]) {
    if !may_hold(needles) {
        return;
    }
    for e in elements {
        let mut batch = Batch::new();
        batch.delete(e.object(false));
        let _ = apply(batch, &format!("deleting {e}"));
    }
}

/// Whether an element of zos's sets and maps may be named by one of `needles` (each a list
/// of values that all appear in the element). Yes when the ruleset cannot be read.
fn may_hold(needles: &[Vec<String>]) -> bool {
    let listed = nftables::helper::get_current_ruleset_raw(
        nftables::helper::DEFAULT_NFT,
        ["list", "ruleset"],
    );
    let Some(listing) = listed
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    else {
        return true;
    };
    zos_elements(&listing)
        .iter()
        .any(|values| needles.iter().any(|n| n.iter().all(|v| values.contains(v))))
}

/// The elements of zos's sets and maps in `nft -j list ruleset`, each as the values (strings
/// and numbers) it is made of.
///
/// Read as plain JSON, not as the crate's `Nftables`: nft 1.0.6 lists a map's concatenated
/// value type as one string (`"ipv4_addr . inet_service"`), which the crate does not take,
/// and other tables on the host may hold what it does not know.
fn zos_elements(listing: &serde_json::Value) -> Vec<Vec<String>> {
    let objects = listing["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    objects
        .iter()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .filter(|s| s["table"] == TABLE)
        .filter_map(|s| s["elem"].as_array())
        .flatten()
        .map(|e| {
            let mut values = Vec::new();
            collect_values(e, &mut values);
            values
        })
        .collect()
}

/// Every string and number inside `v`.
fn collect_values(v: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|i| collect_values(i, out)),
        Value::Object(fields) => fields.values().for_each(|i| collect_values(i, out)),
        Value::Null | Value::Bool(_) => {}
    }
}

/// What names an interface's elements in the ruleset: its tap, or its address.
fn needles(iface: &Interface) -> Vec<Vec<String>> {
    vec![vec![iface.tap.clone()], vec![iface.ip.to_string()]]
}

/// Adds an interface's elements where it lives (its MAC and address on its tap, its
/// published ports). On the local network the host's tables are brought up to date in the
/// same transaction (see [`declare`]); a private network's were written when the network
/// was made (see [`crate::private::ensure`]), and this runs inside its namespace.
pub fn add(iface: &Interface) -> Result<()> {
    let base = match iface.netns {
        Some(_) => Vec::new(),
        None => host_tables()?,
    };
    add_elements(&base, &elements(iface), &needles(iface))
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
    add_elements(&host_tables()?, &elements, &forward_needles(ports, ns_addr))
}

/// Removes what [`add_forwards`] added.
pub fn remove_forwards(ports: &[PortMap], ns_addr: Ipv4Addr) {
    let elements = forward_elements(ports, ns_addr);
    if !elements.is_empty() {
        remove_elements(&elements, &forward_needles(ports, ns_addr));
    }
}

/// What names a forward in the ruleset: the uplink address and the port, in one element.
fn forward_needles(ports: &[PortMap], ns_addr: Ipv4Addr) -> Vec<Vec<String>> {
    ports
        .iter()
        .map(|p| vec![ns_addr.to_string(), p.host_port.to_string()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn elements_name_the_tap_and_ports() {
        let mut iface = crate::lease::tests_interface();
        iface.ports = vec![
            PortMap::parse("8080:80").unwrap(),
            PortMap::parse("127.0.0.1:5353:53/udp").unwrap(),
        ];
        let els = elements(&iface);
        assert_eq!(
            els[0].to_string(),
            "bridge zos macs { zt0a4d0005 . 02:5a:0a:4d:00:05 }"
        );
        assert_eq!(
            els[2].to_string(),
            "inet zos ports_any { tcp . 8080 : 10.77.0.5 . 80 }"
        );
        // Deleting takes the key alone.
        assert_eq!(
            serde_json::to_value(els[3].object(false)).unwrap(),
            json!({"element": {"family": "inet", "table": "zos", "name": "ports_ip",
                "elem": [{"concat": ["127.0.0.1", "udp", 5353]}]}})
        );
    }

    /// The DNAT through a map whose value is an address and a port together, as nft 1.0.6
    /// itself lists the rule that `nft -f` makes of
    /// `fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip`.
    #[test]
    fn dnat_map_rule_is_what_nft_lists() {
        let tables = host_tables().unwrap();
        let rule = &tables[0].chains[0].rules[0];
        assert_eq!(
            serde_json::to_value(rule).unwrap(),
            json!([
                {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                    "right": "local"}},
                {"dnat": {"family": "ip", "addr": {"map": {
                    "key": {"concat": [
                        {"payload": {"protocol": "ip", "field": "daddr"}},
                        {"meta": {"key": "l4proto"}},
                        {"payload": {"protocol": "th", "field": "dport"}}]},
                    "data": "@ports_ip"}}}}
            ])
        );
        // A map element: key and value, each a concatenation.
        let p = PortMap::parse("8080:80").unwrap();
        let e = forward_elements(&[p], Ipv4Addr::new(100, 127, 0, 2));
        assert_eq!(
            serde_json::to_value(e[0].object(true)).unwrap()["element"]["elem"],
            json!([[{"concat": ["tcp", 8080]}, {"concat": ["100.127.0.2", 8080]}]])
        );
    }

    #[test]
    fn maps_are_declared_as_text() {
        let tables = host_tables().unwrap();
        assert_eq!(
            map_script(&tables),
            "table inet zos {\n  \
             map ports_any { type inet_proto . inet_service : ipv4_addr . inet_service; }\n  \
             map ports_ip { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }\n\
             }\n"
        );
    }

    /// Needles are looked for in the elements of zos's sets and maps, as nft 1.0.6 lists
    /// them, and nowhere else.
    #[test]
    fn needles_are_found_in_elements_only() {
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"map": {"family": "inet", "name": "ports_any", "table": "zos",
                "type": ["inet_proto", "inet_service"], "map": "ipv4_addr . inet_service",
                "elem": [[{"concat": ["tcp", 9000]}, {"concat": ["100.127.0.2", 9000]}]]}},
            {"set": {"family": "bridge", "name": "macs", "table": "zos",
                "type": ["ifname", "ether_addr"],
                "elem": [{"concat": ["zt0a4d0005", "02:5a:0a:4d:00:05"]}]}},
            {"set": {"family": "inet", "name": "other", "table": "filter",
                "type": "ifname", "elem": ["zt0a4d0006"]}},
            {"rule": {"family": "inet", "table": "zos", "chain": "input",
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                    "right": "10.77.0.6"}}]}}
        ]});
        let values = zos_elements(&listing);
        assert_eq!(values.len(), 2);
        assert_eq!(values[0], ["tcp", "9000", "100.127.0.2", "9000"]);
        let found = |needle: &[&str]| {
            values
                .iter()
                .any(|v| needle.iter().all(|n| v.contains(&n.to_string())))
        };
        assert!(found(&["zt0a4d0005"]));
        assert!(found(&["100.127.0.2", "9000"]));
        assert!(!found(&["100.127.0.2", "9001"]));
        assert!(!found(&["zt0a4d0006"]));
        assert!(!found(&["10.77.0.6"]));
    }
}
