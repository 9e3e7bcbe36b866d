//! What the host offers: CPUs, memory, and which accelerator QEMU can use.

use serde::{Deserialize, Serialize};

/// QEMU accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where the host has hardware virtualization, else TCG.
    #[default]
    Auto,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Accel, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("unknown accelerator {s:?}: use auto, kvm or tcg")),
        }
    }
}

impl Accel {
    /// Resolves `Auto`: KVM only with a hardware KVM module loaded. `kvm_pvm` (software
    /// nested virtualization) exposes /dev/kvm too, but stock guests hang under it.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto => {
                let module = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
                let hardware = module("kvm_intel") || module("kvm_amd");
                if std::path::Path::new("/dev/kvm").exists() && hardware && !module("kvm_pvm") {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            other => other,
        }
    }

    /// The name QEMU uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Number of CPUs the host has online.
pub fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Total memory of the host in bytes (`MemTotal`).
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Kernel arguments that make a Linux guest boot reliably under TCG: its early TSC
/// calibration against the emulated PIT fails now and then on a busy host, and the guest
/// then hangs in timer setup. Telling it the TSC rate (TCG's TSC runs at the host's) skips
/// that calibration.
pub fn tcg_kernel_args() -> String {
    let mhz = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    match mhz {
        Some(mhz) if mhz > 0.0 => format!("tsc_early_khz={} no_timer_check", (mhz * 1000.0) as u64),
        _ => "no_timer_check".into(),
    }
}
