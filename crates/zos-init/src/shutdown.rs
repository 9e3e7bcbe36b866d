//! The one way out: stop every process, flush and unmount, report to the host, power off.

use crate::sys::{self, Reaped};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zos_init::{ExitReport, STATUS_TTY};

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
    write_status(&serde_json::to_string(report).map_err(io::Error::other)?)
}

/// Writes one line (JSON, no newline in it) on the status UART, the host's file.
pub fn write_status(line: &str) -> io::Result<()> {
    let line = format!("{line}\n");
    // Non-blocking: a UART whose host side is gone would block forever.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(STATUS_TTY)?;
    // Raw: the line goes out byte for byte (no "\n" to "\r\n").
    sys::make_raw(&file)?;
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
    // Every byte is out of the UART before the power-off request can overtake it.
    sys::drain(&file)
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
            "cannot write the exit report {line} to {STATUS_TTY}: {e}"
        ));
    }
    sys::power_off()
}
