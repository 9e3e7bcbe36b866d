//! What the node can hand out and what deployments hold: admission never overcommits memory,
//! overcommits vCPUs by the configured ratio, and counts disks plus writable root layers.

use crate::config::NodeConfig;
use zos_types::api::Resources;
use zos_types::ByteSize;

/// The node's totals after its reserves.
pub fn totals(cfg: &NodeConfig, disk_size: u64) -> Resources {
    let cpus = (zos_vmm::host::cpus() as f64 * cfg.cpu_overcommit).floor() as u64;
    Resources {
        cpus,
        memory: zos_vmm::host::memory_bytes().saturating_sub(cfg.reserve_memory.0),
        disk: disk_size.saturating_sub(cfg.reserve_disk.0),
    }
}

/// What the file system holding `dir` has free for unprivileged use, in bytes.
pub fn filesystem_free(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    // SAFETY: statvfs is plain data, zero is a valid bit pattern.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// `a + b`.
pub fn add(a: Resources, b: Resources) -> Resources {
    Resources {
        cpus: a.cpus.saturating_add(b.cpus),
        memory: a.memory.saturating_add(b.memory),
        disk: a.disk.saturating_add(b.disk),
    }
}

/// What the deployments in `held` (keyed by deployment) hold together, leaving out
/// `except` (the one being updated).
pub fn total_held(
    held: &std::collections::HashMap<String, Resources>,
    except: Option<&str>,
) -> Resources {
    held.iter()
        .filter(|(k, _)| Some(k.as_str()) != except)
        .fold(Resources::default(), |a, (_, b)| add(a, *b))
}

/// `a - b`, floored at zero.
pub fn sub(a: Resources, b: Resources) -> Resources {
    Resources {
        cpus: a.cpus.saturating_sub(b.cpus),
        memory: a.memory.saturating_sub(b.memory),
        disk: a.disk.saturating_sub(b.disk),
    }
}

/// Whether `want` more fits in `free`; otherwise what is short, for the error.
pub fn check_fits(want: Resources, free: Resources) -> Result<(), String> {
    let mut short = Vec::new();
    // Both numbers in one unit, the larger one's.
    let sizes = |want: u64, free: u64| {
        let scale = ByteSize(want.max(free));
        (
            ByteSize(want).in_unit_of(scale),
            ByteSize(free).in_unit_of(scale),
        )
    };
    if want.memory > free.memory {
        let (want, free) = sizes(want.memory, free.memory);
        short.push(format!("memory: {want} asked, {free} free"));
    }
    if want.cpus > free.cpus {
        short.push(format!("vCPUs: {} asked, {} free", want.cpus, free.cpus));
    }
    if want.disk > free.disk {
        let (want, free) = sizes(want.disk, free.disk);
        short.push(format!("disk: {want} asked, {free} free"));
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the node cannot take this deployment ({})",
            short.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortfalls_are_named() {
        let free = Resources {
            cpus: 4,
            memory: 1 << 30,
            disk: 10 << 30,
        };
        assert!(check_fits(
            Resources {
                cpus: 4,
                memory: 1 << 30,
                disk: 0
            },
            free
        )
        .is_ok());
        let err = check_fits(
            Resources {
                cpus: 5,
                memory: 2 << 30,
                disk: 0,
            },
            free,
        )
        .unwrap_err();
        assert!(err.contains("memory: 2 GiB asked, 1 GiB free"), "{err}");
        // The case: one unit, human sizes.
        let human = check_fits(
            Resources {
                memory: 64 << 30,
                ..Resources::default()
            },
            Resources {
                memory: 23_111_220 << 10,
                ..free
            },
        )
        .unwrap_err();
        assert!(
            human.contains("memory: 64 GiB asked, 22.04 GiB free"),
            "{human}"
        );
        assert!(err.contains("vCPUs: 5 asked, 4 free"), "{err}");
        assert!(!err.contains("disk"), "{err}");
        assert_eq!(sub(free, Resources { cpus: 9, ..free }).cpus, 0);
    }
}
