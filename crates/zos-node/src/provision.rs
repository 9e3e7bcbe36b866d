//! Turning one workload into host resources with `zos-vmm`, and back. Every step is
//! idempotent ("make it so"), so the engine can repeat it after a crash of the node.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zos_types::{PublicKey, ZMachine, ZMount};
use zos_vmm::disk::{self, DiskFormat};
use zos_vmm::image::{self, Overrides};
use zos_vmm::spec::{DiskAttach, FlistSource, SeedSpec, VmSpec};
use zos_vmm::{VmState, Vmm};

/// The host-side names of one deployment's resources: `<id>-<workload>`, where the id is a
/// hash of owner and name: no user text in host paths, and at 104 bits no one can make
/// their deployment collide with another owner's (a VM name stays within 64 characters).
pub fn deployment_id(owner: &PublicKey, name: &str) -> String {
    let digest = Sha256::digest(crate::store::key(owner, name).as_bytes());
    hex::encode(&digest[..13])
}

/// Checks a zmachine's `flist` before it is accepted: an absolute path to a `.fl` file on
/// the node, outside the node's own data (where users' disks live, which their guests
/// write: a crafted file there must never be mounted as an flist).
pub fn check_flist(flist: &str, data_dir: &Path) -> Result<(), String> {
    let path = Path::new(flist);
    if !path.is_absolute() || path.extension().is_none_or(|e| e != "fl") {
        return Err(format!(
            "flist {flist:?}: give the absolute path of a .fl file on the node"
        ));
    }
    let real = std::fs::canonicalize(path)
        .map_err(|_| format!("flist {flist:?} not found on the node"))?;
    if !real.is_file() {
        return Err(format!("flist {flist:?} is not a file"));
    }
    let data = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    if real.starts_with(&data) {
        return Err(format!(
            "flist {flist:?} is inside the node's data dir; flists must come from elsewhere"
        ));
    }
    Ok(())
}

/// The VM of a zmachine.
pub fn vm_name(id: &str, workload: &str) -> String {
    format!("{id}-{workload}")
}

/// The disk file of a zmount.
pub fn disk_path(disks: &Path, id: &str, workload: &str) -> PathBuf {
    disks.join(format!("{id}-{workload}.raw"))
}

/// Makes the zmount's disk (ext4, formatted once). Returns the result data.
pub fn ensure_zmount(path: &Path, m: &ZMount) -> Result<serde_json::Value, String> {
    let size = m.size.0;
    if size < disk::MIN_DISK_SIZE || !size.is_multiple_of(512) {
        return Err(format!(
            "size {}: a zmount needs at least 16M, in whole 512-byte sectors",
            m.size
        ));
    }
    if path.exists() {
        let info = disk::disk_info(path).map_err(|e| e.to_string())?;
        if info.virtual_size != size {
            return Err(format!(
                "the disk is {} and cannot be resized to {}: add a zmount under a new name instead",
                zos_types::ByteSize(info.virtual_size),
                m.size
            ));
        }
    } else {
        disk::create_disk(path, size, DiskFormat::Raw).map_err(|e| e.to_string())?;
    }
    Ok(json!({ "size": size }))
}

/// The VM spec a zmachine asks for; the flist decides container or VM mode.
pub fn vm_spec(workload: &str, m: &ZMachine, disks: &Path, id: &str) -> Result<VmSpec, String> {
    let flist = PathBuf::from(&m.flist);
    if !flist.is_file() {
        return Err(format!("flist {} not found on the node", flist.display()));
    }
    let overrides = Overrides {
        entrypoint: (!m.entrypoint.is_empty()).then(|| m.entrypoint.clone()),
        cmd: m.cmd.clone(),
        env: m.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        root_size: m.root_size.0.div_ceil(1 << 20) << 20,
        seed: SeedSpec::default(),
        ..Overrides::default()
    };
    let boot = image::plan(
        FlistSource {
            path: flist,
            stores: Vec::new(),
        },
        &overrides,
    )
    .map_err(|e| e.to_string())?;
    let mut hostname: String = workload
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    hostname = hostname.trim_matches('-').to_string();
    if hostname.is_empty() {
        hostname = "zmachine".into();
    }
    let disks = m
        .mounts
        .iter()
        .map(|mount| DiskAttach {
            path: disk_path(disks, id, mount.name.as_str()),
            format: DiskFormat::Raw,
            mount_at: mount.mountpoint.clone(),
        })
        .collect();
    Ok(VmSpec {
        cpus: u32::from(m.cpu),
        memory_mib: m.memory.0.div_ceil(1 << 20),
        hostname,
        accel: Default::default(),
        boot,
        disks,
    })
}

/// What [`ensure_vm`] did.
pub enum VmOutcome {
    /// The VM runs (created and started, or already running).
    Running,
    /// The VM runs, replacing one with another spec.
    Replaced,
    /// The VM's process ended with exit code 0 and is left so.
    Finished,
}

/// Makes the VM `name` run with `spec`: creates it, replaces one with another spec, starts
/// it if it is not running. A VM whose process exited 0 is left alone unless `restart`.
pub fn ensure_vm(
    vmm: &Vmm,
    name: &str,
    spec: VmSpec,
    restart: bool,
    stop_timeout: Duration,
) -> Result<VmOutcome, String> {
    let mut replaced = false;
    match vmm.status(name) {
        Ok(info) if info.spec == spec => {
            if info.state.is_active() {
                return Ok(VmOutcome::Running);
            }
            if !restart && matches!(info.state, VmState::Exited { code: 0, .. }) {
                return Ok(VmOutcome::Finished);
            }
        }
        Ok(_) => {
            let _ = vmm.stop(name, stop_timeout);
            vmm.delete(name).map_err(|e| e.to_string())?;
            replaced = true;
            vmm.create(name, spec).map_err(|e| e.to_string())?;
        }
        Err(zos_vmm::Error::NotFound(_)) => {
            vmm.create(name, spec).map_err(|e| e.to_string())?;
        }
        Err(e) => return Err(e.to_string()),
    }
    vmm.start(name).map_err(|e| e.to_string())?;
    Ok(if replaced {
        VmOutcome::Replaced
    } else {
        VmOutcome::Running
    })
}

/// Removes a VM if it exists.
pub fn remove_vm(vmm: &Vmm, name: &str, stop_timeout: Duration) -> Result<(), String> {
    match vmm.status(name) {
        Ok(info) => {
            if info.state.is_active() {
                let _ = vmm.stop(name, stop_timeout);
            }
            vmm.delete(name).map_err(|e| e.to_string())
        }
        Err(zos_vmm::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Removes a disk file if it exists.
pub fn remove_disk(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_vm_names_and_differ_per_owner() {
        let (a, b) = (
            zos_types::Keypair::generate(),
            zos_types::Keypair::generate(),
        );
        let id = deployment_id(&a.public(), "web");
        assert_eq!(id.len(), 26);
        assert_ne!(id, deployment_id(&b.public(), "web"));
        assert_ne!(id, deployment_id(&a.public(), "web2"));
        let longest = vm_name(&id, &"w".repeat(36));
        assert!(zos_vmm::is_valid_name(&longest), "{longest}");
    }

    #[test]
    fn flists_come_from_outside_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        std::fs::create_dir_all(data.join("disks")).unwrap();
        let outside = dir.path().join("app.fl");
        std::fs::write(&outside, b"x").unwrap();
        let inside = data.join("disks/x.fl");
        std::fs::write(&inside, b"x").unwrap();
        std::os::unix::fs::symlink(&inside, dir.path().join("link.fl")).unwrap();
        let check = |p: &Path| check_flist(&p.display().to_string(), &data);
        assert_eq!(check(&outside), Ok(()));
        let err = check(&inside).unwrap_err();
        assert!(err.contains("inside the node's data dir"), "{err}");
        let err = check(&dir.path().join("link.fl")).unwrap_err();
        assert!(err.contains("inside the node's data dir"), "{err}");
        assert!(check_flist("app.fl", &data)
            .unwrap_err()
            .contains("absolute path"));
        assert!(check_flist("/etc/passwd", &data)
            .unwrap_err()
            .contains(".fl file"));
        assert!(check(&dir.path().join("none.fl"))
            .unwrap_err()
            .contains("not found"));
    }
}
