//! What a manager keeps per VM: its state, its record in `vm.json` (spec, state, the
//! processes of an active VM), the names of the files in its directory, and the lock every
//! operation holds.

use crate::proc::ProcRef;
use crate::spec::VmSpec;
use crate::{fsutil, Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a VM is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum VmState {
    /// Made, never started.
    Created,
    /// QEMU is running the guest.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// A container's process ended (`code` as Docker reports it); `error` when it could not
    /// be started at all.
    Exited {
        /// Exit code.
        code: i32,
        /// Why the process could not run, if so.
        error: Option<String>,
    },
    /// Stopped on request, or a VM-mode guest powered itself off.
    Stopped,
    /// QEMU or a helper died unexpectedly, or the guest panicked.
    Crashed {
        /// What happened, with the console tail.
        reason: String,
    },
}

impl VmState {
    /// Whether QEMU is (supposed to be) up.
    pub fn is_active(&self) -> bool {
        matches!(self, VmState::Running | VmState::Paused)
    }

    /// One word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Exited { .. } => "exited",
            VmState::Stopped => "stopped",
            VmState::Crashed { .. } => "crashed",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Exited { code, .. } => write!(f, "exited ({code})"),
            other => f.write_str(other.word()),
        }
    }
}

/// What [`Vmm::status`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    /// The VM's name.
    pub name: String,
    /// Its state.
    #[serde(flatten)]
    pub state: VmState,
    /// How it was created.
    pub spec: VmSpec,
    /// QEMU's pid while active.
    pub pid: Option<i32>,
    /// The console log.
    pub console: PathBuf,
    /// Host memory used while active: PSS of QEMU + virtiofsd + the flist mount, bytes.
    pub memory_bytes: Option<u64>,
    /// Unix time of creation.
    pub created: u64,
    /// What its healthcheck last said, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<zos_init::Health>,
}

/// The record of a VM, kept in `<dir>/vm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) name: String,
    pub(super) spec: VmSpec,
    pub(super) created: u64,
    pub(super) state: VmState,
    pub(super) runtime: Option<Runtime>,
    /// The uid (and gid) its QEMU runs as, given at its first start.
    #[serde(default)]
    pub(super) uid: Option<u32>,
}

/// The processes of an active VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Runtime {
    pub(super) qemu: ProcRef,
    pub(super) virtiofsd: Option<ProcRef>,
    pub(super) mount: Option<ProcRef>,
    /// Set by stop, so the exit that follows is a stop, not a crash.
    pub(super) stop_requested: bool,
    /// Length of the console log when this boot started: a panic is looked for after it, not
    /// in an earlier boot's output.
    #[serde(default)]
    pub(super) console_start: u64,
}

/// File names inside a VM's directory.
pub(super) const RECORD: &str = "vm.json";
const LOCK: &str = "lock";
pub(super) const CONSOLE: &str = "console.log";
/// The flist mount process's stderr.
pub(super) const MOUNT_LOG: &str = "mount.log";
/// virtiofsd's stderr.
pub(super) const VIRTIOFSD_LOG: &str = "virtiofsd.log";
/// Every log a VM writes, each rotated past `log_max`.
/// QEMU's own messages (its stderr): why it would not start.
pub(super) const QEMU_LOG: &str = "qemu.log";
pub(super) const LOGS: [&str; 4] = [CONSOLE, MOUNT_LOG, VIRTIOFSD_LOG, QEMU_LOG];
pub(super) const EXIT: &str = "exit.json";
pub(super) const QMP: &str = "qmp.sock";
pub(super) const CONTROL: &str = "control.sock";
pub(super) const VIRTIOFS: &str = "virtiofs.sock";
pub(super) const INITRD: &str = "initrd.cpio";
pub(super) const PIDFILE: &str = "qemu.pid";
pub(super) const SEED: &str = "cidata.img";
/// The copy-on-write overlay a disk-image VM boots from.
pub(super) const ROOT_OVERLAY: &str = "root.qcow2";

/// VM names: used as directory names and hostnames by default.
pub(super) fn check_name(name: &str) -> Result<()> {
    if crate::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bad VM name {name:?}: use 1-64 letters, digits, '-' and '_', starting with a letter or digit"
        )))
    }
}

/// Unix time, seconds.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads `vm.json`.
pub(super) fn load(dir: &Path) -> Result<Record> {
    let path = dir.join(RECORD);
    let text = fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::Invalid(format!("{} is damaged: {e}", path.display())))
}

/// Writes `vm.json`, atomically: a crash leaves the old record or the new one.
pub(super) fn save(dir: &Path, record: &Record) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Invalid(e.to_string()))?;
    fsutil::write_atomic(&dir.join(RECORD), &bytes)
}

/// An exclusive lock on a VM's directory for the length of one operation, so a node and a
/// CLI (or two threads) never act on the same VM at once.
pub(super) struct DirLock(fs::File);

/// Takes the VM's lock, waiting for whoever holds it.
pub(super) fn lock(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    flock(file, &path)
}

/// Takes an exclusive lock on the directory `dir` itself (no file is left in it).
pub(super) fn lock_dir(dir: &Path) -> Result<DirLock> {
    let file =
        fs::File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    flock(file, dir)
}

/// Locks `file` (opened from `path`), waiting for its holder.
fn flock(file: fs::File, path: &Path) -> Result<DirLock> {
    // SAFETY: flock on a descriptor we own; it is released when the file is closed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if r != 0 {
        return Err(Error::io(
            format!("locking {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(DirLock(file))
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock; nothing else to do.
        let _ = &self.0;
    }
}
