//! What a VM may use of the host: the one home of the VMM's memory overhead, shared by the
//! VM's cgroup limit and the node's admission, and the VM's cgroup limits.

use crate::spec::VmSpec;
use zos_cgroup::{CpuMax, Limits};

/// Memory a VM's QEMU and virtiofsd use beside the guest's RAM. First measured on a container
/// VM under TCG (QEMU 7.2) whose guest touched all of its 256 MiB: 84 MiB anonymous (47 MiB
/// of it translated code, then bounded at 128 MiB) and 11 MiB shared beyond the guest's RAM.
/// With the translation cache at [`TCG_TB_MIB`] and the kernel booted as a PVH ELF (QEMU
/// keeps no copy of it) the anonymous part of an idle container is 32 MiB (code cache,
/// translation tables, heap); 128 MiB leaves room for I/O buffers under load. Page cache the VM brings in is reclaimed before anything is killed.
pub const VMM_OVERHEAD: u64 = 128 << 20;

/// QEMU's translated-code cache under TCG, MiB. QEMU's default reserves up to 1 GiB, filled
/// as code is translated: bounded so the overhead above holds whatever the guest runs. A
/// container's boot fills 45 MiB of it; at 16 MiB it is flushed and refilled instead, which
/// measured no slower (`zos run` of busybox 2.8 s at 16, 3.1 s at 32, 3.2 s at 128), and an
/// idle container holds 32 MiB less.
pub const TCG_TB_MIB: u64 = 16;

/// Tasks (processes and threads) per VM beside one per vCPU: QEMU's main, RCU and I/O
/// worker threads (its pool grows to 64 under load), virtiofsd's threads, with room.
pub const PIDS_BASE: u64 = 256;

/// The memory a VM of `guest` bytes of RAM takes on the host: its RAM, plus a 64th for the
/// page tables and bitmaps that grow with it, plus [`VMM_OVERHEAD`]. Its cgroup is limited
/// to this, and admission counts this, not guest RAM alone.
pub fn memory_demand(guest: u64) -> u64 {
    guest
        .saturating_add(guest / 64)
        .saturating_add(VMM_OVERHEAD)
}

/// The cgroup limits of a VM: CPU time capped at its vCPUs, CPU and I/O weights
/// proportional to its vCPUs (so overcommitted CPUs are shared in proportion to what each VM
/// was given), memory at [`memory_demand`], tasks at [`PIDS_BASE`] plus one per vCPU.
pub fn for_vm(spec: &VmSpec) -> Limits {
    let cpus = u64::from(spec.cpus.max(1));
    Limits {
        cpu_max: Some(CpuMax::cpus(spec.cpus)),
        cpu_weight: Some(100 * cpus),
        memory_max: Some(memory_demand(spec.memory_mib << 20)),
        pids_max: Some(PIDS_BASE + cpus),
        io_weight: Some(100 * cpus),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Boot;

    #[test]
    fn a_vms_limits_follow_its_spec() {
        let spec = VmSpec {
            cpus: 2,
            memory_mib: 512,
            hostname: "h".into(),
            accel: Default::default(),
            boot: Boot::Disk {
                flist: crate::spec::FlistSource {
                    path: "/x.fl".into(),
                    stores: Vec::new(),
                },
                image: "/image.raw".into(),
                format: crate::disk::DiskFormat::Raw,
                root_size: 1 << 30,
                seed: Default::default(),
                network: None,
            },
            disks: Vec::new(),
        };
        let l = for_vm(&spec);
        assert_eq!(l.cpu_max, Some(CpuMax::cpus(2)));
        assert_eq!(l.cpu_max.map(|m| m.quota_us), Some(200_000));
        assert_eq!(l.cpu_weight, Some(200));
        assert_eq!(l.memory_max, Some((512 << 20) + (8 << 20) + VMM_OVERHEAD));
        assert_eq!(l.pids_max, Some(258));
        assert_eq!(memory_demand(0), VMM_OVERHEAD);
        assert_eq!(memory_demand(u64::MAX), u64::MAX, "saturates");
    }
}
