//! Running one child process and measuring what it cost: wall time, peak RSS, stdout.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What a row's figures stand for: "TCG figures (no KVM)", or the accelerator VMs used.
pub fn accel_note(accel: zos_vmm::host::Accel) -> String {
    match accel {
        zos_vmm::host::Accel::Tcg => "TCG figures (no KVM)".to_owned(),
        other => format!("accel={}", other.as_str()),
    }
}

/// A progress line on stderr (stdout holds only the table or the JSON).
pub fn progress(msg: &str) {
    eprintln!("{msg}");
}

/// Flushes dirty pages so writeback of one step is not billed to the next.
pub fn sync() {
    rustix::fs::sync();
}

/// What one child process cost.
pub struct Measured {
    /// Wall time from spawn to reaping.
    pub seconds: f64,
    /// ru_maxrss of the child alone, in KiB (Linux's unit).
    pub peak_rss_kib: u64,
    /// Everything it printed on stdout (empty for [`measure_quiet`]).
    pub stdout: Vec<u8>,
}

impl Measured {
    /// Peak RSS in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// Runs `cmd` to completion and returns its wall time, peak RSS and stdout; fails if it does
/// not exit 0. Reaps the child with wait4(2) rather than `Child::wait`, because only wait4
/// returns the resource usage of that one child (getrusage(RUSAGE_CHILDREN) would mix in
/// every earlier child).
pub fn measure(cmd: &mut Command, what: &str) -> Result<Measured> {
    measure_with(cmd, what, Stdio::piped())
}

/// `measure` with stdout to /dev/null: for listings whose output is not the point, and which
/// should not pay for a pipe the floor does not have either.
pub fn measure_quiet(cmd: &mut Command, what: &str) -> Result<Measured> {
    measure_with(cmd, what, Stdio::null())
}

fn measure_with(cmd: &mut Command, what: &str, stdout: Stdio) -> Result<Measured> {
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {what}: {cmd:?}"))?;
    // Drain stdout before reaping: a child blocked on a full pipe would never exit.
    let mut stdout = Vec::new();
    let read = match child.stdout.take() {
        Some(mut pipe) => pipe.read_to_end(&mut stdout).map(|_| ()),
        None => Ok(()),
    };
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a C struct of integer fields, for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, which nothing has reaped yet (std never waited for
        // it); status and usage are valid, exclusive pointers for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("waiting for {what}"));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The child is reaped, so it must never be waited for again; Child's Drop neither waits
    // nor kills, so dropping it here only closes what is left of its handles.
    drop(child);
    read.with_context(|| format!("reading the output of {what}"))?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let how = if libc::WIFEXITED(status) {
            format!("exit status {}", libc::WEXITSTATUS(status))
        } else {
            format!("killed by signal {}", libc::WTERMSIG(status))
        };
        let text = String::from_utf8_lossy(&stdout);
        let mut shown: Vec<&str> = text.lines().take(20).collect();
        if text.lines().count() > shown.len() {
            shown.push("…");
        }
        let out = if shown.is_empty() {
            String::new()
        } else {
            format!("; its output:\n{}", shown.join("\n"))
        };
        bail!("{what} failed ({how}): {cmd:?}{out}");
    }
    Ok(Measured {
        seconds,
        peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        stdout,
    })
}
