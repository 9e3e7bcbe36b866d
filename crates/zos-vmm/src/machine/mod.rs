//! The VM lifecycle: create, start, stop, pause, resume, delete, status, wait.
//!
//! Every operation reads the VM's record from disk and checks the real processes, so any
//! number of managers (one after another, or a CLI beside the node) see the same truth. A
//! record says what should be; [`Vmm::status`] reconciles it with what is: a QEMU that died
//! is noticed there, its exit report (or console tail) recorded, and its helpers, mounts and
//! sockets cleaned up.

//!
//! The files follow a VM's life: [`config`] (what a manager needs), [`record`] (what is kept
//! on disk per VM, and its lock), [`create`] (checks and the VM's directory), [`start`]
//! (cgroup → layers → virtiofsd → QEMU), [`cgroup`] (the VM's limits), [`jail`] (QEMU's own
//! uid and mount namespace), [`qemu_args`] (QEMU's command line), [`stop`] (stop, pause,
//! resume, signal, delete), [`session`] (the control console: control lines, exec and copy
//! sessions) and [`reconcile`] (the record brought in line with the processes).

mod cgroup;
mod config;
mod create;
mod jail;
mod net;
mod qemu_args;
mod reconcile;
mod record;
mod session;
mod start;
mod stop;

pub use config::VmmConfig;
pub use record::{VmInfo, VmState};
pub use session::Session;

use crate::proc::pss_bytes;
use crate::{Error, Result};
use reconcile::teardown;
use record::{check_name, lock, Record, CONSOLE, RECORD};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The manager: runs and tracks VMs under its root.
pub struct Vmm {
    cfg: VmmConfig,
}

impl Vmm {
    /// A manager over `cfg.root` (created if missing, and closed to everyone but its
    /// owner: each VM's jailed uid reaches its own files only through its jail).
    pub fn new(cfg: VmmConfig) -> Result<Vmm> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(&cfg.root)
            .and_then(|_| fs::set_permissions(&cfg.root, fs::Permissions::from_mode(0o700)))
            .map_err(|e| Error::io(format!("creating {}", cfg.root.display()), e))?;
        Ok(Vmm { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &VmmConfig {
        &self.cfg
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.root.join(name)
    }

    /// The VM's state, reconciled with its processes.
    pub fn status(&self, name: &str) -> Result<VmInfo> {
        let dir = self.existing(name)?;
        let _lock = lock(&dir)?;
        let record = self.refresh(&dir)?;
        Ok(self.info(&dir, &record))
    }

    /// Every VM under the root.
    pub fn list(&self) -> Result<Vec<VmInfo>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.cfg.root)
            .map_err(|e| Error::io(format!("listing {}", self.cfg.root.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().join(RECORD).exists() {
                continue;
            }
            match self.status(&name) {
                Ok(info) => out.push(info),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Waits until the VM is no longer active (or `timeout` passes) and returns its state.
    pub fn wait(&self, name: &str, timeout: Option<Duration>) -> Result<VmInfo> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let info = self.status(name)?;
            if !info.state.is_active() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(info);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes leftovers of interrupted creates and deletes under the root.
    pub fn sweep(&self) -> Result<()> {
        let entries = fs::read_dir(&self.cfg.root)
            .map_err(|e| Error::io(format!("listing {}", self.cfg.root.display()), e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                teardown(&entry.path(), None, None);
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn existing(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        let dir = self.dir(name);
        if !dir.join(RECORD).exists() {
            return Err(Error::NotFound(name.to_string()));
        }
        Ok(dir)
    }

    /// What callers see of a VM: its record and, while active, the memory its processes use.
    fn info(&self, dir: &Path, record: &Record) -> VmInfo {
        let rt = record.runtime.as_ref();
        let memory_bytes = rt.map(|rt| {
            [Some(rt.qemu), rt.virtiofsd, rt.mount]
                .into_iter()
                .flatten()
                .filter_map(|p| pss_bytes(p.pid))
                .sum()
        });
        VmInfo {
            name: record.name.clone(),
            state: record.state.clone(),
            spec: record.spec.clone(),
            pid: rt.map(|r| r.qemu.pid),
            console: dir.join(CONSOLE),
            memory_bytes,
            created: record.created,
            health: reconcile::read_health(dir),
        }
    }

    /// The console log of a VM.
    pub fn console_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.existing(name)?.join(CONSOLE))
    }
}

#[cfg(test)]
mod tests {
    use super::qemu_args::{path_arg, socket_path};
    use super::record::QMP;
    use super::*;

    #[test]
    fn names_and_paths_are_checked() {
        assert!(check_name("web-1").is_ok());
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(path_arg(Path::new("/a,b")).is_err());
        let long = PathBuf::from("/".to_string() + &"d".repeat(110));
        assert!(socket_path(&long, QMP).is_err());
        assert!(socket_path(Path::new("/run/zos/vm"), QMP).is_ok());
    }
}
