//! What the network tests (net, node_net) share: namespaces playing other hosts, servers in
//! them, bounded retries, and how zos names taps and keeps leases.
#![allow(dead_code)]

use crate::vm_common::text;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A number unique to this test process and `test`, for names, subnets and ports.
pub fn unique(test: u32) -> u32 {
    (std::process::id() % 240) * 4 + test
}

/// A network namespace joined to the host by a veth pair: `HOST_IP` on the host's end,
/// `NS_IP` inside with a default route through the host. Removed when dropped, also when
/// the test fails.
pub struct Netns {
    pub name: String,
    pub host_link: String,
    pub host_ip: String,
    pub ns_ip: String,
}

pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        text(&out.stderr)
    );
}

impl Netns {
    pub fn new(test: u32) -> Netns {
        let id = unique(test);
        // A /24 of its own per namespace: 10.(200 + test).(id / 4).0/24, off the VMs' range.
        let net = format!("10.{}.{}", 200 + test, id / 4);
        let ns = Netns {
            name: format!("zosnet-{id}"),
            host_link: format!("znh{id}"),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
        };
        let peer = format!("znp{id}");
        // Left by an earlier run killed before its guard ran.
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &ns.host_link])
            .stderr(Stdio::null())
            .status();
        sh("ip", &["netns", "add", &ns.name]);
        sh(
            "ip",
            &[
                "link",
                "add",
                &ns.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
        );
        sh("ip", &["link", "set", &peer, "netns", &ns.name]);
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", ns.host_ip),
                "dev",
                &ns.host_link,
            ],
        );
        sh("ip", &["link", "set", &ns.host_link, "up"]);
        let ns_addr = format!("{}/24", ns.ns_ip);
        for args in [
            ["addr", "add", ns_addr.as_str(), "dev", peer.as_str()],
            ["link", "set", peer.as_str(), "up", ""],
            ["link", "set", "lo", "up", ""],
            ["route", "add", "default", "via", ns.host_ip.as_str()],
        ] {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend(args.iter().copied().filter(|a| !a.is_empty()));
            sh("ip", &all);
        }
        ns
    }

    /// `ip netns exec NAME PROGRAM`, ready for arguments.
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed when dropped (a server in a namespace).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tap of a guest address, as zos names it.
pub fn tap_of(ip: &str) -> String {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    format!("zt{:08x}", u32::from(ip))
}

/// zos's lease file (ZOS_NET_DIR, as zos reads it).
pub fn leases() -> String {
    let dir = std::env::var("ZOS_NET_DIR").unwrap_or_else(|_| "/var/lib/zos/net".into());
    std::fs::read_to_string(Path::new(&dir).join("leases.json")).unwrap_or_default()
}

/// Runs `cmd` until its stdout contains `want` (at most `tries` times, a second apart);
/// returns the last output.
pub fn retry_until(cmd: &mut Command, want: &str, tries: u32) -> String {
    let mut last = String::new();
    for _ in 0..tries {
        let out = cmd.output().unwrap();
        last = format!("{}{}", text(&out.stdout), text(&out.stderr));
        if last.contains(want) {
            return last;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    last
}

/// A TCP server in a namespace that notes, per connection, the peer's address and the first
/// line it sent.
pub struct PeerLogger {
    child: Killed,
    output: std::sync::mpsc::Receiver<String>,
}

impl PeerLogger {
    /// Ends the server; returns its lines (`PEER_ADDRESS DATA`).
    pub fn finish(self) -> String {
        drop(self.child);
        self.output
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default()
    }
}

/// Starts a [`PeerLogger`] on `port` in `ns`, ending by itself after `seconds`.
pub fn peer_logger(ns: &Netns, port: u16, seconds: u32) -> PeerLogger {
    peer_logger_in(&ns.name, port, seconds)
}

/// A [`PeerLogger`] in the namespace named `ns`.
pub fn peer_logger_in(ns: &str, port: u16, seconds: u32) -> PeerLogger {
    let code = format!(
        r#"
import socket, time, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port})); s.listen(8); s.settimeout(1)
end = time.time() + {seconds}
print("listening", flush=True)
while time.time() < end:
    try:
        c, a = s.accept()
    except socket.timeout:
        continue
    c.settimeout(3)
    try:
        data = c.recv(100).decode().strip()
    except Exception:
        data = ""
    print(a[0], data, flush=True)
    c.close()
"#
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &code])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its first line, so the VM never races the bind.
    let stdout = child.stdout.take().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    // Hand the rest of the output back through a thread that collects it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        let _ = tx.send(rest);
    });
    PeerLogger {
        child: Killed(child),
        output: rx,
    }
}
