//! `zmachine`: a virtual machine booted from an flist (a container as a micro-VM, or a VM
//! booting the kernel or disk image the flist carries).

use super::{MachineNetwork, Workload, WorkloadData, WorkloadName, WorkloadSpec};
use crate::size::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The smallest memory a zmachine boots with.
pub const MIN_MEMORY: ByteSize = ByteSize(64 * ByteSize::MIB);

/// A virtual machine booted from an flist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZMachine {
    /// Absolute path of the `.fl` file on the node holding the root filesystem.
    pub flist: String,
    /// Replaces the image's entrypoint; empty keeps the image's.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Replaces the image's command; empty keeps the image's.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Virtual CPUs.
    #[serde(default = "default_cpu")]
    pub cpu: u8,
    /// Guest memory.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Size of the writable root layer.
    #[serde(default = "default_root_size")]
    pub root_size: ByteSize,
    /// Zmounts of this deployment to attach.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// The networks of this deployment it joins.
    #[serde(default, skip_serializing_if = "MachineNetwork::is_empty")]
    pub network: MachineNetwork,
}

fn default_cpu() -> u8 {
    1
}
fn default_memory() -> ByteSize {
    ByteSize(256 * ByteSize::MIB)
}
fn default_root_size() -> ByteSize {
    ByteSize(ByteSize::GIB)
}

/// A zmount attached to a zmachine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The zmount workload, in the same deployment.
    pub name: WorkloadName,
    /// Absolute path inside the machine.
    pub mountpoint: String,
}

impl WorkloadData for ZMachine {
    fn problems(&self, deployment: &[Workload]) -> Vec<String> {
        let mut bad = Vec::new();
        if self.flist.is_empty() {
            bad.push("flist is empty".into());
        }
        if self.cpu == 0 {
            bad.push("cpu must be at least 1".into());
        }
        if self.memory < MIN_MEMORY {
            bad.push(format!(
                "memory {} is below the minimum {MIN_MEMORY}",
                self.memory
            ));
        }
        for key in self.env.keys().filter(|k| k.is_empty() || k.contains('=')) {
            bad.push(format!(
                "env name {key:?} must be non-empty and contain no '='"
            ));
        }
        let zmounts: BTreeSet<&WorkloadName> = deployment
            .iter()
            .filter(|w| matches!(w.spec, WorkloadSpec::Zmount(_)))
            .map(|w| &w.name)
            .collect();
        let mut points = BTreeSet::new();
        for mount in &self.mounts {
            if !zmounts.contains(&mount.name) {
                bad.push(format!(
                    "mount {:?} is not a zmount in this deployment",
                    mount.name.as_str()
                ));
            }
            if !mount.mountpoint.starts_with('/') || mount.mountpoint == "/" {
                bad.push(format!(
                    "mountpoint {:?} must be an absolute path below /",
                    mount.mountpoint
                ));
            }
            if !points.insert(&mount.mountpoint) {
                bad.push(format!("mountpoint {:?} is used twice", mount.mountpoint));
            }
        }
        bad.extend(self.network.problems(deployment));
        bad
    }
}
