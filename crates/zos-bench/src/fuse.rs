//! FUSE mounts made by `zos flist mount --daemon`: whether FUSE is usable here, and a guard
//! that never leaves a mount behind.

use crate::measure::measure;
use crate::zos_bin::Zos;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Why FUSE cannot be used here, if it cannot.
pub fn fuse_unusable() -> Option<String> {
    // Opening it is the real test: it can exist yet be denied (unprivileged containers).
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("fusermount3").is_file())
    });
    if !on_path {
        return Some("fusermount3 not found on PATH".to_owned());
    }
    None
}

/// A `zos flist mount --daemon`; unmounted lazily when dropped unless `finish` unmounted it,
/// so an error between mounting and unmounting never leaves a mount behind.
pub struct Mount {
    zos: Zos,
    point: PathBuf,
    cache: PathBuf,
    /// The background process serving the mount, from what `--daemon` printed.
    daemon: Option<u32>,
    unmounted: bool,
}

impl Mount {
    /// Mounts `fl` on a new directory `point` with a new, empty cache `cache`; returns the
    /// mount and the wall seconds of `zos flist mount --daemon` (it returns once mounted).
    pub fn start(zos: &Zos, fl: &Path, point: &Path, cache: &Path) -> Result<(Mount, f64)> {
        for d in [point, cache] {
            std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // The guard exists before the mount does, so even a failure after the kernel has the
        // mount (reading the command's output) unmounts it.
        let mut mount = Mount {
            zos: zos.clone(),
            point: point.to_owned(),
            cache: cache.to_owned(),
            daemon: None,
            unmounted: false,
        };
        let out = measure(
            zos.command()
                .args(["flist", "mount"])
                .arg(fl)
                .arg(point)
                .arg("--daemon")
                .arg("--cache")
                .arg(cache),
            "zos flist mount --daemon",
        )?;
        mount.daemon = daemon_pid(&out.stdout);
        Ok((mount, out.seconds))
    }

    /// Peak RSS of the daemon so far (VmHWM), read before unmounting: it is not our child, so
    /// wait4 cannot report it.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon?)).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    /// Unmounts, waits for the daemon to exit (so its teardown is not billed to the next
    /// step), and removes the mountpoint and the cache.
    pub fn finish(mut self) -> Result<()> {
        measure(
            self.zos
                .command()
                .args(["flist", "umount"])
                .arg(&self.point),
            "zos flist umount",
        )?;
        self.unmounted = true;
        if let Some(pid) = self.daemon {
            wait_for_exit(pid);
        }
        std::fs::remove_dir(&self.point)
            .with_context(|| format!("removing {}", self.point.display()))?;
        std::fs::remove_dir_all(&self.cache)
            .with_context(|| format!("removing {}", self.cache.display()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.unmounted || !is_mounted(&self.point) {
            return;
        }
        // Lazy: an error path may still hold a file open on the mount; a plain unmount would
        // then fail with EBUSY and leave it behind.
        let status = self
            .zos
            .command()
            .args(["flist", "umount", "--lazy"])
            .arg(&self.point)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!(
                "warning: zos flist umount --lazy {}: {s}",
                self.point.display()
            ),
            Err(e) => eprintln!(
                "warning: zos flist umount --lazy {}: {e}",
                self.point.display()
            ),
        }
    }
}

/// Whether something is mounted on `point`: it sits on another device than its parent.
fn is_mounted(point: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = point.parent() else {
        return false;
    };
    match (std::fs::symlink_metadata(point), std::fs::metadata(parent)) {
        (Ok(p), Ok(q)) => p.dev() != q.dev(),
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => false,
        // E.g. ENOTCONN from a mount whose daemon died: still mounted, still to be undone.
        _ => true,
    }
}

/// The pid in "mounted X on Y (pid N)", what `zos flist mount --daemon` prints.
fn daemon_pid(stdout: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(stdout);
    let (_, rest) = text.rsplit_once("(pid ")?;
    rest.split(')').next()?.trim().parse().ok()
}

/// Waits (up to 10 s) until process `pid`, which is not our child, is gone or a zombie.
fn wait_for_exit(pid: u32) {
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&stat) {
            Err(_) => return,
            // The state follows the command name, which is in parentheses and may hold any
            // byte, so look after the last ')'.
            Ok(s) => {
                if s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("warning: mount daemon {pid} still running 10 s after unmount");
}
