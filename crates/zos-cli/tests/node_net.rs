//! End-to-end: the node's `network` workload under real QEMU and real kernel networking.
//! Machines of one deployment talk over their network and resolve each other's names; egress reaches a "remote" host (a
//! namespace the test makes) masqueraded; spoofed sources and the host's own addresses are
//! out of reach; two owners with the same range and the same machine address each reach
//! only their own; admission refuses overlapping ranges and taken addresses; after a
//! `kill -9` of the node the host's network state is what it was, and after `zos rm`
//! nothing of it is left.
//!
//! Traffic goes only to namespaces the tests make and to the host; every wait is bounded.

mod common;
mod net_common;
mod node_common;
mod vm_common;

use common::ok;
use net_common::{peer_logger, unique, Netns};
use node_common::Node;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_common::text;

fn prerequisites() -> bool {
    common::is_root()
        && common::have("qemu-system-x86_64")
        && common::have("nft")
        && common::have("ip")
        && common::have("python3")
        && common::have("curl")
}

/// The namespaces of `node`'s networks.
fn namespaces(node: &Node) -> Vec<String> {
    node.namespaces()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    text(&out.stdout)
}

/// Link names in the namespace `ns` (`None`: the host).
fn links(ns: Option<&str>) -> BTreeSet<String> {
    let mut args = vec!["-o", "link"];
    if let Some(ns) = ns {
        args = vec!["-n", ns, "-o", "link"];
    }
    run("ip", &args)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// The elements of the anti-spoof sets in namespace `ns`, sorted.
fn spoof_elements(ns: &str) -> BTreeSet<String> {
    let listed = run(
        "ip",
        &["netns", "exec", ns, "nft", "list", "table", "bridge", "zos"],
    );
    listed
        .split(['{', '}', ','])
        .map(str::trim)
        .filter(|e| e.starts_with("\"zt"))
        .map(str::to_string)
        .collect()
}

/// The host's uplink of the network in `ns`: `zup<N>`, N leased under the namespace's name.
fn uplink_of(ns: &str) -> Option<String> {
    let leases = net_common::leases();
    let v: serde_json::Value = serde_json::from_str(&leases).ok()?;
    let index = v["links"][ns]["index"].as_u64()?;
    Some(format!("zup{index}"))
}

/// Everything of `node`'s networks on the host, as one comparable text: the host's port
/// forwards into networks, and per namespace its links, its anti-spoof elements, its uplink
/// on the host and its resolver.
fn network_state(node: &Node) -> String {
    let host = links(None);
    // The host's forwards of published ports into this node's networks' uplinks (the map is
    // host-wide: other tests' nodes add theirs meanwhile).
    let uplinks: Vec<String> = namespaces(node)
        .iter()
        .filter_map(|ns| {
            let addr = run("ip", &["-n", ns, "-4", "-o", "addr", "show", "up0"]);
            let cidr = addr.split_whitespace().nth(3)?.to_string();
            Some(format!(": {} ", cidr.split('/').next()?))
        })
        .collect();
    let forwards: BTreeSet<String> = run("nft", &["list", "map", "inet", "zos", "ports_any"])
        .split(['{', '}', ','])
        .map(str::trim)
        .filter(|e| uplinks.iter().any(|u| e.contains(u.as_str())))
        .map(str::to_string)
        .collect();
    let mut out = format!("host forwards {forwards:?}\n");
    for ns in namespaces(node) {
        let uplink = uplink_of(&ns).unwrap_or_else(|| "NO LEASE".into());
        out.push_str(&format!(
            "{ns}: links {:?}; elements {:?}; uplink {uplink} on the host: {}; resolvers {}\n",
            links(Some(&ns)),
            spoof_elements(&ns),
            host.contains(&uplink),
            processes_naming(&ns).len()
        ));
    }
    out
}

/// The processes whose command line names `needle` (a network's resolver names its
/// namespace in its pid file's path).
fn processes_naming(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle) && c.starts_with("dnsmasq"))
        .collect()
}

/// A machine's addresses from its result.
fn addresses(d: &serde_json::Value, machine: &str) -> Vec<String> {
    let w = d["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == machine)
        .unwrap_or_else(|| panic!("no workload {machine} in {d}"));
    w["result"]["data"]["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["ip"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn state_of(d: &serde_json::Value, workload: &str) -> String {
    let w = d["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == workload)
        .unwrap();
    format!("{} {}", w["result"]["state"], w["result"]["message"])
}

/// Waits (bounded) for `zos logs DEPLOYMENT/MACHINE` to contain `want`; returns the logs.
fn logs_until(node: &Node, user: &str, target: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let logs = ok(&mut node.cli(user, &["logs", target]));
        if logs.contains(want) || Instant::now() > deadline {
            return logs;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A machine on `lan` (at `ip`, or a free address) running `script`.
fn machine(name: &str, ip: Option<&str>, script: &str) -> Value {
    let mut iface = json!({ "network": "lan" });
    if let Some(ip) = ip {
        iface["ip"] = json!(ip);
    }
    json!({ "name": name, "type": "zmachine", "data": {
        "flist": "FLIST", "memory": "128M", "cmd": ["sh", "-c", script],
        "network": { "interfaces": [iface] } } })
}

/// A web server machine on `lan` at `ip` serving `body`.
fn web(name: &str, ip: &str, body: &str) -> Value {
    let script =
        format!("mkdir -p /srv && echo {body} > /srv/index.html && exec httpd -f -p 80 -h /srv");
    machine(name, Some(ip), &script)
}

/// `machine` with its port 80 published on the node's `port`.
fn published(mut machine: Value, port: u16) -> Value {
    machine["data"]["ports"] = json!([{ "port": 80, "host_port": port }]);
    machine
}

/// `machine` also answering to `alias` on its network.
fn with_alias(mut machine: Value, alias: &str) -> Value {
    machine["data"]["network"]["interfaces"][0]["aliases"] = json!([alias]);
    machine
}

/// A TCP port nothing on the host uses now (the kernel's pick, let go again).
fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The network `lan`: 10.20.0.0/16, this node's part 10.20.1.0/24.
fn lan() -> Value {
    json!({ "name": "lan", "type": "network",
            "data": { "ip_range": "10.20.0.0/16", "subnet": "10.20.1.0/24" } })
}

/// A deployment file (JSON is YAML) named `name` with `workloads`.
fn deployment(node: &Node, file: &str, name: &str, workloads: Vec<Value>) -> std::path::PathBuf {
    let d = json!({ "name": name, "workloads": workloads });
    node.write_yaml(file, &d.to_string())
}

/// A listener on every host address, noting who connects, for `seconds`.
fn host_listener(seconds: u64) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let noted = seen.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            if let Ok((_, peer)) = listener.accept() {
                noted.lock().unwrap().push(peer.ip().to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (port, seen)
}

#[test]
fn machines_on_a_network_talk_reach_out_and_rm_leaves_nothing() {
    if !prerequisites() {
        return;
    }
    let mut node = Node::start("");
    let remote = Netns::new(0);
    let port = 22000 + unique(0) as u16;
    let server = peer_logger(&remote, port, 200);
    let (host_port, host_seen) = host_listener(200);
    let published_port = free_port();
    let (r, h) = (&remote.ns_ip, &remote.host_ip);
    // The page from web, then the remote host (must arrive, from the host's address), then
    // the host's own address (must not), then a spoofed source (must not arrive).
    let script = format!(
        r#"set -- $(ip -4 -o addr show dev eth0); echo "client-address=$4"
i=0; until echo -e 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 10.20.1.5 80 | grep page-; do i=$((i+1)); [ $i -ge 60 ] && break; sleep 1; done
nslookup web.app.internal 2>&1 | grep -q 10.20.1.5 && echo resolved-web.app.internal
nslookup web 2>&1 | grep -q 10.20.1.5 && echo resolved-web
nslookup client 2>&1 | grep -q 10.20.1.2 && echo resolved-client
www=$(nslookup www 2>&1); echo "$www" | grep -q 10.20.1.5 && echo "$www" | grep -q 10.20.1.2 && echo resolved-www-both
echo own-ula=$(ip -6 addr show dev eth0 | grep -o 'fd[0-9a-f:]*' | head -1)
w6=$(nslookup -type=AAAA web.app.internal 2>&1 | grep -o 'fd[0-9a-f:]*' | head -1); echo web-ula=$w6
echo real | nc -w 5 {r} {port}
echo host | nc -w 3 {h} {host_port} && echo reached-the-host
ip addr flush dev eth0 && ip addr add 10.20.1.250/24 dev eth0 && ip route add default via 10.20.1.1
echo spoofed-ip | nc -w 3 {r} {port}
echo client-done"#
    );
    let file = deployment(
        &node,
        "app.yaml",
        "app",
        vec![
            lan(),
            // One alias on both machines, as a Service's name: answered with both.
            with_alias(
                published(web("web", "10.20.1.5", "page-from-web"), published_port),
                "www",
            ),
            with_alias(machine("client", None, &script), "www"),
        ],
    );
    ok(node.cli("alice", &["deploy"]).arg(&file));
    let d = node.settled("alice", "app");
    assert!(state_of(&d, "lan").starts_with("\"ok\""), "{d}");
    assert_eq!(addresses(&d, "web"), ["10.20.1.5"]);
    // The lowest free address: .1 is the gateway, .5 is asked by web.
    assert_eq!(addresses(&d, "client"), ["10.20.1.2"]);
    let lan = d["workloads"][0]["result"]["data"].clone();
    assert_eq!(lan["gateway"], "10.20.1.1", "{lan}");

    // web's port 80, published on the node: from the remote host and from the node itself.
    for (from, url) in [
        (
            Some(&remote),
            format!("http://{}:{published_port}/", remote.host_ip),
        ),
        (None, format!("http://127.0.0.1:{published_port}/")),
    ] {
        let mut curl = match from {
            Some(ns) => ns.exec("curl"),
            None => Command::new("curl"),
        };
        let got = net_common::retry_until(
            curl.args(["-s", "--max-time", "3", &url]),
            "page-from-web",
            60,
        );
        assert!(got.contains("page-from-web"), "curl {url}: {got}");
    }
    let logs = logs_until(&node, "alice", "app/client", "client-done");
    assert!(logs.contains("client-address=10.20.1.2/24"), "{logs}");
    assert!(logs.contains("page-from-web"), "client reached web: {logs}");
    // The ULAs: in the results, in the guests, in the resolver, and carrying traffic.
    let ula = |m: &str| {
        let w = d["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == m)
            .unwrap();
        w["result"]["data"]["addresses"][0]["ula"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };
    assert!(
        ula("web").starts_with("fd") && ula("web").ends_with("::5"),
        "{d}"
    );
    assert!(
        logs.contains(&format!("own-ula={}", ula("client"))),
        "{logs}"
    );
    assert!(logs.contains(&format!("web-ula={}", ula("web"))), "{logs}");
    // Over IPv6 from the network's gateway (the test images' busybox has no IPv6 client):
    // a TCP connection to web's ULA, through its tap's filter.
    let ns = &namespaces(&node)[0];
    let got = run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "python3",
            "-c",
            &format!(
                "import socket; s = socket.create_connection(('{}', 80), 5); \
             s.send(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(300))",
                ula("web")
            ),
        ],
    );
    assert!(got.contains("200 OK"), "web over its ULA: {got}");
    for name in ["web.app.internal", "web", "client", "www-both"] {
        assert!(
            logs.contains(&format!("resolved-{name}")),
            "{name} resolves on the network: {logs}"
        );
    }
    assert!(!logs.contains("reached-the-host"), "{logs}");
    let seen = server.finish();
    assert!(
        seen.lines().any(|l| l == format!("{h} real")),
        "the remote host sees the machine from the host's address {h}:\n{seen}"
    );
    assert!(
        !seen.contains("spoofed"),
        "a spoofed source arrived:\n{seen}"
    );
    assert!(
        !seen.contains("10.20.") && !seen.contains("100.127."),
        "{seen}"
    );
    // The host listener answers others (the remote host): only the machines are kept off.
    let control = Command::new("ip")
        .args(["netns", "exec", &remote.name, "python3", "-c"])
        .arg(format!(
            "import socket; socket.create_connection(('{h}', {host_port}), 3)"
        ))
        .status()
        .unwrap();
    assert!(control.success(), "the host listener is reachable");
    std::thread::sleep(Duration::from_millis(200));
    let seen_on_host = host_seen.lock().unwrap().clone();
    assert_eq!(
        seen_on_host,
        std::slice::from_ref(&remote.ns_ip),
        "only the remote host got through"
    );

    // On the host: one namespace with the bridge, the uplink and web's tap (the client has
    // exited), its elements, and the uplink's host end.
    let namespaces_now = namespaces(&node);
    assert_eq!(namespaces_now.len(), 1, "{namespaces_now:?}");
    let ns = &namespaces_now[0];
    let inside = links(Some(ns));
    for link in ["br0", "up0", "zt0a140105"] {
        assert!(inside.contains(link), "{link} in {ns}: {inside:?}");
    }
    let uplink = uplink_of(ns).expect("an uplink lease");
    assert_eq!(processes_naming(ns).len(), 1, "one resolver for {ns}");
    assert!(links(None).contains(&uplink), "uplink {uplink} on the host");

    // kill -9 and back: exactly the same. (The exited client's tap elements go at the
    // node's next look at it, within a second or two: waited for, bounded.)
    let settle = |node: &Node, done: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = network_state(node);
            if done(&state) || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let before = settle(&node, &|s| !s.contains("zt0a140102"));
    assert!(
        !before.contains("zt0a140102"),
        "the exited client's elements stay:\n{before}"
    );
    node.kill9();
    node.boot();
    let after_restart = node.settled("alice", "app");
    assert_eq!(addresses(&after_restart, "web"), ["10.20.1.5"]);
    assert_eq!(addresses(&after_restart, "client"), ["10.20.1.2"]);
    let after = settle(&node, &|s| s == before);
    assert_eq!(after, before, "network state after kill -9");
    // The client, which had finished, was not run again.
    let logs = ok(&mut node.cli("alice", &["logs", "app/client"]));
    assert_eq!(logs.matches("client-address=").count(), 1, "{logs}");

    ok(&mut node.cli("alice", &["rm", "app"]));
    let rules = run("nft", &["list", "table", "inet", "zos"]);
    assert!(
        !rules.contains(&format!(". {published_port} :")),
        "port {published_port} left in the host's table:\n{rules}"
    );
    assert!(namespaces(&node).is_empty(), "{:?}", namespaces(&node));
    assert!(
        !links(None).contains(&uplink),
        "uplink {uplink} left on the host"
    );
    assert_eq!(uplink_of(ns), None, "the uplink's lease is given back");
    assert_eq!(processes_naming(ns), Vec::<String>::new(), "resolver left");
}

#[test]
fn two_owners_with_one_range_reach_only_their_own_and_clashes_are_refused() {
    if !prerequisites() {
        return;
    }
    let node = Node::start("");
    // The same range, subnet and server address for both owners.
    let bobs_port = free_port();
    let bob = deployment(
        &node,
        "bob.yaml",
        "site",
        vec![
            lan(),
            published(web("web", "10.20.1.7", "bob-page"), bobs_port),
        ],
    );
    ok(node.cli("bob", &["deploy"]).arg(&bob));
    let client = "i=0; while [ $i -lt 40 ]; do echo -e 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 10.20.1.7 80; i=$((i+1)); sleep 1; done | grep -m1 -- -page; echo client-done; exec sleep 600";
    let mine = vec![
        lan(),
        web("web", "10.20.1.7", "alice-page"),
        machine("client", None, client),
    ];
    let alice = deployment(&node, "alice.yaml", "site", mine.clone());
    ok(node.cli("alice", &["deploy"]).arg(&alice));
    let logs = logs_until(&node, "alice", "site/client", "client-done");
    assert!(logs.contains("alice-page"), "alice's own server: {logs}");
    assert!(
        !logs.contains("bob-page"),
        "alice reached bob's server: {logs}"
    );
    assert_eq!(namespaces(&node).len(), 2);

    // One owner's ranges must not overlap on a node; another owner's may.
    let net2 = json!({ "name": "net2", "type": "network",
                       "data": { "ip_range": "10.20.0.0/16", "subnet": "10.20.9.0/24" } });
    let other = deployment(&node, "other.yaml", "other", vec![net2]);
    let err = common::fails(node.cli("alice", &["deploy"]).arg(&other));
    assert!(
        err.contains("ip_range 10.20.0.0/16 overlaps 10.20.0.0/16 of network \"lan\" in your deployment \"site\""),
        "{err}"
    );
    // Host ports: one another deployment publishes, one a host process listens on.
    let busy = TcpListener::bind("0.0.0.0:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    for (port, why) in [
        (
            bobs_port,
            format!("host port {bobs_port}/tcp is already taken on this node"),
        ),
        (
            busy_port,
            format!("host port {busy_port}->80/tcp is already in use by a process on this host"),
        ),
    ] {
        let lan2 = json!({ "name": "lan", "type": "network",
                           "data": { "ip_range": "10.30.0.0/16", "subnet": "10.30.1.0/24" } });
        let web2 = published(machine("web", None, "exec sleep 600"), port);
        let file = deployment(&node, "ports.yaml", "ports", vec![lan2, web2]);
        let err = common::fails(node.cli("alice", &["deploy"]).arg(&file));
        assert!(err.contains(&why), "{why} expected: {err}");
    }
    // An address another machine holds (the client got .2): refused, nothing changes.
    let mut with_late = mine.clone();
    with_late.push(web("late", "10.20.1.2", "late"));
    let taken = deployment(&node, "taken.yaml", "site", with_late);
    let err = common::fails(node.cli("alice", &["deploy"]).arg(&taken));
    assert!(
        err.contains("ip 10.20.1.2 on network \"lan\" is taken by zmachine \"client\""),
        "{err}"
    );
    // A network its machines still join cannot go.
    let without_lan = deployment(&node, "nolan.yaml", "site", mine[1..].to_vec());
    let err = common::fails(node.cli("alice", &["deploy"]).arg(&without_lan));
    assert!(
        err.contains("network \"lan\" is not a network workload in this deployment"),
        "{err}"
    );
    ok(&mut node.cli("alice", &["rm", "site"]));
    ok(&mut node.cli("bob", &["rm", "site"]));
    assert!(namespaces(&node).is_empty(), "{:?}", namespaces(&node));
}

/// Namespaces playing three hosts on one "internet" (a bridge in a fourth namespace): two
/// nodes and a user's laptop, at 10.98.ID.1, .2 and .3. Removed when dropped.
struct Internet {
    id: u32,
    prefix: String,
}

impl Internet {
    fn new() -> Internet {
        let id = unique(3);
        let net = Internet {
            id,
            prefix: format!("10.98.{}", id % 256),
        };
        net.remove();
        let inet = net.ns("inet");
        net_common::sh("ip", &["netns", "add", &inet]);
        net_common::sh(
            "ip",
            &[
                "-n", &inet, "link", "add", "name", "inet0", "type", "bridge",
            ],
        );
        net_common::sh("ip", &["-n", &inet, "link", "set", "inet0", "up"]);
        for (i, host) in ["a", "b", "laptop"].iter().enumerate() {
            let ns = net.ns(host);
            let port = format!("to-{host}");
            net_common::sh("ip", &["netns", "add", &ns]);
            net_common::sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            net_common::sh(
                "ip",
                &[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                    "netns", &inet,
                ],
            );
            let addr = format!("{}.{}/24", net.prefix, i + 1);
            net_common::sh("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            net_common::sh("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            net_common::sh(
                "ip",
                &[
                    "-n", &inet, "link", "set", "dev", &port, "master", "inet0", "up",
                ],
            );
        }
        net
    }

    /// The namespace of `host` (`a`, `b`, `laptop`, `inet`).
    fn ns(&self, host: &str) -> String {
        format!("zostest-{host}-{}", self.id)
    }

    /// The address of host number `n` (1 = a, 2 = b, 3 = laptop).
    fn addr(&self, n: u8) -> String {
        format!("{}.{n}", self.prefix)
    }

    fn remove(&self) {
        for host in ["laptop", "a", "b", "inet"] {
            common::kill_netns(&self.ns(host));
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/zwl{}.sock", self.id));
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `zos net key DEPLOYMENT/NETWORK` on `node`: (public key, port).
fn wireguard_end(node: &Node, target: &str) -> (String, u16) {
    let out = ok(&mut node.cli("alice", &["net", "key", target, "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    (
        v["public_key"].as_str().unwrap().to_string(),
        v["listen_port"].as_u64().unwrap() as u16,
    )
}

#[test]
fn two_nodes_and_a_laptop_share_a_network_over_wireguard() {
    if !prerequisites() || !common::have("wg") || !common::have("boringtun-cli") {
        return;
    }
    let net = Internet::new();
    let a = Node::start_in_netns(
        &net.ns("a"),
        &format!("wireguard_host = \"{}\"", net.addr(1)),
    );
    let b = Node::start_in_netns(
        &net.ns("b"),
        &format!("wireguard_host = \"{}\"", net.addr(2)),
    );
    // The same owner on both nodes (one key file, copied).
    std::fs::copy(a.key("alice"), b.key("alice")).unwrap();
    // Each node's key and port for app/lan, known before anything is deployed.
    let (key_a, port_a) = wireguard_end(&a, "app/lan");
    let (key_b, port_b) = wireguard_end(&b, "app/lan");
    assert_ne!(key_a, key_b, "each node has its own key for the network");
    // The laptop's own key, as a user makes it.
    let laptop_key = text(&Command::new("wg").arg("genkey").output().unwrap().stdout);
    let mut pubkey_cmd = Command::new("wg");
    pubkey_cmd
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = pubkey_cmd.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), laptop_key.as_bytes()).unwrap();
    let laptop_pub = text(&child.wait_with_output().unwrap().stdout)
        .trim()
        .to_string();

    let lan = |subnet: &str, peers: Value| {
        json!({ "name": "lan", "type": "network", "data": {
            "ip_range": "10.20.0.0/16", "subnet": subnet, "wireguard": { "peers": peers } } })
    };
    let on_a = deployment(
        &a,
        "app.yaml",
        "app",
        vec![
            lan(
                "10.20.1.0/24",
                json!([
                    { "subnet": "10.20.2.0/24", "public_key": key_b,
                      "endpoint": format!("{}:{port_b}", net.addr(2)) },
                    { "subnet": "10.20.200.5/32", "public_key": laptop_pub }
                ]),
            ),
            web("web", "10.20.1.5", "page-from-node-a"),
        ],
    );
    let client = "i=0; while [ $i -lt 60 ]; do echo -e 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 10.20.1.5 80 | grep page-from && break; i=$((i+1)); sleep 1; done; echo client-done; exec sleep 600";
    let on_b = deployment(
        &b,
        "app.yaml",
        "app",
        vec![
            lan(
                "10.20.2.0/24",
                json!([{ "subnet": "10.20.1.0/24", "public_key": key_a,
                         "endpoint": format!("{}:{port_a}", net.addr(1)) }]),
            ),
            machine("client", None, client),
        ],
    );
    ok(a.cli("alice", &["deploy"]).arg(&on_a));
    ok(b.cli("alice", &["deploy"]).arg(&on_b));
    let d = a.settled("alice", "app");
    let end = &d["workloads"][0]["result"]["data"]["wireguard"];
    assert_eq!(end["public_key"], key_a.as_str(), "{d}");
    assert_eq!(end["endpoint"], format!("{}:{port_a}", net.addr(1)), "{d}");

    // A machine on node B reaches one on node A, across the WireGuard link.
    let logs = logs_until(&b, "alice", "app/client", "client-done");
    assert!(
        logs.contains("page-from-node-a"),
        "B's client reached A's web: {logs}"
    );

    // The laptop joins with the config `zos net access` prints, applied with the real `wg`.
    let key_file = a.dir().join("laptop.key");
    std::fs::write(&key_file, &laptop_key).unwrap();
    let config = ok(&mut a.cli(
        "alice",
        &[
            "net",
            "access",
            "app/lan",
            "--pubkey",
            &laptop_pub,
            "--private-key-file",
            &key_file.display().to_string(),
        ],
    ));
    assert!(config.contains("Address = 10.20.200.5/32"), "{config}");
    assert!(config.contains("AllowedIPs = 10.20.0.0/16"), "{config}");
    let laptop = net.ns("laptop");
    let dev = format!("zwl{}", net.id);
    net_common::sh(
        "ip",
        &[
            "netns",
            "exec",
            &laptop,
            "boringtun-cli",
            "--disable-drop-privileges",
            "--threads=1",
            &dev,
        ],
    );
    // `wg` takes the file without wg-quick's own keys (Address), as `wg-quick strip` does.
    let stripped: String = config
        .lines()
        .filter(|l| !l.starts_with("Address"))
        .map(|l| format!("{l}\n"))
        .collect();
    let conf_file = a.dir().join("laptop.conf");
    std::fs::write(&conf_file, stripped).unwrap();
    let conf = conf_file.display().to_string();
    net_common::sh(
        "ip",
        &["netns", "exec", &laptop, "wg", "setconf", &dev, &conf],
    );
    net_common::sh(
        "ip",
        &["-n", &laptop, "addr", "add", "10.20.200.5/32", "dev", &dev],
    );
    net_common::sh("ip", &["-n", &laptop, "link", "set", &dev, "up"]);
    net_common::sh(
        "ip",
        &["-n", &laptop, "route", "add", "10.20.0.0/16", "dev", &dev],
    );
    let got = net_common::retry_until(
        Command::new("ip").args([
            "netns",
            "exec",
            &laptop,
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://10.20.1.5/",
        ]),
        "page-from-node-a",
        30,
    );
    assert!(
        got.contains("page-from-node-a"),
        "the laptop reached A's web: {got}"
    );
    let shown = run("ip", &["netns", "exec", &laptop, "wg", "show", &dev]);
    // Traffic went through the tunnel (boringtun reports no handshake time).
    assert!(
        shown.contains("transfer:") && shown.contains("received"),
        "{shown}"
    );

    ok(&mut a.cli("alice", &["rm", "app"]));
    ok(&mut b.cli("alice", &["rm", "app"]));
    assert!(namespaces(&a).is_empty() && namespaces(&b).is_empty());
}

/// An "upstream router" namespace holding 198.51.100.1/24 (TEST-NET-2), joined to the host
/// by a veth whose host end (`zosup<ID>`, no address) is the node's public interface.
struct Upstream {
    ns: String,
    link: String,
}

impl Upstream {
    fn new() -> Upstream {
        let id = unique(2);
        let up = Upstream {
            ns: format!("zostest-up-{id}"),
            link: format!("zosup{id}"),
        };
        up.remove();
        net_common::sh("ip", &["netns", "add", &up.ns]);
        net_common::sh(
            "ip",
            &[
                "link", "add", &up.link, "type", "veth", "peer", "name", "eth0", "netns", &up.ns,
            ],
        );
        net_common::sh("ip", &["link", "set", &up.link, "up"]);
        for args in [
            vec!["addr", "add", "198.51.100.1/24", "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["-n", up.ns.as_str()];
            all.extend(args);
            net_common::sh("ip", &all);
        }
        up
    }

    fn remove(&self) {
        common::kill_netns(&self.ns);
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
fn a_public_ip_reaches_its_machine_and_no_one_else_can_take_or_spoof_it() {
    if !prerequisites() {
        return;
    }
    let up = Upstream::new();
    let node = Node::start(&format!(
        "[[public_ips]]\ninterface = \"{}\"\ngateway = \"198.51.100.1\"\naddresses = [\"198.51.100.10/24\", \"198.51.100.11/24\"]\n",
        up.link
    ));
    let port = 23000 + unique(2) as u16;
    let logger = net_common::peer_logger_in(&up.ns, port, 200);
    // A web server on its public address; it also calls the upstream host, from its own
    // address (no NAT), and once told to (a connection to its port 81), from its neighbour's
    // (must never arrive).
    let script = format!(
        "mkdir -p /srv && echo public-page > /srv/index.html && httpd -p 80 -h /srv
i=0; until echo own | nc -w 3 198.51.100.1 {port}; do i=$((i+1)); [ $i -ge 30 ] && break; sleep 1; done
nc -l -p 81 -w 120 >/dev/null
dev=$(grep -l 02:5a:c6:33:64:0a /sys/class/net/*/address | cut -d/ -f5)
ip addr flush dev $dev && ip addr add 198.51.100.11/24 dev $dev && ip route add default via 198.51.100.1
echo spoofed | nc -w 3 198.51.100.1 {port}
echo calls-done; exec sleep 600"
    );
    let mut web = machine("web", None, &script);
    web["data"]["public_ip"] = json!("pub");
    let ip = json!({ "name": "pub", "type": "ip", "data": { "address": "198.51.100.10" } });
    let file = deployment(&node, "site.yaml", "site", vec![ip, lan(), web]);
    ok(node.cli("alice", &["deploy"]).arg(&file));
    let d = node.settled("alice", "site");
    let held = &d["workloads"][0]["result"]["data"];
    assert_eq!(held["address"], "198.51.100.10/24", "{d}");
    assert_eq!(held["gateway"], "198.51.100.1", "{d}");
    let web_data = &d["workloads"][2]["result"]["data"];
    assert_eq!(web_data["public_ip"], "198.51.100.10", "{d}");

    // From the upstream router, straight to the machine's public address.
    let got = net_common::retry_until(
        Command::new("ip").args([
            "netns",
            "exec",
            &up.ns,
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://198.51.100.10/",
        ]),
        "public-page",
        60,
    );
    assert!(got.contains("public-page"), "curl from upstream: {got}");
    let _ = Command::new("ip")
        .args(["netns", "exec", &up.ns, "curl", "-s", "--max-time", "2"])
        .arg("http://198.51.100.10:81/")
        .output();
    let logs = logs_until(&node, "alice", "site/web", "calls-done");
    assert!(logs.contains("calls-done"), "{logs}");
    let seen = logger.finish();
    assert!(
        seen.lines().any(|l| l == "198.51.100.10 own"),
        "the machine's traffic leaves from its public address, not NATed:\n{seen}\n{logs}"
    );
    assert!(
        !seen.contains("spoofed"),
        "a neighbour's address was usable:\n{seen}"
    );

    // Another owner cannot take it; an address outside the pool is refused.
    for (address, why) in [
        (
            "198.51.100.10",
            "public IP 198.51.100.10 is already taken on this node",
        ),
        (
            "198.51.100.99",
            "public IP 198.51.100.99 is not one of this node's",
        ),
    ] {
        let ip = json!({ "name": "pub", "type": "ip", "data": { "address": address } });
        let file = deployment(&node, "bob.yaml", "bobs", vec![ip]);
        let err = common::fails(node.cli("bob", &["deploy"]).arg(&file));
        assert!(err.contains(why), "{why}: {err}");
    }
    ok(&mut node.cli("alice", &["rm", "site"]));
    let leases = net_common::leases();
    assert!(
        !leases.contains("198.51.100.10"),
        "public lease left:\n{leases}"
    );
}
