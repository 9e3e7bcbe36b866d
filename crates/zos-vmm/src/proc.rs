//! Processes we started but may not be the parent of any more (after a manager restart):
//! identified by pid *and* start time, so a recycled pid is never taken for ours.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A process we started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ProcRef {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
}

impl ProcRef {
    /// Records a running process; `None` if it is already gone.
    pub fn of(pid: i32) -> Option<ProcRef> {
        start_time(pid).map(|start_time| ProcRef { pid, start_time })
    }

    /// Whether the process is still running (a zombie of ours is reaped and counts as gone).
    pub fn alive(&self) -> bool {
        // Reap it if it is our child; for anyone else's child this fails with ECHILD.
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on a specific pid; status is a valid out pointer.
        unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }

    /// Sends `signal` if the process is still ours.
    pub fn signal(&self, signal: i32) {
        if self.alive() {
            // SAFETY: kill has no memory preconditions; the pid was just checked to be ours.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// Waits until the process is gone, at most `timeout`; true if it is gone.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it is gone.
    pub fn terminate(&self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if !self.wait_gone(grace) {
            self.signal(libc::SIGKILL);
            self.wait_gone(Duration::from_secs(5));
        }
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn start_time(pid: i32) -> Option<u64> {
    // Fields after the name start at field 3 (state); start time is field 22.
    stat_fields(pid)?.get(22 - 3)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z" || s == "X"))
}

/// Proportional set size of a process in bytes (its fair share of shared pages).
pub fn pss_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_child_is_gone_and_a_live_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = ProcRef::of(child.id() as i32).unwrap();
        assert!(p.alive());
        let other = ProcRef {
            start_time: p.start_time + 1,
            ..p
        };
        assert!(
            !other.alive(),
            "a different start time is a different process"
        );
        p.terminate(Duration::from_secs(2));
        assert!(!p.alive());
        let _ = child.try_wait();
    }
}
