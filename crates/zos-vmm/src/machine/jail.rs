//! The jail each VM's QEMU runs in, in the manner of Firecracker's jailer: a uid and gid of
//! the VM's own, a private mount namespace whose root holds only the files this VM needs
//! (the system's `/usr` read-only, a few device nodes, the VM's kernel, disks and logs), no
//! capabilities, and no way to gain privileges. QEMU's sockets are handed over as open
//! descriptors, so it needs no writable directory at all.
//!
//! Everything is worked out in the manager ([`Jail::prepare`]); the child runs only system
//! calls on prepared strings between fork and exec ([`Prepared::enter`]), as a forked child
//! of a threaded process must.

use super::record::{load, Record, RECORD};
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The first uid (and gid) given to a VM. Above the ranges distributions hand to users and
/// to `/etc/subuid`, inside the span systemd leaves to containers.
pub(super) const UID_BASE: u32 = 1_700_000_000;
/// How many VM uids there are.
const UID_COUNT: u32 = 1 << 20;
/// The mount point of the jail's root inside the VM's directory.
pub(super) const JAIL_DIR: &str = "jail";

/// How a file is bound into the jail.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Access {
    /// Read-only, and readable by anyone already (the boot kit's kernel, the flist mount,
    /// device nodes): left as it is.
    Shared,
    /// This VM's own file, read-only to it: given to the VM's uid, bound read-only.
    ReadOnly,
    /// This VM's own file, writable: given to the VM's uid.
    Writable,
}

/// What a VM's QEMU may see, collected while its command line is built.
#[derive(Debug)]
pub(super) struct Jail {
    dir: PathBuf,
    uid: u32,
    groups: Vec<u32>,
    files: Vec<(PathBuf, Access)>,
    fds: Vec<OwnedFd>,
}

impl Jail {
    /// An empty jail for the VM in `dir`, run as `uid` (gid the same number).
    pub(super) fn new(dir: &Path, uid: u32) -> Jail {
        Jail {
            dir: dir.to_path_buf(),
            uid,
            groups: Vec::new(),
            files: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Makes `path` (a file or a directory) visible at the same path inside the jail.
    pub(super) fn add(&mut self, path: &Path, access: Access) {
        self.files.push((path.to_path_buf(), access));
    }

    /// A unix socket listening at `path` (QEMU's side of QMP or the control port), handed
    /// to QEMU as a descriptor; returns its number for the command line.
    pub(super) fn listen(&mut self, path: &Path) -> Result<RawFd> {
        let _ = fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
        Ok(self.hand_over(listener.into()))
    }

    /// A connection to the unix socket at `path` (virtiofsd's), handed to QEMU as a
    /// descriptor; returns its number for the command line.
    pub(super) fn connect(&mut self, path: &Path) -> Result<RawFd> {
        let stream = UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connecting to {}", path.display()), e))?;
        Ok(self.hand_over(stream.into()))
    }

    /// Hands `fd` to QEMU (kept open across exec); returns its number for the command line.
    pub(super) fn hand_over(&mut self, fd: OwnedFd) -> RawFd {
        let raw = fd.as_raw_fd();
        self.fds.push(fd);
        raw
    }

    /// Lets QEMU use `/dev/kvm` (through the device's group).
    pub(super) fn allow_kvm(&mut self) -> Result<()> {
        let kvm = Path::new("/dev/kvm");
        let meta = fs::metadata(kvm).map_err(|e| Error::io("opening /dev/kvm".into(), e))?;
        self.groups.push(std::os::unix::fs::MetadataExt::gid(&meta));
        self.add(kvm, Access::Shared);
        Ok(())
    }

    /// Works out every step of entering the jail, gives the writable files to the VM's uid,
    /// and makes the mount point. `enabled` false (a manager that is not root, or
    /// `ZOS_JAIL=off` for the benchmark's comparison) keeps only the descriptors.
    pub(super) fn prepare(self, enabled: bool) -> Result<Prepared> {
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::Invalid(format!("{} holds a NUL byte", p.display())))
        };
        if !enabled {
            return Ok(Prepared {
                fds: self.fds,
                jail: None,
            });
        }
        let root = self.dir.join(JAIL_DIR);
        fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let mut steps = Vec::new();
        // Directories made in the jail's root, and paths bound into it.
        let mut made: BTreeSet<PathBuf> = BTreeSet::new();
        let mut bound: Vec<PathBuf> = Vec::new();
        let mut files = self.files;
        // The system QEMU links against and reads its firmware from, read-only; the
        // top-level names merged-/usr systems make symlinks stay symlinks.
        files.push(("/usr".into(), Access::Shared));
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match fs::read_link(&host) {
                Ok(target) => {
                    steps.push(Step::Symlink {
                        target: cstr(&target)?,
                        at: cstr(&root.join(top))?,
                    });
                    bound.push(host);
                }
                Err(_) if host.is_dir() => files.push((host, Access::Shared)),
                Err(_) => {}
            }
        }
        if Path::new("/etc/ld.so.cache").exists() {
            files.push(("/etc/ld.so.cache".into(), Access::Shared));
        }
        for dev in ["null", "zero", "full", "random", "urandom"] {
            files.push((Path::new("/dev").join(dev), Access::Shared));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files.dedup_by(|b, a| a.0 == b.0);
        for (path, access) in files {
            if !path.is_absolute() {
                return Err(Error::Invalid(format!(
                    "{} is not absolute: the jail binds absolute paths",
                    path.display()
                )));
            }
            // A path under one already bound comes with it.
            if bound.iter().any(|b| path.starts_with(b)) {
                continue;
            }
            let meta = fs::metadata(&path)
                .map_err(|e| Error::io(format!("binding {} into the jail", path.display()), e))?;
            let is_dir = meta.is_dir();
            if access != Access::Shared {
                // Its own, and no one else's but root's.
                std::os::unix::fs::chown(&path, Some(self.uid), Some(self.uid))
                    .and_then(|_| fs::set_permissions(&path, fs::Permissions::from_mode(0o600)))
                    .map_err(|e| {
                        Error::io(format!("giving {} to uid {}", path.display(), self.uid), e)
                    })?;
            }
            let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
            ancestors.reverse();
            for a in ancestors {
                if a != Path::new("/") && made.insert(a.to_path_buf()) {
                    steps.push(Step::Mkdir(cstr(&inside(&root, a))?));
                }
            }
            let to = cstr(&inside(&root, &path))?;
            steps.push(if is_dir {
                Step::Mkdir(to.clone())
            } else {
                Step::Touch(to.clone())
            });
            steps.push(Step::Bind {
                from: cstr(&path)?,
                to,
                dir: is_dir,
                // Device nodes stay writable (their modes say who may write); everything
                // else shared is read-only.
                read_only: match access {
                    Access::Writable => false,
                    Access::ReadOnly => true,
                    Access::Shared => !meta.file_type().is_char_device(),
                },
            });
            bound.push(path);
        }
        Ok(Prepared {
            fds: self.fds,
            jail: Some(Entered {
                root: cstr(&root)?,
                cwd: cstr(&self.dir)?,
                tmpfs: c"tmpfs".into(),
                tmpfs_opts: c"mode=0755,size=64k".into(),
                steps,
                uid: self.uid,
                groups: self.groups,
            }),
        })
    }
}

/// `path` as seen from the manager under the jail's root.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// A jail worked out, ready for [`Prepared::enter`] in the child. The descriptors handed
/// to QEMU stay open in the manager until this is dropped.
pub(super) struct Prepared {
    fds: Vec<OwnedFd>,
    jail: Option<Entered>,
}

/// The jail's steps, as C strings.
struct Entered {
    root: CString,
    cwd: CString,
    tmpfs: CString,
    tmpfs_opts: CString,
    steps: Vec<Step>,
    uid: u32,
    groups: Vec<u32>,
}

/// One step of building the jail's root.
#[derive(Debug)]
enum Step {
    Mkdir(CString),
    Touch(CString),
    Symlink {
        target: CString,
        at: CString,
    },
    Bind {
        from: CString,
        to: CString,
        dir: bool,
        read_only: bool,
    },
}

/// `Err(last OS error)` when a libc call returned -1.
fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Prepared {
    /// Enters the jail: runs in the forked child before exec, so it only makes system calls
    /// on what [`Jail::prepare`] made (no allocation, no locks).
    pub(super) fn enter(&self) -> std::io::Result<()> {
        // SAFETY: every call below is a plain system call on C strings and integers owned by
        // `self`, which outlives this function; none touches memory shared with other threads.
        unsafe {
            for fd in &self.fds {
                check(libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0))?;
            }
            let Some(j) = &self.jail else {
                return Ok(());
            };
            let null = std::ptr::null::<libc::c_char>();
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here reaches the host, and nothing the host mounts later
            // reaches the jail.
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                j.tmpfs.as_ptr(),
                j.root.as_ptr(),
                j.tmpfs.as_ptr(),
                libc::MS_NOSUID,
                j.tmpfs_opts.as_ptr().cast(),
            ))?;
            for step in &j.steps {
                match step {
                    Step::Mkdir(p) => {
                        if libc::mkdir(p.as_ptr(), 0o755) < 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Step::Touch(p) => {
                        let fd = libc::open(
                            p.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o600,
                        );
                        check(fd)?;
                        libc::close(fd);
                    }
                    Step::Symlink { target, at } => {
                        check(libc::symlink(target.as_ptr(), at.as_ptr()))?
                    }
                    Step::Bind {
                        from,
                        to,
                        dir,
                        read_only,
                    } => {
                        let rec = if *dir { libc::MS_REC } else { 0 };
                        check(libc::mount(
                            from.as_ptr(),
                            to.as_ptr(),
                            null,
                            libc::MS_BIND | rec,
                            std::ptr::null(),
                        ))?;
                        let ro = if *read_only { libc::MS_RDONLY } else { 0 };
                        // A bind takes the flags of its source until remounted: make every
                        // one nosuid (and read-only where asked).
                        check(libc::mount(
                            null,
                            to.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | ro,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
            // The jail becomes the root; the old root is detached, so nothing else of the
            // host is reachable from here (pivot_root(".", ".") stacks the old root on the
            // new one, and the lazy unmount takes it away).
            check(libc::chdir(j.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32)?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            ))?;
            check(libc::chdir(j.cwd.as_ptr()))?;
            // No capability can come back through exec, then give up root.
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(libc::setgroups(j.groups.len(), j.groups.as_ptr()))?;
            check(libc::setresgid(j.uid, j.uid, j.uid))?;
            check(libc::setresuid(j.uid, j.uid, j.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// The VM's uid: the one in its record, or the lowest one no other VM under `root` holds
/// (taken under a lock over the root, and saved in the record before the lock is let go).
pub(super) fn uid_for(root: &Path, dir: &Path, record: &mut Record) -> Result<u32> {
    if let Some(uid) = record.uid {
        return Ok(uid);
    }
    // Every allocation holds the root's lock, so two first starts never pick one uid.
    let _lock = super::record::lock_dir(root)?;
    let mut taken = BTreeSet::new();
    let entries =
        fs::read_dir(root).map_err(|e| Error::io(format!("listing {}", root.display()), e))?;
    for entry in entries.flatten() {
        let other = entry.path();
        if other == dir || !other.join(RECORD).exists() {
            continue;
        }
        if let Ok(Record { uid: Some(uid), .. }) = load(&other) {
            taken.insert(uid);
        }
    }
    let uid = (UID_BASE..UID_BASE + UID_COUNT)
        .find(|u| !taken.contains(u))
        .ok_or_else(|| Error::Invalid(format!("all {UID_COUNT} VM uids are taken")))?;
    record.uid = Some(uid);
    super::record::save(dir, record)?;
    Ok(uid)
}
