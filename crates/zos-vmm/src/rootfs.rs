//! The root filesystem of a container or kernel-mode VM on the host: the flist mounted
//! read-only (FUSE, shared block cache) as the lower layer, a private ext4 image (its size is
//! the root size limit) holding the upper layer, and overlayfs merging them. virtiofsd then
//! exports the merged dir to the guest. Everything here survives the manager: mounts live in
//! the host's mount table and the flist mount is its own process.

use crate::proc::ProcRef;
use crate::spec::FlistSource;
use crate::{Error, Result};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Lines};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use zos_flist::store::StorePolicy;

/// A `zos flist mount --ready-on-stdout` process to start: the one way flist mounts are
/// brought up in the background, for VMs and for `zos flist mount --daemon`.
pub struct FlistMount<'a> {
    /// The `zos` binary.
    pub zos: &'a Path,
    /// The `.fl` file.
    pub flist: &'a Path,
    /// The mountpoint.
    pub at: &'a Path,
    /// The block cache dir (the mount's default without one).
    pub cache: Option<&'a Path>,
    /// The block cache's size limit in bytes.
    pub cache_size: u64,
    /// Stores to read blocks from instead of the flist's routes.
    pub stores: &'a [String],
    /// The store policy the mount must keep to (`--restrict-stores`); `None`: none.
    pub policy: Option<&'a StorePolicy>,
}

/// A started mount process, its stdout after the first line, and that first line: `ready`
/// once mounted; otherwise (or `None`) the mount failed and the process says why.
pub type Started = (Child, Lines<BufReader<ChildStdout>>, Option<String>);

impl FlistMount<'_> {
    /// Starts the process with `stderr` as its log, in its own process group (a Ctrl-C in
    /// the terminal that started it must not take the mount away), and waits for its first
    /// line.
    pub fn start(&self, stderr: Stdio) -> std::io::Result<Started> {
        let mut cmd = Command::new(self.zos);
        cmd.args(["flist", "mount", "--ready-on-stdout"])
            .arg(self.flist)
            .arg(self.at)
            .arg(format!("--cache-size={}", self.cache_size));
        if let Some(cache) = self.cache {
            cmd.arg("--cache").arg(cache);
        }
        for store in self.stores {
            cmd.arg(format!("--store={store}"));
        }
        if let Some(policy) = self.policy {
            cmd.arg("--restrict-stores");
            for net in policy.allow_nets() {
                cmd.arg(format!("--allow-store-net={net}"));
            }
            for dir in policy.allow_dirs() {
                cmd.arg("--allow-store-dir").arg(dir);
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .current_dir("/")
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("the mount process has no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(|l| l.ok());
        Ok((child, lines, first))
    }
}

/// The paths of one VM's layers.
pub(crate) struct Layers {
    /// The ext4 image holding the writable layer.
    pub image: PathBuf,
    /// Where that image is mounted.
    pub rw: PathBuf,
    /// Where the flist is mounted.
    pub lower: PathBuf,
    /// The merged root exported to the guest.
    pub merged: PathBuf,
}

impl Layers {
    pub fn of(vm_dir: &Path) -> Layers {
        Layers {
            image: vm_dir.join("root.img"),
            rw: vm_dir.join("rw"),
            lower: vm_dir.join("lower"),
            merged: vm_dir.join("root"),
        }
    }
}

/// How to start the flist mount process.
pub(crate) struct MountHelper<'a> {
    /// The `zos` binary (`zos flist mount` serves the flist).
    pub zos: &'a Path,
    pub cache_dir: &'a Path,
    pub cache_size: u64,
    pub log: PathBuf,
    /// The stores flists may reach ([`crate::VmmConfig::store_policy`]).
    pub policy: Option<&'a StorePolicy>,
}

/// Mounts only the flist (VM image mode needs its files, not a root). Returns the mount
/// process.
pub(crate) fn mount_flist(flist: &FlistSource, at: &Path, helper: &MountHelper) -> Result<ProcRef> {
    make_dir(at)?;
    if is_mounted(at) {
        unmount(at);
    }
    let log = crate::logs::open_for_writer(&helper.log)?;
    let (mut child, _, first) = FlistMount {
        zos: helper.zos,
        flist: &flist.path,
        at,
        cache: Some(helper.cache_dir),
        cache_size: helper.cache_size,
        stores: &flist.stores,
        policy: helper.policy,
    }
    .start(Stdio::from(log))
    .map_err(|e| Error::io(format!("starting {} flist mount", helper.zos.display()), e))?;
    if first.as_deref() == Some("ready") {
        if let Some(p) = ProcRef::of(child.id() as i32) {
            return Ok(p);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log_tail = crate::console::tail(&helper.log, 5);
    Err(Error::Process {
        what: format!("mounting flist {}", flist.path.display()),
        detail: first.unwrap_or(log_tail),
    })
}

/// Mounts the writable layer, the flist and the overlay; returns the flist mount process.
/// On failure, whatever was mounted is unmounted again.
pub(crate) fn mount_root(
    flist: &FlistSource,
    layers: &Layers,
    helper: &MountHelper,
) -> Result<ProcRef> {
    make_dir(&layers.rw)?;
    // The guest writes these: a setuid-root program or a device node it makes must never
    // work on the host (nosuid, nodev on both mounts; the guest's own kernel still sees
    // the bits through virtio-fs and honours them inside).
    if !is_mounted(&layers.rw) {
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,noatime,nosuid,nodev"])
            .arg(&layers.image)
            .arg(&layers.rw))?;
    }
    let upper = layers.rw.join("upper");
    let work = layers.rw.join("work");
    let result = (|| {
        make_dir(&upper)?;
        make_dir(&work)?;
        let mount = mount_flist(flist, &layers.lower, helper)?;
        make_dir(&layers.merged)?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            layers.lower.display(),
            upper.display(),
            work.display()
        );
        if let Err(e) = mount_overlay(&layers.merged, &options) {
            unmount(&layers.lower);
            mount.terminate(Duration::from_secs(2));
            return Err(e);
        }
        Ok(mount)
    })();
    if result.is_err() {
        unmount(&layers.rw);
    }
    result
}

fn mount_overlay(target: &Path, options: &str) -> Result<()> {
    let c =
        |s: &[u8]| CString::new(s).map_err(|_| Error::Invalid("a path holds a NUL byte".into()));
    let source = c(b"overlay")?;
    let target_c = c(target.as_os_str().as_bytes())?;
    let data = c(options.as_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            source.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(Error::io(
            format!("mounting the overlay root on {}", target.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Unmounts everything of `layers` that is mounted, and stops the flist mount process.
pub(crate) fn unmount_root(layers: &Layers, mount: Option<ProcRef>) {
    unmount(&layers.merged);
    unmount(&layers.lower);
    if let Some(p) = mount {
        p.terminate(Duration::from_secs(2));
    }
    unmount(&layers.rw);
}

/// Detaches a mount (lazily, so a straggling reader cannot keep it); silent if not mounted.
pub(crate) fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c is a valid NUL-terminated path.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r != 0 {
        tracing::warn!(path = %path.display(), error = %std::io::Error::last_os_error(), "unmount failed");
    }
}

/// Whether something is mounted exactly at `path` (from /proc/self/mountinfo).
pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn make_dir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
}

/// Runs a command, turning a failure into an error with its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(Error::Process {
            what,
            detail: format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(r"/x\\"), br"/x\\");
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/proc/self")));
    }
}
