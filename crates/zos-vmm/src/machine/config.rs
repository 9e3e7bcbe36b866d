//! How a manager finds its tools and keeps its VMs.

use crate::bootkit;
use std::path::PathBuf;

/// How a manager finds its tools and keeps its VMs.
#[derive(Debug, Clone)]
pub struct VmmConfig {
    /// Each VM lives in `<root>/<name>/`.
    pub root: PathBuf,
    /// The boot kit directory (see [`bootkit::default_dir`]).
    pub bootkit: PathBuf,
    /// The static `zos-init`; located with [`bootkit::locate_init`] when `None`.
    pub init: Option<PathBuf>,
    /// The `zos` binary, whose `zos flist mount` serves flists to VMs.
    pub zos: PathBuf,
    /// The block cache shared by all flist mounts.
    pub cache_dir: PathBuf,
    /// Size limit of that cache.
    pub cache_size: u64,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `virtiofsd`.
    pub virtiofsd: PathBuf,
    /// Each VM log (console, flist mount, virtiofsd) is rotated past this size.
    pub log_max: u64,
    /// Whether QEMU runs jailed (its own uid, a private mount namespace holding only its
    /// VM's files, no capabilities). On whenever the manager is root; `ZOS_JAIL=off` turns
    /// it off for `zos-bench vm`'s comparison.
    pub jail: bool,
    /// The stores VMs' flists may reach (a node serving tenants); `None`: any, as the flist
    /// says (a user's own `zos run`).
    pub store_policy: Option<zos_flist::store::StorePolicy>,
}

impl VmmConfig {
    /// Defaults for `root`: tools from `PATH` (virtiofsd also from `~/.cargo/bin`, where
    /// `cargo install` puts it), the boot kit from [`bootkit::default_dir`].
    pub fn new(root: PathBuf, zos: PathBuf, cache_dir: PathBuf) -> VmmConfig {
        VmmConfig {
            root,
            bootkit: bootkit::default_dir(),
            init: None,
            zos,
            cache_dir,
            cache_size: 2 << 30,
            qemu: find_tool("qemu-system-x86_64"),
            virtiofsd: find_tool("virtiofsd"),
            log_max: 1 << 20,
            jail: is_root() && std::env::var("ZOS_JAIL").as_deref() != Ok("off"),
            store_policy: None,
        }
    }
}

/// `name` in `PATH`, `~/.cargo/bin` or QEMU's helper dirs; the bare name (so the error
/// names it) when found nowhere.
fn find_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.extend(["/usr/libexec", "/usr/lib/qemu"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Whether this process runs as root: only root can build a jail (and a non-root manager
/// has no privilege to shed).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
