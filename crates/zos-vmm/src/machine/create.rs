//! Creating a VM: every check that can be made before anything starts, then its directory
//! (record and, except for disk images, the writable layer), built aside and renamed in.

use super::qemu_args::DISK_FIRMWARE;
use super::record::{check_name, now, save, Record, VmInfo, VmState};
use super::Vmm;
use crate::bootkit::{self, BootKit};
use crate::disk::{self, DiskFormat};
use crate::host::{self, Accel};
use crate::rootfs::Layers;
use crate::spec::{Boot, VmSpec};
use crate::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};

impl Vmm {
    /// Records a new VM; checks everything that can be checked before any VM starts.
    pub fn create(&self, name: &str, mut spec: VmSpec) -> Result<VmInfo> {
        check_name(name)?;
        self.check_spec(&spec)?;
        let dir = self.dir(name);
        if dir.exists() {
            return Err(Error::Invalid(format!(
                "a VM named {name:?} already exists (remove it first)"
            )));
        }
        // Last check, first thing made: the address and host ports, given back if the
        // rest fails.
        if let Some(net) = spec.network_mut() {
            if net.is_local() {
                net.interface = Some(super::net::lease(&dir, &net.ports)?);
            } else {
                super::net::reserve_ports(&dir, net)?;
            }
        }
        let made = self.make_dir(name, &dir, spec);
        if made.is_err() {
            super::net::release(&dir);
        }
        made
    }

    /// Builds the VM's directory aside and renames it into place.
    fn make_dir(&self, name: &str, dir: &Path, spec: VmSpec) -> Result<VmInfo> {
        // Built in a staging dir and renamed, so a failed create leaves nothing.
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempdir_in(&self.cfg.root)
            .map_err(|e| Error::io(format!("creating a dir in {}", self.cfg.root.display()), e))?;
        if !matches!(spec.boot, Boot::Disk { .. }) {
            disk::create_disk(
                &Layers::of(staging.path()).image,
                spec.boot.root_size(),
                DiskFormat::Raw,
            )?;
        }
        let record = Record {
            name: name.to_string(),
            spec,
            created: now(),
            state: VmState::Created,
            runtime: None,
            uid: None,
        };
        save(staging.path(), &record)?;
        let staged = staging.keep();
        fs::rename(&staged, dir).map_err(|e| {
            let _ = fs::remove_dir_all(&staged);
            Error::io(format!("creating {}", dir.display()), e)
        })?;
        Ok(self.info(dir, &record))
    }

    /// Refuses a spec this host cannot run, naming what to change.
    fn check_spec(&self, spec: &VmSpec) -> Result<()> {
        let (cpus, mem) = (host::cpus(), host::memory_bytes());
        if spec.cpus == 0 || spec.cpus > cpus {
            return Err(Error::Invalid(format!(
                "{} CPUs asked for, the host has {cpus}: use --cpus 1..={cpus}",
                spec.cpus
            )));
        }
        if spec.memory_mib < 64 || spec.memory_mib.saturating_mul(1 << 20) > mem {
            return Err(Error::Invalid(format!(
                "{} MiB of memory asked for; the host has {} MiB and a guest needs at least 64 MiB",
                spec.memory_mib,
                mem >> 20
            )));
        }
        if spec.accel == Accel::Kvm && !Path::new("/dev/kvm").exists() {
            return Err(Error::Invalid(
                "--accel kvm asked for, but this host has no /dev/kvm: use --accel auto".into(),
            ));
        }
        let root_size = spec.boot.root_size();
        if root_size < disk::MIN_DISK_SIZE || !root_size.is_multiple_of(512) {
            return Err(Error::Invalid(format!(
                "root size {root_size} bytes: use at least 16M, in whole 512-byte sectors"
            )));
        }
        let hostname_ok = !spec.hostname.is_empty()
            && spec.hostname.len() <= 63
            && spec
                .hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !spec.hostname.starts_with('-')
            && !spec.hostname.ends_with('-');
        if !hostname_ok {
            return Err(Error::Invalid(format!(
                "bad hostname {:?}: use 1-63 letters, digits and '-'",
                spec.hostname
            )));
        }
        let flist = &spec.boot.flist().path;
        if !flist.is_file() {
            return Err(Error::Invalid(format!(
                "flist {} not found",
                flist.display()
            )));
        }
        match spec.boot {
            Boot::Container { .. } => {
                BootKit::locate(&self.cfg.bootkit)?;
                self.init_path()?;
            }
            Boot::Disk { .. } if !Path::new(DISK_FIRMWARE).is_file() => {
                return Err(Error::Invalid(format!(
                    "booting a disk image needs the SeaBIOS firmware {DISK_FIRMWARE}: install the seabios package (scripts/setup)"
                )));
            }
            _ => {}
        }
        let mut serials = std::collections::HashSet::new();
        for d in &spec.disks {
            let info = disk::disk_info(&d.path).map_err(|e| {
                Error::Invalid(format!("disk {} cannot be used: {e}", d.path.display()))
            })?;
            if let Some(why) = info.external_reference() {
                return Err(Error::Invalid(format!(
                    "disk {} cannot be attached: {why}; attach a disk without one",
                    d.path.display()
                )));
            }
            if info.format != d.format {
                return Err(Error::Invalid(format!(
                    "disk {} is {}, not {}",
                    d.path.display(),
                    info.format.as_qemu(),
                    d.format.as_qemu()
                )));
            }
            if !d.mount_at.starts_with('/') || !serials.insert(d.mount_at.clone()) {
                return Err(Error::Invalid(format!(
                    "disk mount point {:?} must be an absolute path, used once",
                    d.mount_at
                )));
            }
        }
        Ok(())
    }

    /// The static `zos-init` container VMs boot with.
    pub(super) fn init_path(&self) -> Result<PathBuf> {
        match &self.cfg.init {
            Some(p) => Ok(p.clone()),
            None => bootkit::locate_init(),
        }
    }
}
