//! Container-mode guests that can be Kubernetes nodes, end to end: a Debian bookworm image
//! (scripts/build-debian-image) booted by the real `zos run` with a volume, running moby's
//! check-config.sh from Debian's docker.io package and the things a node's runtime does:
//! loading modules from the kit's kernel, setting sysctls, making a cgroup with a memory
//! limit, mounting overlayfs on the volume, reading /dev/kmsg; and Debian's podman nested in
//! the guest, running a container from an image archive made on the host (sent on stdin)
//! with its own network namespace and a memory limit that holds.
//!
//! TCG is slow, so one VM runs every probe (one script, its output cut into sections) and
//! each test reads its sections from that one run.

mod common;

use common::{is_root, ok, zos};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What the guest runs: each probe's output between `== NAME` and `== NAME rc=N`.
const SCRIPT: &str = r#"
# First, the image archive from stdin (`zos run -i`), onto the volume.
cat >/vol/image.tar
section() { local name="$1"; shift; echo "== $name"; "$@" 2>&1; echo "== $name rc=$?"; }
modules() {
  modprobe -a br_netfilter vxlan overlay nf_tables ip_tables iptable_nat && lsmod
}
sysctls() {
  sysctl -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 &&
    sysctl -n net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables
}
filters() {
  nft add table inet zostest && nft list tables &&
    iptables -t nat -A POSTROUTING -s 10.42.0.0/16 -j MASQUERADE && iptables -t nat -S POSTROUTING
}
cgroup() {
  local g=/sys/fs/cgroup/zostest
  mkdir "$g" && echo 16M >"$g/memory.max" || return 1
  echo "max $(cat "$g/memory.max")"
  sleep 600 &
  local pid=$!
  echo "$pid" >"$g/cgroup.procs" || return 1
  echo "moved $(cat /proc/$pid/cgroup)"
  kill "$pid"
  # A shell in the group asks for 64 MiB at once (dd's buffer): the limit must stop it.
  sh -c "echo \$\$ >$g/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=64M count=1" 2>/dev/null
  echo "dd rc=$?"
  grep oom_kill "$g/memory.events"
}
overlay() {
  mkdir -p /vol/lower /vol/upper /vol/work /vol/merged && echo lower >/vol/lower/f &&
    mount -t overlay overlay -o lowerdir=/vol/lower,upperdir=/vol/upper,workdir=/vol/work /vol/merged &&
    echo upper >>/vol/merged/f && echo "merged $(cat /vol/merged/f | tr '\n' ' ')" &&
    echo "upper dir $(cat /vol/upper/f | tr '\n' ' ')" && umount /vol/merged
}
kit_read_only() {
  local release
  release="$(uname -r)"
  ! touch "/lib/modules/$release/modules.dep" && ! touch "/boot/config-$release" &&
    grep -c '^CONFIG_' "/boot/config-$release"
}
kmsg() {
  [ -c /dev/kmsg ] && echo zos-kmsg-probe >/dev/kmsg && timeout 20 grep -m1 -o zos-kmsg-probe /dev/kmsg
}
podman_nested() {
  # Its storage on the volume (ext4), as a Kubernetes node keeps it on its disk.
  local p="podman --root /vol/containers"
  $p load -i /vol/image.tar && $p images --format '{{.Repository}}:{{.Tag}}' || return 1
  echo "guest netns $(readlink /proc/self/ns/net)"
  $p run --rm --memory 32m localhost/bb:1 sh -c \
    'echo "container netns $(readlink /proc/self/ns/net)"; echo "container memory.max $(cat /sys/fs/cgroup/memory.max)"; ip -4 -o addr show eth0' ||
    return 1
  # 64 MiB at once (dd's buffer) in a container limited to 32 MiB.
  $p run --rm --memory 32m localhost/bb:1 dd if=/dev/zero of=/dev/null bs=64M count=1
  echo "container dd rc=$?"
}
section check-config /usr/share/docker.io/contrib/check-config.sh
section modules modules
section sysctls sysctls
section filters filters
section cgroup cgroup
section overlay overlay
section kit-read-only kit_read_only
section kmsg kmsg
section podman podman_nested
"#;

/// The sections of the one guest run, by name: (output, exit code). `None` when a
/// prerequisite is missing (the test skips, or fails under CI).
fn guest() -> Option<&'static BTreeMap<String, (String, i32)>> {
    static RUN: OnceLock<Option<BTreeMap<String, (String, i32)>>> = OnceLock::new();
    RUN.get_or_init(boot_and_probe).as_ref()
}

fn boot_and_probe() -> Option<BTreeMap<String, (String, i32)>> {
    if !is_root()
        || !common::have("qemu-system-x86_64")
        || !common::have("mmdebstrap")
        || !common::have("skopeo")
    {
        return None;
    }
    let tmp = tempfile::tempdir_in("/tmp").unwrap();
    let fl = common::debian_image(tmp.path());
    let archive = image_archive(tmp.path());
    let data = tmp.path().join("data");
    let cache = tmp.path().join("cache");
    let with_dirs = |cmd: &mut Command| {
        cmd.arg("--data-dir").arg(&data).arg("--cache").arg(&cache);
    };
    let mut create = zos();
    create.args(["volume", "create", "--size", "256M", "vol"]);
    with_dirs(&mut create);
    ok(&mut create);
    let mut run = zos();
    // podman and its containers want more than the 512M the rest needs; two vCPUs make
    // TCG run them about a quarter faster (406 s → 307 s for the whole run).
    run.args([
        "run", "-i", "--memory", "1G", "--cpus", "2", "-v", "vol:/vol",
    ]);
    with_dirs(&mut run);
    run.arg(&fl).args(["--", "/bin/bash", "-c", SCRIPT]);
    run.stdin(std::fs::File::open(&archive).unwrap());
    let out = common::output(&mut run);
    let stdout = strip_colours(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "zos run of the Debian image failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(sections(&stdout))
}

/// A docker-archive of a busybox image (`localhost/bb:1`) in `dir`, written by skopeo from
/// an OCI layout: the kind of file a user brings to `podman load`.
fn image_archive(dir: &Path) -> PathBuf {
    let root = dir.join("bb-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "readlink", "ip", "dd"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let layout = dir.join("bb-layout");
    common::oci_layout(&layout, &root, "true", "amd64");
    let archive = dir.join("bb.tar");
    ok(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!(
            "docker-archive:{}:localhost/bb:1",
            archive.display()
        )));
    archive
}

/// The text without ANSI colour sequences (check-config.sh colours its verdicts).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters… final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `== NAME` … `== NAME rc=N` blocks → name → (output, N).
fn sections(text: &str) -> BTreeMap<String, (String, i32)> {
    let mut found = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let Some(header) = line.strip_prefix("== ") else {
            if let Some((_, body)) = current.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        };
        match (current.take(), header.split_once(" rc=")) {
            (Some((name, body)), Some((end, rc))) if end == name => {
                found.insert(name, (body, rc.trim().parse().unwrap_or(-1)));
            }
            (_, _) => current = Some((header.to_string(), String::new())),
        }
    }
    found
}

/// The named section's output, after asserting it ran and exited 0.
fn section<'a>(all: &'a BTreeMap<String, (String, i32)>, name: &str) -> &'a str {
    let (body, rc) = all
        .get(name)
        .unwrap_or_else(|| panic!("the guest printed no {name} section; got {all:#?}"));
    assert_eq!(*rc, 0, "{name} failed in the guest:\n{body}");
    body
}

/// check-config.sh's "Generally Necessary" items as (item, verdict).
fn generally_necessary(report: &str) -> Vec<(String, String)> {
    report
        .lines()
        .skip_while(|l| !l.starts_with("Generally Necessary:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Optional Features:"))
        .filter_map(|l| l.strip_prefix("- "))
        .filter_map(|l| l.split_once(": "))
        .map(|(item, verdict)| (item.trim().to_string(), verdict.trim().to_string()))
        .collect()
}

/// Verdicts check-config.sh gives an item that is there (wrap_good's texts).
fn is_enabled(verdict: &str) -> bool {
    [
        "enabled",
        "enabled (as module)",
        "cgroupv2",
        "enabled and tools installed",
    ]
    .contains(&verdict)
        || verdict.starts_with("properly mounted")
}

#[test]
fn check_config_reports_every_generally_necessary_item_enabled() {
    let Some(all) = guest() else { return };
    let (report, _) = all
        .get("check-config")
        .unwrap_or_else(|| panic!("check-config.sh printed nothing; got {all:#?}"));
    assert!(
        report.contains("reading kernel config from /boot/config-"),
        "check-config.sh did not find the kit's config at /boot/config-<release>:\n{report}"
    );
    let items = generally_necessary(report);
    assert!(
        items.len() >= 20 && items.iter().any(|(i, _)| i == "CONFIG_BRIDGE_NETFILTER"),
        "no Generally Necessary section in check-config.sh's output:\n{report}"
    );
    let missing: Vec<String> = items
        .iter()
        .filter(|(_, verdict)| !is_enabled(verdict))
        .map(|(item, verdict)| format!("{item}: {verdict}"))
        .collect();
    assert!(
        missing.is_empty(),
        "Generally Necessary items not enabled: {missing:?}\n{report}"
    );
}

#[test]
fn a_node_runtime_loads_modules_sets_sysctls_limits_a_cgroup_and_mounts_overlayfs() {
    let Some(all) = guest() else { return };
    let lsmod = section(all, "modules");
    for module in [
        "br_netfilter",
        "vxlan",
        "overlay",
        "nf_tables",
        "ip_tables",
        "iptable_nat",
    ] {
        assert!(
            lsmod
                .lines()
                .any(|l| l.split_whitespace().next() == Some(module)),
            "lsmod does not list {module} after modprobe:\n{lsmod}"
        );
    }
    let kit = section(all, "kit-read-only");
    assert!(
        kit.contains("Read-only file system")
            && kit.lines().last().and_then(|n| n.parse::<u32>().ok()) > Some(1000),
        "the kit's modules or config are writable, or the config is not the kernel's:\n{kit}"
    );
    let sysctls = section(all, "sysctls");
    assert!(
        sysctls.lines().rev().take(2).all(|l| l.trim() == "1"),
        "net.ipv4.ip_forward and net.bridge.bridge-nf-call-iptables did not read back 1:\n{sysctls}"
    );
    let filters = section(all, "filters");
    assert!(
        filters.contains("table inet zostest")
            && filters.contains("-A POSTROUTING -s 10.42.0.0/16 -j MASQUERADE"),
        "the nftables table or the iptables NAT rule did not read back:\n{filters}"
    );
    let cgroup = section(all, "cgroup");
    assert!(
        cgroup.contains("max 16777216") && cgroup.contains("moved 0::/zostest"),
        "no group with memory.max 16M holding the moved process:\n{cgroup}"
    );
    let oom_kills = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(
        !cgroup.contains("dd rc=0") && oom_kills.is_some_and(|n| n >= 1),
        "64 MiB were allocated in a group limited to 16 MiB:\n{cgroup}"
    );
    let overlay = section(all, "overlay");
    assert!(
        overlay.contains("merged lower upper") && overlay.contains("upper dir lower upper"),
        "overlayfs on the volume did not merge, or its writes missed the upper dir:\n{overlay}"
    );
    let kmsg = section(all, "kmsg");
    assert!(
        kmsg.contains("zos-kmsg-probe"),
        "/dev/kmsg did not give back what was written to it:\n{kmsg}"
    );
}

#[test]
fn podman_in_the_guest_runs_an_archived_image_in_its_own_netns_under_a_memory_limit() {
    let Some(all) = guest() else { return };
    let podman = section(all, "podman");
    assert!(
        podman.lines().any(|l| l.trim() == "localhost/bb:1"),
        "podman load did not list the archive's image:\n{podman}"
    );
    let field = |prefix: &str| {
        podman
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{podman}"))
    };
    assert!(field("container netns ").starts_with("net:["));
    assert_ne!(
        field("container netns "),
        field("guest netns "),
        "the container shares the guest's network namespace:\n{podman}"
    );
    assert!(
        podman.contains("inet 10.88."),
        "the container has no address on podman's bridge network:\n{podman}"
    );
    assert_eq!(field("container memory.max "), "33554432", "{podman}");
    assert_eq!(
        field("container dd rc="),
        "137",
        "64 MiB were allocated in a container limited to 32 MiB (137 is the OOM kill):\n{podman}"
    );
}

#[test]
fn check_config_items_are_read_without_colours() {
    let report = "info: reading\n\nGenerally Necessary:\n- \u{1b}[37mcgroup hierarchy\u{1b}[m: \
                  \u{1b}[32mcgroupv2\u{1b}[m\n- CONFIG_VETH: enabled (as module)\n- \
                  CONFIG_KEYS: missing\n    (hint)\n\nOptional Features:\n- CONFIG_X: missing\n";
    let items = generally_necessary(&strip_colours(report));
    let bad: Vec<&str> = items
        .iter()
        .filter(|(_, v)| !is_enabled(v))
        .map(|(i, _)| i.as_str())
        .collect();
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(bad, ["CONFIG_KEYS"]);
    let all = sections("== a\nx\n== a rc=0\n== b\ny\n== b rc=3\n");
    assert_eq!(all["a"], ("x\n".to_string(), 0));
    assert_eq!(all["b"], ("y\n".to_string(), 3));
}
