//! The record brought in line with the processes: a QEMU that is gone gets its final state
//! (exit report, stop, power-off or crash), a lost helper takes QEMU down with it, and what
//! an ended VM leaves behind (helpers, mounts, sockets, its cgroup) is cleaned up.

use super::record::{
    load, save, Record, Runtime, VmState, CONSOLE, CONTROL, EXIT, INITRD, LOGS, PIDFILE, QMP,
    VIRTIOFS,
};
use super::Vmm;
use crate::proc::ProcRef;
use crate::qmp::Qmp;
use crate::rootfs::{self, Layers};
use crate::spec::{Boot, VmSpec};
use crate::Result;
use crate::{console, logs};
use std::fs;
use std::path::Path;
use std::time::Duration;
use zos_init::ExitReport;

impl Vmm {
    /// Loads the record and brings it in line with the processes (caller holds the lock).
    pub(super) fn refresh(&self, dir: &Path) -> Result<Record> {
        let mut record = load(dir)?;
        // Checked on every look at the VM (status, list, start, stop), as the console was.
        for log in LOGS {
            let _ = logs::rotate_if_large(&dir.join(log), self.cfg.log_max);
        }
        let Some(rt) = record.runtime.clone() else {
            return Ok(record);
        };
        let helper_died = [("virtiofsd", rt.virtiofsd), ("the flist mount", rt.mount)]
            .into_iter()
            .find(|(_, p)| p.is_some_and(|p| !p.alive()))
            .map(|(name, _)| name);
        let mut lost_helper = None;
        if rt.qemu.alive() && helper_died.is_none() {
            if !exit_report_overdue(dir) {
                return Ok(record);
            }
            // zos-init reports only once everything is flushed and unmounted, and then powers
            // off: a QEMU still up long after the report has a guest stuck on its way out.
            tracing::warn!(vm = %dir.display(), "the guest reported its exit but did not power off; quitting QEMU");
            let _ = Qmp::connect(&dir.join(QMP)).and_then(|mut q| q.execute("quit", None));
            if !rt.qemu.wait_gone(Duration::from_secs(5)) {
                rt.qemu.signal(libc::SIGKILL);
                rt.qemu.wait_gone(Duration::from_secs(5));
            }
        }
        if let (true, Some(helper)) = (rt.qemu.alive(), helper_died) {
            // virtiofsd also exits when a powering-off guest drops its connection, a moment
            // before QEMU itself is gone: that is an ordinary exit, not a crash.
            if !rt.qemu.wait_gone(Duration::from_secs(2)) {
                // The guest has lost its root filesystem: it cannot go on.
                rt.qemu.signal(libc::SIGKILL);
                rt.qemu.wait_gone(Duration::from_secs(5));
                lost_helper = Some(VmState::Crashed {
                    reason: format!(
                        "{helper} exited while the VM ran; the VM was stopped\n--- last console lines ---\n{}",
                        console::tail(&dir.join(CONSOLE), 20)
                    ),
                });
            }
        }
        record.state = lost_helper.unwrap_or_else(|| self.exit_state(dir, &record.spec, &rt));
        teardown(dir, rt.virtiofsd, rt.mount);
        record.runtime = None;
        save(dir, &record)?;
        Ok(record)
    }

    /// Why QEMU is gone: the container's exit report, a stop, a power-off, or a crash.
    fn exit_state(&self, dir: &Path, spec: &VmSpec, rt: &Runtime) -> VmState {
        let stop_requested = rt.stop_requested;
        if let Some(report) = read_exit_report(dir) {
            return VmState::Exited {
                code: report.code,
                error: report.error,
            };
        }
        // The panic line comes before a long call trace: look through this boot's output,
        // and show the lines around it rather than the end of the trace.
        let panic =
            console::panic_excerpt(&console::since(&dir.join(CONSOLE), rt.console_start), 30);
        let panicked = panic.is_some();
        if stop_requested && !panicked {
            return VmState::Stopped;
        }
        if !panicked && !matches!(spec.boot, Boot::Container { .. }) {
            // A VM-mode guest powering off is its own business.
            return VmState::Stopped;
        }
        let what = if panicked {
            "the guest kernel panicked"
        } else {
            "QEMU exited without an exit report from the guest (killed, or the guest died)"
        };
        let console = match panic {
            Some(excerpt) => format!("--- console around the panic ---\n{excerpt}"),
            None => format!(
                "--- last console lines ---\n{}",
                console::tail(&dir.join(CONSOLE), 30)
            ),
        };
        VmState::Crashed {
            reason: format!("{what}\n{console}"),
        }
    }
}

/// How long QEMU may stay up after the guest's exit report before it is quit.
const POWER_OFF_GRACE: Duration = Duration::from_secs(5);

/// Whether the guest's exit report arrived more than [`POWER_OFF_GRACE`] ago.
fn exit_report_overdue(dir: &Path) -> bool {
    let path = dir.join(EXIT);
    let Ok(meta) = fs::metadata(&path) else {
        return false;
    };
    let old = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age > POWER_OFF_GRACE);
    old && read_exit_report(dir).is_some()
}

/// The guest's exit report, if it wrote one.
fn read_exit_report(dir: &Path) -> Option<ExitReport> {
    fs::read_to_string(dir.join(EXIT)).ok().and_then(|text| {
        text.lines()
            .find_map(|l| serde_json::from_str::<ExitReport>(l.trim()).ok())
    })
}

/// What the guest's healthcheck last said, if it has one (its lines beside the exit report).
pub(super) fn read_health(dir: &Path) -> Option<zos_init::Health> {
    let text = fs::read_to_string(dir.join(EXIT)).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<zos_init::HealthReport>(l.trim()).ok())
        .map(|r| r.health)
}

/// Stops the helpers and removes the runtime leftovers of a VM whose QEMU is gone.
pub(super) fn teardown(dir: &Path, virtiofsd: Option<ProcRef>, mount: Option<ProcRef>) {
    if let Some(v) = virtiofsd {
        v.terminate(Duration::from_secs(2));
    }
    rootfs::unmount_root(&Layers::of(dir), mount);
    super::net::unplug(dir);
    for file in [QMP, CONTROL, VIRTIOFS, INITRD, PIDFILE] {
        let _ = fs::remove_file(dir.join(file));
    }
    // Last: QEMU and virtiofsd are gone by now, so the group is empty.
    super::cgroup::remove(dir);
}
