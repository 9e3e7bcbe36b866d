//! What a group is limited to, and the files and values that say it in each cgroup version.

use crate::Controller;

/// Limits of one group; `None` leaves the kernel's default (no limit, default weight).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// CPU time: at most `quota_us` every `period_us` (2 CPUs = twice the period).
    pub cpu_max: Option<CpuMax>,
    /// CPU weight against sibling groups, on cgroup v2's scale (1-10000, default 100).
    pub cpu_weight: Option<u64>,
    /// Memory limit in bytes (the group's processes are OOM-killed past it).
    pub memory_max: Option<u64>,
    /// Most tasks (processes and threads) the group may hold.
    pub pids_max: Option<u64>,
    /// I/O weight against sibling groups, on cgroup v2's scale (1-10000, default 100).
    pub io_weight: Option<u64>,
}

/// A CPU bandwidth limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuMax {
    /// Microseconds of CPU time per period.
    pub quota_us: u64,
    /// The period in microseconds.
    pub period_us: u64,
}

impl CpuMax {
    /// The usual 100 ms period.
    pub const PERIOD_US: u64 = 100_000;

    /// `cpus` whole CPUs' worth of time per period.
    pub fn cpus(cpus: u32) -> CpuMax {
        CpuMax {
            quota_us: u64::from(cpus.max(1)) * Self::PERIOD_US,
            period_us: Self::PERIOD_US,
        }
    }
}

/// One limit to write: the first of `choices` (file, value) whose file the group has, since
/// the kernel offers some limits under one of several names (e.g. `io.weight` with the cost
/// model, `io.bfq.weight` with BFQ).
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// What it limits, for warnings.
    pub what: &'static str,
    /// Candidate (file, value) pairs, in order of preference.
    pub choices: Vec<(&'static str, String)>,
}

/// The settings for `controller` in cgroup v1 (`v2 == false`) or v2, in the order they must
/// be written.
pub fn settings(limits: &Limits, controller: Controller, v2: bool) -> Vec<Setting> {
    let one = |what, file, value: String| Setting {
        what,
        choices: vec![(file, value)],
    };
    let mut out = Vec::new();
    match controller {
        Controller::Cpu => {
            if let Some(w) = limits.cpu_weight {
                out.push(if v2 {
                    one("CPU weight", "cpu.weight", w.clamp(1, 10_000).to_string())
                } else {
                    one("CPU weight", "cpu.shares", v1_shares(w).to_string())
                });
            }
            if let Some(m) = limits.cpu_max {
                if v2 {
                    out.push(one(
                        "CPU quota",
                        "cpu.max",
                        format!("{} {}", m.quota_us, m.period_us),
                    ));
                } else {
                    // The period first: the quota is checked against it.
                    out.push(one(
                        "CPU period",
                        "cpu.cfs_period_us",
                        m.period_us.to_string(),
                    ));
                    out.push(one("CPU quota", "cpu.cfs_quota_us", m.quota_us.to_string()));
                }
            }
        }
        Controller::Memory => {
            if let Some(m) = limits.memory_max {
                let file = if v2 {
                    "memory.max"
                } else {
                    "memory.limit_in_bytes"
                };
                out.push(one("memory limit", file, m.to_string()));
            }
        }
        Controller::Pids => {
            if let Some(p) = limits.pids_max {
                out.push(one("pids limit", "pids.max", p.to_string()));
            }
        }
        Controller::Io => {
            if let Some(w) = limits.io_weight {
                // BFQ's weight (1-1000, default 100) where BFQ runs the disk; the I/O cost
                // model's (v2, 1-10000) or CFQ's (v1, 10-1000, default 500) otherwise.
                let bfq = w.clamp(1, 1000).to_string();
                out.push(Setting {
                    what: "I/O weight",
                    choices: if v2 {
                        vec![
                            ("io.weight", format!("default {}", w.clamp(1, 10_000))),
                            ("io.bfq.weight", bfq),
                        ]
                    } else {
                        vec![
                            ("blkio.weight", (w * 5).clamp(10, 1000).to_string()),
                            ("blkio.bfq.weight", bfq),
                        ]
                    },
                });
            }
        }
    }
    out
}

/// cgroup v1's `cpu.shares` (2-262144, default 1024) for a v2 weight (default 100).
fn v1_shares(weight: u64) -> u64 {
    (weight.saturating_mul(1024) / 100).clamp(2, 262_144)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            cpu_max: Some(CpuMax::cpus(2)),
            cpu_weight: Some(200),
            memory_max: Some(512 << 20),
            pids_max: Some(300),
            io_weight: Some(200),
        }
    }

    fn files(c: Controller, v2: bool) -> Vec<(&'static str, String)> {
        settings(&limits(), c, v2)
            .into_iter()
            .map(|s| s.choices[0].clone())
            .collect()
    }

    #[test]
    fn v1_and_v2_name_the_same_limits_in_their_own_files_and_scales() {
        assert_eq!(
            files(Controller::Cpu, true),
            [
                ("cpu.weight", "200".to_string()),
                ("cpu.max", "200000 100000".to_string())
            ]
        );
        assert_eq!(
            files(Controller::Cpu, false),
            [
                ("cpu.shares", "2048".to_string()),
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "200000".to_string())
            ]
        );
        assert_eq!(
            files(Controller::Memory, true),
            [("memory.max", (512u64 << 20).to_string())]
        );
        assert_eq!(
            files(Controller::Memory, false),
            [("memory.limit_in_bytes", (512u64 << 20).to_string())]
        );
        for v2 in [true, false] {
            assert_eq!(
                files(Controller::Pids, v2),
                [("pids.max", "300".to_string())]
            );
        }
        let io = settings(&limits(), Controller::Io, false);
        assert_eq!(
            io[0].choices,
            [
                ("blkio.weight", "1000".to_string()),
                ("blkio.bfq.weight", "200".to_string())
            ]
        );
        let io = settings(&limits(), Controller::Io, true);
        assert_eq!(io[0].choices[0], ("io.weight", "default 200".to_string()));
    }

    #[test]
    fn weights_stay_in_the_kernels_ranges() {
        assert_eq!(v1_shares(100), 1024);
        assert_eq!(v1_shares(0), 2);
        assert_eq!(v1_shares(1_000_000), 262_144);
        let l = Limits {
            cpu_weight: Some(50_000),
            io_weight: Some(0),
            ..Limits::default()
        };
        assert_eq!(settings(&l, Controller::Cpu, true)[0].choices[0].1, "10000");
        assert_eq!(settings(&l, Controller::Io, false)[0].choices[0].1, "10");
        assert_eq!(settings(&l, Controller::Io, true)[0].choices[1].1, "1");
    }

    #[test]
    fn no_limit_writes_nothing() {
        for c in crate::hierarchy::CONTROLLERS {
            assert!(settings(&Limits::default(), c, true).is_empty());
            assert!(settings(&Limits::default(), c, false).is_empty());
        }
        assert_eq!(CpuMax::cpus(0).quota_us, 100_000, "at least one CPU");
    }
}
