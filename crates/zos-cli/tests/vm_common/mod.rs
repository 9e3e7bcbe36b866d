//! What the VM tests (vm, vm_cgroup, vm_fair) share: a busybox flist booted as container VMs
//! by the real `zos`, and a VM's cgroup read straight from /proc and the cgroup file system
//! (not through zos-cgroup, which is what they test).
#![allow(dead_code)]

use crate::common::{self, ok, zos};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One test's world: a busybox root packed into `x.fl` (no image config), and the data dir and
/// block cache every `zos` call of the test uses. VMs still there when dropped are removed.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub fl: PathBuf,
}

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "nproc", "sleep", "grep", "hostname", "df", "kill", "test",
    "pwd", "mkdir", "true", "env", "wc", "dd", "cp", "chmod", "mknod", "nc", "httpd", "ip", "tty",
    "stty",
];

impl Fixture {
    pub fn new() -> Fixture {
        // Short paths: the VM's unix sockets live in the data dir, and those are limited to
        // 107 bytes.
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let root = tmp.path().join("root");
        for sub in ["bin", "etc", "srv"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1001:\n").unwrap();
        let fl = common::pack(&root, tmp.path(), "x.fl");
        Fixture { tmp, fl }
    }

    /// A copy of the flist carrying `config` as its image config (the `zos.image` tag).
    pub fn tagged(&self, file: &str, config: &str) -> PathBuf {
        let fl = self.tmp.path().join(file);
        std::fs::copy(&self.fl, &fl).unwrap();
        ok(zos()
            .args(["flist", "tag"])
            .arg(&fl)
            .arg("set")
            .arg(format!("zos.image={config}")));
        fl
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn vms(&self) -> PathBuf {
        self.data().join("vms")
    }

    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.vms().join(name)
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

    /// `zos run FLIST ARGS…` on the untagged flist; fails the test if it takes over 2 minutes
    /// (the fixture's drop then removes the VM).
    pub fn run(&self, args: &[&str]) -> Output {
        output_within(
            self.zos("run").arg(&self.fl).args(args),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|out| panic!("zos run {args:?} hung; {}", describe(&out)))
    }

    /// Everything in the VMs dir, hidden staging or deleted dirs included.
    pub fn vm_entries(&self) -> Vec<String> {
        match std::fs::read_dir(self.vms()) {
            Ok(dir) => dir
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn assert_no_vms_left(&self, after: &str) {
        let left = self.vm_entries();
        assert!(
            left.is_empty(),
            "{after} left {left:?} in {}",
            self.vms().display()
        );
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

    /// The VM's console so far.
    pub fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.vm_dir(name).join("console.log")).unwrap_or_default()
    }

    /// The first line of `zos vm status NAME`, and the whole output.
    pub fn status(&self, name: &str) -> (String, String) {
        let out = ok(self.zos("vm").args(["status", name]));
        (out.lines().next().unwrap_or("").trim().to_string(), out)
    }

    /// Waits until the VM's console has `n` lines equal to `line` (the guest got that far).
    pub fn wait_for_console(&self, name: &str, line: &str, n: usize) {
        let console = self.vm_dir(name).join("console.log");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            if count_lines(&text, line) >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "VM {name} never printed {line:?} {n} time(s); console:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// QEMU's pid, from the VM's pidfile.
    pub fn qemu_pid(&self, name: &str) -> i32 {
        let text = std::fs::read_to_string(self.vm_dir(name).join("qemu.pid")).unwrap();
        text.trim().parse().unwrap()
    }

    /// Asserts no mount and no process refers to `path` any more.
    pub fn assert_nothing_left_of(&self, path: &Path) {
        let mounts = mounts_under(path);
        assert!(
            mounts.is_empty(),
            "mounts left under {}: {mounts:?}",
            path.display()
        );
        let procs = procs_mentioning(path);
        assert!(
            procs.is_empty(),
            "processes left for {}: {procs:?}",
            path.display()
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failed test must not leave QEMUs, helpers or mounts behind.
        for name in self.vm_entries() {
            if !name.starts_with('.') {
                let _ = self
                    .zos("vm")
                    .args(["rm", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for point in mounts_under(self.tmp.path()).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&point).status();
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How many lines of `out` (the console ends lines with CRLF) are exactly `line`.
pub fn count_lines(out: &str, line: &str) -> usize {
    out.lines().filter(|l| l.trim_end() == line).count()
}

pub fn has_line(out: &str, line: &str) -> bool {
    count_lines(out, line) > 0
}

/// The exit code of a `zos run`, with its output for messages.
pub fn code_of(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {out:?}"))
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Runs `cmd` to completion, or kills it after `limit`: `Err` then, with what it printed.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zos");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let (status, in_time) = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break (status, true);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().unwrap(), false);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    if in_time {
        Ok(out)
    } else {
        Err(out)
    }
}

/// Mount points at or below `path`, from the host's mount table.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let prefix = path.to_str().unwrap();
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect()
}

/// Processes (but this one) whose command line mentions `needle`: (pid, command line).
pub fn procs_mentioning(needle: &Path) -> Vec<(i32, String)> {
    let needle = needle.to_str().unwrap();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = text(&raw).replace('\0', " ");
        if pid != me && cmdline.contains(needle) {
            out.push((pid, cmdline));
        }
    }
    out
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
