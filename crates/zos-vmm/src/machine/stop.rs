//! Ending or changing a running VM: stop (the guest asked first, then QEMU told to quit,
//! then killed), pause and resume through QMP, signals to a container's process, and delete.

use super::reconcile::teardown;
use super::record::{load, lock, save, VmInfo, VmState, QMP};
use super::session::send_control;
use super::Vmm;
use crate::qmp::Qmp;
use crate::spec::Boot;
use crate::{Error, Result};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};
use zos_init::Control;

impl Vmm {
    /// Clean power-down: a container's process gets SIGTERM (a VM-mode guest an ACPI power
    /// button press); after `timeout` QEMU is killed. Returns the final state.
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<VmInfo> {
        let dir = self.existing(name)?;
        {
            let _lock = lock(&dir)?;
            let mut record = self.refresh(&dir)?;
            let Some(runtime) = record.runtime.as_mut() else {
                return Ok(self.info(&dir, &record));
            };
            runtime.stop_requested = true;
            let qemu = runtime.qemu;
            save(&dir, &record)?;
            if record.state == VmState::Paused {
                // A frozen guest cannot act on a stop request.
                let _ = Qmp::connect(&dir.join(QMP)).and_then(|mut q| q.execute("cont", None));
            }
            // The request is repeated every second until the deadline: a guest that is still
            // booting has not opened its control port (or ACPI) yet, and would miss just one.
            let deadline = Instant::now() + timeout;
            let mut gone = false;
            while !gone && Instant::now() < deadline {
                let _ = match record.spec.boot {
                    Boot::Container { .. } => send_control(&dir, &Control::Stop),
                    Boot::Kernel { .. } | Boot::Disk { .. } => Qmp::connect(&dir.join(QMP))
                        .and_then(|mut q| q.execute("system_powerdown", None))
                        .map(drop),
                };
                let left = deadline.saturating_duration_since(Instant::now());
                gone = qemu.wait_gone(left.min(Duration::from_secs(1)));
            }
            if !gone {
                tracing::info!(vm = name, "guest did not power off in time; killing QEMU");
                let _ = Qmp::connect(&dir.join(QMP)).and_then(|mut q| q.execute("quit", None));
                if !qemu.wait_gone(Duration::from_secs(2)) {
                    qemu.signal(libc::SIGKILL);
                    qemu.wait_gone(Duration::from_secs(5));
                }
            }
        }
        self.status(name)
    }

    /// Freezes the guest's CPUs.
    pub fn pause(&self, name: &str) -> Result<VmInfo> {
        self.qmp_state_change(name, "stop", VmState::Running, VmState::Paused)
    }

    /// Thaws a paused guest.
    pub fn resume(&self, name: &str) -> Result<VmInfo> {
        self.qmp_state_change(name, "cont", VmState::Paused, VmState::Running)
    }

    /// Runs a QMP command that moves the VM from state `from` to `to`.
    fn qmp_state_change(
        &self,
        name: &str,
        cmd: &str,
        from: VmState,
        to: VmState,
    ) -> Result<VmInfo> {
        let dir = self.existing(name)?;
        let _lock = lock(&dir)?;
        let mut record = self.refresh(&dir)?;
        if record.state != from {
            return Err(Error::State {
                name: name.into(),
                state: record.state.to_string(),
                what: format!("{cmd} needs a {} VM", from.word()),
            });
        }
        Qmp::connect(&dir.join(QMP))?.execute(cmd, None)?;
        record.state = to;
        save(&dir, &record)?;
        Ok(self.info(&dir, &record))
    }

    /// Delivers a signal to a running container's process.
    pub fn signal(&self, name: &str, signal: i32) -> Result<()> {
        let dir = self.existing(name)?;
        send_control(&dir, &Control::Signal(signal))
    }

    /// Stops the VM if needed and removes everything it had: processes, mounts, sockets, its
    /// writable layer and its directory. Disks attached from outside are left alone.
    pub fn delete(&self, name: &str) -> Result<()> {
        // Moved aside first, so a crash half-way never leaves a VM that looks whole (the
        // dot name is swept at the next start).
        let doomed = self
            .cfg
            .root
            .join(format!(".deleted.{name}.{}", std::process::id()));
        self.move_out(name, &doomed)?;
        // Its address and host ports are free once nothing of it runs.
        super::net::release(&self.dir(name));
        fs::remove_dir_all(&doomed)
            .map_err(|e| Error::io(format!("removing {}", doomed.display()), e))
    }

    /// Stops a VM, tears down its mounts and helpers, and moves its dir (writable layer,
    /// logs, record) to `to`, on the same file system: for what must be kept, not deleted.
    pub fn move_out(&self, name: &str, to: &Path) -> Result<()> {
        let dir = self.existing(name)?;
        let info = self.status(name)?;
        if info.state.is_active() {
            self.stop(name, Duration::from_secs(5))?;
        }
        let _lock = lock(&dir)?;
        let record = load(&dir)?;
        if let Some(rt) = record.runtime {
            rt.qemu.signal(libc::SIGKILL);
            rt.qemu.wait_gone(Duration::from_secs(5));
            teardown(&dir, rt.virtiofsd, rt.mount);
        } else {
            teardown(&dir, None, None);
        }
        fs::rename(&dir, to)
            .map_err(|e| Error::io(format!("moving {} to {}", dir.display(), to.display()), e))
    }
}
