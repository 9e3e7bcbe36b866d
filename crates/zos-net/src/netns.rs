//! Named network namespaces, laid out as iproute2 lays them (`/run/netns/NAME`, a bind
//! mount of the namespace), so `ip netns exec NAME …` works on them for operators and tests.
//!
//! Namespaces are made and entered from a short-lived thread: a network namespace belongs
//! to a thread, not to the process, so the caller's other threads (a node's tokio workers)
//! never change namespace, and nothing forks inside a multi-threaded process.

use crate::{Error, Result};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where named namespaces are bind-mounted.
pub const DIR: &str = "/run/netns";

/// The file of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

/// Makes `cmd` start in namespace `name`'s network, and only that: `ip netns exec` would
/// also give it a mount namespace of its own, whose /sys shows no cgroups.
pub fn command_in(cmd: &mut std::process::Command, name: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let file = File::open(path(name))
        .map_err(|e| Error::io(format!("opening {}", path(name).display()), e))?;
    // SAFETY: setns is async-signal-safe, and the closure touches nothing but the descriptor,
    // which stays open in the child until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Whether namespace `name` exists (its file is a namespace, not a leftover empty file).
pub fn exists(name: &str) -> bool {
    File::open(path(name)).is_ok_and(|f| is_netns(&f))
}

/// Whether `f` is a network namespace (nsfs), asked with `NS_GET_NSTYPE`.
fn is_netns(f: &File) -> bool {
    /// `_IO(0xb7, 0x3)`.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    kind == libc::CLONE_NEWNET
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{} holds a NUL byte", p.display())))
}

fn last_os(what: String) -> Error {
    Error::io(what, std::io::Error::last_os_error())
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so a namespace mounted there
/// is seen in the mount namespaces made after it.
fn prepare_dir() -> Result<()> {
    std::fs::create_dir_all(DIR).map_err(|e| Error::io(format!("creating {DIR}"), e))?;
    let dir = c_path(Path::new(DIR))?;
    let none = c"none";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let shared = |dir: &CString| unsafe {
        libc::mount(
            none.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if shared(&dir) == 0 {
        return Ok(());
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(last_os(format!("making {DIR} a shared mount")));
    }
    // Not a mount point yet: bind it onto itself first.
    // SAFETY: as above.
    let bound = unsafe {
        libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            none.as_ptr(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if bound != 0 || shared(&dir) != 0 {
        return Err(last_os(format!("making {DIR} a shared mount")));
    }
    Ok(())
}

/// Makes namespace `name` with only `lo` (up); one that exists is kept.
pub fn ensure(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error::Invalid(format!("bad namespace name {name:?}")));
    }
    if exists(name) {
        return Ok(());
    }
    prepare_dir()?;
    let target = path(name);
    // A leftover file (a crash between create and mount) is reused.
    File::create(&target).map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // SAFETY: unshare of this thread's network namespace only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(last_os(format!("making network namespace {name}")));
            }
            let source = c_path(Path::new("/proc/thread-self/ns/net"))?;
            let dest = c_path(&target)?;
            // SAFETY: valid NUL-terminated paths; a plain bind mount.
            if unsafe {
                libc::mount(
                    source.as_ptr(),
                    dest.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            } != 0
            {
                return Err(last_os(format!("mounting network namespace {name}")));
            }
            crate::link::up("lo")
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("namespace thread panicked".into())))
    });
    if made.is_err() {
        let _ = remove(name);
    }
    made
}

/// Removes namespace `name`: its links go with it once nothing else holds it. Nothing to do
/// when it is gone.
pub fn remove(name: &str) -> Result<()> {
    let target = path(name);
    let c = c_path(&target)?;
    // SAFETY: a valid path; a lazy unmount, so a process still inside keeps working.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(Error::io(format!("unmounting {}", target.display()), e));
        }
    }
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", target.display()), e))
        }
        _ => Ok(()),
    }
}

/// The names of the namespaces that start with `prefix`.
pub fn names(prefix: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {DIR}"), e)),
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    Ok(out)
}

/// Runs `f` on a thread inside namespace `name`: links, sockets and child processes it
/// makes (netlink requests, `nft`) are in that namespace.
pub fn enter<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let target = path(name);
    let ns = File::open(&target)
        .ok()
        .filter(is_netns)
        .ok_or_else(|| Error::Invalid(format!("network namespace {name} does not exist")))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns of this thread only, on a namespace descriptor we own.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(last_os(format!("entering network namespace {name}")));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("namespace thread panicked".into())))
    })
}
