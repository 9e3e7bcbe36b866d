//! zos-vmm: runs QEMU `microvm` guests for zos, and keeps track of them across restarts of the
//! process that manages them.
//!
//! A VM is a directory under the manager's root holding its spec, its runtime record (the
//! pids of QEMU, virtiofsd and the flist mount, each with its start time so a recycled pid is
//! never mistaken for ours), its sockets, console log and writable layer. QEMU runs detached
//! (its own session, under its seccomp sandbox), so a VM outlives the manager; a new manager reattaches through the QMP
//! socket. See [`Vmm`] for the lifecycle and [`spec`] for what a VM is made of.

pub mod bootkit;
pub mod cidata;
pub mod console;
pub mod disk;
mod fsutil;
pub mod host;
pub mod image;
pub mod limits;
pub mod logs;
mod machine;
mod proc;
pub mod qmp;
mod rootfs;
pub mod spec;
pub mod vmlinux;

pub use machine::{Session, VmInfo, VmState, Vmm, VmmConfig};
pub use proc::pss_bytes;
pub use rootfs::FlistMount;

/// Whether `name` can name a VM or a volume: 1-64 letters, digits, `-` and `_`, starting with
/// a letter or digit (names become directory and file names).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with(['-', '_'])
}

/// What can go wrong running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot work as given (bad spec, missing kernel, too much memory…); nothing
    /// was started.
    #[error("{0}")]
    Invalid(String),
    /// No VM of that name.
    #[error("no VM named {0:?}")]
    NotFound(String),
    /// The VM is in a state that does not allow the operation.
    #[error("VM {name:?} is {state}: {what}")]
    State {
        /// The VM.
        name: String,
        /// Its state.
        state: String,
        /// What was refused and why.
        what: String,
    },
    /// The guest failed to boot or died; carries the last lines of its console.
    #[error("{message}\n--- last console lines ---\n{console_tail}")]
    Guest {
        /// What happened.
        message: String,
        /// The end of the console log.
        console_tail: String,
    },
    /// A helper process (qemu, virtiofsd, mount, mkfs…) failed.
    #[error("{what}: {detail}")]
    Process {
        /// What was being run.
        what: String,
        /// Its error output or exit status.
        detail: String,
    },
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on which path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The flist could not be read.
    #[error(transparent)]
    Flist(#[from] zos_flist::Error),
    /// Creating a disk or image failed.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// Writing the NoCloud seed failed.
    #[error(transparent)]
    Cidata(#[from] cidata::CidataError),
}

impl Error {
    pub(crate) fn io(what: String, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
