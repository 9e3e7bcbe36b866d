//! `zmount` on the node: an ext4-formatted raw disk file in the node's `disks/` dir, made
//! once and never resized.

use super::{names_in, result, Host, Kind, Step, Target};
use serde_json::json;
use std::path::Path;
use zos_types::api::Resources;
use zos_types::{ByteSize, ResultState, WorkloadSpec, ZMount};
use zos_vmm::disk::{self, DiskFormat};

/// The node side of zmounts.
pub struct Zmount;

/// The disk file of a zmount resource.
pub fn disk_path(host: &Host, resource: &str) -> std::path::PathBuf {
    host.disks.join(resource)
}

fn data(spec: &WorkloadSpec) -> Option<&ZMount> {
    match spec {
        WorkloadSpec::Zmount(m) => Some(m),
        _ => None,
    }
}

impl Kind for Zmount {
    fn type_name(&self) -> &'static str {
        "zmount"
    }

    fn rank(&self) -> u8 {
        0
    }

    fn demand(&self, spec: &WorkloadSpec) -> Resources {
        Resources {
            disk: data(spec).map_or(0, |m| m.size.0),
            ..Resources::default()
        }
    }

    fn converge(&self, host: &Host, target: &Target) -> Step {
        let w = target.workload;
        let Some(m) = data(&w.spec) else {
            return Step {
                result: None,
                usable: Err("not a zmount".into()),
            };
        };
        if !target.fresh {
            return Step {
                result: None,
                usable: Ok(()),
            };
        }
        let resource = self.resource(target.id, w.name.as_str());
        match ensure(&disk_path(host, &resource), m) {
            Ok(data) => Step {
                result: Some(result(ResultState::Ok, "disk ready", data)),
                usable: Ok(()),
            },
            Err(e) => Step {
                result: Some(result(
                    ResultState::Error,
                    e.clone(),
                    serde_json::Value::Null,
                )),
                usable: Err(e),
            },
        }
    }

    fn resource(&self, id: &str, workload: &str) -> String {
        format!("{id}-{workload}.raw")
    }

    fn resources(&self, host: &Host) -> std::io::Result<Vec<String>> {
        names_in(&host.disks)
    }

    fn sweep(&self, host: &Host) -> std::io::Result<()> {
        // Disks are made under a hidden temporary name and renamed when complete.
        for entry in std::fs::read_dir(&host.disks)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                tracing::info!(file = %entry.path().display(), "removing a half-made disk");
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    fn quarantine(&self, host: &Host, resource: &str, into: &Path) -> Result<(), String> {
        let path = disk_path(host, resource);
        std::fs::rename(&path, into.join(resource))
            .map_err(|e| format!("moving {} to {}: {e}", path.display(), into.display()))
    }

    fn remove(&self, host: &Host, resource: &str) -> Result<(), String> {
        let path = disk_path(host, resource);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", path.display())),
        }
    }
}

/// Makes the zmount's disk (ext4, formatted once). Returns the result data.
fn ensure(path: &Path, m: &ZMount) -> Result<serde_json::Value, String> {
    let size = m.size.0;
    if size < disk::MIN_DISK_SIZE || !size.is_multiple_of(512) {
        return Err(format!(
            "size {}: a zmount needs at least {}, in whole 512-byte sectors",
            m.size,
            ByteSize(disk::MIN_DISK_SIZE)
        ));
    }
    if path.exists() {
        let info = disk::disk_info(path).map_err(|e| e.to_string())?;
        if info.virtual_size != size {
            return Err(format!(
                "the disk is {} and cannot be resized to {}: add a zmount under a new name instead",
                ByteSize(info.virtual_size),
                m.size
            ));
        }
    } else {
        disk::create_disk(path, size, DiskFormat::Raw).map_err(|e| e.to_string())?;
    }
    Ok(json!({ "size": size }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_half_made_disks_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::for_test(dir.path(), &dir.path().join("cache"), Vec::new());
        std::fs::create_dir(&host.disks).unwrap();
        let disk = Zmount.resource("abc", "data");
        std::fs::write(host.disks.join(&disk), b"").unwrap();
        std::fs::write(host.disks.join(format!(".{disk}.x1.tmp")), b"").unwrap();
        Zmount.sweep(&host).unwrap();
        assert_eq!(Zmount.resources(&host).unwrap(), [disk]);
        assert_eq!(std::fs::read_dir(&host.disks).unwrap().count(), 1);
    }
}
