//! End-to-end: container VMs on the local network (bridge zos0, 10.77.0.0/16) under real
//! QEMU and real kernel networking. VM to VM over TCP, a published port reached from a
//! network namespace (through a veth to the host) and from 127.0.0.1, egress NATed to a
//! "remote" host living in a namespace, spoofed sources and MACs that never arrive, taken
//! host ports refused before boot, and nothing (tap, nftables element, lease) left after
//! `zos vm rm`.
//!
//! Traffic goes only to loopback and to namespaces the tests make; every wait is bounded.
//! Names, subnets and ports are unique per test process, so these run beside other VM
//! tests; the bridge and the nftables tables are shared, as on a real host.

mod common;
mod net_common;
mod vm_common;

use common::{fails, ok};
use net_common::{leases, peer_logger, retry_until, tap_of, unique, Netns};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;
use vm_common::{code_of, describe, text, Fixture};

/// Whether everything these tests start is here (root, QEMU, nft, ip, curl, python3).
fn prerequisites() -> bool {
    common::is_root()
        && common::have("qemu-system-x86_64")
        && common::have("nft")
        && common::have("ip")
        && common::have("curl")
        && common::have("python3")
}

/// The guest address `zos vm status` shows (`address: 10.77.x.y/16 on zos0 …`).
fn address_of(f: &Fixture, name: &str) -> String {
    let (_, out) = f.status(name);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("address: "))
        .unwrap_or_else(|| panic!("no address in zos vm status {name}:\n{out}"));
    line.split('/').next().unwrap().to_string()
}

/// The host's links, one a line (`ip -o link`).
fn host_links() -> String {
    text(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
}

/// Everything zos's nftables tables hold now.
fn ruleset() -> String {
    let mut all = String::new();
    for family in ["inet", "bridge"] {
        let out = Command::new("nft")
            .args(["list", "table", family, "zos"])
            .output()
            .unwrap();
        all.push_str(&text(&out.stdout));
    }
    all
}

/// Asserts nothing of the VM that had `ip` (and host `port`, if any) is left on the host:
/// no tap, no element in zos's sets and maps, no lease.
fn assert_nothing_left_of_vm(ip: &str, port: Option<u16>) {
    let tap = tap_of(ip);
    let links = host_links();
    assert!(!links.contains(&tap), "tap {tap} left:\n{links}");
    let rules = ruleset();
    assert_eq!(
        rules.matches(&tap).count() + rules.matches(&format!("{ip} ")).count(),
        0,
        "elements of {ip} left in the zos tables:\n{rules}"
    );
    if let Some(port) = port {
        assert!(
            !rules.contains(&format!(". {port} :")),
            "port {port} left in the zos tables:\n{rules}"
        );
    }
    let leases = leases();
    assert!(
        !leases.contains(&format!("\"{ip}\"")),
        "lease of {ip} left:\n{leases}"
    );
}

/// A web server VM: busybox httpd on port 80 serving `body`.
fn web_script(body: &str) -> String {
    format!("echo {body} > /srv/index.html && exec httpd -f -p 80 -h /srv")
}

#[test]
fn two_containers_talk_tcp_and_rm_leaves_no_tap_rule_or_lease() {
    if !prerequisites() {
        return;
    }
    let f = Fixture::new();
    let id = unique(0);
    let server = format!("net-web-{id}");
    f.run_detached(&server, 1, "128M", &web_script("hello-from-the-server"));
    let ip = address_of(&f, &server);
    assert!(
        ip.starts_with("10.77."),
        "address {ip} outside 10.77.0.0/16"
    );
    let tap = tap_of(&ip);
    let links = host_links();
    assert!(
        links.contains(&format!("{tap}:")) && links.contains("master zos0"),
        "tap {tap} on zos0 expected:\n{links}"
    );
    // The client retries while the server boots; bounded by count.
    let script = format!(
        "set -- $(ip -4 -o addr show dev eth0); echo client-ip=${{4%/*}}
i=0; while [ $i -lt 60 ]; do echo -e 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80 | grep -q hello-from && echo got-the-page && exit 0; i=$((i+1)); sleep 1; done; exit 1"
    );
    let out = f.run(&[
        "--name",
        &format!("net-client-{id}"),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        code_of(&out),
        0,
        "client could not fetch: {}",
        describe(&out)
    );
    assert!(
        text(&out.stdout).contains("got-the-page"),
        "the server's page expected: {}",
        describe(&out)
    );
    // The client ran without -d: it went with its exit, and its network with it.
    let client_ip = text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("client-ip=").map(str::to_string))
        .unwrap_or_else(|| panic!("the client printed no address: {}", describe(&out)));
    assert_ne!(client_ip, ip, "two VMs got one address");
    assert_nothing_left_of_vm(&client_ip, None);
    // Stopped, the server has no tap and no rules, but keeps its address for its next start.
    ok(f.zos("vm").args(["stop", &server]));
    let links = host_links();
    assert!(
        !links.contains(&tap),
        "tap {tap} left after stop:
{links}"
    );
    assert!(!ruleset().contains(&tap), "rules of {tap} left after stop");
    assert!(
        leases().contains(&format!("\"{ip}\"")),
        "lease of {ip} lost at stop"
    );
    ok(f.zos("vm").args(["start", &server]));
    assert_eq!(
        address_of(&f, &server),
        ip,
        "a restarted VM keeps its address"
    );
    let links = host_links();
    assert!(
        links.contains(&format!("{tap}:")),
        "tap {tap} back after start:
{links}"
    );
    ok(f.zos("vm").args(["rm", &server]));
    assert_nothing_left_of_vm(&ip, None);
    f.assert_no_vms_left("zos vm rm");
}

#[test]
fn a_published_port_answers_from_a_namespace_and_localhost_and_a_taken_one_is_refused() {
    if !prerequisites() {
        return;
    }
    let f = Fixture::new();
    let ns = Netns::new(1);
    let id = unique(1);
    // A port nothing on the host uses right now (the kernel's pick, let go again).
    let port = TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = format!("net-pub-{id}");
    ok(f.zos("run")
        .args(["-d", "--name", &name, "--memory", "128M", "-p"])
        .arg(format!("{port}:80"))
        .arg(&f.fl)
        .args(["--", "/bin/sh", "-c", &web_script("published-page")]));
    let ip = address_of(&f, &name);
    let (_, status) = f.status(&name);
    assert!(
        status.contains(&format!("port: {port}->80/tcp")),
        "zos vm status shows the port:\n{status}"
    );
    // From another host on the network (the namespace), to the host's address there.
    let url = format!("http://{}:{port}/", ns.host_ip);
    let got = retry_until(
        ns.exec("curl").args(["-s", "--max-time", "3", &url]),
        "published-page",
        90,
    );
    assert!(
        got.contains("published-page"),
        "curl {url} from the namespace: {got}"
    );
    // From the host itself.
    let local = format!("http://127.0.0.1:{port}/");
    let got = retry_until(
        Command::new("curl").args(["-s", "--max-time", "3", &local]),
        "published-page",
        10,
    );
    assert!(got.contains("published-page"), "curl {local}: {got}");
    // From another VM, through the gateway (a host address). (With br_netfilter on, as
    // here, the bridge un-DNATs the answer by itself; zos's hairpin masquerade is what makes
    // this work on hosts without it.)
    let script = format!("echo -e 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.77.0.1 {port}");
    let out = f.run(&[
        "--name",
        &format!("net-hairpin-{id}"),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert!(
        text(&out.stdout).contains("published-page"),
        "another VM reaches the published port through the gateway: {}",
        describe(&out)
    );
    // However many VMs were plugged, each rule is there once.
    let rules = ruleset();
    assert_eq!(
        rules.matches("masquerade").count(),
        5,
        "rules doubled:\n{rules}"
    );

    // The same host port again: refused before anything is made.
    let before = f.vm_entries();
    let err = fails(
        f.zos("run")
            .args(["-d", "--name", "net-pub-again", "-p"])
            .arg(format!("{port}:8080"))
            .arg(&f.fl)
            .args(["--", "/bin/true"]),
    );
    assert!(
        err.contains(&format!(
            "host port {port}->8080/tcp is already published by another VM"
        )),
        "clear refusal expected: {err}"
    );
    assert_eq!(f.vm_entries(), before, "a refused run left a VM");
    // A port a host process listens on: refused too.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let busy = listener.local_addr().unwrap().port();
    let err = fails(
        f.zos("run")
            .args(["-d", "--name", "net-pub-busy", "-p"])
            .arg(format!("{busy}:80"))
            .arg(&f.fl)
            .args(["--", "/bin/true"]),
    );
    assert!(
        err.contains("already in use by a process on this host"),
        "clear refusal expected: {err}"
    );
    assert_eq!(f.vm_entries(), before, "a refused run left a VM");
    let leases = leases();
    assert!(
        !leases.contains("net-pub-again") && !leases.contains("net-pub-busy"),
        "a refused run left a lease:\n{leases}"
    );

    ok(f.zos("vm").args(["rm", &name]));
    assert_nothing_left_of_vm(&ip, Some(port));
    let gone = Command::new("curl")
        .args(["-s", "--max-time", "2", &local])
        .output()
        .unwrap();
    assert!(
        !text(&gone.stdout).contains("published-page"),
        "the port still answers after zos vm rm"
    );
}

#[test]
fn egress_is_masqueraded_and_spoofed_addresses_and_macs_never_arrive() {
    if !prerequisites() {
        return;
    }
    let f = Fixture::new();
    let ns = Netns::new(2);
    let id = unique(2);
    let port = 21000 + id as u16;
    let server = peer_logger(&ns, port, 110);
    let remote = &ns.ns_ip;
    // First from its own address (must arrive), then with a foreign address on its own MAC,
    // then with its own address on a foreign MAC: neither of those may arrive.
    let script = format!(
        r#"set -- $(ip -4 -o addr show dev eth0); own=$4
send() {{ echo "$1" | nc -w 5 {remote} {port}; }}
i=0; until send real; do i=$((i+1)); [ $i -ge 20 ] && exit 3; sleep 1; done
ip addr flush dev eth0 && ip addr add 10.77.250.250/16 dev eth0 && ip route add default via 10.77.0.1
send spoofed-ip
ip addr flush dev eth0 && ip addr add $own dev eth0
ip link set eth0 down && ip link set eth0 address 02:00:00:00:00:99 && ip link set eth0 up
ip route add default via 10.77.0.1
send spoofed-mac
echo spoofing-done"#
    );
    let out = f.run(&[
        "--name",
        &format!("net-egress-{id}"),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert!(
        text(&out.stdout).contains("spoofing-done"),
        "the guest script did not finish: {}",
        describe(&out)
    );
    let seen = server.finish();
    assert!(
        seen.lines().any(|l| l == format!("{} real", ns.host_ip)),
        "the remote host should see the VM's traffic from the host's address {}, masqueraded:\n{seen}",
        ns.host_ip
    );
    assert!(
        !seen.contains("spoofed"),
        "spoofed traffic arrived at the remote host:\n{seen}"
    );
    assert!(
        !seen.contains("10.77."),
        "a VM address reached the remote host unmasqueraded:\n{seen}"
    );
}

#[test]
fn network_none_gives_only_loopback() {
    if !prerequisites() {
        return;
    }
    let f = Fixture::new();
    let out = f.run(&["--network", "none", "--", "/bin/ls", "/sys/class/net"]);
    assert_eq!(code_of(&out), 0, "{}", describe(&out));
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["lo"]
    );
    let err = fails(
        f.zos("run")
            .args(["--network", "none", "-p", "8080:80"])
            .arg(&f.fl)
            .args(["--", "/bin/true"]),
    );
    assert!(err.contains("--publish needs a network"), "{err}");
    f.assert_no_vms_left("zos run --network none");
}

#[test]
fn a_vm_whose_qemu_is_killed_loses_its_tap_and_rules_at_the_next_look() {
    if !prerequisites() {
        return;
    }
    let f = Fixture::new();
    let id = unique(3);
    let name = format!("net-crash-{id}");
    let port = TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ok(f.zos("run")
        .args(["-d", "--name", &name, "--memory", "128M", "-p"])
        .arg(format!("{port}:80"))
        .arg(&f.fl)
        .args(["--", "/bin/sleep", "600"]));
    let ip = address_of(&f, &name);
    assert!(
        ruleset().contains(&format!(". {port} :")),
        "the published port is in the rules while the VM runs"
    );
    let pid = f.qemu_pid(&name);
    // SAFETY: kill has no memory preconditions; the pid is this test's own VM's QEMU.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill -9 {pid}");
    // The next look at the VM notices, and tears its network down with the rest.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (state, out) = f.status(&name);
        if state.contains("crashed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the VM never showed as crashed:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let tap = tap_of(&ip);
    let links = host_links();
    assert!(
        !links.contains(&tap),
        "tap {tap} left after the crash:\n{links}"
    );
    let rules = ruleset();
    assert!(
        !rules.contains(&tap) && !rules.contains(&format!(". {port} :")),
        "rules of the crashed VM left:\n{rules}"
    );
    // Its address stays its own until it is removed.
    assert!(
        leases().contains(&format!("\"{ip}\"")),
        "lease of {ip} lost"
    );
    ok(f.zos("vm").args(["rm", &name]));
    assert_nothing_left_of_vm(&ip, Some(port));
}
