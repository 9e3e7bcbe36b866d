//! What the cgroup tests (vm_cgroup, vm_fair) share: a busybox flist booted as container VMs
//! by the real `zos`, and a VM's cgroup read straight from /proc and the cgroup file system
//! (not through zos-cgroup, which is what they test).
#![allow(dead_code)]

use crate::common::{self, ok, zos};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A busybox root packed into `x.fl`, and the data dir and cache every `zos` call uses; VMs
/// still there when dropped are removed.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub fl: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        // Short paths: a VM's unix sockets live in the data dir (107 bytes at most).
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "sleep", "true", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let fl = common::pack(&root, tmp.path(), "x.fl");
        Fixture { tmp, fl }
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.data().join("vms").join(name)
    }

    /// `zos SUB --data-dir … --cache …`, ready for more arguments.
    pub fn zos(&self, sub: &str) -> Command {
        let mut cmd = zos();
        cmd.arg(sub)
            .arg("--data-dir")
            .arg(self.data())
            .arg("--cache")
            .arg(self.tmp.path().join("cache"));
        cmd
    }

    /// Starts a detached VM running `script` with `cpus` vCPUs and `memory` (e.g. "300M").
    pub fn run_detached(&self, name: &str, cpus: u32, memory: &str, script: &str) {
        ok(self
            .zos("run")
            .arg("-d")
            .args([
                "--name",
                name,
                "--cpus",
                &cpus.to_string(),
                "--memory",
                memory,
            ])
            .arg(&self.fl)
            .args(["--", "/bin/sh", "-c", script]));
    }

    /// QEMU's pid, from the VM's pidfile.
    pub fn qemu_pid(&self, name: &str) -> i32 {
        let text = std::fs::read_to_string(self.vm_dir(name).join("qemu.pid")).unwrap();
        text.trim().parse().unwrap()
    }

    /// The VM's console so far.
    pub fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.vm_dir(name).join("console.log")).unwrap_or_default()
    }

    /// Waits until the console has a line `line` (the guest got that far).
    pub fn wait_for_console(&self, name: &str, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.console(name).lines().any(|l| l.trim_end() == line) {
            assert!(
                Instant::now() < deadline,
                "VM {name} never printed {line:?}; console:\n{}",
                self.console(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.data().join("vms")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                let _ = self
                    .zos("vm")
                    .args(["rm", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Whether the host runs cgroup v2 only (else v1, as on a hybrid host, where the CPU and
/// memory controllers are v1 mounts).
pub fn cgroup_v2() -> bool {
    !mounts().iter().any(|(fstype, _, opts)| {
        fstype == "cgroup" && opts.split(',').any(|o| o == "memory" || o == "cpu")
    })
}

/// (type, mount point, super options) of every cgroup mount (mount roots are `/` on the
/// hosts these tests run on).
fn mounts() -> Vec<(String, PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let opts = right.nth(1).unwrap_or("");
            fstype
                .starts_with("cgroup")
                .then(|| (fstype.to_string(), PathBuf::from(point), opts.to_string()))
        })
        .collect()
}

/// The directory of `pid`'s cgroup for `controller` (its v1 name; ignored on v2), from
/// `/proc/PID/cgroup` and the mount table.
pub fn cgroup_dir(pid: i32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = cgroup_v2();
    let path = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            Some((f.next()?, f.next()?, f.next()?))
        })
        .find(|(_, names, _)| {
            if v2 {
                names.is_empty()
            } else {
                names.split(',').any(|n| n == controller)
            }
        })
        .map(|(_, _, p)| p.to_string())
        .unwrap_or_else(|| panic!("no {controller} cgroup for {pid} in:\n{text}"));
    let (_, point, _) = mounts()
        .into_iter()
        .find(|(fstype, _, opts)| {
            if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && opts.split(',').any(|o| o == controller)
            }
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup mount"));
    point.join(path.trim_start_matches('/'))
}

/// A cgroup file's contents, trimmed.
pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}
