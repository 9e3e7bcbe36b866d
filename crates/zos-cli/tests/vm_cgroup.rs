//! End-to-end: each VM's QEMU and virtiofsd run in a cgroup of the VM's own (real cgroups,
//! v1 or v2 as the host has them) whose CPU quota and weight, memory limit and pids limit
//! follow its spec, and the cgroup is gone once the VM is stopped, crashed or removed.

mod common;
mod vm_common;

use common::ok;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vm_common::{cgroup_dir, cgroup_v2, read, Fixture};
use zos_vmm::limits;

/// The VM's cgroup directories (one per controller on v1), checked to hold QEMU and its
/// virtiofsd and to carry the limits of a VM of 2 vCPUs and 300 MiB.
fn check_limits(f: &Fixture, name: &str) -> Vec<PathBuf> {
    let qemu = f.qemu_pid(name);
    let controllers = if cgroup_v2() {
        vec!["cpu"]
    } else {
        vec!["cpu", "memory", "pids"]
    };
    let dirs: Vec<PathBuf> = controllers.iter().map(|c| cgroup_dir(qemu, c)).collect();
    let (cpu, memory, pids) = if cgroup_v2() {
        (&dirs[0], &dirs[0], &dirs[0])
    } else {
        (&dirs[0], &dirs[1], &dirs[2])
    };
    for dir in &dirs {
        let leaf = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            leaf.starts_with(&format!("vm-{name}-")),
            "QEMU is in {}, not a group of its VM",
            dir.display()
        );
        assert!(
            dir.parent().is_some_and(|p| p.ends_with("zos")),
            "the group is under zos/: {}",
            dir.display()
        );
        let procs = read(dir, "cgroup.procs");
        assert!(
            procs.lines().count() >= 2 && procs.lines().any(|p| p == qemu.to_string()),
            "QEMU {qemu} and virtiofsd expected in {}: {procs}",
            dir.display()
        );
    }
    let want_memory = limits::memory_demand(300 << 20);
    if cgroup_v2() {
        assert_eq!(read(cpu, "cpu.max"), "200000 100000");
        assert_eq!(read(cpu, "cpu.weight"), "200");
        assert_eq!(read(memory, "memory.max"), want_memory.to_string());
    } else {
        assert_eq!(read(cpu, "cpu.cfs_quota_us"), "200000", "2 vCPUs' time");
        assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
        assert_eq!(read(cpu, "cpu.shares"), "2048", "twice the default weight");
        assert_eq!(
            read(memory, "memory.limit_in_bytes"),
            want_memory.to_string()
        );
    }
    assert!(
        want_memory >= (300 << 20) + limits::VMM_OVERHEAD,
        "RAM plus overhead"
    );
    assert_eq!(read(pids, "pids.max"), (limits::PIDS_BASE + 2).to_string());
    dirs
}

fn assert_gone(dirs: &[PathBuf], after: &str) {
    for d in dirs {
        assert!(!d.exists(), "{after} left the cgroup {}", d.display());
    }
}

/// Kills `pid` and waits until it is gone (or a zombie nobody reaped yet).
fn kill9(pid: i32) {
    // SAFETY: kill has no memory preconditions.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
        if state.is_none_or(|s| s.starts_with(['Z', 'X'])) {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_vms_processes_are_in_a_cgroup_with_its_limits_which_goes_with_them() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    let f = Fixture::new();
    f.run_detached("lim", 2, "300M", "echo up; exec sleep 1000");
    let dirs = check_limits(&f, "lim");
    // A run killed mid-test (its temporary VM directories gone with it) leaves empty groups
    // nobody will look at again; they would keep zos/ alive and are swept here, so the last
    // assertion is about this test's groups. A group with processes is not empty: rmdir fails.
    let mut others_alive = false;
    for dir in &dirs {
        let parent = dir.parent().unwrap();
        for entry in std::fs::read_dir(parent).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && !dirs.contains(&path) && std::fs::remove_dir(&path).is_err() {
                others_alive = true;
            }
        }
    }

    // A stop ends the processes and the group; a start makes it again.
    f.wait_for_console("lim", "up", 1);
    ok(f.zos("vm").args(["stop", "lim", "--timeout", "60s"]));
    assert_gone(&dirs, "zos vm stop");
    ok(f.zos("vm").args(["start", "lim"]));
    let dirs = check_limits(&f, "lim");

    // A crash (QEMU killed) leaves a group the next look at the VM removes.
    kill9(f.qemu_pid("lim"));
    let status = ok(f.zos("vm").args(["status", "lim"]));
    assert!(status.starts_with("lim crashed"), "{status}");
    assert_gone(&dirs, "a crash and zos vm status");

    ok(f.zos("vm").args(["start", "lim"]));
    let dirs = check_limits(&f, "lim");
    ok(f.zos("vm").args(["rm", "lim"]));
    assert_gone(&dirs, "zos vm rm");
    // The parent goes with its last group (unless another node's VMs are running here).
    let parent: &Path = dirs[0].parent().unwrap();
    assert!(
        others_alive || !parent.exists(),
        "{} left behind",
        parent.display()
    );
}
