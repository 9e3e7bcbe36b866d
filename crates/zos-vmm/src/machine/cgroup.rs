//! Each VM's cgroup: made at start with the VM's limits ([`crate::limits::for_vm`]), joined
//! by QEMU and virtiofsd before they exec, removed once they are gone.
//!
//! The group is `<own cgroup>/zos/vm-<name>-<hash of the VM's dir>` of the process that
//! starts the VM (the hash keeps two managers' VMs of the same name apart). Which process
//! that was differs between calls (a `zos` CLI here, the node there), so the group's
//! directories are written to the VM's `cgroup` file at start, and every later cleanup
//! removes what that file names.

use crate::limits;
use crate::spec::VmSpec;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use zos_cgroup::{Group, Hierarchy};

/// The VM file naming its cgroup's directories, one per line.
pub(super) const CGROUP: &str = "cgroup";

/// Makes the VM's cgroup with its limits and records it in the VM's dir. What the host
/// cannot limit is logged and left out; a host with no usable cgroups is an error.
pub(super) fn create(dir: &Path, spec: &VmSpec) -> Result<()> {
    let err = |e: zos_cgroup::Error| Error::Process {
        what: format!("making the cgroup of the VM in {}", dir.display()),
        detail: e.to_string(),
    };
    let hierarchy = Hierarchy::detect().map_err(err)?;
    let group = Group::create(&hierarchy, &group_name(dir), &limits::for_vm(spec)).map_err(err)?;
    let mut text = String::new();
    for d in group.dirs() {
        text.push_str(&d.to_string_lossy());
        text.push('\n');
    }
    let file = dir.join(CGROUP);
    fs::write(&file, text).map_err(|e| Error::io(format!("writing {}", file.display()), e))
}

/// Makes `cmd`'s process join the VM's cgroup between fork and exec: it is limited from its
/// first instruction, with no window in which it runs (or allocates) outside. The files are
/// opened here, so this holds whatever the child does before exec (another uid, another
/// mount namespace).
pub(super) fn join_on_spawn(cmd: &mut Command, dir: &Path) -> Result<()> {
    let dirs = recorded(dir);
    if dirs.is_empty() {
        return Ok(());
    }
    let joiner = Group::at(dirs).joiner().map_err(|e| Error::Process {
        what: "joining the VM's cgroup".into(),
        detail: e.to_string(),
    })?;
    // SAFETY: join_current only calls write(2) on descriptors opened above, which is
    // async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(move || joiner.join_current());
    }
    Ok(())
}

/// Removes the VM's cgroup once its processes are gone, and the record of it. A group that
/// still holds processes stays (logged), for the next reconcile to remove.
pub(super) fn remove(dir: &Path) {
    let dirs = recorded(dir);
    match zos_cgroup::remove(&dirs) {
        Ok(()) => {
            let _ = fs::remove_file(dir.join(CGROUP));
        }
        Err(e) => tracing::warn!(vm = %dir.display(), "{e}"),
    }
}

/// The directories the VM's `cgroup` file names (none if it has none).
pub(super) fn recorded(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string(dir.join(CGROUP))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(PathBuf::from)
        .collect()
}

/// `vm-<name>-<12 hex digits of SHA-256 of the VM's dir>`.
fn group_name(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let hash = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    format!("vm-{name}-{}", &hex::encode(hash)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vms_of_the_same_name_under_two_roots_get_two_groups() {
        let a = group_name(Path::new("/a/vms/web"));
        let b = group_name(Path::new("/b/vms/web"));
        assert!(
            a.starts_with("vm-web-") && a.len() == "vm-web-".len() + 12,
            "{a}"
        );
        assert_ne!(a, b);
        assert_eq!(a, group_name(Path::new("/a/vms/web")));
    }

    #[test]
    fn the_record_names_the_dirs_and_an_absent_one_names_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(recorded(tmp.path()).is_empty());
        fs::write(tmp.path().join(CGROUP), "/x/zos/vm-a\n/y/zos/vm-a\n").unwrap();
        assert_eq!(
            recorded(tmp.path()),
            [PathBuf::from("/x/zos/vm-a"), PathBuf::from("/y/zos/vm-a")]
        );
    }
}
