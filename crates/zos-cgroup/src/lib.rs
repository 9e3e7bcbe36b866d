//! zos-cgroup: puts processes in resource-limited cgroups, on cgroup v2 (one unified tree)
//! or v1 (a tree per controller), whichever the host mounts (detected at run time, as
//! container runtimes do).
//!
//! Every group lives under this process's own cgroup, in `<own>/zos/<name>` (per controller
//! on v1): zos never writes a hierarchy's root or its siblings' groups, so it runs the same
//! as a systemd service, in a container, or in a login session. Limits: CPU quota and weight,
//! memory, pids and I/O weight ([`Limits`]); what the host cannot limit is a warning.
//!
//! Hand-written rather than `cgroups-rs`: zos needs a handful of files in one place (its own
//! subtree), plus the join-before-exec that a jailed child needs, and nothing else.

mod group;
mod hierarchy;
mod limits;

pub use group::{enter_node_group, leave_node_group, procs, remove, Group, Joiner, NODE, PARENT};
pub use hierarchy::Hierarchy;
pub use limits::{settings, CpuMax, Limits, Setting};

/// A controller zos sets limits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// CPU time and weight.
    Cpu,
    /// Memory.
    Memory,
    /// Number of tasks.
    Pids,
    /// Block I/O weight.
    Io,
}

impl Controller {
    /// Its name in cgroup v1 (mount options, `/proc/self/cgroup`).
    pub fn v1_name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Io => "blkio",
        }
    }

    /// Its name in cgroup v2 (`cgroup.controllers`).
    pub fn v2_name(self) -> &'static str {
        match self {
            Controller::Io => "io",
            c => c.v1_name(),
        }
    }

    /// What it limits, for messages.
    fn what(self) -> &'static str {
        match self {
            Controller::Cpu => "CPU",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Io => "I/O",
        }
    }
}

/// What can go wrong with cgroups.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host's cgroup setup could not be understood.
    #[error("cgroups: {0}")]
    Detect(String),
    /// A bad argument.
    #[error("cgroups: {0}")]
    Invalid(String),
    /// A cgroup file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on which path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    fn io(what: String, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
