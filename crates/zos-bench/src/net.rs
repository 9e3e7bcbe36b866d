//! `zos-bench net`: a node's private networks and published ports, each next to a floor
//! measured in the same run: iperf3 VM to VM on a network against two bare QEMU guests on a
//! plain bridge; iperf3 and wrk through a published port against the same from inside the
//! network's namespace; deploy-to-reachable of a web server on a network with a published
//! port against deploy-to-running of the same machine without a network; iperf3 between
//! machines on two nodes (the second in a namespace of its own, joined by a veth) over
//! WireGuard against the same machines through a published port.
//!
//! Traffic goes only to loopback, the host's own addresses and the namespaces the node and
//! this benchmark make; every wait is bounded.

use crate::disk_image::busybox_initrd;
use crate::image::{pack_root, remove_vms, MARK};
use crate::measure::{accel_note, measure, progress};
use crate::node::{deployment, with_node, BenchNode, Tally};
use crate::stats::{median, Timing};
use crate::table::{Report, Row, Target};
use crate::vm::bare_qemu_args;
use crate::zos_bin::Zos;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zos_client::NodeClient;
use zos_types::{Keypair, PublicKey, ResultState, WorkloadName};
use zos_vmm::bootkit::{self, BootKit};
use zos_vmm::host::Accel;

/// Seconds of each iperf3 test.
const IPERF_SECONDS: u32 = 5;
/// Seconds of each wrk run.
const WRK_SECONDS: u32 = 5;
/// Targets of rows 1-3: at least this fraction of their floors (medians).
const FLOOR_TARGET: f64 = 0.9;
/// Target of row 4: deploy-to-reachable within this factor of deploy-to-running.
const DEPLOY_TARGET: f64 = 1.2;
/// The benchmark's network on the node; its machines' addresses.
const LAN_RANGE: &str = "10.61.0.0/16";
const LAN_SUBNET: &str = "10.61.1.0/24";
const SERVER_IP: &str = "10.61.1.5";
const WEB_IP: &str = "10.61.1.7";
const CLIENT_IP: &str = "10.61.1.6";
/// The network of row 4's web server (one at a time, each removed before the next).
const REACH_RANGE: &str = "10.64.0.0/16";
const REACH_SUBNET: &str = "10.64.1.0/24";
const REACH_IP: &str = "10.64.1.5";
/// Row 5's network: a /24 on each of two nodes, linked by WireGuard.
const WG_RANGE: &str = "10.65.0.0/16";
const WG_SUBNETS: [&str; 2] = ["10.65.1.0/24", "10.65.2.0/24"];
const WG_SERVER_IP: &str = "10.65.1.5";
/// Row 5's "internet" between the host (the first node) and the second node's namespace: a
/// veth with a /30 of the benchmarking range (RFC 2544), host end first.
const LINK_ADDRS: [&str; 2] = ["198.18.0.1", "198.18.0.2"];

/// The bare guests' addresses on the floor's bridge.
const FLOOR_SERVER_IP: &str = "10.62.0.1";
const FLOOR_CLIENT_IP: &str = "10.62.0.2";
/// What the guests' scripts print around each iperf3 JSON report, and when all are done.
const BEGIN: &str = "zb-iperf-begin";
const END: &str = "zb-iperf-end";
const DONE: &str = "zb-client-done";
/// The page the web servers serve.
const PAGE: &str = "zb-page";
/// The modules the floor's guests load for their virtio-net device, in dependency order.
const NET_MODULES: [&str; 6] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_mmio",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
];
/// The busybox applets the node's image links (the guest has no `--install`).
const APPLETS: [&str; 12] = [
    "sh", "echo", "cat", "sleep", "mkdir", "grep", "ip", "nc", "httpd", "printf", "seq", "true",
];

/// Runs the network benchmark and prints its table. A missed target is reported, not an
/// error; the node, its deployments and the floor's namespace are removed also on errors.
pub fn bench_net(
    zos: &Zos,
    dir: Option<PathBuf>,
    keep: bool,
    runs: usize,
    json: bool,
) -> Result<ExitCode> {
    with_node(zos, dir, keep, json, |node, work| {
        let key = Keypair::generate();
        let result = measure_all(node, zos, work, &key, runs.max(1));
        remove_deployments(node, &key);
        result
    })
}

fn measure_all(
    node: &mut BenchNode,
    zos: &Zos,
    work: &Path,
    key: &Keypair,
    runs: usize,
) -> Result<Report> {
    let accel = Accel::Auto.resolve();
    let tcg = accel_note(accel);
    progress(&format!(
        "zos-bench net: building the images in {}",
        work.display()
    ));
    let fl = net_image(zos, work)?;
    let kit = BootKit::locate(&bootkit::default_dir())?;
    let initrd = floor_initrd(&kit, work, runs)?;

    progress("zos-bench net: iperf3 between two bare guests on a plain bridge (the floor)");
    let floor_vm = floor_vm_to_vm(&kit.kernel, &initrd, accel, runs)?;

    node.start(key)?;
    let api = node.api(key)?;
    let node_id = api.node_id()?;
    let ports = (free_port()?, free_port()?);
    progress("zos-bench net: iperf3 between two machines on a node's network");
    let vm_vm = node_vm_to_vm(&api, key, node_id, &fl, ports, runs)?;
    let ns = node_namespace(node_id)?;
    let host = host_address();
    progress(&format!(
        "zos-bench net: iperf3 and wrk through published ports on {host} and inside {ns}"
    ));
    let mut published = (Vec::new(), Vec::new());
    let mut http = (Vec::new(), Vec::new());
    for _ in 0..runs {
        published.0.push(iperf_host(&host, ports.0)?);
        published.1.push(iperf_in(&ns, SERVER_IP)?);
    }
    for _ in 0..runs {
        http.0
            .push(wrk(None, &format!("http://{host}:{}/", ports.1))?);
        http.1.push(wrk(Some(&ns), &format!("http://{WEB_IP}/"))?);
    }
    remove_and_wait(&api, node_id, "net")?;

    progress("zos-bench net: deploy to reachable vs deploy to running");
    let (mut reach, mut running) = (Vec::new(), Vec::new());
    for i in 0..runs {
        reach.push(deploy_to_reachable(&api, key, node_id, &fl, i)?);
        running.push(deploy_to_running(&api, key, node_id, &fl, i)?);
    }

    progress("zos-bench net: iperf3 between two nodes' parts of a network, WireGuard vs NAT");
    let (wg, nat) = {
        let other = OtherNode::start(zos, work, key)?;
        wireguard_vm_to_vm(&api, &other, key, node_id, &fl, runs)?
    };

    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut pair = |step: &str, unit: &'static str, value: &[f64], floor: &[f64], what: &str| {
        let (v, f) = (median(value), median(floor));
        let ratio = v / f;
        rows.push(Row {
            step: step.into(),
            value: v,
            unit,
            floor: Some(f),
            notes: format!(
                "{ratio:.2}x the floor ({what}), target >= {FLOOR_TARGET}x: {}; {}; {tcg}",
                if ratio >= FLOOR_TARGET {
                    "met"
                } else {
                    "missed"
                },
                spread(value)
            ),
        });
        targets.push(Target {
            name: format!("{step} / floor"),
            value: ratio,
            target: format!(">= {FLOOR_TARGET}x"),
            met: ratio >= FLOOR_TARGET,
        });
    };
    pair(
        "iperf3 VM to VM on a network",
        "Mbit/s",
        &vm_vm,
        &floor_vm,
        "two bare QEMU guests with taps on a plain bridge, before the node starts",
    );
    pair(
        "iperf3 host to VM, published port",
        "Mbit/s",
        &published.0,
        &published.1,
        "iperf3 to the VM's address from inside the network's namespace",
    );
    pair(
        "wrk host to busybox httpd, published port",
        "req/s",
        &http.0,
        &http.1,
        "wrk to the VM's address from inside the network's namespace",
    );
    let (r, p) = (
        Timing::of_seconds(reach, 0.0),
        Timing::of_seconds(running, 0.0),
    );
    let ratio = r.median / p.median;
    rows.push(Row {
        step: "deploy web server with network + port, to reachable".into(),
        value: r.median,
        unit: "s",
        floor: Some(p.median),
        notes: format!(
            "until an HTTP GET through the port answers; {ratio:.2}x the same machine without a \
             network until its output shows, target <= {DEPLOY_TARGET}x: {}; {}; {tcg}",
            if ratio <= DEPLOY_TARGET {
                "met"
            } else {
                "missed"
            },
            r.spread()
        ),
    });
    targets.push(Target {
        name: "deploy to reachable / deploy to running".into(),
        value: ratio,
        target: format!("<= {DEPLOY_TARGET}x"),
        met: ratio <= DEPLOY_TARGET,
    });
    let (w, n) = (median(&wg), median(&nat));
    rows.push(Row {
        step: "iperf3 VM to VM across two nodes, WireGuard".into(),
        value: w,
        unit: "Mbit/s",
        floor: Some(n),
        notes: format!(
            "{:.2}x the floor: the same two machines through a published port (the same nodes \
             and veth between them, NAT, no WireGuard); the second node runs in a network \
             namespace of its own; no target; {}; {tcg}",
            w / n,
            spread(&wg)
        ),
    });
    Ok(Report { rows, targets })
}

/// "median of 3, range a–b" of plain values (throughputs have no seconds unit).
fn spread(values: &[f64]) -> String {
    if values.len() < 2 {
        return "1 run".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("median of {}, range {min:.0}–{max:.0}", values.len())
}

/// A TCP port free now on every address (bound by the OS, then released for the node).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------
// Images

/// Copies `/usr/bin/iperf3` and the shared libraries `ldd` names for it into `root`, each at
/// its own path.
fn copy_iperf3(root: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg("/usr/bin/iperf3")
        .output()
        .context("starting ldd /usr/bin/iperf3 (install iperf3 with scripts/setup)")?;
    if !out.status.success() {
        bail!(
            "ldd /usr/bin/iperf3 failed (install iperf3 with scripts/setup): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut files = vec![PathBuf::from("/usr/bin/iperf3")];
    files.extend(ldd_paths(&String::from_utf8_lossy(&out.stdout)));
    for src in files {
        let dst = root.join(src.strip_prefix("/").unwrap_or(&src));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Copies what a symlink points to: the guest needs the file under this name.
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

/// The absolute paths in `ldd`'s output ("libc.so.6 => /lib/.../libc.so.6 (0x…)" and the
/// loader's "/lib64/ld-linux-x86-64.so.2 (0x…)").
fn ldd_paths(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.split_once("=>").map_or(l, |(_, right)| right).trim();
            let path = l.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The node's image: busybox with the applets the machines use, iperf3 with its libraries,
/// and a writable /tmp (iperf3 keeps its buffers in a file there).
fn net_image(zos: &Zos, work: &Path) -> Result<PathBuf> {
    let root = work.join("net-root");
    let bin = root.join("bin");
    for dir in [&bin, &root.join("tmp"), &root.join("srv")] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("copying /bin/busybox into the image (install busybox-static: scripts/setup)")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("linking {}", bin.join(applet).display()))?;
    }
    copy_iperf3(&root)?;
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .context("making the image's /tmp writable")?;
    pack_root(zos, work, &root, "net")
}

/// The floor's initramfs: busybox, iperf3 and the virtio-net modules; `/init` takes its
/// address (`zb.ip=`) and role (`zb.role=server|client`) from the kernel command line.
fn floor_initrd(kit: &BootKit, work: &Path, runs: usize) -> Result<PathBuf> {
    let dir = work.join("floor-initrd");
    std::fs::create_dir_all(dir.join("tmp"))
        .with_context(|| format!("creating {}", dir.join("tmp").display()))?;
    copy_iperf3(&dir)?;
    let out = work.join("floor-initrd.cpio");
    let script = format!(
        "exec </dev/null >/dev/console 2>&1\n\
         ip link set lo up\nip link set eth0 up\n\
         for w in $(cat /proc/cmdline); do case $w in \
         zb.ip=*) ip addr add ${{w#zb.ip=}}/24 dev eth0;; zb.role=*) role=${{w#zb.role=}};; \
         esac; done\n\
         if [ \"$role\" = server ]; then exec /usr/bin/iperf3 -s; fi\n\
         {}\npoweroff -f\n",
        client_script(FLOOR_SERVER_IP, None, runs)
    );
    busybox_initrd(kit, &dir, &out, &NET_MODULES, &script)?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(out)
}

/// The iperf3 client's script, the same on the node and in the floor: waits (bounded) for
/// the server (and for a web server at `wait_web` to answer, so no machine is still booting
/// beside the test), then runs `runs` tests, each report between [`BEGIN`] and [`END`], then
/// [`DONE`].
fn client_script(server: &str, wait_web: Option<&str>, runs: usize) -> String {
    // nc, not busybox's wget: the static busybox's wget crashes in the image (no NSS there).
    let wait_web = wait_web.map_or(String::new(), |ip| {
        format!(
            "i=0; until printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80 | grep -q {PAGE}; do \
             i=$((i+1)); [ $i -ge 120 ] && break; sleep 1; done\n"
        )
    });
    format!(
        "{wait_web}i=0; until /usr/bin/iperf3 -c {server} -t 1 --connect-timeout 3000 >/dev/null 2>&1; do \
         i=$((i+1)); [ $i -ge 120 ] && break; sleep 1; done\n\
         for n in $(seq {runs}); do /usr/bin/iperf3 -c {server} -t {IPERF_SECONDS} -J > /tmp/iperf.json; \
         echo {BEGIN}; cat /tmp/iperf.json; echo {END}; done\necho {DONE}\n"
    )
}

// ---------------------------------------------------------------------------------------
// Parsing

/// The received throughput of one iperf3 `-J` report, Mbit/s; its own error if it has one.
fn iperf_mbits(report: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(report.trim())
        .with_context(|| format!("parsing an iperf3 JSON report: {report}"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3 failed: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .with_context(|| {
            format!("no end.sum_received.bits_per_second in iperf3's report: {report}")
        })
}

/// Every report between [`BEGIN`] and [`END`] in a console log, in Mbit/s.
fn iperf_reports(log: &str) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    let mut rest = log;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let end = after
            .find(END)
            .with_context(|| format!("an iperf3 report without its end marker: {after}"))?;
        out.push(iperf_mbits(&after[..end])?);
        rest = &after[end + END.len()..];
    }
    Ok(out)
}

/// wrk's "Requests/sec:" figure.
fn wrk_rate(text: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

// ---------------------------------------------------------------------------------------
// The floor: two bare guests on a plain bridge

/// A network namespace of the benchmark's own with a bridge and two taps; deleted (with
/// everything in it) when dropped.
struct FloorNet {
    name: String,
}

/// The floor's bridge and taps inside [`FloorNet`].
const FLOOR_BRIDGE: &str = "zb0";
const FLOOR_TAPS: [&str; 2] = ["zbt0", "zbt1"];

impl FloorNet {
    fn new() -> Result<FloorNet> {
        let net = FloorNet {
            name: format!("zosbench-{}", std::process::id()),
        };
        ip(&["netns", "add", &net.name])?;
        let n = net.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "add", FLOOR_BRIDGE, "type", "bridge"])?;
        ip(&["-n", n, "link", "set", FLOOR_BRIDGE, "up"])?;
        for tap in FLOOR_TAPS {
            ip(&["-n", n, "tuntap", "add", "dev", tap, "mode", "tap"])?;
            ip(&["-n", n, "link", "set", tap, "master", FLOOR_BRIDGE, "up"])?;
        }
        Ok(net)
    }
}

impl Drop for FloorNet {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: removing namespace {}: {e:#}", self.name);
        }
    }
}

/// Runs `ip ARGS`, failing with what it printed.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("starting ip (install iproute2 with scripts/setup)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A child killed and reaped when dropped.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots a bare guest in namespace `ns` on tap `tap`, as `role` at `addr`.
fn boot_floor_guest(
    ns: &str,
    kernel: &Path,
    initrd: &Path,
    accel: Accel,
    (tap, mac): (&str, &str),
    role: &str,
    addr: &str,
) -> Result<Guest> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "qemu-system-x86_64"])
        .args(bare_qemu_args(
            kernel,
            initrd,
            accel,
            &format!("zb.role={role} zb.ip={addr}"),
        ))
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device",
            &format!("virtio-net-device,netdev=n0,mac={mac}"),
        ])
        .stdin(Stdio::null())
        .stdout(if role == "client" {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (install it: scripts/setup)")?;
    Ok(Guest(child))
}

/// Reads `child`'s stdout until it holds `needle` or `limit` passes (then fails); returns
/// what it read. A thread reads, so a silent guest cannot block the wait past `limit`.
fn read_until(child: &mut Child, needle: &str, limit: Duration) -> Result<String> {
    let mut out = child
        .stdout
        .take()
        .context("the guest's stdout is not piped")?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.extend_from_slice(&buf[..n]);
            }
        }
    });
    let start = Instant::now();
    loop {
        let text = seen
            .lock()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if start.elapsed() > limit {
            bail!(
                "the floor's client guest did not finish within {} s; its console ends:\n{}",
                limit.as_secs(),
                last_lines(&text, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of `text`, for an error message.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How long a client (node or floor) may take: boots, the waits, `runs` tests.
fn client_limit(runs: usize) -> Duration {
    Duration::from_secs(300 + runs as u64 * (u64::from(IPERF_SECONDS) + 10))
}

/// The floor of row 1: `runs` iperf3 tests between two bare guests, Mbit/s each.
fn floor_vm_to_vm(kernel: &Path, initrd: &Path, accel: Accel, runs: usize) -> Result<Vec<f64>> {
    let net = FloorNet::new()?;
    let _server = boot_floor_guest(
        &net.name,
        kernel,
        initrd,
        accel,
        (FLOOR_TAPS[0], "52:54:00:62:00:01"),
        "server",
        FLOOR_SERVER_IP,
    )?;
    let mut client = boot_floor_guest(
        &net.name,
        kernel,
        initrd,
        accel,
        (FLOOR_TAPS[1], "52:54:00:62:00:02"),
        "client",
        FLOOR_CLIENT_IP,
    )?;
    let log = read_until(&mut client.0, DONE, client_limit(runs))?;
    let got = iperf_reports(&log)?;
    if got.len() != runs {
        bail!(
            "the floor's client printed {} of {runs} iperf3 reports:\n{log}",
            got.len()
        );
    }
    Ok(got)
}

// ---------------------------------------------------------------------------------------
// On the node

/// Where a machine sits on network `lan`.
#[derive(Clone, Copy)]
enum On<'a> {
    /// Not on it.
    Off,
    /// At this address.
    At(&'a str),
    /// At the address the node gives.
    Any,
}

/// A zmachine of `fl` on network `lan` at `ip` (`None`: no network) running `script`, with
/// `ports` (guest, host) published.
fn machine_yaml(
    name: &str,
    fl: &Path,
    ip: Option<&str>,
    script: &str,
    ports: &[(u16, u16)],
) -> String {
    machine_on(name, fl, ip.map_or(On::Off, On::At), script, ports)
}

/// [`machine_yaml`] with the machine's place on `lan` as [`On`] says.
fn machine_on(name: &str, fl: &Path, on: On, script: &str, ports: &[(u16, u16)]) -> String {
    let mut data = serde_json::json!({
        "flist": fl.display().to_string(),
        "memory": "256M",
        // The image's entrypoint is `/bin/sh -c` (see `pack_root`): the command is the script.
        "cmd": [script],
    });
    match on {
        On::Off => {}
        On::At(ip) => {
            data["network"] = serde_json::json!({ "interfaces": [{ "network": "lan", "ip": ip }] })
        }
        On::Any => data["network"] = serde_json::json!({ "interfaces": [{ "network": "lan" }] }),
    }
    if !ports.is_empty() {
        data["ports"] = ports
            .iter()
            .map(|(port, host)| serde_json::json!({ "port": port, "host_port": host }))
            .collect();
    }
    serde_json::json!({ "name": name, "type": "zmachine", "data": data }).to_string()
}

/// The network workload `lan` on `range`, this node's part `subnet`.
fn lan_yaml(range: &str, subnet: &str) -> String {
    serde_json::json!({ "name": "lan", "type": "network",
                        "data": { "ip_range": range, "subnet": subnet } })
    .to_string()
}

/// A deployment file (JSON is YAML) of `workloads`.
fn deployment_yaml(name: &str, workloads: &[String]) -> String {
    format!(
        "{{\"name\": \"{name}\", \"workloads\": [{}]}}",
        workloads.join(", ")
    )
}

/// The web server's script: its page, [`MARK`] once it is about to serve, then httpd.
fn web_script() -> String {
    format!("mkdir -p /srv && echo {PAGE} > /srv/index.html && echo {MARK} && exec httpd -f -p 80 -h /srv")
}

/// Row 1 on the node: deploys `net` (the network, an iperf3 server with 5201 published on
/// `ports.0`, a web server with 80 on `ports.1`, and the client), waits for the client's
/// reports in its log; Mbit/s each. `net` stays for rows 2 and 3.
fn node_vm_to_vm(
    api: &NodeClient,
    key: &Keypair,
    node: PublicKey,
    fl: &Path,
    ports: (u16, u16),
    runs: usize,
) -> Result<Vec<f64>> {
    let client = client_script(SERVER_IP, Some(WEB_IP), runs);
    let yaml = deployment_yaml(
        "net",
        &[
            lan_yaml(LAN_RANGE, LAN_SUBNET),
            machine_yaml(
                "server",
                fl,
                Some(SERVER_IP),
                "exec /usr/bin/iperf3 -s",
                &[(5201, ports.0)],
            ),
            machine_yaml("web", fl, Some(WEB_IP), &web_script(), &[(80, ports.1)]),
            machine_yaml(
                "client",
                fl,
                Some(CLIENT_IP),
                &format!("{client}exec sleep 100000"),
                &[],
            ),
        ],
    );
    api.create(&deployment(key, node, &yaml)?)
        .context("deploying the network benchmark's machines")?;
    let limit = client_limit(runs);
    let start = Instant::now();
    let log = loop {
        let log = logs_of(api, "net", "client");
        if log.contains(DONE) {
            break log;
        }
        check_failed(api, "net")?;
        if start.elapsed() > limit {
            bail!(
                "the client machine did not finish within {} s; its log ends:\n{}",
                limit.as_secs(),
                last_lines(&log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let got = iperf_reports(&log)?;
    if got.len() != runs {
        bail!(
            "the client machine printed {} of {runs} iperf3 reports:\n{log}",
            got.len()
        );
    }
    Ok(got)
}

/// Row 5's second node: a `zos node run` in a network namespace of its own, joined to the
/// host (where the first node runs) by a veth; removed with its VMs and namespace when
/// dropped.
struct OtherNode {
    ns: String,
    zos: Zos,
    key: Keypair,
    node: BenchNode,
}

impl OtherNode {
    /// Makes the namespace and its link, then starts the node (its files in `work/b`).
    fn start(zos: &Zos, work: &Path, key: &Keypair) -> Result<OtherNode> {
        let pid = std::process::id();
        let ns = format!("zosbench-{pid}-b");
        let veth = format!("zbv{pid}");
        let node = BenchNode::elsewhere(
            zos,
            work,
            &work.join("b"),
            &ns,
            &format!("wireguard_host = \"{}\"", LINK_ADDRS[1]),
        )?;
        ip(&["netns", "add", &ns])?;
        // From here on, dropping it cleans up.
        let mut other = OtherNode {
            node,
            ns,
            zos: zos.clone(),
            key: key.clone(),
        };
        let n = other.ns.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", n,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", LINK_ADDRS[0]),
            "dev",
            &veth,
        ])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/30", LINK_ADDRS[1]),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
        ip(&["-n", n, "route", "add", "default", "via", LINK_ADDRS[0]])?;
        other.node.start(key)?;
        Ok(other)
    }
}

impl Drop for OtherNode {
    fn drop(&mut self) {
        remove_deployments(&self.node, &self.key);
        self.node.stop();
        remove_vms(&self.zos, &self.node.data_dir());
        // The veth goes with the namespace.
        if let Err(e) = ip(&["netns", "del", &self.ns]) {
            eprintln!("warning: removing namespace {}: {e:#}", self.ns);
        }
    }
}

/// Row 5: one network `lan` with a /24 on each node, the same owner's deployment `wg` on
/// both: an iperf3 server on the first node (5201 also published), a client on the second
/// node; each node's part peers with the other's WireGuard end on its veth address. The
/// client alternates iperf3 over WireGuard to the server's address and through the
/// published port (NAT, no WireGuard). Mbit/s each, in that order.
fn wireguard_vm_to_vm(
    api: &NodeClient,
    other: &OtherNode,
    key: &Keypair,
    node_id: PublicKey,
    fl: &Path,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let api_b = other.node.api(key)?;
    let node_b = api_b.node_id()?;
    let end_a = api.wireguard_end("wg", "lan")?.value;
    let end_b = api_b.wireguard_end("wg", "lan")?.value;
    let lan = |subnet: &str, peer_subnet: &str, peer: &str, end: &zos_types::WireGuardEnd| {
        serde_json::json!({ "name": "lan", "type": "network", "data": {
            "ip_range": WG_RANGE, "subnet": subnet,
            "wireguard": { "peers": [{ "subnet": peer_subnet, "public_key": end.public_key,
                                       "endpoint": format!("{peer}:{}", end.listen_port) }] } } })
        .to_string()
    };
    let port = free_port()?;
    let a = deployment_yaml(
        "wg",
        &[
            lan(WG_SUBNETS[0], WG_SUBNETS[1], LINK_ADDRS[1], &end_b),
            machine_yaml(
                "server",
                fl,
                Some(WG_SERVER_IP),
                "exec /usr/bin/iperf3 -s",
                &[(5201, port)],
            ),
        ],
    );
    let one = |target: &str| {
        format!(
            "/usr/bin/iperf3 -c {target} -t {IPERF_SECONDS} -J > /tmp/iperf.json; echo {BEGIN}; \
             cat /tmp/iperf.json; echo {END}; "
        )
    };
    let client = format!(
        "i=0; until /usr/bin/iperf3 -c {WG_SERVER_IP} -t 1 --connect-timeout 3000 >/dev/null 2>&1; \
         do i=$((i+1)); [ $i -ge 120 ] && break; sleep 1; done\n\
         for n in $(seq {runs}); do {}{}done\necho {DONE}\nexec sleep 100000",
        one(WG_SERVER_IP),
        one(&format!("{} -p {port}", LINK_ADDRS[0]))
    );
    let b = deployment_yaml(
        "wg",
        &[
            lan(WG_SUBNETS[1], WG_SUBNETS[0], LINK_ADDRS[0], &end_a),
            machine_on("client", fl, On::Any, &client, &[]),
        ],
    );
    api.create(&deployment(key, node_id, &a)?)
        .context("deploying the WireGuard benchmark's server part")?;
    let sent = api_b
        .create(&deployment(key, node_b, &b)?)
        .context("deploying the WireGuard benchmark's client part on the second node");
    let result = sent.and_then(|_| {
        let limit = client_limit(2 * runs);
        let start = Instant::now();
        loop {
            let log = logs_of(&api_b, "wg", "client");
            if log.contains(DONE) {
                break Ok(log);
            }
            check_failed(api, "wg")?;
            check_failed(&api_b, "wg")?;
            if start.elapsed() > limit {
                bail!(
                    "the WireGuard client did not finish within {} s; its log ends:\n{}",
                    limit.as_secs(),
                    last_lines(&log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    remove_and_wait(&api_b, node_b, "wg")?;
    remove_and_wait(api, node_id, "wg")?;
    let got = iperf_reports(&result?)?;
    if got.len() != 2 * runs {
        bail!(
            "the WireGuard client printed {} of {} iperf3 reports",
            got.len(),
            2 * runs
        );
    }
    let wg = got.iter().step_by(2).copied().collect();
    let nat = got.iter().skip(1).step_by(2).copied().collect();
    Ok((wg, nat))
}

/// The console log of `deployment`'s `workload` as it is now (empty before the VM exists).
fn logs_of(api: &NodeClient, deployment: &str, workload: &str) -> String {
    let Ok(name) = WorkloadName::try_from(workload.to_owned()) else {
        return String::new();
    };
    let mut text = Vec::new();
    let _ = api.logs(deployment, &name, |chunk| {
        text.extend_from_slice(chunk);
        Ok(())
    });
    String::from_utf8_lossy(&text).into_owned()
}

/// Fails if a workload of `name` ended in error.
fn check_failed(api: &NodeClient, name: &str) -> Result<()> {
    let now = api.deployment(name)?.value;
    if let Some(error) = Tally::of(std::slice::from_ref(&now)).first_error {
        bail!("deployment {error}");
    }
    Ok(())
}

/// The namespace of the node's one network: `zos-<first 8 hex of its id>-…`.
fn node_namespace(node: PublicKey) -> Result<String> {
    let found = namespaces_of(node);
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one network namespace of the node in /run/netns, found {found:?}"),
    }
}

/// The node's network namespaces.
fn namespaces_of(node: PublicKey) -> Vec<String> {
    let id = node.to_string();
    let prefix = format!("zos-{}-", &id[..8.min(id.len())]);
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The host's first global IPv4 address (the node's address a client would use), or
/// loopback when it has none.
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse::<Ipv4Addr>().ok()
        })
        .next()
        .unwrap_or(Ipv4Addr::LOCALHOST)
        .to_string()
}

/// iperf3 from the host to `host:port` (the published port), Mbit/s.
fn iperf_host(host: &str, port: u16) -> Result<f64> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", host, "-p", &port.to_string()]);
    iperf_run(cmd)
}

/// iperf3 from inside namespace `ns` to `server`'s port 5201, Mbit/s.
fn iperf_in(ns: &str, server: &str) -> Result<f64> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "iperf3", "-c", server]);
    iperf_run(cmd)
}

fn iperf_run(mut cmd: Command) -> Result<f64> {
    cmd.args([
        "-t",
        &IPERF_SECONDS.to_string(),
        "--connect-timeout",
        "5000",
        "-J",
    ]);
    let out = measure(&mut cmd, "iperf3 (install it with scripts/setup)")?;
    iperf_mbits(&String::from_utf8_lossy(&out.stdout))
}

/// wrk against `url` (from namespace `ns` if given), requests/s.
fn wrk(ns: Option<&str>, url: &str) -> Result<f64> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    cmd.args([
        "-t1",
        "-c8",
        &format!("-d{WRK_SECONDS}s"),
        "--timeout",
        "5s",
        url,
    ]);
    let out = measure(&mut cmd, "wrk (install it with scripts/setup)")?;
    wrk_rate(&String::from_utf8_lossy(&out.stdout))
}

/// Removes deployment `name` and waits (bounded) until the node's networks are gone, so the
/// next step neither shares the host with a teardown nor finds its range taken.
fn remove_and_wait(api: &NodeClient, node: PublicKey, name: &str) -> Result<()> {
    api.remove(name)
        .with_context(|| format!("removing deployment {name}"))?;
    let start = Instant::now();
    while !namespaces_of(node).is_empty() {
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "the node's network namespaces {:?} were still there 2 minutes after removing {name}",
                namespaces_of(node)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Sends `yaml` as deployment `name`, then returns the seconds until `ready` says so; fails
/// as soon as a workload ends in error, or after five minutes.
fn deploy_until(
    api: &NodeClient,
    key: &Keypair,
    node: PublicKey,
    name: &str,
    yaml: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<f64> {
    let d = deployment(key, node, yaml)?;
    let start = Instant::now();
    api.create(&d)
        .with_context(|| format!("deploying {name}"))?;
    let mut last_check = start;
    loop {
        if ready() {
            return Ok(start.elapsed().as_secs_f64());
        }
        // Now and then, not every pass: each extra request adds to what is timed.
        if last_check.elapsed() > Duration::from_millis(500) {
            last_check = Instant::now();
            check_failed(api, name)?;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("deployment {name} was not ready after 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Row 4: seconds from deploying a web server on a network with its port 80 published until
/// an HTTP GET through the port (on loopback) answers with its page; removed afterwards.
fn deploy_to_reachable(
    api: &NodeClient,
    key: &Keypair,
    node: PublicKey,
    fl: &Path,
    i: usize,
) -> Result<f64> {
    let name = format!("reach{i}");
    let port = free_port()?;
    let yaml = deployment_yaml(
        &name,
        &[
            lan_yaml(REACH_RANGE, REACH_SUBNET),
            machine_yaml("web", fl, Some(REACH_IP), &web_script(), &[(80, port)]),
        ],
    );
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let secs = deploy_until(api, key, node, &name, &yaml, || http_answers(addr));
    remove_and_wait(api, node, &name)?;
    secs
}

/// Row 4's floor: seconds from deploying the same web server without a network until its
/// output shows in its log; removed afterwards.
fn deploy_to_running(
    api: &NodeClient,
    key: &Keypair,
    node: PublicKey,
    fl: &Path,
    i: usize,
) -> Result<f64> {
    let name = format!("plain{i}");
    let yaml = deployment_yaml(&name, &[machine_yaml("web", fl, None, &web_script(), &[])]);
    let secs = deploy_until(api, key, node, &name, &yaml, || {
        logs_of(api, &name, "web").contains(MARK)
    });
    api.remove(&name)
        .with_context(|| format!("removing deployment {name}"))?;
    secs
}

/// Whether `GET /` on `addr` answers with [`PAGE`] (each step bounded to 2 s).
fn http_answers(addr: SocketAddr) -> bool {
    let limit = Duration::from_secs(2);
    let Ok(mut s) = TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(limit));
    let _ = s.set_write_timeout(Some(limit));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains(PAGE)
}

/// Best effort on the way out: removes every deployment of the benchmark's owner and waits
/// (bounded) for the node's networks to go; namespaces still left are deleted with a warning.
fn remove_deployments(node: &BenchNode, key: &Keypair) {
    let Ok(api) = node.api(key) else { return };
    let Ok(node_id) = api.node_id() else { return };
    if let Ok(list) = api.deployments(false) {
        for d in list.value {
            let live = d.workloads.iter().any(|w| {
                w.result
                    .as_ref()
                    .is_none_or(|r| r.state != ResultState::Deleted)
            });
            if live {
                if let Err(e) = api.remove(&d.name) {
                    eprintln!("warning: removing deployment {}: {e}", d.name);
                }
            }
        }
    }
    let start = Instant::now();
    while !namespaces_of(node_id).is_empty() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    for ns in namespaces_of(node_id) {
        eprintln!("warning: namespace {ns} outlived its deployment; deleting it");
        let _ = ip(&["netns", "del", &ns]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_reports_are_read_between_markers_from_a_console_log() {
        let log = format!(
            "boot noise\r\n{BEGIN}\r\n{{\"start\": {{}}, \"end\": {{\"sum_received\": \
             {{\"bits_per_second\": 1.5e9}}}}}}\r\n{END}\r\n{BEGIN}\r\n{{\"end\": \
             {{\"sum_received\": {{\"bits_per_second\": 250000000.0}}}}}}\r\n{END}\r\n{DONE}\r\n"
        );
        assert_eq!(iperf_reports(&log).unwrap(), vec![1500.0, 250.0]);
    }

    #[test]
    fn an_iperf_error_report_is_an_error() {
        let err = iperf_mbits("{\"start\": {}, \"end\": {}, \"error\": \"unable to connect\"}")
            .unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
        assert!(iperf_reports(&format!("{BEGIN} {{}}")).is_err());
    }

    #[test]
    fn wrk_rate_is_read() {
        let out = "Running 5s test @ http://x/\n  1 threads and 8 connections\n\
                   Requests/sec:   1234.56\nTransfer/sec:    200.00KB\n";
        assert_eq!(wrk_rate(out).unwrap(), 1234.56);
        assert!(wrk_rate("nothing").is_err());
    }

    #[test]
    fn ldd_paths_keep_absolute_paths_only() {
        let out = "\tlinux-vdso.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
