//! The one way out: stop every process, flush and unmount, report to the host, power off.

use crate::sys::{self, Reaped};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zos_init::{ExitReport, STATUS_PORT};

/// Disks mounted so far, unmounted (last first) before powering off.
static MOUNTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records a disk mount to undo at shutdown.
pub fn remember_mount(path: &str) {
    MOUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_string());
}

/// Prints an error on the console (init's stderr), which is the container's output.
pub fn console_error(msg: &str) {
    let _ = writeln!(io::stderr(), "zos-init: {msg}");
}

/// Finds the device of the virtio-serial port `name`. /dev/virtio-ports/ is made by udev, which
/// the guest lacks, so the port is looked up by name in sysfs. Waits up to `wait` for it.
pub fn find_port(name: &str, wait: Duration) -> Option<PathBuf> {
    let start = Instant::now();
    loop {
        let link = PathBuf::from("/dev/virtio-ports").join(name);
        if link.exists() {
            return Some(link);
        }
        let found = std::fs::read_dir("/sys/class/virtio-ports")
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name)
            })
            .map(|e| PathBuf::from("/dev").join(e.file_name()))
            .filter(|dev| dev.exists());
        if found.is_some() || start.elapsed() >= wait {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a virtio-serial device is bound, so its ports are worth waiting for.
fn have_virtio_serial() -> bool {
    std::fs::read_dir("/sys/bus/virtio/drivers/virtio_console")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
}

/// Reaps children until none are left or `limit` passes; true when none are left.
fn reap_all(limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        match sys::reap_one() {
            Reaped::Child(..) => continue,
            Reaped::None => return true,
            Reaped::Running if start.elapsed() >= limit => return false,
            Reaped::Running => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// SIGTERM to everyone left, a second's grace, then SIGKILL.
fn stop_everything() {
    if sys::kill(-1, libc::SIGTERM).is_err() || reap_all(Duration::from_secs(1)) {
        return;
    }
    let _ = sys::kill(-1, libc::SIGKILL);
    reap_all(Duration::from_secs(2));
}

fn unmount_disks() {
    let mounts = std::mem::take(&mut *MOUNTS.lock().unwrap_or_else(|e| e.into_inner()));
    for path in mounts.iter().rev() {
        if sys::umount(path, 0).is_err() {
            // Still busy: read-only at least leaves the filesystem clean.
            let flags = libc::MS_REMOUNT | libc::MS_RDONLY;
            let _ = sys::mount("", path, None, flags, None);
        }
    }
}

fn write_report(report: &ExitReport) -> io::Result<()> {
    let wait = if have_virtio_serial() {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    let Some(port) = find_port(STATUS_PORT, wait) else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such port"));
    };
    let line = serde_json::to_string(report).map_err(io::Error::other)? + "\n";
    // Non-blocking: a port with nobody on the host side would block forever.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&port)?;
    let mut rest = line.as_bytes();
    let start = Instant::now();
    while !rest.is_empty() {
        match file.write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed().as_secs() < 5 => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e),
        }
    }
    // Ports have no fsync; the error is expected and harmless.
    let _ = file.sync_all();
    // The host may take the buffer asynchronously (ioeventfd under KVM): give it a moment
    // before the power-off request can overtake it.
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
}

/// Ends the VM with `report`.
pub fn finish(report: &ExitReport) -> ! {
    stop_everything();
    sys::sync();
    unmount_disks();
    sys::sync();
    if let Err(e) = write_report(report) {
        let line = serde_json::to_string(report).unwrap_or_default();
        console_error(&format!(
            "cannot write the exit report {line} to {STATUS_PORT}: {e}"
        ));
    }
    sys::power_off()
}
