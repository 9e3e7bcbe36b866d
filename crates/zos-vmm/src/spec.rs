//! What a VM is made of: the data model kept apart from the machinery that runs it.

use crate::disk::DiskFormat;
use crate::host::Accel;
use crate::image::{self, Overrides};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything needed to (re)start a VM; stored with it, so a restarted manager can start it
/// again exactly as created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmSpec {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The guest's hostname.
    pub hostname: String,
    /// Accelerator; `Auto` picks KVM only on hardware virtualization.
    #[serde(default)]
    pub accel: Accel,
    /// The flist the VM boots from and how.
    pub boot: Boot,
    /// Extra virtio-blk disks.
    #[serde(default)]
    pub disks: Vec<DiskAttach>,
}

impl VmSpec {
    /// The VM's network, if it has one.
    pub fn network(&self) -> Option<&NetSpec> {
        match &self.boot {
            Boot::Container { network, .. }
            | Boot::Kernel { network, .. }
            | Boot::Disk { network, .. } => network.as_ref(),
        }
    }

    /// The VM's network, to fill in its interface.
    pub fn network_mut(&mut self) -> Option<&mut NetSpec> {
        self.network_slot().as_mut()
    }

    /// Where the boot mode keeps the network (every mode has one).
    fn network_slot(&mut self) -> &mut Option<NetSpec> {
        match &mut self.boot {
            Boot::Container { network, .. }
            | Boot::Kernel { network, .. }
            | Boot::Disk { network, .. } => network,
        }
    }
}

/// A VM's network: either the host's local network (see `zos_net::local`), asked for with
/// its published ports, whose interface (address, MAC, tap) is leased when the VM is
/// created and given back when it is deleted; or interfaces on networks its caller made (a
/// node's private networks, see `zos_net::private`), used as given.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetSpec {
    /// Host ports forwarded to the guest (local network).
    #[serde(default)]
    pub ports: Vec<zos_net::PortMap>,
    /// The local network's interface, once leased by create.
    #[serde(default)]
    pub interface: Option<zos_net::Interface>,
    /// Interfaces on the caller's networks, in guest order; when there are any, nothing is
    /// leased on the local network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<zos_net::Interface>,
}

impl NetSpec {
    /// Every interface, in guest order (`eth0` first).
    pub fn interfaces(&self) -> impl Iterator<Item = &zos_net::Interface> {
        self.interface.iter().chain(&self.joined)
    }

    /// Whether the VM is on the local network (and so leases its interface there).
    pub fn is_local(&self) -> bool {
        self.joined.is_empty()
    }
}

/// What a caller asks of a VM before its flist is read: the one way from "run this flist
/// with these settings" to a [`VmSpec`], shared by `zos run` and the node's zmachines.
#[derive(Debug, Clone)]
pub struct VmRequest {
    /// The flist to boot; it decides container, kernel or disk-image mode.
    pub flist: FlistSource,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Guest memory in bytes (rounded up to whole MiB).
    pub memory: u64,
    /// The guest's hostname, made valid by [`hostname_for`].
    pub hostname: String,
    /// Accelerator.
    pub accel: Accel,
    /// What overrides the image's config (its `root_size` is rounded up to whole MiB).
    pub overrides: Overrides,
    /// Extra disks.
    pub disks: Vec<DiskAttach>,
    /// The network: zos-init configures it in a container, the NoCloud seed's
    /// `network-config` in VM modes (unless the caller gives its own).
    pub network: Option<NetSpec>,
}

impl VmRequest {
    /// Reads the flist and plans the boot (see [`image::plan`]).
    pub fn plan(mut self) -> crate::Result<VmSpec> {
        // Whole MiB: disk images want whole sectors, and nobody means a byte count here.
        self.overrides.root_size = self.overrides.root_size.div_ceil(1 << 20) << 20;
        let boot = image::plan(self.flist, &self.overrides)?;
        let mut spec = VmSpec {
            cpus: self.cpus,
            memory_mib: self.memory.div_ceil(1 << 20),
            hostname: hostname_for(&self.hostname),
            accel: self.accel,
            boot,
            disks: self.disks,
        };
        // The network is no part of the image: whatever mode it chose gets it.
        *spec.network_slot() = self.network;
        Ok(spec)
    }
}

/// A hostname from a name: letters, digits and `-` only (`_`, fine in VM and workload
/// names, becomes `-`), no `-` at either end, at most 63 characters; `zos` if nothing is left.
pub fn hostname_for(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "zos".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Where an flist's blocks come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlistSource {
    /// The `.fl` file (absolute).
    pub path: PathBuf,
    /// Stores to read blocks from instead of the flist's own routes (empty: its routes).
    #[serde(default)]
    pub stores: Vec<String>,
}

/// How the VM boots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Boot {
    /// A container: the flist (plus a private writable layer) is the root filesystem over
    /// virtio-fs, the boot kit's kernel boots, and `zos-init` runs the process.
    Container {
        /// The image.
        flist: FlistSource,
        /// Size limit of the writable layer, bytes.
        root_size: u64,
        /// The process to run.
        process: zos_init::Process,
        /// Files written into its root before the process starts.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<zos_init::GuestFile>,
        /// The check zos-init runs for its health.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        healthcheck: Option<zos_init::GuestHealthcheck>,
        /// Whether the process waits for the host to attach to its stdio.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attach: Option<zos_init::GuestAttach>,
        /// Its network; `None`: only `lo`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<NetSpec>,
    },
    /// The flist carries its own kernel: it boots with the flist (plus a writable layer) as
    /// its root over virtio-fs, and a NoCloud seed disk for cloud-init.
    Kernel {
        /// The image.
        flist: FlistSource,
        /// Size limit of the writable layer, bytes.
        root_size: u64,
        /// Kernel path inside the flist, e.g. `/boot/vmlinuz`.
        kernel: String,
        /// Initrd path inside the flist, if it has one.
        initrd: Option<String>,
        /// Extra kernel command line.
        #[serde(default)]
        cmdline: String,
        /// The cloud-init seed.
        seed: SeedSpec,
        /// Its network, configured through the seed; `None`: no NIC.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<NetSpec>,
    },
    /// The flist carries a disk image: firmware (SeaBIOS) boots it from a qcow2 overlay
    /// whose backing file is the image in the flist mount, so the guest's writes stay with
    /// the VM and the image is never copied. A NoCloud seed disk comes along.
    Disk {
        /// The image.
        flist: FlistSource,
        /// The disk image's path inside the flist (no symlinks), e.g. `/image.qcow2`.
        image: String,
        /// Its format.
        format: DiskFormat,
        /// Size of the disk the guest sees, bytes: at least the image's; the guest's writes
        /// can grow the overlay to it and no further.
        root_size: u64,
        /// The cloud-init seed.
        seed: SeedSpec,
        /// Its network, configured through the seed; `None`: no NIC.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<NetSpec>,
    },
}

impl Boot {
    /// The flist of any boot mode.
    pub fn flist(&self) -> &FlistSource {
        match self {
            Boot::Container { flist, .. }
            | Boot::Kernel { flist, .. }
            | Boot::Disk { flist, .. } => flist,
        }
    }

    /// Size limit of the writable root: the overlay's ext4 image, or the disk-image's
    /// virtual size.
    pub fn root_size(&self) -> u64 {
        match self {
            Boot::Container { root_size, .. }
            | Boot::Kernel { root_size, .. }
            | Boot::Disk { root_size, .. } => *root_size,
        }
    }

    /// A short name of the mode, for messages.
    pub fn mode(&self) -> &'static str {
        match self {
            Boot::Container { .. } => "container",
            Boot::Kernel { .. } => "vm (kernel)",
            Boot::Disk { .. } => "vm (disk image)",
        }
    }
}

/// What a VM-mode guest learns from its NoCloud seed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SeedSpec {
    /// Authorized SSH public keys.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// cloud-init user-data, verbatim.
    #[serde(default)]
    pub user_data: Option<String>,
    /// cloud-init network-config (v2), verbatim.
    #[serde(default)]
    pub network_config: Option<String>,
}

/// A disk attached to a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskAttach {
    /// The image file on the host.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Where a container mounts it (ignored in VM mode, where the guest decides).
    pub mount_at: String,
}

#[cfg(test)]
mod tests {
    use super::hostname_for;

    #[test]
    fn hostnames_are_valid_whatever_the_name() {
        assert_eq!(hostname_for("web_1"), "web-1");
        assert_eq!(hostname_for("_web_"), "web");
        assert_eq!(hostname_for("___"), "zos");
        assert_eq!(hostname_for("a.b c"), "a-b-c");
        assert_eq!(hostname_for(&"x".repeat(80)).len(), 63);
    }
}
