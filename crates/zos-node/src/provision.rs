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
/// hash of owner and name (short enough for VM names, and no user text in host paths).
pub fn deployment_id(owner: &PublicKey, name: &str) -> String {
    let digest = Sha256::digest(crate::store::key(owner, name).as_bytes());
    hex::encode(&digest[..6])
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
    if !flist.is_absolute() {
        return Err(format!(
            "flist {:?}: give the absolute path of a .fl file on the node",
            m.flist
        ));
    }
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
